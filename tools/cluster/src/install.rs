//! The host packages a lab needs, installed with apt like the guest kit does — without
//! letting their maintainer scripts start corosync or pacemaker on the host.

use std::path::Path;

use crate::cmd::{command, io_err, run};
use crate::LabError;

/// Debian 12 packages: the cluster stack, its shell, the agents the CIB uses (`IPaddr2`
/// from resource-agents), the fence agents a stonith resource will use, and the tools
/// `up` runs (`ip`, `nsenter`, `unshare`), and `ping` to check a node from another;
/// libvirt and `socat` for `up --libvirt` (the VirtualDomain baseline and its monitor
/// script).
pub const PACKAGES: &[&str] = &[
    "corosync",
    "pacemaker",
    "pacemaker-cli-utils",
    "crmsh",
    "resource-agents",
    "fence-agents",
    "iproute2",
    "iputils-ping",
    "util-linux",
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
    "qemu-system-x86",
    "socat",
];

const POLICY_RC_D: &str = "/usr/sbin/policy-rc.d";

/// The packages of [`PACKAGES`] not fully installed.
pub fn missing() -> Vec<&'static str> {
    let mut c = command(&["dpkg-query", "-W", "-f=${Package} ${Status}\\n"]);
    c.args(PACKAGES);
    // dpkg-query exits 1 when a package is unknown; its stdout still lists the rest.
    let out = c
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let have = vesper_guest_kit::apt::parse_installed(&out);
    PACKAGES
        .iter()
        .copied()
        .filter(|p| !have.contains(*p))
        .collect()
}

/// Installs what is missing. Service starts are refused through a temporary
/// `policy-rc.d` (honoured by invoke-rc.d and deb-systemd-invoke): a corosync started on
/// the host by its postinst would run with Debian's sample config beside the lab.
pub fn ensure_packages(say: &dyn Fn(&str)) -> Result<(), LabError> {
    let missing = missing();
    if missing.is_empty() {
        return Ok(());
    }
    say(&format!("installing {} with apt", missing.join(" ")));
    let step = "install the cluster packages";
    let policy = Path::new(POLICY_RC_D);
    let ours = !policy.exists();
    if ours {
        std::fs::write(policy, "#!/bin/sh\n# tools/cluster/up: no service starts during its apt-get install\nexit 101\n")
            .map_err(io_err(step, policy))?;
        set_mode(policy, 0o755).map_err(io_err(step, policy))?;
    }
    let result = (|| {
        run(
            step,
            "check the machine reaches Debian's mirrors and apt works (`apt-get update`)",
            &mut command(&["apt-get", "update", "-qq"]),
        )?;
        let mut c = command(&["apt-get", "install", "-y", "-qq"]);
        c.args(&missing).env("DEBIAN_FRONTEND", "noninteractive");
        run(
            step,
            "run the same apt-get install by hand to see why; a held or broken package must be fixed first",
            &mut c,
        )
    })();
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    result?;
    let still = self::missing();
    if !still.is_empty() {
        return Err(LabError::Usage(format!(
            "{step}: still not installed after apt-get: {}",
            still.join(" ")
        )));
    }
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
}
