//! Bus 0 of the PCI host bridge: the functions with their config spaces, reached through
//! the config-address / config-data registers, and the router of guest MMIO to the BARs
//! where they are decoded now. It decides where a BAR is decoded: at the address its
//! register holds, unless that overlaps guest RAM, a reserved range, another decoded BAR
//! or lies beyond the physical address width; then the BAR is refused, counted and
//! logged. What a move means for KVM is each function's `PciDevice`'s.

use std::collections::BTreeMap;

use super::config_space::{host_bridge, ConfigSpace, BAR_COUNT};

/// The 32-bit PCI MMIO hole where the VMM places BARs: [start, end).
pub const PCI_HOLE: (u64, u64) = (0xC000_0000, 0xFEC0_0000);
/// Guest-physical ranges no BAR may use: the IOAPIC page, and the LAPIC page with the
/// rest of the MSI address window [0xFEE0_0000, 0xFEF0_0000).
pub const APIC_RANGES: [(u64, u64); 2] = [(0xFEC0_0000, 0x1000), (0xFEE0_0000, 0x10_0000)];
/// Guest physical address width assumed until the VMM sets the real one.
pub const DEFAULT_PHYS_BITS: u8 = 36;
/// Refused BAR placements logged per bus before further ones are only counted.
pub const REFUSED_LOG_LIMIT: u64 = 16;
pub(super) const ENABLE_BIT: u32 = 1 << 31;

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
