//! vesperd's host-kernel probes (`vesper-hostprobe`): started once, told which threads
//! are each VM's vCPUs, their stalls published as `vcpu_stall` events, their figures
//! served as `host stat`. Where BPF is not allowed vesperd says so once and runs on.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use vesper_api::{ApiError, ErrorCode, HostStat, HostVcpu, Reply, Response};
use vesper_events::{EventKind, Source};
use vesper_hostprobe::{Config, GuestFigures, HostProbes, VcpuSource};

use crate::daemon::{unknown_guest, Shared};
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

/// Watches a QEMU VM's vCPU threads.
pub(crate) fn watch_qemu(daemon: &Shared, guest: &str, pid: u32) {
    if let HostProbeSlot::Running(p) = &daemon.host_probes {
        p.watch(guest, VcpuSource::Qemu { pid });
    }
}

/// Watches a builtin VM's vCPU threads (threads of vesperd itself).
pub(crate) fn watch_builtin(daemon: &Shared, guest: &str, threads: vesper_builtin::VcpuThreads) {
    if let HostProbeSlot::Running(p) = &daemon.host_probes {
        p.watch(guest, VcpuSource::Listed(Arc::new(move || threads.list())));
    }
}

/// Stops watching a guest.
pub(crate) fn unwatch(daemon: &Shared, guest: &str) {
    if let HostProbeSlot::Running(p) = &daemon.host_probes {
        p.unwatch(guest);
    }
}

/// `vesper host stat GUEST`.
pub(crate) fn stat(daemon: &Shared, guest: &str) -> Response {
    {
        let guests = daemon.guests.lock().expect("guests lock");
        if !guests.contains_key(guest) {
            return Err(unknown_guest(&guests, guest));
        }
    }
    let threshold_ms = daemon.config.host_probes.stall_threshold.as_millis() as u64;
    let off = |message: String| HostStat {
        guest: guest.to_string(),
        available: false,
        message: Some(message),
        tracepoints: Vec::new(),
        watched_ms: 0,
        threshold_ms,
        stalls: 0,
        vcpus: Vec::new(),
    };
    let stat = match &daemon.host_probes {
        HostProbeSlot::Off(why) => off(why.clone()),
        HostProbeSlot::Running(p) => match p.figures(guest) {
            None => {
                return Err(ApiError::new(
                    ErrorCode::GuestNotReady,
                    format!("{guest}: host probes do not watch it (it was adopted before host probes started, or has no vCPU threads yet)"),
                ))
            }
            Some(f) => {
                let mut s = convert(f, p.attached().to_vec());
                if !p.missing().is_empty() {
                    s.message = Some(format!(
                        "this host kernel lacks {}: no exit counts from it",
                        p.missing().join(", ")
                    ));
                }
                s
            }
        },
    };
    Ok(Reply::HostStat(stat))
}

fn convert(f: GuestFigures, tracepoints: Vec<String>) -> HostStat {
    HostStat {
        guest: f.guest,
        available: true,
        message: None,
        tracepoints,
        watched_ms: f.watched_ms,
        threshold_ms: f.threshold_ms,
        stalls: f.stalls,
        vcpus: f
            .vcpus
            .into_iter()
            .map(|v| HostVcpu {
                index: v.index,
                tid: v.tid,
                state: v.state.name().to_string(),
                exits: v.exits,
                entries: v.entries,
                vmm_exits: v.vmm_exits,
                kvm_runs: v.kvm_runs,
                exit_rate: v.exit_rate,
                steal_ms: v.steal_ms,
                on_cpu_ms: v.on_cpu_ms,
                stalled: v.stalled,
                exit_reasons: v
                    .exit_reasons
                    .into_iter()
                    .map(|r| (r.reason, r.count))
                    .collect(),
            })
            .collect(),
    }
}
