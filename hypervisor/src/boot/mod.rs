//! Direct 64-bit boot: the long-mode entry state (GDT, identity page tables, segment and
//! control registers, MSRs, FPU, CPUID), plain static ELF64 guests, and Linux (bzImage or
//! ELF vmlinux, initramfs, command line) with linux-loader.
//!
//! Layout and entry convention (shared with the other layers; see `layout`): every boot
//! vCPU in long mode at the entry point, CS 0x10 / data 0x18, GDT 0x500, empty IDT 0x520,
//! zero page 0x7000 (RSI), RSP 0x8ff0, PML4 0x9000 identity-mapping [0, 4 GiB) with
//! 2 MiB pages, command line 0x20000, interrupts off.

pub mod cpuid;
pub(crate) mod entry_state;
pub mod gdt;
pub mod image;
pub mod layout;
pub mod mptable;
pub mod paging;
pub mod zero_page;

use std::io::Cursor;
use std::path::Path;

use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm};
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::{load_cmdline, BzImage, Elf, KernelLoader};
use vm_memory::{Bytes, GuestAddress};

use crate::error::{kvm, HypervisorError, Result};
use crate::vm::Vm;
use crate::KvmBacking;
use entry_state::{EntryExtra, Start};
use image::{ImageKind, LoadSegment};
use layout::{
    low_ram_end, ram_contains, BOOT_AREA_END, CMDLINE_ADDR, GDT_ADDR, KERNEL_LOAD_ADDR, PML4_ADDR,
    STACK_TOP, ZERO_PAGE_ADDR,
};

/// The GSI (ISA IRQ) of COM1.
pub const COM1_GSI: u32 = 4;
/// The 64-bit entry of a bzImage, from its load address.
const BZIMAGE_ENTRY_64: u64 = 0x200;
/// `align` for the initramfs (a page).
const INITRAMFS_ALIGN: u64 = 4096;

/// What `boot_linux` boots.
#[derive(Clone, Copy, Debug)]
pub struct LinuxBoot<'a> {
    /// A bzImage or an ELF vmlinux.
    pub kernel: &'a Path,
    /// An initramfs (cpio, possibly compressed), placed high below the PCI hole.
    pub initramfs: Option<&'a Path>,
    /// The kernel command line.
    pub cmdline: &'a str,
}

/// Where things were put.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BootInfo {
    /// The 64-bit entry point (RIP of every boot vCPU).
    pub entry: u64,
    /// Guest memory the kernel or guest image occupies (for a bzImage including its
    /// decompression space), [start, end).
    pub kernel: (u64, u64),
    /// The initramfs's (address, size), if any.
    pub initramfs: Option<(u64, u64)>,
    /// Command line length without its NUL (at `layout::CMDLINE_ADDR`).
    pub cmdline_len: usize,
}

/// Bigger than any kernel (a vmlinux with full debug info is well below): such a file is
/// refused before it is read into host memory.
const MAX_IMAGE_LEN: u64 = 2 << 30;

fn read_image(path: &Path) -> Result<Vec<u8>> {
    let read_err = |source| HypervisorError::ImageRead {
        path: path.to_owned(),
        source,
    };
    let len = std::fs::metadata(path).map_err(read_err)?.len();
    if len > MAX_IMAGE_LEN {
        return Err(HypervisorError::UnsupportedImage {
            path: path.to_owned(),
            reason: "it is larger than 2 GiB, which no kernel is; check the path",
        });
    }
    std::fs::read(path).map_err(read_err)
}

/// The entry must be inside a loaded segment, or the guest runs off into zeros.
fn check_entry(path: &Path, entry: u64, segments: &[LoadSegment]) -> Result<()> {
    if segments
        .iter()
        .any(|s| entry >= s.paddr && entry - s.paddr < s.memsz)
    {
        Ok(())
    } else {
        Err(HypervisorError::UnsupportedImage {
            path: path.to_owned(),
            reason: "its entry point (e_entry) is not inside a loadable segment; check how \
                     it is linked",
        })
    }
}

