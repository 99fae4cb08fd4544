//! `KVM_SET_GUEST_DEBUG` in and `KVM_EXIT_DEBUG` out: pure encoding, no fd.

use kvm_bindings::{
    kvm_debug_exit_arch, kvm_guest_debug, KVM_GUESTDBG_BLOCKIRQ, KVM_GUESTDBG_ENABLE,
    KVM_GUESTDBG_SINGLESTEP, KVM_GUESTDBG_USE_HW_BP, KVM_GUESTDBG_USE_SW_BP,
};

use super::{GuestDebug, HwKind, StopCause};

/// #DB and #BP.
const DEBUG_VECTOR: u32 = 1;
const BREAKPOINT_VECTOR: u32 = 3;
/// DR6: B0-B3 (which debug register matched) and BS (single step).
const DR6_B_MASK: u64 = 0xf;
const DR6_BS: u64 = 1 << 14;
/// DR7: GE plus bit 10, which reads as one; QEMU starts from the same value.
const DR7_BASE: u64 = 0x600;

/// The DR7 bits for slot `i` (0-3): local enable, then R/W and LEN.
fn dr7_bits(i: usize, kind: HwKind) -> u64 {
    let (rw, len) = match kind {
        HwKind::Execute => (0b00, 0b00),
        HwKind::Write(len) => (0b01, len_bits(len)),
        HwKind::Access(len) => (0b11, len_bits(len)),
    };
    let shift = 16 + 4 * i;
    (1 << (2 * i)) | (rw << shift) | (len << (shift + 2))
}

/// LEN encoding: 1, 2, 8, 4 bytes are 00, 01, 10, 11.
fn len_bits(len: u8) -> u64 {
    match len {
        2 => 0b01,
        8 => 0b10,
        4 => 0b11,
        _ => 0b00,
    }
}

/// The `kvm_guest_debug` for `config`, single-stepping if `step`. `block_irq` keeps
/// interrupts from being injected during a step, where KVM offers it.
pub(crate) fn guest_debug(config: &GuestDebug, step: bool, block_irq: bool) -> kvm_guest_debug {
    let mut d = kvm_guest_debug::default();
    let hw = config.hw.iter().any(Option::is_some);
    if !(config.sw_breakpoints || hw || step) {
        return d; // control 0: guest debug off
    }
    d.control = KVM_GUESTDBG_ENABLE;
    if step {
        d.control |= KVM_GUESTDBG_SINGLESTEP;
        if block_irq {
            d.control |= KVM_GUESTDBG_BLOCKIRQ;
        }
    }
    if config.sw_breakpoints {
        d.control |= KVM_GUESTDBG_USE_SW_BP;
    }
    if hw {
        d.control |= KVM_GUESTDBG_USE_HW_BP;
        let mut dr7 = DR7_BASE;
        for (i, bp) in config.hw.iter().enumerate() {
            if let Some(bp) = bp {
                d.arch.debugreg[i] = bp.addr;
                dr7 |= dr7_bits(i, bp.kind);
            }
        }
        d.arch.debugreg[7] = dr7;
    }
    d
}

/// What a `KVM_EXIT_DEBUG` means, given whether the vCPU was single-stepping.
pub(crate) fn classify(arch: &kvm_debug_exit_arch, stepping: bool) -> StopCause {
    match arch.exception {
        BREAKPOINT_VECTOR => StopCause::SwBreakpoint,
        DEBUG_VECTOR if arch.dr6 & DR6_B_MASK != 0 => {
            let slot = (arch.dr6 & DR6_B_MASK).trailing_zeros() as u8;
            // R/W bits of that slot in DR7: 00 is an instruction breakpoint.
            if (arch.dr7 >> (16 + 4 * u32::from(slot))) & 0b11 == 0 {
                StopCause::HwBreakpoint(slot)
            } else {
                StopCause::Watchpoint(slot)
            }
        }
        DEBUG_VECTOR if arch.dr6 & DR6_BS != 0 || stepping => StopCause::Step,
        exception => StopCause::Other { exception },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::debug::HwBreakpoint;

    #[test]
    fn guest_debug_flags_and_debug_registers() {
        let off = guest_debug(&GuestDebug::default(), false, true);
        assert_eq!(off.control, 0, "nothing asked: guest debug off");

        let step = guest_debug(&GuestDebug::default(), true, true);
        assert_eq!(
            step.control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP | KVM_GUESTDBG_BLOCKIRQ
        );
        assert_eq!(
            guest_debug(&GuestDebug::default(), true, false).control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_SINGLESTEP
        );

        let mut config = GuestDebug {
            sw_breakpoints: true,
            ..GuestDebug::default()
        };
        config.hw[0] = Some(HwBreakpoint {
            addr: 0x40_1000,
            kind: HwKind::Execute,
        });
        config.hw[2] = Some(HwBreakpoint {
            addr: 0x50_0000,
            kind: HwKind::Write(4),
        });
        let d = guest_debug(&config, false, true);
        assert_eq!(
            d.control,
            KVM_GUESTDBG_ENABLE | KVM_GUESTDBG_USE_SW_BP | KVM_GUESTDBG_USE_HW_BP
        );
        assert_eq!(d.arch.debugreg[0], 0x40_1000);
        assert_eq!(d.arch.debugreg[2], 0x50_0000);
        // L0, L2; slot 2 R/W = 01 (write), LEN = 11 (4 bytes); slot 0 all zero (execute).
        let dr7 = d.arch.debugreg[7];
        assert_eq!(dr7 & 0xff, 0b01_0001);
        assert_eq!((dr7 >> 24) & 0xf, 0b1101);
        assert_eq!((dr7 >> 16) & 0xf, 0);
        assert_eq!(dr7 & DR7_BASE, DR7_BASE);
    }

    #[test]
    fn debug_exits_are_classified() {
        let exit = |exception, dr6, dr7| kvm_debug_exit_arch {
            exception,
            dr6,
            dr7,
            ..Default::default()
        };
        assert_eq!(classify(&exit(3, 0, 0), false), StopCause::SwBreakpoint);
        assert_eq!(classify(&exit(1, DR6_BS, 0), false), StopCause::Step);
        assert_eq!(classify(&exit(1, 0, 0), true), StopCause::Step);
        assert_eq!(
            classify(&exit(1, 0b0010, 0x600 | 0b100), false),
            StopCause::HwBreakpoint(1)
        );
        let dr7 = dr7_bits(3, HwKind::Access(8)) | DR7_BASE;
        assert_eq!(
            classify(&exit(1, 0b1000, dr7), false),
            StopCause::Watchpoint(3)
        );
        assert_eq!(
            classify(&exit(1, 0, 0), false),
            StopCause::Other { exception: 1 }
        );
        assert_eq!(
            classify(&exit(6, 0, 0), false),
            StopCause::Other { exception: 6 }
        );
    }
}
