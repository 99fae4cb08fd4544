//! QEMU for Vesper: accelerator choice, command line and QMP.
#![deny(missing_docs)]

mod accel;
mod qmp;
mod registers;

pub use accel::{choose_accel, Accel, AccelChoice, AccelRequest};
pub use qmp::{parse_event, Qmp, QmpEvent, CAPABILITIES as QMP_CAPABILITIES};
pub use registers::{parse_info_registers, CpuRegisters};

use std::path::PathBuf;

use thiserror::Error;

/// Errors of this crate.
#[derive(Debug, Error)]
pub enum QemuError {
    /// KVM was requested but cannot be used.
    #[error("KVM requested but unusable: {0}; use --accel tcg or auto")]
    KvmUnusable(String),
    /// Unknown accelerator name.
    #[error("unknown accelerator {0:?}; expected auto, kvm or tcg")]
    BadAccel(String),
    /// QMP socket I/O failed.
    #[error("QMP on {path}: {source}")]
    QmpIo {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// QMP said something unexpected.
    #[error("QMP protocol error: {0}")]
    QmpProtocol(String),
    /// QEMU's register dump (`info registers`) does not parse.
    #[error("vCPU registers from QEMU{}: {why}", cpu.map(|c| format!(", CPU {c}")).unwrap_or_default())]
    BadRegisters {
        /// The CPU whose block is bad, if known.
        cpu: Option<u32>,
        /// What is wrong.
        why: String,
    },
    /// A QMP command failed.
    #[error("QMP command {command} failed: {class}: {desc}")]
    QmpCommand {
        /// Command name.
        command: String,
        /// Error class.
        class: String,
        /// Description.
        desc: String,
    },
}

/// Everything needed to start one test VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// VM name (QEMU `-name`).
    pub name: String,
    /// Kernel image.
    pub kernel: PathBuf,
    /// Initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
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

/// The id of the guest-RAM backend object on QEMU's command line.
pub const RAM_BACKEND_ID: &str = "vesper-ram";
/// The name the kernel shows for QEMU's guest-RAM memfd (`/proc/PID/fd` links read
/// `/memfd:memory-backend-memfd (deleted)`).
pub const RAM_MEMFD_NAME: &str = "memory-backend-memfd";

/// The `/proc/PID/fd` entry of process `pid`'s memfd named `name` (its link reads
/// `/memfd:NAME (deleted)`): how the host reaches memory QEMU holds, e.g. guest RAM
/// ([`RAM_MEMFD_NAME`]) or a Vesper region.
pub fn memfd_of(pid: u32, name: &str) -> std::io::Result<Option<PathBuf>> {
    let want = format!("/memfd:{name}");
    for fd in std::fs::read_dir(format!("/proc/{pid}/fd"))?.flatten() {
        let target = std::fs::read_link(fd.path()).unwrap_or_default();
        if target.to_string_lossy().starts_with(&want) {
            return Ok(Some(fd.path()));
        }
    }
    Ok(None)
}

impl VmSpec {
    /// QEMU arguments (without the program name).
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("{},debug-threads=on", self.name),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-machine".into(),
            format!("q35,memory-backend={RAM_BACKEND_ID}"),
            // Guest RAM in a shared memfd, so the host can read the guest's memory
            // (`vesper debug`) while it runs, hangs or after it died.
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
            "-kernel".into(),
            self.kernel.display().to_string(),
            "-initrd".into(),
            self.initrd.display().to_string(),
            "-append".into(),
            self.cmdline.clone(),
            "-chardev".into(),
            // QEMU waits for vesperd, which logs the console itself (QEMU's logfile
            // doubles a byte each time its UART retries a write to a busy client).
            format!(
                "socket,id=serial0,path={},server=on,wait=on",
                self.serial_socket.display()
            ),
            "-serial".into(),
            "chardev:serial0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", self.qmp_socket.display()),
            "-qmp".into(),
            format!(
                "unix:{},server=on,wait=off",
                self.qmp_events_socket.display()
            ),
            "-chardev".into(),
            format!(
                "socket,path={},id=vesper-ivshmem",
                self.ivshmem_socket.display()
            ),
            "-device".into(),
            format!(
                "ivshmem-doorbell,chardev=vesper-ivshmem,vectors={}",
                self.ivshmem_vectors
            ),
        ]);
        a.extend([
            "-gdb".into(),
            format!("unix:{},server=on,wait=off", self.gdb_socket.display()),
        ]);
        if !self.allow_reboot {
            a.push("-no-reboot".into());
        }
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

    fn spec(accel: Accel) -> VmSpec {
        VmSpec {
            name: "vm1".into(),
            kernel: "/k".into(),
            initrd: "/i".into(),
            cmdline: "console=ttyS0".into(),
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
}
