//! A blocking client of the API socket: one request and its reply, or a stream of
//! replies; where the socket is by default.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use thiserror::Error;

use crate::{Reply, Request, Response, WireResponse};

/// Client-side failures (the daemon could not be asked).
#[derive(Debug, Error)]
pub enum ClientError {
    /// No daemon at the socket.
    #[error(
        "cannot reach vesperd at {path}: {source}; start it with `vesperd` (or pass --socket)"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No reply in time.
    #[error("vesperd did not reply within {0:?} (raise --timeout, or check the daemon's log)")]
    Timeout(Duration),
    /// The conversation broke.
    #[error("talking to vesperd: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon's reply does not parse.
    #[error("vesperd sent a malformed reply: {0}")]
    Malformed(String),
    /// The connection ended before a reply (the daemon died or was stopped).
    #[error("vesperd went away before replying; the command may have completed in the guest (check with `vesper lsmod` or `vesper events`)")]
    WentAway,
}

/// The default socket path: `$VESPER_SOCKET`, else `$XDG_RUNTIME_DIR/vesper/vesperd.sock`,
/// else `/tmp/vesper-<uid>/vesperd.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("VESPER_SOCKET") {
        return PathBuf::from(p);
    }
    crate::run_dir::api_socket(&default_run_dir())
}

/// The default run directory (see [`default_socket`]).
pub fn default_run_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("vesper"),
        None => PathBuf::from(format!("/tmp/vesper-{}", nix_uid())),
    }
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

/// Sends one request and waits (up to `timeout`) for its reply.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    let mut w = stream.try_clone()?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::Malformed(e.to_string()))?;
    line.push('\n');
    // The daemon may answer (a refusal) and close before reading the request: a failed
    // write is then followed by the reply, which says why.
    let sent = w.write_all(line.as_bytes());
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ClientError::Timeout(timeout))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            sent?;
            return Err(ClientError::WentAway);
        }
        Err(e) => return Err(e.into()),
    }
    if reply.is_empty() {
        // No reply: if the request never got out, that is the error to report.
        sent?;
        return Err(ClientError::WentAway);
    }
    if !reply.ends_with('\n') {
        // Cut off mid-line: the daemon died while writing.
        return Err(ClientError::WentAway);
    }
    let wire: WireResponse =
        serde_json::from_str(&reply).map_err(|e| ClientError::Malformed(e.to_string()))?;
    Ok(wire.into())
}

/// Sends one streaming request and hands each reply to `f` until it returns false,
/// the daemon sends `End` or an error, or the connection closes.
pub fn call_stream(
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
    mut f: impl FnMut(Response) -> bool,
) -> Result<(), ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(timeout)?;
    let mut w = stream.try_clone()?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::Malformed(e.to_string()))?;
    line.push('\n');
    // As in `call`: a refusal may arrive although the request could not be written.
    let _ = w.write_all(line.as_bytes());
    for line in BufReader::new(stream).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout(timeout.unwrap_or_default()))
            }
            Err(e) => return Err(e.into()),
        };
        let wire: WireResponse =
            serde_json::from_str(&line).map_err(|e| ClientError::Malformed(e.to_string()))?;
        let r: Response = wire.into();
        let last = matches!(r, Ok(Reply::End { .. }) | Err(_));
        if !f(r) || last {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode_image, ApiError, ErrorCode};

    #[test]
    fn requests_and_replies_round_trip_as_json_lines() {
        let r = Request::insmod("vm1", "p.ko", b"\x7fELF", vec!["a=1".into()]);
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"op\":\"insmod\"") && !s.contains('\n'));
        let back: Request = serde_json::from_str(&s).unwrap();
        let Request::Insmod { image_b64, .. } = &back else {
            panic!()
        };
        assert_eq!(decode_image(image_b64).unwrap(), b"\x7fELF");
        let e: WireResponse =
            Err::<Reply, _>(ApiError::new(ErrorCode::UnknownGuest, "no guest vm9")).into();
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains("unknown_guest"));
        let back: Response = serde_json::from_str::<WireResponse>(&s).unwrap().into();
        assert_eq!(back.unwrap_err().code.exit_code(), 68);
    }

    /// A listener that reads one request, writes `answer`, and hangs up.
    fn hangs_up_after(answer: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(answer).unwrap();
        });
        (dir, path)
    }

    #[test]
    fn a_daemon_that_dies_mid_command_is_not_reported_as_a_malformed_reply() {
        for answer in [&b""[..], b"{\"ok\":tr"] {
            let (_dir, path) = hangs_up_after(answer);
            let e = call(&path, &Request::VmList, Duration::from_secs(5)).unwrap_err();
            assert!(matches!(e, ClientError::WentAway), "{e:?}");
            assert!(
                e.to_string().starts_with(
                    "vesperd went away before replying; the command may have completed in the guest"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn a_missing_daemon_is_a_clear_error() {
        let e = call(
            Path::new("/nonexistent/vesperd.sock"),
            &Request::VmList,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("start it with `vesperd`"));
    }
}
