//! A real distribution guest: the kit's Debian 12 disk (mmdebstrap: systemd, the
//! cloud kernel, the vesper-frontend package installed through DKMS as a user would),
//! booted through SeaBIOS and GRUB from its qcow2 (`--snapshot`: the image stays as
//! built), on a user network with a port forward. One booted guest serves the steps in
//! order, as a user's session with it would: boot to `guest_up`, the frontend loaded by
//! systemd at boot, probes, a systemd service killed, an OOM kill, `vesper debug` on
//! systemd's tasks, a reboot (the frontend back on its own, generation 2), and a panic
//! whose vmcore crash opens.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{debug_vmlinux, kit, module, Daemon};

const VM: &str = "deb1";
const WAIT: Duration = Duration::from_secs(120);

fn disk() -> PathBuf {
    let k = kit();
    k.debian_disk.clone().unwrap_or_else(|| {
        panic!(
            "the kit has no Debian disk guest: {}",
            k.debian_disk_missing.as_deref().unwrap_or("not built")
        )
    })
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
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn sh(d: &Daemon, cmd: &str) -> String {
    let (out, rc) = d.hand_sh(VM, cmd);
    assert_eq!(rc, 0, "{cmd}: {out:?}");
    out.join("\n")
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An echo server in the guest (systemd's socket activation), reached through the
/// user network's port forward.
fn port_forward_answers(d: &Daemon, port: u16) {
    sh(
        d,
        "setsid systemd-socket-activate -l 7777 --inetd -a /bin/cat </dev/null >/dev/null 2>&1 &",
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let reply = TcpStream::connect(("127.0.0.1", port)).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"vesper-echo\n")?;
            let mut line = String::new();
            BufReader::new(s).read_line(&mut line)?;
            Ok(line)
        });
        match reply {
            Ok(l) if l.trim() == "vesper-echo" => return,
            other => assert!(
                Instant::now() < deadline,
                "no echo through hostfwd port {port}: {other:?}"
            ),
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn boots_with_its_frontend_from_the_package(d: &Daemon, port: u16) -> f64 {
    let t = Instant::now();
    let disk = disk();
    let fwd = format!("user,hostfwd=tcp:127.0.0.1:{port}-:7777");
    let st = d.vm_start_with(
        VM,
        &[
            "--disk",
            disk.to_str().unwrap(),
            "--snapshot",
            "--firmware",
            "bios",
            "--memory",
            "1024",
            "--net",
            &fwd,
            "--allow-reboot",
            "--boot-timeout",
            "300",
        ],
    );
    let boot = t.elapsed().as_secs_f64();
    assert_eq!(
        st["guest"]["kernel_release"],
        kit().release.as_str(),
        "{st}"
    );
    d.wait_console(VM, "vesper-init: hand ready", WAIT);
    // systemd loaded it at boot from the package's modules-load.d entry, built by DKMS.
    assert!(sh(d, "cat /etc/modules-load.d/vesper.conf").contains("vesper_front"));
    assert!(sh(d, "lsmod").contains("vesper_front"));
    let dkms = sh(d, "dkms status");
    assert!(
        dkms.contains("vesper-frontend") && dkms.contains("installed"),
        "{dkms}"
    );
    assert!(sh(d, "ip -4 -o addr show").contains("10.0.2.15"));
    boot
}

fn reports_a_killed_systemd_service_and_an_oom_kill(d: &Daemon) {
    d.cli(&[
        "insmod",
        VM,
        &module("vesper_exit_probe"),
        "watch_comm=websvc",
        "quiet=1",
    ])
    .ok();
    d.cli(&["insmod", VM, &module("vesper_oom_probe")]).ok();
    let lsmod = d.cli(&["lsmod", VM]).ok().stdout;
    assert!(
        lsmod.contains("vesper_exit_probe") && lsmod.contains("vesper_oom_probe"),
        "{lsmod}"
    );
    d.hand(VM, "start websvc", "started websvc");
    assert!(sh(d, "systemctl is-active vesper-svc@websvc").contains("active"));
    sh(d, "systemctl kill -s KILL vesper-svc@websvc");
    let exit = wait_event(d, "service_exit", |e| {
        e["kind"] == "service_exit" && e["payload"]["comm"] == "websvc"
    });
    assert_eq!(exit["payload"]["signal"], 9, "{exit}");
    d.hand(VM, "oom", "oom hog pid=");
    let oom = wait_event(d, "oom", |e| e["kind"] == "oom");
    assert_eq!(oom["payload"]["comm"], "hog", "{oom}");
}

fn debugs_systemds_tasks(d: &Daemon) {
    let ps = d.debug(&["ps", VM]).result();
    let tasks = ps["tasks"].as_array().expect("tasks");
    let comm = |pid: i64| {
        tasks
            .iter()
            .find(|t| t["pid"] == pid)
            .map(|t| t["comm"].clone())
    };
    assert_eq!(comm(1), Some(Value::from("systemd")), "{ps}");
    assert!(tasks.iter().any(|t| t["comm"] == "systemd-journal"), "{ps}");
    d.hand(VM, "start sleeper", "started sleeper");
    std::thread::sleep(Duration::from_millis(500));
    let pid = sh(d, "systemctl show -p MainPID --value vesper-svc@sleeper");
    let bt = d.debug(&["bt", VM, pid.trim()]).result();
    let frames: Vec<&str> = bt["frames"]
        .as_array()
        .expect("frames")
        .iter()
        .filter_map(|f| f["function"].as_str())
        .collect();
    assert!(
        frames.iter().any(|f| f.starts_with("schedule+")),
        "{frames:?}"
    );
    assert_eq!(bt["end"]["reason"], "user_space", "{bt}");
}

fn reboots_with_its_frontend_back(d: &Daemon) {
    let before = d.console(VM).len();
    d.cli(&["vm", "send", VM, "sh systemctl reboot"]).ok();
    wait_event(d, "guest_up generation 2", |e| {
        e["kind"] == "guest_up" && e["payload"]["generation"] == 2
    });
    let resets = d.events(&["--kind", "reset"]).len();
    assert_eq!(resets, 1, "one reboot, one reset: {:#?}", d.events(&[]));
    let deadline = Instant::now() + WAIT;
    while !d.console(VM)[before..].contains("vesper-init: hand ready") {
        assert!(Instant::now() < deadline, "the hand did not come back");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(sh(d, "lsmod").contains("vesper_front"));
}

fn panics_into_a_vmcore_crash_opens(d: &Daemon, dir: &std::path::Path) {
    d.hand(VM, "panic", "panicking");
    wait_event(d, "guest_panicked", |e| e["kind"] == "guest_panicked");
    let deadline = Instant::now() + WAIT;
    let core = loop {
        let out = d.cli(&["--json", "debug", "dumps", VM]);
        if let Some(p) = out.json()["result"]["dumps"][0]["path"].as_str() {
            break PathBuf::from(p);
        }
        assert!(Instant::now() < deadline, "no vmcore:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let Some(vmlinux) = debug_vmlinux("disk guest vmcore in crash") else {
        return;
    };
    // crash: the panicking task's backtrace (crash 8.0.2's `ps` cannot walk 6.1's pid
    // IDR, so the task list is drgn's).
    let cmds = dir.join("crash.cmds");
    std::fs::write(&cmds, "bt\nquit\n").unwrap();
    let out = Command::new("crash")
        .arg("-s")
        .args([&vmlinux, &core])
        .arg("-i")
        .arg(&cmds)
        .output()
        .expect("crash");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("vesper-hand") && text.contains("panic"),
        "crash bt of the disk guest's vmcore:\n{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let script = dir.join("tasks.py");
    std::fs::write(
        &script,
        "from drgn.helpers.linux.pid import for_each_task\nprint(sorted({t.comm.string_().decode() for t in for_each_task(prog)}))\n",
    )
    .unwrap();
    let out = Command::new("drgn")
        .arg("-c")
        .arg(&core)
        .arg("-s")
        .arg(&vmlinux)
        .arg(&script)
        .output()
        .expect("drgn");
    let tasks = String::from_utf8_lossy(&out.stdout);
    for comm in ["'systemd'", "'systemd-journal'", "'vesper-hand'"] {
        assert!(
            tasks.contains(comm),
            "drgn's tasks of the vmcore lack {comm}: {tasks}"
        );
    }
}

#[test]
fn a_debian_disk_guest_is_booted_probed_watched_debugged_rebooted_and_dumped() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&["--dump-on-panic"]);
    let port = free_port();
    let modified = || {
        std::fs::metadata(disk())
            .and_then(|m| m.modified())
            .unwrap()
    };
    let built = modified();
    let boot = boots_with_its_frontend_from_the_package(&d, port);
    println!("disk guest: vm start to guest_up in {boot:.1} s (TCG or KVM as chosen)");
    port_forward_answers(&d, port);
    reports_a_killed_systemd_service_and_an_oom_kill(&d);
    debugs_systemds_tasks(&d);
    reboots_with_its_frontend_back(&d);
    panics_into_a_vmcore_crash_opens(&d, dir.path());
    // The image itself was never written (--snapshot).
    assert_eq!(modified(), built, "--snapshot wrote the kit's disk image");
}
