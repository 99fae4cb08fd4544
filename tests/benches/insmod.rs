//! `vesper insmod` of a ~100 KiB module against the guest's own insmod of the same file,
//! side by side in one run, on one real guest.
//!
//! Baseline: inside the guest, at boot, `bench-insmod` (a static helper doing what
//! busybox `insmod` does: `init_module(2)` on an image already in memory, then
//! `delete_module(2)`) times N cycles of `vesper_bench_100k.ko`. Then the host pushes the
//! same file N times through vesperd (API call → validation → ivshmem transport → guest
//! kernel-context loader) and removes it. Both include the kernel's own load work; the
//! Vesper figure adds the transport, the host checks and the guest's loader context.
//!
//! `cargo bench -p vesper-e2e --bench insmod` (after `cargo build --release --workspace --bins`).

use std::time::{Duration, Instant};

use vesper_api::{call, Reply, Request};
use vesper_e2e::{kit, module, Daemon};

const N: usize = 20;
const WARMUP: usize = 2;

struct Stats {
    median: f64,
    p90: f64,
    mean: f64,
    min: f64,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        median: pick(0.5),
        p90: pick(0.9),
        mean: v.iter().sum::<f64>() / v.len() as f64,
        min: v[0],
    }
}

fn main() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start_with(
        "bench",
        &[
            "--mode",
            "bench",
            "--append",
            &format!("vesper.bench_n={}", N + WARMUP),
        ],
    );
    let accel_used = format!("{} ({})", vm["accel"]["accel"], vm["accel"]["reason"]);
    let console = d.wait_console("bench", "vesper-init: bench done", Duration::from_secs(300));
    let parse = |key: &str| -> Vec<f64> {
        console
            .lines()
            .filter(|l| l.starts_with("bench-insmod: load_us="))
            .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix(key)))
            .filter_map(|v| v.parse::<f64>().ok())
            .skip(WARMUP)
            .map(|us| us / 1e3)
            .collect()
    };
    let (guest_load, guest_unload) = (parse("load_us="), parse("unload_us="));
    assert_eq!(guest_load.len(), N, "in-guest bench output:\n{console}");

    let path = module("vesper_bench_100k");
    let image = std::fs::read(&path).expect("read module");
    let (mut host_load, mut host_unload) = (Vec::new(), Vec::new());
    let mut reported = Vec::new();
    for i in 0..N + WARMUP {
        let t = Instant::now();
        let r = call(
            &d.socket,
            &Request::insmod("bench", "vesper_bench_100k.ko", &image, vec![]),
            Duration::from_secs(60),
        )
        .expect("daemon")
        .expect("insmod");
        let load = t.elapsed().as_secs_f64() * 1e3;
        let t = Instant::now();
        call(
            &d.socket,
            &Request::Rmmod {
                guest: "bench".into(),
                name: "vesper_bench_100k".into(),
                force: false,
            },
            Duration::from_secs(60),
        )
        .expect("daemon")
        .expect("rmmod");
        let unload = t.elapsed().as_secs_f64() * 1e3;
        if i >= WARMUP {
            host_load.push(load);
            host_unload.push(unload);
            if let Reply::Loaded { millis, .. } = r {
                reported.push(millis);
            }
        }
    }
    let (gl, hl, gu, hu, dl) = (
        stats(guest_load),
        stats(host_load),
        stats(guest_unload),
        stats(host_unload),
        stats(reported),
    );

    println!(
        "\nvesper insmod vs in-guest insmod — {} ({} bytes), {N} cycles after {WARMUP} warm-up",
        path,
        image.len()
    );
    println!("guest kernel {}, accel {accel_used}", kit().release);
    println!(
        "{:<34} {:>12} {:>12} {:>12} {:>12} {:>8}",
        "ms", "median", "p90", "mean", "min", "ratio"
    );
    let row = |name: &str, s: &Stats, base: Option<&Stats>| {
        let ratio = base
            .map(|b| format!("{:.2}x", s.median / b.median))
            .unwrap_or_else(|| "1.00x".into());
        println!(
            "{name:<34} {:>12.2} {:>12.2} {:>12.2} {:>12.2} {:>8}",
            s.median, s.p90, s.mean, s.min, ratio
        );
    };
    row("in-guest insmod (baseline)", &gl, None);
    row("vesper insmod (client round trip)", &hl, Some(&gl));
    row("  of which daemon-side", &dl, Some(&gl));
    row("in-guest rmmod (baseline)", &gu, None);
    row("vesper rmmod (client round trip)", &hu, Some(&gu));
    let transport = hl.median - gl.median;
    println!(
        "added by Vesper (median): {transport:.2} ms vs the loader's own {:.2} ms -> transport {} the loader",
        gl.median,
        if transport < gl.median { "adds less than" } else { "adds MORE than" }
    );
    println!(
        "target: vesper insmod <= 2x in-guest insmod -> {:.2}x {}",
        hl.median / gl.median,
        if hl.median <= 2.0 * gl.median {
            "MET"
        } else {
            "NOT MET"
        }
    );
}
