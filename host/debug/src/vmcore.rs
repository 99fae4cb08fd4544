//! Vmcores: guest RAM written as an ELF64 core file the way kdump's `/proc/vmcore`
//! carries it — so crash, drgn, makedumpfile and gdb read it — and such a file served
//! back as [`PhysMemory`], so [`Kernel::open`] works on a dump exactly as on a live
//! guest.
//!
//! The file, all little-endian (`ET_CORE`, `EM_X86_64`):
//!
//! - the ELF header, then the program headers right after it, the `PT_NOTE` first
//!   (crash's header check wants both);
//! - one `PT_NOTE` holding an `NT_PRSTATUS` note ("CORE", `struct elf_prstatus`) per
//!   CPU given, then the `VMCOREINFO` note (name "VMCOREINFO", type 0, the text as the
//!   kernel keeps it), as `/proc/vmcore` orders them;
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

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use goblin::container::Endian;
use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, ET_CORE};
use goblin::elf::program_header::{PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE};
use goblin::elf64::program_header::ProgramHeader;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::kernel::{Kernel, START_KERNEL_MAP};
use crate::memory::{KernelMemory, MemoryError, PhysMemory};
use crate::vmcoreinfo::{VmcoreInfo, VmcoreInfoError};

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
/// Bytes of notes read at most (8192 CPUs' `NT_PRSTATUS` are ~3 MiB).
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

/// Where the kernel maps guest RAM, for the dump's virtual addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KernelLayout {
    /// The direct map's base (`page_offset_base`): RAM `PT_LOAD`s get
    /// `p_vaddr = page_offset_base + paddr`. `None`: `p_vaddr` is 0.
    pub page_offset_base: Option<u64>,
    /// `NUMBER(phys_base)`: the image's physical load offset (two's complement when
    /// negative, as VMCOREINFO's value comes back).
    pub phys_base: u64,
    /// The kernel image's guest-physical range (`_text`..`_end`): aliased at
    /// `__START_KERNEL_map + paddr - phys_base`. `None`: no alias headers.
    pub image: Option<Range<u64>>,
}

impl KernelLayout {
    /// The layout of an opened kernel: `page_offset_base` read from the variable (or
    /// the fixed base when the kernel has none), the image from `_text`..`_end`.
    pub fn of(kernel: &Kernel) -> Self {
        Self::from_parts(
            kernel.vmcoreinfo(),
            |name| kernel.symbols().lookup(name).map(|s| s.addr),
            |addr| kernel.read_u64(addr).ok(),
        )
    }

    /// The layout from VMCOREINFO, a symbol lookup and a kernel-memory reader; what
    /// does not hold up (a base outside the kernel half, an image over 1 GiB) is left
    /// `None`.
    pub fn from_parts(
        info: &VmcoreInfo,
        symbol: impl Fn(&str) -> Option<u64>,
        read_u64: impl Fn(u64) -> Option<u64>,
    ) -> Self {
        let phys_base = info.lookup("NUMBER(phys_base)").unwrap_or(0);
        let page_offset_base = match symbol("page_offset_base") {
            Some(addr) => read_u64(addr),
            None if info.lookup("NUMBER(pgtable_l5_enabled)") == Some(1) => Some(PAGE_OFFSET_L5),
            None => Some(PAGE_OFFSET_L4),
        }
        .filter(|b| *b >= PAGE_OFFSET_L5 && *b < START_KERNEL_MAP && b % PAGE == 0);
        let start = symbol("_text").or_else(|| symbol("_stext"));
        let end = symbol("_end").or_else(|| symbol("__bss_stop"));
        let image = match (start, end) {
            (Some(s), Some(e)) if s >= START_KERNEL_MAP && e > s && e - s <= MAX_IMAGE => {
                let p = (s - START_KERNEL_MAP).wrapping_add(phys_base);
                p.checked_add(e - s).map(|pe| p..pe)
            }
            _ => None,
        };
        Self {
            page_offset_base,
            phys_base,
            image,
        }
    }
}

