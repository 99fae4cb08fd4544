//! `fence_vesper` (tools/fence), the fence agent for Vesper guests, run the way
//! Pacemaker's fencer runs it — options on the command line or `key=value` lines on
//! stdin — against a real vesperd and a real guest: metadata, list, status, off (the VM
//! process gone), on, reboot, monitor, and a vesperd that is not there. Through
//! `stonith_admin` in a real cluster: tests/tests/cluster.rs.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vesper_e2e::{bin_dir, kit, CliOutput, Daemon};

fn agent() -> PathBuf {
    kit(); // installs the host packages: fence-agents brings fencing.py
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tools/fence/fence_vesper")
        .canonicalize()
        .expect("tools/fence/fence_vesper")
}

fn fence(d: &Daemon, args: &[&str]) -> CliOutput {
    Command::new(agent())
        .arg(format!("--socket={}", d.socket.display()))
        .arg(format!(
            "--vesper-path={}",
            bin_dir().join("vesper").display()
        ))
        .args(args)
        .output()
        .expect("run fence_vesper")
        .into()
}

/// As pacemaker-fenced calls an agent: no arguments, options on stdin, and
/// `PCMK_service` set (fencing.py then zeroes its own timeouts: Pacemaker's bound it).
fn fence_stdin(d: &Daemon, lines: &[&str]) -> CliOutput {
    let mut child = Command::new(agent())
        .env("PCMK_service", "pacemaker-fenced")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run fence_vesper");
    let mut input = format!(
        "socket={}\nvesper_path={}\n",
        d.socket.display(),
        bin_dir().join("vesper").display()
    );
    for l in lines {
        input.push_str(l);
        input.push('\n');
    }
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    child.wait_with_output().expect("fence_vesper").into()
}

#[test]
fn fence_vesper_powers_a_guest_off_and_on_through_vesperd() {
    let d = Daemon::start(&[]);
    let meta = fence(&d, &["-o", "metadata"]);
    assert_eq!(meta.code, 0, "{meta:?}");
    for needle in [
        "<resource-agent name=\"fence_vesper\"",
        "name=\"socket\"",
        "name=\"plug\"",
        "<action name=\"off\"",
        "<action name=\"list\"",
    ] {
        assert!(
            meta.stdout.contains(needle),
            "metadata lacks {needle}:\n{}",
            meta.stdout
        );
    }

    d.vm_start("f1");
    let list = fence(&d, &["-o", "list"]);
    assert_eq!(list.code, 0, "{list:?}");
    assert!(list.stdout.contains("f1,f1"), "{list:?}");
    let status = fence(&d, &["-o", "status", "-n", "f1"]);
    assert_eq!(
        (status.code, status.stdout.trim()),
        (0, "Status: ON"),
        "{status:?}"
    );

    let qemu = d.qemu_pid("f1");
    let off = fence_stdin(&d, &["action=off", "plug=f1"]);
    assert_eq!(off.code, 0, "{off:?}\n{}", d.log());
    assert!(off.stdout.contains("Success: Powered OFF"), "{off:?}");
    assert!(
        !Path::new(&format!("/proc/{qemu}")).exists()
            || std::fs::read_to_string(format!("/proc/{qemu}/stat"))
                .is_ok_and(|s| s.contains(") Z ")),
        "the VM process is gone once off returns"
    );
    assert_eq!(d.cli(&["vm", "status", "f1"]).code, 3);
    // Status of an off guest is OFF, exit 2 by the fence-agents convention.
    let status = fence(&d, &["-o", "status", "-n", "f1"]);
    assert_eq!(
        (status.code, status.stdout.trim()),
        (2, "Status: OFF"),
        "{status:?}"
    );

    // Fenced: the guest may not start on this host, whoever asks.
    let refused = d.cli(&["vm", "start", "f1"]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("fenced on this host"),
        "{refused:?}"
    );
    let fenced = d.cli(&["--json", "vm", "fenced", "f1"]).result();
    assert_eq!(fenced["fenced"], true, "{fenced}");

    // On (unfencing, as Pacemaker does when a node joins): the guest may start here
    // again; on does not start it — the cluster's resource agent does.
    let on = fence(&d, &["-o", "on", "-n", "f1"]);
    assert_eq!(on.code, 0, "{on:?}\n{}", d.log());
    assert!(on.stdout.contains("Success: Powered ON"), "{on:?}");
    assert_eq!(d.cli(&["vm", "status", "f1"]).code, 3, "on starts nothing");
    let status = fence(&d, &["-o", "status", "-n", "f1"]);
    assert_eq!(
        (status.code, status.stdout.trim()),
        (0, "Status: ON"),
        "{status:?}"
    );
    d.vm_start("f1");
    // Fabric fencing has no reboot: it is refused, not done as something else.
    let reboot = fence(&d, &["-o", "reboot", "-n", "f1"]);
    assert_ne!(reboot.code, 0, "{reboot:?}");
    assert_eq!(
        d.cli(&["vm", "status", "f1"]).code,
        0,
        "reboot touched nothing"
    );
    assert_eq!(fence(&d, &["-o", "monitor"]).code, 0);

    // No vesperd there: a failure that says so, not a false "off".
    let gone = Command::new(agent())
        .args([
            "--socket=/nonexistent/vesperd.sock",
            "-o",
            "status",
            "-n",
            "f1",
        ])
        .arg(format!(
            "--vesper-path={}",
            bin_dir().join("vesper").display()
        ))
        .output()
        .expect("run fence_vesper");
    let gone = CliOutput::from(gone);
    assert_eq!(gone.code, 1, "{gone:?}");
    assert!(gone.stderr.contains("not reachable"), "{gone:?}");
}

/// Fabric fencing's rule, as with SCSI reservations: a node whose own guest is fenced
/// has lost its access and fences nobody (`local_socket`: the vesperd of the node
/// running the agent). This is what lets one side of a two-node split win: the side
/// whose fence delay ends last finds itself fenced.
#[test]
fn a_fenced_node_fences_nobody() {
    let target = Daemon::start(&[]);
    let here = Daemon::start(&[]);
    target.vm_start("f2");
    let local = format!("local_socket={}", here.socket.display());
    here.cli(&["vm", "fence", "f2"]).ok();

    let refused = fence_stdin(&target, &["action=off", "plug=f2", &local]);
    assert_eq!(refused.code, 1, "{refused:?}");
    assert!(
        refused.stderr.contains("this node is fenced itself"),
        "{refused:?}"
    );
    assert_eq!(
        target.cli(&["vm", "status", "f2"]).code,
        0,
        "a refused off touched nothing"
    );
    let fenced = target.cli(&["--json", "vm", "fenced", "f2"]).result();
    assert_eq!(fenced["fenced"], false, "{fenced}");
    // Unfencing is not fencing: a fenced node may still be given its guest back.
    let on = fence_stdin(&here, &["action=on", "plug=f2", &local]);
    assert_eq!(on.code, 0, "{on:?}");

    // Unfenced here, this node fences again.
    let off = fence_stdin(&target, &["action=off", "plug=f2", &local]);
    assert_eq!(off.code, 0, "{off:?}\n{}", target.log());
    assert_eq!(target.cli(&["vm", "status", "f2"]).code, 3);
}
