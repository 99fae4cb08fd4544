//! `vm start`, step by step: the definition (given, or as the VM is defined in the run
//! directory), the checks that refuse a bad VM before anything runs, the launch, and
//! the guest's task.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use vesper_api::{ApiError, ErrorCode, Reply, Response, VmStartRequest, VmStatus, Vmm};
use vesper_core::Session;
use vesper_qemu::choose_accel;
use vesper_vmdef::BootPlan;

use crate::daemon::{valid_name, Shared};
use crate::guest::{GuestHandle, GuestTask, Link};
use crate::launch::{builtin_accel, launch_builtin, launch_qemu, Launched, Planned};
use crate::persist::{Channels, VmRecord};
use crate::relay::RelayStore;
use crate::vm_lifecycle::wait_up;

pub(crate) async fn vm_start(daemon: &Shared, a: VmStartRequest) -> Response {
    let mut p = planned(daemon, &a)?;
    refuse_fenced(&p)?;
    end_previous(daemon, &p.name).await?;
    let start_failed =
        |m: String| ApiError::new(ErrorCode::VmStartFailed, format!("{}: {m}", p.name));
    let kit = match &p.plan {
        BootPlan::Kit { .. } => {
            let kit_dir = a.kit_dir.clone().or_else(|| daemon.config.kit_dir.clone());
            Some(
                vesper_guest_kit::Kit::load(kit_dir.as_deref())
                    .map_err(|e| start_failed(e.to_string()))?,
            )
        }
        _ => None,
    };
    let accel = match p.def.vmm {
        Vmm::Qemu => choose_accel(p.def.accel).map_err(|e| start_failed(e.to_string()))?,
        Vmm::Builtin => builtin_accel(&p).map_err(start_failed)?,
    };
    std::fs::create_dir_all(&p.dir)
        .map_err(|e| start_failed(format!("cannot create {}: {e}", p.dir.display())))?;
    if let Some(kit) = &kit {
        p.tree_initramfs = with_tree_frontend(daemon, &p, kit)
            .await
            .map_err(start_failed)?;
    }
    let console = vesper_api::run_dir::console_log(&p.dir);
    let _ = std::fs::remove_file(&console);
    crate::persist::remove(&p.dir);
    let status = Arc::new(Mutex::new(VmStatus {
        name: p.name.clone(),
        state: "booting".into(),
        pid: None,
        vmm: p.def.vmm,
        accel: accel.clone(),
        guest: None,
        console_log: console.clone(),
        boot_secs: None,
        failure: None,
        memory_mib: p.def.memory_mib,
        attached: None,
        adopted: None,
        frontend: None,
    }));
    let launched = match p.def.vmm {
        Vmm::Qemu => launch_qemu(
            &p,
            kit.as_ref(),
            &accel,
            crate::debug::dumps_on_panic(daemon, &p.name),
        ),
        Vmm::Builtin => {
            let kit = kit
                .as_ref()
                .ok_or_else(|| start_failed("the builtin VMM boots the kit only".into()))?;
            launch_builtin(daemon, &p, kit, &console, &status).await
        }
    }
    .map_err(start_failed)?;
    let log = launched.log.clone();
    let qemu_console = match p.def.vmm {
        Vmm::Qemu => Some(
            connect_console(&vesper_api::run_dir::console_socket(&p.dir), &p.dir)
                .await
                .map_err(start_failed)?,
        ),
        Vmm::Builtin => None,
    };
    save_definition(&p);
    tracing::info!(guest = %p.name, vmm = %p.def.vmm, pid = launched.pid, accel = ?accel.accel, reason = %accel.reason, "VM started");
    status.lock().expect("status lock").pid = Some(launched.pid);
    if p.def.vmm == Vmm::Qemu {
        crate::host_probes::watch_qemu(daemon, &p.name, launched.pid);
    }
    let record = vm_record(&p, &accel, launched.pid);
    let (up_rx, exited_rx) = spawn_task(
        daemon,
        &p.name,
        &p.dir,
        record,
        launched,
        qemu_console,
        &status,
    );
    if a.wait_secs > 0 {
        wait_up(
            &p.name,
            a.wait_secs,
            up_rx,
            exited_rx,
            log,
            &console,
            &status,
        )
        .await?;
    }
    let st = status.lock().expect("status lock").clone();
    Ok(Reply::VmStarted(st))
}

