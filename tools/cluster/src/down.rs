//! `down`: ends every process in the lab's namespaces, unmounts what `up` mounted,
//! deletes its network namespaces (their veths and bridge go with them) and its state
//! directory. It works from the record `up` kept and from the names a lab uses, so it
//! also cleans up after a failed `up`, and does nothing when there is nothing. It returns
//! only once every process it found is gone: not merely signalled, nor out of the lab's
//! namespaces (a process leaves them as it exits), but out of the process table.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cmd::{command, run};
use crate::procs::{self, NsId, Tracked};
use crate::state::{Made, State};
use crate::{Lab, LabError, NETNS_DIR};

/// What `down` found and removed.
#[derive(Debug, Default)]
pub struct Report {
    /// Processes ended.
    pub killed: usize,
    /// Mounts removed.
    pub unmounted: usize,
    /// Network namespaces deleted.
    pub netns: Vec<String>,
    /// Whether a state directory was removed.
    pub state_dir: bool,
}

impl Report {
    /// Whether there was nothing to do.
    pub fn nothing(&self) -> bool {
        self.killed == 0 && self.unmounted == 0 && self.netns.is_empty() && !self.state_dir
    }
}

/// Named network namespaces of the lab: `LAB-br`, `LAB-nN`.
pub fn leftover_netns(lab: &Lab) -> Vec<String> {
    let Ok(dir) = std::fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = dir
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| is_lab_netns(&lab.name, n))
        .collect();
    v.sort();
    v
}

/// Whether `name` is one of `lab`'s namespace names (not another lab's whose name
/// starts the same).
pub fn is_lab_netns(lab: &str, name: &str) -> bool {
    name.strip_prefix(lab)
        .and_then(|r| r.strip_prefix('-'))
        .is_some_and(|r| {
            r == "br"
                || r.strip_prefix('n')
                    .is_some_and(|d| !d.is_empty() && d.chars().all(|c| c.is_ascii_digit()))
        })
}

/// Mount points under `dir` in this mount namespace, deepest first.
pub fn mounts_under(dir: &std::path::Path) -> Vec<PathBuf> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut v: Vec<PathBuf> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape)
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v.dedup();
    v
}

