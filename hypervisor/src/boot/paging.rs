//! The identity-mapping page tables of the 64-bit entry: PML4 → one PDPT → four page
//! directories of 2 MiB pages covering [0, 4 GiB). Built as bytes, no fd.

use super::layout::{IDENTITY_MAP_END, PDPT_ADDR, PD_ADDR, PML4_ADDR};

const PRESENT: u64 = 1 << 0;
const WRITABLE: u64 = 1 << 1;
const PAGE_SIZE_2M: u64 = 1 << 7;
const TWO_MIB: u64 = 2 << 20;
const ENTRIES: u64 = 512;
const TABLE_BYTES: u64 = 4096;
/// Page directories needed for `IDENTITY_MAP_END` (1 GiB each).
const PDS: u64 = IDENTITY_MAP_END / (ENTRIES * TWO_MIB);

/// Bytes of all tables, to be written at `PML4_ADDR` (they are contiguous).
pub const TABLES_LEN: u64 = PD_ADDR + PDS * TABLE_BYTES - PML4_ADDR;

/// The tables as one block starting at `PML4_ADDR`.
pub fn tables() -> Vec<u8> {
    let mut out = vec![0u8; TABLES_LEN as usize];
    let mut put = |addr: u64, value: u64| {
        let at = (addr - PML4_ADDR) as usize;
        out[at..at + 8].copy_from_slice(&value.to_le_bytes());
    };
    put(PML4_ADDR, PDPT_ADDR | PRESENT | WRITABLE);
    for pd in 0..PDS {
        let pd_addr = PD_ADDR + pd * TABLE_BYTES;
        put(PDPT_ADDR + pd * 8, pd_addr | PRESENT | WRITABLE);
        for i in 0..ENTRIES {
            let phys = (pd * ENTRIES + i) * TWO_MIB;
            put(pd_addr + i * 8, phys | PRESENT | WRITABLE | PAGE_SIZE_2M);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(tables: &[u8], addr: u64) -> u64 {
        let at = (addr - PML4_ADDR) as usize;
        u64::from_le_bytes(tables[at..at + 8].try_into().unwrap())
    }

    /// Walks the tables like the MMU would for a 2 MiB mapping.
    fn translate(tables: &[u8], va: u64) -> Option<u64> {
        let pml4e = entry(tables, PML4_ADDR + ((va >> 39) & 511) * 8);
        if pml4e & PRESENT == 0 {
            return None;
        }
        let pdpte = entry(tables, (pml4e & !0xfff) + ((va >> 30) & 511) * 8);
        if pdpte & PRESENT == 0 {
            return None;
        }
        let pde = entry(tables, (pdpte & !0xfff) + ((va >> 21) & 511) * 8);
        if pde & PRESENT == 0 || pde & PAGE_SIZE_2M == 0 {
            return None;
        }
        Some((pde & !(TWO_MIB - 1) & !(1 << 7)) | (va & (TWO_MIB - 1)))
    }

    #[test]
    fn the_first_4_gib_are_identity_mapped_and_nothing_else() {
        let t = tables();
        assert_eq!(TABLES_LEN, 0x6000); // 0x9000..0xEFFF
        for va in [
            0,
            0x7000,
            0x40_0000,
            0xbfff_ffff,
            0xc000_0000,
            0xfec0_0000,
            0xfee0_0fff,
            0xffff_ffff,
        ] {
            assert_eq!(translate(&t, va), Some(va), "{va:#x}");
        }
        assert_eq!(translate(&t, 0x1_0000_0000), None);
        assert_eq!(translate(&t, 0xffff_8000_0000_0000), None);
    }
}
