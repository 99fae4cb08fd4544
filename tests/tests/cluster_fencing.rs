//! Fencing in a real Pacemaker cluster (tools/cluster's lab with cib/events.crm and
//! cib/fencing.crm: a `fence_vesper` device per node, aimed at that node's vesperd): a
//! node whose corosync is killed is fenced (its guest powered off through its vesperd)
//! before the guest starts on the other node, and never runs twice; `stonith_admin`
//! fences a node by hand, a reboot done as off.

use std::time::Duration;

use vesper_e2e::cluster::{note, ClusterLab};
use vesper_e2e::cluster_fence::{fencing_cibs, measure_node_loss};

const GUEST: &str = "web1";
const IP: &str = "web1-ip";

#[test]
fn a_lost_node_is_fenced_through_its_vesperd_and_its_guest_moves() {
    let cibs = fencing_cibs();
    let args: Vec<&str> = cibs.iter().map(String::as_str).collect();
    let lab = ClusterLab::up("fence", 2, &args);
    let footprint = lab.footprint();
    let s = lab.wait_started(&[GUEST, IP], "n1", Duration::from_secs(240));
    // Each node's device runs on the other node.
    for dev in ["fence-n1", "fence-n2"] {
        let r = s.resource(dev);
        assert!(
            r.is_some_and(|r| r.agent == "stonith:fence_vesper"),
            "{}",
            s.summary()
        );
    }
    lab.wait_started(&["fence-n1"], "n2", Duration::from_secs(30));
    lab.wait_started(&["fence-n2"], "n1", Duration::from_secs(30));
    lab.service_answers("n1", GUEST);

    // Whole-node loss: n1's corosync dies; n2 fences n1 (web1 powered off on n1's
    // vesperd), then starts web1 itself.
    let before = lab.guest_vms(GUEST);
    assert_eq!(before.len(), 1, "{before:?}");
    let loss = measure_node_loss(
        &lab,
        GUEST,
        &[GUEST, IP],
        "n1",
        "n2",
        Duration::from_secs(120),
    );
    note(&format!(
        "corosync killed -> guest fenced on n1 {:.2} s, -> running on n2 {:.2} s, -> svc answering {:.2} s",
        loss.fenced.as_secs_f64(),
        loss.moved.as_secs_f64(),
        loss.answering.as_secs_f64()
    ));
    assert!(loss.fenced <= loss.moved, "fenced before started: {loss:?}");
    let s = lab.status("n2").expect("crm_mon on n2");
    assert_eq!(s.nodes.get("n1"), Some(&false), "{}", s.summary());
    let vms = lab.guest_vms(GUEST);
    assert!(
        vms.len() == 1 && vms[0].0 == "n2",
        "only n2 runs web1: {vms:?}"
    );
    // The fencing reached n2's event stream as a cluster alert.
    lab.wait_events(
        "n2",
        &["--kind", "cluster"],
        "the fencing of n1",
        Duration::from_secs(30),
        |ev| {
            ev.iter().any(|e| {
                let a = &e["payload"]["alert"];
                a["kind"] == "fencing" && a["node"] == "n1" && a["rc"] == "0"
            })
        },
    );

    // n1 back; then fence n2 by hand from n1. A reboot is done as off: the guest stays
    // off on n2 and the cluster starts it on n1.
    lab.revive("n1", Duration::from_secs(60));
    let on_n2 = lab.guest_vms(GUEST)[0].1;
    let out = lab.exec(
        "n1",
        &["stonith_admin", "--reboot", "n2", "--tolerance", "0"],
    );
    assert_eq!(out.code, 0, "stonith_admin: {out:?}\n{}", lab.logs());
    assert!(
        !std::path::Path::new(&format!("/proc/{on_n2}")).exists(),
        "web1's VM on n2 is gone once stonith_admin returns"
    );
    lab.wait_started(&[GUEST, IP], "n1", Duration::from_secs(120));
    let vms = lab.guest_vms(GUEST);
    assert!(
        vms.len() == 1 && vms[0].0 == "n1",
        "only n1 runs web1: {vms:?}"
    );
    let history = lab.exec("n1", &["stonith_admin", "--history", "n2"]).ok();
    assert!(history.stdout.contains("n2"), "{history:?}");

    lab.down(&footprint);
}
