//! A tiny PCI host bridge: configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF
//! data) over bus 0, with type-0 config spaces, capability lists and memory BARs the
//! guest can move. Pure logic, no fd: what a BAR move or a config write means for KVM is
//! up to each function's `PciDevice` (the glue).
//!
//! BARs behave as on hardware: a BAR register keeps the address bits the guest writes
//! (bits below the BAR's size read as zero, so writing all-ones and reading back gives
//! the size), and the function decodes its BARs only while its memory-space enable bit
//! is set. `PciRoot` decides where each BAR is *decoded*: at the address its register
//! holds, unless that range overlaps guest RAM, a reserved range (IOAPIC, LAPIC/MSI
//! window, other MMIO devices), another decoded BAR, or goes beyond the guest's physical
//! address width — then the BAR is refused: not decoded at all, counted and logged, and
//! the VM goes on. A BAR already decoded at an address keeps it over a newcomer. So the
//! device never decodes anything but what its BAR registers report.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::bus::{BusDevice, BusFallback};
use crate::power::ResetControl;

/// First port of the config-address register.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Ports 0xCF8-0xCFF: address (dword at 0xCF8), reset control (byte at 0xCF9), data.
pub const PCI_PORTS_LEN: u64 = 8;
/// Bytes in a type-0 configuration space (conventional PCI).
pub const CONFIG_SPACE_LEN: usize = 256;
/// BAR registers in a type-0 header.
pub const BAR_COUNT: usize = 6;
/// The 32-bit PCI MMIO hole where the VMM places BARs: [start, end).
pub const PCI_HOLE: (u64, u64) = (0xC000_0000, 0xFEC0_0000);
/// Guest-physical ranges no BAR may use: the IOAPIC page, and the LAPIC page with the
/// rest of the MSI address window [0xFEE0_0000, 0xFEF0_0000).
pub const APIC_RANGES: [(u64, u64); 2] = [(0xFEC0_0000, 0x1000), (0xFEE0_0000, 0x10_0000)];
/// Guest physical address width assumed until the VMM sets the real one.
pub const DEFAULT_PHYS_BITS: u8 = 36;
/// Refused BAR placements logged per bus before further ones are only counted.
pub const REFUSED_LOG_LIMIT: u64 = 16;

const COMMAND: usize = 0x04;
const STATUS: usize = 0x06;
const BAR0: usize = 0x10;
const CAPABILITY_POINTER: usize = 0x34;
const INTERRUPT_LINE: usize = 0x3c;
/// Where the first capability goes (after the type-0 header).
const FIRST_CAPABILITY: usize = 0x40;
/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 0x2;
/// Command register: bus master enable (the function may issue MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 0x4;
/// Status register: the function has a capability list.
pub const STATUS_CAPABILITIES: u16 = 0x10;
const COMMAND_WRITABLE: u16 = COMMAND_MEMORY | COMMAND_BUS_MASTER;
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

    /// The BAR dwords' address masks (the bits the guest may write), low then high. A
    /// 32-bit BAR has no high dword (mask 0).
    fn masks(&self) -> (u32, u32) {
        let mask = !(self.size - 1);
        let high = if self.is_64bit {
            (mask >> 32) as u32
        } else {
            0
        };
        ((mask as u32) & !0xf, high)
    }

    /// Whether `addr` is what the sizing protocol leaves in the register (all address
    /// bits of a dword set): not a placement, so never decoded nor counted as refused.
    pub fn is_sizing_pattern(&self, addr: u64) -> bool {
        let (low, high) = self.masks();
        (low != 0 && (addr as u32) & low == low)
            || (self.is_64bit && high != 0 && (addr >> 32) as u32 & high == high)
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
    /// Bits the guest may write, per byte (BARs are handled apart).
    wmask: [u8; CONFIG_SPACE_LEN],
    bars: [Option<MemoryBar>; BAR_COUNT],
    /// Offset of the last capability in the list, and where the next one goes.
    last_capability: Option<usize>,
    next_capability: usize,
    refused_relocations: u64,
}

