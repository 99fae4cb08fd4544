//! The vCPU run loop, register snapshots and the kick that pulls a vCPU out of `KVM_RUN`.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};

use kvm_bindings::kvm_segment;
use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::debug::DebugControl;
use crate::error::{kvm, HypervisorError, Result};
use crate::power::RunControl;

/// Unmapped accesses logged per VM before further ones are only counted.
pub const UNMAPPED_LOG_LIMIT: u64 = 16;

/// What KVM reported when the VMM could not go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// `KVM_EXIT_SHUTDOWN` (e.g. a triple fault).
    Shutdown,
    /// `KVM_EXIT_FAIL_ENTRY` with the hardware reason.
    FailEntry {
        /// `hardware_entry_failure_reason`.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// `KVM_EXIT_INTERNAL_ERROR` with its sub-error.
    InternalError {
        /// `internal.suberror`.
        suberror: u32,
    },
    /// `KVM_EXIT_UNKNOWN`.
    Unknown,
    /// Any other exit this layer does not handle.
    Other(String),
    /// `KVM_RUN` itself failed with this errno.
    RunFailed(i32),
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shutdown => write!(f, "SHUTDOWN"),
            Self::FailEntry { reason, cpu } => {
                write!(f, "FAIL_ENTRY (reason {reason:#x}, cpu {cpu})")
            }
            Self::InternalError { suberror } => write!(f, "INTERNAL_ERROR (suberror {suberror})"),
            Self::Unknown => write!(f, "UNKNOWN"),
            Self::Other(s) => write!(f, "{s}"),
            Self::RunFailed(errno) => write!(f, "KVM_RUN errno {errno}"),
        }
    }
}

/// A segment register as the snapshot keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit.
    pub limit: u32,
}

impl From<&kvm_segment> for Segment {
    fn from(s: &kvm_segment) -> Self {
        Self {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
        }
    }
}

/// A vCPU's registers at a stop, for reports and errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuSnapshot {
    /// vCPU index.
    pub vcpu: u32,
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8 … r15.
    pub gprs: [u64; 16],
    /// cs, ds, es, fs, gs, ss.
    pub segments: [Segment; 6],
    /// cr0.
    pub cr0: u64,
    /// cr3.
    pub cr3: u64,
    /// cr4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const SEG_NAMES: [&str; 6] = ["cs", "ds", "es", "fs", "gs", "ss"];

impl VcpuSnapshot {
    /// Reads the registers of `vcpu`.
    pub fn capture(index: u32, vcpu: &VcpuFd) -> Result<Self> {
        let r = vcpu.get_regs().map_err(kvm("KVM_GET_REGS"))?;
        let s = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
        Ok(Self {
            vcpu: index,
            rip: r.rip,
            rflags: r.rflags,
            gprs: [
                r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11,
                r.r12, r.r13, r.r14, r.r15,
            ],
            segments: [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss].map(Segment::from),
            cr0: s.cr0,
            cr3: s.cr3,
            cr4: s.cr4,
            efer: s.efer,
        })
    }

    /// A general register by name order (0 = rax … 15 = r15).
    pub fn gpr(&self, i: usize) -> u64 {
        self.gprs.get(i).copied().unwrap_or(0)
    }
}

impl fmt::Display for VcpuSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rip={:#x} rflags={:#x}", self.rip, self.rflags)?;
        for (name, v) in GPR_NAMES.iter().zip(self.gprs) {
            write!(f, " {name}={v:#x}")?;
        }
        for (name, s) in SEG_NAMES.iter().zip(self.segments) {
            write!(f, " {name}={:#x}@{:#x}", s.selector, s.base)?;
        }
        write!(
            f,
            " cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.cr0, self.cr3, self.cr4, self.efer
        )
    }
}

/// Counts of guest accesses that hit nothing.
#[derive(Debug, Default)]
pub(crate) struct ExitStats {
    pub(crate) pio_reads: AtomicU64,
    pub(crate) pio_writes: AtomicU64,
    pub(crate) mmio_reads: AtomicU64,
    pub(crate) mmio_writes: AtomicU64,
}

/// A copy of the unmapped-access counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct UnmappedAccesses {
    /// Port reads that hit no device.
    pub pio_reads: u64,
    /// Port writes that hit no device.
    pub pio_writes: u64,
    /// MMIO reads that hit neither RAM nor a device.
    pub mmio_reads: u64,
    /// MMIO writes that hit neither RAM nor a device.
    pub mmio_writes: u64,
}

