//! The breakpoint state gdb's target keeps: who holds a debug register, and the `int3`s
//! planted in guest memory with the bytes they replaced (and putting those back).

use gdbstub::target::ext::breakpoints::WatchKind;

use super::DebugVm;

/// x86's breakpoint instruction.
pub(super) const INT3: u8 = 0xcc;

/// Who asked for a debug register.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Owner {
    /// A `Z0` where KVM takes no `int3` (kvm_pvm).
    Sw,
    /// A `Z1`.
    Hw,
    /// A `Z2`-`Z4`.
    Watch(WatchKind),
}

/// A `Z0` planted as an `int3`: the byte it replaced and where.
#[derive(Clone, Copy, Debug)]
pub(super) struct Int3 {
    pub(super) paddr: u64,
    pub(super) orig: u8,
}

/// Puts the byte an `int3` replaced back, unless the guest wrote over it meanwhile.
pub(super) fn restore(vm: &impl DebugVm, bp: Int3) {
    let mut now = [0u8];
    if vm.read_phys(bp.paddr, &mut now).is_ok() && now[0] == INT3 {
        if let Err(e) = vm.write_phys(bp.paddr, &[bp.orig]) {
            tracing::warn!("gdb: an int3 could not be taken out: {e}");
        }
    }
}
