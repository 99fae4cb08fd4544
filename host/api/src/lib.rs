//! The `vesperd` API: requests, replies, error codes and a blocking client.
#![deny(missing_docs)]

mod client;
pub mod debug;
mod error;
mod reply;
mod request;
pub mod run_dir;

pub use client::*;
pub use error::*;
pub use reply::*;
pub use request::*;

pub use vesper_core::{GuestInfo, GuestModule, DEFAULT_INIT_TIMEOUT};
pub use vesper_debug::expr::Evaluated;
pub use vesper_debug::kallsyms::Symbol;
pub use vesper_debug::printk::{format_dmesg, LogRecord};
pub use vesper_debug::tasks::Task;
pub use vesper_debug::unwind::{Backtrace, Frame, TraceEnd};
pub use vesper_debug::vmcore::DumpSummary;
pub use vesper_events::{Event, EventKind, Filter, Source};
pub use vesper_qemu::{AccelChoice, AccelRequest, Disk, Net, QemuError as QemuAccelError};
pub use vesper_relay::layout::FieldValue;
pub use vesper_relay::{BufferStats, Decoded};
pub use vesper_vmdef::{self as vmdef, BootDefinition, FirmwareKind, VmDefinition, Vmm};
