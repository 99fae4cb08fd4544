//! The CPUID each vCPU sees: KVM's supported set with the vCPU's APIC id, the vCPU count
//! and the hypervisor bit filled in, and what this VMM cannot honour masked. Pure logic.

use kvm_bindings::kvm_cpuid_entry2;

const LEAF_FEATURES: u32 = 0x1;
const LEAF_CACHE_PARAMS: u32 = 0x4;
const LEAF_POWER: u32 = 0x6;
const LEAF_PMU: u32 = 0xA;
const LEAF_TOPOLOGY: u32 = 0xB;
const LEAF_TOPOLOGY_V2: u32 = 0x1F;
const LEAF_AMD_TOPOLOGY: u32 = 0x8000_001E;

/// Leaf 1 ECX: CMPXCHG16B.
const ECX_CX16: u32 = 1 << 13;
/// Leaf 1 ECX: MONITOR/MWAIT — not emulated by this VMM.
const ECX_MONITOR: u32 = 1 << 3;
/// Leaf 1 ECX: running under a hypervisor.
const ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 ECX: the LAPIC timer's TSC-deadline mode.
const ECX_TSC_DEADLINE: u32 = 1 << 24;
/// Leaf 1 EDX: more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;

/// What the host can honour beyond KVM's supported CPUID.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostLimits {
    /// The in-kernel LAPIC offers the TSC-deadline timer (a KVM capability, not in its
    /// supported CPUID).
    pub tsc_deadline: bool,
    /// KVM cannot emulate CMPXCHG16B (its emulator refuses it) and this host emulates
    /// guest memory writes often enough to hit that: the paravirtual kvm_pvm, whose
    /// shadow paging sends a Linux guest's `lock cmpxchg16b` on `struct page` (SLUB) to
    /// the emulator and stops it with KVM_INTERNAL_ERROR_EMULATION. Hidden, Linux takes
    /// its path without the instruction.
    pub hide_cmpxchg16b: bool,
}

/// Adjusts KVM's supported CPUID for vCPU `index` of `count`:
/// - leaf 1: initial APIC id = `index`, logical processor count = `count` (HTT when > 1),
///   hypervisor bit set, MONITOR/MWAIT cleared, TSC-deadline timer and CMPXCHG16B as
///   `host` says;
/// - leaves 0xB/0x1F (x2APIC topology) and AMD 0x8000001E: x2APIC id = `index`;
/// - leaf 4: cores per package = `count` (all vCPUs one package, one thread per core);
/// - leaf 6 (thermal/power management) and leaf 0xA (architectural PMU) zeroed: the VMM
///   offers neither thermal MSRs nor a configured vPMU.
pub fn filter(entries: &mut [kvm_cpuid_entry2], index: u32, count: u32, host: HostLimits) {
    let apic_id = index & 0xff;
    let count = count.clamp(1, 0xff);
    for e in entries.iter_mut() {
        match e.function {
            LEAF_FEATURES => {
                e.ebx = (e.ebx & 0x0000_ffff) | (count << 16) | (apic_id << 24);
                e.ecx = (e.ecx & !ECX_MONITOR) | ECX_HYPERVISOR;
                if host.hide_cmpxchg16b {
                    e.ecx &= !ECX_CX16;
                }
                if host.tsc_deadline {
                    e.ecx |= ECX_TSC_DEADLINE;
                } else {
                    e.ecx &= !ECX_TSC_DEADLINE;
                }
                if count > 1 {
                    e.edx |= EDX_HTT;
                } else {
                    e.edx &= !EDX_HTT;
                }
            }
            LEAF_CACHE_PARAMS => {
                // Bits 31:26 = cores per package - 1; the cache sharing field stays KVM's.
                e.eax = (e.eax & 0x03ff_ffff) | ((count - 1) << 26);
            }
            LEAF_POWER | LEAF_PMU => {
                e.eax = 0;
                e.ebx = 0;
                e.ecx = 0;
                e.edx = 0;
            }
            LEAF_TOPOLOGY | LEAF_TOPOLOGY_V2 | LEAF_AMD_TOPOLOGY => e.edx = index,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xdead_beef,
            ebx: 0x0102_0800,
            ecx: !ECX_HYPERVISOR,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    #[test]
    fn each_vcpu_sees_its_own_apic_id_and_the_hypervisor_bit() {
        let supported = [
            leaf(1, 0),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(6, 0),
            leaf(0xa, 0),
            leaf(7, 0),
        ];
        let mut v0 = supported;
        let mut v2 = supported;
        filter(&mut v0, 0, 3, HostLimits::default());
        filter(
            &mut v2,
            2,
            3,
            HostLimits {
                tsc_deadline: true,
                hide_cmpxchg16b: true,
            },
        );
        assert_eq!(v0[0].ebx >> 24, 0);
        assert_eq!(v2[0].ebx >> 24, 2);
        assert_eq!((v2[0].ebx >> 16) & 0xff, 3);
        assert_eq!(v2[0].ebx & 0xffff, 0x0800, "CLFLUSH size and brand kept");
        assert_ne!(v2[0].ecx & ECX_HYPERVISOR, 0);
        assert_eq!(v2[0].ecx & ECX_MONITOR, 0);
        assert_ne!(v2[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(v0[0].ecx & ECX_TSC_DEADLINE, 0);
        assert_eq!(v2[0].ecx & ECX_CX16, 0);
        assert_ne!(
            v0[0].ecx & ECX_CX16,
            0,
            "CMPXCHG16B kept where it can be emulated"
        );
        assert_ne!(v2[0].edx & EDX_HTT, 0);
        assert_eq!((v2[1].edx, v2[2].edx), (2, 2));
        assert_eq!((v2[3].eax, v2[3].ecx, v2[4].eax), (0, 0, 0));
        assert_eq!(v2[5], supported[5], "other leaves untouched");
        let mut one = supported;
        filter(&mut one, 0, 1, HostLimits::default());
        assert_eq!(one[0].edx & EDX_HTT, 0);
    }
}
