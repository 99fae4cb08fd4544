//! The PCI root and config spaces through the guest's view: config reads and writes at
//! every granularity, BAR sizing and placement, moves heard by devices, resets,
//! capabilities.

use std::sync::{Arc, Mutex};

use super::root::ENABLE_BIT;
use super::*;

fn vesper_like() -> ConfigSpace {
    ConfigSpace::new(PciId {
        vendor: 0x1af4,
        device: 0x1110,
        revision: 1,
        class: 0x05_00_00,
        subsystem_vendor: 0x1af4,
        subsystem: 0x1100,
    })
    .with_bar(
        0,
        MemoryBar {
            addr: 0xfeb0_0000,
            size: 256,
            is_64bit: false,
            prefetchable: false,
        },
    )
    .unwrap()
    .with_bar(
        2,
        MemoryBar {
            addr: 0x1_0000_0000,
            size: 2 << 20,
            is_64bit: true,
            prefetchable: true,
        },
    )
    .unwrap()
}

fn root() -> PciRoot {
    let mut r = PciRoot::new();
    assert!(r.add(1, 0, vesper_like()));
    r
}

fn addr(dev: u8, func: u8, reg: u8) -> u32 {
    ENABLE_BIT | (u32::from(dev) << 11) | (u32::from(func) << 8) | u32::from(reg)
}

fn read32(r: &mut PciRoot, dev: u8, reg: u8) -> u32 {
    r.write_address(addr(dev, 0, reg));
    let mut b = [0; 4];
    r.read_data(0, &mut b);
    u32::from_le_bytes(b)
}

fn write32(r: &mut PciRoot, dev: u8, reg: u8, v: u32) {
    r.write_address(addr(dev, 0, reg));
    r.write_data(0, &v.to_le_bytes());
}

#[test]
fn ids_class_and_header_at_dword_word_and_byte_granularity() {
    let mut r = root();
    assert_eq!(read32(&mut r, 0, 0), 0x1237_8086);
    assert_eq!(read32(&mut r, 1, 0x00), 0x1110_1af4);
    assert_eq!(read32(&mut r, 1, 0x08), 0x0500_0001);
    assert_eq!(read32(&mut r, 1, 0x0c) >> 16 & 0xff, 0, "header type 0");
    assert_eq!(read32(&mut r, 1, 0x2c), 0x1100_1af4);
    r.write_address(addr(1, 0, 0));
    let mut w = [0; 2];
    r.read_data(2, &mut w);
    assert_eq!(u16::from_le_bytes(w), 0x1110);
    let mut b = [0; 1];
    r.read_data(1, &mut b);
    assert_eq!(b[0], 0x1a);
    r.write_address(addr(1, 0, 0x08));
    r.read_data(3, &mut b);
    assert_eq!(b[0], 0x05, "base class");
    r.read_data(0, &mut b);
    assert_eq!(b[0], 1, "revision");
    // An access running past 0xCFF is not decoded.
    r.read_data(3, &mut w);
    assert_eq!(w, [0xff, 0xff]);
}

#[test]
fn absent_functions_other_buses_and_disabled_address_read_all_ones() {
    let mut r = root();
    assert_eq!(read32(&mut r, 2, 0), 0xffff_ffff);
    r.write_address(addr(1, 1, 0));
    let mut b = [0; 4];
    r.read_data(0, &mut b);
    assert_eq!(b, [0xff; 4]);
    r.write_address(addr(1, 0, 0) | (1 << 16)); // bus 1
    r.read_data(0, &mut b);
    assert_eq!(b, [0xff; 4]);
    r.write_address(addr(1, 0, 0) & !ENABLE_BIT);
    r.read_data(0, &mut b);
    assert_eq!(b, [0xff; 4]);
    // Writes there change nothing anywhere.
    r.write_data(0, &[0; 4]);
    assert_eq!(read32(&mut r, 1, 0), 0x1110_1af4);
    // Reserved address bits read back as zero.
    r.write_address(0xffff_ffff);
    assert_eq!(r.address(), 0x80ff_fffc);
}

#[test]
fn ids_are_read_only_and_command_keeps_only_its_writable_bits() {
    let mut r = root();
    write32(&mut r, 1, 0x00, 0);
    write32(&mut r, 1, 0x08, 0);
    assert_eq!(read32(&mut r, 1, 0x00), 0x1110_1af4);
    assert_eq!(read32(&mut r, 1, 0x08), 0x0500_0001);
    write32(&mut r, 1, 0x04, 0xffff_ffff);
    assert_eq!(read32(&mut r, 1, 0x04), 0x0006);
    let f = r.function(1, 0).unwrap();
    assert!(f.memory_enabled());
    // Byte write to the command register's low byte.
    r.write_address(addr(1, 0, 0x04));
    r.write_data(0, &[0x00]);
    assert!(!r.function(1, 0).unwrap().memory_enabled());
}