impl UnmappedAccesses {
    /// All four added.
    pub fn total(&self) -> u64 {
        self.pio_reads + self.pio_writes + self.mmio_reads + self.mmio_writes
    }
}

impl ExitStats {
    pub(crate) fn snapshot(&self) -> UnmappedAccesses {
        UnmappedAccesses {
            pio_reads: self.pio_reads.load(Ordering::Relaxed),
            pio_writes: self.pio_writes.load(Ordering::Relaxed),
            mmio_reads: self.mmio_reads.load(Ordering::Relaxed),
            mmio_writes: self.mmio_writes.load(Ordering::Relaxed),
        }
    }

    fn record(&self, counter: &AtomicU64, what: &str, addr: u64, len: usize) {
        counter.fetch_add(1, Ordering::Relaxed);
        let total = self.snapshot().total();
        if total <= UNMAPPED_LOG_LIMIT {
            tracing::warn!(addr, len, "guest {what} to an unmapped address");
        }
        if total == UNMAPPED_LOG_LIMIT {
            tracing::warn!("further unmapped guest accesses are only counted");
        }
    }
}

/// What a vCPU thread needs during a run.
pub(crate) struct VcpuContext {
    pub(crate) pio: Bus,
    pub(crate) mmio: Bus,
    pub(crate) control: Arc<RunControl>,
    pub(crate) stats: Arc<ExitStats>,
    pub(crate) debug: Arc<DebugControl>,
}

/// How a vCPU's run ended when it was not an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum VcpuEnd {
    /// The guest executed HLT (no interrupt controller: nothing can wake it).
    Halted,
    /// The run was stopped (a stop request, another vCPU, or the deadline).
    Stopped,
}

enum Step {
    Continue,
    Halted,
    Unexpected(ExitKind),
}

impl VcpuContext {
    fn pio_write(&self, port: u16, data: &[u8]) {
        if !self.pio.write(u64::from(port), data) {
            self.stats.record(
                &self.stats.pio_writes,
                "port write",
                port.into(),
                data.len(),
            );
        }
    }

    fn pio_read(&self, port: u16, data: &mut [u8]) {
        if !self.pio.read(u64::from(port), data) {
            data.fill(0xff);
            self.stats
                .record(&self.stats.pio_reads, "port read", port.into(), data.len());
        }
    }

    fn mmio_write(&self, addr: u64, data: &[u8]) {
        if !self.mmio.write(addr, data) {
            self.stats
                .record(&self.stats.mmio_writes, "MMIO write", addr, data.len());
        }
    }

    fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        if !self.mmio.read(addr, data) {
            data.fill(0xff);
            self.stats
                .record(&self.stats.mmio_reads, "MMIO read", addr, data.len());
        }
    }
}

/// Runs `vcpu` until it halts, the run is stopped, or something unexpected happens.
/// Returns the end and the registers there. A debugger may park it in between.
pub(crate) fn run_vcpu(
    index: u32,
    vcpu: &mut VcpuFd,
    ctx: &VcpuContext,
) -> Result<(VcpuEnd, VcpuSnapshot)> {
    ctx.debug.enter(index);
    let end = run_loop(index, vcpu, ctx);
    ctx.debug.leave(index);
    end
}

