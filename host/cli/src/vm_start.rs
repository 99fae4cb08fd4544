//! `vesper vm start`: its flags, and the VM definition they (or a `--config` file) make.

use std::path::{Path, PathBuf};

use clap::Args;
use vesper_api::vmdef::{self, BootDefinition, VmDefinition};
use vesper_api::{Disk, Net, Request, VmStartRequest};

use crate::exit::Refusal;

/// `vm start`'s arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
With no flag that defines the VM, NAME starts as it was last started (vesperd keeps \
RUN/guests/NAME/definition.toml), or as the kit's test VM. Any such flag, or --config, \
defines it afresh. The kit's test VM: no --disk/--firmware/--initrd. Your own VM: \
--disk IMG --firmware bios (the disk's boot loader and kernel), or --kernel/--initrd/--append \
(QEMU's direct boot; --append is then the whole command line). QEMU options after `--` \
are added last, verbatim.")]
pub(crate) struct StartArgs {
    /// VM name.
    pub(crate) name: String,
    /// A VM definition file (TOML: memory_mib, cpus, vmm, accel, [boot], [[disk]], [[net]],
    /// qemu_args, vmlinux); its relative paths are the file's directory's.
    #[arg(long, value_name = "FILE", conflicts_with_all = ["memory", "cpus", "accel", "mode", "append", "allow_reboot", "vmm", "kernel", "kernel_tree", "initrd", "disk", "net", "firmware", "vmlinux", "qemu_args"])]
    pub(crate) config: Option<PathBuf>,
    /// Memory in MiB [default: 512].
    #[arg(long)]
    pub(crate) memory: Option<u32>,
    /// vCPUs [default: 1].
    #[arg(long)]
    pub(crate) cpus: Option<u32>,
    /// Accelerator: auto (KVM if hardware-backed, else TCG), kvm or tcg [default: auto].
    #[arg(long)]
    pub(crate) accel: Option<String>,
    /// Guest-kit directory.
    #[arg(long)]
    pub(crate) kit_dir: Option<PathBuf>,
    /// The kit test init's mode (freeze: user space frozen after boot; hand: the tests'
    /// hand on the console; bench: in-guest insmod benchmark) [default: freeze].
    #[arg(long)]
    pub(crate) mode: Option<String>,
    /// Kernel command line: with --initrd the whole of it (QEMU's -append), else words
    /// added to the kit's.
    #[arg(long)]
    pub(crate) append: Option<String>,
    /// Return without waiting for the guest's frontend.
    #[arg(long)]
    pub(crate) no_wait: bool,
    /// Seconds to wait for the guest's frontend (the last one given counts).
    #[arg(long, default_value_t = 120, overrides_with = "boot_timeout")]
    pub(crate) boot_timeout: u64,
    /// Restart the guest in place when it reboots (default: the VM exits).
    #[arg(long)]
    pub(crate) allow_reboot: bool,
    /// VMM: qemu (a QEMU process reached through ivshmem) or builtin (Vesper's own
    /// KVM VMM inside vesperd; needs /dev/kvm) [default: qemu].
    #[arg(long)]
    pub(crate) vmm: Option<String>,
    /// Boot this kernel image (e.g. a tree's arch/x86/boot/bzImage) instead of the
    /// kit's, or `mini` for the kit's mini frontend (builtin VMM only).
    #[arg(long)]
    pub(crate) kernel: Option<String>,
    /// Your built kernel tree: boots its arch/x86/boot/bzImage (unless --kernel), serves
    /// its vmlinux to `vesper debug`, and hands the frontend built against it to the
    /// kit's test initramfs at boot (nothing installed anywhere).
    #[arg(long, value_name = "DIR")]
    pub(crate) kernel_tree: Option<PathBuf>,
    /// The kernel's initramfs (yours instead of the kit's test initramfs).
    #[arg(long, requires = "kernel")]
    pub(crate) initrd: Option<PathBuf>,
    /// A disk image (qcow2 or raw, virtio); repeat for more. The firmware boots the first.
    #[arg(long, value_name = "IMG")]
    pub(crate) disk: Vec<PathBuf>,
    /// Leave the disk images untouched: writes go to a throw-away overlay.
    #[arg(long, requires = "disk")]
    pub(crate) snapshot: bool,
    /// A virtio NIC: user[,hostfwd=tcp::2222-:22], tap=IFNAME or bridge=BRIDGE; repeat for more.
    #[arg(long, value_name = "NET")]
    pub(crate) net: Vec<String>,
    /// Boot the first disk through firmware: bios (SeaBIOS) or uefi (OVMF).
    #[arg(long, requires = "disk")]
    pub(crate) firmware: Option<String>,
    /// The guest kernel's vmlinux with DWARF (e.g. your tree's), for `vesper debug`.
    #[arg(long)]
    pub(crate) vmlinux: Option<PathBuf>,
    /// Further QEMU options, after `--`.
    #[arg(last = true, value_name = "QEMU-OPTION")]
    pub(crate) qemu_args: Vec<String>,
}

