//! Whole-node loss in a real Pacemaker cluster (tools/cluster's lab, 2 nodes, with
//! cib/events.crm and cib/fencing.crm): time from node A's corosync killed (SIGKILL) to
//! A fenced (the guest's VM on A powered off through A's vesperd by fence_vesper), to the
//! guest and its IP running on B, and to its service answering there. A is brought back
//! (corosync, and pacemakerd if it exited) after each loss and the next loss is the other
//! node's. The baseline, in the same lab and run: the watched service killed in the
//! guest (event-driven failover through the bridge).
//!
//! `cargo build --release --workspace --bins && cargo bench -p vesper-e2e --bench cluster_node_loss`
//! (`VESPER_BENCH_ROUNDS=N`, default 10, of each).

use std::collections::BTreeMap;
use std::time::Duration;

use vesper_e2e::cluster::{measure_failover, ClusterLab};
use vesper_e2e::cluster_bench::{failover_series, pct};
use vesper_e2e::cluster_fence::{fencing_cibs, measure_node_loss};

const GUEST: &str = "web1";
const IP: &str = "web1-ip";

fn main() {
    let n: usize = std::env::var("VESPER_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let cibs = fencing_cibs();
    let args: Vec<&str> = cibs.iter().map(String::as_str).collect();
    let lab = ClusterLab::up("nloss", 2, &args);
    let (mut from, mut to) = ("n1", "n2");
    lab.wait_started(&[GUEST, IP], from, Duration::from_secs(240));
    lab.wait_started(&["fence-n1"], "n2", Duration::from_secs(60));
    lab.wait_started(&["fence-n2"], "n1", Duration::from_secs(60));

    let (mut fenced, mut moved, mut answering) = (Vec::new(), Vec::new(), Vec::new());
    // fencing.crm delays the fencing of n2 (pcmk_delay_base, to decide splits): each
    // lost node apart as well.
    let mut by_lost: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    for i in 0..n {
        lab.service_answers(from, GUEST);
        let l = measure_node_loss(
            &lab,
            GUEST,
            &[GUEST, IP],
            from,
            to,
            Duration::from_secs(180),
        );
        println!(
            "node loss {:2} {from} -> {to}: fenced {:6.2} s, running on {to} {:6.2} s, svc answering {:6.2} s",
            i + 1,
            l.fenced.as_secs_f64(),
            l.moved.as_secs_f64(),
            l.answering.as_secs_f64()
        );
        fenced.push(l.fenced.as_secs_f64());
        moved.push(l.moved.as_secs_f64());
        answering.push(l.answering.as_secs_f64());
        by_lost
            .entry(from)
            .or_default()
            .push(l.answering.as_secs_f64());
        lab.revive(from, Duration::from_secs(120));
        std::mem::swap(&mut from, &mut to);
    }

    let svc = failover_series(
        &lab,
        "service death",
        &[GUEST, IP],
        (from, to),
        n,
        |from, to| {
            lab.service_answers(from, GUEST);
            measure_failover(
                &lab,
                GUEST,
                &[GUEST, IP],
                from,
                to,
                Duration::from_secs(180),
            )
        },
    );
    let svc = svc.answering;

    println!(
        "\n{n} node losses and {n} service deaths, guest kernel {}, up took {:.1} s",
        vesper_e2e::kit().release,
        lab.up_time.as_secs_f64()
    );
    let p50_loss = pct(&answering, 0.5);
    let p50_svc = pct(&svc, 0.5);
    for (what, v) in [
        ("corosync kill -> fenced", &fenced),
        ("corosync kill -> running on B", &moved),
        ("corosync kill -> svc answering on B", &answering),
        ("service death -> svc answering on B", &svc),
    ] {
        println!(
            "  {what:36} p50 {:6.2} s  max {:6.2} s",
            pct(v, 0.5),
            pct(v, 1.0)
        );
    }
    for (lost, v) in &by_lost {
        let delay = if *lost == "n2" {
            "fence delay 5 s"
        } else {
            "no fence delay"
        };
        let what = format!("{lost} lost ({delay}) -> svc answering");
        println!(
            "  {what:36} p50 {:6.2} s  max {:6.2} s  ({:.1}x)",
            pct(v, 0.5),
            pct(v, 1.0),
            pct(v, 0.5) / p50_svc
        );
    }
    println!(
        "  node loss / service death (p50, to the service answering): {:.1}x",
        p50_loss / p50_svc
    );
    let footprint = lab.footprint();
    lab.down(&footprint);
}