/// A kernel tree's frontend, built (make) off the async workers.
async fn with_tree_frontend(
    daemon: &Shared,
    p: &Planned,
    kit: &vesper_guest_kit::Kit,
) -> Result<Option<std::path::PathBuf>, String> {
    let (run_dir, kit) = (daemon.config.run_dir.clone(), kit.clone());
    let q = p.clone();
    tokio::task::spawn_blocking(move || crate::launch::tree_initramfs(&run_dir, &q, &kit))
        .await
        .map_err(|e| format!("the frontend build thread failed: {e}"))?
}

/// The definition to start from, checked, with every file it names there.
fn planned(daemon: &Shared, a: &VmStartRequest) -> Result<Planned, ApiError> {
    let bad = |m: String| ApiError::new(ErrorCode::BadRequest, m);
    if !valid_name(&a.name) {
        return Err(bad(format!(
            "bad VM name {:?}: use 1-32 letters, digits, - or _",
            a.name
        )));
    }
    let dir = vesper_api::run_dir::of(&daemon.config.run_dir, &a.name);
    let def = match &a.definition {
        Some(d) => d.clone(),
        None => crate::persist::defined(&dir)
            .map_err(|e| bad(format!("{}: {e}", a.name)))?
            .unwrap_or_default(),
    };
    let plan = def
        .check(&a.name)
        .map_err(|e| bad(format!("{}: {e}", a.name)))?;
    def.check_files()
        .map_err(|e| bad(format!("{}: {e}", a.name)))?;
    if let BootPlan::Kit { tree: Some(t), .. } = &plan {
        vesper_guest_kit::KernelTree::open(t).map_err(|e| bad(format!("{}: {e}", a.name)))?;
    }
    let mut def = def;
    for d in &mut def.disks {
        d.format = Some(vesper_qemu::inspect_disk(d).map_err(|e| bad(format!("{}: {e}", a.name)))?);
    }
    Ok(Planned {
        name: a.name.clone(),
        def,
        plan,
        dir,
        tree_initramfs: None,
    })
}

/// Writes the definition this start used: the next plain `vm start`, an adoption and
/// the failover engine start the same VM.
fn save_definition(p: &Planned) {
    let path = vesper_api::run_dir::definition(&p.dir);
    let mut def = p.def.clone();
    def.name = Some(p.name.clone());
    let text = format!(
        "# How vesperd started {}; `vesper vm start {}` with no flags starts it so again.\n{}",
        p.name,
        p.name,
        vesper_vmdef::to_toml(&def)
    );
    let tmp = vesper_api::run_dir::partial(&path);
    if let Err(e) = std::fs::write(&tmp, text).and_then(|()| std::fs::rename(&tmp, &path)) {
        tracing::warn!(guest = %p.name, "cannot save {}: {e}", path.display());
    }
}

fn refuse_fenced(p: &Planned) -> Result<(), ApiError> {
    let fence_mark = vesper_api::run_dir::fence_mark(&p.dir);
    if !fence_mark.exists() {
        return Ok(());
    }
    Err(ApiError::new(
        ErrorCode::Fenced,
        format!(
            "{}: fenced on this host ({}); it starts here again once unfenced (`vesper vm unfence {}`, or the cluster's unfencing: fence_vesper -o on)",
            p.name,
            fence_mark.display(),
            p.name
        ),
    ))
}

/// Refuses a name that runs; waits for an ended VM of that name to wind up, since it
/// still holds its run directory's sockets (its clean-up would remove the new VM's).
pub(crate) async fn end_previous(daemon: &Shared, name: &str) -> Result<(), ApiError> {
    let ended = {
        let mut guests = daemon.guests.lock().expect("guests lock");
        if let Some(g) = guests.get(name) {
            if !*g.exited.borrow() {
                return Err(ApiError::new(
                    ErrorCode::GuestExists,
                    format!("a VM named {name} is already running"),
                ));
            }
        }
        guests.remove(name)
    };
    if let Some(stop) = ended.and_then(|mut g| g.stop.take()) {
        let (ack, done) = oneshot::channel();
        if stop.send(ack).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
    }
    Ok(())
}

