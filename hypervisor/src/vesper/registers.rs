//! BAR0 of the Vesper device as pure logic: the four 32-bit registers (IntrMask,
//! IntrStatus, IVPosition, Doorbell) seen by one guest peer, and the decoded doorbell a
//! write to the Doorbell register makes. No fd; the glue signals what a doorbell means.

use super::layout::{DOORBELL, INTR_MASK, INTR_STATUS, IV_POSITION};

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

    /// The guest's peer ID (IVPosition).
    pub fn peer_id(&self) -> u16 {
        self.peer_id
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
