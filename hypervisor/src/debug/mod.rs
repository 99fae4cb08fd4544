//! What a debugger needs from the VMM, and nothing protocol-specific: stop every vCPU
//! of a running VM and hold it parked outside `KVM_RUN`, read and write its registers
//! and guest-physical memory while it is stopped, set KVM guest debug (single step,
//! hardware breakpoints in the debug registers, software breakpoints through
//! `KVM_GUESTDBG_USE_SW_BP`) and get `KVM_EXIT_DEBUG` stops reported instead of ending
//! the run. `Vm::debug_handle` gives a `DebugHandle`, usable from any thread while
//! `Vm::run` runs on another.
//!
//! What KVM allows differs by host (`GuestDebugSupport`): the paravirtual kvm_pvm was
//! measured (README, "Guest debug"); asking for what it lacks is a named error.

mod control;
mod kvm;

use std::sync::Arc;
use std::time::Duration;

use kvm_bindings::{KVM_CAP_SET_GUEST_DEBUG, KVM_CAP_SET_GUEST_DEBUG2};
use kvm_bindings::{KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP};
use kvm_ioctls::VmFd;
use vm_memory::{Bytes, GuestAddress};

use crate::error::{kvm as kvm_err, HypervisorError, Result};
use crate::registers::write_registers;
use crate::vcpu_state::VcpuSnapshot;
use crate::KvmBacking;
pub(crate) use control::DebugControl;

/// How long the vCPUs have to reach their checkpoint once a debug exit stopped one.
const SETTLE: Duration = Duration::from_secs(2);

/// What a hardware breakpoint slot watches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HwKind {
    /// Executing the instruction at the address.
    Execute,
    /// Writing 1, 2, 4 or 8 bytes at the address.
    Write(u8),
    /// Reading or writing 1, 2, 4 or 8 bytes at the address.
    Access(u8),
}

/// One debug register (DR0-DR3) in use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HwBreakpoint {
    /// Guest-virtual (linear) address.
    pub addr: u64,
    /// What it catches.
    pub kind: HwKind,
}

/// Guest debug every vCPU of the VM has (single step is per vCPU, per resume).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct GuestDebug {
    /// `int3` exits to the VMM (`KVM_GUESTDBG_USE_SW_BP`) instead of reaching the guest.
    pub sw_breakpoints: bool,
    /// DR0-DR3 (`KVM_GUESTDBG_USE_HW_BP`).
    pub hw: [Option<HwBreakpoint>; 4],
}

/// What a vCPU does on `DebugHandle::resume`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ResumeAction {
    /// Stays parked.
    Stay,
    /// Runs until a debug exit or a pause.
    #[default]
    Continue,
    /// Executes one instruction, then stops with `StopCause::Step`.
    Step,
}

/// Why a vCPU stopped (from `KVM_EXIT_DEBUG`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopCause {
    /// A single step finished.
    Step,
    /// An `int3` (a software breakpoint); the PC is at the `int3`.
    SwBreakpoint,
    /// An instruction breakpoint in debug register N.
    HwBreakpoint(u8),
    /// A data watchpoint in debug register N.
    Watchpoint(u8),
    /// A debug exit for another exception vector.
    Other {
        /// The vector KVM reported.
        exception: u32,
    },
}

/// A debug exit: which vCPU, why, and where.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DebugStop {
    /// vCPU index.
    pub vcpu: u32,
    /// Why.
    pub cause: StopCause,
    /// The linear address KVM reported (the instruction pointer plus CS base).
    pub pc: u64,
}

/// What guest debug this host's KVM allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GuestDebugSupport {
    /// `KVM_GUESTDBG_SINGLESTEP` stops after one instruction.
    pub single_step: bool,
    /// `KVM_GUESTDBG_USE_SW_BP` turns an `int3` into a debug exit.
    pub sw_breakpoints: bool,
    /// `KVM_GUESTDBG_USE_HW_BP` stops at DR0-DR3 instruction addresses.
    pub hw_breakpoints: bool,
    /// DR0-DR3 as data watchpoints (`HwKind::Write`, `HwKind::Access`).
    pub watchpoints: bool,
    /// Why something is missing (empty when nothing is).
    pub why_not: &'static str,
}

/// kvm_pvm, measured on this project's hosts (hypervisor/tests/debug.rs checks it):
/// single step and instruction breakpoints in DR0-DR3 work; an `int3` stops the run
/// with `INTERNAL_ERROR` even with `KVM_GUESTDBG_USE_SW_BP`, so a debugger must not
/// plant one; data watchpoints never fire (its emulator does not check them).
const PVM_SUPPORT: GuestDebugSupport = GuestDebugSupport {
    single_step: true,
    sw_breakpoints: false,
    hw_breakpoints: true,
    watchpoints: false,
    why_not: "the paravirtual kvm_pvm emulates this guest's instructions; its emulator \
              fails on int3 (KVM_EXIT_INTERNAL_ERROR) even with KVM_GUESTDBG_USE_SW_BP and \
              never checks data watchpoints; use hardware breakpoints (4 debug registers)",
};

