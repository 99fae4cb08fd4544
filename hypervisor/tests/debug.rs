//! Debugger primitives on a real vCPU: pause and resume a running VM, registers and
//! memory while it is parked, and KVM guest debug (single step, hardware and software
//! breakpoints) measured on this host's KVM. Skips loudly without /dev/kvm.

use std::time::{Duration, Instant};

use vesper_hypervisor::debug::{HwBreakpoint, HwKind};
use vesper_hypervisor::{
    DebugHandle, GuestDebug, HypervisorError, ResumeAction, Stop, StopCause, Vm, VmConfig,
};

mod common;
use common::{asm, kvm_available, MIB};

const ENTRY: u64 = 0x10_0000;
/// The loop's counter, stored after every increment.
const COUNTER: u64 = 0x30_0000;
/// Two `nop`s and a `jmp` back, at a known place.
const TARGET: u64 = ENTRY + 0x40;
const PAUSE: Duration = Duration::from_secs(2);
const STOP: Duration = Duration::from_secs(5);

const GUEST: &str = r#"
    .intel_syntax noprefix
    .code64
    .globl _start
_start:
    xor eax, eax
top:
    inc rax
    mov qword ptr [0x300000], rax
    jmp target
    .org 0x40
target:
    nop
    nop
    jmp top
"#;

/// A one-vCPU VM with the irqchip (as builtin machines have) running the counter loop
/// on its own thread.
fn start() -> (
    DebugHandle,
    vesper_hypervisor::StopHandle,
    std::thread::JoinHandle<Stop>,
) {
    let mut vm = Vm::with_irqchip(
        VmConfig {
            vcpus: 1,
            mem_size: 4 * MIB,
        },
        Box::new(std::io::sink()),
    )
    .expect("VM");
    vm.load(ENTRY, &asm::assemble64(GUEST, ENTRY))
        .expect("load");
    vm.set_long_mode_entry(ENTRY).expect("entry");
    let debug = vm.debug_handle();
    let stop = vm.stop_handle();
    let thread = std::thread::spawn(move || vm.run(Duration::from_secs(120)).expect("run").stop);
    (debug, stop, thread)
}

fn counter(d: &DebugHandle) -> u64 {
    let mut b = [0u8; 8];
    d.read_phys(COUNTER, &mut b).expect("read the counter");
    u64::from_le_bytes(b)
}

