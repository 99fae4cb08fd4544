//! An ELF symbol file made from the guest's kallsyms, for gdb: every kernel-image
//! symbol at its KASLR'd address, so `add-symbol-file FILE -s .text BASE` lets gdb name
//! functions in a backtrace and find variables (`p (unsigned long)jiffies`) without the
//! `-dbg` package. Types still need a vmlinux with debug info.

use object::write::{Object, SectionId, Symbol as ElfSymbol, SymbolSection};
use object::{
    Architecture, BinaryFormat, Endianness, SectionKind, SymbolFlags, SymbolKind, SymbolScope,
};
use thiserror::Error;

use crate::kallsyms::Kallsyms;
use crate::paging::START_KERNEL_MAP;

/// The image mapping is 1 GiB (or 2 with a large KASLR range); more is not a kernel.
const MAX_SPAN: u64 = 2 << 30;

/// Why no symbol file could be made.
#[derive(Debug, Error)]
pub enum SymfileError {
    /// No symbol lies in the kernel-image mapping.
    #[error("no kallsyms symbol lies in the kernel image mapping")]
    NoImageSymbols,
    /// The image symbols span more than a kernel image can.
    #[error("kernel-image symbols span {span:#x} bytes, over the {MAX_SPAN:#x} an image can")]
    TooWide {
        /// Their span.
        span: u64,
    },
    /// Writing the ELF failed.
    #[error("writing the ELF symbol file: {0}")]
    Write(String),
}

/// A symbol file and where its `.text` section goes.
#[derive(Debug, Clone)]
pub struct SymbolFile {
    /// The ELF file.
    pub bytes: Vec<u8>,
    /// The address of `.text` (the lowest image symbol): `add-symbol-file -s .text`.
    pub base: u64,
    /// Symbols in it.
    pub symbols: usize,
}

/// Builds the symbol file of the kernel-image symbols in `syms` (per-cpu offsets and
/// anything outside the image mapping are left out).
pub fn build(syms: &Kallsyms) -> Result<SymbolFile, SymfileError> {
    let image: Vec<_> = syms
        .symbols()
        .iter()
        .filter(|s| s.addr >= START_KERNEL_MAP)
        .collect();
    let (first, last) = match (image.first(), image.last()) {
        (Some(f), Some(l)) => (f.addr, l.addr),
        _ => return Err(SymfileError::NoImageSymbols),
    };
    let span = last - first + 1;
    if span > MAX_SPAN {
        return Err(SymfileError::TooWide { span });
    }
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let text: SectionId = obj.add_section(
        Vec::new(),
        b".text".to_vec(),
        SectionKind::UninitializedData,
    );
    obj.append_section_bss(text, span, 4096);
    for (i, s) in image.iter().enumerate() {
        // kallsyms has no sizes: a symbol runs to the next one, so gdb names an address
        // inside a function by that function.
        let next = image.get(i + 1).map_or(last + 1, |n| n.addr);
        let kind = match s.kind.to_ascii_lowercase() {
            't' | 'w' => SymbolKind::Text,
            _ => SymbolKind::Data,
        };
        obj.add_symbol(ElfSymbol {
            name: s.name.as_bytes().to_vec(),
            value: s.addr - first,
            size: next.saturating_sub(s.addr),
            kind,
            scope: if s.kind.is_ascii_uppercase() {
                SymbolScope::Linkage
            } else {
                SymbolScope::Compilation
            },
            weak: false,
            section: SymbolSection::Section(text),
            flags: SymbolFlags::None,
        });
    }
    let bytes = obj
        .write()
        .map_err(|e| SymfileError::Write(e.to_string()))?;
    Ok(SymbolFile {
        bytes,
        base: first,
        symbols: image.len(),
    })
}
