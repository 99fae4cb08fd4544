//! Daemon restart: a vesperd that detaches (SIGQUIT) leaves its VMs running; the next
//! vesperd on the same run directory adopts them, resumes their relay channels from
//! the cursors kept in the region (no stale re-read) and answers their standing wait,
//! without doorbells (QEMU cannot re-attach to a new ivshmem server).

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{module, Daemon};

const WAIT: Duration = Duration::from_secs(60);

/// Kills QEMU at the end whatever happened.
struct QemuGuard(i32);

impl Drop for QemuGuard {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.0),
            nix::sys::signal::Signal::SIGKILL,
        );
    }
}

/// The serial console reached with no daemon involved (while none runs: QEMU serves
/// one client at a time, and a running vesperd is it). Its output is read here, not
/// from console.log, which only a vesperd writes.
struct OwnConsole {
    input: std::os::unix::net::UnixStream,
    output: std::sync::Arc<std::sync::Mutex<String>>,
}

impl OwnConsole {
    fn connect(dir: &Path) -> Self {
        let input =
            std::os::unix::net::UnixStream::connect(vesper_api::run_dir::console_socket(dir))
                .expect("connect console socket");
        let mut out = input.try_clone().expect("clone");
        let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let text = output.clone();
        // Drained at once: an unread client stalls the guest's UART.
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = std::io::Read::read(&mut out, &mut buf) {
                text.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        Self { input, output }
    }

    /// Types `command`; returns the reply line starting `vesper-hand: reply_prefix`.
    fn hand(&mut self, command: &str, reply_prefix: &str) -> String {
        let before = self.output.lock().unwrap().len();
        self.input
            .write_all(format!("{command}\n").as_bytes())
            .expect("type into console");
        let needle = format!("vesper-hand: {reply_prefix}");
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let c = self.output.lock().unwrap()[before..].to_string();
            if let Some(at) = c.find(&needle) {
                if let Some(line) = c[at..].lines().next().filter(|_| c[at..].contains('\n')) {
                    return line.to_string();
                }
            }
            assert!(
                Instant::now() < deadline,
                "no {needle:?} after {command:?}:\n{c}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for OwnConsole {
    /// Hangs up for real (the reader thread holds a second descriptor of the socket),
    /// so that QEMU takes its next client.
    fn drop(&mut self) {
        let _ = self.input.shutdown(std::net::Shutdown::Both);
    }
}

/// Starts and SIGKILLs a svc through `hand`; returns its pid.
fn kill_svc(mut hand: impl FnMut(&str, &str) -> String) -> i64 {
    let pid = pid_of(&hand("start svc", "started svc"));
    hand("kill 9 svc", "killed svc");
    pid
}

fn pid_of(reply: &str) -> i64 {
    reply
        .split("pid=")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or_else(|| panic!("no pid in {reply:?}"))
}

fn exit_pids(recs: &[Value]) -> Vec<i64> {
    recs.iter()
        .map(|r| r["decoded"]["pid"].as_i64().expect("pid"))
        .collect()
}

fn service_exit_pids(d: &Daemon) -> Vec<i64> {
    let out = d.cli(&["--json", "events", "--kind", "service_exit"]).ok();
    out.stdout
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("JSON")["result"].clone())
        .filter(|r| r["reply"] == "event")
        .inspect(vesper_e2e::check_event_shape)
        .map(|r| r["payload"]["pid"].as_i64().expect("payload pid"))
        .collect()
}

#[test]
fn a_restarted_daemon_adopts_its_running_guest_without_re_reading_records() {
    let d1 = Daemon::start(&[]);
    d1.vm_start_with("vm1", &["--mode", "hand"]);
    let qemu = d1.qemu_pid("vm1");
    let _guard = QemuGuard(qemu);
    let vm_dir = vesper_api::run_dir::of(d1.run_dir.path(), "vm1");
    d1.wait_console("vm1", "vesper-init: hand ready", WAIT);
    d1.watch_svc("vm1");
    let first = kill_svc(|c, r| d1.hand("vm1", c, r));
    let recs = d1.wait_records("vm1", "vesper_exit_probe", "exit", WAIT, |r| !r.is_empty());
    assert_eq!(exit_pids(&recs), vec![first]);
    assert_eq!(service_exit_pids(&d1), vec![first]);
    assert!(vesper_api::run_dir::vm_record(&vm_dir).is_file());
    assert!(vesper_api::run_dir::channels_record(&vm_dir).is_file());

    // The daemon goes away; the VM does not.
    let run_dir = d1.detach();
    assert!(vesper_e2e_alive(qemu), "QEMU died with the detached daemon");
    // With no daemon, a client of our own types into the console.
    let mut own = OwnConsole::connect(&vm_dir);
    let second = kill_svc(|c, r| own.hand(c, r));
    drop(own);

    let d2 = Daemon::start_in(run_dir, &[]);
    let list = d2.cli(&["--json", "vm", "list"]).ok().json();
    let vm = list["result"]["vms"]
        .as_array()
        .expect("vms")
        .iter()
        .find(|v| v["name"] == "vm1")
        .unwrap_or_else(|| panic!("vm1 not adopted: {list}\n{}", d2.log()))
        .clone();
    assert_eq!(vm["state"], "up", "{vm}");
    assert_eq!(vm["pid"].as_i64(), Some(qemu as i64));
    assert!(
        vm["adopted"]
            .as_str()
            .unwrap_or("")
            .contains("no doorbells"),
        "{vm}"
    );

    // Exactly the exit of the outage: not the first one again.
    let recs = d2.wait_records(
        "vm1",
        "vesper_exit_probe",
        "exit",
        Duration::from_secs(5),
        |r| !r.is_empty(),
    );
    std::thread::sleep(Duration::from_millis(300));
    let recs_again = d2.relay_records("vm1", "vesper_exit_probe", "exit");
    assert_eq!(exit_pids(&recs), vec![second], "{recs:?}");
    assert_eq!(exit_pids(&recs_again), vec![second]);
    assert_eq!(service_exit_pids(&d2), vec![second]);

    // Without doorbells the next exit is still seen promptly (polling).
    // The new daemon is back on the console: it types, and logs the output again.
    let third = kill_svc(|c, r| d2.hand("vm1", c, r));
    let t0 = Instant::now();
    let recs = d2.wait_records(
        "vm1",
        "vesper_exit_probe",
        "exit",
        Duration::from_secs(5),
        |r| r.len() == 2,
    );
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    assert_eq!(exit_pids(&recs), vec![second, third]);

    // The standing wait the old daemon consumed is answered by the new one.
    let names = d2.module_names("vm1");
    assert!(
        names.contains(&"vesper_exit_probe".to_string()),
        "{names:?}"
    );
    d2.cli(&["insmod", "vm1", &module("vesper_panic_probe")])
        .ok();
    assert!(d2
        .module_names("vm1")
        .contains(&"vesper_panic_probe".to_string()));
    d2.cli(&["rmmod", "vm1", "vesper_panic_probe"]).ok();

    // vm stop stops the adopted QEMU.
    d2.cli(&["vm", "stop", "vm1"]).ok();
    let deadline = Instant::now() + Duration::from_secs(20);
    while vesper_e2e_alive(qemu) {
        assert!(
            Instant::now() < deadline,
            "adopted QEMU still running after vm stop"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(!vesper_api::run_dir::vm_record(&vm_dir).exists());
}

/// True while `pid` runs (a zombie counts as gone).
fn vesper_e2e_alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                .unwrap_or("");
            state != "Z" && state != "X"
        }
        Err(_) => false,
    }
}
