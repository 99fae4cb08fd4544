//! Protected-mode guests (assembled with `as` at test time) take host→guest interrupts
//! through the Vesper device's MSI-X: the guest finds the capability and BAR1 in config
//! space, programs vector 0 for its LAPIC, and the host's `VesperHandle::notify(0)`
//! reaches the guest's interrupt handler through a KVM MSI route and irqfd. Each test
//! skips loudly if /dev/kvm cannot be opened.

use std::fs::File;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use vesper_hypervisor::pci::PCI_HOLE;
use vesper_hypervisor::vesper::MSIX_VECTORS;
use vesper_hypervisor::{HypervisorError, Result, RunReport, Stop, VesperHandle};

mod common;
use common::asm::{self, MSI_VECTOR, READY};
use common::{enter_real_mode, kvm_available, wait_for_ready, Reports, Setup, LOAD, MIB, RUN};

const REGION: u64 = 0x8000;
/// Where a guest moves BAR1 (inside the PCI hole, away from the VMM's placements).
const MOVED_BAR1: u64 = 0xd100_0000;

/// A 1 MiB VM (with the in-kernel irqchip if `irqchip`) running `body` in protected
/// mode, with the Vesper device placed by the VMM in the PCI hole.
fn setup(body: &str, irqchip: bool) -> Setup {
    let mut s = common::setup(MIB, irqchip, 0, 0, REGION);
    enter_real_mode(&mut s.vm, &asm::guest(body, LOAD));
    for bar in 0..3 {
        let at = s.device.bar_address(bar).expect("decoded");
        assert!(
            (PCI_HOLE.0..PCI_HOLE.1).contains(&at),
            "BAR{bar} at {at:#x}, in the PCI hole"
        );
    }
    s
}

/// The irqchip VM of `setup(body)` running on its own thread.
struct Running {
    runner: JoinHandle<Result<RunReport>>,
    device: VesperHandle,
    reports: Arc<Mutex<Reports>>,
    /// The region's memfd, open while the guest runs.
    _region: File,
}

/// Starts the irqchip VM of `setup(body)` on its own thread and waits for the guest's
/// `READY`.
fn start(body: &str) -> Running {
    let Setup {
        mut vm,
        device,
        reports,
        region,
    } = setup(body, true);
    let runner = std::thread::spawn(move || vm.run(RUN));
    wait_for_ready(&reports);
    Running {
        runner,
        device,
        reports,
        _region: region,
    }
}

/// Reports `READY`, enables interrupts and spins until the PBA (BAR1 in esi) shows
/// vector 0 pending, then reports the PBA.
fn ready_until_pending() -> String {
    format!(
        r#"
    mov eax, {READY}
    call report
    sti
2:  pause
    mov eax, [esi + 0x800]
    test eax, 1
    jz 2b
    call report
"#
    )
}

/// Finds BAR1 (esi) and the MSI-X capability through config space, programs vector 0
/// for LAPIC 0 with `MSI_VECTOR`, its mask bit = `masked`, enables MSI-X, memory and bus
/// mastering, and the LAPIC. Ends with the capability's config address in edi.
fn msix_setup(masked: u32) -> String {
    format!(
        r#"
main:
    mov eax, 0x80000814
    call pci_read32
    and eax, 0xfffffff0
    mov esi, eax
    mov dword ptr [esi + 0], 0xfee00000
    mov dword ptr [esi + 4], 0
    mov dword ptr [esi + 8], {MSI_VECTOR}
    mov dword ptr [esi + 12], {masked}
    mov eax, 0x80000834
    call pci_read32
    and eax, 0xfc
    or eax, 0x80000800
    mov edi, eax
    mov bx, 0x8000
    call pci_write16_hi
    mov eax, 0x80000804
    mov ebx, 0x6
    call pci_write32
    call lapic_on
"#
    )
}

/// The handler every delivery test uses: report, EOI, power off.
fn handler_and_wait() -> String {
    format!(
        r#"
1:  hlt
    jmp 1b
handler:
    mov eax, {MSI_VECTOR}
    call report
    call eoi
    call poweroff
"#
    )
}

