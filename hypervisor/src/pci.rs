//! A tiny PCI host bridge: configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF
//! data) over bus 0, with type-0 config spaces. Pure logic, no fd.
//!
//! BARs are *fixed*: the VMM assigns each BAR's address before the guest starts and maps
//! it there. The guest can size a BAR with the standard protocol (write all-ones to the
//! BAR dword, read back the size mask and the flag bits); any other value written to a
//! BAR dword puts the assigned address back, so the config space never reports an
//! address the VMM does not decode. Such refused relocations are counted.

use std::collections::BTreeMap;

use crate::bus::BusDevice;
use crate::power::ResetControl;

/// First port of the config-address register.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Ports 0xCF8-0xCFF: address (dword at 0xCF8), reset control (byte at 0xCF9), data.
pub const PCI_PORTS_LEN: u64 = 8;
/// Bytes in a type-0 configuration space (conventional PCI).
pub const CONFIG_SPACE_LEN: usize = 256;
/// BAR registers in a type-0 header.
pub const BAR_COUNT: usize = 6;

const COMMAND: usize = 0x04;
const BAR0: usize = 0x10;
/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 0x2;
const COMMAND_WRITABLE: u16 = 0x0006; // memory space, bus master
const ENABLE_BIT: u32 = 1 << 31;

/// A memory BAR as the VMM assigns it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryBar {
    /// Guest physical address, aligned to `size`.
    pub addr: u64,
    /// Size in bytes: a power of two, at least 16.
    pub size: u64,
    /// 64-bit BAR (takes this BAR slot and the next).
    pub is_64bit: bool,
    /// Prefetchable.
    pub prefetchable: bool,
}

impl MemoryBar {
    /// Whether size and alignment are valid for a BAR (32-bit BARs below 4 GiB).
    pub fn is_valid(&self) -> bool {
        self.size >= 16
            && self.size.is_power_of_two()
            && self.addr.is_multiple_of(self.size)
            && self.addr.checked_add(self.size).is_some()
            && (self.is_64bit || self.addr + self.size <= 1 << 32)
    }

    fn flags(&self) -> u32 {
        (if self.is_64bit { 0b100 } else { 0 }) | (if self.prefetchable { 0b1000 } else { 0 })
    }

    /// The BAR dwords' size masks (all address bits the guest may write), low then high.
    fn masks(&self) -> (u32, u32) {
        let mask = !(self.size - 1);
        ((mask as u32) & !0xf, (mask >> 32) as u32)
    }
}

/// Identity of a function.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PciId {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Revision.
    pub revision: u8,
    /// Class code: base class << 16 | subclass << 8 | programming interface.
    pub class: u32,
    /// Subsystem vendor ID.
    pub subsystem_vendor: u16,
    /// Subsystem ID.
    pub subsystem: u16,
}

/// One function's type-0 configuration space.
#[derive(Clone, Debug)]
pub struct ConfigSpace {
    data: [u8; CONFIG_SPACE_LEN],
    bars: [Option<MemoryBar>; BAR_COUNT],
    refused_relocations: u64,
}

impl ConfigSpace {
    /// A header with `id`, all else zero.
    pub fn new(id: PciId) -> Self {
        let mut c = Self {
            data: [0; CONFIG_SPACE_LEN],
            bars: [None; BAR_COUNT],
            refused_relocations: 0,
        };
        c.put_u16(0x00, id.vendor);
        c.put_u16(0x02, id.device);
        c.put_u32(0x08, (id.class << 8) | u32::from(id.revision));
        c.put_u16(0x2c, id.subsystem_vendor);
        c.put_u16(0x2e, id.subsystem);
        c
    }

    /// Adds a memory BAR in slot `index` (a 64-bit BAR also takes `index + 1`). `None` if
    /// the BAR is invalid or its slots are taken or out of range.
    pub fn with_bar(mut self, index: usize, bar: MemoryBar) -> Option<Self> {
        let slots = if bar.is_64bit { 2 } else { 1 };
        let end = index.checked_add(slots)?;
        if !bar.is_valid() || end > BAR_COUNT || self.bar_slot_used(index, end) {
            return None;
        }
        self.bars[index] = Some(bar);
        self.reset_bar(index);
        Some(self)
    }

    fn bar_slot_used(&self, start: usize, end: usize) -> bool {
        (0..BAR_COUNT).any(|i| match self.bars[i] {
            Some(b) => {
                let last = if b.is_64bit { i + 1 } else { i };
                i < end && start <= last
            }
            None => false,
        })
    }

    /// The assigned BAR in slot `index`.
    pub fn bar(&self, index: usize) -> Option<MemoryBar> {
        self.bars.get(index).copied().flatten()
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get_u16(COMMAND)
    }

    /// Whether the guest enabled memory decoding.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// BAR writes that tried to move a BAR and were undone.
    pub fn refused_relocations(&self) -> u64 {
        self.refused_relocations
    }

