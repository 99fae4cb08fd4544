//! The per-vCPU state beyond regs/sregs that the 64-bit entry sets and `Vm::reset`
//! restores (`EntryExtra`): the FPU in its power-on state, the MSRs the entry zeroes or
//! enables, and, with the in-kernel irqchip, which vCPUs run from the entry (`Start`).
//! The VM keeps it to apply on every reset; it names nothing above the error type.

use kvm_bindings::{
    kvm_fpu, kvm_mp_state, kvm_msr_entry, Msrs, KVM_MP_STATE_RUNNABLE, KVM_MP_STATE_UNINITIALIZED,
};
use kvm_ioctls::VcpuFd;

use crate::error::{kvm, HypervisorError, Result};

/// Per-vCPU state beyond regs/sregs that the entry sets and `Vm::reset` restores.
#[derive(Clone, Debug)]
pub(crate) struct EntryExtra {
    fpu: kvm_fpu,
    msrs: Vec<kvm_msr_entry>,
    /// With an irqchip: every vCPU runnable at the entry (`All`), or only vCPU 0 while the
    /// others wait for the INIT/SIPI a kernel sends them (`BootstrapOnly`).
    start: Option<Start>,
}

/// Which vCPUs start running at the entry (with the in-kernel irqchip; without it, all).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Start {
    /// Every vCPU.
    All,
    /// vCPU 0; the others wait for INIT/SIPI, as on a PC (Linux with an MP table).
    BootstrapOnly,
}

const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
/// IA32_MISC_ENABLE: fast string operations.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back (no firmware programs them).
const MTRR_ENABLE_WB: u64 = (1 << 11) | 6;

impl EntryExtra {
    pub(super) fn long_mode(start: Option<Start>) -> Self {
        let msr = |index, data| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        };
        Self {
            // x87 and SSE in their power-on state.
            fpu: kvm_fpu {
                fcw: 0x37f,
                mxcsr: 0x1f80,
                ..Default::default()
            },
            msrs: vec![
                msr(MSR_IA32_SYSENTER_CS, 0),
                msr(MSR_IA32_SYSENTER_ESP, 0),
                msr(MSR_IA32_SYSENTER_EIP, 0),
                msr(MSR_STAR, 0),
                msr(MSR_LSTAR, 0),
                msr(MSR_CSTAR, 0),
                msr(MSR_SYSCALL_MASK, 0),
                msr(MSR_KERNEL_GS_BASE, 0),
                msr(MSR_IA32_TSC, 0),
                msr(MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
                msr(MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WB),
            ],
            start,
        }
    }

    /// Sets the FPU, the MSRs and (with an irqchip) whether the vCPU runs from the entry
    /// or waits for INIT/SIPI.
    pub(crate) fn apply(&self, index: usize, fd: &VcpuFd) -> Result<()> {
        fd.set_fpu(&self.fpu).map_err(kvm("KVM_SET_FPU"))?;
        let msrs = Msrs::from_entries(&self.msrs)
            .map_err(|_| HypervisorError::InvalidConfig("too many MSRs for one KVM_SET_MSRS"))?;
        let set = fd.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
        if set < self.msrs.len() {
            // KVM stops at the first MSR it refuses; the rest keep their reset values.
            tracing::warn!(
                vcpu = index,
                msr = format_args!("{:#x}", self.msrs[set].index),
                "KVM refused an MSR of the 64-bit entry state; it and those after it keep \
                 KVM's reset values"
            );
        }
        if let Some(start) = self.start {
            let mp_state = if index == 0 || start == Start::All {
                KVM_MP_STATE_RUNNABLE
            } else {
                KVM_MP_STATE_UNINITIALIZED
            };
            fd.set_mp_state(kvm_mp_state { mp_state })
                .map_err(kvm("KVM_SET_MP_STATE"))?;
        }
        Ok(())
    }
}
