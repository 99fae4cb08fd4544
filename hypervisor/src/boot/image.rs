//! What a kernel or guest image is, and whether it can be loaded: magic numbers, header
//! lengths, ELF machine and segment placement. Pure checks on bytes already read, no fd;
//! the copying itself is linux-loader's.

use std::path::Path;

use linux_loader::bootparam::setup_header;
use linux_loader::elf::{Elf64_Ehdr, Elf64_Phdr, EM_X86_64, PT_LOAD};
use vm_memory::ByteValued;

use super::layout::{ram_contains, BOOT_AREA_END};
use crate::error::{HypervisorError, Result};

const ELF_MAGIC: [u8; 4] = *b"\x7fELF";
const ELFCLASS64: u8 = 2;
const ELFDATA2LSB: u8 = 1;
/// Offset of the setup header in a bzImage (boot protocol).
pub const SETUP_HEADER_OFFSET: usize = 0x1f1;
/// "HdrS" at 0x202.
const HDRS: u32 = 0x5372_6448;
const HDRS_OFFSET: usize = 0x202;
/// xloadflags: the kernel has the 64-bit entry at load + 0x200.
pub const XLF_KERNEL_64: u16 = 1 << 0;
/// loadflags: protected-mode code at 1 MiB (a bzImage, not a zImage).
const LOADED_HIGH: u8 = 1 << 0;
/// The first protocol with `init_size`, `pref_address` and the 64-bit entry documented.
const MIN_PROTOCOL: u16 = 0x020c;

/// The two kinds of image this loader boots.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageKind {
    /// A bzImage (boot protocol setup header with "HdrS").
    BzImage,
    /// An ELF file (vmlinux or a static ELF64 guest).
    Elf,
}

fn truncated(path: &Path, len: usize, needed: u64) -> HypervisorError {
    HypervisorError::TruncatedImage {
        path: path.to_owned(),
        len: len as u64,
        needed,
    }
}

fn unsupported(path: &Path, reason: &'static str) -> HypervisorError {
    HypervisorError::UnsupportedImage {
        path: path.to_owned(),
        reason,
    }
}

/// Tells a bzImage from an ELF file by their magic numbers.
pub fn identify(path: &Path, image: &[u8]) -> Result<ImageKind> {
    if image.starts_with(&ELF_MAGIC) {
        return Ok(ImageKind::Elf);
    }
    if let Some(m) = image.get(HDRS_OFFSET..HDRS_OFFSET + 4) {
        if u32::from_le_bytes([m[0], m[1], m[2], m[3]]) == HDRS {
            return Ok(ImageKind::BzImage);
        }
    }
    // A boot sector's 0x55AA with the header cut off is a truncated bzImage.
    if image.len() < HDRS_OFFSET + 4 && image.get(0x1fe..0x200) == Some(&[0x55, 0xaa]) {
        return Err(truncated(path, image.len(), HDRS_OFFSET as u64 + 4));
    }
    Err(HypervisorError::NotAKernel {
        path: path.to_owned(),
    })
}

/// The setup header of a bzImage, checked: complete file, a bzImage protocol ≥ 2.12 with
/// the 64-bit entry point.
pub fn bzimage_header(path: &Path, image: &[u8]) -> Result<setup_header> {
    let mut hdr = setup_header::default();
    let len = hdr.as_slice().len();
    let bytes = image
        .get(SETUP_HEADER_OFFSET..SETUP_HEADER_OFFSET + len)
        .ok_or_else(|| truncated(path, image.len(), (SETUP_HEADER_OFFSET + len) as u64))?;
    hdr.as_mut_slice().copy_from_slice(bytes);
    let setup_sects = match hdr.setup_sects {
        0 => 4,
        n => u64::from(n),
    };
    let setup_len = (setup_sects + 1) * 512;
    // syssize counts 16-byte paragraphs of protected-mode code.
    let needed = setup_len + u64::from(hdr.syssize) * 16;
    if (image.len() as u64) < needed {
        return Err(truncated(path, image.len(), needed));
    }
    let version = hdr.version;
    if version < MIN_PROTOCOL || hdr.loadflags & LOADED_HIGH == 0 {
        return Err(unsupported(
            path,
            "boot protocol older than 2.12 or not a bzImage; use a newer x86-64 kernel",
        ));
    }
    if hdr.xloadflags & XLF_KERNEL_64 == 0 {
        return Err(unsupported(
            path,
            "the bzImage has no 64-bit entry point (xloadflags bit 0); use an x86-64 kernel",
        ));
    }
    Ok(hdr)
}

