//! `vesper debug gdb` on a builtin VM: the VMM's own gdb server (the `gdbstub` crate over
//! the hypervisor's debug handle), driven by real gdb in batch mode against the kit's
//! mini frontend, booted in vesperd's builtin VMM with its ELF as gdb's file.
//!
//! What a user would notice: registers, memory at the frontend's symbols and a
//! backtrace; a breakpoint hit by a console command, then single steps (on kvm_pvm the
//! breakpoint lives in a debug register: an int3 would end the VM there); what this
//! host's KVM cannot do is refused with gdb's own error, never a hang; after gdb
//! detaches the guest runs and serves as before, and so it does after garbage on the
//! socket, a client that interrupts and hangs up, and a second client turned away.
//! Skips loudly without a usable /dev/kvm.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{kvm_usable, Daemon};
use vesper_hypervisor::KvmBacking;

/// A guard against a gdb that never ends (the test fails; nothing is timed).
const GDB_LIMIT: Duration = Duration::from_secs(120);

fn session(d: &Daemon, guest: &str) -> Value {
    let out = d.cli(&["--json", "debug", "gdb", guest]);
    assert_eq!(out.code, 0, "{out:?}\n{}", d.log());
    out.json()["result"].clone()
}

/// Runs the session's gdb command in batch mode with `commands`; returns its stdout
/// and stderr together.
fn gdb(session: &Value, commands: &[&str]) -> String {
    let words: Vec<String> = session["command"]
        .as_array()
        .expect("command")
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    let mut cmd = Command::new(&words[0]);
    cmd.args(&words[1..]).arg("-batch");
    for c in commands {
        cmd.args(["-ex", c]);
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run gdb (Debian's gdb package)");
    let deadline = Instant::now() + GDB_LIMIT;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!(
                "gdb hung:\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("--- gdb {commands:?}:\n{text}");
    text
}

/// The guest runs and serves: a console command answered, and a command through the
/// Vesper protocol that needs the frontend.
fn serves(d: &Daemon, guest: &str, n: &mut u32) {
    *n += 1;
    let name = format!("after{n}");
    d.hand(guest, &format!("start {name}"), &format!("started {name}"));
    let lsmod = d.cli(&["--json", "lsmod", guest]).ok();
    assert_eq!(lsmod.json()["result"]["modules"][0]["frontend"], true);
}

fn line<'a>(text: &'a str, start: &str) -> &'a str {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting with {start:?} in:\n{text}"))
}

#[test]
fn gdb_debugs_a_builtin_mini_frontend_vm_and_leaves_it_running() {
    if !kvm_usable("gdb_debugs_a_builtin_mini_frontend_vm_and_leaves_it_running") {
        return;
    }
    let d = Daemon::start(&[]);
    let st = d.vm_start_with("g1", &["--vmm", "builtin", "--kernel", "mini"]);
    assert_eq!(st["vmm"], "builtin", "{st}");
    let mut n = 0;

    let s = session(&d, "g1");
    let socket = s["socket"].as_str().unwrap().to_string();
    assert!(socket.ends_with("guests/g1/gdb.sock"), "{s}");
    assert!(
        s["symbol_file"]
            .as_str()
            .is_some_and(|f| f.ends_with("mini-frontend.elf")),
        "{s}"
    );
    // Asked again: the same endpoint.
    assert_eq!(session(&d, "g1")["socket"], socket.as_str());

    // Registers, memory at the frontend's symbols, a backtrace, the vCPUs.
    let out = gdb(
        &s,
        &[
            "info registers rip",
            "p armed",
            "x/s log_ring",
            "bt",
            "info threads",
            "monitor support",
            "monitor regs",
            "detach",
        ],
    );
    let rip = line(&out, "rip ");
    assert!(
        rip.contains("0x40") && rip.contains('<'),
        "a named rip: {rip}"
    );
    assert!(out.contains("$1 = 1"), "the idle timer is armed:\n{out}");
    assert!(
        out.contains("<log_ring>:\t\"vesper-mini: mini frontend starting"),
        "the console log ring read from guest memory:\n{out}"
    );
    // The stopped vCPU's frame is named ("#0  0x... in f (" or, at a line's start, "#0  f (").
    let frame0 = line(&out, "#0 ");
    assert!(
        frame0.contains(" (") && !frame0.contains("?? ("),
        "{frame0}"
    );
    assert!(
        out.contains("mini_main (") && out.contains("_start ()"),
        "{out}"
    );
    assert!(out.contains("(vCPU 0)"), "{out}");
    assert!(
        out.contains("cr3=0x9000") && out.contains("efer=0x500"),
        "{out}"
    );
    assert!(out.contains("[Inferior 1 (process 1) detached]"), "{out}");
    serves(&d, "g1", &mut n);

    // A breakpoint on the console handler, hit by a console command, then single steps.
    let support = line(&out, "single step: ").to_string();
    let pinging = Arc::new(AtomicBool::new(true));
    let pinger = {
        let (pinging, sock) = (pinging.clone(), d.socket.clone());
        std::thread::spawn(move || {
            while pinging.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(300));
                // Fails while the guest is stopped and cannot read its console.
                let _ = Command::new(vesper_e2e::bin_dir().join("vesper"))
                    .arg("--socket")
                    .arg(&sock)
                    .args(["vm", "send", "g1", "ping"])
                    .output();
            }
        })
    };
    let out = gdb(
        &s,
        &[
            "break hand_run",
            "continue",
            "bt 1",
            "stepi",
            "info registers rip",
            "stepi",
            "info registers rip",
            "delete",
            "detach",
        ],
    );
    pinging.store(false, Ordering::Relaxed);
    pinger.join().unwrap();
    assert!(
        out.contains("Breakpoint 1, hand_run (line=") && out.contains("\"ping\""),
        "stopped in hand_run on the ping:\n{out}"
    );
    if support.contains("single step: true") {
        let rips: Vec<&str> = out.lines().filter(|l| l.starts_with("rip ")).collect();
        assert_eq!(rips.len(), 2, "{out}");
        assert!(rips.iter().all(|r| r.contains("<hand_run+")), "{rips:?}");
        assert_ne!(rips[0], rips[1], "each step moved: {rips:?}");
    } else {
        assert!(
            out.contains("Cannot") || out.contains("not supported"),
            "{out}"
        );
        eprintln!("*** this host's KVM cannot single-step: gdb got an error, as it should");
    }
    serves(&d, "g1", &mut n);

    // What this KVM cannot do is an error from gdb, not a hang: a fifth hardware
    // breakpoint (four debug registers), and on kvm_pvm an access watchpoint.
    let mut asks = vec![
        "hbreak front_poll",
        "hbreak console_poll",
        "hbreak relay_poll",
    ];
    asks.extend(["hbreak hand_run", "hbreak clock_ns", "continue", "delete"]);
    let pvm = KvmBacking::detect() == KvmBacking::Paravirtual;
    if pvm {
        asks.extend(["awatch next_pid", "continue"]);
    }
    asks.push("detach");
    let out = gdb(&s, &asks);
    assert!(
        out.contains("Cannot insert hardware breakpoint")
            || out.contains("Could not insert hardware breakpoint"),
        "{out}"
    );
    if pvm {
        assert!(
            out.contains("Could not insert hardware watchpoint"),
            "{out}"
        );
        eprintln!("*** kvm_pvm: no data watchpoints (they never fire there); gdb was told so");
    }
    assert!(out.contains("detached"), "{out}");
    serves(&d, "g1", &mut n);

    // Garbage, a client that interrupts a continue and hangs up, a silent one: each
    // costs nothing, the guest runs on.
    let send = |bytes: &[u8]| {
        let mut c = UnixStream::connect(&socket).expect("gdb endpoint");
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = c.write_all(bytes);
        // Read whatever comes back until the server closes or goes quiet.
        let mut buf = [0u8; 4096];
        while matches!(c.read(&mut buf), Ok(n) if n > 0) {}
    };
    send(b"$qXfer:garbage\x00\xff#zz+++$m,#00$vCont;q#bb$g#00");
    serves(&d, "g1", &mut n);
    {
        let mut c = UnixStream::connect(&socket).unwrap();
        c.write_all(b"+$vCont;c#a8").unwrap();
        std::thread::sleep(Duration::from_millis(200));
        c.write_all(b"\x03").unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while !String::from_utf8_lossy(&got).contains("$T02") {
            let n = c.read(&mut buf).expect("a stop reply to ^C");
            assert!(n > 0, "{:?}", String::from_utf8_lossy(&got));
            got.extend_from_slice(&buf[..n]);
        }
    }
    serves(&d, "g1", &mut n);
    drop(UnixStream::connect(&socket).unwrap());
    serves(&d, "g1", &mut n);

    // One client at a time: a second gdb is told why and ends; the first one's
    // leaving lets the guest run.
    let mut first = UnixStream::connect(&socket).unwrap();
    first.write_all(b"$?#3f").unwrap();
    first
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut buf = [0u8; 256];
    let n1 = first.read(&mut buf).unwrap();
    assert!(
        String::from_utf8_lossy(&buf[..n1]).contains("$T"),
        "attached"
    );
    let out = gdb(&s, &["info registers rip"]);
    assert!(
        out.contains("another gdb client is attached to g1"),
        "{out}"
    );
    drop(first);
    serves(&d, "g1", &mut n);

    // The reading commands need a Linux guest: their error is unchanged.
    let info = d.cli(&["debug", "info", "g1"]);
    assert_ne!(info.code, 0, "{info:?}");
    assert!(
        format!("{}{}", info.stdout, info.stderr).contains("builtin VMs are not supported"),
        "{info:?}"
    );

    // A stopped VM has nothing to debug; its socket goes with it.
    d.cli(&["vm", "stop", "g1"]).ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::path::Path::new(&socket).exists() {
        assert!(Instant::now() < deadline, "gdb.sock outlived its VM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = d.cli(&["debug", "gdb", "g1"]);
    assert_ne!(out.code, 0, "{out:?}");
}
