//! DWARF as a type source: a vmlinux (or a `.ko`/`.o`) with debug info, read with
//! `gimli`, its types converted into the same [`crate::btf::Type`] model BTF gives, so
//! `read` evaluates expressions the same way over either.
//!
//! The file is mapped, not read: Debian's debug vmlinux is 590 MB with 164 MB of
//! `.debug_info`. Nothing is parsed up front; the first lookup indexes the names of the
//! units' top-level DIEs (global variables and named types) in one pass (`index.rs`),
//! kept inside the [`DwarfFile`]; each read then converts only the type graph inside
//! what it asks for (`convert.rs`), cached per root: a struct met only behind a pointer
//! stays a named `Fwd` until `->` reaches it and converts it as a root of its own.
//! Everything in the file is untrusted: every reference is checked, the conversion is
//! a bounded worklist (no recursion on file data), and each kind of bad data has an
//! error.

mod convert;
mod elf;
mod files;
mod index;
mod source;
mod tables;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use elf::DwarfFile;
pub use files::DwarfFiles;
pub use tables::Converted;
pub use tables::IndexStats;

/// Why a DWARF file could not be used.
#[derive(Debug, Error)]
pub enum DwarfError {
    /// The file could not be opened or mapped.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Not a file Vesper can map (a directory, a device, an empty file).
    #[error("{path} is not a regular, non-empty file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// Not a little-endian 64-bit ELF file.
    #[error("{path} is not a little-endian 64-bit ELF file: {why}")]
    NotElf {
        /// The file.
        path: PathBuf,
        /// What the ELF parser said.
        why: String,
    },
    /// An ELF with no DWARF (a stripped vmlinux, a module built without `-g`).
    #[error("{path} has no DWARF (.debug_info); Debian ships it in linux-image-RELEASE-dbg")]
    NoDebugInfo {
        /// The file.
        path: PathBuf,
    },
    /// A compressed debug section (`SHF_COMPRESSED` or `.zdebug_*`).
    #[error("{path}: section {section} is compressed, which is not supported (objcopy --decompress-debug-sections)")]
    Compressed {
        /// The file.
        path: PathBuf,
        /// The section.
        section: String,
    },
    /// A section's header or relocations are unreadable.
    #[error("{path}: section {section}: {why}")]
    Section {
        /// The file.
        path: PathBuf,
        /// The section.
        section: String,
        /// What is wrong.
        why: String,
    },
    /// `gimli` refused the DWARF data.
    #[error("{path}: bad DWARF at .debug_info offset {offset:#x}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Where (the unit or DIE being read).
        offset: usize,
        /// gimli's error.
        #[source]
        source: gimli::Error,
    },
    /// A DIE whose contents make no sense (a size that does not fit, a reference
    /// outside the section, a member offset Vesper cannot evaluate).
    #[error("{path}: DIE at .debug_info offset {offset:#x}: {why}")]
    BadDie {
        /// The file.
        path: PathBuf,
        /// The DIE.
        offset: usize,
        /// What is wrong.
        why: String,
    },
    /// The type graph asked for is larger than any real kernel's.
    #[error("{path}: the types reachable from {root} exceed {max} (a reference loop through fresh DIEs?)")]
    TooManyTypes {
        /// The file.
        path: PathBuf,
        /// What was asked for.
        root: String,
        /// The limit.
        max: usize,
    },
    /// The vmlinux is not the guest kernel's.
    #[error(
        "{path} is not the guest kernel's vmlinux: {what} differs (file: {file}, guest: {guest})"
    )]
    Mismatch {
        /// The file.
        path: PathBuf,
        /// What was compared ("build-id").
        what: &'static str,
        /// The file's value.
        file: String,
        /// The guest's value.
        guest: String,
    },
    /// Typedefs or qualifiers that lead back to themselves.
    #[error("{path}: DIE at .debug_info offset {offset:#x}: typedefs or qualifiers loop (reached from {root})")]
    ReferenceCycle {
        /// The file.
        path: PathBuf,
        /// A DIE on the loop.
        offset: usize,
        /// What was asked for.
        root: String,
    },
    /// The name index could not be built (an earlier lookup's error, kept).
    #[error("{path}: cannot index the DWARF: {why}")]
    Index {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
    /// A cast names a type the DWARF does not have.
    #[error("no type {name:?} in the DWARF of {path}")]
    NoType {
        /// The file.
        path: PathBuf,
        /// The type as written.
        name: String,
    },
}

impl DwarfError {
    /// A `gimli` error while reading at `offset`.
    pub(crate) fn parse(path: &Path, offset: usize, source: gimli::Error) -> Self {
        DwarfError::Parse {
            path: path.to_path_buf(),
            offset,
            source,
        }
    }

    /// A DIE that makes no sense.
    pub(crate) fn bad(path: &Path, offset: usize, why: impl Into<String>) -> Self {
        DwarfError::BadDie {
            path: path.to_path_buf(),
            offset,
            why: why.into(),
        }
    }
}

#[cfg(test)]
mod tests;
