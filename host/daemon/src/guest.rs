//! One task per guest: drives its `Session` from doorbells, commands and timers.

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::unix::AsyncFd;
use tokio::process::Child;
use tokio::sync::{mpsc, oneshot, watch};
use vesper_api::VmStatus;
use vesper_core::{
    Command, CommandError, GuestInfo, Reply, Session, SessionConfig, SessionEvent, Transport,
};
use vesper_ivshmem::IvshmemTransport;
use vesper_shared_abi::{VECTOR_CONTROL, VECTOR_RELAY};

use crate::events::{note_failure, publish_records, EventBus};
use crate::qmp_events::PanicHook;
use crate::relay::{ClockMap, RelayStore};
use vesper_events::{EventKind, Source};

/// How long QEMU gets to quit before it is killed.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// How often the session is polled with no doorbell (lost-notification safety net).
const POLL_INTERVAL: Duration = Duration::from_millis(50);

/// A message to a guest task.
pub enum GuestMsg {
    /// Live relay counters of every open channel.
    RelayStats {
        /// Where they go.
        reply: oneshot::Sender<Vec<vesper_relay::ChannelStats>>,
    },
    /// Run a command.
    Run {
        /// The command.
        cmd: Command,
        /// Where the result goes.
        reply: oneshot::Sender<Result<Reply, CommandError>>,
    },
}

/// The daemon's handle on a guest task.
pub struct GuestHandle {
    /// Commands in.
    pub tx: mpsc::Sender<GuestMsg>,
    /// Status shown by `vm list`.
    pub status: Arc<Mutex<VmStatus>>,
    /// The frontend's hello, once it came (and again on guest restart).
    pub up: watch::Receiver<Option<GuestInfo>>,
    /// Set when QEMU exited.
    pub exited: watch::Receiver<bool>,
    /// Tells the task to stop QEMU and end.
    pub stop: Option<oneshot::Sender<StopAck>>,
    /// Relay history.
    pub relay: Arc<Mutex<RelayStore>>,
    /// A builtin VM's console input (QEMU's console is reached through `console`).
    pub builtin_console: Option<vesper_builtin::ConsoleInput>,
    /// A QEMU VM's serial console: vesperd's one connection, kept (QEMU drops input a
    /// client sent but the UART had not taken yet when the client hangs up), whose
    /// output is the console log.
    pub console: Option<Arc<crate::console::QemuConsole>>,
}

/// Clock exchanges per synchronisation; the one with the shortest round trip wins.
const CLOCK_ROUNDS: usize = 5;
/// How often the clock mapping is refreshed.
const CLOCK_REFRESH: Duration = Duration::from_secs(60);

fn unix_ns() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Maps the guest's clock onto the host's (NTP-style over `OP_CLOCK`) for relay record
/// timestamps, now and every `CLOCK_REFRESH`.
pub(crate) async fn clock_sync(
    tx: mpsc::WeakSender<GuestMsg>,
    relay: Arc<Mutex<RelayStore>>,
    name: String,
) {
    loop {
        let mut best: Option<ClockMap> = None;
        for _ in 0..CLOCK_ROUNDS {
            let Some(tx) = tx.upgrade() else { return };
            let (reply, rx) = oneshot::channel();
            let h0 = unix_ns();
            if tx
                .send(GuestMsg::Run {
                    cmd: Command::Clock,
                    reply,
                })
                .await
                .is_err()
            {
                return;
            }
            let guest_ns = match rx.await {
                Ok(Ok(Reply::Clock(g))) => g,
                Ok(Err(e)) => {
                    tracing::info!(guest = %name, "no clock mapping (relay latencies unavailable): {e}");
                    return;
                }
                _ => return,
            };
            let h1 = unix_ns();
            let map = ClockMap {
                offset_ns: guest_ns as i128 - ((h0 as i128 + h1 as i128) / 2),
                error_ns: (h1 - h0) / 2,
            };
            if best.is_none_or(|b| map.error_ns < b.error_ns) {
                best = Some(map);
            }
        }
        if let Some(m) = best {
            tracing::debug!(guest = %name, offset_ns = %m.offset_ns, error_ns = m.error_ns, "guest clock mapped");
            relay.lock().expect("relay lock").set_clock(Some(m));
        }
        tokio::time::sleep(CLOCK_REFRESH).await;
    }
}

impl GuestHandle {
    /// Current frontend info, if up.
    pub fn info(&self) -> Option<GuestInfo> {
        self.up.borrow().clone()
    }
}

