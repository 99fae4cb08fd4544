//! Doorbell round trip: the guest writes the doorbell → the host sees it → the host raises
//! an interrupt → the guest's interrupt handler runs. On vesper-hypervisor versus QEMU's
//! `ivshmem-doorbell` served by our ivshmem server, in one run, with the same tiny guest
//! image (`tiny-guest/tiny.S`) on both and the same host loop (`tiny_guest::pump`: poll
//! and read the doorbell eventfd, write the interrupt eventfd).
//!
//! Timed by the guest: `lfence; rdtsc` before the doorbell write and as its interrupt
//! handler's first instructions, converted with the host's TSC rate (the guest TSC rate
//! seen from the host is printed for both VMMs as a check). Two ways for the guest to wait
//! for the answer: `hlt` (an idle guest) and a `pause` spin. Interrupt on both VMMs: the
//! MSI-X vector 0 the guest programmed, sent by a KVM irqfd. QEMU runs under KVM when it
//! can, else TCG (said loudly).
//!
//! `cargo bench -p vesper-e2e --bench doorbell_rtt` (`VESPER_RTT_N` round trips per VMM,
//! default 20000, in `VESPER_RTT_ROUNDS` rounds, default 5, that alternate the VMMs; the
//! first 5% of each round are dropped as warm-up).

use std::time::{Duration, Instant};

use vesper_e2e::tiny_guest::{
    self, qemu_round_trips, summary, vmm_round_trips, QemuAccel, RoundTrips, Wait, FLAG_MSIX,
    MAX_ITER,
};

const TIMEOUT: Duration = Duration::from_secs(300);

/// The host TSC rate, against the monotonic clock over 200 ms.
fn host_tsc_hz() -> f64 {
    let tsc = || {
        // SAFETY: RDTSC only reads the time-stamp counter; every x86-64 CPU has it.
        unsafe { std::arch::x86_64::_rdtsc() }
    };
    let (t0, c0) = (Instant::now(), tsc());
    std::thread::sleep(Duration::from_millis(200));
    let (t1, c1) = (Instant::now(), tsc());
    (c1 - c0) as f64 / (t1 - t0).as_secs_f64()
}

fn skip(why: &str) -> ! {
    println!("\n!!! doorbell_rtt SKIPPED: {why}\n");
    std::process::exit(0);
}

/// Round-trip times in µs after dropping the warm-up.
fn micros(r: &RoundTrips, warmup: usize, hz: f64) -> Vec<f64> {
    r.ticks[warmup..]
        .iter()
        .map(|&t| f64::from(t) * 1e6 / hz)
        .collect()
}

fn irq_path(r: &RoundTrips) -> &'static str {
    if r.flags & FLAG_MSIX != 0 {
        "MSI-X vector 0 programmed by the guest"
    } else {
        "NO MSI-X seen by the guest"
    }
}

/// Both VMMs' runs for one way of waiting.
struct Measured {
    wait: Wait,
    ours: Vec<RoundTrips>,
    qemu: Vec<RoundTrips>,
}

/// `rounds` rounds of `per` round trips on each VMM, alternating which goes first (each
/// round a fresh VM / QEMU) so both see the same background load. The first QEMU run
/// falls back to TCG if KVM fails, and says so.
fn measure(wait: Wait, rounds: u32, per: u32, accel: &mut QemuAccel) -> Measured {
    let (mut ours, mut qemu) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        for qemu_turn in [round % 2 == 1, round % 2 == 0] {
            if !qemu_turn {
                ours.push(
                    vmm_round_trips(per, wait, TIMEOUT)
                        .unwrap_or_else(|e| panic!("vesper-hypervisor: {e}")),
                );
                continue;
            }
            let r = match qemu_round_trips(*accel, per, wait, TIMEOUT) {
                Ok(r) => r,
                Err(e) if *accel == QemuAccel::Kvm && qemu.is_empty() => {
                    println!("!!! QEMU -accel kvm failed: {e}");
                    println!(
                        "!!! FALLING BACK TO QEMU TCG: the QEMU figures below are EMULATED, \
                         not KVM"
                    );
                    *accel = QemuAccel::Tcg;
                    qemu_round_trips(*accel, per, wait, TIMEOUT)
                        .unwrap_or_else(|e| panic!("QEMU TCG: {e}"))
                }
                Err(e) => panic!("QEMU {}: {e}", accel.name()),
            };
            qemu.push(r);
        }
    }
    Measured { wait, ours, qemu }
}

