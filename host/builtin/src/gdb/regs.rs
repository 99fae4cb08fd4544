//! Registers in gdb's x86-64 layout (`X86_64_SSE`: the general registers, rip, eflags,
//! the segment selectors; x87/SSE read as zero and are not written).

use gdbstub::common::Tid;
use gdbstub::target::ext::base::multithread::MultiThreadBase;
use gdbstub::target::ext::base::single_register_access::SingleRegisterAccess;
use gdbstub::target::TargetResult;
use gdbstub_arch::x86::reg::id::{X86SegmentRegId, X86_64CoreRegId};
use gdbstub_arch::x86::reg::{X86SegmentRegs, X86_64CoreRegs};
use vesper_hypervisor::HypervisorError;

use super::target::{refuse, GdbTarget};
use super::DebugVm;

impl<V: DebugVm> SingleRegisterAccess<Tid> for GdbTarget<V> {
    fn read_register(
        &mut self,
        tid: Tid,
        reg: X86_64CoreRegId,
        buf: &mut [u8],
    ) -> TargetResult<usize, Self> {
        let mut regs = X86_64CoreRegs::default();
        self.read_registers(&mut regs, tid)?;
        let mut put = |bytes: &[u8]| {
            let n = bytes.len().min(buf.len());
            buf[..n].copy_from_slice(&bytes[..n]);
            Ok(n)
        };
        match reg {
            X86_64CoreRegId::Gpr(i) => put(&regs.regs[usize::from(i) % 16].to_le_bytes()),
            X86_64CoreRegId::Rip => put(&regs.rip.to_le_bytes()),
            X86_64CoreRegId::Eflags => put(&regs.eflags.to_le_bytes()),
            X86_64CoreRegId::Segment(s) => put(&segment(&mut regs.segments, s).to_le_bytes()),
            X86_64CoreRegId::St(_) => put(&[0; 10]),
            X86_64CoreRegId::Xmm(_) => put(&[0; 16]),
            // The x87 control words and MXCSR.
            _ => put(&[0; 4]),
        }
    }

    fn write_register(
        &mut self,
        tid: Tid,
        reg: X86_64CoreRegId,
        val: &[u8],
    ) -> TargetResult<(), Self> {
        let mut regs = X86_64CoreRegs::default();
        self.read_registers(&mut regs, tid)?;
        let mut b8 = [0u8; 8];
        let n = val.len().min(8);
        b8[..n].copy_from_slice(&val[..n]);
        let v = u64::from_le_bytes(b8);
        match reg {
            X86_64CoreRegId::Gpr(i) => regs.regs[usize::from(i) % 16] = v,
            X86_64CoreRegId::Rip => regs.rip = v,
            X86_64CoreRegId::Eflags => regs.eflags = v as u32,
            X86_64CoreRegId::Segment(s) => *segment(&mut regs.segments, s) = v as u32,
            _ => {
                return refuse(
                    "register write",
                    HypervisorError::RegisterRefused(
                        "x87/SSE registers are not read or written by the builtin gdb server",
                    ),
                )
            }
        }
        self.write_registers(&regs, tid)
    }
}

fn segment(s: &mut X86SegmentRegs, id: X86SegmentRegId) -> &mut u32 {
    match id {
        X86SegmentRegId::CS => &mut s.cs,
        X86SegmentRegId::SS => &mut s.ss,
        X86SegmentRegId::DS => &mut s.ds,
        X86SegmentRegId::ES => &mut s.es,
        X86SegmentRegId::FS => &mut s.fs,
        X86SegmentRegId::GS => &mut s.gs,
    }
}
