//! Vesper's embedded KVM VMM, first layer: guest RAM, vCPU threads, a checked I/O bus,
//! an 8250 console, clean stops with a deadline, and unexpected exits reported with the
//! vCPU's registers.
//!
//! Lock order (outer first): a bus device's mutex (e.g. the PCI ports) → the PCI root
//! (`pci::PciRoot`; the MMIO bus's fallback takes it for BAR accesses) → one PCI
//! function's state (Vesper's BAR0 registers or its MSI-X state, never both) → the run
//! control (`power::RunControl`). The buses' ranges are immutable during a run and
//! unlocked; BARs move inside the PCI root, under its lock.
//! The frame-grant log budget (`grants`) and the debug park state (`debug`) are leaves:
//! nothing is taken while one is held.
//! Nothing a guest does panics the host: unmapped accesses are counted, the run has a
//! deadline, unknown exits become `HypervisorError::UnexpectedExit`.
#![deny(missing_docs)]

pub mod boot;
pub mod bus;
pub mod debug;
mod error;
pub mod grants;
mod kick;
mod kvm_backing;
pub mod msix;
pub mod pci;
pub mod power;
pub mod pvpanic;
mod registers;
pub mod serial;
pub mod vcpu;
mod vcpu_state;
pub mod vesper;
mod vm;

pub use boot::layout::PAGE_SIZE;
pub use boot::{BootInfo, LinuxBoot};
pub use bus::{Bus, BusDevice, BusRange, SharedDevice};
pub use debug::{DebugHandle, DebugStop, GuestDebug, GuestDebugSupport, ResumeAction, StopCause};
pub use error::{HypervisorError, Result};
pub use grants::{FrameGrantStats, GuestFrameGrants};
pub use kvm_backing::KvmBacking;
pub use power::{StopHandle, StopRequest, DEBUG_EXIT_PORT, RESET_PORT};
pub use serial::{Serial, SharedBuffer, COM1_PORT};
pub use vcpu::UnmappedAccesses;
pub use vcpu_state::{ExitKind, Segment, VcpuSnapshot};
pub use vesper::{InterruptStats, VesperConfig, VesperHandle};
pub use vm::{RealModeEntry, RunReport, Stop, VcpuThreads, Vm, VmConfig, STOP_GRACE};
