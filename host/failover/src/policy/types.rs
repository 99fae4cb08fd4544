//! What a validated policy is made of: this host's capacities, the guests, groups, rules,
//! limits and `[dump]`, and the defaults a file may leave out. Below both the parser
//! (`parse.rs`, `guest.rs`) and [`Policy`](super::Policy), which import it.

use std::fmt;
use std::path::PathBuf;

use serde::Serialize;
use vesper_events::EventKind;

use crate::error::Location;

/// Smallest and largest `timeout_secs` of a hook.
pub const HOOK_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 1..=600;
/// `timeout_secs` of a hook that sets none.
pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 10;
/// `max_restarts` when `[limits]` sets none.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// `window_secs` when `[limits]` sets none.
pub const DEFAULT_WINDOW_SECS: u64 = 600;
/// `[dump] wait_secs` when none is set: how long a failover action waits for a panicked
/// guest's vmcore before it goes ahead.
pub const DEFAULT_DUMP_WAIT_SECS: u64 = 120;
/// Smallest and largest `[dump] wait_secs`.
pub const DUMP_WAIT_SECS: std::ops::RangeInclusive<u64> = 1..=3600;
/// Test-init mode of a guest that sets none.
pub const DEFAULT_MODE: &str = "freeze";

/// This host's capacities (Serviceguard's `CAPACITY_NAME`/`CAPACITY_VALUE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct HostCapacity {
    /// At most this many guests run here at once.
    pub max_guests: u32,
    /// The running guests' memory adds up to at most this.
    pub max_memory_mib: u64,
}

/// A probe module pushed into a guest after it (re)starts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeSpec {
    /// Module name the daemon resolves to a `.ko`, or a path.
    pub module: String,
    /// Module parameters (`watch_comm=svc`).
    pub params: Vec<String>,
}

/// A guest the engine may start or restart, and what it needs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GuestSpec {
    /// Guest name, as in events.
    pub name: String,
    /// Memory it needs, MiB (its definition's, when it has one).
    pub memory_mib: u32,
    /// vCPUs (default 1; its definition's, when it has one).
    pub cpus: u32,
    /// Test-init mode (default `freeze`; its definition's `[boot] mode`, when it has one).
    pub mode: String,
    /// The VMM it runs in: `qemu` (default) or `builtin` (its definition's, when it has
    /// one).
    pub vmm: String,
    /// What it boots instead of the kit's kernel (a path, or `mini`), if anything (its
    /// definition's `[boot] kernel`, when it has one).
    pub kernel: Option<String>,
    /// The VM definition file it is started from (`definition = "web2.toml"`): the
    /// engine starts the VM that file defines (disks, networks, firmware, QEMU options),
    /// read again at each start. `None`: a kit test guest built from the keys above.
    pub definition: Option<DefinitionRef>,
    /// Save a vmcore when it panics (`dump = true|false`); `None`: the policy's
    /// `[dump] on_panic`, else vesperd's `--dump-on-panic`.
    pub dump: Option<bool>,
    /// Probes to push after it (re)starts.
    pub probes: Vec<ProbeSpec>,
    /// A probe group pushed, all or nothing, after the probes.
    pub probe_group: Option<ProbeGroupRef>,
}

/// A guest's `probe_group`: a group file, checked by
/// [`Policy::check_probe_groups`](super::Policy::check_probe_groups).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProbeGroupRef {
    /// The group file, resolved against the policy file's directory.
    pub path: PathBuf,
    /// Where the policy names it.
    #[serde(skip)]
    pub at: Location,
}

/// A guest's `definition`: a VM definition file (`vesper-vmdef`'s format), read and
/// checked when the policy is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DefinitionRef {
    /// The definition file, resolved against the policy file's directory.
    pub path: PathBuf,
    /// Where the policy names it.
    #[serde(skip)]
    pub at: Location,
}

/// A primary and the standbys that may take over from it, tried in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Group {
    /// Group name.
    pub name: String,
    /// The guest that serves first.
    pub primary: String,
    /// Standbys in the order they are tried.
    pub standbys: Vec<String>,
}

impl Group {
    /// Primary then standbys: the group's order.
    pub fn members(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.primary.as_str()).chain(self.standbys.iter().map(String::as_str))
    }

    /// True when `guest` is the primary or a standby.
    pub fn contains(&self, guest: &str) -> bool {
        self.members().any(|m| m == guest)
    }
}

/// A value a `where` condition compares a payload field with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(untagged)]
pub enum WhereValue {
    /// A string field.
    Str(String),
    /// An integer field.
    Int(i64),
    /// A boolean field.
    Bool(bool),
}

