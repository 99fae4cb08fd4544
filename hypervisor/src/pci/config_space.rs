//! One PCI function's type-0 configuration space as pure data: the identity, the command
//! and status registers with their writable bits, the capability list, and the memory
//! BARs with the sizing protocol (a BAR register keeps the address bits the guest writes;
//! the bits below its size read as zero). Where a BAR is decoded is the root's business.

/// Bytes in a type-0 configuration space (conventional PCI).
pub const CONFIG_SPACE_LEN: usize = 256;
/// BAR registers in a type-0 header.
pub const BAR_COUNT: usize = 6;

const COMMAND: usize = 0x04;
pub(super) const STATUS: usize = 0x06;
pub(super) const BAR0: usize = 0x10;
pub(super) const CAPABILITY_POINTER: usize = 0x34;
pub(super) const INTERRUPT_LINE: usize = 0x3c;
/// Where the first capability goes (after the type-0 header).
pub(super) const FIRST_CAPABILITY: usize = 0x40;
/// Command register: memory space enable.
pub const COMMAND_MEMORY: u16 = 0x2;
/// Command register: bus master enable (the function may issue MSI writes).
pub const COMMAND_BUS_MASTER: u16 = 0x4;
/// Status register: the function has a capability list.
pub const STATUS_CAPABILITIES: u16 = 0x10;
pub(super) const COMMAND_WRITABLE: u16 = COMMAND_MEMORY | COMMAND_BUS_MASTER;

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
    pub(super) bars: [Option<MemoryBar>; BAR_COUNT],
    /// Offset of the last capability in the list, and where the next one goes.
    last_capability: Option<usize>,
    next_capability: usize,
    pub(super) refused_relocations: u64,
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
