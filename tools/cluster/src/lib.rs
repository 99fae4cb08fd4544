//! A Pacemaker/Corosync cluster of real nodes on one machine, for Vesper's tests and
//! demos: each node is a network namespace (its own address on a private bridge), a mount
//! namespace (its own `/etc/corosync`, `/var/lib/pacemaker`, `/var/lib/corosync`,
//! `/var/log`, `/run`, `/dev/shm`) and a UTS namespace (its own host name), running
//! Debian's `corosync` (knet), `pacemaker` and its own `vesperd`.
//!
//! [`up`] builds it and records what it made in the lab's state directory; [`down`] undoes
//! it from that record and from the names it uses, so it also cleans up after a failed
//! `up` and can run twice. [`Lab::node_command`] runs a command on a node. Only `up` and
//! `down` know about namespaces: the CIB ([`cib`]) is what a cluster of machines would
//! load too.
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod cib;
pub mod cmd;
pub mod corosync;
pub mod daemon;
pub mod down;
pub mod install;
pub mod libvirt;
pub mod node;
pub mod procs;
pub mod state;
pub mod status;
pub mod up;

use std::path::{Path, PathBuf};

use thiserror::Error;

pub use down::down;
pub use up::{up, UpOptions};

/// Where labs keep their state: `/run/vesper-lab/LAB`.
pub const STATE_ROOT: &str = "/run/vesper-lab";
/// Where `ip netns` keeps named network namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Private subnet of every lab (each lab has its own bridge namespace, so labs never
/// clash): node `i` is `.10+i`, the floating address is [`VIP`].
pub const SUBNET: &str = "10.213.0";
/// The dependent resource's address (an `IPaddr2` that follows the guest).
pub const VIP: &str = "10.213.0.100";
/// vesperd's run directory inside each node (`/run` is the node's own).
pub const NODE_VESPER_RUN: &str = "/run/vesper";
/// Directories each node has its own of (mounted over the system's inside it).
pub const NODE_OWN_DIRS: &[&str] = &[
    "/etc/corosync",
    "/var/lib/corosync",
    "/var/lib/pacemaker",
    "/var/log",
    "/run",
    "/dev/shm",
];
/// vesperd's alert socket inside each node: outside its run directory, which only root
/// may enter, as Pacemaker runs alert agents as hacluster.
pub const NODE_ALERT_SOCKET: &str = "/run/vesper-alerts/alerts.sock";
/// Most nodes a lab may have (corosync would take more; two cores would not).
pub const MAX_NODES: usize = 5;

