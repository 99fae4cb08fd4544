//! A real Pacemaker/Corosync cluster (tools/cluster's lab: namespaced nodes on this
//! machine, each with its own vesperd) running a Vesper guest as an `ocf:vesper:vesper`
//! resource with an IP address that depends on it: the service killed inside the guest on
//! node 1 moves the guest and its address to node 2; `down` returns only once every
//! process of the lab is gone (the daemons, the guest's QEMU, a command run with
//! `exec`), and leaves nothing behind, also after an `up` that failed half-way.

use std::time::Duration;

use vesper_e2e::cluster::{leftovers, measure_failover, note, processes, ClusterLab, Footprint};

const GUEST: &str = "web1";
const IP: &str = "web1-ip";

#[test]
fn a_service_killed_in_the_guest_moves_it_and_its_address_to_the_other_node() {
    let lab = ClusterLab::up("fo", 2, &[]);
    note(&format!(
        "up took {:.1} s (2 nodes)",
        lab.up_time.as_secs_f64()
    ));
    let footprint = lab.footprint();
    assert_eq!(
        footprint.netns.len(),
        3,
        "a bridge and two nodes: {footprint:?}"
    );

    // A second up of the same lab is refused, and changes nothing.
    let again = lab.lab_cli(&["up", "--no-install"]);
    assert!(
        again.code != 0 && again.stderr.contains("already up"),
        "{again:?}"
    );

    // The location preference puts the guest on n1, the IP follows it.
    let s = lab.wait_started(&[GUEST, IP], "n1", Duration::from_secs(240));
    assert!(s.ready(&lab.nodes), "{}", s.summary());
    assert_eq!(
        s.resource(GUEST).map(|r| r.agent.as_str()),
        Some("ocf:vesper:vesper")
    );
    let addrs = lab.exec("n1", &["ip", "-br", "addr", "show", "eth0"]).ok();
    assert!(addrs.stdout.contains(vesper_cluster_lab::VIP), "{addrs:?}");
    // Each node has its own vesperd: the guest runs only in n1's.
    assert_eq!(lab.vesper("n1", &["vm", "status", GUEST]).code, 0);
    assert_eq!(lab.vesper("n2", &["vm", "status", GUEST]).code, 3);

    lab.service_answers("n1", GUEST);
    let f = measure_failover(
        &lab,
        GUEST,
        &[GUEST, IP],
        "n1",
        "n2",
        Duration::from_secs(180),
    );
    note(&format!(
        "kill -> failure recorded {:.2} s, -> {GUEST} and {IP} running on n2 {:.2} s, -> svc answering there {:.2} s (monitor interval 2 s)",
        f.detected.as_secs_f64(),
        f.moved.as_secs_f64(),
        f.answering.as_secs_f64()
    ));

    let s = lab.status("n2").expect("crm_mon on n2");
    let failure = s
        .failures
        .iter()
        .find(|f| f.node == "n1" && f.op_key.starts_with("web1_monitor"))
        .unwrap_or_else(|| panic!("no failed monitor of {GUEST} on n1: {s:?}"));
    assert!(
        failure.exit_reason.contains("Vesper saw a failure") && failure.exit_reason.contains("svc"),
        "the agent says what Vesper saw: {failure:?}"
    );
    // The guest was stopped on n1 and runs on n2; the address moved with it.
    assert_eq!(lab.vesper("n1", &["vm", "status", GUEST]).code, 3);
    assert_eq!(lab.vesper("n2", &["vm", "status", GUEST]).code, 0);
    let n1 = lab.exec("n1", &["ip", "-br", "addr", "show", "eth0"]).ok();
    let n2 = lab.exec("n2", &["ip", "-br", "addr", "show", "eth0"]).ok();
    assert!(!n1.stdout.contains(vesper_cluster_lab::VIP), "{n1:?}");
    assert!(n2.stdout.contains(vesper_cluster_lab::VIP), "{n2:?}");
    // Reachable across the lab's bridge, from the node it left.
    lab.exec(
        "n1",
        &["ping", "-c", "1", "-W", "5", vesper_cluster_lab::VIP],
    )
    .ok();

    lab.down(&footprint);
}

