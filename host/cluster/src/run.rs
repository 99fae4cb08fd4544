//! The bridge's loop: follow vesperd's failure events, tell Pacemaker of each new
//! incident at once (`crm_resource --fail`), record each report as a `decision` event.
//! It outlives vesperd restarts and starts before vesperd does: it reconnects, and
//! the stream's replay after a reconnect is sorted out by [`BridgeState`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::json;
use vesper_api::{call, call_stream, EventKind, Reply, Request};
use vesper_events::Event;

use crate::bridge::{BridgeState, Incident, Verdict};
use crate::cib::Resources;
use crate::pacemaker::ClusterManager;
use crate::ClusterError;

/// How the bridge runs.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// vesperd's API socket.
    pub socket: PathBuf,
    /// This node's name; asked of the cluster (`crm_node -n`) when not given.
    pub node: Option<String>,
    /// Longest wait between reconnection attempts.
    pub max_backoff: Duration,
    /// Attempts at `crm_resource --fail` per incident.
    pub attempts: u32,
}

/// What the bridge did about one incident (the `decision` event's payload).
fn decision(
    incident: &Incident,
    node: &str,
    resource: Option<&str>,
    outcome: &Result<f64, ClusterError>,
) -> serde_json::Value {
    let what = format!("{}: {}", incident.guest, incident.summary);
    let reason = match (resource, outcome) {
        (None, _) => format!("{what}; not a cluster resource here, left to vesperd"),
        (Some(r), Ok(ms)) => {
            format!("{what}; told Pacemaker {r} failed on {node} (crm_resource --fail, {ms:.0} ms)")
        }
        (Some(r), Err(e)) => format!("{what}; could not tell Pacemaker {r} failed: {e}"),
    };
    json!({
        "guest": incident.guest,
        "action": if resource.is_some() { "fail_resource" } else { "none" },
        "resource": resource,
        "node": node,
        "event_seq": incident.seq,
        "event_kind": incident.kind,
        "ok": resource.is_some() && outcome.is_ok(),
        "error": outcome.as_ref().err().map(ToString::to_string),
        "reported_after_ms": outcome.as_ref().ok().map(|_| ms_since(incident.time_ns)),
        "reason": reason,
    })
}

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

fn ms_since(t_ns: u64) -> f64 {
    now_ns().saturating_sub(t_ns) as f64 / 1e6
}

