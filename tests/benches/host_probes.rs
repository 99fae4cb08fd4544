//! Host probes (vesper-hostprobe), two figures in one run, each beside its baseline:
//!
//! 1. Overhead on an exit-heavy guest: a builtin-VMM guest (vesper-hypervisor, KVM)
//!    doing `VESPER_HP_EXITS` port writes in a loop (default 300000, ~3 s), each a KVM_RUN
//!    return to the VMM, timed without host probes loaded and with them loaded and
//!    watching its vCPU thread, in `VESPER_HP_ROUNDS` rounds (default 10) that alternate
//!    which goes first. Printed: ns per exit, the ratio of the medians and the median of
//!    the rounds' paired ratios (goal <= 1.03; the host is shared, so rounds vary).
//! 2. Stall delay: the same VM spinning in the guest, paused through its VMM's debug
//!    handle (what `vesper vm pause` does); the time from the pause call to the
//!    `vcpu_stall` callback, beside the configured threshold, `VESPER_HP_STALLS` times
//!    (default 5) for thresholds of 300 ms and 1000 ms.
//! 3. What every other task on the host pays: two threads of no VM passing a byte back
//!    and forth over a pair of Unix sockets (each round trip two wakeups and the
//!    context switches they bring, where the scheduler programs run), `VESPER_HP_PINGS`
//!    round trips (default 100000) per run, with and without host probes loaded,
//!    alternating, 5 rounds.
//!
//! `cargo bench -p vesper-e2e --bench host_probes` (root and /dev/kvm; skipped loudly
//! otherwise).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vesper_e2e::code_vm::{pio_loop, vm, SPIN};
use vesper_hostprobe::{monotonic_ns, Config, HostProbes, VcpuSource};
use vesper_hypervisor::{KvmBacking, Stop};

const RUN: Duration = Duration::from_secs(300);

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// CPU time this process used so far (every thread, user and kernel: the vCPU's guest
/// time, its exits, the BPF programs run on its behalf, the probes' poll thread), ns.
/// Unlike wall time it leaves out waiting for a CPU other tenants of the host hold.
fn cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Per exit: wall ns and CPU ns.
#[derive(Clone, Copy)]
struct Cost {
    wall: f64,
    cpu: f64,
}

/// Which figure of a [`Cost`] a summary is about.
type Pick = fn(&Cost) -> f64;

