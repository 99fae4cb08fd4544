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

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};
use std::time::Duration;

use kvm_bindings::{
    kvm_irq_routing_entry, kvm_userspace_memory_region, KvmIrqRouting, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQ_ROUTING_IRQCHIP, KVM_IRQ_ROUTING_MSI,
};
use kvm_ioctls::{IoEventAddress, VmFd};
use vmm_sys_util::eventfd::EventFd;

use crate::bus::BusDevice;
use crate::error::{kvm, HypervisorError, Result};
use crate::msix::{self, MsiMessage, Msix, MsixLayout, Notify};
use crate::pci::{
    AddError, ConfigSpace, MemoryBar, PciDevice, PciId, PciRoot, COMMAND_MEMORY, PCI_HOLE,
};

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
const LOG_LIMIT: u64 = 16;

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
fn message_control(config: &ConfigSpace, cap: usize) -> u16 {
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

/// Where to put the device and what to map.
#[derive(Debug)]
pub struct VesperConfig<'a> {
    /// The guest's peer ID (IVPosition).
    pub peer_id: u16,
    /// BAR0's guest physical address (256-byte aligned, below 4 GiB, outside RAM), or 0:
    /// the VMM places it in the PCI hole.
    pub bar0: u64,
    /// BAR2's guest physical address (aligned to the region size, outside RAM), or 0: the
    /// VMM places it in the PCI hole (above RAM beyond 4 GiB if it does not fit).
    pub bar2: u64,
    /// The shared region's file (e.g. `SharedRegion::fd()`); it is mapped shared.
    pub region: BorrowedFd<'a>,
    /// The region's size: a power of two, at least one page.
    pub region_size: u64,
}

impl<'a> VesperConfig<'a> {
    /// A device whose BARs the VMM places in the PCI hole [0xC000_0000, 0xFEC0_0000).
    pub fn auto(peer_id: u16, region: BorrowedFd<'a>, region_size: u64) -> Self {
        Self {
            peer_id,
            bar0: 0,
            bar2: 0,
            region,
            region_size,
        }
    }
}

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
struct MsiRoutes {
    vm_fd: Weak<VmFd>,
    irqfds: Vec<EventFd>,
    routed: Vec<Option<MsiMessage>>,
}