fn main() {
    println!("\n== doorbell round trip: vesper-hypervisor vs QEMU ivshmem-doorbell ==");
    if let Err(why) = tiny_guest::comparison_image("doorbell_rtt") {
        skip(why);
    }
    let n: u32 = std::env::var("VESPER_RTT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let rounds: u32 = std::env::var("VESPER_RTT_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5)
        .clamp(1, 50);
    let per = (n / rounds).clamp(100, MAX_ITER);
    let warmup = (per / 20) as usize;
    let hz = host_tsc_hz();
    let mut accel = QemuAccel::Kvm;
    let results = [Wait::Halt, Wait::Spin].map(|w| measure(w, rounds, per, &mut accel));

    tiny_guest::print_setting();
    println!(
        "accel: vesper-hypervisor KVM; QEMU {} (q35, -m {} MiB{})",
        accel.name(),
        tiny_guest::mem_mib(),
        if accel == QemuAccel::Kvm {
            ", -cpu host,-arch-capabilities"
        } else {
            ", -cpu max — EMULATED"
        }
    );
    println!(
        "per way of waiting: {rounds} rounds alternating the VMMs, {per} round trips per VM, \
         first {warmup} of each dropped; timed by the guest TSC, converted at the host TSC \
         rate {:.1} MHz",
        hz / 1e6
    );
    println!(
        "interrupt: vector 0x40 at the LAPIC; vesper: {}; QEMU: {}",
        irq_path(&results[0].ours[0]),
        irq_path(&results[0].qemu[0])
    );
    let rates = |runs: &[RoundTrips]| {
        let r: Vec<f64> = runs.iter().filter_map(RoundTrips::guest_tsc_hz).collect();
        let lo = r.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = r.iter().copied().fold(0.0, f64::max);
        if r.is_empty() {
            "?".to_string()
        } else {
            format!("{:.1}-{:.1} MHz", lo / 1e6, hi / 1e6)
        }
    };
    let p50s = |runs: &[RoundTrips]| {
        runs.iter()
            .map(|r| format!("{:.1}", summary(&mut micros(r, warmup, hz))[1]))
            .collect::<Vec<_>>()
            .join(" ")
    };
    for m in &results {
        let w = m.wait.name();
        println!(
            "{w}: guest TSC rate seen from the host: vesper {}, QEMU {}",
            rates(&m.ours),
            rates(&m.qemu)
        );
        println!(
            "{w}: p50 per round, µs: vesper {}; QEMU {}",
            p50s(&m.ours),
            p50s(&m.qemu)
        );
    }

    let all = |runs: &[RoundTrips]| {
        runs.iter()
            .flat_map(|r| micros(r, warmup, hz))
            .collect::<Vec<_>>()
    };
    println!(
        "\n{:<42} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "round trip, µs", "min", "p50", "p99", "mean", "max"
    );
    let row = |name: &str, s: [f64; 5]| {
        println!(
            "{name:<42} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.1}",
            s[0], s[1], s[2], s[3], s[4]
        );
    };
    let mut answered = (0, 0);
    for m in &results {
        let w = m.wait.name();
        let a = summary(&mut all(&m.ours));
        let b = summary(&mut all(&m.qemu));
        row(&format!("{w}: vesper-hypervisor (KVM)"), a);
        row(&format!("{w}: QEMU ivshmem-doorbell ({})", accel.name()), b);
        println!(
            "{:<42} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}",
            format!("{w}: ratio QEMU / vesper"),
            b[0] / a[0],
            b[1] / a[1],
            b[2] / a[2],
            b[3] / a[3],
            ""
        );
        answered.0 += m.ours.iter().map(|r| r.pump.rings).sum::<u64>();
        answered.1 += m.qemu.iter().map(|r| r.pump.rings).sum::<u64>();
    }
    println!(
        "\nhost answered {} (vesper) and {} (QEMU) doorbells\n",
        answered.0, answered.1
    );
}
