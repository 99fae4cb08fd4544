//! Faults in a real Pacemaker cluster (tools/cluster's lab with cib/events.crm, the
//! event bridge and alerts, and cib/fencing.crm): one incident reported twice is one
//! recovery, and the event stream shows the bridge's decision and the cluster's alerts;
//! a resource for a guest vesperd cannot run fails clearly and leaves the rest alone;
//! vesperd killed mid-failover; the network cut during recovery. The guest never runs
//! on two nodes at once, and `down` leaves nothing.
//!
//! The tests run one after another (a lock): two labs of TCG guests on two cores would
//! time each other out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::cluster::{note, ClusterLab};
use vesper_e2e::cluster_fence::fencing_cibs;

const GUEST: &str = "web1";
const IP: &str = "web1-ip";

static ONE_LAB: Mutex<()> = Mutex::new(());

fn up(tag: &str) -> ClusterLab {
    let cibs = fencing_cibs();
    let args: Vec<&str> = cibs.iter().map(String::as_str).collect();
    let lab = ClusterLab::up(tag, 2, &args);
    lab.wait_started(&[GUEST, IP], "n1", Duration::from_secs(240));
    lab.wait_started(&["fence-n1"], "n2", Duration::from_secs(60));
    lab.wait_started(&["fence-n2"], "n1", Duration::from_secs(60));
    lab.service_answers("n1", GUEST);
    lab
}

