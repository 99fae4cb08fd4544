//! Kernel stack traces (`bt`), unwound with the kernel's own ORC tables the way
//! `arch/x86/kernel/unwind_orc.c` does, from outside: a sleeping task starts from what
//! `switch_to` saved on its stack, a task on a CPU (or the CPU itself) from the vCPU's
//! registers. Every stack word is read through checked guest memory, the walk is
//! bounded, a stack that goes the wrong way or loops ends it, and how it ended is part
//! of the answer (the bottom of a kernel stack, user space, or an error naming the
//! frame), so a corrupt stack yields the frames before the damage, never a hang.

pub mod kernel_code;
pub mod orc;

use std::collections::HashSet;

use serde::{Deserialize, Serialize};

use crate::error::DebugError;
use crate::memory::KernelMemory;
use orc::{OrcEntry, OrcReg, OrcType};

pub use kernel_code::{backtrace_cpu, backtrace_task, KernelCode};

/// Most frames walked before the trace is cut.
pub const MAX_FRAMES: usize = 128;
/// Kernel stacks (task and IRQ stacks) are this size and aligned to it on x86-64;
/// within one, the stack pointer only grows while unwinding.
const STACK_BLOCK: u64 = 16 << 10;

/// `struct pt_regs` offsets (x86-64).
mod pt_regs {
    pub const BP: u64 = 32;
    pub const R13: u64 = 16;
    pub const R10: u64 = 56;
    pub const DX: u64 = 96;
    pub const DI: u64 = 112;
    pub const IP: u64 = 128;
    pub const CS: u64 = 136;
    pub const SP: u64 = 152;
}

/// A CPU's general registers, as an unwind starts from them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub struct Registers {
    pub rax: u64,
    pub rbx: u64,
    pub rcx: u64,
    pub rdx: u64,
    pub rsi: u64,
    pub rdi: u64,
    pub rbp: u64,
    pub rsp: u64,
    pub r8: u64,
    pub r9: u64,
    pub r10: u64,
    pub r11: u64,
    pub r12: u64,
    pub r13: u64,
    pub r14: u64,
    pub r15: u64,
    pub rip: u64,
    pub rflags: u64,
    pub cs: u64,
}

impl Registers {
    /// The register a `pt_regs` offset names.
    fn at_pt_regs_offset(&self, off: u64) -> Option<u64> {
        Some(match off {
            0 => self.r15,
            8 => self.r14,
            16 => self.r13,
            24 => self.r12,
            32 => self.rbp,
            40 => self.rbx,
            48 => self.r11,
            56 => self.r10,
            64 => self.r9,
            72 => self.r8,
            80 => self.rax,
            88 => self.rcx,
            96 => self.rdx,
            104 => self.rsi,
            112 => self.rdi,
            128 => self.rip,
            136 => self.cs,
            152 => self.rsp,
            _ => return None,
        })
    }

    /// Whether the CPU was running user code (CPL 3, or a user-half address when the
    /// code segment is unknown).
    fn user_mode(&self) -> bool {
        if self.cs != 0 {
            self.cs & 3 != 0
        } else {
            self.rip < 0xffff_8000_0000_0000
        }
    }
}

/// [`Registers`] from any register set with the same field names (`rax` … `r15`, `rip`,
/// `rflags`, `cs`): a vmcore's `NT_PRSTATUS`, QMP's register dump.
#[macro_export]
macro_rules! registers_from {
    ($r:expr) => {{
        let r = &$r;
        $crate::unwind::Registers {
            rax: r.rax,
            rbx: r.rbx,
            rcx: r.rcx,
            rdx: r.rdx,
            rsi: r.rsi,
            rdi: r.rdi,
            rbp: r.rbp,
            rsp: r.rsp,
            r8: r.r8,
            r9: r.r9,
            r10: r.r10,
            r11: r.r11,
            r12: r.r12,
            r13: r.r13,
            r14: r.r14,
            r15: r.r15,
            rip: r.rip,
            rflags: r.rflags,
            cs: u64::from(r.cs),
        }
    }};
}

impl From<&crate::vmcore::PrStatusRegs> for Registers {
    fn from(r: &crate::vmcore::PrStatusRegs) -> Self {
        registers_from!(r)
    }
}

/// What the unwinder needs to know about code: its ORC entry and its name.
pub trait CodeInfo {
    /// The ORC entry covering `ip`; `Ok(None)` when no table covers it.
    fn orc(&self, ip: u64) -> Result<Option<OrcEntry>, DebugError>;
    /// The function (and module) `ip` is in; None when it is not known kernel text.
    fn locate(&self, ip: u64) -> Option<Location>;
}

/// Where a code address is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// Function name.
    pub function: String,
    /// Bytes into it.
    pub offset: u64,
    /// The module it belongs to (None: vmlinux).
    pub module: Option<String>,
}

