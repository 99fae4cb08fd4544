//! Start time of a tiny guest to its first instruction: vesper-hypervisor from "create the
//! VM" (`Vm::with_irqchip`, 16 MiB) to the guest's first instruction seen by the
//! host (its `out` to port 0xe9), versus QEMU (q35, same RAM, the same image as `-bios`)
//! from spawning the process to that byte on its isa-debugcon pipe. Same image on both
//! (`tiny-guest/tiny.S`; no device, so it exits right after). Also the split of our start
//! into the KVM calls `Vm::with_irqchip` makes, timed one by one with kvm-ioctls, in its
//! order (the RAM memslot before the irqchip) and in the reverse one, which under kvm_pvm
//! makes the memslot cost ~5 ms.
//!
//! `cargo bench -p vesper-e2e --bench start_time` (`VESPER_START_N` starts each, default
//! 50, after 3 warm-up starts; `VESPER_TINY_MEM_MIB` guest RAM, default 16).

use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vesper_e2e::tiny_guest::{
    self, qemu_start, summary, vmm_start, QemuAccel, DEBUGCON_PORT, IMAGE_ADDR,
};

const WARMUP: usize = 3;

fn skip(why: &str) -> ! {
    println!("\n!!! start_time SKIPPED: {why}\n");
    std::process::exit(0);
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The order of the KVM calls in `raw_start`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Order {
    /// The irqchip, then the RAM memslot (what `Vm::with_irqchip` did at first).
    IrqchipFirst,
    /// The RAM memslot, then the irqchip (still before the vCPU, as KVM requires): what
    /// `Vm::with_irqchip` does.
    MemslotFirst,
}

/// The steps of `Vm::with_irqchip` + the first run, made one by one with kvm-ioctls and
/// each timed: open /dev/kvm, KVM_CREATE_VM, KVM_CREATE_IRQCHIP and the RAM (mmap, image
/// copy, KVM_SET_USER_MEMORY_REGION) in `order`, KVM_CREATE_VCPU, real-mode entry
/// (SREGS/REGS), the first KVM_RUN until the guest's port write. Returns (step, time).
fn raw_start(image: &[u8], order: Order) -> Result<Vec<(&'static str, Duration)>, String> {
    let e = |what: &'static str| move |err: kvm_ioctls::Error| format!("{what}: {err}");
    let mut steps = Vec::new();
    let mut last = Instant::now();
    let mut lap = |name: &'static str| {
        let now = Instant::now();
        steps.push((name, now - last));
        last = now;
    };
    let kvm = Kvm::new().map_err(e("open /dev/kvm"))?;
    lap("open /dev/kvm");
    let vm = kvm.create_vm().map_err(e("KVM_CREATE_VM"))?;
    lap("KVM_CREATE_VM");
    if order == Order::IrqchipFirst {
        vm.create_irq_chip().map_err(e("KVM_CREATE_IRQCHIP"))?;
        lap("KVM_CREATE_IRQCHIP");
    }
    let len = (tiny_guest::mem_mib() << 20) as usize;
    // SAFETY: a fresh private anonymous mapping; no existing memory is affected.
    let ram = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if ram == libc::MAP_FAILED {
        return Err(format!("mmap: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: the image (64 KiB) fits below `len` (at least 2 MiB) at IMAGE_ADDR in the
    // mapping just made, which nothing else uses.
    unsafe {
        std::ptr::copy_nonoverlapping(
            image.as_ptr(),
            ram.cast::<u8>().add(IMAGE_ADDR as usize),
            image.len(),
        )
    };
    lap("RAM mmap + image copy");
    let region = kvm_userspace_memory_region {
        slot: 0,
        flags: 0,
        guest_phys_addr: 0,
        memory_size: len as u64,
        userspace_addr: ram as u64,
    };
    let result = (|| {
        // SAFETY: `ram` is a live mapping of `len` bytes, unmapped only after `vm` is
        // dropped.
        unsafe { vm.set_user_memory_region(region) }.map_err(e("KVM_SET_USER_MEMORY_REGION"))?;
        lap("KVM_SET_USER_MEMORY_REGION");
        if order == Order::MemslotFirst {
            vm.create_irq_chip().map_err(e("KVM_CREATE_IRQCHIP"))?;
            lap("KVM_CREATE_IRQCHIP");
        }
        let mut vcpu = vm.create_vcpu(0).map_err(e("KVM_CREATE_VCPU"))?;
        lap("KVM_CREATE_VCPU");
        let mut sregs = vcpu.get_sregs().map_err(e("KVM_GET_SREGS"))?;
        for seg in [&mut sregs.cs, &mut sregs.ds, &mut sregs.es, &mut sregs.ss] {
            seg.selector = 0xf000;
            seg.base = 0xf_0000;
        }
        vcpu.set_sregs(&sregs).map_err(e("KVM_SET_SREGS"))?;
        let regs = kvm_bindings::kvm_regs {
            rip: 0xfff0,
            rflags: 2,
            ..Default::default()
        };
        vcpu.set_regs(&regs).map_err(e("KVM_SET_REGS"))?;
        lap("real-mode entry (SREGS, REGS)");
        loop {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(port, _)) if port == DEBUGCON_PORT => break,
                Ok(VcpuExit::Intr) => {}
                Ok(other) => return Err(format!("first KVM_RUN: unexpected exit {other:?}")),
                Err(err) if err.errno() == libc::EINTR => {}
                Err(err) => return Err(format!("KVM_RUN: {err}")),
            }
        }
        lap("first KVM_RUN → port exit");
        drop(vcpu);
        Ok(())
    })();
    drop(vm);
    // SAFETY: the VM that mapped `ram` is gone; `ram`/`len` are the mapping made above.
    unsafe { libc::munmap(ram, len) };
    result.map(|()| steps)
}

fn main() {
    println!("\n== start time to the first guest instruction: vesper-hypervisor vs QEMU ==");
    let image = tiny_guest::comparison_image("start_time").unwrap_or_else(|why| skip(why));
    let n: usize = std::env::var("VESPER_START_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50)
        .max(2);

    let dir = tempfile::tempdir().expect("temporary directory");
    let bios = tiny_guest::image_file(dir.path()).expect("image file");
    let accel = match qemu_start(QemuAccel::Kvm, &bios) {
        Ok(_) => QemuAccel::Kvm,
        Err(e) => {
            println!("!!! QEMU -accel kvm failed: {e}");
            println!("!!! FALLING BACK TO QEMU TCG: the QEMU figures below are EMULATED, not KVM");
            QemuAccel::Tcg
        }
    };
    // One start of each kind per pass, so all three see the same background load.
    let (mut ours, mut qemu) = (Vec::new(), Vec::new());
    let (mut split, mut reordered) = (Vec::new(), Vec::new());
    for i in 0..WARMUP + n {
        let a = vmm_start().unwrap_or_else(|e| panic!("vesper-hypervisor start: {e}"));
        let b =
            raw_start(image, Order::IrqchipFirst).unwrap_or_else(|e| panic!("raw KVM start: {e}"));
        let c =
            raw_start(image, Order::MemslotFirst).unwrap_or_else(|e| panic!("raw KVM start: {e}"));
        let d = qemu_start(accel, &bios).unwrap_or_else(|e| panic!("QEMU start: {e}"));
        if i >= WARMUP {
            ours.push(a);
            split.push(b);
            reordered.push(c);
            qemu.push(d);
        }
    }

    let mib = tiny_guest::mem_mib();
    tiny_guest::print_setting();
    println!(
        "accel: vesper-hypervisor KVM (in-kernel irqchip, 1 vCPU, {mib} MiB); QEMU {} \
         (q35, 1 vCPU, -m {mib}, -bios tiny.bin{})",
        accel.name(),
        if accel == QemuAccel::Tcg {
            " — EMULATED"
        } else {
            ""
        }
    );
    println!("{n} starts each after {WARMUP} warm-up starts; the guest's first instruction is `out %al, $0xe9`");

    let col = |f: &dyn Fn(usize) -> Duration, len: usize| {
        summary(&mut (0..len).map(|i| ms(f(i))).collect::<Vec<_>>())
    };
    let a = col(&|i| ours[i].total, ours.len());
    let b = col(&|i| qemu[i].to_first, qemu.len());
    println!(
        "\n{:<52} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "ms", "min", "p50", "p99", "mean", "max"
    );
    let row = |name: &str, s: [f64; 5]| {
        println!(
            "{name:<52} {:>8.3} {:>8.3} {:>8.3} {:>8.3} {:>8.3}",
            s[0], s[1], s[2], s[3], s[4]
        );
    };
    row("vesper-hypervisor: Vm::with_irqchip → first instr.", a);
    row(
        &format!(
            "QEMU ({}): spawn → first instr. (debugcon byte)",
            accel.name()
        ),
        b,
    );
    println!(
        "{:<52} {:>8.1} {:>8.1} {:>8.1} {:>8.1} {:>8}",
        "ratio QEMU / vesper",
        b[0] / a[0],
        b[1] / a[1],
        b[2] / a[2],
        b[3] / a[3],
        ""
    );

    println!("\nvesper-hypervisor, through its API (ms):");
    row("  Vm::with_irqchip", col(&|i| ours[i].create, ours.len()));
    row(
        "  load image, entry, port device",
        col(&|i| ours[i].prepare, ours.len()),
    );
    row(
        "  Vm::run → first instruction (vCPU thread spawn)",
        col(&|i| ours[i].run_to_first, ours.len()),
    );
    row(
        "  (drop after the guest's exit)",
        col(&|i| ours[i].teardown, ours.len()),
    );
    for (title, runs) in [
        (
            "the same KVM calls one by one with kvm-ioctls, KVM_CREATE_IRQCHIP before the RAM memslot (ms):",
            &split,
        ),
        (
            "the same calls with the RAM memslot first, as Vm::with_irqchip does (ms):",
            &reordered,
        ),
    ] {
        println!("{title}");
        for (k, (name, _)) in runs[0].iter().enumerate() {
            row(&format!("  {name}"), col(&|i| runs[i][k].1, runs.len()));
        }
        row(
            "  sum",
            col(
                &|i| runs[i].iter().map(|&(_, d)| d).sum::<Duration>(),
                runs.len(),
            ),
        );
    }
    println!("QEMU (ms):");
    row(
        "  spawn → exit (guest exit code via isa-debug-exit)",
        col(&|i| qemu[i].to_exit, qemu.len()),
    );
    println!();
}