/// A PT_LOAD segment of an ELF image.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadSegment {
    /// Program header index.
    pub index: usize,
    /// Guest physical address (`p_paddr`).
    pub paddr: u64,
    /// Bytes in the file.
    pub filesz: u64,
    /// Bytes in memory (≥ `filesz`; the rest is zeroed).
    pub memsz: u64,
}

/// An ELF image's entry point and loadable segments, checked: a complete little-endian
/// ELF64 for x86-64 whose segments' file bytes are all in the file.
pub fn elf_segments(path: &Path, image: &[u8]) -> Result<(u64, Vec<LoadSegment>)> {
    let mut ehdr = Elf64_Ehdr::default();
    let ehdr_len = ehdr.as_slice().len();
    let bytes = image
        .get(..ehdr_len)
        .ok_or_else(|| truncated(path, image.len(), ehdr_len as u64))?;
    ehdr.as_mut_slice().copy_from_slice(bytes);
    if ehdr.e_ident[4] != ELFCLASS64 {
        return Err(unsupported(
            path,
            "it is a 32-bit ELF file; only ELF64 (x86-64) images are booted",
        ));
    }
    if ehdr.e_ident[5] != ELFDATA2LSB {
        return Err(unsupported(
            path,
            "it is a big-endian ELF file; build it for x86_64",
        ));
    }
    if ehdr.e_machine != EM_X86_64 {
        return Err(HypervisorError::WrongArchitecture {
            path: path.to_owned(),
            machine: ehdr.e_machine,
        });
    }
    let phdr_len = Elf64_Phdr::default().as_slice().len();
    if usize::from(ehdr.e_phentsize) != phdr_len {
        return Err(unsupported(
            path,
            "its program header size is not 56 bytes; it is not a valid ELF64 file",
        ));
    }
    let table_end = ehdr
        .e_phoff
        .checked_add(u64::from(ehdr.e_phnum) * phdr_len as u64)
        .ok_or_else(|| truncated(path, image.len(), u64::MAX))?;
    if (image.len() as u64) < table_end {
        return Err(truncated(path, image.len(), table_end));
    }
    let mut segments = Vec::new();
    // e_phnum is a u16: the loop is bounded.
    for index in 0..usize::from(ehdr.e_phnum) {
        let at = ehdr.e_phoff as usize + index * phdr_len;
        let mut ph = Elf64_Phdr::default();
        ph.as_mut_slice().copy_from_slice(&image[at..at + phdr_len]);
        if ph.p_type != PT_LOAD || ph.p_memsz == 0 {
            continue;
        }
        let file_end = ph
            .p_offset
            .checked_add(ph.p_filesz)
            .ok_or_else(|| truncated(path, image.len(), u64::MAX))?;
        if (image.len() as u64) < file_end {
            return Err(truncated(path, image.len(), file_end));
        }
        if ph.p_filesz > ph.p_memsz {
            return Err(unsupported(
                path,
                "a segment has more file bytes than memory bytes; the ELF file is corrupt",
            ));
        }
        segments.push(LoadSegment {
            index,
            paddr: ph.p_paddr,
            filesz: ph.p_filesz,
            memsz: ph.p_memsz,
        });
    }
    if segments.is_empty() {
        return Err(unsupported(path, "it has no loadable segment"));
    }
    Ok((ehdr.e_entry, segments))
}

/// Refuses segments outside the RAM of a `mem_size` VM or overlapping the boot structures.
pub fn check_segments(path: &Path, segments: &[LoadSegment], mem_size: u64) -> Result<()> {
    for s in segments {
        let end = s.paddr.saturating_add(s.memsz);
        if s.paddr < BOOT_AREA_END {
            return Err(HypervisorError::SegmentOverlapsBoot {
                path: path.to_owned(),
                index: s.index,
                start: s.paddr,
                end,
                boot_end: BOOT_AREA_END,
            });
        }
        if !ram_contains(mem_size, s.paddr, s.memsz) {
            return Err(HypervisorError::SegmentOutsideRam {
                path: path.to_owned(),
                index: s.index,
                start: s.paddr,
                end,
            });
        }
    }
    Ok(())
}

