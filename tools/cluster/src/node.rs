//! Making a node: its network (a veth from the lab's bridge namespace, an address), its
//! mount and UTS namespaces (kept alive by bind mounts in the lab's state directory, with
//! the node's own directories mounted over the system's), and its daemons.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Stdio;

use crate::cmd::{command, io_err, run};
use crate::state::{Made, State};
use crate::{Lab, LabError};

const IP_HINT: &str = "check `ip netns list` and `ip link` for leftovers of another lab, run `tools/cluster/down`, then up again";

/// The bridge `br0` in its own network namespace (nothing is added to the host's
/// network), then records it.
pub fn create_bridge(lab: &Lab, st: &mut State) -> Result<(), LabError> {
    let ns = lab.bridge_netns();
    let step = "create the lab's bridge";
    run(step, IP_HINT, &mut command(&["ip", "netns", "add", &ns]))?;
    st.record(lab, Made::Netns { name: ns.clone() })?;
    for argv in [
        vec!["ip", "-n", &ns, "link", "add", "br0", "type", "bridge"],
        vec!["ip", "-n", &ns, "link", "set", "br0", "up"],
        vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
    ] {
        run(step, IP_HINT, &mut command(&argv))?;
    }
    Ok(())
}

/// The node's network namespace: `eth0` (a veth whose peer, named after the node, is on
/// the bridge) with the node's address, and `lo`.
pub fn create_network(lab: &Lab, st: &mut State, node: &str, addr: &str) -> Result<(), LabError> {
    let ns = lab.netns(node);
    let br = lab.bridge_netns();
    let step = format!("create {node}'s network");
    run(&step, IP_HINT, &mut command(&["ip", "netns", "add", &ns]))?;
    st.record(lab, Made::Netns { name: ns.clone() })?;
    let cidr = format!("{addr}/24");
    for argv in [
        // Made inside the bridge's namespace: no name ever exists in the host's.
        vec![
            "ip", "-n", &br, "link", "add", node, "type", "veth", "peer", "name", "eth0", "netns",
            &ns,
        ],
        vec!["ip", "-n", &br, "link", "set", node, "master", "br0", "up"],
        vec!["ip", "-n", &ns, "addr", "add", &cidr, "dev", "eth0"],
        vec!["ip", "-n", &ns, "link", "set", "eth0", "up"],
        vec!["ip", "-n", &ns, "link", "set", "lo", "up"],
    ] {
        run(&step, IP_HINT, &mut command(&argv))?;
    }
    Ok(())
}

/// The lab's namespace directory, bind-mounted on itself and made private: namespace
/// files can only be bound under a private mount.
pub fn prepare_ns_dir(lab: &Lab, st: &mut State) -> Result<(), LabError> {
    let dir = lab.ns_dir();
    let step = "prepare the namespace directory";
    std::fs::create_dir_all(&dir).map_err(io_err(step, &dir))?;
    let d = dir.display().to_string();
    let hint = "the lab's state directory must be on a local file system; run `tools/cluster/down` and retry";
    run(step, hint, &mut command(&["mount", "--bind", &d, &d]))?;
    st.record(lab, Made::Mount { path: dir.clone() })?;
    run(step, hint, &mut command(&["mount", "--make-private", &d]))?;
    Ok(())
}

/// Ownership and mode of a node directory.
struct Dir {
    /// Relative to the node's directory.
    path: &'static str,
    /// Owned by hacluster:haclient (else root).
    cluster: bool,
    mode: u32,
}

