//! Putting a Vesper device on a VM: the caller's `VesperConfig`, BAR placement in the PCI
//! hole clear of RAM and other BARs, the region's memslot, ioeventfds and MSI routes set
//! up, and the `VesperHandle` the host keeps to notify the guest and read the device's
//! counters.

use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kvm_ioctls::VmFd;
use vmm_sys_util::eventfd::EventFd;

use super::function::{lock, Bar0, VesperFunction};
use super::interrupts::{InterruptStats, Interrupts, MsiRoutes};
use super::layout::{BAR0_SIZE, BAR1_SIZE, HOST_VECTORS, MSIX_LAYOUT, MSIX_VECTORS};
use super::logic::{config_space, BarAddresses};
use super::registers::Registers;
use crate::error::{HypervisorError, Result};
use crate::msix::{Msix, Notify};
use crate::pci::{AddError, PciRoot, PCI_HOLE};

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
pub(super) fn place(
    pci: &PciRoot,
    ram: &[(u64, u64)],
    config: &VesperConfig<'_>,
) -> Result<BarAddresses> {
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