/// Test images: a minimal ELF64 and a bzImage header, as bytes.
#[cfg(test)]
pub(crate) mod fixtures {
    /// An ELF64 with one PT_LOAD of `code` at `paddr` (entry = paddr), for `machine`.
    pub fn elf(machine: u16, paddr: u64, code: &[u8]) -> Vec<u8> {
        let mut f = vec![0u8; 0x78];
        f[..4].copy_from_slice(b"\x7fELF");
        f[4] = 2; // ELFCLASS64
        f[5] = 1; // little-endian
        f[6] = 1; // EV_CURRENT
        f[0x10..0x12].copy_from_slice(&2u16.to_le_bytes()); // ET_EXEC
        f[0x12..0x14].copy_from_slice(&machine.to_le_bytes());
        f[0x14..0x18].copy_from_slice(&1u32.to_le_bytes());
        f[0x18..0x20].copy_from_slice(&paddr.to_le_bytes()); // e_entry
        f[0x20..0x28].copy_from_slice(&0x40u64.to_le_bytes()); // e_phoff
        f[0x34..0x36].copy_from_slice(&0x40u16.to_le_bytes()); // e_ehsize
        f[0x36..0x38].copy_from_slice(&0x38u16.to_le_bytes()); // e_phentsize
        f[0x38..0x3a].copy_from_slice(&1u16.to_le_bytes()); // e_phnum
        let ph = 0x40;
        f[ph..ph + 4].copy_from_slice(&1u32.to_le_bytes()); // PT_LOAD
        f[ph + 4..ph + 8].copy_from_slice(&7u32.to_le_bytes()); // RWX
        f[ph + 8..ph + 16].copy_from_slice(&0x78u64.to_le_bytes()); // p_offset
        f[ph + 16..ph + 24].copy_from_slice(&paddr.to_le_bytes()); // p_vaddr
        f[ph + 24..ph + 32].copy_from_slice(&paddr.to_le_bytes()); // p_paddr
        let len = code.len() as u64;
        f[ph + 32..ph + 40].copy_from_slice(&len.to_le_bytes()); // p_filesz
        f[ph + 40..ph + 48].copy_from_slice(&len.to_le_bytes()); // p_memsz
        f.extend_from_slice(code);
        f
    }

