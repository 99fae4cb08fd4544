//! What a vCPU looked like when it stopped: the exit KVM reported (`ExitKind`) and the
//! registers (`VcpuSnapshot`, with its `Segment`s), as reports, errors and the debugger
//! keep them. Plain data with its text form; it names no other file of the crate, so the
//! error type and the debugger can carry it without depending on the run loop. Reading
//! the registers out of KVM is `registers`'s.

use std::fmt;

use kvm_bindings::kvm_segment;

/// What KVM reported when the VMM could not go on.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitKind {
    /// `KVM_EXIT_SHUTDOWN` (e.g. a triple fault).
    Shutdown,
    /// `KVM_EXIT_FAIL_ENTRY` with the hardware reason.
    FailEntry {
        /// `hardware_entry_failure_reason`.
        reason: u64,
        /// Host CPU.
        cpu: u32,
    },
    /// `KVM_EXIT_INTERNAL_ERROR` with its sub-error.
    InternalError {
        /// `internal.suberror`.
        suberror: u32,
    },
    /// `KVM_EXIT_UNKNOWN`.
    Unknown,
    /// Any other exit this layer does not handle.
    Other(String),
    /// `KVM_RUN` itself failed with this errno.
    RunFailed(i32),
}

impl fmt::Display for ExitKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Shutdown => write!(f, "SHUTDOWN"),
            Self::FailEntry { reason, cpu } => {
                write!(f, "FAIL_ENTRY (reason {reason:#x}, cpu {cpu})")
            }
            Self::InternalError { suberror } => write!(f, "INTERNAL_ERROR (suberror {suberror})"),
            Self::Unknown => write!(f, "UNKNOWN"),
            Self::Other(s) => write!(f, "{s}"),
            Self::RunFailed(errno) => write!(f, "KVM_RUN errno {errno}"),
        }
    }
}

/// A segment register as the snapshot keeps it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Selector.
    pub selector: u16,
    /// Base address.
    pub base: u64,
    /// Limit.
    pub limit: u32,
}

impl From<&kvm_segment> for Segment {
    fn from(s: &kvm_segment) -> Self {
        Self {
            selector: s.selector,
            base: s.base,
            limit: s.limit,
        }
    }
}

/// A vCPU's registers at a stop, for reports and errors.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct VcpuSnapshot {
    /// vCPU index.
    pub vcpu: u32,
    /// Instruction pointer.
    pub rip: u64,
    /// Flags.
    pub rflags: u64,
    /// rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp, r8 … r15.
    pub gprs: [u64; 16],
    /// cs, ds, es, fs, gs, ss.
    pub segments: [Segment; 6],
    /// cr0.
    pub cr0: u64,
    /// cr3.
    pub cr3: u64,
    /// cr4.
    pub cr4: u64,
    /// EFER.
    pub efer: u64,
}

const GPR_NAMES: [&str; 16] = [
    "rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13",
    "r14", "r15",
];
const SEG_NAMES: [&str; 6] = ["cs", "ds", "es", "fs", "gs", "ss"];

impl VcpuSnapshot {
    /// A general register by name order (0 = rax … 15 = r15).
    pub fn gpr(&self, i: usize) -> u64 {
        self.gprs.get(i).copied().unwrap_or(0)
    }
}

impl fmt::Display for VcpuSnapshot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "rip={:#x} rflags={:#x}", self.rip, self.rflags)?;
        for (name, v) in GPR_NAMES.iter().zip(self.gprs) {
            write!(f, " {name}={v:#x}")?;
        }
        for (name, s) in SEG_NAMES.iter().zip(self.segments) {
            write!(f, " {name}={:#x}@{:#x}", s.selector, s.base)?;
        }
        write!(
            f,
            " cr0={:#x} cr3={:#x} cr4={:#x} efer={:#x}",
            self.cr0, self.cr3, self.cr4, self.efer
        )
    }
}
