//! Reading a vmcore: the headers checked against the file, the notes parsed, the RAM
//! segments served as [`PhysMemory`].

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use goblin::container::Endian;
use goblin::elf::header::{EI_CLASS, EI_DATA, ELFCLASS64, ELFDATA2LSB, ELFMAG, EM_X86_64, ET_CORE};
use goblin::elf::program_header::{PT_LOAD, PT_NOTE};
use goblin::elf64::program_header::ProgramHeader;

use super::*;
use crate::memory::{MemoryError, PhysMemory};
use crate::vmcoreinfo::VmcoreInfo;

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
        let mut control = Vec::new();
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
                    // One per CPU, in the same order as the NT_PRSTATUS notes.
                    (QEMU_NAME, NT_QEMU_CPU_STATE) => {
                        control.push(PrStatusRegs::decode_qemu_control(note.desc).ok_or_else(
                            || {
                                VmcoreError::BadNote(format!(
                                "QEMU CPU state of {} bytes is too short for the control registers",
                                note.desc.len()
                            ))
                            },
                        )?);
                    }
                    _ => {}
                }
            }
        }
        for (cpu, c) in cpus.iter_mut().zip(control) {
            cpu.control = c;
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

    /// The CPUs' registers from the `NT_PRSTATUS` notes, in note order (with the
    /// control registers of the QEMU CPU-state notes, when there are some).
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

    fn describe(&self) -> String {
        "a vmcore file".into()
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
