//! The engine: one call per event, decisions out. No I/O, no clock: the caller passes the
//! host's view (what runs now) and the time, and carries the decisions out.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use vesper_events::{Event, EventKind, Source};

use crate::policy::{kills_guest, Policy, Rule, RuleAction};

#[cfg(test)]
mod tests;

/// Closed incidents kept for [`Engine::incidents`]; open ones are always kept.
pub const KEEP_CLOSED_INCIDENTS: usize = 1024;

/// What runs on this host now: guest name and the memory it holds, MiB. Guests the policy
/// doesn't declare count too.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// Running guests and their memory, MiB.
    pub running: Vec<(String, u32)>,
}

impl View {
    /// A view of these running guests.
    pub fn new<S: Into<String>>(running: impl IntoIterator<Item = (S, u32)>) -> Self {
        View {
            running: running.into_iter().map(|(g, m)| (g.into(), m)).collect(),
        }
    }

    /// True when `guest` runs.
    pub fn is_running(&self, guest: &str) -> bool {
        self.running.iter().any(|(g, _)| g == guest)
    }

    /// Running guests and their memory, leaving out `without`.
    fn usage(&self, without: Option<&str>) -> (u32, u64) {
        self.running
            .iter()
            .filter(|(g, _)| Some(g.as_str()) != without)
            .fold((0, 0), |(n, m), (_, mib)| (n + 1, m + u64::from(*mib)))
    }
}

/// What the daemon is to do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Action {
    /// Restart `guest` (and push its probes once it is up).
    Restart {
        /// The guest.
        guest: String,
    },
    /// Start `standby` (and push its probes) in place of `replaces`; stop `replaces`
    /// first when `stop_failed`.
    StartStandby {
        /// The guest to start.
        standby: String,
        /// The failed guest.
        replaces: String,
        /// Stop the failed guest first (its capacity was counted as free).
        stop_failed: bool,
    },
    /// Stop `guest` (orderly).
    Stop {
        /// The guest.
        guest: String,
    },
    /// Fence `guest`: kill it at once.
    Fence {
        /// The guest.
        guest: String,
    },
    /// Run `command` with `env` added to the daemon's environment; kill it after
    /// `timeout_secs`.
    Hook {
        /// argv.
        command: Vec<String>,
        /// Seconds.
        timeout_secs: u64,
        /// `VESPER_*` variables describing the event.
        env: Vec<(String, String)>,
    },
    /// Nothing can be done for `guest` (restart limit hit, no standby fits); the reason
    /// says why. The engine leaves the guest alone until it is seen up again.
    GiveUp {
        /// The guest.
        guest: String,
    },
}

impl Action {
    /// Its name (`start_standby`).
    pub fn name(&self) -> &'static str {
        match self {
            Action::Restart { .. } => "restart",
            Action::StartStandby { .. } => "start_standby",
            Action::Stop { .. } => "stop",
            Action::Fence { .. } => "fence",
            Action::Hook { .. } => "hook",
            Action::GiveUp { .. } => "give_up",
        }
    }

    /// True for all but `hook`: the actions that settle an incident.
    pub fn is_failover(&self) -> bool {
        !matches!(self, Action::Hook { .. })
    }
}

/// One decision, with its reason. It becomes an event of kind `decision` itself
/// ([`Decision::to_event`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decision {
    /// The guest the event was about.
    pub guest: String,
    /// Its group, if any.
    pub group: Option<String>,
    /// 1-based number of the rule that decided.
    pub rule: usize,
    /// `seq` of the event decided on.
    pub event_seq: u64,
    /// Kind of the event decided on.
    pub event_kind: EventKind,
    /// The incident this decision belongs to (opened by the event's failover decision).
    pub incident: Option<u64>,
    /// What to do.
    pub action: Action,
    /// Why, for humans: the event (kind, guest, seq), the rule and what was decided.
    pub reason: String,
}

impl Decision {
    /// The decision as an event (kind `decision`, source `engine`, the decision as
    /// payload). `seq` is 0: the daemon's event log numbers it.
    pub fn to_event(&self, time_ns: u64) -> Event {
        Event {
            seq: 0,
            guest: self.guest.clone(),
            kind: EventKind::Decision,
            time_ns,
            happened_ns: None,
            source: Source::Engine,
            payload: serde_json::to_value(self).unwrap_or(serde_json::Value::Null),
        }
    }
}