impl ConfigSpace {
    /// A header with `id`, all else zero.
    pub fn new(id: PciId) -> Self {
        let mut c = Self {
            data: [0; CONFIG_SPACE_LEN],
            wmask: [0; CONFIG_SPACE_LEN],
            bars: [None; BAR_COUNT],
            last_capability: None,
            next_capability: FIRST_CAPABILITY,
            refused_relocations: 0,
        };
        c.put_u16(0x00, id.vendor);
        c.put_u16(0x02, id.device);
        c.put_u32(0x08, (id.class << 8) | u32::from(id.revision));
        c.put_u16(0x2c, id.subsystem_vendor);
        c.put_u16(0x2e, id.subsystem);
        c.wmask[COMMAND..COMMAND + 2].copy_from_slice(&COMMAND_WRITABLE.to_le_bytes());
        c.wmask[INTERRUPT_LINE] = 0xff; // scratch for the guest
        c
    }

    /// Adds a memory BAR in slot `index` (a 64-bit BAR also takes `index + 1`), its
    /// register set to `bar.addr`. `None` if the BAR is invalid or its slots are taken or
    /// out of range.
    pub fn with_bar(mut self, index: usize, bar: MemoryBar) -> Option<Self> {
        let slots = if bar.is_64bit { 2 } else { 1 };
        let end = index.checked_add(slots)?;
        if !bar.is_valid() || end > BAR_COUNT || self.bar_slot_used(index, end) {
            return None;
        }
        self.bars[index] = Some(bar);
        self.put_u32(BAR0 + 4 * index, (bar.addr as u32 & !0xf) | bar.flags());
        if bar.is_64bit {
            self.put_u32(BAR0 + 4 * (index + 1), (bar.addr >> 32) as u32);
        }
        Some(self)
    }

