//! `Kernel`: one guest kernel as the readers see it — guest-physical memory, the page
//! tables that map it, VMCOREINFO, kallsyms and (on first use) BTF — opened from memory
//! alone, the way drgn or crash open a vmcore, so it works the same on a live guest, a
//! paused or hung one, and a dead one.

use std::ops::Range;
use std::sync::{Arc, OnceLock};

use crate::btf::Btf;
use crate::error::DebugError;
use crate::kallsyms::{Kallsyms, KallsymsLocation, Symbol};
use crate::memory::{KernelMemory, MemoryError, PhysMemory};
use crate::paging::PageTables;
use crate::vmcoreinfo::{self, VmcoreInfo};

pub use crate::paging::START_KERNEL_MAP;
/// Largest BTF blob read out of guest memory (vmlinux BTF is ~5 MiB).
const MAX_BTF: u64 = 64 << 20;
/// `struct new_utsname`: six fields of 65 bytes; `release` is the third.
const UTS_FIELD_LEN: u64 = 65;
/// VMCOREINFO copies looked at (the kernel keeps two; a guest may plant more).
const MAX_CANDIDATES: usize = 8;

/// A guest kernel, read from the host.
pub struct Kernel {
    mem: Arc<dyn PhysMemory>,
    ram: Vec<Range<u64>>,
    info: VmcoreInfo,
    info_paddr: u64,
    tables: PageTables,
    syms: Kallsyms,
    btf: OnceLock<Result<Arc<Btf>, String>>,
}

impl std::fmt::Debug for Kernel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Kernel")
            .field("release", &self.info.osrelease())
            .field("vmcoreinfo_at", &self.info_paddr)
            .field("tables", &self.tables)
            .field("symbols", &self.syms.len())
            .finish_non_exhaustive()
    }
}

