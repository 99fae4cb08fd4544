//! Probe Listener end to end: probe records reach the host through shared pages.

use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{module, qemu_region, Daemon};

const WAIT: Duration = Duration::from_secs(60);

fn pid_of(reply: &str) -> i64 {
    let line = reply.lines().next().unwrap_or_default();
    let pid = line
        .split("pid=")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .unwrap_or_default();
    pid.trim()
        .parse()
        .unwrap_or_else(|_| panic!("no pid in {line:?}"))
}

#[test]
fn a_killed_watched_service_arrives_as_an_exit_record_with_pid_name_and_signal() {
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);
    d.watch_svc("vm1");
    let pid = pid_of(&d.hand("vm1", "start svc", "started svc"));
    // Another process that is not watched exits too: it must not show up.
    d.hand("vm1", "start other", "started other");
    d.hand("vm1", "kill 9 other", "killed other");
    d.hand("vm1", "kill 9 svc", "killed svc");
    let recs = d.wait_records("vm1", "vesper_exit_probe", "exit", WAIT, |r| !r.is_empty());
    assert_eq!(
        recs.len(),
        1,
        "exactly one record for one watched death: {recs:?}"
    );
    let exit = &recs[0]["decoded"];
    assert_eq!(exit["type"], "exit");
    assert_eq!(exit["comm"], "svc");
    assert_eq!(exit["pid"].as_i64().unwrap(), pid);
    assert_eq!(exit["signal"], 9);
    assert_eq!(recs[0]["urgent"], true);
    let human = d
        .cli(&["relay", "cat", "vm1", "vesper_exit_probe"])
        .ok()
        .stdout;
    assert!(
        human.contains("exit svc") && human.contains("SIGKILL"),
        "{human}"
    );
}

#[test]
fn a_panic_record_is_held_by_the_host_after_the_guest_is_dead() {
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);
    d.cli(&["insmod", "vm1", &module("vesper_panic_probe")])
        .ok();
    d.hand("vm1", "panic", "panicking");
    let deadline = Instant::now() + WAIT;
    loop {
        let list = d.cli(&["--json", "vm", "list"]).ok().json();
        if list["result"]["vms"][0]["state"] == "exited" {
            break;
        }
        assert!(Instant::now() < deadline, "the guest never died");
        std::thread::sleep(Duration::from_millis(100));
    }
    let recs = d.relay_records("vm1", "vesper_panic_probe", "panic");
    assert_eq!(recs.len(), 1, "{recs:?}");
    let p = &recs[0]["decoded"];
    assert_eq!(p["type"], "panic");
    assert!(p["message"].as_str().unwrap().contains("sysrq"), "{p}");
}

fn stress(d: &Daemon, n: u64, params: &[&str]) -> (Vec<Value>, Value) {
    let mut args = vec!["insmod", "vm1"];
    let m = module("vesper_stress");
    args.push(&m);
    let n_param = format!("n={n}");
    args.push(&n_param);
    args.extend_from_slice(params);
    d.cli(&args).ok();
    let deadline = Instant::now() + Duration::from_secs(120);
    while !d
        .cli(&["dmesg", "vm1"])
        .ok()
        .stdout
        .contains("vesper_stress: wrote")
    {
        assert!(Instant::now() < deadline, "stress never finished");
        std::thread::sleep(Duration::from_millis(200));
    }
    d.cli(&["rmmod", "vm1", "vesper_stress"]).ok();
    let recs = d.relay_records("vm1", "vesper_stress", "stress");
    let stat = d.cli(&["--json", "relay", "stat", "vm1"]).ok().json();
    let ch = stat["result"]["channels"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["module"] == "vesper_stress")
        .cloned()
        .expect("stress channel in stat");
    (recs, ch)
}