/// A definition file's error, with its cause (66 when the file cannot be read).
fn definition_error(e: vmdef::VmDefError) -> Refusal {
    let mut msg = e.to_string();
    let mut src = std::error::Error::source(&e);
    let unreadable = src.is_some_and(|s| s.is::<std::io::Error>());
    while let Some(s) = src {
        msg.push_str(": ");
        msg.push_str(&s.to_string());
        src = s.source();
    }
    if unreadable {
        (66, "file_not_found", msg)
    } else {
        (65, "invalid_definition", msg)
    }
}

fn usage(m: String) -> Refusal {
    (2, "usage", m)
}

impl StartArgs {
    /// Whether any flag defines the VM (otherwise it starts as it is defined).
    fn defines(&self) -> bool {
        self.memory.is_some()
            || self.cpus.is_some()
            || self.accel.is_some()
            || self.mode.is_some()
            || self.append.is_some()
            || self.allow_reboot
            || self.vmm.is_some()
            || self.kernel.is_some()
            || self.kernel_tree.is_some()
            || !self.disk.is_empty()
            || !self.net.is_empty()
            || self.firmware.is_some()
            || self.vmlinux.is_some()
            || !self.qemu_args.is_empty()
    }

    /// The definition the flags give, paths made absolute against `cwd`.
    fn definition(&self, cwd: &Path) -> Result<VmDefinition, Refusal> {
        let d = VmDefinition::default();
        let mut def = VmDefinition {
            name: None,
            memory_mib: self.memory.unwrap_or(d.memory_mib),
            cpus: self.cpus.unwrap_or(d.cpus),
            vmm: match &self.vmm {
                Some(v) => v.parse().map_err(usage)?,
                None => d.vmm,
            },
            accel: match &self.accel {
                Some(a) => a
                    .parse()
                    .map_err(|e: vesper_api::QemuAccelError| usage(e.to_string()))?,
                None => d.accel,
            },
            allow_reboot: self.allow_reboot,
            boot: BootDefinition {
                firmware: self
                    .firmware
                    .as_deref()
                    .map(str::parse)
                    .transpose()
                    .map_err(usage)?,
                kernel: self.kernel.clone(),
                initrd: self.initrd.clone(),
                append: self.append.clone(),
                mode: self.mode.clone(),
                kernel_tree: self.kernel_tree.clone(),
            },
            disks: self
                .disk
                .iter()
                .map(|path| Disk {
                    path: path.clone(),
                    format: None,
                    snapshot: self.snapshot,
                    readonly: false,
                })
                .collect(),
            nets: self
                .net
                .iter()
                .map(|n| n.parse::<Net>().map_err(usage))
                .collect::<Result<_, _>>()?,
            qemu_args: self.qemu_args.clone(),
            vmlinux: self.vmlinux.clone(),
        };
        def.resolve_paths(cwd);
        Ok(def)
    }

    /// The `vm_start` request: the definition checked here first, so a typo is named
    /// before anything reaches vesperd.
    pub(crate) fn request(&self) -> Result<Request, Refusal> {
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("/"));
        let definition = match &self.config {
            Some(file) => Some(vmdef::from_toml_file(file).map_err(definition_error)?),
            None if self.defines() => Some(self.definition(&cwd)?),
            None => None,
        };
        if let Some(def) = &definition {
            def.check(&self.name)
                .map_err(|e| (65, "invalid_definition", e.to_string()))?;
            def.check_files()
                .map_err(|e| (66, "file_not_found", e.to_string()))?;
        }
        let kit_dir = self
            .kit_dir
            .as_ref()
            .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()));
        Ok(Request::VmStart(Box::new(VmStartRequest {
            name: self.name.clone(),
            definition,
            kit_dir,
            wait_secs: if self.no_wait { 0 } else { self.boot_timeout },
        })))
    }
}
