//! Parking vCPUs for a debugger: every vCPU thread passes a checkpoint before each
//! `KVM_RUN`; a vCPU that is held parks there, outside KVM, and runs the debugger's
//! work (register access, `KVM_SET_GUEST_DEBUG`) on its own thread, since its fd is
//! owned by that thread for the whole run.
//!
//! Lock order: `DebugControl::state` is a leaf. Work runs with it released.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use kvm_bindings::kvm_debug_exit_arch;
use kvm_ioctls::VcpuFd;
use vm_memory::GuestMemoryMmap;

use super::{DebugStop, GuestDebug};
use crate::error::{HypervisorError, Result};
use crate::kick::kick;
use crate::power::RunControl;

/// How often a held vCPU still running is kicked again (a kick that lands just before
/// `KVM_RUN` is lost) and how often a parked vCPU looks at the run's stop flag.
const KICK_INTERVAL: Duration = Duration::from_millis(5);
const PARK_POLL: Duration = Duration::from_millis(20);

/// Work for a parked vCPU, run on its thread.
pub(crate) type Work = Box<dyn FnOnce(&mut VcpuFd) + Send>;

/// Where a vCPU thread is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    /// No thread: not in a run, or its thread returned (halted, stopped).
    Away,
    /// In its run loop (maybe inside `KVM_RUN`); the thread to kick.
    Running(libc::pthread_t),
    /// Parked at its checkpoint.
    Parked,
}

struct Slot {
    phase: Phase,
    /// Park at the next checkpoint and stay until released.
    hold: bool,
    /// Whether this vCPU's guest debug currently has single-step on.
    stepping: bool,
    work: VecDeque<Work>,
}

#[derive(Default)]
struct State {
    slots: Vec<Slot>,
    /// The first debug exit since the last resume.
    stop: Option<DebugStop>,
    /// The VM is gone: no vCPU will run again.
    ended: bool,
    /// Breakpoints and flags every vCPU has (single-step is per vCPU, in `Slot`).
    config: GuestDebug,
}

/// Shared by a VM's vCPU threads and its `DebugHandle`s.
pub(crate) struct DebugControl {
    state: Mutex<State>,
    /// Guest RAM until the VM ends: a handle kept after that does not keep it mapped.
    memory: Mutex<Option<GuestMemoryMmap>>,
    changed: Condvar,
    /// Some vCPU is held: the checkpoint's fast path skips the lock when false.
    any_hold: AtomicBool,
}

impl DebugControl {
    pub(crate) fn new(vcpus: u32, memory: GuestMemoryMmap) -> Self {
        let slots = (0..vcpus)
            .map(|_| Slot {
                phase: Phase::Away,
                hold: false,
                stepping: false,
                work: VecDeque::new(),
            })
            .collect();
        Self {
            state: Mutex::new(State {
                slots,
                ..State::default()
            }),
            memory: Mutex::new(Some(memory)),
            changed: Condvar::new(),
            any_hold: AtomicBool::new(false),
        }
    }

    /// Runs `f` on guest RAM, unless the VM has ended.
    pub(crate) fn with_memory<T>(&self, f: impl FnOnce(&GuestMemoryMmap) -> T) -> Result<T> {
        let memory = self.memory.lock().unwrap_or_else(PoisonError::into_inner);
        memory.as_ref().map(f).ok_or(HypervisorError::VmEnded)
    }