/// The QEMU process of a guest.
pub enum Process {
    /// Started by this vesperd.
    Child(Child),
    /// A builtin VM: a thread of this vesperd.
    Builtin {
        /// Says how the machine ended, once it has.
        end: Option<tokio::sync::oneshot::Receiver<String>>,
        /// Stops it.
        stop: vesper_hypervisor::StopHandle,
    },
    /// Started by an earlier vesperd and adopted: not our child, so its end is seen by
    /// polling `/proc`.
    Adopted {
        /// Its pid.
        pid: u32,
        /// Its start time (`/proc/PID/stat` field 22).
        start_time: u64,
    },
    /// A VM Vesper did not start (`vm attach`): stopped as its owner stops it, and
    /// left running when vesperd lets go of it.
    Attached(crate::attached_vm::AttachedProcess),
}

/// How a stop went: sent to whoever asked, once everything of the VM is let go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StopOutcome {
    /// The VM did not quit within the grace period and was killed.
    pub killed: bool,
}

/// Where a guest task answers a stop request.
pub type StopAck = oneshot::Sender<StopOutcome>;

/// How a VM process ended, as a `vm_exit` event says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ProcessEnd {
    /// It exited with this code.
    Exited { code: i32 },
    /// A signal ended it.
    Signaled { number: i32 },
    /// A builtin VM's end, or a process whose status is not ours to see.
    Other { reason: String },
}

impl ProcessEnd {
    /// The `vm_exit` payload: `{"code": 0}`, `{"signal": "SIGKILL", "signal_number": 9}`
    /// or `{"reason": "..."}`, and whether somebody asked for it (`requested`).
    pub fn payload(&self, requested: bool) -> serde_json::Value {
        let mut p = match self {
            ProcessEnd::Exited { code } => serde_json::json!({ "code": code }),
            ProcessEnd::Signaled { number } => serde_json::json!({
                "signal": nix::sys::signal::Signal::try_from(*number)
                    .map_or_else(|_| format!("signal {number}"), |s| s.as_str().to_string()),
                "signal_number": number,
            }),
            ProcessEnd::Other { reason } => serde_json::json!({ "reason": reason }),
        };
        p["requested"] = requested.into();
        p
    }
}

impl std::fmt::Display for ProcessEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProcessEnd::Exited { code } => write!(f, "exit code {code}"),
            ProcessEnd::Signaled { number } => write!(f, "killed by signal {number}"),
            ProcessEnd::Other { reason } => f.write_str(reason),
        }
    }
}

impl Process {
    /// Waits until the process ends; says how.
    async fn wait(&mut self) -> ProcessEnd {
        match self {
            Process::Child(c) => match c.wait().await {
                Ok(st) => match (
                    st.code(),
                    std::os::unix::process::ExitStatusExt::signal(&st),
                ) {
                    (Some(code), _) => ProcessEnd::Exited { code },
                    (None, Some(n)) => ProcessEnd::Signaled { number: n },
                    (None, None) => ProcessEnd::Other {
                        reason: st.to_string(),
                    },
                },
                Err(e) => ProcessEnd::Other {
                    reason: format!("cannot wait for it: {e}"),
                },
            },
            // Polled through `&mut` so that a select! dropping this future keeps the
            // receiver for the next call.
            Process::Builtin { end, .. } => match end {
                Some(rx) => {
                    let reason = rx
                        .await
                        .unwrap_or_else(|_| "the VM thread went away".into());
                    *end = None;
                    ProcessEnd::Other { reason }
                }
                None => std::future::pending().await,
            },
            Process::Adopted { pid, start_time } => {
                while crate::persist::alive(*pid, *start_time) {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                ProcessEnd::Other {
                    reason: "gone (an adopted process: its exit status went to the vesperd that started it)".into(),
                }
            }
            Process::Attached(a) => ProcessEnd::Other {
                reason: a.wait().await,
            },
        }
    }

    fn start_kill(&mut self) {
        match self {
            Process::Child(c) => {
                let _ = c.start_kill();
            }
            Process::Builtin { stop, .. } => stop.stop(),
            Process::Adopted { pid, start_time } => {
                if crate::persist::alive(*pid, *start_time) {
                    let _ = nix::sys::signal::kill(
                        nix::unistd::Pid::from_raw(*pid as i32),
                        nix::sys::signal::Signal::SIGKILL,
                    );
                }
            }
            Process::Attached(a) => a.start_kill(),
        }
    }
}

/// How the daemon reaches the guest's region.
pub enum Link {
    /// This vesperd's ivshmem server: doorbells both ways.
    Ivshmem(IvshmemTransport),
    /// The region of an adopted QEMU, mapped through its memfd. QEMU's ivshmem client
    /// cannot re-attach to a new server, so there are no doorbells: both sides poll.
    Adopted(vesper_shmem::SharedRegion),
    /// A builtin VM's Vesper device: ioeventfd doorbells, MSI-X to the guest.
    Builtin(vesper_builtin::BuiltinTransport),
}

impl Link {
    fn region(&self) -> &vesper_shmem::SharedRegion {
        match self {
            Link::Ivshmem(t) => t.region(),
            Link::Adopted(r) => r,
            Link::Builtin(t) => t.region(),
        }
    }

