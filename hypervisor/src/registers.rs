//! Moving a vCPU's registers between KVM and a `VcpuSnapshot`: capturing them at a stop
//! (the run loop, reports, the debugger) and writing a debugger's changes back. The
//! general registers, rip, rflags and the control registers may change; segment
//! registers may not (their hidden descriptors would not follow).

use kvm_bindings::kvm_segment;
use kvm_ioctls::VcpuFd;

use crate::error::{kvm, HypervisorError, Result};
use crate::vcpu_state::{Segment, VcpuSnapshot};

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
}

/// Writes `regs` into the vCPU; segment registers must be unchanged.
pub(crate) fn write_registers(fd: &mut VcpuFd, regs: &VcpuSnapshot) -> Result<()> {
    let mut r = fd.get_regs().map_err(kvm("KVM_GET_REGS"))?;
    let mut s = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
    let g = regs.gprs;
    [
        r.rax, r.rbx, r.rcx, r.rdx, r.rsi, r.rdi, r.rsp, r.rbp, r.r8, r.r9, r.r10, r.r11, r.r12,
        r.r13, r.r14, r.r15,
    ] = g;
    r.rip = regs.rip;
    r.rflags = regs.rflags;
    let now: [&kvm_segment; 6] = [&s.cs, &s.ds, &s.es, &s.fs, &s.gs, &s.ss];
    if now
        .iter()
        .zip(&regs.segments)
        .any(|(a, b)| Segment::from(*a) != *b)
    {
        return Err(HypervisorError::RegisterRefused(
            "segment registers cannot be changed from the debugger (their descriptors would \
             not follow); load them in the guest",
        ));
    }
    let sregs_changed = (s.cr0, s.cr3, s.cr4, s.efer) != (regs.cr0, regs.cr3, regs.cr4, regs.efer);
    (s.cr0, s.cr3, s.cr4, s.efer) = (regs.cr0, regs.cr3, regs.cr4, regs.efer);
    if sregs_changed {
        fd.set_sregs(&s).map_err(kvm("KVM_SET_SREGS"))?;
    }
    fd.set_regs(&r).map_err(kvm("KVM_SET_REGS"))
}
