//! The Vesper device's pure logic (BAR0 registers, config space, `VesperLogic`) and the
//! MSI routing table, without KVM.

use std::os::fd::{AsRawFd, BorrowedFd};

use kvm_bindings::{KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI};
use vmm_sys_util::eventfd::EventFd;

use super::attach::place;
use super::function::Bar0;
use super::*;
use crate::bus::BusDevice;
use crate::error::HypervisorError;
use crate::msix::{MsiMessage, Notify};
use crate::pci::{PciDevice, PciRoot};

fn read(r: &mut Registers, offset: u64) -> u32 {
    let mut b = [0; 4];
    r.read(offset, &mut b);
    u32::from_le_bytes(b)
}

#[test]
fn registers_ivposition_mask_status_and_doorbell() {
    let mut r = Registers::new(1);
    assert_eq!(read(&mut r, IV_POSITION), 1);
    assert_eq!(r.write(INTR_MASK, &0xffu32.to_le_bytes()), None);
    assert_eq!(read(&mut r, INTR_MASK), 0xff);
    r.write(INTR_STATUS, &3u32.to_le_bytes());
    assert_eq!(r.intr_status(), 3);
    assert_eq!(read(&mut r, INTR_STATUS), 3);
    assert_eq!(read(&mut r, INTR_STATUS), 0, "a read clears IntrStatus");
    assert_eq!(
        r.write(DOORBELL, &0x0003_0001u32.to_le_bytes()),
        Some(Doorbell { peer: 3, vector: 1 })
    );
    assert_eq!(read(&mut r, DOORBELL), 0, "write-only");
    assert_eq!(read(&mut r, 0x80), 0);
    // IVPosition is read-only; narrow accesses are not decoded.
    r.write(IV_POSITION, &7u32.to_le_bytes());
    assert_eq!(read(&mut r, IV_POSITION), 1);
    assert_eq!(r.write(DOORBELL, &[1, 0]), None);
    let mut w = [0xaa; 2];
    r.read(IV_POSITION, &mut w);
    assert_eq!(w, [0, 0]);
    assert_eq!(Doorbell { peer: 0, vector: 1 }.encode(), 1);
    assert_eq!(Doorbell::decode(0xffff_0002).peer, 0xffff);
}

#[test]
fn bar0_glue_signals_host_vectors_and_drops_the_rest() {
    let fds: Vec<EventFd> = (0..HOST_VECTORS)
        .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
        .collect();
    let mut bar0 = Bar0 {
        registers: Registers::new(1),
        host_vectors: fds.iter().map(|f| f.try_clone().unwrap()).collect(),
        dropped: 0,
        in_vmm: 0,
    };
    bar0.write(DOORBELL, &1u32.to_le_bytes());
    bar0.write(DOORBELL, &1u32.to_le_bytes());
    assert_eq!(fds[1].read().unwrap(), 2);
    assert!(fds[0].read().is_err(), "vector 0 not rung");
    bar0.write(DOORBELL, &0x0001_0000u32.to_le_bytes()); // peer 1
    bar0.write(DOORBELL, &(u32::from(HOST_VECTORS)).to_le_bytes()); // no such vector
    assert_eq!(bar0.dropped, 2);
    assert_eq!(bar0.in_vmm, 4);
}

fn bars(bar0: u64, bar2: u64) -> BarAddresses {
    BarAddresses {
        bar0,
        bar1: 0x1000_1000,
        bar2,
    }
}

#[test]
fn config_space_refuses_a_bad_region() {
    assert!(config_space(bars(0x1000_0000, 0x2000_0000), 3 << 20).is_none());
    assert!(config_space(bars(0x1000_0080, 0x2000_0000), 1 << 20).is_none());
    let (c, _) = config_space(bars(0x1000_0000, 1 << 32), 2 << 20).unwrap();
    assert_eq!(c.bar(2).unwrap().size, 2 << 20);
}

#[test]
fn config_space_has_qemus_msix_capability_and_bar1() {
    let (c, cap) = config_space(bars(0x1000_0000, 0x2000_0000), 1 << 20).unwrap();
    assert_eq!(cap, 0x40);
    let mut b = [0; 4];
    c.read(0x34, &mut b[..1]);
    assert_eq!(b[0], 0x40, "capability pointer");
    assert_eq!(c.read_u16(0x06) & 0x10, 0x10, "status: capability list");
    c.read(0x40, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x0001_0011, "MSI-X, last, 2 vectors");
    c.read(0x44, &mut b);
    assert_eq!(u32::from_le_bytes(b), 1, "table at BAR1 + 0");
    c.read(0x48, &mut b);
    assert_eq!(u32::from_le_bytes(b), 0x801, "PBA at BAR1 + 0x800");
    let bar1 = c.bar(1).unwrap();
    assert_eq!((bar1.size, bar1.is_64bit), (BAR1_SIZE, false));
    assert!(c.memory_enabled(), "the VMM placed the BARs");
    assert!(!c.bus_master());
}

