//! Starting a VM from its checked definition: QEMU's command line (through
//! `vesper_qemu::VmSpec`, the one place it is built) and process with its ivshmem
//! server, or a machine in the builtin VMM.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;
use vesper_api::VmStatus;
use vesper_ivshmem::IvshmemTransport;
use vesper_qemu::{Boot, Firmware, VmSpec};
use vesper_vmdef::{BootPlan, FirmwareKind, VmDefinition};

use crate::daemon::Shared;
use crate::guest::{Link, Process};

/// A VM about to start: its definition, checked, and where it lives.
#[derive(Clone)]
pub(crate) struct Planned {
    pub(crate) name: String,
    pub(crate) def: VmDefinition,
    pub(crate) plan: BootPlan,
    pub(crate) dir: PathBuf,
    /// The kit's initramfs with a kernel tree's frontend in it, once built.
    pub(crate) tree_initramfs: Option<PathBuf>,
}

impl Planned {
    /// The initramfs a kit boot uses: the kit's, or the kit's with the kernel tree's
    /// frontend.
    fn kit_initramfs(&self, kit: &vesper_guest_kit::Kit) -> PathBuf {
        self.tree_initramfs
            .clone()
            .unwrap_or_else(|| kit.initramfs.clone())
    }

    /// The kit test init's mode (`-` when the VM boots something else).
    pub(crate) fn mode(&self) -> String {
        match &self.plan {
            BootPlan::Kit { mode, .. } => mode.clone(),
            _ => "-".into(),
        }
    }
}

/// A VM process or thread just started, and how to reach it.
pub(crate) struct Launched {
    pub(crate) link: Link,
    pub(crate) process: Process,
    /// QEMU's pid, or vesperd's own for a builtin VM.
    pub(crate) pid: u32,
    /// QEMU's own log, if it has one.
    pub(crate) log: Option<PathBuf>,
    /// A builtin VM's console input.
    pub(crate) console_input: Option<vesper_builtin::ConsoleInput>,
}

/// Builds the frontend against the plan's kernel tree (cached in `RUN/frontends`) and
/// writes the kit's initramfs with it in place of the kit's own; `None` without a tree.
pub(crate) fn tree_initramfs(
    run_dir: &Path,
    p: &Planned,
    kit: &vesper_guest_kit::Kit,
) -> Result<Option<PathBuf>, String> {
    let BootPlan::Kit {
        tree: Some(tree), ..
    } = &p.plan
    else {
        return Ok(None);
    };
    let tree = vesper_guest_kit::KernelTree::open(tree).map_err(|e| e.to_string())?;
    let src = vesper_guest_kit::repo_root().join("guest-module");
    let ko = tree
        .build_frontend(&src, &vesper_api::run_dir::frontends(run_dir))
        .map_err(|e| format!("building the frontend against {}: {e}", tree.root.display()))?;
    let overlay = vesper_guest_kit::frontend_overlay(&ko).map_err(|e| e.to_string())?;
    let out = vesper_api::run_dir::initramfs(&p.dir);
    vesper_guest_kit::initramfs_with(&kit.initramfs, &overlay, &out).map_err(|e| e.to_string())?;
    tracing::info!(guest = %p.name, tree = %tree.root.display(), release = %tree.release, frontend = %ko.display(), "booting the kit's initramfs with the frontend built against the kernel tree");
    Ok(Some(out))
}

