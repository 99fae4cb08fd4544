//! The Vesper device: an `ivshmem-doorbell` PCI function (1af4:1110 rev 1). BAR0 holds
//! four 32-bit registers (IntrMask 0, IntrStatus 4, IVPosition 8, Doorbell 12); BAR2 is
//! the shared region, mapped into the guest as its own KVM memslot.
//!
//! `Registers` is the BAR0 logic with no fd. The glue (`Bar0`, `Vm::add_vesper_device`)
//! registers one KVM ioeventfd per doorbell vector of the host peer, so a guest doorbell
//! `(HOST_PEER << 16) | vector` (a dword write) is signalled by the kernel without the
//! vCPU thread. Doorbell writes that do reach the VMM (other widths, no ioeventfd) are
//! decoded by `Registers` and signal the same eventfd; doorbells to other peers are
//! counted and dropped.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::pci::{ConfigSpace, MemoryBar, PciId};

/// Vendor ID (Red Hat / virtio).
pub const VENDOR_ID: u16 = 0x1af4;
/// Device ID (ivshmem).
pub const DEVICE_ID: u16 = 0x1110;
/// Revision of the doorbell variant.
pub const REVISION: u8 = 1;
/// Class code: memory controller, other (as QEMU's ivshmem reports).
pub const CLASS: u32 = 0x05_00_00;
/// Bytes in BAR0.
pub const BAR0_SIZE: u64 = 256;
/// IntrMask register offset.
pub const INTR_MASK: u64 = 0;
/// IntrStatus register offset.
pub const INTR_STATUS: u64 = 4;
/// IVPosition register offset.
pub const IV_POSITION: u64 = 8;
/// Doorbell register offset.
pub const DOORBELL: u64 = 12;
/// The host daemon's peer ID.
pub const HOST_PEER: u16 = 0;
/// Doorbell vectors the host peer listens on.
pub const HOST_VECTORS: u16 = 2;

/// A decoded doorbell write: notify `peer` on `vector`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Doorbell {
    /// Destination peer.
    pub peer: u16,
    /// Vector at that peer.
    pub vector: u16,
}

impl Doorbell {
    /// Decodes the value written to the Doorbell register.
    pub fn decode(value: u32) -> Self {
        Self {
            peer: (value >> 16) as u16,
            vector: value as u16,
        }
    }

    /// The register value for this doorbell.
    pub fn encode(self) -> u32 {
        (u32::from(self.peer) << 16) | u32::from(self.vector)
    }
}

/// BAR0's register state, without any fd.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Registers {
    peer_id: u16,
    intr_mask: u32,
    intr_status: u32,
}

impl Registers {
    /// Registers of the device seen by guest peer `peer_id`.
    pub fn new(peer_id: u16) -> Self {
        Self {
            peer_id,
            ..Default::default()
        }
    }

    /// IntrStatus (what a guest read would see, without clearing it).
    pub fn intr_status(&self) -> u32 {
        self.intr_status
    }

    /// IntrMask.
    pub fn intr_mask(&self) -> u32 {
        self.intr_mask
    }

    /// A guest read. Only aligned dword accesses are decoded; others read zero. Reading
    /// IntrStatus clears it (as in QEMU's ivshmem).
    pub fn read(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let value = match offset {
            INTR_MASK => self.intr_mask,
            INTR_STATUS => std::mem::take(&mut self.intr_status),
            IV_POSITION => u32::from(self.peer_id),
            _ => 0, // Doorbell is write-only; the rest of BAR0 is reserved
        };
        data.copy_from_slice(&value.to_le_bytes());
    }

    /// A guest write; returns the doorbell it rings, if any. Only aligned dword accesses
    /// are decoded; others are ignored.
    pub fn write(&mut self, offset: u64, data: &[u8]) -> Option<Doorbell> {
        let &[a, b, c, d] = data else {
            return None;
        };
        let value = u32::from_le_bytes([a, b, c, d]);
        match offset {
            INTR_MASK => self.intr_mask = value,
            INTR_STATUS => self.intr_status = value,
            DOORBELL => return Some(Doorbell::decode(value)),
            _ => {}
        }
        None
    }
}

/// The device's config space: BAR0 registers at `bar0`, BAR2 (64-bit, prefetchable) the
/// shared region of `region_size` bytes at `bar2`. `None` if a BAR is invalid.
pub fn config_space(bar0: u64, bar2: u64, region_size: u64) -> Option<ConfigSpace> {
    ConfigSpace::new(PciId {
        vendor: VENDOR_ID,
        device: DEVICE_ID,
        revision: REVISION,
        class: CLASS,
        subsystem_vendor: VENDOR_ID,
        subsystem: 0x1100,
    })
    .with_bar(
        0,
        MemoryBar {
            addr: bar0,
            size: BAR0_SIZE,
            is_64bit: false,
            prefetchable: false,
        },
    )?
    .with_bar(
        2,
        MemoryBar {
            addr: bar2,
            size: region_size,
            is_64bit: true,
            prefetchable: true,
        },
    )
}

/// Where to put the device and what to map.
#[derive(Debug)]
pub struct VesperConfig<'a> {
    /// The guest's peer ID (IVPosition).
    pub peer_id: u16,
    /// BAR0's guest physical address (256-byte aligned, below 4 GiB, outside RAM).
    pub bar0: u64,
    /// BAR2's guest physical address (aligned to the region size, outside RAM).
    pub bar2: u64,
    /// The shared region's file (e.g. `SharedRegion::fd()`); it is mapped shared.
    pub region: BorrowedFd<'a>,
    /// The region's size: a power of two, at least one page.
    pub region_size: u64,
}

