//! Starting a QEMU VM: its command line from the kit and the request, its ivshmem
//! server, its process.

use std::path::{Path, PathBuf};
use std::process::Stdio;

use vesper_api::VmStartRequest;
use vesper_ivshmem::IvshmemTransport;
use vesper_qemu::VmSpec;

use crate::guest::{Link, Process};

/// `--kernel` value naming the kit's mini frontend.
pub(crate) const MINI_FRONTEND: &str = "mini";

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

/// Starts QEMU with the kit's (or the asked-for) kernel and an ivshmem server for it.
pub(crate) fn launch_qemu(
    a: &VmStartRequest,
    kit: &vesper_guest_kit::Kit,
    dir: &Path,
    accel: &vesper_api::AccelChoice,
    cmdline: String,
    pause_on_panic: bool,
) -> Result<Launched, String> {
    let kernel = match a.kernel.as_deref() {
        None => kit.kernel.clone(),
        Some(MINI_FRONTEND) => {
            return Err(
                "--kernel mini is a test guest for the builtin VMM; add --vmm builtin".into(),
            )
        }
        Some(path) => PathBuf::from(path),
    };
    let transport = IvshmemTransport::new(
        &a.name,
        &vesper_api::run_dir::ivshmem_socket(dir),
        vesper_shared_abi::DEFAULT_REGION_SIZE,
    )
    .map_err(|e| e.to_string())?;
    // A QEMU that was killed leaves its gdbstub socket behind, and a new one cannot
    // bind over it.
    let _ = std::fs::remove_file(vesper_api::run_dir::qemu_gdb_socket(dir));
    let spec = VmSpec {
        name: a.name.clone(),
        kernel,
        initrd: kit.initramfs.clone(),
        cmdline,
        memory_mib: a.memory_mib,
        cpus: a.cpus,
        accel: accel.accel,
        ivshmem_socket: vesper_api::run_dir::ivshmem_socket(dir),
        ivshmem_vectors: vesper_ivshmem::transport_vectors() as u32,
        serial_socket: vesper_api::run_dir::console_socket(dir),
        qmp_socket: vesper_api::run_dir::qmp_socket(dir),
        qmp_events_socket: vesper_api::run_dir::qmp_events_socket(dir),
        gdb_socket: vesper_api::run_dir::qemu_gdb_socket(dir),
        pvpanic: true,
        pause_on_panic,
        allow_reboot: a.allow_reboot,
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