fn wait_counter_moves(d: &DebugHandle) {
    let c = counter(d);
    let deadline = Instant::now() + STOP;
    while counter(d) == c {
        assert!(Instant::now() < deadline, "the guest does not run");
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn a_running_vm_is_paused_read_written_and_resumed() {
    if !kvm_available("a_running_vm_is_paused_read_written_and_resumed") {
        return;
    }
    let (d, stop, thread) = start();
    wait_counter_moves(&d);
    // Nothing on a running VM's vCPUs.
    assert!(matches!(d.registers(0), Err(HypervisorError::VmNotPaused)));

    d.pause(PAUSE).expect("pause");
    assert!(d.is_paused());
    let c = counter(&d);
    std::thread::sleep(Duration::from_millis(100));
    assert_eq!(counter(&d), c, "the counter moved in a paused VM");
    let regs = d.registers(0).expect("registers");
    assert!((ENTRY..ENTRY + 0x50).contains(&regs.rip), "{regs}");
    assert_eq!(regs.efer & 0x500, 0x500, "long mode: {regs}");
    // rax is the counter, or one ahead if the vCPU parked between `inc` and the store.
    assert!(
        regs.gprs[0] == c || regs.gprs[0] == c + 1,
        "rax holds the counter {c}: {regs}"
    );
    assert!(matches!(
        d.registers(1),
        Err(HypervisorError::NoSuchVcpu { vcpu: 1, count: 1 })
    ));

    // A register write the guest sees: the counter jumps.
    let mut w = regs.clone();
    w.gprs[0] = 1_000_000;
    d.set_registers(&w).expect("write rax");
    assert_eq!(d.registers(0).unwrap().gprs[0], 1_000_000);
    let mut bad = regs.clone();
    bad.segments[0].selector = 0x8;
    assert!(matches!(
        d.set_registers(&bad),
        Err(HypervisorError::RegisterRefused(_))
    ));
    // Memory: checked, RAM only.
    d.write_phys(COUNTER + 8, b"vesper").unwrap();
    let mut b = [0u8; 6];
    d.read_phys(COUNTER + 8, &mut b).unwrap();
    assert_eq!(&b, b"vesper");
    assert!(matches!(
        d.read_phys(4 * MIB - 2, &mut b),
        Err(HypervisorError::NotGuestRam { .. })
    ));

    d.resume(&[]).expect("resume");
    wait_counter_moves(&d);
    assert!(counter(&d) > 1_000_000, "the written rax went on");
    // Pausing twice, resuming twice: still one VM that runs.
    d.pause(PAUSE).unwrap();
    d.pause(PAUSE).unwrap();
    d.resume(&[]).unwrap();
    assert!(matches!(d.resume(&[]), Err(HypervisorError::VmNotPaused)));
    wait_counter_moves(&d);

    // A host stop reaches parked vCPUs too.
    d.pause(PAUSE).unwrap();
    stop.stop();
    assert_eq!(thread.join().unwrap(), Stop::HostStopped);
    assert!(d.ended(), "the Vm is dropped with its thread");
    assert!(matches!(d.pause(PAUSE), Err(HypervisorError::VmEnded)));
    // Nor is its RAM kept mapped for the handle.
    assert!(matches!(
        d.read_phys(COUNTER, &mut [0u8; 8]),
        Err(HypervisorError::VmEnded)
    ));
}

/// What this host's KVM does with each kind of guest debug, asserted against what
/// `GuestDebugSupport` says (README, "Guest debug"): what it allows works, what it
/// does not is refused before anything reaches KVM.
#[test]
fn guest_debug_works_as_support_says() {
    if !kvm_available("guest_debug_works_as_support_says") {
        return;
    }
    let (d, stop, thread) = start();
    let support = d.support();
    eprintln!("guest debug on this host's KVM: {support:?}");
    wait_counter_moves(&d);
    d.pause(PAUSE).unwrap();

    // Single step from `target`: one instruction (a one-byte nop) at a time.
    let mut regs = d.registers(0).unwrap();
    regs.rip = TARGET;
    d.set_registers(&regs).unwrap();
    if support.single_step {
        for n in 1..=2 {
            d.resume(&[ResumeAction::Step]).expect("step");
            let got = d.wait_stop(STOP).expect("stop").expect("a step stop");
            assert_eq!(got.cause, StopCause::Step, "{got:?}");
            assert_eq!(d.registers(0).unwrap().rip, TARGET + n);
        }
    } else {
        assert!(matches!(
            d.resume(&[ResumeAction::Step]),
            Err(HypervisorError::GuestDebugUnsupported { .. })
        ));
    }

    // A hardware breakpoint at `target`, hit from the loop.
    let mut hw = GuestDebug::default();
    hw.hw[0] = Some(HwBreakpoint {
        addr: TARGET,
        kind: HwKind::Execute,
    });
    if support.hw_breakpoints {
        d.set_guest_debug(hw).expect("hw breakpoint");
        for _ in 0..2 {
            regs = d.registers(0).unwrap();
            regs.rip = ENTRY;
            d.set_registers(&regs).unwrap();
            d.resume(&[]).unwrap();
            let got = d.wait_stop(STOP).expect("stop").expect("a breakpoint stop");
            assert_eq!(got.cause, StopCause::HwBreakpoint(0), "{got:?}");
            assert_eq!(got.pc, TARGET);
            assert_eq!(d.registers(0).unwrap().rip, TARGET);
        }
        // A data watchpoint on the counter: the store after `inc` stops the vCPU.
        let mut watch = GuestDebug::default();
        watch.hw[1] = Some(HwBreakpoint {
            addr: COUNTER,
            kind: HwKind::Write(8),
        });
        if support.watchpoints {
            d.set_guest_debug(watch).expect("watchpoint");
            d.resume(&[]).unwrap();
            let got = d.wait_stop(STOP).expect("stop").expect("a watchpoint stop");
            assert_eq!(got.cause, StopCause::Watchpoint(1), "{got:?}");
            let regs = d.registers(0).unwrap();
            let mut b = [0u8; 8];
            d.read_phys(COUNTER, &mut b).unwrap();
            assert_eq!(
                u64::from_le_bytes(b),
                regs.gprs[0],
                "stopped after the store"
            );
        } else {
            // kvm_pvm: accepted by KVM but never fires (measured), so refused here.
            let e = d.set_guest_debug(watch).unwrap_err();
            assert!(e.to_string().contains("data watchpoints"), "{e}");
        }
        d.set_guest_debug(GuestDebug::default()).unwrap();
    } else {
        assert!(d.set_guest_debug(hw).is_err());
    }

    // A software breakpoint: an int3 at `target`.
    let sw = GuestDebug {
        sw_breakpoints: true,
        ..GuestDebug::default()
    };
    if support.sw_breakpoints {
        let mut orig = [0u8; 1];
        d.read_phys(TARGET, &mut orig).unwrap();
        d.set_guest_debug(sw).expect("sw breakpoints");
        d.write_phys(TARGET, &[0xcc]).unwrap();
        d.resume(&[]).unwrap();
        let got = d.wait_stop(STOP).expect("stop").expect("a breakpoint stop");
        assert_eq!(got.cause, StopCause::SwBreakpoint, "{got:?}");
        assert_eq!(d.registers(0).unwrap().rip, TARGET);
        d.write_phys(TARGET, &orig).unwrap();
        d.set_guest_debug(GuestDebug::default()).unwrap();
    } else {
        // kvm_pvm: an int3 would end the run (INTERNAL_ERROR), so it is refused here.
        let e = d.set_guest_debug(sw).unwrap_err();
        assert!(
            matches!(e, HypervisorError::GuestDebugUnsupported { .. }),
            "{e}"
        );
        assert!(e.to_string().contains("hardware breakpoints"), "{e}");
    }

    // Guest debug off, the VM runs on as before.
    assert_eq!(d.guest_debug(), GuestDebug::default());
    d.resume(&[]).unwrap();
    wait_counter_moves(&d);
    assert_eq!(d.wait_stop(Duration::from_millis(50)).unwrap(), None);
    stop.stop();
    assert_eq!(thread.join().unwrap(), Stop::HostStopped);
}
