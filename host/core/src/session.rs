//! The per-guest control session: the host half of `shared-abi/PROTOCOL.md`.
//!
//! This file holds the `Session` state machine: the hello, the command queue and each
//! command's steps (pickup, chunks, progress, completion, expiry). What callers pass in
//! and get back is `interface`'s; turning completions into replies and errors is
//! `completion`'s; the relay channels are `relay_channels`'s. None of those names the
//! session.

mod completion;
mod interface;
mod relay_channels;

pub use interface::{
    Command, GuestInfo, GuestModule, PollOutcome, Reply, SessionConfig, SessionEvent,
    DEFAULT_INIT_TIMEOUT, FRONTEND_VERSIONS, HOST_VERSION,
};

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use vesper_shared_abi::*;
use vesper_shmem::grant::GrantNeed;
use vesper_shmem::{HostRings, Message, SharedRegion, ShmemError};
use vm_memory::ByteValued;

use crate::CommandError;
use completion::{failure, load_failure, lossy, read_module_list, ECANCELED, EINVAL, EPROTO};
use relay_channels::RelayChannels;
use vesper_relay::{ChannelSpec, ChannelStats, RelayError};

/// Requests handled per [`Session::poll`], so a flooding guest cannot starve others.
const MAX_REQUESTS_PER_POLL: usize = 64;
/// Abandoned command ids remembered, to answer late guest steps with `-ECANCELED`.
const ABANDONED_MEMORY: usize = 32;
/// Loads whose init outlasted the host's wait, remembered to report how they ended.
const LATE_INIT_MEMORY: usize = 32;

#[derive(Debug)]
struct Queued {
    id: u64,
    cmd: Command,
    submitted: Instant,
}

/// A load whose module init runs in the guest: the guest's command thread is free.
#[derive(Debug)]
struct Initializing {
    id: u64,
    name: String,
    bytes: u64,
    started: Instant,
    deadline: Instant,
    limit: Duration,
}

/// A load the host stopped waiting for while its init ran.
#[derive(Debug)]
struct LateInit {
    id: u64,
    name: String,
    bytes: u64,
    started: Instant,
}

#[derive(Debug)]
struct Active {
    id: u64,
    cmd: Command,
    deadline: Instant,
    stage: &'static str,
    sent: u64,
}

/// One request from the guest as its handler sees it: the region to answer in, the
/// message, and when the poll read it.
#[derive(Clone, Copy)]
struct Request<'a> {
    region: &'a SharedRegion,
    msg: &'a Message,
    now: Instant,
}

/// The host half of one guest's control protocol. Pure logic over the region: the
/// daemon calls [`Session::poll`] when the doorbell rings, a command arrives, or
/// [`Session::next_deadline`] passes, and notifies the guest when asked to.
#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    rings: HostRings,
    info: Option<GuestInfo>,
    standing_wait: Option<MsgHeader>,
    queue: VecDeque<Queued>,
    active: Option<Active>,
    initializing: Vec<Initializing>,
    late_inits: VecDeque<LateInit>,
    abandoned: VecDeque<u64>,
    next_id: u64,
    broken: Option<String>,
    channels: RelayChannels,
    /// Reads guest RAM frames granted to the host, when the transport can.
    frames: Option<Box<dyn crate::GuestFrames>>,
}

impl Session {
    /// A session for a fresh region.
    pub fn new(config: SessionConfig) -> Self {
        Self {
            config,
            rings: HostRings::new(),
            info: None,
            standing_wait: None,
            queue: VecDeque::new(),
            active: None,
            initializing: Vec::new(),
            late_inits: VecDeque::new(),
            abandoned: VecDeque::new(),
            next_id: 1,
            broken: None,
            channels: RelayChannels::default(),
            frames: None,
        }
    }

    /// Lets the session read result data the guest granted as guest RAM frames (a
    /// transport that owns guest RAM offers `HOST_FEATURE_GUEST_FRAMES`); without it
    /// such grants are refused like any bad grant.
    pub fn with_guest_frames(mut self, frames: Box<dyn crate::GuestFrames>) -> Self {
        self.frames = Some(frames);
        self
    }