fn enable_memory(r: &mut PciRoot, dev: u8) {
    write32(r, dev, 0x04, u32::from(COMMAND_MEMORY));
}

#[test]
fn bar_sizing_protocol_and_decoding_follows_the_registers() {
    let mut r = root();
    assert_eq!(read32(&mut r, 1, 0x10), 0xfeb0_0000);
    assert_eq!(read32(&mut r, 1, 0x18), 0x0000_000c, "64-bit prefetchable");
    assert_eq!(read32(&mut r, 1, 0x1c), 0x1);
    assert!(r.decoded().is_empty(), "memory decoding off");
    enable_memory(&mut r, 1);
    assert_eq!(r.decoded_at(1, 0, 0), Some(0xfeb0_0000));
    assert_eq!(r.decoded_at(1, 0, 2), Some(1 << 32));
    // Size BAR0: the register reads the size mask, and nothing is decoded there.
    write32(&mut r, 1, 0x10, 0xffff_ffff);
    assert_eq!(read32(&mut r, 1, 0x10), 0xffff_ff00, "256 bytes");
    assert_eq!(r.decoded_at(1, 0, 0), None);
    write32(&mut r, 1, 0x10, 0xfeb0_0000);
    assert_eq!(r.decoded_at(1, 0, 0), Some(0xfeb0_0000));
    // Size BAR2 (both dwords).
    write32(&mut r, 1, 0x18, 0xffff_ffff);
    write32(&mut r, 1, 0x1c, 0xffff_ffff);
    assert_eq!(read32(&mut r, 1, 0x18), 0xffe0_000c, "2 MiB");
    assert_eq!(read32(&mut r, 1, 0x1c), 0xffff_ffff);
    assert_eq!(r.decoded_at(1, 0, 2), None);
    write32(&mut r, 1, 0x18, 0);
    write32(&mut r, 1, 0x1c, 1);
    assert_eq!(read32(&mut r, 1, 0x18), 0xc);
    assert_eq!(read32(&mut r, 1, 0x1c), 1);
    assert_eq!(r.decoded_at(1, 0, 2), Some(1 << 32));
    assert_eq!(r.function(1, 0).unwrap().refused_relocations(), 0);
    // Unimplemented BARs read zero even after all-ones.
    for reg in [0x14, 0x20, 0x24] {
        write32(&mut r, 1, reg, 0xffff_ffff);
        assert_eq!(read32(&mut r, 1, reg), 0, "BAR at {reg:#x}");
    }
    // Moving a BAR: it is decoded at the new address only.
    write32(&mut r, 1, 0x10, 0xc000_0000);
    assert_eq!(read32(&mut r, 1, 0x10), 0xc000_0000);
    assert_eq!(r.decoded_at(1, 0, 0), Some(0xc000_0000));
    assert!(r.mmio_read(0xc000_0000, &mut [0; 4]));
    assert!(!r.mmio_read(0xfeb0_0000, &mut [0; 4]));
    // Byte writes work as on hardware: four 0xff bytes size the BAR.
    r.write_address(addr(1, 0, 0x10));
    for i in 0..4 {
        r.write_data(i, &[0xff]);
    }
    assert_eq!(read32(&mut r, 1, 0x10), 0xffff_ff00);
    write32(&mut r, 1, 0x04, 0);
    assert!(r.decoded().is_empty(), "memory decoding off again");
}

