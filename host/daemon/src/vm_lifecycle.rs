//! A VM's life: `vm start` (QEMU or the builtin VMM), `vm send` to its console, and
//! `vm stop`, which returns once the VM process is gone.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, watch};
use vesper_api::{ApiError, ErrorCode, Reply, Response, VmStatus};

use crate::daemon::{unknown_guest, valid_name, Shared};

/// Waits up to `wait_secs` for the frontend's hello: the VM's end, the guest refusing
/// its frontend (`frontend_check`: at once) or the timeout (with the guest's diagnosis)
/// is an error with the console's tail.
pub(crate) async fn wait_up(
    name: &str,
    wait_secs: u64,
    mut up_rx: watch::Receiver<Option<vesper_core::GuestInfo>>,
    mut exited_rx: watch::Receiver<bool>,
    log: Option<PathBuf>,
    console: &Path,
    status: &Arc<Mutex<VmStatus>>,
) -> Result<(), ApiError> {
    use crate::frontend_check::live;
    let start_failed = |m: String| ApiError::new(ErrorCode::VmStartFailed, format!("{name}: {m}"));
    let wait = async {
        tokio::select! {
            r = up_rx.wait_for(Option::is_some) => Ok(r.map(|_| true).unwrap_or(false)),
            _ = exited_rx.wait_for(|e| *e) => Ok(false),
            why = live::refused(console, status) => Err(why),
        }
    };
    match tokio::time::timeout(Duration::from_secs(wait_secs), wait).await {
        Ok(Ok(true)) => {}
        Ok(Err(why)) => return Err(live::refused_error(name, &why, console)),
        Ok(Ok(false)) => {
            let end = match &log {
                Some(log) => format!("QEMU exited during boot.\nqemu.log:\n{}", tail(log, 10)),
                None => format!(
                    "the VM ended during boot: {}",
                    status
                        .lock()
                        .expect("status lock")
                        .failure
                        .as_ref()
                        .map(|f| f.summary.clone())
                        .unwrap_or_else(|| "see the daemon log".into())
                ),
            };
            return Err(start_failed(format!(
                "{end}\nconsole tail:\n{}",
                tail(console, 15)
            )));
        }
        Err(_) => return Err(live::timed_out(name, wait_secs, console, status).await),
    }
    Ok(())
}

/// Types a line into a builtin VM's 8250 (blocking: it waits for the guest to read).
pub(crate) async fn send_builtin(
    name: &str,
    line: &str,
    input: vesper_builtin::ConsoleInput,
) -> Response {
    let bytes = format!("{line}\n").into_bytes();
    match tokio::task::spawn_blocking(move || input.send(&bytes)).await {
        Ok(Ok(())) => Ok(Reply::VmSent {
            name: name.to_string(),
        }),
        Ok(Err(e)) => Err(ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{name}: serial console: {e}"),
        )),
        Err(e) => Err(ApiError::new(ErrorCode::Internal, e.to_string())),
    }
}

pub(crate) async fn vm_send(daemon: &Shared, name: &str, line: &str) -> Response {
    if line.contains(['\n', '\r']) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            "send one line at a time (no newline in the text)",
        ));
    }
    let (builtin, console) = {
        let guests = daemon.guests.lock().expect("guests lock");
        let g = guests
            .get(name)
            .ok_or_else(|| unknown_guest(&guests, name))?;
        if *g.exited.borrow() {
            return Err(ApiError::new(
                ErrorCode::GuestNotReady,
                format!("{name}: the VM has exited"),
            ));
        }
        (g.builtin_console.clone(), g.console.clone())
    };
    if let Some(input) = builtin {
        return send_builtin(name, line, input).await;
    }
    let console = console.ok_or_else(|| {
        ApiError::new(
            ErrorCode::BadRequest,
            format!(
                "{name}: vesperd keeps no serial console of it (attach it with `--console SOCKET`)"
            ),
        )
    })?;
    console.send(line).await.map_err(|e| {
        ApiError::new(
            ErrorCode::GuestNotReady,
            format!("{name}: serial console: {e}"),
        )
    })?;
    Ok(Reply::VmSent {
        name: name.to_string(),
    })
}

pub(crate) fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Longest `vm stop` waits for a VM to end: its grace to quit, then the kill.
pub(crate) const STOP_WAIT: Duration = Duration::from_secs(15);

pub(crate) async fn vm_stop(daemon: &Shared, name: &str) -> Response {
    let stop = {
        let mut guests = daemon.guests.lock().expect("guests lock");
        match guests.get_mut(name) {
            Some(g) => g.stop.take(),
            None => return Err(unknown_guest(&guests, name)),
        }
    };
    let mut killed = false;
    if let Some(stop) = stop {
        let (ack, done) = oneshot::channel();
        if stop.send(ack).is_ok() {
            // The task answers once the VM process is gone (killed after its grace).
            match tokio::time::timeout(STOP_WAIT, done).await {
                Ok(Ok(outcome)) => killed = outcome.killed,
                // The task ended without answering: the VM was already gone.
                Ok(Err(_)) => {}
                Err(_) => {
                    return Err(ApiError::new(
                        ErrorCode::Timeout,
                        format!(
                            "{name}: the VM did not end within {} s of being told to stop and of being killed; see vesperd's log",
                            STOP_WAIT.as_secs()
                        ),
                    ))
                }
            }
        }
    }
    daemon.guests.lock().expect("guests lock").remove(name);
    crate::host_probes::unwatch(daemon, name);
    Ok(Reply::VmStopped {
        name: name.to_string(),
        killed,
    })
}

/// `vm fence` / `vm unfence` / `vm fenced`. Fencing writes the mark first, so a start racing with it
/// is refused, then stops the VM if it runs; the reply comes once it is gone.
pub(crate) async fn vm_fence(daemon: &Shared, name: &str, fenced: Option<bool>) -> Response {
    if !valid_name(name) {
        return Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("bad VM name {name:?}: use 1-32 letters, digits, - or _"),
        ));
    }
    let dir = vesper_api::run_dir::of(&daemon.config.run_dir, name);
    let mark = vesper_api::run_dir::fence_mark(&dir);
    let io = |what: &str, e: std::io::Error| {
        ApiError::new(
            ErrorCode::Internal,
            format!("{name}: cannot {what} {}: {e}", mark.display()),
        )
    };
    let Some(fenced) = fenced else {
        return Ok(Reply::VmFenced {
            name: name.to_string(),
            fenced: mark.exists(),
            stopped: false,
        });
    };
    if !fenced {
        match std::fs::remove_file(&mark) {
            Ok(()) => tracing::info!(guest = %name, "unfenced"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("remove", e)),
        }
        return Ok(Reply::VmFenced {
            name: name.to_string(),
            fenced: false,
            stopped: false,
        });
    }
    std::fs::create_dir_all(&dir).map_err(|e| io("create the directory of", e))?;
    std::fs::write(&mark, b"fenced\n").map_err(|e| io("write", e))?;
    tracing::warn!(guest = %name, "fenced: no VM of this name starts here until unfenced");
    let running = daemon
        .guests
        .lock()
        .expect("guests lock")
        .get(name)
        .is_some_and(|g| !*g.exited.borrow());
    if running {
        crate::virsh::destroy_for_fence(&dir).await;
        vm_stop(daemon, name).await?;
    }
    Ok(Reply::VmFenced {
        name: name.to_string(),
        fenced: true,
        stopped: running,
    })
}
