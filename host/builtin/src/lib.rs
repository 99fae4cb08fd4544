//! The in-process transport: a guest that runs in `vesper-hypervisor` inside the host
//! process. `Machine` builds, boots and runs the VM; `BuiltinTransport` is the host
//! `Transport` over its Vesper device; `gdb::GdbServer` serves gdb's remote protocol
//! for it.
#![deny(missing_docs)]

mod console;
mod error;
pub mod gdb;
mod machine;
mod transport;

pub use console::ConsoleInput;
pub use error::BuiltinError;
pub use machine::{BootImage, EventSink, Machine, MachineEnd, MachineEvent, MachineSpec};
pub use transport::BuiltinTransport;
pub use vesper_hypervisor::VcpuThreads;
