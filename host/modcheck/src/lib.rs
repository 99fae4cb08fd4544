//! Host-side validation of kernel module images (`.ko`) before they are pushed.
//!
//! A module that fails here never reaches the guest: the guest kernel's own loader
//! would refuse most of these too, but only after the image crossed the transport, and
//! some (a module built for another kernel) can oops a guest when forced in.
#![deny(missing_docs)]

use goblin::elf::header::{ELFCLASS64, EM_X86_64, ET_REL};
use goblin::elf::Elf;
use thiserror::Error;

mod params;
pub use params::{check_param, join_params, ParamError};

/// Default size limit for a pushed image.
pub const DEFAULT_MAX_IMAGE_SIZE: u64 = 32 << 20;

/// Why an image was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum ModuleError {
    /// Zero bytes.
    #[error("the file is empty; pass a kernel module (.ko) built for the guest's kernel")]
    Empty,
    /// Over the size limit.
    #[error("the file is {size} bytes, over the {limit}-byte limit; strip debug info (`strip --strip-debug`) or raise the limit")]
    TooLarge {
        /// File size.
        size: u64,
        /// Limit in force.
        limit: u64,
    },
    /// No ELF magic.
    #[error("not an ELF file (first bytes {0:02x?}); pass a kernel module (.ko)")]
    NotElf([u8; 4]),
    /// ELF, but cut short or inconsistent.
    #[error("malformed or truncated ELF: {0}; rebuild the module")]
    Malformed(String),
    /// 32-bit ELF.
    #[error("a 32-bit ELF; the guest runs a 64-bit kernel")]
    NotElf64,
    /// Another machine.
    #[error("built for {0}, not x86-64; rebuild against the guest's kernel headers")]
    WrongArch(String),
    /// Not `ET_REL`.
    #[error("ELF type {0} is not relocatable (ET_REL); kernel modules are `.ko` objects, not programs or libraries")]
    NotRelocatable(String),
    /// No `.modinfo`.
    #[error("no .modinfo section: not a kernel module (build it with the kernel's Kbuild)")]
    NoModinfo,
    /// No `.gnu.linkonce.this_module`.
    #[error(
        "no .gnu.linkonce.this_module section: not a linked kernel module (run modpost via Kbuild)"
    )]
    NoThisModule,
    /// No `name=` in `.modinfo`.
    #[error(".modinfo has no name= entry; build the module with Kbuild")]
    NoName,
    /// No `vermagic=` in `.modinfo`.
    #[error(".modinfo has no vermagic= entry; build the module with Kbuild against the guest's kernel headers")]
    NoVermagic,
    /// Built for another kernel.
    #[error("module vermagic \"{module}\" does not match the guest kernel's \"{guest}\"; rebuild it against linux-headers for that kernel")]
    VermagicMismatch {
        /// The module's vermagic.
        module: String,
        /// The guest's vermagic.
        guest: String,
    },
}

/// What the host learned from a valid module image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleInfo {
    /// Module name (`.modinfo` `name=`).
    pub name: String,
    /// The kernel it was built for.
    pub vermagic: String,
    /// Image size in bytes.
    pub size: u64,
    /// `license=`, if any.
    pub license: Option<String>,
    /// `description=`, if any.
    pub description: Option<String>,
    /// Modules it depends on (`depends=`).
    pub depends: Vec<String>,
    /// `vesper_record=`: the layout of the records a module generated from a probe spec
    /// writes (read by `vesper_relay::layout`; unchecked here).
    pub record_layout: Option<String>,
}

