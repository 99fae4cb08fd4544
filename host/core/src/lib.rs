//! Vesper's host action layer: transports and the per-guest control session.
#![deny(missing_docs)]

mod error;
mod session;

pub use error::{errno_name, errno_symbol, CommandError};
pub use session::{
    Command, GuestInfo, GuestModule, PollOutcome, Reply, Session, SessionConfig, SessionEvent,
    DEFAULT_INIT_TIMEOUT, FRONTEND_VERSIONS, HOST_VERSION,
};

use std::os::fd::BorrowedFd;

use vesper_shmem::SharedRegion;

/// Reads guest RAM frames the guest granted (`GRANT_GUEST_FRAMES`): only a transport
/// that owns guest RAM has one (the built-in VMM). Every read checks the grant again.
pub trait GuestFrames: Send + std::fmt::Debug {
    /// The first `len` bytes of the frames granted by `grant_ref`, if the grant (copied
    /// once from `region`'s table) passes `need` and names guest RAM; else why not.
    fn read(
        &self,
        region: &SharedRegion,
        grant_ref: u32,
        need: vesper_shmem::grant::GrantNeed,
        len: u64,
    ) -> Result<Vec<u8>, String>;
}

/// The communication layer: the only part of Vesper that knows which hypervisor is
/// underneath. One implementation per hypervisor (QEMU ivshmem, the built-in VMM).
pub trait Transport: Send {
    /// The region shared with the guest.
    fn region(&self) -> &SharedRegion;
    /// Interrupts the guest: "responses are waiting".
    fn notify_guest(&self) -> std::io::Result<()>;
    /// An fd that becomes readable when the guest rings the host on `vector`
    /// (`VECTOR_CONTROL`, `VECTOR_RELAY`), if the transport has one (without it the host
    /// polls on a timer).
    fn doorbell_fd(&self, vector: u32) -> Option<BorrowedFd<'_>>;
    /// Clears the doorbell of `vector` after it fired.
    fn ack_doorbell(&self, vector: u32);
    /// Short human description ("qemu ivshmem-doorbell, peer 1").
    fn describe(&self) -> String;
}
