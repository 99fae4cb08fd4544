//! The kick that pulls a vCPU thread out of `KVM_RUN`: a real-time signal with an empty
//! handler installed once per process without `SA_RESTART`, so delivery makes `KVM_RUN`
//! return `EINTR`. The run loop, the stop path and the debugger's park all use it.

use std::sync::OnceLock;

use crate::error::{HypervisorError, Result};

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int) {
    // Nothing: delivery alone makes KVM_RUN return EINTR.
}

/// Installs the (empty) kick handler once per process, without `SA_RESTART`.
pub(crate) fn install_kick_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags).
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_kick as *const () as libc::sighandler_t;
        // SAFETY: `act.sa_mask` is a valid sigset_t owned by us.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        // SAFETY: installs a handler that does nothing (async-signal-safe) for a real-time
        // signal this crate owns; the old action is not needed.
        let rc = unsafe { libc::sigaction(kick_signal(), &act, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    result.map_err(HypervisorError::SignalHandler)
}

/// Sends the kick signal to a thread that has not been joined yet.
pub(crate) fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller keeps the thread's JoinHandle alive (not joined, not detached), so
    // `thread` is a valid pthread_t; the signal's handler is installed and does nothing.
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc != 0 {
        tracing::debug!(rc, "pthread_kill for a vCPU kick failed");
    }
}
