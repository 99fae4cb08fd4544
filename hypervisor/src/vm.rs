//! A VM: config checks, guest RAM, vCPUs, the buses and a run with a deadline.

use std::io::Write;
use std::os::unix::thread::JoinHandleExt;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_userspace_memory_region};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_memory::mmap::MmapRegion;
use vm_memory::{
    Bytes, FileOffset, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion,
    MemoryRegionAddress,
};
use vmm_sys_util::eventfd::EventFd;

use crate::boot::entry_state::EntryExtra;
use crate::boot::layout::{self, PAGE_SIZE};
use crate::bus::{Bus, BusRange, SharedDevice};
use crate::debug::{DebugControl, DebugHandle};
use crate::error::{kvm, HypervisorError, Result};
use crate::grants::GuestFrameGrants;
use crate::kick::{install_kick_handler, kick};
use crate::pci::{PciMmio, PciPorts, PciRoot, PCI_CONFIG_ADDRESS_PORT, PCI_PORTS_LEN};
use crate::power::{DebugExit, ResetControl, RunControl, StopHandle, StopRequest, DEBUG_EXIT_PORT};
use crate::serial::{Serial, COM1_PORT, SERIAL_PORT_LEN};
use crate::vcpu::{run_vcpu, ExitStats, UnmappedAccesses, VcpuContext, VcpuEnd};
use crate::vcpu_state::VcpuSnapshot;
use crate::vesper::{self, VesperConfig, VesperHandle};

/// How long stopping vCPUs may take before they are declared unresponsive.
pub const STOP_GRACE: Duration = Duration::from_secs(2);
const KICK_INTERVAL: Duration = Duration::from_millis(5);
/// How often a run looks for a stop asked from outside the vCPU threads.
const HOST_STOP_POLL: Duration = Duration::from_millis(20);
/// Where KVM's real-mode TSS pages go (Intel needs three pages below 4 GiB).
const TSS_ADDRESS: usize = 0xfffb_d000;

/// What to build.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VmConfig {
    /// Number of vCPUs (at least 1).
    pub vcpus: u32,
    /// Guest RAM in bytes, a multiple of `PAGE_SIZE`, mapped at guest address 0.
    pub mem_size: u64,
}

/// Where every vCPU starts, in real mode: `cs:ip`, with ds = es = ss = cs and `sp`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RealModeEntry {
    /// Code (and data, stack) segment.
    pub segment: u16,
    /// Instruction pointer.
    pub ip: u16,
    /// Stack pointer.
    pub sp: u16,
}

/// How a run ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Every vCPU executed HLT.
    Halted,
    /// The guest wrote `code` to the debug-exit port.
    PowerOff(u8),
    /// The guest asked for a reset; call `Vm::reset` before running again.
    ResetRequested,
    /// The host ended the run through a `StopHandle`.
    HostStopped,
}

/// The result of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RunReport {
    /// Why it ended.
    pub stop: Stop,
    /// Each vCPU's registers where it stopped, by index.
    pub vcpus: Vec<VcpuSnapshot>,
}

/// A KVM virtual machine.
pub struct Vm {
    // Drop order is declaration order: vCPUs, then the VM, then the RAM it maps.
    pub(crate) vcpus: Vec<VcpuFd>,
    /// Shared with the PCI devices' glue, which moves memslots and ioeventfds while the
    /// guest runs; `Drop` removes those devices first, so the VM still goes before RAM.
    vm_fd: Arc<VmFd>,
    /// Device memory (the Vesper region) mapped into the guest as its own memslots.
    device_memory: Vec<MmapRegion<()>>,
    memory: GuestMemoryMmap,
    /// The host's access to guest RAM through frame grants (shares `memory`).
    frame_grants: GuestFrameGrants,
    pci: Arc<Mutex<PciRoot>>,
    config: VmConfig,
    pub(crate) irqchip: bool,
    pub(crate) boot_state: Vec<(kvm_regs, kvm_sregs)>,
    /// FPU, MSRs, run state of the 64-bit entry, restored by `reset` (None: real mode).
    pub(crate) boot_extra: Option<EntryExtra>,
    pio: Bus,
    mmio: Bus,
    control: Arc<RunControl>,
    stats: Arc<ExitStats>,
    serial: Arc<Mutex<Serial>>,
    /// Where a debugger parks the vCPUs (`debug_handle`).
    debug: Arc<DebugControl>,
    /// The host thread ids of the vCPU threads of the current run (`vcpu_threads`).
    threads: VcpuThreads,
}

