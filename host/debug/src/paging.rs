//! x86-64 page-table walks over guest-physical memory: 4- and 5-level paging, 1 GiB and
//! 2 MiB pages. Each entry is read once; a walk has at most five steps, so a table that
//! points at itself costs a wrong answer at worst, never a loop. Tables outside guest
//! RAM, entries not present and non-canonical addresses each have their own error.

use thiserror::Error;

use crate::memory::{MemoryError, PhysMemory};

/// Where x86-64 maps the kernel image (`__START_KERNEL_map`).
pub const START_KERNEL_MAP: u64 = 0xffff_ffff_8000_0000;
const PRESENT: u64 = 1;
const PAGE_SIZE_BIT: u64 = 1 << 7;
/// Physical address bits 12..51 of an entry.
const ADDR_MASK: u64 = 0x000f_ffff_ffff_f000;

/// Why a virtual address has no translation.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PagingError {
    /// Not a canonical address for the paging mode.
    #[error("{addr:#x} is not a canonical address with {levels}-level paging")]
    NonCanonical {
        /// The address.
        addr: u64,
        /// 4 or 5.
        levels: u8,
    },
    /// An entry on the way is not present.
    #[error("{addr:#x} is not mapped: its {level} entry is not present")]
    NotPresent {
        /// The address.
        addr: u64,
        /// Which table: "PML5", "PML4", "PDPT", "PD", "PT".
        level: &'static str,
    },
    /// A table (or the page) lies outside guest RAM.
    #[error("{addr:#x}: its {level} table at guest-physical {table:#x} is outside guest RAM")]
    TableOutsideRam {
        /// The address being translated.
        addr: u64,
        /// Which table.
        level: &'static str,
        /// Where the entry said the table was.
        table: u64,
    },
}

impl From<PagingError> for MemoryError {
    fn from(e: PagingError) -> Self {
        let (addr, why) = match e {
            PagingError::NonCanonical { addr, levels } => {
                (addr, format!("not canonical with {levels}-level paging"))
            }
            PagingError::NotPresent { addr, level } => {
                (addr, format!("its {level} entry is not present"))
            }
            PagingError::TableOutsideRam { addr, level, table } => (
                addr,
                format!("its {level} table at guest-physical {table:#x} is outside guest RAM"),
            ),
        };
        MemoryError::NotMapped { addr, why }
    }
}

/// One translation: the physical address and the size of the page it lies in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Translation {
    /// Guest-physical address.
    pub paddr: u64,
    /// 4 KiB, 2 MiB or 1 GiB.
    pub page_size: u64,
}

/// A paging hierarchy: its root table and mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageTables {
    /// Guest-physical address of the top table (CR3 without its flag bits).
    pub root: u64,
    /// LA57: five levels.
    pub five_level: bool,
    /// Bits to clear from every entry's address (AMD SME's encryption bit).
    pub sme_mask: u64,
}

