//! Memory sources: guest-physical memory below, kernel-virtual memory above.

use thiserror::Error;

/// Why a read of guest memory failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MemoryError {
    /// The physical range is not guest RAM.
    #[error("guest-physical {addr:#x}+{len:#x} is not guest RAM")]
    NotRam {
        /// First byte.
        addr: u64,
        /// Length.
        len: u64,
    },
    /// The virtual address has no mapping.
    #[error("kernel address {addr:#x} is not mapped ({why})")]
    NotMapped {
        /// The address.
        addr: u64,
        /// Which level said so.
        why: String,
    },
    /// The source holds the range but could not deliver it (a dump file that
    /// shrank or failed to read).
    #[error("guest-physical {addr:#x}+{len:#x} could not be read: {why}")]
    Unreadable {
        /// First byte.
        addr: u64,
        /// Length.
        len: u64,
        /// Why.
        why: String,
    },
}

/// Guest-physical memory: a live VM's RAM, or the segments of a vmcore.
pub trait PhysMemory: Send + Sync {
    /// Copies `[addr, addr + buf.len())` into `buf`, all or nothing.
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// How this source reaches guest memory (`vesper debug info` says it).
    fn describe(&self) -> String {
        "guest memory".into()
    }
}

/// Kernel-virtual memory (translated through the guest's page tables).
pub trait KernelMemory {
    /// Copies `[addr, addr + buf.len())` into `buf`, all or nothing.
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError>;

    /// A little-endian `u64` at `addr`.
    fn read_u64(&self, addr: u64) -> Result<u64, MemoryError> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    /// A little-endian `u32` at `addr`.
    fn read_u32(&self, addr: u64) -> Result<u32, MemoryError> {
        let mut b = [0u8; 4];
        self.read(addr, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
}

/// Test memory: sparse byte ranges at kernel-virtual addresses.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;

    /// Prints a skip banner on the process's own stderr, past libtest's capture, in the
    /// form `tools/test` counts: a skipped test must never read as a silent pass.
    pub fn say_skipped(test: &str, why: &str) {
        use std::io::Write;
        let bar = "*".repeat(78);
        let _ = writeln!(
            std::io::stderr(),
            "\n{bar}\n*** SKIPPED {test}:\n*** {why}\n{bar}"
        );
    }

    /// Kernel memory made of `(address, bytes)` pieces; reads must fall in one piece.
    #[derive(Default)]
    pub struct FakeMemory(pub Vec<(u64, Vec<u8>)>);

    impl FakeMemory {
        /// Adds a piece.
        pub fn put(&mut self, addr: u64, bytes: impl Into<Vec<u8>>) {
            self.0.push((addr, bytes.into()));
        }
    }

    impl KernelMemory for FakeMemory {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            for (base, bytes) in &self.0 {
                let Some(off) = addr.checked_sub(*base) else {
                    continue;
                };
                let Ok(off) = usize::try_from(off) else {
                    continue;
                };
                if let Some(src) = off
                    .checked_add(buf.len())
                    .and_then(|end| bytes.get(off..end))
                {
                    buf.copy_from_slice(src);
                    return Ok(());
                }
            }
            Err(MemoryError::NotMapped {
                addr,
                why: "not in the fake memory".into(),
            })
        }
    }
}
