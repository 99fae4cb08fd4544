//! A VM's life: `vm start` (QEMU or the builtin VMM), `vm send` to its console, and
//! `vm stop`, which returns once the VM process is gone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use vesper_api::{ApiError, ErrorCode, Reply, Response, VmStartRequest, VmStatus, Vmm};
use vesper_core::Session;
use vesper_qemu::choose_accel;

use crate::daemon::{unknown_guest, valid_name, Shared};
use crate::launch::MINI_FRONTEND;

use crate::guest::{GuestHandle, GuestTask, Link, Process};
use crate::launch::{launch_qemu, Launched};
use crate::persist::{Channels, VmRecord};
use crate::relay::RelayStore;

pub(crate) async fn vm_start(daemon: &Shared, a: VmStartRequest) -> Response {
    let bad = |m: String| Err(ApiError::new(ErrorCode::BadRequest, m));
    if !valid_name(&a.name) {
        return bad(format!(
            "bad VM name {:?}: use 1-32 letters, digits, - or _",
            a.name
        ));
    }
    if !valid_name(&a.mode) {
        return bad(format!("bad init mode {:?}", a.mode));
    }
    if a.memory_mib < 128 || a.memory_mib > 65536 || a.cpus == 0 || a.cpus > 64 {
        return bad(format!(
            "memory {} MiB / {} vCPUs out of range (128-65536 MiB, 1-64 vCPUs)",
            a.memory_mib, a.cpus
        ));
    }
    let fence_mark =
        vesper_api::run_dir::fence_mark(&vesper_api::run_dir::of(&daemon.config.run_dir, &a.name));
    if fence_mark.exists() {
        return Err(ApiError::new(
            ErrorCode::Fenced,
            format!(
                "{}: fenced on this host ({}); it starts here again once unfenced (`vesper vm unfence {}`, or the cluster's unfencing: fence_vesper -o on)",
                a.name,
                fence_mark.display(),
                a.name
            ),
        ));
    }
    let ended = {
        let mut guests = daemon.guests.lock().expect("guests lock");
        if let Some(g) = guests.get(&a.name) {
            if !*g.exited.borrow() {
                return Err(ApiError::new(
                    ErrorCode::GuestExists,
                    format!("a VM named {} is already running", a.name),
                ));
            }
        }
        guests.remove(&a.name)
    };
    // The VM that ended under this name still holds its run directory's sockets until
    // its task winds up: wait for that, or its clean-up removes the new VM's sockets.
    if let Some(stop) = ended.and_then(|mut g| g.stop.take()) {
        let (ack, done) = oneshot::channel();
        if stop.send(ack).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(10), done).await;
        }
    }
    let start_failed =
        |m: String| ApiError::new(ErrorCode::VmStartFailed, format!("{}: {m}", a.name));
    let kit_dir = a.kit_dir.clone().or_else(|| daemon.config.kit_dir.clone());
    let kit =
        vesper_guest_kit::Kit::load(kit_dir.as_deref()).map_err(|e| start_failed(e.to_string()))?;
    let accel = match a.vmm {
        Vmm::Qemu => choose_accel(a.accel).map_err(|e| start_failed(e.to_string()))?,
        Vmm::Builtin => builtin_accel(&a).map_err(start_failed)?,
    };
    let dir = vesper_api::run_dir::of(&daemon.config.run_dir, &a.name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| start_failed(format!("cannot create {}: {e}", dir.display())))?;
    let console = vesper_api::run_dir::console_log(&dir);
    let qmp = vesper_api::run_dir::qmp_socket(&dir);
    let _ = std::fs::remove_file(&console);
    crate::persist::remove(&dir);
    let mut cmdline = format!("console=ttyS0 panic=-1 vesper.mode={}", a.mode);
    if let Some(extra) = &a.extra_cmdline {
        cmdline.push(' ');
        cmdline.push_str(extra);
    }
    let status = Arc::new(Mutex::new(VmStatus {
        name: a.name.clone(),
        state: "booting".into(),
        pid: None,
        vmm: a.vmm,
        accel: accel.clone(),
        guest: None,
        console_log: console.clone(),
        boot_secs: None,
        failure: None,
        memory_mib: a.memory_mib,
        adopted: None,
    }));
    let launched = match a.vmm {
        Vmm::Qemu => launch_qemu(
            &a,
            &kit,
            &dir,
            &accel,
            cmdline,
            crate::debug::dumps_on_panic(daemon, &a.name),
        ),
        Vmm::Builtin => launch_builtin(daemon, &a, &kit, &console, cmdline, &status).await,
    }
    .map_err(start_failed)?;
    let Launched {
        link,
        process,
        pid,
        log,
        console_input,
    } = launched;
    // QEMU waits for its console client before it starts the guest.
    let qemu_console = match a.vmm {
        Vmm::Qemu => {
            let c = crate::console::QemuConsole::new(
                &vesper_api::run_dir::console_socket(&dir),
                &console,
            );
            if let Err(e) = c.connect(crate::console::CONNECT_PATIENCE).await {
                return Err(start_failed(format!(
                    "cannot connect to QEMU's serial console {}: {e} (see {})",
                    vesper_api::run_dir::console_socket(&dir).display(),
                    vesper_api::run_dir::qemu_log(&dir).display()
                )));
            }
            Some(c)
        }
        Vmm::Builtin => None,
    };
    tracing::info!(guest = %a.name, vmm = %a.vmm, pid, accel = ?accel.accel, reason = %accel.reason, "VM started");
    status.lock().expect("status lock").pid = Some(pid);
    if a.vmm == Vmm::Qemu {
        crate::host_probes::watch_qemu(daemon, &a.name, pid);
    }
    let (up_tx, mut up_rx) = watch::channel(None);
    let (exited_tx, mut exited_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = oneshot::channel();
    let relay = Arc::new(Mutex::new(RelayStore::new(&a.name)));
    let builtin = a.vmm == Vmm::Builtin;
    let record = VmRecord {
        name: a.name.clone(),
        pid,
        start_time: if builtin {
            0
        } else {
            crate::persist::proc_start(pid).map(|s| s.0).unwrap_or(0)
        },
        memory_mib: a.memory_mib,
        cpus: a.cpus,
        accel: accel.clone(),
        mode: a.mode.clone(),
        console_log: console.clone(),
        console_sock: vesper_api::run_dir::console_socket(&dir),
        qmp: qmp.clone(),
        qmp_events: vesper_api::run_dir::qmp_events_socket(&dir),
        region_size: vesper_shared_abi::DEFAULT_REGION_SIZE,
        guest: None,
        builtin,
    };
    record.save(&dir);
    let session = Session::new(GuestTask::config(
        daemon.config.step_timeout,
        daemon.config.max_image_size,
    ));
    // A builtin VM's guest may grant frames of its RAM; only this transport reads them.
    let session = match &link {
        Link::Builtin(t) => session.with_guest_frames(t.guest_frames()),
        _ => session,
    };
    let task = GuestTask {
        name: a.name.clone(),
        session,
        transport: link,
        child: process,
        dir: dir.clone(),
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
        qmp_events: vesper_api::run_dir::qmp_events_socket(&dir),
        on_panic: crate::debug::panic_hook(daemon, &a.name),
    };
    tokio::spawn(task.run(rx, stop_rx));
    daemon.guests.lock().expect("guests lock").insert(
        a.name.clone(),
        GuestHandle {
            tx,
            status: status.clone(),
            up: up_rx.clone(),
            exited: exited_rx.clone(),
            stop: Some(stop_tx),
            relay,
            console: qemu_console,
            builtin_console: console_input,
        },
    );
    if a.wait_secs > 0 {
        let wait = async {
            tokio::select! {
                r = up_rx.wait_for(Option::is_some) => r.map(|_| true).unwrap_or(false),
                _ = exited_rx.wait_for(|e| *e) => false,
            }
        };
        match tokio::time::timeout(Duration::from_secs(a.wait_secs), wait).await {
            Ok(true) => {}
            Ok(false) => {
                let end = match &log {
                    Some(log) => format!("QEMU exited during boot.\nqemu.log:\n{}", tail(log, 10)),
                    None => format!(
                        "the VM ended during boot: {}",
                        status
                            .lock()
                            .expect("status lock")
                            .failure
                            .as_ref()
                            .map(|f| f.summary.clone())
                            .unwrap_or_else(|| "see the daemon log".into())
                    ),
                };
                return Err(start_failed(format!(
                    "{end}\nconsole tail:\n{}",
                    tail(&console, 15)
                )))
            }
            Err(_) => {
                return Err(ApiError::new(
                    ErrorCode::Timeout,
                    format!(
                        "{}: the Vesper frontend did not connect within {} s (VM left running; `vesper vm stop {}`).\nconsole tail:\n{}",
                        a.name,
                        a.wait_secs,
                        a.name,
                        tail(&console, 15)
                    ),
                ))
            }
        }
    }
    let st = status.lock().expect("status lock").clone();
    Ok(Reply::VmStarted(st))
}

