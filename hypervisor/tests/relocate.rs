//! Guests move the Vesper device's BARs with the standard protocol (memory decoding off,
//! write the BAR dwords, decoding on) and the device follows: BAR0's registers and
//! doorbell ioeventfds, BAR2's memslot. Placements over RAM, the LAPIC or beyond the
//! physical address width are refused without stopping the VM. A real 2 MiB
//! `SharedRegion`, placed by the VMM in the PCI hole, is read and written by a 64-bit
//! guest. Each test skips loudly if /dev/kvm cannot be opened.

use std::os::unix::fs::FileExt;
use std::time::Duration;

use vesper_hypervisor::pci::PCI_HOLE;
use vesper_hypervisor::{Stop, VesperConfig, VesperHandle, Vm};
use vesper_shmem::SharedRegion;

mod common;
use common::asm;
use common::{enter_real_mode, kvm_available, vm_with_reports, Setup, LOAD, MIB, RUN};

const REGION: u64 = 0x8000;
const NEW_BAR0: u64 = 0xd000_0000;
const NEW_BAR2: u64 = 0xe000_0000;

/// A 1 MiB VM with the device placed by the VMM; `body(bar0, bar2)` gives the guest's
/// protected-mode code for the device's first addresses.
fn setup(body: impl Fn(u64, u64) -> String) -> Setup {
    let mut s = common::setup(MIB, false, 0, 0, REGION);
    let (bar0, bar2) = (
        s.device.bar_address(0).unwrap(),
        s.device.bar_address(2).unwrap(),
    );
    enter_real_mode(&mut s.vm, &asm::guest(&body(bar0, bar2), LOAD));
    s
}

fn refused(vm: &Vm) -> u64 {
    vm.pci()
        .lock()
        .unwrap()
        .function(1, 0)
        .unwrap()
        .refused_relocations()
}

#[test]
fn guest_moves_bar0_and_bar2_and_registers_doorbells_and_bytes_follow() {
    if !kvm_available("relocation") {
        return;
    }
    let first = std::cell::Cell::new((0, 0));
    let Setup {
        mut vm,
        device,
        region,
        reports,
    } = setup(|old0, old2| {
        first.set((old0, old2));
        format!(
            r#"
main:
    mov eax, 0x80000804
    mov ebx, 0
    call pci_write32
    mov eax, 0x80000810
    mov ebx, {NEW_BAR0}
    call pci_write32
    mov eax, 0x80000818
    mov ebx, {NEW_BAR2}
    call pci_write32
    mov eax, 0x8000081c
    mov ebx, 0
    call pci_write32
    mov eax, 0x80000804
    mov ebx, 2
    call pci_write32
    mov eax, 0x80000810
    call pci_read32
    call report
    mov eax, 0x80000818
    call pci_read32
    call report
    mov eax, [{NEW_BAR0} + 8]
    call report
    mov eax, [{old0} + 8]
    call report
    mov dword ptr [{NEW_BAR0} + 12], 1
    mov dword ptr [{NEW_BAR2}], 0x44564f4d
    mov dword ptr [{old2} + 4], 0x12345678
    mov eax, [{NEW_BAR2} + 0x100]
    call report
    call poweroff
handler:
    call poweroff
"#
        )
    });
    region.write_all_at(b"host", 0x100).unwrap();
    assert_eq!(vm.run(RUN).expect("run").stop, Stop::PowerOff(0));
    assert_eq!(
        reports.lock().unwrap().0,
        vec![
            NEW_BAR0 as u32,
            NEW_BAR2 as u32 | 0xc,
            1,           // IVPosition at the new BAR0
            0xffff_ffff, // nothing at the old one
            u32::from_le_bytes(*b"host"),
        ]
    );
    assert_eq!(device.bar_address(0), Some(NEW_BAR0));
    assert_eq!(device.bar_address(2), Some(NEW_BAR2));
    // The doorbell at the new address was taken by the moved ioeventfd, in the kernel.
    assert_eq!(device.wait_doorbell(1, Duration::ZERO).unwrap(), 1);
    assert_eq!(device.doorbells_in_vmm(), 0);
    let mut got = [0u8; 8];
    region.read_exact_at(&mut got, 0).unwrap();
    assert_eq!(
        &got, b"MOVD\0\0\0\0",
        "the write to the old BAR2 went nowhere"
    );
    let unmapped = vm.unmapped_accesses();
    assert_eq!((unmapped.mmio_reads, unmapped.mmio_writes), (1, 1));
    assert_eq!(refused(&vm), 0);
    // A machine reset puts the BARs back where the VMM placed them.
    let (old0, old2) = first.get();
    vm.reset().expect("reset");
    assert_eq!(device.bar_address(0), Some(old0));
    assert_eq!(device.bar_address(2), Some(old2));
}

