//! The daemon's event bus: one numbered history, broadcast to subscribers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::Value;
use tokio::sync::broadcast;
use vesper_api::{FailureView, VmStatus};
use vesper_events::{Event, EventKind, EventLog, Filter, Source};

/// Events kept for resumes.
pub const HISTORY: usize = 100_000;
/// Longest a subscriber may take to accept one line before it is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// Unix time now, ns.
pub fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// An event as subscribers receive it: encoded for the wire once, whatever the number of
/// subscribers.
#[derive(Clone)]
pub struct Published {
    /// The event.
    pub event: Arc<Event>,
    /// Its reply line (`{"ok":true,"result":{"reply":"event",…}}` and a newline).
    pub line: Arc<str>,
}

fn wire_line(e: &Event) -> Arc<str> {
    let reply: vesper_api::Response = Ok(vesper_api::Reply::Event(e.clone()));
    let mut line =
        serde_json::to_string(&vesper_api::WireResponse::from(reply)).unwrap_or_default();
    line.push('\n');
    line.into()
}

/// Numbers, keeps and broadcasts every event of the host.
pub struct EventBus {
    log: Mutex<EventLog>,
    tx: broadcast::Sender<Published>,
    /// The failover engine sees every event, never a gap: its queue is not bounded by
    /// subscriber buffers (it only ever holds what the engine has not decided on yet).
    engine: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Arc<Event>>>>,
}

impl EventBus {
    /// A bus whose subscribers may fall `subscriber_buffer` events behind before they
    /// are sent a gap.
    pub fn new(subscriber_buffer: usize) -> Self {
        Self {
            log: Mutex::new(EventLog::new(HISTORY)),
            tx: broadcast::channel(subscriber_buffer.max(1)).0,
            engine: Mutex::new(None),
        }
    }

    /// The queue the failover engine reads every event from (one engine per bus).
    pub fn engine_feed(&self) -> tokio::sync::mpsc::UnboundedReceiver<Arc<Event>> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.engine.lock().expect("engine feed lock") = Some(tx);
        rx
    }

    /// Publishes an event about `guest`; returns it numbered.
    pub fn publish(
        &self,
        guest: &str,
        kind: EventKind,
        source: Source,
        happened_ns: Option<u64>,
        payload: Value,
    ) -> Arc<Event> {
        let e = Event {
            seq: 0,
            guest: guest.to_string(),
            kind,
            time_ns: now_ns(),
            happened_ns,
            source,
            payload,
        };
        // Numbering and sending under one lock keeps every subscriber's order the log's.
        let mut log = self.log.lock().expect("event log lock");
        let e = Arc::new(log.push(e));
        let _ = self.tx.send(Published {
            event: e.clone(),
            line: wire_line(&e),
        });
        if let Some(engine) = self.engine.lock().expect("engine feed lock").as_ref() {
            let _ = engine.send(e.clone());
        }
        e
    }

    /// History from `from_seq` matching `filter`, the number of events already forgotten
    /// before it, and a receiver for what follows — taken together, so nothing is lost
    /// or doubled between the two.
    pub fn subscribe(
        &self,
        from_seq: Option<u64>,
        filter: &Filter,
    ) -> (Vec<Event>, u64, broadcast::Receiver<Published>) {
        let log = self.log.lock().expect("event log lock");
        let (history, missed) = match from_seq {
            Some(from) => log.since(from, filter),
            None => (Vec::new(), 0),
        };
        (history, missed, self.tx.subscribe())
    }

    /// The whole kept history (non-following `events` without `--since`).
    pub fn history(&self, filter: &Filter) -> Vec<Event> {
        self.log.lock().expect("event log lock").since(0, filter).0
    }
}

/// Records a failure in the VM's health, unless one is already recorded since it came up.
pub fn note_failure(status: &Mutex<VmStatus>, e: &Event) {
    if !e.kind.is_failure() {
        return;
    }
    let mut st = status.lock().expect("status lock");
    if st.failure.is_none() {
        st.failure = Some(FailureView {
            seq: e.seq,
            kind: e.kind,
            summary: e.summary(),
        });
    }
}

/// The event kind an urgent record of spec module `module` becomes (its layout's).
fn spec_kind(
    layouts: &dyn Fn(&str) -> Option<Arc<vesper_relay::layout::RecordLayout>>,
    module: &str,
) -> Option<EventKind> {
    let layout = layouts(module)?;
    let name = layout.kind.as_deref()?;
    match name.parse() {
        Ok(k) => Some(k),
        Err(e) => {
            tracing::warn!(module, "probe spec record: {e}; no event");
            None
        }
    }
}

/// Turns the typed failure records among `stored` (panic, watched exit, OOM) into events
/// about `guest`, and notes failures in its health.
pub fn publish_records(
    bus: &EventBus,
    status: &Mutex<VmStatus>,
    guest: &str,
    stored: Vec<Arc<vesper_api::RecordView>>,
    layouts: &dyn Fn(&str) -> Option<Arc<vesper_relay::layout::RecordLayout>>,
) {
    for r in stored {
        let kind = match &r.decoded {
            vesper_api::Decoded::Panic { .. } => EventKind::Panic,
            vesper_api::Decoded::Exit { .. } => EventKind::ServiceExit,
            vesper_api::Decoded::Oom { .. } => EventKind::Oom,
            vesper_api::Decoded::Probe { .. } if r.urgent => match spec_kind(layouts, &r.module) {
                Some(k) => k,
                None => continue,
            },
            _ => continue,
        };
        let mut payload = match &r.decoded {
            // A spec's fields sit at the top, as the typed records' do.
            vesper_api::Decoded::Probe { probe, fields } => {
                let mut p = serde_json::to_value(fields).unwrap_or_default();
                p["type"] = "probe".into();
                p["probe"] = probe.clone().into();
                p
            }
            d => serde_json::to_value(d).unwrap_or_default(),
        };
        payload["cpu"] = r.cpu.into();
        payload["record_seq"] = r.seq.into();
        payload["latency_ns"] = r.latency_ns.into();
        let source = Source::Probe {
            module: r.module.clone(),
            channel: r.channel.clone(),
        };
        let e = bus.publish(guest, kind, source, r.guest_time_host_ns, payload);
        note_failure(status, &e);
    }
}
