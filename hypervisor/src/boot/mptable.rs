//! An Intel MultiProcessor Specification 1.4 table, so a kernel without ACPI finds every
//! vCPU, the IOAPIC and how the ISA IRQs reach it. Built as bytes, no fd.
//!
//! Placed at `MPTABLE_ADDR` in the BIOS area [0xF0000, 1 MiB) that Linux scans; the area
//! is backed RAM but not in the e820 map, so the kernel leaves it alone.

use super::layout::{IOAPIC_ADDR, LAPIC_ADDR};

/// Where the floating pointer goes; the configuration table follows it.
pub const MPTABLE_ADDR: u64 = 0xF_0000;
/// The table must end below 1 MiB.
const AREA_LEN: usize = 0x1_0000;
/// ISA IRQs routed through the IOAPIC (one IOAPIC pin each, as KVM's default routing).
const ISA_IRQS: u8 = 16;
/// APIC ids are 8 bits and the IOAPIC takes the id after the last vCPU.
pub const MAX_VCPUS: u32 = 254;

const FLOATING_LEN: usize = 16;
const HEADER_LEN: usize = 44;
const CPU_LEN: usize = 20;
const SHORT_ENTRY_LEN: usize = 8;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// Family 6, and the FPU and APIC feature flags, as the processor entries report them.
const CPU_SIGNATURE: u32 = 0x600;
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |s, b| s.wrapping_add(*b))
        .wrapping_neg()
}

/// The floating pointer and configuration table for `vcpus` vCPUs (vCPU 0 the bootstrap
/// processor, APIC id = index), to be written at `MPTABLE_ADDR`. None if `vcpus` is 0 or
/// more than `MAX_VCPUS`.
pub fn build(vcpus: u32) -> Option<Vec<u8>> {
    if vcpus == 0 || vcpus > MAX_VCPUS {
        return None;
    }
    let ioapic_id = vcpus as u8;
    let mut entries: Vec<u8> = Vec::new();
    let mut count: u16 = 0;
    for id in 0..vcpus {
        entries.push(ENTRY_PROCESSOR);
        entries.push(id as u8);
        entries.push(LAPIC_VERSION);
        entries.push(CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 });
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_ADDR as u32).to_le_bytes());
    count += 2;
    for irq in 0..ISA_IRQS {
        // Polarity and trigger "conform to the bus": ISA, active high, edge.
        entries.extend_from_slice(&[
            ENTRY_IO_INTERRUPT,
            INT_VECTORED,
            0,
            0,
            0,
            irq,
            ioapic_id,
            irq,
        ]);
        count += 1;
    }
    // The PIC reaches every LAPIC's LINT0 as ExtINT; NMI goes to LINT1.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_EXTINT, 0, 0, 0, 0, 0xff, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INT_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    debug_assert_eq!(
        entries.len(),
        vcpus as usize * CPU_LEN + (usize::from(count) - vcpus as usize) * SHORT_ENTRY_LEN
    );
    let table_len = HEADER_LEN + entries.len();
    let mut header = Vec::with_capacity(table_len);
    header.extend_from_slice(b"PCMP");
    header.extend_from_slice(&(table_len as u16).to_le_bytes());
    header.push(4); // spec revision 1.4
    header.push(0); // checksum, below
    header.extend_from_slice(b"VESPER  ");
    header.extend_from_slice(b"VESPER VMM  ");
    header.extend_from_slice(&0u32.to_le_bytes()); // no OEM table
    header.extend_from_slice(&0u16.to_le_bytes());
    header.extend_from_slice(&count.to_le_bytes());
    header.extend_from_slice(&(LAPIC_ADDR as u32).to_le_bytes());
    header.extend_from_slice(&[0, 0, 0, 0]); // no extended table
    debug_assert_eq!(header.len(), HEADER_LEN);
    let mut table = header;
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&((MPTABLE_ADDR as usize + FLOATING_LEN) as u32).to_le_bytes());
    floating.push(1); // length in 16-byte units
    floating.push(4);
    floating.push(0); // checksum, below
    floating.extend_from_slice(&[0; 5]); // a configuration table is present; no IMCR
    floating[10] = checksum(&floating);

    let mut out = floating;
    out.extend_from_slice(&table);
    (out.len() <= AREA_LEN).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |s, x| s.wrapping_add(*x))
    }

    #[test]
    fn table_lists_every_vcpu_the_ioapic_and_the_isa_irqs_with_valid_checksums() {
        let t = build(3).unwrap();
        assert_eq!(&t[..4], b"_MP_");
        assert_eq!(sum(&t[..16]), 0, "floating pointer checksum");
        let table_at = u32::from_le_bytes(t[4..8].try_into().unwrap()) as u64 - MPTABLE_ADDR;
        let table = &t[table_at as usize..];
        assert_eq!(&table[..4], b"PCMP");
        let len = u16::from_le_bytes([table[4], table[5]]) as usize;
        assert_eq!(len, table.len());
        assert_eq!(sum(table), 0, "configuration table checksum");
        let count = u16::from_le_bytes([table[34], table[35]]);
        assert_eq!(count, 3 + 2 + 16 + 2);
        assert_eq!(
            u32::from_le_bytes(table[36..40].try_into().unwrap()),
            0xfee0_0000
        );
        // Walk the entries: three processors (only the first is the BSP), then the IOAPIC.
        let mut at = HEADER_LEN;
        let mut cpus = Vec::new();
        let mut ioapic = None;
        let mut irqs = 0;
        for _ in 0..count {
            match table[at] {
                0 => {
                    cpus.push((table[at + 1], table[at + 3]));
                    at += CPU_LEN;
                }
                2 => {
                    ioapic = Some((
                        table[at + 1],
                        u32::from_le_bytes(table[at + 4..at + 8].try_into().unwrap()),
                    ));
                    at += 8;
                }
                3 => {
                    assert_eq!(table[at + 5], table[at + 7], "ISA IRQ n on IOAPIC pin n");
                    irqs += 1;
                    at += 8;
                }
                _ => at += 8,
            }
        }
        assert_eq!(at, len);
        assert_eq!(cpus, vec![(0, 3), (1, 1), (2, 1)]);
        assert_eq!(ioapic, Some((3, 0xfec0_0000)));
        assert_eq!(irqs, 16);
        assert!(build(0).is_none());
        assert!(build(MAX_VCPUS + 1).is_none());
        assert!(build(MAX_VCPUS).unwrap().len() < 0x1_0000);
    }
}
