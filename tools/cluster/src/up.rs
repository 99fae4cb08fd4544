//! `up`: packages, network, namespaces, corosync, Pacemaker and vesperd on every node, then
//! the CIB. Each step is recorded before the next, so `down` can undo a partial `up`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cib::{Places, Vars};
use crate::cmd::{command, io_err, log_tail, run};
use crate::node::{self, write_file};
use crate::state::{NodeInfo, State};
use crate::status::ClusterStatus;
use crate::{corosync, install, libvirt, Lab, LabError};

/// What `up` builds.
#[derive(Debug, Clone)]
pub struct UpOptions {
    /// Number of nodes (2 or more).
    pub nodes: usize,
    /// Directory of `vesper` and `vesperd`.
    pub bin_dir: PathBuf,
    /// The guest kit.
    pub kit_dir: PathBuf,
    /// The OCF agent to install as ocf:vesper:vesper.
    pub ocf_agent: PathBuf,
    /// CIB templates loaded in order (the base one first, unless `bare`).
    pub cib: Vec<PathBuf>,
    /// Install missing packages with apt.
    pub install: bool,
    /// Longest wait for corosync and Pacemaker to form the cluster.
    pub timeout: Duration,
    /// Start libvirtd on every node and write the domain's XML (the VirtualDomain
    /// baseline, cib/virtualdomain.crm).
    pub libvirt: bool,
    /// Template placeholders set or overridden (`--var NAME=VALUE`).
    pub vars: Vec<(String, String)>,
}

/// Where the agent goes on every node (the nodes share the host's /usr).
pub const OCF_AGENT_PATH: &str = "/usr/lib/ocf/resource.d/vesper/vesper";

/// Brings the lab up; progress lines go through `say`.
pub fn up(lab: &Lab, opts: &UpOptions, say: &dyn Fn(&str)) -> Result<State, LabError> {
    let started = Instant::now();
    check(lab, opts)?;
    if opts.install {
        install::ensure_packages(say)?;
    }
    let modules_dir = crate::cib::modules_dir(&opts.kit_dir)?;
    let names = Lab::node_names(opts.nodes);
    let mut vars = Vars::new(&Places {
        bin_dir: opts.bin_dir.clone(),
        kit_dir: opts.kit_dir.clone(),
        modules_dir,
        nodes: names.clone(),
        node_runs: lab.state_dir.join("nodes"),
    });
    libvirt::add_vars(&mut vars, &opts.kit_dir)?;
    vars.set(&opts.vars)?;
    // Templates are rendered before anything is made: a bad one costs nothing.
    let mut cib_text = String::new();
    let mut parts = Vec::new();
    for t in &opts.cib {
        let text = std::fs::read_to_string(t).map_err(io_err("read a CIB template", t))?;
        if text.contains("@VD_XML@") && !opts.libvirt {
            return Err(LabError::Usage(format!(
                "CIB template {} runs a libvirt domain: add --libvirt (libvirtd on every node)",
                t.display()
            )));
        }
        let part = vars.render(&text, t)?;
        cib_text += &part;
        cib_text.push('\n');
        parts.push(part);
    }
    let guest = vars.0.get("GUEST").cloned().unwrap_or_default();
    let domain = if opts.libvirt {
        let t = libvirt::domain_template();
        let text = std::fs::read_to_string(&t).map_err(io_err("read the domain template", &t))?;
        Some(vars.render(&text, &t)?)
    } else {
        None
    };

    let step = "create the state directory";
    std::fs::create_dir_all(&lab.state_dir).map_err(io_err(step, &lab.state_dir))?;
    let mut st = State {
        lab: lab.name.clone(),
        nodes: names
            .iter()
            .enumerate()
            .map(|(i, n)| NodeInfo {
                name: n.clone(),
                addr: Lab::node_addr(i + 1),
            })
            .collect(),
        bin_dir: opts.bin_dir.clone(),
        kit_dir: opts.kit_dir.clone(),
        made: Vec::new(),
    };
    st.save(lab)?;

    say(&format!(
        "network: bridge and {} nodes on {}.0/24",
        opts.nodes,
        crate::SUBNET
    ));
    node::create_bridge(lab, &mut st)?;
    node::prepare_ns_dir(lab, &mut st)?;
    let key = corosync::authkey().map_err(io_err(
        "generate the corosync authkey",
        Path::new("/dev/urandom"),
    ))?;
    let conf = corosync::conf(&st.nodes);
    let seed = seed_cib(lab)?;
    let (uid, gid) = node::hacluster()?;
    for n in st.nodes.clone() {
        node::create_network(lab, &mut st, &n.name, &n.addr)?;
        node::create_dirs(lab, &n.name)?;
        let dir = lab.node_dir(&n.name);
        let step = format!("configure {}", n.name);
        write_file(
            &step,
            &dir.join("etc-corosync/corosync.conf"),
            conf.as_bytes(),
            0o644,
            None,
        )?;
        write_file(&step, &dir.join("etc-corosync/authkey"), &key, 0o400, None)?;
        write_file(
            &step,
            &dir.join("var-lib-pacemaker/cib/cib.xml"),
            seed.as_bytes(),
            0o600,
            Some((uid, gid)),
        )?;
        let extra = match &domain {
            Some(d) => libvirt::prepare(lab, &n.name, &guest, d)?,
            None => &[],
        };
        node::create_namespaces(lab, &mut st, &n.name, extra)?;
    }

    say("vesperd on every node");
    for n in st.nodes.clone() {
        start_vesperd(lab, &mut st, &n.name, opts)?;
    }
    install_agent(&opts.ocf_agent)?;
    install_fence_agent(&crate::repo_root().join("tools/fence/fence_vesper"))?;
    if domain.is_some() {
        say("libvirtd on every node");
        libvirt::start(lab, &mut st, &names)?;
    }

    say("corosync (knet) on every node");
    for n in st.nodes.clone() {
        node::spawn(lab, &mut st, &n.name, "corosync", &["corosync", "-f"], &[])?;
    }
    wait_corosync(lab, &names, opts.timeout)?;

    say("pacemaker on every node");
    for n in st.nodes.clone() {
        node::spawn(
            lab,
            &mut st,
            &n.name,
            "pacemakerd",
            &["pacemakerd"],
            &[("PCMK_logfile", "/var/log/pacemaker/pacemaker.log")],
        )?;
    }
    let status = wait_cluster(lab, &names, opts.timeout)?;
    say(&format!("cluster formed: {}", status.summary()));

    if !cib_text.is_empty() {
        // Kept in the state directory for the user, and copied where node 1 sees it.
        let path = lab.state_dir.join("cib.crm");
        std::fs::write(&path, &cib_text).map_err(io_err("write the CIB", &path))?;
        say(&format!(
            "loading the CIB ({}) on {}",
            path.display(),
            names[0]
        ));
        // One template at a time: a later one may update what an earlier one set (the
        // fencing template turns stonith-enabled on), which one load would call a
        // duplicate.
        for (i, part) in parts.iter().enumerate() {
            let name = format!("lab-cib-{i}.crm");
            let inside = lab.node_run(&names[0]).join(&name);
            std::fs::write(&inside, part).map_err(io_err("write the CIB", &inside))?;
            let mut c = lab.node_command(&names[0]);
            c.args([
                "crm",
                "configure",
                "load",
                "update",
                &format!("/run/{name}"),
            ]);
            run(
                "load the CIB",
                &format!(
                    "check {} (`crm configure verify` on a node shows the problem)",
                    opts.cib[i].display()
                ),
                &mut c,
            )?;
        }
    }
    say(&format!("up in {:.1} s", started.elapsed().as_secs_f64()));
    Ok(st)
}