/// One CPU's registers, as an `NT_PRSTATUS` note carries them (`struct
/// user_regs_struct` order).
#[allow(missing_docs)] // The registers are their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PrStatusRegs {
    /// `pr_pid`: the task on the CPU (kdump), or the CPU's number + 1 (QEMU).
    pub pid: u32,
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl PrStatusRegs {
    fn regs(&self) -> [u64; NREGS] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.rflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }

    fn from_regs(pid: u32, r: [u64; NREGS]) -> Self {
        let [r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, rflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs] =
            r;
        Self {
            pid,
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            rflags,
            rsp,
            ss,
            fs_base,
            gs_base,
            ds,
            es,
            fs,
            gs,
        }
    }

    /// `struct elf_prstatus` with `pr_pid` and `pr_reg` set, the rest zero.
    fn encode(&self) -> [u8; PRSTATUS_SIZE] {
        let mut d = [0u8; PRSTATUS_SIZE];
        d[PR_PID..PR_PID + 4].copy_from_slice(&self.pid.to_le_bytes());
        for (i, r) in self.regs().iter().enumerate() {
            let at = PR_REG + 8 * i;
            d[at..at + 8].copy_from_slice(&r.to_le_bytes());
        }
        d
    }

    fn decode(d: &[u8]) -> Option<Self> {
        if d.len() != PRSTATUS_SIZE {
            return None;
        }
        let pid = u32::from_le_bytes(d.get(PR_PID..PR_PID + 4)?.try_into().ok()?);
        let mut r = [0u64; NREGS];
        for (i, v) in r.iter_mut().enumerate() {
            let at = PR_REG + 8 * i;
            *v = u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?);
        }
        Some(Self::from_regs(pid, r))
    }
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

/// Writes guest RAM `ram` (read through `mem`) as the vmcore `dir/name`, with `info`'s
/// text as its `VMCOREINFO` note and `kernel`'s layout for virtual addresses. The file
/// appears under `name` complete and synced or not at all: it is written as
/// `dir/.name.partial` (mode 0600, guest memory is secret), synced, renamed over any
/// file called `name`, and the directory synced; on error the partial file is removed.
///
/// `ram` must be page-aligned; zero pages are left out of the file. For a consistent
/// dump pause the guest first: RAM is read twice (once to find the zero pages, once to
/// write the rest), and a running guest changes it in between.
pub fn write_vmcore(
    mem: &dyn PhysMemory,
    ram: &[Range<u64>],
    info: &VmcoreInfo,
    kernel: Option<&KernelLayout>,
    dir: &Path,
    name: &str,
    opts: &DumpOptions,
) -> Result<DumpSummary, VmcoreError> {
    let job = Job {
        mem,
        info,
        kernel,
        opts,
        max_segments: MAX_DATA_SEGMENTS,
    };
    job.write(ram, dir, name)
}

/// One dump being written.
struct Job<'a> {
    mem: &'a dyn PhysMemory,
    info: &'a VmcoreInfo,
    kernel: Option<&'a KernelLayout>,
    opts: &'a DumpOptions,
    max_segments: usize,
}

/// The plan of a dump: the RAM it covers and the runs whose bytes go in the file.
struct Plan {
    ranges: Vec<Range<u64>>,
    runs: Vec<Range<u64>>,
}

