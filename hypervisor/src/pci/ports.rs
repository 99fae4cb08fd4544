//! The PCI root on the VM's buses: ports 0xCF8-0xCFF (config address, the reset control
//! register at 0xCF9, config data) as a port-bus device, and the MMIO fallback that sends
//! guest accesses no fixed range holds to the BARs decoded now. Each access takes the
//! root's lock for its duration.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::root::PciRoot;
use crate::bus::{BusDevice, BusFallback};
use crate::power::ResetControl;

/// First port of the config-address register.
pub const PCI_CONFIG_ADDRESS_PORT: u16 = 0xcf8;
/// Ports 0xCF8-0xCFF: address (dword at 0xCF8), reset control (byte at 0xCF9), data.
pub const PCI_PORTS_LEN: u64 = 8;

fn lock(root: &Mutex<PciRoot>) -> MutexGuard<'_, PciRoot> {
    root.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Ports 0xCF8-0xCFF as one bus device: a dword at 0xCF8 is the config address, a byte
/// at 0xCF9 the reset control register, 0xCFC-0xCFF the config data. Other accesses to
/// 0xCF8-0xCFB read as all-ones and are ignored.
pub struct PciPorts {
    root: Arc<Mutex<PciRoot>>,
    reset: Option<ResetControl>,
}

impl PciPorts {
    /// The ports of `root`; without `reset`, a byte at 0xCF9 reads all-ones.
    pub(crate) fn new(root: Arc<Mutex<PciRoot>>, reset: Option<ResetControl>) -> Self {
        Self { root, reset }
    }

    /// The ports of `root` with no reset control (for tests and fuzzing).
    pub fn without_reset(root: Arc<Mutex<PciRoot>>) -> Self {
        Self::new(root, None)
    }
}

impl BusDevice for PciPorts {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (offset, data.len(), self.reset.as_mut()) {
            (0, 4, _) => data.copy_from_slice(&lock(&self.root).address().to_le_bytes()),
            (1, 1, Some(reset)) => reset.read(0, data),
            (4..=7, _, _) => lock(&self.root).read_data((offset - 4) as usize, data),
            _ => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data, self.reset.as_mut()) {
            (0, &[a, b, c, d], _) => {
                lock(&self.root).write_address(u32::from_le_bytes([a, b, c, d]))
            }
            (1, &[_], Some(reset)) => reset.write(0, data),
            (4..=7, _, _) => lock(&self.root).write_data((offset - 4) as usize, data),
            _ => {}
        }
    }
}

/// Guest MMIO that no fixed bus range holds goes to the BARs where they are decoded now.
pub(crate) struct PciMmio(pub(crate) Arc<Mutex<PciRoot>>);

impl BusFallback for PciMmio {
    fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        lock(&self.0).mmio_read(addr, data)
    }

    fn write(&self, addr: u64, data: &[u8]) -> bool {
        lock(&self.0).mmio_write(addr, data)
    }
}