    /// Reads `data.len()` (1, 2 or 4) bytes at `offset`; out of range reads as all-ones.
    pub fn read(&self, offset: usize, data: &mut [u8]) {
        match offset
            .checked_add(data.len())
            .and_then(|end| self.data.get(offset..end))
        {
            Some(src) => data.copy_from_slice(src),
            None => data.fill(0xff),
        }
    }

    /// Writes `data` at `offset`. Only the command register and BARs are writable;
    /// everything else (IDs, class, header type, out-of-range offsets) ignores writes.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let Some(end) = offset.checked_add(data.len()) else {
            return;
        };
        if end > CONFIG_SPACE_LEN {
            return;
        }
        for (i, &b) in (offset..end).zip(data) {
            match i {
                0x04 => self.data[i] = b & COMMAND_WRITABLE as u8,
                0x05 => self.data[i] = b & (COMMAND_WRITABLE >> 8) as u8,
                0x3c => self.data[i] = b, // interrupt line: scratch for the guest
                0x10..=0x27 => self.data[i] = b,
                _ => {}
            }
        }
        // Fix up every BAR dword the write touched.
        let first = offset.max(BAR0);
        let last = end.min(BAR0 + 4 * BAR_COUNT);
        if first < last {
            for slot in (first - BAR0) / 4..=(last - 1 - BAR0) / 4 {
                self.fix_bar_dword(slot);
            }
        }
    }

    /// Which BAR, and whether this slot is its high dword.
    fn owner(&self, slot: usize) -> Option<(MemoryBar, bool)> {
        if let Some(b) = self.bar(slot) {
            return Some((b, false));
        }
        let prev = slot.checked_sub(1).and_then(|p| self.bar(p))?;
        prev.is_64bit.then_some((prev, true))
    }

    fn fix_bar_dword(&mut self, slot: usize) {
        let at = BAR0 + 4 * slot;
        let written = self.get_u32(at);
        let Some((bar, high)) = self.owner(slot) else {
            self.put_u32(at, 0); // unimplemented BAR: reads as zero
            return;
        };
        let (mask_low, mask_high) = bar.masks();
        let (mask, assigned, flags) = if high {
            (mask_high, (bar.addr >> 32) as u32, 0)
        } else {
            (mask_low, bar.addr as u32 & !0xf, bar.flags())
        };
        let value = if written & mask == mask {
            mask // sizing
        } else {
            if written & mask != assigned {
                self.refused_relocations += 1;
            }
            assigned
        };
        self.put_u32(at, value | flags);
    }

    fn reset_bar(&mut self, index: usize) {
        if let Some(bar) = self.bar(index) {
            self.put_u32(BAR0 + 4 * index, (bar.addr as u32 & !0xf) | bar.flags());
            if bar.is_64bit {
                self.put_u32(BAR0 + 4 * (index + 1), (bar.addr >> 32) as u32);
            }
        }
    }

    fn get_u16(&self, at: usize) -> u16 {
        u16::from_le_bytes([self.data[at], self.data[at + 1]])
    }

    fn get_u32(&self, at: usize) -> u32 {
        let mut b = [0; 4];
        b.copy_from_slice(&self.data[at..at + 4]);
        u32::from_le_bytes(b)
    }

    fn put_u16(&mut self, at: usize, v: u16) {
        self.data[at..at + 2].copy_from_slice(&v.to_le_bytes());
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.data[at..at + 4].copy_from_slice(&v.to_le_bytes());
    }
}

/// The host bridge at 00:00.0 (QEMU's i440FX identity).
pub fn host_bridge() -> ConfigSpace {
    ConfigSpace::new(PciId {
        vendor: 0x8086,
        device: 0x1237,
        revision: 2,
        class: 0x06_00_00,
        subsystem_vendor: 0,
        subsystem: 0,
    })
}

/// A decoded config-address register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConfigAddress {
    /// Bus number.
    pub bus: u8,
    /// Device number (0-31).
    pub device: u8,
    /// Function number (0-7).
    pub function: u8,
    /// Dword-aligned register offset.
    pub register: u8,
}

impl ConfigAddress {
    /// Decodes a value written to 0xCF8; `None` if the enable bit is clear.
    pub fn decode(value: u32) -> Option<Self> {
        (value & ENABLE_BIT != 0).then_some(Self {
            bus: (value >> 16) as u8,
            device: ((value >> 11) & 0x1f) as u8,
            function: ((value >> 8) & 0x7) as u8,
            register: (value & 0xfc) as u8,
        })
    }
}

/// Bus 0 with its functions, seen through the config-address / config-data registers.
#[derive(Clone, Debug)]
pub struct PciRoot {
    address: u32,
    functions: BTreeMap<(u8, u8), ConfigSpace>,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// Bus 0 with only the host bridge at 00:00.0.
    pub fn new() -> Self {
        let mut functions = BTreeMap::new();
        functions.insert((0, 0), host_bridge());
        Self {
            address: 0,
            functions,
        }
    }

    /// Adds a function at 00:`device`.`function`; `false` if the slot is taken or invalid.
    pub fn add(&mut self, device: u8, function: u8, config: ConfigSpace) -> bool {
        if device > 31 || function > 7 || self.functions.contains_key(&(device, function)) {
            return false;
        }
        self.functions.insert((device, function), config);
        true
    }