impl PageTables {
    /// Translates `addr`.
    pub fn translate(&self, mem: &dyn PhysMemory, addr: u64) -> Result<Translation, PagingError> {
        let levels: u8 = if self.five_level { 5 } else { 4 };
        let bits = if self.five_level { 57 } else { 48 };
        // Canonical: bits 63..bits-1 all equal.
        let top = (addr as i64) >> (bits - 1);
        if top != 0 && top != -1 {
            return Err(PagingError::NonCanonical { addr, levels });
        }
        const NAMES: [&str; 5] = ["PT", "PD", "PDPT", "PML4", "PML5"];
        let mut table = self.root & ADDR_MASK & !self.sme_mask;
        for level in (0..levels as usize).rev() {
            let name = NAMES[level];
            let shift = 12 + 9 * level as u32;
            let index = (addr >> shift) & 0x1ff;
            let mut raw = [0u8; 8];
            mem.read_phys(table + index * 8, &mut raw).map_err(|_| {
                PagingError::TableOutsideRam {
                    addr,
                    level: name,
                    table,
                }
            })?;
            let entry = u64::from_le_bytes(raw) & !self.sme_mask;
            if entry & PRESENT == 0 {
                return Err(PagingError::NotPresent { addr, level: name });
            }
            // PS in a PDPT (1 GiB) or PD (2 MiB) entry ends the walk.
            if (level == 1 || level == 2) && entry & PAGE_SIZE_BIT != 0 {
                let page_size = 1u64 << shift;
                let base = entry & ADDR_MASK & !(page_size - 1);
                return Ok(Translation {
                    paddr: base | (addr & (page_size - 1)),
                    page_size,
                });
            }
            table = entry & ADDR_MASK;
        }
        Ok(Translation {
            paddr: table | (addr & 0xfff),
            page_size: 4096,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Guest RAM of `pages` 4 KiB pages.
    struct Ram(std::sync::Mutex<Vec<u8>>);

    impl Ram {
        fn new(pages: usize) -> Self {
            Self(std::sync::Mutex::new(vec![0; pages * 4096]))
        }
        fn set(&self, table_page: u64, index: u64, entry: u64) {
            let at = (table_page * 4096 + index * 8) as usize;
            self.0.lock().unwrap()[at..at + 8].copy_from_slice(&entry.to_le_bytes());
        }
    }

    impl PhysMemory for Ram {
        fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let ram = self.0.lock().unwrap();
            let a = addr as usize;
            let src = ram.get(a..a + buf.len()).ok_or(MemoryError::NotRam {
                addr,
                len: buf.len() as u64,
            })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    fn idx(addr: u64, level: u32) -> u64 {
        (addr >> (12 + 9 * level)) & 0x1ff
    }

    const KADDR: u64 = 0xffff_ffff_8123_4567;

    #[test]
    fn four_level_walks_reach_4k_2m_and_1g_pages() {
        let ram = Ram::new(64);
        let pt = PageTables {
            root: 1 << 12,
            five_level: false,
            sme_mask: 0,
        };
        // PML4 at page 1 -> PDPT at 2 -> PD at 3 -> PT at 4 -> page 40.
        ram.set(1, idx(KADDR, 3), (2 << 12) | 3);
        ram.set(2, idx(KADDR, 2), (3 << 12) | 3);
        ram.set(3, idx(KADDR, 1), (4 << 12) | 3);
        ram.set(4, idx(KADDR, 0), (40 << 12) | 3);
        let t = pt.translate(&ram, KADDR).unwrap();
        assert_eq!(
            t,
            Translation {
                paddr: (40 << 12) | 0x567,
                page_size: 4096
            }
        );

        // The same PD entry as a 2 MiB page at 2 MiB.
        ram.set(3, idx(KADDR, 1), (2 << 20) | PAGE_SIZE_BIT | 3);
        let t = pt.translate(&ram, KADDR).unwrap();
        assert_eq!(t.page_size, 2 << 20);
        assert_eq!(t.paddr, (2 << 20) | (KADDR & 0x1f_ffff));

        // The PDPT entry as a 1 GiB page at 0.
        ram.set(2, idx(KADDR, 2), PAGE_SIZE_BIT | 3);
        let t = pt.translate(&ram, KADDR).unwrap();
        assert_eq!(t.page_size, 1 << 30);
        assert_eq!(t.paddr, KADDR & 0x3fff_ffff);
    }

    #[test]
    fn five_level_walks_use_the_pml5_and_its_canonical_range() {
        let ram = Ram::new(64);
        let pt = PageTables {
            root: 1 << 12,
            five_level: true,
            sme_mask: 0,
        };
        let addr = 0xff11_0000_0000_1234u64; // a 5-level direct-map address
        for (table, level) in [(1u64, 4u32), (2, 3), (3, 2), (4, 1)] {
            ram.set(table, idx(addr, level), ((table + 1) << 12) | 3);
        }
        ram.set(5, idx(addr, 0), (50 << 12) | 3);
        assert_eq!(pt.translate(&ram, addr).unwrap().paddr, (50 << 12) | 0x234);
        // Canonical with 5 levels, not with 4.
        let four = PageTables {
            five_level: false,
            ..pt
        };
        assert!(matches!(
            four.translate(&ram, addr),
            Err(PagingError::NonCanonical { levels: 4, .. })
        ));
    }

    #[test]
    fn broken_tables_get_named_errors() {
        let ram = Ram::new(8);
        let pt = PageTables {
            root: 1 << 12,
            five_level: false,
            sme_mask: 0,
        };
        assert_eq!(
            pt.translate(&ram, KADDR),
            Err(PagingError::NotPresent {
                addr: KADDR,
                level: "PML4"
            })
        );
        // A table past the end of RAM.
        ram.set(1, idx(KADDR, 3), (1 << 40) | 3);
        assert!(matches!(
            pt.translate(&ram, KADDR),
            Err(PagingError::TableOutsideRam { level: "PDPT", table, .. }) if table == 1 << 40
        ));
        // A table that points at itself: a bounded walk, not a loop.
        ram.set(1, idx(KADDR, 3), (1 << 12) | 3);
        let r = pt.translate(&ram, KADDR);
        assert!(r.is_ok() || r.is_err());
        assert!(matches!(
            pt.translate(&ram, 0x0000_8000_0000_0000),
            Err(PagingError::NonCanonical { .. })
        ));
    }

    #[test]
    fn the_sme_bit_is_not_part_of_an_address() {
        let ram = Ram::new(64);
        let c = 1u64 << 47;
        let pt = PageTables {
            root: (1 << 12) | c,
            five_level: false,
            sme_mask: c,
        };
        ram.set(1, idx(KADDR, 3), (2 << 12) | 3 | c);
        ram.set(2, idx(KADDR, 2), (3 << 12) | 3 | c);
        ram.set(3, idx(KADDR, 1), (4 << 12) | 3 | c);
        ram.set(4, idx(KADDR, 0), (40 << 12) | 3 | c);
        assert_eq!(pt.translate(&ram, KADDR).unwrap().paddr, (40 << 12) | 0x567);
    }
}
