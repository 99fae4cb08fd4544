//! A running VM's RAM, mapped read-only from the file that backs it (QEMU's
//! `memory-backend-memfd,share=on`), so the host reads guest memory while the guest
//! runs, is paused, hangs or has died — with no help from the guest or the VMM.
//!
//! Reads go through vm-memory's volatile copies: the guest writes this memory while
//! we read it, so a read is a snapshot of each byte, never a reference into it.

use std::fs::File;
use std::ops::Range;

use thiserror::Error;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{FileOffset, MmapRegion, VolatileMemory};

use crate::memory::{MemoryError, PhysMemory};

/// Why guest RAM could not be mapped.
#[derive(Debug, Error)]
pub enum RamError {
    /// The file is smaller than the RAM layout needs.
    #[error("the guest RAM file has {file} bytes; the layout needs {needed}")]
    TooSmall {
        /// File size.
        file: u64,
        /// Bytes the layout covers.
        needed: u64,
    },
    /// `mmap` failed.
    #[error("mapping guest RAM")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// stat failed.
    #[error("reading the guest RAM file's size")]
    Stat(#[source] std::io::Error),
    /// `/proc/PID/mem` could not be opened (no such process, or no ptrace rights).
    #[error("cannot open {path} (vesperd needs ptrace rights over QEMU: run it as root)")]
    ProcMem {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The RAM ranges given do not hold up.
    #[error("guest RAM layout: {0}")]
    BadLayout(String),
}

/// Where a piece of guest-physical RAM lives in the backing file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RamRange {
    /// First guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// Offset in the file.
    pub file_offset: u64,
}

/// QEMU's `q35` machine: RAM below 4 GiB up to 2.75 GiB; a larger guest gets 2 GiB
/// below and the rest from 4 GiB (hw/i386/pc_q35.c), both from one backend in order.
pub fn q35_layout(ram_bytes: u64) -> Vec<RamRange> {
    const FOUR_GIB: u64 = 1 << 32;
    let lowmem = if ram_bytes >= 0xb000_0000 {
        0x8000_0000
    } else {
        0xb000_0000
    };
    let below = ram_bytes.min(lowmem);
    let mut v = vec![RamRange {
        gpa: 0,
        len: below,
        file_offset: 0,
    }];
    if ram_bytes > below {
        v.push(RamRange {
            gpa: FOUR_GIB,
            len: ram_bytes - below,
            file_offset: below,
        });
    }
    v
}

/// Guest RAM mapped read-only.
pub struct MappedRam {
    map: MmapRegion<()>,
    layout: Vec<RamRange>,
}

impl std::fmt::Debug for MappedRam {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MappedRam")
            .field("layout", &self.layout)
            .finish_non_exhaustive()
    }
}

impl MappedRam {
    /// Maps `file` (opened read-only is enough) with `layout`.
    pub fn map(file: File, layout: Vec<RamRange>) -> Result<Self, RamError> {
        let file_len = file.metadata().map_err(RamError::Stat)?.len();
        let needed = layout
            .iter()
            .map(|r| r.file_offset.saturating_add(r.len))
            .max()
            .unwrap_or(0);
        if needed > file_len || needed == 0 {
            return Err(RamError::TooSmall {
                file: file_len,
                needed,
            });
        }
        let map = MmapRegionBuilder::new(needed as usize)
            .with_file_offset(FileOffset::new(file, 0))
            .with_mmap_prot(libc::PROT_READ)
            .with_mmap_flags(libc::MAP_SHARED)
            .build()
            .map_err(RamError::Map)?;
        Ok(Self { map, layout })
    }

    /// The guest-physical RAM ranges.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        self.layout.iter().map(|r| r.gpa..r.gpa + r.len).collect()
    }

    /// Bytes of RAM.
    pub fn size(&self) -> u64 {
        self.layout.iter().map(|r| r.len).sum()
    }
}

impl PhysMemory for MappedRam {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        let not_ram = MemoryError::NotRam { addr, len };
        let end = addr.checked_add(len).ok_or(not_ram.clone())?;
        let range = self
            .layout
            .iter()
            .find(|r| addr >= r.gpa && end <= r.gpa + r.len)
            .ok_or(not_ram.clone())?;
        let off = range.file_offset + (addr - range.gpa);
        let slice = self
            .map
            .get_slice(off as usize, buf.len())
            .map_err(|_| not_ram.clone())?;
        if slice.copy_to(buf) != buf.len() {
            return Err(not_ram);
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "memfd (QEMU's shared memory-backend-memfd, mapped read-only)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn q35_splits_ram_around_the_pci_hole_only_when_it_must() {
        assert_eq!(
            q35_layout(512 << 20),
            [RamRange {
                gpa: 0,
                len: 512 << 20,
                file_offset: 0
            }]
        );
        assert_eq!(
            q35_layout(4 << 30),
            [
                RamRange {
                    gpa: 0,
                    len: 2 << 30,
                    file_offset: 0
                },
                RamRange {
                    gpa: 4 << 30,
                    len: 2 << 30,
                    file_offset: 2 << 30
                },
            ]
        );
    }

    #[test]
    fn reads_stay_inside_ram_ranges() {
        let mut f = tempfile::tempfile().unwrap();
        let mut data = vec![0u8; 3 * 4096];
        data[4096..4100].copy_from_slice(b"abcd");
        data[2 * 4096..2 * 4096 + 4].copy_from_slice(b"high");
        f.write_all(&data).unwrap();
        let layout = vec![
            RamRange {
                gpa: 0,
                len: 2 * 4096,
                file_offset: 0,
            },
            RamRange {
                gpa: 1 << 32,
                len: 4096,
                file_offset: 2 * 4096,
            },
        ];
        let ram = MappedRam::map(f.try_clone().unwrap(), layout).unwrap();
        let mut b = [0u8; 4];
        ram.read_phys(4096, &mut b).unwrap();
        assert_eq!(&b, b"abcd");
        ram.read_phys(1 << 32, &mut b).unwrap();
        assert_eq!(&b, b"high");
        // Across the end of a range, in the hole, past the end, wrapping.
        for addr in [2 * 4096 - 2, 3 * 4096, (1 << 32) + 4094, u64::MAX - 1] {
            assert!(matches!(
                ram.read_phys(addr, &mut b),
                Err(MemoryError::NotRam { .. })
            ));
        }
        assert!(matches!(
            MappedRam::map(
                f,
                vec![RamRange {
                    gpa: 0,
                    len: 1 << 20,
                    file_offset: 0
                }]
            ),
            Err(RamError::TooSmall { .. })
        ));
    }
}
