//! The Vesper function's KVM glue: BAR0 on the MMIO bus (doorbells that reach the VMM),
//! and `VesperFunction`, the `PciDevice` that follows BAR moves — BAR0's host-doorbell
//! ioeventfds unregistered and registered at the new address, BAR2's memslot deleted and
//! added at the new GPA — and hands config writes and resets to BAR0 and the MSI-X state.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use super::interrupts::Interrupts;
use super::layout::{DOORBELL, HOST_PEER, HOST_VECTORS, LOG_LIMIT, MSIX_LAYOUT, MSIX_VECTORS};
use super::logic::message_control;
use super::registers::{Doorbell, Registers};
use crate::bus::BusDevice;
use crate::msix::Msix;
use crate::pci::{ConfigSpace, PciDevice};

/// BAR0 on the MMIO bus.
pub(super) struct Bar0 {
    pub(super) registers: Registers,
    pub(super) host_vectors: Vec<EventFd>,
    pub(super) dropped: u64,
    pub(super) in_vmm: u64,
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
                if self.dropped <= LOG_LIMIT {
                    tracing::warn!(?bell, "doorbell to an unknown peer or vector dropped");
                }
            }
        }
    }
}

pub(super) fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a KVM refusal; true while it may still be logged.
fn count_kvm_error(count: &mut u64) -> bool {
    *count += 1;
    *count <= LOG_LIMIT
}

/// The device's glue on the PCI root: BAR accesses to the logic, BAR moves to KVM.
pub(super) struct VesperFunction {
    pub(super) vm_fd: Arc<VmFd>,
    pub(super) bar0: Arc<Mutex<Bar0>>,
    pub(super) interrupts: Arc<Mutex<Interrupts>>,
    pub(super) msix_cap: usize,
    /// Doorbell eventfds (clones of the handle's), and where they are registered.
    pub(super) doorbells: Vec<EventFd>,
    pub(super) doorbell_at: Option<u64>,
    /// BAR2's memslot: the mapping's host address (owned by the `Vm`, which drops this
    /// function first), its size, and where it is in the guest now.
    pub(super) slot: u32,
    pub(super) host_addr: u64,
    pub(super) region_size: u64,
    pub(super) region_at: Option<u64>,
    /// KVM refusals while following BAR moves (the guest chooses the addresses).
    pub(super) kvm_errors: u64,
}

/// The host's doorbell for `vector` with BAR0 at `base`: the address and the value its
/// KVM ioeventfd matches.
fn host_doorbell(base: u64, vector: u16) -> (IoEventAddress, u32) {
    let doorbell = Doorbell {
        peer: HOST_PEER,
        vector,
    };
    (IoEventAddress::Mmio(base + DOORBELL), doorbell.encode())
}

impl VesperFunction {
    fn unregister_doorbells(&mut self, upto: usize) {
        let Some(base) = self.doorbell_at.take() else {
            return;
        };
        for (vector, fd) in (0..HOST_VECTORS).zip(&self.doorbells).take(upto) {
            let (addr, datamatch) = host_doorbell(base, vector);
            if let Err(e) = self.vm_fd.unregister_ioevent(fd, &addr, datamatch) {
                if count_kvm_error(&mut self.kvm_errors) {
                    tracing::warn!(%e, "cannot unregister a doorbell ioeventfd");
                }
            }
        }
    }

    fn move_doorbells(&mut self, to: Option<u64>) -> bool {
        self.unregister_doorbells(self.doorbells.len());
        let Some(base) = to else {
            return true;
        };
        self.doorbell_at = Some(base);
        for (i, (vector, fd)) in (0..HOST_VECTORS).zip(&self.doorbells).enumerate() {
            let (addr, datamatch) = host_doorbell(base, vector);
            if let Err(e) = self.vm_fd.register_ioevent(fd, &addr, datamatch) {
                if count_kvm_error(&mut self.kvm_errors) {
                    tracing::warn!(%e, "cannot register a doorbell ioeventfd");
                }
                self.unregister_doorbells(i);
                return false;
            }
        }
        true
    }

    fn set_memslot(&mut self, gpa: u64, size: u64) -> bool {
        let desc = kvm_userspace_memory_region {
            slot: self.slot,
            flags: 0,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: self.host_addr,
        };
        // SAFETY: `host_addr` is a live shared mapping of `region_size` bytes owned by the
        // `Vm`, which removes this function (and so its memslot, see `Drop`) before the
        // mapping drops. Size 0 deletes the slot. `PciRoot` only decodes BAR2 where it
        // overlaps no RAM, no other BAR and no reserved range, so no other slot.
        match unsafe { self.vm_fd.set_user_memory_region(desc) } {
            Ok(()) => true,
            Err(e) => {
                if count_kvm_error(&mut self.kvm_errors) {
                    tracing::warn!(%e, gpa, size, "KVM refused BAR2's memslot");
                }
                false
            }
        }
    }

    fn move_region(&mut self, to: Option<u64>) -> bool {
        if let Some(old) = self.region_at.take() {
            self.set_memslot(old, 0);
        }
        match to {
            Some(gpa) if self.set_memslot(gpa, self.region_size) => {
                self.region_at = Some(gpa);
                true
            }
            Some(_) => false,
            None => true,
        }
    }
}

impl PciDevice for VesperFunction {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        match bar {
            0 => lock(&self.bar0).read(offset, data),
            1 => lock(&self.interrupts).msix.read(offset, data),
            _ => data.fill(0xff), // BAR2 is memory; an exit here is a race with a move
        }
    }

    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        match bar {
            0 => lock(&self.bar0).write(offset, data),
            1 => {
                let mut irq = lock(&self.interrupts);
                irq.msix.write(offset, data);
                irq.release();
            }
            _ => {}
        }
    }

    fn config_written(&mut self, config: &ConfigSpace) {
        lock(&self.interrupts)
            .control_written(message_control(config, self.msix_cap), config.bus_master());
    }

    fn reset(&mut self) {
        let mut bar0 = lock(&self.bar0);
        bar0.registers = Registers::new(bar0.registers.peer_id());
        drop(bar0);
        // All vectors masked, MSI-X off, nothing pending; the routes stay (harmless).
        lock(&self.interrupts).msix = Msix::new(MSIX_VECTORS, MSIX_LAYOUT);
    }

    fn bar_moved(&mut self, bar: usize, addr: Option<u64>) -> bool {
        match bar {
            0 => self.move_doorbells(addr),
            2 => self.move_region(addr),
            _ => true, // BAR1 is routed by the PCI root alone
        }
    }
}

impl Drop for VesperFunction {
    fn drop(&mut self) {
        // Whatever is still registered goes before the Vm unmaps the region.
        self.move_doorbells(None);
        self.move_region(None);
    }
}