/// Checks `image` for loading into a guest whose kernel reports `guest_vermagic`.
/// `guest_vermagic: None` skips only the vermagic comparison (offline `check`).
pub fn check_module(
    image: &[u8],
    guest_vermagic: Option<&str>,
    max_size: u64,
) -> Result<ModuleInfo, ModuleError> {
    let size = image.len() as u64;
    if size == 0 {
        return Err(ModuleError::Empty);
    }
    if size > max_size {
        return Err(ModuleError::TooLarge {
            size,
            limit: max_size,
        });
    }
    if size < 4 || &image[..4] != b"\x7fELF" {
        let mut first = [0u8; 4];
        let n = image.len().min(4);
        first[..n].copy_from_slice(&image[..n]);
        return Err(ModuleError::NotElf(first));
    }
    let header = Elf::parse_header(image).map_err(|e| ModuleError::Malformed(e.to_string()))?;
    if header.e_ident[goblin::elf::header::EI_CLASS] != ELFCLASS64 {
        return Err(ModuleError::NotElf64);
    }
    if header.e_machine != EM_X86_64 {
        return Err(ModuleError::WrongArch(
            goblin::elf::header::machine_to_str(header.e_machine).to_string(),
        ));
    }
    if header.e_type != ET_REL {
        return Err(ModuleError::NotRelocatable(
            goblin::elf::header::et_to_str(header.e_type).to_string(),
        ));
    }
    let elf = Elf::parse(image).map_err(|e| ModuleError::Malformed(e.to_string()))?;

    let mut modinfo = None;
    let mut this_module = false;
    for sh in &elf.section_headers {
        let name = elf.shdr_strtab.get_at(sh.sh_name).unwrap_or("");
        let in_file = sh.sh_type == goblin::elf::section_header::SHT_NOBITS
            || sh
                .sh_offset
                .checked_add(sh.sh_size)
                .is_some_and(|end| end <= size);
        if !in_file {
            return Err(ModuleError::Malformed(format!(
                "section {name:?} at {:#x}+{:#x} lies past the end of the {size}-byte file",
                sh.sh_offset, sh.sh_size
            )));
        }
        match name {
            ".modinfo" => {
                modinfo = Some(&image[sh.sh_offset as usize..(sh.sh_offset + sh.sh_size) as usize])
            }
            ".gnu.linkonce.this_module" => this_module = true,
            _ => {}
        }
    }
    let modinfo = modinfo.ok_or(ModuleError::NoModinfo)?;
    if !this_module {
        return Err(ModuleError::NoThisModule);
    }
    let entries = parse_modinfo(modinfo);
    let get = |key: &str| {
        entries
            .iter()
            .find(|(k, _)| *k == key)
            .map(|(_, v)| v.to_string())
    };
    let name = get("name")
        .filter(|n| !n.is_empty())
        .ok_or(ModuleError::NoName)?;
    let vermagic = get("vermagic").ok_or(ModuleError::NoVermagic)?;
    if let Some(guest) = guest_vermagic {
        if vermagic.trim() != guest.trim() {
            return Err(ModuleError::VermagicMismatch {
                module: vermagic,
                guest: guest.to_string(),
            });
        }
    }
    Ok(ModuleInfo {
        name,
        vermagic,
        size,
        license: get("license"),
        description: get("description"),
        depends: get("depends")
            .map(|d| {
                d.split(',')
                    .filter(|s| !s.is_empty())
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default(),
        record_layout: get("vesper_record"),
    })
}

/// Splits a `.modinfo` section into `key=value` pairs (NUL-separated, padding skipped).
fn parse_modinfo(section: &[u8]) -> Vec<(&str, &str)> {
    section
        .split(|&b| b == 0)
        .filter_map(|entry| std::str::from_utf8(entry).ok())
        .filter_map(|entry| entry.split_once('='))
        .collect()
}

/// Test fixtures for whoever checks module images (this crate, probe groups): the
/// smallest file that reads as a kernel module.
pub mod fixture {
    /// A minimal ELF64 x86-64 ET_REL with `.modinfo` and `.gnu.linkonce.this_module`.
    pub fn tiny_module(modinfo: &[u8], machine: u16, e_type: u16) -> Vec<u8> {
        let shstrtab = b"\0.modinfo\0.gnu.linkonce.this_module\0.shstrtab\0";
        let this_module = [0u8; 64];
        let mut out = vec![0u8; 64];
        let modinfo_off = out.len();
        out.extend_from_slice(modinfo);
        let this_off = out.len();
        out.extend_from_slice(&this_module);
        let strtab_off = out.len();
        out.extend_from_slice(shstrtab);
        while !out.len().is_multiple_of(8) {
            out.push(0);
        }
        let shoff = out.len();
        let sh = |name: u32, ty: u32, off: usize, size: usize| {
            let mut s = Vec::with_capacity(64);
            s.extend_from_slice(&name.to_le_bytes());
            s.extend_from_slice(&ty.to_le_bytes());
            s.extend_from_slice(&0u64.to_le_bytes()); // flags
            s.extend_from_slice(&0u64.to_le_bytes()); // addr
            s.extend_from_slice(&(off as u64).to_le_bytes());
            s.extend_from_slice(&(size as u64).to_le_bytes());
            s.extend_from_slice(&0u32.to_le_bytes()); // link
            s.extend_from_slice(&0u32.to_le_bytes()); // info
            s.extend_from_slice(&1u64.to_le_bytes()); // align
            s.extend_from_slice(&0u64.to_le_bytes()); // entsize
            s
        };
        out.extend(sh(0, 0, 0, 0));
        out.extend(sh(1, 1, modinfo_off, modinfo.len()));
        out.extend(sh(10, 1, this_off, this_module.len()));
        out.extend(sh(36, 3, strtab_off, shstrtab.len()));
        let h = &mut out[..64];
        h[..4].copy_from_slice(b"\x7fELF");
        h[4] = 2; // ELFCLASS64
        h[5] = 1; // little endian
        h[6] = 1; // version
        h[16..18].copy_from_slice(&e_type.to_le_bytes());
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h[20..24].copy_from_slice(&1u32.to_le_bytes());
        h[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
        h[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
        h[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
        h[60..62].copy_from_slice(&4u16.to_le_bytes()); // shnum
        h[62..64].copy_from_slice(&3u16.to_le_bytes()); // shstrndx
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) use crate::fixture::tiny_module;

    const VM: &str = "6.1.0-56-cloud-amd64 SMP preempt mod_unload modversions ";
    fn info() -> Vec<u8> {
        format!("license=GPL\0description=test\0depends=\0name=probe\0vermagic={VM}\0").into_bytes()
    }

    #[test]
    fn a_real_shaped_module_passes_with_its_metadata() {
        let m = check_module(
            &tiny_module(&info(), EM_X86_64, ET_REL),
            Some(VM),
            DEFAULT_MAX_IMAGE_SIZE,
        )
        .unwrap();
        assert_eq!(m.name, "probe");
        assert_eq!(m.license.as_deref(), Some("GPL"));
        assert!(m.depends.is_empty());
    }

    #[test]
    fn each_bad_image_gets_its_own_error() {
        let good = tiny_module(&info(), EM_X86_64, ET_REL);
        let max = DEFAULT_MAX_IMAGE_SIZE;
        assert_eq!(check_module(b"", None, max), Err(ModuleError::Empty));
        assert!(matches!(
            check_module(b"garbage bytes here", None, max),
            Err(ModuleError::NotElf(_))
        ));
        assert!(matches!(
            check_module(&good, None, 100),
            Err(ModuleError::TooLarge { .. })
        ));
        assert!(matches!(
            check_module(&good[..40], None, max),
            Err(ModuleError::Malformed(_))
        ));
        assert!(matches!(
            check_module(&good[..good.len() - 10], None, max),
            Err(ModuleError::Malformed(_))
        ));
        let arm = tiny_module(&info(), goblin::elf::header::EM_AARCH64, ET_REL);
        assert!(
            matches!(check_module(&arm, None, max), Err(ModuleError::WrongArch(a)) if a.contains("AARCH64"))
        );
        let exe = tiny_module(&info(), EM_X86_64, goblin::elf::header::ET_EXEC);
        assert!(matches!(
            check_module(&exe, None, max),
            Err(ModuleError::NotRelocatable(_))
        ));
        let noname = tiny_module(format!("vermagic={VM}\0").as_bytes(), EM_X86_64, ET_REL);
        assert_eq!(check_module(&noname, None, max), Err(ModuleError::NoName));
        let novm = tiny_module(b"name=x\0", EM_X86_64, ET_REL);
        assert_eq!(check_module(&novm, None, max), Err(ModuleError::NoVermagic));
        assert!(matches!(
            check_module(&good, Some("5.10.0-1-amd64 SMP mod_unload "), max),
            Err(ModuleError::VermagicMismatch { .. })
        ));
        let mut elf32 = good.clone();
        elf32[4] = 1;
        assert!(check_module(&elf32, None, max).is_err());
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes: Vec<u8>) {
            let _ = check_module(&bytes, Some(VM), DEFAULT_MAX_IMAGE_SIZE);
        }

        #[test]
        fn corrupted_modules_never_panic(flips: Vec<(usize, u8)>) {
            let mut m = tiny_module(&info(), EM_X86_64, ET_REL);
            let n = m.len();
            for (at, v) in flips { m[at % n] = v; }
            let _ = check_module(&m, Some(VM), DEFAULT_MAX_IMAGE_SIZE);
        }
    }
}
