//! The TOML policy: this host's capacities, the guests the engine may start, groups of a
//! primary and its standbys, rules, and restart limits — parsed and validated as a whole.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use toml::Spanned;
use vesper_events::EventKind;

use crate::error::{Location, PolicyError};

#[cfg(test)]
mod tests;

/// Smallest and largest `timeout_secs` of a hook.
pub const HOOK_TIMEOUT_SECS: std::ops::RangeInclusive<u64> = 1..=600;
/// `timeout_secs` of a hook that sets none.
pub const DEFAULT_HOOK_TIMEOUT_SECS: u64 = 10;
/// `max_restarts` when `[limits]` sets none.
pub const DEFAULT_MAX_RESTARTS: u32 = 3;
/// `window_secs` when `[limits]` sets none.
pub const DEFAULT_WINDOW_SECS: u64 = 600;
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
    /// Memory it needs, MiB.
    pub memory_mib: u32,
    /// vCPUs (default 1).
    pub cpus: u32,
    /// Test-init mode (default `freeze`).
    pub mode: String,
    /// The VMM it runs in: `qemu` (default) or `builtin`.
    pub vmm: String,
    /// What it boots instead of the kit's kernel (a path, or `mini`), if anything.
    pub kernel: Option<String>,
    /// Probes to push after it (re)starts.
    pub probes: Vec<ProbeSpec>,
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

/// A validated policy. Only [`Policy::from_toml`] and [`Policy::load`] make one, so every
/// name it refers to exists and every guest fits on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    host: HostCapacity,
    guests: Vec<GuestSpec>,
    groups: Vec<Group>,
    rules: Vec<Rule>,
    limits: Limits,
}

impl Policy {
    /// Parses and validates policy text.
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        parse(text, None)
    }

    /// Reads, parses and validates a policy file; error locations name the file.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|source| PolicyError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        parse(&text, Some(path))
    }

    /// This host's capacities.
    pub fn host(&self) -> HostCapacity {
        self.host
    }

    /// Declared guests, in file order.
    pub fn guests(&self) -> &[GuestSpec] {
        &self.guests
    }

    /// The guest called `name`.
    pub fn guest(&self, name: &str) -> Option<&GuestSpec> {
        self.guests.iter().find(|g| g.name == name)
    }

    /// Groups, in file order.
    pub fn groups(&self) -> &[Group] {
        &self.groups
    }

    /// The group called `name`.
    pub fn group(&self, name: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.name == name)
    }

    /// The group `guest` belongs to (at most one).
    pub fn group_of(&self, guest: &str) -> Option<&Group> {
        self.groups.iter().find(|g| g.contains(guest))
    }

    /// Rules, in file order.
    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Restart limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A human summary, what `vesper policy check` prints for a good policy.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let plural =
            |n: usize, one: &str, many: &str| format!("{n} {}", if n == 1 { one } else { many });
        let _ = writeln!(
            s,
            "policy OK: {}, {}, {}",
            plural(self.guests.len(), "guest", "guests"),
            plural(self.groups.len(), "group", "groups"),
            plural(self.rules.len(), "rule", "rules"),
        );
        let _ = writeln!(
            s,
            "host: at most {} and {} MiB",
            plural(self.host.max_guests as usize, "guest", "guests"),
            self.host.max_memory_mib
        );
        let _ = writeln!(
            s,
            "limits: at most {} per guest in {} s, then give up",
            plural(self.limits.max_restarts as usize, "restart", "restarts"),
            self.limits.window_secs
        );
        for g in &self.guests {
            let _ = write!(
                s,
                "guest {}: {} MiB, {}, mode {}, vmm {}",
                g.name,
                g.memory_mib,
                plural(g.cpus as usize, "cpu", "cpus"),
                g.mode,
                g.vmm
            );
            if let Some(k) = &g.kernel {
                let _ = write!(s, ", kernel {k}");
            }
            for p in &g.probes {
                let _ = write!(s, ", probe {}", p.module);
                if !p.params.is_empty() {
                    let _ = write!(s, "({})", p.params.join(" "));
                }
            }
            s.push('\n');
        }
        for g in &self.groups {
            let standbys = if g.standbys.is_empty() {
                "no standbys".to_string()
            } else {
                format!("standbys {}", g.standbys.join(", "))
            };
            let _ = writeln!(s, "group {}: primary {}, {standbys}", g.name, g.primary);
        }
        if self.rules.is_empty() {
            s.push_str("no rules: the engine never acts\n");
        }
        for r in &self.rules {
            let _ = write!(s, "rule {}: on {}", r.number, r.on);
            if !r.conditions.is_empty() {
                let conds: Vec<String> = r.conditions.iter().map(|c| c.to_string()).collect();
                let _ = write!(s, " where {}", conds.join(", "));
            }
            match &r.group {
                Some(g) => {
                    let _ = write!(s, " in group {g}");
                }
                None => s.push_str(" of any guest"),
            }
            let _ = write!(s, " -> {}", r.action.name());
            match &r.action {
                RuleAction::StartStandby { stop_failed } => match stop_failed {
                    Some(true) => s.push_str(" (stops the failed guest)"),
                    None if kills_guest(r.on) => {
                        let _ = write!(s, " (stops the failed guest: {} means it is dead)", r.on);
                    }
                    _ => s.push_str(" (the failed guest keeps running)"),
                },
                RuleAction::Hook {
                    command,
                    timeout_secs,
                } => {
                    let _ = write!(s, " `{}` (timeout {timeout_secs} s)", command.join(" "));
                }
                _ => {}
            }
            s.push('\n');
        }
        s
    }
}