/// The host threads running a VM's vCPUs now, as `(vcpu index, thread id)`: what a
/// host-kernel probe filters on (`vesper-hostprobe`). Clone it before `run`; the list
/// follows every run (threads are made per run) and is empty between runs.
#[derive(Debug, Clone, Default)]
pub struct VcpuThreads(Arc<Mutex<std::collections::BTreeMap<u32, u32>>>);

impl VcpuThreads {
    /// `(vcpu index, host thread id)` of each vCPU thread running now.
    pub fn list(&self) -> Vec<(u32, u32)> {
        let map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        map.iter().map(|(i, t)| (*i, *t)).collect()
    }

    fn set(&self, index: u32, tid: Option<u32>) {
        let mut map = self
            .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match tid {
            Some(t) => map.insert(index, t),
            None => map.remove(&index),
        };
    }
}

impl Vm {
    /// Checks `config` against the host, then creates the VM, its RAM and vCPUs, and puts
    /// the console (COM1, into `serial_out`), the debug-exit and the reset port on the
    /// port bus. No interrupt controller: a vCPU's HLT ends its run.
    pub fn new(config: VmConfig, serial_out: Box<dyn Write + Send>) -> Result<Self> {
        Self::build(config, serial_out, false)
    }

    /// As `new`, with KVM's in-kernel irqchip (PIC, IOAPIC, a LAPIC per vCPU), so
    /// `register_irqfd` works. HLT then waits in the kernel for an interrupt and never
    /// ends a run: guests stop through the debug-exit or reset port, or the deadline.
    pub fn with_irqchip(config: VmConfig, serial_out: Box<dyn Write + Send>) -> Result<Self> {
        Self::build(config, serial_out, true)
    }

