//! What vesperd keeps for `vesper debug` between requests — guest kernels opened from
//! their RAM, gdb relays and builtin gdb servers running, vmcores being written — as
//! plain data held by the daemon; the debug handlers (debug.rs, builtin_gdb.rs) work
//! on it. Kept apart so the daemon's state names no handler.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use vesper_builtin::gdb::GdbServer;
use vesper_debug::Kernel;
use vesper_hypervisor::DebugHandle;

/// Kernels opened so far and the gdb endpoints serving them.
#[derive(Default)]
pub(crate) struct Kernels {
    /// Per guest, with the QEMU pid it was found in (a new VM process is a new kernel).
    pub(crate) opened: Mutex<HashMap<String, (u32, Arc<Kernel>)>>,
    /// The gdb relays to QEMU's gdbstub running, per guest and QEMU pid.
    pub(crate) gdb_relays: Mutex<HashSet<(String, u32)>>,
    /// Builtin VMs' gdb endpoints.
    pub(crate) builtin_gdb: Endpoints,
}

/// Builtin VMs' gdb endpoints, by guest name. A VM's entry stays after it ended (its
/// handle then holds no guest RAM) until a VM of that name starts again.
#[derive(Default)]
pub(crate) struct Endpoints(pub(crate) Mutex<HashMap<String, Endpoint>>);

/// One builtin VM's gdb endpoint.
pub(crate) struct Endpoint {
    /// The VMM's debugger handle.
    pub(crate) debug: DebugHandle,
    /// What gdb loads symbols from: the booted image when it is an ELF.
    pub(crate) symbols: Option<PathBuf>,
    /// The server, once a client asked for it.
    pub(crate) server: Option<GdbServer>,
}

/// vmcores of panicked guests being written, per guest: the failover engine waits
/// for a guest's dump before it touches the VM.
#[derive(Default)]
pub(crate) struct PanicDumps(pub(crate) Mutex<HashMap<String, tokio::sync::watch::Receiver<bool>>>);