impl WhereValue {
    /// True when the JSON value `v` equals this one.
    pub fn matches(&self, v: &serde_json::Value) -> bool {
        match self {
            WhereValue::Str(s) => v.as_str() == Some(s),
            WhereValue::Int(i) => v.as_i64() == Some(*i),
            WhereValue::Bool(b) => v.as_bool() == Some(*b),
        }
    }
}

impl fmt::Display for WhereValue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WhereValue::Str(s) => write!(f, "{s:?}"),
            WhereValue::Int(i) => write!(f, "{i}"),
            WhereValue::Bool(b) => write!(f, "{b}"),
        }
    }
}

/// One `where` condition: the payload field at `path` equals `value`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Condition {
    /// Keys from the payload's top level down (`["comm"]`; a nested TOML table gives
    /// a longer path).
    pub path: Vec<String>,
    /// The value it must equal.
    pub value: WhereValue,
}

impl Condition {
    /// True when `payload` has the field and it equals the value.
    pub fn matches(&self, payload: &serde_json::Value) -> bool {
        let mut v = payload;
        for key in &self.path {
            match v.get(key) {
                Some(next) => v = next,
                None => return false,
            }
        }
        self.value.matches(v)
    }
}

impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} = {}", self.path.join("."), self.value)
    }
}

/// What a rule does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum RuleAction {
    /// Restart the failed guest (bounded by `[limits]`).
    Restart,
    /// Start the group's next standby that fits.
    StartStandby {
        /// Stop the failed guest too; `None`: only when the failure kind means it is
        /// dead or useless (`panic`, `guest_panicked`, `vm_exit`).
        stop_failed: Option<bool>,
    },
    /// Stop the failed guest (orderly).
    Stop,
    /// Fence the failed guest (kill it at once, no orderly shutdown).
    Fence,
    /// Run a command with the event in its environment.
    Hook {
        /// argv.
        command: Vec<String>,
        /// Kill it after this many seconds.
        timeout_secs: u64,
    },
}

impl RuleAction {
    /// Every action name, for help texts.
    pub const NAMES: [&'static str; 5] = ["restart", "start_standby", "stop", "fence", "hook"];

    /// The policy-file name (`start_standby`).
    pub fn name(&self) -> &'static str {
        match self {
            RuleAction::Restart => "restart",
            RuleAction::StartStandby { .. } => "start_standby",
            RuleAction::Stop => "stop",
            RuleAction::Fence => "fence",
            RuleAction::Hook { .. } => "hook",
        }
    }

    /// True for the actions that change which guests run (all but `hook`); at most one
    /// of them is taken per incident.
    pub fn is_failover(&self) -> bool {
        !matches!(self, RuleAction::Hook { .. })
    }
}

/// `on <kind> [where …] [group …] → action`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rule {
    /// 1-based position among the file's `[[rule]]` tables.
    pub number: usize,
    /// Event kind it answers.
    pub on: EventKind,
    /// All must hold.
    pub conditions: Vec<Condition>,
    /// Only events of guests in this group; `None`: any declared guest.
    pub group: Option<String>,
    /// What it does.
    pub action: RuleAction,
}

impl Rule {
    /// True when the rule's kind and `where` conditions accept the event (the group
    /// filter is the engine's part: it knows which guest is in which group).
    pub fn accepts(&self, kind: EventKind, payload: &serde_json::Value) -> bool {
        self.on == kind && self.conditions.iter().all(|c| c.matches(payload))
    }
}

/// Restart-storm bound: at most `max_restarts` restarts of one guest in `window_secs`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Limits {
    /// Restarts of one guest allowed in the window.
    pub max_restarts: u32,
    /// Window length, seconds.
    pub window_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_restarts: DEFAULT_MAX_RESTARTS,
            window_secs: DEFAULT_WINDOW_SECS,
        }
    }
}

/// `[dump]`: vmcores of guests that panic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct DumpPolicy {
    /// Every declared guest's default (`on_panic`); `None`: vesperd's
    /// `--dump-on-panic`.
    pub on_panic: Option<bool>,
    /// Longest a failover action that touches a panicked guest waits for its vmcore.
    pub wait_secs: u64,
}

impl Default for DumpPolicy {
    fn default() -> Self {
        DumpPolicy {
            on_panic: None,
            wait_secs: DEFAULT_DUMP_WAIT_SECS,
        }
    }
}

/// True for failure kinds after which the guest is dead or useless, so a failover stops
/// it (and frees its capacity) unless the rule says otherwise.
pub fn kills_guest(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Panic | EventKind::GuestPanicked | EventKind::VmExit
    )
}
