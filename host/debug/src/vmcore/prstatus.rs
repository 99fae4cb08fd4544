//! A CPU's notes: `NT_PRSTATUS` (its registers, as `struct elf_prstatus` has them) and
//! QEMU's CPU-state note (`QEMUCPUState`: the same registers, segment bases and the
//! control registers), the pair QEMU's `dump-guest-memory` writes per vCPU.

use serde::{Deserialize, Serialize};

use super::{NREGS, PRSTATUS_SIZE, PR_PID, PR_REG, QEMU_CPU_STATE_SIZE};

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
    /// Not in `NT_PRSTATUS`: written in the CPU's QEMU CPU-state note.
    #[serde(default)]
    pub control: ControlRegs,
}

/// `cr0`, `cr2`, `cr3`, `cr4`: what tells a reader the CPU's paging (crash reads `cr3`
/// from QEMU's note when VMCOREINFO lacks the KASLR offset).
#[allow(missing_docs)] // The registers are their names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ControlRegs {
    pub cr0: u64,
    pub cr2: u64,
    pub cr3: u64,
    pub cr4: u64,
}

/// `QEMUCPUState`'s version and where its parts lie (QEMU's target/i386/arch_dump.c):
/// 18 registers from `rax`, six segments of 24 bytes (selector, limit, flags, pad,
/// base) from `cs` in the order cs ds es fs gs ss, then ldt tr gdt idt, then `cr[5]`,
/// then `kernel_gs_base`.
const QEMU_CPU_STATE_VERSION: u32 = 1;
const QEMU_REGS: usize = 8;
const QEMU_SEGMENTS: usize = QEMU_REGS + 18 * 8;
const QEMU_SEGMENT_SIZE: usize = 24;
const QEMU_CR: usize = QEMU_SEGMENTS + 10 * QEMU_SEGMENT_SIZE;

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
            control: ControlRegs::default(),
        }
    }

    /// QEMU's `QEMUCPUState` for this CPU: what makes crash take the `NT_PRSTATUS`
    /// notes as one per CPU (offline ones included) rather than one per CPU online.
    pub(super) fn encode_qemu(&self) -> [u8; QEMU_CPU_STATE_SIZE] {
        let mut d = [0u8; QEMU_CPU_STATE_SIZE];
        let mut put = |at: usize, v: u64| d[at..at + 8].copy_from_slice(&v.to_le_bytes());
        let gprs = [
            self.rax,
            self.rbx,
            self.rcx,
            self.rdx,
            self.rsi,
            self.rdi,
            self.rsp,
            self.rbp,
            self.r8,
            self.r9,
            self.r10,
            self.r11,
            self.r12,
            self.r13,
            self.r14,
            self.r15,
            self.rip,
            self.rflags,
        ];
        for (i, v) in gprs.into_iter().enumerate() {
            put(QEMU_REGS + 8 * i, v);
        }
        let segments = [
            (self.cs, 0),
            (self.ds, 0),
            (self.es, 0),
            (self.fs, self.fs_base),
            (self.gs, self.gs_base),
            (self.ss, 0),
        ];
        for (i, (selector, base)) in segments.into_iter().enumerate() {
            let at = QEMU_SEGMENTS + QEMU_SEGMENT_SIZE * i;
            // The selector is a u32 and the base a u64 at +16.
            put(at, selector & 0xffff_ffff);
            put(at + 16, base);
        }
        let c = &self.control;
        for (i, v) in [c.cr0, 0, c.cr2, c.cr3, c.cr4].into_iter().enumerate() {
            put(QEMU_CR + 8 * i, v);
        }
        d[0..4].copy_from_slice(&QEMU_CPU_STATE_VERSION.to_le_bytes());
        d[4..8].copy_from_slice(&(QEMU_CPU_STATE_SIZE as u32).to_le_bytes());
        d
    }

    /// The control registers of a `QEMUCPUState` (of any size that holds them).
    pub(super) fn decode_qemu_control(d: &[u8]) -> Option<ControlRegs> {
        let get = |i: usize| {
            let at = QEMU_CR + 8 * i;
            Some(u64::from_le_bytes(d.get(at..at + 8)?.try_into().ok()?))
        };
        Some(ControlRegs {
            cr0: get(0)?,
            cr2: get(2)?,
            cr3: get(3)?,
            cr4: get(4)?,
        })
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
