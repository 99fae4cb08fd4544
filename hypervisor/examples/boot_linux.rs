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
    match result {
        Ok(report) => {
            eprintln!("== stop: {:?}", report.stop);
            for v in &report.vcpus {
                eprintln!("== vCPU {v}");
            }
        }
        Err(vesper_hypervisor::HypervisorError::Timeout { after, vcpus }) => {
            eprintln!("== exit: deadline of {after:?} passed, vCPUs kicked out");
            for v in &vcpus {
                eprintln!("== vCPU {v}");
            }
        }
        Err(e) => eprintln!("== exit: {e}"),
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
