//! ORC, the x86-64 kernel's own unwind tables (`.orc_unwind_ip`, `.orc_unwind`), read
//! from guest memory. Each text address maps to how to find the caller's stack pointer,
//! frame pointer and return address; objtool writes them at build time, so they hold for
//! kernels built without frame pointers (Debian's).
//!
//! Three layouts of the 6-byte entry exist (drgn numbers them the same way):
//! v1 up to 6.2 (type in 2 bits, then an `end` bit), v2 in 6.3 (a `signal` bit before
//! `end`), v3 from 6.4 (type in 3 bits with explicit UNDEFINED / END_OF_STACK, then
//! `signal`). They are decoded into one [`OrcEntry`].

use crate::memory::{KernelMemory, MemoryError};

/// Size of one entry in `.orc_unwind`.
pub const ENTRY_SIZE: u64 = 6;
/// Most entries a table may claim (vmlinux has ~370k; a module a few thousand).
pub const MAX_ENTRIES: u64 = 1 << 22;

/// Which entry layout a kernel uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcVersion {
    /// Linux 4.14 to 6.2.
    V1,
    /// Linux 6.3.
    V2,
    /// Linux 6.4 and later.
    V3,
}

impl OrcVersion {
    /// The layout of a kernel by its release string ("6.1.0-57-cloud-amd64").
    pub fn of_release(release: &str) -> Self {
        let mut parts = release
            .split(|c: char| !c.is_ascii_digit())
            .map(|p| p.parse::<u32>().unwrap_or(0));
        let major = parts.next().unwrap_or(0);
        let minor = parts.next().unwrap_or(0);
        match (major, minor) {
            (m, _) if m > 6 => Self::V3,
            (6, n) if n >= 4 => Self::V3,
            (6, 3) => Self::V2,
            _ => Self::V1,
        }
    }
}

/// A base register an entry computes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcReg {
    /// Not saved in this frame (or: the end of the stack, for `sp`).
    Undefined,
    /// The caller's stack pointer (the DWARF CFA).
    PrevSp,
    /// `rdx`, from a saved `pt_regs`.
    Dx,
    /// `rdi`, from a saved `pt_regs`.
    Di,
    /// The frame pointer.
    Bp,
    /// The stack pointer.
    Sp,
    /// `r10`, from a saved `pt_regs`.
    R10,
    /// `r13`, from a saved `pt_regs`.
    R13,
    /// Memory at `bp + offset`.
    BpIndirect,
    /// Memory at `sp`, plus the offset.
    SpIndirect,
    /// A value no kernel writes.
    Unknown(u8),
}

impl OrcReg {
    fn from_bits(b: u16) -> Self {
        match b & 0xf {
            0 => Self::Undefined,
            1 => Self::PrevSp,
            2 => Self::Dx,
            3 => Self::Di,
            4 => Self::Bp,
            5 => Self::Sp,
            6 => Self::R10,
            7 => Self::R13,
            8 => Self::BpIndirect,
            9 => Self::SpIndirect,
            n => Self::Unknown(n as u8),
        }
    }
}

/// What kind of frame an entry describes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OrcType {
    /// No unwind information here (v3's UNDEFINED; v1/v2: `sp` undefined without `end`).
    Undefined,
    /// The bottom of a stack (v3's END_OF_STACK; v1/v2: `sp` undefined with `end`).
    EndOfStack,
    /// A normal call frame: the return address sits just below the caller's `sp`.
    Call,
    /// A full `pt_regs` at the computed `sp` (an interrupt, exception or syscall entry).
    Regs,
    /// Only the hardware's iret frame at the computed `sp`.
    RegsPartial,
    /// A value no kernel writes.
    Unknown(u8),
}

/// One decoded ORC entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrcEntry {
    /// Added to `sp_reg` to get the caller's stack pointer.
    pub sp_offset: i16,
    /// Added to `bp_reg` to find where the caller's frame pointer is saved.
    pub bp_offset: i16,
    /// Base of the caller's stack pointer.
    pub sp_reg: OrcReg,
    /// Base of the caller's saved frame pointer.
    pub bp_reg: OrcReg,
    /// The frame's kind.
    pub kind: OrcType,
    /// The next lookup uses the return address itself, not the call before it
    /// (after an interrupt the saved `ip` is the next instruction to run).
    pub signal: bool,
}

