//! The vCPU run loop: `KVM_RUN` exits dispatched to the port and MMIO buses, unmapped
//! accesses counted, and a run ended by a halt, a stop or an unexpected exit. The
//! register snapshot and exit kinds it reports are `vcpu_state`'s, the kick that pulls a
//! vCPU out of `KVM_RUN` is `kick`'s; both are re-exported here under their old paths.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use kvm_ioctls::{VcpuExit, VcpuFd};

use crate::bus::Bus;
use crate::debug::DebugControl;
use crate::error::{HypervisorError, Result};
pub use crate::kick::kick_signal;
use crate::power::RunControl;
pub use crate::vcpu_state::{ExitKind, Segment, VcpuSnapshot};

/// Unmapped accesses logged per VM before further ones are only counted.
pub const UNMAPPED_LOG_LIMIT: u64 = 16;

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
