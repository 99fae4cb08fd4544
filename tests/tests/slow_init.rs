//! A module whose init takes long (a driver waiting for its hardware), end to end on a
//! real guest under QEMU: the frontend serves other commands while the init runs,
//! `insmod` waits by its own limit and says exactly what it knows when that runs out,
//! the end of every init is an event, and a daemon that dies mid-command is reported
//! as such.

use std::process::Output;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use vesper_e2e::{bin_dir, module, signal, CliOutput, Daemon};

const SLOW: &str = "vesper_slow_init";

/// `vesper insmod GUEST vesper_slow_init ARGS...` in a thread of its own.
fn insmod_in_background(d: &Daemon, guest: &str, args: &[&str]) -> JoinHandle<Output> {
    let mut cmd = std::process::Command::new(bin_dir().join("vesper"));
    cmd.arg("--socket")
        .arg(&d.socket)
        .args(["insmod", guest, &module(SLOW)])
        .args(args);
    std::thread::spawn(move || cmd.output().expect("run vesper insmod"))
}

/// The module's `lsmod` entry, if listed.
fn entry(d: &Daemon, guest: &str, name: &str) -> Option<Value> {
    let out = d.cli(&["--json", "lsmod", guest]).ok().json();
    out["result"]["modules"]
        .as_array()
        .expect("modules")
        .iter()
        .find(|m| m["name"] == name)
        .cloned()
}

