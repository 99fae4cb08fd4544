//! Real-mode guests drive the Vesper PCI device: config space through 0xCF8/0xCFC, BAR
//! sizing, BAR0 registers, the doorbell ioeventfd and the BAR2 shared window. Each test
//! skips loudly if /dev/kvm cannot be opened.
//!
//! The BARs are fixed by the VMM below 1 MiB + 64 KiB so a real-mode guest reaches them
//! with es = 0xffff: BAR0 at 0x100000 (es:0x0010), BAR2 = a 32 KiB memfd at 0x108000
//! (es:0x8010). Guest RAM is 1 MiB.

use std::os::fd::AsFd;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vesper_hypervisor::vesper::{DEVICE_ID, VENDOR_ID};
use vesper_hypervisor::{HypervisorError, Stop, VesperConfig, Vm};

mod common;
use common::asm::READY;
use common::{
    enter_real_mode, kvm_available, memfd, vm, vm_with_reports, wait_for_ready, Reports, Setup,
    LOAD, MIB, REPORT_PORT, RUN,
};

const BAR0: u64 = 0x10_0000;
const BAR2: u64 = 0x10_8000;
const REGION: u64 = 0x8000;

/// A 1 MiB VM running `code`, with the report port and no device.
fn setup_without_device(code: &[u8]) -> (Vm, Arc<Mutex<Reports>>) {
    let (mut vm, reports) = vm_with_reports(MIB, false);
    enter_real_mode(&mut vm, code);
    (vm, reports)
}

/// A 1 MiB VM running `code`, with the report port and the Vesper device at `BAR0` and
/// `BAR2` over a `REGION`-byte memfd.
fn setup(code: &[u8]) -> Setup {
    let mut s = common::setup(MIB, false, BAR0, BAR2, REGION);
    enter_real_mode(&mut s.vm, code);
    s
}

// Instruction builders (16-bit code). Each returns the bytes of the listed instructions.

fn le16(v: u16) -> [u8; 2] {
    v.to_le_bytes()
}

/// `mov dx, port; mov eax, value; out dx, eax`
fn out32(port: u16, value: u32) -> Vec<u8> {
    let mut c = vec![0xba];
    c.extend(le16(port));
    c.extend([0x66, 0xb8]);
    c.extend(value.to_le_bytes());
    c.extend([0x66, 0xef]);
    c
}

/// `mov dx, port; in eax, dx`
fn in32(port: u16) -> Vec<u8> {
    let mut c = vec![0xba];
    c.extend(le16(port));
    c.extend([0x66, 0xed]);
    c
}

/// `mov dx, REPORT_PORT; out dx, eax`
fn report() -> Vec<u8> {
    let mut c = vec![0xba];
    c.extend(le16(REPORT_PORT));
    c.extend([0x66, 0xef]);
    c
}

/// Config read of `address` into eax, then reported.
fn cfg_read_report(address: u32) -> Vec<u8> {
    let mut c = out32(0xcf8, address);
    c.extend(in32(0xcfc));
    c.extend(report());
    c
}

/// Config write of `value` at `address`.
fn cfg_write(address: u32, value: u32) -> Vec<u8> {
    let mut c = out32(0xcf8, address);
    c.extend(out32(0xcfc, value));
    c
}

/// `mov ax, 0xffff; mov es, ax`
const ES_HIGH: [u8; 5] = [0xb8, 0xff, 0xff, 0x8e, 0xc0];

/// `mov eax, es:[disp]`
fn load_es(disp: u16) -> Vec<u8> {
    let mut c = vec![0x26, 0x66, 0xa1];
    c.extend(le16(disp));
    c
}

/// `mov eax, value; mov es:[disp], eax`
fn store_es(disp: u16, value: u32) -> Vec<u8> {
    let mut c = vec![0x66, 0xb8];
    c.extend(value.to_le_bytes());
    c.extend([0x26, 0x66, 0xa3]);
    c.extend(le16(disp));
    c
}

/// es:disp for a guest physical address in [1 MiB, 1 MiB + 64 KiB - 16).
fn es_disp(addr: u64) -> u16 {
    u16::try_from(addr - 0xffff0).unwrap()
}

/// `cli; hlt`
const HALT: [u8; 2] = [0xfa, 0xf4];
/// `jmp $`
const SPIN: [u8; 2] = [0xeb, 0xfe];