/// Connects vesperd's one console client to QEMU's serial `socket` (QEMU waits for it
/// before it starts the guest), logging to the console log of the VM directory `dir`.
pub(crate) async fn connect_console(
    socket: &std::path::Path,
    dir: &std::path::Path,
) -> Result<Arc<crate::console::QemuConsole>, String> {
    let c = crate::console::QemuConsole::new(socket, &vesper_api::run_dir::console_log(dir));
    c.connect(crate::console::CONNECT_PATIENCE)
        .await
        .map_err(|e| {
            format!(
                "cannot connect to QEMU's serial console {}: {e} (see {}:\n{})",
                socket.display(),
                vesper_api::run_dir::qemu_log(dir).display(),
                crate::vm_lifecycle::tail(&vesper_api::run_dir::qemu_log(dir), 5)
            )
        })?;
    Ok(c)
}

type UpWatch = watch::Receiver<Option<vesper_core::GuestInfo>>;

/// What vm.json says of a VM this vesperd starts.
fn vm_record(p: &Planned, accel: &vesper_api::AccelChoice, pid: u32) -> VmRecord {
    let builtin = p.def.vmm == Vmm::Builtin;
    VmRecord {
        name: p.name.clone(),
        pid,
        start_time: if builtin {
            0
        } else {
            crate::persist::proc_start(pid).map(|s| s.0).unwrap_or(0)
        },
        memory_mib: p.def.memory_mib,
        cpus: p.def.cpus,
        accel: accel.clone(),
        mode: p.mode(),
        console_log: vesper_api::run_dir::console_log(&p.dir),
        console_sock: vesper_api::run_dir::console_socket(&p.dir),
        qmp: vesper_api::run_dir::qmp_socket(&p.dir),
        qmp_events: vesper_api::run_dir::qmp_events_socket(&p.dir),
        region_size: vesper_shared_abi::DEFAULT_REGION_SIZE,
        guest: None,
        builtin,
        attached: None,
    }
}

/// Records the VM (`record`, in its directory `dir`) for adoption and starts the task
/// that serves its session: a VM this vesperd started, or one it attached.
pub(crate) fn spawn_task(
    daemon: &Shared,
    name: &str,
    dir: &std::path::Path,
    record: VmRecord,
    launched: Launched,
    console: Option<Arc<crate::console::QemuConsole>>,
    status: &Arc<Mutex<VmStatus>>,
) -> (UpWatch, watch::Receiver<bool>) {
    let Launched {
        link,
        process,
        console_input,
        ..
    } = launched;
    let qmp = record.qmp.clone();
    let qmp_events = record.qmp_events.clone();
    record.save(dir);
    let session = Session::new(crate::guest::GuestTask::config(
        daemon.config.step_timeout,
        daemon.config.max_image_size,
    ));
    // A builtin VM's guest may grant frames of its RAM; only this transport reads them.
    let session = match &link {
        Link::Builtin(t) => session.with_guest_frames(t.guest_frames()),
        _ => session,
    };
    let (up_tx, up_rx) = watch::channel(None);
    let (exited_tx, exited_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = oneshot::channel();
    let relay = Arc::new(Mutex::new(RelayStore::new(name)));
    let task = GuestTask {
        name: name.to_string(),
        session,
        transport: link,
        child: process,
        dir: dir.to_path_buf(),
        record,
        channels: Channels::default(),
        status: status.clone(),
        up: up_tx,
        exited: exited_tx,
        started: Instant::now(),
        qmp,
        relay: relay.clone(),
        self_tx: tx.downgrade(),
        clock_sync: None,
        bus: daemon.bus.clone(),
        qmp_events,
        on_panic: crate::debug::panic_hook(daemon, name),
    };
    tokio::spawn(task.run(rx, stop_rx));
    daemon.guests.lock().expect("guests lock").insert(
        name.to_string(),
        GuestHandle {
            tx,
            status: status.clone(),
            up: up_rx.clone(),
            exited: exited_rx.clone(),
            stop: Some(stop_tx),
            relay,
            console,
            builtin_console: console_input,
        },
    );
    (up_rx, exited_rx)
}
