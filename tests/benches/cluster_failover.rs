//! A real Pacemaker cluster (tools/cluster's lab, 2 nodes) failing a Vesper guest over on
//! its *polling* monitor (`ocf:vesper:vesper`, interval 2 s): time from the guest
//! confirming its watched service was killed to Pacemaker recording the failure, and to
//! the guest and its IP address running on the other node. The guest goes back and forth
//! (the failure is cleaned up after each move). The baseline for event-driven recovery.
//!
//! `cargo build --release --workspace --bins && cargo bench -p vesper-e2e --bench cluster_failover`
//! (`VESPER_BENCH_FAILOVERS=N`, default 10; `VESPER_BENCH_CIB=tools/cluster/cib/events.crm`
//! adds the event bridge: the same failovers, event-driven).

use std::time::Duration;

use vesper_e2e::cluster::{measure_failover, ClusterLab};

const GUEST: &str = "web1";
const IP: &str = "web1-ip";

const MONITOR_INTERVAL: Duration = Duration::from_secs(2);

/// A pseudo-random duration in [0, max) (the clock's nanoseconds; no RNG crate needed).
fn jitter(max: Duration) -> Duration {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    max.mul_f64(f64::from(ns) / 1e9)
}

fn pct(v: &mut [f64], q: f64) -> f64 {
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

fn main() {
    let n: usize = std::env::var("VESPER_BENCH_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    // Relative to the repository (cargo runs benches in tests/).
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cib = std::env::var("VESPER_BENCH_CIB")
        .ok()
        .map(|c| root.join(c).display().to_string());
    let extra: Vec<&str> = cib.iter().flat_map(|c| ["--cib", c.as_str()]).collect();
    let lab = ClusterLab::up("bench", 2, &extra);
    let (mut from, mut to) = ("n1", "n2");
    lab.wait_started(&[GUEST, IP], from, Duration::from_secs(240));
    let (mut detected, mut moved, mut answering) = (Vec::new(), Vec::new(), Vec::new());
    for i in 0..n {
        lab.service_answers(from, GUEST);
        // Kill at a random phase of the 2 s monitor: the steps before are regular enough
        // to lock onto one phase (every kill just after a monitor: ~1.8 s each time).
        std::thread::sleep(jitter(MONITOR_INTERVAL));
        let f = measure_failover(
            &lab,
            GUEST,
            &[GUEST, IP],
            from,
            to,
            Duration::from_secs(180),
        );
        println!(
            "failover {:2} {from} -> {to}: failure recorded {:6.2} s, running on {to} {:6.2} s, svc answering {:6.2} s",
            i + 1,
            f.detected.as_secs_f64(),
            f.moved.as_secs_f64(),
            f.answering.as_secs_f64()
        );
        answering.push(f.answering.as_secs_f64());
        detected.push(f.detected.as_secs_f64());
        moved.push(f.moved.as_secs_f64());
        // Forget the failure, so the guest may come back to `from` next time.
        lab.exec(to, &["crm_resource", "--cleanup", "--resource", GUEST])
            .ok();
        std::mem::swap(&mut from, &mut to);
        lab.wait_started(&[GUEST, IP], from, Duration::from_secs(60));
    }
    println!(
        "\n{n} failovers, monitor every 2 s, extra CIB {}, guest kernel {}, up took {:.1} s",
        cib.as_deref().unwrap_or("none"),
        vesper_e2e::kit().release,
        lab.up_time.as_secs_f64()
    );
    for (what, v) in [
        ("failure recorded", &mut detected),
        ("running on the other node", &mut moved),
        ("service answering there", &mut answering),
    ] {
        println!(
            "  kill -> {what:26} p50 {:6.2} s  max {:6.2} s",
            pct(v, 0.5),
            pct(v, 1.0)
        );
    }
    let footprint = lab.footprint();
    lab.down(&footprint);
}
