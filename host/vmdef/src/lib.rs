//! A VM's definition as data: what the user asked for (machine size, how it boots, its
//! disks, networks and further QEMU options), read from a TOML file or built from
//! `vesper vm start`'s flags, checked on its own, and resolved to one [`BootPlan`].
//! vesperd keeps each VM's definition in its run directory, so a plain `vm start NAME`,
//! an adoption after a restart and the failover engine start it the same way.
#![deny(missing_docs)]

mod boot;
mod file;

pub use boot::{BootDefinition, BootPlan, FirmwareKind, MINI_FRONTEND};
pub use file::{from_toml_file, from_toml_str, to_toml};

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;
use vesper_qemu::{AccelRequest, Disk, Net};
use vesper_toml_located::TomlFileError;

/// Errors of a VM definition.
#[derive(Debug, Error)]
pub enum VmDefError {
    /// The file could not be read or parsed.
    #[error(transparent)]
    File(#[from] TomlFileError),
    /// A value is out of range or two settings contradict each other.
    #[error("{0}")]
    Invalid(String),
    /// A file the definition names is not there.
    #[error("{what} {}: {why}", path.display())]
    Missing {
        /// What the file is for (`disk`, `kernel`, …).
        what: &'static str,
        /// The path.
        path: PathBuf,
        /// Why it cannot be used.
        why: String,
    },
}

/// Which VMM runs a guest.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Vmm {
    /// QEMU, a separate process reached through ivshmem.
    #[default]
    Qemu,
    /// Vesper's own VMM inside the daemon (`vesper-hypervisor`).
    Builtin,
}

impl std::str::FromStr for Vmm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu" => Ok(Self::Qemu),
            "builtin" => Ok(Self::Builtin),
            other => Err(format!("unknown VMM {other:?}: use qemu or builtin")),
        }
    }
}

impl std::fmt::Display for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Qemu => "qemu",
            Self::Builtin => "builtin",
        })
    }
}

fn default_memory() -> u32 {
    512
}

fn one() -> u32 {
    1
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// Everything that decides how a VM is built. Paths are absolute once
/// [`VmDefinition::resolve_paths`] ran (a file's relative paths are its directory's).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDefinition {
    /// The VM's name, if the file names it (it must then be the name started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Memory in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u32,
    /// vCPUs.
    #[serde(default = "one")]
    pub cpus: u32,
    /// The VMM.
    #[serde(default)]
    pub vmm: Vmm,
    /// The accelerator.
    #[serde(default)]
    pub accel: AccelRequest,
    /// Restart the guest in place when it reboots (otherwise the VM exits).
    #[serde(default, skip_serializing_if = "is_false")]
    pub allow_reboot: bool,
    /// How it boots.
    #[serde(default)]
    pub boot: BootDefinition,
    /// Virtio disks (TOML `[[disk]]`); the firmware boots the first.
    #[serde(default, rename = "disk", skip_serializing_if = "Vec::is_empty")]
    pub disks: Vec<Disk>,
    /// Virtio NICs (TOML `[[net]]`).
    #[serde(default, rename = "net", skip_serializing_if = "Vec::is_empty")]
    pub nets: Vec<Net>,
    /// Further QEMU options, verbatim, after Vesper's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub qemu_args: Vec<String>,
    /// The guest kernel's vmlinux with DWARF (e.g. a kernel tree's own), used by
    /// `vesper debug` where it takes one; read where it is, never copied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vmlinux: Option<PathBuf>,
}

impl Default for VmDefinition {
    fn default() -> Self {
        Self {
            name: None,
            memory_mib: default_memory(),
            cpus: one(),
            vmm: Vmm::Qemu,
            accel: AccelRequest::Auto,
            allow_reboot: false,
            boot: BootDefinition::default(),
            disks: vec![],
            nets: vec![],
            qemu_args: vec![],
            vmlinux: None,
        }
    }
}

/// QEMU options Vesper sets itself, with what to use instead.
const OWNED_OPTIONS: &[(&str, &str)] = &[
    ("-name", "the VM name"),
    (
        "-machine",
        "Vesper's q35 machine (its RAM is shared for `vesper debug`)",
    ),
    (
        "-M",
        "Vesper's q35 machine (its RAM is shared for `vesper debug`)",
    ),
    ("-m", "--memory / memory_mib"),
    ("-smp", "--cpus / cpus"),
    ("-accel", "--accel / accel"),
    ("-enable-kvm", "--accel kvm"),
    ("-kernel", "--kernel / boot.kernel"),
    ("-initrd", "--initrd / boot.initrd"),
    ("-append", "--append / boot.append"),
    ("-bios", "--firmware / boot.firmware"),
    ("-serial", "Vesper's console (vesper vm send, console.log)"),
    ("-qmp", "Vesper's QMP sockets in the run directory"),
    ("-gdb", "`vesper debug gdb`"),
    ("-daemonize", "nothing: vesperd watches the QEMU process"),
    (
        "-no-reboot",
        "--allow-reboot (off: a guest reboot ends the VM)",
    ),
    ("-nodefaults", "nothing: Vesper sets it"),
];

