//! The bridge's decisions, as pure logic: which events are a new incident to report to
//! the cluster, and which are not (a stop somebody asked for, a second signal of an
//! incident already reported, an event from before the bridge started or one it already
//! saw before a reconnect).

use std::collections::HashMap;

use vesper_events::{Event, EventKind, Filter};

/// A failure the cluster has not been told about yet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Incident {
    /// The guest that failed.
    pub guest: String,
    /// The event that tells.
    pub seq: u64,
    /// Its kind.
    pub kind: EventKind,
    /// When vesperd learned of it (host clock, Unix ns).
    pub time_ns: u64,
    /// What happened, in one line.
    pub summary: String,
}

/// What the bridge makes of one event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Tell the cluster.
    Report(Incident),
    /// A failure of an incident already reported (by the event with this `seq`).
    AlreadyReported(u64),
    /// Nothing to tell (not a failure, a requested stop, old, seen before).
    Ignore,
}

/// One bridge's memory: where it is in the stream, and which guests' incidents it
/// has reported (until each guest comes up again).
#[derive(Debug)]
pub struct BridgeState {
    since_ns: u64,
    last: Option<(u64, u64)>,
    reported: HashMap<String, u64>,
}

impl BridgeState {
    /// A bridge that reports what happens from `since_ns` (host clock, Unix ns) on.
    pub fn new(since_ns: u64) -> Self {
        Self {
            since_ns,
            last: None,
            reported: HashMap::new(),
        }
    }

    /// The events the bridge asks vesperd for.
    pub fn filter() -> Filter {
        Filter {
            guests: Vec::new(),
            kinds: EventKind::ALL
                .into_iter()
                .filter(|k| k.is_failure() || *k == EventKind::GuestUp)
                .collect(),
        }
    }

    /// Decides on `e`. Events arrive in stream order; after a reconnect vesperd sends its
    /// whole kept history again (its sequence numbers restart when it does), so an event
    /// is new when it is later than the last one seen, by host time then sequence.
    pub fn on_event(&mut self, e: &Event) -> Verdict {
        let key = (e.time_ns, e.seq);
        if e.time_ns < self.since_ns || self.last.is_some_and(|last| key <= last) {
            return Verdict::Ignore;
        }
        self.last = Some(key);
        if e.kind == EventKind::GuestUp {
            // A new incarnation: its failures are new incidents.
            self.reported.remove(&e.guest);
            return Verdict::Ignore;
        }
        if !e.kind.is_failure() || (e.kind == EventKind::VmExit && e.payload["requested"] == true) {
            return Verdict::Ignore;
        }
        if let Some(&first) = self.reported.get(&e.guest) {
            return Verdict::AlreadyReported(first);
        }
        self.reported.insert(e.guest.clone(), e.seq);
        Verdict::Report(Incident {
            guest: e.guest.clone(),
            seq: e.seq,
            kind: e.kind,
            time_ns: e.time_ns,
            summary: e.summary(),
        })
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value};
    use vesper_events::Source;

    use super::*;

    fn ev(seq: u64, time_ns: u64, guest: &str, kind: EventKind, payload: Value) -> Event {
        Event {
            seq,
            guest: guest.into(),
            kind,
            time_ns,
            happened_ns: None,
            source: Source::Process,
            payload,
        }
    }

    fn exit(seq: u64, t: u64) -> Event {
        ev(
            seq,
            t,
            "web1",
            EventKind::ServiceExit,
            json!({"comm": "svc", "pid": 90, "signal": 9}),
        )
    }

    #[test]
    fn one_incident_is_reported_once_until_the_guest_comes_up_again() {
        let mut b = BridgeState::new(0);
        let Verdict::Report(i) = b.on_event(&exit(5, 100)) else {
            panic!("a service exit is reported")
        };
        assert_eq!((i.guest.as_str(), i.seq), ("web1", 5));
        assert!(
            i.summary.contains("svc (pid 90) killed by signal 9"),
            "{}",
            i.summary
        );
        // The same incident seen again: the VM dies after its service.
        let vm_exit = ev(
            6,
            101,
            "web1",
            EventKind::VmExit,
            json!({"requested": false}),
        );
        assert_eq!(b.on_event(&vm_exit), Verdict::AlreadyReported(5));
        // Another guest's failure is its own incident.
        let other = ev(7, 102, "db", EventKind::Panic, json!({"message": "boom"}));
        assert!(matches!(b.on_event(&other), Verdict::Report(_)));
        // web1 restarted (here or elsewhere and back): its next failure is reported.
        assert_eq!(
            b.on_event(&ev(8, 103, "web1", EventKind::GuestUp, json!({}))),
            Verdict::Ignore
        );
        assert!(matches!(b.on_event(&exit(9, 104)), Verdict::Report(_)));
    }

    #[test]
    fn requested_stops_old_events_and_replays_are_not_reported() {
        let mut b = BridgeState::new(50);
        assert_eq!(
            b.on_event(&exit(1, 49)),
            Verdict::Ignore,
            "before the bridge started"
        );
        let stop = ev(2, 60, "web1", EventKind::VmExit, json!({"requested": true}));
        assert_eq!(
            b.on_event(&stop),
            Verdict::Ignore,
            "a stop somebody asked for"
        );
        let up = ev(3, 61, "web1", EventKind::GuestUp, json!({}));
        assert_eq!(b.on_event(&up), Verdict::Ignore);
        assert!(matches!(b.on_event(&exit(4, 70)), Verdict::Report(_)));
        // A reconnect replays the kept history: nothing is reported twice.
        for e in [exit(1, 49), stop, up, exit(4, 70)] {
            assert_eq!(b.on_event(&e), Verdict::Ignore, "{e:?}");
        }
        // vesperd restarted: its numbers start again, its clock does not.
        let up = ev(1, 80, "web1", EventKind::GuestUp, json!({}));
        assert_eq!(b.on_event(&up), Verdict::Ignore);
        assert!(matches!(b.on_event(&exit(2, 90)), Verdict::Report(_)));
    }

    #[test]
    fn the_filter_asks_for_failures_and_comings_up_only() {
        let f = BridgeState::filter();
        assert!(f.kinds.contains(&EventKind::ServiceExit) && f.kinds.contains(&EventKind::GuestUp));
        assert!(!f.kinds.contains(&EventKind::Decision) && !f.kinds.contains(&EventKind::Cluster));
    }
}
