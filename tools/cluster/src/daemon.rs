//! A node's daemons after `up`: killed and started again, for the faults and node losses
//! of tests and demos (`vesper-cluster-lab kill n1 corosync`, `start n1 corosync`), as a
//! crash and a service manager's restart would on a machine.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;

use crate::cmd::log_tail;
use crate::state::State;
use crate::{node, procs, Lab, LabError, NODE_ALERT_SOCKET, NODE_VESPER_RUN};

/// The daemons `up` starts on every node.
pub const DAEMONS: &[&str] = &["vesperd", "corosync", "pacemakerd"];

/// vesperd's command line on a node.
pub fn vesperd_argv(bin_dir: &Path, kit_dir: &Path) -> Vec<String> {
    vec![
        bin_dir.join("vesperd").display().to_string(),
        "--run-dir".into(),
        NODE_VESPER_RUN.into(),
        "--kit-dir".into(),
        kit_dir.display().to_string(),
        "--alert-socket".into(),
        NODE_ALERT_SOCKET.into(),
    ]
}

fn check(lab: &Lab, node: &str, daemon: &str) -> Result<State, LabError> {
    lab.check_node(node)?;
    if !DAEMONS.contains(&daemon) {
        return Err(LabError::Usage(format!(
            "daemon {daemon:?}: one of {}",
            DAEMONS.join(", ")
        )));
    }
    State::load(lab)
}

/// The pid last recorded for `daemon` on `node`.
pub fn pid(st: &State, node: &str, daemon: &str) -> Option<u32> {
    st.pids(daemon)
        .into_iter()
        .filter(|(n, _)| n == node)
        .map(|(_, p)| p)
        .next_back()
}

/// Whether `pid` is still `daemon` on `node`: alive, named so, and in the node's mount
/// namespace. A recorded pid outlives its process, and the kernel hands it to another
/// (on a busy host, within minutes): never signal, or trust as running, anything else.
fn is_node_daemon(lab: &Lab, node: &str, daemon: &str, pid: u32) -> bool {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
    let node_ns = procs::NsId::of_file(&lab.mnt_ns_path(node));
    procs::alive(pid)
        && comm.trim_end() == daemon
        && node_ns.is_some_and(|ns| procs::ns_of(pid, "mnt") == Some(ns.0))
}

/// The pid of `daemon` on `node` if that process still runs (see [`is_node_daemon`]).
pub fn running(lab: &Lab, node: &str, daemon: &str) -> Option<u32> {
    let st = State::load(lab).ok()?;
    pid(&st, node, daemon).filter(|p| is_node_daemon(lab, node, daemon, *p))
}

/// Kills `daemon` on `node` with SIGKILL (a crash: nothing of it cleans up); its pid.
pub fn kill(lab: &Lab, node: &str, daemon: &str) -> Result<u32, LabError> {
    let st = check(lab, node, daemon)?;
    match pid(&st, node, daemon).filter(|p| is_node_daemon(lab, node, daemon, *p)) {
        Some(p) => {
            procs::signal(p, Signal::SIGKILL);
            Ok(p)
        }
        None => Err(LabError::Usage(format!(
            "{daemon} is not running on {node}"
        ))),
    }
}

/// Starts `daemon` on `node` again, as `up` did; its pid. Refused while it runs.
pub fn start(lab: &Lab, node: &str, daemon: &str) -> Result<u32, LabError> {
    let mut st = check(lab, node, daemon)?;
    if let Some(p) = pid(&st, node, daemon).filter(|p| is_node_daemon(lab, node, daemon, *p)) {
        return Err(LabError::Usage(format!(
            "{daemon} runs on {node} already (pid {p})"
        )));
    }
    match daemon {
        "vesperd" => {
            let argv = vesperd_argv(&st.bin_dir, &st.kit_dir);
            let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
            let pid = node::spawn(lab, &mut st, node, daemon, &argv, &[])?;
            wait_socket(lab, node, pid)?;
            Ok(pid)
        }
        "corosync" => node::spawn(lab, &mut st, node, daemon, &["corosync", "-f"], &[]),
        _ => node::spawn(
            lab,
            &mut st,
            node,
            daemon,
            &["pacemakerd"],
            &[("PCMK_logfile", "/var/log/pacemaker/pacemaker.log")],
        ),
    }
}

/// Waits until the vesperd `pid` on `node` takes connections (a killed one leaves its
/// socket file behind, so the file alone says nothing).
pub fn wait_socket(lab: &Lab, node: &str, pid: u32) -> Result<(), LabError> {
    let sock = lab.vesper_socket(node);
    let deadline = Instant::now() + Duration::from_secs(15);
    while UnixStream::connect(&sock).is_err() {
        if !procs::alive(pid) || Instant::now() > deadline {
            return Err(LabError::Timeout {
                step: format!("start vesperd on {node}"),
                secs: 15,
                what: format!(
                    "its socket {} never took a connection{}",
                    sock.display(),
                    log_tail(&lab.daemon_log(node, "vesperd"), 8)
                ),
                hint: "run the same vesperd by hand to see why; then `tools/cluster/down`".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
