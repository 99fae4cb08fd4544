//! Real-mode guests run under KVM. Each test skips loudly if /dev/kvm cannot be opened.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vesper_hypervisor::{BusDevice, BusRange, HypervisorError, SharedBuffer, Stop, Vm, VmConfig};

mod common;
use common::{enter_real_mode, kvm_available, vm, MIB, RUN};

/// A 1 MiB, one-vCPU VM with `code` at 0000:1000, console into the returned buffer.
fn vm_with(code: &[u8]) -> (Vm, SharedBuffer) {
    let out = SharedBuffer::new();
    let mut vm = vm(1, MIB, false, Box::new(out.clone()));
    enter_real_mode(&mut vm, code);
    (vm, out)
}

/// Prints the NUL-terminated message appended to it through COM1 (polling LSR), then
/// `cli; hlt`. Loaded at 0x1000; the message starts at 0x101e.
fn hello_guest(msg: &str) -> Vec<u8> {
    let mut code = vec![
        0xba, 0xfb, 0x03, //       mov dx, 0x3fb      ; LCR
        0xb0, 0x03, //             mov al, 3          ; 8N1
        0xee, //                   out dx, al
        0xbe, 0x1e, 0x10, //       mov si, 0x101e     ; msg
        0xba, 0xfd, 0x03, // wait: mov dx, 0x3fd      ; LSR
        0xec, //                   in al, dx
        0xa8, 0x20, //             test al, 0x20      ; THR empty?
        0x74, 0xf8, //             jz wait
        0xac, //                   lodsb
        0x84, 0xc0, //             test al, al
        0x74, 0x06, //             jz done
        0xba, 0xf8, 0x03, //       mov dx, 0x3f8      ; THR
        0xee, //                   out dx, al
        0xeb, 0xed, //             jmp wait
        0xfa, //             done: cli
        0xf4, //                   hlt
    ];
    assert_eq!(code.len(), 0x1e);
    code.extend_from_slice(msg.as_bytes());
    code.push(0);
    code
}

/// `jmp $`
const SPIN: [u8; 2] = [0xeb, 0xfe];

#[test]
fn real_mode_guest_prints_hello_through_the_8250_and_halts() {
    if !kvm_available("hello") {
        return;
    }
    let (mut vm, out) = vm_with(&hello_guest("Hello from Vesper VMM\n"));
    let report = vm.run(RUN).expect("run");
    assert_eq!(report.stop, Stop::Halted);
    assert_eq!(
        String::from_utf8_lossy(&out.contents()),
        "Hello from Vesper VMM\n"
    );
    // Halted right after the `hlt` at 0x101d, interrupts off.
    assert_eq!(report.vcpus[0].rip, 0x101e);
    assert_eq!(report.vcpus[0].rflags & 0x200, 0);
    assert_eq!(vm.unmapped_accesses().total(), 0);
}

/// Answers reads with `value`, records writes.
struct Register {
    value: u32,
    writes: Vec<(u64, Vec<u8>)>,
}

impl BusDevice for Register {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let bytes = self.value.to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = bytes.get(offset as usize + i).copied().unwrap_or(0);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        self.writes.push((offset, data.to_vec()));
    }
}

fn register(value: u32) -> Arc<Mutex<Register>> {
    Arc::new(Mutex::new(Register {
        value,
        writes: Vec::new(),
    }))
}

#[test]
fn guest_port_io_reaches_a_device_and_gets_its_reads() {
    if !kvm_available("port io") {
        return;
    }
    let guest = [
        0xba, 0x00, 0x70, //       mov dx, 0x7000
        0x66, 0xed, //             in eax, dx
        0x66, 0x83, 0xc0, 0x01, // add eax, 1
        0x66, 0xef, //             out dx, eax
        0xfa, 0xf4, //             cli; hlt
    ];
    let (mut vm, _) = vm_with(&guest);
    let dev = register(0x1234_5677);
    vm.register_pio(BusRange::new(0x7000, 4).unwrap(), dev.clone())
        .unwrap();
    assert_eq!(vm.run(RUN).expect("run").stop, Stop::Halted);
    let writes = dev.lock().unwrap().writes.clone();
    assert_eq!(writes, vec![(0, 0x1234_5678u32.to_le_bytes().to_vec())]);
}

