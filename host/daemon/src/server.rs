//! The API socket and request dispatch.

use std::collections::HashMap;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, oneshot, watch};
use vesper_api::{
    ApiError, ErrorCode, Reply, Request, Response, VmStartRequest, VmStatus, Vmm, WireResponse,
};
use vesper_core::{Command, CommandError, Reply as GuestReply, Session};
use vesper_qemu::choose_accel;

use crate::events::{EventBus, WRITE_TIMEOUT};

/// Socket send buffer of an event subscriber's connection.
const SUBSCRIBER_SNDBUF: usize = 4 << 10;
use crate::guest::{GuestHandle, GuestMsg, GuestTask, Link, Process};
use crate::launch::{launch_qemu, Launched};
use crate::persist::{Channels, VmRecord};
use crate::relay::RelayStore;

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    pub kit_dir: Option<PathBuf>,
    pub step_timeout: Duration,
    pub dump_on_panic: bool,
    pub max_image_size: u64,
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    pub socket_mode: u32,
    /// The alert socket and the group that may use it (`--alert-socket`).
    pub alert_socket: Option<(PathBuf, u32)>,
    pub event_buffer: usize,
    pub policy: Option<vesper_failover::Policy>,
    pub simulate_guests: usize,
    pub simulate_rate: f64,
}

