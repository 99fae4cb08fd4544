//! The daemon's state (its settings, its VMs, the event bus) and the helpers every
//! handler uses to reach a VM: the unknown-guest error, running a command in a guest.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;
use tokio::sync::oneshot;
use vesper_api::{ApiError, ErrorCode, VmStatus};
use vesper_core::{Command, CommandError, Reply as GuestReply};

use crate::events::EventBus;

use crate::guest::{GuestHandle, GuestMsg};

/// Daemon settings.
#[derive(Debug, Clone)]
pub struct DaemonConfig {
    pub run_dir: PathBuf,
    pub socket: PathBuf,
    pub kit_dir: Option<PathBuf>,
    pub step_timeout: Duration,
    pub dump_on_panic: bool,
    pub max_image_size: u64,
    pub allow_uids: Vec<u32>,
    pub allow_gids: Vec<u32>,
    pub socket_mode: u32,
    /// The alert socket and the group that may use it (`--alert-socket`).
    pub alert_socket: Option<(PathBuf, u32)>,
    pub event_buffer: usize,
    pub policy: Option<vesper_failover::Policy>,
    pub simulate_guests: usize,
    pub simulate_rate: f64,
    pub host_probes: crate::host_probe_state::HostProbeConfig,
}

/// Why the daemon could not run.
#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("cannot create run directory {0}")]
    RunDir(PathBuf, #[source] std::io::Error),
    #[error("another vesperd is already serving {0}")]
    AlreadyRunning(PathBuf),
    #[error("cannot listen on {0}")]
    Listen(PathBuf, #[source] std::io::Error),
}

pub(crate) struct Daemon {
    pub(crate) config: DaemonConfig,
    pub(crate) guests: Mutex<HashMap<String, GuestHandle>>,
    pub(crate) bus: Arc<EventBus>,
    /// Guest kernels opened from their RAM (`vesper debug`).
    pub(crate) kernels: crate::debug_state::Kernels,
    /// DWARF files `debug read --vmlinux` opened and indexed, by path.
    pub(crate) dwarf: vesper_debug::dwarf::DwarfFiles,
    /// vmcores being written of guests that panicked (`--dump-on-panic`).
    pub(crate) panic_dumps: crate::debug_state::PanicDumps,
    /// Probe groups applied per guest (`vesper group`).
    pub(crate) groups: crate::group_state::Groups,
    /// eBPF probes in the host kernel on the VMs' vCPU threads (`vesper host stat`).
    pub(crate) host_probes: crate::host_probe_state::HostProbeSlot,
}

impl Daemon {
    /// A guest's status, or the unknown-guest error.
    pub(crate) fn guest_status(&self, name: &str) -> Result<VmStatus, ApiError> {
        let guests = self.guests.lock().expect("guests lock");
        let g = guests
            .get(name)
            .ok_or_else(|| unknown_guest(&guests, name))?;
        let status = g.status.lock().expect("status lock").clone();
        Ok(status)
    }

    /// The guests running now and their memory, for the failover engine's capacity checks.
    pub(crate) fn running(&self) -> Vec<(String, u32)> {
        let guests = self.guests.lock().expect("guests lock");
        guests
            .values()
            .map(|g| g.status.lock().expect("status lock").clone())
            .filter(|s| s.state != "exited")
            .map(|s| (s.name, s.memory_mib))
            .collect()
    }
}

pub(crate) type Shared = Arc<Daemon>;

pub(crate) fn unexpected(r: GuestReply) -> ApiError {
    ApiError::new(ErrorCode::Internal, format!("unexpected guest reply {r:?}"))
}

/// The error for a guest name not in `guests` (the caller holds the lock).
pub(crate) fn unknown_guest(guests: &HashMap<String, GuestHandle>, name: &str) -> ApiError {
    let mut known: Vec<&str> = guests.keys().map(String::as_str).collect();
    known.sort();
    let hint = if known.is_empty() {
        "no VMs are running (`vesper vm start NAME`)".to_string()
    } else {
        format!("running: {}", known.join(", "))
    };
    ApiError::new(
        ErrorCode::UnknownGuest,
        format!("no guest named {name:?}; {hint}"),
    )
}

pub(crate) fn command_error(guest: &str, e: CommandError) -> ApiError {
    let code = match &e {
        CommandError::AlreadyLoaded { .. } => ErrorCode::AlreadyLoaded,
        CommandError::NotLoaded { .. } => ErrorCode::NotLoaded,
        CommandError::InUse { .. } => ErrorCode::InUse,
        CommandError::InitFailed { .. } => ErrorCode::InitFailed,
        CommandError::GuestFailed { .. } | CommandError::GuestRestarted => ErrorCode::GuestFailed,
        CommandError::Timeout { .. } | CommandError::NotResponding { .. } => ErrorCode::Timeout,
        CommandError::InitStillRunning { .. } => ErrorCode::InitStillRunning,
        CommandError::Misbehaving(_) | CommandError::BadGuestData(_) => ErrorCode::GuestMisbehaving,
        CommandError::SessionClosed => ErrorCode::GuestNotReady,
    };
    ApiError::new(code, format!("{guest}: {e}"))
}

/// Sends `cmd` to `guest`'s task and waits for the result.
pub(crate) async fn run_command(
    daemon: &Shared,
    guest: &str,
    cmd: Command,
) -> Result<GuestReply, ApiError> {
    let tx = {
        let guests = daemon.guests.lock().expect("guests lock");
        let g = guests
            .get(guest)
            .ok_or_else(|| unknown_guest(&guests, guest))?;
        if *g.exited.borrow() {
            return Err(ApiError::new(
                ErrorCode::GuestNotReady,
                format!("{guest}: the VM has exited (`vesper vm start {guest}` again)"),
            ));
        }
        if g.info().is_none() {
            return Err(ApiError::new(
                ErrorCode::GuestNotReady,
                format!("{guest}: the Vesper frontend has not connected yet (still booting, or vesper_front not loaded in the guest)"),
            ));
        }
        g.tx.clone()
    };
    let (reply, rx) = oneshot::channel();
    tx.send(GuestMsg::Run { cmd, reply }).await.map_err(|_| {
        ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{guest}: the guest task has ended"),
        )
    })?;
    match rx.await {
        Ok(Ok(r)) => Ok(r),
        Ok(Err(e)) => Err(command_error(guest, e)),
        Err(_) => Err(ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{guest}: the guest task ended mid-command"),
        )),
    }
}

pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 32
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vm_names_are_restricted() {
        assert!(valid_name("vm-1_a"));
        assert!(!valid_name("../etc"));
        assert!(!valid_name(""));
    }
}