    pub(crate) fn vcpu_count(&self) -> u32 {
        self.lock().slots.len() as u32
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn wait<'a>(&self, st: MutexGuard<'a, State>, d: Duration) -> MutexGuard<'a, State> {
        self.changed
            .wait_timeout(st, d)
            .unwrap_or_else(PoisonError::into_inner)
            .0
    }

    fn update_any_hold(&self, st: &State) {
        let any = st.slots.iter().any(|s| s.hold);
        self.any_hold.store(any, Ordering::Release);
    }

    /// A vCPU thread starts its run loop.
    pub(crate) fn enter(&self, index: u32) {
        let mut st = self.lock();
        if let Some(s) = st.slots.get_mut(index as usize) {
            // SAFETY: pthread_self has no preconditions.
            s.phase = Phase::Running(unsafe { libc::pthread_self() });
        }
        self.changed.notify_all();
    }

    /// A vCPU thread leaves its run loop: never kicked again; queued work is dropped
    /// (its waiter sees the channel close).
    pub(crate) fn leave(&self, index: u32) {
        let mut st = self.lock();
        if let Some(s) = st.slots.get_mut(index as usize) {
            s.phase = Phase::Away;
            s.work.clear();
        }
        self.changed.notify_all();
    }

    /// The VM is gone.
    pub(crate) fn end(&self) {
        self.memory
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        let mut st = self.lock();
        st.ended = true;
        for s in &mut st.slots {
            s.work.clear();
        }
        self.changed.notify_all();
    }

    /// Called by vCPU `index` before each `KVM_RUN`: parks while held, running the
    /// debugger's work, until released or the run is being stopped.
    pub(crate) fn checkpoint(&self, index: u32, fd: &mut VcpuFd, run: &RunControl) {
        if !self.any_hold.load(Ordering::Acquire) {
            return;
        }
        let i = index as usize;
        let mut st = self.lock();
        if !st.slots.get(i).is_some_and(|s| s.hold) {
            return;
        }
        st.slots[i].phase = Phase::Parked;
        self.changed.notify_all();
        loop {
            if let Some(work) = st.slots[i].work.pop_front() {
                drop(st);
                work(fd);
                st = self.lock();
                continue;
            }
            if !st.slots[i].hold || run.stop_requested() {
                break;
            }
            st = self.wait(st, PARK_POLL);
        }
        // SAFETY: pthread_self has no preconditions.
        st.slots[i].phase = Phase::Running(unsafe { libc::pthread_self() });
        self.changed.notify_all();
    }

    /// vCPU `index` left `KVM_RUN` with `KVM_EXIT_DEBUG`: the first such stop since the
    /// last resume is kept, and every vCPU is held (all-stop, as gdb expects).
    pub(crate) fn debug_exit(&self, index: u32, arch: &kvm_debug_exit_arch) {
        let mut st = self.lock();
        let stepping = st.slots.get(index as usize).is_some_and(|s| s.stepping);
        let cause = super::kvm::classify(arch, stepping);
        if st.config == GuestDebug::default() && !stepping {
            // Guest debug was switched off while this exit was on its way.
            tracing::debug!(vcpu = index, ?cause, "debug exit with no debugger; ignored");
            return;
        }
        if st.stop.is_none() {
            st.stop = Some(DebugStop {
                vcpu: index,
                cause,
                pc: arch.pc,
            });
        } else {
            tracing::debug!(
                vcpu = index,
                ?cause,
                "second debug exit before the stop was seen"
            );
        }
        for s in &mut st.slots {
            s.hold = true;
        }
        self.update_any_hold(&st);
        Self::kick_running(&st);
        self.changed.notify_all();
    }

    fn kick_running(st: &State) {
        for s in &st.slots {
            if let (true, Phase::Running(t)) = (s.hold, s.phase) {
                // The thread is alive: it must take this lock to become `Away`.
                kick(t);
            }
        }
    }

    /// Holds every vCPU and waits until each one in a run is parked (at least one).
    pub(crate) fn pause(&self, timeout: Duration) -> Result<()> {
        let mut st = self.lock();
        for s in &mut st.slots {
            s.hold = true;
        }
        self.update_any_hold(&st);
        self.settle(st, timeout).map(drop)
    }

    /// Waits until no held vCPU is running and at least one is parked, kicking the
    /// running ones every `KICK_INTERVAL`.
    fn settle<'a>(
        &self,
        mut st: MutexGuard<'a, State>,
        timeout: Duration,
    ) -> Result<MutexGuard<'a, State>> {
        let deadline = Instant::now() + timeout;
        loop {
            if st.ended {
                return Err(HypervisorError::VmEnded);
            }
            let running = st
                .slots
                .iter()
                .any(|s| s.hold && matches!(s.phase, Phase::Running(_)));
            let parked = st.slots.iter().any(|s| s.phase == Phase::Parked);
            if !running && parked {
                return Ok(st);
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(HypervisorError::PauseTimeout { waited: timeout });
            }
            Self::kick_running(&st);
            st = self.wait(st, KICK_INTERVAL.min(deadline - now));
        }
    }

    /// Whether every vCPU is held and each one in a run is parked.
    pub(crate) fn is_paused(&self) -> bool {
        let st = self.lock();
        !st.ended
            && st.slots.iter().all(|s| s.hold)
            && st.slots.iter().any(|s| s.phase == Phase::Parked)
            && !st
                .slots
                .iter()
                .any(|s| matches!(s.phase, Phase::Running(_)))
    }

    pub(crate) fn ended(&self) -> bool {
        self.lock().ended
    }

    /// Runs `work` on parked vCPU `index` and returns its result.
    pub(crate) fn on_vcpu<T: Send + 'static>(
        &self,
        index: u32,
        work: impl FnOnce(&mut VcpuFd) -> T + Send + 'static,
    ) -> Result<T> {
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let mut st = self.lock();
            if st.ended {
                return Err(HypervisorError::VmEnded);
            }
            let count = st.slots.len() as u32;
            let slot = st
                .slots
                .get_mut(index as usize)
                .ok_or(HypervisorError::NoSuchVcpu { vcpu: index, count })?;
            if slot.phase != Phase::Parked {
                return Err(match slot.phase {
                    Phase::Away => HypervisorError::VcpuAway(index),
                    _ => HypervisorError::VmNotPaused,
                });
            }
            slot.work.push_back(Box::new(move |fd| {
                // The waiter may have given up; then nobody needs the result.
                let _ = tx.send(work(fd));
            }));
            self.changed.notify_all();
        }
        // The parked thread runs it at once; it can only be dropped unrun if the vCPU
        // leaves its run (the VM is being stopped).
        rx.recv().map_err(|_| HypervisorError::VcpuAway(index))
    }

    /// Indices of the parked vCPUs.
    pub(crate) fn parked(&self) -> Vec<u32> {
        let st = self.lock();
        (0u32..)
            .zip(&st.slots)
            .filter(|(_, s)| s.phase == Phase::Parked)
            .map(|(i, _)| i)
            .collect()
    }

    pub(crate) fn config(&self) -> GuestDebug {
        self.lock().config
    }

    pub(crate) fn set_config(&self, config: GuestDebug) {
        self.lock().config = config;
    }

    pub(crate) fn stepping(&self, index: u32) -> bool {
        self.lock()
            .slots
            .get(index as usize)
            .is_some_and(|s| s.stepping)
    }

    pub(crate) fn set_stepping(&self, index: u32, on: bool) {
        if let Some(s) = self.lock().slots.get_mut(index as usize) {
            s.stepping = on;
        }
    }

    /// Releases the vCPUs in `run` (the others stay parked) after clearing the last
    /// stop. The VM must be paused.
    pub(crate) fn release(&self, run: &[u32]) -> Result<()> {
        let mut st = self.lock();
        if st.ended {
            return Err(HypervisorError::VmEnded);
        }
        st.stop = None;
        for &i in run {
            if let Some(s) = st.slots.get_mut(i as usize) {
                s.hold = false;
            }
        }
        self.update_any_hold(&st);
        self.changed.notify_all();
        Ok(())
    }

    /// Waits up to `timeout` for a debug exit; once one came, waits (bounded by
    /// `settle_timeout`) for every vCPU to park and returns it.
    pub(crate) fn wait_stop(
        &self,
        timeout: Duration,
        settle_timeout: Duration,
    ) -> Result<Option<DebugStop>> {
        let deadline = Instant::now() + timeout;
        let mut st = self.lock();
        loop {
            if st.ended {
                return Err(HypervisorError::VmEnded);
            }
            if let Some(stop) = st.stop {
                let mut st = self.settle(st, settle_timeout)?;
                st.stop = None;
                return Ok(Some(stop));
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(None);
            }
            st = self.wait(st, deadline - now);
        }
    }
}