/// One frame of a trace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The code address (a return address, or where an interrupt struck).
    pub ip: u64,
    /// The stack pointer in this frame.
    pub sp: u64,
    /// `function+0xoffset`, when `ip` is known kernel text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub function: Option<String>,
    /// The module `ip` belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// `ip` came from registers saved on the stack (an interrupt, exception or system
    /// call entered here), not from a return address.
    #[serde(default)]
    pub from_regs: bool,
    /// False when the frame was found by guessing a frame pointer (code without ORC
    /// data), as the kernel marks such frames with `?`.
    pub reliable: bool,
}

/// Why a trace stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum TraceEnd {
    /// The bottom of a kernel stack (a kernel thread's or an idle task's first frame).
    StackEnd,
    /// Registers saved on entry from user space: the kernel part ends here.
    UserSpace {
        /// The user instruction pointer.
        ip: u64,
        /// The user stack pointer.
        sp: u64,
    },
    /// The walk could not go on; the frames before are sound.
    Error {
        /// What went wrong, where.
        message: String,
    },
    /// [`MAX_FRAMES`] were walked.
    Limit,
}

/// Where the walk starts.
#[derive(Debug, Clone, Copy)]
pub struct Start {
    /// Instruction pointer.
    pub ip: u64,
    /// Stack pointer.
    pub sp: u64,
    /// Frame pointer register.
    pub bp: u64,
    /// `ip` is where execution resumes, not a return address (look it up as is).
    pub signal: bool,
    /// A CPU's full register set, when starting from one.
    pub regs: Option<Registers>,
}

/// Where saved registers are, for ORC entries based on `pt_regs` fields.
#[derive(Debug, Clone, Copy)]
enum SavedRegs {
    /// A `pt_regs` in guest memory at this address.
    Stack(u64),
    /// The vCPU's registers.
    Cpu(Registers),
}

/// The unwinder's state between frames.
struct State {
    ip: u64,
    sp: u64,
    bp: u64,
    signal: bool,
    regs: Option<SavedRegs>,
    full_regs: bool,
    prev_regs: Option<SavedRegs>,
    from_regs: bool,
    reliable: bool,
}

/// Walks the stack from `start`: the frames found and why it stopped.
pub fn unwind(mem: &dyn KernelMemory, code: &dyn CodeInfo, start: Start) -> (Vec<Frame>, TraceEnd) {
    let mut s = State {
        ip: start.ip,
        sp: start.sp,
        bp: start.bp,
        signal: start.signal,
        regs: start.regs.map(SavedRegs::Cpu),
        full_regs: start.regs.is_some(),
        prev_regs: None,
        from_regs: false,
        reliable: true,
    };
    let mut frames = Vec::new();
    let mut seen = HashSet::new();
    let end = loop {
        if let Some(regs) = s.regs {
            match user_mode(mem, regs) {
                Ok(true) => break TraceEnd::UserSpace { ip: s.ip, sp: s.sp },
                Ok(false) => {}
                Err(message) => break TraceEnd::Error { message },
            }
        }
        if frames.len() >= MAX_FRAMES {
            break TraceEnd::Limit;
        }
        let loc = code.locate(s.ip);
        let known = loc.is_some();
        frames.push(Frame {
            ip: s.ip,
            sp: s.sp,
            function: loc
                .as_ref()
                .map(|l| format!("{}+{:#x}", l.function, l.offset)),
            module: loc.and_then(|l| l.module),
            from_regs: s.from_regs,
            reliable: s.reliable,
        });
        if !known {
            break TraceEnd::Error {
                message: format!("{:#x} is not kernel text: the stack is corrupt here", s.ip),
            };
        }
        if !seen.insert((s.ip, s.sp)) {
            break TraceEnd::Error {
                message: format!("the stack loops at sp {:#x}", s.sp),
            };
        }
        match step(mem, code, &mut s) {
            Ok(None) => {}
            Ok(Some(end)) => break end,
            Err(message) => break TraceEnd::Error { message },
        }
    };
    (frames, end)
}

fn user_mode(mem: &dyn KernelMemory, regs: SavedRegs) -> Result<bool, String> {
    match regs {
        SavedRegs::Cpu(r) => Ok(r.user_mode()),
        SavedRegs::Stack(at) => mem
            .read_u64(at + pt_regs::CS)
            .map(|cs| cs & 3 != 0)
            .map_err(|e| format!("saved registers at {at:#x} are unreadable: {e}")),
    }
}

/// A `pt_regs` field of the registers in reach (the kernel's `get_reg`).
fn saved_reg(mem: &dyn KernelMemory, s: &State, off: u64) -> Option<u64> {
    let regs = if s.full_regs { s.regs } else { s.prev_regs }?;
    match regs {
        SavedRegs::Cpu(r) => r.at_pt_regs_offset(off),
        SavedRegs::Stack(at) => mem.read_u64(at + off).ok(),
    }
}