/// mountinfo escapes space, tab, newline and backslash as octal.
fn unescape(s: &str) -> String {
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            if let Ok(n) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(n as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// The namespaces of the lab, from the files that hold them.
fn namespaces(lab: &Lab, netns: &[String]) -> Vec<NsId> {
    let mut ids: Vec<NsId> = netns
        .iter()
        .filter_map(|n| NsId::of_file(&PathBuf::from(NETNS_DIR).join(n)))
        .collect();
    if let Ok(dir) = std::fs::read_dir(lab.ns_dir()) {
        ids.extend(dir.flatten().filter_map(|e| NsId::of_file(&e.path())));
    }
    ids
}

/// How long vesperd has to stop its VMs after SIGTERM, before anything left is killed.
const POLITE: Duration = Duration::from_secs(10);
/// How long what is left has to die after SIGKILL before down gives up on it.
const KILL: Duration = Duration::from_secs(5);
/// How long the processes' parent (init, for the daemons) has to reap them.
const REAP: Duration = Duration::from_secs(15);
/// Between looks at the process table.
const POLL: Duration = Duration::from_millis(50);

/// Tears the lab down; progress lines go through `say`. Returns once every process that
/// was in the lab's namespaces is gone from the process table (exited and reaped).
pub fn down(lab: &Lab, say: &dyn Fn(&str)) -> Result<Report, LabError> {
    if !crate::is_root() {
        return Err(LabError::NotRoot);
    }
    let mut report = Report::default();
    let state = State::load(lab).ok();
    let mut netns = leftover_netns(lab);
    for m in state.iter().flat_map(|s| &s.made) {
        if let Made::Netns { name } = m {
            if !netns.contains(name) && PathBuf::from(NETNS_DIR).join(name).exists() {
                netns.push(name.clone());
            }
        }
    }
    let ns = namespaces(lab, &netns);
    let ended = end_processes(&ns, say)?;
    report.killed = ended.len();
    report.unmounted = unmount(lab, state.as_ref())?;

    // Network namespaces: deleting them destroys their veths and the bridge.
    for n in &netns {
        run(
            "delete the lab's network namespaces",
            "`ip netns pids NAME` shows who still holds it",
            &mut command(&["ip", "netns", "delete", n]),
        )?;
        report.netns.push(n.clone());
    }
    if lab.state_dir.exists() {
        std::fs::remove_dir_all(&lab.state_dir).map_err(crate::cmd::io_err(
            "remove the state directory",
            &lab.state_dir,
        ))?;
        report.state_dir = true;
    }
    let left = leftover_netns(lab);
    if !left.is_empty() {
        return Err(LabError::LeftBehind(format!(
            "network namespaces {}",
            left.join(", ")
        )));
    }
    wait_reaped(&ended)?;
    Ok(report)
}

/// Processes in `ns` not yet in `tracked`, added to it; the new ones.
fn track_new(ns: &[NsId], tracked: &mut Vec<Tracked>) -> Vec<Tracked> {
    let new: Vec<Tracked> = procs::in_namespaces(ns)
        .iter()
        .filter_map(Tracked::of)
        .filter(|t| !tracked.iter().any(|k| k.pid == t.pid && k.start == t.start))
        .collect();
    tracked.extend(new.iter().cloned());
    new
}

/// The first signal for a process of the lab: SIGTERM for vesperd, so that it stops its
/// VMs; nothing for a QEMU whose parent is one of `vesperds` (it is stopped by it);
/// SIGKILL for the rest (the cluster daemons, libvirt's QEMUs, agents, `exec`'s commands).
fn first_signal(t: &Tracked, vesperds: &[u32]) {
    if t.comm == "vesperd" {
        t.signal(Signal::SIGTERM);
    } else if !(t.comm.starts_with("qemu")
        && procs::parent(t.pid).is_some_and(|pp| vesperds.contains(&pp)))
    {
        t.signal(Signal::SIGKILL);
    }
}

/// Ends every process in `ns`, whoever started it, and any that appears there meanwhile;
/// returns once none of them has a thread left running, with all it ended (they may still
/// be zombies, for their parent to reap). Anything that outlives SIGKILL is an error.
fn end_processes(ns: &[NsId], say: &dyn Fn(&str)) -> Result<Vec<Tracked>, LabError> {
    let mut tracked = Vec::new();
    let first = track_new(ns, &mut tracked);
    if first.is_empty() {
        return Ok(tracked);
    }
    say(&format!("ending {} processes", first.len()));
    let vesperds = |tracked: &[Tracked]| -> Vec<u32> {
        tracked
            .iter()
            .filter(|t| t.comm == "vesperd")
            .map(|t| t.pid)
            .collect()
    };
    let v = vesperds(&tracked);
    for t in &first {
        first_signal(t, &v);
    }
    // Politely first: vesperd stops its VMs; whatever starts meanwhile (an agent, a
    // command run with `exec`) gets its own first signal.
    let deadline = Instant::now() + POLITE;
    while tracked.iter().any(Tracked::running) && Instant::now() < deadline {
        std::thread::sleep(POLL);
        let new = track_new(ns, &mut tracked);
        let v = vesperds(&tracked);
        for t in &new {
            first_signal(t, &v);
        }
    }
    // Then anything left (a vesperd that hung, a VM it did not stop): killed.
    let deadline = Instant::now() + KILL;
    loop {
        track_new(ns, &mut tracked);
        let left: Vec<&Tracked> = tracked.iter().filter(|t| t.running()).collect();
        if left.is_empty() {
            return Ok(tracked);
        }
        if Instant::now() >= deadline {
            let list: Vec<String> = left.iter().map(|t| t.describe()).collect();
            return Err(LabError::LeftBehind(format!(
                "processes still running {} s after SIGKILL: {}",
                KILL.as_secs(),
                list.join(", ")
            )));
        }
        for t in left {
            t.signal(Signal::SIGKILL);
        }
        std::thread::sleep(POLL);
    }
}

/// Waits until every one of `ended` has left the process table: a process that has
/// exited stays there as a zombie until its parent reaps it, and the daemons' parent
/// is init, which may take its time (seconds, on some).
fn wait_reaped(ended: &[Tracked]) -> Result<(), LabError> {
    let deadline = Instant::now() + REAP;
    loop {
        let left: Vec<&Tracked> = ended.iter().filter(|t| t.exists()).collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            let list: Vec<String> = left.iter().map(|t| t.describe()).collect();
            return Err(LabError::Unreaped {
                secs: REAP.as_secs(),
                list: list.join(", "),
            });
        }
        std::thread::sleep(POLL);
    }
}

/// Unmounts the namespace files and the private directories, deepest first; how many.
fn unmount(lab: &Lab, state: Option<&State>) -> Result<usize, LabError> {
    let mut mounts = mounts_under(&lab.state_dir);
    for m in state.iter().flat_map(|s| &s.made) {
        if let Made::Mount { path } = m {
            if !mounts.contains(path) && mounts_under(path).contains(path) {
                mounts.push(path.clone());
            }
        }
    }
    let mut unmounted = 0;
    for m in &mounts {
        if nix::mount::umount2(m, nix::mount::MntFlags::empty()).is_ok()
            || nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH).is_ok()
        {
            unmounted += 1;
        }
    }
    let still = mounts_under(&lab.state_dir);
    if !still.is_empty() {
        let list: Vec<String> = still.iter().map(|p| p.display().to_string()).collect();
        return Err(LabError::LeftBehind(format!("mounts {}", list.join(", "))));
    }
    Ok(unmounted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_this_labs_namespaces_match() {
        assert!(is_lab_netns("e2e", "e2e-br"));
        assert!(is_lab_netns("e2e", "e2e-n1"));
        assert!(is_lab_netns("e2e", "e2e-n12"));
        assert!(!is_lab_netns("e2e", "e2e-2-n1"), "another lab's");
        assert!(!is_lab_netns("e2e", "e2e-n"));
        assert!(!is_lab_netns("e2e", "e2e-nx"));
        assert!(!is_lab_netns("e2e", "e2e"));
        assert!(!is_lab_netns("e2e", "other-n1"));
    }

    #[test]
    fn mountinfo_paths_unescape() {
        assert_eq!(unescape("/a\\040b"), "/a b");
        assert_eq!(unescape("/plain"), "/plain");
        assert_eq!(unescape("/end\\"), "/end\\");
    }

    #[test]
    fn nothing_under_a_fresh_dir_is_mounted() {
        assert!(mounts_under(std::path::Path::new("/nonexistent-vesper-lab")).is_empty());
        assert!(mounts_under(std::path::Path::new("/")).contains(&PathBuf::from("/")));
    }
}
