//! The end every `vm attach` shares, however the VM was reached (QMP, libvirt): what
//! QEMU says of the machine, the VM's status and vm.json record, its console, and its
//! guest task (`vm_start::spawn_task`, as for a VM vesperd starts), then the wait for the
//! frontend's hello.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use vesper_api::{ApiError, ErrorCode, Reply, Response, VmStatus, Vmm};

use crate::attached_vm::{AttachedProcess, Owner};
use crate::daemon::Shared;
use crate::guest::{Link, Process};
use crate::launch::Launched;
use crate::persist::{AttachedRecord, VmRecord};

/// What QEMU says of its machine.
#[derive(Debug, Clone)]
pub(crate) struct Facts {
    pub(crate) accel: vesper_api::AccelChoice,
    pub(crate) memory_mib: u32,
    pub(crate) cpus: u32,
}

/// The machine's accelerator, RAM and vCPUs over QMP (`q`: vesperd's QMP socket of it).
pub(crate) fn facts(q: &mut vesper_qemu::Qmp) -> Result<Facts, vesper_qemu::QemuError> {
    let kvm = q.execute("query-kvm", None)?;
    let mem = q.execute("query-memory-size-summary", None)?;
    let cpus = q.execute("query-cpus-fast", None)?;
    let on_kvm = kvm["enabled"] == true;
    Ok(Facts {
        accel: vesper_api::AccelChoice {
            accel: if on_kvm {
                vesper_qemu::Accel::Kvm
            } else {
                vesper_qemu::Accel::Tcg
            },
            reason: format!(
                "attached: QEMU runs {} (query-kvm)",
                if on_kvm {
                    "on KVM"
                } else {
                    "without KVM (TCG)"
                }
            ),
        },
        memory_mib: (mem["base-memory"].as_u64().unwrap_or(0) >> 20) as u32,
        cpus: cpus.as_array().map_or(0, |c| c.len() as u32),
    })
}

/// A VM reached and plugged, ready for its task.
pub(crate) struct Attaching {
    pub(crate) name: String,
    pub(crate) dir: PathBuf,
    pub(crate) pid: u32,
    pub(crate) start_time: u64,
    pub(crate) facts: Facts,
    pub(crate) link: Link,
    pub(crate) owner: Owner,
    pub(crate) mux: crate::qmp_mux::QmpMux,
    pub(crate) record: AttachedRecord,
    /// QEMU's serial console socket, if vesperd is to keep it.
    pub(crate) console: Option<PathBuf>,
    pub(crate) wait_secs: u64,
}

/// Starts the attached VM's task and waits for its frontend.
pub(crate) async fn start(daemon: &Shared, at: Attaching) -> Response {
    let Attaching {
        name,
        dir,
        pid,
        start_time,
        facts,
        link,
        owner,
        mux,
        record,
        console,
        wait_secs,
    } = at;
    let qmp = vesper_api::run_dir::qmp_socket(&dir);
    let console_log = vesper_api::run_dir::console_log(&dir);
    let _ = std::fs::remove_file(&console_log);
    let status = Arc::new(Mutex::new(VmStatus {
        name: name.clone(),
        state: "booting".into(),
        pid: Some(pid),
        vmm: Vmm::Qemu,
        accel: facts.accel.clone(),
        guest: None,
        console_log: console_log.clone(),
        boot_secs: None,
        failure: None,
        memory_mib: facts.memory_mib,
        attached: Some(crate::attached_vm::view(&record, pid, &qmp)),
        adopted: None,
        frontend: None,
    }));
    // The console is a convenience (`vm send`, console.log): attaching goes on without.
    let qemu_console = match &console {
        Some(socket) => match crate::vm_start::connect_console(socket, &dir).await {
            Ok(c) => Some(c),
            Err(e) => {
                tracing::warn!(guest = %name, "attached without its serial console: {e}");
                None
            }
        },
        None => None,
    };
    let vm_record = VmRecord {
        name: name.clone(),
        pid,
        start_time,
        memory_mib: facts.memory_mib,
        cpus: facts.cpus,
        accel: facts.accel.clone(),
        mode: "-".into(),
        console_log: console_log.clone(),
        console_sock: console.clone().unwrap_or_default(),
        qmp: qmp.clone(),
        qmp_events: vesper_api::run_dir::qmp_events_socket(&dir),
        region_size: vesper_shared_abi::DEFAULT_REGION_SIZE,
        guest: None,
        builtin: false,
        attached: Some(record),
    };
    let launched = Launched {
        link,
        process: Process::Attached(AttachedProcess {
            pid,
            start_time,
            owner,
            _mux: Some(mux),
        }),
        pid,
        log: None,
        console_input: None,
    };
    tracing::info!(guest = %name, pid, accel = ?facts.accel.accel, "VM attached");
    crate::host_probes::watch_qemu(daemon, &name, pid);
    let (up_rx, exited_rx) = crate::vm_start::spawn_task(
        daemon,
        &name,
        &dir,
        vm_record,
        launched,
        qemu_console,
        &status,
    );
    if wait_secs > 0 {
        crate::vm_lifecycle::wait_up(
            &name,
            wait_secs,
            up_rx,
            exited_rx,
            None,
            &console_log,
            &status,
        )
        .await
        .map_err(|e| {
            ApiError::new(
                e.code,
                format!(
                    "{name} is attached (`vesper vm detach {name}` lets go of it), but: {}",
                    e.message
                ),
            )
        })?;
    }
    let st = status.lock().expect("status lock").clone();
    Ok(Reply::VmAttached(st))
}

/// A name for an attached VM: valid, not fenced here, not running; its directory made.
/// Returns the directory and whether this attach created it (to remove it again if
/// the attach fails).
pub(crate) async fn prepare(daemon: &Shared, name: &str) -> Result<(PathBuf, bool), ApiError> {
    if !crate::daemon::valid_name(name) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("bad VM name {name:?}: use 1-32 letters, digits, - or _"),
        ));
    }
    let dir = vesper_api::run_dir::of(&daemon.config.run_dir, name);
    if vesper_api::run_dir::fence_mark(&dir).exists() {
        return Err(ApiError::new(
            ErrorCode::Fenced,
            format!("{name}: fenced on this host; unfence it first (`vesper vm unfence {name}`)"),
        ));
    }
    crate::vm_start::end_previous(daemon, name).await?;
    let created = !dir.exists();
    std::fs::create_dir_all(&dir).map_err(|e| {
        ApiError::new(
            ErrorCode::Internal,
            format!("{name}: cannot create {}: {e}", dir.display()),
        )
    })?;
    Ok((dir, created))
}

/// After a failed attach: the VM's directory goes again if this attach made it and
/// nothing else is in it (the sockets went with the mux and the ivshmem server).
pub(crate) fn undo_dir(dir: &Path, created: bool) {
    // The mux and the ivshmem server unlink their sockets as they are dropped, before.
    if created {
        let _ = std::fs::remove_dir(dir);
    }
}
