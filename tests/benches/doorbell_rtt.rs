//! Doorbell round trip: the guest writes the doorbell → the host sees it → the host raises
//! an interrupt → the guest's interrupt handler runs. On vesper-hypervisor versus QEMU's
//! `ivshmem-doorbell` served by our ivshmem server, in one run, with the same tiny guest
//! image (`tiny-guest/tiny.S`) on both and the same host loop (`tiny_guest::pump`: poll
//! and read the doorbell eventfd, write the interrupt eventfd).
//!
//! Timed by the guest: `lfence; rdtsc` before the doorbell write and after its handler's
//! count moved, converted with the host's TSC rate (the guest TSC rate seen from the host
//! is printed for both VMMs as a check). QEMU runs under KVM when it can, else TCG (said
//! loudly).
//!
//! `cargo bench -p vesper-e2e --bench doorbell_rtt` (`VESPER_RTT_N` round trips per VMM,
//! default 20000; the first 5% are dropped as warm-up).

use std::time::{Duration, Instant};

use vesper_e2e::tiny_guest::{
    self, qemu_round_trips, summary, vmm_round_trips, QemuAccel, RoundTrips, FLAG_MSIX, MAX_ITER,
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

fn main() {
    println!("\n== doorbell round trip: vesper-hypervisor vs QEMU ivshmem-doorbell ==");
    if tiny_guest::image().is_none() {
        skip("the tiny guest was not assembled (as/ld/objcopy missing at build time)");
    }
    if !tiny_guest::kvm_available("doorbell_rtt") {
        skip("no usable /dev/kvm: vesper-hypervisor cannot run");
    }
    if tiny_guest::qemu_binary().is_none() {
        skip("qemu-system-x86_64 not installed (apt-get install qemu-system-x86)");
    }
    let n: u32 = std::env::var("VESPER_RTT_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000)
        .clamp(100, MAX_ITER);
    let warmup = (n / 20) as usize;
    let hz = host_tsc_hz();

    let ours = vmm_round_trips(n, TIMEOUT).unwrap_or_else(|e| panic!("vesper-hypervisor: {e}"));
    let (accel, qemu) = match qemu_round_trips(QemuAccel::Kvm, n, TIMEOUT) {
        Ok(r) => (QemuAccel::Kvm, r),
        Err(e) => {
            println!("!!! QEMU -accel kvm failed: {e}");
            println!("!!! FALLING BACK TO QEMU TCG: the QEMU figures below are EMULATED, not KVM");
            let r = qemu_round_trips(QemuAccel::Tcg, n, TIMEOUT)
                .unwrap_or_else(|e| panic!("QEMU TCG: {e}"));
            (QemuAccel::Tcg, r)
        }
    };

    println!("machine: {}", tiny_guest::machine());
    println!(
        "date: {}; load average (1 min) {}; {}",
        tiny_guest::date_utc(),
        tiny_guest::load_average(),
        tiny_guest::qemu_version()
    );
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
        "{n} round trips per VMM, first {warmup} dropped; timed by the guest TSC, \
         converted at the host TSC rate {:.1} MHz",
        hz / 1e6
    );
    let seen = |r: &RoundTrips| {
        r.guest_tsc_hz()
            .map_or("?".to_string(), |h| format!("{:.1} MHz", h / 1e6))
    };
    println!(
        "guest TSC rate seen from the host: vesper {}, QEMU {}",
        seen(&ours),
        seen(&qemu)
    );
    println!(
        "interrupt: vector 0x40 at the LAPIC; vesper: {}; QEMU: {}",
        irq_path(&ours),
        irq_path(&qemu)
    );
    println!(
        "wall time per run (VM start to exit, all round trips): vesper {:.0} ms, QEMU {:.0} ms",
        ours.wall.as_secs_f64() * 1e3,
        qemu.wall.as_secs_f64() * 1e3
    );

    let a = summary(&mut micros(&ours, warmup, hz));
    let b = summary(&mut micros(&qemu, warmup, hz));
    println!(
        "\n{:<36} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "round trip, µs", "min", "p50", "p99", "mean", "max"
    );
    let row = |name: &str, s: [f64; 5]| {
        println!(
            "{name:<36} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9.1}",
            s[0], s[1], s[2], s[3], s[4]
        );
    };
    row("vesper-hypervisor (KVM)", a);
    row(&format!("QEMU ivshmem-doorbell ({})", accel.name()), b);
    println!(
        "{:<36} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>9}",
        "ratio QEMU / vesper",
        b[0] / a[0],
        b[1] / a[1],
        b[2] / a[2],
        b[3] / a[3],
        ""
    );
    println!(
        "\nhost answered {} (vesper) and {} (QEMU) doorbells\n",
        ours.pump.rings, qemu.pump.rings
    );
}