/// The builtin VMM runs on KVM only, and boots a stock Linux kernel only where KVM is
/// hardware-backed (`--accel kvm` insists anyway, to see how far it gets).
pub(crate) fn builtin_accel(a: &VmStartRequest) -> Result<vesper_api::AccelChoice, String> {
    use vesper_hypervisor::KvmBacking;
    let backing = KvmBacking::detect();
    if let KvmBacking::Unavailable(why) = &backing {
        return Err(format!(
            "the builtin VMM needs /dev/kvm: {why}; use --vmm qemu (it falls back to TCG)"
        ));
    }
    if a.accel == vesper_api::AccelRequest::Tcg {
        return Err("the builtin VMM runs on KVM only; use --vmm qemu for TCG".into());
    }
    let linux = a.kernel.as_deref() != Some(MINI_FRONTEND);
    if let (true, Some(problem), vesper_api::AccelRequest::Auto) =
        (linux, backing.linux_problem(), a.accel)
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
    a: &VmStartRequest,
    kit: &vesper_guest_kit::Kit,
    console: &Path,
    cmdline: String,
    status: &Arc<Mutex<VmStatus>>,
) -> Result<Launched, String> {
    use vesper_builtin::{BootImage, Machine, MachineEvent, MachineSpec};
    let boot = match a.kernel.as_deref() {
        Some(MINI_FRONTEND) => BootImage::Elf {
            path: kit.mini_frontend.clone(),
            cmdline,
        },
        other => BootImage::Linux {
            kernel: other.map_or_else(|| kit.kernel.clone(), PathBuf::from),
            initramfs: Some(kit.initramfs.clone()),
            cmdline,
        },
    };
    let spec = MachineSpec {
        name: a.name.clone(),
        vcpus: a.cpus,
        memory_mib: a.memory_mib,
        boot,
        region_size: vesper_shared_abi::DEFAULT_REGION_SIZE,
        console_log: console.to_path_buf(),
        allow_reboot: a.allow_reboot,
    };
    let (bus, name, st) = (daemon.bus.clone(), a.name.clone(), status.clone());
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
    daemon.kernels.builtin_gdb.register(&a.name, &machine);
    crate::host_probes::watch_builtin(daemon, &a.name, machine.vcpu_threads());
    let (console_input, stop) = (machine.console(), machine.stop_handle());
    let (end_tx, end_rx) = oneshot::channel();
    let name = a.name.clone();
    std::thread::Builder::new()
        .name(format!("wait-{}", a.name))
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

/// Types a line into a builtin VM's 8250 (blocking: it waits for the guest to read).
pub(crate) async fn send_builtin(
    name: &str,
    line: &str,
    input: vesper_builtin::ConsoleInput,
) -> Response {
    let bytes = format!("{line}\n").into_bytes();
    match tokio::task::spawn_blocking(move || input.send(&bytes)).await {
        Ok(Ok(())) => Ok(Reply::VmSent {
            name: name.to_string(),
        }),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{name}: serial console: {e}"),
        )),
        Err(e) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
    }
}

