//! One event model for every failure signal and every decision.
#![deny(missing_docs)]

pub mod shape;

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The guest kernel panicked (panic probe record).
    Panic,
    /// A watched process exited (exit probe record).
    ServiceExit,
    /// The OOM killer killed a process (OOM probe record).
    Oom,
    /// QEMU reported `GUEST_PANICKED` (pvpanic).
    GuestPanicked,
    /// QEMU reported `SHUTDOWN`.
    Shutdown,
    /// QEMU reported `STOP` (the VM was paused).
    Stop,
    /// QEMU reported `RESET`.
    Reset,
    /// The QEMU process ended.
    VmExit,
    /// The guest's Vesper frontend came up (first boot or after a restart).
    GuestUp,
    /// The failover engine decided something.
    Decision,
    /// A module's init returned 0 in the guest: the module is live.
    ModuleLoaded,
    /// A module's init failed in the guest: the module is gone.
    ModuleFailed,
    /// What a cluster manager did or saw (a Pacemaker alert: a resource started or
    /// failed, a node left, a node was fenced), fed back into the stream.
    Cluster,
    /// An urgent record of a probe spec whose kind is `probe` (`vesper probe`): a
    /// failure signal with the spec's own fields.
    Probe,
    /// A host-kernel probe saw a vCPU make no progress for longer than the threshold:
    /// out of the guest (paused, parked by its VMM), stopped (SIGSTOP) or starved of a
    /// host CPU — a guest frozen by its host, which no probe inside it can report.
    VcpuStall,
}

impl EventKind {
    /// Every kind, for help texts and validation.
    pub const ALL: [EventKind; 15] = [
        EventKind::Panic,
        EventKind::ServiceExit,
        EventKind::Oom,
        EventKind::GuestPanicked,
        EventKind::Shutdown,
        EventKind::Stop,
        EventKind::Reset,
        EventKind::VmExit,
        EventKind::GuestUp,
        EventKind::Decision,
        EventKind::ModuleLoaded,
        EventKind::ModuleFailed,
        EventKind::Cluster,
        EventKind::Probe,
        EventKind::VcpuStall,
    ];

    /// The wire name (`service_exit`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::Panic => "panic",
            EventKind::ServiceExit => "service_exit",
            EventKind::Oom => "oom",
            EventKind::GuestPanicked => "guest_panicked",
            EventKind::Shutdown => "shutdown",
            EventKind::Stop => "stop",
            EventKind::Reset => "reset",
            EventKind::VmExit => "vm_exit",
            EventKind::GuestUp => "guest_up",
            EventKind::Decision => "decision",
            EventKind::ModuleLoaded => "module_loaded",
            EventKind::ModuleFailed => "module_failed",
            EventKind::Cluster => "cluster",
            EventKind::Probe => "probe",
            EventKind::VcpuStall => "vcpu_stall",
        }
    }

    /// True for kinds that mean the guest or a service in it has failed.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            EventKind::Panic
                | EventKind::ServiceExit
                | EventKind::Oom
                | EventKind::GuestPanicked
                | EventKind::VmExit
                | EventKind::Probe
        )
    }
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An unknown event kind name.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown event kind {0:?}; known kinds: {known}", known = EventKind::ALL.map(EventKind::name).join(", "))]
pub struct UnknownKind(pub String);

impl FromStr for EventKind {
    type Err = UnknownKind;
    fn from_str(s: &str) -> Result<Self, UnknownKind> {
        EventKind::ALL
            .into_iter()
            .find(|k| k.name() == s)
            .ok_or_else(|| UnknownKind(s.to_string()))
    }
}

/// Where an event came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Source {
    /// A probe record read from a relay channel.
    Probe {
        /// Module that wrote it.
        module: String,
        /// Channel.
        channel: String,
    },
    /// A QMP event.
    Qmp {
        /// QMP event name (`GUEST_PANICKED`).
        event: String,
    },
    /// A device of the builtin VMM (pvpanic, the reset control), seen in-process.
    Vmm {
        /// What it reported (`GUEST_PANICKED`, `RESET`: QEMU's names for the same).
        event: String,
    },
    /// The VM process itself.
    Process,
    /// The guest frontend's handshake.
    Frontend,
    /// The failover engine.
    Engine,
    /// A cluster manager, through `vesper cluster` (the bridge's decisions, Pacemaker's
    /// alerts).
    Cluster {
        /// Who sent it: `bridge` or `alert`.
        origin: String,
        /// The cluster node it came from (`crm_node -n` there).
        node: String,
    },
    /// vesperd's eBPF probes in the host kernel (`vesper-hostprobe`).
    HostProbe,
}

/// One event. `seq` is host-wide and increases by one per event.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// Host-wide sequence number.
    pub seq: u64,
    /// Guest it is about.
    pub guest: String,
    /// What happened.
    pub kind: EventKind,
    /// Host clock (Unix ns) when the host learned of it.
    pub time_ns: u64,
    /// When it happened, on the host clock, if the source says (probe records).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub happened_ns: Option<u64>,
    /// Where it came from.
    pub source: Source,
    /// Kind-specific details (a decoded record, a QMP event's data, a decision).
    pub payload: Value,
}

