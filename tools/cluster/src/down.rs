//! `down`: ends every process in the lab's namespaces, unmounts what `up` mounted,
//! deletes its network namespaces (their veths and bridge go with them) and its state
//! directory. It works from the record `up` kept and from the names a lab uses, so it
//! also cleans up after a failed `up`, and does nothing when there is nothing.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cmd::{command, run};
use crate::procs::{self, NsId};
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

/// Tears the lab down; progress lines go through `say`.
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

    // Processes: vesperd first, politely (it stops its VMs); then everything else.
    let in_lab = || procs::in_namespaces(&ns);
    let mut seen = in_lab();
    report.killed = seen.len();
    if !seen.is_empty() {
        say(&format!("ending {} processes", seen.len()));
        let vesperds: Vec<u32> = seen
            .iter()
            .filter(|p| p.comm == "vesperd")
            .map(|p| p.pid)
            .collect();
        // A QEMU is spared only when a vesperd will stop it (libvirt's are not).
        let vesperds_vm = |pid: u32| procs::parent(pid).is_some_and(|pp| vesperds.contains(&pp));
        for p in seen
            .iter()
            .filter(|p| p.comm != "vesperd" && !(p.comm.starts_with("qemu") && vesperds_vm(p.pid)))
        {
            procs::signal(p.pid, Signal::SIGKILL);
        }
        for p in seen.iter().filter(|p| p.comm == "vesperd") {
            procs::signal(p.pid, Signal::SIGTERM);
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while !in_lab().is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(100));
        }
        // Anything left (a vesperd that hung, a process `exec` started since): killed.
        for _ in 0..50 {
            seen = in_lab();
            if seen.is_empty() {
                break;
            }
            for p in &seen {
                procs::signal(p.pid, Signal::SIGKILL);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        if !seen.is_empty() {
            let list: Vec<String> = seen
                .iter()
                .map(|p| format!("{} ({})", p.pid, p.comm))
                .collect();
            return Err(LabError::LeftBehind(format!(
                "processes {}",
                list.join(", ")
            )));
        }
    }

    // Mounts: the namespace files and the private directory, deepest first.
    let mut mounts = mounts_under(&lab.state_dir);
    for m in state.iter().flat_map(|s| &s.made) {
        if let Made::Mount { path } = m {
            if !mounts.contains(path) && mounts_under(path).contains(path) {
                mounts.push(path.clone());
            }
        }
    }
    for m in &mounts {
        match nix::mount::umount2(m, nix::mount::MntFlags::empty()) {
            Ok(()) => report.unmounted += 1,
            Err(_) => {
                if nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH).is_ok() {
                    report.unmounted += 1;
                }
            }
        }
    }
    let still = mounts_under(&lab.state_dir);
    if !still.is_empty() {
        let list: Vec<String> = still.iter().map(|p| p.display().to_string()).collect();
        return Err(LabError::LeftBehind(format!("mounts {}", list.join(", "))));
    }

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
    Ok(report)
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