    fn ack_doorbell(&self, vector: u32) {
        match self {
            Link::Ivshmem(t) => t.ack_doorbell(vector),
            Link::Builtin(t) => t.ack_doorbell(vector),
            Link::Adopted(_) => {}
        }
    }

    fn notify_guest(&self) -> std::io::Result<()> {
        match self {
            Link::Ivshmem(t) => t.notify_guest(),
            Link::Builtin(t) => t.notify_guest(),
            // The guest re-scans every 100 ms.
            Link::Adopted(_) => Ok(()),
        }
    }
}

/// Waits until `fd` is readable (forever without one).
async fn readable(fd: Option<&AsyncFd<OwnedFd>>) {
    match fd {
        Some(fd) => {
            if let Ok(mut g) = fd.readable().await {
                g.clear_ready();
            }
        }
        None => std::future::pending().await,
    }
}

pub struct GuestTask {
    pub name: String,
    pub transport: Link,
    pub session: Session,
    pub child: Process,
    /// Where its vm.json and channels.json live.
    pub dir: std::path::PathBuf,
    /// What vm.json says.
    pub record: crate::persist::VmRecord,
    /// The relay channels open now (channels.json).
    pub channels: crate::persist::Channels,
    pub status: Arc<Mutex<VmStatus>>,
    pub up: watch::Sender<Option<GuestInfo>>,
    pub exited: watch::Sender<bool>,
    pub started: Instant,
    pub qmp: std::path::PathBuf,
    pub relay: Arc<Mutex<RelayStore>>,
    /// Its own command channel (weak, so the task still ends when the daemon lets go).
    pub self_tx: mpsc::WeakSender<GuestMsg>,
    pub clock_sync: Option<tokio::task::JoinHandle<()>>,
    pub bus: Arc<EventBus>,
    /// QEMU's event-only QMP socket.
    pub qmp_events: std::path::PathBuf,
    /// Called with the guest's name on `GUEST_PANICKED`, before the event is published.
    pub on_panic: Option<PanicHook>,
}

/// Commands submitted to the session, by id, and where their results go.
type Pending = HashMap<u64, oneshot::Sender<Result<Reply, CommandError>>>;

/// The ivshmem listener, the control doorbell and the relay doorbell, when watched.
type Watched = (
    Option<AsyncFd<OwnedFd>>,
    Option<AsyncFd<OwnedFd>>,
    Option<AsyncFd<OwnedFd>>,
);

/// Registers a duplicate of `fd` with the reactor, for readiness only.
fn dup(fd: std::os::fd::BorrowedFd<'_>) -> std::io::Result<AsyncFd<OwnedFd>> {
    let owned = fd.try_clone_to_owned()?;
    // SAFETY: `owned` is a valid fd that the AsyncFd owns from here on, so it stays open
    // and keeps its number for the AsyncFd's whole lifetime.
    unsafe { AsyncFd::register_with_interest(owned, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

impl GuestTask {
    pub fn config(step_timeout: Duration, max_image_size: u64) -> SessionConfig {
        SessionConfig {
            step_timeout,
            pickup_timeout: step_timeout,
            max_image_size,
            ..Default::default()
        }
    }

    /// Runs until QEMU exits and every command has been answered, or until stopped.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<GuestMsg>,
        mut stop: oneshot::Receiver<StopAck>,
    ) {
        let name = self.name.clone();
        let Some((listener, control, relay)) = self.watch_fds() else {
            return;
        };
        let qmp = self.spawn_qmp_listener();
        let mut pending = Pending::new();
        let mut qemu_running = true;
        let mut stop_ack: Option<StopAck> = None;
        let mut kill_at: Option<Instant> = None;
        let mut killed = false;
        let mut misbehaviours = 0u64;
        loop {
            let now = Instant::now();
            if kill_at.is_some_and(|t| now >= t) {
                kill_at = None;
                tracing::warn!(guest = %name, "the VM did not stop in time; killing it");
                self.child.start_kill();
                killed = true;
            }
            let wake = [self.session.next_deadline(), kill_at]
                .into_iter()
                .flatten()
                .fold(now + POLL_INTERVAL, Instant::min);
            tokio::select! {
                _ = readable(listener.as_ref()) => {
                    if let Link::Ivshmem(t) = &mut self.transport {
                        if let Err(e) = t.accept() {
                            tracing::warn!(guest = %name, "ivshmem accept failed: {e}");
                        }
                    }
                }
                _ = readable(control.as_ref()) => {
                    self.transport.ack_doorbell(VECTOR_CONTROL);
                }
                _ = readable(relay.as_ref()) => {
                    self.transport.ack_doorbell(VECTOR_RELAY);
                }
                msg = rx.recv() => match msg {
                    Some(GuestMsg::RelayStats { reply }) => {
                        let _ = reply.send(self.session.relay_stats(self.transport.region()));
                    }
                    Some(GuestMsg::Run { cmd, reply }) => {
                        if qemu_running {
                            let id = self.session.submit(cmd, Instant::now());
                            pending.insert(id, reply);
                        } else {
                            let _ = reply.send(Err(CommandError::SessionClosed));
                        }
                    }
                    None => break,
                },
                status = self.child.wait(), if qemu_running => {
                    qemu_running = false;
                    self.qemu_exited(status, stop_ack.is_some(), &mut pending, &mut misbehaviours);
                    if stop_ack.is_some() { break; }
                }
                req = &mut stop, if stop_ack.is_none() => {
                    match req {
                        Ok(ack) if qemu_running => {
                            kill_at = Some(self.request_stop());
                            stop_ack = Some(ack);
                        }
                        Ok(ack) => { stop_ack = Some(ack); break; }
                        Err(_) => break,
                    }
                }
                _ = tokio::time::sleep_until(wake.into()) => {}
            }
            if qemu_running {
                self.poll_session(&mut pending, &mut misbehaviours);
            }
        }
        self.finish(qmp, stop_ack.map(|ack| (ack, killed)));
    }

    /// The ivshmem listener and the two doorbells to watch (none for an adopted VM);
    /// `None`, said, when they cannot be watched.
    fn watch_fds(&self) -> Option<Watched> {
        let name = &self.name;
        let doorbells = |c: Option<std::io::Result<_>>, r: Option<std::io::Result<_>>| match (c, r)
        {
            (Some(Ok(c)), Some(Ok(r))) => Some((c, r)),
            _ => {
                tracing::error!(guest = %name, "cannot watch the doorbell eventfds");
                None
            }
        };
        match &self.transport {
            Link::Ivshmem(t) => {
                let listener = dup(t.listener_fd())
                    .inspect_err(
                        |e| tracing::error!(guest = %name, "cannot watch the ivshmem socket: {e}"),
                    )
                    .ok()?;
                let (c, r) = doorbells(
                    t.doorbell_fd(VECTOR_CONTROL).map(dup),
                    t.doorbell_fd(VECTOR_RELAY).map(dup),
                )?;
                Some((Some(listener), Some(c), Some(r)))
            }
            Link::Builtin(t) => {
                let (c, r) = doorbells(
                    t.doorbell_fd(VECTOR_CONTROL).map(dup),
                    t.doorbell_fd(VECTOR_RELAY).map(dup),
                )?;
                Some((None, Some(c), Some(r)))
            }
            Link::Adopted(_) => Some((None, None, None)),
        }
    }

    /// The QMP event listener of a QEMU VM (a builtin VM's devices report in-process,
    /// see vm_lifecycle::launch_builtin).
    fn spawn_qmp_listener(&self) -> Option<tokio::task::JoinHandle<()>> {
        (!matches!(self.transport, Link::Builtin(_))).then(|| {
            tokio::spawn(crate::qmp_events::listen(
                self.qmp_events.clone(),
                self.name.clone(),
                self.bus.clone(),
                self.status.clone(),
                self.up.subscribe(),
                self.on_panic.clone(),
            ))
        })
    }

    /// QEMU ended (`requested`: the exit was asked for): what the guest wrote last is
    /// read, `vm_exit` published, and every command still pending answered.
    fn qemu_exited(
        &mut self,
        status: ProcessEnd,
        requested: bool,
        pending: &mut Pending,
        misbehaviours: &mut u64,
    ) {
        let name = self.name.clone();
        tracing::info!(guest = %name, "QEMU exited: {status}");
        self.status.lock().expect("status lock").state = "exited".into();
        // What the guest wrote before it died (a panic record) is still in
        // the region: read it before telling anyone the VM is gone.
        let last = self.session.drain_relays(self.transport.region());
        self.handle_events(last.events, pending, misbehaviours);
        crate::persist::remove(&self.dir);
        // `requested`: the exit was asked for (`vm stop`, a failover restart),
        // so a cluster bridge must not report it as a failure.
        let payload = status.payload(requested);
        let e = self
            .bus
            .publish(&name, EventKind::VmExit, Source::Process, None, payload);
        note_failure(&self.status, &e);
        let _ = self.exited.send(true);
        for ev in self.session.close() {
            if let SessionEvent::Done { id, result } = ev {
                if let Some(tx) = pending.remove(&id) {
                    let _ = tx.send(result);
                }
            }
        }
    }

    /// One turn of the session: what the guest wrote, handled; the guest interrupted
    /// when it has something to read.
    fn poll_session(&mut self, pending: &mut Pending, misbehaviours: &mut u64) {
        let out = self.session.poll(self.transport.region(), Instant::now());
        let had_relay = out
            .events
            .iter()
            .any(|e| matches!(e, SessionEvent::Records { .. }));
        let notify = out.notify;
        self.handle_events(out.events, pending, misbehaviours);
        if had_relay {
            let stats = self.session.relay_stats(self.transport.region());
            self.relay.lock().expect("relay lock").update_stats(stats);
        }
        if notify {
            if let Err(e) = self.transport.notify_guest() {
                tracing::debug!(guest = %self.name, "cannot interrupt the guest: {e}");
            }
        }
    }

    /// Lets go of the VM and everything the task started, then answers a stop (with
    /// whether QEMU had to be killed).
    fn finish(mut self, qmp: Option<tokio::task::JoinHandle<()>>, stop: Option<(StopAck, bool)>) {
        // An attached VM is not ours to end: letting go of it leaves it running.
        if !matches!(self.child, Process::Attached(_)) {
            self.child.start_kill();
        }
        crate::persist::remove(&self.dir);
        if let Some(sync) = self.clock_sync.take() {
            sync.abort();
        }
        if let Some(qmp) = qmp {
            qmp.abort();
        }
        // Say "stopped" only once everything is let go (the ivshmem server removes its
        // socket when dropped): a VM started again under the same name at once must
        // not lose its new socket to the old server's clean-up.
        drop(self);
        if let Some((ack, killed)) = stop {
            let _ = ack.send(StopOutcome { killed });
        }
    }

    /// The frontend said hello (again, after a reboot): the VM is up, its clock to map.
    fn guest_up(&mut self, info: GuestInfo, restarted: bool) {
        let name = &self.name;
        let boot = self.started.elapsed().as_secs_f64();
        tracing::info!(guest = %name, kernel = %info.kernel_release, generation = info.generation, restarted, "frontend up");
        let mut st = self.status.lock().expect("status lock");
        st.state = "up".into();
        st.guest = Some(info.clone());
        st.boot_secs.get_or_insert(boot);
        drop(st);
        let _ = self.up.send(Some(info.clone()));
        self.record.guest = Some(info.clone());
        self.record.save(&self.dir);
        let mut st = self.status.lock().expect("status lock");
        (st.failure, st.frontend) = (None, None);
        drop(st);
        let payload = serde_json::to_value(&info).unwrap_or_default();
        self.bus
            .publish(name, EventKind::GuestUp, Source::Frontend, None, payload);
        // A restarted guest has a new clock: map it afresh.
        self.relay.lock().expect("relay lock").set_clock(None);
        if let Some(old) = self.clock_sync.take() {
            old.abort();
        }
        let sync = clock_sync(self.self_tx.clone(), self.relay.clone(), self.name.clone());
        self.clock_sync = Some(tokio::spawn(sync));
    }

    fn handle_events(
        &mut self,
        events: Vec<SessionEvent>,
        pending: &mut Pending,
        misbehaviours: &mut u64,
    ) {
        let name = &self.name.clone();
        for ev in events {
            match ev {
                SessionEvent::GuestUp { info, restarted } => self.guest_up(info, restarted),
                SessionEvent::HelloRefused {
                    info,
                    frontend_version,
                } => crate::frontend_check::hello_refused(
                    name,
                    &self.status,
                    &info,
                    frontend_version,
                ),
                SessionEvent::Done { id, result } => {
                    if let Some(tx) = pending.remove(&id) {
                        let _ = tx.send(result);
                    }
                }
                SessionEvent::Misbehaviour(e) => {
                    *misbehaviours += 1;
                    tracing::warn!(guest = %name, count = *misbehaviours, "guest misbehaving: {e}");
                }
                SessionEvent::InitEnded {
                    name: module,
                    bytes,
                    outcome,
                    errno,
                    took,
                    after_host_gave_up,
                } => {
                    let mut payload = serde_json::json!({
                        "module": module,
                        "bytes": bytes,
                        "init_ms": took.as_secs_f64() * 1e3,
                        "after_host_gave_up": after_host_gave_up,
                    });
                    let kind = match &outcome {
                        Ok(()) => {
                            tracing::info!(guest = %name, %module, ?took, after_host_gave_up, "module init returned: live");
                            EventKind::ModuleLoaded
                        }
                        Err(e) => {
                            tracing::warn!(guest = %name, %module, ?took, after_host_gave_up, "module init failed: {e}");
                            payload["errno"] = errno.abs().into();
                            payload["errno_name"] = vesper_core::errno_symbol(errno).into();
                            payload["error"] = e.to_string().into();
                            EventKind::ModuleFailed
                        }
                    };
                    self.bus
                        .publish(name, kind, Source::Frontend, None, payload);
                }
                SessionEvent::LateStep { id, what } => {
                    tracing::warn!(guest = %name, command = id, "abandoned command {what}");
                }
                SessionEvent::RelayOpened(spec) => {
                    tracing::info!(guest = %name, module = %spec.module, channel = %spec.name, cpus = spec.n_cpus, "relay channel opened");
                    self.channels.insert(spec.open_request());
                    self.channels.save(&self.dir);
                    self.relay
                        .lock()
                        .expect("relay lock")
                        .opened(Arc::new(spec));
                }
                SessionEvent::RelayRefused(e) => {
                    *misbehaviours += 1;
                    tracing::warn!(guest = %name, "relay channel refused: {e}");
                }
                SessionEvent::Records { channel, records } => {
                    let stored = self
                        .relay
                        .lock()
                        .expect("relay lock")
                        .push(&channel, records);
                    let relay = &self.relay;
                    publish_records(&self.bus, &self.status, name, stored, &|m| {
                        relay.lock().expect("relay lock").layout(m)
                    });
                }
                SessionEvent::RelayClosed {
                    channel,
                    error,
                    stats,
                } => {
                    match &error {
                        Some(e) => {
                            tracing::warn!(guest = %name, module = %channel.module, channel = %channel.name, "relay channel dropped: {e}")
                        }
                        None => {
                            tracing::info!(guest = %name, module = %channel.module, channel = %channel.name, "relay channel closed")
                        }
                    }
                    if self.channels.0.remove(&channel.id).is_some() {
                        self.channels.save(&self.dir);
                    }
                    let mut store = self.relay.lock().expect("relay lock");
                    store.update_stats(vec![stats]);
                    store.closed(&channel, error);
                }
            }
        }
    }

    /// Asks QEMU to quit through QMP `quit` (in a thread: QMP is blocking I/O), or a
    /// builtin VM to stop. The main loop kills QEMU if it has not exited by the returned
    /// deadline.
    fn request_stop(&mut self) -> Instant {
        if let Process::Builtin { stop, .. } = &self.child {
            // The run notices within milliseconds; the grace covers a stuck vCPU.
            stop.stop();
            return Instant::now() + STOP_GRACE;
        }
        if let Process::Attached(a) = &self.child {
            return a.request_stop(&self.qmp, &self.name);
        }
        let qmp = self.qmp.clone();
        let name = self.name.clone();
        std::thread::spawn(move || {
            if let Err(e) = vesper_qemu::Qmp::connect(&qmp, Duration::from_secs(2))
                .and_then(|mut q| q.execute("quit", None))
            {
                tracing::warn!(guest = %name, "QMP quit failed ({e}); QEMU will be killed");
            }
        });
        Instant::now() + STOP_GRACE
    }
}
