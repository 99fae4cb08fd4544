//! A builtin VM (vesper-hypervisor on KVM) running a few bytes of real-mode code, with
//! one port that counts the guest's writes and one gate port the host opens: the
//! exit-heavy and the spinning guests of the host-probe bench and tests. No firmware, no kernel: the guest is exactly the
//! bytes given, so what it does to KVM (exits, or none) is known.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use vesper_hypervisor::{BusDevice, BusRange, RealModeEntry, Vm, VmConfig};

/// Where the code is loaded and starts.
pub const LOAD: u64 = 0x1000;
/// The port whose writes are counted (each one an exit to the VMM).
pub const PORT: u16 = 0x80;

/// The port that reads 0 until the host opens the gate, then 1.
pub const GATE: u16 = 0x81;

/// `jmp $`: a guest that runs without ever leaving KVM_RUN.
pub const SPIN: [u8; 2] = [0xeb, 0xfe];

/// `mov dx, GATE; l: in al, dx; test al, al; jz l; jmp $`: reads the gate (each read
/// an exit to the VMM) until the host opens it, then [`SPIN`]s, never leaving KVM_RUN
/// again.
pub const GATE_THEN_SPIN: [u8; 10] = [
    0xba,
    GATE as u8,
    (GATE >> 8) as u8,
    0xec,
    0x84,
    0xc0,
    0x74,
    0xfb,
    0xeb,
    0xfe,
];

/// `mov ecx, n; mov dx, PORT; l: out dx, al; dec ecx; jnz l; hlt`: `n` exits to the
/// VMM, then a halt.
pub fn pio_loop(n: u32) -> Vec<u8> {
    let mut code = vec![0x66, 0xb9];
    code.extend_from_slice(&n.to_le_bytes());
    code.extend_from_slice(&[0xba, PORT as u8, (PORT >> 8) as u8]);
    code.extend_from_slice(&[0xee, 0x66, 0x49, 0x75, 0xfb, 0xf4]);
    code
}

/// Counts the guest's port writes.
struct Counter(Arc<AtomicU64>);

impl BusDevice for Counter {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _: u64, _: &[u8]) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

/// Reads as 1 once the host opened it.
struct Gate(Arc<AtomicBool>);

impl BusDevice for Gate {
    fn read(&mut self, _: u64, data: &mut [u8]) {
        data.fill(u8::from(self.0.load(Ordering::Relaxed)));
    }
    fn write(&mut self, _: u64, _: &[u8]) {}
}

/// A one-vCPU, 1 MiB VM that runs `code` from [`LOAD`] in real mode, and the count of
/// its writes to [`PORT`]. Panics when the VM cannot be made (callers check KVM first).
pub fn vm(code: &[u8]) -> (Vm, Arc<AtomicU64>) {
    let (vm, writes, _) = gated_vm(code);
    (vm, writes)
}

/// [`vm`], and the switch of its [`GATE`] (closed).
pub fn gated_vm(code: &[u8]) -> (Vm, Arc<AtomicU64>, Arc<AtomicBool>) {
    let mut vm = Vm::new(
        VmConfig {
            vcpus: 1,
            mem_size: 1 << 20,
        },
        Box::new(std::io::sink()),
    )
    .expect("create VM");
    let count = Arc::new(AtomicU64::new(0));
    vm.register_pio(
        BusRange::new(PORT.into(), 1).unwrap(),
        Arc::new(Mutex::new(Counter(count.clone()))),
    )
    .unwrap();
    let gate = Arc::new(AtomicBool::new(false));
    vm.register_pio(
        BusRange::new(GATE.into(), 1).unwrap(),
        Arc::new(Mutex::new(Gate(gate.clone()))),
    )
    .unwrap();
    vm.load(LOAD, code).expect("load");
    vm.set_real_mode_entry(RealModeEntry {
        segment: 0,
        ip: LOAD as u16,
        sp: 0x8000,
    })
    .expect("entry");
    (vm, count, gate)
}
