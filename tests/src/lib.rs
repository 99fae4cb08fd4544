//! Harness for end-to-end tests: a real `vesperd` per test, real QEMU guests, and the
//! real `vesper` CLI.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_guest_kit::{EnsureOptions, Kit};

pub mod attach;
pub mod cluster;
pub mod cluster_bench;
pub mod cluster_fence;
pub mod code_vm;
pub mod tiny_guest;
pub mod virtualdomain;

/// The repository's root directory.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .canonicalize()
        .expect("repository root")
}

/// The guest kit, built once per test process.
pub fn kit() -> &'static Kit {
    static KIT: OnceLock<Kit> = OnceLock::new();
    KIT.get_or_init(|| {
        Kit::ensure(&EnsureOptions::default()).unwrap_or_else(|e| panic!("guest kit: {e}"))
    })
}

/// False, with a loud banner, when this host's /dev/kvm cannot be used: `test` is then
/// skipped. Any KVM will do (the paravirtual kvm_pvm included): the builtin VMM's mini
/// guests and the tiny guest are not Linux.
pub fn kvm_usable(test: &str) -> bool {
    match vesper_hypervisor::KvmBacking::detect() {
        vesper_hypervisor::KvmBacking::Unavailable(why) => {
            say_skipped(test, &format!("vesper-hypervisor needs /dev/kvm: {why}"));
            false
        }
        _ => true,
    }
}

/// Prints a skip banner on the process's own stderr, past libtest's capture (which
/// swallows `eprintln!` of a passing test): a skipped test must never read as a silent
/// pass, in CI output included.
pub fn say_skipped(test: &str, why: &str) {
    use std::io::Write;
    let bar = "*".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{bar}\n*** SKIPPED {test}:\n*** {why}\n{bar}"
    );
}

/// Directory of the workspace's built binaries (next to this test executable).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_path_buf();
    for b in ["vesperd", "vesper"] {
        assert!(
            dir.join(b).is_file(),
            "{} missing: run `cargo build --workspace --bins` before the tests",
            dir.join(b).display()
        );
    }
    dir
}

/// Holds an event (a `--json events` line's result) to its kind's pinned payload shape
/// (`vesper_events::shape`): every event a test reads is checked.
#[track_caller]
pub fn check_event_shape(e: &Value) {
    let event: vesper_api::Event =
        serde_json::from_value(e.clone()).unwrap_or_else(|err| panic!("not an event ({err}): {e}"));
    if let Err(why) = vesper_events::shape::check(&event) {
        panic!("event payload off its shape: {why}");
    }
}

/// Result of one CLI run.
#[derive(Debug)]
pub struct CliOutput {
    /// Exit code.
    pub code: i32,
    /// Stdout.
    pub stdout: String,
    /// Stderr.
    pub stderr: String,
}

impl CliOutput {
    /// Stdout parsed as JSON.
    pub fn json(&self) -> Value {
        let v: Value = serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {self:?}"));
        // A `--json` reply is data: no Rust Debug rendering leaks into it.
        if let Some(s) = vesper_events::shape::debug_leak(&v) {
            panic!("--json output carries a Rust Debug rendering {s:?}: {v}");
        }
        v
    }

    /// Asserts success and returns self.
    #[track_caller]
    pub fn ok(self) -> Self {
        assert_eq!(self.code, 0, "command failed: {self:?}");
        self
    }

    /// Asserts success and returns the JSON reply's `result`.
    #[track_caller]
    pub fn result(self) -> Value {
        self.ok().json()["result"].clone()
    }
}

/// The kit's debug vmlinux (Debian's `-dbg` package); `None` (after a loud banner)
/// when the kit could not get it, unless `VESPER_REQUIRE_DEBUG_VMLINUX` is set
/// (tools/test sets it: there the test must run).
pub fn debug_vmlinux(test: &str) -> Option<PathBuf> {
    let k = kit();
    if let Some(v) = &k.debug_vmlinux {
        return Some(v.clone());
    }
    let why = k
        .debug_vmlinux_missing
        .clone()
        .unwrap_or_else(|| "the kit has no debug vmlinux".into());
    if std::env::var_os("VESPER_REQUIRE_DEBUG_VMLINUX").is_some() {
        panic!("{test}: {why}");
    }
    say_skipped(test, &why);
    None
}

