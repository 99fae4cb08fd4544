//! `vesper-cluster-lab`: a Pacemaker/Corosync cluster on one machine (run through
//! tools/cluster/up, down and exec; see tools/cluster/README.md).

use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vesper_cluster_lab::{cib, down, up, Lab, LabError, UpOptions, DEFAULT_LAB};

#[derive(Debug, Parser)]
#[command(
    about = "A Pacemaker/Corosync cluster of namespaced nodes on this machine, each with its own vesperd"
)]
struct Args {
    /// The lab's name (several labs may run at once; it prefixes their namespaces).
    /// Default: $VESPER_LAB, else `vesper`.
    #[arg(long, global = true)]
    lab: Option<String>,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what is missing, make the nodes, start corosync, pacemaker and vesperd on
    /// each, load the CIB.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 2)]
        nodes: usize,
        /// Guest kit (default: $VESPER_KIT_DIR, else the repository's .vesper-kit).
        #[arg(long)]
        kit_dir: Option<PathBuf>,
        /// Directory of vesper and vesperd (default: this program's own).
        #[arg(long)]
        bin_dir: Option<PathBuf>,
        /// The OCF agent installed as ocf:vesper:vesper (default: the repository's
        /// tools/ocf/vesper).
        #[arg(long)]
        ocf_agent: Option<PathBuf>,
        /// A further CIB template (crm shell, @NAME@ placeholders), loaded after the base
        /// one; repeatable.
        #[arg(long = "cib")]
        cib: Vec<PathBuf>,
        /// Load no base configuration (a bare cluster; --cib files still load).
        #[arg(long)]
        bare: bool,
        /// Also run libvirtd on every node and write the guest's domain XML there, for
        /// the stock VirtualDomain agent (cib/virtualdomain.crm, with --bare).
        #[arg(long)]
        libvirt: bool,
        /// Set or override a CIB template placeholder, e.g. `--var VD_MONITOR=1s`;
        /// repeatable.
        #[arg(long = "var", value_name = "NAME=VALUE", value_parser = parse_var)]
        vars: Vec<(String, String)>,
        /// Do not install missing packages (fail instead).
        #[arg(long)]
        no_install: bool,
        /// Longest wait for corosync, then for Pacemaker, in seconds.
        #[arg(long, default_value_t = 90)]
        timeout: u64,
    },
    /// Only install the packages a lab needs (up does it too, unless --no-install).
    Install,
    /// End every process in the lab's namespaces and remove its namespaces, mounts,
    /// bridge and state. Safe after a failed up, and when nothing is up.
    Down,
    /// Run a command on a node (its network, mount and UTS namespaces), e.g.
    /// `exec n1 crm_mon -1`; `vesper` there talks to the node's vesperd.
    Exec {
        /// The node: n1, n2, ...
        node: String,
        /// The command and its arguments.
        #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
        command: Vec<String>,
    },
    /// The lab's nodes, addresses, daemons, and `crm_mon -1` from its first node.
    Status,
    /// Kill a node's daemon (vesperd, corosync, pacemakerd) with SIGKILL, as a crash
    /// would: `kill n1 corosync` is the loss of n1 to the cluster.
    Kill {
        /// The node: n1, n2, ...
        node: String,
        /// vesperd, corosync or pacemakerd.
        daemon: String,
    },
    /// Start a node's daemon again, as `up` did (as a service manager's restart would).
    Start {
        /// The node: n1, n2, ...
        node: String,
        /// vesperd, corosync or pacemakerd.
        daemon: String,
    },
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cluster lab: {e}");
            ExitCode::FAILURE
        }
    }
}

fn say(line: &str) {
    eprintln!("cluster lab: {line}");
}

