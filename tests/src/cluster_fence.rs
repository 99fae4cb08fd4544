//! Faults for the cluster lab ([`ClusterLab`]): a node's daemons killed and started again,
//! which node runs a guest's VM process (found by namespace, so also when that node's
//! vesperd is dead), a node's events, and the node-loss clock ([`measure_node_loss`]).

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_cluster_lab::procs::{self, NsId};

use crate::cluster::{wait_moved, ClusterLab};

/// The CIB templates of a lab with event-driven recovery and fencing (after base.crm).
pub fn fencing_cibs() -> Vec<String> {
    let cib = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tools/cluster/cib");
    ["events.crm", "fencing.crm"]
        .iter()
        .flat_map(|f| ["--cib".to_string(), cib.join(f).display().to_string()])
        .collect()
}

impl ClusterLab {
    /// Kills `daemon` (vesperd, corosync, pacemakerd) on `node` with SIGKILL.
    pub fn kill_daemon(&self, node: &str, daemon: &str) {
        self.lab_cli(&["kill", node, daemon]).ok();
    }

    /// Starts `daemon` on `node` again, as `up` did.
    pub fn start_daemon(&self, node: &str, daemon: &str) {
        self.lab_cli(&["start", node, daemon]).ok();
    }

    /// Brings `node` back into the cluster after its corosync was killed or it was
    /// fenced: corosync again, and pacemakerd where it has exited (a live one reconnects
    /// on its own); waits until the node has joined for good: every node's own view has
    /// every node online and shows the same resources in the same places.
    ///
    /// Not one node's view alone: the DC lists a node online as soon as its controller
    /// joins, before that node holds the cluster's status. Lose the DC in that window and
    /// the rejoined node, now alone, takes the lost node for cleanly down (no fencing)
    /// and starts its resources: the guest ran twice in the node-loss bench this way.
    pub fn revive(&self, node: &str, timeout: Duration) {
        for d in ["corosync", "pacemakerd"] {
            // Not a pid alone: the kernel reuses it for other processes.
            let alive = vesper_cluster_lab::daemon::running(&self.lab, node, d).is_some();
            if !alive {
                self.start_daemon(node, d);
            }
        }
        let deadline = Instant::now() + timeout;
        loop {
            let views: Vec<_> = self.nodes.iter().map(|n| self.status(n)).collect();
            let settled = views.iter().all(|v| {
                v.as_ref().is_ok_and(|v| {
                    v.ready(&self.nodes)
                        && views[0]
                            .as_ref()
                            .is_ok_and(|first| first.resources == v.resources)
                })
            });
            if settled {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{node} not back after {timeout:?}: {views:?}\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The VM processes of `guest` on each node, found by the node's namespaces and
    /// QEMU's command line (its sockets are under the guest's run directory).
    pub fn guest_vms(&self, guest: &str) -> Vec<(String, u32)> {
        let needle = format!("/guests/{guest}/");
        let mut found = Vec::new();
        for n in &self.nodes {
            let Some(ns) = NsId::of_file(&self.lab.mnt_ns_path(n)) else {
                continue;
            };
            for p in procs::in_namespaces(&[ns]) {
                let cmdline = std::fs::read(format!("/proc/{}/cmdline", p.pid)).unwrap_or_default();
                if p.comm.starts_with("qemu-system")
                    && String::from_utf8_lossy(&cmdline).contains(&needle)
                {
                    found.push((n.clone(), p.pid));
                }
            }
        }
        found
    }

    /// `node`'s events as JSON (`vesper --json events ARGS` there).
    pub fn events(&self, node: &str, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["--json", "events"];
        a.extend_from_slice(args);
        self.vesper(node, &a)
            .ok()
            .stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .map(|v| v["result"].clone())
            .filter(|r| r["reply"] == "event")
            .collect()
    }

    /// Waits until `pred` holds of `node`'s events (`args` select them); those events.
    pub fn wait_events(
        &self,
        node: &str,
        args: &[&str],
        what: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let ev = self.events(node, args);
            if pred(&ev) {
                return ev;
            }
            assert!(
                Instant::now() < deadline,
                "{what}: not in {node}'s events after {timeout:?}: {ev:#?}"
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

/// One whole-node loss, timed from its corosync's kill.
#[derive(Debug, Clone, Copy)]
pub struct NodeLoss {
    /// Until the guest's VM process on the lost node was gone (fenced).
    pub fenced: Duration,
    /// Until every resource ran on the other node.
    pub moved: Duration,
    /// Until the service answered in the guest there.
    pub answering: Duration,
}

/// Kills corosync on `from` (which runs `resources`, the guest's first) and times the
/// cluster fencing it (the guest's VM gone from `from`) and moving `resources` to `to`,
/// polling every 100 ms, then the service answering there. Asserts the guest never runs
/// on both nodes at once.
pub fn measure_node_loss(
    lab: &ClusterLab,
    guest: &str,
    resources: &[&str],
    from: &str,
    to: &str,
    timeout: Duration,
) -> NodeLoss {
    lab.kill_daemon(from, "corosync");
    let killed = Instant::now();
    let mut fenced = None;
    let after = format!("{from}'s corosync was killed");
    let moved = wait_moved(lab, resources, to, killed, timeout, &after, |_| {
        let vms = lab.guest_vms(guest);
        if vms.len() > 1 {
            // Keep what explains it: both nodes' logs and the fencing history.
            let history = lab
                .exec(to, &["stonith_admin", "--history", "*", "--verbose"])
                .stdout;
            panic!(
                "{guest} runs twice: {vms:?}\nfencing history on {to}:\n{history}\n{}\nwhole logs kept in {}",
                lab.logs(),
                lab.keep_logs().display()
            );
        }
        if fenced.is_none() && !vms.iter().any(|(n, _)| n == from) {
            fenced = Some(killed.elapsed());
        }
        fenced.is_some()
    });
    lab.service_answers(to, guest);
    NodeLoss {
        fenced: fenced.unwrap_or(moved),
        moved,
        answering: killed.elapsed(),
    }
}