#[test]
fn guest_mmio_reaches_a_device_and_gets_its_reads() {
    if !kvm_available("mmio") {
        return;
    }
    let guest = [
        0xb8, 0xff, 0xff, //             mov ax, 0xffff
        0x8e, 0xc0, //                   mov es, ax
        0x26, 0x66, 0xa1, 0x10, 0x00, // mov eax, es:[0x10]   ; 0x100000
        0x66, 0x83, 0xc0, 0x01, //       add eax, 1
        0x26, 0x66, 0xa3, 0x14, 0x00, // mov es:[0x14], eax   ; 0x100004
        0xfa, 0xf4, //                   cli; hlt
    ];
    let (mut vm, _) = vm_with(&guest);
    let dev = register(0xdead_beee);
    vm.register_mmio(BusRange::new(MIB, 0x1000).unwrap(), dev.clone())
        .unwrap();
    // Overlapping guest RAM is refused.
    assert!(matches!(
        vm.register_mmio(BusRange::new(MIB - 0x1000, 0x2000).unwrap(), register(0)),
        Err(HypervisorError::BusOverlap { .. })
    ));
    assert_eq!(vm.run(RUN).expect("run").stop, Stop::Halted);
    let writes = dev.lock().unwrap().writes.clone();
    assert_eq!(writes, vec![(4, 0xdead_beefu32.to_le_bytes().to_vec())]);
}

#[test]
fn unmapped_port_and_mmio_accesses_are_counted_and_the_guest_goes_on() {
    if !kvm_available("unmapped") {
        return;
    }
    let guest = [
        0xba, 0x00, 0x60, //                   mov dx, 0x6000
        0xb0, 0x5a, //                         mov al, 0x5a
        0xee, //                               out dx, al         ; unmapped
        0xec, //                               in al, dx          ; unmapped -> 0xff
        0x88, 0xc3, //                         mov bl, al
        0xb8, 0xff, 0xff, //                   mov ax, 0xffff
        0x8e, 0xc0, //                         mov es, ax
        0x26, 0xc6, 0x06, 0x10, 0x80, 0x55, // mov byte es:[0x8010], 0x55 ; 0x108000
        0x26, 0x8a, 0x0e, 0x10, 0x80, //       mov cl, es:[0x8010] ; -> 0xff
        0xba, 0x01, 0x05, //                   mov dx, 0x501      ; debug exit
        0xb0, 0x07, //                         mov al, 7
        0xee, //                               out dx, al
        0xf4, //                               hlt
    ];
    let (mut vm, _) = vm_with(&guest);
    let report = vm.run(RUN).expect("run");
    assert_eq!(report.stop, Stop::PowerOff(7));
    let u = vm.unmapped_accesses();
    assert_eq!(
        (u.pio_writes, u.pio_reads, u.mmio_writes, u.mmio_reads),
        (1, 1, 1, 1)
    );
    let regs = &report.vcpus[0];
    assert_eq!(regs.gpr(1) & 0xff, 0xff, "bl: unmapped port read");
    assert_eq!(regs.gpr(2) & 0xff, 0xff, "cl: unmapped MMIO read");
}

#[test]
fn a_guest_that_spins_forever_times_out_and_the_vm_runs_again() {
    if !kvm_available("spin") {
        return;
    }
    let (mut vm, _) = vm_with(&SPIN);
    let start = Instant::now();
    let err = vm.run(Duration::from_millis(300)).unwrap_err();
    let took = start.elapsed();
    match &err {
        HypervisorError::Timeout { after, vcpus } => {
            assert_eq!(*after, Duration::from_millis(300));
            assert_eq!(vcpus.len(), 1);
            assert_eq!(vcpus[0].rip, 0x1000, "stopped on the jmp");
        }
        other => panic!("expected a timeout, got {other}"),
    }
    assert!(took < Duration::from_secs(3), "took {took:?}");
    // The vCPU came back: the VM can be reset and run again (and times out again).
    vm.reset().unwrap();
    assert!(matches!(
        vm.run(Duration::from_millis(100)),
        Err(HypervisorError::Timeout { .. })
    ));
}

#[test]
fn reset_request_and_reset_rerun_the_guest() {
    if !kvm_available("reset") {
        return;
    }
    let guest = [
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xb0, 0x52, //       mov al, 'R'
        0xee, //             out dx, al
        0xba, 0xf9, 0x0c, // mov dx, 0xcf9
        0xb0, 0x06, //       mov al, 6     ; reset
        0xee, //             out dx, al
        0xf4, //             hlt
    ];
    let (mut vm, out) = vm_with(&guest);
    assert_eq!(vm.run(RUN).unwrap().stop, Stop::ResetRequested);
    vm.reset().unwrap();
    assert_eq!(vm.run(RUN).unwrap().stop, Stop::ResetRequested);
    assert_eq!(out.contents(), b"RR");
}