/// A failure the engine acted on. While it is open, events of its guest cause no
/// decisions; the guest's next `guest_up` closes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Incident {
    /// Number, from 1.
    pub id: u64,
    /// The failed guest.
    pub guest: String,
    /// Its group, if any.
    pub group: Option<String>,
    /// Kind of the event that opened it.
    pub kind: EventKind,
    /// `seq` of the event that opened it.
    pub opened_by: u64,
    /// The rule that decided.
    pub rule: usize,
    /// What was decided.
    pub action: Action,
    /// `seq` of the `guest_up` that closed it.
    pub closed_by: Option<u64>,
    /// Events of the guest ignored while it was open.
    pub suppressed: u64,
}

impl Incident {
    /// True until the guest was seen up again.
    pub fn is_open(&self) -> bool {
        self.closed_by.is_none()
    }
}

/// Everything the engine remembers between events.
#[derive(Debug, Default)]
struct State {
    /// Group name → its active member, when it is not the primary.
    active: HashMap<String, String>,
    incidents: Vec<Incident>,
    next_incident: u64,
    /// Guest → times (ns) of its restarts in the current window.
    restarts: HashMap<String, VecDeque<u64>>,
}

impl State {
    fn open_incident(&self, guest: &str) -> Option<usize> {
        self.incidents
            .iter()
            .rposition(|i| i.guest == guest && i.is_open())
    }

    fn active<'a>(&'a self, policy: &'a Policy, group: &str) -> Option<&'a str> {
        match self.active.get(group) {
            Some(g) => Some(g.as_str()),
            None => policy.group(group).map(|g| g.primary.as_str()),
        }
    }

    fn forget_old_incidents(&mut self) {
        let closed = self.incidents.iter().filter(|i| !i.is_open()).count();
        let mut drop = closed.saturating_sub(KEEP_CLOSED_INCIDENTS);
        if drop > 0 {
            self.incidents.retain(|i| {
                if drop > 0 && !i.is_open() {
                    drop -= 1;
                    false
                } else {
                    true
                }
            });
        }
    }
}

/// The failover engine.
#[derive(Debug)]
pub struct Engine {
    policy: Policy,
    state: State,
}

impl Engine {
    /// An engine for `policy`; every group's primary is active.
    pub fn new(policy: Policy) -> Self {
        Engine {
            policy,
            state: State {
                next_incident: 1,
                ..State::default()
            },
        }
    }

    /// The policy.
    pub fn policy(&self) -> &Policy {
        &self.policy
    }

    /// The member of `group` that serves now (the primary until a standby took over).
    pub fn active(&self, group: &str) -> Option<&str> {
        self.state.active(&self.policy, group)
    }

    /// Incidents, oldest first: all open ones and the latest closed ones.
    pub fn incidents(&self) -> &[Incident] {
        &self.state.incidents
    }

    /// The open incident of `guest`, if any.
    pub fn open_incident(&self, guest: &str) -> Option<&Incident> {
        self.state
            .open_incident(guest)
            .map(|i| &self.state.incidents[i])
    }

