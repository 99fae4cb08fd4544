//! The flat GDT of the 64-bit entry and the matching segment registers.

use kvm_bindings::{kvm_segment, kvm_sregs};

use super::layout::{GDT_ADDR, IDT_ADDR, PML4_ADDR};

/// The 64-bit code selector (Linux's `__BOOT_CS`).
pub const CODE_SELECTOR: u16 = 0x10;
/// The flat data selector (Linux's `__BOOT_DS`).
pub const DATA_SELECTOR: u16 = 0x18;

/// null, null, code (L=1, D=0, G=1, P=1, DPL 0, execute/read), data (D=1, G=1,
/// read/write); both with base 0 and limit 0xfffff pages.
pub const GDT: [u64; 4] = [0, 0, 0x00af_9b00_0000_ffff, 0x00cf_9300_0000_ffff];

const CR0_PE: u64 = 1 << 0;
const CR0_ET: u64 = 1 << 4;
const CR0_NE: u64 = 1 << 5;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The GDT as bytes, to be written at `GDT_ADDR`.
pub fn gdt_bytes() -> Vec<u8> {
    GDT.iter().flat_map(|d| d.to_le_bytes()).collect()
}

/// The segment register KVM wants for GDT descriptor `selector`.
pub fn segment(selector: u16) -> kvm_segment {
    let d = GDT[usize::from(selector >> 3)];
    let limit = ((d >> 32) & 0xf_0000) | (d & 0xffff);
    let g = ((d >> 55) & 1) as u8;
    kvm_segment {
        base: ((d >> 16) & 0xff_ffff) | (((d >> 56) & 0xff) << 24),
        limit: if g == 1 {
            ((limit as u32) << 12) | 0xfff
        } else {
            limit as u32
        },
        selector,
        type_: ((d >> 40) & 0xf) as u8,
        present: ((d >> 47) & 1) as u8,
        dpl: ((d >> 45) & 3) as u8,
        db: ((d >> 54) & 1) as u8,
        s: ((d >> 44) & 1) as u8,
        l: ((d >> 53) & 1) as u8,
        g,
        avl: ((d >> 52) & 1) as u8,
        unusable: 0,
        padding: 0,
    }
}

/// Puts `sregs` (as read from a fresh vCPU: TR and LDT are left as KVM made them) in the
/// 64-bit entry state: long mode with paging, flat segments, GDT/IDT/CR3 at the layout's
/// addresses. CR4 also enables SSE (OSFXSR, OSXMMEXCPT) so compiled freestanding code
/// may use it; caching is enabled (CR0.CD/NW clear).
pub fn long_mode_sregs(sregs: &mut kvm_sregs) {
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 0;
    sregs.cs = segment(CODE_SELECTOR);
    let data = segment(DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT;
    sregs.cr0 = (sregs.cr0 & !(CR0_CD | CR0_NW)) | CR0_PE | CR0_ET | CR0_NE | CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_flat_64_bit_code_and_flat_data() {
        let cs = segment(CODE_SELECTOR);
        assert_eq!(
            (cs.base, cs.limit, cs.l, cs.db, cs.type_, cs.present, cs.s),
            (0, 0xffff_ffff, 1, 0, 0xb, 1, 1)
        );
        let ds = segment(DATA_SELECTOR);
        assert_eq!(
            (ds.base, ds.limit, ds.l, ds.db, ds.type_, ds.present),
            (0, 0xffff_ffff, 0, 1, 0x3, 1)
        );
        assert_eq!(gdt_bytes().len(), 0x20); // 0x500..0x520, up to the IDT
    }

    #[test]
    fn sregs_enter_long_mode_with_paging() {
        let mut s = kvm_sregs {
            cr0: 0x6000_0010,
            ..Default::default()
        };
        long_mode_sregs(&mut s);
        assert_eq!(s.cr0, 0x8000_0031);
        assert_eq!(s.cr3, 0x9000);
        assert_ne!(s.cr4 & CR4_PAE, 0);
        assert_eq!(s.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!(
            (s.cs.selector, s.ss.selector, s.ds.selector),
            (0x10, 0x18, 0x18)
        );
        assert_eq!(
            (s.idt.base, s.idt.limit, s.gdt.base, s.gdt.limit),
            (0x520, 0, 0x500, 31)
        );
    }
}
