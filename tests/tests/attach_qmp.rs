//! A QEMU vesperd did not start, attached through its QMP socket (`vesper vm attach
//! NAME --qmp SOCKET`): the Vesper device is hot-plugged into a q35 root port, the
//! guest's frontend (loaded at boot, before the device existed) binds it and says hello,
//! modules load, `vesper debug` reads the guest's private RAM through /proc/PID/mem,
//! vesperd serves QMP to other clients, a restarted vesperd adopts it, and `vm detach`
//! leaves QEMU running without the device. Then every bad input: a missing socket, one
//! that is not QMP, a machine without PCI hot-plug (its error names the command-line
//! pair), a name or a QEMU already attached — each refused with nothing left behind.
//!
//! `cargo build --workspace --bins && cargo test -p vesper-e2e --test attach_qmp`

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::attach::{chardevs, pci_ids, qmp, HandQemu};
use vesper_e2e::{module, Daemon, RunDir};

const WAIT: Duration = Duration::from_secs(120);

fn wait_event(d: &Daemon, kind: &str, guest: &str, at_least: usize) -> Vec<Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let evs = d.events(&["--kind", kind, "--guest", guest]);
        if evs.len() >= at_least {
            return evs;
        }
        assert!(
            Instant::now() < deadline,
            "no {kind} event for {guest}:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn attach(d: &Daemon, name: &str, q: &HandQemu, extra: &[&str]) -> Value {
    let (sock, con) = (q.qmp.display().to_string(), q.console.display().to_string());
    let mut args = vec![
        "--json",
        "vm",
        "attach",
        name,
        "--qmp",
        &sock,
        "--console",
        &con,
    ];
    args.extend_from_slice(extra);
    let out = d.cli(&args);
    assert_eq!(out.code, 0, "vm attach: {out:?}\n{}", d.log());
    out.json()["result"].clone()
}

/// The run directory of `name` holds nothing of a live attachment.
#[track_caller]
fn nothing_left(run: &Path, name: &str) {
    let dir = vesper_api::run_dir::of(run, name);
    for p in [
        vesper_api::run_dir::ivshmem_socket(&dir),
        vesper_api::run_dir::qmp_socket(&dir),
        vesper_api::run_dir::qmp_events_socket(&dir),
        vesper_api::run_dir::vm_record(&dir),
    ] {
        assert!(!p.exists(), "{} left behind", p.display());
    }
}

