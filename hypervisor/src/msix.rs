//! MSI-X as a PCI function presents it: the capability in config space (enable and
//! function-mask bits), the vector table and the pending-bit array (PBA) in a BAR. Pure
//! logic, no fd: `Msix` says which message to send when; the glue (`vesper.rs`) turns
//! messages into KVM MSI routes and irqfd writes.
//!
//! A vector is *deliverable* when MSI-X is enabled, the function is not masked, the
//! vector is not masked and the function may master the bus. Notifying a vector that is
//! not deliverable sets its pending bit; the message goes out when it becomes
//! deliverable (PCI spec: "pending bit … delivered when unmasked").

/// MSI-X capability ID.
pub const CAPABILITY_ID: u8 = 0x11;
/// Bytes of one table entry: address low, address high, data, vector control.
pub const ENTRY_SIZE: u64 = 16;
/// Message control: MSI-X enable.
pub const CONTROL_ENABLE: u16 = 1 << 15;
/// Message control: function mask.
pub const CONTROL_FUNCTION_MASK: u16 = 1 << 14;
/// Vector control: the vector is masked.
pub const VECTOR_MASKED: u32 = 1;
/// Most vectors this implementation holds (one PBA qword).
pub const MAX_VECTORS: u16 = 64;
/// Where MSI messages to a LAPIC go: [0xFEE0_0000, 0xFEF0_0000).
pub const LAPIC_MSI_WINDOW: (u64, u64) = (0xFEE0_0000, 0xFEF0_0000);

/// One MSI message: a dword write of `data` at `address`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MsiMessage {
    /// Guest physical address.
    pub address: u64,
    /// Data.
    pub data: u32,
}

impl MsiMessage {
    /// Whether the message targets a LAPIC (the only kind KVM can inject; a message to
    /// any other address would be a DMA write, which this VMM does not do).
    pub fn is_lapic(&self) -> bool {
        (LAPIC_MSI_WINDOW.0..LAPIC_MSI_WINDOW.1).contains(&self.address)
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Entry {
    address_lo: u32,
    address_hi: u32,
    data: u32,
    control: u32,
}

impl Default for Entry {
    fn default() -> Self {
        // Every vector comes out of reset masked.
        Self {
            address_lo: 0,
            address_hi: 0,
            data: 0,
            control: VECTOR_MASKED,
        }
    }
}

/// What `Msix::notify` did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Notify {
    /// Send this message now.
    Deliver(MsiMessage),
    /// Not deliverable now: the pending bit is set.
    Pending,
    /// No such vector.
    NoSuchVector,
}

/// Where the table and the PBA sit in their BAR.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MsixLayout {
    /// Table offset in the BAR (8-byte aligned).
    pub table: u64,
    /// PBA offset in the BAR (8-byte aligned).
    pub pba: u64,
}

/// A function's MSI-X state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Msix {
    layout: MsixLayout,
    entries: Vec<Entry>,
    pending: u64,
    enabled: bool,
    function_masked: bool,
    bus_master: bool,
}

impl Msix {
    /// `vectors` (1 to `MAX_VECTORS`, clamped) vectors, all masked, MSI-X disabled.
    pub fn new(vectors: u16, layout: MsixLayout) -> Self {
        Self {
            layout,
            entries: vec![Entry::default(); usize::from(vectors.clamp(1, MAX_VECTORS))],
            pending: 0,
            enabled: false,
            function_masked: false,
            bus_master: false,
        }
    }

    /// Number of vectors.
    pub fn vectors(&self) -> u16 {
        self.entries.len() as u16
    }

    /// The capability's body after the ID/next bytes: message control (table size - 1),
    /// table offset/BIR, PBA offset/BIR, for a table and PBA in BAR `bir`. With the bits
    /// the guest may write (enable, function mask).
    pub fn capability(&self, bir: u8) -> ([u8; 10], [u8; 2]) {
        let mut body = [0; 10];
        body[0..2].copy_from_slice(&(self.vectors() - 1).to_le_bytes());
        let bir = u32::from(bir & 0x7);
        body[2..6].copy_from_slice(&((self.layout.table as u32 & !0x7) | bir).to_le_bytes());
        body[6..10].copy_from_slice(&((self.layout.pba as u32 & !0x7) | bir).to_le_bytes());
        let writable = (CONTROL_ENABLE | CONTROL_FUNCTION_MASK).to_le_bytes();
        (body, writable)
    }

