//! What the counters mean: a vCPU's state, whether it stalls, exit-reason names. Pure
//! logic over [`RawVcpu`] snapshots, no BPF.

use serde::{Deserialize, Serialize};

/// One vCPU thread's counters as the eBPF programs keep them (`struct vcpu_stats` in
/// `bpf/hostprobe.bpf.c`; keep the two in step). Times are CLOCK_MONOTONIC ns, taken
/// by the scheduler's programs (context switches, wakeups): the per-exit programs read
/// no clock (it would cost more than the rest of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(C)]
pub struct RawVcpu {
    /// `kvm_exit`s.
    pub exits: u64,
    /// `kvm_entry`s.
    pub entries: u64,
    /// `kvm_userspace_exit`s: KVM_RUN returned to the VMM.
    pub uexits: u64,
    /// First time it left a CPU out of KVM_RUN after its last return to the VMM
    /// (0: never).
    pub parked_ns: u64,
    /// `uexits` at `parked_ns`: the time holds while `uexits` still equals this.
    pub parked_uexits: u64,
    /// Last time it got a CPU.
    pub switch_in_ns: u64,
    /// Last time it left a CPU.
    pub switch_out_ns: u64,
    /// Runnable since (0: not waiting for a CPU).
    pub runnable_ns: u64,
    /// Time runnable but not running, summed.
    pub steal_ns: u64,
    /// Time on a CPU, summed.
    pub oncpu_ns: u64,
    /// The task's `__state` when it left its CPU (0: still runnable).
    pub out_state: i64,
    /// Inside KVM_RUN, as of its last return to the VMM, `kvm_entry`, context switch or
    /// scheduler tick.
    pub in_run: u32,
    /// On a CPU now.
    pub on_cpu: u32,
    /// Returns to the VMM by `KVM_EXIT_*` code below [`VMM_REASONS`].
    pub vmm_reasons: [u64; VMM_REASONS],
}

/// `KVM_EXIT_*` codes counted in [`RawVcpu::vmm_reasons`] (`VMM_REASONS` in the C).
pub const VMM_REASONS: usize = 48;

impl Default for RawVcpu {
    fn default() -> Self {
        RawVcpu {
            exits: 0,
            entries: 0,
            uexits: 0,
            parked_ns: 0,
            parked_uexits: 0,
            switch_in_ns: 0,
            switch_out_ns: 0,
            runnable_ns: 0,
            steal_ns: 0,
            oncpu_ns: 0,
            out_state: 0,
            in_run: 0,
            on_cpu: 0,
            vmm_reasons: [0; VMM_REASONS],
        }
    }
}

// SAFETY: RawVcpu is repr(C), made only of integers (any bit pattern is valid) and
// without padding (its u32s come in a pair before the u64 array), so it may be copied to and from a BPF map value byte for byte.
unsafe impl aya::Pod for RawVcpu {}

/// The scheduler's `__TASK_STOPPED` and `__TASK_TRACED` bits.
const TASK_STOPPED: i64 = 0x4;
const TASK_TRACED: i64 = 0x8;

/// What a vCPU thread is doing, as the host kernel sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VcpuState {
    /// Inside KVM_RUN, on a CPU: running guest code (or KVM's handling of an exit).
    InGuest,
    /// Inside KVM_RUN, off CPU: the guest halted and waits for an interrupt.
    Halted,
    /// Out of KVM_RUN: in the VMM (handling an exit), or parked by it (a pause).
    OutOfGuest,
    /// Runnable, waiting for a host CPU.
    Runnable,
    /// Stopped by a signal (SIGSTOP) or a tracer.
    Stopped,
    /// On a CPU; no KVM seen (TCG runs guest code in user space).
    Running,
    /// Asleep; no KVM seen.
    Sleeping,
}

impl VcpuState {
    /// The wire name.
    pub fn name(self) -> &'static str {
        match self {
            VcpuState::InGuest => "in_guest",
            VcpuState::Halted => "halted",
            VcpuState::OutOfGuest => "out_of_guest",
            VcpuState::Runnable => "runnable",
            VcpuState::Stopped => "stopped",
            VcpuState::Running => "running",
            VcpuState::Sleeping => "sleeping",
        }
    }
}

impl RawVcpu {
    /// Whether this thread was seen in KVM_RUN (a KVM vCPU, not TCG).
    pub fn uses_kvm(&self) -> bool {
        // Left KVM_RUN while watched counts too: a guest that never exits entered it
        // before watching began.
        self.uexits > 0 || self.entries > 0 || self.in_run != 0
    }

    /// Its state now.
    pub fn state(&self) -> VcpuState {
        let stopped = self.out_state & (TASK_STOPPED | TASK_TRACED) != 0;
        match (self.on_cpu != 0, self.uses_kvm(), self.in_run != 0) {
            (false, _, _) if stopped => VcpuState::Stopped,
            (false, _, _) if self.runnable_ns != 0 => VcpuState::Runnable,
            (true, true, true) => VcpuState::InGuest,
            (false, true, true) => VcpuState::Halted,
            (_, true, false) => VcpuState::OutOfGuest,
            (true, false, _) => VcpuState::Running,
            (false, false, _) => VcpuState::Sleeping,
        }
    }

