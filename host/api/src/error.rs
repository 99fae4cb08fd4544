//! The API's errors: a code per kind of failure, its exit code for the CLI, and the
//! message that says what to do.

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// What kind of failure, for scripts and exit codes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request does not parse or is invalid.
    BadRequest,
    /// No guest by that name.
    UnknownGuest,
    /// A guest by that name exists already.
    GuestExists,
    /// The guest has no frontend connected (yet).
    GuestNotReady,
    /// The module image was refused on the host.
    BadModule,
    /// Already loaded.
    AlreadyLoaded,
    /// Not loaded.
    NotLoaded,
    /// In use.
    InUse,
    /// Its init failed in the guest.
    InitFailed,
    /// Any other guest-side failure.
    GuestFailed,
    /// The guest stopped answering.
    Timeout,
    /// The module's init was still running in the guest when the wait for it ended:
    /// the load's outcome is not known yet.
    InitStillRunning,
    /// The guest broke the protocol.
    GuestMisbehaving,
    /// The VM could not be started.
    VmStartFailed,
    /// A VM Vesper did not start could not be attached (its QMP socket, its machine,
    /// its libvirt domain): nothing of the attempt is left behind.
    AttachFailed,
    /// A daemon-side failure.
    Internal,
    /// The caller's uid/gid is not allowed to use the daemon.
    PermissionDenied,
    /// The guest is fenced on this host (`vm fence`): it may not start here until
    /// unfenced.
    Fenced,
}

/// Exit code of the CLI for a timeout: the guest stopped answering, a VM did not stop in
/// time, or vesperd did not reply within `--timeout` (62 is ETIME, "timer expired").
pub const TIMEOUT_EXIT_CODE: i32 = 62;

impl ErrorCode {
    /// Exit code for the CLI (sysexits.h where one fits).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadModule => 65, // EX_DATAERR
            ErrorCode::UnknownGuest => 68,                      // EX_NOHOST
            ErrorCode::GuestNotReady => 75,                     // EX_TEMPFAIL
            ErrorCode::Timeout => TIMEOUT_EXIT_CODE,
            ErrorCode::VmStartFailed | ErrorCode::AttachFailed => 71, // EX_OSERR
            ErrorCode::Internal => 70,                                // EX_SOFTWARE
            ErrorCode::PermissionDenied => 77,                        // EX_NOPERM
            ErrorCode::GuestExists => 73,                             // EX_CANTCREAT
            // Not a failure yet, not a success: as timeout(1) says "still running".
            ErrorCode::InitStillRunning => 124,
            ErrorCode::AlreadyLoaded
            | ErrorCode::NotLoaded
            | ErrorCode::InUse
            | ErrorCode::InitFailed
            | ErrorCode::GuestFailed
            | ErrorCode::Fenced
            | ErrorCode::GuestMisbehaving => 1,
        }
    }
}

/// A failure reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ApiError {
    /// Kind.
    pub code: ErrorCode,
    /// Human message: what is wrong and what to do.
    pub message: String,
    /// Structured facts for scripts, when the failure has more than a message (a
    /// group's failed member and what was rolled back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<serde_json::Value>,
}

impl ApiError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            detail: None,
        }
    }

    /// The error with structured facts attached.
    pub fn with_detail(mut self, detail: serde_json::Value) -> Self {
        self.detail = Some(detail);
        self
    }
}
