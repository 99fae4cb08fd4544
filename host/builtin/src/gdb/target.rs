//! The gdbstub `Target` over a `DebugVm`: vCPU N is gdb thread N + 1, registers are
//! gdb's x86-64 core set, memory is guest-virtual through the thread's own page
//! tables, and breakpoints go where this host's KVM can take them.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::num::NonZeroUsize;
use std::time::Duration;

use gdbstub::common::{Signal, Tid};
use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::outputln;
use gdbstub::stub::run_blocking::{BlockingEventLoop, Event, WaitForStopReasonError};
use gdbstub::stub::MultiThreadStopReason;
use gdbstub::target::ext::base::multithread::{
    MultiThreadBase, MultiThreadResume, MultiThreadResumeOps, MultiThreadSchedulerLocking,
    MultiThreadSchedulerLockingOps, MultiThreadSingleStep, MultiThreadSingleStepOps,
};
use gdbstub::target::ext::base::single_register_access::SingleRegisterAccessOps;
use gdbstub::target::ext::base::BaseOps;
use gdbstub::target::ext::breakpoints::BreakpointsOps;
use gdbstub::target::ext::monitor_cmd::{ConsoleOutput, MonitorCmd, MonitorCmdOps};
use gdbstub::target::ext::thread_extra_info::{ThreadExtraInfo, ThreadExtraInfoOps};
use gdbstub::target::{Target, TargetError, TargetResult};
use gdbstub_arch::x86::reg::X86_64CoreRegs;
use gdbstub_arch::x86::X86_64_SSE;
use vesper_hypervisor::debug::HwBreakpoint;
use vesper_hypervisor::{
    DebugStop, GuestDebug, GuestDebugSupport, HypervisorError, ResumeAction, StopCause,
    VcpuSnapshot,
};

use super::int3::{restore, Int3, Owner};
use super::layout::{from_gdb, to_gdb};
use super::memory::Mmu;
use super::DebugVm;

/// How long a stop (attach, ^C, detach) may take.
pub(crate) const PAUSE: Duration = Duration::from_secs(2);
/// How often a running target looks at the connection for ^C.
const POLL: Duration = Duration::from_millis(20);
/// errno values gdb sees in `E` replies.
const EPERM: u8 = 1;
const ESRCH: u8 = 3;
const EIO: u8 = 5;
const EFAULT: u8 = 14;
const EBUSY: u8 = 16;
const EOPNOTSUPP: u8 = 95;

/// gdb's view of one VM.
pub(crate) struct GdbTarget<V: DebugVm> {
    pub(crate) vm: V,
    pub(super) support: GuestDebugSupport,
    pub(super) int3s: BTreeMap<u64, Int3>,
    pub(super) slots: [Option<(HwBreakpoint, Owner)>; 4],
    actions: Vec<Option<ResumeAction>>,
    scheduler_lock: bool,
}

pub(super) fn tid(vcpu: u32) -> Tid {
    NonZeroUsize::MIN.saturating_add(vcpu as usize)
}

/// A non-fatal error for gdb, logged with what went wrong; a gone VM ends the session.
pub(super) fn refuse<T>(what: &str, e: HypervisorError) -> Result<T, TargetError<HypervisorError>> {
    let errno = match &e {
        HypervisorError::VmEnded => return Err(TargetError::Fatal(e)),
        HypervisorError::NotGuestRam { .. } => EFAULT,
        HypervisorError::VmNotPaused => EBUSY,
        HypervisorError::GuestDebugUnsupported { .. } => EOPNOTSUPP,
        HypervisorError::RegisterRefused(_) => EPERM,
        HypervisorError::NoSuchVcpu { .. } | HypervisorError::VcpuAway(_) => ESRCH,
        _ => EIO,
    };
    tracing::warn!("gdb {what} refused: {e}");
    Err(TargetError::Errno(errno))
}

impl<V: DebugVm> GdbTarget<V> {
    pub(crate) fn new(vm: V) -> Self {
        let n = vm.vcpu_count() as usize;
        Self {
            support: vm.support(),
            vm,
            int3s: BTreeMap::new(),
            slots: [None; 4],
            actions: vec![None; n],
            scheduler_lock: false,
        }
    }

