use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use crate::QemuError;

/// A QMP connection (QEMU Machine Protocol: JSON over a Unix socket).
#[derive(Debug)]
pub struct Qmp {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    events: Vec<Value>,
}

/// Pause between tries while QEMU's QMP socket is busy.
const BUSY_RETRY: Duration = Duration::from_millis(50);

/// QEMU serves one client per QMP socket and takes the next a moment after one leaves:
/// meanwhile a connection is refused for now (`EAGAIN`) or accepted and dropped.
fn busy(e: &QemuError) -> bool {
    match e {
        QemuError::QmpIo { source, .. } => matches!(
            source.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::ConnectionReset
        ),
        QemuError::QmpProtocol(why) => why == CLOSED,
        _ => false,
    }
}

const CLOSED: &str = "QEMU closed the QMP connection";

impl Qmp {
    /// [`Qmp::connect`], but while the socket is busy with another client, tries again
    /// until `timeout` has passed. Not for a VM that may be replaced meanwhile: a new
    /// QEMU binds the same path, and a late connection would reach it instead.
    pub fn connect_waiting(path: &Path, timeout: Duration) -> Result<Self, QemuError> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            match Self::connect(path, timeout) {
                Err(e) if busy(&e) && std::time::Instant::now() + BUSY_RETRY < deadline => {
                    std::thread::sleep(BUSY_RETRY)
                }
                r => return r,
            }
        }
    }

    /// Connects, reads the greeting and negotiates capabilities.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Self, QemuError> {
        let io = |source| QemuError::QmpIo {
            path: path.to_path_buf(),
            source,
        };
        let stream = UnixStream::connect(path).map_err(io)?;
        stream.set_read_timeout(Some(timeout)).map_err(io)?;
        stream.set_write_timeout(Some(timeout)).map_err(io)?;
        let writer = stream.try_clone().map_err(io)?;
        let mut qmp = Self {
            path: path.to_path_buf(),
            reader: BufReader::new(stream),
            writer,
            events: Vec::new(),
        };
        let greeting = qmp.read_value()?;
        if greeting.get("QMP").is_none() {
            return Err(QemuError::QmpProtocol(format!(
                "expected a QMP greeting, got {greeting}"
            )));
        }
        qmp.execute("qmp_capabilities", None)?;
        Ok(qmp)
    }

    fn read_value(&mut self) -> Result<Value, QemuError> {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .map_err(|source| QemuError::QmpIo {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(QemuError::QmpProtocol(CLOSED.into()));
        }
        serde_json::from_str(&line)
            .map_err(|e| QemuError::QmpProtocol(format!("bad JSON from QEMU: {e}")))
    }

    /// Runs `command` and returns its `return` value; events seen meanwhile are kept.
    pub fn execute(&mut self, command: &str, arguments: Option<Value>) -> Result<Value, QemuError> {
        let mut req = json!({ "execute": command });
        if let Some(args) = arguments {
            req["arguments"] = args;
        }
        let line = format!("{req}\n");
        self.writer
            .write_all(line.as_bytes())
            .map_err(|source| QemuError::QmpIo {
                path: self.path.clone(),
                source,
            })?;
        loop {
            let v = self.read_value()?;
            if v.get("event").is_some() {
                self.events.push(v);
                continue;
            }
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(QemuError::QmpCommand {
                    command: command.to_string(),
                    class: e["class"].as_str().unwrap_or("?").to_string(),
                    desc: e["desc"].as_str().unwrap_or("?").to_string(),
                });
            }
            return Err(QemuError::QmpProtocol(format!(
                "unexpected QMP message {v}"
            )));
        }
    }

    /// Events received so far (and forgets them).
    pub fn take_events(&mut self) -> Vec<Value> {
        std::mem::take(&mut self.events)
    }
}

/// One QMP event, parsed from a line QEMU sent.
#[derive(Debug, Clone, PartialEq)]
pub struct QmpEvent {
    /// Event name (`GUEST_PANICKED`).
    pub name: String,
    /// Its `data` member (`null` if absent).
    pub data: Value,
    /// QEMU's timestamp, Unix ns.
    pub timestamp_ns: Option<u64>,
}

/// Parses one line from a QMP connection: `Some` for an event, `None` for anything else
/// (greeting, command return, malformed text).
pub fn parse_event(line: &str) -> Option<QmpEvent> {
    let v: Value = serde_json::from_str(line).ok()?;
    let name = v.get("event")?.as_str()?.to_string();
    let ts = &v["timestamp"];
    let timestamp_ns = match (ts["seconds"].as_u64(), ts["microseconds"].as_u64()) {
        (Some(s), Some(us)) => Some(s * 1_000_000_000 + us * 1_000),
        _ => None,
    };
    Some(QmpEvent {
        name,
        // Events without data (STOP, RESUME) carry none at all: an empty object, so
        // every event's payload is an object.
        data: v
            .get("data")
            .cloned()
            .unwrap_or_else(|| Value::Object(Default::default())),
        timestamp_ns,
    })
}

/// The `qmp_capabilities` command line that opens command mode.
pub const CAPABILITIES: &str = "{\"execute\":\"qmp_capabilities\"}\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_parse_and_everything_else_does_not() {
        let e = parse_event(
            r#"{"timestamp": {"seconds": 1700000000, "microseconds": 250}, "event": "GUEST_PANICKED", "data": {"action": "pause", "info": {"type": "hyper-v"}}}"#,
        )
        .unwrap();
        assert_eq!(e.name, "GUEST_PANICKED");
        assert_eq!(e.timestamp_ns, Some(1_700_000_000_000_250_000));
        assert_eq!(e.data["action"], "pause");
        let stop =
            parse_event(r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "STOP"}"#)
                .unwrap();
        assert_eq!(stop.data, serde_json::json!({}));
        assert!(parse_event(r#"{"return": {}}"#).is_none());
        assert!(parse_event(r#"{"QMP": {"version": {}}}"#).is_none());
        assert!(parse_event("not json").is_none());
        // No "data" and no timestamp: still an event, its data empty as QEMU means it.
        let bare = parse_event(r#"{"event":"STOP"}"#).unwrap();
        assert_eq!(
            (bare.data, bare.timestamp_ns),
            (serde_json::json!({}), None)
        );
    }

    #[test]
    fn a_busy_socket_is_waited_for_and_a_missing_one_is_not() {
        let dir = std::env::temp_dir().join(format!("vesper-qmp-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("qmp.sock");
        let _ = std::fs::remove_file(&path);
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        // QEMU busy with another client: two connections accepted and dropped, then a
        // real greeting and a capabilities answer.
        let server = std::thread::spawn(move || {
            for _ in 0..2 {
                drop(listener.accept().unwrap());
            }
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}}}\n").unwrap();
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line).unwrap();
            w.write_all(b"{\"return\": {}}\n").unwrap();
        });
        Qmp::connect_waiting(&path, Duration::from_secs(5))
            .expect("connected after the busy spell");
        server.join().unwrap();
        // Nobody listening: refused at once, not retried until the timeout.
        std::fs::remove_file(&path).unwrap();
        let e = Qmp::connect_waiting(&path, Duration::from_secs(5)).unwrap_err();
        assert!(!busy(&e), "{e}");
        assert!(
            matches!(&e, QemuError::QmpIo { source, .. } if source.kind() == std::io::ErrorKind::NotFound),
            "{e}"
        );
        let _ = std::fs::remove_dir(&dir);
    }
}
