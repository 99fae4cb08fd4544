//! `vm attach` and `vm detach`: VMs Vesper did not start (README.md, "VMs Vesper did
//! not start"). A QEMU started by hand is reached through its QMP socket: vesperd holds
//! that connection (`qmp_mux.rs`), starts an ivshmem server for the VM in its run
//! directory as for its own VMs, and hot-plugs the Vesper device through QMP
//! (`chardev-add` of a socket to that server, then `device_add ivshmem-doorbell`); the
//! guest's frontend binds it when it appears, or when it is loaded later (a PCI driver
//! probes hot-plugged devices). A libvirt domain is `attach_libvirt.rs`. Whatever fails
//! on the way is undone: no socket, record or device is left behind.
//!
//! `vm detach` unplugs the device (`device_del`, `chardev-remove`) and forgets the VM,
//! which runs on; `vm stop` stops it as its owner would (QMP `quit`; libvirt's
//! shutdown, then destroy).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use vesper_api::{ApiError, ErrorCode, Reply, Response, VmAttachRequest};
use vesper_ivshmem::IvshmemTransport;
use vesper_qemu::{QemuError, Qmp};

use crate::attach_task::{Attaching, Facts};
use crate::attached_vm::Owner;
use crate::daemon::Shared;
use crate::guest::Link;
use crate::persist::AttachedRecord;

/// How long a detach waits for the guest to release the device.
const UNPLUG_WAIT: Duration = Duration::from_secs(10);

/// The QEMU id of an attached VM's Vesper device and of its chardev.
pub(crate) fn device_id(name: &str) -> String {
    format!("vesper-{name}")
}

/// The `-chardev`/`-device` pair that puts the Vesper device on QEMU's command line.
pub(crate) fn cold_plug_args(name: &str, ivshmem: &Path) -> String {
    let id = device_id(name);
    format!(
        "-chardev socket,id={id},path={} -device ivshmem-doorbell,chardev={id},vectors={}",
        ivshmem.display(),
        vesper_ivshmem::transport_vectors()
    )
}

/// `vm attach NAME --qmp SOCKET`.
pub(crate) async fn attach_qmp(
    daemon: &Shared,
    a: VmAttachRequest,
    socket: PathBuf,
    cold_plug: bool,
) -> Response {
    let name = a.name.clone();
    let holder = daemon
        .guests
        .lock()
        .expect("guests lock")
        .values()
        .map(|g| g.status.lock().expect("status lock").clone())
        .find(|st| {
            st.name != name
                && st
                    .attached
                    .as_ref()
                    .is_some_and(|v| v.how == "qmp" && Path::new(&v.target) == socket)
        });
    if let Some(st) = holder {
        return Err(ApiError::new(
            ErrorCode::GuestExists,
            format!(
                "{name}: {} is attached already, as {} (`vesper vm detach {}` first)",
                socket.display(),
                st.name,
                st.name
            ),
        ));
    }
    let (dir, created) = crate::attach_task::prepare(daemon, &name).await?;
    let r = reach_and_plug(&name, &dir, &socket, cold_plug, a.wait_secs).await;
    let (mux, pid, transport, facts) = match r {
        Ok(x) => x,
        Err(e) => {
            crate::attach_task::undo_dir(&dir, created);
            return Err(ApiError::new(
                ErrorCode::AttachFailed,
                format!("{name}: {e}"),
            ));
        }
    };
    let at = Attaching {
        name: name.clone(),
        dir: dir.clone(),
        pid,
        start_time: crate::persist::proc_start(pid).map_or(0, |s| s.0),
        facts,
        link: Link::Ivshmem(transport),
        owner: Owner::Qmp,
        mux,
        record: AttachedRecord::Qmp { socket },
        console: a.console.clone(),
        wait_secs: a.wait_secs,
    };
    crate::attach_task::start(daemon, at).await
}

type Plugged = (crate::qmp_mux::QmpMux, u32, IvshmemTransport, Facts);