    /// Decides on one event. `view` is what runs on this host now, `now_ns` the host
    /// clock (it measures the restart window).
    ///
    /// - `decision` events: nothing (the engine never answers itself).
    /// - `guest_up`: closes the guest's open incident; nothing else.
    /// - events of guests the policy doesn't declare: nothing.
    /// - events of a guest with an open incident: nothing (one incident, one action).
    /// - otherwise every rule that matches, in file order: each `hook` rule gives a hook
    ///   decision; the first `restart`/`start_standby`/`stop`/`fence` rule that applies
    ///   gives the failover decision (or `give_up`) and opens an incident, later ones
    ///   are skipped.
    pub fn on_event(&mut self, event: &Event, view: &View, now_ns: u64) -> Vec<Decision> {
        match event.kind {
            EventKind::Decision => return Vec::new(),
            EventKind::GuestUp => {
                if let Some(i) = self.state.open_incident(&event.guest) {
                    self.state.incidents[i].closed_by = Some(event.seq);
                    self.state.forget_old_incidents();
                }
                return Vec::new();
            }
            _ => {}
        }
        if self.policy.guest(&event.guest).is_none() {
            return Vec::new();
        }
        if let Some(i) = self.state.open_incident(&event.guest) {
            self.state.incidents[i].suppressed += 1;
            return Vec::new();
        }
        let policy = &self.policy;
        let group = policy.group_of(&event.guest).map(|g| g.name.clone());
        let matching: Vec<&Rule> = policy
            .rules()
            .iter()
            .filter(|r| {
                r.accepts(event.kind, &event.payload)
                    && r.group.as_ref().is_none_or(|g| Some(g) == group.as_ref())
            })
            .collect();

        // The failover decision: the first failover rule that applies.
        let mut failover = None;
        for rule in matching.iter().filter(|r| r.action.is_failover()) {
            if let Some(d) = decide(policy, &mut self.state, rule, event, view, now_ns, &group) {
                failover = Some(d);
                break;
            }
        }
        if let Some(d) = &mut failover {
            let id = self.state.next_incident;
            self.state.next_incident += 1;
            d.incident = Some(id);
            self.state.incidents.push(Incident {
                id,
                guest: event.guest.clone(),
                group: group.clone(),
                kind: event.kind,
                opened_by: event.seq,
                rule: d.rule,
                action: d.action.clone(),
                closed_by: None,
                suppressed: 0,
            });
        }

        let mut out = Vec::new();
        for rule in matching {
            match &rule.action {
                RuleAction::Hook {
                    command,
                    timeout_secs,
                } => out.push(Decision {
                    guest: event.guest.clone(),
                    group: group.clone(),
                    rule: rule.number,
                    event_seq: event.seq,
                    event_kind: event.kind,
                    incident: failover.as_ref().and_then(|f| f.incident),
                    action: Action::Hook {
                        command: command.clone(),
                        timeout_secs: *timeout_secs,
                        env: hook_env(event, &group, rule, failover.as_ref()),
                    },
                    reason: format!(
                        "{}: running hook `{}` (timeout {timeout_secs} s)",
                        prefix(event, rule),
                        command.join(" ")
                    ),
                }),
                _ => {
                    if let Some(f) = failover.as_ref().filter(|f| f.rule == rule.number) {
                        out.push(f.clone());
                    }
                }
            }
        }
        out
    }
}

/// "service_exit of web1 (event 7) matched rule 2".
fn prefix(event: &Event, rule: &Rule) -> String {
    let mut s = format!(
        "{} of {} (event {}) matched rule {}",
        event.kind, event.guest, event.seq, rule.number
    );
    if !rule.conditions.is_empty() {
        let conds: Vec<String> = rule.conditions.iter().map(|c| c.to_string()).collect();
        let _ = write!(s, " (where {})", conds.join(", "));
    }
    s
}

fn hook_env(
    event: &Event,
    group: &Option<String>,
    rule: &Rule,
    failover: Option<&Decision>,
) -> Vec<(String, String)> {
    let mut env = vec![
        ("VESPER_EVENT_SEQ".to_string(), event.seq.to_string()),
        (
            "VESPER_EVENT_KIND".to_string(),
            event.kind.name().to_string(),
        ),
        ("VESPER_GUEST".to_string(), event.guest.clone()),
        (
            "VESPER_EVENT_JSON".to_string(),
            serde_json::to_string(event).unwrap_or_default(),
        ),
        ("VESPER_RULE".to_string(), rule.number.to_string()),
        (
            "VESPER_ACTION".to_string(),
            failover.map_or("none", |f| f.action.name()).to_string(),
        ),
    ];
    if let Some(f) = failover {
        env.push(("VESPER_REASON".to_string(), f.reason.clone()));
    }
    if let Some(g) = group {
        env.push(("VESPER_GROUP".to_string(), g.clone()));
    }
    env
}