/// Config address of 00:dev.0, register `reg`.
fn cfg(dev: u32, reg: u32) -> u32 {
    0x8000_0000 | (dev << 11) | reg
}

#[test]
fn guest_enumerates_pci_finds_vesper_and_sizes_its_bars() {
    if !kvm_available("pci enumeration") {
        return;
    }
    let mut code = Vec::new();
    code.extend(cfg_read_report(cfg(0, 0))); //              host bridge id
    code.extend(cfg_read_report(cfg(1, 0))); //              vendor/device
    code.extend(cfg_read_report(cfg(1, 8))); //              class/revision
    code.extend(cfg_read_report(cfg(2, 0))); //              absent device
    code.extend(cfg_write(cfg(1, 0x10), 0xffff_ffff)); //    size BAR0
    code.extend(cfg_read_report(cfg(1, 0x10)));
    code.extend(cfg_write(cfg(1, 0x10), BAR0 as u32)); //    restore
    code.extend(cfg_read_report(cfg(1, 0x10)));
    code.extend(cfg_write(cfg(1, 0x18), 0xffff_ffff)); //    size BAR2 (64-bit)
    code.extend(cfg_write(cfg(1, 0x1c), 0xffff_ffff));
    code.extend(cfg_read_report(cfg(1, 0x18)));
    code.extend(cfg_read_report(cfg(1, 0x1c)));
    code.extend(cfg_write(cfg(1, 0x18), BAR2 as u32)); //    restore
    code.extend(cfg_write(cfg(1, 0x1c), 0));
    code.extend(cfg_read_report(cfg(1, 0x18)));
    code.extend(cfg_write(cfg(1, 0x04), 0x2)); //            memory space enable
    code.extend(cfg_read_report(cfg(1, 0x04)));
    code.extend(ES_HIGH);
    code.extend(load_es(es_disp(BAR0 + 8))); //             IVPosition
    code.extend(report());
    code.extend(HALT);
    let mut s = setup(&code);
    assert_eq!(s.vm.run(RUN).expect("run").stop, Stop::Halted);
    let r = s.reports.lock().unwrap().0.clone();
    assert_eq!(
        r,
        vec![
            0x1237_8086,
            (u32::from(DEVICE_ID) << 16) | u32::from(VENDOR_ID),
            0x0500_0001,
            0xffff_ffff,
            0xffff_ff00, // 256 bytes, 32-bit memory
            BAR0 as u32,
            !(REGION as u32 - 1) | 0xc, // 32 KiB, 64-bit prefetchable
            0xffff_ffff,
            BAR2 as u32 | 0xc,
            0x0010_0002, // status: capability list (MSI-X); command: memory space
            1,           // IVPosition: the guest's peer id
        ]
    );
    let pci = s.vm.pci();
    let f = pci.lock().unwrap();
    let dev = f.function(1, 0).unwrap();
    assert!(dev.memory_enabled());
    assert_eq!(dev.refused_relocations(), 0);
    assert_eq!(s.vm.unmapped_accesses().total(), 0);
}

#[test]
fn guest_doorbell_fires_the_host_eventfd_while_the_guest_runs() {
    if !kvm_available("doorbell") {
        return;
    }
    let mut code = Vec::from(ES_HIGH);
    let bell = es_disp(BAR0 + 12);
    code.extend(store_es(bell, 1)); //          peer 0, vector 1
    code.extend(store_es(bell, 0x0001_0000)); // peer 1: not the host, dropped
    code.extend(store_es(bell, 0)); //          peer 0, vector 0
    code.extend(SPIN);
    let s = setup(&code);
    let (mut vm, device) = (s.vm, s.device);
    let runner = std::thread::spawn(move || vm.run(Duration::from_secs(3)));
    // Both arrive while the vCPU is still spinning.
    assert_eq!(device.wait_doorbell(0, Duration::from_secs(2)).unwrap(), 1);
    assert_eq!(device.wait_doorbell(1, Duration::from_secs(2)).unwrap(), 1);
    assert!(!runner.is_finished(), "the guest is still running");
    assert!(matches!(
        runner.join().unwrap(),
        Err(HypervisorError::Timeout { .. })
    ));
    // Only the doorbell to peer 1 exited to the VMM; the kernel took the other two.
    assert_eq!(device.doorbells_in_vmm(), 1);
    assert_eq!(device.dropped_doorbells(), 1);
    assert_eq!(device.wait_doorbell(0, Duration::ZERO).unwrap(), 0);
}

