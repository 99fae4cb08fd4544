//! The API socket: accepting clients, checking who they are, and dispatching each
//! request to its handler.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::oneshot;
use vesper_api::{
    ApiError, AttachTarget, ErrorCode, Reply, Request, Response, VmStatus, WireResponse,
};
use vesper_core::{Command, Reply as GuestReply};

use crate::adopt::adopt_all;
use crate::daemon::{
    run_command, unexpected, unknown_guest, Daemon, DaemonConfig, DaemonError, Shared,
};
use crate::events::EventBus;
use crate::groups::GroupImage;
use crate::modules::insmod;
use crate::streams::{relay_cat, send_line, subscribe};
use crate::vm_lifecycle::{vm_fence, vm_send, vm_stop};
use crate::vm_start::vm_start;

use crate::guest::GuestMsg;

pub async fn run(config: DaemonConfig) -> Result<(), DaemonError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(&config.run_dir)
        .map_err(|e| DaemonError::RunDir(config.run_dir.clone(), e))?;
    if config.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&config.socket).is_ok() {
            return Err(DaemonError::AlreadyRunning(config.socket.clone()));
        }
        let _ = std::fs::remove_file(&config.socket);
    }
    let listener = UnixListener::bind(&config.socket)
        .map_err(|e| DaemonError::Listen(config.socket.clone(), e))?;
    std::fs::set_permissions(
        &config.socket,
        std::fs::Permissions::from_mode(config.socket_mode),
    )
    .map_err(|e| DaemonError::Listen(config.socket.clone(), e))?;
    // Every socket is bound before the slower start-up work (loading the host probes'
    // BPF): whoever waits for the API socket finds the alert socket there too.
    let alerts = match &config.alert_socket {
        Some((path, gid)) => Some(crate::cluster::bind_alert_socket(path, *gid)?),
        None => None,
    };
    tracing::info!(socket = %config.socket.display(), "vesperd listening");
    let bus = Arc::new(EventBus::new(config.event_buffer));
    let host_probes = crate::host_probe_state::start(&config.host_probes, bus.clone());
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        guests: Mutex::new(HashMap::new()),
        kernels: Default::default(),
        dwarf: Default::default(),
        panic_dumps: Default::default(),
        groups: Default::default(),
        host_probes,
        bus,
    });
    if config.simulate_guests > 0 {
        crate::simulate::spawn(
            daemon.bus.clone(),
            config.simulate_guests,
            config.simulate_rate,
        )
        .map_err(|e| DaemonError::Listen(config.socket.clone(), std::io::Error::other(e)))?;
    }
    if let Some(policy) = config.policy.clone() {
        let feed = daemon.bus.engine_feed();
        tokio::spawn(crate::failover::run(daemon.clone(), policy, feed));
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(|e| DaemonError::Listen(config.socket.clone(), e))?;
    let mut quit = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::quit())
        .map_err(|e| DaemonError::Listen(config.socket.clone(), e))?;
    if let Some(alerts) = alerts {
        tokio::spawn(crate::cluster::serve_alerts(daemon.clone(), alerts));
    }
    adopt_all(&daemon).await;
    loop {
        tokio::select! {
            conn = listener.accept() => match conn {
                Ok((stream, _)) => { tokio::spawn(serve_connection(daemon.clone(), stream)); }
                Err(e) => tracing::warn!("accept failed: {e}"),
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
            _ = quit.recv() => {
                // Detach: leave every VM running for the next vesperd to adopt. Exiting
                // the process directly runs no destructor, so no QEMU child is killed on
                // drop.
                tracing::info!("SIGQUIT: detaching; VMs keep running for the next vesperd");
                let _ = std::fs::remove_file(&config.socket);
                std::process::exit(0);
            }
        }
    }
    tracing::info!("shutting down: stopping every VM it started, detaching the others");
    let names: Vec<(String, bool)> = daemon
        .guests
        .lock()
        .expect("guests lock")
        .iter()
        .map(|(n, g)| {
            (
                n.clone(),
                g.status.lock().expect("status lock").attached.is_some(),
            )
        })
        .collect();
    for (name, attached) in names {
        let _ = match attached {
            true => crate::attach::vm_detach(&daemon, &name).await,
            false => vm_stop(&daemon, &name).await,
        };
    }
    let _ = std::fs::remove_file(&config.socket);
    if let Some((path, _)) = &config.alert_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Why a peer may not use the daemon, or `None` if it may: root, the daemon's own uid,
/// and the configured uids and gids are allowed.
pub(crate) fn refusal(config: &DaemonConfig, uid: u32, gid: u32) -> Option<String> {
    let own = nix::unistd::geteuid().as_raw();
    if uid == 0
        || uid == own
        || config.allow_uids.contains(&uid)
        || config.allow_gids.contains(&gid)
    {
        return None;
    }
    Some(format!(
        "permission denied: uid {uid} (gid {gid}) may not use vesperd; it allows root, uid {own}{}{} (vesperd --allow-uid / --allow-gid)",
        if config.allow_uids.is_empty() { String::new() } else { format!(", uids {:?}", config.allow_uids) },
        if config.allow_gids.is_empty() { String::new() } else { format!(", gids {:?}", config.allow_gids) },
    ))
}

pub(crate) async fn serve_connection(daemon: Shared, stream: UnixStream) {
    let cred = stream.peer_cred();
    let (r, mut w) = stream.into_split();
    let refused = match cred {
        Ok(c) => refusal(&daemon.config, c.uid(), c.gid()),
        Err(e) => Some(format!(
            "permission denied: cannot read the peer's credentials ({e})"
        )),
    };
    if let Some(why) = refused {
        tracing::warn!("refused a client: {why}");
        let _ = send_line(&mut w, Err(ApiError::new(ErrorCode::PermissionDenied, why))).await;
        return;
    }
    let mut lines = BufReader::new(r);
    loop {
        let mut line = String::new();
        // A bounded read: a client cannot make the daemon buffer without limit.
        let n = match (&mut lines)
            .take(vesper_api::MAX_REQUEST_BYTES as u64 + 1)
            .read_line(&mut line)
            .await
        {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("client read failed: {e}");
                return;
            }
        };
        if n == 0 {
            return;
        }
        let response = if line.len() > vesper_api::MAX_REQUEST_BYTES {
            Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("request over {} bytes", vesper_api::MAX_REQUEST_BYTES),
            ))
        } else {
            match serde_json::from_str::<Request>(&line) {
                Ok(Request::RelayCat {
                    guest,
                    module,
                    channel,
                    follow,
                }) => {
                    // Streams until done or the client goes away; then the connection ends.
                    let _ = relay_cat(&daemon, &mut w, &guest, &module, channel.as_deref(), follow)
                        .await;
                    return;
                }
                Ok(Request::Subscribe {
                    filter,
                    from_seq,
                    follow,
                }) => {
                    let _ = subscribe(&daemon, &mut w, filter, from_seq, follow).await;
                    return;
                }
                Ok(req) => handle(&daemon, req).await,
                Err(e) => Err(ApiError::new(
                    ErrorCode::BadRequest,
                    format!("malformed request: {e}"),
                )),
            }
        };
        let too_long = line.len() > vesper_api::MAX_REQUEST_BYTES;
        let mut out = serde_json::to_string(&WireResponse::from(response)).unwrap_or_else(|e| {
            format!(r#"{{"ok":false,"error":{{"code":"internal","message":"cannot encode reply: {e}"}}}}"#)
        });
        out.push('\n');
        if w.write_all(out.as_bytes()).await.is_err() || too_long {
            return;
        }
    }
}