impl GuestDebugSupport {
    /// What KVM on `backing` allows, given the flags KVM reports (`flags`:
    /// `KVM_CAP_SET_GUEST_DEBUG2`'s mask, 0 if absent; `cap`: `KVM_CAP_SET_GUEST_DEBUG`).
    pub(crate) fn of(backing: &KvmBacking, cap: bool, flags: u32) -> Self {
        if !cap {
            return Self {
                single_step: false,
                sw_breakpoints: false,
                hw_breakpoints: false,
                watchpoints: false,
                why_not: "this host's KVM has no KVM_SET_GUEST_DEBUG",
            };
        }
        let base = match backing {
            KvmBacking::Paravirtual => PVM_SUPPORT,
            _ => Self {
                single_step: true,
                sw_breakpoints: true,
                hw_breakpoints: true,
                watchpoints: true,
                why_not: "",
            },
        };
        // An older KVM without GUEST_DEBUG2 takes every x86 flag.
        let has = |f: u32| flags == 0 || flags & f != 0;
        Self {
            sw_breakpoints: base.sw_breakpoints && has(KVM_GUESTDBG_USE_SW_BP),
            hw_breakpoints: base.hw_breakpoints && has(KVM_GUESTDBG_USE_HW_BP),
            watchpoints: base.watchpoints && has(KVM_GUESTDBG_USE_HW_BP),
            ..base
        }
    }

