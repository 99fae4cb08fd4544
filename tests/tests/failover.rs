//! The failover engine in vesperd, end to end on real guests.

use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{module, Daemon};

const WAIT: Duration = Duration::from_secs(120);

fn policy(dir: &std::path::Path) -> std::path::PathBuf {
    let hook_out = dir.join("hook.out");
    let text = format!(
        r#"
[host]
max_guests = 3
max_memory_mib = 2048

[[guest]]
name = "web1"
memory_mib = 512
mode = "hand"
probes = [ {{ module = "vesper_exit_probe", params = ["watch_comm=svc", "quiet=1"] }}, {{ module = "vesper_panic_probe" }} ]

[[guest]]
name = "web2"
memory_mib = 512
mode = "hand"
probes = [ {{ module = "vesper_exit_probe", params = ["watch_comm=svc", "quiet=1"] }}, {{ module = "vesper_panic_probe" }} ]

[[group]]
name = "web"
primary = "web1"
standbys = ["web2"]

[[rule]]
on = "service_exit"
where = {{ comm = "svc" }}
group = "web"
action = "start_standby"

# A panicked guest finishes its panic path (QEMU reports GUEST_PANICKED) and exits on
# its own (panic=-1, -no-reboot): no need to stop it.
[[rule]]
on = "panic"
group = "web"
action = "start_standby"
stop_failed = false

[[rule]]
on = "guest_panicked"
group = "web"
action = "start_standby"
stop_failed = false

[[rule]]
on = "service_exit"
action = "hook"
command = ["/bin/sh", "-c", "echo \"$VESPER_EVENT_KIND $VESPER_GUEST $VESPER_EVENT_SEQ\" >> {}"]
timeout_secs = 5

# Hooks that hang or fail are bounded and reported; nothing else waits for them.
[[rule]]
on = "service_exit"
action = "hook"
command = ["/bin/sleep", "600"]
timeout_secs = 1

[[rule]]
on = "service_exit"
action = "hook"
command = ["/bin/false"]
"#,
        hook_out.display()
    );
    let p = dir.join("policy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn start_primary(d: &Daemon) {
    d.vm_start_with("web1", &["--mode", "hand"]);
    d.wait_console("web1", "vesper-init: hand ready", WAIT);
    d.watch_svc("web1");
    d.cli(&["insmod", "web1", &module("vesper_panic_probe")])
        .ok();
}

fn wait_standby_up(d: &Daemon) {
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = d.events(&[]);
        if ev
            .iter()
            .any(|e| e["kind"] == "guest_up" && e["guest"] == "web2")
            && d.cli(&["vm", "status", "web2"]).code == 0
        {
            let mods = d.module_names("web2");
            if mods.contains(&"vesper_exit_probe".to_string())
                && mods.contains(&"vesper_panic_probe".to_string())
            {
                return;
            }
        }
        assert!(
            Instant::now() < deadline,
            "standby never came up with its probes:\n{:#?}\n{}",
            d.events(&[]),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_killed_service_in_the_primary_starts_the_standby_and_the_decision_says_why() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&["--policy", policy(dir.path()).to_str().unwrap()]);
    start_primary(&d);
    d.hand("web1", "start svc", "started svc");
    d.hand("web1", "kill 9 svc", "killed svc");
    wait_standby_up(&d);
    let ev = d.events(&[]);
    let exit = ev
        .iter()
        .find(|e| e["kind"] == "service_exit")
        .expect("exit event");
    let decisions: Vec<&Value> = ev.iter().filter(|e| e["kind"] == "decision").collect();
    assert!(!decisions.is_empty());
    let failover = decisions
        .iter()
        .find(|d| d["payload"]["action"]["type"] == "start_standby")
        .expect("a start_standby decision");
    assert_eq!(failover["source"]["type"], "engine");
    assert_eq!(failover["payload"]["action"]["standby"], "web2");
    assert_eq!(failover["payload"]["event_seq"], exit["seq"]);
    let reason = failover["payload"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("service_exit") && reason.contains("web1") && reason.contains("web2"),
        "{reason}"
    );
    assert!(failover["seq"].as_u64() > exit["seq"].as_u64());
    // The hook ran with the event in its environment.
    let hook = std::fs::read_to_string(dir.path().join("hook.out")).unwrap_or_default();
    assert!(
        hook.contains(&format!("service_exit web1 {}", exit["seq"])),
        "{hook:?}"
    );
    // The hanging hook was killed after its timeout, the failing one reported.
    let deadline = Instant::now() + Duration::from_secs(10);
    while !(d.log().contains("/bin/sleep for event")
        && d.log().contains("hook /bin/false for event"))
    {
        assert!(Instant::now() < deadline, "{}", d.log());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        d.log().contains("did not finish within 1 s; killed"),
        "{}",
        d.log()
    );
    assert_eq!(d.cli(&["vm", "list"]).code, 0, "daemon keeps serving");
}

#[test]
fn a_malformed_policy_stops_vesperd_with_a_located_error() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "[host]\nmax_guests = 2\nmax_memory_mib = 1024\n\n[[rule]]\non = \"meltdown\"\naction = \"restart\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(vesper_e2e::bin_dir().join("vesperd"))
        .args([
            "--run-dir",
            dir.path().to_str().unwrap(),
            "--policy",
            bad.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("bad.toml:6") && err.contains("meltdown") && err.contains("service_exit"),
        "{err}"
    );
    let check = std::process::Command::new(vesper_e2e::bin_dir().join("vesper"))
        .args(["policy", "check", bad.to_str().unwrap()])
        .output()
        .unwrap();
    assert_eq!(check.status.code(), Some(65));
}

#[test]
fn a_panic_seen_by_the_probe_and_by_qmp_is_acted_on_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&["--policy", policy(dir.path()).to_str().unwrap()]);
    start_primary(&d);
    d.hand("web1", "panic", "panicking");
    wait_standby_up(&d);
    let deadline = Instant::now() + WAIT;
    while !d
        .events(&[])
        .iter()
        .any(|e| e["kind"] == "vm_exit" && e["guest"] == "web1")
    {
        assert!(Instant::now() < deadline, "web1 never exited");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ev = d.events(&[]);
    let kinds: Vec<&str> = ev
        .iter()
        .filter(|e| e["guest"] == "web1")
        .filter_map(|e| e["kind"].as_str())
        .collect();
    assert!(
        kinds.contains(&"panic") && kinds.contains(&"guest_panicked"),
        "{kinds:?}"
    );
    let failovers: Vec<&Value> = ev
        .iter()
        .filter(|e| e["kind"] == "decision" && e["payload"]["action"]["type"] == "start_standby")
        .collect();
    assert_eq!(failovers.len(), 1, "acted more than once: {failovers:#?}");
}

