//! A vCPU's registers in gdb's x86-64 layout (`X86_64_SSE`: the general registers, rip,
//! eflags, the segment selectors; x87/SSE read as zero and are not written), both ways.

use gdbstub_arch::x86::reg::{X86SegmentRegs, X86_64CoreRegs};
use vesper_hypervisor::{HypervisorError, VcpuSnapshot};

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
