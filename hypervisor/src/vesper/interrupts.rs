//! Host-to-guest interrupts of the Vesper device: each MSI-X vector's message becomes a
//! KVM MSI route (GSI `MSI_GSI_BASE` + vector) with an irqfd, so `VesperHandle::notify`
//! interrupts the guest without a vCPU exit; masked vectors stay pending in the PBA.
//! Failures are counted (`InterruptStats`) and the first few logged.

use std::sync::{Arc, Weak};

use kvm_bindings::{
    kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER,
    KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::layout::{LOG_LIMIT, MSI_GSI_BASE};
use crate::error::{kvm, HypervisorError, Result};
use crate::msix::{MsiMessage, Msix};

/// Host→guest interrupt counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InterruptStats {
    /// Messages sent to the guest (irqfd writes).
    pub delivered: u64,
    /// Messages dropped because the guest programmed an address that is not a LAPIC's.
    pub not_lapic: u64,
    /// Times the guest enabled MSI-X, or a message was due, on a VM without the
    /// in-kernel irqchip.
    pub no_irqchip: u64,
    /// Pending messages released by the guest that KVM refused (route or irqfd).
    pub failed: u64,
}

/// KVM's default GSI routes (`kvm_setup_default_irq_routing`), which a
/// `KVM_SET_GSI_ROUTING` would otherwise drop: GSIs 0-15 to the PIC and the IOAPIC, 16-23
/// to the IOAPIC only; then one MSI route per `(gsi, message)`.
pub fn routing_table(msis: &[(u32, MsiMessage)]) -> Vec<kvm_irq_routing_entry> {
    let chip = |gsi: u32, irqchip: u32, pin: u32| {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_IRQCHIP,
            ..Default::default()
        };
        e.u.irqchip.irqchip = irqchip;
        e.u.irqchip.pin = pin;
        e
    };
    let mut entries = Vec::new();
    for gsi in 0..MSI_GSI_BASE {
        if gsi < 16 {
            let pic = if gsi < 8 {
                KVM_IRQCHIP_PIC_MASTER
            } else {
                KVM_IRQCHIP_PIC_SLAVE
            };
            entries.push(chip(gsi, pic, gsi % 8));
        }
        entries.push(chip(gsi, KVM_IRQCHIP_IOAPIC, gsi));
    }
    for &(gsi, m) in msis {
        let mut e = kvm_irq_routing_entry {
            gsi,
            type_: KVM_IRQ_ROUTING_MSI,
            ..Default::default()
        };
        e.u.msi.address_lo = m.address as u32;
        e.u.msi.address_hi = (m.address >> 32) as u32;
        e.u.msi.data = m.data;
        entries.push(e);
    }
    entries
}

/// The KVM side of MSI-X: one irqfd per vector on GSI `MSI_GSI_BASE + vector`, and the
/// route each GSI has now. The VM is held weakly: a `VesperHandle` kept after its `Vm`
/// must not keep the VM alive.
pub(super) struct MsiRoutes {
    vm_fd: Weak<VmFd>,
    irqfds: Vec<EventFd>,
    routed: Vec<Option<MsiMessage>>,
}

impl MsiRoutes {
    pub(super) fn new(vm_fd: &Arc<VmFd>, vectors: u16) -> Result<Self> {
        let mut routes = Self {
            vm_fd: Arc::downgrade(vm_fd),
            irqfds: Vec::new(),
            routed: vec![None; usize::from(vectors)],
        };
        for v in 0..u32::from(vectors) {
            let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(HypervisorError::EventFd)?;
            // Dropping `routes` on error unregisters the ones already registered.
            vm_fd
                .register_irqfd(&fd, MSI_GSI_BASE + v)
                .map_err(kvm("KVM_IRQFD"))?;
            routes.irqfds.push(fd);
        }
        Ok(routes)
    }