impl Job<'_> {
    fn write(
        &self,
        ram: &[Range<u64>],
        dir: &Path,
        name: &str,
    ) -> Result<DumpSummary, VmcoreError> {
        let started = Instant::now();
        check_name(name)?;
        let ranges = normalize(ram)?;
        let ram_bytes: u64 = ranges.iter().map(|r| r.end - r.start).sum();
        if let Some(max) = self.opts.max_bytes.filter(|max| ram_bytes > *max) {
            return Err(VmcoreError::TooLarge {
                ram: ram_bytes,
                max,
            });
        }
        if self.opts.cpus.len() > MAX_CPUS {
            return Err(VmcoreError::TooManyCpus {
                count: self.opts.cpus.len(),
            });
        }
        let image = match self.kernel {
            Some(k) => check_layout(k, &ranges)?,
            None => None,
        };

        let path = dir.join(name);
        let out = Partial::create(dir, name, &path)?;
        let plan = self.plan(ranges, image.as_ref())?;
        let (loads, aliases) = self.loads(&plan, image.as_ref())?;
        // Padded to a page: the data starts right after.
        let head = self.headers(&loads, &aliases)?;
        let data_start = head.len() as u64;
        let total = data_start + plan.runs.iter().map(|r| r.end - r.start).sum::<u64>();

        let mut file = &out.file;
        let werr = |step, source| VmcoreError::Write {
            path: path.clone(),
            step,
            source,
        };
        file.write_all(&head).map_err(|e| werr("writing", e))?;
        let mut buf = vec![0u8; CHUNK];
        for run in &plan.runs {
            let mut at = run.start;
            while at < run.end {
                let n = (run.end - at).min(CHUNK as u64) as usize;
                let chunk = &mut buf[..n];
                self.mem.read_phys(at, chunk).map_err(VmcoreError::Memory)?;
                file.write_all(chunk).map_err(|e| werr("writing", e))?;
                at += n as u64;
            }
        }
        file.sync_all().map_err(|e| werr("syncing", e))?;
        let on_disk = file.metadata().map_err(|e| werr("checking", e))?.len();
        if on_disk != total {
            return Err(werr(
                "checking",
                std::io::Error::new(
                    std::io::ErrorKind::WriteZero,
                    format!("the file has {on_disk} bytes, {total} were written"),
                ),
            ));
        }
        out.commit(&path)
            .map_err(|e| werr("renaming into place", e))?;
        File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(|source| VmcoreError::DirSync {
                path: path.clone(),
                source,
            })?;

        let written: u64 = plan.runs.iter().map(|r| r.end - r.start).sum();
        Ok(DumpSummary {
            path,
            bytes_written: total,
            ram_bytes,
            zero_pages_skipped: (ram_bytes - written) / PAGE,
            segments: loads.len() + aliases.len(),
            millis: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
        })
    }

    /// Reads all of RAM once, finding the runs of pages to write: those not all zero,
    /// and every page of the image (so its aliases are contiguous in the file).
    fn plan(
        &self,
        ranges: Vec<Range<u64>>,
        image: Option<&Range<u64>>,
    ) -> Result<Plan, VmcoreError> {
        let mut buf = vec![0u8; CHUNK];
        // (RAM range index, run)
        let mut runs: Vec<(usize, Range<u64>)> = Vec::new();
        for (ri, r) in ranges.iter().enumerate() {
            let mut at = r.start;
            while at < r.end {
                let n = (r.end - at).min(CHUNK as u64) as usize;
                let chunk = &mut buf[..n];
                self.mem.read_phys(at, chunk).map_err(VmcoreError::Memory)?;
                for (i, page) in chunk.chunks_exact(PAGE as usize).enumerate() {
                    let p = at + i as u64 * PAGE;
                    if !image.is_some_and(|im| im.contains(&p)) && is_zero(page) {
                        continue;
                    }
                    match runs.last_mut() {
                        Some((rj, run)) if *rj == ri && run.end == p => run.end += PAGE,
                        _ => runs.push((ri, p..p + PAGE)),
                    }
                }
                at += n as u64;
            }
        }
        Ok(Plan {
            ranges,
            runs: cap_runs(runs, self.max_segments),
        })
    }

    /// The RAM `PT_LOAD`s (offsets from the start of the data) and the image aliases.
    fn loads(
        &self,
        plan: &Plan,
        image: Option<&Range<u64>>,
    ) -> Result<(Vec<LoadSegment>, Vec<LoadSegment>), VmcoreError> {
        let base = self.kernel.and_then(|k| k.page_offset_base);
        // Checked against the RAM's end in `check_layout`.
        let direct = |paddr: u64| base.map_or(0, |b| b + paddr);
        let mut loads = Vec::new();
        let mut offset = 0u64;
        let mut runs = plan.runs.iter().peekable();
        for r in &plan.ranges {
            let first = runs
                .peek()
                .filter(|run| run.start < r.end)
                .map_or(r.end, |run| run.start);
            if first > r.start {
                loads.push(LoadSegment {
                    paddr: r.start,
                    vaddr: direct(r.start),
                    offset,
                    filesz: 0,
                    memsz: first - r.start,
                });
            }
            while let Some(run) = runs.next_if(|run| run.start < r.end) {
                let next = runs
                    .peek()
                    .filter(|n| n.start < r.end)
                    .map_or(r.end, |n| n.start);
                loads.push(LoadSegment {
                    paddr: run.start,
                    vaddr: direct(run.start),
                    offset,
                    filesz: run.end - run.start,
                    memsz: next - run.start,
                });
                offset += run.end - run.start;
            }
        }
        let mut aliases = Vec::new();
        if let (Some(im), Some(k)) = (image, self.kernel) {
            for r in &plan.ranges {
                let (s, e) = (im.start.max(r.start), im.end.min(r.end));
                if s >= e {
                    continue;
                }
                let holder = loads
                    .iter()
                    .find(|l| l.paddr <= s && e <= l.paddr + l.filesz)
                    .ok_or_else(|| {
                        VmcoreError::BadLayout(format!(
                            "the image piece {s:#x}..{e:#x} is not contiguous in the file"
                        ))
                    })?;
                aliases.push(LoadSegment {
                    paddr: s,
                    // Within the image mapping: checked in `check_layout`.
                    vaddr: START_KERNEL_MAP + s.wrapping_sub(k.phys_base),
                    offset: holder.offset + (s - holder.paddr),
                    filesz: e - s,
                    memsz: e - s,
                });
            }
        }
        Ok((loads, aliases))
    }

    /// The ELF header, program headers and notes, padded to a page; the offsets of
    /// `loads` and `aliases` (from the start of the data) are written from the file's
    /// start.
    fn headers(
        &self,
        loads: &[LoadSegment],
        aliases: &[LoadSegment],
    ) -> Result<Vec<u8>, VmcoreError> {
        let mut notes = Vec::new();
        for cpu in &self.opts.cpus {
            put_note(&mut notes, CORE_NAME, NT_PRSTATUS, &cpu.encode());
        }
        put_note(
            &mut notes,
            VMCOREINFO_NAME,
            NT_VMCOREINFO,
            self.info.raw().as_bytes(),
        );
        let phnum = 1 + loads.len() + aliases.len();
        let phnum16 = u16::try_from(phnum)
            .ok()
            .filter(|n| *n <= MAX_HEADERS)
            .ok_or_else(|| {
                VmcoreError::BadRam(format!("{phnum} program headers would be needed"))
            })?;
        let notes_at = EHDR_SIZE + PHDR_SIZE * phnum as u64;
        let data_start = (notes_at + notes.len() as u64).next_multiple_of(PAGE);

        let mut h = Vec::with_capacity(data_start as usize);
        put_ehdr(&mut h, phnum16);
        let note = LoadSegment {
            paddr: 0,
            vaddr: 0,
            offset: notes_at,
            filesz: notes.len() as u64,
            memsz: notes.len() as u64,
        };
        put_phdr(&mut h, PT_NOTE, 0, &note, 4);
        for l in loads.iter().chain(aliases) {
            let l = LoadSegment {
                offset: data_start + l.offset,
                ..*l
            };
            put_phdr(&mut h, PT_LOAD, PF_R | PF_W | PF_X, &l, 0);
        }
        h.extend_from_slice(&notes);
        debug_assert!(h.len() as u64 <= data_start);
        h.resize(data_start as usize, 0);
        Ok(h)
    }
}