    pub(super) fn vcpu(&self, tid: Tid) -> Result<u32, HypervisorError> {
        let count = self.vm.vcpu_count();
        let vcpu = u32::try_from(tid.get() - 1).unwrap_or(u32::MAX);
        if vcpu < count {
            Ok(vcpu)
        } else {
            Err(HypervisorError::NoSuchVcpu { vcpu, count })
        }
    }

    pub(super) fn regs(&self, tid: Tid) -> Result<VcpuSnapshot, HypervisorError> {
        self.vm.registers(self.vcpu(tid)?)
    }

    pub(super) fn guest_debug(&self) -> GuestDebug {
        GuestDebug {
            sw_breakpoints: !self.int3s.is_empty(),
            hw: self.slots.map(|s| s.map(|(bp, _)| bp)),
        }
    }

    /// What gdb hears of a debug exit.
    pub(crate) fn stop_reason(&self, stop: DebugStop) -> MultiThreadStopReason<u64> {
        let tid = tid(stop.vcpu);
        let trap = MultiThreadStopReason::SignalWithThread {
            tid,
            signal: Signal::SIGTRAP,
        };
        let slot = |i: u8| self.slots.get(usize::from(i)).copied().flatten();
        match stop.cause {
            StopCause::SwBreakpoint if self.int3s.contains_key(&stop.pc) => {
                MultiThreadStopReason::SwBreak(tid)
            }
            StopCause::HwBreakpoint(i) => match slot(i) {
                Some((_, Owner::Sw)) => MultiThreadStopReason::SwBreak(tid),
                Some((_, Owner::Hw)) => MultiThreadStopReason::HwBreak(tid),
                _ => trap,
            },
            StopCause::Watchpoint(i) => match slot(i) {
                Some((bp, Owner::Watch(kind))) => MultiThreadStopReason::Watch {
                    tid,
                    kind,
                    addr: bp.addr,
                },
                _ => trap,
            },
            _ => trap,
        }
    }

    /// The client is gone: breakpoints out, guest debug off, and the VM running again
    /// if `resume`.
    pub(crate) fn detach(&mut self, resume: bool) {
        if self.vm.ended() {
            return;
        }
        if !self.vm.is_paused() {
            if let Err(e) = self.vm.pause(PAUSE) {
                tracing::warn!("gdb detach: cannot stop the VM to take breakpoints out: {e}");
                return;
            }
        }
        for (_, bp) in std::mem::take(&mut self.int3s) {
            restore(&self.vm, bp);
        }
        self.slots = [None; 4];
        if let Err(e) = self.vm.set_guest_debug(GuestDebug::default()) {
            tracing::warn!("gdb detach: guest debug stays on: {e}");
        }
        if resume {
            if let Err(e) = self.vm.resume(&[]) {
                tracing::warn!("gdb detach: the VM could not be resumed: {e}");
            }
        }
    }
}

impl<V: DebugVm> Target for GdbTarget<V> {
    type Arch = X86_64_SSE;
    type Error = HypervisorError;

    fn base_ops(&mut self) -> BaseOps<'_, Self::Arch, Self::Error> {
        BaseOps::MultiThread(self)
    }

    fn support_breakpoints(&mut self) -> Option<BreakpointsOps<'_, Self>> {
        Some(self)
    }

    fn support_monitor_cmd(&mut self) -> Option<MonitorCmdOps<'_, Self>> {
        Some(self)
    }
}

impl<V: DebugVm> MultiThreadBase for GdbTarget<V> {
    fn read_registers(&mut self, regs: &mut X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        match self.regs(tid) {
            Ok(s) => {
                to_gdb(&s, regs);
                Ok(())
            }
            Err(e) => refuse("register read", e),
        }
    }

    fn write_registers(&mut self, regs: &X86_64CoreRegs, tid: Tid) -> TargetResult<(), Self> {
        let written = self
            .regs(tid)
            .and_then(|now| from_gdb(regs, &now))
            .and_then(|s| self.vm.set_registers(&s));
        written.or_else(|e| refuse("register write", e))
    }