    /// Takes the capability's message control and the command register's bus-master bit
    /// from config space after a guest write.
    pub fn set_control(&mut self, message_control: u16, bus_master: bool) {
        self.enabled = message_control & CONTROL_ENABLE != 0;
        self.function_masked = message_control & CONTROL_FUNCTION_MASK != 0;
        self.bus_master = bus_master;
    }

    /// Whether the guest enabled MSI-X.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// Whether vector `v`'s own mask bit is set (`true` for no such vector).
    pub fn vector_masked(&self, v: u16) -> bool {
        self.entries
            .get(usize::from(v))
            .is_none_or(|e| e.control & VECTOR_MASKED != 0)
    }

    /// Whether vector `v`'s pending bit is set.
    pub fn pending(&self, v: u16) -> bool {
        v < self.vectors() && self.pending & (1 << v) != 0
    }

    /// Vector `v`'s message as the table holds it now.
    pub fn message(&self, v: u16) -> Option<MsiMessage> {
        self.entries.get(usize::from(v)).map(|e| MsiMessage {
            address: (u64::from(e.address_hi) << 32) | u64::from(e.address_lo),
            data: e.data,
        })
    }

    fn deliverable(&self, v: u16) -> bool {
        self.enabled && !self.function_masked && self.bus_master && !self.vector_masked(v)
    }

    /// The device signals vector `v`.
    pub fn notify(&mut self, v: u16) -> Notify {
        if v >= self.vectors() {
            return Notify::NoSuchVector;
        }
        if self.deliverable(v) {
            match self.message(v) {
                Some(m) => Notify::Deliver(m),
                None => Notify::NoSuchVector,
            }
        } else {
            self.pending |= 1 << v;
            Notify::Pending
        }
    }

    /// Pending vectors that are deliverable now, with their messages; their pending bits
    /// are cleared. Call after every change of the table or the control bits.
    pub fn take_deliverable(&mut self) -> Vec<(u16, MsiMessage)> {
        let mut out = Vec::new();
        for v in 0..self.vectors() {
            if self.pending(v) && self.deliverable(v) {
                self.pending &= !(1 << v);
                if let Some(m) = self.message(v) {
                    out.push((v, m));
                }
            }
        }
        out
    }

