//! Latency from a process's death in the guest to its exit record in the host
//! daemon's hands: the exit probe stamps the record in its `do_exit` kprobe (the
//! moment of death), the guest rings the relay doorbell (urgent record), and vesperd
//! reads the record from the shared pages. The guest clock is mapped onto the host's
//! with `OP_CLOCK` round trips; the error bound is printed.
//!
//! `cargo build --release --workspace --bins && cargo bench -p vesper-e2e --bench latency`

use std::time::Duration;

use vesper_e2e::Daemon;

const N: usize = 40;

fn pct(v: &[f64], q: f64) -> f64 {
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start_with("lat", &["--mode", "hand"]);
    let accel = format!("{} ({})", vm["accel"]["accel"], vm["accel"]["reason"]);
    d.wait_console("lat", "vesper-init: hand ready", Duration::from_secs(60));
    d.watch_svc("lat");
    let (mut lat, mut err) = (Vec::new(), Vec::new());
    for i in 0..N {
        d.hand("lat", "start svc", "started svc");
        d.hand("lat", "kill 9 svc", "killed svc");
        let recs = d.wait_records(
            "lat",
            "vesper_exit_probe",
            "exit",
            Duration::from_secs(30),
            |r| r.len() > i,
        );
        let r = &recs[i];
        match (r["latency_ns"].as_i64(), r["clock_error_ns"].as_u64()) {
            (Some(l), Some(e)) => {
                lat.push(l as f64 / 1e3);
                err.push(e as f64 / 1e3);
            }
            _ => panic!("record without a clock mapping: {r}"),
        }
    }
    lat.sort_by(f64::total_cmp);
    err.sort_by(f64::total_cmp);
    println!(
        "\ndeath of a watched process in the guest -> exit record read by vesperd, {N} deaths"
    );
    println!("guest kernel {}, accel {accel}", vesper_e2e::kit().release);
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>10} {:>10}",
        "µs", "min", "p50", "p90", "p99", "max"
    );
    let row = |name: &str, v: &[f64]| {
        println!(
            "{name:<28} {:>10.0} {:>10.0} {:>10.0} {:>10.0} {:>10.0}",
            v[0],
            pct(v, 0.5),
            pct(v, 0.9),
            pct(v, 0.99),
            v[v.len() - 1]
        )
    };
    row("death -> host (urgent)", &lat);
    row("clock mapping error (±)", &err);
    println!("for scale: the host's fallback scan is every 50 000 µs; Pacemaker's VirtualDomain monitor polls every 10 000 000 µs");
}
