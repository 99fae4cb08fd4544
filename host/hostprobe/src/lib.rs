//! Host-kernel eBPF probes on VMs' vCPU threads (see README.md).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

mod bpf;
mod error;
pub mod figures;
mod monitor;
pub mod threads;

pub use bpf::{object, unverifiable_object};
pub use error::{shorten_log, HostProbeError};
pub use monitor::{
    monotonic_ns, Config, ExitReason, GuestFigures, HostProbes, OnStall, Stall, VcpuFigures,
    VcpuSource,
};
