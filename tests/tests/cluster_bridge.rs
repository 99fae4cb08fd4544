//! `vesper cluster bridge` and `vesper cluster alert` against a real vesperd and a real
//! guest, with Pacemaker's three tools (`crm_node`, `cibadmin`, `crm_resource`) stood in
//! for by scripts that record how they were called: one report per incident, none for a
//! stop somebody asked for, the bridge started before vesperd and carried across a
//! vesperd restart, each report a `decision` event; an alert becomes a `cluster` event
//! filed under its guest, and the alert socket takes nothing else. The same bridge
//! against a real Pacemaker cluster: tests/tests/cluster.rs.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{bin_dir, Daemon, RunDir};

const WAIT: Duration = Duration::from_secs(60);

const CIB: &str = r#"<resources>
  <primitive id="web1-vm" class="ocf" provider="vesper" type="vesper">
    <instance_attributes id="web1-vm-ia"><nvpair id="g" name="guest" value="web1"/></instance_attributes>
  </primitive>
</resources>"#;

/// A directory of stand-ins for Pacemaker's tools; `crm_resource` appends its
/// arguments to `calls`.
struct FakePacemaker {
    dir: tempfile::TempDir,
}

impl FakePacemaker {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let write = |name: &str, body: String| {
            let p = dir.path().join(name);
            std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write tool");
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        };
        write("crm_node", "echo node-a".into());
        write("cibadmin", format!("cat <<'XML'\n{CIB}\nXML"));
        let calls = dir.path().join("calls");
        write(
            "crm_resource",
            format!("echo \"$*\" >> {}", calls.display()),
        );
        Self { dir }
    }

    fn calls(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    fn path_env(&self) -> String {
        format!(
            "{}:{}",
            self.dir.path().display(),
            std::env::var("PATH").unwrap_or_default()
        )
    }

    fn wait_calls(&self, n: usize, bridge_log: &Path) -> Vec<String> {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = self.calls();
            if c.len() >= n {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "crm_resource called {} times, not {n}; bridge log:\n{}",
                c.len(),
                std::fs::read_to_string(bridge_log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

struct Bridge {
    child: Child,
    log: PathBuf,
}

impl Bridge {
    fn start(socket: &Path, pacemaker: &FakePacemaker) -> Self {
        let log = pacemaker.dir.path().join("bridge.log");
        let out = std::fs::File::create(&log).expect("log");
        let child = Command::new(bin_dir().join("vesper"))
            .arg("--socket")
            .arg(socket)
            .args(["cluster", "bridge"])
            .env("PATH", pacemaker.path_env())
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("spawn the bridge");
        Self { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "bridge never logged {needle:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_web1_with_svc(d: &Daemon) {
    d.vm_start_with("web1", &["--mode", "hand"]);
    d.watch_svc("web1");
    d.wait_console("web1", "vesper-init: hand ready", WAIT);
    d.hand("web1", "start svc", "started svc");
}

fn decisions(d: &Daemon) -> Vec<Value> {
    d.events(&["--kind", "decision"])
        .into_iter()
        .filter(|e| e["source"]["type"] == "cluster" && e["source"]["origin"] == "bridge")
        .collect()
}

#[test]
fn the_bridge_reports_each_incident_once_and_outlives_vesperd() {
    let pacemaker = FakePacemaker::new();
    let run_dir = tempfile::Builder::new()
        .prefix("vesper-e2e-")
        .tempdir()
        .expect("tempdir");
    let socket = vesper_api::run_dir::api_socket(run_dir.path());
    // The bridge starts first: it waits for vesperd instead of failing.
    let bridge = Bridge::start(&socket, &pacemaker);
    bridge.wait_log("lost vesperd");
    let d = Daemon::start_in(RunDir::Owned(run_dir), &[]);
    start_web1_with_svc(&d);

    d.hand("web1", "kill 9 svc", "killed");
    let calls = pacemaker.wait_calls(1, &bridge.log);
    assert_eq!(calls, ["--fail --resource web1-vm --node node-a"]);
    let decision = &decisions(&d)[0];
    assert_eq!(decision["guest"], "web1");
    assert_eq!(decision["payload"]["action"], "fail_resource");
    assert_eq!(decision["payload"]["resource"], "web1-vm");
    assert_eq!(decision["payload"]["event_kind"], "service_exit");
    assert_eq!(decision["source"]["node"], "node-a");
    assert!(
        decision["payload"]["reason"]
            .as_str()
            .unwrap()
            .contains("svc (pid"),
        "{decision}"
    );

    // The VM dying next is the same incident: no second report.
    vesper_e2e::signal(d.qemu_pid("web1"), nix::sys::signal::Signal::SIGKILL);
    let deadline = Instant::now() + WAIT;
    while d
        .events(&["--kind", "vm_exit", "--guest", "web1"])
        .is_empty()
    {
        assert!(Instant::now() < deadline, "no vm_exit");
        std::thread::sleep(Duration::from_millis(50));
    }
    bridge.wait_log("belongs to an incident already reported");

    // Pacemaker's recovery starts the guest again: a new incarnation. vesperd restarts
    // (detach, adopt) under the bridge, which resumes without reporting anything twice.
    start_web1_with_svc(&d);
    let run_dir = d.detach();
    let d = Daemon::start_in(run_dir, &[]);
    bridge.wait_log("vesperd is back");
    d.hand("web1", "kill 9 svc", "killed");
    let calls = pacemaker.wait_calls(2, &bridge.log);
    assert_eq!(calls.len(), 2, "{calls:?}");

    // A stop somebody asked for is no failure.
    d.cli(&["vm", "stop", "web1"]).ok();
    let exits = d.events(&["--kind", "vm_exit", "--guest", "web1"]);
    assert_eq!(exits.last().unwrap()["payload"]["requested"], true);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(pacemaker.calls().len(), 2, "{}", bridge.log());
}

#[test]
fn alerts_become_cluster_events_and_the_alert_socket_takes_nothing_else() {
    let pacemaker = FakePacemaker::new();
    let alerts = pacemaker.dir.path().join("alerts.sock");
    let d = Daemon::start(&[
        "--alert-socket",
        alerts.to_str().unwrap(),
        "--alert-group",
        "0",
    ]);
    let mode = std::fs::metadata(&alerts)
        .expect("alert socket")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o660);
    let alert = |vars: &[(&str, &str)]| {
        let mut cmd = Command::new(bin_dir().join("vesper"));
        cmd.args(["cluster", "alert"])
            .env("PATH", pacemaker.path_env())
            .env("CRM_alert_recipient", &alerts)
            .env("VESPER_NODE", "node-a");
        for (k, v) in vars {
            cmd.env(k, v);
        }
        vesper_e2e::CliOutput::from(cmd.output().expect("run the alert agent"))
    };
    alert(&[
        ("CRM_alert_kind", "resource"),
        ("CRM_alert_node", "node-b"),
        ("CRM_alert_rsc", "web1-vm"),
        ("CRM_alert_task", "start"),
        ("CRM_alert_rc", "0"),
        ("CRM_alert_target_rc", "0"),
        ("CRM_alert_desc", "ok"),
    ])
    .ok();
    alert(&[
        ("CRM_alert_kind", "node"),
        ("CRM_alert_node", "node-a"),
        ("CRM_alert_desc", "lost"),
    ])
    .ok();
    let events = d.events(&["--kind", "cluster"]);
    assert_eq!(events.len(), 2, "{events:?}");
    assert_eq!(
        events[0]["guest"], "web1",
        "filed under the resource's guest"
    );
    assert_eq!(
        events[0]["payload"]["summary"],
        "resource web1-vm start on node-b: ok"
    );
    assert_eq!(events[0]["source"]["origin"], "alert");
    assert_eq!(
        events[0]["source"]["node"], "node-a",
        "sent from this node (VESPER_NODE, else its host name)"
    );
    assert_eq!(events[1]["guest"], "");
    assert_eq!(events[1]["payload"]["summary"], "node node-a is lost");
    let human = d.cli(&["events", "--kind", "cluster"]).ok().stdout;
    assert!(
        human.contains("[cluster alert@node-a] node node-a is lost"),
        "{human}"
    );

    // Not an alert: refused, with what to do.
    let bad = alert(&[]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(bad.stderr.contains("CRM_alert_kind"), "{bad:?}");
    let other = Command::new(bin_dir().join("vesper"))
        .arg("--socket")
        .arg(&alerts)
        .args(["vm", "list"])
        .output()
        .expect("vesper vm list");
    let other = vesper_e2e::CliOutput::from(other);
    assert_ne!(other.code, 0);
    assert!(
        other.stderr.contains("takes only cluster alerts"),
        "{other:?}"
    );
    // Nobody publishes a kind that is vesperd's own, on either socket.
    let forged = raw_request(
        &d.socket,
        r#"{"op":"publish","guest":"web1","kind":"panic","origin":"bridge","node":"n","payload":{}}"#,
    );
    assert!(forged.contains("is vesperd's own"), "{forged}");
    assert!(d.events(&["--kind", "panic"]).is_empty());
}

fn raw_request(socket: &Path, line: &str) -> String {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).expect("connect");
    writeln!(s, "{line}").expect("send");
    let mut reply = String::new();
    std::io::BufReader::new(s)
        .read_line(&mut reply)
        .expect("reply");
    reply
}
