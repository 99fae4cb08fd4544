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
    let link = std::fs::read_link(format!("/proc/{pid}/ns/{kind}")).ok()?;
    parse_ns_link(&link.to_string_lossy())
}

/// Live processes (zombies hold no namespace and are skipped) whose network or mount
/// namespace is one of `ns`; never this process.
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
        let hit = ["net", "mnt"]
            .iter()
            .filter_map(|k| ns_of(pid, k))
            .any(|ino| ns.contains(&NsId(ino)));
        if hit {
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
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // After the parenthesised comm: state, then ppid.
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(1)?.parse().ok()
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
}
