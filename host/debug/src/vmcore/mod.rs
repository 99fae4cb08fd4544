//! Vmcores: guest RAM written as an ELF64 core file the way kdump's `/proc/vmcore`
//! carries it — so crash, drgn, makedumpfile and gdb read it — and such a file served
//! back as [`PhysMemory`], so [`Kernel::open`] works on a dump exactly as on a live
//! guest.
//!
//! The file, all little-endian (`ET_CORE`, `EM_X86_64`):
//!
//! - the ELF header, then the program headers right after it, the `PT_NOTE` first
//!   (crash's header check wants both);
//! - one `PT_NOTE` holding, per CPU given and in CPU order, an `NT_PRSTATUS` note
//!   ("CORE", `struct elf_prstatus`, `pr_pid` the task on the CPU) and a QEMU
//!   CPU-state note ("QEMU", type 0, `QEMUCPUState`), as QEMU's `dump-guest-memory`
//!   writes them; then the `VMCOREINFO` note (name "VMCOREINFO", type 0, the text as
//!   the kernel keeps it). The QEMU notes matter to crash: without them it takes the
//!   `NT_PRSTATUS` notes as kdump's, one per CPU *online*, and a panic without kdump
//!   has taken the other CPUs offline (`smp_send_stop`), so their registers would land
//!   on the wrong CPUs. drgn indexes the notes by CPU either way;
//! - one `PT_LOAD` per run of guest RAM that is not all zero, in address order,
//!   `p_paddr` the guest-physical address and `p_vaddr` the direct-map address
//!   (`page_offset_base + paddr`, or 0 as QEMU's `dump-guest-memory` writes when the
//!   direct map is not known). The zero pages after a run, up to the next run or the
//!   end of its RAM range, are covered by `p_memsz > p_filesz` (ELF's "the rest is
//!   zero", which makedumpfile uses for excluded pages and crash reads as zeroes); a
//!   RAM range that starts with zero pages gets a `PT_LOAD` with `p_filesz == 0`. So
//!   the union of the RAM `PT_LOAD`s is exactly the RAM the dump covers, and nothing
//!   else is needed to tell "zero" from "not RAM";
//! - when the kernel image's place is known, one more `PT_LOAD` per RAM range the
//!   image lies in, for the same file bytes, with `p_vaddr` in the kernel-image
//!   mapping (`__START_KERNEL_map + paddr - phys_base`), as kexec-tools writes for the
//!   kernel text, so gdb reads image symbols (`init_task`) straight from the core.
//!   Image pages are always written, zero or not, so each alias is one contiguous
//!   piece of the file;
//! - the data, from the first page boundary after the notes.
//!
//! Reading, `PT_LOAD`s whose `p_vaddr` lies in the kernel-image mapping are taken as
//! aliases and left out of the physical map (kdump's kernel-text header is a second
//! copy of RAM that another header already covers); the rest must not overlap.

use std::ops::Range;
use std::path::PathBuf;

use goblin::elf::header::EM_X86_64;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::memory::MemoryError;
use crate::paging::START_KERNEL_MAP;
use crate::vmcoreinfo::VmcoreInfoError;

mod layout;
mod prstatus;
mod read;
mod write;

pub use layout::KernelLayout;
pub use prstatus::{ControlRegs, PrStatusRegs};
pub use read::Vmcore;
pub use write::write_vmcore;
#[cfg(test)]
use write::{cap_runs, Job};

const PAGE: u64 = 4096;
/// Guest RAM is read (and written) this much at a time.
const CHUNK: usize = 2 << 20;
/// RAM `PT_LOAD`s with file bytes at most; past this, runs merge across the shortest
/// zero gaps. Keeps every header count under `PN_XNUM` (65535) with room for the
/// leading-zero headers and the image aliases (at most one each per RAM range).
const MAX_DATA_SEGMENTS: usize = 60_000;
/// RAM ranges accepted (a q35 guest has two).
const MAX_RAM_RANGES: usize = 1024;
/// CPUs whose registers are written.
const MAX_CPUS: usize = 8192;
/// `e_phnum` meaning "the count is elsewhere" (extended numbering): refused.
const PN_XNUM: u16 = 0xffff;
/// Program headers read at most.
const MAX_HEADERS: u16 = PN_XNUM - 1;
/// Bytes of notes read at most (8192 CPUs' `NT_PRSTATUS` and QEMU notes are ~7 MiB).
const MAX_NOTE_BYTES: u64 = 16 << 20;
/// The kernel-image mapping runs from `__START_KERNEL_map` to the top of memory.
const IMAGE_MAP_SIZE: u64 = (1 << 31) - PAGE;
/// The x86-64 direct map's base without `CONFIG_DYNAMIC_MEMORY_LAYOUT`, 4 and 5 levels.
const PAGE_OFFSET_L4: u64 = 0xffff_8880_0000_0000;
const PAGE_OFFSET_L5: u64 = 0xff11_0000_0000_0000;
/// A kernel image is at most `KERNEL_IMAGE_SIZE` (1 GiB).
const MAX_IMAGE: u64 = 1 << 30;

