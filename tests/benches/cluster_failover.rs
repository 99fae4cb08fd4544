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
use vesper_e2e::cluster_bench::{failover_series, jitter};

const GUEST: &str = "web1";
const IP: &str = "web1-ip";

const MONITOR_INTERVAL: Duration = Duration::from_secs(2);

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
    lab.wait_started(&[GUEST, IP], "n1", Duration::from_secs(240));
    let series = failover_series(
        &lab,
        "failover",
        &[GUEST, IP],
        ("n1", "n2"),
        n,
        |from, to| {
            lab.service_answers(from, GUEST);
            std::thread::sleep(jitter(MONITOR_INTERVAL));
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
    println!(
        "\n{n} failovers, monitor every 2 s, extra CIB {}, guest kernel {}, up took {:.1} s",
        cib.as_deref().unwrap_or("none"),
        vesper_e2e::kit().release,
        lab.up_time.as_secs_f64()
    );
    series.print("  ");
    let footprint = lab.footprint();
    lab.down(&footprint);
}