/// `vesper policy check FILE`: loads and validates, and returns the summary.
pub fn check(path: &Path) -> Result<String, PolicyError> {
    Policy::load(path).map(|p| p.summary())
}

// ---- parsing -------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    host: Option<RawHost>,
    #[serde(default)]
    guest: Vec<RawGuest>,
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    rule: Vec<RawRule>,
    limits: Option<RawLimits>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    max_guests: Spanned<u32>,
    max_memory_mib: Spanned<u64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGuest {
    name: Spanned<String>,
    memory_mib: Spanned<u32>,
    cpus: Option<Spanned<u32>>,
    mode: Option<Spanned<String>>,
    vmm: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
    #[serde(default)]
    probes: Vec<RawProbe>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProbe {
    module: Spanned<String>,
    #[serde(default)]
    params: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawGroup {
    name: Spanned<String>,
    primary: Spanned<String>,
    #[serde(default)]
    standbys: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    on: Spanned<String>,
    #[serde(rename = "where")]
    where_: Option<Spanned<toml::Table>>,
    group: Option<Spanned<String>>,
    action: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    timeout_secs: Option<Spanned<i64>>,
    stop_failed: Option<Spanned<bool>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLimits {
    max_restarts: Option<Spanned<u32>>,
    window_secs: Option<Spanned<u64>>,
}

/// Turns byte spans into locations.
struct Locator<'a> {
    text: &'a str,
    file: Option<&'a Path>,
}

impl Locator<'_> {
    fn at(&self, span: Range<usize>) -> Location {
        let before = &self.text[..span.start.min(self.text.len())];
        let line = before.matches('\n').count() + 1;
        let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
        Location {
            file: self.file.map(PathBuf::from),
            line: Some((line, column)),
        }
    }

    fn of<T>(&self, s: &Spanned<T>) -> Location {
        self.at(s.span())
    }

    fn file_only(&self) -> Location {
        Location {
            file: self.file.map(PathBuf::from),
            line: None,
        }
    }

    /// Sorts a TOML error into ours.
    fn toml_error(&self, e: toml::de::Error) -> PolicyError {
        let at = e.span().map_or_else(|| self.file_only(), |s| self.at(s));
        let message = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect::<Vec<_>>()
            .join("; ");
        let quoted = |m: &str| m.split('`').nth(1).map(str::to_string);
        if let Some(rest) = message.strip_prefix("unknown field ") {
            let key = quoted(rest).unwrap_or_default();
            let expected = rest
                .split_once("expected ")
                .map_or_else(String::new, |(_, e)| e.to_string());
            return PolicyError::UnknownKey { at, key, expected };
        }
        if let Some(rest) = message.strip_prefix("missing field ") {
            let key = quoted(rest).unwrap_or_default();
            return PolicyError::MissingKey { at, key };
        }
        PolicyError::Syntax { at, message }
    }
}

fn parse(text: &str, file: Option<&Path>) -> Result<Policy, PolicyError> {
    let loc = Locator { text, file };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| loc.toml_error(e))?;

    // [host]
    let Some(host) = raw.host else {
        return Err(PolicyError::MissingHost {
            at: loc.file_only(),
        });
    };
    for (key, value, at) in [
        (
            "max_guests",
            u64::from(*host.max_guests.get_ref()),
            loc.of(&host.max_guests),
        ),
        (
            "max_memory_mib",
            *host.max_memory_mib.get_ref(),
            loc.of(&host.max_memory_mib),
        ),
    ] {
        if value == 0 {
            return Err(PolicyError::ZeroCapacity { at, key });
        }
    }
    let capacity = HostCapacity {
        max_guests: host.max_guests.into_inner(),
        max_memory_mib: host.max_memory_mib.into_inner(),
    };

    // [limits]
    let mut limits = Limits::default();
    if let Some(l) = raw.limits {
        if let Some(m) = l.max_restarts {
            if *m.get_ref() == 0 {
                return Err(PolicyError::ZeroLimit {
                    at: loc.of(&m),
                    key: "max_restarts",
                });
            }
            limits.max_restarts = m.into_inner();
        }
        if let Some(w) = l.window_secs {
            if *w.get_ref() == 0 {
                return Err(PolicyError::ZeroLimit {
                    at: loc.of(&w),
                    key: "window_secs",
                });
            }
            limits.window_secs = w.into_inner();
        }
    }

    // [[guest]]
    let mut guests: Vec<GuestSpec> = Vec::with_capacity(raw.guest.len());
    for g in raw.guest {
        let at = loc.of(&g.name);
        let name = g.name.into_inner();
        if name.trim().is_empty() {
            return Err(PolicyError::EmptyName { at, what: "guest" });
        }
        if guests.iter().any(|o| o.name == name) {
            return Err(PolicyError::DuplicateGuest { at, guest: name });
        }
        let memory_at = loc.of(&g.memory_mib);
        let memory_mib = g.memory_mib.into_inner();
        if memory_mib == 0 {
            return Err(PolicyError::ZeroGuestSize {
                at: memory_at,
                guest: name,
                key: "memory_mib",
            });
        }
        if u64::from(memory_mib) > capacity.max_memory_mib {
            return Err(PolicyError::GuestTooBig {
                at: memory_at,
                guest: name,
                memory_mib,
                max_memory_mib: capacity.max_memory_mib,
            });
        }
        let cpus = match g.cpus {
            Some(c) if *c.get_ref() == 0 => {
                return Err(PolicyError::ZeroGuestSize {
                    at: loc.of(&c),
                    guest: name,
                    key: "cpus",
                })
            }
            Some(c) => c.into_inner(),
            None => 1,
        };
        let mode = match g.mode {
            Some(m) if m.get_ref().trim().is_empty() => {
                return Err(PolicyError::EmptyName {
                    at: loc.of(&m),
                    what: "guest mode",
                })
            }
            Some(m) => m.into_inner(),
            None => DEFAULT_MODE.to_string(),
        };
        let vmm = match g.vmm {
            Some(v) if !matches!(v.get_ref().as_str(), "qemu" | "builtin") => {
                return Err(PolicyError::UnknownVmm {
                    at: loc.of(&v),
                    guest: name,
                    found: v.into_inner(),
                })
            }
            Some(v) => v.into_inner(),
            None => "qemu".to_string(),
        };
        let kernel = match g.kernel {
            Some(k) if k.get_ref().trim().is_empty() => {
                return Err(PolicyError::EmptyName {
                    at: loc.of(&k),
                    what: "guest kernel",
                })
            }
            other => other.map(Spanned::into_inner),
        };
        let mut probes = Vec::with_capacity(g.probes.len());
        for p in g.probes {
            if p.module.get_ref().trim().is_empty() {
                return Err(PolicyError::EmptyName {
                    at: loc.of(&p.module),
                    what: "probe module",
                });
            }
            probes.push(ProbeSpec {
                module: p.module.into_inner(),
                params: p.params,
            });
        }
        guests.push(GuestSpec {
            name,
            memory_mib,
            cpus,
            mode,
            vmm,
            kernel,
            probes,
        });
    }

    // [[group]]
    let mut groups: Vec<Group> = Vec::with_capacity(raw.group.len());
    let mut member_of: HashMap<String, String> = HashMap::new();
    for g in raw.group {
        let at = loc.of(&g.name);
        let name = g.name.into_inner();
        if name.trim().is_empty() {
            return Err(PolicyError::EmptyName { at, what: "group" });
        }
        if groups.iter().any(|o| o.name == name) {
            return Err(PolicyError::DuplicateGroup { at, group: name });
        }
        let primary_at = loc.of(&g.primary);
        let primary = g.primary.into_inner();
        let mut members = vec![(primary.clone(), primary_at)];
        let mut standbys = Vec::with_capacity(g.standbys.len());
        for s in g.standbys {
            let at = loc.of(&s);
            let s = s.into_inner();
            if s == primary {
                return Err(PolicyError::StandbyIsPrimary {
                    at,
                    group: name,
                    guest: s,
                });
            }
            if standbys.contains(&s) {
                return Err(PolicyError::RepeatedStandby {
                    at,
                    group: name,
                    guest: s,
                });
            }
            standbys.push(s.clone());
            members.push((s, at));
        }
        for (guest, at) in members {
            if !guests.iter().any(|d| d.name == guest) {
                return Err(PolicyError::UndeclaredGuest {
                    at,
                    group: name,
                    guest,
                });
            }
            if let Some(first) = member_of.get(&guest) {
                return Err(PolicyError::GuestInTwoGroups {
                    at,
                    guest,
                    first: first.clone(),
                    second: name,
                });
            }
            member_of.insert(guest, name.clone());
        }
        groups.push(Group {
            name,
            primary,
            standbys,
        });
    }

    // [[rule]]
    let memory_of = |g: &str| guests.iter().find(|d| d.name == g).map(|d| d.memory_mib);
    let mut rules = Vec::with_capacity(raw.rule.len());
    for (i, r) in raw.rule.into_iter().enumerate() {
        let number = i + 1;
        let on_at = loc.of(&r.on);
        let on: EventKind =
            r.on.get_ref()
                .parse()
                .map_err(|e: vesper_events::UnknownKind| PolicyError::UnknownKind {
                    at: on_at.clone(),
                    rule: number,
                    kind: e.0,
                })?;
        if matches!(on, EventKind::Decision | EventKind::GuestUp) {
            return Err(PolicyError::KindNotAllowed {
                at: on_at,
                rule: number,
                kind: on,
            });
        }
        let group = match r.group {
            Some(g) => {
                if !groups.iter().any(|o| o.name == *g.get_ref()) {
                    return Err(PolicyError::UnknownGroup {
                        at: loc.of(&g),
                        rule: number,
                        group: g.into_inner(),
                    });
                }
                Some(g.into_inner())
            }
            None => None,
        };
        let action_at = loc.of(&r.action);
        let action_name = r.action.into_inner();
        // Keys that only one action takes.
        let only = |key: &'static str, for_action: &'static str, present: Option<Location>| {
            match present {
                Some(at) if action_name != for_action => Err(PolicyError::KeyNotForAction {
                    at,
                    rule: number,
                    key,
                    for_action,
                    action: action_name.clone(),
                }),
                _ => Ok(()),
            }
        };
        only("command", "hook", r.command.as_ref().map(|c| loc.of(c)))?;
        only(
            "timeout_secs",
            "hook",
            r.timeout_secs.as_ref().map(|c| loc.of(c)),
        )?;
        only(
            "stop_failed",
            "start_standby",
            r.stop_failed.as_ref().map(|c| loc.of(c)),
        )?;
        let action = match action_name.as_str() {
            "restart" => RuleAction::Restart,
            "stop" => RuleAction::Stop,
            "fence" => RuleAction::Fence,
            "start_standby" => RuleAction::StartStandby {
                stop_failed: r.stop_failed.map(Spanned::into_inner),
            },
            "hook" => {
                let command = match r.command {
                    Some(c) if c.get_ref().first().is_some_and(|a| !a.trim().is_empty()) => {
                        c.into_inner()
                    }
                    Some(c) => {
                        return Err(PolicyError::HookWithoutCommand {
                            at: loc.of(&c),
                            rule: number,
                        })
                    }
                    None => {
                        return Err(PolicyError::HookWithoutCommand {
                            at: action_at,
                            rule: number,
                        })
                    }
                };
                let timeout_secs = match r.timeout_secs {
                    Some(t) => {
                        let v = *t.get_ref();
                        match u64::try_from(v) {
                            Ok(v) if HOOK_TIMEOUT_SECS.contains(&v) => v,
                            _ => {
                                return Err(PolicyError::TimeoutOutOfRange {
                                    at: loc.of(&t),
                                    rule: number,
                                    value: v,
                                })
                            }
                        }
                    }
                    None => DEFAULT_HOOK_TIMEOUT_SECS,
                };
                RuleAction::Hook {
                    command,
                    timeout_secs,
                }
            }
            _ => {
                return Err(PolicyError::UnknownAction {
                    at: action_at,
                    rule: number,
                    action: action_name,
                })
            }
        };
        let mut conditions = Vec::new();
        if let Some(w) = r.where_ {
            let at = loc.of(&w);
            flatten_where(&mut conditions, &mut Vec::new(), w.get_ref(), &at, number)?;
        }

        // start_standby must be possible at all.
        if let RuleAction::StartStandby { stop_failed } = &action {
            let applies: Vec<&Group> = match &group {
                Some(g) => groups.iter().filter(|o| o.name == *g).collect(),
                None => groups.iter().collect(),
            };
            if applies.iter().all(|g| g.standbys.is_empty()) {
                return Err(PolicyError::NoStandbys {
                    at: action_at,
                    rule: number,
                    group: group.clone(),
                });
            }
            // When the failed guest keeps running, it and a standby must fit together.
            let keeps_running = !stop_failed.unwrap_or_else(|| kills_guest(on));
            if keeps_running {
                for g in applies.iter().filter(|g| !g.standbys.is_empty()) {
                    let smallest = g.standbys.iter().filter_map(|s| memory_of(s)).min();
                    let primary = memory_of(&g.primary).unwrap_or(0);
                    let need = u64::from(primary) + u64::from(smallest.unwrap_or(0));
                    if capacity.max_guests < 2 || need > capacity.max_memory_mib {
                        return Err(PolicyError::FailoverCannotFit {
                            at: action_at,
                            rule: number,
                            group: g.name.clone(),
                            kind: on,
                            need_guests: 2,
                            need_mib: need,
                            max_guests: capacity.max_guests,
                            max_memory_mib: capacity.max_memory_mib,
                        });
                    }
                }
            }
        }
        rules.push(Rule {
            number,
            on,
            conditions,
            group,
            action,
        });
    }

    Ok(Policy {
        host: capacity,
        guests,
        groups,
        rules,
        limits,
    })
}