/// `dir/.name.partial`, created and locked; removed when dropped unless committed.
struct Partial {
    file: File,
    path: PathBuf,
    done: bool,
}

impl Partial {
    fn create(dir: &Path, name: &str, final_path: &Path) -> Result<Self, VmcoreError> {
        let path = dir.join(format!(".{name}.partial"));
        let werr = |step, source| VmcoreError::Write {
            path: final_path.to_path_buf(),
            step,
            source,
        };
        // Not truncated before the lock is held: it may be another dump's, in progress.
        // Not followed if a symlink, nor waited on if a FIFO: planted in a shared
        // directory, either would have us truncate or hang on someone else's file.
        let file = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| werr("creating", e))?;
        let meta = file.metadata().map_err(|e| werr("creating", e))?;
        if !meta.is_file() || meta.nlink() != 1 {
            return Err(werr(
                "creating",
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "{} exists and is not a plain file of its own (a link?)",
                        path.display()
                    ),
                ),
            ));
        }
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => return Err(VmcoreError::Busy { partial: path }),
            Err(TryLockError::Error(e)) => return Err(werr("locking", e)),
        }
        let me = Self {
            file,
            path,
            done: false,
        };
        // A partial file left by a dump that died is ours now.
        me.file.set_len(0).map_err(|e| werr("creating", e))?;
        Ok(me)
    }

    /// Renames the (synced) file to `to`.
    fn commit(mut self, to: &Path) -> std::io::Result<()> {
        std::fs::rename(&self.path, to)?;
        self.done = true;
        Ok(())
    }
}