    fn support_single_register_access(&mut self) -> Option<SingleRegisterAccessOps<'_, Tid, Self>> {
        Some(self)
    }

    fn read_addrs(&mut self, start: u64, data: &mut [u8], tid: Tid) -> TargetResult<usize, Self> {
        let mmu = match self.regs(tid) {
            Ok(s) => Mmu::of(&s),
            Err(e) => return refuse("memory read", e),
        };
        let n = mmu.read(&self.vm, start, data).map_err(|e| {
            tracing::debug!("gdb memory read at {start:#x}: {e}");
            TargetError::Errno(EFAULT)
        })?;
        // gdb sees the bytes its int3s replaced.
        for (&addr, bp) in &self.int3s {
            if let Some(i) = addr
                .checked_sub(start)
                .and_then(|off| usize::try_from(off).ok())
                .filter(|&i| i < n)
            {
                data[i] = bp.orig;
            }
        }
        Ok(n)
    }

    fn write_addrs(&mut self, start: u64, data: &[u8], tid: Tid) -> TargetResult<(), Self> {
        let mmu = match self.regs(tid) {
            Ok(s) => Mmu::of(&s),
            Err(e) => return refuse("memory write", e),
        };
        mmu.write(&self.vm, start, data).map_err(|e| {
            tracing::warn!("gdb memory write at {start:#x} refused: {e}");
            TargetError::Errno(EFAULT)
        })
    }

    fn list_active_threads(
        &mut self,
        thread_is_active: &mut dyn FnMut(Tid),
    ) -> Result<(), Self::Error> {
        for vcpu in 0..self.vm.vcpu_count() {
            thread_is_active(tid(vcpu));
        }
        Ok(())
    }

    fn support_resume(&mut self) -> Option<MultiThreadResumeOps<'_, Self>> {
        Some(self)
    }

    fn support_thread_extra_info(&mut self) -> Option<ThreadExtraInfoOps<'_, Self>> {
        Some(self)
    }
}

impl<V: DebugVm> MultiThreadResume for GdbTarget<V> {
    fn resume(&mut self) -> Result<(), Self::Error> {
        let default = if self.scheduler_lock {
            ResumeAction::Stay
        } else {
            ResumeAction::Continue
        };
        let actions: Vec<ResumeAction> =
            self.actions.iter().map(|a| a.unwrap_or(default)).collect();
        self.vm.resume(&actions)
    }

    fn clear_resume_actions(&mut self) -> Result<(), Self::Error> {
        self.actions.iter_mut().for_each(|a| *a = None);
        self.scheduler_lock = false;
        Ok(())
    }

    fn set_resume_action_continue(
        &mut self,
        tid: Tid,
        signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.set_action(tid, ResumeAction::Continue, signal)
    }

    fn support_single_step(&mut self) -> Option<MultiThreadSingleStepOps<'_, Self>> {
        self.support.single_step.then_some(self)
    }

    fn support_scheduler_locking(&mut self) -> Option<MultiThreadSchedulerLockingOps<'_, Self>> {
        Some(self)
    }
}

impl<V: DebugVm> GdbTarget<V> {
    fn set_action(
        &mut self,
        tid: Tid,
        action: ResumeAction,
        signal: Option<Signal>,
    ) -> Result<(), HypervisorError> {
        if let Some(signal) = signal {
            // A VM has no signals; gdb passes one on after a SIGINT stop, for instance.
            tracing::debug!(%signal, "gdb asked to deliver a signal; a VM has none, ignored");
        }
        let vcpu = self.vcpu(tid)?;
        self.actions[vcpu as usize] = Some(action);
        Ok(())
    }
}

impl<V: DebugVm> MultiThreadSingleStep for GdbTarget<V> {
    fn set_resume_action_step(
        &mut self,
        tid: Tid,
        signal: Option<Signal>,
    ) -> Result<(), Self::Error> {
        self.set_action(tid, ResumeAction::Step, signal)
    }
}