impl VmDefinition {
    /// Checks the definition of VM `name` and resolves how it boots.
    pub fn check(&self, name: &str) -> Result<BootPlan, VmDefError> {
        let bad = |m: String| Err(VmDefError::Invalid(m));
        if let Some(n) = self.name.as_deref().filter(|n| *n != name) {
            return bad(format!(
                "the definition is of VM {n:?}, not {name:?}: start it as {n}, or change its `name`"
            ));
        }
        if !(128..=65536).contains(&self.memory_mib) || !(1..=64).contains(&self.cpus) {
            return bad(format!(
                "memory {} MiB / {} vCPUs out of range (128-65536 MiB, 1-64 vCPUs)",
                self.memory_mib, self.cpus
            ));
        }
        for a in &self.qemu_args {
            if let Some((opt, instead)) = OWNED_OPTIONS.iter().find(|(o, _)| a == o) {
                return bad(format!(
                    "QEMU option {opt} is Vesper's to set; use {instead}"
                ));
            }
        }
        for n in &self.nets {
            if let Net::Tap { ifname: i } | Net::Bridge { bridge: i } = n {
                vesper_qemu::check_ifname(i).map_err(VmDefError::Invalid)?;
            }
        }
        let plan = self.boot.plan(!self.disks.is_empty())?;
        if self.vmm == Vmm::Builtin {
            self.check_builtin(&plan)?;
        } else if matches!(plan, BootPlan::Kit { mini: true, .. }) {
            return bad(
                "--kernel mini is a test guest for the builtin VMM; add --vmm builtin".into(),
            );
        }
        Ok(plan)
    }

    fn check_builtin(&self, plan: &BootPlan) -> Result<(), VmDefError> {
        let what = if !self.disks.is_empty() {
            "disks"
        } else if !self.nets.is_empty() {
            "networks"
        } else if !self.qemu_args.is_empty() {
            "QEMU options"
        } else {
            match plan {
                BootPlan::Kit { .. } => return Ok(()),
                BootPlan::Kernel { .. } => "--initrd",
                BootPlan::Firmware(_) => "firmware",
            }
        };
        Err(VmDefError::Invalid(format!(
            "the builtin VMM takes no {what} (it boots the kit's initramfs only); use --vmm qemu"
        )))
    }

    /// Makes every path absolute against `base` (a definition file's directory, or
    /// the CLI's working directory).
    pub fn resolve_paths(&mut self, base: &Path) {
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        for d in &mut self.disks {
            abs(&mut d.path);
        }
        if let Some(v) = &mut self.vmlinux {
            abs(v);
        }
        self.boot.resolve_paths(base);
    }

    /// The vmlinux `vesper debug` uses for this VM: the one named, else its kernel
    /// tree's.
    pub fn debug_vmlinux(&self) -> Option<PathBuf> {
        self.vmlinux.clone().or_else(|| {
            self.boot
                .kernel_tree
                .as_ref()
                .map(|t| t.join("vmlinux"))
                .filter(|v| v.is_file())
        })
    }

    /// Checks that every file the definition names is there (disks, kernel, initrd,
    /// vmlinux).
    pub fn check_files(&self) -> Result<(), VmDefError> {
        let mut files: Vec<(&'static str, &Path)> = self
            .disks
            .iter()
            .map(|d| ("disk", d.path.as_path()))
            .collect();
        files.extend(self.boot.files());
        files.extend(self.vmlinux.as_deref().map(|v| ("vmlinux", v)));
        for (what, path) in files {
            let why = match std::fs::metadata(path) {
                Ok(m) if what == "kernel tree" => {
                    (!m.is_dir()).then(|| "not a directory".to_string())
                }
                Ok(m) => (!(m.is_file() || m.file_type().is_block_device_like()))
                    .then(|| "not a file".to_string()),
                Err(e) => Some(e.to_string()),
            };
            if let Some(why) = why {
                return Err(VmDefError::Missing {
                    what,
                    path: path.to_path_buf(),
                    why,
                });
            }
        }
        Ok(())
    }
}

trait BlockDeviceLike {
    fn is_block_device_like(&self) -> bool;
}

impl BlockDeviceLike for std::fs::FileType {
    fn is_block_device_like(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        self.is_block_device()
    }
}

#[cfg(test)]
mod tests;