    fn check(&self, config: &GuestDebug) -> Result<()> {
        let refuse = |what| {
            Err(HypervisorError::GuestDebugUnsupported {
                what,
                why: self.why_not,
            })
        };
        if config.sw_breakpoints && !self.sw_breakpoints {
            return refuse("software breakpoints");
        }
        let kinds = config.hw.iter().flatten().map(|bp| bp.kind);
        for kind in kinds {
            match kind {
                HwKind::Execute if !self.hw_breakpoints => return refuse("hardware breakpoints"),
                HwKind::Write(_) | HwKind::Access(_) if !self.watchpoints => {
                    return refuse("data watchpoints")
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// A debugger's access to one VM; clone it freely. Every vCPU access needs the VM
/// paused (`pause`); memory access does not.
#[derive(Clone)]
pub struct DebugHandle {
    control: Arc<DebugControl>,
    vcpus: u32,
    support: GuestDebugSupport,
    block_irq: bool,
}

impl DebugHandle {
    pub(crate) fn new(control: Arc<DebugControl>, vm: &VmFd) -> Self {
        let cap = vm.check_extension_raw(u64::from(KVM_CAP_SET_GUEST_DEBUG)) > 0;
        let flags =
            u32::try_from(vm.check_extension_raw(u64::from(KVM_CAP_SET_GUEST_DEBUG2))).unwrap_or(0);
        Self {
            vcpus: control.vcpu_count(),
            control,
            support: GuestDebugSupport::of(&KvmBacking::detect(), cap, flags),
            block_irq: flags & KVM_GUESTDBG_BLOCKIRQ != 0,
        }
    }

    /// The VM's vCPU count.
    pub fn vcpu_count(&self) -> u32 {
        self.vcpus
    }

    /// What this host's KVM allows.
    pub fn support(&self) -> GuestDebugSupport {
        self.support
    }

    /// Stops every vCPU and holds it parked outside `KVM_RUN` until `resume`. Waits up
    /// to `timeout` for the vCPUs in a run to park (at least one must be in a run).
    pub fn pause(&self, timeout: Duration) -> Result<()> {
        self.control.pause(timeout)
    }

    /// Whether the VM is paused (every vCPU held, each one in a run parked).
    pub fn is_paused(&self) -> bool {
        self.control.is_paused()
    }

    /// Whether the VM is gone (its `Vm` was dropped).
    pub fn ended(&self) -> bool {
        self.control.ended()
    }

    /// The vCPUs parked now (those in a run; a vCPU that halted for good is not).
    pub fn parked_vcpus(&self) -> Vec<u32> {
        self.control.parked()
    }

    /// The registers of parked vCPU `vcpu`.
    pub fn registers(&self, vcpu: u32) -> Result<VcpuSnapshot> {
        self.control
            .on_vcpu(vcpu, move |fd| VcpuSnapshot::capture(vcpu, fd))?
    }

    /// Writes the registers of parked vCPU `regs.vcpu`: general registers, rip, rflags,
    /// cr0/cr3/cr4 and EFER. Segment registers cannot be changed this way (a selector
    /// without its descriptor would be a lie): a changed one is refused.
    pub fn set_registers(&self, regs: &VcpuSnapshot) -> Result<()> {
        let regs = regs.clone();
        self.control
            .on_vcpu(regs.vcpu, move |fd| write_registers(fd, &regs))?
    }

    /// The VM-wide guest debug set last.
    pub fn guest_debug(&self) -> GuestDebug {
        self.control.config()
    }

    /// Sets guest debug on every vCPU (the VM must be paused). Refused with
    /// `GuestDebugUnsupported` for what this host's KVM does not allow; on a KVM
    /// error, the previous setting is put back.
    pub fn set_guest_debug(&self, config: GuestDebug) -> Result<()> {
        self.support.check(&config)?;
        self.require_paused()?;
        let old = self.control.config();
        if let Err(e) = self.apply(&config) {
            let _ = self.apply(&old);
            return Err(e);
        }
        self.control.set_config(config);
        Ok(())
    }

    fn apply(&self, config: &GuestDebug) -> Result<()> {
        for vcpu in self.control.parked() {
            let step = self.control.stepping(vcpu);
            self.apply_one(vcpu, config, step)?;
        }
        Ok(())
    }

    fn apply_one(&self, vcpu: u32, config: &GuestDebug, step: bool) -> Result<()> {
        let d = kvm::guest_debug(config, step, self.block_irq);
        self.control.on_vcpu(vcpu, move |fd| {
            fd.set_guest_debug(&d)
                .map_err(kvm_err("KVM_SET_GUEST_DEBUG"))
        })??;
        self.control.set_stepping(vcpu, step);
        Ok(())
    }

    fn require_paused(&self) -> Result<()> {
        if self.control.ended() {
            return Err(HypervisorError::VmEnded);
        }
        if !self.control.is_paused() {
            return Err(HypervisorError::VmNotPaused);
        }
        Ok(())
    }

    /// Lets the vCPUs go as `actions` says (`actions[i]` for vCPU `i`; vCPUs beyond
    /// the slice continue). The VM must be paused. A step on a host whose KVM cannot
    /// single-step is refused before anything runs.
    pub fn resume(&self, actions: &[ResumeAction]) -> Result<()> {
        self.require_paused()?;
        let action = |i: u32| actions.get(i as usize).copied().unwrap_or_default();
        if !self.support.single_step && (0..self.vcpus).any(|i| action(i) == ResumeAction::Step) {
            return Err(HypervisorError::GuestDebugUnsupported {
                what: "single-step",
                why: self.support.why_not,
            });
        }
        let config = self.control.config();
        for vcpu in self.control.parked() {
            let step = action(vcpu) == ResumeAction::Step;
            if self.control.stepping(vcpu) != step {
                self.apply_one(vcpu, &config, step)?;
            }
        }
        let run: Vec<u32> = (0..self.vcpus)
            .filter(|&i| action(i) != ResumeAction::Stay)
            .collect();
        self.control.release(&run)
    }

    /// After `resume`: waits up to `timeout` for a debug exit. Once one comes, every
    /// vCPU is stopped (all-stop) before it is returned. `None`: still running.
    pub fn wait_stop(&self, timeout: Duration) -> Result<Option<DebugStop>> {
        self.control.wait_stop(timeout, SETTLE)
    }

    /// Reads guest-physical memory through vm-memory's checked accessors; the whole
    /// range must be guest RAM. A handle does not keep RAM mapped once the VM ended.
    pub fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<()> {
        let len = buf.len() as u64;
        self.control
            .with_memory(|m| m.read_slice(buf, GuestAddress(gpa)))?
            .map_err(|_| HypervisorError::NotGuestRam { gpa, len })
    }

    /// Writes guest-physical memory, all of it guest RAM.
    pub fn write_phys(&self, gpa: u64, data: &[u8]) -> Result<()> {
        let len = data.len() as u64;
        self.control
            .with_memory(|m| m.write_slice(data, GuestAddress(gpa)))?
            .map_err(|_| HypervisorError::NotGuestRam { gpa, len })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn support_follows_the_backing_and_the_flags_kvm_reports() {
        let hw = GuestDebugSupport::of(&KvmBacking::Hardware("kvm_intel"), true, 0);
        assert!(hw.single_step && hw.sw_breakpoints && hw.hw_breakpoints && hw.watchpoints);
        let none = GuestDebugSupport::of(&KvmBacking::Hardware("kvm_intel"), false, 0);
        assert!(!none.single_step && !none.sw_breakpoints && !none.hw_breakpoints);
        assert!(none.why_not.contains("KVM_SET_GUEST_DEBUG"));
        let no_sw = GuestDebugSupport::of(
            &KvmBacking::Hardware("kvm_amd"),
            true,
            kvm_bindings::KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_HW_BP,
        );
        assert!(!no_sw.sw_breakpoints && no_sw.hw_breakpoints);
        let e = no_sw
            .check(&GuestDebug {
                sw_breakpoints: true,
                ..GuestDebug::default()
            })
            .unwrap_err()
            .to_string();
        assert!(e.contains("software breakpoints"), "{e}");
        assert_eq!(
            GuestDebugSupport::of(&KvmBacking::Paravirtual, true, 0),
            PVM_SUPPORT
        );
    }
}
