use std::os::fd::{AsFd, BorrowedFd};
use std::path::Path;

use vesper_core::Transport;
use vesper_shmem::SharedRegion;

use crate::{GuestPeer, IvshmemError, IvshmemServer};

/// Vectors of the device: `VECTOR_CONTROL` (0) for control requests and responses,
/// `VECTOR_RELAY` (1) for relay index updates.
pub const VECTORS: usize = 2;

/// The QEMU transport: a shared region served to QEMU's `ivshmem-doorbell` device.
#[derive(Debug)]
pub struct IvshmemTransport {
    region: SharedRegion,
    server: IvshmemServer,
    peer: Option<GuestPeer>,
}

impl IvshmemTransport {
    /// Creates the region (`size` bytes, memfd named after `name`) and listens on
    /// `socket` for QEMU.
    pub fn new(name: &str, socket: &Path, size: u64) -> Result<Self, IvshmemError> {
        let region =
            SharedRegion::create(&format!("vesper-{name}"), size).map_err(IvshmemError::Region)?;
        let server = IvshmemServer::bind(socket, VECTORS)?;
        Ok(Self {
            region,
            server,
            peer: None,
        })
    }

    /// The listening socket, readable when QEMU connects.
    pub fn listener_fd(&self) -> BorrowedFd<'_> {
        self.server.listener().as_fd()
    }

    /// Accepts a connecting QEMU, if one is waiting. A new connection replaces the old
    /// peer (QEMU restarted).
    pub fn accept(&mut self) -> Result<bool, IvshmemError> {
        match self.server.accept(self.region.fd())? {
            Some(peer) => {
                tracing::info!(peer = peer.id, "QEMU connected to the ivshmem server");
                self.peer = Some(peer);
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// True once a QEMU is connected.
    pub fn connected(&self) -> bool {
        self.peer.is_some()
    }
}

impl Transport for IvshmemTransport {
    fn region(&self) -> &SharedRegion {
        &self.region
    }

    fn notify_guest(&self) -> std::io::Result<()> {
        let peer = self
            .peer
            .as_ref()
            .ok_or_else(|| std::io::Error::other(IvshmemError::NoGuest))?;
        peer.notify(0).map_err(std::io::Error::other)
    }

    fn doorbell_fd(&self, vector: u32) -> Option<BorrowedFd<'_>> {
        self.server.host_vector(vector as usize)
    }

    fn ack_doorbell(&self, vector: u32) {
        self.server.take_doorbell(vector as usize);
    }

    fn describe(&self) -> String {
        match &self.peer {
            Some(p) => format!("qemu ivshmem-doorbell, guest peer {}", p.id),
            None => "qemu ivshmem-doorbell, no guest connected".into(),
        }
    }
}
