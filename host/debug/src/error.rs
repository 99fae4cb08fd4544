//! The crate's error: each reader's own error, plus what only the whole knows.

use thiserror::Error;

use crate::btf::BtfError;
use crate::dwarf::DwarfError;
use crate::kallsyms::KallsymsError;
use crate::memory::MemoryError;
use crate::paging::PagingError;
use crate::printk::PrintkError;
use crate::vmcore::VmcoreError;
use crate::vmcoreinfo::VmcoreInfoError;

/// Why a debug operation failed.
#[derive(Debug, Error)]
pub enum DebugError {
    /// Guest memory could not be read.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// An address has no translation.
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// VMCOREINFO is missing or malformed.
    #[error(transparent)]
    VmcoreInfo(#[from] VmcoreInfoError),
    /// The symbol tables are unreadable.
    #[error("kallsyms: {0}")]
    Kallsyms(#[from] KallsymsError),
    /// The type information is unreadable or lacks something.
    #[error("BTF: {0}")]
    Btf(#[from] BtfError),
    /// A DWARF file (`--vmlinux`) is unusable or lacks something.
    #[error("DWARF: {0}")]
    Dwarf(#[from] DwarfError),
    /// The printk ring is unreadable.
    #[error("printk ring: {0}")]
    Printk(#[from] PrintkError),
    /// A vmcore could not be written or read.
    #[error("vmcore: {0}")]
    Vmcore(#[from] VmcoreError),
    /// No symbol by that name.
    #[error("no symbol {0:?} in the guest kernel (`vesper debug sym PREFIX*` lists symbols)")]
    UnknownSymbol(String),
    /// The kernel's own data contradicts itself.
    #[error("the guest kernel's data is inconsistent: {0}")]
    Inconsistent(String),
    /// Types are needed but none could be loaded.
    #[error("no type information: {0}")]
    NoTypes(String),
    /// The task asked for is not there, or cannot be traced from this source.
    #[error("{0}")]
    NoTask(String),
    /// An expression that does not parse or does not type-check.
    #[error("{0}")]
    Expr(String),
}
