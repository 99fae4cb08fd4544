//! A Pacemaker/Corosync cluster for end-to-end tests and benchmarks: `tools/cluster`'s lab
//! (`vesper-cluster-lab`) brought up under a name of its own, commands run on its nodes,
//! its state read from `crm_mon`, and the failover clock ([`measure_failover`]).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use vesper_cluster_lab::procs::{self, NsId, Tracked};
use vesper_cluster_lab::status::ClusterStatus;
use vesper_cluster_lab::Lab;

use crate::{bin_dir, hand_through, kit, CliOutput};

/// The lab's program, beside vesperd and vesper.
pub fn lab_bin() -> PathBuf {
    let p = bin_dir().join("vesper-cluster-lab");
    assert!(
        p.is_file(),
        "{} missing: run `cargo build --workspace --bins` before the tests",
        p.display()
    );
    p
}

/// Installs the cluster packages once per test process (parallel `up`s would fight
/// over apt's lock otherwise).
pub fn cluster_packages() {
    static DONE: OnceLock<()> = OnceLock::new();
    DONE.get_or_init(|| {
        let out: CliOutput = Command::new(lab_bin())
            .arg("install")
            .output()
            .expect("run vesper-cluster-lab install")
            .into();
        assert_eq!(out.code, 0, "installing the cluster packages: {out:?}");
        reap_stale_labs();
    });
}

/// Brings down the labs of test processes that died without doing it (killed by a
/// timeout, say): their guests would hold memory and CPU for ever.
fn reap_stale_labs() {
    let Ok(dir) = std::fs::read_dir(vesper_cluster_lab::STATE_ROOT) else {
        return;
    };
    for e in dir.flatten() {
        let Ok(name) = e.file_name().into_string() else {
            continue;
        };
        let Some(pid) = name
            .strip_prefix('t')
            .and_then(|r| r.split_once('-'))
            .and_then(|(pid, _)| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            note(&format!(
                "bringing down lab {name}, left by dead test process {pid}"
            ));
            let _ = Command::new(lab_bin())
                .args(["--lab", &name, "down"])
                .output();
        }
    }
}

/// Prints past libtest's capture: timings of a passing test are worth seeing.
pub fn note(line: &str) {
    let _ = writeln!(std::io::stderr(), "cluster: {line}");
}

/// A lab brought up for one test; brought down (and checked) by [`ClusterLab::down`], or
/// on drop.
pub struct ClusterLab {
    /// Its name and paths.
    pub lab: Lab,
    /// Its nodes: n1, n2, ...
    pub nodes: Vec<String>,
    /// How long `up` took.
    pub up_time: Duration,
    down: bool,
}

/// What `up` printed when it failed.
#[derive(Debug)]
pub struct UpFailed(pub CliOutput);

impl ClusterLab {
    /// A lab name unique to this process and `tag` (1-6 of a-z): `tPID-TAG`.
    pub fn name(tag: &str) -> String {
        format!("t{}-{tag}", std::process::id())
    }

    /// Brings up `nodes` nodes with the base CIB and `extra` up arguments (e.g.
    /// `--cib FILE`); panics with up's output if it fails.
    pub fn up(tag: &str, nodes: usize, extra: &[&str]) -> Self {
        match Self::try_up(tag, nodes, extra) {
            Ok(lab) => lab,
            Err(e) => {
                let _ = Command::new(lab_bin())
                    .args(["--lab", &Self::name(tag), "down"])
                    .output();
                panic!("up failed: {:?}", e.0)
            }
        }
    }

    /// As [`ClusterLab::up`], handing back up's output on failure and leaving what it
    /// made for the caller to inspect and bring down.
    pub fn try_up(tag: &str, nodes: usize, extra: &[&str]) -> Result<Self, UpFailed> {
        cluster_packages();
        let name = Self::name(tag);
        let lab = Lab::new(&name).expect("lab name");
        let started = Instant::now();
        let out: CliOutput = Command::new(lab_bin())
            .args([
                "--lab",
                &name,
                "up",
                "--no-install",
                "--nodes",
                &nodes.to_string(),
            ])
            .arg("--kit-dir")
            .arg(&kit().dir)
            .args(extra)
            .output()
            .expect("run vesper-cluster-lab up")
            .into();
        if out.code != 0 {
            return Err(UpFailed(out));
        }
        Ok(Self {
            lab,
            nodes: Lab::node_names(nodes),
            up_time: started.elapsed(),
            down: false,
        })
    }