/// True for failure kinds after which the guest is dead or useless, so a failover stops
/// it (and frees its capacity) unless the rule says otherwise.
pub fn kills_guest(kind: EventKind) -> bool {
    matches!(
        kind,
        EventKind::Panic | EventKind::GuestPanicked | EventKind::VmExit
    )
}

fn flatten_where(
    out: &mut Vec<Condition>,
    prefix: &mut Vec<String>,
    table: &toml::Table,
    at: &Location,
    rule: usize,
) -> Result<(), PolicyError> {
    // BTreeMap: a stable order for summaries and reasons.
    let sorted: BTreeMap<&String, &toml::Value> = table.iter().collect();
    for (key, value) in sorted {
        prefix.push(key.clone());
        let v = match value {
            toml::Value::String(s) => Some(WhereValue::Str(s.clone())),
            toml::Value::Integer(i) => Some(WhereValue::Int(*i)),
            toml::Value::Boolean(b) => Some(WhereValue::Bool(*b)),
            toml::Value::Table(t) => {
                flatten_where(out, prefix, t, at, rule)?;
                None
            }
            other => {
                return Err(PolicyError::BadWhereValue {
                    at: at.clone(),
                    rule,
                    key: prefix.join("."),
                    found: other.type_str(),
                })
            }
        };
        if let Some(value) = v {
            out.push(Condition {
                path: prefix.clone(),
                value,
            });
        }
        prefix.pop();
    }
    Ok(())
}