pub(crate) async fn handle(daemon: &Shared, req: Request) -> Response {
    match req {
        Request::VmStart(a) => vm_start(daemon, *a).await,
        Request::VmAttach(a) => {
            let a = *a;
            match a.target.clone() {
                AttachTarget::Qmp { socket, cold_plug } => {
                    crate::attach::attach_qmp(daemon, a, socket, cold_plug).await
                }
                AttachTarget::Libvirt { domain, connect } => {
                    crate::attach_libvirt::attach(daemon, a, &domain, connect.as_deref()).await
                }
            }
        }
        Request::VmDetach { name } => crate::attach::vm_detach(daemon, &name).await,
        Request::VmStop { name } => vm_stop(daemon, &name).await,
        Request::VmFence { name, fenced } => vm_fence(daemon, &name, fenced).await,
        Request::VmSend { name, line } => vm_send(daemon, &name, &line).await,
        Request::VmList => {
            let guests = daemon.guests.lock().expect("guests lock");
            let mut vms: Vec<VmStatus> = guests
                .values()
                .map(|g| g.status.lock().expect("status lock").clone())
                .collect();
            vms.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(Reply::VmList { vms })
        }
        Request::KitInfo => Ok(kit_info(daemon)),
        Request::Insmod {
            guest,
            file_name,
            image_b64,
            params,
            init_timeout_secs,
        } => {
            let image = vesper_api::decode_image(&image_b64)
                .map_err(|e| ApiError::new(ErrorCode::BadRequest, e))?;
            let init_timeout = init_timeout_secs.map(Duration::from_secs);
            insmod(daemon, &guest, &file_name, image, params, init_timeout).await
        }
        Request::GroupApply {
            guest,
            group,
            source,
            members,
        } => {
            let mut images = Vec::with_capacity(members.len());
            for m in members {
                let image = vesper_api::decode_image(&m.image_b64).map_err(|e| {
                    ApiError::new(ErrorCode::BadRequest, format!("{}: {e}", m.file_name))
                })?;
                images.push(GroupImage {
                    file_name: m.file_name,
                    image,
                    params: m.params,
                });
            }
            crate::groups::apply(daemon, &guest, &group, &source, images).await
        }
        Request::GroupRemove {
            guest,
            group,
            modules,
        } => crate::groups::remove(daemon, &guest, &group, modules).await,
        Request::GroupList { guest } => crate::groups::list(daemon, &guest).await,
        Request::Rmmod { guest, name, force } => {
            let started = Instant::now();
            match run_command(daemon, &guest, Command::Unload { name, force }).await? {
                GuestReply::Unloaded { name } => Ok(Reply::Unloaded {
                    guest,
                    name,
                    millis: started.elapsed().as_secs_f64() * 1e3,
                }),
                other => Err(unexpected(other)),
            }
        }
        Request::Lsmod { guest } => match run_command(daemon, &guest, Command::List).await? {
            GuestReply::Modules(modules) => Ok(Reply::Modules { guest, modules }),
            other => Err(unexpected(other)),
        },
        Request::Dmesg { guest } => match run_command(daemon, &guest, Command::Kmsg).await? {
            GuestReply::Kmsg(log) => Ok(Reply::Kmsg { guest, log }),
            other => Err(unexpected(other)),
        },
        Request::RelayStat { guest } => {
            let (store, tx) = {
                let guests = daemon.guests.lock().expect("guests lock");
                let g = guests
                    .get(&guest)
                    .ok_or_else(|| unknown_guest(&guests, &guest))?;
                (g.relay.clone(), g.tx.clone())
            };
            // Live counters of open channels (a dead guest's task may be gone: then the
            // last counters read are what there is).
            let (reply, rx) = oneshot::channel();
            if tx.send(GuestMsg::RelayStats { reply }).await.is_ok() {
                if let Ok(stats) = rx.await {
                    store.lock().expect("relay lock").update_stats(stats);
                }
            }
            let channels = store.lock().expect("relay lock").views();
            Ok(Reply::RelayStats { guest, channels })
        }
        Request::VmStatus { name } => crate::frontend_check::live::vm_status(daemon, &name).await,
        Request::VmPause { name } => crate::debug::vm_pause(daemon, &name, true).await,
        Request::VmResume { name } => crate::debug::vm_pause(daemon, &name, false).await,
        Request::HostStat { guest } => crate::host_probes::stat(daemon, &guest),
        Request::Debug { guest, debug } => crate::debug::debug(daemon, guest, debug).await,
        Request::Publish {
            guest,
            kind,
            origin,
            node,
            payload,
        } => crate::cluster::publish(daemon, &guest, kind, &origin, &node, payload),
        Request::RelayCat { .. } | Request::Subscribe { .. } => Err(ApiError::new(
            ErrorCode::Internal,
            "streams are served by serve_connection",
        )),
    }
}

/// The kit `vm start` and spec builds use: `--kit-dir`, else the kit crate's default
/// (`$VESPER_KIT_DIR` as vesperd was started, or the repository's `.vesper-kit`).
fn kit_info(daemon: &Shared) -> Reply {
    let dir = daemon
        .config
        .kit_dir
        .clone()
        .unwrap_or_else(vesper_guest_kit::default_kit_dir);
    match vesper_guest_kit::Kit::load(Some(&dir)) {
        Ok(kit) => Reply::KitInfo {
            dir,
            release: Some(kit.release),
            problem: None,
        },
        Err(e) => Reply::KitInfo {
            dir,
            release: None,
            problem: Some(e.to_string()),
        },
    }
}
