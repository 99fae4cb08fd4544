//! `vesper vm start --vmm builtin`: guests run in vesperd's own VMM, driven through the
//! same CLI, seen through the same events, acted on by the same failover engine.
//!
//! On this kind of host /dev/kvm is the paravirtual kvm_pvm, where a stock Linux kernel
//! does not boot; the builtin VM then boots the guest kit's mini frontend (a freestanding
//! guest that speaks the real Vesper protocol, `tests/guests/mini-frontend`). Where KVM
//! is hardware-backed, `builtin_vm_boots_the_kit_linux_and_loads_a_probe` boots the same
//! Debian kernel the QEMU tests use.

use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{kvm_usable, module, Daemon};
use vesper_hypervisor::KvmBacking;

const WAIT: Duration = Duration::from_secs(60);

fn start_mini(d: &Daemon, name: &str) -> Value {
    d.vm_start_with(name, &["--vmm", "builtin", "--kernel", "mini"])
}

fn wait_event(d: &Daemon, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(e) = d.events(&[]).into_iter().find(&pred) {
            return e;
        }
        assert!(
            Instant::now() < deadline,
            "no {what} event:\n{:#?}\n{}",
            d.events(&[]),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_builtin_vm_is_driven_by_the_same_cli_and_reports_the_same_events() {
    if !kvm_usable("builtin e2e") {
        return;
    }
    let d = Daemon::start(&[]);
    let st = start_mini(&d, "b1");
    assert_eq!(st["vmm"], "builtin", "{st}");
    assert_eq!(st["state"], "up", "{st}");
    assert_eq!(st["pid"], d.pid(), "a builtin VM runs inside vesperd: {st}");
    let list = d.cli(&["vm", "list"]).ok().stdout;
    assert!(list.contains("b1") && list.contains("builtin"), "{list}");
    assert_eq!(d.cli(&["vm", "status", "b1"]).code, 0);
    wait_event(&d, "guest_up", |e| {
        e["kind"] == "guest_up" && e["guest"] == "b1"
    });

    // Commands travel the real control protocol; the mini frontend has no modules and
    // refuses to load one, with its reason.
    // Like Linux's, its module list holds only the frontend itself.
    let lsmod = d.cli(&["--json", "lsmod", "b1"]).ok();
    let mods = lsmod.json()["result"]["modules"].clone();
    assert_eq!(mods.as_array().map(Vec::len), Some(1), "{mods}");
    assert_eq!(mods[0]["frontend"], true, "{mods}");
    assert_eq!(mods[0]["pushed"], false, "{mods}");
    // vesperd read that list from guest RAM frames the guest granted (no copy through
    // the shared region): only the builtin VMM can.
    d.wait_console("b1", "module list granted from guest RAM", WAIT);
    let insmod = d.cli(&["insmod", "b1", &module("vesper_exit_probe")]);
    assert_ne!(insmod.code, 0, "{insmod:?}");
    assert!(insmod.stderr.contains("mini frontend"), "{insmod:?}");

    // A watched service killed in the guest: a probe record → a service_exit event.
    d.hand("b1", "start svc", "started svc");
    d.hand("b1", "kill 9 svc", "killed svc");
    let exit = wait_event(&d, "service_exit", |e| {
        e["kind"] == "service_exit" && e["guest"] == "b1"
    });
    assert_eq!(exit["payload"]["comm"], "svc", "{exit}");
    assert_eq!(exit["payload"]["signal"], 9, "{exit}");
    // The pid in the record is the one the guest reported on its console.
    d.wait_console(
        "b1",
        &format!("killed svc pid={} sig=9", exit["payload"]["pid"]),
        WAIT,
    );

    // A panic: the panic record through the relay, and pvpanic seen by the VMM itself.
    d.hand("b1", "panic", "panicking");
    let panic = wait_event(&d, "panic", |e| e["kind"] == "panic" && e["guest"] == "b1");
    assert_eq!(panic["source"]["type"], "probe", "{panic}");
    let pv = wait_event(&d, "guest_panicked", |e| {
        e["kind"] == "guest_panicked" && e["guest"] == "b1"
    });
    assert_eq!(pv["source"]["type"], "vmm", "{pv}");
    assert_eq!(pv["source"]["event"], "GUEST_PANICKED", "{pv}");
    assert_eq!(d.cli(&["vm", "status", "b1"]).code, 1, "failure seen");

    // Stop: the VM thread ends, the exit event says so, the name is free again.
    d.cli(&["vm", "stop", "b1"]).ok();
    let gone = wait_event(&d, "vm_exit", |e| {
        e["kind"] == "vm_exit" && e["guest"] == "b1"
    });
    assert!(
        gone["payload"]["reason"]
            .as_str()
            .is_some_and(|s| s.contains("stopped by the host")),
        "{gone}"
    );
    assert_eq!(gone["payload"]["requested"], true, "{gone}");
    assert_eq!(d.cli(&["vm", "status", "b1"]).code, 3);
    let again = start_mini(&d, "b1");
    assert_eq!(again["state"], "up");
}

#[test]
fn a_guest_reboot_in_a_builtin_vm_comes_back_with_a_new_generation() {
    if !kvm_usable("builtin reboot") {
        return;
    }
    let d = Daemon::start(&[]);
    let first = d.vm_start_with(
        "r1",
        &["--vmm", "builtin", "--kernel", "mini", "--allow-reboot"],
    );
    let gen = first["guest"]["generation"].as_u64().expect("generation");
    d.hand("r1", "reboot", "rebooting");
    let reset = wait_event(&d, "reset", |e| e["kind"] == "reset" && e["guest"] == "r1");
    assert_eq!(reset["source"]["type"], "vmm", "{reset}");
    let deadline = Instant::now() + WAIT;
    loop {
        let ups: Vec<Value> = d
            .events(&["--kind", "guest_up", "--guest", "r1"])
            .into_iter()
            .collect();
        if ups.len() >= 2 {
            let g = ups[1]["payload"]["generation"].as_u64().unwrap();
            assert!(g > gen, "generation {g} after {gen}");
            break;
        }
        assert!(Instant::now() < deadline, "no second hello:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    // And the control protocol works in the new generation.
    d.cli(&["lsmod", "r1"]).ok();
}

#[test]
fn the_failover_engine_restarts_a_builtin_guest_whose_service_died() {
    if !kvm_usable("builtin failover") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[host]
max_guests = 2
max_memory_mib = 1024

[[guest]]
name = "m1"
memory_mib = 256
vmm = "builtin"
kernel = "mini"

[[rule]]
on = "service_exit"
where = { comm = "svc" }
action = "restart"
"#,
    )
    .unwrap();
    let d = Daemon::start(&["--policy", policy.to_str().unwrap()]);
    let first = d.vm_start_with(
        "m1",
        &["--vmm", "builtin", "--kernel", "mini", "--memory", "256"],
    );
    let gen = first["guest"]["generation"].as_u64().unwrap();
    d.hand("m1", "start svc", "started svc");
    // Not `hand`: the restart is quick enough to replace the console log before the
    // reply line could be read from it.
    d.cli(&["vm", "send", "m1", "kill 9 svc"]).ok();
    let exit = wait_event(&d, "service_exit", |e| e["kind"] == "service_exit");
    let decision = wait_event(&d, "decision", |e| {
        e["kind"] == "decision" && e["payload"]["action"]["type"] == "restart"
    });
    assert_eq!(decision["payload"]["event_seq"], exit["seq"], "{decision}");
    // The restarted guest says hello again, in the builtin VMM.
    let deadline = Instant::now() + WAIT;
    loop {
        let ups = d.events(&["--kind", "guest_up", "--guest", "m1"]);
        if ups.len() >= 2 && d.cli(&["vm", "status", "m1"]).code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "m1 never came back:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let st = d.cli(&["--json", "vm", "status", "m1"]).json();
    assert_eq!(st["result"]["vmm"], "builtin", "{st}");
    let _ = gen;
}

#[test]
fn bad_builtin_requests_are_refused_with_what_to_do() {
    let d = Daemon::start(&[]);
    let tcg = d.cli(&[
        "vm", "start", "x1", "--vmm", "builtin", "--kernel", "mini", "--accel", "tcg",
    ]);
    assert_ne!(tcg.code, 0);
    assert!(tcg.stderr.contains("--vmm qemu"), "{tcg:?}");
    let mini_in_qemu = d.cli(&["vm", "start", "x2", "--kernel", "mini"]);
    assert_ne!(mini_in_qemu.code, 0);
    assert!(
        mini_in_qemu.stderr.contains("--vmm builtin"),
        "{mini_in_qemu:?}"
    );
    let bad_vmm = d.cli(&["vm", "start", "x3", "--vmm", "xen"]);
    assert_eq!(bad_vmm.code, 2, "{bad_vmm:?}");
    assert!(bad_vmm.stderr.contains("qemu or builtin"), "{bad_vmm:?}");
    if kvm_usable("builtin bad image") {
        // More RAM than this host has: refused before anything is created.
        let host_mib = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| {
                m.lines()
                    .find_map(|l| l.strip_prefix("MemTotal:"))
                    .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            })
            .map(|kb| kb / 1024)
            .unwrap_or(0);
        if host_mib > 0 && host_mib < 65536 {
            let too_big = (host_mib + 1024).to_string();
            let out = d.cli(&[
                "vm", "start", "x6", "--vmm", "builtin", "--kernel", "mini", "--memory", &too_big,
            ]);
            assert_ne!(out.code, 0);
            assert!(out.stderr.contains("memory"), "{out:?}");
            assert!(d.events(&["--guest", "x6"]).is_empty());
        }
        let junk = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(junk.path(), b"not a kernel at all").unwrap();
        let out = d.cli(&[
            "vm",
            "start",
            "x4",
            "--vmm",
            "builtin",
            "--accel",
            "kvm",
            "--kernel",
            junk.path().to_str().unwrap(),
        ]);
        assert_ne!(out.code, 0);
        assert!(
            out.stderr.contains(junk.path().to_str().unwrap()),
            "{out:?}"
        );
    }
    // Linux in the builtin VMM where KVM is paravirtual: refused, saying why and what to
    // use instead (where KVM is hardware-backed it boots; see the next test).
    if KvmBacking::detect() == KvmBacking::Paravirtual {
        let out = d.cli(&["vm", "start", "x5", "--vmm", "builtin"]);
        assert_ne!(out.code, 0);
        assert!(
            out.stderr.contains("kvm_pvm")
                && out.stderr.contains("--vmm qemu")
                && out.stderr.contains("--kernel mini"),
            "{out:?}"
        );
    }
    assert_eq!(d.cli(&["vm", "list"]).code, 0, "daemon keeps serving");
}

#[test]
fn builtin_vm_boots_the_kit_linux_and_loads_a_probe() {
    if let Some(why) = KvmBacking::detect().linux_problem() {
        vesper_e2e::say_skipped(
            "builtin_vm_boots_the_kit_linux_and_loads_a_probe",
            &format!(
                "{why}.\n*** It boots the kit's Debian kernel in the builtin VMM through vesperd \
                 and needs hardware-backed KVM (kvm_intel/kvm_amd)."
            ),
        );
        return;
    }
    let d = Daemon::start(&[]);
    let st = d.vm_start_with("l1", &["--vmm", "builtin", "--mode", "hand"]);
    assert_eq!(st["vmm"], "builtin");
    assert!(st["guest"]["kernel_release"]
        .as_str()
        .is_some_and(|r| r.starts_with("6.1")));
    d.wait_console("l1", "vesper-init: hand ready", WAIT);
    d.watch_svc("l1");
    d.hand("l1", "start svc", "started svc");
    d.hand("l1", "kill 9 svc", "killed svc");
    let exit = wait_event(&d, "service_exit", |e| e["kind"] == "service_exit");
    assert_eq!(exit["payload"]["comm"], "svc");
}