const DIRS: &[Dir] = &[
    Dir {
        path: "etc-corosync",
        cluster: false,
        mode: 0o755,
    },
    Dir {
        path: "var-lib-corosync",
        cluster: false,
        mode: 0o755,
    },
    Dir {
        path: "var-lib-pacemaker",
        cluster: false,
        mode: 0o755,
    },
    Dir {
        path: "var-lib-pacemaker/cib",
        cluster: true,
        mode: 0o750,
    },
    Dir {
        path: "var-lib-pacemaker/pengine",
        cluster: true,
        mode: 0o750,
    },
    Dir {
        path: "var-lib-pacemaker/blackbox",
        cluster: true,
        mode: 0o750,
    },
    Dir {
        path: "var-lib-pacemaker/cores",
        cluster: true,
        mode: 0o750,
    },
    Dir {
        path: "var-log",
        cluster: false,
        mode: 0o755,
    },
    Dir {
        path: "var-log/pacemaker",
        cluster: true,
        mode: 0o770,
    },
    Dir {
        path: "var-log/pacemaker/bundles",
        cluster: true,
        mode: 0o770,
    },
    Dir {
        path: "var-log/corosync",
        cluster: false,
        mode: 0o755,
    },
    Dir {
        path: "var-log/cluster",
        cluster: false,
        mode: 0o755,
    },
    // crmsh refuses to start without its log directory.
    Dir {
        path: "var-log/crmsh",
        cluster: false,
        mode: 0o755,
    },
    Dir {
        path: "run",
        cluster: false,
        mode: 0o755,
    },
    Dir {
        path: "run/lock",
        cluster: false,
        mode: 0o1777,
    },
    Dir {
        path: "run/vesper",
        cluster: false,
        mode: 0o700,
    },
];

/// The node's own directories, as Debian's packages lay them out.
pub fn create_dirs(lab: &Lab, node: &str) -> Result<(), LabError> {
    let step = format!("create {node}'s directories");
    let (uid, gid) = hacluster()?;
    let root = lab.node_dir(node);
    for d in DIRS {
        let p = root.join(d.path);
        std::fs::create_dir_all(&p).map_err(io_err(&step, &p))?;
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(d.mode))
            .map_err(io_err(&step, &p))?;
        if d.cluster {
            std::os::unix::fs::chown(&p, Some(uid), Some(gid)).map_err(io_err(&step, &p))?;
        }
    }
    Ok(())
}

/// The uid and gid of Pacemaker's `hacluster` user and `haclient` group.
pub fn hacluster() -> Result<(u32, u32), LabError> {
    let user = nix::unistd::User::from_name("hacluster").ok().flatten();
    let group = nix::unistd::Group::from_name("haclient").ok().flatten();
    match (user, group) {
        (Some(u), Some(g)) => Ok((u.uid.as_raw(), g.gid.as_raw())),
        _ => Err(LabError::Usage(
            "the hacluster user or haclient group is missing: the pacemaker package creates them; reinstall it (apt-get install --reinstall pacemaker)".into(),
        )),
    }
}

/// Writes `data` to `path` with `mode`, owned by `owner` (uid, gid) when given.
pub fn write_file(
    step: &str,
    path: &Path,
    data: &[u8],
    mode: u32,
    owner: Option<(u32, u32)>,
) -> Result<(), LabError> {
    std::fs::write(path, data).map_err(io_err(step, path))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(step, path))?;
    if let Some((u, g)) = owner {
        std::os::unix::fs::chown(path, Some(u), Some(g)).map_err(io_err(step, path))?;
    }
    Ok(())
}