    /// The function at 00:`device`.`function`.
    pub fn function(&self, device: u8, function: u8) -> Option<&ConfigSpace> {
        self.functions.get(&(device, function))
    }

    /// The config-address register's value.
    pub fn address(&self) -> u32 {
        self.address
    }

    /// The guest writes the config-address register (reserved bits 30:24, 1:0 read 0).
    pub fn write_address(&mut self, value: u32) {
        self.address = value & 0x80ff_fffc;
    }

    fn target(&mut self, data_offset: usize, len: usize) -> Option<(&mut ConfigSpace, usize)> {
        let a = ConfigAddress::decode(self.address)?;
        if a.bus != 0 || data_offset.checked_add(len)? > 4 {
            return None;
        }
        let f = self.functions.get_mut(&(a.device, a.function))?;
        Some((f, usize::from(a.register) + data_offset))
    }

    /// The guest reads `data.len()` bytes at 0xCFC + `data_offset`. Absent functions (and
    /// a disabled address) read as all-ones.
    pub fn read_data(&mut self, data_offset: usize, data: &mut [u8]) {
        match self.target(data_offset, data.len()) {
            Some((f, offset)) => f.read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// The guest writes `data` at 0xCFC + `data_offset`; absent functions ignore it.
    pub fn write_data(&mut self, data_offset: usize, data: &[u8]) {
        if let Some((f, offset)) = self.target(data_offset, data.len()) {
            f.write(offset, data);
        }
    }
}

/// Ports 0xCF8-0xCFF as one bus device: a dword at 0xCF8 is the config address, a byte
/// at 0xCF9 the reset control register, 0xCFC-0xCFF the config data. Other accesses to
/// 0xCF8-0xCFB read as all-ones and are ignored.
pub(crate) struct PciPorts {
    pub(crate) root: std::sync::Arc<std::sync::Mutex<PciRoot>>,
    pub(crate) reset: ResetControl,
}

impl PciPorts {
    fn root(&self) -> std::sync::MutexGuard<'_, PciRoot> {
        self.root
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

impl BusDevice for PciPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len()) {
            (0, 4) => data.copy_from_slice(&self.root().address().to_le_bytes()),
            (1, 1) => self.reset.read(0, data),
            (4..=7, _) => self.root().read_data((offset - 4) as usize, data),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (0, &[a, b, c, d]) => self.root().write_address(u32::from_le_bytes([a, b, c, d])),
            (1, &[_]) => self.reset.write(0, data),
            (4..=7, _) => self.root().write_data((offset - 4) as usize, data),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn bar_sizing_protocol_and_fixed_addresses() {
        let mut r = root();
        assert_eq!(read32(&mut r, 1, 0x10), 0xfeb0_0000);
        assert_eq!(read32(&mut r, 1, 0x18), 0x0000_000c, "64-bit prefetchable");
        assert_eq!(read32(&mut r, 1, 0x1c), 0x1);
        // Size BAR0.
        write32(&mut r, 1, 0x10, 0xffff_ffff);
        assert_eq!(read32(&mut r, 1, 0x10), 0xffff_ff00, "256 bytes");
        write32(&mut r, 1, 0x10, 0xfeb0_0000);
        assert_eq!(read32(&mut r, 1, 0x10), 0xfeb0_0000);
        // Size BAR2 (both dwords).
        write32(&mut r, 1, 0x18, 0xffff_ffff);
        write32(&mut r, 1, 0x1c, 0xffff_ffff);
        assert_eq!(read32(&mut r, 1, 0x18), 0xffe0_000c, "2 MiB");
        assert_eq!(read32(&mut r, 1, 0x1c), 0xffff_ffff);
        write32(&mut r, 1, 0x18, 0);
        write32(&mut r, 1, 0x1c, 1);
        assert_eq!(read32(&mut r, 1, 0x18), 0xc);
        assert_eq!(read32(&mut r, 1, 0x1c), 1);
        let f = r.function(1, 0).unwrap();
        assert_eq!(f.refused_relocations(), 0);
        // Unimplemented BARs read zero even after all-ones.
        for reg in [0x14, 0x20, 0x24] {
            write32(&mut r, 1, reg, 0xffff_ffff);
            assert_eq!(read32(&mut r, 1, reg), 0, "BAR at {reg:#x}");
        }
        // Moving a BAR is refused and counted.
        write32(&mut r, 1, 0x10, 0xc000_0000);
        assert_eq!(read32(&mut r, 1, 0x10), 0xfeb0_0000);
        assert_eq!(r.function(1, 0).unwrap().refused_relocations(), 1);
        // Sizing needs a whole all-ones dword: byte writes are each checked as a dword
        // and cannot move or size the BAR.
        r.write_address(addr(1, 0, 0x10));
        for i in 0..4 {
            r.write_data(i, &[0xff]);
        }
        assert_eq!(read32(&mut r, 1, 0x10), 0xfeb0_0000);
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
}