    /// Appends a capability with ID `id` to the list: `body` follows the ID and
    /// next-pointer bytes, `writable` (same length as `body`, or shorter: the rest is
    /// read-only) says which of its bits the guest may write. Sets the status register's
    /// capability-list bit. Returns the capability's offset, `None` if it does not fit.
    pub fn with_capability(
        mut self,
        id: u8,
        body: &[u8],
        writable: &[u8],
    ) -> Option<(Self, usize)> {
        let at = self.next_capability;
        let end = at.checked_add(2)?.checked_add(body.len())?;
        if end > CONFIG_SPACE_LEN || writable.len() > body.len() {
            return None;
        }
        self.data[at] = id;
        self.data[at + 1] = 0;
        self.data[at + 2..end].copy_from_slice(body);
        self.wmask[at + 2..at + 2 + writable.len()].copy_from_slice(writable);
        match self.last_capability {
            Some(prev) => self.data[prev + 1] = at as u8,
            None => self.data[CAPABILITY_POINTER] = at as u8,
        }
        let status = self.get_u16(STATUS) | STATUS_CAPABILITIES;
        self.put_u16(STATUS, status);
        self.last_capability = Some(at);
        // Capabilities start dword-aligned.
        self.next_capability = end.next_multiple_of(4);
        Some((self, at))
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

    /// The BAR in slot `index`, with the address its register holds now.
    pub fn bar(&self, index: usize) -> Option<MemoryBar> {
        let mut bar = self.bars.get(index).copied().flatten()?;
        bar.addr = self.bar_address(index, bar);
        Some(bar)
    }

    fn bar_address(&self, index: usize, bar: MemoryBar) -> u64 {
        let low = u64::from(self.get_u32(BAR0 + 4 * index) & !0xf);
        let high = if bar.is_64bit {
            u64::from(self.get_u32(BAR0 + 4 * (index + 1)))
        } else {
            0
        };
        (high << 32) | low
    }

    /// The command register.
    pub fn command(&self) -> u16 {
        self.get_u16(COMMAND)
    }

    /// Whether the guest enabled memory decoding.
    pub fn memory_enabled(&self) -> bool {
        self.command() & COMMAND_MEMORY != 0
    }

    /// Whether the guest let the function master the bus (needed to send an MSI).
    pub fn bus_master(&self) -> bool {
        self.command() & COMMAND_BUS_MASTER != 0
    }

    /// Sets the command register (the VMM acting as firmware), writable bits only.
    pub fn set_command(&mut self, command: u16) {
        self.put_u16(COMMAND, command & COMMAND_WRITABLE);
    }

    /// BAR placements the guest asked for and `PciRoot` refused.
    pub fn refused_relocations(&self) -> u64 {
        self.refused_relocations
    }

    /// A little-endian u16 at `offset` (0xffff out of range).
    pub fn read_u16(&self, offset: usize) -> u16 {
        let mut b = [0; 2];
        self.read(offset, &mut b);
        u16::from_le_bytes(b)
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

    /// Writes `data` at `offset`. Only the command register, the BARs, the interrupt
    /// line and the writable bits of capabilities change; everything else (IDs, class,
    /// header type, out-of-range offsets) ignores writes.
    pub fn write(&mut self, offset: usize, data: &[u8]) {
        let Some(end) = offset.checked_add(data.len()) else {
            return;
        };
        if end > CONFIG_SPACE_LEN {
            return;
        }
        for (i, &b) in (offset..end).zip(data) {
            if (BAR0..BAR0 + 4 * BAR_COUNT).contains(&i) {
                self.data[i] = b;
            } else {
                self.data[i] = (self.data[i] & !self.wmask[i]) | (b & self.wmask[i]);
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
        if let Some(b) = self.bars.get(slot).copied().flatten() {
            return Some((b, false));
        }
        let prev = slot
            .checked_sub(1)
            .and_then(|p| self.bars.get(p).copied().flatten())?;
        prev.is_64bit.then_some((prev, true))
    }

    /// Address bits below the BAR's size read as zero and the flag bits are read-only,
    /// as on hardware; the rest keeps what the guest wrote.
    fn fix_bar_dword(&mut self, slot: usize) {
        let at = BAR0 + 4 * slot;
        let written = self.get_u32(at);
        let value = match self.owner(slot) {
            None => 0, // unimplemented BAR: reads as zero
            Some((bar, true)) => written & bar.masks().1,
            Some((bar, false)) => (written & bar.masks().0) | bar.flags(),
        };
        self.put_u32(at, value);
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

/// What a PCI function does beyond its config space: its BARs' contents, and what a BAR
/// move or a config write means (the glue maps BARs into KVM; pure logic does nothing).
/// Called with the `PciRoot` locked.
pub trait PciDevice: Send {
    /// The guest reads `data.len()` bytes at `offset` in BAR `bar` (an access that exited
    /// to the VMM; it lies wholly inside the BAR).
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]);
    /// The guest writes `data` at `offset` in BAR `bar`.
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]);
    /// The guest wrote the config space; `config` is its state after the write.
    fn config_written(&mut self, config: &ConfigSpace) {
        let _ = config;
    }
    /// The machine is reset: back to the power-on state (the config space is reset by
    /// the PCI root).
    fn reset(&mut self) {}
    /// BAR `bar` is now decoded at `addr` (`None`: no longer decoded). Returns `false`
    /// if the device could not follow (then the BAR is not decoded and counted).
    fn bar_moved(&mut self, bar: usize, addr: Option<u64>) -> bool {
        let _ = (bar, addr);
        true
    }
}

/// Where a BAR is decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedBar {
    /// Device number on bus 0.
    pub device: u8,
    /// Function number.
    pub function: u8,
    /// BAR index.
    pub bar: usize,
    /// Guest physical address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

impl DecodedBar {
    fn end(&self) -> u64 {
        self.addr + self.size
    }
}

struct Function {
    config: ConfigSpace,
    /// The config space as added: what a reset returns to.
    initial: ConfigSpace,
    device: Option<Box<dyn PciDevice>>,
    /// Last refused placement per BAR, so a refusal is counted once.
    refused: [Option<u64>; BAR_COUNT],
}

/// Why `PciRoot::add_device` did not add a function.
#[derive(Debug, PartialEq, Eq)]
pub enum AddError {
    /// The slot is taken, or the device/function number is out of range.
    SlotTaken,
    /// A BAR's initial address cannot be decoded (overlap, reserved, beyond the width).
    BarRefused {
        /// BAR index.
        bar: usize,
        /// Its address.
        addr: u64,
        /// Its size.
        size: u64,
    },
    /// The device could not map a BAR where it may be decoded (e.g. KVM refused).
    DeviceFailed {
        /// BAR index.
        bar: usize,
        /// Its address.
        addr: u64,
    },
}

/// Bus 0 with its functions, seen through the config-address / config-data registers,
/// and the router of guest MMIO to the BARs where they are decoded now.
pub struct PciRoot {
    address: u32,
    functions: BTreeMap<(u8, u8), Function>,
    /// Decoded BARs by address.
    decoded: BTreeMap<u64, DecodedBar>,
    /// [start, end) ranges no BAR may overlap: the APIC windows, other MMIO devices…
    reserved: Vec<(u64, u64)>,
    /// … and guest RAM.
    ram: Vec<(u64, u64)>,
    /// One past the highest guest physical address a BAR may use.
    limit: u64,
    refused_total: u64,
    failed_moves: u64,
}

impl Default for PciRoot {
    fn default() -> Self {
        Self::new()
    }
}

impl PciRoot {
    /// Bus 0 with only the host bridge at 00:00.0; the APIC ranges reserved, a
    /// `DEFAULT_PHYS_BITS` address width.
    pub fn new() -> Self {
        let mut functions = BTreeMap::new();
        functions.insert(
            (0, 0),
            Function {
                config: host_bridge(),
                initial: host_bridge(),
                device: None,
                refused: [None; BAR_COUNT],
            },
        );
        Self {
            address: 0,
            functions,
            decoded: BTreeMap::new(),
            reserved: APIC_RANGES.iter().map(|&(a, l)| (a, a + l)).collect(),
            ram: Vec::new(),
            limit: 1 << DEFAULT_PHYS_BITS,
            refused_total: 0,
            failed_moves: 0,
        }
    }

    /// Adds a function with no device logic at 00:`device`.`function` (its BARs, if
    /// decoded, read as all-ones); `false` if the slot is taken or invalid, or a BAR
    /// cannot be decoded where it is.
    pub fn add(&mut self, device: u8, function: u8, config: ConfigSpace) -> bool {
        self.insert(device, function, config, None).is_ok()
    }

    /// Adds a function with its device logic. If the config's memory space is enabled,
    /// every BAR must be decodable where its register points (else nothing is added).
    pub fn add_device(
        &mut self,
        device: u8,
        function: u8,
        config: ConfigSpace,
        logic: Box<dyn PciDevice>,
    ) -> Result<(), AddError> {
        self.insert(device, function, config, Some(logic))
    }

    fn insert(
        &mut self,
        device: u8,
        function: u8,
        config: ConfigSpace,
        logic: Option<Box<dyn PciDevice>>,
    ) -> Result<(), AddError> {
        if device > 31 || function > 7 || self.functions.contains_key(&(device, function)) {
            return Err(AddError::SlotTaken);
        }
        let enabled = config.memory_enabled();
        self.functions.insert(
            (device, function),
            Function {
                initial: config.clone(),
                config,
                device: logic,
                refused: [None; BAR_COUNT],
            },
        );
        self.redecode();
        if enabled {
            let f = &self.functions[&(device, function)];
            for bar in 0..BAR_COUNT {
                let Some(b) = f.config.bar(bar) else {
                    continue;
                };
                if self.decoded_at(device, function, bar).is_none() {
                    let placeable = self.placement_ok(b.addr, b.size, &self.decoded);
                    self.remove(device, function);
                    return Err(if placeable {
                        AddError::DeviceFailed { bar, addr: b.addr }
                    } else {
                        AddError::BarRefused {
                            bar,
                            addr: b.addr,
                            size: b.size,
                        }
                    });
                }
            }
        }
        Ok(())
    }

    /// Removes a function (its BARs are undecoded first); returns its device logic.
    pub fn remove(&mut self, device: u8, function: u8) -> Option<Box<dyn PciDevice>> {
        let f = self.functions.get_mut(&(device, function))?;
        f.config.set_command(0);
        self.redecode();
        self.functions
            .remove(&(device, function))
            .and_then(|f| f.device)
    }

    /// Removes every function's device logic (their BARs undecoded first), e.g. so their
    /// KVM resources go before the VM's.
    pub fn remove_devices(&mut self) {
        let keys: Vec<_> = self.functions.keys().copied().collect();
        for (d, f) in keys {
            if let Some(func) = self.functions.get_mut(&(d, f)) {
                func.config.set_command(0);
            }
        }
        self.redecode();
        for f in self.functions.values_mut() {
            f.device = None;
        }
    }

    /// A machine reset: every function's config space back to how it was added (BARs
    /// where the VMM placed them, capabilities' bits cleared; refusal counts kept), its
    /// device logic reset, BARs decoded again.
    pub fn reset(&mut self) {
        self.address = 0;
        for f in self.functions.values_mut() {
            let refused = f.config.refused_relocations;
            f.config = f.initial.clone();
            f.config.refused_relocations = refused;
            f.refused = [None; BAR_COUNT];
            if let Some(dev) = f.device.as_mut() {
                dev.reset();
            }
        }
        self.redecode();
    }

    /// The function at 00:`device`.`function`.
    pub fn function(&self, device: u8, function: u8) -> Option<&ConfigSpace> {
        self.functions.get(&(device, function)).map(|f| &f.config)
    }

    /// Sets guest RAM ([start, end) ranges), which no BAR may overlap, and the guest's
    /// physical address width. BARs are decoded again under the new rules.
    pub fn set_rules(&mut self, ram: &[(u64, u64)], phys_bits: u8) {
        self.ram = ram.to_vec();
        self.limit = 1u64 << phys_bits.clamp(32, 63);
        self.redecode();
    }

    /// Adds one range, [start, end), no BAR may overlap (a new MMIO device). Refused with
    /// the BAR decoded there now, if any (then nothing changes).
    pub fn reserve(&mut self, start: u64, end: u64) -> Result<(), DecodedBar> {
        if let Some(d) = self
            .decoded
            .values()
            .find(|d| d.addr < end && start < d.end())
        {
            return Err(*d);
        }
        self.reserved.push((start, end));
        Ok(())
    }

    /// Where BAR `bar` of 00:`device`.`function` is decoded now.
    pub fn decoded_at(&self, device: u8, function: u8, bar: usize) -> Option<u64> {
        self.decoded
            .values()
            .find(|d| d.device == device && d.function == function && d.bar == bar)
            .map(|d| d.addr)
    }

    /// Every decoded BAR, by address.
    pub fn decoded(&self) -> Vec<DecodedBar> {
        self.decoded.values().copied().collect()
    }

    /// One past the highest address a BAR may use.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Refused BAR placements on the whole bus.
    pub fn refused_relocations(&self) -> u64 {
        self.refused_total
    }

    /// BAR moves a device could not follow (e.g. KVM refused a memslot).
    pub fn failed_moves(&self) -> u64 {
        self.failed_moves
    }

    /// Whether [addr, addr + size) may hold a BAR now: inside the address width, off
    /// every reserved range and every decoded BAR.
    pub fn is_free(&self, addr: u64, size: u64) -> bool {
        self.placement_ok(addr, size, &self.decoded)
    }

    /// The lowest `size`-aligned address in [start, end) where `size` bytes are free, if
    /// any. `size` must be a power of two.
    pub fn find_free(&self, start: u64, end: u64, size: u64) -> Option<u64> {
        if !size.is_power_of_two() {
            return None;
        }
        let mut at = start.checked_next_multiple_of(size)?;
        loop {
            let stop = at.checked_add(size)?;
            if stop > end {
                return None;
            }
            let blocker = self
                .reserved
                .iter()
                .chain(&self.ram)
                .copied()
                .chain(self.decoded.values().map(|d| (d.addr, d.end())))
                .filter(|&(s, e)| s < stop && at < e)
                .map(|(_, e)| e)
                .max();
            match blocker {
                None if stop <= self.limit => return Some(at),
                None => return None,
                Some(e) => at = e.checked_next_multiple_of(size)?,
            }
        }
    }

    fn placement_ok(&self, addr: u64, size: u64, decoded: &BTreeMap<u64, DecodedBar>) -> bool {
        let Some(end) = addr.checked_add(size) else {
            return false;
        };
        end <= self.limit
            && !self
                .reserved
                .iter()
                .chain(&self.ram)
                .any(|&(s, e)| s < end && addr < e)
            && !decoded.values().any(|d| d.addr < end && addr < d.end())
    }

    /// Decides again where every BAR is decoded, and tells the devices whose BARs moved:
    /// first everything that stops being decoded where it was, then the new placements.
    fn redecode(&mut self) {
        // Wanted placements: (unchanged first, so a decoded BAR keeps its place).
        let mut unchanged = Vec::new();
        let mut changed = Vec::new();
        for (&(device, function), f) in &self.functions {
            if !f.config.memory_enabled() {
                continue;
            }
            for bar in 0..BAR_COUNT {
                let Some(b) = f.config.bar(bar) else {
                    continue;
                };
                let want = DecodedBar {
                    device,
                    function,
                    bar,
                    addr: b.addr,
                    size: b.size,
                };
                if self.decoded.get(&b.addr) == Some(&want) {
                    unchanged.push(want);
                } else {
                    changed.push(want);
                }
            }
        }
        let mut next: BTreeMap<u64, DecodedBar> = BTreeMap::new();
        for want in unchanged.into_iter().chain(changed) {
            let sizing = self
                .functions
                .get(&(want.device, want.function))
                .and_then(|f| f.config.bars.get(want.bar).copied().flatten())
                .is_some_and(|b| b.is_sizing_pattern(want.addr));
            if !sizing && self.placement_ok(want.addr, want.size, &next) {
                next.insert(want.addr, want);
                if let Some(f) = self.functions.get_mut(&(want.device, want.function)) {
                    f.refused[want.bar] = None;
                }
            } else {
                self.refuse(want);
            }
        }
        let old = std::mem::take(&mut self.decoded);
        let gone: Vec<DecodedBar> = old
            .values()
            .filter(|d| next.get(&d.addr) != Some(d))
            .copied()
            .collect();
        let new: Vec<DecodedBar> = next
            .values()
            .filter(|d| old.get(&d.addr) != Some(d))
            .copied()
            .collect();
        for d in gone {
            self.notify_move(d, None);
        }
        self.decoded = next;
        for d in new {
            if !self.notify_move(d, Some(d.addr)) {
                self.decoded.remove(&d.addr);
                self.failed_moves += 1;
                if self.failed_moves <= REFUSED_LOG_LIMIT {
                    tracing::warn!(?d, "a device could not map its BAR; it is not decoded");
                }
            }
        }
    }

    fn notify_move(&mut self, d: DecodedBar, addr: Option<u64>) -> bool {
        match self
            .functions
            .get_mut(&(d.device, d.function))
            .and_then(|f| f.device.as_mut())
        {
            Some(dev) => dev.bar_moved(d.bar, addr),
            None => true,
        }
    }

    fn refuse(&mut self, want: DecodedBar) {
        let Some(f) = self.functions.get_mut(&(want.device, want.function)) else {
            return;
        };
        let sizing = f
            .config
            .bars
            .get(want.bar)
            .copied()
            .flatten()
            .is_some_and(|b| b.is_sizing_pattern(want.addr));
        if sizing || f.refused[want.bar] == Some(want.addr) {
            return;
        }
        f.refused[want.bar] = Some(want.addr);
        f.config.refused_relocations += 1;
        self.refused_total += 1;
        if self.refused_total <= REFUSED_LOG_LIMIT {
            tracing::warn!(
                device = want.device,
                function = want.function,
                bar = want.bar,
                addr = want.addr,
                size = want.size,
                "BAR placement refused (overlaps RAM, an APIC, a device or another BAR, \
                 or beyond the physical address width); the BAR is not decoded"
            );
        }
        if self.refused_total == REFUSED_LOG_LIMIT {
            tracing::warn!("further refused BAR placements are only counted");
        }
    }

    /// The config-address register's value.
    pub fn address(&self) -> u32 {
        self.address
    }

    /// The guest writes the config-address register (reserved bits 30:24, 1:0 read 0).
    pub fn write_address(&mut self, value: u32) {
        self.address = value & 0x80ff_fffc;
    }

    fn target(&self, data_offset: usize, len: usize) -> Option<((u8, u8), usize)> {
        let a = ConfigAddress::decode(self.address)?;
        if a.bus != 0 || data_offset.checked_add(len)? > 4 {
            return None;
        }
        let key = (a.device, a.function);
        self.functions
            .contains_key(&key)
            .then_some((key, usize::from(a.register) + data_offset))
    }

    /// The guest reads `data.len()` bytes at 0xCFC + `data_offset`. Absent functions (and
    /// a disabled address) read as all-ones.
    pub fn read_data(&mut self, data_offset: usize, data: &mut [u8]) {
        match self
            .target(data_offset, data.len())
            .and_then(|(key, offset)| Some((self.functions.get(&key)?, offset)))
        {
            Some((f, offset)) => f.config.read(offset, data),
            None => data.fill(0xff),
        }
    }

    /// The guest writes `data` at 0xCFC + `data_offset`; absent functions ignore it. The
    /// function's device hears of the write, then BARs are decoded again.
    pub fn write_data(&mut self, data_offset: usize, data: &[u8]) {
        let Some((key, offset)) = self.target(data_offset, data.len()) else {
            return;
        };
        if let Some(f) = self.functions.get_mut(&key) {
            f.config.write(offset, data);
            if let Some(dev) = f.device.as_mut() {
                dev.config_written(&f.config);
            }
        }
        self.redecode();
    }

    fn route(&mut self, addr: u64, len: usize) -> Option<(&mut dyn PciDevice, usize, u64)> {
        let (_, d) = self.decoded.range(..=addr).next_back()?;
        let d = *d;
        let end = addr.checked_add(len as u64)?;
        if len == 0 || end > d.end() {
            return None;
        }
        let f = self.functions.get_mut(&(d.device, d.function))?;
        let dev = f.device.as_deref_mut()?;
        Some((dev, d.bar, addr - d.addr))
    }

    /// A guest MMIO read at `addr`: `false` if no decoded BAR holds the whole access.
    pub fn mmio_read(&mut self, addr: u64, data: &mut [u8]) -> bool {
        let inside = self.decoded_holds(addr, data.len());
        match self.route(addr, data.len()) {
            Some((dev, bar, offset)) => dev.bar_read(bar, offset, data),
            None if inside => data.fill(0xff), // a function with no device logic
            None => return false,
        }
        true
    }

    /// A guest MMIO write at `addr`: `false` if no decoded BAR holds the whole access.
    pub fn mmio_write(&mut self, addr: u64, data: &[u8]) -> bool {
        let inside = self.decoded_holds(addr, data.len());
        if let Some((dev, bar, offset)) = self.route(addr, data.len()) {
            dev.bar_write(bar, offset, data);
        }
        inside
    }

    fn decoded_holds(&self, addr: u64, len: usize) -> bool {
        let Some(end) = addr.checked_add(len as u64) else {
            return false;
        };
        len > 0
            && self
                .decoded
                .range(..=addr)
                .next_back()
                .is_some_and(|(_, d)| end <= d.end())
    }
}

fn lock(root: &Mutex<PciRoot>) -> MutexGuard<'_, PciRoot> {
    root.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ports 0xCF8-0xCFF as one bus device: a dword at 0xCF8 is the config address, a byte
/// at 0xCF9 the reset control register, 0xCFC-0xCFF the config data. Other accesses to
/// 0xCF8-0xCFB read as all-ones and are ignored.
pub struct PciPorts {
    root: Arc<Mutex<PciRoot>>,
    reset: Option<ResetControl>,
}

impl PciPorts {
    /// The ports of `root`; without `reset`, a byte at 0xCF9 reads all-ones.
    pub(crate) fn new(root: Arc<Mutex<PciRoot>>, reset: Option<ResetControl>) -> Self {
        Self { root, reset }
    }

    /// The ports of `root` with no reset control (for tests and fuzzing).
    pub fn without_reset(root: Arc<Mutex<PciRoot>>) -> Self {
        Self::new(root, None)
    }
}

impl BusDevice for PciPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len(), self.reset.as_mut()) {
            (0, 4, _) => data.copy_from_slice(&lock(&self.root).address().to_le_bytes()),
            (1, 1, Some(reset)) => reset.read(0, data),
            (4..=7, _, _) => lock(&self.root).read_data((offset - 4) as usize, data),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data, self.reset.as_mut()) {
            (0, &[a, b, c, d], _) => {
                lock(&self.root).write_address(u32::from_le_bytes([a, b, c, d]))
            }
            (1, &[_], Some(reset)) => reset.write(0, data),
            (4..=7, _, _) => lock(&self.root).write_data((offset - 4) as usize, data),
            _ => {}
        }
    }
}

/// Guest MMIO that no fixed bus range holds goes to the BARs where they are decoded now.
pub(crate) struct PciMmio(pub(crate) Arc<Mutex<PciRoot>>);

impl BusFallback for PciMmio {
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        lock(&self.0).mmio_read(addr, data)
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        lock(&self.0).mmio_write(addr, data)
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
}
