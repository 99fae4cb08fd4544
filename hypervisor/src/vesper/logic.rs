//! The Vesper PCI function as pure logic: its config space (identity, BARs, the MSI-X
//! capability) and `VesperLogic`, BAR0's registers and BAR1's MSI-X table as one
//! `PciDevice` with no fd, for tests and fuzzing.

use super::layout::{
    BAR0_SIZE, BAR1_SIZE, CLASS, DEVICE_ID, MSIX_BAR, MSIX_LAYOUT, MSIX_VECTORS, REVISION,
    VENDOR_ID,
};
use super::registers::Registers;
use crate::msix::{self, MsiMessage, Msix, Notify};
use crate::pci::{ConfigSpace, MemoryBar, PciDevice, PciId, COMMAND_MEMORY};

/// Where the device's BARs start out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarAddresses {
    /// BAR0 (registers).
    pub bar0: u64,
    /// BAR1 (MSI-X table and PBA).
    pub bar1: u64,
    /// BAR2 (the region).
    pub bar2: u64,
}

/// The device's config space: BAR0 (32-bit, 256 bytes), BAR1 (32-bit, 4 KiB, MSI-X),
/// BAR2 (64-bit prefetchable, the region's size) at `bars`, the MSI-X capability, and
/// memory decoding on (the VMM placed the BARs, as firmware would). Returns the space and
/// the capability's offset; `None` if a BAR is invalid.
pub fn config_space(bars: BarAddresses, region_size: u64) -> Option<(ConfigSpace, usize)> {
    let bar = |addr, size, is_64bit| MemoryBar {
        addr,
        size,
        is_64bit,
        prefetchable: is_64bit,
    };
    let (body, writable) = Msix::new(MSIX_VECTORS, MSIX_LAYOUT).capability(MSIX_BAR);
    let (mut space, cap) = ConfigSpace::new(PciId {
        vendor: VENDOR_ID,
        device: DEVICE_ID,
        revision: REVISION,
        class: CLASS,
        subsystem_vendor: VENDOR_ID,
        subsystem: 0x1100,
    })
    .with_bar(0, bar(bars.bar0, BAR0_SIZE, false))?
    .with_bar(1, bar(bars.bar1, BAR1_SIZE, false))?
    .with_bar(2, bar(bars.bar2, region_size, true))?
    .with_capability(msix::CAPABILITY_ID, &body, &writable)?;
    space.set_command(COMMAND_MEMORY);
    Some((space, cap))
}

/// The MSI-X message control word of `config` (capability at `cap`).
pub(super) fn message_control(config: &ConfigSpace, cap: usize) -> u16 {
    config.read_u16(cap + 2)
}

/// BAR0's registers and BAR1's MSI-X state as one `PciDevice`, with no fd: what the glue
/// does minus KVM (doorbells and messages are only counted). For tests and fuzzing.
#[derive(Clone, Debug)]
pub struct VesperLogic {
    /// BAR0.
    pub registers: Registers,
    /// BAR1 and the capability's bits.
    pub msix: Msix,
    /// Offset of the MSI-X capability.
    pub msix_cap: usize,
    /// Doorbells rung by the guest.
    pub doorbells: u64,
    /// Messages the device would have sent.
    pub messages: Vec<(u16, MsiMessage)>,
}

impl VesperLogic {
    /// The logic of a device seen by guest peer `peer_id`, capability at `msix_cap`.
    pub fn new(peer_id: u16, msix_cap: usize) -> Self {
        Self {
            registers: Registers::new(peer_id),
            msix: Msix::new(MSIX_VECTORS, MSIX_LAYOUT),
            msix_cap,
            doorbells: 0,
            messages: Vec::new(),
        }
    }

    /// The host notifies `vector`.
    pub fn notify(&mut self, vector: u16) -> Notify {
        let n = self.msix.notify(vector);
        if let Notify::Deliver(m) = n {
            self.messages.push((vector, m));
        }
        n
    }

    fn release(&mut self) {
        let out = self.msix.take_deliverable();
        self.messages.extend(out);
        // Bounded whatever the guest does.
        if self.messages.len() > 1024 {
            self.messages.drain(..512);
        }
    }
}

impl PciDevice for VesperLogic {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            0 => self.registers.read(offset, data),
            1 => self.msix.read(offset, data),
            _ => data.fill(0xff),
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            0 if self.registers.write(offset, data).is_some() => self.doorbells += 1,
            1 => {
                self.msix.write(offset, data);
                self.release();
            }
            _ => {}
        }
    }

    fn config_written(&mut self, config: &ConfigSpace) {
        self.msix
            .set_control(message_control(config, self.msix_cap), config.bus_master());
        self.release();
    }

    fn reset(&mut self) {
        self.registers = Registers::new(self.registers.peer_id());
        self.msix = Msix::new(MSIX_VECTORS, MSIX_LAYOUT);
    }
}
