//! The host probes' state in the daemon (`vesper-hostprobe`): their settings, and the
//! probes once loaded or why there are none. Started once; where BPF is not allowed
//! vesperd says so once and runs on. (`host_probes.rs` serves them.)

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vesper_events::{EventKind, Source};
use vesper_hostprobe::{Config, HostProbes};

use crate::events::{now_ns, EventBus};

/// Host-probe settings (`vesperd --stall-threshold-ms`, `--no-host-probes`,
/// `--host-probe-object`).
#[derive(Debug, Clone)]
pub struct HostProbeConfig {
    pub enabled: bool,
    pub stall_threshold: Duration,
    pub object: Option<PathBuf>,
}

/// The probes, or why there are none.
pub(crate) enum HostProbeSlot {
    Running(HostProbes),
    Off(String),
}

/// Loads the probes; on failure logs one warning and keeps the reason for `host stat`.
pub(crate) fn start(config: &HostProbeConfig, bus: Arc<EventBus>) -> HostProbeSlot {
    if !config.enabled {
        return HostProbeSlot::Off("host probes are off (vesperd --no-host-probes)".into());
    }
    let mut pc = Config::with_threshold(config.stall_threshold);
    if let Some(path) = &config.object {
        match std::fs::read(path) {
            Ok(bytes) => pc.object = Some(bytes),
            Err(e) => {
                let why = format!("cannot read --host-probe-object {}: {e}", path.display());
                tracing::warn!("host probes off: {why}");
                return HostProbeSlot::Off(why);
            }
        }
    }
    let on_stall = Box::new(move |s: vesper_hostprobe::Stall| {
        let payload = json!({
            "vcpu": s.vcpu,
            "tid": s.tid,
            "state": s.state.name(),
            "stalled_ms": s.stalled_ms,
            "threshold_ms": s.threshold_ms,
        });
        let began = now_ns().saturating_sub(s.stalled_ms * 1_000_000);
        bus.publish(
            &s.guest,
            EventKind::VcpuStall,
            Source::HostProbe,
            Some(began),
            payload,
        );
    });
    match HostProbes::start(pc, on_stall) {
        Ok(p) => {
            tracing::info!(attached = ?p.attached(), missing = ?p.missing(),
                threshold_ms = config.stall_threshold.as_millis() as u64, "host probes loaded");
            HostProbeSlot::Running(p)
        }
        Err(e) => {
            let why = report(&e);
            tracing::warn!("host probes off, vesperd runs on without them: {why}");
            HostProbeSlot::Off(why)
        }
    }
}

/// An error and its causes on one line.
fn report(e: &dyn std::error::Error) -> String {
    let mut msg = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        let s_text = s.to_string();
        if !msg.contains(&s_text) {
            msg.push_str(&format!(": {s_text}"));
        }
        src = s.source();
    }
    msg
}
