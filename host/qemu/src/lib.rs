//! QEMU for Vesper: accelerator choice, command line and QMP.
#![deny(missing_docs)]

mod accel;
mod cmdline;
mod devices;
mod image;
mod qmp;
mod ram_layout;
mod registers;

pub use accel::{choose_accel, Accel, AccelChoice, AccelRequest};
pub use cmdline::VmSpec;
pub use devices::{
    check_ifname, qemu_escape, stable_mac, Boot, Disk, DiskFormat, Firmware, Net, PortForward,
    Protocol,
};
pub use image::{inspect_disk, uefi_firmware};
pub use qmp::{parse_event, Qmp, QmpEvent, CAPABILITIES as QMP_CAPABILITIES};
pub use ram_layout::{parse_gpa2hva, parse_mtree, RamSegment};
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