    /// A guest read in the BAR holding the table and PBA. Aligned dword and qword
    /// accesses are decoded; others, and reserved space, read as zero.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len() as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) {
            return;
        }
        for (i, chunk) in data.chunks_mut(4).enumerate() {
            let at = offset + 4 * i as u64;
            chunk.copy_from_slice(&self.read_dword(at).to_le_bytes());
        }
    }

    fn read_dword(&self, at: u64) -> u32 {
        if let Some((entry, field)) = self.table_field(at) {
            let e = &self.entries[entry];
            return [e.address_lo, e.address_hi, e.data, e.control][field];
        }
        let pba_len = 8 * u64::from(self.vectors()).div_ceil(64);
        match at.checked_sub(self.layout.pba) {
            Some(0) if pba_len > 0 => self.pending as u32,
            Some(4) if pba_len > 0 => (self.pending >> 32) as u32,
            _ => 0,
        }
    }

    fn table_field(&self, at: u64) -> Option<(usize, usize)> {
        let rel = at.checked_sub(self.layout.table)?;
        let entry = usize::try_from(rel / ENTRY_SIZE).ok()?;
        (entry < self.entries.len()).then_some((entry, (rel % ENTRY_SIZE / 4) as usize))
    }

    /// A guest write in the BAR. Aligned dword and qword accesses to the table are
    /// decoded; the PBA is read-only; everything else is ignored. Call
    /// `take_deliverable` afterwards: an unmask may release a pending message.
    pub fn write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        if !matches!(len, 4 | 8) || !offset.is_multiple_of(len) {
            return;
        }
        for (i, chunk) in data.chunks(4).enumerate() {
            let at = offset + 4 * i as u64;
            let value = u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]);
            if let Some((entry, field)) = self.table_field(at) {
                let e = &mut self.entries[entry];
                match field {
                    0 => e.address_lo = value & !0x3, // dword-aligned by definition
                    1 => e.address_hi = value,
                    2 => e.data = value,
                    _ => e.control = value & VECTOR_MASKED, // the rest is reserved
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const LAYOUT: MsixLayout = MsixLayout {
        table: 0,
        pba: 0x800,
    };

    fn read32(m: &Msix, at: u64) -> u32 {
        let mut b = [0; 4];
        m.read(at, &mut b);
        u32::from_le_bytes(b)
    }

    fn write32(m: &mut Msix, at: u64, v: u32) {
        m.write(at, &v.to_le_bytes());
    }

    fn program(m: &mut Msix, v: u16, vector: u32) {
        let base = u64::from(v) * ENTRY_SIZE;
        write32(m, base, 0xfee0_0000);
        write32(m, base + 4, 0);
        write32(m, base + 8, vector);
    }

    #[test]
    fn capability_body_matches_qemu_ivshmem() {
        let m = Msix::new(2, LAYOUT);
        let (body, writable) = m.capability(1);
        assert_eq!(&body[0..2], &[1, 0], "table size 2 (N - 1)");
        assert_eq!(u32::from_le_bytes(body[2..6].try_into().unwrap()), 0x1);
        assert_eq!(u32::from_le_bytes(body[6..10].try_into().unwrap()), 0x801);
        assert_eq!(u16::from_le_bytes(writable), 0xc000);
    }

    #[test]
    fn delivery_needs_enable_no_masks_and_bus_master() {
        let mut m = Msix::new(2, LAYOUT);
        program(&mut m, 0, 0x40);
        assert_eq!(m.notify(0), Notify::Pending, "disabled, masked");
        assert!(m.pending(0));
        assert_eq!(read32(&m, 0x800), 1, "PBA bit 0");
        m.set_control(CONTROL_ENABLE, true);
        assert!(m.take_deliverable().is_empty(), "vector still masked");
        write32(&mut m, 12, 0); // unmask vector 0
        let msg = MsiMessage {
            address: 0xfee0_0000,
            data: 0x40,
        };
        assert_eq!(m.take_deliverable(), vec![(0, msg)]);
        assert!(!m.pending(0));
        assert_eq!(read32(&m, 0x800), 0);
        assert_eq!(m.notify(0), Notify::Deliver(msg));
        // Function mask holds it back; clearing it releases the pending message.
        m.set_control(CONTROL_ENABLE | CONTROL_FUNCTION_MASK, true);
        assert_eq!(m.notify(0), Notify::Pending);
        m.set_control(CONTROL_ENABLE, true);
        assert_eq!(m.take_deliverable(), vec![(0, msg)]);
        // So does bus master off.
        m.set_control(CONTROL_ENABLE, false);
        assert_eq!(m.notify(0), Notify::Pending);
        m.set_control(CONTROL_ENABLE, true);
        assert_eq!(m.take_deliverable().len(), 1);
        assert_eq!(m.notify(2), Notify::NoSuchVector);
        assert_eq!(m.notify(u16::MAX), Notify::NoSuchVector);
    }

    #[test]
    fn table_fields_qwords_reserved_bits_and_read_only_pba() {
        let mut m = Msix::new(2, LAYOUT);
        assert_eq!(read32(&m, 12), 1, "masked out of reset");
        assert_eq!(read32(&m, 28), 1);
        m.write(16, &0x0000_0000_fee0_1003u64.to_le_bytes());
        assert_eq!(read32(&m, 16), 0xfee0_1000, "low two address bits are zero");
        write32(&mut m, 24, 0x41);
        write32(&mut m, 28, 0xffff_fffe);
        assert_eq!(read32(&m, 28), 0, "reserved control bits read zero");
        assert_eq!(m.message(1).unwrap().data, 0x41);
        let mut q = [0; 8];
        m.read(16, &mut q);
        assert_eq!(u64::from_le_bytes(q), 0xfee0_1000);
        // Unaligned and narrow accesses are not decoded.
        write32(&mut m, 18, 0xdead_beef);
        m.write(24, &[1, 2]);
        assert_eq!(m.message(1).unwrap().data, 0x41);
        let mut b = [0xaa; 2];
        m.read(16, &mut b);
        assert_eq!(b, [0, 0]);
        // The PBA ignores writes; beyond the table and PBA is zero.
        m.notify(1);
        write32(&mut m, 0x800, 0);
        assert_eq!(read32(&m, 0x800), 2);
        assert_eq!(read32(&m, 32), 0);
        assert_eq!(read32(&m, 0x808), 0);
        assert_eq!(read32(&m, u64::MAX - 3), 0);
        write32(&mut m, u64::MAX - 3, 5);
    }

    #[test]
    fn lapic_window() {
        let m = |address| MsiMessage { address, data: 0 };
        assert!(m(0xfee0_0000).is_lapic());
        assert!(m(0xfeef_f00c).is_lapic());
        assert!(!m(0).is_lapic());
        assert!(!m(0x1_fee0_0000).is_lapic());
    }
}