/// Waits until `resources` run on one node, asserting all along that the guest's VM
/// never runs on two; that node.
fn converge(lab: &ClusterLab, resources: &[&str], timeout: Duration) -> String {
    let deadline = Instant::now() + timeout;
    loop {
        let vms = lab.guest_vms(GUEST);
        assert!(vms.len() <= 1, "{GUEST} runs twice: {vms:?}");
        for n in &lab.nodes {
            if let Ok(s) = lab.status(n) {
                if resources.iter().all(|r| s.started_on(r, n)) && vms.iter().any(|v| &v.0 == n) {
                    return n.clone();
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "{resources:?} not running on one node after {timeout:?}: {:?}\n{}",
            lab.status(&lab.nodes[0]).map(|s| s.summary()),
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Every node's `cluster` events about `op` of `rsc` that succeeded after `since_ns`.
fn alerts(lab: &ClusterLab, rsc: &str, op: &str, since_ns: u64) -> Vec<Value> {
    lab.nodes
        .iter()
        .flat_map(|n| lab.events(n, &["--kind", "cluster"]))
        .filter(|e| {
            let a = &e["payload"]["alert"];
            a["rsc"] == rsc
                && a["task"] == op
                && a["rc"] == "0"
                && e["time_ns"].as_u64().unwrap_or(0) > since_ns
        })
        .collect()
}

fn now_ns() -> u64 {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    u64::try_from(d.as_nanos()).unwrap()
}

#[test]
fn one_incident_seen_twice_is_one_recovery_and_the_stream_shows_both_sides() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = up("fxa");
    let footprint = lab.footprint();

    // The service is killed, then the VM dies: two failures of one incident.
    let since = now_ns();
    let vm = lab.guest_vms(GUEST)[0].1;
    lab.hand("n1", GUEST, "kill 9 svc", "killed svc");
    vesper_cluster_lab::procs::signal(vm, nix::sys::signal::Signal::SIGKILL);
    // Until the killed VM is gone, n1's view (web1 started, its VM there) is the one from
    // before the incident, and converge would take it for the end.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lab.guest_vms(GUEST).iter().any(|(_, pid)| *pid == vm) {
        assert!(
            Instant::now() < deadline,
            "the killed VM {vm} is still there"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(converge(&lab, &[GUEST, IP], Duration::from_secs(120)), "n2");
    lab.service_answers("n2", GUEST);

    // The bridge on n1 reported once: its decision is in n1's stream...
    let decisions: Vec<Value> = lab
        .events("n1", &["--kind", "decision"])
        .into_iter()
        .filter(|e| e["source"]["origin"] == "bridge" && e["source"]["node"] == "n1")
        .collect();
    assert_eq!(decisions.len(), 1, "one report: {decisions:#?}");
    let d = &decisions[0];
    assert_eq!(d["guest"], GUEST);
    assert_eq!(d["payload"]["action"], "fail_resource");
    assert_eq!(d["payload"]["resource"], GUEST);
    assert_eq!(d["payload"]["event_kind"], "service_exit");
    assert_eq!(d["payload"]["ok"], true, "{d:#}");
    // ...beside the cluster's alerts: web1 stopped on n1 and started on n2, once each.
    let starts = lab.wait_events(
        "n2",
        &["--kind", "cluster", "--guest", GUEST],
        "web1's start on n2",
        Duration::from_secs(30),
        |ev| ev.iter().any(|e| e["payload"]["alert"]["task"] == "start"),
    );
    note(&format!("n2's cluster events for web1: {}", starts.len()));
    let starts = alerts(&lab, GUEST, "start", since);
    assert_eq!(starts.len(), 1, "one recovery: {starts:#?}");
    assert_eq!(starts[0]["payload"]["alert"]["node"], "n2");
    assert_eq!(alerts(&lab, GUEST, "stop", since).len(), 1);

    // A resource for a guest this vesperd cannot run (no kit there): its start fails
    // with a clear reason on each node, and web1 is left alone.
    let vm = lab.guest_vms(GUEST)[0].clone();
    let vesper = vesper_e2e::bin_dir().join("vesper").display().to_string();
    let add = lab.exec(
        "n1",
        &[
            "crm",
            "configure",
            "primitive",
            "ghost",
            "ocf:vesper:vesper",
            "params",
            "guest=ghost",
            &format!("vesper={vesper}"),
            "socket=/run/vesper/vesperd.sock",
            "kit_dir=/nonexistent/kit",
            "op",
            "monitor",
            "interval=5s",
        ],
    );
    assert_eq!(add.code, 0, "{add:?}");
    let deadline = Instant::now() + Duration::from_secs(60);
    let s = loop {
        let s = lab.status("n2").expect("crm_mon");
        let failed: Vec<_> = s
            .failures
            .iter()
            .filter(|f| f.op_key.starts_with("ghost_start"))
            .collect();
        if failed.len() == 2 && s.resource("ghost").is_some_and(|r| r.nodes.is_empty()) {
            for f in failed {
                assert!(
                    f.exit_reason
                        .contains("kit_dir /nonexistent/kit is not a directory"),
                    "{f:?}"
                );
            }
            break s;
        }
        assert!(Instant::now() < deadline, "{}", s.summary());
        std::thread::sleep(Duration::from_millis(250));
    };
    assert!(
        s.started_on(GUEST, "n2") && s.started_on(IP, "n2"),
        "{}",
        s.summary()
    );
    assert!(
        s.nodes.values().all(|on| *on),
        "nobody fenced: {}",
        s.summary()
    );
    assert_eq!(lab.guest_vms(GUEST), vec![vm], "web1 untouched");
    let human = lab.exec("n2", &["crm_mon", "-1"]).ok();
    assert!(
        human.stdout.contains("kit_dir /nonexistent/kit"),
        "{human:?}"
    );

    lab.down(&footprint);
}

#[test]
fn vesperd_killed_mid_failover_the_guest_ends_up_on_the_other_node_once() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = up("fxb");
    let footprint = lab.footprint();

    lab.hand("n1", GUEST, "kill 9 svc", "killed svc");
    lab.kill_daemon("n1", "vesperd");
    // The guest's VM outlives its vesperd: the stop on n1 cannot be confirmed, so n1 is
    // fenced, and fence_vesper cannot reach n1's vesperd either until it is back (a
    // service manager would restart it). Meanwhile web1 must not start on n2.
    let until = Instant::now() + Duration::from_secs(4);
    while Instant::now() < until {
        let vms = lab.guest_vms(GUEST);
        assert!(vms.len() == 1 && vms[0].0 == "n1", "{vms:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    lab.start_daemon("n1", "vesperd");
    let at = converge(&lab, &[GUEST, IP], Duration::from_secs(150));
    assert_eq!(at, "n2");
    lab.service_answers("n2", GUEST);

    lab.down(&footprint);
}

#[test]
fn a_network_cut_during_recovery_ends_with_the_guest_on_one_node() {
    let _one = ONE_LAB.lock().unwrap_or_else(|e| e.into_inner());
    let lab = up("fxc");
    let footprint = lab.footprint();

    // The cable of n2 pulled (its port on the lab's bridge down: n2's eth0 loses its
    // carrier; IPaddr2 setting the link up cannot undo that) while web1 is recovering.
    let cut = |state: &str| {
        let out = std::process::Command::new("ip")
            .args(["-n", &lab.lab.bridge_netns(), "link", "set", "n2", state])
            .output()
            .expect("ip");
        assert!(out.status.success(), "{out:?}");
    };
    lab.hand("n1", GUEST, "kill 9 svc", "killed svc");
    cut("down");
    // Each side loses the other (corosync's token timeout); with two_node each keeps
    // quorum and sets out to fence the other (the fence devices reach the vesperds
    // outside the cut network). Until both have seen the split, a node's view is the
    // one from before the cable went and proves nothing.
    let deadline = Instant::now() + Duration::from_secs(60);
    let split = |n: &str, other: &str| {
        lab.status(n)
            .is_ok_and(|s| s.nodes.get(other) == Some(&false))
    };
    while !(split("n1", "n2") && split("n2", "n1")) {
        assert!(lab.guest_vms(GUEST).len() <= 1, "{GUEST} runs twice");
        assert!(
            Instant::now() < deadline,
            "no split seen after 60 s\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    // fencing.crm delays the fencing of n2: n2 fences n1 first, and n1's own attempt
    // finds n1 fenced when its delay ends (a fenced node fences nobody). So web1 runs
    // on n2, whatever each side had recorded of the failure, and only there.
    let at = converge(&lab, &[GUEST, IP], Duration::from_secs(120));
    assert_eq!(at, "n2", "{:?}", lab.status("n2").map(|s| s.summary()));
    let fenced = lab
        .vesper("n1", &["--json", "vm", "fenced", GUEST])
        .result();
    assert_eq!(fenced["fenced"], true, "{fenced}");
    lab.service_answers("n2", GUEST);
    // Past n1's fence delay and its refused attempts: web1 stays up on n2, once.
    let hold = Instant::now() + Duration::from_secs(10);
    while Instant::now() < hold {
        let vms = lab.guest_vms(GUEST);
        assert!(
            vms.len() == 1 && vms[0].0 == "n2",
            "{GUEST} not on n2 alone during the cut: {vms:?}\n{}",
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    cut("up");
    // The sides merge again: web1 still runs once, both nodes online.
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let vms = lab.guest_vms(GUEST);
        assert!(vms.len() <= 1, "{GUEST} runs twice: {vms:?}");
        let s = lab.status(&at);
        if s.as_ref()
            .is_ok_and(|s| s.ready(&lab.nodes) && s.started_on(GUEST, &at) && s.started_on(IP, &at))
        {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not merged: {:?}\n{}",
            s.map(|s| s.summary()),
            lab.logs()
        );
        std::thread::sleep(Duration::from_millis(250));
    }

    lab.down(&footprint);
}
