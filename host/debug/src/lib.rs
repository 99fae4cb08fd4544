//! Reads a guest Linux kernel from the host, without the guest's help: guest RAM (a
//! live VM's, a paused or hung one's, or a vmcore's), x86-64 page tables, the
//! VMCOREINFO note the kernel keeps in its own memory, the kallsyms tables, BTF types,
//! the printk ring, the task list and kernel stack traces (ORC). Everything read is hostile input: every length,
//! index and pointer is checked, every walk is bounded, and each kind of bad data has a
//! named error.
//!
//! Shaped like drgn's `Program`: a [`PhysMemory`] source below (live RAM, a vmcore), a
//! [`Kernel`] that translates kernel addresses and knows symbols and types, and the
//! readers (`read`, `ps`, `dmesg`) written once on top for every source.
#![deny(missing_docs)]

pub mod btf;
pub mod dwarf;
pub mod error;
pub mod expr;
pub mod kallsyms;
pub mod kernel;
pub mod memory;
pub mod modules;
pub mod paging;
pub mod printk;
pub mod procmem;
pub mod ram;
pub mod symfile;
pub mod tasks;
pub mod unwind;
pub mod vmcore;
pub mod vmcoreinfo;

pub use error::DebugError;
pub use kernel::Kernel;
pub use memory::{KernelMemory, MemoryError, PhysMemory};
pub use procmem::{ProcMemRam, ProcSegment};
pub use ram::{MappedRam, RamRange};

/// The bytes of a NUL-terminated field up to its first NUL, as text.
pub(crate) fn c_string(bytes: &[u8]) -> String {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    String::from_utf8_lossy(&bytes[..end]).into_owned()
}
