//! In-guest cost of a kprobe hit that writes a relay record against the same kprobe
//! writing nothing, on one real guest.
//!
//! `vesper_probe_cost` (tests/modules/probe_cost.c) calls a noinline function of its own
//! `n` times per run from a kernel thread, in interrupts-off stretches, timed with
//! `ktime_get_ns()`, for three cases: no kprobe (the bare call), a kprobe on the function
//! whose pre_handler returns at once (baseline), and the same kprobe writing one 64-byte
//! record (24-byte header + 40-byte payload) into an overwrite-mode relay channel. The
//! fastest of 5 runs of each case is kept. Its log lines are read with `vesper dmesg`.
//!
//! `cargo build --release --workspace --bins && cargo bench -p vesper-e2e --bench probe_cost`

use std::time::{Duration, Instant};

use vesper_e2e::{kit, module, Daemon};

const N: u64 = 200_000;

/// `ns_per_call=` of `case=<name>` in the module's log.
fn figure(log: &str, case: &str) -> f64 {
    let key = format!("vesper_probe_cost: case={case} ns_per_call=");
    log.lines()
        .filter_map(|l| l.split_once(&key).map(|(_, v)| v))
        .filter_map(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .next_back()
        .unwrap_or_else(|| panic!("no {key:?} in the guest log:\n{log}"))
}

/// The rest of the last line holding `prefix`, after it.
fn line_after<'a>(log: &'a str, prefix: &str) -> &'a str {
    log.lines()
        .filter_map(|l| l.split_once(prefix).map(|(_, v)| v.trim()))
        .next_back()
        .unwrap_or("?")
}

fn main() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start("vm1");
    let accel = format!("{} ({})", vm["accel"]["accel"], vm["accel"]["reason"]);
    let n_param = format!("n={N}");
    d.cli(&["insmod", "vm1", &module("vesper_probe_cost"), &n_param])
        .ok();
    let deadline = Instant::now() + Duration::from_secs(600);
    let log = loop {
        let log = d.cli(&["dmesg", "vm1"]).ok().stdout;
        if log.contains("vesper_probe_cost: done") {
            break log;
        }
        assert!(
            !log.contains("vesper_probe_cost: failed"),
            "the fixture failed:\n{log}"
        );
        assert!(
            Instant::now() < deadline,
            "vesper_probe_cost never finished:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(500));
    };
    d.cli(&["rmmod", "vm1", "vesper_probe_cost"]).ok();

    let (none, empty, record) = (
        figure(&log, "none"),
        figure(&log, "empty_kprobe"),
        figure(&log, "record_kprobe"),
    );
    println!("\nkprobe hit writing a 64-byte relay record vs the same kprobe writing nothing");
    println!(
        "{N} calls per run, best of 5 runs, interrupts off; kprobe at {}",
        line_after(&log, "vesper_probe_cost: kprobe at ")
    );
    println!("guest kernel {}, accel {accel}", kit().release);
    println!(
        "{:<40} {:>12} {:>8}",
        "ns per call (in guest)", "ns", "ratio"
    );
    println!("{:<40} {:>12.2} {:>8}", "no kprobe (bare call)", none, "");
    println!(
        "{:<40} {:>12.2} {:>8}",
        "empty kprobe (baseline)", empty, "1.00x"
    );
    println!(
        "{:<40} {:>12.2} {:>7.2}x",
        "record-writing kprobe",
        record,
        record / empty
    );
    println!(
        "{:<40} {:>12.2}",
        "added by writing the record",
        record - empty
    );
    println!(
        "{:<40} {:>12.2}",
        "added by the empty kprobe hit",
        empty - none
    );
    println!("relay: {}", line_after(&log, "vesper_probe_cost: records "));
}
