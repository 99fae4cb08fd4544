use std::time::Duration;

use thiserror::Error;
use vesper_shmem::ShmemError;

/// Name and description of an errno value ("ENODEV (No such device)").
pub fn errno_name(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno.abs());
    if e == nix::errno::Errno::UnknownErrno {
        errno_symbol(errno)
    } else {
        format!("{e:?} ({})", e.desc())
    }
}

/// The errno's symbol alone ("ENODEV"), or "errno N" when unknown.
pub fn errno_symbol(errno: i32) -> String {
    let e = nix::errno::Errno::from_raw(errno.abs());
    if e == nix::errno::Errno::UnknownErrno {
        format!("errno {}", errno.abs())
    } else {
        format!("{e:?}")
    }
}

/// Kernel-log lines shown in an error message (the full tail is in `vesper dmesg`).
const LOG_LINES_SHOWN: usize = 12;

fn log_suffix(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return String::new();
    }
    let shown = &lines[lines.len().saturating_sub(LOG_LINES_SHOWN)..];
    format!(
        "\nguest kernel log (last {} lines):\n{}",
        shown.len(),
        shown.join("\n")
    )
}

/// Why an operator command failed.
#[derive(Debug, Error)]
pub enum CommandError {
    /// Load of a name that is already loaded.
    #[error("module {name} is already loaded in the guest; unload it first (`vesper rmmod GUEST {name}`)")]
    AlreadyLoaded {
        /// Module name.
        name: String,
    },
    /// Unload of a name that is not loaded.
    #[error("module {name} is not loaded in the guest (`vesper lsmod GUEST` lists what is)")]
    NotLoaded {
        /// Module name.
        name: String,
    },
    /// Unload of a module still in use.
    #[error("module {name} is in use in the guest (refcount > 0); unload its users first or pass --force")]
    InUse {
        /// Module name.
        name: String,
    },
    /// The module's init function (or the kernel's loader checks) failed.
    #[error("the guest kernel refused to load {name}: {}{}", errno_name(*errno), log_suffix(log))]
    InitFailed {
        /// Module name.
        name: String,
        /// Negative errno from init_module.
        errno: i32,
        /// Guest kernel log tail.
        log: String,
    },
    /// Any other failure reported by the guest.
    #[error("guest failed {op} at stage {stage}: {}{}", errno_name(*errno), log_suffix(log))]
    GuestFailed {
        /// Operation.
        op: &'static str,
        /// Stage name.
        stage: &'static str,
        /// Negative errno.
        errno: i32,
        /// Guest kernel log tail.
        log: String,
    },
    /// The guest started the command but stopped answering.
    #[error("guest stopped answering during {stage} (no reply for {after:?}); the command was abandoned and nothing is left half-loaded")]
    Timeout {
        /// What was under way.
        stage: &'static str,
        /// How long the host waited.
        after: Duration,
    },
    /// The module's init was still running in the guest when the host stopped waiting.
    #[error("init of {name} still running in the guest after {}s; the module will be live or gone when it returns — see `vesper lsmod` (a module_loaded or module_failed event will say which)", after.as_secs())]
    InitStillRunning {
        /// Module name.
        name: String,
        /// How long the host waited for init.
        after: Duration,
    },
    /// The guest never picked the command up.
    #[error("guest did not pick up the command within {after:?}: its Vesper frontend is not answering (guest hung, paused or still booting?)")]
    NotResponding {
        /// How long the command waited.
        after: Duration,
    },
    /// The guest rebooted (new generation) while the command was under way.
    #[error("guest restarted while the command was under way; run it again")]
    GuestRestarted,
    /// The guest violated the protocol while serving the command.
    #[error("guest misbehaved: {0}")]
    Misbehaving(#[source] ShmemError),
    /// The guest returned data that does not parse.
    #[error("guest returned malformed data: {0}")]
    BadGuestData(String),
    /// The session ended (daemon shutdown, VM stopped).
    #[error("the guest session ended before the command completed")]
    SessionClosed,
}