    /// If the vCPU is stalled at `now` — frozen by its host for longer than `threshold`
    /// — its state and since when (ns). A guest that halted is idle, not stalled; a TCG
    /// vCPU (no KVM_RUN seen) is judged by the scheduler only: stopped, or starved of a
    /// CPU. `watched_ns` is when watching began (nothing before it was seen);
    /// `moved_ns` is when the watcher last saw its KVM counters move (the exit path
    /// keeps no clock), the date of leaving KVM_RUN for a thread that has not left its
    /// CPU since.
    pub fn stall(
        &self,
        now: u64,
        watched_ns: u64,
        moved_ns: u64,
        threshold: u64,
    ) -> Option<(VcpuState, u64)> {
        let state = self.state();
        let since = match state {
            VcpuState::Stopped => self.switch_out_ns,
            VcpuState::Runnable => self.runnable_ns,
            VcpuState::OutOfGuest => self.parked_since().unwrap_or(moved_ns),
            _ => return None,
        }
        .max(watched_ns);
        (now.saturating_sub(since) > threshold).then_some((state, since))
    }

    /// When it left a CPU after its last return to the VMM, if it has since.
    fn parked_since(&self) -> Option<u64> {
        (self.parked_ns != 0 && self.parked_uexits == self.uexits).then_some(self.parked_ns)
    }
}

impl RawVcpu {
    /// Whether a vCPU that stalled in `state` from `since`, with `uexits` returns to the
    /// VMM then, has made progress since: a vCPU parked out of the guest, back into
    /// KVM_RUN (or through it); a stopped or starved one, back on a CPU. A parked thread woken for a
    /// moment (its VMM's timed waits) is no progress, so one freeze is one stall however
    /// its thread is poked meanwhile.
    pub fn progressed(&self, state: VcpuState, since: u64, uexits: u64) -> bool {
        match state {
            VcpuState::OutOfGuest => self.uexits > uexits || self.in_run != 0,
            _ => self.switch_in_ns > since,
        }
    }
}

impl RawVcpu {
    /// KVM_RUN calls seen: each returned once, but for the one it may be in now.
    pub fn kvm_runs(&self) -> u64 {
        self.uexits + u64::from(self.in_run != 0)
    }

    /// Its counted returns to the VMM as exit-reason keys (isa 3) and counts.
    pub fn vmm_reason_counts(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        (0u32..)
            .zip(self.vmm_reasons.iter().copied())
            .filter(|(_, n)| *n != 0)
            .map(|(code, n)| ((3 << 28) | code, n))
    }
}

/// A name for an exit-reason key of the `exit_reasons` map: `(isa << 28) | reason`,
/// isa 1 = VMX, 2 = SVM (kvm_exit), 3 = KVM_RUN's return to the VMM (`KVM_EXIT_*`).
pub fn reason_name(key: u32) -> String {
    let (isa, code) = (key >> 28, key & 0x0fff_ffff);
    let known = match isa {
        1 => vmx_name(code),
        2 => svm_name(code),
        3 => kvm_exit_name(code),
        _ => None,
    };
    let prefix = match isa {
        1 => "vmx",
        2 => "svm",
        3 => "vmm",
        _ => "isa?",
    };
    match known {
        Some(n) => format!("{prefix}:{n}"),
        None => format!("{prefix}:{code:#x}"),
    }
}

fn vmx_name(c: u32) -> Option<&'static str> {
    Some(match c {
        0 => "exception_nmi",
        1 => "external_interrupt",
        7 => "interrupt_window",
        10 => "cpuid",
        12 => "hlt",
        18 => "vmcall",
        28 => "cr_access",
        30 => "io_instruction",
        31 => "msr_read",
        32 => "msr_write",
        40 => "pause_instruction",
        44 => "apic_access",
        45 => "eoi_induced",
        48 => "ept_violation",
        49 => "ept_misconfig",
        52 => "preemption_timer",
        56 => "apic_write",
        _ => return None,
    })
}

fn svm_name(c: u32) -> Option<&'static str> {
    Some(match c {
        0x060 => "interrupt",
        0x061 => "nmi",
        0x064 => "vintr",
        0x072 => "cpuid",
        0x077 => "pause",
        0x078 => "hlt",
        0x07b => "io",
        0x07c => "msr",
        0x081 => "hypercall",
        0x400 => "npf",
        0x401 => "avic_incomplete_ipi",
        0x402 => "avic_unaccelerated_access",
        _ => return None,
    })
}