/// Reaches QEMU over `socket`, checks it, and plugs the Vesper device (or, with
/// `cold_plug`, waits up to `wait_secs` for a QEMU starting with it on its command line).
async fn reach_and_plug(
    name: &str,
    dir: &Path,
    socket: &Path,
    cold_plug: bool,
    wait_secs: u64,
) -> Result<Plugged, String> {
    let serve = [
        vesper_api::run_dir::qmp_socket(dir),
        vesper_api::run_dir::qmp_events_socket(dir),
    ];
    let ivshmem = vesper_api::run_dir::ivshmem_socket(dir);
    let mut transport =
        IvshmemTransport::new(name, &ivshmem, vesper_shared_abi::DEFAULT_REGION_SIZE)
            .map_err(|e| format!("cannot serve the Vesper device: {e}"))?;
    let (mux, pid) = if cold_plug {
        wait_for_cold_plug(&mut transport, socket, &serve, wait_secs.max(30)).await?
    } else {
        crate::qmp_mux::serve_socket(socket, &serve).await?
    };
    if !crate::persist::is_qemu(pid) {
        return Err(format!(
            "{} is served by process {pid}, which is not qemu-system-x86_64",
            socket.display()
        ));
    }
    let qmp = serve[0].clone();
    let (name_s, ivshmem_s) = (name.to_string(), ivshmem.clone());
    let (transport, facts) = tokio::task::spawn_blocking(move || {
        let mut q = Qmp::connect(&qmp, Duration::from_secs(5)).map_err(|e| e.to_string())?;
        let facts = crate::attach_task::facts(&mut q).map_err(|e| e.to_string())?;
        if !cold_plug {
            plug(&mut q, &name_s, &ivshmem_s, &mut transport)?;
        }
        best_effort_gdbstub(&mut q, &qmp);
        Ok::<_, String>((transport, facts))
    })
    .await
    .map_err(|e| format!("the attach worker failed: {e}"))??;
    Ok((mux, pid, transport, facts))
}