impl Kernel {
    /// Finds the kernel in `mem` (guest RAM `ram`): its VMCOREINFO, page tables and
    /// symbols. A candidate VMCOREINFO counts only when the kernel it describes holds
    /// up: its `init_uts_ns` release, read through its own page tables, must equal its
    /// `OSRELEASE` (a page a guest process filled with lookalike text does not).
    pub fn open(mem: Arc<dyn PhysMemory>, ram: &[Range<u64>]) -> Result<Self, DebugError> {
        let candidates = vmcoreinfo::scan(mem.as_ref(), ram, MAX_CANDIDATES)?;
        let mut last = None;
        for c in candidates {
            match Self::from_vmcoreinfo(mem.clone(), ram, c.info, c.paddr) {
                Ok(k) => return Ok(k),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("scan returns at least one candidate or an error"))
    }

    /// The kernel `info` (found at guest-physical `info_paddr`) describes, in guest RAM
    /// `ram`.
    pub fn from_vmcoreinfo(
        mem: Arc<dyn PhysMemory>,
        ram: &[Range<u64>],
        info: VmcoreInfo,
        info_paddr: u64,
    ) -> Result<Self, DebugError> {
        let phys_base = info.value("NUMBER(phys_base)")?;
        let top = info
            .symbol("init_top_pgt")
            .or_else(|_| info.symbol("swapper_pg_dir"))?;
        let root = image_phys(top, phys_base).ok_or(DebugError::Inconsistent(format!(
            "init_top_pgt {top:#x} is not in the kernel image mapping"
        )))?;
        let tables = PageTables {
            root,
            five_level: info.lookup("NUMBER(pgtable_l5_enabled)") == Some(1),
            sme_mask: info.lookup("NUMBER(sme_mask)").unwrap_or(0),
        };
        let reader = Pages {
            mem: mem.as_ref(),
            tables,
        };
        // The kernel this text describes must be the one in memory.
        let uts = info.symbol("init_uts_ns")?;
        let name = info.lookup("OFFSET(uts_namespace.name)").unwrap_or(0);
        let mut release = [0u8; UTS_FIELD_LEN as usize];
        reader.read(uts + name + 2 * UTS_FIELD_LEN, &mut release)?;
        let release = crate::c_string(&release);
        if release != info.osrelease() {
            return Err(DebugError::Inconsistent(format!(
                "VMCOREINFO at {info_paddr:#x} says release {:?}, but its init_uts_ns says {release:?}",
                info.osrelease()
            )));
        }
        let loc = KallsymsLocation::from_vmcoreinfo(|s| info.symbol(s).ok())?;
        let syms = Kallsyms::read(&reader, &loc)?;
        Ok(Self {
            mem,
            ram: ram.to_vec(),
            info,
            info_paddr,
            tables,
            syms,
            btf: OnceLock::new(),
        })
    }

    /// VMCOREINFO.
    pub fn vmcoreinfo(&self) -> &VmcoreInfo {
        &self.info
    }

    /// Where VMCOREINFO was found (guest-physical).
    pub fn vmcoreinfo_paddr(&self) -> u64 {
        self.info_paddr
    }

    /// The kernel release (`uname -r`).
    pub fn release(&self) -> &str {
        self.info.osrelease()
    }

    /// The KASLR offset of the kernel image (`KERNELOFFSET`).
    pub fn kaslr_offset(&self) -> u64 {
        self.info.lookup("KERNELOFFSET").unwrap_or(0)
    }

    /// The page tables used for kernel addresses.
    pub fn page_tables(&self) -> PageTables {
        self.tables
    }

    /// Guest-physical memory.
    pub fn phys(&self) -> &dyn PhysMemory {
        self.mem.as_ref()
    }

    /// The guest-physical RAM ranges.
    pub fn phys_ranges(&self) -> Vec<Range<u64>> {
        self.ram.clone()
    }

    /// The symbol table.
    pub fn symbols(&self) -> &Kallsyms {
        &self.syms
    }

    /// The symbol `name`, or an error saying so.
    pub fn symbol(&self, name: &str) -> Result<&Symbol, DebugError> {
        self.syms
            .lookup(name)
            .ok_or_else(|| DebugError::UnknownSymbol(name.to_string()))
    }

    /// The guest-physical address of `addr`.
    pub fn translate(&self, addr: u64) -> Result<u64, DebugError> {
        Ok(self.tables.translate(self.mem.as_ref(), addr)?.paddr)
    }

    /// The kernel's BTF, read out of its memory (`__start_BTF`..`__stop_BTF`) and
    /// parsed once.
    pub fn btf(&self) -> Result<Arc<Btf>, DebugError> {
        self.btf
            .get_or_init(|| self.load_btf().map(Arc::new).map_err(|e| e.to_string()))
            .clone()
            .map_err(DebugError::NoTypes)
    }

    fn load_btf(&self) -> Result<Btf, DebugError> {
        let start = self.symbol("__start_BTF")?.addr;
        let stop = self.symbol("__stop_BTF")?.addr;
        let len = stop
            .checked_sub(start)
            .filter(|l| *l > 0 && *l <= MAX_BTF)
            .ok_or_else(|| {
                DebugError::Inconsistent(format!(
                    "BTF section {start:#x}..{stop:#x} is empty, reversed or over {MAX_BTF} bytes"
                ))
            })?;
        let mut blob = vec![0u8; len as usize];
        self.read(start, &mut blob)?;
        Ok(Btf::parse(&blob)?)
    }
}

impl KernelMemory for Kernel {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        Pages {
            mem: self.mem.as_ref(),
            tables: self.tables,
        }
        .read(addr, buf)
    }
}

/// Kernel-virtual reads through `tables`, page by page.
struct Pages<'a> {
    mem: &'a dyn PhysMemory,
    tables: PageTables,
}

impl KernelMemory for Pages<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = addr
                .checked_add(done as u64)
                .ok_or(MemoryError::NotMapped {
                    addr,
                    why: "the range wraps around the address space".into(),
                })?;
            let t = self.tables.translate(self.mem, at)?;
            // Up to the end of this page (whatever its size) or of the buffer.
            let in_page = t.page_size - (at & (t.page_size - 1));
            let n = (in_page.min((buf.len() - done) as u64)) as usize;
            self.mem.read_phys(t.paddr, &mut buf[done..done + n])?;
            done += n;
        }
        Ok(())
    }
}

/// The physical address of a kernel-image address (before any page table is known).
fn image_phys(addr: u64, phys_base: u64) -> Option<u64> {
    let off = addr.checked_sub(START_KERNEL_MAP)?;
    Some(off.wrapping_add(phys_base))
}