/// One timed run of `n` exits, no host probes loaded.
fn timed(n: u32) -> Cost {
    let (mut vm, count) = vm(&pio_loop(n));
    let (start, cpu) = (Instant::now(), cpu_ns());
    let report = vm.run(RUN).expect("run");
    let cost = Cost {
        wall: start.elapsed().as_nanos() as f64 / f64::from(n),
        cpu: (cpu_ns() - cpu) as f64 / f64::from(n),
    };
    assert_eq!(report.stop, Stop::Halted);
    assert_eq!(count.load(Ordering::Relaxed), u64::from(n));
    cost
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn overhead() {
    let n = env("VESPER_HP_EXITS", 300_000) as u32;
    let rounds = env("VESPER_HP_ROUNDS", 10);
    println!("\n== overhead on an exit-heavy guest: {n} port writes per run, {rounds} rounds");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let _ = timed(n / 10); // warm-up
    alternating(rounds, |r, with| {
        if with {
            // The vCPU thread enters the filter at the probes' first poll after
            // its run starts (`VESPER_HP_POLL_MS`, default 100: what vesperd polls
            // at with its default 1 s threshold): before that an exit costs only a
            // per-CPU lookup. The count printed says how many exits were seen.
            let mut config = Config::with_threshold(Duration::from_secs(1));
            config.poll = Duration::from_millis(env("VESPER_HP_POLL_MS", 100));
            let p = HostProbes::start(config, Box::new(|_| {})).expect("load host probes");
            let (c, seen) = timed_watched(n, &p);
            on.push(c);
            println!(
                    "  round {r}: with probes    {:8.1} ns/exit wall, {:8.1} CPU (probes counted {seen} exits to the VMM)",
                    c.wall, c.cpu
                );
        } else {
            let c = timed(n);
            off.push(c);
            println!(
                "  round {r}: without probes {:8.1} ns/exit wall, {:8.1} CPU",
                c.wall, c.cpu
            );
        }
    });
    let picks: [(&str, Pick); 2] = [("wall", |c| c.wall), ("CPU", |c| c.cpu)];
    for (what, pick) in picks {
        let mut paired: Vec<f64> = on
            .iter()
            .zip(&off)
            .map(|(w, wo)| pick(w) / pick(wo))
            .collect();
        let paired = median(&mut paired);
        let a = median(&mut off.iter().map(pick).collect::<Vec<_>>());
        let b = median(&mut on.iter().map(pick).collect::<Vec<_>>());
        println!(
            "  median {what}: without {a:.1} ns/exit, with {b:.1} ns/exit -> ratio {:.3} ({:+.1} %); median of paired round ratios {paired:.3} (goal <= 1.03)",
            b / a,
            (b / a - 1.0) * 100.0
        );
    }
}

/// A timed run with the probes loaded and watching its vCPU thread (from their first
/// poll after the thread starts). Returns the cost per exit and the exits they counted.
fn timed_watched(n: u32, p: &HostProbes) -> (Cost, u64) {
    let (mut vm, count) = vm(&pio_loop(n));
    let threads = vm.vcpu_threads();
    p.watch(
        "bench",
        VcpuSource::Listed(Arc::new(move || threads.list())),
    );
    // What the probes counted, sampled while the run lasts (its vCPU thread, and so
    // its figures, are gone once it ends).
    let seen = AtomicU64::new(0);
    let done = std::sync::atomic::AtomicBool::new(false);
    let (cost, report) = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                if let Some(f) = p.figures("bench") {
                    let n: u64 = f.vcpus.iter().map(|v| v.vmm_exits).sum();
                    seen.fetch_max(n, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        let (start, cpu) = (Instant::now(), cpu_ns());
        let report = vm.run(RUN).expect("run");
        let cost = Cost {
            wall: start.elapsed().as_nanos() as f64 / f64::from(n),
            cpu: (cpu_ns() - cpu) as f64 / f64::from(n),
        };
        done.store(true, Ordering::Relaxed);
        (cost, report)
    });
    assert_eq!(report.stop, Stop::Halted);
    assert_eq!(count.load(Ordering::Relaxed), u64::from(n));
    p.unwatch("bench");
    (cost, seen.load(Ordering::Relaxed))
}

fn stall_delay(threshold_ms: u64) {
    let samples = env("VESPER_HP_STALLS", 5);
    let stalls: Arc<Mutex<Vec<u64>>> = Arc::default();
    let seen = stalls.clone();
    let p = HostProbes::start(
        Config::with_threshold(Duration::from_millis(threshold_ms)),
        Box::new(move |_| seen.lock().unwrap().push(monotonic_ns())),
    )
    .expect("load host probes");
    let (mut vm, _) = vm(&SPIN);
    let threads = vm.vcpu_threads();
    let debug = vm.debug_handle();
    let stop = vm.stop_handle();
    p.watch(
        "stall",
        VcpuSource::Listed(Arc::new(move || threads.list())),
    );
    let runner = std::thread::spawn(move || vm.run(RUN));
    let mut delays = Vec::new();
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..samples {
        let before = stalls.lock().unwrap().len();
        let paused_at = monotonic_ns();
        debug.pause(Duration::from_secs(5)).expect("pause");
        let deadline = Instant::now() + Duration::from_millis(threshold_ms * 3 + 2000);
        while stalls.lock().unwrap().len() == before {
            assert!(Instant::now() < deadline, "no vcpu_stall");
            std::thread::sleep(Duration::from_millis(1));
        }
        let at = stalls.lock().unwrap()[before];
        delays.push((at - paused_at) as f64 / 1e6);
        debug.resume(&[]).expect("resume");
        std::thread::sleep(Duration::from_millis(threshold_ms / 2 + 200));
    }
    stop.stop();
    let _ = runner.join();
    let mut d = delays.clone();
    let med = median(&mut d);
    let max = d.last().copied().unwrap_or(0.0);
    println!(
        "  threshold {threshold_ms} ms: pause -> vcpu_stall median {med:.1} ms, max {max:.1} ms ({:.2}x the threshold; poll {} ms); samples {:?}",
        med / threshold_ms as f64,
        Config::with_threshold(Duration::from_millis(threshold_ms)).poll.as_millis(),
        delays.iter().map(|x| format!("{x:.1}")).collect::<Vec<_>>()
    );
}

fn main() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        println!("\n!!! host_probes SKIPPED: eBPF needs root\n");
        return;
    }
    match KvmBacking::detect() {
        KvmBacking::Unavailable(why) => {
            println!("\n!!! host_probes SKIPPED: {why}\n");
            return;
        }
        k => println!("host probes bench: /dev/kvm {k:?}"),
    }
    overhead();
    println!("\n== delay from a vCPU stall starting (pause) to the vcpu_stall event");
    stall_delay(300);
    stall_delay(1000);
    host_wide();
}

/// Calls `one(round, with_probes)` twice per round, without and with probes, the order
/// alternating from round to round so neither always runs on a warmer host.
fn alternating(rounds: u64, mut one: impl FnMut(u64, bool)) {
    for r in 0..rounds {
        let first = r % 2 == 1;
        one(r, first);
        one(r, !first);
    }
}

/// One run of `n` round trips between two threads; ns per round trip.
fn ping_pong(n: u64) -> f64 {
    use std::io::{Read, Write};
    let (mut a, mut b) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    let echo = std::thread::spawn(move || {
        let mut byte = [0u8];
        while b.read_exact(&mut byte).is_ok() {
            if b.write_all(&byte).is_err() {
                break;
            }
        }
    });
    let mut byte = [1u8];
    let start = Instant::now();
    for _ in 0..n {
        a.write_all(&byte).expect("ping");
        a.read_exact(&mut byte).expect("pong");
    }
    let ns = start.elapsed().as_nanos() as f64 / n as f64;
    drop(a);
    let _ = echo.join();
    ns
}

fn host_wide() {
    let n = env("VESPER_HP_PINGS", 100_000);
    println!("\n== cost to other tasks: {n} round trips between two threads of no VM, 5 rounds");
    let (mut off, mut on) = (Vec::new(), Vec::new());
    let _ = ping_pong(n / 10); // warm-up
    alternating(5, |r, with| {
        let ns = if with {
            let p = HostProbes::start(
                Config::with_threshold(Duration::from_secs(1)),
                Box::new(|_| {}),
            )
            .expect("load host probes");
            // Time the steady state, not the moments right after the programs attach.
            std::thread::sleep(Duration::from_secs(1));
            let ns = ping_pong(n);
            drop(p);
            ns
        } else {
            ping_pong(n)
        };
        (if with { &mut on } else { &mut off }).push(ns);
        println!(
            "  round {r}: {} {ns:8.1} ns per round trip",
            if with {
                "with probes   "
            } else {
                "without probes"
            }
        );
    });
    let a = median(&mut off);
    let b = median(&mut on);
    println!(
        "  median: without {a:.1} ns, with {b:.1} ns per round trip -> ratio {:.3} ({:+.1} ns)",
        b / a,
        b - a
    );
}