/// Where an initramfs of `size` bytes goes: page-aligned, as high as it fits below
/// `limit`, not below `kernel_end`. None if it does not fit.
fn initramfs_addr(size: u64, kernel_end: u64, limit: u64) -> Option<u64> {
    let floor = kernel_end.checked_next_multiple_of(INITRAMFS_ALIGN)?;
    limit
        .checked_sub(size)
        .map(|a| a / INITRAMFS_ALIGN * INITRAMFS_ALIGN)
        .filter(|&a| a >= floor)
}

/// [lowest paddr, highest end) of `segments`.
fn segments_span(segments: &[LoadSegment]) -> (u64, u64) {
    let start = segments.iter().map(|s| s.paddr).min().unwrap_or(0);
    let end = segments
        .iter()
        .map(|s| s.paddr.saturating_add(s.memsz))
        .max()
        .unwrap_or(0);
    (start, end)
}

impl Vm {
    /// Puts every vCPU in the 64-bit entry state at `rip` (see the module docs): writes
    /// the GDT and page tables, sets sregs, regs, FPU, MSRs and each vCPU's CPUID (KVM's
    /// supported set filtered by `cpuid::filter`). Also the state `reset` returns to.
    /// Does not write the zero page or command line (`boot_elf64`, `boot_linux` do).
    pub fn set_long_mode_entry(&mut self, rip: u64) -> Result<()> {
        self.enter_long_mode(rip, Start::All)
    }

