//! The doorbell round trip works on vesper-hypervisor: the tiny guest (`tiny-guest/tiny.S`)
//! enumerates PCI, finds the Vesper device, rings the host 100 times (waiting with `hlt`,
//! then spinning) through the KVM ioeventfd and sees each answer (`VesperHandle::notify`:
//! the MSI-X vector it programmed, an irqfd → LAPIC interrupt) in its handler.
//! Needs /dev/kvm (skips loudly without it) and binutils at build time.

use std::time::{Duration, Instant};

use vesper_e2e::tiny_guest::{self, vmm_round_trips, Wait, FLAG_MSIX};

#[test]
fn hundred_doorbell_round_trips_complete_on_vesper_hypervisor() {
    if tiny_guest::image().is_none() {
        eprintln!("!!! SKIPPING: the tiny guest was not assembled (as/ld/objcopy missing)");
        return;
    }
    if !vesper_e2e::kvm_usable("the tiny guest round trip") {
        return;
    }
    for wait in [Wait::Halt, Wait::Spin] {
        let start = Instant::now();
        let r = vmm_round_trips(100, wait, Duration::from_secs(20)).expect("round trips");
        assert_eq!(r.ticks.len(), 100);
        assert!(r.ticks.iter().all(|&t| t > 0), "every round trip took time");
        assert_eq!(r.pump.rings, 100, "the host answered every doorbell once");
        assert!(r.console.contains("tiny: done"), "{}", r.console);
        let msix = r.flags & FLAG_MSIX;
        assert_ne!(msix, 0, "the guest programmed MSI-X: {}", r.console);
        // Generous: 100 round trips take well under 10 ms each on KVM.
        assert!(start.elapsed() < Duration::from_secs(20), "{wait:?}");
    }
}
