//! Finding the processes that live in a lab's namespaces (by namespace inode, read from
//! `/proc/PID/ns/*`), whoever started them: the daemons `up` started, QEMU under vesperd,
//! resource agents, commands run with `exec`.

use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// A namespace, by the inode of its nsfs file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NsId(pub u64);

impl NsId {
    /// The namespace a bound namespace file (`/run/netns/X`, a `.mnt` file) holds, if it
    /// is one.
    pub fn of_file(path: &Path) -> Option<NsId> {
        let m = std::fs::metadata(path).ok()?;
        // An unbound placeholder is an empty regular file on the host's file system; a
        // bound one is on nsfs, whose device has major 0.
        (libc::major(m.dev()) == 0 && m.ino() != 0).then_some(NsId(m.ino()))
    }
}

/// A live process seen in /proc.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    /// Its pid.
    pub pid: u32,
    /// Its command name.
    pub comm: String,
}

/// The inode in a `/proc/PID/ns/X` link (`net:[4026532281]`).
pub fn parse_ns_link(link: &str) -> Option<u64> {
    let (_, rest) = link.split_once(":[")?;
    rest.strip_suffix(']')?.parse().ok()
}

/// The inode of namespace `kind` (`net`, `mnt`) of `pid`.
pub fn ns_of(pid: u32, kind: &str) -> Option<u64> {
    ns_in(&format!("/proc/{pid}"), kind)
}

/// The inode of namespace `kind` of the process or thread whose `/proc` directory is
/// `dir`.
fn ns_in(dir: &str, kind: &str) -> Option<u64> {
    let link = std::fs::read_link(format!("{dir}/ns/{kind}")).ok()?;
    parse_ns_link(&link.to_string_lossy())
}

/// Whether a network or mount namespace of `pid` is one of `ns`: its main thread's, or,
/// once that thread has exited (it leaves its namespaces then, and stays as a zombie
/// until the last thread is gone), any other thread's.
fn in_ns(pid: u32, ns: &[NsId]) -> bool {
    let hit = |dir: &str| {
        ["net", "mnt"]
            .iter()
            .filter_map(|k| ns_in(dir, k))
            .any(|ino| ns.contains(&NsId(ino)))
    };
    hit(&format!("/proc/{pid}"))
        || tasks(pid)
            .iter()
            .any(|t| hit(&format!("/proc/{pid}/task/{t}")))
}

/// The threads of `pid`.
fn tasks(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
        .collect()
}

/// Processes with a live thread (a zombie holds no namespace and is skipped) whose
/// network or mount namespace is one of `ns`; never this process.
pub fn in_namespaces(ns: &[NsId]) -> Vec<Proc> {
    let me = std::process::id();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found = Vec::new();
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        if in_ns(pid, ns) {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            found.push(Proc {
                pid,
                comm: comm.trim().to_string(),
            });
        }
    }
    found.sort_by_key(|p| p.pid);
    found
}

/// Sends `sig` to `pid`, ignoring a process that is gone.
pub fn signal(pid: u32, sig: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), sig);
}

/// The parent of `pid`, if it lives.
pub fn parent(pid: u32) -> Option<u32> {
    stat_fields(&format!("/proc/{pid}/stat"))?
        .get(1)?
        .parse()
        .ok()
}

/// The fields of `/proc/PID/stat` after the parenthesised comm (which may hold spaces):
/// `[0]` the state, `[1]` the parent, `[19]` the start time.
fn stat_fields(path: &str) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(path).ok()?;
    let (_, rest) = stat.rsplit_once(')')?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// One process, told apart from a later one given the same pid (the kernel hands a pid
/// on once its process is reaped) by its start time.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tracked {
    /// Its pid.
    pub pid: u32,
    /// Its start time, in clock ticks after boot.
    pub start: u64,
    /// Its command name.
    pub comm: String,
}

impl Tracked {
    /// `p` as it is now; `None` once it is gone.
    pub fn of(p: &Proc) -> Option<Tracked> {
        let f = stat_fields(&format!("/proc/{}/stat", p.pid))?;
        Some(Tracked {
            pid: p.pid,
            start: f.get(19)?.parse().ok()?,
            comm: p.comm.clone(),
        })
    }