impl<V: DebugVm> MultiThreadSchedulerLocking for GdbTarget<V> {
    fn set_resume_action_scheduler_lock(&mut self) -> Result<(), Self::Error> {
        self.scheduler_lock = true;
        Ok(())
    }
}

impl<V: DebugVm> ThreadExtraInfo for GdbTarget<V> {
    fn thread_extra_info(&self, tid: Tid, buf: &mut [u8]) -> Result<usize, Self::Error> {
        let text = format!("vCPU {}", tid.get() - 1);
        let n = text.len().min(buf.len());
        buf[..n].copy_from_slice(&text.as_bytes()[..n]);
        Ok(n)
    }
}

impl<V: DebugVm> MonitorCmd for GdbTarget<V> {
    fn handle_monitor_cmd(
        &mut self,
        cmd: &[u8],
        mut out: ConsoleOutput<'_>,
    ) -> Result<(), Self::Error> {
        match std::str::from_utf8(cmd).unwrap_or("").trim() {
            "regs" => {
                for vcpu in 0..self.vm.vcpu_count() {
                    match self.vm.registers(vcpu) {
                        Ok(s) => outputln!(out, "vCPU {vcpu}: {s}"),
                        Err(e) => outputln!(out, "vCPU {vcpu}: {e}"),
                    }
                }
            }
            "support" => {
                let s = self.support;
                outputln!(
                    out,
                    "single step: {}, int3 breakpoints: {}, debug-register breakpoints: {}, watchpoints: {}",
                    s.single_step,
                    s.sw_breakpoints,
                    s.hw_breakpoints,
                    s.watchpoints
                );
                if !s.why_not.is_empty() {
                    outputln!(out, "{}", s.why_not);
                }
                let used = self.slots.iter().flatten().count();
                outputln!(out, "debug registers in use: {used} of 4");
            }
            _ => {
                outputln!(out, "vesperd builtin gdb server; monitor commands:");
                outputln!(
                    out,
                    "  regs     every vCPU's registers, with cr0/cr3/cr4/EFER and segment bases"
                );
                outputln!(
                    out,
                    "  support  what this host's KVM allows (step, breakpoints, watchpoints)"
                );
            }
        }
        Ok(())
    }
}

/// The blocking event loop: while the VM runs, polls for a debug exit and for bytes
/// from gdb (^C) in turn.
pub(crate) struct EventLoop<V, C>(PhantomData<(V, C)>);

impl<V: DebugVm, C: ConnectionExt> BlockingEventLoop for EventLoop<V, C> {
    type Target = GdbTarget<V>;
    type Connection = C;
    type StopReason = MultiThreadStopReason<u64>;

    fn wait_for_stop_reason(
        target: &mut Self::Target,
        conn: &mut Self::Connection,
    ) -> Result<
        Event<Self::StopReason>,
        WaitForStopReasonError<HypervisorError, <C as Connection>::Error>,
    > {
        loop {
            if conn
                .peek()
                .map_err(WaitForStopReasonError::Connection)?
                .is_some()
            {
                let byte = conn.read().map_err(WaitForStopReasonError::Connection)?;
                return Ok(Event::IncomingData(byte));
            }
            match target.vm.wait_stop(POLL) {
                Ok(Some(stop)) => return Ok(Event::TargetStopped(target.stop_reason(stop))),
                Ok(None) => {}
                Err(HypervisorError::VmEnded) => {
                    return Ok(Event::TargetStopped(MultiThreadStopReason::Exited(0)))
                }
                Err(e) => return Err(WaitForStopReasonError::Target(e)),
            }
        }
    }

    fn on_interrupt(
        target: &mut Self::Target,
    ) -> Result<Option<Self::StopReason>, HypervisorError> {
        match target.vm.pause(PAUSE) {
            Ok(()) => Ok(Some(MultiThreadStopReason::SignalWithThread {
                tid: tid(0),
                signal: Signal::SIGINT,
            })),
            Err(HypervisorError::VmEnded) => Ok(Some(MultiThreadStopReason::Exited(0))),
            Err(e) => Err(e),
        }
    }
}
