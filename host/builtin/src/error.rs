use std::path::PathBuf;

/// What can go wrong building or running a builtin machine.
#[derive(Debug, thiserror::Error)]
pub enum BuiltinError {
    /// The spec cannot describe a VM.
    #[error("bad machine spec: {0}")]
    BadSpec(String),
    /// The shared region could not be created.
    #[error("cannot create the shared region")]
    Region(#[source] vesper_shmem::ShmemError),
    /// The VMM refused or failed.
    #[error("{0}")]
    Vmm(#[from] vesper_hypervisor::HypervisorError),
    /// The console log could not be opened.
    #[error("cannot open the console log {}", .path.display())]
    ConsoleLog {
        /// The log.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The VM's thread could not be started.
    #[error("cannot start the VM thread")]
    Thread(#[source] std::io::Error),
    /// The guest did not take console input in time.
    #[error("the guest did not read its console: {queued} of {len} bytes taken in {ms} ms")]
    ConsoleStalled {
        /// Bytes the guest took.
        queued: usize,
        /// Bytes of the line.
        len: usize,
        /// How long we waited.
        ms: u128,
    },
    /// The gdb endpoint's socket could not be created.
    #[error("cannot listen for gdb on {}: check that its directory exists and is writable", .path.display())]
    GdbSocket {
        /// The socket.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The machine has ended.
    #[error("the VM has ended")]
    Ended,
}
