//! Kernel-debug sessions end to end: the kit's real guest under QEMU, its kernel read
//! from the host through `vesper debug` — symbols with KASLR resolved, typed values,
//! the task list, the printk ring — while it runs, while it is paused, and while its
//! only CPU spins with interrupts off (the frontend cannot answer then).

use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{module, CliOutput, Daemon};

fn jiffies(d: &Daemon) -> u64 {
    d.debug(&["read", "vm1", "jiffies"]).result()["value"]
        .as_u64()
        .expect("jiffies is a number")
}

fn ps(d: &Daemon) -> Vec<Value> {
    let r = d.debug(&["ps", "vm1"]).result();
    assert!(r["torn"].is_null(), "{r}");
    r["tasks"].as_array().expect("tasks").clone()
}

fn dmesg(d: &Daemon) -> String {
    let r = d.debug(&["dmesg", "vm1"]).result();
    r["records"]
        .as_array()
        .expect("records")
        .iter()
        .map(|r| r["text"].as_str().unwrap_or_default().to_string() + "\n")
        .collect()
}

#[test]
fn a_running_guest_kernel_is_read_from_the_host_without_its_help() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start_with("vm1", &["--mode", "hand"]);
    d.hand("vm1", "start svc", "started svc");
    let release = vm["guest"]["kernel_release"].as_str().unwrap().to_string();

    // The kernel found in RAM is the one the frontend reported, KASLR resolved.
    let info = d.debug(&["info", "vm1"]).result();
    assert_eq!(info["release"], release.as_str(), "{info}");
    assert!(info["symbols"].as_u64().unwrap() > 10_000, "{info}");

    // Symbols both ways.
    let sym = d.debug(&["sym", "vm1", "jiffies"]).result();
    let addr = sym["symbols"][0]["addr"].as_u64().unwrap();
    assert!(addr >= 0xffff_ffff_8000_0000, "{sym}");
    let back = d
        .debug(&["sym", "vm1", &format!("{:#x}", addr + 4)])
        .result();
    assert_eq!(back["symbols"][0]["name"], "jiffies", "{back}");
    assert_eq!(back["symbols"][0]["offset"], 4, "{back}");

    // jiffies moves while the guest runs.
    let j0 = jiffies(&d);
    std::thread::sleep(Duration::from_millis(1500));
    let j1 = jiffies(&d);
    assert!(j1 > j0, "jiffies {j0} then {j1}");

    // Typed reads through BTF.
    let comm = d.debug(&["read", "vm1", "init_task.comm"]).result();
    assert_eq!(comm["value"], "swapper/0", "{comm}");
    assert_eq!(comm["type"], "char [16]", "{comm}");
    let rel = d
        .debug(&["read", "vm1", "init_uts_ns.name.release"])
        .result();
    assert_eq!(rel["value"], release.as_str(), "{rel}");
    let pids = d
        .debug(&["read", "vm1", "init_task.pid", "--count", "1"])
        .result();
    assert_eq!(pids["value"], 0, "{pids}");

    // The task list: the idle task, PID 1 and the service the hand started.
    let tasks = ps(&d);
    let by_pid = |pid: i64| tasks.iter().find(|t| t["pid"] == pid).cloned();
    assert_eq!(by_pid(0).unwrap()["comm"], "swapper/0");
    assert!(by_pid(1).is_some(), "{tasks:?}");
    assert!(
        tasks
            .iter()
            .any(|t| t["comm"] == "svc" && t["kernel_thread"] == false),
        "{tasks:?}"
    );
    assert!(tasks
        .iter()
        .any(|t| t["kernel_thread"] == true && t["comm"] == "kthreadd"));

    // The kernel log, from the printk ring.
    let log = dmesg(&d);
    assert!(log.contains("Linux version"), "{log}");
    assert!(log.contains("vesper_front"), "{log}");

    // gdb through QEMU's gdbstub, with the symbol file made from kallsyms.
    let session = d.debug(&["gdb", "vm1"]).result();
    let mut gdb: Vec<String> = session["command"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    gdb.extend(
        [
            "-batch",
            "-ex",
            "p (unsigned long)jiffies",
            "-ex",
            "bt 1",
            "-ex",
            "x/s (char *)&init_uts_ns + 130",
            "-ex",
            "detach",
        ]
        .map(String::from),
    );
    let before = jiffies(&d);
    let out = std::process::Command::new(&gdb[0])
        .args(&gdb[1..])
        .output()
        .expect("run gdb");
    let after = jiffies(&d);
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let value: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("$1 = "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| {
            panic!(
                "no jiffies from gdb:\n{text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    assert!(
        before <= value && value <= after,
        "{before} <= {value} <= {after}"
    );
    let frame0 = text
        .lines()
        .find(|l| l.starts_with("#0"))
        .unwrap_or_default();
    assert!(
        frame0.contains(" in ") && !frame0.contains("?? ("),
        "the stopped CPU's frame is named: {text}"
    );
    assert!(
        text.contains(&format!("<init_uts_ns+130>:\t\"{release}\"")),
        "{text}"
    );
    // Detached, the guest runs on.
    let deadline = Instant::now() + Duration::from_secs(10);
    while jiffies(&d) <= after {
        assert!(
            Instant::now() < deadline,
            "the guest stayed stopped after gdb detached"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Garbage on the gdb endpoint, or a client that interrupts (^C) and hangs up,
    // costs nothing: the guest runs on. A guest the operator paused stays paused.
    let send = |bytes: &[u8]| {
        use std::io::Write;
        let sock = session["socket"].as_str().unwrap();
        let mut s = std::os::unix::net::UnixStream::connect(sock).expect("gdb endpoint");
        let _ = s.write_all(bytes);
        std::thread::sleep(Duration::from_millis(300));
    };
    let runs_on = |what: &str| {
        let j = jiffies(&d);
        let deadline = Instant::now() + Duration::from_secs(10);
        while jiffies(&d) <= j {
            assert!(Instant::now() < deadline, "the guest stayed stopped {what}");
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    send(b"$qXfer:garbage\x00\xff#zz+++$m,#00$vCont;q#bb$g#00");
    runs_on("after garbage on the gdb socket");
    send(b"\x03");
    runs_on("after a client interrupted it and hung up");
    d.cli(&["--json", "vm", "pause", "vm1"]).ok().result();
    send(b"$g#67");
    let j = jiffies(&d);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        jiffies(&d),
        j,
        "a paused guest was resumed by the gdb endpoint"
    );
    d.cli(&["--json", "vm", "resume", "vm1"]).ok().result();
    runs_on("after `vm resume`");

    // Bad input: each its own error; the guest and vesperd go on.
    let out = d.debug(&["read", "vm1", "no_such_symbol_xyz"]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(
        out.stdout.contains("no symbol \\\"no_such_symbol_xyz\\\""),
        "{out:?}"
    );
    let out = d.debug(&["read", "vm1", "init_task.no_such_field"]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(
        out.stdout.contains("no_such_field") && out.stdout.contains("task_struct"),
        "{out:?}"
    );
    let out = d.debug(&["read", "vm1", "*(struct task_struct *)0xffffc9ffffff0000"]);
    assert_eq!(out.code, 1, "{out:?}");
    assert!(out.stdout.contains("not mapped"), "{out:?}");
    let out = d.debug(&["read", "vm1", "init_task+4"]);
    assert_eq!(out.code, 65, "{out:?}");
    let out = d.debug(&["read", "vm1", "jiffies", "--count", "0"]);
    assert_eq!(out.code, 65, "{out:?}");
    let out = d.debug(&["ps", "vm9"]);
    assert_eq!(out.code, 68, "{out:?}");
    d.cli(&["lsmod", "vm1"]).ok();
}

#[test]
fn a_paused_guest_and_a_hung_guest_are_read_the_same() {
    // A 3 s step timeout: the hung guest's frontend is given up on quickly.
    let d = Daemon::start(&["--step-timeout-ms", "3000"]);
    d.vm_start("vm1");

    // Paused: time stands still in the guest, and everything still reads.
    d.cli(&["--json", "vm", "pause", "vm1"]).ok().result();
    let j0 = jiffies(&d);
    std::thread::sleep(Duration::from_millis(800));
    assert_eq!(jiffies(&d), j0, "jiffies moved in a paused guest");
    assert!(dmesg(&d).contains("Linux version"));
    assert!(ps(&d).iter().any(|t| t["pid"] == 1));
    d.cli(&["--json", "vm", "resume", "vm1"]).ok().result();
    let deadline = Instant::now() + Duration::from_secs(10);
    while jiffies(&d) == j0 {
        assert!(
            Instant::now() < deadline,
            "jiffies never moved after resume"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    // Hung: its only CPU spins with interrupts off.
    d.cli(&[
        "insmod",
        "vm1",
        &module("vesper_hang"),
        "hang_ms=20000",
        "delay_ms=300",
    ])
    .ok();
    let deadline = Instant::now() + Duration::from_secs(15);
    while !dmesg(&d).contains("vesper_hang: spinning with interrupts off") {
        assert!(Instant::now() < deadline, "the hang never started");
        std::thread::sleep(Duration::from_millis(100));
    }
    let hung = Instant::now();
    // The frontend cannot answer ...
    let out = d.cli(&["dmesg", "vm1"]);
    assert_eq!(out.code, vesper_api::TIMEOUT_EXIT_CODE, "{out:?}");
    // ... but the host reads the kernel: the log, the spinning thread, a stopped clock.
    let j0 = jiffies(&d);
    let tasks = ps(&d);
    let spinner = tasks
        .iter()
        .find(|t| t["comm"] == "vesper_hang")
        .unwrap_or_else(|| panic!("{tasks:?}"));
    assert_eq!(spinner["state"], "R", "{spinner}");
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(jiffies(&d), j0, "no tick reaches a CPU with interrupts off");
    assert!(
        hung.elapsed() < Duration::from_secs(18),
        "the checks outlasted the hang ({:?}): they proved nothing",
        hung.elapsed()
    );

    // A vmcore of the hung guest: read back by vesper itself (no daemon) and by gdb.
    let dump = d.debug(&["dump", "vm1", "--name", "hung.vmcore"]).result();
    let path = dump["dump"]["path"].as_str().unwrap().to_string();
    let ram = dump["dump"]["ram_bytes"].as_u64().unwrap();
    let size = std::fs::metadata(&path).unwrap().len();
    assert!(size < ram, "zero pages are left out: {size} of {ram} bytes");
    let listed = d.debug(&["dumps", "vm1"]).result();
    assert_eq!(listed["dumps"][0]["path"], path.as_str(), "{listed}");
    let from_file = |args: &[&str]| {
        let mut a = vec!["--json", "debug"];
        a.extend_from_slice(args);
        // No --socket: the file is read in process.
        let out: CliOutput = std::process::Command::new(vesper_e2e::bin_dir().join("vesper"))
            .args(&a)
            .output()
            .unwrap()
            .into();
        out.result()
    };
    let log: String = from_file(&["dmesg", &path])["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        log.contains("vesper_hang: spinning with interrupts off"),
        "{log}"
    );
    assert_eq!(
        from_file(&["read", &path, "init_task.comm"])["value"],
        "swapper/0"
    );
    let uts = from_file(&["sym", &path, "init_uts_ns"])["symbols"][0]["addr"]
        .as_u64()
        .unwrap();
    let gdb = std::process::Command::new("gdb")
        .args(["-batch", "-nx", "-ex", &format!("core-file {path}")])
        .args(["-ex", &format!("x/s {:#x}", uts + 130)])
        .output()
        .expect("run gdb");
    let text = String::from_utf8_lossy(&gdb.stdout);
    assert!(
        text.contains("\"6.1."),
        "gdb read the release from the vmcore: {text}"
    );
    // A name that is not a plain file name is refused; nothing is written.
    let out = d.debug(&["dump", "vm1", "--name", "../escape.vmcore"]);
    assert_ne!(out.code, 0, "{out:?}");
    assert!(!d.run_dir.path().join("dumps/escape.vmcore").exists());
}

#[test]
fn a_panicking_guest_is_dumped_before_failover_restarts_it() {
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        "[host]\nmax_guests = 2\nmax_memory_mib = 1024\n\n\
         [[guest]]\nname = \"vm1\"\nmemory_mib = 512\nmode = \"hand\"\n\n\
         [[rule]]\non = \"guest_panicked\"\naction = \"restart\"\n",
    )
    .unwrap();
    let d = Daemon::start(&["--dump-on-panic", "--policy", policy.to_str().unwrap()]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.hand("vm1", "panic", "panicking");

    // The vmcore appears, complete, and the guest is restarted after it.
    let deadline = Instant::now() + Duration::from_secs(120);
    let path = loop {
        let listed = d.debug(&["dumps", "vm1"]).result();
        if let Some(p) = listed["dumps"][0]["path"].as_str() {
            break p.to_string();
        }
        assert!(Instant::now() < deadline, "no vmcore:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    let exit = loop {
        let ev = d.events(&["--guest", "vm1", "--kind", "vm_exit"]);
        if let Some(e) = ev.first() {
            break e.clone();
        }
        assert!(
            Instant::now() < deadline,
            "vm1 never stopped for its restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let written = std::fs::metadata(&path)
        .unwrap()
        .modified()
        .unwrap()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    assert!(
        written <= exit["time_ns"].as_u64().unwrap(),
        "the restart stopped the VM before its vmcore was written"
    );
    let out: CliOutput = std::process::Command::new(vesper_e2e::bin_dir().join("vesper"))
        .args(["--json", "debug", "dmesg", &path])
        .output()
        .unwrap()
        .into();
    let log: String = out.result()["records"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["text"].as_str().unwrap_or_default().to_string() + "\n")
        .collect();
    assert!(
        log.contains("Kernel panic - not syncing: sysrq triggered crash"),
        "{log}"
    );
    // The restarted guest comes up again.
    let deadline = Instant::now() + Duration::from_secs(180);
    while d.events(&["--guest", "vm1", "--kind", "guest_up"]).len() < 2 {
        assert!(
            Instant::now() < deadline,
            "vm1 never came back:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    // The vmcores outlive the VM; a name that is no guest's lists nothing.
    d.cli(&["vm", "stop", "vm1"]).ok();
    let listed = d.debug(&["dumps", "vm1"]).result();
    assert_eq!(listed["dumps"][0]["path"], path.as_str(), "{listed}");
    let out = d.debug(&["dumps", "bad.name"]);
    assert_eq!(out.code, 68, "{out:?}");
}
