//! The one place a VM becomes a QEMU command line: the machine, the devices that wire
//! it to vesperd (ivshmem, serial, QMP, gdbstub, pvpanic), then the user's boot, disks,
//! networks and extra options.

use std::path::PathBuf;

use crate::devices::{stable_mac, Boot, Disk, Net};
use crate::{Accel, RAM_BACKEND_ID};

/// Everything needed to start one VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// VM name (QEMU `-name`).
    pub name: String,
    /// How it boots.
    pub boot: Boot,
    /// Virtio disks, the first one booted by the firmware.
    pub disks: Vec<Disk>,
    /// Virtio NICs.
    pub nets: Vec<Net>,
    /// The user's further QEMU options, added last, verbatim.
    pub extra_args: Vec<String>,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator.
    pub accel: Accel,
    /// ivshmem server socket.
    pub ivshmem_socket: PathBuf,
    /// MSI-X vectors of the ivshmem-doorbell device.
    pub ivshmem_vectors: u32,
    /// Serial console socket: QEMU listens and waits for one client before it starts
    /// the guest; that client (vesperd) logs the output and types the input.
    pub serial_socket: PathBuf,
    /// QMP socket to create (commands).
    pub qmp_socket: PathBuf,
    /// A second QMP socket, for a client that only listens to events.
    pub qmp_events_socket: PathBuf,
    /// QEMU's gdbstub (the gdb remote protocol), for `vesper debug gdb`.
    pub gdb_socket: PathBuf,
    /// Add a pvpanic-pci device (QMP `GUEST_PANICKED` on guest panic).
    pub pvpanic: bool,
    /// Pause the guest when it panics (so the host can dump it) instead of letting it
    /// run on through its panic path.
    pub pause_on_panic: bool,
    /// Let a guest reboot restart it in place; otherwise QEMU exits (`-no-reboot`).
    pub allow_reboot: bool,
}

fn sock(path: &std::path::Path) -> String {
    crate::qemu_escape(&path.display().to_string())
}