impl From<Output> for CliOutput {
    fn from(o: Output) -> Self {
        Self {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

/// A daemon's run directory: a temporary one it owns, or one handed over from an
/// earlier daemon (restart tests).
pub enum RunDir {
    /// Deleted when dropped.
    Owned(tempfile::TempDir),
    /// Left alone.
    Path(PathBuf),
}

impl RunDir {
    /// Its path.
    pub fn path(&self) -> &Path {
        match self {
            RunDir::Owned(t) => t.path(),
            RunDir::Path(p) => p,
        }
    }
}

/// A running `vesperd` with its own run directory; stopped (with its VMs) on drop.
pub struct Daemon {
    child: Child,
    /// Its run directory.
    pub run_dir: RunDir,
    /// Its API socket.
    pub socket: PathBuf,
}

impl Daemon {
    /// Starts a daemon with extra arguments (e.g. `--step-timeout-ms`).
    pub fn start(extra: &[&str]) -> Self {
        let run_dir = tempfile::Builder::new()
            .prefix("vesper-e2e-")
            .tempdir()
            .expect("tempdir");
        Self::start_in(RunDir::Owned(run_dir), extra)
    }

    /// Starts a daemon on an existing run directory (e.g. one an earlier daemon detached
    /// from, leaving its VMs running); its log is appended to `vesperd.log`.
    pub fn start_in(run_dir: RunDir, extra: &[&str]) -> Self {
        Self::spawn(run_dir, Some(&kit().dir), extra)
    }

    /// Starts a daemon as the README does (`vesperd &`): no `--kit-dir`, so it finds the
    /// kit by itself, as a user's would.
    pub fn start_without_kit_dir(extra: &[&str]) -> Self {
        let run_dir = tempfile::Builder::new()
            .prefix("vesper-e2e-")
            .tempdir()
            .expect("tempdir");
        Self::spawn(RunDir::Owned(run_dir), None, extra)
    }

    fn spawn(run_dir: RunDir, kit_dir: Option<&Path>, extra: &[&str]) -> Self {
        let socket = vesper_api::run_dir::api_socket(run_dir.path());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.path().join("vesperd.log"))
            .expect("log");
        let child = Command::new(bin_dir().join("vesperd"))
            .arg("--run-dir")
            .arg(run_dir.path())
            .args(
                kit_dir
                    .iter()
                    .flat_map(|d| [OsStr::new("--kit-dir"), d.as_os_str()]),
            )
            .args(extra)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn vesperd");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !socket.exists() {
            assert!(
                Instant::now() < deadline,
                "vesperd did not create its socket"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            run_dir,
            socket,
        }
    }

    /// Detaches the daemon (SIGQUIT: it exits and leaves its VMs running), waits for it
    /// to exit, and hands back its run directory.
    pub fn detach(mut self) -> RunDir {
        signal(self.child.id() as i32, nix::sys::signal::Signal::SIGQUIT);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(st)) = self.child.try_wait() {
                assert!(st.success(), "vesperd exited with {st} on SIGQUIT");
                break;
            }
            assert!(Instant::now() < deadline, "vesperd did not exit on SIGQUIT");
            std::thread::sleep(Duration::from_millis(20));
        }
        let path = self.run_dir.path().to_path_buf();
        std::mem::replace(&mut self.run_dir, RunDir::Path(path))
    }

