//! Opening a file: map it, find its DWARF sections with `object`, and hand `gimli` a
//! view of them. A vmlinux (ET_EXEC) is read in place; a relocatable object (a `.ko`
//! or `.o`) has its debug sections copied and its absolute relocations applied, as a
//! debugger must, since the string and abbreviation offsets live in the addends.

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use gimli::{EndianSlice, LittleEndian, SectionId};
use object::{
    Object, ObjectSection, ObjectSymbol, RelocationFlags, RelocationKind, RelocationTarget,
    SectionFlags,
};

use super::tables::{Converted, Index};
use super::DwarfError;

/// The reader every part of this module uses.
pub(crate) type Reader<'a> = EndianSlice<'a, LittleEndian>;

/// The sections Vesper reads: what type DIEs and their strings need, and the line
/// table header `gimli` reads for every unit.
const NEEDED: &[SectionId] = &[
    SectionId::DebugLine,
    SectionId::DebugInfo,
    SectionId::DebugAbbrev,
    SectionId::DebugStr,
    SectionId::DebugLineStr,
    SectionId::DebugStrOffsets,
    SectionId::DebugAddr,
];

/// A debug section's bytes: in the mapping, or relocated into memory.
enum SectionData {
    Mapped(Range<usize>),
    Owned(Vec<u8>),
}

/// One ELF file with DWARF, mapped read-only, indexed on first use.
pub struct DwarfFile {
    path: PathBuf,
    map: memmap2::Mmap,
    sections: HashMap<SectionId, SectionData>,
    relocatable: bool,
    build_id: Option<Vec<u8>>,
    pub(crate) index: OnceLock<Result<Index, String>>,
    pub(crate) roots: Mutex<HashMap<String, Arc<Converted>>>,
}

impl std::fmt::Debug for DwarfFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DwarfFile")
            .field("path", &self.path)
            .field("bytes", &self.map.len())
            .field("relocatable", &self.relocatable)
            .finish_non_exhaustive()
    }
}

impl DwarfFile {
    /// Maps `path` and finds its DWARF; nothing is parsed yet.
    pub fn open(path: &Path) -> Result<Self, DwarfError> {
        let io = |source| DwarfError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = std::fs::File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if !meta.is_file() || meta.len() == 0 {
            return Err(DwarfError::NotAFile {
                path: path.to_path_buf(),
            });
        }
        // SAFETY: the mapping is read-only and private to this process; every byte
        // read from it is parsed as untrusted input. A file truncated by someone else
        // while mapped would raise SIGBUS, as for any debugger reading a vmlinux;
        // Vesper's own files are replaced by rename, never truncated in place.
        let map = unsafe { memmap2::Mmap::map(&file) }.map_err(io)?;
        let mut f = DwarfFile {
            path: path.to_path_buf(),
            map,
            sections: HashMap::new(),
            relocatable: false,
            build_id: None,
            index: OnceLock::new(),
            roots: Mutex::new(HashMap::new()),
        };
        f.find_sections()?;
        tracing::debug!(path = %path.display(), relocatable = f.relocatable, "DWARF file mapped");
        Ok(f)
    }

    fn find_sections(&mut self) -> Result<(), DwarfError> {
        let path = self.path.clone();
        let obj = object::File::parse(&*self.map).map_err(|e| DwarfError::NotElf {
            path: path.clone(),
            why: e.to_string(),
        })?;
        if obj.format() != object::BinaryFormat::Elf || !obj.is_64() || !obj.is_little_endian() {
            return Err(DwarfError::NotElf {
                path,
                why: format!("{:?}, 64-bit {}", obj.format(), obj.is_64()),
            });
        }
        self.relocatable = obj.kind() == object::ObjectKind::Relocatable;
        self.build_id = obj.build_id().ok().flatten().map(<[u8]>::to_vec);
        let section_err = |section: &str, why: String| DwarfError::Section {
            path: path.clone(),
            section: section.to_string(),
            why,
        };
        for id in NEEDED {
            let name = id.name();
            let zname = format!(".z{}", name.trim_start_matches('.'));
            if obj.section_by_name(&zname).is_some() {
                return Err(DwarfError::Compressed {
                    path,
                    section: zname,
                });
            }
            let Some(sec) = obj.section_by_name(name) else {
                continue;
            };
            if let SectionFlags::Elf { sh_flags } = sec.flags() {
                if sh_flags & u64::from(object::elf::SHF_COMPRESSED) != 0 {
                    return Err(DwarfError::Compressed {
                        path,
                        section: name.to_string(),
                    });
                }
            }
            let Some((start, len)) = sec.file_range() else {
                continue; // SHT_NOBITS: a stripped file's placeholder.
            };
            let range = usize::try_from(start)
                .ok()
                .zip(usize::try_from(len).ok())
                .and_then(|(s, l)| Some(s..s.checked_add(l)?))
                .filter(|r| r.end <= self.map.len())
                .ok_or_else(|| {
                    section_err(
                        name,
                        format!("{len} bytes at file offset {start:#x} run past the end"),
                    )
                })?;
            let data = if self.relocatable {
                let mut bytes = self.map[range].to_vec();
                relocate(&obj, &sec, &mut bytes).map_err(|why| section_err(name, why))?;
                SectionData::Owned(bytes)
            } else {
                SectionData::Mapped(range)
            };
            self.sections.insert(*id, data);
        }
        let info_len = self.section(SectionId::DebugInfo).len();
        if info_len == 0 {
            return Err(DwarfError::NoDebugInfo { path });
        }
        Ok(())
    }

