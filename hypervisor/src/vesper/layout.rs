//! What the Vesper device is on the bus: its PCI identity, BAR sizes, the MSI-X layout
//! and GSI base, the BAR0 register offsets, and the host peer's doorbell vectors. Plain
//! constants shared by the pure logic and the KVM glue.

use crate::msix::MsixLayout;

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
/// Bytes in BAR1 (MSI-X table and PBA), as QEMU's exclusive MSI-X BAR.
pub const BAR1_SIZE: u64 = 4096;
/// MSI-X vectors (QEMU's ivshmem default; the guest driver asks for 1 to 2).
pub const MSIX_VECTORS: u16 = 2;
/// The MSI-X table and PBA in BAR1.
pub const MSIX_LAYOUT: MsixLayout = MsixLayout {
    table: 0,
    pba: 0x800,
};
/// BAR1's index.
pub const MSIX_BAR: u8 = 1;
/// The GSI of MSI-X vector 0 (above the IOAPIC's 24 pins); vector n uses this + n.
pub const MSI_GSI_BASE: u32 = 24;
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
/// Guest misbehaviours of one kind logged before further ones are only counted.
pub(super) const LOG_LIMIT: u64 = 16;