    /// As `set_long_mode_entry`; with the irqchip, `start` says which vCPUs run.
    fn enter_long_mode(&mut self, rip: u64, start: Start) -> Result<()> {
        let mem_size = self.config().mem_size;
        if !ram_contains(mem_size, 0, BOOT_AREA_END) {
            return Err(HypervisorError::InvalidConfig(
                "the 64-bit entry needs at least 132 KiB of guest RAM for its boot structures",
            ));
        }
        let write = |addr: u64, bytes: &[u8]| {
            self.memory()
                .write_slice(bytes, GuestAddress(addr))
                .map_err(|_| HypervisorError::LoadOutOfRange {
                    addr,
                    len: bytes.len(),
                })
        };
        write(GDT_ADDR, &gdt::gdt_bytes())?;
        write(PML4_ADDR, &paging::tables())?;

        let host_kvm = Kvm::new().map_err(HypervisorError::OpenKvm)?;
        let supported = host_kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm("KVM_GET_SUPPORTED_CPUID"))?;
        // kvm_pvm's emulator refuses some instructions (see `cpuid::HostLimits`).
        let pvm = KvmBacking::detect() == KvmBacking::Paravirtual;
        let host = cpuid::HostLimits {
            // The TSC-deadline timer lives in the in-kernel LAPIC.
            tsc_deadline: self.irqchip && host_kvm.check_extension(Cap::TscDeadlineTimer),
            hide_cmpxchg16b: pvm,
        };
        let count = self.config().vcpus;
        let extra = EntryExtra::long_mode(self.irqchip.then_some(start));
        for (index, (fd, state)) in (0u32..).zip(self.vcpus.iter().zip(self.boot_state.iter_mut()))
        {
            // Booting again (a guest reboot) finds the CPUID of the first boot, which
            // KVM refuses to change once the vCPU has run; it came from the same filter.
            let already = fd
                .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
                .is_ok_and(|c| !c.as_slice().is_empty());
            if !already {
                let mut cpuid = supported.clone();
                cpuid::filter(cpuid.as_mut_slice(), index, count, host);
                fd.set_cpuid2(&cpuid).map_err(kvm("KVM_SET_CPUID2"))?;
            }

            let mut sregs = fd.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;
            gdt::long_mode_sregs(&mut sregs);
            let regs = kvm_bindings::kvm_regs {
                rip,
                rsp: STACK_TOP,
                rbp: STACK_TOP,
                rsi: ZERO_PAGE_ADDR,
                rflags: 0x2, // IF clear
                ..Default::default()
            };
            fd.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))?;
            fd.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
            extra.apply(index as usize, fd)?;
            *state = (regs, sregs);
        }
        self.boot_extra = Some(extra);
        Ok(())
    }

    /// Loads a plain static ELF64 x86-64 guest at its PT_LOAD `p_paddr`s, writes the zero
    /// page (e820, command line pointer) and `cmdline`, and puts every vCPU at `e_entry`
    /// in the 64-bit entry state. Segments must lie in RAM above the boot structures
    /// (`layout::BOOT_AREA_END`).
    pub fn boot_elf64(&mut self, path: &Path, cmdline: &str) -> Result<BootInfo> {
        let image = read_image(path)?;
        match image::identify(path, &image)? {
            ImageKind::Elf => {}
            ImageKind::BzImage => {
                return Err(HypervisorError::UnsupportedImage {
                    path: path.to_owned(),
                    reason: "it is a bzImage, not a plain ELF64 guest; boot it with boot_linux",
                })
            }
        }
        let (entry, segments) = self.load_elf(path, &image)?;
        let cmdline_len = self.write_cmdline(cmdline, zero_page::cmdline_max(None))?;
        let params = zero_page::build(
            None,
            zero_page::ZeroPageInput {
                mem_size: self.config().mem_size,
                cmdline_len,
                initramfs: None,
            },
        );
        self.write_zero_page(&params)?;
        self.set_long_mode_entry(entry)?;
        Ok(BootInfo {
            entry,
            kernel: segments_span(&segments),
            initramfs: None,
            cmdline_len,
        })
    }

    /// Boots Linux: a bzImage (protected-mode code at 1 MiB, entered at its 64-bit entry
    /// load + 0x200) or an ELF vmlinux (at its `p_paddr`s, entered at `e_entry`), the
    /// initramfs high below the PCI hole and the kernel's `initrd_addr_max`, the command
    /// line, and a zero page with the image's setup header and the e820 map. COM1 raises
    /// GSI 4 (an irqfd). Needs the in-kernel irqchip (`Vm::with_irqchip`). An MP table
    /// lists the vCPUs and the IOAPIC; vCPU 0 starts at the entry, the others wait for
    /// the kernel's INIT/SIPI. There are no ACPI tables: a kernel without
    /// `CONFIG_X86_MPPARSE` (Debian's cloud kernel) runs on vCPU 0 alone.
    pub fn boot_linux(&mut self, boot: LinuxBoot<'_>) -> Result<BootInfo> {
        if !self.irqchip {
            return Err(HypervisorError::InvalidConfig(
                "Linux boot needs the in-kernel irqchip: build the VM with Vm::with_irqchip",
            ));
        }
        let mptable = mptable::build(self.config().vcpus).ok_or(HypervisorError::InvalidConfig(
            "Linux boot supports 1 to 254 vCPUs (8-bit APIC ids)",
        ))?;
        let mem_size = self.config().mem_size;
        let ram_end = low_ram_end(mem_size);
        let path = boot.kernel;
        let image = read_image(path)?;
        let (entry, hdr, kernel, initrd_max) = match image::identify(path, &image)? {
            ImageKind::BzImage => {
                let hdr = image::bzimage_header(path, &image)?;
                // A relocatable kernel decompresses at max(load, pref_address) and needs
                // init_size bytes there.
                let run_at = KERNEL_LOAD_ADDR.max(hdr.pref_address);
                let needed = run_at
                    .saturating_add(u64::from(hdr.init_size))
                    .max(KERNEL_LOAD_ADDR + image.len() as u64);
                if needed > ram_end {
                    return Err(HypervisorError::KernelTooLarge {
                        path: path.to_owned(),
                        needed,
                        ram_end,
                    });
                }
                let loaded = BzImage::load(
                    self.memory(),
                    Some(GuestAddress(KERNEL_LOAD_ADDR)),
                    &mut Cursor::new(&image[..]),
                    None,
                )
                .map_err(|source| HypervisorError::KernelLoad {
                    path: path.to_owned(),
                    source,
                })?;
                let hdr = loaded.setup_header.unwrap_or(hdr);
                let initrd_max = u64::from(hdr.initrd_addr_max).saturating_add(1);
                (
                    KERNEL_LOAD_ADDR + BZIMAGE_ENTRY_64,
                    Some(hdr),
                    (KERNEL_LOAD_ADDR, needed),
                    initrd_max,
                )
            }
            ImageKind::Elf => {
                let (entry, segments) = self.load_elf(path, &image)?;
                (entry, None, segments_span(&segments), ram_end)
            }
        };
        drop(image);

        let initramfs = match boot.initramfs {
            Some(p) => Some(self.load_initramfs(p, kernel.1, ram_end.min(initrd_max))?),
            None => None,
        };
        let cmdline_len = self.write_cmdline(boot.cmdline, zero_page::cmdline_max(hdr.as_ref()))?;
        let params = zero_page::build(
            hdr,
            zero_page::ZeroPageInput {
                mem_size,
                cmdline_len,
                initramfs,
            },
        );
        self.write_zero_page(&params)?;
        self.memory()
            .write_slice(&mptable, GuestAddress(mptable::MPTABLE_ADDR))
            .map_err(|_| HypervisorError::LoadOutOfRange {
                addr: mptable::MPTABLE_ADDR,
                len: mptable.len(),
            })?;
        self.enter_long_mode(entry, Start::BootstrapOnly)?;
        self.create_pit()?;
        self.wire_serial_irq()?;
        tracing::info!(
            kernel = %path.display(),
            entry = format_args!("{entry:#x}"),
            ?initramfs,
            cmdline_len,
            "Linux loaded"
        );
        Ok(BootInfo {
            entry,
            kernel,
            initramfs,
            cmdline_len,
        })
    }

    /// Checks and loads an ELF image with linux-loader, zeroing each segment's tail
    /// beyond its file bytes (RAM may hold an earlier boot's data). Returns the entry and
    /// the segments.
    fn load_elf(&self, path: &Path, image: &[u8]) -> Result<(u64, Vec<LoadSegment>)> {
        let (entry, segments) = image::elf_segments(path, image)?;
        image::check_segments(path, &segments, self.config().mem_size)?;
        check_entry(path, entry, &segments)?;
        Elf::load(self.memory(), None, &mut Cursor::new(image), None).map_err(|source| {
            HypervisorError::KernelLoad {
                path: path.to_owned(),
                source,
            }
        })?;
        const CHUNK: u64 = 64 * 1024;
        let zeros = vec![0u8; CHUNK as usize];
        for s in &segments {
            // In RAM (check_segments), so the loop is bounded by the VM's size.
            let mut at = s.paddr + s.filesz;
            let end = s.paddr + s.memsz;
            while at < end {
                let n = (end - at).min(CHUNK);
                self.memory()
                    .write_slice(&zeros[..n as usize], GuestAddress(at))
                    .map_err(|_| HypervisorError::LoadOutOfRange {
                        addr: at,
                        len: n as usize,
                    })?;
                at += n;
            }
        }
        Ok((entry, segments))
    }

    /// Reads the initramfs straight into guest RAM, as high as possible below `limit` and
    /// above `kernel_end`. Returns (address, size).
    fn load_initramfs(&self, path: &Path, kernel_end: u64, limit: u64) -> Result<(u64, u64)> {
        let read_err = |source| HypervisorError::InitramfsRead {
            path: path.to_owned(),
            source,
        };
        let mut file = std::fs::File::open(path).map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() {
            return Err(read_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "not a regular file",
            )));
        }
        let size = meta.len();
        let too_large = || HypervisorError::InitramfsTooLarge {
            path: path.to_owned(),
            size,
            room: limit.saturating_sub(kernel_end.next_multiple_of(INITRAMFS_ALIGN)),
            limit,
        };
        let addr = initramfs_addr(size, kernel_end, limit).ok_or_else(too_large)?;
        let len = usize::try_from(size).map_err(|_| too_large())?;
        self.memory()
            .read_exact_volatile_from(GuestAddress(addr), &mut file, len)
            .map_err(|e| read_err(std::io::Error::other(e.to_string())))?;
        Ok((addr, size))
    }

    /// Checks `text` and writes it NUL-terminated at `CMDLINE_ADDR`; returns its length.
    fn write_cmdline(&self, text: &str, max: usize) -> Result<usize> {
        let cmdline = zero_page::cmdline(text, max)?;
        load_cmdline(self.memory(), GuestAddress(CMDLINE_ADDR), &cmdline).map_err(|_| {
            HypervisorError::LoadOutOfRange {
                addr: CMDLINE_ADDR,
                len: text.len() + 1,
            }
        })?;
        Ok(text.len())
    }

    fn write_zero_page(&self, params: &linux_loader::bootparam::boot_params) -> Result<()> {
        let bp = BootParams::new(params, GuestAddress(ZERO_PAGE_ADDR));
        LinuxBootConfigurator::write_bootparams(&bp, self.memory()).map_err(|_| {
            HypervisorError::LoadOutOfRange {
                addr: ZERO_PAGE_ADDR,
                len: std::mem::size_of_val(params),
            }
        })
    }

    /// KVM's in-kernel PIT (IRQ 0): Linux calibrates its clocks and timers against it when
    /// it finds no ACPI tables. Created once; a second boot keeps it.
    fn create_pit(&self) -> Result<()> {
        let config = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        match self.vm_fd().create_pit2(config) {
            Err(e) if e.errno() == libc::EEXIST => Ok(()),
            other => other.map_err(kvm("KVM_CREATE_PIT2")),
        }
    }

    /// COM1's interrupt → GSI 4 through an irqfd, signalled by the UART model. Once: a
    /// second boot (a reboot) keeps the first irqfd.
    fn wire_serial_irq(&self) -> Result<()> {
        let serial = self.serial();
        let mut serial = serial
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if serial.has_interrupt_line() {
            return Ok(());
        }
        let fd = self.register_irqfd(COM1_GSI)?;
        serial.set_interrupt_line(Box::new(move || {
            // A full eventfd counter still means "raised": nothing is lost.
            let _ = fd.write(1);
        }));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_must_be_inside_a_segment() {
        let segs = [LoadSegment {
            index: 0,
            paddr: 0x40_0000,
            filesz: 16,
            memsz: 32,
        }];
        check_entry(Path::new("g"), 0x40_001f, &segs).unwrap();
        let e = check_entry(Path::new("g"), 0x40_0020, &segs).unwrap_err();
        assert!(e.to_string().contains("entry point"), "{e}");
        assert_eq!(segments_span(&segs), (0x40_0000, 0x40_0020));
    }

    #[test]
    fn initramfs_goes_page_aligned_as_high_as_it_fits_above_the_kernel() {
        const MIB: u64 = 1 << 20;
        assert_eq!(
            initramfs_addr(MIB + 1, 5 * MIB, 64 * MIB),
            Some(63 * MIB - 4096)
        );
        assert_eq!(initramfs_addr(59 * MIB, 5 * MIB, 64 * MIB), Some(5 * MIB));
        assert_eq!(initramfs_addr(59 * MIB + 1, 5 * MIB, 64 * MIB), None);
        assert_eq!(initramfs_addr(0, 5 * MIB, 64 * MIB), Some(64 * MIB));
        assert_eq!(initramfs_addr(u64::MAX, 0, 64 * MIB), None);
        assert_eq!(initramfs_addr(1, u64::MAX, u64::MAX), None);
    }
}