pub(crate) async fn vm_send(daemon: &Shared, name: &str, line: &str) -> Response {
    if line.contains(['\n', '\r']) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "send one line at a time (no newline in the text)",
        ));
    }
    let (builtin, console) = {
        let guests = daemon.guests.lock().expect("guests lock");
        let g = guests
            .get(name)
            .ok_or_else(|| unknown_guest(&guests, name))?;
        if *g.exited.borrow() {
            return Err(ApiError::new(
                ErrorCode::GuestNotReady,
                format!("{name}: the VM has exited"),
            ));
        }
        (g.builtin_console.clone(), g.console.clone())
    };
    if let Some(input) = builtin {
        return send_builtin(name, line, input).await;
    }
    let console = console
        .ok_or_else(|| ApiError::new(ErrorCode::Internal, format!("{name}: no serial console")))?;
    console.send(line).await.map_err(|e| {
        ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{name}: serial console: {e}"),
        )
    })?;
    Ok(Reply::VmSent {
        name: name.to_string(),
    })
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Longest `vm stop` waits for a VM to end: its grace to quit, then the kill.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(15);

pub(crate) async fn vm_stop(daemon: &Shared, name: &str) -> Response {
    let stop = {
        let mut guests = daemon.guests.lock().expect("guests lock");
        match guests.get_mut(name) {
            Some(g) => g.stop.take(),
            None => return Err(unknown_guest(&guests, name)),
        }
    };
    let mut killed = false;
    if let Some(stop) = stop {
        let (ack, done) = oneshot::channel();
        if stop.send(ack).is_ok() {
            // The task answers once the VM process is gone (killed after its grace).
            match tokio::time::timeout(STOP_WAIT, done).await {
                Ok(Ok(outcome)) => killed = outcome.killed,
                // The task ended without answering: the VM was already gone.
                Ok(Err(_)) => {}
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        format!(
                            "{name}: the VM did not end within {} s of being told to stop and of being killed; see vesperd's log",
                            STOP_WAIT.as_secs()
                        ),
                    ))
                }
            }
        }
    }
    daemon.guests.lock().expect("guests lock").remove(name);
    crate::host_probes::unwatch(daemon, name);
    Ok(Reply::VmStopped {
        name: name.to_string(),
        killed,
    })
}