/// BAR0 on the MMIO bus.
pub(crate) struct Bar0 {
    pub(crate) registers: Registers,
    pub(crate) host_vectors: Vec<EventFd>,
    pub(crate) dropped: u64,
    pub(crate) in_vmm: u64,
}

impl BusDevice for Bar0 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        self.registers.read(offset, data);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let Some(bell) = self.registers.write(offset, data) else {
            return;
        };
        self.in_vmm += 1;
        let target = (bell.peer == HOST_PEER)
            .then(|| self.host_vectors.get(usize::from(bell.vector)))
            .flatten();
        match target {
            Some(fd) => {
                if let Err(e) = fd.write(1) {
                    tracing::warn!(%e, "cannot signal a doorbell eventfd");
                }
            }
            None => {
                self.dropped += 1;
                if self.dropped <= 16 {
                    tracing::warn!(?bell, "doorbell to an unknown peer or vector dropped");
                }
            }
        }
    }
}

/// What the host keeps of a Vesper device: the doorbell eventfds and BAR0's state.
pub struct VesperHandle {
    pub(crate) bar0: std::sync::Arc<std::sync::Mutex<Bar0>>,
    pub(crate) doorbells: Vec<EventFd>,
}

impl VesperHandle {
    /// The eventfd the guest's doorbell `(HOST_PEER << 16) | vector` signals.
    pub fn doorbell(&self, vector: u16) -> Option<&EventFd> {
        self.doorbells.get(usize::from(vector))
    }

    /// Waits up to `timeout` for doorbell `vector`; returns how many rings were counted
    /// (0 if none came in time, or no such vector).
    pub fn wait_doorbell(&self, vector: u16, timeout: Duration) -> std::io::Result<u64> {
        let Some(fd) = self.doorbell(vector) else {
            return Ok(0);
        };
        let mut pfd = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
        // SAFETY: `pfd` is one valid pollfd for an eventfd this handle owns, and the count
        // passed is 1.
        let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if rc == 0 {
            return Ok(0);
        }
        match fd.read() {
            Ok(n) => Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(0),
            Err(e) => Err(e),
        }
    }

    /// Doorbells that reached the VMM for an unknown peer or vector.
    pub fn dropped_doorbells(&self) -> u64 {
        self.lock().dropped
    }

    /// Doorbell writes that exited to the VMM (not taken by an ioeventfd in the kernel).
    pub fn doorbells_in_vmm(&self) -> u64 {
        self.lock().in_vmm
    }

    /// BAR0's registers now.
    pub fn registers(&self) -> Registers {
        self.lock().registers.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Bar0> {
        self.bar0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(r: &mut Registers, offset: u64) -> u32 {
        let mut b = [0; 4];
        r.read(offset, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn registers_ivposition_mask_status_and_doorbell() {
        let mut r = Registers::new(1);
        assert_eq!(read(&mut r, IV_POSITION), 1);
        assert_eq!(r.write(INTR_MASK, &0xffu32.to_le_bytes()), None);
        assert_eq!(read(&mut r, INTR_MASK), 0xff);
        r.write(INTR_STATUS, &3u32.to_le_bytes());
        assert_eq!(r.intr_status(), 3);
        assert_eq!(read(&mut r, INTR_STATUS), 3);
        assert_eq!(read(&mut r, INTR_STATUS), 0, "a read clears IntrStatus");
        assert_eq!(
            r.write(DOORBELL, &0x0003_0001u32.to_le_bytes()),
            Some(Doorbell { peer: 3, vector: 1 })
        );
        assert_eq!(read(&mut r, DOORBELL), 0, "write-only");
        assert_eq!(read(&mut r, 0x80), 0);
        // IVPosition is read-only; narrow accesses are not decoded.
        r.write(IV_POSITION, &7u32.to_le_bytes());
        assert_eq!(read(&mut r, IV_POSITION), 1);
        assert_eq!(r.write(DOORBELL, &[1, 0]), None);
        let mut w = [0xaa; 2];
        r.read(IV_POSITION, &mut w);
        assert_eq!(w, [0, 0]);
        assert_eq!(Doorbell { peer: 0, vector: 1 }.encode(), 1);
        assert_eq!(Doorbell::decode(0xffff_0002).peer, 0xffff);
    }

    #[test]
    fn bar0_glue_signals_host_vectors_and_drops_the_rest() {
        let fds: Vec<EventFd> = (0..HOST_VECTORS)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let mut bar0 = Bar0 {
            registers: Registers::new(1),
            host_vectors: fds.iter().map(|f| f.try_clone().unwrap()).collect(),
            dropped: 0,
            in_vmm: 0,
        };
        bar0.write(DOORBELL, &1u32.to_le_bytes());
        bar0.write(DOORBELL, &1u32.to_le_bytes());
        assert_eq!(fds[1].read().unwrap(), 2);
        assert!(fds[0].read().is_err(), "vector 0 not rung");
        bar0.write(DOORBELL, &0x0001_0000u32.to_le_bytes()); // peer 1
        bar0.write(DOORBELL, &(u32::from(HOST_VECTORS)).to_le_bytes()); // no such vector
        assert_eq!(bar0.dropped, 2);
        assert_eq!(bar0.in_vmm, 4);
    }

    #[test]
    fn config_space_refuses_a_bad_region() {
        assert!(config_space(0x1000_0000, 0x2000_0000, 3 << 20).is_none());
        assert!(config_space(0x1000_0080, 0x2000_0000, 1 << 20).is_none());
        let c = config_space(0x1000_0000, 1 << 32, 2 << 20).unwrap();
        assert_eq!(c.bar(2).unwrap().size, 2 << 20);
    }
}