    /// The session another host process was running over `region` (a restarted
    /// daemon), for a guest whose last hello was `info`.
    ///
    /// The host ring indices come back from the region's host-owned words; the guest's
    /// standing `REQ_WAIT_COMMAND` (consumed by the old host, never answered) is found
    /// among the last consumed request slots. If the guest restarted meanwhile (the
    /// header's generation is not `info.generation`) or the indices make no sense, the
    /// session starts afresh and waits for the guest's next hello: then
    /// [`Session::guest`] is `None` and relay channels of the old generation must not
    /// be resumed.
    pub fn resume(config: SessionConfig, region: &SharedRegion, info: GuestInfo) -> Self {
        let mut s = Self::new(config);
        // Ids the old host handed out must not be mistaken for ours.
        s.next_id = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
            .max(1);
        let rings = match HostRings::resume(region) {
            Ok(Some(r)) => r,
            _ => {
                tracing::warn!("host ring indices in the region are inconsistent; starting afresh");
                if let Ok(r) = HostRings::skip_to_now(region) {
                    s.rings = r;
                }
                return s;
            }
        };
        s.rings = rings;
        let generation = region.header().map(|h| h.generation);
        if generation.as_ref().ok() != Some(&info.generation) {
            tracing::info!(
                ?generation,
                persisted = info.generation,
                "the guest restarted meanwhile; waiting for its hello"
            );
            return s;
        }
        s.standing_wait = s.find_standing_wait(region, info.generation);
        s.info = Some(info);
        s
    }

    /// The most recent consumed `REQ_WAIT_COMMAND` of `generation`, if it was never
    /// answered.
    fn find_standing_wait(&self, region: &SharedRegion, generation: u32) -> Option<MsgHeader> {
        // Slots the guest may have reused for requests posted since are not looked at.
        let producer = region
            .load_u32(
                REQ_RING_OFFSET + std::mem::offset_of!(RingControl, producer) as u64,
                std::sync::atomic::Ordering::Acquire,
            )
            .ok()?;
        let consumer = region
            .load_u32(
                REQ_RING_OFFSET + std::mem::offset_of!(RingControl, consumer) as u64,
                std::sync::atomic::Ordering::Acquire,
            )
            .ok()?;
        let pending = producer.wrapping_sub(consumer).min(RING_SLOTS);
        for back in 1..=(RING_SLOTS - pending) {
            let h = self.rings.consumed_request(region, back).ok()?;
            if h.kind == REQ_WAIT_COMMAND && h.generation == generation {
                return match self.rings.answered(region, h.id, generation) {
                    Ok(false) => Some(h),
                    _ => None,
                };
            }
            if h.kind == REQ_HELLO && h.generation == generation {
                return None;
            }
        }
        None
    }

    /// Re-opens, on a resumed session, a relay channel the old host had accepted:
    /// `req` is checked again (its grants must still be live) and the reader resumes
    /// from the cursors kept in the consumer area.
    pub fn resume_channel(
        &mut self,
        region: &SharedRegion,
        req: &RelayOpenRequest,
    ) -> Result<ChannelSpec, RelayError> {
        let generation = self.info.as_ref().map(|i| i.generation).unwrap_or(0);
        self.channels.resume(region, req, generation)
    }

    /// The guest's hello, once it said one.
    pub fn guest(&self) -> Option<&GuestInfo> {
        self.info.as_ref()
    }

