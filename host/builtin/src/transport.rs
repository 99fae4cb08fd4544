//! The host `Transport` over the builtin VMM's Vesper device.

use std::os::fd::{AsRawFd, BorrowedFd};

use vesper_core::{GuestFrames, Transport};
use vesper_hypervisor::{GuestFrameGrants, VesperHandle};
use vesper_shmem::grant::GrantNeed;
use vesper_shmem::SharedRegion;

/// The Vesper device of a builtin machine, seen from the host: the region is mapped in
/// both the host and the guest (BAR2), a guest doorbell is a KVM ioeventfd, the host's
/// interrupt is the device's MSI-X vector 0.
pub struct BuiltinTransport {
    region: SharedRegion,
    device: VesperHandle,
    frames: GuestFrameGrants,
    description: String,
}

impl BuiltinTransport {
    pub(crate) fn new(
        region: SharedRegion,
        device: VesperHandle,
        frames: GuestFrameGrants,
        description: String,
    ) -> Self {
        Self {
            region,
            device,
            frames,
            description,
        }
    }

    /// Reads guest RAM frames the guest granted (for `Session::with_guest_frames`).
    pub fn guest_frames(&self) -> Box<dyn GuestFrames> {
        Box::new(FrameReader(self.frames.clone()))
    }

    /// The device's host-side state (counters, registers).
    pub fn device(&self) -> &VesperHandle {
        &self.device
    }
}

impl Transport for BuiltinTransport {
    fn region(&self) -> &SharedRegion {
        &self.region
    }

    fn notify_guest(&self) -> std::io::Result<()> {
        self.device.notify(0).map_err(std::io::Error::other)
    }

    fn doorbell_fd(&self, vector: u32) -> Option<BorrowedFd<'_>> {
        let fd = self.device.doorbell(u16::try_from(vector).ok()?)?;
        // SAFETY: the eventfd is owned by `self.device`, which lives as long as the
        // borrow of `self` the returned fd is tied to.
        Some(unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) })
    }

    fn ack_doorbell(&self, vector: u32) {
        let Some(fd) = u16::try_from(vector)
            .ok()
            .and_then(|v| self.device.doorbell(v))
        else {
            return;
        };
        // Non-blocking: EAGAIN just means nothing was pending.
        let _ = fd.read();
    }

    fn describe(&self) -> String {
        self.description.clone()
    }
}

/// `GuestFrames` over the VMM's checked guest-memory access.
#[derive(Debug)]
struct FrameReader(GuestFrameGrants);

impl GuestFrames for FrameReader {
    fn read(
        &self,
        region: &SharedRegion,
        grant_ref: u32,
        need: GrantNeed,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        self.0
            .read(region, grant_ref, need, 0, len)
            .map_err(|e| e.to_string())
    }
}