    fn build(config: VmConfig, serial_out: Box<dyn Write + Send>, irqchip: bool) -> Result<Self> {
        if config.vcpus == 0 {
            return Err(HypervisorError::InvalidConfig("zero vCPUs"));
        }
        if config.mem_size == 0 || !config.mem_size.is_multiple_of(PAGE_SIZE) {
            return Err(HypervisorError::InvalidConfig(
                "guest RAM must be a non-zero multiple of 4 KiB",
            ));
        }
        let host_total = host_mem_total()?;
        if config.mem_size > host_total {
            return Err(HypervisorError::NotEnoughMemory {
                requested: config.mem_size,
                host_total,
            });
        }
        let mem_len = usize::try_from(config.mem_size)
            .map_err(|_| HypervisorError::InvalidConfig("guest RAM larger than usize"))?;

        let host_kvm = Kvm::new().map_err(HypervisorError::OpenKvm)?;
        let max = u32::try_from(host_kvm.get_max_vcpus()).unwrap_or(u32::MAX);
        if config.vcpus > max {
            return Err(HypervisorError::TooManyVcpus {
                requested: config.vcpus,
                max,
            });
        }

        let vm_fd = host_kvm.create_vm().map_err(kvm("KVM_CREATE_VM"))?;
        if let Err(e) = vm_fd.set_tss_address(TSS_ADDRESS) {
            // Only Intel without unrestricted guest needs it; kvm_pvm refuses it.
            tracing::debug!(%e, "KVM_SET_TSS_ADDR refused; continuing");
        }
        // RAM beyond 3 GiB continues at 4 GiB, around the PCI hole (see boot::layout).
        let ranges: Vec<(GuestAddress, usize)> = layout::ram_ranges(config.mem_size)
            .iter()
            .map(|r| (GuestAddress(r.start), r.len as usize))
            .collect();
        debug_assert_eq!(ranges.iter().map(|r| r.1).sum::<usize>(), mem_len);
        let memory =
            GuestMemoryMmap::<()>::from_ranges(&ranges).map_err(HypervisorError::GuestMemory)?;
        for (slot, region) in memory.iter().enumerate() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|_| HypervisorError::InvalidConfig("guest RAM region has no mapping"))?;
            let desc = kvm_userspace_memory_region {
                slot: slot as u32,
                flags: 0,
                guest_phys_addr: region.start_addr().0,
                memory_size: region.len(),
                userspace_addr: host as u64,
            };
            // SAFETY: the region is a live anonymous mapping of `memory_size` bytes owned by
            // `memory`, which the Vm keeps for as long as `vm_fd` (fields drop in order:
            // `vm_fd` before `memory`).
            unsafe { vm_fd.set_user_memory_region(desc) }
                .map_err(kvm("KVM_SET_USER_MEMORY_REGION"))?;
        }

        // The irqchip must come before the vCPUs (each gets an in-kernel LAPIC), and
        // after the RAM: under kvm_pvm a memslot registered once the irqchip exists
        // costs ~5 ms, before it ~0.02 ms (BENCHMARKS.md, start time).
        if irqchip {
            vm_fd.create_irq_chip().map_err(kvm("KVM_CREATE_IRQCHIP"))?;
        }
        let mut vcpus = Vec::new();
        let mut boot_state = Vec::new();
        for id in 0..config.vcpus {
            let fd = vm_fd
                .create_vcpu(u64::from(id))
                .map_err(kvm("KVM_CREATE_VCPU"))?;
            let regs = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
            let sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            boot_state.push((regs, sregs));
            vcpus.push(fd);
        }

        let control = Arc::new(RunControl::default());
        let serial = Arc::new(Mutex::new(Serial::new(serial_out)));
        let frame_grants = GuestFrameGrants::new(memory.clone());
        let debug = Arc::new(DebugControl::new(config.vcpus, memory.clone()));
        let mut vm = Self {
            frame_grants,
            config,
            irqchip,
            vm_fd: Arc::new(vm_fd),
            memory,
            vcpus,
            boot_state,
            boot_extra: None,
            device_memory: Vec::new(),
            pci: Arc::new(Mutex::new(PciRoot::new())),
            pio: Bus::new(),
            mmio: Bus::new(),
            control: control.clone(),
            stats: Arc::default(),
            serial: serial.clone(),
            debug,
            threads: VcpuThreads::default(),
        };
        vm.register_pio(BusRange::new(COM1_PORT.into(), SERIAL_PORT_LEN)?, serial)?;
        vm.register_pio(
            BusRange::new(DEBUG_EXIT_PORT.into(), 1)?,
            Arc::new(Mutex::new(DebugExit(control.clone()))),
        )?;
        // 0xCF9 (reset) sits inside the PCI config-address dword at 0xCF8: one device.
        let ports = PciPorts::new(vm.pci.clone(), Some(ResetControl { control, value: 0 }));
        vm.register_pio(
            BusRange::new(PCI_CONFIG_ADDRESS_PORT.into(), PCI_PORTS_LEN)?,
            Arc::new(Mutex::new(ports)),
        )?;
        Ok(vm)
    }

    /// The config it was built with.
    pub fn config(&self) -> VmConfig {
        self.config
    }

    /// The KVM VM, for the layers above (ioeventfd, irqfd).
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// Guest RAM.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// A handle that ends the current or next run from any thread.
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle(self.control.clone())
    }

    /// The host's access to guest RAM frames the guest granted (see `grants`); clone it
    /// to use it from another thread while the VM runs.
    pub fn frame_grants(&self) -> &GuestFrameGrants {
        &self.frame_grants
    }

    /// A debugger's handle on this VM (pause, registers, memory, guest debug), for use
    /// from another thread while `run` runs.
    pub fn debug_handle(&self) -> DebugHandle {
        DebugHandle::new(self.debug.clone(), &self.vm_fd)
    }

    /// The host threads of its vCPUs, for use from another thread while `run` runs.
    pub fn vcpu_threads(&self) -> VcpuThreads {
        self.threads.clone()
    }

    /// The console, e.g. to queue input.
    pub fn serial(&self) -> Arc<Mutex<Serial>> {
        self.serial.clone()
    }

    /// Guest accesses that hit nothing, so far.
    pub fn unmapped_accesses(&self) -> UnmappedAccesses {
        self.stats.snapshot()
    }

    /// Copies `image` into guest RAM at `addr`.
    pub fn load(&self, addr: u64, image: &[u8]) -> Result<()> {
        let err = || HypervisorError::LoadOutOfRange {
            addr,
            len: image.len(),
        };
        if !layout::ram_contains(self.config.mem_size, addr, image.len() as u64) {
            return Err(err());
        }
        self.memory
            .write_slice(image, GuestAddress(addr))
            .map_err(|_| err())
    }

    /// Adds a device on the port bus.
    pub fn register_pio(&mut self, range: BusRange, device: SharedDevice) -> Result<()> {
        if range.last() > u64::from(u16::MAX) {
            return Err(HypervisorError::PortRangeTooLarge {
                base: range.base(),
                len: range.len(),
            });
        }
        self.pio.insert(range, device)
    }

    /// Adds a device on the MMIO bus; it must not overlap guest RAM nor a decoded PCI
    /// BAR, and BARs cannot be moved over it afterwards.
    pub fn register_mmio(&mut self, range: BusRange, device: SharedDevice) -> Result<()> {
        if let Some(r) = layout::ram_overlapping(self.config.mem_size, range.base(), range.last()) {
            return Err(HypervisorError::BusOverlap {
                base: range.base(),
                len: range.len(),
                other_base: r.start,
                other_len: r.len,
            });
        }
        // BARs must not move over it, nor may it go over a BAR.
        if let Err(bar) = lock_pci(&self.pci).reserve(range.base(), range.base() + range.len()) {
            return Err(HypervisorError::BusOverlap {
                base: range.base(),
                len: range.len(),
                other_base: bar.addr,
                other_len: bar.size,
            });
        }
        self.mmio.insert(range, device)
    }

    /// An eventfd that raises `gsi` (edge) each time it is written: KVM's irqfd. Needs
    /// the in-kernel irqchip (`with_irqchip`); GSIs 0-15 reach the PIC and IOAPIC.
    pub fn register_irqfd(&self, gsi: u32) -> Result<EventFd> {
        if !self.irqchip {
            return Err(HypervisorError::InvalidConfig(
                "irqfd needs the in-kernel irqchip (Vm::with_irqchip)",
            ));
        }
        let fd = EventFd::new(libc::EFD_NONBLOCK).map_err(HypervisorError::EventFd)?;
        self.vm_fd
            .register_irqfd(&fd, gsi)
            .map_err(kvm("KVM_IRQFD"))?;
        Ok(fd)
    }

    /// The PCI bus 0 (host bridge at 00:00.0, devices added by the VMM).
    pub fn pci(&self) -> Arc<Mutex<PciRoot>> {
        self.pci.clone()
    }

    /// Adds the Vesper device at 00:01.0 (see `vesper`): BAR0 registers with one
    /// ioeventfd per host doorbell vector, BAR1 MSI-X (routes and irqfds with the
    /// in-kernel irqchip), BAR2 = `config.region` mapped shared as its own memslot. BARs
    /// at 0 in `config` are placed by the VMM in the PCI hole; the guest may move them.
    pub fn add_vesper_device(&mut self, config: VesperConfig<'_>) -> Result<VesperHandle> {
        let region_len = vesper::region_len(&config)?;
        let file = std::fs::File::from(
            config
                .region
                .try_clone_to_owned()
                .map_err(HypervisorError::EventFd)?,
        );
        let mapping = MmapRegion::<()>::from_file(FileOffset::new(file, 0), region_len)
            .map_err(HypervisorError::MapRegion)?;
        let slot = u32::try_from(self.memory.num_regions() + self.device_memory.len())
            .map_err(|_| HypervisorError::InvalidConfig("too many memslots"))?;
        let ram = self
            .memory
            .iter()
            .map(|r| (r.start_addr().0, r.start_addr().0 + r.len()))
            .collect();
        let handle = vesper::attach(
            vesper::Attach {
                vm_fd: self.vm_fd.clone(),
                pci: self.pci.clone(),
                irqchip: self.irqchip,
                ram,
                phys_bits: guest_phys_bits(),
                slot,
                host_addr: mapping.as_ptr() as u64,
            },
            &config,
        )?;
        // Kept until the Vm drops, after the device (see `Drop`).
        self.device_memory.push(mapping);
        self.mmio.set_fallback(Arc::new(PciMmio(self.pci.clone())));
        Ok(handle)
    }

    /// Starts every vCPU in real mode at `entry`; also the state `reset` returns to.
    pub fn set_real_mode_entry(&mut self, entry: RealModeEntry) -> Result<()> {
        for (fd, state) in self.vcpus.iter().zip(self.boot_state.iter_mut()) {
            let mut sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
                seg.selector = entry.segment;
                seg.base = u64::from(entry.segment) << 4;
            }
            sregs.cr0 &= !1; // real mode
            let regs = kvm_regs {
                rip: entry.ip.into(),
                rsp: entry.sp.into(),
                rflags: 0x2,
                ..Default::default()
            };
            fd.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
            fd.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
            *state = (regs, sregs);
        }
        self.boot_extra = None;
        Ok(())
    }

    /// Puts every vCPU back in its boot state, the console and the PCI functions in their
    /// power-on state (BARs where the VMM placed them, MSI-X off). RAM is kept, as on a
    /// real machine.
    pub fn reset(&mut self) -> Result<()> {
        if self.vcpus.len() != self.boot_state.len() {
            return Err(HypervisorError::VmUnusable);
        }
        for (i, (fd, (regs, sregs))) in self.vcpus.iter().zip(&self.boot_state).enumerate() {
            fd.set_sregs(sregs).map_err(kvm("KVM_SET_SREGS"))?;
            fd.set_regs(regs).map_err(kvm("KVM_SET_REGS"))?;
            if let Some(extra) = &self.boot_extra {
                extra.apply(i, fd)?;
            }
        }
        self.serial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .reset();
        // PCI functions as after power-on and firmware: BARs where the VMM put them.
        lock_pci(&self.pci).reset();
        self.control.clear();
        Ok(())
    }

    /// Runs every vCPU on its own thread until all halt, the guest asks to stop, a vCPU
    /// exits unexpectedly, or `timeout` passes (then every vCPU is kicked out and
    /// `HypervisorError::Timeout` returned). The vCPUs can be run again afterwards.
    pub fn run(&mut self, timeout: Duration) -> Result<RunReport> {
        if self.vcpus.len() != self.boot_state.len() {
            return Err(HypervisorError::VmUnusable);
        }
        install_kick_handler()?;
        // A host stop that arrived between runs ends this one before it starts.
        if self.control.peek_request() == Some(StopRequest::Host) {
            self.control.clear();
            return Ok(RunReport {
                stop: Stop::HostStopped,
                vcpus: Vec::new(),
            });
        }
        self.control.clear();
        let ctx = Arc::new(VcpuContext {
            pio: self.pio.clone(),
            mmio: self.mmio.clone(),
            control: self.control.clone(),
            stats: self.stats.clone(),
            debug: self.debug.clone(),
        });
        let (tx, rx) = mpsc::channel::<VcpuMsg>();
        let mut threads: Vec<JoinHandle<()>> = Vec::new();
        let mut spawn_error = None;
        for (index, mut fd) in (0u32..).zip(std::mem::take(&mut self.vcpus)) {
            let ctx = ctx.clone();
            let tx = tx.clone();
            let tids = self.threads.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("vcpu{index}"))
                .spawn(move || {
                    // SAFETY: gettid takes no arguments and only returns the caller's id.
                    let tid = unsafe { libc::gettid() };
                    tids.set(index, u32::try_from(tid).ok());
                    let result = run_vcpu(index, &mut fd, &ctx);
                    tids.set(index, None);
                    // The receiver only goes away if `run` itself gave up on this vCPU.
                    let _ = tx.send((index, fd, result));
                });
            match spawned {
                Ok(t) => threads.push(t),
                Err(e) => {
                    // The fd went down with the closure: this VM cannot run again.
                    self.control.stop();
                    spawn_error = Some(HypervisorError::SpawnThread(e));
                    break;
                }
            }
        }
        drop(tx);
        // `Duration::MAX` means "no deadline": a year is as good and cannot overflow.
        let deadline = (spawn_error.is_none()).then(|| {
            let now = Instant::now();
            now.checked_add(timeout)
                .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
        });
        let (results, timed_out) = self.collect(&rx, threads, deadline)?;
        if let Some(e) = spawn_error {
            return Err(e);
        }

        let mut snapshots = Vec::new();
        let mut first_error = None;
        for r in results {
            match r {
                Ok((_, snap)) => snapshots.push(snap),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        let request = self.control.take_request();
        self.control.clear();
        if let Some(e) = first_error {
            return Err(e);
        }
        let stop = match request {
            Some(StopRequest::PowerOff(code)) => Stop::PowerOff(code),
            Some(StopRequest::Reset) => Stop::ResetRequested,
            Some(StopRequest::Host) => Stop::HostStopped,
            None if timed_out => {
                return Err(HypervisorError::Timeout {
                    after: timeout,
                    vcpus: snapshots,
                })
            }
            None => Stop::Halted,
        };
        Ok(RunReport {
            stop,
            vcpus: snapshots,
        })
    }

    /// Waits for every thread in `threads` (vCPU `i` is `threads[i]`) to report and takes
    /// the vCPU fds back. Until `deadline` (none: stop at once) any report but a halt
    /// stops the others; at the deadline all are stopped. Stopping sets the stop flag and
    /// kicks every unreported thread each `KICK_INTERVAL`, for at most `STOP_GRACE`.
    /// Returns the results by vCPU index and whether the deadline did the stopping.
    fn collect(
        &mut self,
        rx: &mpsc::Receiver<VcpuMsg>,
        threads: Vec<JoinHandle<()>>,
        deadline: Option<Instant>,
    ) -> Result<(Vec<VcpuResult>, bool)> {
        let n = threads.len();
        let mut results: Vec<Option<VcpuResult>> = (0..n).map(|_| None).collect();
        let mut fds: Vec<Option<VcpuFd>> = (0..n).map(|_| None).collect();
        let mut pending = n;
        let mut stopping_since = if deadline.is_none() {
            self.control.stop();
            Some(Instant::now())
        } else {
            None
        };
        let mut timed_out = false;
        let kick_pending = |results: &[Option<VcpuResult>]| {
            for (t, r) in threads.iter().zip(results) {
                if r.is_none() {
                    kick(t.as_pthread_t());
                }
            }
        };
        if stopping_since.is_some() {
            kick_pending(&results);
        }
        while pending > 0 {
            // Until stopping, wake up every `HOST_STOP_POLL` to see whether a
            // `StopHandle` (or a device) asked for a stop: a vCPU halted in the kernel
            // would otherwise not notice until the deadline.
            let wait = match (stopping_since, deadline) {
                (None, Some(d)) => d
                    .saturating_duration_since(Instant::now())
                    .min(HOST_STOP_POLL),
                _ => KICK_INTERVAL,
            };
            if stopping_since.is_none() && self.control.stop_requested() {
                stopping_since = Some(Instant::now());
                kick_pending(&results);
                continue;
            }
            match rx.recv_timeout(wait) {
                Ok((index, fd, result)) => {
                    let i = index as usize;
                    let terminal = !matches!(result, Ok((VcpuEnd::Halted, _)));
                    if let (Some(slot), Some(fd_slot)) = (results.get_mut(i), fds.get_mut(i)) {
                        *slot = Some(result);
                        *fd_slot = Some(fd);
                        pending -= 1;
                    }
                    if terminal && stopping_since.is_none() {
                        self.control.stop();
                        stopping_since = Some(Instant::now());
                        kick_pending(&results);
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => match stopping_since {
                    None if deadline.is_some_and(|d| Instant::now() < d) => {}
                    None => {
                        timed_out = true;
                        self.control.stop();
                        stopping_since = Some(Instant::now());
                        kick_pending(&results);
                    }
                    Some(since) if since.elapsed() > STOP_GRACE => {
                        let stuck = results.iter().position(Option::is_none).unwrap_or(0);
                        tracing::error!(vcpu = stuck, "vCPU did not stop; VM unusable");
                        // Threads still running keep their fds; the others are dropped.
                        return Err(HypervisorError::VcpuUnresponsive(stuck as u32));
                    }
                    Some(_) => kick_pending(&results),
                },
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let lost = results.iter().position(Option::is_none).unwrap_or(0);
                    return Err(HypervisorError::VcpuLost(lost as u32));
                }
            }
        }
        for t in threads {
            // Each thread has already sent its report; a panic after that changes nothing.
            let _ = t.join();
        }
        self.vcpus = fds.into_iter().flatten().collect();
        Ok((results.into_iter().flatten().collect(), timed_out))
    }
}

type VcpuResult = Result<(VcpuEnd, VcpuSnapshot)>;
type VcpuMsg = (u32, VcpuFd, VcpuResult);

impl Drop for Vm {
    fn drop(&mut self) {
        // PCI glue holds the VM fd and KVM resources on the device memory: remove it
        // first, so the fields then drop in order (vCPUs, VM, device memory, RAM).
        lock_pci(&self.pci).remove_devices();
        self.debug.end();
    }
}

fn lock_pci(pci: &Mutex<PciRoot>) -> std::sync::MutexGuard<'_, PciRoot> {
    pci.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The guest's physical address width: KVM's CPUID leaf 0x8000_0008 (36 bits if absent).
fn guest_phys_bits() -> u8 {
    let bits = Kvm::new()
        .ok()
        .and_then(|k| {
            k.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
                .ok()
        })
        .and_then(|c| {
            c.as_slice()
                .iter()
                .find(|e| e.function == 0x8000_0008)
                .map(|e| (e.eax & 0xff) as u8)
        });
    match bits {
        Some(b) if (32..=52).contains(&b) => b,
        _ => crate::pci::DEFAULT_PHYS_BITS,
    }
}

/// The host's `MemTotal` in bytes.
fn host_mem_total() -> Result<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").map_err(HypervisorError::HostMemInfo)?;
    text.lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|rest| rest.trim().strip_suffix("kB"))
        .and_then(|kb| kb.trim().parse::<u64>().ok())
        .and_then(|kb| kb.checked_mul(1024))
        .ok_or_else(|| {
            HypervisorError::HostMemInfo(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                "no MemTotal line",
            ))
        })
}
