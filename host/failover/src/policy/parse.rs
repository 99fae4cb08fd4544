//! Policy text to its parts, step by step as a builder does: the TOML read with spans,
//! then one function per section, in this order — `[host]`, `[limits]`, `[dump]`, the
//! `[[guest]]`s (`guest.rs`), the `[[group]]`s, the `[[rule]]`s — each problem a
//! [`PolicyError`] naming its file, line and column.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;
use vesper_events::EventKind;
use vesper_toml_located::Locator;

use super::guest::{boolean, guests, RawGuest};
use super::types::{
    kills_guest, Condition, DumpPolicy, Group, GuestSpec, HostCapacity, Limits, Rule, RuleAction,
    WhereValue, DEFAULT_HOOK_TIMEOUT_SECS, DUMP_WAIT_SECS, HOOK_TIMEOUT_SECS,
};
use crate::error::{Location, PolicyError};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    host: Option<RawHost>,
    #[serde(default)]
    guest: Vec<Spanned<RawGuest>>,
    #[serde(default)]
    group: Vec<RawGroup>,
    #[serde(default)]
    rule: Vec<RawRule>,
    limits: Option<RawLimits>,
    dump: Option<RawDump>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDump {
    // Values, not bools: a non-boolean gets our own error, naming the key.
    on_panic: Option<Spanned<toml::Value>>,
    wait_secs: Option<Spanned<i64>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHost {
    max_guests: Spanned<u32>,
    max_memory_mib: Spanned<u64>,
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

/// A checked policy's parts, for [`Policy`](super::Policy) to hold.
pub(super) struct Parsed {
    pub(super) host: HostCapacity,
    pub(super) limits: Limits,
    pub(super) dump: DumpPolicy,
    pub(super) guests: Vec<GuestSpec>,
    pub(super) groups: Vec<Group>,
    pub(super) rules: Vec<Rule>,
}

/// Parses and checks policy text (from `file`, if any: locations name it, and the files
/// the policy names are relative to it).
pub(super) fn parse(text: &str, file: Option<&Path>) -> Result<Parsed, PolicyError> {
    let loc = Locator { text, file };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| loc.toml_error(&e))?;
    let host = host(&loc, raw.host)?;
    let limits = limits(&loc, raw.limits)?;
    let dump = dump(&loc, raw.dump)?;
    let guests = guests(&loc, raw.guest, host)?;
    let groups = groups(&loc, raw.group, &guests)?;
    let rules = rules(&loc, raw.rule, host, &guests, &groups)?;
    Ok(Parsed {
        host,
        limits,
        dump,
        guests,
        groups,
        rules,
    })
}

/// `[host]`: required, no capacity 0.
fn host(loc: &Locator, raw: Option<RawHost>) -> Result<HostCapacity, PolicyError> {
    let Some(host) = raw else {
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
    Ok(HostCapacity {
        max_guests: host.max_guests.into_inner(),
        max_memory_mib: host.max_memory_mib.into_inner(),
    })
}

/// `[limits]`: the defaults, or values of at least 1.
fn limits(loc: &Locator, raw: Option<RawLimits>) -> Result<Limits, PolicyError> {
    let mut limits = Limits::default();
    let Some(l) = raw else {
        return Ok(limits);
    };
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
    Ok(limits)
}

/// `[dump]`: `on_panic` a boolean, `wait_secs` in range.
fn dump(loc: &Locator, raw: Option<RawDump>) -> Result<DumpPolicy, PolicyError> {
    let mut dump = DumpPolicy::default();
    let Some(d) = raw else {
        return Ok(dump);
    };
    if let Some(v) = d.on_panic {
        dump.on_panic = Some(boolean(loc, v, "[dump] on_panic".into())?);
    }
    if let Some(w) = d.wait_secs {
        let value = *w.get_ref();
        dump.wait_secs = u64::try_from(value)
            .ok()
            .filter(|v| DUMP_WAIT_SECS.contains(v))
            .ok_or_else(|| PolicyError::DumpWaitOutOfRange {
                at: loc.of(&w),
                value,
            })?;
    }
    Ok(dump)
}

/// The `[[group]]`s: named once each, their members declared guests, a guest in at most
/// one group.
fn groups(
    loc: &Locator,
    raw: Vec<RawGroup>,
    guests: &[GuestSpec],
) -> Result<Vec<Group>, PolicyError> {
    let mut groups: Vec<Group> = Vec::with_capacity(raw.len());
    let mut member_of: HashMap<String, String> = HashMap::new();
    for g in raw {
        let at = loc.of(&g.name);
        let name = g.name.into_inner();
        if name.trim().is_empty() {
            return Err(PolicyError::EmptyName { at, what: "group" });
        }
        if groups.iter().any(|o| o.name == name) {
            return Err(PolicyError::DuplicateGroup { at, group: name });
        }
        let Members {
            primary,
            standbys,
            named,
        } = members(loc, &name, g.primary, g.standbys)?;
        for (guest, at) in named {
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
    Ok(groups)
}

/// A group's members.
struct Members {
    primary: String,
    standbys: Vec<String>,
    /// Every member, primary first, with where the group names it.
    named: Vec<(String, Location)>,
}

/// A group's primary and standbys: none the primary, none twice.
fn members(
    loc: &Locator,
    group: &str,
    primary: Spanned<String>,
    raw: Vec<Spanned<String>>,
) -> Result<Members, PolicyError> {
    let primary_at = loc.of(&primary);
    let primary = primary.into_inner();
    let mut named = vec![(primary.clone(), primary_at)];
    let mut standbys = Vec::with_capacity(raw.len());
    for s in raw {
        let at = loc.of(&s);
        let s = s.into_inner();
        if s == primary {
            return Err(PolicyError::StandbyIsPrimary {
                at,
                group: group.into(),
                guest: s,
            });
        }
        if standbys.contains(&s) {
            return Err(PolicyError::RepeatedStandby {
                at,
                group: group.into(),
                guest: s,
            });
        }
        standbys.push(s.clone());
        named.push((s, at));
    }
    Ok(Members {
        primary,
        standbys,
        named,
    })
}

/// The `[[rule]]`s, numbered from 1 in file order.
fn rules(
    loc: &Locator,
    raw: Vec<RawRule>,
    host: HostCapacity,
    guests: &[GuestSpec],
    groups: &[Group],
) -> Result<Vec<Rule>, PolicyError> {
    let mut rules = Vec::with_capacity(raw.len());
    for (i, r) in raw.into_iter().enumerate() {
        rules.push(rule(loc, i + 1, r, host, guests, groups)?);
    }
    Ok(rules)
}

/// One `[[rule]]`: a kind a rule may answer, a declared group, an action with only its
/// own keys, `where` conditions, and a `start_standby` that can happen at all.
fn rule(
    loc: &Locator,
    number: usize,
    r: RawRule,
    host: HostCapacity,
    guests: &[GuestSpec],
    groups: &[Group],
) -> Result<Rule, PolicyError> {
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
        Some(g) if !groups.iter().any(|o| o.name == *g.get_ref()) => {
            return Err(PolicyError::UnknownGroup {
                at: loc.of(&g),
                rule: number,
                group: g.into_inner(),
            });
        }
        other => other.map(Spanned::into_inner),
    };
    let action_at = loc.of(&r.action);
    let action = action(
        loc,
        number,
        r.action,
        r.command,
        r.timeout_secs,
        r.stop_failed,
    )?;
    let mut conditions = Vec::new();
    if let Some(w) = r.where_ {
        let at = loc.of(&w);
        flatten_where(&mut conditions, &mut Vec::new(), w.get_ref(), &at, number)?;
    }
    if let RuleAction::StartStandby { stop_failed } = &action {
        let keeps_running = !stop_failed.unwrap_or_else(|| kills_guest(on));
        let standby = StandbyRule {
            number,
            on,
            group: &group,
            at: &action_at,
            keeps_running,
        };
        standby_possible(&standby, host, guests, groups)?;
    }
    Ok(Rule {
        number,
        on,
        conditions,
        group,
        action,
    })
}

/// A rule's `action` and the keys only one action takes (`command` and `timeout_secs`
/// of a hook, `stop_failed` of a start_standby).
fn action(
    loc: &Locator,
    number: usize,
    action: Spanned<String>,
    command: Option<Spanned<Vec<String>>>,
    timeout_secs: Option<Spanned<i64>>,
    stop_failed: Option<Spanned<bool>>,
) -> Result<RuleAction, PolicyError> {
    let action_at = loc.of(&action);
    let action_name = action.into_inner();
    let only =
        |key: &'static str, for_action: &'static str, present: Option<Location>| match present {
            Some(at) if action_name != for_action => Err(PolicyError::KeyNotForAction {
                at,
                rule: number,
                key,
                for_action,
                action: action_name.clone(),
            }),
            _ => Ok(()),
        };
    only("command", "hook", command.as_ref().map(|c| loc.of(c)))?;
    only(
        "timeout_secs",
        "hook",
        timeout_secs.as_ref().map(|c| loc.of(c)),
    )?;
    only(
        "stop_failed",
        "start_standby",
        stop_failed.as_ref().map(|c| loc.of(c)),
    )?;
    Ok(match action_name.as_str() {
        "restart" => RuleAction::Restart,
        "stop" => RuleAction::Stop,
        "fence" => RuleAction::Fence,
        "start_standby" => RuleAction::StartStandby {
            stop_failed: stop_failed.map(Spanned::into_inner),
        },
        "hook" => hook(loc, number, action_at, command, timeout_secs)?,
        _ => {
            return Err(PolicyError::UnknownAction {
                at: action_at,
                rule: number,
                action: action_name,
            })
        }
    })
}

/// A hook: a non-empty command, a timeout in range.
fn hook(
    loc: &Locator,
    number: usize,
    action_at: Location,
    command: Option<Spanned<Vec<String>>>,
    timeout_secs: Option<Spanned<i64>>,
) -> Result<RuleAction, PolicyError> {
    let command = match command {
        Some(c) if c.get_ref().first().is_some_and(|a| !a.trim().is_empty()) => c.into_inner(),
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
    let timeout_secs = match timeout_secs {
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
    Ok(RuleAction::Hook {
        command,
        timeout_secs,
    })
}

/// A `start_standby` rule, as [`standby_possible`] checks it.
struct StandbyRule<'a> {
    number: usize,
    on: EventKind,
    group: &'a Option<String>,
    at: &'a Location,
    /// The failed guest keeps running beside the standby.
    keeps_running: bool,
}

/// A `start_standby` must be possible at all: some group it applies to has standbys,
/// and when the failed guest keeps running, it and a standby fit on the host together.
fn standby_possible(
    r: &StandbyRule,
    host: HostCapacity,
    guests: &[GuestSpec],
    groups: &[Group],
) -> Result<(), PolicyError> {
    let applies: Vec<&Group> = match r.group {
        Some(g) => groups.iter().filter(|o| o.name == *g).collect(),
        None => groups.iter().collect(),
    };
    if applies.iter().all(|g| g.standbys.is_empty()) {
        return Err(PolicyError::NoStandbys {
            at: r.at.clone(),
            rule: r.number,
            group: r.group.clone(),
        });
    }
    if !r.keeps_running {
        return Ok(());
    }
    let memory_of = |g: &str| guests.iter().find(|d| d.name == g).map(|d| d.memory_mib);
    for g in applies.iter().filter(|g| !g.standbys.is_empty()) {
        let smallest = g.standbys.iter().filter_map(|s| memory_of(s)).min();
        let primary = memory_of(&g.primary).unwrap_or(0);
        let need = u64::from(primary) + u64::from(smallest.unwrap_or(0));
        if host.max_guests < 2 || need > host.max_memory_mib {
            return Err(PolicyError::FailoverCannotFit {
                at: r.at.clone(),
                rule: r.number,
                group: g.name.clone(),
                kind: r.on,
                need_guests: 2,
                need_mib: need,
                max_guests: host.max_guests,
                max_memory_mib: host.max_memory_mib,
            });
        }
    }
    Ok(())
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
