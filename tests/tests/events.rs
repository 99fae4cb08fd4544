//! Event stream end to end: real guests, real probes, real QEMU events.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{bin_dir, module, Daemon};

const WAIT: Duration = Duration::from_secs(60);

fn kill_svc(d: &Daemon, guest: &str) {
    d.hand(guest, "start svc", "started svc");
    d.hand(guest, "kill 9 svc", "killed svc");
}

#[test]
fn subscribers_follow_filter_resume_and_a_slow_one_gets_a_gap() {
    let d = Daemon::start(&["--event-buffer", "4"]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);
    d.watch_svc("vm1");

    // A follower through the CLI, filtered to service exits.
    let mut follower = Command::new(bin_dir().join("vesper"))
        .args([
            "--socket",
            d.socket.to_str().unwrap(),
            "--json",
            "events",
            "--follow",
            "--kind",
            "service_exit",
        ])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let lines = BufReader::new(follower.stdout.take().unwrap());
    let (tx, rx) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for l in lines.lines().map_while(Result::ok) {
            let _ = tx.send(serde_json::from_str::<Value>(&l).unwrap()["result"].clone());
        }
    });
    // A subscriber that connects and does not read.
    let mut slow = UnixStream::connect(&d.socket).unwrap();
    slow.write_all(b"{\"op\":\"subscribe\",\"follow\":true}\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));

    let n = 20;
    for _ in 0..n {
        kill_svc(&d, "vm1");
    }
    // The slow one was never waited for; read it now (a reader silent for longer than
    // the daemon's write timeout is dropped): it is told how many it missed.
    slow.set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut gap = None;
    let mut r = BufReader::new(slow);
    for _ in 0..200 {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        let v: Value = serde_json::from_str(&line).unwrap();
        if v["result"]["reply"] == "gap" {
            gap = v["result"]["missed"].as_u64();
            break;
        }
    }
    assert!(gap.is_some_and(|m| m > 0), "the slow subscriber got no gap");

    let mut got = Vec::new();
    let deadline = Instant::now() + WAIT;
    while got.len() < n {
        let r = rx
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .expect("follower events");
        assert_eq!(r["reply"], "event", "{r}");
        vesper_e2e::check_event_shape(&r);
        assert_eq!(r["kind"], "service_exit");
        assert_eq!(r["payload"]["comm"], "svc");
        got.push(r);
    }
    let seqs: Vec<u64> = got.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(seqs.windows(2).all(|w| w[0] < w[1]), "{seqs:?}");
    let _ = follower.kill();
    let _ = follower.wait();

    // Resume from the fifth exit: exactly the later events of that kind.
    let from = seqs[4].to_string();
    let resumed = d.events(&["--since", &from, "--kind", "service_exit", "--guest", "vm1"]);
    assert_eq!(
        resumed
            .iter()
            .map(|e| e["seq"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        seqs[4..]
    );
    assert!(d.events(&["--guest", "nobody"]).is_empty());
    let all = d.events(&[]);
    assert!(all
        .iter()
        .any(|e| e["kind"] == "guest_up" && e["source"]["type"] == "frontend"));

    // vm status reports the failure (LSB 1).
    let st = d.cli(&["vm", "status", "vm1"]);
    assert_eq!(st.code, 1, "{st:?}");
    assert!(
        st.stdout.contains("svc") && st.stdout.contains("signal 9"),
        "{st:?}"
    );

    // Malformed subscriptions get their own errors; the daemon keeps serving.
    let bad = d.cli(&["events", "--kind", "bogus"]);
    assert_eq!(bad.code, 2, "{bad:?}");
    assert!(
        bad.stderr.contains("unknown event kind \"bogus\""),
        "{bad:?}"
    );
    let mut raw = UnixStream::connect(&d.socket).unwrap();
    raw.write_all(b"{\"op\":\"subscribe\",\"filter\":{\"kinds\":[\"nope\"]}}\n")
        .unwrap();
    let mut line = String::new();
    BufReader::new(raw).read_line(&mut line).unwrap();
    assert!(
        line.contains("bad_request") && line.contains("nope"),
        "{line}"
    );
    // A client that disconnects mid-stream.
    let mut gone = UnixStream::connect(&d.socket).unwrap();
    gone.write_all(b"{\"op\":\"subscribe\",\"follow\":true,\"from_seq\":1}\n")
        .unwrap();
    drop(gone);
    assert_eq!(d.cli(&["vm", "list"]).code, 0);
}

#[test]
fn a_panic_arrives_as_a_probe_event_and_as_qmp_guest_panicked() {
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);
    d.cli(&["insmod", "vm1", &module("vesper_panic_probe")])
        .ok();
    assert_eq!(d.cli(&["vm", "status", "vm1"]).code, 0);
    d.hand("vm1", "panic", "panicking");
    let deadline = Instant::now() + WAIT;
    loop {
        let ev = d.events(&["--guest", "vm1"]);
        let kinds: Vec<&str> = ev.iter().filter_map(|e| e["kind"].as_str()).collect();
        if kinds.contains(&"vm_exit") {
            assert!(kinds.contains(&"panic"), "{kinds:?}");
            assert!(kinds.contains(&"guest_panicked"), "{kinds:?}");
            let panic = ev.iter().find(|e| e["kind"] == "panic").unwrap();
            assert_eq!(panic["payload"]["message"], "sysrq triggered crash");
            assert_eq!(panic["source"]["type"], "probe");
            let qmp = ev.iter().find(|e| e["kind"] == "guest_panicked").unwrap();
            assert_eq!(qmp["source"]["event"], "GUEST_PANICKED");
            break;
        }
        assert!(Instant::now() < deadline, "{kinds:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        d.cli(&["vm", "status", "vm1"]).code,
        3,
        "an exited VM is not running"
    );
}

#[test]
fn a_uid_that_is_not_allowed_is_refused_with_a_clear_error() {
    let d = Daemon::start(&["--socket-mode", "666"]);
    let vesper = bin_dir().join("vesper");
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&vesper)
        .args(["--socket", d.socket.to_str().unwrap(), "vm", "list"])
        .output()
        .expect("setpriv (util-linux)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(77), "{stderr}");
    assert!(stderr.contains("permission denied: uid 65534"), "{stderr}");
    // The owner is still served.
    assert_eq!(d.cli(&["vm", "list"]).code, 0);
    // Allowed explicitly, the same uid gets in.
    let d2 = Daemon::start(&["--socket-mode", "666", "--allow-uid", "65534"]);
    let ok = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(&vesper)
        .args(["--socket", d2.socket.to_str().unwrap(), "vm", "list"])
        .output()
        .unwrap();
    assert_eq!(
        ok.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
}

#[test]
fn a_guest_reboot_is_one_reset_event_and_one_new_generation() {
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand", "--allow-reboot"]);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);
    d.hand("vm1", "reboot", "rebooting");
    // The firmware's own resets (SeaBIOS resets a warm-booted machine again) all come
    // before the rebooted kernel's hello: once generation 2 is up, the stream is whole.
    let deadline = Instant::now() + Duration::from_secs(120);
    let ev = loop {
        let ev = d.events(&["--guest", "vm1"]);
        if ev
            .iter()
            .any(|e| e["kind"] == "guest_up" && e["payload"]["generation"] == 2)
        {
            break ev;
        }
        assert!(
            Instant::now() < deadline,
            "no generation 2: {ev:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    // What a subscriber is told about the VM's life: up, one reset, up again; nothing
    // from QEMU twice (nor a shutdown, stop or panic).
    let told: Vec<String> = ev
        .iter()
        .filter(|e| e["kind"] == "guest_up" || e["source"]["type"] == "qmp")
        .map(|e| match e["kind"].as_str() {
            Some("guest_up") => format!("guest_up {}", e["payload"]["generation"]),
            k => format!("{} {}", k.unwrap_or("?"), e["source"]["event"]),
        })
        .collect();
    assert_eq!(
        told,
        ["guest_up 1", "reset \"RESET\"", "guest_up 2"],
        "{ev:#?}"
    );
    let reset = ev.iter().find(|e| e["kind"] == "reset").unwrap();
    assert_eq!(reset["payload"]["guest"], true, "{reset}");
    assert_eq!(reset["payload"]["reason"], "guest-reset", "{reset}");
    let up = d.cli(&["--json", "vm", "list"]).ok().json();
    assert_eq!(up["result"]["vms"][0]["guest"]["generation"], 2, "{up}");
}