#[test]
fn guest_and_host_share_bytes_through_bar2() {
    if !kvm_available("bar2") {
        return;
    }
    let mut code = Vec::from(ES_HIGH);
    code.extend(store_es(es_disp(BAR2), 0x5345_5056)); //         "VPES" at region offset 0
    code.extend(store_es(es_disp(BAR2 + REGION - 0x20), 0x0102_0304)); // near the end
    code.extend(load_es(es_disp(BAR2 + 0x100))); //                 host bytes at 0x100
    code.extend(report());
    code.extend(HALT);
    let mut s = setup(&code);
    s.region.write_all_at(b"host", 0x100).unwrap();
    assert_eq!(s.vm.run(RUN).expect("run").stop, Stop::Halted);
    let mut got = [0u8; 4];
    s.region.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(&got, b"VPES");
    s.region.read_exact_at(&mut got, REGION - 0x20).unwrap();
    assert_eq!(got, [4, 3, 2, 1]);
    assert_eq!(
        s.reports.lock().unwrap().0,
        vec![u32::from_le_bytes(*b"host")]
    );
    // The window is memory, not MMIO: nothing reached the VMM's buses.
    assert_eq!(s.vm.unmapped_accesses().total(), 0);
    assert_eq!(s.device.doorbells_in_vmm(), 0);
}

#[test]
fn bad_device_placements_are_refused() {
    if !kvm_available("bad placements") {
        return;
    }
    let mut vm = vm(1, MIB, false, Box::new(std::io::sink()));
    let region = memfd(REGION);
    let cfg = |bar0, bar2, region_size| VesperConfig {
        peer_id: 1,
        bar0,
        bar2,
        region: region.as_fd(),
        region_size,
    };
    for (bar0, bar2, size) in [
        (0x8_0000, BAR2, REGION),      // BAR0 in RAM
        (BAR0, 0x8_0000, REGION),      // BAR2 in RAM
        (BAR0, BAR2 + 0x1000, REGION), // misaligned BAR2
        (BAR0, BAR2, 0x6000),          // not a power of two
        (BAR2 + 0x80, BAR2, REGION),   // BAR0 inside BAR2
        (BAR0, BAR2, 0x800),           // smaller than a page
    ] {
        assert!(
            vm.add_vesper_device(cfg(bar0, bar2, size)).is_err(),
            "{bar0:#x} {bar2:#x} {size:#x}"
        );
    }
    vm.add_vesper_device(cfg(BAR0, BAR2, REGION)).unwrap();
    assert!(
        vm.add_vesper_device(cfg(0x20_0000, 0x40_0000, REGION))
            .is_err(),
        "slot taken"
    );
}

/// The PIC routes IRQ `IRQ` to vector 8 + `IRQ` after the guest's init below.
const IRQ: u8 = 5;
const IRQ_SEEN: u32 = 0x1d;

/// Installs a handler for IRQ 5, programs the PIC (base 8, only IRQ 5 unmasked), reports
/// READY, then `sti; hlt` in a loop. The handler sends EOI, reports IRQ_SEEN and powers
/// the VM off with code 0.
fn irq_guest() -> Vec<u8> {
    let vector_slot = 4 * (8 + u16::from(IRQ));
    let mut c = vec![0xfa]; //                  cli
    let handler_at = c.len() + 2; // patched below
    c.extend([0xc7, 0x06]); //                  mov word [vector_slot], handler
    c.extend(le16(vector_slot));
    c.extend([0, 0]);
    c.extend([0xc7, 0x06]); //                  mov word [vector_slot + 2], 0
    c.extend(le16(vector_slot + 2));
    c.extend([0, 0]);
    for (port, value) in [
        (0x20, 0x11),          //                        ICW1: edge, cascade, ICW4
        (0x21, 0x08),          //                        ICW2: vector base 8
        (0x21, 0x04),          //                        ICW3: slave on IRQ 2
        (0x21, 0x01),          //                        ICW4: 8086 mode
        (0x21, !(1u8 << IRQ)), //               OCW1: unmask IRQ 5 only
    ] {
        c.extend([0xb0, value, 0xe6, port]); // mov al, value; out port, al
    }
    c.extend(out32(REPORT_PORT, READY));
    c.push(0xfb); //                            sti
    c.extend([0xf4, 0xeb, 0xfd]); //      wait: hlt; jmp wait
    let handler = (LOAD as usize + c.len()) as u16;
    c[handler_at + 2..handler_at + 4].copy_from_slice(&le16(handler));
    c.extend([0xb0, 0x20, 0xe6, 0x20]); //      mov al, 0x20; out 0x20, al   ; EOI
    c.extend(out32(REPORT_PORT, IRQ_SEEN));
    c.extend([0xba, 0x01, 0x05, 0xb0, 0x00, 0xee]); // mov dx, 0x501; mov al, 0; out dx, al
    c.extend(HALT);
    c
}