const EHDR_SIZE: u64 = 64;
const PHDR_SIZE: u64 = 56;
/// `EV_CURRENT`.
const EV_CURRENT: u8 = 1;
/// Note type of the VMCOREINFO note, and its name.
const VMCOREINFO_NAME: &[u8] = b"VMCOREINFO";
const NT_VMCOREINFO: u32 = 0;
/// `NT_PRSTATUS`, named "CORE".
const CORE_NAME: &[u8] = b"CORE";
const NT_PRSTATUS: u32 = 1;
/// QEMU's CPU-state note: name "QEMU", type 0, `QEMUCPUState` with `kernel_gs_base`.
const QEMU_NAME: &[u8] = b"QEMU";
const NT_QEMU_CPU_STATE: u32 = 0;
const QEMU_CPU_STATE_SIZE: usize = 440;
/// `sizeof(struct elf_prstatus)` on x86-64, where `pr_pid` and `pr_reg` lie in it, and
/// the number of registers in `struct user_regs_struct`.
const PRSTATUS_SIZE: usize = 336;
const PR_PID: usize = 32;
const PR_REG: usize = 112;
const NREGS: usize = 27;

/// Why a vmcore could not be written or read.
#[derive(Debug, Error)]
pub enum VmcoreError {
    /// The file name is a path, hidden, or empty.
    #[error("dump name {name:?} refused: {why}")]
    BadName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The guest RAM ranges given are unusable.
    #[error("guest RAM ranges refused: {0}")]
    BadRam(String),
    /// The kernel layout given does not fit the address space or the RAM.
    #[error("kernel layout refused: {0}")]
    BadLayout(String),
    /// More CPUs than a dump carries registers for.
    #[error("{count} CPUs' registers given; at most {MAX_CPUS} are written")]
    TooManyCpus {
        /// CPUs given.
        count: usize,
    },
    /// Guest RAM is larger than the caller allows a dump to be.
    #[error("guest RAM is {ram} bytes, over the {max}-byte dump limit")]
    TooLarge {
        /// Bytes of guest RAM.
        ram: u64,
        /// The limit.
        max: u64,
    },
    /// Guest RAM could not be read.
    #[error("reading guest RAM: {0}")]
    Memory(#[source] MemoryError),
    /// Another dump is writing the same file now.
    #[error("another dump is writing {partial} now")]
    Busy {
        /// The partial file it holds locked.
        partial: PathBuf,
    },
    /// Creating, writing, syncing or renaming the dump failed; no file is left under
    /// its name (nor a partial one).
    #[error("{step} the dump {path}: {source}")]
    Write {
        /// The dump's final path.
        path: PathBuf,
        /// What was being done: "creating", "writing", "syncing", ...
        step: &'static str,
        /// Why it failed (ENOSPC, EROFS, EACCES, ...).
        source: std::io::Error,
    },
    /// The dump is complete under its name, but its directory could not be synced, so
    /// the name may not survive a host crash.
    #[error("the dump {path} is complete, but syncing its directory failed: {source}")]
    DirSync {
        /// The dump's path.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file could not be opened or read.
    #[error("reading {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file does not start with the ELF magic.
    #[error("not an ELF file (no \\x7fELF magic)")]
    NotElf,
    /// The file ends inside a structure.
    #[error("the file ends inside its {what}: {needed} bytes needed, the file has {size}")]
    Truncated {
        /// Which structure.
        what: &'static str,
        /// Bytes the structure needs (`u64::MAX`: more than can be counted).
        needed: u64,
        /// The file's size.
        size: u64,
    },
    /// Not a 64-bit ELF file.
    #[error("ELF class {class} is not ELFCLASS64 (a 32-bit core?)")]
    WrongClass {
        /// `e_ident[EI_CLASS]`.
        class: u8,
    },
    /// Not a little-endian ELF file.
    #[error("ELF data encoding {data} is not little-endian")]
    WrongEndian {
        /// `e_ident[EI_DATA]`.
        data: u8,
    },
    /// Not an x86-64 file.
    #[error("ELF machine {machine} is not x86-64 ({EM_X86_64})")]
    WrongMachine {
        /// `e_machine`.
        machine: u16,
    },
    /// Not a core file.
    #[error("ELF type {e_type} is not a core file (ET_CORE)")]
    NotCore {
        /// `e_type`.
        e_type: u16,
    },
    /// The ELF header is malformed.
    #[error("bad ELF header: {0}")]
    BadHeader(String),
    /// More program headers than a dump has.
    #[error("{count} program headers (or extended numbering); at most {max} are read")]
    TooManyHeaders {
        /// `e_phnum`.
        count: u64,
        /// The limit.
        max: u64,
    },
    /// A segment's bytes lie past the end of the file.
    #[error("program header {index}: bytes {offset:#x}+{filesz:#x} lie past the end of the {size}-byte file")]
    SegmentPastEnd {
        /// Which header.
        index: usize,
        /// `p_offset`.
        offset: u64,
        /// `p_filesz`.
        filesz: u64,
        /// The file's size.
        size: u64,
    },
    /// A `PT_LOAD` that makes no sense.
    #[error("program header {index}: {why}")]
    BadSegment {
        /// Which header.
        index: usize,
        /// What is wrong.
        why: String,
    },
    /// Two `PT_LOAD`s claim the same guest-physical bytes.
    #[error("PT_LOADs overlap at guest-physical {first:#x?} and {second:#x?} (a dump of virtual mappings, e.g. QEMU's dump-guest-memory -p?)")]
    Overlap {
        /// One.
        first: Range<u64>,
        /// The other.
        second: Range<u64>,
    },
    /// The notes are larger than a dump's.
    #[error("{bytes} bytes of notes, over the {MAX_NOTE_BYTES} read")]
    NotesTooLarge {
        /// Bytes in `PT_NOTE`s.
        bytes: u64,
    },
    /// A note that does not parse.
    #[error("bad note: {0}")]
    BadNote(String),
    /// The dump carries no `VMCOREINFO` note.
    #[error("the dump has no VMCOREINFO note")]
    NoVmcoreinfo,
    /// The `VMCOREINFO` note's text does not parse.
    #[error("the dump's VMCOREINFO note: {0}")]
    VmcoreInfo(#[from] VmcoreInfoError),
}

/// What a dump is written with beyond RAM.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpOptions {
    /// Each CPU's registers, one `NT_PRSTATUS` note each; empty: no such notes.
    pub cpus: Vec<PrStatusRegs>,
    /// Refuse, before writing anything, when guest RAM exceeds this many bytes (the
    /// file is at most RAM plus a few pages of headers). `None`: no limit.
    pub max_bytes: Option<u64>,
}

/// What a written dump holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpSummary {
    /// The dump's path.
    pub path: PathBuf,
    /// The file's size.
    pub bytes_written: u64,
    /// Bytes of guest RAM the dump covers.
    pub ram_bytes: u64,
    /// All-zero 4 KiB pages left out of the file (covered by `p_memsz`).
    pub zero_pages_skipped: u64,
    /// `PT_LOAD` headers: RAM runs, leading zero runs and kernel-image aliases.
    pub segments: usize,
    /// Time taken.
    pub millis: u64,
}

/// A `PT_LOAD` as a dump has it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LoadSegment {
    /// `p_paddr`: guest-physical address.
    pub paddr: u64,
    /// `p_vaddr`.
    pub vaddr: u64,
    /// `p_offset`: where its bytes are in the file.
    pub offset: u64,
    /// `p_filesz`: bytes in the file.
    pub filesz: u64,
    /// `p_memsz`: bytes of memory (the part past `filesz` is zero).
    pub memsz: u64,
}

impl LoadSegment {
    /// The guest-physical range covered.
    pub fn phys(&self) -> Range<u64> {
        self.paddr..self.paddr.saturating_add(self.memsz)
    }

    /// An image alias rather than a description of RAM: its virtual address is in the
    /// kernel-image mapping.
    fn is_image_alias(&self) -> bool {
        self.vaddr >= START_KERNEL_MAP
    }
}

#[cfg(test)]
mod tests;