    /// The daemon's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Resident memory of the daemon, KiB (VmRSS).
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    }

    /// Runs `vesper ARGS` against this daemon.
    pub fn cli(&self, args: &[&str]) -> CliOutput {
        Command::new(bin_dir().join("vesper"))
            .arg("--socket")
            .arg(&self.socket)
            .args(args)
            .output()
            .expect("run vesper")
            .into()
    }

    /// Starts `vesper [--json] probe run GUEST SPEC ARGS --kit KIT --cache CACHE` against
    /// this daemon (the kit's kernel files, a build cache of the caller's), its output
    /// piped.
    pub fn spawn_probe_run(
        &self,
        json: bool,
        guest: &str,
        spec: &Path,
        cache: &Path,
        args: &[&str],
    ) -> Child {
        let mut c = Command::new(bin_dir().join("vesper"));
        c.arg("--socket").arg(&self.socket);
        if json {
            c.arg("--json");
        }
        c.args(["probe", "run", guest])
            .arg(spec)
            .args(args)
            .arg("--kit")
            .arg(&kit().dir)
            .arg("--cache")
            .arg(cache)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run vesper probe run")
    }

    /// Runs `vesper --json debug ARGS` against this daemon.
    pub fn debug(&self, args: &[&str]) -> CliOutput {
        let mut a = vec!["--json", "debug"];
        a.extend_from_slice(args);
        self.cli(&a)
    }

    /// Starts VM `name` (freeze mode) and waits for its frontend.
    pub fn vm_start(&self, name: &str) -> Value {
        self.vm_start_with(name, &[])
    }

    /// Starts VM `name` with extra `vm start` arguments.
    pub fn vm_start_with(&self, name: &str, extra: &[&str]) -> Value {
        let mut args = vec!["--json", "vm", "start", name, "--boot-timeout", "180"];
        args.extend_from_slice(extra);
        let out = self.cli(&args);
        assert_eq!(
            out.code,
            0,
            "vm start failed: {out:?}\ndaemon log:\n{}",
            self.log()
        );
        out.json()["result"].clone()
    }

    /// Pushes the exit probe into `guest`, watching processes named `svc` (quietly: no
    /// log line per exit), as most tests of failure signals need.
    pub fn watch_svc(&self, guest: &str) {
        self.cli(&[
            "insmod",
            guest,
            &module("vesper_exit_probe"),
            "watch_comm=svc",
            "quiet=1",
        ])
        .ok();
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.path().join("vesperd.log")).unwrap_or_default()
    }

    /// The serial console of VM `name` so far.
    pub fn console(&self, name: &str) -> String {
        let p =
            vesper_api::run_dir::console_log(&vesper_api::run_dir::of(self.run_dir.path(), name));
        String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
    }

    /// Waits until the console of `name` contains `needle`.
    pub fn wait_console(&self, name: &str, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let c = self.console(name);
            if c.contains(needle) {
                return c;
            }
            assert!(
                Instant::now() < deadline,
                "console of {name} never showed {needle:?}:\n{c}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `command` into VM `name`'s serial console (the test init's hand, in
    /// `--mode hand`, or the mini frontend's) and returns the console text from the
    /// reply line that starts with `vesper-hand: ` + `reply_prefix` on.
    pub fn hand(&self, name: &str, command: &str, reply_prefix: &str) -> String {
        // Through vesperd's one long-lived console connection (`vm send`), never a
        // connection of our own: QEMU drops input its UART had not taken yet when a client
        // hangs up, which lost a command now and then. A builtin VM's 8250 lives in
        // vesperd anyway.
        hand_through(
            || self.console(name),
            || {
                self.cli(&["vm", "send", name, command]).ok();
            },
            command,
            reply_prefix,
        )
    }

    /// Runs `command` in VM `name` through its hand's `sh` and returns its output lines
    /// and exit status.
    pub fn hand_sh(&self, name: &str, command: &str) -> (Vec<String>, i32) {
        const END: &str = "vesper-hand: sh end rc=";
        let before = self.console(name).len();
        self.hand(name, &format!("sh {command}"), "sh end rc=");
        let console = self.console(name);
        let tail = &console[before.min(console.len())..];
        let end = tail.find(END).expect("the hand's reply");
        let out = tail[..end]
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').split_once("vesper-hand: out "))
            .map(|(_, l)| l.to_string())
            .collect();
        let rc = tail[end + END.len()..]
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no exit status after {command:?}: {tail:?}"));
        (out, rc)
    }

    /// Events as JSON, read through `vesper --json events ARGS`.
    pub fn events(&self, args: &[&str]) -> Vec<Value> {
        let mut a = vec!["--json", "events"];
        a.extend_from_slice(args);
        self.cli(&a)
            .ok()
            .stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
            .map(|v| v["result"].clone())
            .filter(|r| r["reply"] == "event")
            .inspect(check_event_shape)
            .collect()
    }

    /// Records of `module` (`channel`) as JSON, read through `vesper relay cat --json`.
    pub fn relay_records(&self, guest: &str, module: &str, channel: &str) -> Vec<Value> {
        let out = self.cli(&["--json", "relay", "cat", guest, module, channel]);
        if out.code != 0 {
            return Vec::new();
        }
        out.stdout
            .lines()
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
            .map(|v| v["result"].clone())
            .filter(|r| r["reply"] == "record")
            .collect()
    }

    /// Waits until `pred` holds for the records of `module`/`channel`.
    pub fn wait_records(
        &self,
        guest: &str,
        module: &str,
        channel: &str,
        timeout: Duration,
        pred: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let recs = self.relay_records(guest, module, channel);
            if pred(&recs) {
                return recs;
            }
            assert!(
                Instant::now() < deadline,
                "records of {module}/{channel} never matched; have {}: {:?}\ndaemon log:\n{}",
                recs.len(),
                recs.iter().rev().take(3).collect::<Vec<_>>(),
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// QEMU's pid for VM `name`.
    pub fn qemu_pid(&self, name: &str) -> i32 {
        let list = self.cli(&["--json", "vm", "list"]).ok().json();
        let vms = list["result"]["vms"].as_array().expect("vms").clone();
        let vm = vms.iter().find(|v| v["name"] == name).expect("vm listed");
        vm["pid"].as_i64().expect("pid") as i32
    }

    /// Waits until `module` is loaded in `guest` (at most `timeout`).
    pub fn wait_loaded(&self, guest: &str, module: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.module_names(guest).iter().any(|m| m == module) {
            assert!(
                Instant::now() < deadline,
                "{module} never loaded:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// The names of the modules loaded in `guest`, sorted.
    pub fn module_names(&self, guest: &str) -> Vec<String> {
        let out = self.cli(&["--json", "lsmod", guest]).ok().json();
        let mut names: Vec<String> = out["result"]["modules"]
            .as_array()
            .expect("modules")
            .iter()
            .map(|m| m["name"].as_str().expect("name").to_string())
            .collect();
        names.sort();
        names
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test init's hand, through any console: `send` types `command` (once), and the
/// console text from the reply line starting `vesper-hand: ` + `reply_prefix` on is
/// returned (what came before the command is never taken for its reply).
pub fn hand_through(
    console: impl Fn() -> String,
    send: impl FnOnce(),
    command: &str,
    reply_prefix: &str,
) -> String {
    let before = console().len();
    send();
    let needle = format!("vesper-hand: {reply_prefix}");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let c = console();
        if let Some(at) = c[before.min(c.len())..].find(&needle) {
            return c[before + at..].to_string();
        }
        assert!(
            Instant::now() < deadline,
            "no {needle:?} after {command:?}:\n{}",
            &c[before.min(c.len())..]
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Path of a kit module by name.
pub fn module(name: &str) -> String {
    let p = kit().module(name);
    assert!(p.is_file(), "kit module {} missing", p.display());
    p.display().to_string()
}

/// The shared region of a running QEMU, mapped through its memfd (the test's hand:
/// it watches host/guest traffic to time a fault).
pub fn qemu_region(pid: i32) -> vesper_shmem::SharedRegion {
    let path = vesper_qemu::memfd_of(pid as u32, "vesper-")
        .expect("proc fds")
        .unwrap_or_else(|| panic!("QEMU {pid} holds no Vesper region"));
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .expect("open memfd");
    let size = file.metadata().expect("stat").len();
    vesper_shmem::SharedRegion::map(file, size).expect("map region")
}

/// Sends `sig` to `pid`.
pub fn signal(pid: i32, sig: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig).expect("signal");
}