#[test]
fn placements_over_ram_apics_bars_or_beyond_the_width_are_refused() {
    let mut r = root();
    r.set_rules(&[(0, 0x4000_0000)], 36);
    enable_memory(&mut r, 1);
    let refused = |r: &PciRoot| r.function(1, 0).unwrap().refused_relocations();
    for (value, what) in [
        (0x1000_0000u32, "RAM"),
        (0xfee0_0000, "LAPIC"),
        (0xfef0_0000 - 0x100, "MSI window"),
        (0xfec0_0000, "IOAPIC"),
    ] {
        let before = refused(&r);
        write32(&mut r, 1, 0x10, value);
        assert_eq!(
            read32(&mut r, 1, 0x10),
            value,
            "{what}: the register keeps it"
        );
        assert_eq!(r.decoded_at(1, 0, 0), None, "{what}: not decoded");
        assert_eq!(refused(&r), before + 1, "{what}: counted");
        assert!(!r.mmio_read(u64::from(value), &mut [0; 4]));
    }
    // The same refused value written again is counted once.
    write32(&mut r, 1, 0x10, 0xfec0_0000);
    assert_eq!(refused(&r), 4);
    // Over another BAR: the one already decoded keeps its place.
    write32(&mut r, 1, 0x10, 0xc000_0000);
    write32(&mut r, 1, 0x1c, 0);
    write32(&mut r, 1, 0x18, 0xc000_0000);
    assert_eq!(r.decoded_at(1, 0, 0), Some(0xc000_0000));
    assert_eq!(r.decoded_at(1, 0, 2), None);
    // Moving BAR0 away frees the place: BAR2 is decoded there now.
    write32(&mut r, 1, 0x10, 0xd000_0000);
    assert_eq!(r.decoded_at(1, 0, 2), Some(0xc000_0000));
    // Beyond the 36-bit width (2^36 = 64 GiB).
    write32(&mut r, 1, 0x1c, 0x10);
    assert_eq!(r.decoded_at(1, 0, 2), None);
    write32(&mut r, 1, 0x1c, 0xf);
    assert_eq!(r.decoded_at(1, 0, 2), Some(0xf_c000_0000));
    assert_eq!(r.refused_relocations(), refused(&r));
    // A new MMIO device may not go over a decoded BAR; BARs avoid reserved ranges.
    assert_eq!(
        r.reserve(0xd000_0000, 0xd000_1000).unwrap_err().addr,
        0xd000_0000
    );
    assert!(r.reserve(0xe000_0000, 0xe000_1000).is_ok());
    write32(&mut r, 1, 0x10, 0xe000_0000);
    assert_eq!(r.decoded_at(1, 0, 0), None);
    assert_eq!(
        r.find_free(0xe000_0000, 0xe000_3000, 0x1000),
        Some(0xe000_1000)
    );
    assert_eq!(r.find_free(0xe000_0000, 0xe000_1000, 0x1000), None);
}

type MoveLog = Arc<Mutex<Vec<(usize, Option<u64>)>>>;

/// Records BAR moves and refuses to map at one address.
struct Moves(MoveLog);

impl PciDevice for Moves {
    fn bar_read(&mut self, _: usize, _: u64, data: &mut [u8]) {
        data.fill(0x5a);
    }
    fn bar_write(&mut self, _: usize, _: u64, _: &[u8]) {}
    fn bar_moved(&mut self, bar: usize, addr: Option<u64>) -> bool {
        self.0.lock().unwrap().push((bar, addr));
        addr != Some(0xd000_0000)
    }
}

#[test]
fn devices_hear_of_moves_unmap_first_and_may_fail_a_map() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut r = PciRoot::new();
    let mut c = vesper_like();
    c.set_command(COMMAND_MEMORY);
    r.add_device(1, 0, c, Box::new(Moves(log.clone()))).unwrap();
    assert_eq!(
        *log.lock().unwrap(),
        vec![(0, Some(0xfeb0_0000)), (2, Some(1 << 32))]
    );
    log.lock().unwrap().clear();
    write32(&mut r, 1, 0x10, 0xc000_0000);
    assert_eq!(
        *log.lock().unwrap(),
        vec![(0, None), (0, Some(0xc000_0000))]
    );
    let mut b = [0; 2];
    assert!(r.mmio_read(0xc000_0010, &mut b));
    assert_eq!(b, [0x5a; 2]);
    write32(&mut r, 1, 0x10, 0xd000_0000);
    assert_eq!(r.decoded_at(1, 0, 0), None, "the device could not map it");
    assert_eq!(r.failed_moves(), 1);
    log.lock().unwrap().clear();
    assert!(r.remove(1, 0).is_some());
    assert_eq!(*log.lock().unwrap(), vec![(2, None)]);
    assert!(r.function(1, 0).is_none());
    // A function whose BAR cannot be decoded where it starts is not added.
    let mut c = vesper_like();
    c.set_command(COMMAND_MEMORY);
    c.write(0x10, &0xfee0_0000u32.to_le_bytes());
    assert_eq!(
        r.add_device(1, 0, c, Box::new(Moves(log.clone()))),
        Err(AddError::BarRefused {
            bar: 0,
            addr: 0xfee0_0000,
            size: 256
        })
    );
    assert!(r.function(1, 0).is_none());
}