#[test]
fn impossible_configs_are_refused_before_anything_is_created() {
    if !kvm_available("impossible configs") {
        return;
    }
    let cfg = |vcpus, mem_size| VmConfig { vcpus, mem_size };
    let sink = || Box::new(std::io::sink());
    match Vm::new(cfg(10_000, MIB), sink()) {
        Err(HypervisorError::TooManyVcpus { requested, max }) => {
            assert_eq!(requested, 10_000);
            assert!(max < 10_000);
        }
        other => panic!("expected TooManyVcpus, got {:?}", other.err()),
    }
    match Vm::new(cfg(1, 1 << 40), sink()) {
        Err(HypervisorError::NotEnoughMemory {
            requested,
            host_total,
        }) => {
            assert_eq!(requested, 1 << 40);
            assert!(host_total < 1 << 40);
        }
        other => panic!("expected NotEnoughMemory, got {:?}", other.err()),
    }
    assert!(matches!(
        Vm::new(cfg(0, MIB), sink()),
        Err(HypervisorError::InvalidConfig(_))
    ));
    assert!(matches!(
        Vm::new(cfg(1, MIB + 1), sink()),
        Err(HypervisorError::InvalidConfig(_))
    ));
}

#[test]
fn vms_run_at_once_with_their_own_output_while_one_spins() {
    if !kvm_available("concurrent VMs") {
        return;
    }
    let spinner = std::thread::spawn(|| {
        let (mut vm, _) = vm_with(&SPIN);
        vm.run(Duration::from_millis(1500))
    });
    let printers: Vec<_> = ["one\n", "two\n"]
        .into_iter()
        .map(|msg| {
            std::thread::spawn(move || {
                let (mut vm, out) = vm_with(&hello_guest(msg));
                let stop = vm.run(RUN).map(|r| r.stop);
                (msg, stop, out.contents())
            })
        })
        .collect();
    for p in printers {
        let (msg, stop, out) = p.join().unwrap();
        assert_eq!(stop.unwrap(), Stop::Halted);
        assert_eq!(out, msg.as_bytes());
    }
    assert!(matches!(
        spinner.join().unwrap(),
        Err(HypervisorError::Timeout { .. })
    ));
}

#[test]
fn two_vcpus_each_run_on_their_own_thread() {
    if !kvm_available("two vCPUs") {
        return;
    }
    let out = SharedBuffer::new();
    let mut vm = vm(2, MIB, false, Box::new(out.clone()));
    // Both vCPUs print one 'x' and halt.
    let guest = [0xba, 0xf8, 0x03, 0xb0, b'x', 0xee, 0xfa, 0xf4]; // mov dx,0x3f8; mov al,'x'; out; cli; hlt
    enter_real_mode(&mut vm, &guest);
    let report = vm.run(RUN).unwrap();
    assert_eq!(report.stop, Stop::Halted);
    assert_eq!(report.vcpus.len(), 2);
    assert_eq!(out.contents(), b"xx");
}

#[test]
fn a_host_stop_ends_a_run_without_deadline_and_one_asked_between_runs_is_kept() {
    if !kvm_available("host stop") {
        return;
    }
    let (mut vm, _) = vm_with(&SPIN);
    let stop = vm.stop_handle();
    let stopper = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        stop.stop();
    });
    let start = Instant::now();
    let report = vm.run(Duration::MAX).expect("run");
    let took = start.elapsed();
    stopper.join().unwrap();
    assert_eq!(report.stop, Stop::HostStopped);
    assert_eq!(report.vcpus[0].rip, 0x1000, "stopped on the jmp");
    assert!(
        took >= Duration::from_millis(200) && took < Duration::from_secs(3),
        "took {took:?}"
    );
    // Asked while no run is under way: the next run ends at once, the one after runs.
    vm.stop_handle().stop();
    assert_eq!(vm.run(RUN).unwrap().stop, Stop::HostStopped);
    assert!(matches!(
        vm.run(Duration::from_millis(100)),
        Err(HypervisorError::Timeout { .. })
    ));
}
