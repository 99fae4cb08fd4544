//! The Pacemaker OCF resource agent (`tools/ocf/vesper`) against a real vesperd and real
//! guests: Pacemaker's own `ocf-tester` passes it, and a service killed inside a live guest
//! fails `monitor` at once (VirtualDomain would keep answering "running").

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use vesper_e2e::{bin_dir, kit, module, CliOutput, Daemon};

const WAIT: Duration = Duration::from_secs(60);

// OCF exit codes.
const OCF_SUCCESS: i32 = 0;
const OCF_ERR_GENERIC: i32 = 1;
const OCF_NOT_RUNNING: i32 = 7;

/// The agent, as Pacemaker would find it under /usr/lib/ocf/resource.d/vesper/.
fn agent() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools/ocf/vesper")
        .canonicalize()
        .expect("tools/ocf/vesper")
}

/// `ocf-tester` from Debian's resource-agents (the guest kit installs it).
fn ocf_tester() -> PathBuf {
    kit(); // installs the host packages, resource-agents among them
    let p = PathBuf::from("/usr/sbin/ocf-tester");
    assert!(
        p.is_file(),
        "{} missing: install resource-agents and libxml2-utils (the guest kit does as root)",
        p.display()
    );
    p
}

/// Runs `agent ACTION` the way Pacemaker does: parameters as `OCF_RESKEY_*`.
fn run_agent(action: &str, params: &[(&str, String)], meta: &[(&str, &str)]) -> CliOutput {
    let mut cmd = Command::new(agent());
    cmd.arg(action)
        .env("OCF_ROOT", "/usr/lib/ocf")
        .env("OCF_RESOURCE_INSTANCE", "vesper-e2e");
    for (k, v) in params {
        cmd.env(format!("OCF_RESKEY_{k}"), v);
    }
    for (k, v) in meta {
        cmd.env(format!("OCF_RESKEY_CRM_meta_{k}"), v);
    }
    cmd.output().expect("run the agent").into()
}

/// A recurring monitor (interval 2 s, timeout 10 s), not a probe.
const MONITOR: &[(&str, &str)] = &[("interval", "2000"), ("timeout", "10000")];
/// A probe: monitor with interval 0.
const PROBE: &[(&str, &str)] = &[("interval", "0"), ("timeout", "10000")];
const START: &[(&str, &str)] = &[("timeout", "180000")];
const STOP: &[(&str, &str)] = &[("timeout", "30000")];

#[test]
fn ocf_tester_passes_the_agent() {
    let d = Daemon::start(&[]);
    let out: CliOutput = Command::new(ocf_tester())
        .arg("-n")
        .arg("vesper-test")
        .arg("-o")
        .arg("guest=ocftest")
        .arg("-o")
        .arg(format!("vesper={}", bin_dir().join("vesper").display()))
        .arg("-o")
        .arg(format!("socket={}", d.socket.display()))
        .arg("-o")
        .arg(format!("kit_dir={}", kit().dir.display()))
        // ocf-tester announces a 20 s operation timeout, from which the agent would derive
        // a 10 s boot timeout; guests boot under TCG here, next to other tests' guests.
        .arg("-o")
        .arg("boot_timeout=180")
        .arg(agent())
        .output()
        .expect("run ocf-tester")
        .into();
    // ocf-tester prints "* rc=N: what failed" per failed check and ends with
    // "AGENT passed all tests" (exit 0) or "Tests failed: AGENT failed N tests" (exit 1).
    let failures: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.starts_with("* rc="))
        .collect();
    assert!(
        out.code == 0 && failures.is_empty() && out.stdout.contains("passed all tests"),
        "ocf-tester failed: {out:?}\ndaemon log:\n{}",
        d.log()
    );
    // It ends with the resource stopped.
    assert_eq!(d.cli(&["vm", "status", "ocftest"]).code, 3);
}

