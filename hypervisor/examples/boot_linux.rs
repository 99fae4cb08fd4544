//! Boots a Linux kernel in the builtin VMM and reports how far it got.
//!
//! `cargo run -p vesper-hypervisor --example boot_linux -- KERNEL INITRAMFS CMDLINE SECS [MIB]`
//! (INITRAMFS may be `-` for none). The console is copied to stdout as it comes; at the
//! end: how the run ended, the time, the vCPU registers and the last console lines.
//! `SAMPLE_SECS=N` runs in N-second slices and prints each vCPU's RIP between them.

use std::io::Write;
use std::path::Path;
use std::time::{Duration, Instant};

use vesper_hypervisor::{LinuxBoot, SharedBuffer, Vm, VmConfig};

/// Console bytes to stdout and into a buffer.
struct Tee(SharedBuffer);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(buf);
        let _ = out.flush();
        self.0.write(buf)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Walks the guest's 4-level page tables (cr3) for `va`; None if not mapped.
fn translate(vm: &Vm, cr3: u64, va: u64) -> Option<u64> {
    const ADDR: u64 = 0x000f_ffff_ffff_f000;
    let entry = |table: u64, index: u64| -> Option<u64> {
        let mut b = [0u8; 8];
        vm_memory::Bytes::read_slice(
            vm.memory(),
            &mut b,
            vm_memory::GuestAddress(table + index * 8),
        )
        .ok()?;
        let e = u64::from_le_bytes(b);
        (e & 1 == 1).then_some(e)
    };
    let mut table = cr3 & ADDR;
    for (level, shift) in [(4, 39), (3, 30), (2, 21), (1, 12)] {
        let e = entry(table, (va >> shift) & 511)?;
        let huge = e & 0x80 != 0 && (level == 3 || level == 2);
        if huge || level == 1 {
            let mask = (1u64 << shift) - 1;
            return Some((e & ADDR & !mask) | (va & mask));
        }
        table = e & ADDR;
    }
    None
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.len() < 4 {
        eprintln!("usage: boot_linux KERNEL INITRAMFS|- CMDLINE SECS [MIB]");
        std::process::exit(2);
    }
    let secs: u64 = args[3].parse().expect("SECS: a number of seconds");
    let mib: u64 = args
        .get(4)
        .map_or(512, |m| m.parse().expect("MIB: a number"));
    let console = SharedBuffer::new();
    let mut vm = Vm::with_irqchip(
        VmConfig {
            vcpus: 1,
            mem_size: mib << 20,
        },
        Box::new(Tee(console.clone())),
    )
    .expect("create VM");
    let initramfs = (args[1] != "-").then(|| Path::new(&args[1]));
    let info = match vm.boot_linux(LinuxBoot {
        kernel: Path::new(&args[0]),
        initramfs,
        cmdline: &args[2],
    }) {
        Ok(info) => info,
        Err(e) => {
            eprintln!("boot_linux: {e}");
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                eprintln!("  caused by: {s}");
                source = s.source();
            }
            std::process::exit(1);
        }
    };
    eprintln!("== loaded: {info:x?}");
    // Runs in slices so the RIP can be sampled while the guest is silent.
    let slice = std::env::var("SAMPLE_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .map_or(Duration::from_secs(secs), Duration::from_secs);
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let result = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match vm.run(slice.min(left)) {
            Err(vesper_hypervisor::HypervisorError::Timeout { vcpus, .. })
                if Instant::now() + Duration::from_millis(10) < deadline =>
            {
                for v in &vcpus {
                    eprintln!(
                        "== sample at {:.1?}: vCPU {} rip={:#x} cr3={:#x} cr4={:#x}",
                        start.elapsed(),
                        v.vcpu,
                        v.rip,
                        v.cr3,
                        v.cr4
                    );
                }
            }
            other => break other,
        }
    };
    let took = start.elapsed();
    eprintln!("\n== run ended after {took:.2?}");
    let last = match result {
        Ok(report) => {
            eprintln!("== stop: {:?}", report.stop);
            for v in &report.vcpus {
                eprintln!("== vCPU {v}");
            }
            report.vcpus.first().cloned()
        }
        Err(vesper_hypervisor::HypervisorError::Timeout { after, vcpus }) => {
            eprintln!("== exit: deadline of {after:?} passed, vCPUs kicked out");
            for v in &vcpus {
                eprintln!("== vCPU {v}");
            }
            vcpus.first().cloned()
        }
        Err(vesper_hypervisor::HypervisorError::UnexpectedExit { vcpu, kind, regs }) => {
            eprintln!("== exit: vCPU {vcpu}: unexpected exit {kind}\n== vCPU {regs}");
            Some(*regs)
        }
        Err(e) => {
            eprintln!("== exit: {e}");
            None
        }
    };
    if let Some(regs) = last {
        match translate(&vm, regs.cr3, regs.rip) {
            Some(phys) => {
                let mut code = [0u8; 16];
                let read = vm_memory::Bytes::read_slice(
                    vm.memory(),
                    &mut code,
                    vm_memory::GuestAddress(phys),
                );
                eprintln!(
                    "== code at rip {:#x} (guest-physical {phys:#x}): {:02x?} {}",
                    regs.rip,
                    code,
                    if read.is_ok() { "" } else { "(unreadable)" }
                );
            }
            None => eprintln!(
                "== rip {:#x} is not mapped by cr3 {:#x}",
                regs.rip, regs.cr3
            ),
        }
    }
    let text = String::from_utf8_lossy(&console.contents()).into_owned();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!(
        "== console: {} bytes, {} lines; last lines:",
        text.len(),
        lines.len()
    );
    for l in lines.iter().rev().take(5).rev() {
        eprintln!("   | {l}");
    }
    eprintln!("== unmapped accesses: {:?}", vm.unmapped_accesses());
}
