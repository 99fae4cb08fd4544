//! Writing a vmcore: plan the runs of non-zero pages, lay out the headers and notes,
//! stream RAM into a locked partial file, sync and rename.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::ops::Range;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Instant;

use goblin::elf::header::{ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, ET_CORE};
use goblin::elf::program_header::{PF_R, PF_W, PF_X, PT_LOAD, PT_NOTE};

use super::*;
use crate::kernel::START_KERNEL_MAP;
use crate::memory::PhysMemory;
use crate::vmcoreinfo::VmcoreInfo;

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
pub(super) struct Job<'a> {
    pub(super) mem: &'a dyn PhysMemory,
    pub(super) info: &'a VmcoreInfo,
    pub(super) kernel: Option<&'a KernelLayout>,
    pub(super) opts: &'a DumpOptions,
    pub(super) max_segments: usize,
}

/// The plan of a dump: the RAM it covers and the runs whose bytes go in the file.
struct Plan {
    ranges: Vec<Range<u64>>,
    runs: Vec<Range<u64>>,
}

impl Job<'_> {
    pub(super) fn write(
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
            put_note(&mut notes, QEMU_NAME, NT_QEMU_CPU_STATE, &cpu.encode_qemu());
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
pub(super) fn cap_runs(runs: Vec<(usize, Range<u64>)>, max: usize) -> Vec<Range<u64>> {
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