fn sum(ch: &Value, field: &str) -> u64 {
    ch["cpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c[field].as_u64().unwrap())
        .sum()
}

#[test]
fn no_overwrite_delivers_exactly_n_and_overwrite_accounts_for_every_record() {
    let d = Daemon::start(&[]);
    d.vm_start("vm1");
    let n = 20_000u64;
    let (recs, ch) = stress(&d, n, &[]);
    assert_eq!(recs.len() as u64, n);
    let mut idx: Vec<u64> = recs
        .iter()
        .map(|r| r["decoded"]["index"].as_u64().unwrap())
        .collect();
    idx.sort();
    assert!(idx.iter().copied().eq(0..n), "every index once");
    assert_eq!(sum(&ch, "received"), n);
    assert_eq!(sum(&ch, "lost"), 0);
    assert_eq!(ch["open"], false);

    // Overwrite, two small sub-buffers: whatever the host did not read in time is
    // accounted for as lost or dropped, never silently.
    let d = Daemon::start(&[]);
    d.vm_start("vm1");
    let (recs, ch) = stress(&d, n, &["overwrite=1", "n_subbufs=2"]);
    let (received, lost, dropped) = (sum(&ch, "received"), sum(&ch, "lost"), sum(&ch, "dropped"));
    assert_eq!(received, recs.len() as u64);
    assert_eq!(
        received + lost + dropped,
        n,
        "received {received} + lost {lost} + dropped {dropped}"
    );
}

#[test]
fn the_oom_killers_victim_arrives_with_its_pid_name_and_memory() {
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);
    d.cli(&["insmod", "vm1", &module("vesper_oom_probe")]).ok();
    let pid = pid_of(&d.hand("vm1", "oom", "oom hog"));
    let recs = d.wait_records("vm1", "vesper_oom_probe", "oom", WAIT, |r| !r.is_empty());
    let o = &recs[0]["decoded"];
    assert_eq!(o["type"], "oom");
    assert_eq!(o["comm"], "hog");
    assert_eq!(o["pid"].as_i64().unwrap(), pid);
    assert!(o["anon_rss_kb"].as_u64().unwrap() > 100 * 1024, "{o}");
}

#[test]
fn a_relayfs_probe_is_exported_by_adding_two_calls() {
    let d = Daemon::start(&[]);
    d.vm_start("vm1");
    d.cli(&["insmod", "vm1", &module("vesper_relay_sample")])
        .ok();
    let deadline = Instant::now() + WAIT;
    loop {
        let out = d.cli(&["relay", "cat", "vm1", "vesper_relay_sample"]);
        if out.code == 0 && out.stdout.contains("vesper relay sample line") {
            break;
        }
        assert!(Instant::now() < deadline, "{out:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    d.cli(&["rmmod", "vm1", "vesper_relay_sample"]).ok();
}

#[test]
fn a_guest_scribbling_its_region_is_reported_and_the_daemon_keeps_serving_others() {
    let d = Daemon::start(&[]);
    d.vm_start("good");
    d.vm_start("bad");
    d.cli(&[
        "insmod",
        "bad",
        &module("vesper_stress"),
        "n=1000000",
        "overwrite=1",
    ])
    .ok();
    let region = qemu_region(d.qemu_pid("bad"));
    let size = region.size();
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        let mut junk = [0u8; 512];
        for b in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        let at = x % (size - 512);
        vesper_shmem::guest_side::scribble(&region, at, &junk).unwrap();
    }
    // The host noticed, and kept serving the other guest.
    let log = d.log();
    assert!(
        log.contains("misbehaving")
            || log.contains("relay channel dropped")
            || log.contains("refused"),
        "{log}"
    );
    d.cli(&["insmod", "good", &module("vesper_exit_probe")])
        .ok();
    assert!(d
        .module_names("good")
        .contains(&"vesper_exit_probe".to_string()));
    d.cli(&["rmmod", "good", "vesper_exit_probe"]).ok();
    assert_eq!(d.cli(&["vm", "list"]).code, 0, "daemon alive");
}

#[test]
fn a_guest_reboot_bumps_the_generation_and_old_rings_are_never_read_as_new() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start_with("vm1", &["--mode", "hand", "--allow-reboot"]);
    assert_eq!(vm["guest"]["generation"], 1);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);
    // A channel left open across the reboot, with 100 records in it.
    d.cli(&["insmod", "vm1", &module("vesper_stress"), "n=100"])
        .ok();
    d.wait_records("vm1", "vesper_stress", "stress", WAIT, |r| r.len() == 100);
    d.hand("vm1", "reboot", "rebooting");
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let list = d.cli(&["--json", "vm", "list"]).ok().json();
        let vm = &list["result"]["vms"][0];
        if vm["guest"]["generation"] == 2 && vm["state"] == "up" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no second generation: {vm}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    // The old channel is gone with its generation; its records are not read again.
    let stat = d.cli(&["--json", "relay", "stat", "vm1"]).ok().json();
    let ch = &stat["result"]["channels"][0];
    assert_eq!(ch["open"], false);
    assert_eq!(ch["error"], "guest restarted");
    assert!(!d.module_names("vm1").contains(&"vesper_stress".to_string()));
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(d.relay_records("vm1", "vesper_stress", "stress").len(), 100);
    // The new generation works: a new channel, fresh sequence numbers.
    d.cli(&["insmod", "vm1", &module("vesper_stress"), "n=50"])
        .ok();
    let recs = d.wait_records("vm1", "vesper_stress", "stress", WAIT, |r| r.len() == 150);
    assert_eq!(recs[100]["seq"], 0);
}