/// The failover decision of one rule, or `None` when the rule doesn't apply (a
/// `start_standby` for a group member that isn't the active one).
fn decide(
    policy: &Policy,
    state: &mut State,
    rule: &Rule,
    event: &Event,
    view: &View,
    now_ns: u64,
    group: &Option<String>,
) -> Option<Decision> {
    let guest = event.guest.as_str();
    let why = prefix(event, rule);
    let decision = |action: Action, reason: String| Decision {
        guest: guest.to_string(),
        group: group.clone(),
        rule: rule.number,
        event_seq: event.seq,
        event_kind: event.kind,
        incident: None,
        action,
        reason,
    };
    let give_up = |reason: String| {
        decision(
            Action::GiveUp {
                guest: guest.to_string(),
            },
            reason,
        )
    };
    let host = policy.host();
    match &rule.action {
        RuleAction::Hook { .. } => None,
        RuleAction::Stop => Some(decision(
            Action::Stop {
                guest: guest.to_string(),
            },
            format!("{why}: stopping {guest}"),
        )),
        RuleAction::Fence => Some(decision(
            Action::Fence {
                guest: guest.to_string(),
            },
            format!("{why}: fencing {guest} (killed at once)"),
        )),
        RuleAction::Restart => {
            let limits = policy.limits();
            let window_ns = limits.window_secs.saturating_mul(1_000_000_000);
            let times = state.restarts.entry(guest.to_string()).or_default();
            while times
                .front()
                .is_some_and(|t| now_ns.saturating_sub(*t) >= window_ns)
            {
                times.pop_front();
            }
            if times.len() >= limits.max_restarts as usize {
                return Some(give_up(format!(
                    "{why}: {guest} restarted {} times in {} s (max_restarts = {}); giving up on it until it is up again",
                    times.len(),
                    limits.window_secs,
                    limits.max_restarts
                )));
            }
            if !view.is_running(guest) {
                let need = policy.guest(guest).map_or(0, |g| g.memory_mib);
                if let Err(no) = fits(view, None, guest, need, policy) {
                    return Some(give_up(format!(
                        "{why}: {guest} is not running and can't be restarted: {no}; giving up"
                    )));
                }
            }
            times.push_back(now_ns);
            Some(decision(
                Action::Restart {
                    guest: guest.to_string(),
                },
                format!(
                    "{why}: restarting {guest} (restart {} of at most {} in {} s)",
                    times.len(),
                    limits.max_restarts,
                    limits.window_secs
                ),
            ))
        }
        RuleAction::StartStandby { stop_failed } => {
            let Some(g) = group.as_deref().and_then(|g| policy.group(g)) else {
                return Some(give_up(format!(
                    "{why}: {guest} is in no group, so no standby can take over; giving up"
                )));
            };
            let active = state.active(policy, &g.name).unwrap_or(&g.primary);
            if active != guest {
                return None;
            }
            let stop_failed = stop_failed.unwrap_or_else(|| kills_guest(event.kind));
            let without = stop_failed.then_some(guest);
            // Members after the active one, wrapping around: the group's order.
            let members: Vec<&str> = g.members().collect();
            let at = members.iter().position(|m| *m == guest).unwrap_or(0);
            let candidates = members[at + 1..].iter().chain(&members[..at]);
            let mut refused = Vec::new();
            for &c in candidates {
                if view.is_running(c) {
                    refused.push(format!("{c} is running already"));
                    continue;
                }
                if let Some(i) = state.open_incident(c) {
                    refused.push(format!(
                        "{c} failed (incident {}) and hasn't been up since",
                        state.incidents[i].id
                    ));
                    continue;
                }
                let need = policy.guest(c).map_or(0, |s| s.memory_mib);
                match fits(view, without, c, need, policy) {
                    Err(no) => refused.push(no),
                    Ok((n, mib)) => {
                        state.active.insert(g.name.clone(), c.to_string());
                        let failed = if !stop_failed {
                            format!("{guest} keeps running")
                        } else if rule_says_stop(rule) {
                            format!("stopping {guest} (stop_failed = true)")
                        } else {
                            format!("stopping {guest} ({} means it is dead)", event.kind)
                        };
                        return Some(decision(
                            Action::StartStandby {
                                standby: c.to_string(),
                                replaces: guest.to_string(),
                                stop_failed,
                            },
                            format!(
                                "{why}: {guest} is the active guest of group {}; starting standby {c} ({need} MiB; then {n} of {} guests and {mib} of {} MiB in use); {failed}",
                                g.name, host.max_guests, host.max_memory_mib
                            ),
                        ));
                    }
                }
            }
            if refused.is_empty() {
                refused.push(format!("group {} has no other member", g.name));
            }
            Some(give_up(format!(
                "{why}: no standby of group {} can take over from {guest}: {}; giving up",
                g.name,
                refused.join("; ")
            )))
        }
    }
}

fn rule_says_stop(rule: &Rule) -> bool {
    matches!(
        rule.action,
        RuleAction::StartStandby {
            stop_failed: Some(true)
        }
    )
}

/// Whether `guest` (needing `need` MiB) fits next to what runs, leaving out `without`:
/// the usage afterwards, or why not.
fn fits(
    view: &View,
    without: Option<&str>,
    guest: &str,
    need: u32,
    policy: &Policy,
) -> Result<(u32, u64), String> {
    let host = policy.host();
    let (n, mib) = view.usage(without);
    if n + 1 > host.max_guests {
        return Err(format!(
            "{guest} would be guest {} of at most {} ({n} running)",
            n + 1,
            host.max_guests
        ));
    }
    if mib + u64::from(need) > host.max_memory_mib {
        return Err(format!(
            "{guest} needs {need} MiB, {mib} of {} MiB in use",
            host.max_memory_mib
        ));
    }
    Ok((n + 1, mib + u64::from(need)))
}