    /// `vesper-cluster-lab --lab NAME ARGS`.
    pub fn lab_cli(&self, args: &[&str]) -> CliOutput {
        Command::new(lab_bin())
            .args(["--lab", &self.lab.name])
            .args(args)
            .output()
            .expect("run vesper-cluster-lab")
            .into()
    }

    /// Runs `argv` on `node`.
    pub fn exec(&self, node: &str, argv: &[&str]) -> CliOutput {
        let mut a = vec!["exec", node];
        a.extend_from_slice(argv);
        self.lab_cli(&a)
    }

    /// `vesper ARGS` on `node`, against its vesperd.
    pub fn vesper(&self, node: &str, args: &[&str]) -> CliOutput {
        let mut a = vec!["vesper"];
        a.extend_from_slice(args);
        self.exec(node, &a)
    }

    /// The cluster as `node` sees it (`crm_mon`).
    pub fn status(&self, node: &str) -> Result<ClusterStatus, String> {
        let out = self.exec(node, &["crm_mon", "-1", "--output-as=xml"]);
        if out.stdout.trim().is_empty() {
            return Err(format!("crm_mon on {node}: {out:?}"));
        }
        ClusterStatus::parse(&out.stdout)
    }

    /// Waits until every one of `resources` is started on `node`, as `node` sees it.
    pub fn wait_started(&self, resources: &[&str], node: &str, timeout: Duration) -> ClusterStatus {
        let deadline = Instant::now() + timeout;
        loop {
            let s = self.status(node);
            if let Ok(s) = &s {
                if resources.iter().all(|r| s.started_on(r, node)) {
                    return s.clone();
                }
            }
            assert!(
                Instant::now() < deadline,
                "{resources:?} not started on {node} after {timeout:?}: {}\n{}",
                match &s {
                    Ok(s) => s.summary(),
                    Err(e) => e.clone(),
                },
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// The serial console of `guest` on `node` so far.
    pub fn console(&self, node: &str, guest: &str) -> String {
        let p = vesper_api::run_dir::console_log(&vesper_api::run_dir::of(
            &self.lab.vesper_run(node),
            guest,
        ));
        String::from_utf8_lossy(&std::fs::read(p).unwrap_or_default()).into_owned()
    }

    /// Waits until the console of `guest` on `node` shows `needle`.
    pub fn wait_console(&self, node: &str, guest: &str, needle: &str, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        while !self.console(node, guest).contains(needle) {
            assert!(
                Instant::now() < deadline,
                "console of {guest} on {node} never showed {needle:?}:\n{}",
                self.console(node, guest)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Types `command` into the test init's hand in `guest` on `node`; the reply.
    pub fn hand(&self, node: &str, guest: &str, command: &str, reply_prefix: &str) -> String {
        hand_through(
            || self.console(node, guest),
            || {
                self.vesper(node, &["vm", "send", guest, command]).ok();
            },
            command,
            reply_prefix,
        )
    }

    /// Waits until the watched service `svc` answers in `guest` on `node`: the guest
    /// started it at boot (`vesper.start=svc` in the CIB), its hand reports it running.
    pub fn service_answers(&self, node: &str, guest: &str) {
        self.wait_console(
            node,
            guest,
            "vesper-init: hand ready",
            Duration::from_secs(120),
        );
        self.hand(node, guest, "status svc", "running svc");
    }

    /// The tail of every node's Pacemaker log and vesperd output, for failures.
    pub fn logs(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            for p in [
                self.lab.node_logs(n).join("pacemaker/pacemaker.log"),
                self.lab.daemon_log(n, "vesperd"),
            ] {
                let text = std::fs::read_to_string(&p).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                s += &format!("--- {} (last 30 lines)\n", p.display());
                for l in &lines[lines.len().saturating_sub(30)..] {
                    s += l;
                    s.push('\n');
                }
            }
        }
        s
    }

    /// Copies every node's whole Pacemaker log, corosync log and vesperd output to
    /// `target/cluster-evidence/LAB-SECS/` (the lab's own files go with `down`); that
    /// directory. For failures whose cause the last lines of [`ClusterLab::logs`] do not
    /// show.
    pub fn keep_logs(&self) -> PathBuf {
        let secs = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target/cluster-evidence")
            .join(format!("{}-{secs}", self.lab.name));
        for n in &self.nodes {
            let to = dir.join(n);
            let _ = std::fs::create_dir_all(&to);
            for (from, name) in [
                (
                    self.lab.node_logs(n).join("pacemaker/pacemaker.log"),
                    "pacemaker.log",
                ),
                (
                    self.lab.node_logs(n).join("corosync/corosync.log"),
                    "corosync.log",
                ),
                (self.lab.daemon_log(n, "vesperd"), "vesperd.out"),
            ] {
                let _ = std::fs::copy(&from, to.join(name));
            }
        }
        dir
    }

    /// What the lab holds on this machine, for [`ClusterLab::down`]'s check.
    pub fn footprint(&self) -> Footprint {
        let netns = vesper_cluster_lab::down::leftover_netns(&self.lab);
        let mut ns: Vec<NsId> = netns
            .iter()
            .filter_map(|n| NsId::of_file(&Path::new(vesper_cluster_lab::NETNS_DIR).join(n)))
            .collect();
        ns.extend(
            self.nodes
                .iter()
                .filter_map(|n| NsId::of_file(&self.lab.mnt_ns_path(n))),
        );
        Footprint { netns, ns }
    }

    /// Brings the lab down and asserts nothing of it is left the moment `down` returns:
    /// none of the processes that were in its namespaces just before (not even as a
    /// zombie: `pgrep` lists those), no namespace, mount or state directory.
    pub fn down(mut self, before: &Footprint) {
        self.down = true;
        let running = processes(before);
        let out = self.lab_cli(&["down"]);
        let listed = still_listed(&running);
        assert_eq!(out.code, 0, "down: {out:?}");
        assert!(
            listed.is_empty(),
            "down returned with processes of the lab still in the process table: {listed:?}\ndown: {out:?}"
        );
        let left = leftovers(&self.lab, before);
        assert!(left.is_empty(), "left after down: {left:?}");
        // down again: nothing to do, and says so.
        let again = self.lab_cli(&["down"]);
        assert_eq!(again.code, 0, "second down: {again:?}");
        assert!(again.stderr.contains("nothing to do"), "{again:?}");
    }
}

/// A lab's namespaces while it is up.
#[derive(Debug, Clone)]
pub struct Footprint {
    /// Its named network namespaces.
    pub netns: Vec<String>,
    /// Its network and mount namespaces.
    pub ns: Vec<NsId>,
}

/// Every process in the lab's namespaces now (see [`still_listed`]).
pub fn processes(before: &Footprint) -> Vec<Tracked> {
    procs::in_namespaces(&before.ns)
        .iter()
        .filter_map(Tracked::of)
        .collect()
}

/// Which of `procs` are still in the process table, running or exited and not yet
/// reaped: first as a user finds them, `pgrep -x COMM` (which lists zombies too), then
/// by pid and start time (a process that changed its name since).
pub fn still_listed(procs: &[Tracked]) -> Vec<String> {
    let mut comms: Vec<&str> = procs.iter().map(|p| p.comm.as_str()).collect();
    comms.sort_unstable();
    comms.dedup();
    let mut left = Vec::new();
    let mut found = Vec::new();
    for comm in comms {
        let out = Command::new("pgrep")
            .args(["-x", comm])
            .output()
            .expect("run pgrep");
        let pids: Vec<u32> = String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .collect();
        for p in procs
            .iter()
            .filter(|p| p.comm == comm && pids.contains(&p.pid) && p.exists())
        {
            left.push(format!("pgrep -x {comm}: {}", p.describe()));
            found.push(p.pid);
        }
    }
    for p in procs
        .iter()
        .filter(|p| !found.contains(&p.pid) && p.exists())
    {
        left.push(p.describe());
    }
    left
}

/// What is left of a lab whose namespaces were `before`.
pub fn leftovers(lab: &Lab, before: &Footprint) -> Vec<String> {
    let mut left: Vec<String> = procs::in_namespaces(&before.ns)
        .into_iter()
        .map(|p| format!("process {} ({})", p.pid, p.comm))
        .collect();
    left.extend(
        vesper_cluster_lab::down::leftover_netns(lab)
            .into_iter()
            .map(|n| format!("netns {n}")),
    );
    left.extend(
        vesper_cluster_lab::down::mounts_under(&lab.state_dir)
            .into_iter()
            .map(|m| format!("mount {}", m.display())),
    );
    if lab.state_dir.exists() {
        left.push(format!("state dir {}", lab.state_dir.display()));
    }
    left
}

impl Drop for ClusterLab {
    fn drop(&mut self) {
        if !self.down {
            let _ = self.lab_cli(&["down"]);
        }
    }
}

/// One failover, timed from the guest confirming its watched service was killed.
#[derive(Debug, Clone, Copy)]
pub struct Failover {
    /// Until Pacemaker recorded the failure (a failed monitor in `crm_mon`).
    pub detected: Duration,
    /// Until every resource of the group ran on the other node.
    pub moved: Duration,
    /// Until the service answered in the guest on the other node.
    pub answering: Duration,
}

/// Kills the watched service `svc` in `guest` on `from` and times the cluster moving
/// `resources` (the guest's resource first) to `to`, polling `crm_mon` on `to` every
/// 100 ms, then the service answering there. `svc` must run in the guest
/// ([`ClusterLab::service_answers`]) and `resources`
/// on `from`. Reusable by a benchmark: after it, `crm_resource --cleanup` clears the
/// failure so the guest may move back.
pub fn measure_failover(
    lab: &ClusterLab,
    guest: &str,
    resources: &[&str],
    from: &str,
    to: &str,
    timeout: Duration,
) -> Failover {
    time_failover(
        lab,
        guest,
        resources,
        (from, to),
        timeout,
        || {
            lab.hand(from, guest, "kill 9 svc", "killed svc");
        },
        || lab.service_answers(to, guest),
    )
}

/// The failover clock for any way of reaching the guest: `kill` kills `svc` in `guest`
/// on `from` and returns once the guest confirms it (the hand's own latency is not the
/// cluster's: the clock starts there); then `crm_mon` on `to` is polled every 100 ms
/// until every one of `resources` runs there, and `answers` waits for the service there.
#[allow(clippy::too_many_arguments)]
pub fn time_failover(
    lab: &ClusterLab,
    guest: &str,
    resources: &[&str],
    (from, to): (&str, &str),
    timeout: Duration,
    kill: impl FnOnce(),
    answers: impl FnOnce(),
) -> Failover {
    kill();
    let killed = Instant::now();
    let mut detected = None;
    let moved = wait_moved(lab, resources, to, killed, timeout, "the kill", |s| {
        if detected.is_none()
            && s.is_some_and(|s| {
                s.failures
                    .iter()
                    .any(|f| f.node == from && f.op_key.starts_with(&format!("{guest}_")))
            })
        {
            detected = Some(killed.elapsed());
        }
        true
    });
    answers();
    Failover {
        detected: detected.unwrap_or(moved),
        moved,
        answering: killed.elapsed(),
    }
}

/// Polls `crm_mon` on `to` every 100 ms until every one of `resources` runs there and
/// `tick` (called each round with that status, `None` when `crm_mon` failed) says the
/// move counts; the time since `since`. Fails after `timeout`, with the status and the
/// lab's logs; `after` names what `since` was, for that message.
pub fn wait_moved(
    lab: &ClusterLab,
    resources: &[&str],
    to: &str,
    since: Instant,
    timeout: Duration,
    after: &str,
    mut tick: impl FnMut(Option<&ClusterStatus>) -> bool,
) -> Duration {
    loop {
        let s = lab.status(to);
        let counts = tick(s.as_ref().ok());
        if counts
            && s.as_ref()
                .is_ok_and(|s| resources.iter().all(|r| s.started_on(r, to)))
        {
            return since.elapsed();
        }
        if since.elapsed() >= timeout {
            panic!(
                "{resources:?} not on {to} {:?} after {after}: {}\n{}\nwhole logs kept in {}",
                since.elapsed(),
                match &s {
                    Ok(s) => s.summary(),
                    Err(e) => e.clone(),
                },
                lab.logs(),
                lab.keep_logs().display()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
