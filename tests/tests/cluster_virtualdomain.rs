//! The baseline of issue 10's benchmark works: the same guest under the stock
//! `ocf:heartbeat:VirtualDomain` agent (libvirtd on every node, `monitor_scripts`
//! watching svc through the serial console, monitor every 1 s) fails over when svc is
//! killed: guest and IP move to n2, svc answers there, and `down` leaves nothing (QEMU
//! under libvirtd included). So the benchmark's baseline cannot break silently.
//!
//! `cargo build --workspace --bins && cargo test -p vesper-e2e --test cluster_virtualdomain`

use std::time::{Duration, Instant};

use vesper_e2e::cluster::{note, ClusterLab};
use vesper_e2e::virtualdomain::{self, Console};

const GUEST: &str = "web1";
const IP: &str = "web1-ip";

#[test]
fn virtualdomain_fails_over_when_the_service_dies() {
    let started = Instant::now();
    let args = virtualdomain::up_args("1s");
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let lab = ClusterLab::up("vdom", 2, &args);
    let footprint = lab.footprint();
    note(&format!(
        "up (with libvirtd) in {:.1} s",
        lab.up_time.as_secs_f64()
    ));

    let s = lab.wait_started(&[GUEST, IP], "n1", Duration::from_secs(180));
    assert!(
        s.resource(GUEST)
            .is_some_and(|r| r.agent.contains("VirtualDomain")),
        "{}",
        s.summary()
    );
    virtualdomain::service_answers(&lab, "n1", GUEST, Duration::from_secs(60));
    let virsh = lab.exec(
        "n1",
        &["virsh", "--connect", "qemu:///system", "domstate", GUEST],
    );
    assert!(virsh.stdout.contains("running"), "{virsh:?}");

    let f = virtualdomain::measure(
        &lab,
        Console::Libvirt,
        GUEST,
        &[GUEST, IP],
        "n1",
        "n2",
        Duration::from_secs(120),
    );
    note(&format!(
        "VirtualDomain failover: failure recorded {:.2} s, running on n2 {:.2} s, svc answering {:.2} s",
        f.detected.as_secs_f64(),
        f.moved.as_secs_f64(),
        f.answering.as_secs_f64()
    ));
    let s = lab.status("n2").expect("crm_mon");
    assert!(
        s.failures
            .iter()
            .any(|x| x.node == "n1" && x.op_key.starts_with("web1_monitor")),
        "the failed monitor is recorded: {}",
        s.summary()
    );
    // The domain left n1 and runs on n2; the address went with it.
    let n1 = lab.exec(
        "n1",
        &["virsh", "--connect", "qemu:///system", "list", "--name"],
    );
    assert!(!n1.stdout.contains(GUEST), "{n1:?}");
    let ip = lab.exec("n2", &["ip", "-br", "addr", "show", "eth0"]);
    assert!(ip.stdout.contains(vesper_cluster_lab::VIP), "{ip:?}");

    lab.down(&footprint);
    note(&format!(
        "whole test {:.1} s",
        started.elapsed().as_secs_f64()
    ));
}
