//! `vesper host stat` and which threads are each VM's vCPUs, for the host probes
//! (`host_probe_state.rs`): their stalls become `vcpu_stall` events, their figures
//! `host stat`.

use std::sync::Arc;

use vesper_api::{ApiError, ErrorCode, HostStat, HostVcpu, Reply, Response};
use vesper_hostprobe::{GuestFigures, VcpuSource};

use crate::daemon::{unknown_guest, Shared};
use crate::host_probe_state::HostProbeSlot;

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
