//! The agreed guest-physical layout: RAM around the 32-bit PCI hole, the fixed addresses
//! of the boot structures, and the e820 map. Pure arithmetic, no fd.

/// Guest RAM granularity.
pub const PAGE_SIZE: u64 = 4096;

/// RAM below the hole ends here at most: [0, 3 GiB) is RAM, the rest continues at 4 GiB.
pub const LOW_RAM_END: u64 = 0xC000_0000;
/// Where RAM beyond `LOW_RAM_END` continues.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// The 32-bit PCI MMIO hole (BARs), [start, end).
pub const PCI_HOLE: (u64, u64) = (0xC000_0000, 0xFEC0_0000);
/// The in-kernel IOAPIC.
pub const IOAPIC_ADDR: u64 = 0xFEC0_0000;
/// The in-kernel LAPIC.
pub const LAPIC_ADDR: u64 = 0xFEE0_0000;

/// GDT: null, null, 64-bit code (0x10), flat data (0x18).
pub const GDT_ADDR: u64 = 0x500;
/// The empty IDT (limit 0).
pub const IDT_ADDR: u64 = 0x520;
/// The zero page (`struct boot_params`); RSI points here at entry.
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// RSP at entry (the stack grows down from here, below the page tables).
pub const STACK_TOP: u64 = 0x8ff0;
/// PML4; CR3 at entry.
pub const PML4_ADDR: u64 = 0x9000;
/// The one PDPT.
pub const PDPT_ADDR: u64 = 0xA000;
/// Four page directories of 2 MiB pages, 0xB000-0xEFFF: identity map of [0, 4 GiB).
pub const PD_ADDR: u64 = 0xB000;
/// How much the page tables identity-map.
pub const IDENTITY_MAP_END: u64 = 0x1_0000_0000;
/// The NUL-terminated command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Bytes reserved for the command line, its NUL included.
pub const CMDLINE_AREA: u64 = 0x1000;
/// Guest memory the boot structures occupy, [0, this): no image may be loaded below.
pub const BOOT_AREA_END: u64 = CMDLINE_ADDR + CMDLINE_AREA;
/// Where a bzImage's protected-mode code is loaded (the boot protocol's default).
pub const KERNEL_LOAD_ADDR: u64 = 0x10_0000;
/// Low RAM the e820 map reports: [0, here) — the top of conventional memory, as a PC
/// BIOS leaves it; [here, 1 MiB) is the legacy VGA/ROM window, not reported as RAM.
pub const LOW_MEMORY_END: u64 = 0x9_FC00;
/// RAM reported from here on (1 MiB).
pub const HIGH_MEMORY_START: u64 = 0x10_0000;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;

/// A guest RAM range, [start, start + len).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RamRange {
    /// First address.
    pub start: u64,
    /// Length in bytes.
    pub len: u64,
}

impl RamRange {
    /// One past the last address.
    pub fn end(&self) -> u64 {
        self.start + self.len
    }
}

/// The RAM ranges of a VM with `mem_size` bytes: [0, min(mem, 3 GiB)) and, beyond that,
/// the rest at 4 GiB.
pub fn ram_ranges(mem_size: u64) -> Vec<RamRange> {
    let low = mem_size.min(LOW_RAM_END);
    let mut ranges = vec![RamRange { start: 0, len: low }];
    if mem_size > LOW_RAM_END {
        ranges.push(RamRange {
            start: HIGH_RAM_START,
            len: mem_size - LOW_RAM_END,
        });
    }
    ranges
}

/// Whether [addr, addr + len) lies inside one RAM range of a `mem_size` VM.
pub fn ram_contains(mem_size: u64, addr: u64, len: u64) -> bool {
    let Some(end) = addr.checked_add(len) else {
        return false;
    };
    ram_ranges(mem_size)
        .iter()
        .any(|r| addr >= r.start && end <= r.end())
}

/// The RAM range [first, last] (inclusive) overlaps, if any (for MMIO placement checks).
pub fn ram_overlapping(mem_size: u64, first: u64, last: u64) -> Option<RamRange> {
    ram_ranges(mem_size)
        .into_iter()
        .find(|r| first < r.end() && r.start <= last)
}

/// The e820 map of a `mem_size` VM as (addr, size, type): RAM only; the legacy window
/// [0x9FC00, 1 MiB), the PCI hole, IOAPIC and LAPIC are absent, i.e. not RAM.
pub fn e820_map(mem_size: u64) -> Vec<(u64, u64, u32)> {
    let mut map = Vec::new();
    for r in ram_ranges(mem_size) {
        if r.start == 0 {
            let low = r.len.min(LOW_MEMORY_END);
            if low > 0 {
                map.push((0, low, E820_RAM));
            }
            if r.len > HIGH_MEMORY_START {
                map.push((HIGH_MEMORY_START, r.len - HIGH_MEMORY_START, E820_RAM));
            }
        } else {
            map.push((r.start, r.len, E820_RAM));
        }
    }
    map
}

/// End of the RAM below the hole (where high-placed boot data must end).
pub fn low_ram_end(mem_size: u64) -> u64 {
    mem_size.min(LOW_RAM_END)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;
    const GIB: u64 = 1 << 30;

    #[test]
    fn ram_is_split_around_the_hole_only_beyond_3_gib() {
        assert_eq!(
            ram_ranges(64 * MIB),
            vec![RamRange {
                start: 0,
                len: 64 * MIB
            }]
        );
        assert_eq!(
            ram_ranges(3 * GIB),
            vec![RamRange {
                start: 0,
                len: 3 * GIB
            }]
        );
        assert_eq!(
            ram_ranges(5 * GIB),
            vec![
                RamRange {
                    start: 0,
                    len: 3 * GIB
                },
                RamRange {
                    start: 4 * GIB,
                    len: 2 * GIB
                },
            ]
        );
        assert!(ram_contains(5 * GIB, 4 * GIB, 2 * GIB));
        assert!(!ram_contains(5 * GIB, 3 * GIB - 4096, 8192));
        assert!(!ram_contains(5 * GIB, PCI_HOLE.0, 1));
        assert!(!ram_contains(64 * MIB, u64::MAX, 2));
        assert_eq!(
            ram_overlapping(5 * GIB, IOAPIC_ADDR, IOAPIC_ADDR + 0xfff),
            None
        );
        assert_eq!(
            ram_overlapping(5 * GIB, 6 * GIB - 1, u64::MAX),
            Some(RamRange {
                start: 4 * GIB,
                len: 2 * GIB
            })
        );
    }

    #[test]
    fn e820_reports_ram_only_without_the_legacy_window_or_the_hole() {
        assert_eq!(
            e820_map(64 * MIB),
            vec![(0, 0x9fc00, E820_RAM), (MIB, 63 * MIB, E820_RAM)]
        );
        assert_eq!(
            e820_map(5 * GIB),
            vec![
                (0, 0x9fc00, E820_RAM),
                (MIB, 3 * GIB - MIB, E820_RAM),
                (4 * GIB, 2 * GIB, E820_RAM),
            ]
        );
        // Tiny VMs: only what exists.
        assert_eq!(e820_map(256 * 1024), vec![(0, 256 * 1024, E820_RAM)]);
    }
}