/// Waits until `guest` is up (its `guest_up` event) and healthy.
fn wait_up(d: &Daemon, guest: &str) {
    let deadline = Instant::now() + WAIT;
    while !(d
        .events(&[])
        .iter()
        .any(|e| e["kind"] == "guest_up" && e["guest"] == guest)
        && d.cli(&["vm", "status", guest]).code == 0)
    {
        assert!(
            Instant::now() < deadline,
            "{guest} never came up:\n{:#?}\n{}",
            d.events(&[]),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// The virtio-rng PCI device ids (transitional, modern).
const VIRTIO_RNG: [&str; 2] = ["0x1005", "0x1044"];

#[test]
fn a_standby_declared_by_a_definition_file_starts_as_that_file_says() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("standby.toml"),
        "memory_mib = 384\nqemu_args = [\"-device\", \"virtio-rng-pci\"]\n\n[boot]\nmode = \"hand\"\n",
    )
    .unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        r#"
[host]
max_guests = 2
max_memory_mib = 2048

[[guest]]
name = "web1"
memory_mib = 512
mode = "hand"

[[guest]]
name = "web2"
definition = "standby.toml"   # beside this file

[[group]]
name = "web"
primary = "web1"
standbys = ["web2"]

[[rule]]
on = "service_exit"
where = { comm = "svc" }
group = "web"
action = "start_standby"
"#,
    )
    .unwrap();
    let check = policy_check(&policy);
    assert!(
        check.contains("guest web2: 384 MiB, 1 cpu, vmm qemu, as defined in")
            && check.contains("standby.toml"),
        "{check}"
    );
    let d = Daemon::start(&["--policy", policy.to_str().unwrap()]);
    d.vm_start_with("web1", &["--mode", "hand"]);
    d.wait_console("web1", "vesper-init: hand ready", WAIT);
    d.watch_svc("web1");
    d.hand("web1", "start svc", "started svc");
    d.hand("web1", "kill 9 svc", "killed svc");
    wait_up(&d, "web2");
    let failover = d
        .events(&[])
        .into_iter()
        .find(|e| e["kind"] == "decision" && e["payload"]["action"]["type"] == "start_standby")
        .expect("a start_standby decision");
    assert_eq!(failover["payload"]["action"]["standby"], "web2");

    // It is the file's VM: its memory, its QEMU options, its init mode.
    let st = d.cli(&["--json", "vm", "status", "web2"]).result();
    assert_eq!(st["memory_mib"], 384, "{st}");
    let (devices, rc) = d.hand_sh("web2", "cat /sys/bus/pci/devices/*/device");
    assert_eq!(rc, 0, "{devices:?}");
    assert!(
        devices.iter().any(|l| VIRTIO_RNG.contains(&l.trim())),
        "the definition's virtio-rng-pci is not in the standby: {devices:?}"
    );
}

/// `vesper policy check FILE`'s output, which must accept it.
fn policy_check(policy: &std::path::Path) -> String {
    let out = std::process::Command::new(vesper_e2e::bin_dir().join("vesper"))
        .args(["policy", "check", policy.to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn a_missing_definition_file_stops_vesperd_at_the_policy_line() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[host]\nmax_guests = 2\nmax_memory_mib = 1024\n\n[[guest]]\nname = \"web2\"\ndefinition = \"gone.toml\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(vesper_e2e::bin_dir().join("vesperd"))
        .args([
            "--run-dir",
            dir.path().to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("policy.toml:7:14")
            && err.contains("gone.toml")
            && err.contains("cannot read VM definition file"),
        "{err}"
    );
}
