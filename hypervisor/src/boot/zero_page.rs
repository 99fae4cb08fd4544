//! The zero page (`struct boot_params`) and the command line. Pure logic, no fd.

use linux_loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::cmdline::{Cmdline, Error as CmdlineError};

use super::layout::{e820_map, CMDLINE_ADDR, CMDLINE_AREA};
use crate::error::{HypervisorError, Result};

/// `type_of_loader`: a boot loader without an assigned id.
pub const LOADER_UNDEFINED: u8 = 0xff;
const BOOT_FLAG: u16 = 0xaa55;
const HDRS: u32 = 0x5372_6448;
/// Linux's default 16 MiB alignment, for images that do not say (ELF).
const KERNEL_ALIGNMENT: u32 = 0x100_0000;

/// The longest command line (without its NUL) the reserved area and, for a bzImage, the
/// kernel's `cmdline_size` allow.
pub fn cmdline_max(hdr: Option<&setup_header>) -> usize {
    let area = CMDLINE_AREA as usize - 1;
    match hdr.map(|h| h.cmdline_size as usize) {
        Some(n) if n > 0 => n.min(area),
        _ => area,
    }
}

/// The command line checked with linux-loader's `Cmdline` against `max` bytes.
pub fn cmdline(text: &str, max: usize) -> Result<Cmdline> {
    if text.len() > max {
        return Err(HypervisorError::CmdlineTooLong {
            len: text.len(),
            max,
        });
    }
    if text.contains('\0') {
        return Err(HypervisorError::InvalidCmdline(
            CmdlineError::NullTerminator.to_string(),
        ));
    }
    // `Cmdline::try_from` does not check characters itself.
    if !text.bytes().all(|b| (b' '..=b'~').contains(&b)) {
        return Err(HypervisorError::InvalidCmdline(
            CmdlineError::InvalidAscii.to_string(),
        ));
    }
    // Capacity counts the NUL.
    Cmdline::try_from(text, max + 1).map_err(|e| match e {
        CmdlineError::TooLarge => HypervisorError::CmdlineTooLong {
            len: text.len(),
            max,
        },
        other => HypervisorError::InvalidCmdline(other.to_string()),
    })
}

/// What goes in the zero page besides the setup header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ZeroPageInput {
    /// Guest RAM size (for the e820 map).
    pub mem_size: u64,
    /// Command line length without its NUL (it is at `CMDLINE_ADDR`).
    pub cmdline_len: usize,
    /// Initramfs (address, size), if any.
    pub initramfs: Option<(u64, u64)>,
}

/// The zero page: `hdr` (a bzImage's own setup header) or a minimal one (ELF images),
/// loader id 0xff, the command line pointer, the initramfs and the e820 map.
pub fn build(hdr: Option<setup_header>, input: ZeroPageInput) -> boot_params {
    let mut params = boot_params {
        hdr: hdr.unwrap_or_else(|| setup_header {
            boot_flag: BOOT_FLAG,
            header: HDRS,
            kernel_alignment: KERNEL_ALIGNMENT,
            ..Default::default()
        }),
        ..Default::default()
    };
    params.hdr.type_of_loader = LOADER_UNDEFINED;
    // Loader-provided fields: nothing from the image file may point the kernel elsewhere.
    params.hdr.setup_data = 0;
    params.hdr.hardware_subarch = 0;
    params.hdr.hardware_subarch_data = 0;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = input.cmdline_len as u32;
    if let Some((addr, size)) = input.initramfs {
        // Placed below the PCI hole, so the 32-bit fields suffice.
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    let map = e820_map(input.mem_size);
    for (slot, &(addr, size, r#type)) in params.e820_table.iter_mut().zip(&map) {
        *slot = boot_e820_entry { addr, size, r#type };
    }
    params.e820_entries = map.len().min(params.e820_table.len()) as u8;
    params
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boot::layout::E820_RAM;

    const MIB: u64 = 1 << 20;

    #[test]
    fn zero_page_carries_loader_id_cmdline_initramfs_and_ram_only_e820() {
        let hdr = setup_header {
            header: HDRS,
            version: 0x20f,
            cmdline_size: 2047,
            setup_data: 0xdead_0000,
            ..Default::default()
        };
        let p = build(
            Some(hdr),
            ZeroPageInput {
                mem_size: 5 << 30,
                cmdline_len: 12,
                initramfs: Some((0xbf00_0000, 0x10_0000)),
            },
        );
        assert_eq!({ p.hdr.version }, 0x20f, "the image's own header is kept");
        assert_eq!({ p.hdr.type_of_loader }, 0xff);
        assert_eq!(
            { p.hdr.setup_data },
            0,
            "no setup_data list from the image file"
        );
        assert_eq!({ p.hdr.cmd_line_ptr }, 0x20000);
        assert_eq!({ p.hdr.ramdisk_image }, 0xbf00_0000);
        assert_eq!({ p.hdr.ramdisk_size }, 0x10_0000);
        assert_eq!(p.e820_entries, 3);
        let e = p.e820_table;
        assert_eq!(
            ({ e[2].addr }, { e[2].size }, { e[2].r#type }),
            (4 << 30, 2 << 30, E820_RAM)
        );
        assert_eq!(({ e[1].addr }, { e[1].size }), (MIB, (3 << 30) - MIB));

        let elf = build(
            None,
            ZeroPageInput {
                mem_size: 8 * MIB,
                cmdline_len: 0,
                initramfs: None,
            },
        );
        assert_eq!(({ elf.hdr.boot_flag }, { elf.hdr.header }), (0xaa55, HDRS));
        assert_eq!(({ elf.hdr.ramdisk_image }, elf.e820_entries), (0, 2));
    }

    #[test]
    fn command_lines_are_checked_for_length_and_content() {
        let hdr = setup_header {
            cmdline_size: 2047,
            ..Default::default()
        };
        assert_eq!(cmdline_max(Some(&hdr)), 2047);
        assert_eq!(cmdline_max(None), 4095);
        let c = cmdline("console=ttyS0 quiet", 2047).unwrap();
        assert_eq!(c.as_cstring().unwrap().as_bytes(), b"console=ttyS0 quiet");
        let long = "a".repeat(2048);
        let e = cmdline(&long, 2047).unwrap_err();
        assert!(
            matches!(
                e,
                HypervisorError::CmdlineTooLong {
                    len: 2048,
                    max: 2047
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("shorten"), "{e}");
        assert!(matches!(
            cmdline("a\0b", 100),
            Err(HypervisorError::InvalidCmdline(_))
        ));
        assert!(matches!(
            cmdline("tab\there", 100),
            Err(HypervisorError::InvalidCmdline(_))
        ));
        assert!(cmdline("", 100).is_ok());
    }
}
