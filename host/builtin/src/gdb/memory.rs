//! gdb's addresses are guest-virtual: translated by walking the guest's own page tables
//! from a vCPU's CR3 (`vesper_debug::paging`, each entry read once through the VMM's
//! checked accessors, at most five levels), one page at a time.

use vesper_debug::paging::{PageTables, PagingError};
use vesper_debug::{MemoryError, PhysMemory};
use vesper_hypervisor::VcpuSnapshot;

use super::DebugVm;

const CR0_PG: u64 = 1 << 31;
const CR4_LA57: u64 = 1 << 12;
const EFER_LMA: u64 = 1 << 10;
const PAGE: u64 = 4096;

/// Why a guest-virtual access failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VirtError {
    /// No translation (not mapped, a table outside RAM, not canonical).
    #[error(transparent)]
    Paging(#[from] PagingError),
    /// The translation points outside guest RAM.
    #[error("{vaddr:#x} maps to guest-physical {paddr:#x}, which is not guest RAM")]
    NotRam {
        /// Guest-virtual address.
        vaddr: u64,
        /// Where it maps.
        paddr: u64,
    },
    /// 32-bit paging (protected mode with paging, not long mode) is not walked.
    #[error("the vCPU uses 32-bit paging, which the gdb server does not walk")]
    Paging32,
}

/// Guest-physical memory seen through a `DebugVm`.
struct Phys<'a, V>(&'a V);

impl<V: DebugVm> PhysMemory for Phys<'_, V> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.0
            .read_phys(addr, buf)
            .map_err(|_| MemoryError::NotRam {
                addr,
                len: buf.len() as u64,
            })
    }
}

/// How a vCPU translates addresses now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Mmu {
    /// Paging off: virtual is physical.
    Off,
    /// 4- or 5-level paging.
    Long(PageTables),
    /// Legacy 32-bit or PAE paging outside long mode.
    Legacy,
}

impl Mmu {
    pub(crate) fn of(regs: &VcpuSnapshot) -> Self {
        if regs.cr0 & CR0_PG == 0 {
            Self::Off
        } else if regs.efer & EFER_LMA == 0 {
            Self::Legacy
        } else {
            Self::Long(PageTables {
                root: regs.cr3,
                five_level: regs.cr4 & CR4_LA57 != 0,
                sme_mask: 0,
            })
        }
    }

    /// The guest-physical address of `vaddr` and the bytes left in its page.
    fn translate<V: DebugVm>(&self, vm: &V, vaddr: u64) -> Result<(u64, u64), VirtError> {
        let in_page = |page: u64, paddr: u64| page - (paddr & (page - 1));
        match self {
            Self::Off => Ok((vaddr, in_page(PAGE, vaddr))),
            Self::Legacy => Err(VirtError::Paging32),
            Self::Long(pt) => {
                let t = pt.translate(&Phys(vm), vaddr)?;
                Ok((t.paddr, in_page(t.page_size, t.paddr)))
            }
        }
    }

    /// The guest-physical pieces of `[vaddr, vaddr + len)`: all of them, or the error
    /// of the first address that has none (with how many bytes came before it).
    pub(crate) fn pieces<V: DebugVm>(
        &self,
        vm: &V,
        vaddr: u64,
        len: usize,
    ) -> (Vec<(u64, usize)>, Option<VirtError>) {
        let mut pieces = Vec::new();
        let mut done = 0usize;
        while done < len {
            let at = vaddr.wrapping_add(done as u64);
            match self.translate(vm, at) {
                Ok((paddr, left)) => {
                    let n = usize::try_from(left).unwrap_or(usize::MAX).min(len - done);
                    pieces.push((paddr, n));
                    done += n;
                }
                Err(e) => return (pieces, Some(e)),
            }
        }
        (pieces, None)
    }

    /// Reads `buf.len()` bytes at `vaddr`; returns how many could be read (a prefix).
    pub(crate) fn read<V: DebugVm>(
        &self,
        vm: &V,
        vaddr: u64,
        buf: &mut [u8],
    ) -> Result<usize, VirtError> {
        let (pieces, err) = self.pieces(vm, vaddr, buf.len());
        let mut done = 0;
        for (paddr, n) in pieces {
            if vm.read_phys(paddr, &mut buf[done..done + n]).is_err() {
                return first_or(done, VirtError::NotRam { vaddr, paddr });
            }
            done += n;
        }
        match err {
            Some(e) => first_or(done, e),
            None => Ok(done),
        }
    }

    /// Writes all of `data` at `vaddr`, or nothing if any of it has no translation.
    pub(crate) fn write<V: DebugVm>(
        &self,
        vm: &V,
        vaddr: u64,
        data: &[u8],
    ) -> Result<(), VirtError> {
        let (pieces, err) = self.pieces(vm, vaddr, data.len());
        if let Some(e) = err {
            return Err(e);
        }
        let mut done = 0;
        for (paddr, n) in pieces {
            vm.write_phys(paddr, &data[done..done + n])
                .map_err(|_| VirtError::NotRam { vaddr, paddr })?;
            done += n;
        }
        Ok(())
    }
}

/// A partial read counts; nothing read is the error.
fn first_or(done: usize, e: VirtError) -> Result<usize, VirtError> {
    if done > 0 {
        Ok(done)
    } else {
        Err(e)
    }
}
