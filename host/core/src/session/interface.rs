//! What a caller hands a session and what it gets back: its configuration, the commands
//! (`Command`) the daemon submits, their replies (`Reply`, with `GuestModule` for a
//! list), the guest's hello (`GuestInfo`) and the events (`SessionEvent`) a poll yields.
//! Plain data; how they move through the guest is the session's.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vesper_relay::{ChannelSpec, ChannelStats, Record, RelayError};
use vesper_shared_abi::*;
use vesper_shmem::ShmemError;

use crate::CommandError;

/// How long the host waits for a module's init by default: generous, since a driver's
/// init may wait for its hardware.
pub const DEFAULT_INIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Limits and timeouts of a session.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Longest silence from the guest while a command is under way.
    pub step_timeout: Duration,
    /// Longest a command waits for the guest to pick it up.
    pub pickup_timeout: Duration,
    /// Longest the host waits for a module's init once the guest said it started
    /// (`REQ_PROGRESS`), unless the load names its own limit.
    pub init_timeout: Duration,
    /// Largest image the host pushes.
    pub max_image_size: u64,
    /// Largest chunk written per fetch.
    pub max_chunk: u32,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            step_timeout: Duration::from_secs(10),
            pickup_timeout: Duration::from_secs(10),
            init_timeout: DEFAULT_INIT_TIMEOUT,
            max_image_size: 32 << 20,
            max_chunk: 1 << 20,
        }
    }
}

/// An operator command for one guest.
#[derive(Debug, Clone)]
pub enum Command {
    /// Push and load a module image (already validated by the caller).
    Load {
        /// Module name from its `.modinfo`.
        name: String,
        /// The whole image.
        image: Arc<[u8]>,
        /// Module parameters, space separated.
        params: String,
        /// How long to wait for the module's init; the session's default if `None`.
        init_timeout: Option<Duration>,
    },
    /// Unload a module.
    Unload {
        /// Module name.
        name: String,
        /// Force (`O_TRUNC`).
        force: bool,
    },
    /// List the guest's modules.
    List,
    /// Fetch the guest kernel log tail.
    Kmsg,
    /// Read the guest's clock (answered at once).
    Clock,
}

impl Command {
    pub(super) fn op(&self) -> u32 {
        match self {
            Command::Load { .. } => OP_LOAD,
            Command::Unload { .. } => OP_UNLOAD,
            Command::List => OP_LIST,
            Command::Kmsg => OP_KMSG,
            Command::Clock => OP_CLOCK,
        }
    }

    pub(super) fn op_name(&self) -> &'static str {
        match self {
            Command::Load { .. } => "load",
            Command::Unload { .. } => "unload",
            Command::List => "list",
            Command::Kmsg => "kmsg",
            Command::Clock => "clock",
        }
    }
}

/// A module loaded in the guest, as `OP_LIST` reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestModule {
    /// Name.
    pub name: String,
    /// Core size in bytes.
    pub size: u64,
    /// Reference count.
    pub refcount: i32,
    /// "live", "coming", "going" or "unformed".
    pub state: String,
    /// Loaded by Vesper.
    pub pushed: bool,
    /// The Vesper frontend itself.
    pub frontend: bool,
}

/// What a successful command returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// The module is loaded and its init returned 0.
    Loaded {
        /// Module name.
        name: String,
        /// Bytes pushed.
        bytes: u64,
    },
    /// The module is gone.
    Unloaded {
        /// Module name.
        name: String,
    },
    /// The guest's modules.
    Modules(Vec<GuestModule>),
    /// The guest kernel log tail.
    Kmsg(String),
    /// The guest's `ktime_get_ns()` when it answered.
    Clock(u64),
}

/// What the guest told the host about itself in its hello.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuestInfo {
    /// `uname -r`.
    pub kernel_release: String,
    /// The kernel's vermagic.
    pub vermagic: String,
    /// Online CPUs.
    pub nr_cpus: u32,
    /// Region size the guest sees.
    pub region_size: u64,
    /// Frontend generation (bumped per guest boot).
    pub generation: u32,
}

/// The host's implementation version, in the answer to a hello.
pub const HOST_VERSION: u32 = 1;
/// The frontend versions (a hello's `frontend_version`) this host speaks. A hello of
/// any other is answered `-EPROTO` (the frontend then stays idle) and reported as
/// [`SessionEvent::HelloRefused`].
pub const FRONTEND_VERSIONS: std::ops::RangeInclusive<u32> = 1..=1;

/// Something the daemon should know about.
#[derive(Debug)]
pub enum SessionEvent {
    /// The frontend said hello (first time, or after a guest restart).
    GuestUp {
        /// What it reported.
        info: GuestInfo,
        /// True when an earlier generation was known: the guest restarted.
        restarted: bool,
    },
    /// The frontend said hello in a version this host does not speak
    /// ([`crate::FRONTEND_VERSIONS`]): refused, no session (the frontend stays idle).
    HelloRefused {
        /// What it reported.
        info: GuestInfo,
        /// The version it speaks.
        frontend_version: u32,
    },
    /// A command finished.
    Done {
        /// Id returned by [`Session::submit`].
        id: u64,
        /// Its result.
        result: Result<Reply, CommandError>,
    },
    /// The guest broke the protocol; the session keeps going.
    Misbehaviour(ShmemError),
    /// The guest opened a relay channel and the host accepted it.
    RelayOpened(ChannelSpec),
    /// The host refused a relay channel (bad geometry or grants).
    RelayRefused(RelayError),
    /// Records read from a channel.
    Records {
        /// The channel.
        channel: Arc<ChannelSpec>,
        /// Records in the order read (per CPU in sequence order).
        records: Vec<Record>,
    },
    /// A channel is gone: closed by the guest, dropped for misbehaviour, or its guest
    /// restarted.
    RelayClosed {
        /// The channel.
        channel: Arc<ChannelSpec>,
        /// Why, when not a clean close.
        error: Option<String>,
        /// Its final counters.
        stats: ChannelStats,
    },
    /// A module's init, which the guest had said was starting, returned: loaded or
    /// failed. Comes for every such load, also one whose command already ended with
    /// [`CommandError::InitStillRunning`].
    InitEnded {
        /// Module name.
        name: String,
        /// Bytes pushed.
        bytes: u64,
        /// `Ok` when init returned 0 and the module is live.
        outcome: Result<(), CommandError>,
        /// The guest's errno (negative), 0 on success.
        errno: i32,
        /// From the guest saying init starts to its completion (host clock).
        took: Duration,
        /// The command had already ended: the host stopped waiting before init returned.
        after_host_gave_up: bool,
    },
    /// A late step of a command the host had already given up on.
    LateStep {
        /// The abandoned command.
        id: u64,
        /// What the guest said.
        what: String,
    },
}

/// Result of one `Session::poll`.
#[derive(Debug, Default)]
pub struct PollOutcome {
    /// Events for the daemon, in order.
    pub events: Vec<SessionEvent>,
    /// Responses were produced: interrupt the guest.
    pub notify: bool,
}