/// `vm fence` / `vm unfence` / `vm fenced`. Fencing writes the mark first, so a start racing with it
/// is refused, then stops the VM if it runs; the reply comes once it is gone.
pub(crate) async fn vm_fence(daemon: &Shared, name: &str, fenced: Option<bool>) -> Response {
    if !valid_name(name) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("bad VM name {name:?}: use 1-32 letters, digits, - or _"),
        ));
    }
    let dir = vesper_api::run_dir::of(&daemon.config.run_dir, name);
    let mark = vesper_api::run_dir::fence_mark(&dir);
    let io = |what: &str, e: std::io::Error| {
        ApiError::new(
            ErrorCode::Internal,
            format!("{name}: cannot {what} {}: {e}", mark.display()),
        )
    };
    let Some(fenced) = fenced else {
        return Ok(Reply::VmFenced {
            name: name.to_string(),
            fenced: mark.exists(),
            stopped: false,
        });
    };
    if !fenced {
        match std::fs::remove_file(&mark) {
            Ok(()) => tracing::info!(guest = %name, "unfenced"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", e)),
        }
        return Ok(Reply::VmFenced {
            name: name.to_string(),
            fenced: false,
            stopped: false,
        });
    }
    std::fs::create_dir_all(&dir).map_err(|e| io("create the directory of", e))?;
    std::fs::write(&mark, b"fenced\n").map_err(|e| io("write", e))?;
    tracing::warn!(guest = %name, "fenced: no VM of this name starts here until unfenced");
    let running = daemon
        .guests
        .lock()
        .expect("guests lock")
        .get(name)
        .is_some_and(|g| !*g.exited.borrow());
    if running {
        vm_stop(daemon, name).await?;
    }
    Ok(Reply::VmFenced {
        name: name.to_string(),
        fenced: true,
        stopped: running,
    })
}
