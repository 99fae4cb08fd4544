//! Registers in gdb's x86-64 layout (`X86_64_SSE`: the general registers, rip, eflags,
//! the segment selectors; x87/SSE read as zero and are not written).

use gdbstub::common::Tid;
use gdbstub::target::ext::base::multithread::MultiThreadBase;
use gdbstub::target::ext::base::single_register_access::SingleRegisterAccess;
use gdbstub::target::TargetResult;
use gdbstub_arch::x86::reg::id::{X86SegmentRegId, X86_64CoreRegId};
use gdbstub_arch::x86::reg::{X86SegmentRegs, X86_64CoreRegs};
use vesper_hypervisor::{HypervisorError, VcpuSnapshot};

use super::target::{refuse, GdbTarget};
use super::DebugVm;

/// Indices into `VcpuSnapshot::segments` (cs, ds, es, fs, gs, ss) for gdb's order.
const CS: usize = 0;
const DS: usize = 1;
const ES: usize = 2;
const FS: usize = 3;
const GS: usize = 4;
const SS: usize = 5;

/// The snapshot in gdb's layout; x87/SSE are not read and stay zero.
pub(super) fn to_gdb(s: &VcpuSnapshot, regs: &mut X86_64CoreRegs) {
    let g = s.gprs;
    // gdb: rax rbx rcx rdx rsi rdi rbp rsp r8..r15; the snapshot has rsp before rbp.
    regs.regs = [
        g[0], g[1], g[2], g[3], g[4], g[5], g[7], g[6], g[8], g[9], g[10], g[11], g[12], g[13],
        g[14], g[15],
    ];
    regs.rip = s.rip;
    regs.eflags = s.rflags as u32;
    let sel = |i: usize| u32::from(s.segments[i].selector);
    regs.segments = X86SegmentRegs {
        cs: sel(CS),
        ss: sel(SS),
        ds: sel(DS),
        es: sel(ES),
        fs: sel(FS),
        gs: sel(GS),
    };
}

/// gdb's registers applied to `now`; a segment selector that does not fit in 16 bits
/// or x87/SSE state other than what was read are refused.
pub(super) fn from_gdb(
    regs: &X86_64CoreRegs,
    now: &VcpuSnapshot,
) -> Result<VcpuSnapshot, HypervisorError> {
    let plain = X86_64CoreRegs::default();
    if regs.st != plain.st
        || regs.fpu != plain.fpu
        || regs.xmm != plain.xmm
        || regs.mxcsr != plain.mxcsr
    {
        return Err(HypervisorError::RegisterRefused(
            "x87/SSE registers are not read or written by the builtin gdb server",
        ));
    }
    let mut s = now.clone();
    let r = regs.regs;
    s.gprs = [
        r[0], r[1], r[2], r[3], r[4], r[5], r[7], r[6], r[8], r[9], r[10], r[11], r[12], r[13],
        r[14], r[15],
    ];
    s.rip = regs.rip;
    s.rflags = (now.rflags & !0xffff_ffff) | u64::from(regs.eflags);
    let seg = &regs.segments;
    for (i, v) in [
        (CS, seg.cs),
        (SS, seg.ss),
        (DS, seg.ds),
        (ES, seg.es),
        (FS, seg.fs),
        (GS, seg.gs),
    ] {
        // The VMM refuses a changed selector.
        s.segments[i].selector = u16::try_from(v)
            .map_err(|_| HypervisorError::RegisterRefused("a segment selector is 16 bits"))?;
    }
    Ok(s)
}

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