fn check(lab: &Lab, opts: &UpOptions) -> Result<(), LabError> {
    if !crate::is_root() {
        return Err(LabError::NotRoot);
    }
    if opts.nodes < 2 || opts.nodes > crate::MAX_NODES {
        return Err(LabError::Usage(format!(
            "--nodes {}: a lab has 2 to {} nodes",
            opts.nodes,
            crate::MAX_NODES
        )));
    }
    let leftovers = crate::down::leftover_netns(lab);
    if lab.state_dir.exists() || !leftovers.is_empty() {
        return Err(LabError::AlreadyUp {
            lab: lab.name.clone(),
            dir: lab.state_dir.clone(),
        });
    }
    for b in ["vesper", "vesperd"] {
        let p = opts.bin_dir.join(b);
        if !p.is_file() {
            return Err(LabError::Usage(format!(
                "{} missing: build it (`cargo build -p vesperd -p vesper-cli`) or pass --bin-dir",
                p.display()
            )));
        }
    }
    if !opts.ocf_agent.is_file() {
        return Err(LabError::Usage(format!(
            "OCF agent {} missing (pass --ocf-agent)",
            opts.ocf_agent.display()
        )));
    }
    Ok(())
}

/// An empty CIB with a short `dc-deadtime`: without it a fresh cluster waits 20 s before
/// electing its DC. Made offline with Pacemaker's own tools (`CIB_file`).
fn seed_cib(lab: &Lab) -> Result<String, LabError> {
    let step = "seed the CIB";
    let hint = "Pacemaker's command-line tools are needed (apt-get install pacemaker-cli-utils)";
    let path = lab.state_dir.join("seed-cib.xml");
    let empty = run(step, hint, &mut command(&["cibadmin", "--empty"]))?;
    std::fs::write(&path, empty).map_err(io_err(step, &path))?;
    let mut c = command(&[
        "crm_attribute",
        "--type",
        "crm_config",
        "--name",
        "dc-deadtime",
        "--update",
        "5s",
    ]);
    c.env("CIB_file", &path);
    run(step, hint, &mut c)?;
    std::fs::read_to_string(&path).map_err(io_err(step, &path))
}

