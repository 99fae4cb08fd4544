//! libvirt through `virsh`: one domain on one connection. vesperd runs the client
//! rather than linking libvirt, as an operator would: `dumpxml`, `domstate`, `start`,
//! `shutdown`, `destroy`, QMP commands through `qemu-monitor-command` (libvirt owns
//! QEMU's monitor) and QEMU's events from `qemu-monitor-event --loop`.

use std::process::Stdio;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// libvirt's connection when none is given.
pub(crate) const DEFAULT_URI: &str = "qemu:///system";

/// Longest one `virsh` call may take (libvirtd probing QEMU the first time is slow).
const CALL_TIMEOUT: Duration = Duration::from_secs(60);

/// A libvirt domain on a connection.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Virsh {
    /// The connection URI.
    pub(crate) uri: String,
    /// The domain's name.
    pub(crate) domain: String,
}

impl Virsh {
    pub(crate) fn new(domain: &str, uri: Option<&str>) -> Self {
        Self {
            uri: uri.unwrap_or(DEFAULT_URI).to_string(),
            domain: domain.to_string(),
        }
    }

    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new("virsh");
        c.args(["--quiet", "-c", &self.uri])
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        c
    }

    /// Runs `virsh ARGS` (the domain named by the caller); its stdout, or why it failed.
    pub(crate) async fn run(&self, args: &[&str]) -> Result<String, String> {
        let what = format!("virsh -c {} {}", self.uri, args.join(" "));
        let out = tokio::time::timeout(CALL_TIMEOUT, self.command(args).output())
            .await
            .map_err(|_| format!("`{what}` took over {} s", CALL_TIMEOUT.as_secs()))?
            .map_err(|e| {
                format!("cannot run virsh ({e}): install libvirt-clients (and libvirt-daemon-system for a libvirtd)")
            })?;
        if out.status.success() {
            return Ok(String::from_utf8_lossy(&out.stdout).into_owned());
        }
        let err = String::from_utf8_lossy(&out.stderr);
        let err = err
            .trim()
            .trim_start_matches("error: ")
            .replace("\nerror: ", "; ");
        Err(format!("`{what}` failed: {err}"))
    }

    /// The domain's XML (`--inactive`: its persistent definition).
    pub(crate) async fn dumpxml(&self, inactive: bool) -> Result<String, String> {
        let mut args = vec!["dumpxml", self.domain.as_str()];
        if inactive {
            args.push("--inactive");
        }
        self.run(&args).await
    }

    /// `running`, `shut off`, `paused`, ...
    pub(crate) async fn state(&self) -> Result<String, String> {
        Ok(self
            .run(&["domstate", &self.domain])
            .await?
            .trim()
            .to_string())
    }

    /// `virsh start|shutdown|destroy DOMAIN`.
    pub(crate) async fn act(&self, verb: &str) -> Result<(), String> {
        self.run(&[verb, &self.domain]).await.map(|_| ())
    }

    /// `virsh VERB DOMAIN` on this thread (for callers outside the async runtime).
    pub(crate) fn act_blocking(&self, verb: &str) -> Result<(), String> {
        let out = std::process::Command::new("virsh")
            .args(["--quiet", "-c", &self.uri, verb, &self.domain])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("cannot run virsh {verb} ({e})"))?;
        if out.status.success() {
            return Ok(());
        }
        Err(format!(
            "`virsh {verb} {}` failed: {}",
            self.domain,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }

    /// A QMP command through libvirt: QEMU's reply object (`return` or `error`).
    pub(crate) async fn monitor_command(
        &self,
        command: &serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let text = command.to_string();
        let out = self
            .run(&["qemu-monitor-command", &self.domain, &text])
            .await?;
        serde_json::from_str(out.trim())
            .map_err(|e| format!("libvirt's QMP reply is not JSON ({e}): {}", out.trim()))
    }

    /// `virsh qemu-monitor-event --domain D --loop`, its stdout piped (one line per event).
    pub(crate) fn event_child(&self) -> std::io::Result<tokio::process::Child> {
        self.command(&["qemu-monitor-event", "--domain", &self.domain, "--loop"])
            .spawn()
    }
}

/// Fencing an attached libvirt domain (the VM of run directory `dir`): destroyed at
/// once through libvirt, not shut down with a grace (`vm stop` follows to wind up).
pub(crate) async fn destroy_for_fence(dir: &std::path::Path) {
    if let Ok(crate::persist::VmRecord {
        attached: Some(crate::persist::AttachedRecord::Libvirt { uri, domain, .. }),
        ..
    }) = crate::persist::VmRecord::load(dir)
    {
        if let Err(e) = Virsh::new(&domain, Some(&uri)).act("destroy").await {
            tracing::warn!(%domain, "fencing: {e}");
        }
    }
}

/// A `qemu-monitor-event` line (`event STOP at 1796663811.742018 for domain 'd':
/// <null>`) as the QMP event QEMU sent.
pub(crate) fn parse_event_line(line: &str) -> Option<serde_json::Value> {
    let rest = line.trim().strip_prefix("event ")?;
    let (name, rest) = rest.split_once(" at ")?;
    let (stamp, rest) = rest.split_once(" for domain ")?;
    let data = rest.split_once("': ").map(|(_, d)| d.trim()).unwrap_or("");
    let data = match data {
        "" | "<null>" => serde_json::Value::Null,
        d => serde_json::from_str(d).ok()?,
    };
    let (secs, micros) = stamp.split_once('.').unwrap_or((stamp, "0"));
    let mut ev = serde_json::json!({
        "event": name,
        "timestamp": {
            "seconds": secs.parse::<u64>().ok()?,
            "microseconds": micros.parse::<u64>().ok()?,
        },
    });
    if !data.is_null() {
        ev["data"] = data;
    }
    Some(ev)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monitor_events_become_qmp_events() {
        let e = parse_event_line("event STOP at 1796663811.742018 for domain 'att2': <null>\n")
            .unwrap();
        assert_eq!(e["event"], "STOP");
        assert_eq!(e["timestamp"]["seconds"], 1796663811u64);
        assert_eq!(e["timestamp"]["microseconds"], 742018);
        assert!(e.get("data").is_none());
        let e = parse_event_line(
            "event SHUTDOWN at 5.000001 for domain 'a b': {\"guest\":true,\"reason\":\"guest-shutdown\"}",
        )
        .unwrap();
        assert_eq!(e["data"]["reason"], "guest-shutdown");
        let q = vesper_qemu::parse_event(&e.to_string()).unwrap();
        assert_eq!(q.timestamp_ns, Some(5_000_001_000));
        assert!(parse_event_line("error: disconnected").is_none());
        assert!(parse_event_line("event X at y for domain 'd': <null>").is_none());
    }
}
