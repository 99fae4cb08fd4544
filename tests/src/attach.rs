//! What the `vm attach` tests need around vesperd: a QEMU started by hand (the kit's
//! kernel and initramfs in hand mode, its own QMP and serial sockets), and a libvirtd
//! of the test's own (installed with apt if missing, as tools/cluster's `up --libvirt`
//! does; run in a mount namespace with its own /etc/libvirt, /var/lib/libvirt and
//! /run/libvirt, so QEMU runs as root without relabelling the kit's files and the
//! host's libvirt, if any, is left alone).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::kit;

/// The kit test guest's kernel command line in hand mode.
pub const HAND_CMDLINE: &str = "console=ttyS0 panic=-1 vesper.mode=hand";

/// A QEMU the test started itself (vesperd did not): killed when dropped.
pub struct HandQemu {
    child: Child,
    /// Its QMP socket.
    pub qmp: PathBuf,
    /// Its serial console socket (QEMU listens).
    pub console: PathBuf,
    /// Its stderr.
    pub log: PathBuf,
}

impl HandQemu {
    /// Starts QEMU in `dir` with `machine` arguments (`-machine ...`, `-device ...`),
    /// 256 MiB, TCG or KVM as vesperd would choose; returns once its QMP socket exists.
    pub fn start(dir: &Path, machine: &[&str]) -> Self {
        let qmp = dir.join("hand-qmp.sock");
        let console = dir.join("hand-console.sock");
        let log = dir.join("hand-qemu.log");
        let accel = vesper_qemu::choose_accel(vesper_qemu::AccelRequest::Auto)
            .map(|c| c.accel)
            .unwrap_or(vesper_qemu::Accel::Tcg);
        let accel = serde_json::to_value(accel)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_else(|| "tcg".into());
        // A QEMU started here before left its sockets: they are not this one's.
        let _ = std::fs::remove_file(&qmp);
        let _ = std::fs::remove_file(&console);
        let k = kit();
        let child = Command::new("qemu-system-x86_64")
            .args(machine)
            .args([
                "-m", "256", "-accel", &accel, "-display", "none", "-monitor", "none",
            ])
            .arg("-kernel")
            .arg(&k.kernel)
            .arg("-initrd")
            .arg(&k.initramfs)
            .args(["-append", HAND_CMDLINE])
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", qmp.display()))
            .arg("-serial")
            .arg(format!("unix:{},server=on,wait=off", console.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("qemu log"))
            .spawn()
            .expect("run qemu-system-x86_64");
        let deadline = Instant::now() + Duration::from_secs(20);
        while !qmp.exists() {
            assert!(Instant::now() < deadline, "QEMU made no QMP socket");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self {
            child,
            qmp,
            console,
            log,
        }
    }

    /// QEMU's pid.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether QEMU still runs.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits (at most `timeout`) for QEMU to exit.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if !self.running() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

impl Drop for HandQemu {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// QMP `command` on `socket` (a fresh connection; waits out a busy socket).
pub fn qmp(socket: &Path, command: &str, args: Option<Value>) -> Value {
    vesper_qemu::Qmp::connect_waiting(socket, Duration::from_secs(10))
        .and_then(|mut q| q.execute(command, args))
        .unwrap_or_else(|e| panic!("QMP {command} on {}: {e}", socket.display()))
}

/// The qdev ids of every PCI device QEMU has (`query-pci`, bridges' buses included).
pub fn pci_ids(socket: &Path) -> Vec<String> {
    fn walk(devices: &[Value], out: &mut Vec<String>) {
        for d in devices {
            out.push(d["qdev_id"].as_str().unwrap_or_default().to_string());
            if let Some(b) = d["pci_bridge"]["devices"].as_array() {
                walk(b, out);
            }
        }
    }
    let mut out = Vec::new();
    for b in qmp(socket, "query-pci", None)
        .as_array()
        .into_iter()
        .flatten()
    {
        walk(
            b["devices"].as_array().map_or(&[][..], Vec::as_slice),
            &mut out,
        );
    }
    out
}

/// Labels of QEMU's chardevs.
pub fn chardevs(socket: &Path) -> Vec<String> {
    qmp(socket, "query-chardev", None)
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|c| c["label"].as_str().map(str::to_string))
        .collect()
}

/// The packages a libvirtd needs (Debian 12), as tools/cluster installs them.
const LIBVIRT_PACKAGES: &[&str] = &[
    "libvirt-daemon-system",
    "libvirt-daemon-driver-qemu",
    "libvirt-clients",
];

/// Installs libvirt with apt if it is missing, starting no service meanwhile.
fn ensure_libvirt() {
    let have = Command::new("dpkg-query")
        .args(["-W", "-f=${Package} ${Status}\\n"])
        .args(LIBVIRT_PACKAGES)
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let missing: Vec<&str> = LIBVIRT_PACKAGES
        .iter()
        .copied()
        .filter(|p| !have.contains(&format!("{p} install ok installed")))
        .collect();
    if missing.is_empty() {
        return;
    }
    let policy = Path::new("/usr/sbin/policy-rc.d");
    let ours = !policy.exists();
    if ours {
        std::fs::write(
            policy,
            "#!/bin/sh\n# vesper-e2e: no service starts during apt-get\nexit 101\n",
        )
        .expect("write policy-rc.d");
        let _ = Command::new("chmod").args(["755"]).arg(policy).status();
    }
    let ok = Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .is_ok_and(|s| s.success());
    if ours {
        let _ = std::fs::remove_file(policy);
    }
    assert!(
        ok,
        "apt-get install {} failed: the libvirt test needs them (run `apt-get update` first?)",
        missing.join(" ")
    );
}

/// libvirtd's qemu.conf for the test's own libvirtd: QEMU as root, no relabelling of
/// the kit's shared files, no cgroups or private namespaces (no systemd here).
const QEMU_CONF: &str = "user = \"root\"\ngroup = \"root\"\ndynamic_ownership = 0\n\
remember_owner = 0\nsecurity_driver = \"none\"\nnamespaces = [ ]\ncgroup_controllers = [ ]\n\
stdio_handler = \"file\"\n";

/// A libvirtd of the test's own; ended (with its domains) when dropped.
pub struct Libvirtd {
    child: Child,
    /// The connection URI that reaches it.
    pub uri: String,
    domains: std::cell::RefCell<Vec<String>>,
}

impl Libvirtd {
    /// Installs libvirt if needed and starts a libvirtd whose state is under `dir`.
    pub fn start(dir: &Path) -> Self {
        ensure_libvirt();
        let own = |d: &str| {
            let p = dir.join(d);
            std::fs::create_dir_all(&p).expect("libvirt dir");
            p
        };
        let (etc, lib, cache, run) = (own("etc"), own("lib"), own("cache"), own("run"));
        std::fs::write(etc.join("qemu.conf"), QEMU_CONF).expect("qemu.conf");
        std::fs::write(etc.join("libvirtd.conf"), "unix_sock_group = \"root\"\n")
            .expect("libvirtd.conf");
        let script = format!(
            "set -e; mkdir -p /run/libvirt; mount --bind {} /etc/libvirt; mount --bind {} /var/lib/libvirt; \
             mount --bind {} /var/cache/libvirt; mount --bind {} /run/libvirt; exec libvirtd --pid-file {}",
            etc.display(),
            lib.display(),
            cache.display(),
            run.display(),
            run.join("libvirtd.pid").display()
        );
        let child = Command::new("unshare")
            .args(["-m", "--propagation", "private", "sh", "-c", &script])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("libvirtd.log")).expect("log"))
            .stderr(std::fs::File::create(dir.join("libvirtd.err")).expect("log"))
            .spawn()
            .expect("run libvirtd (util-linux's unshare)");
        let uri = format!(
            "qemu:///system?socket={}",
            run.join("libvirt-sock").display()
        );
        let lv = Self {
            child,
            uri,
            domains: Default::default(),
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        while !lv.virsh(&["version"]).0 {
            assert!(
                Instant::now() < deadline,
                "libvirtd did not answer within 90 s: {}",
                std::fs::read_to_string(dir.join("libvirtd.err")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        lv
    }

    /// `virsh -c URI ARGS`: success and stdout + stderr.
    pub fn virsh(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("virsh")
            .args(["-c", &self.uri])
            .args(args)
            .output()
            .expect("run virsh");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.success(), text)
    }

    /// Defines a domain from `xml` (undefined again when dropped).
    pub fn define(&self, name: &str, xml: &str, dir: &Path) {
        let file = dir.join(format!("{name}.xml"));
        std::fs::write(&file, xml).expect("domain xml");
        let (ok, out) = self.virsh(&["define", &file.to_string_lossy()]);
        assert!(ok, "virsh define {name}: {out}");
        self.domains.borrow_mut().push(name.to_string());
    }

    /// The domain's state (`running`, `shut off`).
    pub fn state(&self, name: &str) -> String {
        self.virsh(&["domstate", name]).1.trim().to_string()
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for d in self.domains.borrow().iter() {
            let _ = self.virsh(&["destroy", d]);
            let _ = self.virsh(&["undefine", d]);
        }
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A kit test guest as a libvirt domain: direct kernel boot in hand mode, 256 MiB,
/// ACPI (hot-plug, power button), its serial console a Unix socket QEMU binds at
/// `serial`, and `devices` (the Vesper `<shmem>`, when the test gives it) and
/// `memory_backing` added.
pub fn domain_xml(name: &str, serial: &Path, devices: &str, memory_backing: &str) -> String {
    let k = kit();
    let kvm = vesper_qemu::choose_accel(vesper_qemu::AccelRequest::Auto)
        .is_ok_and(|c| c.accel == vesper_qemu::Accel::Kvm);
    format!(
        "<domain type='{}'>\n  <name>{name}</name>\n  <memory unit='MiB'>256</memory>\n  <vcpu>1</vcpu>\n  {memory_backing}\n  \
         <features><acpi/></features>\n  <os>\n    <type arch='x86_64' machine='q35'>hvm</type>\n    \
         <kernel>{}</kernel>\n    <initrd>{}</initrd>\n    <cmdline>{HAND_CMDLINE}</cmdline>\n  </os>\n  \
         <on_poweroff>destroy</on_poweroff>\n  <on_reboot>restart</on_reboot>\n  <on_crash>destroy</on_crash>\n  \
         <devices>\n    <emulator>/usr/bin/qemu-system-x86_64</emulator>\n    \
         <serial type='unix'><source mode='bind' path='{}'/><target port='0'/></serial>\n    \
         <panic model='isa'/>\n    <memballoon model='none'/>\n    {devices}\n  </devices>\n</domain>\n",
        if kvm { "kvm" } else { "qemu" },
        k.kernel.display(),
        k.initramfs.display(),
        serial.display()
    )
}