impl MsiRoutes {
    fn new(vm_fd: &Arc<VmFd>, vectors: u16) -> Result<Self> {
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
pub(crate) struct Interrupts {
    msix: Msix,
    routes: Option<MsiRoutes>,
    stats: InterruptStats,
}

impl Interrupts {
    /// Sends every pending message that became deliverable; failures are counted (and
    /// logged a bounded number of times: guest actions trigger this).
    fn release(&mut self) {
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

    fn send(&mut self, v: u16, m: MsiMessage) -> Result<()> {
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

    fn control_written(&mut self, control: u16, bus_master: bool) {
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
                if self.dropped <= LOG_LIMIT {
                    tracing::warn!(?bell, "doorbell to an unknown peer or vector dropped");
                }
            }
        }
    }
}

fn lock<T: ?Sized>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Counts a KVM refusal; true while it may still be logged.
fn count_kvm_error(count: &mut u64) -> bool {
    *count += 1;
    *count <= LOG_LIMIT
}

/// The device's glue on the PCI root: BAR accesses to the logic, BAR moves to KVM.
struct VesperFunction {
    vm_fd: Arc<VmFd>,
    bar0: Arc<Mutex<Bar0>>,
    interrupts: Arc<Mutex<Interrupts>>,
    msix_cap: usize,
    /// Doorbell eventfds (clones of the handle's), and where they are registered.
    doorbells: Vec<EventFd>,
    doorbell_at: Option<u64>,
    /// BAR2's memslot: the mapping's host address (owned by the `Vm`, which drops this
    /// function first), its size, and where it is in the guest now.
    slot: u32,
    host_addr: u64,
    region_size: u64,
    region_at: Option<u64>,
    /// KVM refusals while following BAR moves (the guest chooses the addresses).
    kvm_errors: u64,
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

/// What `Vm::add_vesper_device` hands over to `attach`.
pub(crate) struct Attach {
    pub(crate) vm_fd: Arc<VmFd>,
    pub(crate) pci: Arc<Mutex<PciRoot>>,
    pub(crate) irqchip: bool,
    /// Guest RAM ranges, [start, end).
    pub(crate) ram: Vec<(u64, u64)>,
    /// The guest's physical address width.
    pub(crate) phys_bits: u8,
    /// The memslot for BAR2 and the region mapping's host address.
    pub(crate) slot: u32,
    pub(crate) host_addr: u64,
}

/// Checks the region's size; what `Vm` maps it with.
pub(crate) fn region_len(config: &VesperConfig<'_>) -> Result<usize> {
    if config.region_size < crate::boot::layout::PAGE_SIZE || !config.region_size.is_power_of_two()
    {
        return Err(HypervisorError::InvalidConfig(
            "Vesper region: its size must be a power of two of at least one page",
        ));
    }
    usize::try_from(config.region_size)
        .map_err(|_| HypervisorError::InvalidConfig("Vesper region larger than usize"))
}

/// Places the BARs (explicit ones checked, the others in the PCI hole), builds the
/// device and adds it at 00:01.0 with its glue.
pub(crate) fn attach(a: Attach, config: &VesperConfig<'_>) -> Result<VesperHandle> {
    let mut pci = lock(&a.pci);
    if pci.function(1, 0).is_some() {
        return Err(HypervisorError::InvalidConfig("00:01.0 is taken"));
    }
    pci.set_rules(&a.ram, a.phys_bits);
    let bars = place(&pci, &a.ram, config)?;
    let (space, msix_cap) =
        config_space(bars, config.region_size).ok_or(HypervisorError::InvalidConfig(
            "Vesper BARs: sizes must be powers of two, addresses aligned to them",
        ))?;

    let mut doorbells = Vec::new();
    let mut host_vectors = Vec::new();
    let mut glue_doorbells = Vec::new();
    for _ in 0..HOST_VECTORS {
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(HypervisorError::EventFd)?;
        host_vectors.push(fd.try_clone().map_err(HypervisorError::EventFd)?);
        glue_doorbells.push(fd.try_clone().map_err(HypervisorError::EventFd)?);
        doorbells.push(fd);
    }
    let bar0 = Arc::new(Mutex::new(Bar0 {
        registers: Registers::new(config.peer_id),
        host_vectors,
        dropped: 0,
        in_vmm: 0,
    }));
    let routes = if a.irqchip {
        Some(MsiRoutes::new(&a.vm_fd, MSIX_VECTORS)?)
    } else {
        None
    };
    let interrupts = Arc::new(Mutex::new(Interrupts {
        msix: Msix::new(MSIX_VECTORS, MSIX_LAYOUT),
        routes,
        stats: InterruptStats::default(),
    }));
    let function = VesperFunction {
        vm_fd: a.vm_fd.clone(),
        bar0: bar0.clone(),
        interrupts: interrupts.clone(),
        msix_cap,
        doorbells: glue_doorbells,
        doorbell_at: None,
        slot: a.slot,
        host_addr: a.host_addr,
        region_size: config.region_size,
        region_at: None,
        kvm_errors: 0,
    };
    // On error the function is dropped inside: its ioeventfds and memslot go with it.
    pci.add_device(1, 0, space, Box::new(function))
        .map_err(|e| match e {
            AddError::SlotTaken => HypervisorError::InvalidConfig("00:01.0 is taken"),
            AddError::BarRefused { bar, addr, size } => {
                HypervisorError::BarPlacement { bar, addr, size }
            }
            AddError::DeviceFailed { bar, addr } => HypervisorError::BarMapFailed { bar, addr },
        })?;
    drop(pci);
    Ok(VesperHandle {
        bar0,
        interrupts,
        doorbells,
        pci: a.pci,
    })
}

/// The BARs' first addresses: `config`'s explicit ones (checked), the rest first-fit in
/// the PCI hole, largest first (BAR2 above RAM beyond 4 GiB if the hole is too small).
fn place(pci: &PciRoot, ram: &[(u64, u64)], config: &VesperConfig<'_>) -> Result<BarAddresses> {
    let mut taken: Vec<(u64, u64)> = Vec::new();
    let mut fixed = |bar: usize, addr: u64, size: u64| -> Result<u64> {
        let end = addr.checked_add(size);
        let clash = end.is_none_or(|end| taken.iter().any(|&(s, e)| s < end && addr < e));
        if !addr.is_multiple_of(size) || clash || !pci.is_free(addr, size) {
            return Err(HypervisorError::BarPlacement { bar, addr, size });
        }
        taken.push((addr, addr + size));
        Ok(addr)
    };
    let bar2 = match config.bar2 {
        0 => None,
        addr => Some(fixed(2, addr, config.region_size)?),
    };
    let bar0 = match config.bar0 {
        0 => None,
        addr => Some(fixed(0, addr, BAR0_SIZE)?),
    };
    let mut auto = |bar: usize, size: u64, above_4g: bool| -> Result<u64> {
        let high_start = ram.iter().map(|&(_, e)| e).max().unwrap_or(0).max(1 << 32);
        let found = find_free(pci, &taken, PCI_HOLE.0, PCI_HOLE.1, size).or_else(|| {
            above_4g
                .then(|| find_free(pci, &taken, high_start, pci.limit(), size))
                .flatten()
        });
        let addr = found.ok_or(HypervisorError::NoRoomForBar { bar, size })?;
        taken.push((addr, addr + size));
        Ok(addr)
    };
    let bar2 = match bar2 {
        Some(a) => a,
        None => auto(2, config.region_size, true)?,
    };
    let bar1 = auto(1, BAR1_SIZE, false)?;
    let bar0 = match bar0 {
        Some(a) => a,
        None => auto(0, BAR0_SIZE, false)?,
    };
    Ok(BarAddresses { bar0, bar1, bar2 })
}

/// `PciRoot::find_free` that also avoids `taken`.
fn find_free(pci: &PciRoot, taken: &[(u64, u64)], start: u64, end: u64, size: u64) -> Option<u64> {
    let mut from = start;
    loop {
        let at = pci.find_free(from, end, size)?;
        match taken.iter().find(|&&(s, e)| s < at + size && at < e) {
            None => return Some(at),
            Some(&(_, e)) => from = e,
        }
    }
}

/// What the host keeps of a Vesper device: the doorbell eventfds, BAR0's state, the
/// MSI-X state for `notify`, and the PCI root for where the BARs are now.
pub struct VesperHandle {
    bar0: Arc<Mutex<Bar0>>,
    interrupts: Arc<Mutex<Interrupts>>,
    doorbells: Vec<EventFd>,
    pci: Arc<Mutex<PciRoot>>,
}

impl VesperHandle {
    /// Interrupts the guest on MSI-X `vector` (0 is the protocol's). Sent now (a KVM
    /// irqfd write, no vCPU exit) if MSI-X is enabled and neither the function, the
    /// vector nor bus mastering is off; otherwise the vector's pending bit is set and the
    /// message goes out when the guest unmasks it. Errors: no such vector; the guest
    /// enabled MSI-X on a VM without the in-kernel irqchip; the `Vm` is gone; KVM refused
    /// the route.
    pub fn notify(&self, vector: u16) -> Result<()> {
        let mut irq = lock(&self.interrupts);
        match irq.msix.notify(vector) {
            Notify::Deliver(m) => irq.send(vector, m),
            Notify::Pending => Ok(()),
            Notify::NoSuchVector => Err(HypervisorError::NoSuchVector {
                vector,
                vectors: MSIX_VECTORS,
            }),
        }
    }

    /// Whether the guest enabled MSI-X.
    pub fn msix_enabled(&self) -> bool {
        lock(&self.interrupts).msix.enabled()
    }

    /// Whether `vector`'s pending bit is set.
    pub fn msix_pending(&self, vector: u16) -> bool {
        lock(&self.interrupts).msix.pending(vector)
    }

    /// Host→guest interrupt counters.
    pub fn interrupt_stats(&self) -> InterruptStats {
        lock(&self.interrupts).stats
    }

    /// Where BAR `bar` (0, 1 or 2) is decoded now; `None` while the guest has memory
    /// decoding off or the BAR's placement was refused.
    pub fn bar_address(&self, bar: usize) -> Option<u64> {
        lock(&self.pci).decoded_at(1, 0, bar)
    }

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
        lock(&self.bar0).dropped
    }

    /// Doorbell writes that exited to the VMM (not taken by an ioeventfd in the kernel).
    pub fn doorbells_in_vmm(&self) -> u64 {
        lock(&self.bar0).in_vmm
    }

    /// BAR0's registers now.
    pub fn registers(&self) -> Registers {
        lock(&self.bar0).registers.clone()
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

    fn bars(bar0: u64, bar2: u64) -> BarAddresses {
        BarAddresses {
            bar0,
            bar1: 0x1000_1000,
            bar2,
        }
    }

    #[test]
    fn config_space_refuses_a_bad_region() {
        assert!(config_space(bars(0x1000_0000, 0x2000_0000), 3 << 20).is_none());
        assert!(config_space(bars(0x1000_0080, 0x2000_0000), 1 << 20).is_none());
        let (c, _) = config_space(bars(0x1000_0000, 1 << 32), 2 << 20).unwrap();
        assert_eq!(c.bar(2).unwrap().size, 2 << 20);
    }

    #[test]
    fn config_space_has_qemus_msix_capability_and_bar1() {
        let (c, cap) = config_space(bars(0x1000_0000, 0x2000_0000), 1 << 20).unwrap();
        assert_eq!(cap, 0x40);
        let mut b = [0; 4];
        c.read(0x34, &mut b[..1]);
        assert_eq!(b[0], 0x40, "capability pointer");
        assert_eq!(c.read_u16(0x06) & 0x10, 0x10, "status: capability list");
        c.read(0x40, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x0001_0011, "MSI-X, last, 2 vectors");
        c.read(0x44, &mut b);
        assert_eq!(u32::from_le_bytes(b), 1, "table at BAR1 + 0");
        c.read(0x48, &mut b);
        assert_eq!(u32::from_le_bytes(b), 0x801, "PBA at BAR1 + 0x800");
        let bar1 = c.bar(1).unwrap();
        assert_eq!((bar1.size, bar1.is_64bit), (BAR1_SIZE, false));
        assert!(c.memory_enabled(), "the VMM placed the BARs");
        assert!(!c.bus_master());
    }

    #[test]
    fn routing_table_keeps_the_irqchip_pins() {
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x40,
        };
        let t = routing_table(&[(MSI_GSI_BASE, m)]);
        assert_eq!(t.len(), 16 * 2 + 8 + 1);
        assert!(t[..40].iter().all(|e| e.type_ == KVM_IRQ_ROUTING_IRQCHIP));
        assert!((0..24).all(|g| t.iter().any(|e| e.gsi == g)));
        let last = t.last().unwrap();
        assert_eq!((last.gsi, last.type_), (MSI_GSI_BASE, KVM_IRQ_ROUTING_MSI));
        // SAFETY: the entry was built as an MSI route, so `msi` is the union's live field.
        let msi = unsafe { last.u.msi };
        assert_eq!(
            (msi.address_lo, msi.address_hi, msi.data),
            (0xfee0_0000, 0, 0x40)
        );
    }

    #[test]
    fn logic_delivers_a_pending_message_on_unmask() {
        let (mut space, cap) = config_space(bars(0xc000_0000, 0xc010_0000), 1 << 20).unwrap();
        let mut logic = VesperLogic::new(1, cap);
        assert_eq!(logic.notify(0), Notify::Pending, "MSI-X off");
        logic.bar_write(1, 0, &0xfee0_0000u32.to_le_bytes());
        logic.bar_write(1, 8, &0x41u32.to_le_bytes());
        space.write(cap + 2, &0x8000u16.to_le_bytes()); // enable
        space.write(0x04, &0x6u16.to_le_bytes()); //        memory + bus master
        logic.config_written(&space);
        assert!(logic.messages.is_empty(), "vector 0 still masked");
        let mut pba = [0; 4];
        logic.bar_read(1, MSIX_LAYOUT.pba, &mut pba);
        assert_eq!(pba, [1, 0, 0, 0]);
        logic.bar_write(1, 12, &0u32.to_le_bytes()); // unmask
        let m = MsiMessage {
            address: 0xfee0_0000,
            data: 0x41,
        };
        assert_eq!(logic.messages, vec![(0, m)]);
        assert_eq!(logic.notify(0), Notify::Deliver(m));
        logic.bar_write(0, DOORBELL, &1u32.to_le_bytes());
        assert_eq!(logic.doorbells, 1);
    }

    #[test]
    fn auto_placement_fills_the_hole_and_goes_above_ram_when_it_must() {
        let fd = EventFd::new(0).unwrap();
        let cfg = |bar0, bar2, region_size| VesperConfig {
            peer_id: 1,
            bar0,
            bar2,
            // SAFETY: `fd` outlives every config built here.
            region: unsafe { BorrowedFd::borrow_raw(fd.as_raw_fd()) },
            region_size,
        };
        let ram = [(0, 0xc000_0000), (1 << 32, 0x1_4000_0000)];
        let mut pci = PciRoot::new();
        pci.set_rules(&ram, 39);
        let small = place(&pci, &ram, &cfg(0, 0, 2 << 20)).unwrap();
        assert_eq!(
            small,
            BarAddresses {
                bar2: 0xc000_0000,
                bar1: 0xc020_0000,
                bar0: 0xc020_1000,
            },
            "largest first, first fit, aligned"
        );
        // 2 GiB does not fit in the hole: above RAM (which ends at 5 GiB), aligned.
        let big = place(&pci, &ram, &cfg(0, 0, 2 << 30)).unwrap();
        assert_eq!(big.bar2, 6 << 30);
        assert_eq!(big.bar1, 0xc000_0000);
        // Explicit addresses are checked; the others avoid them.
        let mixed = place(&pci, &ram, &cfg(0xc000_0000, 0, 2 << 20)).unwrap();
        assert_eq!((mixed.bar0, mixed.bar2), (0xc000_0000, 0xc020_0000));
        assert!(matches!(
            place(&pci, &ram, &cfg(0xfee0_0000, 0, 2 << 20)),
            Err(HypervisorError::BarPlacement { bar: 0, .. })
        ));
        assert!(matches!(
            place(&pci, &ram, &cfg(0, 0xc000_1000, 2 << 20)),
            Err(HypervisorError::BarPlacement { bar: 2, .. })
        ));
        // The address width bounds it: under 39 bits (512 GiB), 256 GiB fits at 256 GiB,
        // 512 GiB nowhere.
        assert!(place(&pci, &ram, &cfg(0, 0, 256 << 30)).is_ok());
        assert!(matches!(
            place(&pci, &ram, &cfg(0, 0, 512 << 30)),
            Err(HypervisorError::NoRoomForBar { bar: 2, .. })
        ));
    }

    #[test]
    fn the_pci_root_routes_bar_accesses_to_the_logic() {
        let (space, cap) = config_space(bars(0xc000_0000, 0xc010_0000), 1 << 20).unwrap();
        let mut root = PciRoot::new();
        root.add_device(1, 0, space, Box::new(VesperLogic::new(7, cap)))
            .unwrap();
        assert_eq!(root.decoded_at(1, 0, 1), Some(0x1000_1000));
        let mut b = [0; 4];
        assert!(root.mmio_read(0xc000_0000 + IV_POSITION, &mut b));
        assert_eq!(u32::from_le_bytes(b), 7);
        assert!(root.mmio_read(0x1000_100c, &mut b));
        assert_eq!(u32::from_le_bytes(b), 1, "vector 0 masked out of reset");
        assert!(!root.mmio_read(0xc000_0100, &mut b), "past BAR0");
        assert!(!root.mmio_read(0xc000_00fe, &mut b), "straddles BAR0's end");
    }
}