/// The kit's test guest's kernel command line.
pub(crate) fn kit_cmdline(mode: &str, extra: Option<&str>) -> String {
    let mut cmdline = format!("console=ttyS0 panic=-1 vesper.mode={mode}");
    if let Some(extra) = extra {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    cmdline
}

/// How QEMU boots the planned VM.
fn qemu_boot(p: &Planned, kit: Option<&vesper_guest_kit::Kit>) -> Result<Boot, String> {
    Ok(match &p.plan {
        BootPlan::Kit {
            kernel,
            mode,
            extra,
            ..
        } => {
            let kit = kit.ok_or("the kit's test guest needs the kit")?;
            Boot::Direct {
                kernel: kernel.clone().unwrap_or_else(|| kit.kernel.clone()),
                initrd: Some(p.kit_initramfs(kit)),
                cmdline: kit_cmdline(mode, extra.as_deref()),
            }
        }
        BootPlan::Kernel {
            kernel,
            initrd,
            cmdline,
        } => Boot::Direct {
            kernel: kernel.clone(),
            initrd: Some(initrd.clone()),
            cmdline: cmdline.clone(),
        },
        BootPlan::Firmware(FirmwareKind::Bios) => Boot::Firmware(Firmware::Bios),
        BootPlan::Firmware(FirmwareKind::Uefi) => Boot::Firmware(vesper_qemu::uefi_firmware(
            &vesper_api::run_dir::uefi_vars(&p.dir),
        )?),
    })
}

/// Starts QEMU for the planned VM, with an ivshmem server for it.
pub(crate) fn launch_qemu(
    p: &Planned,
    kit: Option<&vesper_guest_kit::Kit>,
    accel: &vesper_api::AccelChoice,
    pause_on_panic: bool,
) -> Result<Launched, String> {
    let dir = &p.dir;
    let boot = qemu_boot(p, kit)?;
    let transport = IvshmemTransport::new(
        &p.name,
        &vesper_api::run_dir::ivshmem_socket(dir),
        vesper_shared_abi::DEFAULT_REGION_SIZE,
    )
    .map_err(|e| e.to_string())?;
    // A QEMU that was killed leaves its gdbstub socket behind, and a new one cannot
    // bind over it.
    let _ = std::fs::remove_file(vesper_api::run_dir::qemu_gdb_socket(dir));
    let spec = VmSpec {
        name: p.name.clone(),
        boot,
        disks: p.def.disks.clone(),
        nets: p.def.nets.clone(),
        extra_args: p.def.qemu_args.clone(),
        memory_mib: p.def.memory_mib,
        cpus: p.def.cpus,
        accel: accel.accel,
        ivshmem_socket: vesper_api::run_dir::ivshmem_socket(dir),
        ivshmem_vectors: vesper_ivshmem::transport_vectors() as u32,
        serial_socket: vesper_api::run_dir::console_socket(dir),
        qmp_socket: vesper_api::run_dir::qmp_socket(dir),
        qmp_events_socket: vesper_api::run_dir::qmp_events_socket(dir),
        gdb_socket: vesper_api::run_dir::qemu_gdb_socket(dir),
        pvpanic: true,
        pause_on_panic,
        allow_reboot: p.def.allow_reboot,
    };
    let qemu_log_path = vesper_api::run_dir::qemu_log(dir);
    let qemu_log = std::fs::File::create(&qemu_log_path)
        .map_err(|e| format!("cannot create qemu.log: {e}"))?;
    let qemu_err = qemu_log.try_clone().map_err(|e| e.to_string())?;
    let child = tokio::process::Command::new("qemu-system-x86_64")
        .args(spec.args())
        .stdin(Stdio::null())
        .stdout(qemu_log)
        .stderr(qemu_err)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            format!("cannot run qemu-system-x86_64 ({e}); install the qemu-system-x86 package")
        })?;
    Ok(Launched {
        link: Link::Ivshmem(transport),
        pid: child.id().unwrap_or(0),
        process: Process::Child(child),
        log: Some(qemu_log_path),
        console_input: None,
    })
}

/// The builtin VMM runs on KVM only, and boots a stock Linux kernel only where KVM is
/// hardware-backed (`--accel kvm` insists anyway, to see how far it gets).
pub(crate) fn builtin_accel(p: &Planned) -> Result<vesper_api::AccelChoice, String> {
    use vesper_hypervisor::KvmBacking;
    let backing = KvmBacking::detect();
    if let KvmBacking::Unavailable(why) = &backing {
        return Err(format!(
            "the builtin VMM needs /dev/kvm: {why}; use --vmm qemu (it falls back to TCG)"
        ));
    }
    let accel = p.def.accel;
    if accel == vesper_api::AccelRequest::Tcg {
        return Err("the builtin VMM runs on KVM only; use --vmm qemu for TCG".into());
    }
    let linux = !matches!(p.plan, BootPlan::Kit { mini: true, .. });
    if let (true, Some(problem), vesper_api::AccelRequest::Auto) =
        (linux, backing.linux_problem(), accel)
    {
        return Err(format!(
            "{problem}, so the builtin VMM cannot boot Linux here; use --vmm qemu (TCG), \
             --kernel mini (the kit's mini frontend), or --accel kvm to try anyway"
        ));
    }
    let reason = match backing {
        KvmBacking::Hardware(module) => format!("builtin VMM on hardware KVM ({module})"),
        KvmBacking::Paravirtual => "builtin VMM on the paravirtual kvm_pvm".into(),
        _ => "builtin VMM on KVM".into(),
    };
    Ok(vesper_api::AccelChoice {
        accel: vesper_qemu::Accel::Kvm,
        reason,
    })
}