/// Why a lab operation failed: each says which step and what to do.
#[derive(Debug, Error)]
pub enum LabError {
    /// Namespaces, mounts and daemons need root.
    #[error("must run as root (namespaces, mounts and cluster daemons need it)")]
    NotRoot,
    /// A bad option.
    #[error("{0}")]
    Usage(String),
    /// A command failed.
    #[error("{step}: `{command}` failed: {why}\n  what to do: {hint}")]
    Command {
        /// The step of up/down.
        step: String,
        /// The command line.
        command: String,
        /// Exit status and the end of its stderr.
        why: String,
        /// What the user can do about it.
        hint: String,
    },
    /// A file operation failed.
    #[error("{step}: {}: {source}", path.display())]
    Io {
        /// The step of up/down.
        step: String,
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Something did not happen in time.
    #[error("{step}: not done after {secs} s: {what}\n  what to do: {hint}")]
    Timeout {
        /// The step of up/down.
        step: String,
        /// Seconds waited.
        secs: u64,
        /// What was awaited, and the last thing seen.
        what: String,
        /// What the user can do about it.
        hint: String,
    },
    /// A lab of this name exists already.
    #[error("lab {lab} is already up or half up (state in {}): run `tools/cluster/down{}` first", dir.display(), lab_flag(lab))]
    AlreadyUp {
        /// Its name.
        lab: String,
        /// Its state directory.
        dir: PathBuf,
    },
    /// No lab of this name.
    #[error("lab {lab} is not up (no {}): run `tools/cluster/up{}`", dir.display(), lab_flag(lab))]
    NotUp {
        /// Its name.
        lab: String,
        /// The state directory it would have.
        dir: PathBuf,
    },
    /// No node of this name in the lab.
    #[error("lab {lab} has no node {node} (it has {nodes})")]
    NoSuchNode {
        /// The lab.
        lab: String,
        /// The name asked for.
        node: String,
        /// The names it has.
        nodes: String,
    },
    /// `down` could not remove everything.
    #[error("down: left behind: {0}\n  what to do: look at those by hand (ps, ip netns, findmnt), then run down again")]
    LeftBehind(String),
    /// Processes of the lab that exited and were not reaped: they stay in the process
    /// table (`ps`, `pgrep` list them) until their parent waits for them.
    #[error("down: exited but not reaped by their parent after {secs} s: {list}\n  what to do: the lab's daemons are reaped by init (pid 1) once down ends them; run down under an init that reaps orphans (e.g. `docker run --init`)")]
    Unreaped {
        /// How long down waited.
        secs: u64,
        /// The processes, with their parents.
        list: String,
    },
}

fn lab_flag(lab: &str) -> String {
    if lab == DEFAULT_LAB {
        String::new()
    } else {
        format!(" --lab {lab}")
    }
}

/// The lab's name when none is given.
pub const DEFAULT_LAB: &str = "vesper";

/// A lab by name: its paths and node names. Nothing here touches the system.
#[derive(Debug, Clone)]
pub struct Lab {
    /// 1-16 of `a-z0-9-`, starting with a letter: it prefixes namespace names.
    pub name: String,
    /// `STATE_ROOT/NAME`.
    pub state_dir: PathBuf,
}

impl Lab {
    /// The lab called `name`, under [`STATE_ROOT`].
    pub fn new(name: &str) -> Result<Self, LabError> {
        Self::with_root(name, Path::new(STATE_ROOT))
    }

    /// The lab called `name`, under `root` (tests of the naming).
    pub fn with_root(name: &str, root: &Path) -> Result<Self, LabError> {
        let ok = (1..=16).contains(&name.len())
            && name.starts_with(|c: char| c.is_ascii_lowercase())
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !ok {
            return Err(LabError::Usage(format!(
                "lab name {name:?}: use 1-16 of a-z, 0-9 and -, starting with a letter"
            )));
        }
        Ok(Self {
            name: name.to_string(),
            state_dir: root.join(name),
        })
    }

    /// Node names of a lab of `n` nodes: `n1`, `n2`, ...
    pub fn node_names(n: usize) -> Vec<String> {
        (1..=n).map(|i| format!("n{i}")).collect()
    }

    /// The node's address on the lab's subnet.
    pub fn node_addr(index: usize) -> String {
        format!("{SUBNET}.{}", 10 + index)
    }

    /// The named network namespace of `node` (or of the bridge, `br`).
    pub fn netns(&self, node: &str) -> String {
        format!("{}-{node}", self.name)
    }

    /// The network namespace holding the lab's bridge.
    pub fn bridge_netns(&self) -> String {
        self.netns("br")
    }

    /// Its file, for `nsenter --net=`.
    pub fn netns_path(&self, node: &str) -> PathBuf {
        Path::new(NETNS_DIR).join(self.netns(node))
    }

    /// Directory of the files that keep the node's mount and UTS namespaces alive (a
    /// private mount, as binding namespace files requires).
    pub fn ns_dir(&self) -> PathBuf {
        self.state_dir.join("ns")
    }

    /// The bind mount holding `node`'s mount namespace.
    pub fn mnt_ns_path(&self, node: &str) -> PathBuf {
        self.ns_dir().join(format!("{node}.mnt"))
    }

    /// The bind mount holding `node`'s UTS namespace.
    pub fn uts_ns_path(&self, node: &str) -> PathBuf {
        self.ns_dir().join(format!("{node}.uts"))
    }