#[test]
fn a_qemu_started_by_hand_is_attached_probed_debugged_adopted_and_detached() {
    let tmp = tempfile::tempdir().unwrap();
    let mut q = HandQemu::start(
        tmp.path(),
        &[
            "-machine",
            "q35",
            "-device",
            "pcie-root-port,id=vesper-slot,bus=pcie.0,chassis=9,pref64-reserve=16M",
        ],
    );
    let d = Daemon::start(&[]);
    let vm = attach(&d, "hand1", &q, &["--wait", "180"]);
    assert_eq!(vm["reply"], "vm_attached", "{vm}");
    assert_eq!(vm["state"], "up", "{vm}");
    assert_eq!(vm["pid"], q.pid(), "{vm}");
    assert_eq!(vm["attached"]["how"], "qmp", "{vm}");
    assert_eq!(
        vm["attached"]["ram"],
        format!("/proc/{}/mem", q.pid()),
        "a QEMU started by hand has private RAM: {vm}"
    );
    // The device went into the root port; the frontend bound it after boot.
    assert!(pci_ids(&vm_qmp(&d, "hand1")).contains(&"vesper-hand1".to_string()));
    wait_event(&d, "guest_up", "hand1", 1);

    d.cli(&[
        "insmod",
        "hand1",
        &module("vesper_exit_probe"),
        "watch_comm=svc",
    ])
    .ok();
    assert!(d
        .module_names("hand1")
        .contains(&"vesper_exit_probe".to_string()));
    let (out, rc) = d.hand_sh("hand1", "ls /sys/bus/pci/drivers/vesper_front");
    assert_eq!(rc, 0, "{out:?}");
    assert!(out.iter().any(|l| l.contains(":")), "bound device: {out:?}");

    let info = d.debug(&["info", "hand1"]).result();
    assert!(
        info["ram_source"].as_str().unwrap().starts_with("/proc/"),
        "{info}"
    );
    let ps = d.debug(&["ps", "hand1"]).result();
    let comms: Vec<&str> = ps["tasks"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["comm"].as_str())
        .collect();
    assert!(
        comms.contains(&"init") && comms.contains(&"vesper-front"),
        "{comms:?}"
    );

    // QEMU takes one QMP client; vesperd is it and serves others on the VM's socket.
    let st = qmp(&vm_qmp(&d, "hand1"), "query-status", None);
    assert_eq!(st["status"], "running", "{st}");

    // A restarted vesperd adopts the attached VM (its QMP socket reached again).
    let run = d.detach();
    let run_path = run.path().to_path_buf();
    let d = Daemon::start_in(RunDir::Path(run_path.clone()), &[]);
    let list = d.cli(&["--json", "vm", "list"]).result();
    let v = &list["vms"][0];
    assert_eq!(v["name"], "hand1", "{list}");
    assert!(
        v["adopted"].is_string() && v["attached"]["how"] == "qmp",
        "{list}"
    );
    assert!(d
        .module_names("hand1")
        .contains(&"vesper_exit_probe".to_string()));
    d.debug(&["ps", "hand1"]).ok();

    // Detach: the device is unplugged, QEMU runs on and is the user's again.
    let out = d.cli(&["--json", "vm", "detach", "hand1"]).result();
    assert_eq!(out["reply"], "vm_detached", "{out}");
    assert_eq!(out["unplugged"], true, "{out}");
    assert!(q.running(), "QEMU must run on after a detach");
    nothing_left(&run_path, "hand1");
    let ids = pci_ids(&q.qmp);
    assert!(!ids.contains(&"vesper-hand1".to_string()), "{ids:?}");
    assert_eq!(qmp(&q.qmp, "query-status", None)["status"], "running");
    let list = d.cli(&["--json", "vm", "list"]).result();
    assert_eq!(list["vms"], serde_json::json!([]), "{list}");

    // Attached again (another plug into the freed slot), then stopped: QMP quit.
    attach(&d, "hand1", &q, &["--wait", "180"]);
    wait_event(&d, "guest_up", "hand1", 1);
    d.cli(&["vm", "stop", "hand1"]).ok();
    assert!(q.wait_exit(Duration::from_secs(15)), "vm stop ends QEMU");
    nothing_left(&run_path, "hand1");
}

fn vm_qmp(d: &Daemon, name: &str) -> std::path::PathBuf {
    vesper_api::run_dir::qmp_socket(&vesper_api::run_dir::of(d.run_dir.path(), name))
}