/// Builds and boots a guest in vesperd's own VMM. Its pvpanic and reset reports go
/// straight onto the event bus, named as QEMU names them.
pub(crate) async fn launch_builtin(
    daemon: &Shared,
    p: &Planned,
    kit: &vesper_guest_kit::Kit,
    console: &Path,
    status: &Arc<Mutex<VmStatus>>,
) -> Result<Launched, String> {
    use vesper_builtin::{BootImage, Machine, MachineEvent, MachineSpec};
    let BootPlan::Kit {
        kernel,
        mini,
        mode,
        extra,
        ..
    } = &p.plan
    else {
        return Err("the builtin VMM boots the kit's initramfs only; use --vmm qemu".into());
    };
    let cmdline = crate::launch::kit_cmdline(mode, extra.as_deref());
    let boot = if *mini {
        BootImage::Elf {
            path: kit.mini_frontend.clone(),
            cmdline,
        }
    } else {
        BootImage::Linux {
            kernel: kernel.clone().unwrap_or_else(|| kit.kernel.clone()),
            initramfs: Some(p.kit_initramfs(kit)),
            cmdline,
        }
    };
    let spec = MachineSpec {
        name: p.name.clone(),
        vcpus: p.def.cpus,
        memory_mib: p.def.memory_mib,
        boot,
        region_size: vesper_shared_abi::DEFAULT_REGION_SIZE,
        console_log: console.to_path_buf(),
        allow_reboot: p.def.allow_reboot,
    };
    let (bus, name, st) = (daemon.bus.clone(), p.name.clone(), status.clone());
    let sink: vesper_builtin::EventSink = Arc::new(move |event| {
        let (qemu_name, payload) = match event {
            MachineEvent::GuestPanicked => {
                ("GUEST_PANICKED", serde_json::json!({ "action": "run" }))
            }
            MachineEvent::Reset { rebooted: true } => (
                "RESET",
                serde_json::json!({ "guest": true, "reason": "guest-reset" }),
            ),
            MachineEvent::Reset { rebooted: false } => (
                "SHUTDOWN",
                serde_json::json!({ "guest": true, "reason": "guest-reset" }),
            ),
            MachineEvent::CrashLoaded => {
                return tracing::info!(guest = %name, "guest is running its crash kernel");
            }
        };
        let Some(kind) = crate::qmp_events::vm_event_kind(qemu_name) else {
            return;
        };
        let e = bus.publish(
            &name,
            kind,
            vesper_api::Source::Vmm {
                event: qemu_name.into(),
            },
            None,
            payload,
        );
        crate::events::note_failure(&st, &e);
    });
    // Building the VM reads the kernel and initramfs: off the async workers.
    let (machine, transport) = tokio::task::spawn_blocking(move || Machine::start(&spec, sink))
        .await
        .map_err(|e| format!("the VM builder thread failed: {e}"))?
        .map_err(|e| e.to_string())?;
    daemon.kernels.builtin_gdb.register(&p.name, &machine);
    crate::host_probes::watch_builtin(daemon, &p.name, machine.vcpu_threads());
    let (console_input, stop) = (machine.console(), machine.stop_handle());
    let (end_tx, end_rx) = oneshot::channel();
    let name = p.name.clone();
    std::thread::Builder::new()
        .name(format!("wait-{}", p.name))
        .spawn(move || {
            let end = machine.wait();
            tracing::info!(guest = %name, %end, "builtin VM ended");
            let _ = end_tx.send(end.to_string());
        })
        .map_err(|e| format!("cannot start the VM's waiter thread: {e}"))?;
    Ok(Launched {
        link: Link::Builtin(transport),
        process: Process::Builtin {
            end: Some(end_rx),
            stop,
        },
        pid: std::process::id(),
        log: None,
        console_input: Some(console_input),
    })
}