/// Waits until `lsmod` shows `name` in `state`; returns the entry and how long each
/// `lsmod` took at most.
fn wait_state(
    d: &Daemon,
    guest: &str,
    name: &str,
    state: &str,
    within: Duration,
) -> (Value, Duration) {
    let deadline = Instant::now() + within;
    let mut slowest = Duration::ZERO;
    loop {
        let t = Instant::now();
        let e = entry(d, guest, name);
        slowest = slowest.max(t.elapsed());
        if let Some(e) = e.filter(|e| e["state"] == state) {
            return (e, slowest);
        }
        assert!(
            Instant::now() < deadline,
            "{name} never {state} in {guest}:\n{}",
            d.cli(&["lsmod", guest]).stdout
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for an event of `kind` about module `name`, after sequence number `after`.
fn wait_module_event(d: &Daemon, kind: &str, name: &str, after: u64, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let found = d
            .events(&["--kind", kind])
            .into_iter()
            .find(|e| e["payload"]["module"] == name && e["seq"].as_u64().unwrap_or(0) > after);
        if let Some(e) = found {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event for {name}; events: {:?}\ndaemon log:\n{}",
            d.events(&[]),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn last_seq(d: &Daemon) -> u64 {
    d.events(&[])
        .last()
        .and_then(|e| e["seq"].as_u64())
        .unwrap_or(0)
}

#[test]
fn a_long_init_is_waited_for_while_the_guest_serves_other_commands_and_each_end_is_an_event() {
    // A 3 s step timeout: an init of 8 s must not be mistaken for a silent guest.
    let d = Daemon::start(&["--step-timeout-ms", "3000"]);
    d.vm_start("vm1");

    // 1. Waited for, past the step timeout; lsmod and dmesg answer meanwhile.
    let started = Instant::now();
    let insmod = insmod_in_background(&d, "vm1", &["init_ms=8000"]);
    let (coming, slowest) = wait_state(&d, "vm1", SLOW, "coming", Duration::from_secs(30));
    assert_eq!(coming["pushed"], true, "{coming}");
    let dmesg = d.cli(&["dmesg", "vm1"]).ok().stdout;
    assert!(
        dmesg.contains("vesper_slow_init: init waiting 8000 ms"),
        "{dmesg}"
    );
    assert!(
        slowest < Duration::from_secs(2),
        "lsmod took {slowest:?} while the init ran"
    );
    let out = CliOutput::from(insmod.join().unwrap());
    assert_eq!(out.code, 0, "{out:?}\ndaemon log:\n{}", d.log());
    assert!(out.stdout.contains("loaded vesper_slow_init"), "{out:?}");
    assert!(started.elapsed() >= Duration::from_secs(8));
    assert_eq!(entry(&d, "vm1", SLOW).unwrap()["state"], "live");
    let ev = wait_module_event(&d, "module_loaded", SLOW, 0, Duration::from_secs(5));
    assert_eq!(ev["payload"]["after_host_gave_up"], false, "{ev}");
    assert!(ev["payload"]["init_ms"].as_f64().unwrap() >= 8000.0, "{ev}");
    d.cli(&["rmmod", "vm1", SLOW]).ok();

    // 2. Past --init-timeout: its own exit code and message, then the late end.
    let seq = last_seq(&d);
    let t = Instant::now();
    let out = d.cli(&[
        "insmod",
        "vm1",
        &module(SLOW),
        "init_ms=9000",
        "--init-timeout",
        "2",
    ]);
    let waited = t.elapsed();
    assert_eq!(out.code, 124, "{out:?}");
    assert!(
        out.stderr
            .contains("init of vesper_slow_init still running in the guest after 2s")
            && out
                .stderr
                .contains("the module will be live or gone when it returns")
            && out.stderr.contains("vesper lsmod"),
        "{out:?}"
    );
    assert!(waited < Duration::from_secs(8), "insmod waited {waited:?}");
    assert_eq!(entry(&d, "vm1", SLOW).unwrap()["state"], "coming");
    let ev = wait_module_event(&d, "module_loaded", SLOW, seq, Duration::from_secs(30));
    assert_eq!(ev["payload"]["after_host_gave_up"], true, "{ev}");
    assert_eq!(entry(&d, "vm1", SLOW).unwrap()["state"], "live");
    d.cli(&["rmmod", "vm1", SLOW]).ok();

    // 3. A late init that fails: module_failed with the errno, nothing left loaded.
    let seq = last_seq(&d);
    let out = d.cli(&[
        "--json",
        "insmod",
        "vm1",
        &module(SLOW),
        "init_ms=5000",
        "fail=110",
        "--init-timeout",
        "1",
    ]);
    assert_eq!(out.code, 124, "{out:?}");
    assert_eq!(out.json()["error"]["code"], "init_still_running", "{out:?}");
    let ev = wait_module_event(&d, "module_failed", SLOW, seq, Duration::from_secs(30));
    assert_eq!(ev["payload"]["errno_name"], "ETIMEDOUT", "{ev}");
    assert_eq!(ev["payload"]["errno"], 110, "{ev}");
    assert!(
        ev["payload"]["error"]
            .as_str()
            .unwrap()
            .contains("init failing with -110"),
        "the guest's log line is in the event: {ev}"
    );
    assert!(entry(&d, "vm1", SLOW).is_none());

    // 4. Ordinary loads report their end too, and the guest keeps working.
    let seq = last_seq(&d);
    d.cli(&["insmod", "vm1", &module("vesper_exit_probe")]).ok();
    wait_module_event(
        &d,
        "module_loaded",
        "vesper_exit_probe",
        seq,
        Duration::from_secs(5),
    );
    d.cli(&["rmmod", "vm1", "vesper_exit_probe"]).ok();
}

#[test]
fn a_daemon_that_dies_mid_command_is_reported_as_gone_not_as_a_malformed_reply() {
    let d = Daemon::start(&[]);
    d.vm_start("vm1");
    let qemu = d.qemu_pid("vm1");
    let insmod = insmod_in_background(&d, "vm1", &["init_ms=20000"]);
    wait_state(&d, "vm1", SLOW, "coming", Duration::from_secs(30));
    signal(d.pid() as i32, Signal::SIGKILL);
    let out = CliOutput::from(insmod.join().unwrap());
    // The daemon's VM outlives it (as after any crash): end it here.
    signal(qemu, Signal::SIGKILL);
    assert_eq!(out.code, 69, "{out:?}");
    assert!(
        out.stderr.contains(
            "vesperd went away before replying; the command may have completed in the guest"
        ),
        "{out:?}"
    );
    assert!(!out.stderr.contains("malformed"), "{out:?}");
}
