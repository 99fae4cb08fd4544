//! Shared by the guest test files: the KVM check, the VM and device setup they have in
//! common, and (`asm`) guests assembled at test time.
#![allow(dead_code)] // each test file uses its part

pub mod asm;

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsFd, FromRawFd};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vesper_hypervisor::{
    BusDevice, BusRange, KvmBacking, RealModeEntry, VesperConfig, VesperHandle, Vm, VmConfig,
};

/// Where the guests are loaded and entered (0000:1000 in real mode).
pub const LOAD: u64 = 0x1000;
/// One MiB.
pub const MIB: u64 = 1 << 20;
/// How long a guest may run.
pub const RUN: Duration = Duration::from_secs(10);
/// Port the guests report dwords to (`asm::PCI_LIB`'s `report` writes there).
pub const REPORT_PORT: u16 = 0x7000;

/// True when /dev/kvm can be used; otherwise says loudly why `test` is skipped.
pub fn kvm_available(test: &str) -> bool {
    match KvmBacking::detect() {
        KvmBacking::Unavailable(why) => {
            // Past libtest's capture of `eprintln!`: a skip must show in CI output.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "!!! SKIPPING {test}: {why} — needs KVM access"
            );
            false
        }
        _ => true,
    }
}

/// Records every dword the guest writes to its port.
#[derive(Default)]
pub struct Reports(pub Vec<u32>);

impl BusDevice for Reports {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if let &[a, b, c, d] = data {
            self.0.push(u32::from_le_bytes([a, b, c, d]));
        }
    }
}

/// Waits until the guest has reported `asm::READY` (at most `RUN`).
pub fn wait_for_ready(reports: &Mutex<Reports>) {
    let start = Instant::now();
    while !reports.lock().unwrap().0.contains(&asm::READY) {
        assert!(start.elapsed() < RUN, "guest never got ready");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// A zeroed memfd of `size` bytes (a Vesper device's region).
pub fn memfd(size: u64) -> File {
    // SAFETY: the name is a NUL-terminated string; the returned fd is checked and owned.
    let fd = unsafe { libc::memfd_create(c"vesper-test".as_ptr(), libc::MFD_CLOEXEC) };
    assert!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` is a fresh fd nothing else owns.
    let file = unsafe { File::from_raw_fd(fd) };
    file.set_len(size).unwrap();
    file
}

/// A VM of `vcpus` vCPUs and `mem_size` bytes of RAM, with KVM's in-kernel irqchip if
/// `irqchip`, its console into `console`.
pub fn vm(vcpus: u32, mem_size: u64, irqchip: bool, console: Box<dyn Write + Send>) -> Vm {
    let config = VmConfig { vcpus, mem_size };
    if irqchip {
        Vm::with_irqchip(config, console)
    } else {
        Vm::new(config, console)
    }
    .expect("create VM")
}

/// Loads `code` at `LOAD` and enters it there in real mode (0000:1000, sp 0x8000).
pub fn enter_real_mode(vm: &mut Vm, code: &[u8]) {
    vm.load(LOAD, code).expect("load guest");
    vm.set_real_mode_entry(RealModeEntry {
        segment: 0,
        ip: LOAD as u16,
        sp: 0x8000,
    })
    .expect("entry");
}

/// A one-vCPU VM of `mem_size` bytes (console discarded, irqchip if `irqchip`) with a
/// `Reports` on `REPORT_PORT`.
pub fn vm_with_reports(mem_size: u64, irqchip: bool) -> (Vm, Arc<Mutex<Reports>>) {
    let mut vm = vm(1, mem_size, irqchip, Box::new(std::io::sink()));
    let reports = Arc::new(Mutex::new(Reports::default()));
    vm.register_pio(
        BusRange::new(REPORT_PORT.into(), 4).unwrap(),
        reports.clone(),
    )
    .unwrap();
    (vm, reports)
}

/// A VM with the report port and a Vesper device (peer 1) over a fresh memfd region.
pub struct Setup {
    pub vm: Vm,
    pub device: VesperHandle,
    pub region: File,
    pub reports: Arc<Mutex<Reports>>,
}

/// A one-vCPU VM of `mem_size` bytes (irqchip if `irqchip`) with the report port and
/// the Vesper device over a zeroed memfd of `region_size` bytes, its BARs at `bar0` and
/// `bar2` (0: placed by the VMM). The guest is not loaded yet.
pub fn setup(mem_size: u64, irqchip: bool, bar0: u64, bar2: u64, region_size: u64) -> Setup {
    let (mut vm, reports) = vm_with_reports(mem_size, irqchip);
    let region = memfd(region_size);
    let device = vm
        .add_vesper_device(VesperConfig {
            bar0,
            bar2,
            ..VesperConfig::auto(1, region.as_fd(), region_size)
        })
        .expect("add the Vesper device");
    Setup {
        vm,
        device,
        region,
        reports,
    }
}
