//! `up --libvirt`: a libvirtd on every node, for the baseline the issue compares Vesper
//! with (the stock `ocf:heartbeat:VirtualDomain` agent, cib/virtualdomain.crm). Each node
//! gets its own `/etc/libvirt` (a `qemu.conf` fit for a node without systemd),
//! `/var/lib/libvirt` and `/var/cache/libvirt`; its `/run` is its own already. The
//! domain's XML, rendered from `libvirt/guest.xml`, is written to the same path on every
//! node, as a cluster of machines would keep it on each or on shared storage.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cib::Vars;
use crate::cmd::{io_err, log_tail};
use crate::node::{self, write_file};
use crate::state::State;
use crate::{Lab, LabError};

/// Where the domain's XML and its serial console socket are, inside each node.
pub const NODE_VDOM_DIR: &str = "/run/vesper-vdom";

/// The connection VirtualDomain and `virsh` use on every node.
pub const HYPERVISOR: &str = "qemu:///system";

/// VirtualDomain's shipped default monitor interval (its meta-data), the `@VD_MONITOR@`
/// of cib/virtualdomain.crm unless `up --var VD_MONITOR=...` says otherwise.
pub const DEFAULT_MONITOR: &str = "10s";

/// The node's qemu.conf. QEMU runs as root with no relabelling (the kit's kernel and
/// initramfs are shared with the host and other labs: libvirt must not chown them), no
/// cgroups (no systemd, no delegated hierarchy), no private mount namespace (`down` finds
/// the lab's QEMU by the node's namespaces), and its stdio logged to a file (no virtlogd).
const QEMU_CONF: &str = "# tools/cluster up --libvirt: libvirt's QEMU driver on a lab node\n\
user = \"root\"\n\
group = \"root\"\n\
dynamic_ownership = 0\n\
remember_owner = 0\n\
security_driver = \"none\"\n\
namespaces = [ ]\n\
cgroup_controllers = [ ]\n\
stdio_handler = \"file\"\n";

const LIBVIRTD_CONF: &str = "# tools/cluster up --libvirt: only root on the node uses it\n\
unix_sock_group = \"root\"\n";

/// The node's own libvirt directories: (under the node's directory, where it is mounted).
const DIRS: &[(&str, &str)] = &[
    ("etc-libvirt", "/etc/libvirt"),
    ("var-lib-libvirt", "/var/lib/libvirt"),
    ("var-cache-libvirt", "/var/cache/libvirt"),
];

/// The domain template shipped beside this crate.
pub fn domain_template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("libvirt/guest.xml")
}

/// The domain's XML inside a node, for `guest`.
pub fn domain_xml(guest: &str) -> String {
    format!("{NODE_VDOM_DIR}/{guest}.xml")
}

/// The domain's serial console (a unix socket QEMU listens on) inside a node.
pub fn serial_socket(guest: &str) -> String {
    format!("{NODE_VDOM_DIR}/{guest}.serial")
}

/// Adds the libvirt placeholders: `@KERNEL@`, `@INITRD@` (the kit's, as vesperd boots
/// them), `@VD_TYPE@`/`@VD_CPU@` (`kvm`/`host-passthrough` where vesperd would use KVM,
/// else `qemu`/`maximum`: TCG), `@VD_XML@`, `@VD_SERIAL@`, `@VD_MONITOR@`, `@HYPERVISOR@`.
pub fn add_vars(vars: &mut Vars, kit_dir: &Path) -> Result<(), LabError> {
    let (kernel, initrd) = crate::cib::kit_boot_files(kit_dir)?;
    let kvm = vesper_qemu::choose_accel(vesper_qemu::AccelRequest::Auto)
        .map(|c| c.accel == vesper_qemu::Accel::Kvm)
        .unwrap_or(false);
    let guest = vars.0.get("GUEST").cloned().unwrap_or_default();
    let v = &mut vars.0;
    v.insert("KERNEL", kernel.display().to_string());
    v.insert("INITRD", initrd.display().to_string());
    v.insert("VD_TYPE", if kvm { "kvm" } else { "qemu" }.to_string());
    v.insert(
        "VD_CPU",
        if kvm { "host-passthrough" } else { "maximum" }.to_string(),
    );
    v.insert("VD_XML", domain_xml(&guest));
    v.insert("VD_SERIAL", serial_socket(&guest));
    v.insert("VD_MONITOR", DEFAULT_MONITOR.to_string());
    v.insert("HYPERVISOR", HYPERVISOR.to_string());
    Ok(())
}

