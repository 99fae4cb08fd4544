//! QMP commands vesperd sends to a VM's QEMU outside its guest task (pause, resume, the
//! run state), each on a fresh connection to the VM's QMP socket.

use std::path::Path;
use std::time::Duration;

/// QMP `cmd` on `socket`, waiting out a socket busy with another client (the guests
/// these are for are not being replaced meanwhile: a panicked guest's restart waits
/// for its dump).
pub(crate) fn qmp_execute(
    socket: &Path,
    cmd: &str,
) -> Result<serde_json::Value, vesper_qemu::QemuError> {
    vesper_qemu::Qmp::connect_waiting(socket, Duration::from_secs(5))?.execute(cmd, None)
}

/// The guest's run state per QMP (`running`, `paused`, `debug`, ...).
pub(crate) fn qmp_status(qmp: &Path) -> Option<String> {
    let v = qmp_execute(qmp, "query-status").ok()?;
    v["status"].as_str().map(str::to_string)
}