impl Event {
    /// One line saying what the event means (a failure's cause, for status and logs).
    pub fn summary(&self) -> String {
        let p = &self.payload;
        match self.kind {
            EventKind::ServiceExit if p["signal"].as_i64().unwrap_or(0) != 0 => {
                format!(
                    "{} (pid {}) killed by signal {}",
                    p["comm"].as_str().unwrap_or("?"),
                    p["pid"],
                    p["signal"]
                )
            }
            EventKind::ServiceExit => {
                format!(
                    "{} (pid {}) exited with status {}",
                    p["comm"].as_str().unwrap_or("?"),
                    p["pid"],
                    p["status"]
                )
            }
            EventKind::Panic => format!(
                "kernel panic: {}",
                p["message"].as_str().unwrap_or("?").trim_end()
            ),
            EventKind::Oom => format!(
                "OOM killer killed {} (pid {})",
                p["comm"].as_str().unwrap_or("?"),
                p["pid"]
            ),
            EventKind::GuestPanicked => "QEMU reports GUEST_PANICKED (pvpanic)".to_string(),
            EventKind::VmExit if p["requested"] == true => {
                "the VM process ended (stop requested)".to_string()
            }
            EventKind::VmExit => "the VM process ended".to_string(),
            EventKind::VcpuStall => format!(
                "vCPU {} made no progress for {} ms ({})",
                p["vcpu"],
                p["stalled_ms"],
                p["state"].as_str().unwrap_or("?")
            ),
            other => other.name().to_string(),
        }
    }
}

/// What a subscriber wants.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only these guests (all if empty).
    #[serde(default)]
    pub guests: Vec<String>,
    /// Only these kinds (all if empty).
    #[serde(default)]
    pub kinds: Vec<EventKind>,
}

impl Filter {
    /// True when `e` passes.
    pub fn matches(&self, e: &Event) -> bool {
        (self.guests.is_empty() || self.guests.contains(&e.guest))
            && (self.kinds.is_empty() || self.kinds.contains(&e.kind))
    }
}

/// The daemon's bounded event history: numbers events and answers resumes.
#[derive(Debug)]
pub struct EventLog {
    events: VecDeque<Event>,
    capacity: usize,
    next_seq: u64,
}

impl EventLog {
    /// A log keeping the last `capacity` events; sequence numbers start at 1.
    pub fn new(capacity: usize) -> Self {
        Self {
            events: VecDeque::with_capacity(capacity.min(1 << 16)),
            capacity: capacity.max(1),
            next_seq: 1,
        }
    }

    /// Numbers `e` (overwriting its `seq`), keeps it, and returns the stored copy.
    pub fn push(&mut self, mut e: Event) -> Event {
        e.seq = self.next_seq;
        self.next_seq += 1;
        if self.events.len() == self.capacity {
            self.events.pop_front();
        }
        self.events.push_back(e.clone());
        e
    }

    /// The sequence number the next event will get.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Events with `seq >= from` that pass `filter`, and how many events in
    /// `[from, oldest kept)` were already forgotten (the resume gap).
    pub fn since(&self, from: u64, filter: &Filter) -> (Vec<Event>, u64) {
        let oldest = self.events.front().map_or(self.next_seq, |e| e.seq);
        let missed = oldest.saturating_sub(from);
        let out = self
            .events
            .iter()
            .filter(|e| e.seq >= from && filter.matches(e))
            .cloned()
            .collect();
        (out, missed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(guest: &str, kind: EventKind) -> Event {
        Event {
            seq: 0,
            guest: guest.into(),
            kind,
            time_ns: 1,
            happened_ns: None,
            source: Source::Process,
            payload: Value::Null,
        }
    }

    #[test]
    fn kinds_round_trip_by_name_and_unknown_ones_list_the_known() {
        for k in EventKind::ALL {
            assert_eq!(k.name().parse::<EventKind>().unwrap(), k);
            assert_eq!(serde_json::to_value(k).unwrap(), k.name());
        }
        let e = "boom".parse::<EventKind>().unwrap_err().to_string();
        assert!(e.contains("boom") && e.contains("service_exit"), "{e}");
    }

    #[test]
    fn the_log_numbers_events_and_resumes_with_a_gap_count() {
        let mut log = EventLog::new(3);
        for i in 0..5 {
            let e = log.push(ev(if i % 2 == 0 { "a" } else { "b" }, EventKind::Panic));
            assert_eq!(e.seq, i + 1);
        }
        let all = Filter::default();
        let (got, missed) = log.since(1, &all);
        assert_eq!(
            (got.iter().map(|e| e.seq).collect::<Vec<_>>(), missed),
            (vec![3, 4, 5], 2)
        );
        let (got, missed) = log.since(4, &all);
        assert_eq!((got.len(), missed), (2, 0));
        let only_b = Filter {
            guests: vec!["b".into()],
            kinds: vec![],
        };
        assert_eq!(
            log.since(1, &only_b)
                .0
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>(),
            vec![4]
        );
        let only_oom = Filter {
            guests: vec![],
            kinds: vec![EventKind::Oom],
        };
        assert!(log.since(1, &only_oom).0.is_empty());
    }
}
