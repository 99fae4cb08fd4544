//! The baseline issue 10 measures Vesper against: the same guest run by the stock
//! `ocf:heartbeat:VirtualDomain` agent under libvirt (`tools/cluster up --libvirt`,
//! cib/virtualdomain.crm), its service watched by `monitor_scripts`
//! (tools/ocf/vd_svc_check). The guest's hand is reached through the domain's serial
//! console, a unix socket on the node; and [`measure`] times a failover the same way for
//! either kind of guest, so a benchmark compares like with like.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::cluster::{time_failover, ClusterLab, Failover};

/// The VirtualDomain CIB template, relative to the repository.
pub const CIB: &str = "tools/cluster/cib/virtualdomain.crm";

/// `up` arguments for the VirtualDomain baseline, the monitor every `monitor` (a
/// Pacemaker interval: `10s`, `1s`).
pub fn up_args(monitor: &str) -> Vec<String> {
    let cib = vesper_cluster_lab::repo_root().join(CIB);
    vec![
        "--libvirt".into(),
        "--bare".into(),
        "--cib".into(),
        cib.display().to_string(),
        "--var".into(),
        format!("VD_MONITOR={monitor}"),
    ]
}

/// How a guest's hand is reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Console {
    /// Through the node's vesperd (`vesper vm send`, its console log): ocf:vesper:vesper.
    Vesper,
    /// Through the libvirt domain's serial socket: ocf:heartbeat:VirtualDomain.
    Libvirt,
}

impl Console {
    /// Kills `svc` in `guest` on `node` (`kill 9 svc`); returns once the guest confirms.
    pub fn kill_svc(self, lab: &ClusterLab, node: &str, guest: &str) {
        match self {
            Console::Vesper => {
                lab.hand(node, guest, "kill 9 svc", "killed svc");
            }
            Console::Libvirt => {
                let r = hand(lab, node, guest, "kill 9 svc", "killed svc", TIMEOUT);
                if let Err(e) = r {
                    panic!("kill svc in {guest} on {node}: {e}");
                }
            }
        }
    }

    /// Waits until `svc` answers (`status svc` → `running svc`) in `guest` on `node`.
    pub fn service_answers(self, lab: &ClusterLab, node: &str, guest: &str) {
        match self {
            Console::Vesper => lab.service_answers(node, guest),
            Console::Libvirt => service_answers(lab, node, guest, Duration::from_secs(120)),
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// The domain's serial console on `node`, as the host reaches it.
pub fn serial(lab: &ClusterLab, node: &str, guest: &str) -> PathBuf {
    lab.lab
        .node_run(node)
        .join("vesper-vdom")
        .join(format!("{guest}.serial"))
}

/// Types `command` into the hand of `guest` on `node` through its serial socket and
/// returns the reply line starting `vesper-hand: ` + `reply_prefix`. Only output that
/// came after the connection is read (QEMU drops the console's output while no one is
/// connected), so no earlier reply is taken for this one. The socket takes one client at a
/// time: while the monitor script is connected, this waits its turn.
pub fn hand(
    lab: &ClusterLab,
    node: &str,
    guest: &str,
    command: &str,
    reply_prefix: &str,
    timeout: Duration,
) -> Result<String, String> {
    let path = serial(lab, node, guest);
    let deadline = Instant::now() + timeout;
    let mut s = loop {
        match UnixStream::connect(&path) {
            Ok(s) => break s,
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("connect {}: {e}", path.display()))
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    };
    s.set_read_timeout(Some(Duration::from_millis(100)))
        .map_err(|e| e.to_string())?;
    s.write_all(format!("{command}\n").as_bytes())
        .map_err(|e| format!("write to {}: {e}", path.display()))?;
    let needle = format!("vesper-hand: {reply_prefix}");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return Err(format!("{} closed", path.display())),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(format!("read {}: {e}", path.display())),
        }
        let text = String::from_utf8_lossy(&seen);
        if let Some(at) = text.find(&needle) {
            let line = text[at..].lines().next().unwrap_or_default();
            return Ok(line.trim_end().to_string());
        }
        if Instant::now() >= deadline {
            return Err(format!("no {needle:?} after {command:?}; read: {text:?}"));
        }
    }
}

/// Waits until `svc` answers in the domain `guest` on `node`, asking every 0.5 s (a line
/// typed while the guest boots is lost).
pub fn service_answers(lab: &ClusterLab, node: &str, guest: &str, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let r = hand(
            lab,
            node,
            guest,
            "status svc",
            "running svc",
            Duration::from_millis(500),
        );
        match r {
            Ok(_) => return,
            Err(e) => assert!(
                Instant::now() < deadline,
                "svc never answered in {guest} on {node} in {timeout:?}: {e}"
            ),
        }
    }
}

/// As [`crate::cluster::measure_failover`], for a guest reached through `console`: kills
/// `svc` in `guest` on `from`, polls `crm_mon` on `to` every 100 ms until every one of
/// `resources` (the guest's resource, named `guest`, first) runs there, then waits for the
/// service to answer there. The clock starts once the guest confirms the kill.
pub fn measure(
    lab: &ClusterLab,
    console: Console,
    guest: &str,
    resources: &[&str],
    from: &str,
    to: &str,
    timeout: Duration,
) -> Failover {
    time_failover(
        lab,
        guest,
        resources,
        (from, to),
        timeout,
        || console.kill_svc(lab, from, guest),
        || console.service_answers(lab, to, guest),
    )
}
