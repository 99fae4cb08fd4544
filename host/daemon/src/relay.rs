//! Per-guest relay history: what the guest task read from its channels, kept (bounded)
//! for `relay cat` and broadcast to followers.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::broadcast;
use vesper_api::{BufferStats, ChannelView, RecordView};
use vesper_relay::layout::RecordLayout;
use vesper_relay::{decode_with, ChannelSpec, ChannelStats, Record};
use vesper_shared_abi::RECORD_FLAG_URGENT;

/// Records kept per channel.
pub const HISTORY: usize = 65_536;
/// Records a follower may fall behind before it gets a gap.
const FOLLOW_BUFFER: usize = 4096;

struct ChannelLog {
    spec: Arc<ChannelSpec>,
    open: bool,
    records: VecDeque<Arc<RecordView>>,
    last: Vec<BufferStats>,
    error: Option<String>,
}

/// How the guest's clock maps onto the host's: `host_unix_ns = guest_ns - offset_ns`.
#[derive(Debug, Clone, Copy)]
pub struct ClockMap {
    /// Guest ktime minus host Unix time, ns.
    pub offset_ns: i128,
    /// Half the round trip of the exchange it came from, ns.
    pub error_ns: u64,
}

/// The relay history of one guest.
pub struct RelayStore {
    guest: String,
    clock: Option<ClockMap>,
    channels: Vec<ChannelLog>,
    /// Record layouts of probe-spec modules, by module name (from their modinfo).
    layouts: HashMap<String, Arc<RecordLayout>>,
    tx: broadcast::Sender<Arc<RecordView>>,
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

impl RelayStore {
    pub fn new(guest: &str) -> Self {
        Self {
            guest: guest.to_string(),
            clock: None,
            channels: Vec::new(),
            layouts: HashMap::new(),
            tx: broadcast::channel(FOLLOW_BUFFER).0,
        }
    }

    fn log(&mut self, spec: &Arc<ChannelSpec>) -> &mut ChannelLog {
        let i = match self
            .channels
            .iter()
            .position(|c| c.spec.module == spec.module && c.spec.name == spec.name)
        {
            Some(i) => i,
            None => {
                self.channels.push(ChannelLog {
                    spec: spec.clone(),
                    open: true,
                    records: VecDeque::new(),
                    last: Vec::new(),
                    error: None,
                });
                self.channels.len() - 1
            }
        };
        &mut self.channels[i]
    }

    /// The record layout of `module`'s records (`None`: it has none).
    pub fn set_layout(&mut self, module: &str, layout: Option<RecordLayout>) {
        match layout {
            Some(l) => self.layouts.insert(module.to_string(), Arc::new(l)),
            None => self.layouts.remove(module),
        };
    }

    /// The layout `module`'s records are decoded with.
    pub fn layout(&self, module: &str) -> Option<Arc<RecordLayout>> {
        self.layouts.get(module).cloned()
    }

    /// Sets (or, on a guest restart, forgets) the clock mapping.
    pub fn set_clock(&mut self, clock: Option<ClockMap>) {
        self.clock = clock;
    }

    /// A channel opened (or reopened: a module reloaded keeps its history).
    pub fn opened(&mut self, spec: Arc<ChannelSpec>) {
        let log = self.log(&spec);
        log.spec = spec;
        log.open = true;
        log.error = None;
    }

    /// Records read from `spec`; returns them as stored.
    pub fn push(&mut self, spec: &Arc<ChannelSpec>, records: Vec<Record>) -> Vec<Arc<RecordView>> {
        let guest = self.guest.clone();
        let host_time_ns = now_ns();
        let tx = self.tx.clone();
        let clock = self.clock;
        let layout = self.layout(&spec.module);
        let log = self.log(spec);
        let mut stored = Vec::with_capacity(records.len());
        for r in records {
            let text = std::str::from_utf8(&r.payload)
                .ok()
                .filter(|_| r.rtype == vesper_shared_abi::RECORD_RAW)
                .map(str::to_string);
            let view = Arc::new(RecordView {
                guest: guest.clone(),
                module: spec.module.clone(),
                channel: spec.name.clone(),
                cpu: r.cpu,
                seq: r.seq,
                rtype: r.rtype,
                urgent: r.flags & RECORD_FLAG_URGENT != 0,
                guest_time_ns: r.timestamp_ns,
                host_time_ns,
                guest_time_host_ns: clock
                    .map(|c| (r.timestamp_ns as i128 - c.offset_ns).max(0) as u64),
                latency_ns: clock.map(|c| {
                    (host_time_ns as i128 - (r.timestamp_ns as i128 - c.offset_ns)) as i64
                }),
                clock_error_ns: clock.map(|c| c.error_ns),
                decoded: decode_with(r.rtype, &r.payload, layout.as_deref()),
                text,
            });
            if log.records.len() == HISTORY {
                log.records.pop_front();
            }
            log.records.push_back(view.clone());
            // No follower is fine.
            let _ = tx.send(view.clone());
            stored.push(view);
        }
        stored
    }

    /// Counters read while the channel was open.
    pub fn update_stats(&mut self, stats: Vec<ChannelStats>) {
        for s in stats {
            let spec = Arc::new(s.spec);
            self.log(&spec).last = s.cpus;
        }
    }

    /// A channel closed (`error`: why, when not cleanly).
    pub fn closed(&mut self, spec: &Arc<ChannelSpec>, error: Option<String>) {
        let log = self.log(spec);
        log.open = false;
        log.error = error;
    }

    /// The history matching `module`/`channel`, and a receiver for what follows, taken
    /// together so a follower sees every record exactly once.
    pub fn snapshot(
        &self,
        module: &str,
        channel: Option<&str>,
    ) -> (Vec<Arc<RecordView>>, broadcast::Receiver<Arc<RecordView>>) {
        let mut out: Vec<Arc<RecordView>> = self
            .channels
            .iter()
            .filter(|c| c.spec.module == module && channel.is_none_or(|n| c.spec.name == n))
            .flat_map(|c| c.records.iter().cloned())
            .collect();
        out.sort_by_key(|r| (r.host_time_ns, r.cpu, r.seq));
        (out, self.tx.subscribe())
    }

    /// True when `module` has (or had) a channel named `channel` (any, if `None`).
    pub fn knows(&self, module: &str, channel: Option<&str>) -> bool {
        self.channels
            .iter()
            .any(|c| c.spec.module == module && channel.is_none_or(|n| c.spec.name == n))
    }

    /// Names of every channel, for error messages.
    pub fn names(&self) -> Vec<String> {
        self.channels
            .iter()
            .map(|c| format!("{}/{}", c.spec.module, c.spec.name))
            .collect()
    }

    /// Counters of every channel.
    pub fn views(&self) -> Vec<ChannelView> {
        self.channels
            .iter()
            .map(|c| ChannelView {
                module: c.spec.module.clone(),
                channel: c.spec.name.clone(),
                open: c.open,
                overwrite: c.spec.overwrite,
                subbuf_size: c.spec.subbuf_size,
                n_subbufs: c.spec.n_subbufs,
                cpus: c.last.clone(),
                stored: c.records.len(),
                error: c.error.clone(),
            })
            .collect()
    }
}