#[test]
fn refused_placements_leave_the_vm_running_and_the_device_usable() {
    if !kvm_available("refused relocation") {
        return;
    }
    // Memory decoding stays on throughout; each refused placement undecodes the BAR.
    let Setup {
        mut vm,
        device,
        region,
        reports,
    } = setup(|old0, old2| {
        format!(
            r#"
main:
    mov eax, 0x80000818
    mov ebx, 0x8000
    call pci_write32
    mov eax, 0x80000818
    call pci_read32
    call report
    mov eax, 0x80000810
    mov ebx, 0xfee00000
    call pci_write32
    mov eax, [{old0} + 8]
    call report
    mov eax, 0x80000810
    mov ebx, {NEW_BAR0}
    call pci_write32
    mov eax, [{NEW_BAR0} + 8]
    call report
    mov dword ptr [{NEW_BAR0} + 12], 0
    mov eax, 0x8000081c
    mov ebx, 0x80000000
    call pci_write32
    mov eax, 0x80000818
    mov ebx, {old2}
    call pci_write32
    mov eax, 0x8000081c
    mov ebx, 0
    call pci_write32
    mov eax, [{old2} + 0x100]
    call report
    call poweroff
handler:
    call poweroff
"#
        )
    });
    region.write_all_at(b"back", 0x100).unwrap();
    assert_eq!(vm.run(RUN).expect("run").stop, Stop::PowerOff(0));
    assert_eq!(
        reports.lock().unwrap().0,
        vec![
            0x8000 | 0xc, // the register keeps a refused value (RAM) …
            0xffff_ffff,  // … BAR0 over the LAPIC: not decoded anywhere
            1,            // BAR0 moved to a good address works
            u32::from_le_bytes(*b"back"),
        ]
    );
    // RAM, LAPIC, beyond the physical address width (high dword 2^31), and the
    // transient (that high dword, the old low one) of the 64-bit write sequence.
    assert_eq!(refused(&vm), 4);
    assert_eq!(device.wait_doorbell(0, Duration::ZERO).unwrap(), 1);
    assert_eq!(device.bar_address(2), Some(region_addr(&device)));
}

fn region_addr(device: &VesperHandle) -> u64 {
    device.bar_address(2).expect("BAR2 decoded")
}

#[test]
fn a_real_2mib_shared_region_in_the_pci_hole_from_a_64_bit_guest() {
    if !kvm_available("SharedRegion in the PCI hole") {
        return;
    }
    const ENTRY: u64 = 0x10_0000;
    let region = SharedRegion::create("vesper-hv-relocate", 2 << 20).expect("region");
    let (mut vm, reports) = vm_with_reports(4 * MIB, false);
    let device = vm
        .add_vesper_device(VesperConfig::auto(1, region.fd(), region.size()))
        .expect("add the Vesper device");
    let bar2 = device.bar_address(2).unwrap();
    assert!((PCI_HOLE.0..PCI_HOLE.1).contains(&bar2), "{bar2:#x}");
    region
        .write_slice(b"HOST", region.size() - 16)
        .expect("host bytes");
    // The guest finds BAR2 in config space (both dwords), sizes it as Linux does
    // (decoding off, all-ones, read, restore, decoding on), reads the region's magic,
    // the host's bytes near the end, and writes its own into the last 8 bytes.
    let body = r#"
main:
    mov eax, 0x80000818
    call pci_read32
    and eax, 0xfffffff0
    mov esi, eax
    mov eax, 0x8000081c
    call pci_read32
    call report
    shl rax, 32
    or rsi, rax
    mov eax, 0x80000804
    mov ebx, 0
    call pci_write32
    mov eax, 0x80000818
    mov ebx, 0xffffffff
    call pci_write32
    mov eax, 0x80000818
    call pci_read32
    and eax, 0xfffffff0
    neg eax
    mov r12d, eax
    mov eax, 0x80000818
    mov ebx, esi
    call pci_write32
    mov eax, 0x80000804
    mov ebx, 2
    call pci_write32
    mov eax, r12d
    call report
    mov eax, [rsi]
    call report
    mov eax, [rsi + 4]
    call report
    lea rdi, [rsi + r12]
    mov eax, [rdi - 16]
    call report
    mov dword ptr [rdi - 8], 0x53455547
    mov dword ptr [rdi - 4], 0x444e4554
    call poweroff
"#;
    vm.load(ENTRY, &asm::guest64(body, ENTRY)).expect("load");
    vm.set_long_mode_entry(ENTRY).expect("64-bit entry");
    assert_eq!(vm.run(RUN).expect("run").stop, Stop::PowerOff(0));
    let magic = vesper_shared_abi::REGION_MAGIC.to_le_bytes();
    assert_eq!(
        reports.lock().unwrap().0,
        vec![
            0, // BAR2's high dword: in the 32-bit hole
            (2 << 20) as u32,
            u32::from_le_bytes(magic[..4].try_into().unwrap()),
            u32::from_le_bytes(magic[4..].try_into().unwrap()),
            u32::from_le_bytes(*b"HOST"),
        ]
    );
    let mut end = [0u8; 8];
    region.read_slice(&mut end, region.size() - 8).unwrap();
    assert_eq!(&end, b"GUESTEND");
    assert_eq!(device.bar_address(2), Some(bar2), "restored after sizing");
}
