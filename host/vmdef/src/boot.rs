//! How a defined VM boots: the kit's test initramfs (with the kit's kernel or another),
//! a kernel and initramfs of the user's, or the firmware booting the first disk.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::VmDefError;

/// `--kernel` value naming the kit's mini frontend (builtin VMM only).
pub const MINI_FRONTEND: &str = "mini";

/// Firmware that boots the first disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FirmwareKind {
    /// SeaBIOS, QEMU's default.
    Bios,
    /// OVMF, from Debian's `ovmf` package.
    Uefi,
}

impl std::str::FromStr for FirmwareKind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "bios" => Ok(Self::Bios),
            "uefi" => Ok(Self::Uefi),
            other => Err(format!("unknown firmware {other:?}: use bios or uefi")),
        }
    }
}

/// The boot settings as given (TOML `[boot]`, or `vm start`'s flags).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootDefinition {
    /// Boot the first disk through this firmware (its boot loader, its own kernel).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware: Option<FirmwareKind>,
    /// A kernel image (e.g. a tree's `arch/x86/boot/bzImage`), or `mini`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
    /// The kernel's initramfs; without it the kit's test initramfs is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// With `initrd`: the whole kernel command line (QEMU's `-append`). With the kit's
    /// initramfs: words added to the kit's command line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub append: Option<String>,
    /// The kit initramfs's init mode (`vesper.mode=`: freeze, hand, bench).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// A kernel developer's built tree: its `arch/x86/boot/bzImage` boots (unless
    /// `kernel` says otherwise), its `vmlinux` serves `vesper debug`, and the frontend
    /// built against it is handed to the kit's initramfs at boot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel_tree: Option<PathBuf>,
}

/// How the VM boots, resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootPlan {
    /// The kit's test initramfs and /init.
    Kit {
        /// A kernel instead of the kit's.
        kernel: Option<PathBuf>,
        /// The kit's mini frontend (builtin VMM only) instead of Linux.
        mini: bool,
        /// The init mode.
        mode: String,
        /// Words added to the kit's command line.
        extra: Option<String>,
        /// A kernel tree whose own frontend build replaces the kit's.
        tree: Option<PathBuf>,
    },
    /// The user's kernel and initramfs, with exactly their command line.
    Kernel {
        /// Kernel image.
        kernel: PathBuf,
        /// Initramfs.
        initrd: PathBuf,
        /// Command line.
        cmdline: String,
    },
    /// The firmware boots the first disk.
    Firmware(FirmwareKind),
}

fn valid_mode(mode: &str) -> bool {
    (1..=32).contains(&mode.len())
        && mode
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl BootDefinition {
    /// The boot these settings give (`has_disk`: the VM has a disk to boot).
    pub fn plan(&self, has_disk: bool) -> Result<BootPlan, VmDefError> {
        let bad = |m: &str| Err(VmDefError::Invalid(m.to_string()));
        if let Some(fw) = self.firmware {
            if self.kernel.is_some() || self.initrd.is_some() || self.kernel_tree.is_some() {
                return bad("--firmware boots the disk's own kernel: drop --kernel/--initrd, or --firmware to boot them directly");
            }
            if self.append.is_some() || self.mode.is_some() {
                return bad("--firmware boots the disk's boot loader, which sets the kernel command line: drop --append/--mode (set it in the guest's boot loader)");
            }
            if !has_disk {
                return bad("--firmware needs a disk to boot: add --disk IMAGE");
            }
            return Ok(BootPlan::Firmware(fw));
        }
        if let Some(mode) = &self.mode {
            if !valid_mode(mode) {
                return Err(VmDefError::Invalid(format!("bad init mode {mode:?}")));
            }
        }
        if self.kernel_tree.is_some()
            && (self.initrd.is_some() || self.kernel.as_deref() == Some(MINI_FRONTEND))
        {
            return bad("--kernel-tree hands its frontend to the kit's initramfs: drop --initrd (install the frontend in your own initramfs instead) and --kernel mini");
        }
        let tree_kernel = self
            .kernel_tree
            .as_ref()
            .map(|t| t.join("arch/x86/boot/bzImage").display().to_string());
        match (
            self.kernel.as_deref().or(tree_kernel.as_deref()),
            &self.initrd,
        ) {
            (None, Some(_)) => bad("--initrd needs --kernel (the kernel it belongs to)"),
            (Some(k), Some(initrd)) if k != crate::MINI_FRONTEND => {
                if self.mode.is_some() {
                    return bad("--mode is the kit initramfs's; with your own --initrd, drop it");
                }
                Ok(BootPlan::Kernel {
                    kernel: PathBuf::from(k),
                    initrd: initrd.clone(),
                    cmdline: self
                        .append
                        .clone()
                        .unwrap_or_else(|| "console=ttyS0".into()),
                })
            }
            (Some(_), Some(_)) => bad("--kernel mini boots the mini frontend: drop --initrd"),
            (kernel, None) => Ok(BootPlan::Kit {
                mini: kernel == Some(MINI_FRONTEND),
                kernel: kernel.filter(|k| *k != MINI_FRONTEND).map(PathBuf::from),
                mode: self.mode.clone().unwrap_or_else(|| "freeze".into()),
                extra: self.append.clone(),
                tree: self.kernel_tree.clone(),
            }),
        }
    }

    pub(crate) fn resolve_paths(&mut self, base: &Path) {
        if let Some(k) = self.kernel.as_mut().filter(|k| *k != MINI_FRONTEND) {
            if Path::new(k).is_relative() {
                *k = base.join(&*k).display().to_string();
            }
        }
        for p in [&mut self.initrd, &mut self.kernel_tree]
            .into_iter()
            .flatten()
        {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        }
    }

    pub(crate) fn files(&self) -> Vec<(&'static str, &Path)> {
        let mut f: Vec<(&'static str, &Path)> = vec![];
        if let Some(k) = self.kernel.as_deref().filter(|k| *k != MINI_FRONTEND) {
            f.push(("kernel", Path::new(k)));
        }
        if let Some(i) = &self.initrd {
            f.push(("initrd", i));
        }
        if let Some(t) = &self.kernel_tree {
            f.push(("kernel tree", t));
        }
        f
    }
}