/// Why the daemon could not run.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot create run directory {0}")]
    RunDir(PathBuf, #[source] std::io::Error),
    #[error("another vesperd is already serving {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot listen on {0}")]
    Listen(PathBuf, #[source] std::io::Error),
}

pub(crate) struct Daemon {
    pub(crate) config: DaemonConfig,
    guests: Mutex<HashMap<String, GuestHandle>>,
    pub(crate) bus: Arc<EventBus>,
    /// Guest kernels opened from their RAM (`vesper debug`).
    pub(crate) kernels: crate::debug::Kernels,
    /// DWARF files `debug read --vmlinux` opened and indexed, by path.
    pub(crate) dwarf: vesper_debug::dwarf::DwarfFiles,
    /// vmcores being written of guests that panicked (`--dump-on-panic`).
    pub(crate) panic_dumps: crate::debug::PanicDumps,
}

impl Daemon {
    /// A guest's status, or the unknown-guest error.
    pub(crate) fn guest_status(&self, name: &str) -> Result<VmStatus, ApiError> {
        let guests = self.guests.lock().expect("guests lock");
        let g = guests
            .get(name)
            .ok_or_else(|| unknown_guest(&guests, name))?;
        let status = g.status.lock().expect("status lock").clone();
        Ok(status)
    }

    /// The guests running now and their memory, for the failover engine's capacity checks.
    pub(crate) fn running(&self) -> Vec<(String, u32)> {
        let guests = self.guests.lock().expect("guests lock");
        guests
            .values()
            .map(|g| g.status.lock().expect("status lock").clone())
            .filter(|s| s.state != "exited")
            .map(|s| (s.name, s.memory_mib))
            .collect()
    }
}

pub(crate) type Shared = Arc<Daemon>;

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
    tracing::info!(socket = %config.socket.display(), "vesperd listening");
    let daemon = Arc::new(Daemon {
        config: config.clone(),
        guests: Mutex::new(HashMap::new()),
        kernels: Default::default(),
        dwarf: Default::default(),
        panic_dumps: Default::default(),
        bus: Arc::new(EventBus::new(config.event_buffer)),
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
    if let Some((path, gid)) = &config.alert_socket {
        let alerts = crate::cluster::bind_alert_socket(path, *gid)?;
        tokio::spawn(crate::cluster::serve_alerts(daemon.clone(), alerts));
    }
    adopt_all(&daemon);
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
    tracing::info!("shutting down: stopping every VM");
    let names: Vec<String> = daemon
        .guests
        .lock()
        .expect("guests lock")
        .keys()
        .cloned()
        .collect();
    for name in names {
        let _ = vm_stop(&daemon, &name).await;
    }
    let _ = std::fs::remove_file(&config.socket);
    if let Some((path, _)) = &config.alert_socket {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

/// Why a peer may not use the daemon, or `None` if it may: root, the daemon's own uid,
/// and the configured uids and gids are allowed.
fn refusal(config: &DaemonConfig, uid: u32, gid: u32) -> Option<String> {
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

async fn serve_connection(daemon: Shared, stream: UnixStream) {
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

async fn handle(daemon: &Shared, req: Request) -> Response {
    match req {
        Request::VmStart(a) => vm_start(daemon, a).await,
        Request::VmStop { name } => vm_stop(daemon, &name).await,
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
        Request::VmStatus { name } => Ok(Reply::VmStatus(daemon.guest_status(&name)?)),
        Request::VmPause { name } => crate::debug::vm_pause(daemon, &name, true).await,
        Request::VmResume { name } => crate::debug::vm_pause(daemon, &name, false).await,
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

fn relay_store(daemon: &Shared, guest: &str) -> Result<Arc<Mutex<RelayStore>>, ApiError> {
    let guests = daemon.guests.lock().expect("guests lock");
    let g = guests
        .get(guest)
        .ok_or_else(|| unknown_guest(&guests, guest))?;
    Ok(g.relay.clone())
}

/// Writes one reply line; a client that does not take it within `WRITE_TIMEOUT` is
/// dropped (it never holds anything up but its own connection).
async fn send_line(w: &mut tokio::net::unix::OwnedWriteHalf, r: Response) -> std::io::Result<()> {
    let mut out = serde_json::to_string(&WireResponse::from(r)).map_err(std::io::Error::other)?;
    out.push('\n');
    write_line(w, &out).await
}

/// Writes one encoded line with the `WRITE_TIMEOUT` bound.
async fn write_line(w: &mut tokio::net::unix::OwnedWriteHalf, line: &str) -> std::io::Result<()> {
    match tokio::time::timeout(WRITE_TIMEOUT, w.write_all(line.as_bytes())).await {
        Ok(r) => r,
        Err(_) => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "client not reading",
        )),
    }
}

/// Streams events: history (all of it, or from `from_seq`), a `Gap` if part of the
/// asked-for history is gone, then, when following, each new event passing `filter`.
/// A follower that falls behind gets a `Gap` with the count it missed.
async fn subscribe(
    daemon: &Shared,
    w: &mut tokio::net::unix::OwnedWriteHalf,
    filter: vesper_events::Filter,
    from_seq: Option<u64>,
    follow: bool,
) -> std::io::Result<()> {
    // A small send buffer: a subscriber that stops reading blocks its own writer (and
    // then lags, and gets a gap) after a few lines, not after the kernel buffered
    // hundreds of them for it.
    let _ = nix::sys::socket::setsockopt(
        &std::os::fd::AsFd::as_fd(w.as_ref()),
        nix::sys::socket::sockopt::SndBuf,
        &SUBSCRIBER_SNDBUF,
    );
    let (history, missed, mut rx) = if from_seq.is_none() && !follow {
        let (_, _, rx) = daemon.bus.subscribe(None, &filter);
        (daemon.bus.history(&filter), 0, rx)
    } else {
        daemon.bus.subscribe(from_seq, &filter)
    };
    if missed > 0 {
        send_line(w, Ok(Reply::Gap { missed })).await?;
    }
    let mut sent = 0u64;
    for e in history {
        send_line(w, Ok(Reply::Event(e))).await?;
        sent += 1;
    }
    if !follow {
        return send_line(w, Ok(Reply::End { records: sent })).await;
    }
    loop {
        match rx.recv().await {
            Ok(p) if filter.matches(&p.event) => write_line(w, &p.line).await?,
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                tracing::info!(missed, "a slow event subscriber missed events");
                send_line(w, Ok(Reply::Gap { missed })).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

/// Streams `guest`'s records of `module` (and `channel`): the history, then, when
/// following, each new record. A follower that reads too slowly gets a `Gap` with the
/// number of records it missed; the guest and other readers are never slowed.
async fn relay_cat(
    daemon: &Shared,
    w: &mut tokio::net::unix::OwnedWriteHalf,
    guest: &str,
    module: &str,
    channel: Option<&str>,
    follow: bool,
) -> std::io::Result<()> {
    let store = match relay_store(daemon, guest) {
        Ok(s) => s,
        Err(e) => return send_line(w, Err(e)).await,
    };
    let taken = {
        let s = store.lock().expect("relay lock");
        if !follow && !s.knows(module, channel) {
            let known = s.names();
            let hint = if known.is_empty() {
                "the guest has opened no channel".to_string()
            } else {
                format!("channels: {}", known.join(", "))
            };
            let what = channel.map_or(module.to_string(), |c| format!("{module}/{c}"));
            Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("{guest}: no relay channel {what}; {hint}"),
            ))
        } else {
            Ok(s.snapshot(module, channel))
        }
    };
    let (history, mut rx) = match taken {
        Ok(t) => t,
        Err(e) => return send_line(w, Err(e)).await,
    };
    let mut sent = 0u64;
    for r in history {
        send_line(w, Ok(Reply::Record((*r).clone()))).await?;
        sent += 1;
    }
    if !follow {
        return send_line(w, Ok(Reply::End { records: sent })).await;
    }
    loop {
        match rx.recv().await {
            Ok(r) if r.module == module && channel.is_none_or(|c| r.channel == c) => {
                send_line(w, Ok(Reply::Record((*r).clone()))).await?;
            }
            Ok(_) => {}
            Err(tokio::sync::broadcast::error::RecvError::Lagged(missed)) => {
                send_line(w, Ok(Reply::Gap { missed })).await?;
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
        }
    }
}

fn unexpected(r: GuestReply) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("unexpected guest reply {r:?}"))
}

/// The error for a guest name not in `guests` (the caller holds the lock).
fn unknown_guest(guests: &HashMap<String, GuestHandle>, name: &str) -> ApiError {
    let mut known: Vec<&str> = guests.keys().map(String::as_str).collect();
    known.sort();
    let hint = if known.is_empty() {
        "no VMs are running (`vesper vm start NAME`)".to_string()
    } else {
        format!("running: {}", known.join(", "))
    };
    ApiError::new(
        ErrorCode::UnknownGuest,
        format!("no guest named {name:?}; {hint}"),
    )
}

fn command_error(guest: &str, e: CommandError) -> ApiError {
    let code = match &e {
        CommandError::AlreadyLoaded { .. } => ErrorCode::AlreadyLoaded,
        CommandError::NotLoaded { .. } => ErrorCode::NotLoaded,
        CommandError::InUse { .. } => ErrorCode::InUse,
        CommandError::InitFailed { .. } => ErrorCode::InitFailed,
        CommandError::GuestFailed { .. } | CommandError::GuestRestarted => ErrorCode::GuestFailed,
        CommandError::Timeout { .. } | CommandError::NotResponding { .. } => ErrorCode::Timeout,
        CommandError::InitStillRunning { .. } => ErrorCode::InitStillRunning,
        CommandError::Misbehaving(_) | CommandError::BadGuestData(_) => ErrorCode::GuestMisbehaving,
        CommandError::SessionClosed => ErrorCode::GuestNotReady,
    };
    ApiError::new(code, format!("{guest}: {e}"))
}

/// Sends `cmd` to `guest`'s task and waits for the result.
async fn run_command(daemon: &Shared, guest: &str, cmd: Command) -> Result<GuestReply, ApiError> {
    let tx = {
        let guests = daemon.guests.lock().expect("guests lock");
        let g = guests
            .get(guest)
            .ok_or_else(|| unknown_guest(&guests, guest))?;
        if *g.exited.borrow() {
            return Err(ApiError::new(
                ErrorCode::GuestNotReady,
                format!("{guest}: the VM has exited (`vesper vm start {guest}` again)"),
            ));
        }
        if g.info().is_none() {
            return Err(ApiError::new(
                ErrorCode::GuestNotReady,
                format!("{guest}: the Vesper frontend has not connected yet (still booting, or vesper_front not loaded in the guest)"),
            ));
        }
        g.tx.clone()
    };
    let (reply, rx) = oneshot::channel();
    tx.send(GuestMsg::Run { cmd, reply }).await.map_err(|_| {
        ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{guest}: the guest task has ended"),
        )
    })?;
    match rx.await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(command_error(guest, e)),
        Err(_) => Err(ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{guest}: the guest task ended mid-command"),
        )),
    }
}

pub(crate) async fn insmod(
    daemon: &Shared,
    guest: &str,
    file_name: &str,
    image: Vec<u8>,
    params: Vec<String>,
    init_timeout: Option<Duration>,
) -> Response {
    let started = Instant::now();
    let vermagic = {
        let guests = daemon.guests.lock().expect("guests lock");
        let g = guests
            .get(guest)
            .ok_or_else(|| unknown_guest(&guests, guest))?;
        g.info().map(|i| i.vermagic)
    };
    let info =
        vesper_modcheck::check_module(&image, vermagic.as_deref(), daemon.config.max_image_size)
            .map_err(|e| ApiError::new(ErrorCode::BadModule, format!("{file_name}: {e}")))?;
    let params = check_params(&params)?;
    let cmd = Command::Load {
        name: info.name.clone(),
        image: image.into(),
        params,
        init_timeout,
    };
    match run_command(daemon, guest, cmd).await? {
        GuestReply::Loaded { name, bytes } => Ok(Reply::Loaded {
            guest: guest.to_string(),
            name,
            bytes,
            millis: started.elapsed().as_secs_f64() * 1e3,
        }),
        other => Err(unexpected(other)),
    }
}

/// Joins module parameters, refusing what the kernel's parser would misread.
fn check_params(params: &[String]) -> Result<String, ApiError> {
    for p in params {
        let key = p.split('=').next().unwrap_or("");
        let key_ok = !key.is_empty()
            && key
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.' || c == '-');
        if !key_ok || p.chars().any(|c| c.is_control()) {
            return Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("bad module parameter {p:?}: expected name=value with a name of letters, digits and _"),
            ));
        }
    }
    let joined = params.join(" ");
    if joined.len() >= vesper_shared_abi::PARAMS_LEN as usize {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "module parameters are {} bytes; the limit is {}",
                joined.len(),
                vesper_shared_abi::PARAMS_LEN - 1
            ),
        ));
    }
    Ok(joined)
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

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
    let dir = crate::vm_dir::of(&daemon.config.run_dir, &a.name);
    std::fs::create_dir_all(&dir)
        .map_err(|e| start_failed(format!("cannot create {}: {e}", dir.display())))?;
    let console = crate::vm_dir::console_log(&dir);
    let qmp = crate::vm_dir::qmp_socket(&dir);
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
            let c =
                crate::console::QemuConsole::new(&crate::vm_dir::console_socket(&dir), &console);
            if let Err(e) = c.connect(crate::console::CONNECT_PATIENCE).await {
                return Err(start_failed(format!(
                    "cannot connect to QEMU's serial console {}: {e} (see {})",
                    crate::vm_dir::console_socket(&dir).display(),
                    crate::vm_dir::qemu_log(&dir).display()
                )));
            }
            Some(c)
        }
        Vmm::Builtin => None,
    };
    tracing::info!(guest = %a.name, vmm = %a.vmm, pid, accel = ?accel.accel, reason = %accel.reason, "VM started");
    status.lock().expect("status lock").pid = Some(pid);
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
        console_sock: crate::vm_dir::console_socket(&dir),
        qmp: qmp.clone(),
        qmp_events: crate::vm_dir::qmp_events_socket(&dir),
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
        qmp_events: crate::vm_dir::qmp_events_socket(&dir),
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

