//! Events from a cluster manager: `Publish` requests (the `vesper cluster` bridge's
//! decisions, Pacemaker's alerts), and the alert socket — a second, narrow socket that
//! Pacemaker's alert agents (run as `hacluster`, not root) may reach, which takes
//! nothing but alerts.

use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use vesper_api::{ApiError, ErrorCode, Reply, Request, Response, WireResponse};
use vesper_events::{EventKind, Source};

use crate::daemon::{valid_name, DaemonError, Shared};

/// Largest alert line: Pacemaker's variables, each cut to 512 bytes by the sender.
const MAX_ALERT_BYTES: u64 = 64 * 1024;

/// Adds a cluster manager's event to the stream, after checking it is one.
pub(crate) fn publish(
    daemon: &Shared,
    guest: &str,
    kind: EventKind,
    origin: &str,
    node: &str,
    payload: serde_json::Value,
) -> Response {
    let bad = |why: String| Err(ApiError::new(ErrorCode::BadRequest, why));
    if !matches!(kind, EventKind::Decision | EventKind::Cluster) {
        return bad(format!(
            "publish: kind {kind} is vesperd's own; a cluster manager publishes decision or cluster"
        ));
    }
    if !matches!(origin, "bridge" | "alert") {
        return bad(format!(
            "publish: origin {origin:?} is neither bridge nor alert"
        ));
    }
    if !guest.is_empty() && !valid_name(guest) {
        return bad(format!("publish: {guest:?} is not a VM name"));
    }
    if node.is_empty() || node.len() > 256 || node.chars().any(char::is_control) {
        return bad("publish: node must be a cluster node's name".into());
    }
    if !payload.is_object() {
        return bad("publish: payload must be a JSON object".into());
    }
    let source = Source::Cluster {
        origin: origin.to_string(),
        node: node.to_string(),
    };
    let e = daemon.bus.publish(guest, kind, source, None, payload);
    tracing::info!(seq = e.seq, %guest, %origin, %node, "cluster event: {kind}");
    Ok(Reply::Published { seq: e.seq })
}

/// Binds the alert socket: group `gid` may connect (0660), nobody else.
pub(crate) fn bind_alert_socket(path: &Path, gid: u32) -> Result<UnixListener, DaemonError> {
    let listen = |e: std::io::Error| DaemonError::Listen(path.to_path_buf(), e);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(listen)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(listen(e)),
    }
    let listener = UnixListener::bind(path).map_err(listen)?;
    nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
        .map_err(|e| listen(e.into()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660)).map_err(listen)?;
    tracing::info!(socket = %path.display(), gid, "alert socket listening (cluster alerts only)");
    Ok(listener)
}

/// Serves the alert socket: one alert per connection.
pub(crate) async fn serve_alerts(daemon: Shared, listener: UnixListener) {
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                tokio::spawn(serve_alert(daemon.clone(), stream));
            }
            Err(e) => tracing::warn!("alert socket: accept failed: {e}"),
        }
    }
}

async fn serve_alert(daemon: Shared, stream: UnixStream) {
    let (r, mut w) = stream.into_split();
    let mut line = String::new();
    let read = BufReader::new(r)
        .take(MAX_ALERT_BYTES + 1)
        .read_line(&mut line)
        .await;
    let response = match read {
        Err(e) => {
            tracing::debug!("alert socket: read failed: {e}");
            return;
        }
        Ok(_) if line.len() as u64 > MAX_ALERT_BYTES => Err(ApiError::new(
            ErrorCode::BadRequest,
            format!("an alert is at most {MAX_ALERT_BYTES} bytes"),
        )),
        Ok(_) => match serde_json::from_str::<Request>(&line) {
            Ok(Request::Publish {
                guest,
                kind: EventKind::Cluster,
                origin,
                node,
                payload,
            }) if origin == "alert" => {
                publish(&daemon, &guest, EventKind::Cluster, &origin, &node, payload)
            }
            Ok(_) => Err(ApiError::new(
                ErrorCode::PermissionDenied,
                "the alert socket takes only cluster alerts (vesper cluster alert); use vesperd's API socket for anything else",
            )),
            Err(e) => Err(ApiError::new(
                ErrorCode::BadRequest,
                format!("malformed request: {e}"),
            )),
        },
    };
    if let Err(e) = &response {
        tracing::warn!("alert socket: refused: {}", e.message);
    }
    let mut out = serde_json::to_string(&WireResponse::from(response)).unwrap_or_default();
    out.push('\n');
    let _ = w.write_all(out.as_bytes()).await;
}
