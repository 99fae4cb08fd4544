//! Policy text to [`Policy`]: TOML read with spans, then checked as a whole, each
//! problem a [`PolicyError`] naming its file, line and column.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;
use vesper_events::EventKind;
use vesper_toml_located::Locator;

use super::*;
use crate::error::{Location, PolicyError};

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
struct RawGuest {
    name: Spanned<String>,
    memory_mib: Spanned<u32>,
    cpus: Option<Spanned<u32>>,
    mode: Option<Spanned<String>>,
    vmm: Option<Spanned<String>>,
    kernel: Option<Spanned<String>>,
    dump: Option<Spanned<toml::Value>>,
    #[serde(default)]
    probes: Vec<RawProbe>,
    probe_group: Option<Spanned<String>>,
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

pub(super) fn parse(text: &str, file: Option<&Path>) -> Result<Policy, PolicyError> {
    let loc = Locator { text, file };
    let raw: RawPolicy = toml::from_str(text).map_err(|e| loc.toml_error(&e))?;

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

    // [dump]
    let mut dump = DumpPolicy::default();
    if let Some(d) = raw.dump {
        if let Some(v) = d.on_panic {
            dump.on_panic = Some(boolean(&loc, v, "[dump] on_panic".into())?);
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
        let dump = match g.dump {
            Some(v) => Some(boolean(&loc, v, format!("guest {name:?}"))?),
            None => None,
        };
        let probe_group = match g.probe_group {
            Some(p) if p.get_ref().trim().is_empty() => {
                return Err(PolicyError::EmptyName {
                    at: loc.of(&p),
                    what: "probe group",
                })
            }
            Some(p) => Some(ProbeGroupRef {
                at: loc.of(&p),
                // Relative to the policy file, as a group's members are to the group file.
                path: file
                    .and_then(Path::parent)
                    .unwrap_or(Path::new(""))
                    .join(p.into_inner()),
            }),
            None => None,
        };
        guests.push(GuestSpec {
            name,
            memory_mib,
            cpus,
            mode,
            vmm,
            kernel,
            dump,
            probes,
            probe_group,
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
        dump,
        host: capacity,
        guests,
        groups,
        rules,
        limits,
    })
}

/// A `dump` value: true or false, anything else its own error.
fn boolean(loc: &Locator, v: Spanned<toml::Value>, whose: String) -> Result<bool, PolicyError> {
    match v.get_ref() {
        toml::Value::Boolean(b) => Ok(*b),
        other => Err(PolicyError::BadDump {
            at: loc.of(&v),
            whose,
            found: other.to_string(),
        }),
    }
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