/// Before `node`'s namespaces exist: its libvirt directories and configuration, and the
/// domain's XML (`domain`, rendered) in what will be its `/run`. Returns the directories
/// to mount inside it.
pub fn prepare(
    lab: &Lab,
    node: &str,
    guest: &str,
    domain: &str,
) -> Result<&'static [(&'static str, &'static str)], LabError> {
    let step = format!("set up libvirt on {node}");
    let dir = lab.node_dir(node);
    for (own, _) in DIRS {
        let p = dir.join(own);
        std::fs::create_dir_all(&p).map_err(io_err(&step, &p))?;
    }
    let etc = dir.join("etc-libvirt");
    write_file(
        &step,
        &etc.join("qemu.conf"),
        QEMU_CONF.as_bytes(),
        0o644,
        None,
    )?;
    write_file(
        &step,
        &etc.join("libvirtd.conf"),
        LIBVIRTD_CONF.as_bytes(),
        0o644,
        None,
    )?;
    let vdom = lab
        .node_run(node)
        .join(NODE_VDOM_DIR.trim_start_matches("/run/"));
    std::fs::create_dir_all(&vdom).map_err(io_err(&step, &vdom))?;
    write_file(
        &step,
        &vdom.join(format!("{guest}.xml")),
        domain.as_bytes(),
        0o644,
        None,
    )?;
    Ok(DIRS)
}

/// Starts libvirtd on every node of `nodes` (after [`prepare`] and their namespaces),
/// then waits until `virsh` reaches each: they probe QEMU at the same time.
pub fn start(lab: &Lab, st: &mut State, nodes: &[String]) -> Result<(), LabError> {
    let mut pids = Vec::new();
    for n in nodes {
        pids.push(node::spawn(lab, st, n, "libvirtd", &["libvirtd"], &[])?);
    }
    for (n, pid) in nodes.iter().zip(pids) {
        wait_libvirtd(lab, n, pid)?;
    }
    Ok(())
}

/// Waits until `virsh` on `node` reaches its libvirtd (it probes QEMU's capabilities
/// first: a few seconds under TCG the first time).
fn wait_libvirtd(lab: &Lab, node: &str, pid: u32) -> Result<(), LabError> {
    let secs = 60;
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let mut c = lab.node_command_at(node, Path::new("/"));
        c.args(["virsh", "--connect", HYPERVISOR, "--quiet", "version"]);
        if c.output().is_ok_and(|o| o.status.success()) {
            return Ok(());
        }
        if !crate::procs::alive(pid) || Instant::now() > deadline {
            return Err(LabError::Timeout {
                step: format!("start libvirtd on {node}"),
                secs,
                what: format!(
                    "`virsh --connect {HYPERVISOR} version` to succeed{}",
                    log_tail(&lab.daemon_log(node, "libvirtd"), 8)
                ),
                hint: "are libvirt-daemon-system and libvirt-daemon-driver-qemu installed? then `tools/cluster/down`".into(),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_baseline_templates_render() {
        let mut vars = Vars::new(&crate::cib::Places {
            bin_dir: "/b".into(),
            kit_dir: "/k".into(),
            modules_dir: "/k/m".into(),
            nodes: vec!["n1".into(), "n2".into()],
            node_runs: "/run/vesper-lab/l/nodes".into(),
        });
        for k in ["KERNEL", "INITRD", "VD_TYPE", "VD_CPU"] {
            vars.0.insert(k, format!("<{k}>"));
        }
        vars.0.insert("VD_XML", domain_xml("web1"));
        vars.0.insert("VD_SERIAL", serial_socket("web1"));
        vars.0.insert("VD_MONITOR", DEFAULT_MONITOR.into());
        vars.0.insert("HYPERVISOR", HYPERVISOR.into());
        vars.set(&[("VD_MONITOR".into(), "1s".into())]).unwrap();
        assert!(vars.set(&[("bad name".into(), "x".into())]).is_err());
        let crm = crate::cib::base_template().with_file_name("virtualdomain.crm");
        let out = vars
            .render(&std::fs::read_to_string(&crm).unwrap(), &crm)
            .unwrap();
        assert!(out.contains("ocf:heartbeat:VirtualDomain"));
        assert!(out.contains("config=/run/vesper-vdom/web1.xml hypervisor=qemu:///system"));
        assert!(out.contains("/tools/ocf/vd_svc_check"));
        assert!(out.contains("op monitor interval=1s"));
        let xml = domain_template();
        let out = vars
            .render(&std::fs::read_to_string(&xml).unwrap(), &xml)
            .unwrap();
        assert!(
            out.contains("<name>web1</name>")
                && out.contains("path='/run/vesper-vdom/web1.serial'")
        );
    }

    #[test]
    fn paths_follow_the_guest() {
        assert_eq!(domain_xml("web1"), "/run/vesper-vdom/web1.xml");
        assert_eq!(serial_socket("web1"), "/run/vesper-vdom/web1.serial");
    }
}