#[test]
fn a_reset_puts_bars_and_bits_back_and_keeps_the_counts() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let mut r = PciRoot::new();
    let mut c = vesper_like();
    c.set_command(COMMAND_MEMORY);
    r.add_device(1, 0, c, Box::new(Moves(log.clone()))).unwrap();
    write32(&mut r, 1, 0x10, 0xfee0_0000); // refused
    write32(&mut r, 1, 0x10, 0xc000_0000);
    write32(&mut r, 1, 0x04, 0x6);
    log.lock().unwrap().clear();
    r.reset();
    assert_eq!(r.decoded_at(1, 0, 0), Some(0xfeb0_0000));
    assert_eq!(read32(&mut r, 1, 0x04) & 0xffff, u32::from(COMMAND_MEMORY));
    assert_eq!(r.function(1, 0).unwrap().refused_relocations(), 1);
    assert_eq!(
        *log.lock().unwrap(),
        vec![(0, None), (0, Some(0xfeb0_0000))]
    );
}

#[test]
fn capabilities_chain_and_only_writable_bits_change() {
    let (c, first) = vesper_like()
        .with_capability(0x11, &[1, 0, 0, 0], &[0, 0xc0])
        .unwrap();
    let (mut c, second) = c.with_capability(0x09, &[0xaa], &[]).unwrap();
    assert_eq!((first, second), (0x40, 0x48));
    assert_eq!(c.read_u16(0x06) & STATUS_CAPABILITIES, STATUS_CAPABILITIES);
    let mut b = [0; 1];
    c.read(0x34, &mut b);
    assert_eq!(b[0], 0x40);
    c.read(0x41, &mut b);
    assert_eq!(b[0], 0x48, "next pointer");
    c.write(0x40, &[0xff; 8]);
    assert_eq!(c.read_u16(0x40), 0x4811, "ID and next are read-only");
    assert_eq!(c.read_u16(0x42), 0xc001, "enable and mask bits written");
    c.write(0x48, &[0, 0, 0]);
    assert_eq!(c.read_u16(0x48), 0x0009, "last in the list");
    c.read(0x4a, &mut b);
    assert_eq!(b[0], 0xaa, "read-only body");
    assert!(c.with_capability(0x11, &[0; 250], &[]).is_none(), "no room");
}

#[test]
fn out_of_range_registers_and_bad_bars() {
    let mut c = vesper_like();
    let mut b = [0; 4];
    c.read(CONFIG_SPACE_LEN - 2, &mut b);
    assert_eq!(b, [0xff; 4]);
    c.read(usize::MAX, &mut b);
    assert_eq!(b, [0xff; 4]);
    c.write(usize::MAX - 1, &[1, 2, 3, 4]);
    c.write(CONFIG_SPACE_LEN - 1, &[1, 2]);
    let mut last = [0; 1];
    c.read(CONFIG_SPACE_LEN - 1, &mut last);
    assert_eq!(last, [0]);
    let bar = |addr, size, is_64bit| MemoryBar {
        addr,
        size,
        is_64bit,
        prefetchable: false,
    };
    assert!(!bar(0x1000, 0x1800, false).is_valid(), "not a power of two");
    assert!(!bar(0x800, 0x1000, false).is_valid(), "misaligned");
    assert!(
        !bar(1 << 32, 0x1000, false).is_valid(),
        "32-bit above 4 GiB"
    );
    assert!(!bar(0, 8, false).is_valid(), "too small");
    let base = || {
        ConfigSpace::new(PciId {
            vendor: 1,
            device: 2,
            revision: 0,
            class: 0,
            subsystem_vendor: 0,
            subsystem: 0,
        })
    };
    assert!(
        base().with_bar(5, bar(0, 0x1000, true)).is_none(),
        "no slot 6"
    );
    assert!(base().with_bar(6, bar(0, 0x1000, false)).is_none());
    let c = base().with_bar(0, bar(0, 0x1000, true)).unwrap();
    assert!(
        c.clone().with_bar(1, bar(0, 0x1000, false)).is_none(),
        "high dword"
    );
    assert!(c.with_bar(2, bar(0, 0x1000, false)).is_some());
    let mut r = PciRoot::new();
    assert!(!r.add(0, 0, base()), "host bridge slot taken");
    assert!(!r.add(32, 0, base()));
    assert!(!r.add(1, 8, base()));
}
