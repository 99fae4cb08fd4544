//! A gdb remote protocol server for a builtin VM (the `gdbstub` crate over the VMM's
//! `DebugHandle`): registers, memory at guest-virtual addresses, ^C, continue, single
//! step and breakpoints as far as this host's KVM allows, each vCPU a gdb thread.
//!
//! It listens on a Unix socket; one client at a time (a second is told so and closed).
//! Attaching stops the VM; whatever way the client leaves (detach, kill, EOF, garbage),
//! its breakpoints are taken out and a VM that ran when it came runs on. `k` is a
//! detach: gdb never kills the VM.
//!
//! Breakpoints: gdb's software breakpoints (`Z0`) are `int3`s where KVM turns them into
//! debug exits; where it cannot (kvm_pvm), they take one of the four debug registers,
//! so gdb never plants an `int3` of its own through a memory write.

mod breakpoints;
mod int3;
mod layout;
mod memory;
mod regs;
mod server;
mod target;
#[cfg(test)]
mod tests;

use std::time::Duration;

use vesper_hypervisor::{
    DebugHandle, DebugStop, GuestDebug, GuestDebugSupport, HypervisorError, ResumeAction,
    VcpuSnapshot,
};

pub use memory::VirtError;
pub use server::GdbServer;

/// The VMM operations the server uses; `DebugHandle` in vesperd, a fake in tests.
pub trait DebugVm: Send + Sync + 'static {
    /// vCPU count (gdb threads 1..=count).
    fn vcpu_count(&self) -> u32;
    /// What this host's KVM allows.
    fn support(&self) -> GuestDebugSupport;
    /// Stops every vCPU.
    fn pause(&self, timeout: Duration) -> Result<(), HypervisorError>;
    /// Whether every vCPU is stopped.
    fn is_paused(&self) -> bool;
    /// Whether the VM is gone.
    fn ended(&self) -> bool;
    /// Lets vCPUs run (`actions[i]` for vCPU `i`).
    fn resume(&self, actions: &[ResumeAction]) -> Result<(), HypervisorError>;
    /// Waits for a debug exit after a resume.
    fn wait_stop(&self, timeout: Duration) -> Result<Option<DebugStop>, HypervisorError>;
    /// A stopped vCPU's registers.
    fn registers(&self, vcpu: u32) -> Result<VcpuSnapshot, HypervisorError>;
    /// Writes a stopped vCPU's registers.
    fn set_registers(&self, regs: &VcpuSnapshot) -> Result<(), HypervisorError>;
    /// Sets VM-wide guest debug.
    fn set_guest_debug(&self, config: GuestDebug) -> Result<(), HypervisorError>;
    /// Reads guest RAM.
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HypervisorError>;
    /// Writes guest RAM.
    fn write_phys(&self, gpa: u64, data: &[u8]) -> Result<(), HypervisorError>;
}

impl DebugVm for DebugHandle {
    fn vcpu_count(&self) -> u32 {
        DebugHandle::vcpu_count(self)
    }
    fn support(&self) -> GuestDebugSupport {
        DebugHandle::support(self)
    }
    fn pause(&self, timeout: Duration) -> Result<(), HypervisorError> {
        DebugHandle::pause(self, timeout)
    }
    fn is_paused(&self) -> bool {
        DebugHandle::is_paused(self)
    }
    fn ended(&self) -> bool {
        DebugHandle::ended(self)
    }
    fn resume(&self, actions: &[ResumeAction]) -> Result<(), HypervisorError> {
        DebugHandle::resume(self, actions)
    }
    fn wait_stop(&self, timeout: Duration) -> Result<Option<DebugStop>, HypervisorError> {
        DebugHandle::wait_stop(self, timeout)
    }
    fn registers(&self, vcpu: u32) -> Result<VcpuSnapshot, HypervisorError> {
        DebugHandle::registers(self, vcpu)
    }
    fn set_registers(&self, regs: &VcpuSnapshot) -> Result<(), HypervisorError> {
        DebugHandle::set_registers(self, regs)
    }
    fn set_guest_debug(&self, config: GuestDebug) -> Result<(), HypervisorError> {
        DebugHandle::set_guest_debug(self, config)
    }
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HypervisorError> {
        DebugHandle::read_phys(self, gpa, buf)
    }
    fn write_phys(&self, gpa: u64, data: &[u8]) -> Result<(), HypervisorError> {
        DebugHandle::write_phys(self, gpa, data)
    }
}
