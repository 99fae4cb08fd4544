//! The ivshmem server: QEMU's `ivshmem-doorbell` device connects to it over a Unix
//! socket and receives the shared-memory fd and the eventfds used for doorbells.
#![deny(missing_docs)]

pub mod protocol;
mod server;
mod transport;

pub use server::{GuestPeer, IvshmemServer, HOST_PEER};
pub use transport::{IvshmemTransport, VECTORS};

/// MSI-X vectors the Vesper device uses.
pub fn transport_vectors() -> usize {
    VECTORS
}

use thiserror::Error;

/// Errors of the ivshmem server.
#[derive(Debug, Error)]
pub enum IvshmemError {
    /// The listening socket could not be created.
    #[error("cannot listen on {path}")]
    Listen {
        /// Socket path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Accepting a client failed.
    #[error("cannot accept an ivshmem client")]
    Accept(#[source] std::io::Error),
    /// Creating an eventfd failed.
    #[error("cannot create an eventfd")]
    EventFd(#[source] nix::Error),
    /// Sending a protocol message failed (the client went away).
    #[error("cannot send ivshmem message {value} to the client")]
    Send {
        /// The message value.
        value: i64,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// Signalling an eventfd failed.
    #[error("cannot signal vector {vector}")]
    Signal {
        /// Vector number.
        vector: usize,
        /// Cause.
        #[source]
        source: nix::Error,
    },
    /// No guest peer is connected.
    #[error("no guest is connected to the ivshmem server")]
    NoGuest,
    /// The shared region could not be created.
    #[error("cannot create the shared region")]
    Region(#[source] vesper_shmem::ShmemError),
    /// Vector out of range.
    #[error("vector {vector} out of range (device has {vectors})")]
    NoSuchVector {
        /// Vector asked for.
        vector: usize,
        /// Vectors configured.
        vectors: usize,
    },
}