/// A process of the test's, killed if the test fails first.
struct KillOnDrop(std::process::Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[track_caller]
fn refused(d: &Daemon, args: &[&str], code: i32, says: &[&str]) -> String {
    let out = d.cli(args);
    assert_eq!(out.code, code, "{out:?}");
    for s in says {
        assert!(out.stderr.contains(s), "{s:?} not in: {}", out.stderr);
    }
    out.stderr
}

#[test]
fn bad_input_is_refused_with_what_to_do_and_nothing_left_behind() {
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(&[]);
    let run = d.run_dir.path().to_path_buf();
    let gone = |name: &str| {
        let dir = vesper_api::run_dir::of(&run, name);
        assert!(!dir.exists(), "{} left behind", dir.display());
    };

    let missing = tmp.path().join("missing.sock");
    let m = missing.display().to_string();
    refused(
        &d,
        &["vm", "attach", "bad1", "--qmp", &m],
        71,
        &["no QMP socket at", "-qmp unix:"],
    );
    gone("bad1");

    // A socket that speaks something else.
    let other = tmp.path().join("other.sock");
    let l = std::os::unix::net::UnixListener::bind(&other).unwrap();
    std::thread::spawn(move || {
        for s in l.incoming().flatten() {
            let _ = std::io::Write::write_all(&mut &s, b"SSH-2.0-OpenSSH_9.2\r\n");
            std::thread::sleep(Duration::from_secs(1));
        }
    });
    let o = other.display().to_string();
    refused(
        &d,
        &["vm", "attach", "bad2", "--qmp", &o],
        71,
        &["is not a QMP socket"],
    );
    gone("bad2");

    // A machine whose PCI bus takes no hot-plug: pc without ACPI.
    let q = HandQemu::start(tmp.path(), &["-machine", "pc,acpi=off"]);
    let qs = q.qmp.display().to_string();
    let e = refused(
        &d,
        &["vm", "attach", "nohp", "--qmp", &qs],
        71,
        &[
            "takes no PCI hot-plug",
            "does not support hotplugging",
            "-device ivshmem-doorbell,chardev=vesper-nohp",
            "--cold-plug",
        ],
    );
    assert!(e.contains("pcie-root-port"), "{e}");
    gone("nohp");
    assert!(!pci_ids(&q.qmp).iter().any(|i| i.starts_with("vesper")));
    assert!(
        !chardevs(&q.qmp).iter().any(|c| c.starts_with("vesper")),
        "{:?}",
        chardevs(&q.qmp)
    );

    // The same machine with the device on its command line while attach waits for it.
    drop(q);
    let cold = d.run_dir.path().join("guests/cold/ivshmem.sock");
    let qmp_sock = tmp.path().join("cold-qmp.sock");
    let (qs, sock) = (qmp_sock.display().to_string(), d.socket.clone());
    let waiter = std::thread::spawn(move || {
        std::process::Command::new(vesper_e2e::bin_dir().join("vesper"))
            .arg("--socket")
            .arg(&sock)
            .args([
                "--json",
                "vm",
                "attach",
                "cold",
                "--qmp",
                &qs,
                "--cold-plug",
                "--wait",
                "180",
            ])
            .output()
            .unwrap()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cold.exists() {
        assert!(
            Instant::now() < deadline,
            "attach --cold-plug serves no ivshmem socket"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let k = vesper_e2e::kit();
    let cold_qemu = std::process::Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "pc,acpi=off",
            "-m",
            "256",
            "-accel",
            "tcg",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "none",
        ])
        .arg("-kernel")
        .arg(&k.kernel)
        .arg("-initrd")
        .arg(&k.initramfs)
        .args(["-append", vesper_e2e::attach::HAND_CMDLINE])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_sock.display()))
        .arg("-chardev")
        .arg(format!("socket,id=vesper-cold,path={}", cold.display()))
        .args(["-device", "ivshmem-doorbell,chardev=vesper-cold,vectors=2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut cold_qemu = KillOnDrop(cold_qemu);
    let out = vesper_e2e::CliOutput::from(waiter.join().unwrap());
    assert_eq!(out.code, 0, "{out:?}\n{}", d.log());
    assert_eq!(out.json()["result"]["state"], "up");
    d.debug(&["ps", "cold"]).ok();
    d.cli(&["vm", "stop", "cold"]).ok();
    let _ = cold_qemu.0.wait();

    // A name in use, and a QEMU attached already under another name.
    let q = HandQemu::start(tmp.path(), &["-machine", "pc"]);
    let qs = q.qmp.display().to_string();
    d.cli(&["vm", "attach", "dup", "--qmp", &qs, "--wait", "0"])
        .ok();
    refused(
        &d,
        &["vm", "attach", "dup", "--qmp", &qs],
        73,
        &["already running"],
    );
    refused(
        &d,
        &["vm", "attach", "dup2", "--qmp", &qs],
        73,
        &["attached already, as dup"],
    );
    gone("dup2");
    refused(&d, &["vm", "detach", "nosuch"], 68, &["no guest named"]);
    d.cli(&["vm", "detach", "dup"]).ok();
    nothing_left(&run, "dup");
}