fn kvm_exit_name(c: u32) -> Option<&'static str> {
    Some(match c {
        0 => "unknown",
        2 => "io",
        3 => "hypercall",
        4 => "debug",
        5 => "hlt",
        6 => "mmio",
        7 => "irq_window_open",
        8 => "shutdown",
        9 => "fail_entry",
        10 => "intr",
        17 => "internal_error",
        24 => "system_event",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;

    fn kvm_vcpu() -> RawVcpu {
        RawVcpu {
            uexits: 10,
            in_run: 1,
            on_cpu: 1,
            ..Default::default()
        }
    }

    #[test]
    fn a_halted_kvm_vcpu_is_idle_not_stalled() {
        let v = RawVcpu {
            on_cpu: 0,
            out_state: 1, // TASK_INTERRUPTIBLE, inside KVM_RUN
            switch_out_ns: 100 * MS,
            ..kvm_vcpu()
        };
        assert_eq!(v.state(), VcpuState::Halted);
        assert_eq!(v.stall(10_000 * MS, 0, 0, 500 * MS), None);
    }

    #[test]
    fn a_vcpu_parked_out_of_kvm_run_stalls_after_the_threshold() {
        let v = RawVcpu {
            in_run: 0,
            on_cpu: 0,
            out_state: 1,
            uexits: 7,
            parked_uexits: 7,
            parked_ns: 1_000 * MS,
            ..kvm_vcpu()
        };
        assert_eq!(v.state(), VcpuState::OutOfGuest);
        // Dated by when it left its CPU, not by the watcher's later sighting.
        let moved = 1_090 * MS;
        assert_eq!(v.stall(1_400 * MS, 0, moved, 500 * MS), None, "not yet");
        assert_eq!(
            v.stall(1_600 * MS, 0, moved, 500 * MS),
            Some((VcpuState::OutOfGuest, 1_000 * MS))
        );
        // Watching began after it left: counted from then.
        assert_eq!(v.stall(1_600 * MS, 1_200 * MS, moved, 500 * MS), None);
    }

    #[test]
    fn a_vcpu_out_of_kvm_run_on_its_cpu_is_dated_by_the_watcher() {
        // Returned to the VMM (uexits 8) and has not left its CPU since: the park at
        // 1 s was of an earlier return, and the VMM is busy in user space.
        let v = RawVcpu {
            in_run: 0,
            on_cpu: 1,
            uexits: 8,
            parked_uexits: 7,
            parked_ns: 1_000 * MS,
            ..kvm_vcpu()
        };
        assert_eq!(v.state(), VcpuState::OutOfGuest);
        let moved = 2_000 * MS;
        assert_eq!(v.stall(2_400 * MS, 0, moved, 500 * MS), None);
        assert_eq!(
            v.stall(2_600 * MS, 0, moved, 500 * MS),
            Some((VcpuState::OutOfGuest, moved))
        );
    }

    #[test]
    fn sigstop_and_starvation_stall_even_under_tcg() {
        let stopped = RawVcpu {
            out_state: TASK_STOPPED,
            switch_out_ns: 10 * MS,
            ..Default::default()
        };
        assert_eq!(stopped.state(), VcpuState::Stopped);
        assert!(stopped.stall(600 * MS, 0, 0, 500 * MS).is_some());
        let starved = RawVcpu {
            runnable_ns: 10 * MS,
            ..Default::default()
        };
        assert_eq!(starved.state(), VcpuState::Runnable);
        assert!(starved.stall(600 * MS, 0, 0, 500 * MS).is_some());
        let asleep = RawVcpu {
            out_state: 1,
            switch_out_ns: 10 * MS,
            ..Default::default()
        };
        assert_eq!(asleep.state(), VcpuState::Sleeping);
        assert_eq!(asleep.stall(60_000 * MS, 0, 0, 500 * MS), None);
        assert_eq!(kvm_vcpu().state(), VcpuState::InGuest);
        assert_eq!(kvm_vcpu().stall(60_000 * MS, 0, 0, 500 * MS), None);
    }

    #[test]
    fn a_parked_vcpu_poked_awake_has_not_progressed_until_it_enters_kvm_run() {
        let (since, uexits) = (1_000 * MS, 10);
        let poked = RawVcpu {
            in_run: 0,
            on_cpu: 1,
            switch_in_ns: 1_500 * MS,
            uexits,
            ..kvm_vcpu()
        };
        assert!(!poked.progressed(VcpuState::OutOfGuest, since, uexits));
        let inside = RawVcpu { in_run: 1, ..poked };
        assert!(inside.progressed(VcpuState::OutOfGuest, since, uexits));
        // Back in and out again between two polls.
        let through = RawVcpu {
            uexits: uexits + 1,
            ..poked
        };
        assert!(through.progressed(VcpuState::OutOfGuest, since, uexits));
        assert!(
            poked.progressed(VcpuState::Stopped, since, uexits),
            "a stopped one ran again"
        );
    }

    #[test]
    fn reasons_are_named_by_isa() {
        assert_eq!(reason_name((1 << 28) | 30), "vmx:io_instruction");
        assert_eq!(reason_name((2 << 28) | 0x7b), "svm:io");
        assert_eq!(reason_name((3 << 28) | 2), "vmm:io");
        assert_eq!(reason_name((3 << 28) | 99), "vmm:0x63");
    }

    #[test]
    fn raw_layout_matches_the_c_struct() {
        // 10 u64 + 1 s64 + 2 u32 + the reason counts in bpf/hostprobe.bpf.c's
        // struct vcpu_stats.
        assert_eq!(
            std::mem::size_of::<RawVcpu>(),
            11 * 8 + 2 * 4 + VMM_REASONS * 8
        );
    }
}