/// `--kernel` value naming the kit's mini frontend.
pub(crate) const MINI_FRONTEND: &str = "mini";

/// The builtin VMM runs on KVM only, and boots a stock Linux kernel only where KVM is
/// hardware-backed (`--accel kvm` insists anyway, to see how far it gets).
fn builtin_accel(a: &VmStartRequest) -> Result<vesper_api::AccelChoice, String> {
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
async fn launch_builtin(
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
        let Some(kind) = crate::guest::vm_event_kind(qemu_name) else {
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
    daemon.kernels.2.register(&a.name, &machine);
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

/// What an adopted VM lacks, shown by `vm list`.
const ADOPTED: &str =
    "adopted: no doorbells (QEMU cannot re-attach to a new ivshmem server); polling until QEMU restarts";

/// Finds the VMs an earlier vesperd left running in this run directory and takes them
/// over (see README.md: daemon restart).
fn adopt_all(daemon: &Shared) {
    let Ok(dirs) = std::fs::read_dir(crate::vm_dir::guests_dir(&daemon.config.run_dir)) else {
        return;
    };
    for dir in dirs.flatten().map(|d| d.path()) {
        if !crate::vm_dir::vm_record(&dir).exists() {
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
        if let Err(e) = adopt(daemon, &dir, record) {
            tracing::warn!(guest = %name, "cannot adopt the running VM: {e}");
        }
    }
}

fn adopt(daemon: &Shared, dir: &Path, record: VmRecord) -> Result<(), String> {
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
        adopted: Some(ADOPTED.into()),
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
    let mut task = GuestTask {
        name: name.clone(),
        transport: Link::Adopted(region),
        session,
        child: Process::Adopted {
            pid: record.pid,
            start_time: record.start_time,
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
    let adopted_console =
        crate::console::QemuConsole::new(&record_console_sock, &status_console_log);
    let c = adopted_console.clone();
    tokio::spawn(async move {
        if let Err(e) = c.connect(std::time::Duration::ZERO).await {
            tracing::warn!("serial console of an adopted VM not reconnected: {e}");
        }
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
            console: Some(adopted_console),
            builtin_console: None,
        },
    );
    Ok(())
}

/// Types a line into a builtin VM's 8250 (blocking: it waits for the guest to read).
async fn send_builtin(name: &str, line: &str, input: vesper_builtin::ConsoleInput) -> Response {
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

async fn vm_send(daemon: &Shared, name: &str, line: &str) -> Response {
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

fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Longest `vm stop` waits for a VM to end: its grace to quit, then the kill.
const STOP_WAIT: Duration = Duration::from_secs(15);

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
    Ok(Reply::VmStopped {
        name: name.to_string(),
        killed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_are_checked_before_they_reach_the_guest() {
        assert_eq!(
            check_params(&["a=1".into(), "watch=svc".into()]).unwrap(),
            "a=1 watch=svc"
        );
        assert!(check_params(&["=1".into()]).is_err());
        assert!(check_params(&["a=1\nb".into()]).is_err());
        assert!(check_params(&["x".repeat(2000)]).is_err());
    }

    #[test]
    fn vm_names_are_restricted() {
        assert!(valid_name("vm-1_a"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(""));
    }
}