/// Runs the bridge until `keep_going` says stop (checked between connections and
/// events). Returns only on a configuration error, or when told to stop.
pub fn run_bridge(
    config: &BridgeConfig,
    cluster: &dyn ClusterManager,
    keep_going: &dyn Fn() -> bool,
) -> Result<(), ClusterError> {
    let node = match &config.node {
        Some(n) => n.clone(),
        None => cluster.local_node()?,
    };
    let mut state = BridgeState::new(now_ns());
    let mut resources: Option<Resources> = None;
    let mut backoff = Duration::from_millis(50);
    let mut outage: Option<Instant> = None;
    tracing::info!(%node, socket = %config.socket.display(), "bridge: following vesperd's failure events");
    while keep_going() {
        let req = Request::Subscribe {
            filter: BridgeState::filter(),
            from_seq: Some(1),
            follow: true,
        };
        let mut connected = false;
        let out = call_stream(&config.socket, &req, None, |r| {
            if !connected {
                connected = true;
                if let Some(since) = outage.take() {
                    tracing::info!(
                        "bridge: vesperd is back after {:.1} s",
                        since.elapsed().as_secs_f64()
                    );
                }
            }
            match r {
                Ok(Reply::Event(e)) => {
                    handle(config, cluster, &node, &mut state, &mut resources, &e);
                }
                Ok(Reply::Gap { missed }) => {
                    tracing::warn!(missed, "bridge: vesperd's history had dropped events; the monitor covers what was missed");
                }
                Ok(_) => {}
                Err(e) => tracing::warn!("bridge: vesperd refused the subscription: {}", e.message),
            }
            keep_going()
        });
        if connected {
            backoff = Duration::from_millis(50);
        }
        if !keep_going() {
            break;
        }
        if outage.is_none() {
            let why = match out {
                Err(e) => e.to_string(),
                Ok(()) => "it closed the event stream".into(),
            };
            tracing::warn!("bridge: lost vesperd ({why}); retrying until it is back");
            outage = Some(Instant::now());
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(config.max_backoff);
    }
    Ok(())
}

fn handle(
    config: &BridgeConfig,
    cluster: &dyn ClusterManager,
    node: &str,
    state: &mut BridgeState,
    resources: &mut Option<Resources>,
    e: &Event,
) {
    let incident = match state.on_event(e) {
        Verdict::Report(i) => i,
        Verdict::AlreadyReported(first) => {
            tracing::info!(guest = %e.guest, seq = e.seq, first, "bridge: {} belongs to an incident already reported", e.kind);
            return;
        }
        Verdict::Ignore => return,
    };
    // The CIB is read again when a guest is not in the copy: resources come and go.
    let known = resources
        .as_ref()
        .and_then(|r| r.resource_of(&incident.guest))
        .is_some();
    if !known {
        match cluster.resources() {
            Ok(r) => *resources = Some(r),
            Err(err) => tracing::warn!("bridge: cannot read the cluster's resources: {err}"),
        }
    }
    let resource = resources
        .as_ref()
        .and_then(|r| r.resource_of(&incident.guest))
        .map(str::to_string);
    let outcome = match &resource {
        None => Err(ClusterError::Cib(format!(
            "no ocf:vesper:vesper resource has guest={}",
            incident.guest
        ))),
        Some(r) => report(cluster, r, node, config.attempts.max(1)),
    };
    let payload = decision(&incident, node, resource.as_deref(), &outcome);
    let reason = payload["reason"].as_str().unwrap_or_default().to_string();
    match &outcome {
        Ok(_) => tracing::info!(seq = incident.seq, "bridge: {reason}"),
        Err(_) => tracing::warn!(seq = incident.seq, "bridge: {reason}"),
    }
    if let Err(err) = publish(
        &config.socket,
        &incident.guest,
        EventKind::Decision,
        "bridge",
        node,
        payload,
    ) {
        tracing::warn!("bridge: could not record the decision in vesperd: {err}");
    }
}

/// `crm_resource --fail`, retried a few times (a controller busy with an election
/// answers a moment later); returns how long it took, in ms.
fn report(
    cluster: &dyn ClusterManager,
    resource: &str,
    node: &str,
    attempts: u32,
) -> Result<f64, ClusterError> {
    let started = Instant::now();
    let mut last = None;
    for attempt in 0..attempts {
        if attempt > 0 {
            std::thread::sleep(Duration::from_millis(200 << attempt.min(4)));
        }
        match cluster.fail_resource(resource, node) {
            Ok(()) => return Ok(started.elapsed().as_secs_f64() * 1e3),
            Err(e) => {
                tracing::warn!(attempt, "bridge: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| ClusterError::Daemon("no attempt made".into())))
}

/// Adds an event to vesperd's stream (`Publish`); returns its sequence number.
pub fn publish(
    socket: &Path,
    guest: &str,
    kind: EventKind,
    origin: &str,
    node: &str,
    payload: serde_json::Value,
) -> Result<u64, ClusterError> {
    let req = Request::Publish {
        guest: guest.to_string(),
        kind,
        origin: origin.to_string(),
        node: node.to_string(),
        payload,
    };
    match call(socket, &req, Duration::from_secs(10)) {
        Ok(Ok(Reply::Published { seq })) => Ok(seq),
        Ok(Ok(other)) => Err(ClusterError::Daemon(format!("unexpected reply {other:?}"))),
        Ok(Err(e)) => Err(ClusterError::Daemon(e.message)),
        Err(e) => Err(ClusterError::Daemon(e.to_string())),
    }
}