#[test]
fn down_returns_only_once_every_process_of_the_lab_is_gone() {
    let lab = ClusterLab::up("gone", 2, &[]);
    let footprint = lab.footprint();
    // The guest's QEMU under n1's vesperd, and a command run on n2 with `exec`.
    lab.wait_started(&[GUEST], "n1", Duration::from_secs(240));
    let mut sleeper = std::process::Command::new(vesper_e2e::cluster::lab_bin())
        .args(["--lab", &lab.lab.name, "exec", "n2", "sleep", "600"])
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("exec sleep");
    // Reaped as soon as it ends, as a shell reaps its commands (exec execs into it).
    let sleeper = std::thread::spawn(move || sleeper.wait().expect("wait for exec"));
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !processes(&footprint).iter().any(|p| p.comm == "sleep") {
        assert!(
            std::time::Instant::now() < deadline,
            "exec's sleep never ran"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let running = processes(&footprint);
    let count = |f: &dyn Fn(&str) -> bool| running.iter().filter(|p| f(&p.comm)).count();
    for daemon in [
        "corosync",
        "pacemakerd",
        "pacemaker-contr",
        "pacemaker-based",
        "vesperd",
    ] {
        assert_eq!(
            count(&|c| c == daemon),
            2,
            "{daemon} on each node: {running:?}"
        );
    }
    assert_eq!(count(&|c| c.starts_with("qemu")), 1, "{running:?}");

    // The check is right after down returns: see ClusterLab::down.
    let started = std::time::Instant::now();
    lab.down(&footprint);
    note(&format!(
        "down of {} processes took {:.1} s",
        running.len(),
        started.elapsed().as_secs_f64()
    ));
    let exec = sleeper.join().expect("exec's waiter");
    assert!(!exec.success(), "exec's sleep was killed: {exec:?}");
}

#[test]
fn down_after_an_up_that_failed_half_way_leaves_nothing() {
    // A vesperd that refuses to start: up has made the network and namespaces, and
    // started nothing that lives, when it stops.
    let fake = tempfile::tempdir().expect("tempdir");
    for (name, body) in [
        (
            "vesperd",
            "echo 'fake vesperd: refusing to run' >&2; exit 3",
        ),
        ("vesper", "exit 0"),
    ] {
        let p = fake.path().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{body}\n")).expect("write");
        std::fs::set_permissions(&p, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .expect("chmod");
    }
    let bin = fake.path().display().to_string();
    let failed = match ClusterLab::try_up("bad", 3, &["--bin-dir", &bin]) {
        Ok(_) => panic!("up with a vesperd that exits succeeded"),
        Err(e) => e.0,
    };
    assert!(
        failed.stderr.contains("start vesperd on n1")
            && failed.stderr.contains("fake vesperd: refusing"),
        "up says which step failed and why: {failed:?}"
    );
    assert!(
        failed.stderr.contains("tools/cluster/down --lab"),
        "and what to do: {failed:?}"
    );

    let lab = vesper_cluster_lab::Lab::new(&ClusterLab::name("bad")).unwrap();
    let netns = vesper_cluster_lab::down::leftover_netns(&lab);
    assert_eq!(
        netns.len(),
        4,
        "bridge and three nodes made before the failure: {netns:?}"
    );
    let footprint = Footprint {
        ns: netns
            .iter()
            .filter_map(|n| {
                vesper_cluster_lab::procs::NsId::of_file(
                    &std::path::Path::new(vesper_cluster_lab::NETNS_DIR).join(n),
                )
            })
            .collect(),
        netns,
    };
    let down = std::process::Command::new(vesper_e2e::cluster::lab_bin())
        .args(["--lab", &lab.name, "down"])
        .output()
        .expect("down");
    assert!(down.status.success(), "{down:?}");
    let left = leftovers(&lab, &footprint);
    assert!(left.is_empty(), "left after down: {left:?}");
}