#[test]
fn routing_table_keeps_the_irqchip_pins() {
    let m = MsiMessage {
        address: 0xfee0_0000,
        data: 0x40,
    };
    let t = routing_table(&[(MSI_GSI_BASE, m)]);
    assert_eq!(t.len(), 16 * 2 + 8 + 1);
    assert!(t[..40].iter().all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
    assert!((0..24).all(|g| t.iter().any(|e| e.gsi == g)));
    let last = t.last().unwrap();
    assert_eq!((last.gsi, last.type_), (MSI_GSI_BASE, KVM_IRQ_ROUTING_MSI));
    // SAFETY: the entry was built as an MSI route, so `msi` is the union's live field.
    let msi = unsafe { last.u.msi };
    assert_eq!(
        (msi.address_lo, msi.address_hi, msi.data),
        (0xfee0_0000, 0, 0x40)
    );
}

#[test]
fn logic_delivers_a_pending_message_on_unmask() {
    let (mut space, cap) = config_space(bars(0xc000_0000, 0xc010_0000), 1 << 20).unwrap();
    let mut logic = VesperLogic::new(1, cap);
    assert_eq!(logic.notify(0), Notify::Pending, "MSI-X off");
    logic.bar_write(1, 0, &0xfee0_0000u32.to_le_bytes());
    logic.bar_write(1, 8, &0x41u32.to_le_bytes());
    space.write(cap + 2, &0x8000u16.to_le_bytes()); // enable
    space.write(0x04, &0x6u16.to_le_bytes()); //        memory + bus master
    logic.config_written(&space);
    assert!(logic.messages.is_empty(), "vector 0 still masked");
    let mut pba = [0; 4];
    logic.bar_read(1, MSIX_LAYOUT.pba, &mut pba);
    assert_eq!(pba, [1, 0, 0, 0]);
    logic.bar_write(1, 12, &0u32.to_le_bytes()); // unmask
    let m = MsiMessage {
        address: 0xfee0_0000,
        data: 0x41,
    };
    assert_eq!(logic.messages, vec![(0, m)]);
    assert_eq!(logic.notify(0), Notify::Deliver(m));
    logic.bar_write(0, DOORBELL, &1u32.to_le_bytes());
    assert_eq!(logic.doorbells, 1);
}

#[test]
fn auto_placement_fills_the_hole_and_goes_above_ram_when_it_must() {
    let fd = EventFd::new(0).unwrap();
    let cfg = |bar0, bar2, region_size| VesperConfig {
        peer_id: 1,
        bar0,
        bar2,
        // SAFETY: `fd` outlives every config built here.
        region: unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) },
        region_size,
    };
    let ram = [(0, 0xc000_0000), (1 << 32, 0x1_4000_0000)];
    let mut pci = PciRoot::new();
    pci.set_rules(&ram, 39);
    let small = place(&pci, &ram, &cfg(0, 0, 2 << 20)).unwrap();
    assert_eq!(
        small,
        BarAddresses {
            bar2: 0xc000_0000,
            bar1: 0xc020_0000,
            bar0: 0xc020_1000,
        },
        "largest first, first fit, aligned"
    );
    // 2 GiB does not fit in the hole: above RAM (which ends at 5 GiB), aligned.
    let big = place(&pci, &ram, &cfg(0, 0, 2 << 30)).unwrap();
    assert_eq!(big.bar2, 6 << 30);
    assert_eq!(big.bar1, 0xc000_0000);
    // Explicit addresses are checked; the others avoid them.
    let mixed = place(&pci, &ram, &cfg(0xc000_0000, 0, 2 << 20)).unwrap();
    assert_eq!((mixed.bar0, mixed.bar2), (0xc000_0000, 0xc020_0000));
    assert!(matches!(
        place(&pci, &ram, &cfg(0xfee0_0000, 0, 2 << 20)),
        Err(HypervisorError::BarPlacement { bar: 0, .. })
    ));
    assert!(matches!(
        place(&pci, &ram, &cfg(0, 0xc000_1000, 2 << 20)),
        Err(HypervisorError::BarPlacement { bar: 2, .. })
    ));
    // The address width bounds it: under 39 bits (512 GiB), 256 GiB fits at 256 GiB,
    // 512 GiB nowhere.
    assert!(place(&pci, &ram, &cfg(0, 0, 256 << 30)).is_ok());
    assert!(matches!(
        place(&pci, &ram, &cfg(0, 0, 512 << 30)),
        Err(HypervisorError::NoRoomForBar { bar: 2, .. })
    ));
}

#[test]
fn the_pci_root_routes_bar_accesses_to_the_logic() {
    let (space, cap) = config_space(bars(0xc000_0000, 0xc010_0000), 1 << 20).unwrap();
    let mut root = PciRoot::new();
    root.add_device(1, 0, space, Box::new(VesperLogic::new(7, cap)))
        .unwrap();
    assert_eq!(root.decoded_at(1, 0, 1), Some(0x1000_1000));
    let mut b = [0; 4];
    assert!(root.mmio_read(0xc000_0000 + IV_POSITION, &mut b));
    assert_eq!(u32::from_le_bytes(b), 7);
    assert!(root.mmio_read(0x1000_100c, &mut b));
    assert_eq!(u32::from_le_bytes(b), 1, "vector 0 masked out of reset");
    assert!(!root.mmio_read(0xc000_0100, &mut b), "past BAR0");
    assert!(!root.mmio_read(0xc000_00fe, &mut b), "straddles BAR0's end");
}