#[test]
fn a_service_killed_in_a_live_guest_fails_monitor_at_once() {
    let d = Daemon::start(&[]);
    let params = [
        ("guest", "web1".to_string()),
        ("vesper", bin_dir().join("vesper").display().to_string()),
        ("socket", d.socket.display().to_string()),
        ("kit_dir", kit().dir.display().to_string()),
        ("mode", "hand".to_string()),
        ("boot_timeout", "180".to_string()),
        (
            "probes",
            format!("{}:watch_comm=svc,quiet=1", module("vesper_exit_probe")),
        ),
    ];
    let agent = |action: &str, meta: &[(&str, &str)]| run_agent(action, &params, meta);

    assert_eq!(agent("validate-all", &[]).code, OCF_SUCCESS);
    assert_eq!(agent("monitor", PROBE).code, OCF_NOT_RUNNING);
    let start = agent("start", START);
    assert_eq!(
        start.code,
        OCF_SUCCESS,
        "start: {start:?}\ndaemon log:\n{}",
        d.log()
    );
    assert!(
        d.module_names("web1")
            .contains(&"vesper_exit_probe".to_string()),
        "start pushes the probes"
    );
    // Starting a started resource succeeds and changes nothing.
    assert_eq!(agent("start", START).code, OCF_SUCCESS);

    d.wait_console("web1", "vesper-init: hand ready", WAIT);
    d.cli(&["vm", "send", "web1", "start", "svc"]).ok();
    d.wait_console("web1", "vesper-hand: started svc", WAIT);
    let healthy = agent("monitor", MONITOR);
    assert_eq!(healthy.code, OCF_SUCCESS, "before the kill: {healthy:?}");
    assert_eq!(agent("monitor", PROBE).code, OCF_SUCCESS);

    let sent = Instant::now();
    d.cli(&["vm", "send", "web1", "kill", "9", "svc"]).ok();
    // The hand's own latency (console, busybox under TCG) is not what is measured: the
    // clock for the agent starts once the guest confirms the kill.
    d.wait_console("web1", "vesper-hand: killed svc", WAIT);
    let killed = Instant::now();
    let failed = loop {
        let m = agent("monitor", MONITOR);
        if m.code != OCF_SUCCESS {
            break m;
        }
        assert!(
            killed.elapsed() < Duration::from_secs(2),
            "monitor still says healthy {:?} after the kill: {m:?}\ndaemon log:\n{}",
            killed.elapsed(),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!(
        "monitor failed {:?} after the kill was sent, {:?} after the guest confirmed it",
        sent.elapsed(),
        killed.elapsed()
    );
    assert_eq!(failed.code, OCF_ERR_GENERIC, "{failed:?}");
    assert!(
        failed.stderr.contains("Vesper saw a failure") && failed.stderr.contains("svc"),
        "monitor logs what Vesper saw: {failed:?}"
    );
    // The VM itself still runs: VirtualDomain's `virsh domstate` would say "running".
    let list = d.cli(&["--json", "vm", "list"]).ok().json();
    assert_eq!(list["result"]["vms"][0]["state"], "up");
    // A probe (Pacemaker re-checking the resource) reports the failure too.
    assert_eq!(agent("monitor", PROBE).code, OCF_ERR_GENERIC);

    let stop = agent("stop", STOP);
    assert_eq!(stop.code, OCF_SUCCESS, "stop: {stop:?}");
    assert_eq!(agent("monitor", MONITOR).code, OCF_NOT_RUNNING);
    assert_eq!(
        agent("stop", STOP).code,
        OCF_SUCCESS,
        "stopping a stopped one"
    );
    assert_eq!(d.cli(&["vm", "status", "web1"]).code, 3);
}

#[test]
fn an_unreachable_daemon_fails_monitor_and_stop_but_not_a_probe() {
    let dir = tempfile::tempdir().expect("tempdir");
    let params = [
        ("guest", "web1".to_string()),
        ("vesper", bin_dir().join("vesper").display().to_string()),
        (
            "socket",
            dir.path().join("no-vesperd.sock").display().to_string(),
        ),
    ];
    let agent = |action: &str, meta: &[(&str, &str)]| run_agent(action, &params, meta);
    // A probe on a node whose vesperd is down and left no record of the guest: it
    // does not run there.
    assert_eq!(agent("monitor", PROBE).code, OCF_NOT_RUNNING);
    // With a record (vesperd killed, its VM left running for the next one to adopt):
    // the guest may run, so the probe fails instead of letting it start elsewhere too.
    let rec = dir.path().join("guests/web1/vm.json");
    std::fs::create_dir_all(rec.parent().unwrap()).unwrap();
    std::fs::write(&rec, "{}").unwrap();
    let p = agent("monitor", PROBE);
    assert_eq!(p.code, OCF_ERR_GENERIC, "{p:?}");
    assert!(p.stderr.contains("may still run here"), "{p:?}");
    std::fs::remove_file(&rec).unwrap();
    let m = agent("monitor", MONITOR);
    assert_eq!(m.code, OCF_ERR_GENERIC, "{m:?}");
    assert!(m.stderr.contains("cannot reach vesperd"), "{m:?}");
    // Stop cannot confirm the guest is gone: failing lets Pacemaker fence.
    assert_eq!(agent("stop", STOP).code, OCF_ERR_GENERIC);
}

#[test]
fn validate_all_refuses_bad_parameters() {
    let vesper = bin_dir().join("vesper").display().to_string();
    let check = |extra: &[(&str, &str)]| {
        let mut params = vec![("guest", "web1".to_string()), ("vesper", vesper.clone())];
        for &(k, v) in extra {
            params.retain(|&(p, _)| p != k);
            params.push((k, v.to_string()));
        }
        run_agent("validate-all", &params, &[]).code
    };
    assert_eq!(check(&[]), 0);
    assert_eq!(check(&[("guest", "")]), 6, "guest is required");
    assert_eq!(check(&[("guest", "web 1")]), 6);
    assert_eq!(check(&[("guest", &"w".repeat(33))]), 6);
    assert_eq!(check(&[("memory", "lots")]), 6);
    assert_eq!(check(&[("cpus", "0")]), 6);
    assert_eq!(check(&[("boot_timeout", "1m")]), 6);
    assert_eq!(check(&[("vmm", "xen")]), 6);
    assert_eq!(check(&[("vmm", "builtin")]), 0);
    assert_eq!(check(&[("vesper", "/nonexistent/vesper")]), 5);
    assert_eq!(check(&[("probes", "exit.ko")]), 6, "relative module path");
    assert_eq!(check(&[("probes", "/nonexistent/exit.ko")]), 5);
    let exit = module("vesper_exit_probe");
    assert_eq!(
        check(&[("probes", &format!("{exit}:watch_comm=a,b,quiet=1"))]),
        0
    );
    assert_eq!(check(&[("probes", &format!("{exit}:=svc"))]), 6);
    // A definition file: absolute, there, and the only say on the machine.
    let dir = tempfile::tempdir().expect("tempdir");
    let def = dir.path().join("web1.toml");
    std::fs::write(&def, "memory_mib = 384\n").unwrap();
    let def = def.to_str().unwrap();
    assert_eq!(check(&[("definition", def)]), 0);
    assert_eq!(check(&[("definition", "web1.toml")]), 6, "relative path");
    assert_eq!(check(&[("definition", "/nonexistent/web1.toml")]), 5);
    for key in ["memory", "cpus", "mode", "append", "vmm"] {
        let value = if matches!(key, "memory" | "cpus") {
            "1"
        } else {
            "qemu"
        };
        assert_eq!(
            check(&[("definition", def), (key, value)]),
            6,
            "{key} beside definition"
        );
    }
}

#[test]
fn start_with_a_definition_starts_the_vm_the_file_defines() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().expect("tempdir");
    let def = dir.path().join("ocfdef.toml");
    std::fs::write(
        &def,
        "memory_mib = 384\nqemu_args = [\"-device\", \"virtio-rng-pci\"]\n\n[boot]\nmode = \"hand\"\n",
    )
    .unwrap();
    let params = [
        ("guest", "ocfdef".to_string()),
        ("vesper", bin_dir().join("vesper").display().to_string()),
        ("socket", d.socket.display().to_string()),
        ("kit_dir", kit().dir.display().to_string()),
        ("definition", def.display().to_string()),
        ("boot_timeout", "180".to_string()),
    ];
    let agent = |action: &str, meta: &[(&str, &str)]| run_agent(action, &params, meta);
    assert_eq!(agent("validate-all", &[]).code, OCF_SUCCESS);
    let start = agent("start", START);
    assert_eq!(
        start.code,
        OCF_SUCCESS,
        "start: {start:?}\ndaemon log:\n{}",
        d.log()
    );
    // The file's VM: its memory, its init mode, its QEMU options.
    let st = d.cli(&["--json", "vm", "status", "ocfdef"]).result();
    assert_eq!(st["memory_mib"], 384, "{st}");
    d.wait_console("ocfdef", "vesper-init: hand ready", WAIT);
    let (devices, rc) = d.hand_sh("ocfdef", "cat /sys/bus/pci/devices/*/device");
    assert_eq!(rc, 0, "{devices:?}");
    assert!(
        devices
            .iter()
            .any(|l| ["0x1005", "0x1044"].contains(&l.trim())),
        "the definition's virtio-rng-pci is not in the guest: {devices:?}"
    );
    assert_eq!(agent("monitor", MONITOR).code, OCF_SUCCESS);
    assert_eq!(agent("stop", STOP).code, OCF_SUCCESS);
    assert_eq!(d.cli(&["vm", "status", "ocfdef"]).code, 3);
}
