//! The builtin VMM boots the guest kit's Debian kernel (bzImage, 64-bit entry) and
//! initramfs directly, without firmware, and the kit's init speaks on the console.
//!
//! The first line init prints goes through the tty layer and the 8250 driver's THRE
//! interrupt, so seeing it also proves COM1's IRQ 4 reaches the guest. Runs only where
//! /dev/kvm is hardware-backed; under the paravirtual kvm_pvm a stock kernel does not boot
//! in useful time (see `cargo run -p vesper-hypervisor --example boot_linux`), and the
//! test says so loudly instead of passing.

use std::time::{Duration, Instant};

use vesper_guest_kit::{EnsureOptions, Kit};
use vesper_hypervisor::{KvmBacking, LinuxBoot, SharedBuffer, Vm, VmConfig};

const WAIT: Duration = Duration::from_secs(60);
const MIB: u64 = 1 << 20;
const INIT_LINE: &str = "vesper-init: kernel ";

#[test]
fn builtin_vmm_boots_the_kit_kernel_and_initramfs_to_init() {
    if let Some(why) = KvmBacking::detect().linux_problem() {
        vesper_e2e::say_skipped(
            "builtin_vmm_boots_the_kit_kernel_and_initramfs_to_init",
            &format!(
                "{why}.\n*** A stock kernel needs hardware-backed KVM (kvm_intel/kvm_amd): \
                 the Linux direct boot is NOT tested on this host."
            ),
        );
        return;
    }
    let kit = Kit::ensure(&EnsureOptions::default()).expect("guest kit");
    let console = SharedBuffer::new();
    let mut vm = Vm::with_irqchip(
        VmConfig {
            vcpus: 1,
            mem_size: 512 * MIB,
        },
        Box::new(console.clone()),
    )
    .expect("create VM");
    let info = vm
        .boot_linux(LinuxBoot {
            kernel: &kit.kernel,
            initramfs: Some(kit.initramfs.as_path()),
            cmdline: "console=ttyS0 panic=-1 vesper.mode=freeze",
        })
        .expect("load the kit's kernel");
    assert_eq!(
        info.entry, 0x10_0200,
        "a bzImage is entered at load + 0x200"
    );

    // The guest never stops by itself (init freezes): stop it once init has spoken.
    let stop = vm.stop_handle();
    let watch = console.clone();
    let watcher = std::thread::spawn(move || {
        let deadline = Instant::now() + WAIT;
        let found = loop {
            if String::from_utf8_lossy(&watch.contents()).contains(INIT_LINE) {
                break true;
            }
            if Instant::now() > deadline {
                break false;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        stop.stop();
        found
    });
    let run = vm.run(WAIT + Duration::from_secs(5));
    let found = watcher.join().expect("watcher");
    let text = String::from_utf8_lossy(&console.contents()).into_owned();
    assert!(
        found,
        "no {INIT_LINE:?} line within {WAIT:?}; run: {run:?}\nconsole:\n{text}"
    );
    let line = text
        .lines()
        .find(|l| l.contains(INIT_LINE))
        .unwrap_or_default();
    assert!(
        line.contains(&kit.release),
        "init reports kernel {line:?}, expected {}",
        kit.release
    );
}