impl OrcEntry {
    /// Decodes the 6 bytes of an entry in layout `v`.
    pub fn decode(b: [u8; 6], v: OrcVersion) -> Self {
        let sp_offset = i16::from_le_bytes([b[0], b[1]]);
        let bp_offset = i16::from_le_bytes([b[2], b[3]]);
        let flags = u16::from_le_bytes([b[4], b[5]]);
        let sp_reg = OrcReg::from_bits(flags);
        let bp_reg = OrcReg::from_bits(flags >> 4);
        let (kind, signal) = match v {
            OrcVersion::V1 | OrcVersion::V2 => {
                let (end_bit, signal_bit) = match v {
                    OrcVersion::V1 => (10, None),
                    _ => (11, Some(10)),
                };
                let end = flags >> end_bit & 1 == 1;
                let kind = match (flags >> 8) & 0x3 {
                    _ if sp_reg == OrcReg::Undefined && end => OrcType::EndOfStack,
                    _ if sp_reg == OrcReg::Undefined => OrcType::Undefined,
                    0 => OrcType::Call,
                    1 => OrcType::Regs,
                    2 => OrcType::RegsPartial,
                    n => OrcType::Unknown(n as u8),
                };
                let signal = match signal_bit {
                    Some(bit) => flags >> bit & 1 == 1,
                    None => matches!(kind, OrcType::Regs | OrcType::RegsPartial),
                };
                (kind, signal)
            }
            OrcVersion::V3 => {
                let kind = match (flags >> 8) & 0x7 {
                    0 => OrcType::Undefined,
                    1 => OrcType::EndOfStack,
                    2 => OrcType::Call,
                    3 => OrcType::Regs,
                    4 => OrcType::RegsPartial,
                    n => OrcType::Unknown(n as u8),
                };
                (kind, flags >> 11 & 1 == 1)
            }
        };
        Self {
            sp_offset,
            bp_offset,
            sp_reg,
            bp_reg,
            kind,
            signal,
        }
    }

    /// The kernel's guess for code without ORC data (BPF programs, trampolines): a
    /// frame-pointer frame (`push %rbp; mov %rsp,%rbp`).
    pub fn frame_pointer_guess() -> Self {
        Self {
            sp_offset: 16,
            bp_offset: -16,
            sp_reg: OrcReg::Bp,
            bp_reg: OrcReg::PrevSp,
            kind: OrcType::Call,
            signal: false,
        }
    }
}

/// One ORC table in guest memory: vmlinux's or a module's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OrcTable {
    /// `int ip_table[count]`: each entry's text address relative to the entry itself,
    /// sorted by address.
    pub ip_table: u64,
    /// `struct orc_entry entries[count]`.
    pub entries: u64,
    /// Number of entries.
    pub count: u64,
    /// The entry layout.
    pub version: OrcVersion,
}

impl OrcTable {
    /// The entry covering `ip`: the last one whose address is at or below it (the
    /// kernel's `__orc_find`). None when `ip` lies below the first. A binary search
    /// over guest memory: about 20 reads of 4 bytes for vmlinux, bounded whatever
    /// the table holds.
    pub fn find(&self, mem: &dyn KernelMemory, ip: u64) -> Result<Option<OrcEntry>, MemoryError> {
        if self.count == 0 || self.count > MAX_ENTRIES {
            return Ok(None);
        }
        let ip_at = |i: u64| -> Result<u64, MemoryError> {
            let slot = self.ip_table + i * 4;
            let rel = mem.read_u32(slot)? as i32;
            Ok(slot.wrapping_add_signed(i64::from(rel)))
        };
        let (mut lo, mut hi) = (0u64, self.count);
        let mut found = None;
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            if ip_at(mid)? <= ip {
                found = Some(mid);
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        let Some(i) = found else { return Ok(None) };
        let mut b = [0u8; 6];
        mem.read(self.entries + i * ENTRY_SIZE, &mut b)?;
        Ok(Some(OrcEntry::decode(b, self.version)))
    }
}
