//! A tiny PCI host bridge: configuration mechanism #1 (ports 0xCF8 address, 0xCFC-0xCFF
//! data) over bus 0, with type-0 config spaces, capability lists and memory BARs the
//! guest can move. Pure logic, no fd: what a BAR move or a config write means for KVM is
//! up to each function's `PciDevice` (the glue).
//!
//! BARs behave as on hardware: a BAR register keeps the address bits the guest writes
//! (bits below the BAR's size read as zero, so writing all-ones and reading back gives
//! the size), and the function decodes its BARs only while its memory-space enable bit
//! is set. `PciRoot` decides where each BAR is *decoded*: at the address its register
//! holds, unless that range overlaps guest RAM, a reserved range (IOAPIC, LAPIC/MSI
//! window, other MMIO devices), another decoded BAR, or goes beyond the guest's physical
//! address width — then the BAR is refused: not decoded at all, counted and logged, and
//! the VM goes on. A BAR already decoded at an address keeps it over a newcomer. So the
//! device never decodes anything but what its BAR registers report.
//!
//! The config space of one function is `config_space`'s, the bus of functions with the
//! BAR placement rules is `root`'s, and the ports and MMIO fallback that put the root on
//! the VM's buses are `ports`'s.

mod config_space;
mod ports;
mod root;
#[cfg(test)]
mod tests;

pub use config_space::{
    host_bridge, ConfigSpace, MemoryBar, PciId, BAR_COUNT, COMMAND_BUS_MASTER, COMMAND_MEMORY,
    CONFIG_SPACE_LEN, STATUS_CAPABILITIES,
};
pub(crate) use ports::PciMmio;
pub use ports::{PciPorts, PCI_CONFIG_ADDRESS_PORT, PCI_PORTS_LEN};
pub use root::{
    AddError, ConfigAddress, DecodedBar, PciDevice, PciRoot, APIC_RANGES, DEFAULT_PHYS_BITS,
    PCI_HOLE, REFUSED_LOG_LIMIT,
};