fn start_vesperd(lab: &Lab, st: &mut State, node: &str, opts: &UpOptions) -> Result<(), LabError> {
    let argv = crate::daemon::vesperd_argv(&opts.bin_dir, &opts.kit_dir);
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let pid = node::spawn(lab, st, node, "vesperd", &argv, &[])?;
    crate::daemon::wait_socket(lab, node, pid)
}

/// Installs the agent where Pacemaker looks (atomically: another lab may be running it).
fn install_agent(agent: &Path) -> Result<(), LabError> {
    let step = "install the OCF agent";
    let dst = Path::new(OCF_AGENT_PATH);
    let dir = dst.parent().expect("agent dir");
    std::fs::create_dir_all(dir).map_err(io_err(step, dir))?;
    let tmp = dir.join(format!(".vesper.{}", std::process::id()));
    std::fs::copy(agent, &tmp).map_err(io_err(step, &tmp))?;
    write_mode(&tmp, 0o755).map_err(io_err(step, &tmp))?;
    std::fs::rename(&tmp, dst).map_err(io_err(step, dst))
}

/// Where pacemaker-fenced looks for fence agents (RHCS-style agents live in /usr/sbin).
pub const FENCE_AGENT_PATH: &str = "/usr/sbin/fence_vesper";

/// Installs fence_vesper for stonith resources (atomically, as the OCF agent).
fn install_fence_agent(agent: &Path) -> Result<(), LabError> {
    let step = "install the fence agent";
    let dst = Path::new(FENCE_AGENT_PATH);
    let tmp = dst.with_file_name(format!(".fence_vesper.{}", std::process::id()));
    std::fs::copy(agent, &tmp).map_err(io_err(step, &tmp))?;
    write_mode(&tmp, 0o755).map_err(io_err(step, &tmp))?;
    std::fs::rename(&tmp, dst).map_err(io_err(step, dst))
}

fn write_mode(p: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))
}

fn wait_corosync(lab: &Lab, nodes: &[String], timeout: Duration) -> Result<(), LabError> {
    let deadline = Instant::now() + timeout;
    let want = format!("Nodes:            {}", nodes.len());
    let mut last = String::new();
    loop {
        let mut c = lab.node_command(&nodes[0]);
        c.args(["corosync-quorumtool", "-s"]);
        // Exit 2 means "not quorate": its output still says how far it got.
        if let Ok(o) = c.output() {
            last = String::from_utf8_lossy(&o.stdout).into_owned();
            if last.contains(&want) && last.contains("Quorate:          Yes") {
                return Ok(());
            }
        }
        if Instant::now() > deadline {
            return Err(LabError::Timeout {
                step: "form the corosync membership".into(),
                secs: timeout.as_secs(),
                what: format!(
                    "{} nodes quorate; corosync-quorumtool on {} said:{}{}",
                    nodes.len(),
                    nodes[0],
                    crate::cmd::tail(&last, 12),
                    log_tail(&lab.node_logs(&nodes[0]).join("corosync/corosync.log"), 8)
                ),
                hint: "check every node's corosync.log under the state directory, then `tools/cluster/down`".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `crm_mon` on `node`, parsed.
pub fn crm_status(lab: &Lab, node: &str) -> Result<ClusterStatus, String> {
    let mut c = lab.node_command(node);
    c.args(["crm_mon", "-1", "--output-as=xml"]);
    let o = c.output().map_err(|e| e.to_string())?;
    let xml = String::from_utf8_lossy(&o.stdout);
    if xml.trim().is_empty() {
        return Err(format!(
            "crm_mon: {}: {}",
            o.status,
            String::from_utf8_lossy(&o.stderr).trim()
        ));
    }
    ClusterStatus::parse(&xml)
}

fn wait_cluster(lab: &Lab, nodes: &[String], timeout: Duration) -> Result<ClusterStatus, LabError> {
    let deadline = Instant::now() + timeout;
    loop {
        let last = crm_status(lab, &nodes[0]);
        if let Ok(s) = &last {
            if s.ready(nodes) {
                return Ok(s.clone());
            }
        }
        if Instant::now() > deadline {
            let seen = match last {
                Ok(s) => s.summary(),
                Err(e) => e,
            };
            return Err(LabError::Timeout {
                step: "form the Pacemaker cluster".into(),
                secs: timeout.as_secs(),
                what: format!(
                    "a DC and all nodes online; last seen: {seen}{}",
                    log_tail(&lab.node_logs(&nodes[0]).join("pacemaker/pacemaker.log"), 8)
                ),
                hint: "check each node's pacemaker.log and pacemakerd.out under the state directory, then `tools/cluster/down`".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(300));
    }
}
