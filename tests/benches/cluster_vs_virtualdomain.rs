//! Issue 10's comparison, in one run: time from the watched service dying in the guest on
//! node A to the resource running on node B and its service answering there, for
//!
//! - Vesper's event path: ocf:vesper:vesper (monitor 2 s) with the event bridge
//!   (cib/base.crm + cib/events.crm), which reports the failure the moment vesperd sees it;
//! - Vesper polling only: cib/base.crm, the failure seen at the next 2 s monitor;
//! - the stock ocf:heartbeat:VirtualDomain agent running the same guest under libvirt
//!   (cib/virtualdomain.crm), svc watched by its monitor_scripts (tools/ocf/vd_svc_check),
//!   monitor every 10 s (its shipped default) and every 1 s.
//!
//! Each variant on a fresh 2-node lab, its guest going back and forth; every kill at a
//! random phase of the variant's monitor interval. Prints per-variant p50/max and a
//! side-by-side table with ratios baseline ÷ Vesper's event path.
//!
//! `cargo build --release --workspace --bins && cargo bench -p vesper-e2e --bench cluster_vs_virtualdomain`
//! (`VESPER_BENCH_FAILOVERS=N`, default 10; `VESPER_BENCH_VARIANTS=bridge,vd1` runs only
//! those of bridge, polling, vd10, vd1).

use std::time::Duration;

use vesper_e2e::cluster::ClusterLab;
use vesper_e2e::cluster_bench::{failover_series, jitter, pct, Series, CLOCK_NAMES};
use vesper_e2e::virtualdomain::{self, Console};

const GUEST: &str = "web1";
const IP: &str = "web1-ip";

/// One configuration of the cluster.
struct Variant {
    key: &'static str,
    label: &'static str,
    /// Lab tag (a-z).
    tag: &'static str,
    console: Console,
    /// The guest resource's monitor interval: kills land at a random phase of it.
    monitor: Duration,
}

const VARIANTS: &[Variant] = &[
    Variant {
        key: "bridge",
        label: "Vesper event bridge",
        tag: "vbrid",
        console: Console::Vesper,
        monitor: Duration::from_secs(2),
    },
    Variant {
        key: "polling",
        label: "Vesper polling 2 s",
        tag: "vpoll",
        console: Console::Vesper,
        monitor: Duration::from_secs(2),
    },
    Variant {
        key: "vd10",
        label: "VirtualDomain 10 s",
        tag: "vdten",
        console: Console::Libvirt,
        monitor: Duration::from_secs(10),
    },
    Variant {
        key: "vd1",
        label: "VirtualDomain 1 s",
        tag: "vdone",
        console: Console::Libvirt,
        monitor: Duration::from_secs(1),
    },
];

fn up_args(v: &Variant) -> Vec<String> {
    let root = vesper_cluster_lab::repo_root();
    let events = root
        .join("tools/cluster/cib/events.crm")
        .display()
        .to_string();
    match v.key {
        "bridge" => vec!["--cib".into(), events],
        "polling" => Vec::new(),
        "vd10" => virtualdomain::up_args("10s"),
        _ => virtualdomain::up_args("1s"),
    }
}

/// `n` failovers on a fresh lab.
fn run(v: &Variant, n: usize) -> Series {
    let args = up_args(v);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lab = ClusterLab::up(v.tag, 2, &args);
    let footprint = lab.footprint();
    println!(
        "\n{} (up in {:.1} s, guest kernel {})",
        v.label,
        lab.up_time.as_secs_f64(),
        vesper_e2e::kit().release
    );
    lab.wait_started(&[GUEST, IP], "n1", Duration::from_secs(240));
    let series = failover_series(
        &lab,
        "  failover",
        &[GUEST, IP],
        ("n1", "n2"),
        n,
        |from, to| {
            v.console.service_answers(&lab, from, GUEST);
            std::thread::sleep(jitter(v.monitor));
            virtualdomain::measure(
                &lab,
                v.console,
                GUEST,
                &[GUEST, IP],
                from,
                to,
                Duration::from_secs(180),
            )
        },
    );
    series.print("  ");
    lab.down(&footprint);
    series
}

fn main() {
    let n: usize = std::env::var("VESPER_BENCH_FAILOVERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let only = std::env::var("VESPER_BENCH_VARIANTS").unwrap_or_default();
    let chosen: Vec<&Variant> = VARIANTS
        .iter()
        .filter(|v| only.is_empty() || only.split(',').any(|k| k.trim() == v.key))
        .collect();
    let results: Vec<(&Variant, Series)> = chosen.iter().map(|v| (*v, run(v, n))).collect();

    println!(
        "\n{n} failovers per variant, p50 / max in seconds from the kill confirmed in the guest:\n"
    );
    let mut head = "| kill → |".to_string();
    let mut rule = "|---|".to_string();
    for (v, _) in &results {
        head += &format!(" {} |", v.label);
        rule += "---|";
    }
    let vesper = results.iter().find(|(v, _)| v.key == "bridge");
    if let Some((base, _)) = vesper {
        for (v, _) in results.iter().filter(|(v, _)| v.key != base.key) {
            head += &format!(" {} ÷ bridge |", v.label);
            rule += "---|";
        }
    }
    println!("{head}\n{rule}");
    for (i, name) in CLOCK_NAMES.iter().enumerate() {
        let clock = |s: &Series| s.clocks()[i].1.to_vec();
        let mut row = format!("| {name} |");
        for (_, r) in &results {
            let r = clock(r);
            row += &format!(" {:.2} / {:.2} |", pct(&r, 0.5), pct(&r, 1.0));
        }
        if let Some((base, b)) = vesper {
            let b = clock(b);
            for (_, r) in results.iter().filter(|(v, _)| v.key != base.key) {
                let r = clock(r);
                row += &format!(
                    " {:.1}× / {:.1}× |",
                    pct(&r, 0.5) / pct(&b, 0.5),
                    pct(&r, 1.0) / pct(&b, 1.0)
                );
            }
        }
        println!("{row}");
    }
}
