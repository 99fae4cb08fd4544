//! Where the kernel maps RAM, from VMCOREINFO and its symbols: what the dump's
//! virtual addresses are made from.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::{MAX_IMAGE, PAGE, PAGE_OFFSET_L4, PAGE_OFFSET_L5};
use crate::kernel::Kernel;
use crate::memory::KernelMemory;
use crate::paging::START_KERNEL_MAP;
use crate::vmcoreinfo::VmcoreInfo;

/// Where the kernel maps guest RAM, for the dump's virtual addresses.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct KernelLayout {
    /// The direct map's base (`page_offset_base`): RAM `PT_LOAD`s get
    /// `p_vaddr = page_offset_base + paddr`. `None`: `p_vaddr` is 0.
    pub page_offset_base: Option<u64>,
    /// `NUMBER(phys_base)`: the image's physical load offset (two's complement when
    /// negative, as VMCOREINFO's value comes back).
    pub phys_base: u64,
    /// The kernel image's guest-physical range (`_text`..`_end`): aliased at
    /// `__START_KERNEL_map + paddr - phys_base`. `None`: no alias headers.
    pub image: Option<Range<u64>>,
}

impl KernelLayout {
    /// The layout of an opened kernel: `page_offset_base` read from the variable (or
    /// the fixed base when the kernel has none), the image from `_text`..`_end`.
    pub fn of(kernel: &Kernel) -> Self {
        Self::from_parts(
            kernel.vmcoreinfo(),
            |name| kernel.symbols().lookup(name).map(|s| s.addr),
            |addr| kernel.read_u64(addr).ok(),
        )
    }

    /// The layout from VMCOREINFO, a symbol lookup and a kernel-memory reader; what
    /// does not hold up (a base outside the kernel half, an image over 1 GiB) is left
    /// `None`.
    pub fn from_parts(
        info: &VmcoreInfo,
        symbol: impl Fn(&str) -> Option<u64>,
        read_u64: impl Fn(u64) -> Option<u64>,
    ) -> Self {
        let phys_base = info.lookup("NUMBER(phys_base)").unwrap_or(0);
        let page_offset_base = match symbol("page_offset_base") {
            Some(addr) => read_u64(addr),
            None if info.lookup("NUMBER(pgtable_l5_enabled)") == Some(1) => Some(PAGE_OFFSET_L5),
            None => Some(PAGE_OFFSET_L4),
        }
        .filter(|b| *b >= PAGE_OFFSET_L5 && *b < START_KERNEL_MAP && b % PAGE == 0);
        let start = symbol("_text").or_else(|| symbol("_stext"));
        let end = symbol("_end").or_else(|| symbol("__bss_stop"));
        let image = match (start, end) {
            (Some(s), Some(e)) if s >= START_KERNEL_MAP && e > s && e - s <= MAX_IMAGE => {
                let p = (s - START_KERNEL_MAP).wrapping_add(phys_base);
                p.checked_add(e - s).map(|pe| p..pe)
            }
            _ => None,
        };
        Self {
            page_offset_base,
            phys_base,
            image,
        }
    }
}