/// One step to the caller: `Ok(Some(end))` when this frame is the last.
fn step(
    mem: &dyn KernelMemory,
    code: &dyn CodeInfo,
    s: &mut State,
) -> Result<Option<TraceEnd>, String> {
    let word = |addr: u64| {
        mem.read_u64(addr)
            .map_err(|e| format!("stack word at {addr:#x} is unreadable: {e}"))
    };
    // A return address points after its call, which may be the next function's first
    // byte (a call to a noreturn function): look up the call itself.
    let lookup = if s.signal { s.ip } else { s.ip.wrapping_sub(1) };
    let orc = match code.orc(lookup).map_err(|e| e.to_string())? {
        Some(o) => o,
        None => {
            s.reliable = false;
            OrcEntry::frame_pointer_guess()
        }
    };
    match orc.kind {
        OrcType::EndOfStack => return Ok(Some(TraceEnd::StackEnd)),
        OrcType::Undefined => {
            return Err(format!(
                "no unwind data for {:#x} (the kernel's ORC table leaves it undefined)",
                s.ip
            ))
        }
        OrcType::Unknown(t) => {
            return Err(format!("ORC entry for {:#x} has unknown type {t}", s.ip))
        }
        _ => {}
    }
    let reg = |name: &str, off: u64| {
        saved_reg(mem, s, off).ok_or_else(|| {
            format!(
                "the frame at {:#x} needs {name} from saved registers, which are not in reach",
                s.ip
            )
        })
    };
    let offset = i64::from(orc.sp_offset);
    let (base, indirect) = match orc.sp_reg {
        OrcReg::Sp => (s.sp.wrapping_add_signed(offset), false),
        OrcReg::Bp => (s.bp.wrapping_add_signed(offset), false),
        OrcReg::SpIndirect => (s.sp, true),
        OrcReg::BpIndirect => (s.bp.wrapping_add_signed(offset), true),
        OrcReg::R10 => (reg("r10", pt_regs::R10)?, false),
        OrcReg::R13 => (reg("r13", pt_regs::R13)?, false),
        OrcReg::Di => (reg("rdi", pt_regs::DI)?, false),
        OrcReg::Dx => (reg("rdx", pt_regs::DX)?, false),
        other => {
            return Err(format!(
                "ORC entry for {:#x} has sp based on {other:?}",
                s.ip
            ))
        }
    };
    let sp = if indirect {
        let v = word(base)?;
        if orc.sp_reg == OrcReg::SpIndirect {
            v.wrapping_add_signed(offset)
        } else {
            v
        }
    } else {
        base
    };
    let (prev_sp, prev_ip) = (s.sp, s.ip);
    match orc.kind {
        OrcType::Call => {
            s.ip = word(sp.wrapping_sub(8))?;
            s.sp = sp;
            s.regs = None;
            s.prev_regs = None;
            s.from_regs = false;
        }
        OrcType::Regs => {
            s.ip = word(sp + pt_regs::IP)?;
            s.sp = word(sp + pt_regs::SP)?;
            s.regs = Some(SavedRegs::Stack(sp));
            s.prev_regs = None;
            s.full_regs = true;
            s.from_regs = true;
        }
        OrcType::RegsPartial => {
            // Only the iret frame (ip, cs, flags, sp, ss) is there.
            s.ip = word(sp)?;
            s.sp = word(sp + 24)?;
            if s.full_regs {
                s.prev_regs = s.regs;
            }
            s.regs = Some(SavedRegs::Stack(sp.wrapping_sub(pt_regs::IP)));
            s.full_regs = false;
            s.from_regs = true;
        }
        _ => unreachable!("handled above"),
    }
    s.signal = orc.signal || s.from_regs;
    match orc.bp_reg {
        OrcReg::Undefined => {
            if let Some(bp) = saved_reg(mem, s, pt_regs::BP) {
                s.bp = bp;
            }
        }
        OrcReg::PrevSp => s.bp = word(sp.wrapping_add_signed(i64::from(orc.bp_offset)))?,
        OrcReg::Bp => s.bp = word(s.bp.wrapping_add_signed(i64::from(orc.bp_offset)))?,
        other => {
            return Err(format!(
                "ORC entry for {prev_ip:#x} has bp based on {other:?}"
            ))
        }
    }
    // Within one stack the caller's frame is always higher up; a stack that goes the
    // other way is corrupt (or the ORC data wrong), and following it could loop.
    if s.sp <= prev_sp && s.sp / STACK_BLOCK == prev_sp / STACK_BLOCK {
        return Err(format!(
            "the stack goes the wrong way after {prev_ip:#x} (sp {prev_sp:#x} to {:#x})",
            s.sp
        ));
    }
    Ok(None)
}

/// A whole trace, as `vesper debug bt` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Backtrace {
    /// The task's thread id, when a task was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// The task's command name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    /// The CPU whose registers started the walk, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<u32>,
    /// Where the first frame came from, in words.
    pub source: String,
    /// Innermost first.
    pub frames: Vec<Frame>,
    /// Why the walk stopped.
    pub end: TraceEnd,
}

#[cfg(test)]
mod tests;