/// A QEMU about to start with the Vesper device on its command line: it connects to
/// the ivshmem server at its start and waits there for the region, so the server
/// answers it at once while its QMP socket is waited for.
async fn wait_for_cold_plug(
    transport: &mut IvshmemTransport,
    socket: &Path,
    serve: &[PathBuf],
    wait_secs: u64,
) -> Result<(crate::qmp_mux::QmpMux, u32), String> {
    let deadline = Instant::now() + Duration::from_secs(wait_secs);
    let mut mux = None;
    loop {
        if !transport.connected() {
            transport.accept().map_err(|e| e.to_string())?;
        }
        // QEMU waits at its start for the region; only then does it answer QMP.
        if mux.is_none() && transport.connected() && socket.exists() {
            match crate::qmp_mux::serve_socket(socket, serve).await {
                Ok(m) => mux = Some(m),
                Err(e) if Instant::now() > deadline => return Err(e),
                Err(_) => {}
            }
        }
        if transport.connected() {
            if let Some(m) = mux.take() {
                return Ok(m);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no QEMU connected to the Vesper device's server {} and offered QMP at {} within {wait_secs} s",
                transport_path(serve),
                socket.display()
            ));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn transport_path(serve: &[PathBuf]) -> String {
    serve
        .first()
        .and_then(|p| p.parent())
        .map(|d| vesper_api::run_dir::ivshmem_socket(d).display().to_string())
        .unwrap_or_default()
}

/// QEMU's own gdbstub on the VM's `qemu-gdb.sock`, for `vesper debug gdb` (a QEMU
/// that serves one already keeps it: then `debug gdb` says there is none here).
fn best_effort_gdbstub(q: &mut Qmp, qmp: &Path) {
    let Some(dir) = qmp.parent() else { return };
    let sock = vesper_api::run_dir::qemu_gdb_socket(dir);
    let _ = std::fs::remove_file(&sock);
    let line = format!("gdbserver unix:{},server=on,wait=off", sock.display());
    match q.hmp(&line) {
        Ok(out) if out.trim().is_empty() || out.contains("Waiting") => {}
        Ok(out) => tracing::info!("no gdbstub for the attached VM: {}", out.trim()),
        Err(e) => tracing::info!("no gdbstub for the attached VM: {e}"),
    }
}

/// Hot-plugs the Vesper device: its chardev (QEMU connects to the server at once, and
/// the server hands it the region before `device_add` reads it), then the device.
fn plug(
    q: &mut Qmp,
    name: &str,
    ivshmem: &Path,
    transport: &mut IvshmemTransport,
) -> Result<(), String> {
    let id = device_id(name);
    let present = q
        .execute("qom-list", Some(json!({ "path": "/machine/peripheral" })))
        .map_err(|e| e.to_string())?;
    let taken = present
        .as_array()
        .is_some_and(|a| a.iter().any(|p| p["name"] == id.as_str()));
    if taken {
        return Err(format!(
            "QEMU already has a device {id} (attached by an earlier vesperd and not detached?); remove it through QMP (`device_del`, then `chardev-remove` of {id}) and attach again"
        ));
    }
    let chardev = free_chardev_id(q, &id);
    q.execute(
        "chardev-add",
        Some(
            json!({ "id": chardev, "backend": { "type": "socket", "data": {
            "addr": { "type": "unix", "data": { "path": ivshmem } }, "server": false } } }),
        ),
    )
    .map_err(|e| format!("QEMU refused the Vesper device's chardev: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(2);
    while !transport.connected() && Instant::now() < deadline {
        if let Err(e) = transport.accept() {
            tracing::warn!(guest = name, "ivshmem accept failed: {e}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let added = if transport.connected() {
        add_device(q, name, &chardev, ivshmem)
    } else {
        Err("QEMU's chardev did not connect to the Vesper device's server".into())
    };
    if added.is_err() {
        let _ = q.execute("chardev-remove", Some(json!({ "id": chardev })));
    }
    added
}

/// `id`, or `id-2`, `id-3`, ... : the first chardev label QEMU does not have (QEMU 7.2
/// keeps an unplugged ivshmem-doorbell's chardev busy, so a detach may leave one).
fn free_chardev_id(q: &mut Qmp, id: &str) -> String {
    let labels: Vec<String> = q
        .execute("query-chardev", None)
        .ok()
        .and_then(|v| v.as_array().cloned())
        .unwrap_or_default()
        .iter()
        .filter_map(|c| c["label"].as_str().map(str::to_string))
        .collect();
    std::iter::once(id.to_string())
        .chain((2..).map(|n| format!("{id}-{n}")))
        .find(|c| !labels.contains(c))
        .unwrap_or_else(|| id.to_string())
}

fn no_hotplug(e: &QemuError) -> bool {
    matches!(e, QemuError::QmpCommand { desc, .. } if desc.contains("does not support hotplugging"))
}

/// `device_add` of the Vesper device into the first slot that takes it
/// (`attach_slots.rs`).
fn add_device(q: &mut Qmp, name: &str, chardev: &str, ivshmem: &Path) -> Result<(), String> {
    let id = device_id(name);
    let pci = q
        .execute("query-pci", None)
        .map_err(|e| format!("QEMU's PCI buses unknown: {e}"))?;
    let stale = q
        .hmp("info ramblock")
        .map(|t| crate::attach_slots::stale_paths(&t))
        .unwrap_or_default();
    let mut first: Option<QemuError> = None;
    let mut small = Vec::new();
    let need = vesper_shared_abi::DEFAULT_REGION_SIZE;
    for slot in crate::attach_slots::plan(&pci, &stale) {
        let reserve = |prop: &str| {
            let path = format!("/machine/peripheral/{}", slot.bus.as_deref().unwrap_or(""));
            q.execute("qom-get", Some(json!({ "path": path, "property": prop })))
                .ok()
                .and_then(|v| v.as_u64())
        };
        if !crate::attach_slots::room(&slot, need, reserve) {
            small.extend(slot.bus.clone());
            continue;
        }
        let mut args = json!({
            "driver": "ivshmem-doorbell",
            "id": id,
            "chardev": chardev,
            "vectors": vesper_ivshmem::transport_vectors(),
        });
        if let Some(bus) = &slot.bus {
            args["bus"] = bus.as_str().into();
        }
        if let Some(addr) = &slot.addr {
            args["addr"] = addr.as_str().into();
        }
        match q.execute("device_add", Some(args)) {
            Ok(_) => {
                tracing::info!(guest = name, ?slot, "Vesper device plugged");
                return Ok(());
            }
            Err(e) if !no_hotplug(&e) => {
                return Err(format!("QEMU refused the Vesper device: {e}"))
            }
            Err(e) => {
                tracing::info!(guest = name, ?slot, "not plugged there: {e}");
                first.get_or_insert(e);
            }
        }
    }
    let why = match &first {
        Some(QemuError::QmpCommand { desc, .. }) => desc.clone(),
        Some(e) => e.to_string(),
        None => "no free PCI slot".into(),
    };
    let why = match small.is_empty() {
        true => why,
        false => format!(
            "{why}; bridge slot(s) {} have no room for the device's {} MiB BAR: give the root port `pref64-reserve=16M`",
            small.join(", "),
            need >> 20
        ),
    };
    Err(format!(
        "QEMU's machine takes no PCI hot-plug ({why}), so the Vesper device cannot be plugged; \
         nothing was left in it. Restart QEMU with a free hot-plug slot (q35: \
         `-device pcie-root-port,id=vesper-slot,chassis=9,pref64-reserve=16M`; pc's pci.0 takes hot-plug unless \
         acpi=off) and attach again, or with the device on its command line:\n  {}\nwhile \
         `vesper vm attach {name} --qmp SOCKET --cold-plug` waits for it",
        cold_plug_args(name, ivshmem)
    ))
}

/// `vm detach NAME`: unplugs the Vesper device and forgets the VM, which runs on.
pub(crate) async fn vm_detach(daemon: &Shared, name: &str) -> Response {
    let status = daemon.guest_status(name)?;
    let Some(view) = status.attached.clone() else {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{name} was started by vesperd, not attached: `vesper vm stop {name}` stops it"
            ),
        ));
    };
    let dir = vesper_api::run_dir::of(&daemon.config.run_dir, name);
    let (unplugged, note) = if status.state == "exited" {
        (true, None)
    } else if view.how == "libvirt" {
        crate::attach_libvirt::unplug(&dir, name).await
    } else {
        let (qmp, name_s) = (view.qmp.clone(), name.to_string());
        tokio::task::spawn_blocking(move || unplug_qmp(&qmp, &name_s))
            .await
            .unwrap_or_else(|e| (false, Some(format!("the detach worker failed: {e}"))))
    };
    // Letting go of the handle ends the task without touching the VM: the ivshmem
    // server, the QMP sockets and vm.json go with it.
    daemon.guests.lock().expect("guests lock").remove(name);
    crate::host_probes::unwatch(daemon, name);
    let gone = [
        vesper_api::run_dir::ivshmem_socket(&dir),
        vesper_api::run_dir::qmp_socket(&dir),
        vesper_api::run_dir::vm_record(&dir),
    ];
    // An adopted VM's ivshmem socket is the old vesperd's, which left without unlinking
    // it (nobody serves it now).
    if status.adopted.is_some() {
        let _ = std::fs::remove_file(&gone[0]);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while gone.iter().any(|p| p.exists()) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(
        guest = name,
        unplugged,
        "detached: the VM runs on without Vesper"
    );
    Ok(Reply::VmDetached {
        name: name.to_string(),
        unplugged,
        note,
    })
}

/// `device_del` of the Vesper device, the wait for the guest to release it, then
/// `chardev-remove`.
fn unplug_qmp(qmp: &Path, name: &str) -> (bool, Option<String>) {
    let id = device_id(name);
    let mut q = match Qmp::connect_waiting(qmp, Duration::from_secs(5)) {
        Ok(q) => q,
        Err(e) => {
            return (
                false,
                Some(format!("QMP unreachable ({e}); the device stays")),
            )
        }
    };
    let chardev = q
        .execute(
            "qom-get",
            Some(json!({ "path": format!("/machine/peripheral/{id}"), "property": "chardev" })),
        )
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| id.clone());
    if let Err(e) = q.execute("device_del", Some(json!({ "id": id }))) {
        return (false, Some(format!("QEMU refused to unplug {id}: {e}")));
    }
    let deadline = Instant::now() + UNPLUG_WAIT;
    loop {
        let gone = q
            .execute("qom-list", Some(json!({ "path": "/machine/peripheral" })))
            .ok()
            .and_then(|v| v.as_array().cloned())
            .is_some_and(|a| !a.iter().any(|p| p["name"] == id.as_str()));
        if gone {
            break;
        }
        if Instant::now() > deadline {
            return (false, Some(format!(
                "the guest has not released {id} within {} s (QEMU removes it once the guest acknowledges the unplug); its chardev {chardev} stays: `chardev-remove` it through QMP afterwards",
                UNPLUG_WAIT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // The gdbstub vesperd gave it goes too.
    let _ = q.hmp("gdbserver none");
    if let Some(dir) = qmp.parent() {
        let _ = std::fs::remove_file(vesper_api::run_dir::qemu_gdb_socket(dir));
    }
    // QEMU lets go of a chardev once its device is finalized; QEMU 7.2 never finalizes
    // an unplugged ivshmem-doorbell, so its chardev stays, disconnected (a later attach
    // takes another label).
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        match q.execute("chardev-remove", Some(json!({ "id": chardev }))) {
            Ok(_) => return (true, None),
            Err(_) if Instant::now() > deadline => {
                return (true, Some(format!(
                    "device unplugged; QEMU keeps its chardev {chardev} (busy: QEMU does not free an unplugged ivshmem-doorbell), disconnected from vesperd"
                )))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(50)),
        }
    }
}