    /// The session's limits.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// Queues a command; its result comes as [`SessionEvent::Done`] with this id.
    pub fn submit(&mut self, cmd: Command, now: Instant) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.queue.push_back(Queued {
            id,
            cmd,
            submitted: now,
        });
        id
    }

    /// The earliest instant at which a timeout may fire.
    pub fn next_deadline(&self) -> Option<Instant> {
        let active = self.active.as_ref().map(|a| a.deadline);
        let queued = self
            .queue
            .front()
            .map(|q| q.submitted + self.config.pickup_timeout);
        let inits = self.initializing.iter().map(|i| i.deadline);
        active.into_iter().chain(queued).chain(inits).min()
    }

    /// Fails every pending command (the VM is going away).
    pub fn close(&mut self) -> Vec<SessionEvent> {
        let mut events = Vec::new();
        if let Some(a) = self.active.take() {
            events.push(SessionEvent::Done {
                id: a.id,
                result: Err(CommandError::SessionClosed),
            });
        }
        let ids = self.initializing.drain(..).map(|i| i.id);
        for id in ids.chain(self.queue.drain(..).map(|q| q.id)) {
            events.push(SessionEvent::Done {
                id,
                result: Err(CommandError::SessionClosed),
            });
        }
        events
    }

    /// Handles every pending request, dispatches a queued command if the guest is
    /// waiting for one, and applies timeouts.
    pub fn poll(&mut self, region: &SharedRegion, now: Instant) -> PollOutcome {
        let mut out = PollOutcome::default();
        for _ in 0..MAX_REQUESTS_PER_POLL {
            match self.rings.pop_request(region) {
                Ok(None) => break,
                Ok(Some(msg)) => {
                    self.broken = None;
                    if let Err(e) = self.handle(region, &msg, now, &mut out) {
                        self.misbehaved(e, &mut out);
                    }
                }
                Err(e) => {
                    self.misbehaved(e, &mut out);
                    break;
                }
            }
        }
        if let Err(e) = self.dispatch(region, now, &mut out) {
            self.misbehaved(e, &mut out);
        }
        self.expire(now, &mut out);
        self.read_relays(region, &mut out);
        out
    }

    /// Reads what the relay channels hold without touching the rings: for a guest that
    /// has died (its last records, a panic record among them, are still in memory).
    pub fn drain_relays(&mut self, region: &SharedRegion) -> PollOutcome {
        let mut out = PollOutcome::default();
        self.read_relays(region, &mut out);
        out
    }

    /// Counters of every open channel.
    pub fn relay_stats(&self, region: &SharedRegion) -> Vec<ChannelStats> {
        self.channels.stats(region)
    }

    fn read_relays(&mut self, region: &SharedRegion, out: &mut PollOutcome) {
        let known = self.info.as_ref().map(|i| i.generation);
        self.channels.read(region, known, &mut out.events);
    }

    fn on_relay_open(&mut self, r: Request, out: &mut PollOutcome) -> Result<(), ShmemError> {
        let Request { region, msg, .. } = r;
        let req: RelayOpenRequest = msg.payload_as()?;
        let status = self
            .channels
            .open(region, &req, msg.header.generation, &mut out.events);
        self.respond(region, &msg.header, status, &[], out)
    }

    fn on_relay_close(&mut self, r: Request, out: &mut PollOutcome) -> Result<(), ShmemError> {
        let Request { region, msg, .. } = r;
        let req: RelayCloseRequest = msg.payload_as()?;
        let status = self.channels.close(region, &req, &mut out.events);
        self.respond(region, &msg.header, status, &[], out)
    }

    fn misbehaved(&mut self, e: ShmemError, out: &mut PollOutcome) {
        // Report a persistent fault (a ring left overrun) once, not on every poll.
        let text = e.to_string();
        if self.broken.as_deref() != Some(text.as_str()) {
            self.broken = Some(text);
            out.events.push(SessionEvent::Misbehaviour(e));
        }
    }

    fn respond(
        &mut self,
        region: &SharedRegion,
        req: &MsgHeader,
        status: i32,
        payload: &[u8],
        out: &mut PollOutcome,
    ) -> Result<(), ShmemError> {
        self.rings.push_response(region, req, status, payload)?;
        out.notify = true;
        Ok(())
    }

    fn handle(
        &mut self,
        region: &SharedRegion,
        msg: &Message,
        now: Instant,
        out: &mut PollOutcome,
    ) -> Result<(), ShmemError> {
        let h = msg.header;
        let r = Request { region, msg, now };
        if h.kind == REQ_HELLO {
            return self.on_hello(r, out);
        }
        let current = self.info.as_ref().map(|i| i.generation);
        if current != Some(h.generation) {
            tracing::debug!(
                kind = h.kind,
                generation = h.generation,
                ?current,
                "dropping request of another generation"
            );
            return Ok(());
        }
        match h.kind {
            REQ_WAIT_COMMAND => {
                self.standing_wait = Some(h);
                Ok(())
            }
            REQ_FETCH_CHUNK => self.on_fetch(r, out),
            REQ_PROGRESS => self.on_progress(r, out),
            REQ_RELAY_OPEN => self.on_relay_open(r, out),
            REQ_RELAY_CLOSE => self.on_relay_close(r, out),
            REQ_COMPLETION => self.on_completion(r, out),
            other => {
                tracing::warn!(kind = other, "unknown request kind; answering -EINVAL");
                self.respond(region, &h, -EINVAL, &[], out)
            }
        }
    }

    fn on_hello(&mut self, r: Request, out: &mut PollOutcome) -> Result<(), ShmemError> {
        let Request { region, msg, .. } = r;
        let hello: HelloRequest = msg.payload_as()?;
        let info = GuestInfo {
            kernel_release: lossy(c_str_bytes(&hello.kernel_release)),
            vermagic: lossy(c_str_bytes(&hello.vermagic)),
            nr_cpus: hello.nr_cpus,
            region_size: hello.region_size,
            generation: msg.header.generation,
        };
        let restarted = self
            .info
            .as_ref()
            .is_some_and(|old| old.generation != info.generation);
        // A new frontend start means new rings and new grants: old channels are stale.
        self.channels.close_all_restarted(region, &mut out.events);
        if restarted {
            let ids = self.active.take().map(|a| a.id).into_iter();
            for id in ids.chain(self.initializing.drain(..).map(|i| i.id)) {
                out.events.push(SessionEvent::Done {
                    id,
                    result: Err(CommandError::GuestRestarted),
                });
            }
            self.abandoned.clear();
            self.late_inits.clear();
        }
        self.standing_wait = None;
        if !FRONTEND_VERSIONS.contains(&hello.frontend_version) {
            tracing::warn!(
                frontend_version = hello.frontend_version,
                host_speaks = ?FRONTEND_VERSIONS,
                kernel = %info.kernel_release,
                "refusing the hello of a frontend version this host does not speak"
            );
            self.info = None;
            self.respond(region, &msg.header, -EPROTO, &[], out)?;
            out.events.push(SessionEvent::HelloRefused {
                info,
                frontend_version: hello.frontend_version,
            });
            return Ok(());
        }
        self.info = Some(info.clone());
        let reply = HelloResponse {
            host_version: HOST_VERSION,
            max_chunk: self.config.max_chunk,
            max_image_size: self.config.max_image_size,
        };
        self.respond(region, &msg.header, 0, reply.as_slice(), out)?;
        out.events.push(SessionEvent::GuestUp { info, restarted });
        Ok(())
    }

    fn dispatch(
        &mut self,
        region: &SharedRegion,
        now: Instant,
        out: &mut PollOutcome,
    ) -> Result<(), ShmemError> {
        if self.active.is_some() {
            return Ok(());
        }
        let Some(wait) = self.standing_wait else {
            return Ok(());
        };
        let Some(q) = self.queue.pop_front() else {
            return Ok(());
        };
        let mut c = CommandResponse {
            command_id: q.id,
            op: q.cmd.op(),
            ..Default::default()
        };
        match &q.cmd {
            Command::Load {
                name,
                image,
                params,
                ..
            } => {
                c.image_size = image.len() as u64;
                c.image_crc32 = crc32fast::hash(image);
                c.params_len = params.len() as u32;
                let ok = fill_c_str(&mut c.name, name.as_bytes())
                    && fill_c_str(&mut c.params, params.as_bytes());
                if !ok {
                    let e = CommandError::BadGuestData(format!(
                        "module name or parameters too long for the wire ({name})"
                    ));
                    out.events.push(SessionEvent::Done {
                        id: q.id,
                        result: Err(e),
                    });
                    return Ok(());
                }
            }
            Command::Unload { name, force } => {
                c.flags = if *force { UNLOAD_FLAG_FORCE } else { 0 };
                if !fill_c_str(&mut c.name, name.as_bytes()) {
                    out.events.push(SessionEvent::Done {
                        id: q.id,
                        result: Err(CommandError::NotLoaded { name: name.clone() }),
                    });
                    return Ok(());
                }
            }
            Command::List | Command::Kmsg | Command::Clock => {}
        }
        self.standing_wait = None;
        self.respond(region, &wait, 0, c.as_slice(), out)?;
        let stage = match q.cmd {
            Command::Load { .. } => "transfer",
            _ => q.cmd.op_name(),
        };
        self.active = Some(Active {
            id: q.id,
            cmd: q.cmd,
            deadline: now + self.config.step_timeout,
            stage,
            sent: 0,
        });
        Ok(())
    }

    fn on_fetch(&mut self, r: Request, out: &mut PollOutcome) -> Result<(), ShmemError> {
        let Request { region, msg, now } = r;
        let req: FetchChunkRequest = msg.payload_as()?;
        let step_timeout = self.config.step_timeout;
        let max_chunk = self.config.max_chunk as u64;
        let generation = msg.header.generation;
        let active = match self.active.as_mut() {
            Some(a) if a.id == req.command_id => a,
            _ => {
                if self.abandoned.contains(&req.command_id) {
                    out.events.push(SessionEvent::LateStep {
                        id: req.command_id,
                        what: "asked for an image chunk".into(),
                    });
                }
                return self.respond(region, &msg.header, -ECANCELED, &[], out);
            }
        };
        let Command::Load { image, .. } = &active.cmd else {
            return self.respond(region, &msg.header, -EINVAL, &[], out);
        };
        let need = GrantNeed {
            access: GRANT_WRITE,
            owner: GRANT_OWNER_STAGING,
            generation,
        };
        let grant = match region.grant(req.grant_ref, need) {
            Ok(g) => g,
            Err(e) => {
                let a = self.active.take().expect("active checked above");
                self.remember_abandoned(a.id);
                self.respond(region, &msg.header, -EINVAL, &[], out)?;
                out.events.push(SessionEvent::Done {
                    id: a.id,
                    result: Err(CommandError::Misbehaving(e)),
                });
                return Ok(());
            }
        };
        let total = image.len() as u64;
        if req.offset > total {
            return self.respond(region, &msg.header, -EINVAL, &[], out);
        }
        let len = (total - req.offset).min(grant.len as u64).min(max_chunk);
        let chunk = &image[req.offset as usize..(req.offset + len) as usize];
        region.write_granted(&grant, chunk)?;
        let reply = ChunkResponse {
            command_id: req.command_id,
            offset: req.offset,
            len: len as u32,
            crc32: crc32fast::hash(chunk),
        };
        active.sent = active.sent.max(req.offset + len);
        active.stage = if active.sent >= total {
            "load"
        } else {
            "transfer"
        };
        active.deadline = now + step_timeout;
        self.respond(region, &msg.header, 0, reply.as_slice(), out)
    }

    /// The guest is about to start a long stage of a command (a module's init): from
    /// now its command thread is free and the load waits by its own init limit.
    fn on_progress(&mut self, r: Request, out: &mut PollOutcome) -> Result<(), ShmemError> {
        let Request { region, msg, now } = r;
        let req: ProgressRequest = msg.payload_as()?;
        let load = match self.active.take() {
            Some(Active {
                id,
                cmd:
                    Command::Load {
                        name,
                        image,
                        init_timeout,
                        ..
                    },
                sent,
                ..
            }) if id == req.command_id
                && req.stage == STAGE_INIT_MODULE
                && sent >= image.len() as u64 =>
            {
                let limit = init_timeout.unwrap_or(self.config.init_timeout);
                Initializing {
                    id,
                    name,
                    bytes: image.len() as u64,
                    started: now,
                    deadline: now + limit,
                    limit,
                }
            }
            other => {
                self.active = other;
                let status = if self.abandoned.contains(&req.command_id) {
                    out.events.push(SessionEvent::LateStep {
                        id: req.command_id,
                        what: "wanted to start the module's init; told it was cancelled".into(),
                    });
                    -ECANCELED
                } else if self.active.as_ref().is_some_and(|a| a.id == req.command_id) {
                    // Our own command, but not a stage it can enter now.
                    -EINVAL
                } else {
                    -ECANCELED
                };
                return self.respond(region, &msg.header, status, &[], out);
            }
        };
        tracing::debug!(module = %load.name, limit = ?load.limit, "module init started in the guest");
        self.initializing.push(load);
        self.respond(region, &msg.header, 0, &[], out)
    }

    /// The completion of a load whose init the host waited for or had given up on.
    fn on_init_completion(
        &mut self,
        r: Request,
        c: &CompletionRequest,
        log: String,
        out: &mut PollOutcome,
    ) -> Option<Result<(), ShmemError>> {
        let Request { region, msg, now } = r;
        let (id, name, bytes, started, waiting) =
            if let Some(i) = self.initializing.iter().position(|i| i.id == c.command_id) {
                let i = self.initializing.remove(i);
                (i.id, i.name, i.bytes, i.started, true)
            } else if let Some(i) = self.late_inits.iter().position(|l| l.id == c.command_id) {
                let l = self.late_inits.remove(i).expect("position is in range");
                (l.id, l.name, l.bytes, l.started, false)
            } else {
                return None;
            };
        if waiting {
            let result = if c.error == 0 {
                Ok(Reply::Loaded {
                    name: name.clone(),
                    bytes,
                })
            } else {
                Err(load_failure(&name, c, log.clone()))
            };
            out.events.push(SessionEvent::Done { id, result });
        }
        let outcome = if c.error == 0 {
            Ok(())
        } else {
            Err(load_failure(&name, c, log))
        };
        out.events.push(SessionEvent::InitEnded {
            name,
            bytes,
            outcome,
            errno: c.error,
            took: now.saturating_duration_since(started),
            after_host_gave_up: !waiting,
        });
        Some(self.respond(region, &msg.header, 0, &[], out))
    }

    fn on_completion(&mut self, r: Request, out: &mut PollOutcome) -> Result<(), ShmemError> {
        let Request { region, msg, .. } = r;
        let c: CompletionRequest = msg.payload_as()?;
        let log = lossy(&c.log[..(c.log_len.min(LOG_LEN)) as usize]);
        if let Some(done) = self.on_init_completion(r, &c, log.clone(), out) {
            return done;
        }
        let active = match self.active.take() {
            Some(a) if a.id == c.command_id => a,
            other => {
                self.active = other;
                if self.abandoned.contains(&c.command_id) {
                    let what = if c.error == 0 {
                        "completed after the host gave up (check `vesper lsmod`)".to_string()
                    } else {
                        format!(
                            "failed after the host gave up: {}",
                            crate::errno_name(c.error)
                        )
                    };
                    out.events.push(SessionEvent::LateStep {
                        id: c.command_id,
                        what,
                    });
                }
                return self.respond(region, &msg.header, 0, &[], out);
            }
        };
        // Read any result data before answering: the answer lets the guest revoke it.
        let result = if c.error == 0 {
            match &active.cmd {
                Command::Load { name, image, .. } => Ok(Reply::Loaded {
                    name: name.clone(),
                    bytes: image.len() as u64,
                }),
                Command::Unload { name, .. } => Ok(Reply::Unloaded { name: name.clone() }),
                Command::Kmsg => Ok(Reply::Kmsg(log)),
                Command::Clock => Ok(Reply::Clock(c.guest_time_ns)),
                Command::List => {
                    read_module_list(region, self.frames.as_deref(), &c, msg.header.generation)
                        .map(Reply::Modules)
                }
            }
        } else {
            Err(failure(&active.cmd, &c, log))
        };
        self.respond(region, &msg.header, 0, &[], out)?;
        out.events.push(SessionEvent::Done {
            id: active.id,
            result,
        });
        Ok(())
    }

    fn remember_abandoned(&mut self, id: u64) {
        if self.abandoned.len() == ABANDONED_MEMORY {
            self.abandoned.pop_front();
        }
        self.abandoned.push_back(id);
    }

    fn expire(&mut self, now: Instant, out: &mut PollOutcome) {
        if let Some(a) = self.active.as_ref() {
            if now >= a.deadline {
                let a = self.active.take().expect("checked");
                self.remember_abandoned(a.id);
                let e = CommandError::Timeout {
                    stage: a.stage,
                    after: self.config.step_timeout,
                };
                out.events.push(SessionEvent::Done {
                    id: a.id,
                    result: Err(e),
                });
            }
        }
        let (late, waiting): (Vec<_>, Vec<_>) = std::mem::take(&mut self.initializing)
            .into_iter()
            .partition(|i| now >= i.deadline);
        self.initializing = waiting;
        for i in late {
            out.events.push(SessionEvent::Done {
                id: i.id,
                result: Err(CommandError::InitStillRunning {
                    name: i.name.clone(),
                    after: i.limit,
                }),
            });
            if self.late_inits.len() == LATE_INIT_MEMORY {
                self.late_inits.pop_front();
            }
            self.late_inits.push_back(LateInit {
                id: i.id,
                name: i.name,
                bytes: i.bytes,
                started: i.started,
            });
        }
        while let Some(q) = self.queue.front() {
            if now < q.submitted + self.config.pickup_timeout {
                break;
            }
            let q = self.queue.pop_front().expect("checked");
            let e = CommandError::NotResponding {
                after: self.config.pickup_timeout,
            };
            out.events.push(SessionEvent::Done {
                id: q.id,
                result: Err(e),
            });
        }
    }
}

#[cfg(test)]
mod tests;
