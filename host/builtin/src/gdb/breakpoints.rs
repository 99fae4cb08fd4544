//! gdb's breakpoints where this host's KVM can take them: `Z0` as an `int3` where KVM
//! turns it into a debug exit, else (kvm_pvm) in one of the four debug registers, like
//! `Z1`; watchpoints (`Z2`-`Z4`) in the debug registers where they fire.

use gdbstub::target::ext::breakpoints::{
    Breakpoints, HwBreakpoint as GdbHwBreakpoint, HwBreakpointOps, HwWatchpoint, HwWatchpointOps,
    SwBreakpoint, SwBreakpointOps, WatchKind,
};
use gdbstub::target::TargetResult;
use vesper_hypervisor::debug::{HwBreakpoint, HwKind};
use vesper_hypervisor::HypervisorError;

use super::int3::{restore, Int3, Owner, INT3};
use super::memory::Mmu;
use super::target::{refuse, GdbTarget};
use super::DebugVm;

impl<V: DebugVm> GdbTarget<V> {
    /// Takes a free debug register for `bp`; false when all four are in use.
    fn take_slot(&mut self, bp: HwBreakpoint, owner: Owner) -> Result<bool, HypervisorError> {
        if self.slots.iter().flatten().any(|s| *s == (bp, owner)) {
            return Ok(true);
        }
        let Some(i) = self.slots.iter().position(Option::is_none) else {
            tracing::warn!(
                addr = format_args!("{:#x}", bp.addr),
                "gdb breakpoint refused: all 4 debug registers are in use; delete one"
            );
            return Ok(false);
        };
        self.slots[i] = Some((bp, owner));
        if let Err(e) = self.vm.set_guest_debug(self.guest_debug()) {
            self.slots[i] = None;
            return Err(e);
        }
        Ok(true)
    }

    fn free_slot(&mut self, bp: HwBreakpoint, owner: Owner) -> Result<bool, HypervisorError> {
        let Some(i) = self.slots.iter().position(|s| *s == Some((bp, owner))) else {
            return Ok(false);
        };
        self.slots[i] = None;
        self.vm.set_guest_debug(self.guest_debug())?;
        Ok(true)
    }

    /// The first parked vCPU's address space (breakpoints have no thread).
    pub(super) fn mmu(&self) -> Result<Mmu, HypervisorError> {
        Ok(Mmu::of(&self.vm.registers(0)?))
    }

    fn plant_int3(&mut self, addr: u64) -> Result<bool, HypervisorError> {
        if self.int3s.contains_key(&addr) {
            return Ok(true);
        }
        let (pieces, err) = self.mmu()?.pieces(&self.vm, addr, 1);
        let Some(&(paddr, _)) = pieces.first() else {
            tracing::warn!(
                "gdb breakpoint at {addr:#x} refused: {}",
                err.map(|e| e.to_string()).unwrap_or_default()
            );
            return Ok(false);
        };
        let mut orig = [0u8];
        self.vm.read_phys(paddr, &mut orig)?;
        self.int3s.insert(
            addr,
            Int3 {
                paddr,
                orig: orig[0],
            },
        );
        // Guest debug first: an int3 reaching the guest would be its own exception.
        if let Err(e) = self.vm.set_guest_debug(self.guest_debug()) {
            self.int3s.remove(&addr);
            return Err(e);
        }
        self.vm.write_phys(paddr, &[INT3])?;
        Ok(true)
    }

    fn lift_int3(&mut self, addr: u64) -> Result<bool, HypervisorError> {
        let Some(bp) = self.int3s.remove(&addr) else {
            return Ok(false);
        };
        restore(&self.vm, bp);
        if self.int3s.is_empty() {
            self.vm.set_guest_debug(self.guest_debug())?;
        }
        Ok(true)
    }
}

impl<V: DebugVm> Breakpoints for GdbTarget<V> {
    fn support_sw_breakpoint(&mut self) -> Option<SwBreakpointOps<'_, Self>> {
        // Always: without Z0, gdb would write int3s itself (fatal under kvm_pvm).
        (self.support.sw_breakpoints || self.support.hw_breakpoints).then_some(self)
    }

    fn support_hw_breakpoint(&mut self) -> Option<HwBreakpointOps<'_, Self>> {
        self.support.hw_breakpoints.then_some(self)
    }

    fn support_hw_watchpoint(&mut self) -> Option<HwWatchpointOps<'_, Self>> {
        self.support.watchpoints.then_some(self)
    }
}

impl<V: DebugVm> SwBreakpoint for GdbTarget<V> {
    fn add_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let done = if self.support.sw_breakpoints {
            self.plant_int3(addr)
        } else {
            let bp = HwBreakpoint {
                addr,
                kind: HwKind::Execute,
            };
            self.take_slot(bp, Owner::Sw)
        };
        done.or_else(|e| refuse("breakpoint", e))
    }

    fn remove_sw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let bp = HwBreakpoint {
            addr,
            kind: HwKind::Execute,
        };
        let done = if self.int3s.contains_key(&addr) {
            self.lift_int3(addr)
        } else {
            self.free_slot(bp, Owner::Sw)
        };
        done.or_else(|e| refuse("breakpoint removal", e))
    }
}

impl<V: DebugVm> GdbHwBreakpoint for GdbTarget<V> {
    fn add_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let bp = HwBreakpoint {
            addr,
            kind: HwKind::Execute,
        };
        self.take_slot(bp, Owner::Hw)
            .or_else(|e| refuse("hardware breakpoint", e))
    }

    fn remove_hw_breakpoint(&mut self, addr: u64, _kind: usize) -> TargetResult<bool, Self> {
        let bp = HwBreakpoint {
            addr,
            kind: HwKind::Execute,
        };
        self.free_slot(bp, Owner::Hw)
            .or_else(|e| refuse("hardware breakpoint removal", e))
    }
}

/// A watchpoint as the debug registers take it: 1, 2, 4 or 8 bytes, aligned.
fn watch(addr: u64, len: u64, kind: WatchKind) -> Option<HwBreakpoint> {
    let len = u8::try_from(len)
        .ok()
        .filter(|l| [1, 2, 4, 8].contains(l))?;
    if !addr.is_multiple_of(u64::from(len)) {
        return None;
    }
    let kind = match kind {
        WatchKind::Write => HwKind::Write(len),
        // x86 has no read-only watchpoint: reads and writes both stop.
        WatchKind::Read | WatchKind::ReadWrite => HwKind::Access(len),
    };
    Some(HwBreakpoint { addr, kind })
}

impl<V: DebugVm> HwWatchpoint for GdbTarget<V> {
    fn add_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let Some(bp) = watch(addr, len, kind) else {
            tracing::warn!(
                "gdb watchpoint {addr:#x}+{len} refused: 1, 2, 4 or 8 aligned bytes only"
            );
            return Ok(false);
        };
        self.take_slot(bp, Owner::Watch(kind))
            .or_else(|e| refuse("watchpoint", e))
    }

    fn remove_hw_watchpoint(
        &mut self,
        addr: u64,
        len: u64,
        kind: WatchKind,
    ) -> TargetResult<bool, Self> {
        let Some(bp) = watch(addr, len, kind) else {
            return Ok(false);
        };
        self.free_slot(bp, Owner::Watch(kind))
            .or_else(|e| refuse("watchpoint removal", e))
    }
}