    /// Its state (`R`, `S`, `D`, `Z`...) and parent while it is in the process table
    /// (running, exiting, or exited and not yet reaped by its parent).
    pub fn entry(&self) -> Option<(char, u32)> {
        let f = stat_fields(&format!("/proc/{}/stat", self.pid))?;
        if f.get(19)?.parse::<u64>().ok()? != self.start {
            return None;
        }
        Some((f.first()?.chars().next()?, f.get(1)?.parse().ok()?))
    }

    /// Whether it is in the process table at all (a zombie too).
    pub fn exists(&self) -> bool {
        self.entry().is_some()
    }

    /// Whether any of its threads has yet to exit (its main thread may have already).
    pub fn running(&self) -> bool {
        self.exists()
            && tasks(self.pid).iter().any(|t| {
                stat_fields(&format!("/proc/{}/task/{t}/stat", self.pid))
                    .and_then(|f| f.first().cloned())
                    .is_some_and(|s| !s.starts_with(['Z', 'X']))
            })
    }

    /// Sends it `sig`, unless it is gone (and its pid maybe someone else's).
    pub fn signal(&self, sig: nix::sys::signal::Signal) {
        if self.exists() {
            signal(self.pid, sig);
        }
    }

    /// `PID (COMM, state S, parent PPID (COMM))`, for messages.
    pub fn describe(&self) -> String {
        match self.entry() {
            Some((state, ppid)) => {
                let pcomm =
                    std::fs::read_to_string(format!("/proc/{ppid}/comm")).unwrap_or_default();
                format!(
                    "{} ({}, state {state}, parent {ppid} ({}))",
                    self.pid,
                    self.comm,
                    pcomm.trim()
                )
            }
            None => format!("{} ({}, gone)", self.pid, self.comm),
        }
    }
}

/// Whether `pid` is a live (non-zombie) process.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised comm, which may hold spaces.
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with(['Z', 'X']))
            .unwrap_or(false),
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_links_parse() {
        assert_eq!(parse_ns_link("net:[4026532281]"), Some(4026532281));
        assert_eq!(parse_ns_link("mnt:[1]"), Some(1));
        assert_eq!(parse_ns_link("net:4026532281"), None);
        assert_eq!(parse_ns_link("net:[x]"), None);
    }

    #[test]
    fn this_process_is_alive_and_never_listed() {
        assert!(alive(std::process::id()));
        assert_eq!(
            parent(std::process::id()),
            Some(nix::unistd::getppid().as_raw() as u32)
        );
        let mine = ns_of(std::process::id(), "net").unwrap();
        assert!(in_namespaces(&[NsId(mine)])
            .iter()
            .all(|p| p.pid != std::process::id()));
        assert!(NsId::of_file(Path::new("/proc/self/ns/net")).is_some());
        assert!(NsId::of_file(Path::new("/etc/hostname")).is_none());
    }

    #[test]
    fn a_tracked_process_is_running_until_it_exits_and_exists_until_reaped() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let t = Tracked::of(&Proc {
            pid: child.id(),
            comm: "sleep".into(),
        })
        .unwrap();
        assert!(t.running() && t.exists());
        assert_eq!(t.entry().map(|(_, ppid)| ppid), Some(std::process::id()));
        t.signal(nix::sys::signal::Signal::SIGKILL);
        // Exited, not yet reaped: a zombie, in the table still.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while t.running() {
            assert!(std::time::Instant::now() < deadline, "{}", t.describe());
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        assert_eq!(t.entry().map(|(s, _)| s), Some('Z'), "{}", t.describe());
        child.wait().unwrap();
        assert!(!t.exists() && !t.running(), "{}", t.describe());
        // Another start time is another process, whatever its pid.
        let me = Tracked::of(&Proc {
            pid: std::process::id(),
            comm: "me".into(),
        })
        .unwrap();
        assert!(me.running());
        let other = Tracked {
            start: me.start + 1,
            ..me
        };
        assert!(!other.exists() && !other.running());
    }
}