    fn section(&self, id: SectionId) -> &[u8] {
        match self.sections.get(&id) {
            Some(SectionData::Mapped(r)) => self.map.get(r.clone()).unwrap_or_default(),
            Some(SectionData::Owned(v)) => v,
            None => &[],
        }
    }

    /// A `gimli` view of the sections (cheap: slices, no parsing).
    pub(crate) fn dwarf(&self) -> gimli::Dwarf<Reader<'_>> {
        let loaded = gimli::Dwarf::load(|id| {
            Ok::<_, std::convert::Infallible>(EndianSlice::new(self.section(id), LittleEndian))
        });
        match loaded {
            Ok(d) => d,
            Err(never) => match never {},
        }
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether it is a relocatable object (a module), not a linked kernel.
    pub fn is_relocatable(&self) -> bool {
        self.relocatable
    }

    /// The GNU build-id, if the file has one.
    pub fn build_id(&self) -> Option<&[u8]> {
        self.build_id.as_deref()
    }

    /// Refuses a vmlinux whose build-id differs from the guest kernel's (`BUILD-ID`
    /// in VMCOREINFO): its layouts would be silently wrong. A module has its own
    /// build-id, and a guest that does not say is taken on trust (logged).
    pub fn check_build_id(&self, guest: Option<&str>) -> Result<(), DwarfError> {
        if self.relocatable {
            return Ok(());
        }
        let (Some(file), Some(guest)) = (self.build_id(), guest) else {
            tracing::warn!(path = %self.path.display(), "no build-id to compare; trusting the vmlinux");
            return Ok(());
        };
        let file: String = file.iter().map(|b| format!("{b:02x}")).collect();
        if !file.eq_ignore_ascii_case(guest.trim()) {
            return Err(DwarfError::Mismatch {
                path: self.path.clone(),
                what: "build-id",
                file,
                guest: guest.trim().to_string(),
            });
        }
        Ok(())
    }
}

/// Applies `sec`'s absolute relocations to `bytes` (its copy). Debug sections of an
/// object refer to each other through section symbols, whose value is 0 there.
fn relocate(
    obj: &object::File<'_>,
    sec: &object::Section<'_, '_>,
    bytes: &mut [u8],
) -> Result<(), String> {
    for (offset, rel) in sec.relocations() {
        let width = match (rel.kind(), rel.size(), rel.flags()) {
            (RelocationKind::Absolute, 32 | 64, _) => usize::from(rel.size() / 8),
            // R_X86_64_32S, for completeness.
            (_, 32, RelocationFlags::Elf { r_type: 11 }) => 4,
            (kind, size, _) => {
                return Err(format!(
                    "relocation at {offset:#x} is {kind:?}/{size} bits, not an absolute address"
                ))
            }
        };
        let sym_value = match rel.target() {
            RelocationTarget::Symbol(i) => obj
                .symbol_by_index(i)
                .map_err(|e| format!("relocation at {offset:#x}: {e}"))?
                .address(),
            RelocationTarget::Absolute => 0,
            t => return Err(format!("relocation at {offset:#x} targets {t:?}")),
        };
        let value = sym_value.wrapping_add_signed(rel.addend());
        let at = usize::try_from(offset).map_err(|e| e.to_string())?;
        let place = at
            .checked_add(width)
            .and_then(|end| bytes.get_mut(at..end))
            .ok_or_else(|| format!("relocation at {offset:#x} is past the section's end"))?;
        place.copy_from_slice(&value.to_le_bytes()[..width]);
    }
    Ok(())
}