fn run(args: Args) -> Result<ExitCode, LabError> {
    let name = args
        .lab
        .or_else(|| std::env::var("VESPER_LAB").ok().filter(|l| !l.is_empty()))
        .unwrap_or_else(|| DEFAULT_LAB.to_string());
    let lab = Lab::new(&name)?;
    match args.cmd {
        Cmd::Up {
            nodes,
            kit_dir,
            bin_dir,
            ocf_agent,
            cib: extra,
            bare,
            libvirt,
            vars,
            no_install,
            timeout,
        } => {
            let root = vesper_cluster_lab::repo_root();
            let own_dir = std::env::current_exe()
                .ok()
                .and_then(|p| p.parent().map(PathBuf::from))
                .unwrap_or_default();
            let kit_dir = kit_dir
                .or_else(|| {
                    std::env::var_os("VESPER_KIT_DIR")
                        .filter(|d| !d.is_empty())
                        .map(PathBuf::from)
                })
                .unwrap_or_else(|| root.join(".vesper-kit"));
            let mut templates = Vec::new();
            if !bare {
                templates.push(cib::base_template());
            }
            templates.extend(extra);
            let opts = UpOptions {
                nodes,
                bin_dir: absolute(bin_dir.unwrap_or(own_dir)),
                kit_dir: absolute(kit_dir),
                ocf_agent: ocf_agent.unwrap_or_else(|| root.join("tools/ocf/vesper")),
                cib: templates,
                install: !no_install,
                timeout: Duration::from_secs(timeout),
                libvirt,
                vars,
            };
            match up(&lab, &opts, &say) {
                Ok(st) => {
                    for n in &st.nodes {
                        say(&format!(
                            "{} at {}: tools/cluster/exec{} {} crm_mon -1",
                            n.name,
                            n.addr,
                            lab_flag(&lab),
                            n.name
                        ));
                    }
                    Ok(ExitCode::SUCCESS)
                }
                Err(e) => {
                    eprintln!("cluster lab: {e}");
                    if lab.state_dir.exists() {
                        eprintln!(
                            "cluster lab: up stopped half-way; logs and state are in {}; `tools/cluster/down{}` removes all it made",
                            lab.state_dir.display(),
                            lab_flag(&lab)
                        );
                    }
                    Ok(ExitCode::FAILURE)
                }
            }
        }
        Cmd::Install => {
            if !vesper_cluster_lab::is_root() {
                return Err(LabError::NotRoot);
            }
            vesper_cluster_lab::install::ensure_packages(&say)?;
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Down => {
            let r = down(&lab, &say)?;
            if r.nothing() {
                say(&format!("lab {} was not up: nothing to do", lab.name));
            } else {
                say(&format!(
                    "lab {} down: {} processes ended, {} mounts and {} network namespaces removed",
                    lab.name,
                    r.killed,
                    r.unmounted,
                    r.netns.len()
                ));
            }
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Exec { node, command } => {
            lab.check_node(&node)?;
            let st = vesper_cluster_lab::state::State::load(&lab)?;
            let mut c = lab.node_command(&node);
            // The lab's vesper first on PATH, as if installed on the node.
            let path = std::env::var("PATH").unwrap_or_default();
            c.env("PATH", format!("{}:{path}", st.bin_dir.display()))
                .args(&command);
            // Replaces this process: the command's exit status is exec's.
            let e = c.exec();
            Err(LabError::Command {
                step: format!("run a command on {node}"),
                command: vesper_cluster_lab::cmd::describe(&c),
                why: e.to_string(),
                hint: "is util-linux's nsenter installed?".into(),
            })
        }
        Cmd::Kill { node, daemon } => {
            let pid = vesper_cluster_lab::daemon::kill(&lab, &node, &daemon)?;
            say(&format!("killed {daemon} on {node} (pid {pid})"));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Start { node, daemon } => {
            let pid = vesper_cluster_lab::daemon::start(&lab, &node, &daemon)?;
            say(&format!("started {daemon} on {node} (pid {pid})"));
            Ok(ExitCode::SUCCESS)
        }
        Cmd::Status => {
            let st = vesper_cluster_lab::state::State::load(&lab)?;
            for n in &st.nodes {
                let daemons: Vec<String> = ["vesperd", "corosync", "pacemakerd", "libvirtd"]
                    .iter()
                    .flat_map(|d| {
                        st.pids(d)
                            .into_iter()
                            .filter(|(node, _)| *node == n.name)
                            .map(move |(_, pid)| {
                                let state = if vesper_cluster_lab::procs::alive(pid) {
                                    ""
                                } else {
                                    " DEAD"
                                };
                                format!("{d} {pid}{state}")
                            })
                    })
                    .collect();
                println!("{} {} {}", n.name, n.addr, daemons.join(", "));
            }
            let first = &st.nodes.first().map(|n| n.name.clone()).unwrap_or_default();
            let status = lab.node_command(first).args(["crm_mon", "-1"]).status();
            Ok(match status {
                Ok(s) if s.success() => ExitCode::SUCCESS,
                _ => ExitCode::FAILURE,
            })
        }
    }
}

fn lab_flag(lab: &Lab) -> String {
    if lab.name == DEFAULT_LAB {
        String::new()
    } else {
        format!(" --lab {}", lab.name)
    }
}

fn parse_var(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?}: expected NAME=VALUE"))
}

fn absolute(p: PathBuf) -> PathBuf {
    p.canonicalize().unwrap_or(p)
}