/// The node's mount and UTS namespaces: created by `unshare` (which binds them to files
/// under the namespace directory), then given the node's host name and directories, and
/// `extra` ones (under the node's directory, where mounted).
pub fn create_namespaces(
    lab: &Lab,
    st: &mut State,
    node: &str,
    extra: &[(&str, &str)],
) -> Result<(), LabError> {
    let step = format!("create {node}'s mount and UTS namespaces");
    let mnt = lab.mnt_ns_path(node);
    let uts = lab.uts_ns_path(node);
    for f in [&mnt, &uts] {
        std::fs::write(f, b"").map_err(io_err(&step, f))?;
    }
    let hint = "needs util-linux's unshare and a kernel with mount and UTS namespaces; run `tools/cluster/down` and retry";
    let mut c = command(&["unshare"]);
    c.arg(format!("--mount={}", mnt.display()))
        .arg(format!("--uts={}", uts.display()))
        .args(["--propagation", "private", "true"]);
    let result = run(&step, hint, &mut c);
    // Recorded whatever happened: unshare may have bound one of the two.
    st.record(lab, Made::Mount { path: mnt.clone() })?;
    st.record(lab, Made::Mount { path: uts.clone() })?;
    result?;

    let inside = |argv: &[&str]| {
        let mut c = std::process::Command::new("nsenter");
        c.arg(format!("--mount={}", mnt.display()))
            .arg(format!("--uts={}", uts.display()))
            .arg("--")
            .args(argv);
        c
    };
    run(&step, hint, &mut inside(&["hostname", node]))?;
    // The node's copy of the host's mounts holds the other nodes' and labs' namespace
    // files (and `ip netns`'s): dropped, so they die when their own lab goes down.
    let ns_dir = lab.ns_dir().display().to_string();
    for m in [ns_dir.as_str(), crate::NETNS_DIR] {
        let _ = inside(&["umount", "--recursive", "--lazy", m])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
    let dir = lab.node_dir(node);
    let hint = "see the error above; run `tools/cluster/down` and retry";
    share_node_runs(lab, node, &inside)?;
    // /run last: the sources are under the host's /run.
    let own = [
        ("etc-corosync", "/etc/corosync"),
        ("var-lib-corosync", "/var/lib/corosync"),
        ("var-lib-pacemaker", "/var/lib/pacemaker"),
        ("var-log", "/var/log"),
    ];
    for (src, dst) in own.iter().chain(extra).chain(&[("run", "/run")]) {
        let src = dir.join(src).display().to_string();
        // /run recursively: it carries the view of every node's run directory.
        let bind = if *dst == "/run" { "--rbind" } else { "--bind" };
        run(&step, hint, &mut inside(&["mount", bind, &src, dst]))?;
    }
    // libqb's IPC keeps its rings in /dev/shm: each node its own.
    run(
        &step,
        hint,
        &mut inside(&[
            "mount",
            "-t",
            "tmpfs",
            "-o",
            "mode=1777,size=256m",
            "tmpfs",
            "/dev/shm",
        ]),
    )?;
    Ok(())
}

/// Every node's run directory, seen inside `node` at the path the host sees it
/// (`STATE/nodes/nN/run`), which the node's own `/run` would hide: a node's fence device
/// reaches the vesperd of the node it fences there. Bound into the node's run directory
/// (inside its mount namespace only) before that is mounted over `/run`.
fn share_node_runs(
    lab: &Lab,
    node: &str,
    inside: &dyn Fn(&[&str]) -> std::process::Command,
) -> Result<(), LabError> {
    let step = format!("share the nodes' run directories with {node}");
    let nodes = lab.state_dir.join("nodes");
    let rel = nodes.strip_prefix("/run").map_err(|_| {
        LabError::Usage(format!(
            "{step}: the state directory {} is not under /run",
            lab.state_dir.display()
        ))
    })?;
    let at = lab.node_run(node).join(rel);
    std::fs::create_dir_all(&at).map_err(io_err(&step, &at))?;
    let (src, dst) = (nodes.display().to_string(), at.display().to_string());
    run(
        &step,
        "see the error above; run `tools/cluster/down` and retry",
        &mut inside(&["mount", "--bind", &src, &dst]),
    )?;
    Ok(())
}

/// Starts `argv` inside `node`, in its own session (a signal to `up`'s terminal does not
/// reach it), output to the node's `DAEMON.out`; records and returns its pid.
pub fn spawn(
    lab: &Lab,
    st: &mut State,
    node: &str,
    daemon: &str,
    argv: &[&str],
    env: &[(&str, &str)],
) -> Result<u32, LabError> {
    let step = format!("start {daemon} on {node}");
    let log_path = lab.daemon_log(node, daemon);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io_err(&step, &log_path))?;
    let err = log.try_clone().map_err(io_err(&step, &log_path))?;
    let mut c = lab.node_command_at(node, Path::new("/"));
    c.args(argv)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err);
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        c.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = c.spawn().map_err(|e| LabError::Command {
        step: step.clone(),
        command: crate::cmd::describe(&c),
        why: e.to_string(),
        hint: "is util-linux's nsenter installed?".into(),
    })?;
    // nsenter execs the daemon: this pid is the daemon's. It is not waited for: `up`
    // exits, and the daemon goes on (init reaps it once `down` ends it).
    let pid = child.id();
    st.record(
        lab,
        Made::Process {
            node: node.to_string(),
            daemon: daemon.to_string(),
            pid,
        },
    )?;
    Ok(pid)
}