#[test]
fn host_notify_runs_the_guests_msix_handler() {
    if !kvm_available("msix notify") {
        return;
    }
    let body = msix_setup(0)
        + &format!(
            r#"
    mov eax, {READY}
    call report
    sti
"#
        )
        + &handler_and_wait();
    let Running {
        runner,
        device,
        reports,
        _region,
    } = start(&body);
    // Waiting with interrupts on: nothing comes until the host notifies.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(reports.lock().unwrap().0, vec![READY]);
    assert!(device.msix_enabled());
    device.notify(0).expect("notify");
    let report = runner.join().unwrap().expect("run");
    assert_eq!(report.stop, Stop::PowerOff(0));
    assert_eq!(reports.lock().unwrap().0, vec![READY, MSI_VECTOR]);
    let stats = device.interrupt_stats();
    assert_eq!(
        (stats.delivered, stats.no_irqchip, stats.not_lapic),
        (1, 0, 0)
    );
    assert!(matches!(
        device.notify(MSIX_VECTORS),
        Err(HypervisorError::NoSuchVector { .. })
    ));
    // The run's thread dropped the Vm: the handle does not keep the VM alive.
    assert!(matches!(device.notify(0), Err(HypervisorError::VmGone)));
}

#[test]
fn a_masked_vector_gets_its_pending_bit_and_fires_on_unmask() {
    if !kvm_available("msix pending") {
        return;
    }
    // Vector 0 stays masked; the guest spins until the PBA shows bit 0, reports the PBA,
    // then unmasks the vector: the pending message must arrive then.
    let body = msix_setup(1)
        + &ready_until_pending()
        + "    mov dword ptr [esi + 12], 0\n"
        + &handler_and_wait();
    let Running {
        runner,
        device,
        reports,
        _region,
    } = start(&body);
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(device.interrupt_stats().delivered, 0);
    device.notify(0).expect("notify a masked vector");
    let report = runner.join().unwrap().expect("run");
    assert_eq!(report.stop, Stop::PowerOff(0));
    assert_eq!(
        reports.lock().unwrap().0,
        vec![READY, 1, MSI_VECTOR],
        "PBA bit 0 seen, then the handler ran after the unmask"
    );
    assert!(!device.msix_pending(0));
    assert_eq!(device.interrupt_stats().delivered, 1);
}

#[test]
fn a_moved_bar1_carries_the_table_and_the_function_mask_holds_messages_back() {
    if !kvm_available("msix moved BAR1, function mask") {
        return;
    }
    // The guest moves BAR1 (decoding off, new address, decoding on), programs vector 0
    // unmasked through the new address with the *function* mask set, reports READY, spins
    // until the PBA shows the host's notification, then clears the function mask.
    let mut body = format!(
        r#"
main:
    mov eax, 0x80000804
    mov ebx, 0
    call pci_write32
    mov eax, 0x80000814
    mov ebx, {MOVED_BAR1}
    call pci_write32
    mov eax, 0x80000804
    mov ebx, 2
    call pci_write32
    jmp setup
"#
    );
    body += &msix_setup(0).replace("main:", "setup:");
    body += r#"
    mov eax, edi
    mov bx, 0xc000
    call pci_write16_hi
"#;
    body += &ready_until_pending();
    body += r#"
    mov eax, esi
    call report
    mov eax, edi
    mov bx, 0x8000
    call pci_write16_hi
"#;
    body += &handler_and_wait();
    let Running {
        runner,
        device,
        reports,
        _region,
    } = start(&body);
    assert_eq!(device.bar_address(1), Some(MOVED_BAR1));
    device.notify(0).expect("notify under the function mask");
    let report = runner.join().unwrap().expect("run");
    assert_eq!(report.stop, Stop::PowerOff(0));
    assert_eq!(
        reports.lock().unwrap().0,
        vec![READY, 1, MOVED_BAR1 as u32, MSI_VECTOR],
        "pending under the function mask, delivered when it was cleared"
    );
    assert_eq!(device.interrupt_stats().delivered, 1);
}

#[test]
fn without_an_irqchip_msix_is_refused_loudly_and_the_vm_goes_on() {
    if !kvm_available("msix without irqchip") {
        return;
    }
    let body = msix_setup(0)
        + &format!(
            r#"
    mov eax, {READY}
    call report
    call poweroff
handler:
    call poweroff
"#
        );
    let mut s = setup(&body, false);
    assert_eq!(s.vm.run(RUN).expect("run").stop, Stop::PowerOff(0));
    assert_eq!(s.reports.lock().unwrap().0, vec![READY]);
    assert!(s.device.msix_enabled());
    assert_eq!(
        s.device.interrupt_stats().no_irqchip,
        1,
        "counted at enable"
    );
    let err = s.device.notify(0).unwrap_err();
    assert!(
        matches!(err, HypervisorError::MsixNeedsIrqchip),
        "{err}: names the fix"
    );
    assert!(err.to_string().contains("Vm::with_irqchip"));
    assert_eq!(s.device.interrupt_stats().no_irqchip, 2);
}
