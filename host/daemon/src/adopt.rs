//! Adopting the VMs an earlier vesperd left running in the run directory (after a
//! restart or a detach): their records, control sessions and relay positions.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::{mpsc, oneshot, watch};
use vesper_api::VmStatus;
use vesper_core::Session;

use crate::daemon::Shared;

use crate::guest::{GuestHandle, GuestTask, Link, Process};
use crate::persist::{Channels, VmRecord};
use crate::relay::RelayStore;

/// What an adopted VM lacks, shown by `vm list`.
pub(crate) const ADOPTED: &str =
    "adopted: no doorbells (QEMU cannot re-attach to a new ivshmem server); polling until QEMU restarts";

/// Finds the VMs an earlier vesperd left running in this run directory and takes them
/// over (see README.md: daemon restart); an attached VM's QMP (its user's socket, or
/// libvirt) is reached again first.
pub(crate) async fn adopt_all(daemon: &Shared) {
    let Ok(dirs) = std::fs::read_dir(vesper_api::run_dir::guests_dir(&daemon.config.run_dir))
    else {
        return;
    };
    for dir in dirs.flatten().map(|d| d.path()) {
        if !vesper_api::run_dir::vm_record(&dir).exists() {
            continue;
        }
        let record = match VmRecord::load(&dir) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("ignoring {}/vm.json: {e}", dir.display());
                crate::persist::remove(&dir);
                continue;
            }
        };
        if !crate::persist::alive(record.pid, record.start_time)
            || !crate::persist::is_qemu(record.pid)
        {
            tracing::info!(guest = %record.name, pid = record.pid, "QEMU of a previous vesperd is gone; forgetting it");
            crate::persist::remove(&dir);
            continue;
        }
        let name = record.name.clone();
        let attached = match &record.attached {
            Some(_) => match crate::attached_vm::reattach(&record).await {
                Ok(p) => Some(p),
                Err(e) => {
                    tracing::warn!(guest = %name, "cannot adopt the attached VM (it runs on without Vesper): {e}");
                    crate::persist::remove(&dir);
                    continue;
                }
            },
            None => None,
        };
        if let Err(e) = adopt(daemon, &dir, record, attached) {
            tracing::warn!(guest = %name, "cannot adopt the running VM: {e}");
        }
    }
}

/// Takes over the VM of `record` (`attached`: one Vesper did not start, reached again).
pub(crate) fn adopt(
    daemon: &Shared,
    dir: &Path,
    record: VmRecord,
    attached: Option<crate::attached_vm::AttachedProcess>,
) -> Result<(), String> {
    let file = crate::persist::open_region(record.pid)?;
    let size = file.metadata().map_err(|e| e.to_string())?.len();
    if size != record.region_size {
        return Err(format!(
            "region is {size} bytes, vm.json says {}",
            record.region_size
        ));
    }
    let region = vesper_shmem::SharedRegion::map(file, size).map_err(|e| e.to_string())?;
    let config = GuestTask::config(daemon.config.step_timeout, daemon.config.max_image_size);
    // Generation 0 is never a live frontend's: without a known hello, start afresh.
    let known = record.guest.clone().unwrap_or(vesper_core::GuestInfo {
        kernel_release: String::new(),
        vermagic: String::new(),
        nr_cpus: 0,
        region_size: size,
        generation: 0,
    });
    let mut session = Session::resume(config, &region, known);
    let relay = Arc::new(Mutex::new(RelayStore::new(&record.name)));
    for (module, text) in crate::persist::Layouts::load(dir).0 {
        match vesper_relay::layout::RecordLayout::parse(&text) {
            Ok(l) => relay
                .lock()
                .expect("relay lock")
                .set_layout(&module, Some(l)),
            Err(e) => {
                tracing::warn!(guest = %record.name, %module, "record layout not restored: {e}")
            }
        }
    }
    let mut channels = Channels::load(dir);
    if session.guest().is_some() {
        let mut kept = Channels::default();
        for req in channels.requests() {
            match session.resume_channel(&region, &req) {
                Ok(spec) => {
                    tracing::info!(guest = %record.name, module = %spec.module, channel = %spec.name, "relay channel resumed");
                    kept.insert(&req);
                    relay.lock().expect("relay lock").opened(Arc::new(spec));
                }
                Err(e) => {
                    tracing::warn!(guest = %record.name, "relay channel not resumed: {e}")
                }
            }
        }
        channels = kept;
    } else {
        channels = Channels::default();
    }
    channels.save(dir);
    let info = session.guest().cloned();
    let status = Arc::new(Mutex::new(VmStatus {
        name: record.name.clone(),
        state: if info.is_some() { "up" } else { "booting" }.into(),
        pid: Some(record.pid),
        vmm: vesper_api::Vmm::Qemu,
        accel: record.accel.clone(),
        guest: info.clone(),
        console_log: record.console_log.clone(),
        boot_secs: None,
        failure: None,
        memory_mib: record.memory_mib,
        attached: attached
            .as_ref()
            .and(record.attached.as_ref())
            .map(|a| crate::attached_vm::view(a, record.pid, &record.qmp)),
        adopted: Some(ADOPTED.into()),
        frontend: None,
    }));
    let mut record = record;
    record.guest = info.clone();
    record.save(dir);
    let (record_console_sock, status_console_log) =
        (record.console_sock.clone(), record.console_log.clone());
    let (up_tx, up_rx) = watch::channel(info.clone());
    let (exited_tx, exited_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(16);
    let (stop_tx, stop_rx) = oneshot::channel();
    let name = record.name.clone();
    tracing::info!(guest = %name, pid = record.pid, resumed = info.is_some(), "adopted a running VM (no doorbells: polling)");
    crate::host_probes::watch_qemu(daemon, &name, record.pid);
    let mut task = GuestTask {
        name: name.clone(),
        transport: Link::Adopted(region),
        session,
        child: match attached {
            Some(a) => Process::Attached(a),
            None => Process::Adopted {
                pid: record.pid,
                start_time: record.start_time,
            },
        },
        dir: dir.to_path_buf(),
        qmp: record.qmp.clone(),
        qmp_events: record.qmp_events.clone(),
        record,
        channels,
        status: status.clone(),
        up: up_tx,
        exited: exited_tx,
        started: Instant::now(),
        relay: relay.clone(),
        self_tx: tx.downgrade(),
        clock_sync: None,
        bus: daemon.bus.clone(),
        on_panic: crate::debug::panic_hook(daemon, &name),
    };
    if info.is_some() {
        task.clock_sync = Some(tokio::spawn(crate::guest::clock_sync(
            tx.downgrade(),
            relay.clone(),
            name.clone(),
        )));
    }
    // Back on the console at once: QEMU drops what the guest prints with no client.
    // (An attached VM may have none vesperd keeps.)
    let adopted_console = (!record_console_sock.as_os_str().is_empty()).then(|| {
        let c = crate::console::QemuConsole::new(&record_console_sock, &status_console_log);
        let connecting = c.clone();
        tokio::spawn(async move {
            if let Err(e) = connecting.connect(std::time::Duration::ZERO).await {
                tracing::warn!("serial console of an adopted VM not reconnected: {e}");
            }
        });
        c
    });
    tokio::spawn(task.run(rx, stop_rx));
    daemon.guests.lock().expect("guests lock").insert(
        name,
        GuestHandle {
            tx,
            status,
            up: up_rx,
            exited: exited_rx,
            stop: Some(stop_tx),
            relay,
            console: adopted_console,
            builtin_console: None,
        },
    );
    Ok(())
}
