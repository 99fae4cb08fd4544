//! `NT_PRSTATUS`: one CPU's registers in a note, as `struct elf_prstatus` has them.

use serde::{Deserialize, Serialize};

use super::{NREGS, PRSTATUS_SIZE, PR_PID, PR_REG};

/// One CPU's registers, as an `NT_PRSTATUS` note carries them (`struct
/// user_regs_struct` order).
#[allow(missing_docs)] // The registers are their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PrStatusRegs {
    /// `pr_pid`: the task on the CPU (kdump), or the CPU's number + 1 (QEMU).
    pub pid: u32,
    pub r15: u64,
    pub r14: u64,
    pub r13: u64,
    pub r12: u64,
    pub rbp: u64,
    pub rbx: u64,
    pub r11: u64,
    pub r10: u64,
    pub r9: u64,
    pub r8: u64,
    pub rax: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub orig_rax: u64,
    pub rip: u64,
    pub cs: u64,
    pub rflags: u64,
    pub rsp: u64,
    pub ss: u64,
    pub fs_base: u64,
    pub gs_base: u64,
    pub ds: u64,
    pub es: u64,
    pub fs: u64,
    pub gs: u64,
}

impl PrStatusRegs {
    pub(super) fn regs(&self) -> [u64; NREGS] {
        [
            self.r15,
            self.r14,
            self.r13,
            self.r12,
            self.rbp,
            self.rbx,
            self.r11,
            self.r10,
            self.r9,
            self.r8,
            self.rax,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.orig_rax,
            self.rip,
            self.cs,
            self.rflags,
            self.rsp,
            self.ss,
            self.fs_base,
            self.gs_base,
            self.ds,
            self.es,
            self.fs,
            self.gs,
        ]
    }

    pub(super) fn from_regs(pid: u32, r: [u64; NREGS]) -> Self {
        let [r15, r14, r13, r12, rbp, rbx, r11, r10, r9, r8, rax, rcx, rdx, rsi, rdi, orig_rax, rip, cs, rflags, rsp, ss, fs_base, gs_base, ds, es, fs, gs] =
            r;
        Self {
            pid,
            r15,
            r14,
            r13,
            r12,
            rbp,
            rbx,
            r11,
            r10,
            r9,
            r8,
            rax,
            rcx,
            rdx,
            rsi,
            rdi,
            orig_rax,
            rip,
            cs,
            rflags,
            rsp,
            ss,
            fs_base,
            gs_base,
            ds,
            es,
            fs,
            gs,
        }
    }

    /// `struct elf_prstatus` with `pr_pid` and `pr_reg` set, the rest zero.
    pub(super) fn encode(&self) -> [u8; PRSTATUS_SIZE] {
        let mut d = [0u8; PRSTATUS_SIZE];
        d[PR_PID..PR_PID + 4].copy_from_slice(&self.pid.to_le_bytes());
        for (i, r) in self.regs().iter().enumerate() {
            let at = PR_REG + 8 * i;
            d[at..at + 8].copy_from_slice(&r.to_le_bytes());
        }
        d
    }

    pub(super) fn decode(d: &[u8]) -> Option<Self> {
        if d.len() != PRSTATUS_SIZE {
            return None;
        }
        let pid = u32::from_le_bytes(d.get(PR_PID..PR_PID + 4)?.try_into().ok()?);
        let mut r = [0u64; NREGS];
        for (i, v) in r.iter_mut().enumerate() {
            let at = PR_REG + 8 * i;
            *v = u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?);
        }
        Some(Self::from_regs(pid, r))
    }
}
