//! The crate's one error type.

use std::path::PathBuf;
use std::time::Duration;

use crate::vcpu_state::{ExitKind, VcpuSnapshot};

/// Why building or running a VM failed.
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// The config is malformed (zero vCPUs, unaligned RAM size, …).
    #[error("invalid VM config: {0}")]
    InvalidConfig(&'static str),
    /// More vCPUs than this host's KVM allows.
    #[error("{requested} vCPUs requested, KVM on this host allows at most {max}")]
    TooManyVcpus {
        /// Requested count.
        requested: u32,
        /// KVM's `KVM_CAP_MAX_VCPUS`.
        max: u32,
    },
    /// More guest RAM than the host has.
    #[error(
        "{} MiB of guest memory requested but the host has {} MiB in all; give the VM less memory",
        requested >> 20,
        host_total >> 20
    )]
    NotEnoughMemory {
        /// Requested bytes.
        requested: u64,
        /// The host's `MemTotal`.
        host_total: u64,
    },
    /// The host's memory size could not be read.
    #[error("cannot read the host's memory size from /proc/meminfo")]
    HostMemInfo(#[source] std::io::Error),
    /// A KVM ioctl failed.
    #[error("KVM {op} failed")]
    Kvm {
        /// Which operation.
        op: &'static str,
        /// The errno.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// Guest RAM could not be allocated.
    #[error("cannot allocate guest RAM")]
    GuestMemory(#[source] vm_memory::mmap::FromRangesError),
    /// An image does not fit in guest RAM at the given address.
    #[error("{len} bytes at guest address {addr:#x} do not fit in guest RAM")]
    LoadOutOfRange {
        /// Guest physical address.
        addr: u64,
        /// Image length.
        len: usize,
    },
    /// A bus range is empty or wraps around the address space.
    #[error("bus range {base:#x}+{len:#x} is empty or wraps")]
    InvalidBusRange {
        /// First address.
        base: u64,
        /// Length.
        len: u64,
    },
    /// A bus range overlaps a range already on the bus (or guest RAM, for MMIO).
    #[error("bus range {base:#x}+{len:#x} overlaps {other_base:#x}+{other_len:#x}")]
    BusOverlap {
        /// First address of the refused range.
        base: u64,
        /// Its length.
        len: u64,
        /// First address of the range it collides with.
        other_base: u64,
        /// That range's length.
        other_len: u64,
    },
    /// A port range goes beyond port 0xffff.
    #[error("port range {base:#x}+{len:#x} goes beyond port 0xffff")]
    PortRangeTooLarge {
        /// First port.
        base: u64,
        /// Length.
        len: u64,
    },
    /// The kick signal handler could not be installed.
    #[error("cannot install the vCPU kick signal handler (errno {0})")]
    SignalHandler(i32),
    /// A vCPU thread could not be started.
    #[error("cannot start vCPU thread")]
    SpawnThread(#[source] std::io::Error),
    /// A vCPU thread did not leave `KVM_RUN` after being kicked; the VM is unusable.
    #[error("vCPU {0} did not stop after being kicked")]
    VcpuUnresponsive(u32),
    /// A vCPU thread panicked or vanished; the VM is unusable.
    #[error("vCPU {0} thread ended without reporting")]
    VcpuLost(u32),
    /// An earlier run lost vCPUs; the VM cannot run again.
    #[error("the VM lost vCPUs in an earlier run")]
    VmUnusable,
    /// The guest stopped the vCPU in a way the VMM does not handle.
    #[error("vCPU {vcpu}: unexpected exit {kind}; {regs}")]
    UnexpectedExit {
        /// vCPU index.
        vcpu: u32,
        /// What KVM reported.
        kind: ExitKind,
        /// Registers at the exit.
        regs: Box<VcpuSnapshot>,
    },
    /// An eventfd (or a region fd duplicate) could not be created.
    #[error("cannot create an eventfd or duplicate a region fd")]
    EventFd(#[source] std::io::Error),
    /// A device region could not be mapped.
    #[error("cannot map a device region")]
    MapRegion(#[source] vm_memory::mmap::MmapRegionError),
    /// A BAR cannot go where the config asks (or where the PCI root would decode it).
    #[error(
        "BAR{bar} at {addr:#x}+{size:#x} overlaps RAM, an APIC, a device or another BAR, is \
         misaligned, or lies beyond the guest's address width: choose another address, or 0 \
         to let the VMM place it"
    )]
    BarPlacement {
        /// BAR index.
        bar: usize,
        /// Requested address.
        addr: u64,
        /// BAR size.
        size: u64,
    },
    /// KVM refused to map a BAR (its memslot or doorbell ioeventfds) where it may go.
    #[error("KVM refused to map BAR{bar} at {addr:#x} (the log has KVM's error): another memslot or ioeventfd is there")]
    BarMapFailed {
        /// BAR index.
        bar: usize,
        /// Its address.
        addr: u64,
    },
    /// Automatic placement found no room for a BAR.
    #[error(
        "no room for BAR{bar} ({size:#x} bytes) in the PCI hole or above RAM: use a smaller region"
    )]
    NoRoomForBar {
        /// BAR index.
        bar: usize,
        /// BAR size.
        size: u64,
    },
    /// An MSI-X vector the device does not have.
    #[error("MSI-X vector {vector} does not exist: the device has {vectors}")]
    NoSuchVector {
        /// Requested vector.
        vector: u16,
        /// Vectors the device has.
        vectors: u16,
    },
    /// The device's `Vm` was dropped; its handle cannot reach the guest any more.
    #[error("the VM of this device is gone (its Vm was dropped)")]
    VmGone,
    /// The guest enabled MSI-X but the VM cannot inject MSIs.
    #[error("the guest enabled MSI-X but the VM has no in-kernel irqchip: build it with Vm::with_irqchip")]
    MsixNeedsIrqchip,
    /// A grant of guest RAM frames failed its entry checks (guest misbehaviour).
    #[error("guest RAM frame grant refused")]
    FrameGrant(#[source] vesper_shmem::ShmemError),
    /// A frame grant names addresses that are not all guest RAM (guest misbehaviour).
    #[error("grant {grant_ref} names {gpa:#x}+{len:#x}, which is not all guest RAM (PCI hole, device memory or past the end of RAM)")]
    GrantNotGuestRam {
        /// Grant reference.
        grant_ref: u32,
        /// Guest-physical address in the entry.
        gpa: u64,
        /// Length in the entry.
        len: u32,
    },
    /// The host was asked for bytes beyond a frame grant (the guest announced more than
    /// it granted).
    #[error("bytes {at:#x}+{len:#x} lie outside grant {grant_ref} of {granted:#x} bytes")]
    GrantOutside {
        /// Grant reference.
        grant_ref: u32,
        /// Granted length.
        granted: u32,
        /// Offset asked for inside the grant.
        at: u64,
        /// Bytes asked for.
        len: u64,
    },
    /// Guest RAM refused a copy the grant checks allowed (a VMM bug, not the guest's).
    #[error("cannot copy {len:#x} bytes at guest address {gpa:#x}")]
    GuestRamAccess {
        /// Guest-physical address.
        gpa: u64,
        /// Bytes.
        len: u64,
        /// What vm-memory said.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
    /// A kernel or guest image could not be read.
    #[error("cannot read the kernel image {}: check the path and its permissions", .path.display())]
    ImageRead {
        /// The image.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The file is neither a bzImage nor an ELF file.
    #[error(
        "{} is not a kernel: neither a bzImage (no \"HdrS\" setup header at 0x202) nor an \
         ELF file; pass a bzImage, an ELF vmlinux or a static ELF64 guest",
        .path.display()
    )]
    NotAKernel {
        /// The file.
        path: PathBuf,
    },
    /// The image is shorter than its own headers say.
    #[error(
        "{} is truncated: {len} bytes, but its headers need {needed}; copy or build it again",
        .path.display()
    )]
    TruncatedImage {
        /// The image.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The length its headers need.
        needed: u64,
    },
    /// An ELF file for another machine.
    #[error("{} is an ELF file for machine {machine}, not x86-64 (62); build it for x86_64", .path.display())]
    WrongArchitecture {
        /// The image.
        path: PathBuf,
        /// Its `e_machine`.
        machine: u16,
    },
    /// A kernel or ELF this loader does not boot (32-bit ELF, no 64-bit entry, …).
    #[error("{} cannot be booted: {reason}", .path.display())]
    UnsupportedImage {
        /// The image.
        path: PathBuf,
        /// What is wrong and what to use instead.
        reason: &'static str,
    },
    /// The kernel (with its decompression space) does not fit in RAM below the hole.
    #[error(
        "kernel {} needs guest RAM up to {needed:#x}, but RAM below the PCI hole ends at \
         {ram_end:#x}; give the VM more RAM",
        .path.display()
    )]
    KernelTooLarge {
        /// The image.
        path: PathBuf,
        /// One past the last address the kernel needs.
        needed: u64,
        /// One past the last RAM address below the hole.
        ram_end: u64,
    },
    /// A loadable ELF segment lies outside guest RAM.
    #[error(
        "{}: ELF segment {index} [{start:#x}, {end:#x}) is outside guest RAM; link it \
         inside RAM or give the VM more",
        .path.display()
    )]
    SegmentOutsideRam {
        /// The image.
        path: PathBuf,
        /// Program header index.
        index: usize,
        /// First guest address.
        start: u64,
        /// One past the last.
        end: u64,
    },
    /// A loadable ELF segment overlaps the zero page, page tables or command line.
    #[error(
        "{}: ELF segment {index} [{start:#x}, {end:#x}) overlaps the boot structures \
         [0, {boot_end:#x}) (GDT, zero page, stack, page tables, command line); link it \
         at or above {boot_end:#x}",
        .path.display()
    )]
    SegmentOverlapsBoot {
        /// The image.
        path: PathBuf,
        /// Program header index.
        index: usize,
        /// First guest address.
        start: u64,
        /// One past the last.
        end: u64,
        /// Where the boot structures end.
        boot_end: u64,
    },
    /// linux-loader refused or failed to copy the image.
    #[error("loading {} into guest RAM failed", .path.display())]
    KernelLoad {
        /// The image.
        path: PathBuf,
        /// linux-loader's error.
        #[source]
        source: linux_loader::loader::Error,
    },
    /// The initramfs could not be opened or read.
    #[error("cannot read the initramfs {}: check the path and its permissions", .path.display())]
    InitramfsRead {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The initramfs does not fit between the kernel and the highest address allowed.
    #[error(
        "initramfs {} is {size} bytes, but only {room} bytes of guest RAM are free for it \
         (between the kernel's end and {limit:#x}); give the VM more RAM or use a smaller \
         initramfs",
        .path.display()
    )]
    InitramfsTooLarge {
        /// The file.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Free bytes.
        room: u64,
        /// The highest end address allowed (RAM below the hole, the kernel's
        /// `initrd_addr_max`).
        limit: u64,
    },
    /// The command line does not fit.
    #[error("the kernel command line is {len} bytes, at most {max} fit; shorten it")]
    CmdlineTooLong {
        /// Its length.
        len: usize,
        /// The most that fits (the kernel's `cmdline_size`, or the reserved area).
        max: usize,
    },
    /// The command line has bytes a kernel cannot take.
    #[error("invalid kernel command line ({0}); use printable ASCII without NUL or newlines")]
    InvalidCmdline(String),
    /// The run's deadline passed; every vCPU was stopped.
    #[error("guest did not stop within {after:?}")]
    Timeout {
        /// The deadline given to `run`.
        after: Duration,
        /// Registers of each vCPU where it was stopped.
        vcpus: Vec<VcpuSnapshot>,
    },
    /// A debugger asked for vCPU state while the VM runs.
    #[error("the VM is running: pause it first (DebugHandle::pause)")]
    VmNotPaused,
    /// The vCPUs did not reach their checkpoint in time.
    #[error(
        "the vCPUs did not stop within {waited:?}: the VM is not running (between runs, or \
         every vCPU halted for good); try again"
    )]
    PauseTimeout {
        /// How long the pause waited.
        waited: Duration,
    },
    /// The VM is gone.
    #[error("the VM has ended: there is nothing left to debug")]
    VmEnded,
    /// A vCPU index the VM does not have.
    #[error("vCPU {vcpu} does not exist: the VM has {count} (0 to {count} - 1)")]
    NoSuchVcpu {
        /// Asked for.
        vcpu: u32,
        /// vCPUs the VM has.
        count: u32,
    },
    /// A vCPU whose thread is not in the run (it halted for good, or the VM is between
    /// runs).
    #[error("vCPU {0} is not in the current run (it halted for good or the VM is rebooting)")]
    VcpuAway(u32),
    /// Guest debug this host's KVM does not allow.
    #[error("this host's KVM does not allow {what}: {why}")]
    GuestDebugUnsupported {
        /// What was asked for.
        what: &'static str,
        /// Why not, and what to use instead.
        why: &'static str,
    },
    /// A register write the VMM does not make.
    #[error("{0}")]
    RegisterRefused(&'static str),
    /// A debugger's guest-physical access outside guest RAM.
    #[error(
        "guest-physical {gpa:#x}+{len:#x} is not guest RAM (a hole, a device or past the end)"
    )]
    NotGuestRam {
        /// First address.
        gpa: u64,
        /// Bytes.
        len: u64,
    },
}

/// Shorthand.
pub type Result<T> = std::result::Result<T, HypervisorError>;

pub(crate) fn kvm(op: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> HypervisorError {
    move |source| HypervisorError::Kvm { op, source }
}
