//! The TOML policy: this host's capacities, the guests the engine may start, groups of a
//! primary and its standbys, rules, and restart limits — parsed and validated as a whole.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::error::PolicyError;

mod guest;
mod parse;
#[cfg(test)]
mod tests;
mod types;

use parse::Parsed;
pub use types::{
    kills_guest, Condition, DefinitionRef, DumpPolicy, Group, GuestSpec, HostCapacity, Limits,
    ProbeGroupRef, ProbeSpec, Rule, RuleAction, WhereValue, DEFAULT_DUMP_WAIT_SECS,
    DEFAULT_HOOK_TIMEOUT_SECS, DEFAULT_MAX_RESTARTS, DEFAULT_MODE, DEFAULT_WINDOW_SECS,
    DUMP_WAIT_SECS, HOOK_TIMEOUT_SECS,
};

/// A validated policy. Only [`Policy::from_toml`] and [`Policy::load`] make one, so every
/// name it refers to exists and every guest fits on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Policy {
    host: HostCapacity,
    guests: Vec<GuestSpec>,
    groups: Vec<Group>,
    rules: Vec<Rule>,
    limits: Limits,
    dump: DumpPolicy,
}

impl Policy {
    /// Parses and validates policy text.
    /// A `definition` file it names is read (relative to the working directory).
    pub fn from_toml(text: &str) -> Result<Policy, PolicyError> {
        Self::parse(text, None)
    }

    /// Reads, parses and validates a policy file; error locations name the file. The
    /// VM definition files its guests name (relative to it) are read and checked too.
    pub fn load(path: &Path) -> Result<Policy, PolicyError> {
        let text = vesper_toml_located::read("policy", path)?;
        Self::parse(&text, Some(path))
    }

    fn parse(text: &str, file: Option<&Path>) -> Result<Policy, PolicyError> {
        let Parsed {
            host,
            limits,
            dump,
            guests,
            groups,
            rules,
        } = parse::parse(text, file)?;
        Ok(Policy {
            host,
            guests,
            groups,
            rules,
            limits,
            dump,
        })
    }

    /// Policy text as if read from `/etc/vesper/policy.toml`.
    #[cfg(test)]
    fn load_text_for_test(text: &str) -> Policy {
        Self::parse(text, Some(Path::new("/etc/vesper/policy.toml"))).expect("valid policy")
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

    /// `[dump]`.
    pub fn dump(&self) -> DumpPolicy {
        self.dump
    }

    /// Whether a panic of `guest` is dumped: its own `dump`, else `[dump] on_panic`,
    /// else `daemon_default` (vesperd's `--dump-on-panic`). Guests the policy does not
    /// declare follow `[dump] on_panic` too.
    pub fn dumps(&self, guest: &str, daemon_default: bool) -> bool {
        self.guest(guest)
            .and_then(|g| g.dump)
            .or(self.dump.on_panic)
            .unwrap_or(daemon_default)
    }

    /// Checks every guest's `probe_group` file with `check` (which reads and validates
    /// a group file: the policy crate does no such I/O itself); a failure names the
    /// policy line that names the group.
    pub fn check_probe_groups(
        &self,
        check: impl Fn(&Path) -> Result<(), String>,
    ) -> Result<(), PolicyError> {
        for g in &self.guests {
            if let Some(r) = &g.probe_group {
                check(&r.path).map_err(|why| PolicyError::BadProbeGroup {
                    at: r.at.clone(),
                    guest: g.name.clone(),
                    why,
                })?;
            }
        }
        Ok(())
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
                "guest {}: {} MiB, {}, ",
                g.name,
                g.memory_mib,
                plural(g.cpus as usize, "cpu", "cpus"),
            );
            match &g.definition {
                // How it boots is the definition's (firmware, kernel, the kit's mode).
                Some(d) => {
                    let _ = write!(s, "vmm {}, as defined in {}", g.vmm, d.path.display());
                }
                None => {
                    let _ = write!(s, "mode {}, vmm {}", g.mode, g.vmm);
                    if let Some(k) = &g.kernel {
                        let _ = write!(s, ", kernel {k}");
                    }
                }
            }
            if let Some(d) = g.dump {
                s.push_str(if d {
                    ", vmcore on panic"
                } else {
                    ", no vmcore on panic"
                });
            }
            for p in &g.probes {
                let _ = write!(s, ", probe {}", p.module);
                if !p.params.is_empty() {
                    let _ = write!(s, "({})", p.params.join(" "));
                }
            }
            if let Some(r) = &g.probe_group {
                let _ = write!(s, ", probe group {}", r.path.display());
            }
            s.push('\n');
        }
        match self.dump.on_panic {
            _ if self.dump == DumpPolicy::default() => {}
            Some(d) => {
                let _ = writeln!(
                    s,
                    "dump: vmcore on panic {} by default, failover waits up to {} s for one",
                    if d { "on" } else { "off" },
                    self.dump.wait_secs
                );
            }
            None => {
                let _ = writeln!(
                    s,
                    "dump: vmcore on panic as vesperd's --dump-on-panic says, failover waits up to {} s for one",
                    self.dump.wait_secs
                );
            }
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