impl VmSpec {
    /// QEMU arguments (without the program name).
    pub fn args(&self) -> Vec<String> {
        let mut a = self.machine_args();
        a.extend(self.vesper_devices());
        a.extend(self.boot.args());
        let firmware_boots = matches!(self.boot, Boot::Firmware(_));
        for (i, d) in self.disks.iter().enumerate() {
            a.extend(d.args(i, firmware_boots));
        }
        for (i, n) in self.nets.iter().enumerate() {
            a.extend(n.args(i, &stable_mac(&self.name, i)));
        }
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// The machine: q35 with its RAM in a shared memfd, so the host can read the
    /// guest's memory (`vesper debug`) while it runs, hangs or after it died.
    fn machine_args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("{},debug-threads=on", crate::qemu_escape(&self.name)),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-machine".into(),
            format!("q35,memory-backend={RAM_BACKEND_ID}"),
            "-object".into(),
            format!(
                "memory-backend-memfd,id={RAM_BACKEND_ID},size={}M,share=on",
                self.memory_mib
            ),
        ];
        match self.accel {
            Accel::Kvm => a.extend(["-accel".into(), "kvm".into(), "-cpu".into(), "host".into()]),
            Accel::Tcg => a.extend(["-accel".into(), "tcg".into(), "-cpu".into(), "max".into()]),
        }
        a.extend([
            "-m".into(),
            self.memory_mib.to_string(),
            "-smp".into(),
            self.cpus.to_string(),
        ]);
        if !self.allow_reboot {
            a.push("-no-reboot".into());
        }
        a
    }

    /// What wires the guest to vesperd: console, QMP, ivshmem, gdbstub, pvpanic.
    fn vesper_devices(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-chardev".into(),
            // QEMU waits for vesperd, which logs the console itself (QEMU's logfile
            // doubles a byte each time its UART retries a write to a busy client).
            format!(
                "socket,id=serial0,path={},server=on,wait=on",
                sock(&self.serial_socket)
            ),
            "-serial".into(),
            "chardev:serial0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", sock(&self.qmp_socket)),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", sock(&self.qmp_events_socket)),
            "-chardev".into(),
            format!(
                "socket,path={},id=vesper-ivshmem",
                sock(&self.ivshmem_socket)
            ),
            "-device".into(),
            format!(
                "ivshmem-doorbell,chardev=vesper-ivshmem,vectors={}",
                self.ivshmem_vectors
            ),
            "-gdb".into(),
            format!("unix:{},server=on,wait=off", sock(&self.gdb_socket)),
        ];
        if self.pvpanic {
            // QEMU reports the panic (QMP GUEST_PANICKED) and lets the guest finish its
            // panic path — the probes' own panic records among it — instead of powering
            // it off on the spot: what happens next is the failover engine's call.
            let action = if self.pause_on_panic { "pause" } else { "none" };
            a.extend([
                "-device".into(),
                "pvpanic-pci".into(),
                "-action".into(),
                format!("panic={action}"),
            ]);
        }
        a
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{DiskFormat, Firmware};

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            name: "vm1".into(),
            boot: Boot::Direct {
                kernel: "/k".into(),
                initrd: Some("/i".into()),
                cmdline: "console=ttyS0".into(),
            },
            disks: vec![],
            nets: vec![],
            extra_args: vec![],
            memory_mib: 512,
            cpus: 1,
            accel,
            ivshmem_socket: "/run/s.sock".into(),
            ivshmem_vectors: 2,
            serial_socket: "/run/console.sock".into(),
            qmp_socket: "/run/qmp.sock".into(),
            qmp_events_socket: "/run/qmp-events.sock".into(),
            gdb_socket: "/run/gdb.sock".into(),
            pause_on_panic: false,
            pvpanic: true,
            allow_reboot: false,
        }
    }

    #[test]
    fn the_command_line_wires_ivshmem_serial_and_qmp() {
        let a = spec(Accel::Tcg).args().join(" ");
        assert!(a.contains("-accel tcg"));
        assert!(a.contains("-kernel /k -initrd /i -append console=ttyS0"));
        assert!(a.contains("-chardev socket,path=/run/s.sock,id=vesper-ivshmem"));
        assert!(a.contains("-device ivshmem-doorbell,chardev=vesper-ivshmem,vectors=2"));
        assert!(a.contains("socket,id=serial0,path=/run/console.sock,server=on,wait=on"));
        assert!(a.contains("-serial chardev:serial0"));
        assert!(a.contains("-qmp unix:/run/qmp.sock,server=on,wait=off"));
        assert!(a.contains("-device pvpanic-pci -action panic=none"));
        assert!(spec(Accel::Kvm)
            .args()
            .join(" ")
            .contains("-accel kvm -cpu host"));
    }

    #[test]
    fn a_disk_guest_boots_its_firmware_with_its_disks_nets_and_extra_options_last() {
        let mut s = spec(Accel::Tcg);
        s.boot = Boot::Firmware(Firmware::Uefi {
            code: "/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            vars: "/run/vm1/OVMF_VARS.fd".into(),
        });
        s.disks = vec![Disk {
            path: "/img/web.qcow2".into(),
            format: Some(DiskFormat::Qcow2),
            snapshot: true,
            readonly: false,
        }];
        s.nets = vec!["user,hostfwd=tcp::2222-:22".parse().unwrap()];
        s.extra_args = vec!["-device".into(), "virtio-rng-pci".into()];
        let a = s.args();
        let joined = a.join(" ");
        assert!(!joined.contains("-kernel"));
        assert!(joined.contains(
            "if=pflash,format=raw,unit=0,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd"
        ));
        assert!(joined.contains("if=pflash,format=raw,unit=1,file=/run/vm1/OVMF_VARS.fd"));
        assert!(joined.contains("file=/img/web.qcow2,format=qcow2,cache=writeback,snapshot=on"));
        assert!(joined.contains("-netdev user,id=net0,hostfwd=tcp::2222-:22"));
        assert!(joined.contains(&format!(
            "virtio-net-pci,netdev=net0,mac={}",
            stable_mac("vm1", 0)
        )));
        assert_eq!(a[a.len() - 2..], ["-device", "virtio-rng-pci"]);
    }
}
