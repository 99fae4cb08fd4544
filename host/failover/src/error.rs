//! What can be wrong with a policy, each problem its own variant.

use std::path::PathBuf;

use thiserror::Error;
use vesper_events::EventKind;
pub use vesper_toml_located::Location;
use vesper_toml_located::TomlFileError;
use vesper_vmdef::VmDefError;

fn known_kinds() -> String {
    EventKind::ALL
        .into_iter()
        .filter(|k| !matches!(k, EventKind::Decision | EventKind::GuestUp))
        .map(EventKind::name)
        .collect::<Vec<_>>()
        .join(", ")
}

fn group_words(group: &Option<String>) -> String {
    match group {
        Some(g) => format!("group {g:?} has no standbys; list some in its `standbys`"),
        None => "no group has standbys; list some in a group's `standbys`".to_string(),
    }
}

/// A policy that can't be used. Messages start with the location and say what to do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// Unreadable, not TOML, an unknown key (a typo?) or a missing one.
    #[error(transparent)]
    File(#[from] TomlFileError),
    /// A guest's `probe_group` file is missing or invalid.
    #[error("{at}: guest {guest:?}: probe_group: {why}")]
    BadProbeGroup {
        /// Where the policy names it.
        at: Location,
        /// The guest.
        guest: String,
        /// What is wrong with the group file (its own location included).
        why: String,
    },
    /// A guest's `definition` file is unreadable, invalid, or names a file that is not
    /// there (the definition's own error is the source).
    #[error("{at}: guest {guest:?}: VM definition {}", path.display())]
    BadDefinition {
        /// Where the policy names it.
        at: Location,
        /// The guest.
        guest: String,
        /// The definition file.
        path: PathBuf,
        /// What is wrong with it (its own location included).
        #[source]
        source: Box<VmDefError>,
    },
    /// A machine key (`memory_mib`, `cpus`, `mode`, `vmm`, `kernel`) beside `definition`.
    #[error("{at}: guest {guest:?} has `{key}` and `definition`: its definition file {} holds {key} (and how it boots); set it there, or drop `definition`", definition.display())]
    KeyBesideDefinition {
        /// Where the key is.
        at: Location,
        /// The guest.
        guest: String,
        /// The key.
        key: &'static str,
        /// The definition file.
        definition: PathBuf,
    },
    /// No `[host]` table.
    #[error("{at}: no [host] table; declare this host's capacities: [host] max_guests = N, max_memory_mib = M")]
    MissingHost {
        /// Where.
        at: Location,
    },
    /// A host capacity of 0: no guest could ever run.
    #[error("{at}: [host] {key} = 0 leaves no room for any guest; give it at least 1")]
    ZeroCapacity {
        /// Where.
        at: Location,
        /// `max_guests` or `max_memory_mib`.
        key: &'static str,
    },
    /// A `[limits]` value of 0.
    #[error("{at}: [limits] {key} must be at least 1")]
    ZeroLimit {
        /// Where.
        at: Location,
        /// `max_restarts` or `window_secs`.
        key: &'static str,
    },
    /// An empty name.
    #[error("{at}: empty {what} name")]
    EmptyName {
        /// Where.
        at: Location,
        /// `guest`, `group`, `probe module`, `guest mode`.
        what: &'static str,
    },
    /// A `dump` key that is not a boolean.
    #[error("{at}: {whose} dump = {found}; use true or false")]
    BadDump {
        /// Where.
        at: Location,
        /// `guest "web1"` or `[dump] on_panic`.
        whose: String,
        /// What it said (TOML text).
        found: String,
    },
    /// `[dump] wait_secs` out of range.
    #[error("{at}: [dump] wait_secs = {value} is out of range; use 1 to 3600")]
    DumpWaitOutOfRange {
        /// Where.
        at: Location,
        /// What it said.
        value: i64,
    },
    /// A guest's `vmm` names no VMM.
    #[error("{at}: guest {guest:?} has vmm = {found:?}; use \"qemu\" or \"builtin\"")]
    UnknownVmm {
        /// Where.
        at: Location,
        /// The guest.
        guest: String,
        /// What it said.
        found: String,
    },
    /// A guest declared twice.
    #[error("{at}: guest {guest:?} is declared twice; each [[guest]] needs its own name")]
    DuplicateGuest {
        /// Where (the second one).
        at: Location,
        /// The guest.
        guest: String,
    },
    /// A guest of memory or cpus 0.
    #[error("{at}: guest {guest:?} has {key} = 0; give it at least 1")]
    ZeroGuestSize {
        /// Where.
        at: Location,
        /// The guest.
        guest: String,
        /// `memory_mib` or `cpus`.
        key: &'static str,
    },
    /// A guest that can never fit on this host.
    #[error("{at}: guest {guest:?} needs {memory_mib} MiB but this host has at most {max_memory_mib} MiB ([host] max_memory_mib); it could never run here")]
    GuestTooBig {
        /// Where.
        at: Location,
        /// The guest.
        guest: String,
        /// What it needs.
        memory_mib: u32,
        /// What the host has.
        max_memory_mib: u64,
    },
    /// A group declared twice.
    #[error("{at}: group {group:?} is declared twice")]
    DuplicateGroup {
        /// Where (the second one).
        at: Location,
        /// The group.
        group: String,
    },
    /// A group naming a guest no `[[guest]]` declares.
    #[error("{at}: group {group:?} names guest {guest:?}, which no [[guest]] declares")]
    UndeclaredGuest {
        /// Where.
        at: Location,
        /// The group.
        group: String,
        /// The guest.
        guest: String,
    },
    /// A guest in two groups.
    #[error("{at}: guest {guest:?} is in group {first:?} and again in group {second:?}; a guest belongs to at most one group")]
    GuestInTwoGroups {
        /// Where (in the second group).
        at: Location,
        /// The guest.
        guest: String,
        /// Its first group.
        first: String,
        /// The other.
        second: String,
    },
    /// A standby that is the group's primary.
    #[error("{at}: group {group:?} lists its primary {guest:?} as a standby; a guest can't take over from itself")]
    StandbyIsPrimary {
        /// Where.
        at: Location,
        /// The group.
        group: String,
        /// The guest.
        guest: String,
    },
    /// A standby listed twice.
    #[error("{at}: group {group:?} lists standby {guest:?} twice")]
    RepeatedStandby {
        /// Where.
        at: Location,
        /// The group.
        group: String,
        /// The guest.
        guest: String,
    },
    /// `on` names no event kind.
    #[error("{at}: rule {rule}: unknown event kind {kind:?}; known kinds: {known}", known = known_kinds())]
    UnknownKind {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
        /// What it said.
        kind: String,
    },
    /// `on` names a kind a rule can't answer.
    #[error("{at}: rule {rule}: on = {kind:?} can't start a rule (decisions are the engine's own output; guest_up ends an incident); use one of: {known}", kind = kind.name(), known = known_kinds())]
    KindNotAllowed {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
        /// The kind.
        kind: EventKind,
    },
    /// `action` names no action.
    #[error("{at}: rule {rule}: unknown action {action:?}; actions: restart, start_standby, stop, fence, hook")]
    UnknownAction {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
        /// What it said.
        action: String,
    },
    /// A rule naming a group no `[[group]]` declares.
    #[error("{at}: rule {rule}: group {group:?} is not declared; add a [[group]] with that name or fix the rule")]
    UnknownGroup {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
        /// The group.
        group: String,
    },
    /// A key that belongs to another action (`command` on a restart rule).
    #[error("{at}: rule {rule}: `{key}` only applies to action = {for_action:?}, not {action:?}")]
    KeyNotForAction {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
        /// The key.
        key: &'static str,
        /// The action it belongs to.
        for_action: &'static str,
        /// The rule's action.
        action: String,
    },
    /// A hook rule without a (non-empty) command.
    #[error(
        "{at}: rule {rule}: action = \"hook\" needs command = [\"/path/to/program\", \"arg\", …]"
    )]
    HookWithoutCommand {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
    },
    /// A hook timeout out of range.
    #[error("{at}: rule {rule}: timeout_secs = {value} is out of range; use 1 to 600")]
    TimeoutOutOfRange {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
        /// What it said.
        value: i64,
    },
    /// A `where` value that isn't a string, integer or boolean.
    #[error("{at}: rule {rule}: where.{key} is {found}; conditions compare with a string, an integer or a boolean")]
    BadWhereValue {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
        /// Dotted key.
        key: String,
        /// TOML type found.
        found: &'static str,
    },
    /// A `start_standby` rule with no standby to start.
    #[error("{at}: rule {rule}: action = \"start_standby\" but {words}", words = group_words(group))]
    NoStandbys {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
        /// The rule's group, if it names one.
        group: Option<String>,
    },
    /// A `start_standby` rule that keeps the failed guest running, on a host too small for
    /// it and a standby together.
    #[error("{at}: rule {rule}: on {kind} the failed guest of group {group:?} keeps running, so it and a standby need {need_guests} guests and {need_mib} MiB, but the host has at most {max_guests} guests and {max_memory_mib} MiB; set stop_failed = true or raise [host] capacities")]
    FailoverCannotFit {
        /// Where.
        at: Location,
        /// 1-based rule number.
        rule: usize,
        /// The group.
        group: String,
        /// The rule's kind.
        kind: EventKind,
        /// Guests needed.
        need_guests: u32,
        /// MiB needed (primary + smallest standby).
        need_mib: u64,
        /// Host capacity.
        max_guests: u32,
        /// Host capacity.
        max_memory_mib: u64,
    },
}

impl PolicyError {
    /// The message with its causes (why a file could not be read is in the source), on
    /// one line.
    pub fn report(&self) -> String {
        vesper_toml_located::report(self)
    }
}