    /// The node's own directories (mounted over the system's inside it).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.state_dir.join("nodes").join(node)
    }

    /// What the node sees as `/run`, seen from the host.
    pub fn node_run(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("run")
    }

    /// The node's vesperd run directory, seen from the host (console logs are under
    /// `guests/NAME/console.log`).
    pub fn vesper_run(&self, node: &str) -> PathBuf {
        self.node_run(node).join("vesper")
    }

    /// The node's vesperd socket, seen from the host.
    pub fn vesper_socket(&self, node: &str) -> PathBuf {
        self.vesper_run(node).join("vesperd.sock")
    }

    /// What the node sees as `/var/log` (pacemaker/, corosync/), seen from the host.
    pub fn node_logs(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("var-log")
    }

    /// Stdout/stderr of the daemons `up` started on the node.
    pub fn daemon_log(&self, node: &str, daemon: &str) -> PathBuf {
        self.node_dir(node).join(format!("{daemon}.out"))
    }

    /// The record of what `up` made.
    pub fn state_file(&self) -> PathBuf {
        self.state_dir.join("state.json")
    }

    /// `nsenter` into `node` (network, mount and UTS namespaces), ready for the command's
    /// program and arguments, in this process's working directory when the node sees the
    /// same one (not under a directory it has its own of), else in `/`.
    pub fn node_command(&self, node: &str) -> std::process::Command {
        let wd = std::env::current_dir()
            .ok()
            .filter(|d| !NODE_OWN_DIRS.iter().any(|o| d.starts_with(o)))
            .unwrap_or_else(|| PathBuf::from("/"));
        self.node_command_at(node, &wd)
    }

    /// As [`Lab::node_command`], in `wd` (as the node sees it).
    pub fn node_command_at(&self, node: &str, wd: &Path) -> std::process::Command {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--net={}", self.netns_path(node).display()))
            .arg(format!("--mount={}", self.mnt_ns_path(node).display()))
            .arg(format!("--uts={}", self.uts_ns_path(node).display()))
            .arg(format!("--wd={}", wd.display()));
        // The node's vesperd for the vesper CLI, as on a real node.
        c.env("VESPER_SOCKET", format!("{NODE_VESPER_RUN}/vesperd.sock"));
        c.arg("--");
        c
    }

    /// The lab's nodes, from its state file; `NotUp` without one.
    pub fn nodes(&self) -> Result<Vec<String>, LabError> {
        Ok(state::State::load(self)?
            .nodes
            .into_iter()
            .map(|n| n.name)
            .collect())
    }

    /// Checks `node` belongs to the lab (which is up).
    pub fn check_node(&self, node: &str) -> Result<(), LabError> {
        let nodes = self.nodes()?;
        if nodes.iter().any(|n| n == node) {
            Ok(())
        } else {
            Err(LabError::NoSuchNode {
                lab: self.name.clone(),
                node: node.to_string(),
                nodes: nodes.join(", "),
            })
        }
    }
}

/// Whether we run as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// The repository root (this crate lives at `<root>/tools/cluster`).
pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths() {
        let lab = Lab::with_root("e2e-7", Path::new("/r")).unwrap();
        assert_eq!(lab.netns("n2"), "e2e-7-n2");
        assert_eq!(lab.bridge_netns(), "e2e-7-br");
        assert_eq!(lab.mnt_ns_path("n1"), Path::new("/r/e2e-7/ns/n1.mnt"));
        assert_eq!(
            lab.vesper_socket("n1"),
            Path::new("/r/e2e-7/nodes/n1/run/vesper/vesperd.sock")
        );
        assert_eq!(Lab::node_names(3), ["n1", "n2", "n3"]);
        assert_eq!(Lab::node_addr(2), "10.213.0.12");
    }

    #[test]
    fn bad_lab_names_are_refused() {
        for bad in ["", "Vesper", "1lab", "a/b", "a b", &"x".repeat(17)] {
            assert!(Lab::new(bad).is_err(), "{bad:?}");
        }
        assert!(Lab::new("vesper").is_ok());
    }
}