impl Drop for Partial {
    fn drop(&mut self) {
        if !self.done {
            // Still locked by us: no other dump is using this name.
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A plain file name: not a path, not hidden (the partial file is), not empty.
fn check_name(name: &str) -> Result<(), VmcoreError> {
    let why = if name.is_empty() {
        "it is empty"
    } else if name.contains('/') {
        "it has a '/' (give the directory separately)"
    } else if name.starts_with('.') {
        "it starts with '.'"
    } else if name.contains('\0') {
        "it has a NUL byte"
    } else {
        return Ok(());
    };
    Err(VmcoreError::BadName {
        name: name.to_string(),
        why,
    })
}

/// `ram` sorted, empty ranges dropped; page-aligned, disjoint. Adjacent ranges stay
/// apart: a source may refuse a read across its ranges (see [`crate::MappedRam`]).
fn normalize(ram: &[Range<u64>]) -> Result<Vec<Range<u64>>, VmcoreError> {
    let mut v: Vec<Range<u64>> = ram.iter().filter(|r| r.start < r.end).cloned().collect();
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<u64>> = Vec::with_capacity(v.len());
    for r in v {
        if r.start % PAGE != 0 || r.end % PAGE != 0 {
            return Err(VmcoreError::BadRam(format!("{r:#x?} is not page-aligned")));
        }
        match out.last_mut() {
            Some(last) if last.end > r.start => {
                return Err(VmcoreError::BadRam(format!(
                    "{last:#x?} and {r:#x?} overlap"
                )));
            }
            _ => out.push(r),
        }
    }
    if out.is_empty() {
        return Err(VmcoreError::BadRam("no RAM given".into()));
    }
    if out.len() > MAX_RAM_RANGES {
        return Err(VmcoreError::BadRam(format!(
            "{} ranges, over {MAX_RAM_RANGES}",
            out.len()
        )));
    }
    Ok(out)
}

/// Checks `k` against the RAM; returns the image's page-aligned physical range.
fn check_layout(
    k: &KernelLayout,
    ranges: &[Range<u64>],
) -> Result<Option<Range<u64>>, VmcoreError> {
    let ram_end = ranges.last().map_or(0, |r| r.end);
    if let Some(base) = k.page_offset_base {
        if base
            .checked_add(ram_end)
            .is_none_or(|e| e > START_KERNEL_MAP)
        {
            return Err(VmcoreError::BadLayout(format!(
                "page_offset_base {base:#x} + RAM up to {ram_end:#x} runs into the kernel-image mapping"
            )));
        }
    }
    let Some(im) = &k.image else {
        return Ok(None);
    };
    let bad = || VmcoreError::BadLayout(format!("kernel image {im:#x?}"));
    let start = im.start - im.start % PAGE;
    let end = im.end.checked_next_multiple_of(PAGE).ok_or_else(bad)?;
    if start >= end || end - start > MAX_IMAGE {
        return Err(VmcoreError::BadLayout(format!(
            "kernel image {im:#x?} is empty or over {MAX_IMAGE:#x} bytes"
        )));
    }
    let off = start.wrapping_sub(k.phys_base);
    if off
        .checked_add(end - start)
        .is_none_or(|e| e > IMAGE_MAP_SIZE)
    {
        return Err(VmcoreError::BadLayout(format!(
            "kernel image {im:#x?} with phys_base {:#x} lies outside the kernel-image mapping",
            k.phys_base
        )));
    }
    Ok(Some(start..end))
}

/// Whether a page is all zero: 64-byte blocks OR-ed as words (vectorized), stopping at
/// the first block that is not.
fn is_zero(page: &[u8]) -> bool {
    let mut blocks = page.chunks_exact(64);
    let blocks_zero = blocks.by_ref().all(|b| {
        b.chunks_exact(8).fold(0u64, |acc, w| {
            acc | u64::from_ne_bytes([w[0], w[1], w[2], w[3], w[4], w[5], w[6], w[7]])
        }) == 0
    });
    blocks_zero && blocks.remainder().iter().all(|&b| b == 0)
}

/// At most `max` runs: when there are more, the shortest zero gaps inside one RAM range
/// are filled (their zero pages written) until there are not.
fn cap_runs(runs: Vec<(usize, Range<u64>)>, max: usize) -> Vec<Range<u64>> {
    if runs.len() <= max {
        return runs.into_iter().map(|(_, r)| r).collect();
    }
    // (gap length, boundary i: between runs i and i+1), same RAM range only.
    let mut gaps: Vec<(u64, usize)> = runs
        .windows(2)
        .enumerate()
        .filter(|(_, w)| w[0].0 == w[1].0)
        .map(|(i, w)| (w[1].1.start - w[0].1.end, i))
        .collect();
    let k = (runs.len() - max).min(gaps.len());
    if k < gaps.len() {
        gaps.select_nth_unstable(k);
    }
    let mut merge = vec![false; runs.len()];
    for &(_, i) in &gaps[..k] {
        merge[i] = true;
    }
    let mut out: Vec<Range<u64>> = Vec::with_capacity(max);
    for (i, (_, r)) in runs.into_iter().enumerate() {
        match out.last_mut() {
            Some(last) if i > 0 && merge[i - 1] => last.end = r.end,
            _ => out.push(r),
        }
    }
    out
}

fn put_ehdr(h: &mut Vec<u8>, phnum: u16) {
    h.extend_from_slice(ELFMAG);
    h.extend_from_slice(&[
        ELFCLASS64,
        ELFDATA2LSB,
        EV_CURRENT,
        0, /* ELFOSABI_NONE */
    ]);
    h.extend_from_slice(&[0; 8]);
    h.extend_from_slice(&ET_CORE.to_le_bytes());
    h.extend_from_slice(&EM_X86_64.to_le_bytes());
    h.extend_from_slice(&u32::from(EV_CURRENT).to_le_bytes()); // e_version
    h.extend_from_slice(&0u64.to_le_bytes()); // e_entry
    h.extend_from_slice(&EHDR_SIZE.to_le_bytes()); // e_phoff
    h.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    h.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    h.extend_from_slice(&(EHDR_SIZE as u16).to_le_bytes()); // e_ehsize
    h.extend_from_slice(&(PHDR_SIZE as u16).to_le_bytes()); // e_phentsize
    h.extend_from_slice(&phnum.to_le_bytes());
    h.extend_from_slice(&[0; 6]); // e_shentsize, e_shnum, e_shstrndx
}

fn put_phdr(h: &mut Vec<u8>, p_type: u32, flags: u32, l: &LoadSegment, align: u64) {
    h.extend_from_slice(&p_type.to_le_bytes());
    h.extend_from_slice(&flags.to_le_bytes());
    for v in [l.offset, l.vaddr, l.paddr, l.filesz, l.memsz, align] {
        h.extend_from_slice(&v.to_le_bytes());
    }
}

/// An ELF note: `namesz`, `descsz`, `type`, the NUL-terminated name and the
/// descriptor, each padded to 4 bytes. `desc` is at most a few pages (checked by the
/// callers: VMCOREINFO text is at most 16 KiB, `elf_prstatus` 336 bytes).
fn put_note(out: &mut Vec<u8>, name: &[u8], ntype: u32, desc: &[u8]) {
    out.extend_from_slice(&(name.len() as u32 + 1).to_le_bytes());
    out.extend_from_slice(&(desc.len() as u32).to_le_bytes());
    out.extend_from_slice(&ntype.to_le_bytes());
    out.extend_from_slice(name);
    out.push(0);
    out.resize(out.len().next_multiple_of(4), 0);
    out.extend_from_slice(desc);
    out.resize(out.len().next_multiple_of(4), 0);
}

/// A vmcore file served as guest-physical memory.
pub struct Vmcore {
    file: File,
    path: PathBuf,
    size: u64,
    /// Every `PT_LOAD`, in header order.
    loads: Vec<LoadSegment>,
    /// The RAM `PT_LOAD`s (no image aliases, none empty), by address, disjoint.
    phys: Vec<LoadSegment>,
    vmcoreinfo: Option<Vec<u8>>,
    cpus: Vec<PrStatusRegs>,
}

impl std::fmt::Debug for Vmcore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Listing 60,000 segments helps no one reading a Debug dump.
        f.debug_struct("Vmcore")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("loads", &self.loads.len())
            .field("ram", &self.ram_ranges().len())
            .field("cpus", &self.cpus.len())
            .field("vmcoreinfo", &self.vmcoreinfo.is_some())
            .finish_non_exhaustive()
    }
}

impl Vmcore {
    /// Opens and checks the vmcore at `path`: an x86-64 ELF64 core whose every header
    /// lies inside the file and whose RAM segments do not overlap. The file is read
    /// with `pread` on each access (no mapping: a file truncated under us is an error,
    /// not a crash).
    pub fn open(path: impl AsRef<Path>) -> Result<Self, VmcoreError> {
        let path = path.as_ref().to_path_buf();
        let rerr = |source| VmcoreError::Read {
            path: path.clone(),
            source,
        };
        let file = File::open(&path).map_err(rerr)?;
        let size = file.metadata().map_err(rerr)?.len();

        let mut ehdr = [0u8; EHDR_SIZE as usize];
        let head = size.min(EHDR_SIZE) as usize;
        file.read_exact_at(&mut ehdr[..head], 0).map_err(rerr)?;
        if head < ELFMAG.len() || &ehdr[..ELFMAG.len()] != ELFMAG {
            return Err(VmcoreError::NotElf);
        }
        if head < EHDR_SIZE as usize {
            return Err(VmcoreError::Truncated {
                what: "ELF header",
                needed: EHDR_SIZE,
                size,
            });
        }
        if ehdr[EI_CLASS] != ELFCLASS64 {
            return Err(VmcoreError::WrongClass {
                class: ehdr[EI_CLASS],
            });
        }
        if ehdr[EI_DATA] != ELFDATA2LSB {
            return Err(VmcoreError::WrongEndian {
                data: ehdr[EI_DATA],
            });
        }
        let hdr = goblin::elf::Elf::parse_header(&ehdr)
            .map_err(|e| VmcoreError::BadHeader(e.to_string()))?;
        if hdr.e_machine != EM_X86_64 {
            return Err(VmcoreError::WrongMachine {
                machine: hdr.e_machine,
            });
        }
        if hdr.e_type != ET_CORE {
            return Err(VmcoreError::NotCore { e_type: hdr.e_type });
        }
        if hdr.e_phnum > MAX_HEADERS {
            return Err(VmcoreError::TooManyHeaders {
                count: hdr.e_phnum.into(),
                max: MAX_HEADERS.into(),
            });
        }
        if hdr.e_phnum == 0 {
            return Err(VmcoreError::BadHeader("no program headers".into()));
        }
        if u64::from(hdr.e_phentsize) != PHDR_SIZE {
            return Err(VmcoreError::BadHeader(format!(
                "program headers of {} bytes, not {PHDR_SIZE}",
                hdr.e_phentsize
            )));
        }
        let table_len = PHDR_SIZE * u64::from(hdr.e_phnum);
        let table_end = hdr.e_phoff.checked_add(table_len);
        if table_end.is_none_or(|e| e > size) {
            return Err(VmcoreError::Truncated {
                what: "program headers",
                needed: table_end.unwrap_or(u64::MAX),
                size,
            });
        }
        // At most 65534 * 56 bytes, inside the file.
        let mut table = vec![0u8; table_len as usize];
        file.read_exact_at(&mut table, hdr.e_phoff).map_err(rerr)?;
        let phdrs = ProgramHeader::parse(&table, 0, hdr.e_phnum.into(), Endian::Little)
            .map_err(|e| VmcoreError::BadHeader(e.to_string()))?;

        let mut loads = Vec::new();
        let mut notes = Vec::new();
        let mut note_bytes = 0u64;
        for (index, ph) in phdrs.iter().enumerate() {
            if ph
                .p_offset
                .checked_add(ph.p_filesz)
                .is_none_or(|e| e > size)
            {
                return Err(VmcoreError::SegmentPastEnd {
                    index,
                    offset: ph.p_offset,
                    filesz: ph.p_filesz,
                    size,
                });
            }
            match ph.p_type {
                PT_LOAD => {
                    if ph.p_memsz < ph.p_filesz {
                        return Err(VmcoreError::BadSegment {
                            index,
                            why: format!(
                                "p_memsz {:#x} is less than p_filesz {:#x}",
                                ph.p_memsz, ph.p_filesz
                            ),
                        });
                    }
                    if ph.p_paddr.checked_add(ph.p_memsz).is_none() {
                        return Err(VmcoreError::BadSegment {
                            index,
                            why: format!(
                                "guest-physical {:#x}+{:#x} wraps around",
                                ph.p_paddr, ph.p_memsz
                            ),
                        });
                    }
                    loads.push(LoadSegment {
                        paddr: ph.p_paddr,
                        vaddr: ph.p_vaddr,
                        offset: ph.p_offset,
                        filesz: ph.p_filesz,
                        memsz: ph.p_memsz,
                    });
                }
                PT_NOTE => {
                    note_bytes = note_bytes.saturating_add(ph.p_filesz);
                    if note_bytes > MAX_NOTE_BYTES {
                        return Err(VmcoreError::NotesTooLarge { bytes: note_bytes });
                    }
                    let mut data = vec![0u8; ph.p_filesz as usize];
                    file.read_exact_at(&mut data, ph.p_offset).map_err(rerr)?;
                    notes.push(data);
                }
                _ => {}
            }
        }

        let mut vmcoreinfo = None;
        let mut cpus = Vec::new();
        for data in &notes {
            for note in parse_notes(data)? {
                match (note.name, note.ntype) {
                    (VMCOREINFO_NAME, NT_VMCOREINFO) if vmcoreinfo.is_none() => {
                        vmcoreinfo = Some(note.desc.to_vec());
                    }
                    (CORE_NAME, NT_PRSTATUS) => {
                        cpus.push(PrStatusRegs::decode(note.desc).ok_or_else(|| {
                            VmcoreError::BadNote(format!(
                                "NT_PRSTATUS of {} bytes, not {PRSTATUS_SIZE}",
                                note.desc.len()
                            ))
                        })?);
                    }
                    _ => {}
                }
            }
        }

        let mut phys: Vec<LoadSegment> = loads
            .iter()
            .filter(|l| l.memsz > 0 && !l.is_image_alias())
            .copied()
            .collect();
        phys.sort_by_key(|l| l.paddr);
        if let Some(w) = phys.windows(2).find(|w| w[0].phys().end > w[1].paddr) {
            return Err(VmcoreError::Overlap {
                first: w[0].phys(),
                second: w[1].phys(),
            });
        }
        Ok(Self {
            file,
            path,
            size,
            loads,
            phys,
            vmcoreinfo,
            cpus,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's size when opened.
    pub fn file_size(&self) -> u64 {
        self.size
    }

    /// The `VMCOREINFO` note, parsed.
    pub fn vmcoreinfo(&self) -> Result<VmcoreInfo, VmcoreError> {
        let raw = self
            .vmcoreinfo
            .as_deref()
            .ok_or(VmcoreError::NoVmcoreinfo)?;
        Ok(VmcoreInfo::parse(raw)?)
    }

    /// The guest RAM the dump covers, zero pages included (adjacent ranges merged).
    pub fn ram_ranges(&self) -> Vec<Range<u64>> {
        let mut out: Vec<Range<u64>> = Vec::new();
        for r in self.phys.iter().map(LoadSegment::phys) {
            match out.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => out.push(r),
            }
        }
        out
    }

    /// Every `PT_LOAD`, in header order (RAM and kernel-image aliases).
    pub fn loads(&self) -> &[LoadSegment] {
        &self.loads
    }

    /// The CPUs' registers from the `NT_PRSTATUS` notes, in note order.
    pub fn cpus(&self) -> &[PrStatusRegs] {
        &self.cpus
    }
}

impl PhysMemory for Vmcore {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        let not_ram = || MemoryError::NotRam { addr, len };
        let end = addr.checked_add(len).ok_or_else(not_ram)?;
        // The segments that cover [addr, end), one after the other with no hole.
        let first = self.phys.partition_point(|s| s.phys().end <= addr);
        let mut last = first;
        let mut at = addr;
        loop {
            let s = self.phys.get(last).ok_or_else(not_ram)?;
            if s.paddr > at {
                return Err(not_ram());
            }
            at = s.phys().end;
            if at >= end {
                break;
            }
            last += 1;
        }
        let mut at = addr;
        let mut done = 0usize;
        for s in &self.phys[first..=last] {
            // Checked at open: paddr + memsz and offset + filesz do not wrap.
            let upto = s.phys().end.min(end);
            let file_end = s.paddr + s.filesz;
            if at < file_end {
                let n = (upto.min(file_end) - at) as usize;
                self.file
                    .read_exact_at(&mut buf[done..done + n], s.offset + (at - s.paddr))
                    .map_err(|e| MemoryError::Unreadable {
                        addr,
                        len,
                        why: format!("reading {}: {e}", self.path.display()),
                    })?;
                done += n;
                at += n as u64;
            }
            if at < upto {
                let n = (upto - at) as usize;
                buf[done..done + n].fill(0);
                done += n;
                at = upto;
            }
        }
        debug_assert_eq!(done, buf.len());
        Ok(())
    }
}

/// One note, borrowed from its segment.
struct Note<'a> {
    name: &'a [u8],
    ntype: u32,
    desc: &'a [u8],
}

/// The notes in a `PT_NOTE` segment (4-byte aligned, as kdump writes them); empty
/// headers (the terminator kexec leaves) are skipped.
fn parse_notes(data: &[u8]) -> Result<Vec<Note<'_>>, VmcoreError> {
    let word = |at: usize| -> Option<u32> {
        Some(u32::from_le_bytes(data.get(at..at + 4)?.try_into().ok()?))
    };
    let mut notes = Vec::new();
    let mut at = 0usize;
    while at < data.len() {
        let (Some(namesz), Some(descsz), Some(ntype)) = (word(at), word(at + 4), word(at + 8))
        else {
            return Err(VmcoreError::BadNote(format!(
                "a note header at {at:#x} runs past the end of its {}-byte segment",
                data.len()
            )));
        };
        let bounds = (|| {
            let name_at = at.checked_add(12)?;
            let name_end = name_at.checked_add(usize::try_from(namesz).ok()?)?;
            let desc_at = name_end.checked_next_multiple_of(4)?;
            let desc_end = desc_at.checked_add(usize::try_from(descsz).ok()?)?;
            (desc_end <= data.len()).then_some((name_at, name_end, desc_at, desc_end))
        })();
        let Some((name_at, name_end, desc_at, desc_end)) = bounds else {
            return Err(VmcoreError::BadNote(format!(
                "the note at {at:#x} (name {namesz} bytes, descriptor {descsz}) runs past the end of its {}-byte segment",
                data.len()
            )));
        };
        let name = &data[name_at..name_end];
        let name = name.strip_suffix(&[0]).unwrap_or(name);
        if namesz != 0 || descsz != 0 || ntype != 0 {
            notes.push(Note {
                name,
                ntype,
                desc: &data[desc_at..desc_end],
            });
        }
        at = desc_end.next_multiple_of(4);
    }
    Ok(notes)
}

#[cfg(test)]
mod tests;