    /// Sends `m` on vector `v`: updates the GSI's route if the message changed, then
    /// signals its irqfd (KVM injects it; no vCPU exit).
    fn send(&mut self, v: u16, m: MsiMessage) -> Result<()> {
        let i = usize::from(v);
        let (Some(fd), Some(routed)) = (self.irqfds.get(i), self.routed.get(i)) else {
            return Err(HypervisorError::NoSuchVector {
                vector: v,
                vectors: self.irqfds.len() as u16,
            });
        };
        let vm_fd = self.vm_fd.upgrade().ok_or(HypervisorError::VmGone)?;
        if *routed != Some(m) {
            let mut msis: Vec<(u32, MsiMessage)> = Vec::new();
            for (g, r) in (MSI_GSI_BASE..).zip(&self.routed) {
                let msg = if g == MSI_GSI_BASE + u32::from(v) {
                    Some(m)
                } else {
                    *r
                };
                if let Some(msg) = msg {
                    msis.push((g, msg));
                }
            }
            let table = KvmIrqRouting::from_entries(&routing_table(&msis))
                .map_err(|_| HypervisorError::InvalidConfig("too many GSI routes"))?;
            vm_fd
                .set_gsi_routing(&table)
                .map_err(kvm("KVM_SET_GSI_ROUTING"))?;
            self.routed[i] = Some(m);
        }
        fd.write(1).map_err(HypervisorError::EventFd)
    }
}

impl Drop for MsiRoutes {
    fn drop(&mut self) {
        // A VM already gone took its irqfds with it.
        let Some(vm_fd) = self.vm_fd.upgrade() else {
            return;
        };
        for (gsi, fd) in (MSI_GSI_BASE..).zip(&self.irqfds) {
            if let Err(e) = vm_fd.unregister_irqfd(fd, gsi) {
                tracing::warn!(%e, gsi, "cannot unregister an MSI irqfd");
            }
        }
    }
}

/// MSI-X state and its KVM side (none without the in-kernel irqchip).
pub(super) struct Interrupts {
    pub(super) msix: Msix,
    pub(super) routes: Option<MsiRoutes>,
    pub(super) stats: InterruptStats,
}

impl Interrupts {
    /// Sends every pending message that became deliverable; failures are counted (and
    /// logged a bounded number of times: guest actions trigger this).
    pub(super) fn release(&mut self) {
        for (v, m) in self.msix.take_deliverable() {
            match self.send(v, m) {
                Ok(()) | Err(HypervisorError::MsixNeedsIrqchip) => {} // counted in `send`
                Err(e) => {
                    self.stats.failed += 1;
                    if self.stats.failed <= LOG_LIMIT {
                        tracing::warn!(%e, vector = v, "cannot deliver a pending MSI-X message");
                    }
                }
            }
        }
    }

    pub(super) fn send(&mut self, v: u16, m: MsiMessage) -> Result<()> {
        let Some(routes) = self.routes.as_mut() else {
            self.stats.no_irqchip += 1;
            if self.stats.no_irqchip <= LOG_LIMIT {
                tracing::error!("MSI-X message due but the VM has no in-kernel irqchip");
            }
            return Err(HypervisorError::MsixNeedsIrqchip);
        };
        if !m.is_lapic() {
            self.stats.not_lapic += 1;
            if self.stats.not_lapic <= LOG_LIMIT {
                tracing::warn!(
                    vector = v,
                    address = m.address,
                    "guest programmed an MSI-X address that is not a LAPIC's; message dropped"
                );
            }
            return Ok(());
        }
        routes.send(v, m)?;
        self.stats.delivered += 1;
        Ok(())
    }

    pub(super) fn control_written(&mut self, control: u16, bus_master: bool) {
        let was = self.msix.enabled();
        self.msix.set_control(control, bus_master);
        if self.msix.enabled() && !was && self.routes.is_none() {
            self.stats.no_irqchip += 1;
            if self.stats.no_irqchip <= LOG_LIMIT {
                tracing::error!(
                    "the guest enabled MSI-X but the VM has no in-kernel irqchip \
                     (build it with Vm::with_irqchip); interrupts stay pending"
                );
            }
        }
        self.release();
    }
}