    /// A bzImage: boot sector + `setup_sects` sectors + `payload` bytes of
    /// protected-mode code, protocol `version`, with `xloadflags`.
    pub fn bzimage(version: u16, xloadflags: u16, payload: usize) -> Vec<u8> {
        let setup_sects = 1u8;
        let mut f = vec![0u8; (usize::from(setup_sects) + 1) * 512 + payload];
        f[0x1f1] = setup_sects;
        f[0x1f4..0x1f8].copy_from_slice(&((payload as u32).div_ceil(16)).to_le_bytes());
        f[0x1fe] = 0x55;
        f[0x1ff] = 0xaa;
        f[0x202..0x206].copy_from_slice(b"HdrS");
        f[0x206..0x208].copy_from_slice(&version.to_le_bytes());
        f[0x211] = 1; // loadflags: LOADED_HIGH
        f[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        f[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        f[0x236..0x238].copy_from_slice(&xloadflags.to_le_bytes());
        f[0x238..0x23c].copy_from_slice(&2047u32.to_le_bytes()); // cmdline_size
        f[0x260..0x264].copy_from_slice(&(4u32 << 20).to_le_bytes()); // init_size
        f
    }
}

#[cfg(test)]
mod tests {
    use super::fixtures::{bzimage, elf};
    use super::*;

    const MIB: u64 = 1 << 20;

    fn p() -> &'static Path {
        Path::new("/images/k")
    }

    #[test]
    fn images_are_told_apart_by_magic_and_anything_else_is_refused() {
        assert_eq!(
            identify(p(), &elf(62, 0x40_0000, &[0xf4])).unwrap(),
            ImageKind::Elf
        );
        assert_eq!(
            identify(p(), &bzimage(0x20f, 1, 64)).unwrap(),
            ImageKind::BzImage
        );
        let e = identify(p(), b"#!/bin/sh\necho not a kernel\n").unwrap_err();
        assert!(matches!(e, HypervisorError::NotAKernel { .. }), "{e}");
        assert!(e.to_string().contains("/images/k"), "{e}");
        let e = identify(p(), &bzimage(0x20f, 1, 64)[..0x200]).unwrap_err();
        assert!(
            matches!(e, HypervisorError::TruncatedImage { needed: 0x206, .. }),
            "{e}"
        );
    }

    #[test]
    fn bzimage_headers_are_checked() {
        let img = bzimage(0x20f, XLF_KERNEL_64, 4096);
        let hdr = bzimage_header(p(), &img).unwrap();
        assert_eq!({ hdr.cmdline_size }, 2047);
        let e = bzimage_header(p(), &img[..img.len() - 100]).unwrap_err();
        assert!(matches!(e, HypervisorError::TruncatedImage { .. }), "{e}");
        let e = bzimage_header(p(), &bzimage(0x20f, 0, 64)).unwrap_err();
        assert!(e.to_string().contains("64-bit entry"), "{e}");
        let e = bzimage_header(p(), &bzimage(0x204, 1, 64)).unwrap_err();
        assert!(e.to_string().contains("older than 2.12"), "{e}");
    }

    #[test]
    fn elf_images_for_other_machines_or_cut_short_are_refused() {
        let good = elf(EM_X86_64, 0x40_0000, &[0x90, 0xf4]);
        let (entry, segs) = elf_segments(p(), &good).unwrap();
        assert_eq!(entry, 0x40_0000);
        assert_eq!(
            segs,
            vec![LoadSegment {
                index: 0,
                paddr: 0x40_0000,
                filesz: 2,
                memsz: 2
            }]
        );
        let e = elf_segments(p(), &elf(183, 0x40_0000, &[0xf4])).unwrap_err();
        assert!(
            matches!(e, HypervisorError::WrongArchitecture { machine: 183, .. }),
            "{e}"
        );
        let e = elf_segments(p(), &good[..good.len() - 1]).unwrap_err();
        assert!(
            matches!(e, HypervisorError::TruncatedImage { needed: 0x7a, .. }),
            "{e}"
        );
        let e = elf_segments(p(), &good[..0x50]).unwrap_err();
        assert!(
            matches!(e, HypervisorError::TruncatedImage { needed: 0x78, .. }),
            "{e}"
        );
        let mut c32 = good.clone();
        c32[4] = 1;
        let e = elf_segments(p(), &c32).unwrap_err();
        assert!(e.to_string().contains("32-bit"), "{e}");
    }

    #[test]
    fn segments_must_be_in_ram_and_clear_of_the_boot_structures() {
        let seg = |paddr, memsz| LoadSegment {
            index: 3,
            paddr,
            filesz: 0,
            memsz,
        };
        check_segments(p(), &[seg(0x40_0000, MIB)], 8 * MIB).unwrap();
        let e = check_segments(p(), &[seg(0x7000, 16)], 8 * MIB).unwrap_err();
        assert!(
            matches!(e, HypervisorError::SegmentOverlapsBoot { index: 3, .. }),
            "{e}"
        );
        let e = check_segments(p(), &[seg(0x1f000, 0x2000)], 8 * MIB).unwrap_err();
        assert!(
            matches!(e, HypervisorError::SegmentOverlapsBoot { .. }),
            "{e}"
        );
        let e = check_segments(p(), &[seg(7 * MIB, 2 * MIB)], 8 * MIB).unwrap_err();
        assert!(
            matches!(e, HypervisorError::SegmentOutsideRam { .. }),
            "{e}"
        );
        let e = check_segments(p(), &[seg(u64::MAX - 1, 16)], 8 * MIB).unwrap_err();
        assert!(
            matches!(e, HypervisorError::SegmentOutsideRam { .. }),
            "{e}"
        );
        // In the PCI hole of a 5 GiB VM.
        let e = check_segments(p(), &[seg(0xc000_0000, 4096)], 5 << 30).unwrap_err();
        assert!(
            matches!(e, HypervisorError::SegmentOutsideRam { .. }),
            "{e}"
        );
    }
}