fn run_loop(index: u32, vcpu: &mut VcpuFd, ctx: &VcpuContext) -> Result<(VcpuEnd, VcpuSnapshot)> {
    loop {
        ctx.debug.checkpoint(index, vcpu, &ctx.control);
        if ctx.control.stop_requested() {
            return Ok((VcpuEnd::Stopped, VcpuSnapshot::capture(index, vcpu)?));
        }
        let step = match vcpu.run() {
            Ok(VcpuExit::IoOut(port, data)) => {
                ctx.pio_write(port, data);
                Step::Continue
            }
            Ok(VcpuExit::IoIn(port, data)) => {
                ctx.pio_read(port, data);
                Step::Continue
            }
            Ok(VcpuExit::MmioWrite(addr, data)) => {
                ctx.mmio_write(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::MmioRead(addr, data)) => {
                ctx.mmio_read(addr, data);
                Step::Continue
            }
            Ok(VcpuExit::Hlt) => Step::Halted,
            // Only with guest debug on: the debugger hears of it, every vCPU parks.
            Ok(VcpuExit::Debug(arch)) => {
                ctx.debug.debug_exit(index, &arch);
                Step::Continue
            }
            Ok(VcpuExit::Intr) => Step::Continue,
            Ok(VcpuExit::Shutdown) => Step::Unexpected(ExitKind::Shutdown),
            Ok(VcpuExit::FailEntry(reason, cpu)) => {
                Step::Unexpected(ExitKind::FailEntry { reason, cpu })
            }
            Ok(VcpuExit::InternalError) => Step::Unexpected(ExitKind::InternalError {
                suberror: internal_suberror(vcpu),
            }),
            Ok(VcpuExit::Unknown) => Step::Unexpected(ExitKind::Unknown),
            Ok(other) => Step::Unexpected(ExitKind::Other(format!("{other:?}"))),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Step::Continue,
            Err(e) => Step::Unexpected(ExitKind::RunFailed(e.errno())),
        };
        match step {
            Step::Continue => {}
            Step::Halted => return Ok((VcpuEnd::Halted, VcpuSnapshot::capture(index, vcpu)?)),
            Step::Unexpected(kind) => {
                let regs = Box::new(VcpuSnapshot::capture(index, vcpu)?);
                tracing::error!(vcpu = index, %kind, %regs, "unexpected vCPU exit");
                return Err(HypervisorError::UnexpectedExit {
                    vcpu: index,
                    kind,
                    regs,
                });
            }
        }
    }
}

fn internal_suberror(vcpu: &mut VcpuFd) -> u32 {
    let run = vcpu.get_kvm_run();
    // SAFETY: called right after KVM_RUN returned exit reason KVM_EXIT_INTERNAL_ERROR, for
    // which the kernel fills the `internal` member of the union; it is plain integers.
    unsafe { run.__bindgen_anon_1.internal.suberror }
}

/// The real-time signal used to kick vCPU threads out of `KVM_RUN`.
pub fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 2
}

extern "C" fn on_kick(_: libc::c_int) {
    // Nothing: delivery alone makes KVM_RUN return EINTR.
}

/// Installs the (empty) kick handler once per process, without `SA_RESTART`.
pub(crate) fn install_kick_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), i32>> = OnceLock::new();
    let result = INSTALLED.get_or_init(|| {
        // SAFETY: an all-zero `sigaction` is a valid value (empty mask, no flags).
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = on_kick as *const () as libc::sighandler_t;
        // SAFETY: `act.sa_mask` is a valid sigset_t owned by us.
        unsafe { libc::sigemptyset(&mut act.sa_mask) };
        // SAFETY: installs a handler that does nothing (async-signal-safe) for a real-time
        // signal this crate owns; the old action is not needed.
        let rc = unsafe { libc::sigaction(kick_signal(), &act, std::ptr::null_mut()) };
        if rc == 0 {
            Ok(())
        } else {
            Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
        }
    });
    result.map_err(HypervisorError::SignalHandler)
}

/// Sends the kick signal to a thread that has not been joined yet.
pub(crate) fn kick(thread: libc::pthread_t) {
    // SAFETY: the caller keeps the thread's JoinHandle alive (not joined, not detached), so
    // `thread` is a valid pthread_t; the signal's handler is installed and does nothing.
    let rc = unsafe { libc::pthread_kill(thread, kick_signal()) };
    if rc != 0 {
        tracing::debug!(rc, "pthread_kill for a vCPU kick failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unexpected_exit_error_names_the_exit_and_the_registers() {
        let mut regs = VcpuSnapshot {
            vcpu: 1,
            rip: 0x1005,
            rflags: 0x46,
            ..Default::default()
        };
        regs.gprs[1] = 0xff;
        regs.segments[0] = Segment {
            selector: 0xf000,
            base: 0xf0000,
            limit: 0xffff,
        };
        let err = HypervisorError::UnexpectedExit {
            vcpu: 1,
            kind: ExitKind::InternalError { suberror: 1 },
            regs: Box::new(regs),
        };
        let text = err.to_string();
        for part in [
            "vCPU 1",
            "INTERNAL_ERROR (suberror 1)",
            "rip=0x1005",
            "rflags=0x46",
            "rbx=0xff",
            "cs=0xf000@0xf0000",
        ] {
            assert!(text.contains(part), "{part:?} missing in {text}");
        }
        assert_eq!(ExitKind::Shutdown.to_string(), "SHUTDOWN");
        assert_eq!(
            ExitKind::FailEntry {
                reason: 0x21,
                cpu: 3
            }
            .to_string(),
            "FAIL_ENTRY (reason 0x21, cpu 3)"
        );
    }
}