#[test]
fn an_irqfd_write_reaches_a_real_mode_interrupt_handler() {
    if !kvm_available("irqfd") {
        return;
    }
    assert!(
        vm(1, MIB, false, Box::new(std::io::sink()))
            .register_irqfd(IRQ.into())
            .is_err(),
        "no irqchip, no irqfd"
    );
    let (mut vm, reports) = vm_with_reports(MIB, true);
    enter_real_mode(&mut vm, &irq_guest());
    let irq = vm.register_irqfd(IRQ.into()).expect("irqfd");
    let runner = std::thread::spawn(move || vm.run(RUN));
    wait_for_ready(&reports);
    // Halted with interrupts on, waiting: nothing has come yet.
    std::thread::sleep(Duration::from_millis(50));
    assert_eq!(reports.lock().unwrap().0, vec![READY]);
    irq.write(1).unwrap();
    let report = runner.join().unwrap().expect("run");
    assert_eq!(report.stop, Stop::PowerOff(0));
    assert_eq!(reports.lock().unwrap().0, vec![READY, IRQ_SEEN]);
}

#[test]
fn a_failed_add_leaves_no_doorbell_ioeventfds_behind() {
    if !kvm_available("failed add") {
        return;
    }
    let (mut vm, reports) = setup_without_device(&[]);
    // A memslot the test owns at 2 MiB makes BAR2's memslot there fail — after BAR0's
    // doorbell ioeventfds were registered.
    let len = REGION as usize;
    // SAFETY: a fresh anonymous private mapping; checked below and never unmapped (the
    // test's VM may use it until the process ends).
    let host = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    assert_ne!(host, libc::MAP_FAILED);
    let taken = kvm_bindings::kvm_userspace_memory_region {
        slot: 7,
        flags: 0,
        guest_phys_addr: 0x20_0000,
        memory_size: REGION,
        userspace_addr: host as u64,
    };
    // SAFETY: `host` is a live mapping of `memory_size` bytes that is never unmapped.
    unsafe { vm.vm_fd().set_user_memory_region(taken) }.expect("test memslot");
    let region = memfd(REGION);
    let cfg = |bar2| VesperConfig {
        peer_id: 1,
        bar0: BAR0,
        bar2,
        region: region.as_fd(),
        region_size: REGION,
    };
    let err = vm.add_vesper_device(cfg(0x20_0000)).err().expect("refused");
    assert!(
        matches!(
            err,
            HypervisorError::BarMapFailed {
                bar: 2,
                addr: 0x20_0000
            }
        ),
        "{err}"
    );
    assert!(vm.pci().lock().unwrap().function(1, 0).is_none());
    // Same BAR0 again: KVM refuses a duplicate ioeventfd (EEXIST), so this only works
    // if the failed add unregistered its own.
    let device = vm
        .add_vesper_device(cfg(BAR2))
        .expect("add after a failed add");
    let mut code = Vec::from(ES_HIGH);
    code.extend(store_es(es_disp(BAR0 + 12), 1));
    code.extend(HALT);
    vm.load(LOAD, &code).unwrap();
    assert_eq!(vm.run(RUN).expect("run").stop, Stop::Halted);
    assert_eq!(device.wait_doorbell(1, Duration::ZERO).unwrap(), 1);
    assert_eq!(device.doorbells_in_vmm(), 0, "taken by the ioeventfd");
    reports.lock().unwrap().0.clear();
}
