//! The Vesper device: an `ivshmem-doorbell` PCI function (1af4:1110 rev 1) laid out as
//! QEMU's: BAR0 holds four 32-bit registers (IntrMask 0, IntrStatus 4, IVPosition 8,
//! Doorbell 12); BAR1 (4 KiB) the MSI-X table (offset 0) and PBA (0x800) of 2 vectors,
//! announced by an MSI-X capability; BAR2 is the shared region, mapped into the guest as
//! its own KVM memslot.
//!
//! Pure logic, no fd: `Registers` (BAR0), `msix::Msix` (BAR1 and the capability bits),
//! `config_space`, `VesperLogic` (the three as one `PciDevice`, for tests and fuzzing).
//! Glue: `VesperFunction` follows BAR moves — BAR0's doorbell ioeventfds unregistered and
//! registered at the new address, BAR2's memslot deleted and added at the new GPA — and
//! `Interrupts` turns each vector's message into a KVM MSI route (GSI `MSI_GSI_BASE` +
//! vector) with an irqfd, so the host's `VesperHandle::notify` interrupts the guest
//! without any vCPU exit.
//!
//! Doorbells: one KVM ioeventfd per doorbell vector of the host peer, so a guest doorbell
//! `(HOST_PEER << 16) | vector` (a dword write) is signalled by the kernel without the
//! vCPU thread. Doorbell writes that do reach the VMM (other widths, no ioeventfd) are
//! decoded by `Registers` and signal the same eventfd; doorbells to other peers are
//! counted and dropped.
//!
//! Lock order: the PCI root → `Bar0` or `Interrupts` (never both at once). The handle
//! takes one of them alone.
//!
//! Files: `layout` (constants), `registers` (BAR0), `logic` (config space and
//! `VesperLogic`), `interrupts` (MSI routes and irqfds), `function` (BAR moves, the
//! `PciDevice` glue), `attach` (placement, setup and `VesperHandle`).

mod attach;
mod function;
mod interrupts;
mod layout;
mod logic;
mod registers;
#[cfg(test)]
mod tests;

pub(crate) use attach::{attach, region_len, Attach};
pub use attach::{VesperConfig, VesperHandle};
pub use interrupts::{routing_table, InterruptStats};
pub use layout::{
    BAR0_SIZE, BAR1_SIZE, CLASS, DEVICE_ID, DOORBELL, HOST_PEER, HOST_VECTORS, INTR_MASK,
    INTR_STATUS, IV_POSITION, MSIX_BAR, MSIX_LAYOUT, MSIX_VECTORS, MSI_GSI_BASE, REVISION,
    VENDOR_ID,
};
pub use logic::{config_space, BarAddresses, VesperLogic};
pub use registers::{Doorbell, Registers};
