//! The guest's whole view of the Vesper PCI function, without KVM: the config-address /
//! config-data ports (any offset and width, any function), the config space with its
//! MSI-X capability and BARs (sizing, moves, memory decoding), BAR0's registers and
//! BAR1's MSI-X table and PBA (any address and width), and host notifications. After
//! every step the invariants a guest or the host relies on are checked.
#![no_main]

use std::sync::{Arc, Mutex};

use libfuzzer_sys::fuzz_target;
use vesper_hypervisor::msix::Notify;
use vesper_hypervisor::pci::{ConfigSpace, PciDevice, PciPorts, PciRoot, BAR_COUNT};
use vesper_hypervisor::vesper::{self, BarAddresses, VesperLogic, MSIX_VECTORS};
use vesper_hypervisor::BusDevice;

/// Guest RAM of the fuzzed machine: [0, 1 GiB).
const RAM_END: u64 = 0x4000_0000;
const REGION_SIZE: u64 = 2 << 20;

/// The logic behind the PCI root, shared so the target can inspect it.
struct Shared(Arc<Mutex<VesperLogic>>);

impl PciDevice for Shared {
    fn bar_read(&mut self, bar: usize, offset: u64, data: &mut [u8]) {
        self.0.lock().unwrap().bar_read(bar, offset, data);
    }
    fn bar_write(&mut self, bar: usize, offset: u64, data: &[u8]) {
        self.0.lock().unwrap().bar_write(bar, offset, data);
    }
    fn config_written(&mut self, config: &ConfigSpace) {
        self.0.lock().unwrap().config_written(config);
    }
}

/// Reads config dword `reg` of 00:`dev`.0 through the ports, keeping the address.
fn config_dword(ports: &mut PciPorts, dev: u8, reg: u8) -> u32 {
    let mut saved = [0; 4];
    ports.read(0, &mut saved);
    let address = 0x8000_0000 | (u32::from(dev) << 11) | u32::from(reg);
    ports.write(0, &address.to_le_bytes());
    let mut b = [0; 4];
    ports.read(4, &mut b);
    ports.write(0, &saved);
    u32::from_le_bytes(b)
}

fn check(root: &Mutex<PciRoot>, ports: &mut PciPorts, logic: &Mutex<VesperLogic>, dev2: u8) {
    // Read-only identity, as the guest sees it.
    assert_eq!(config_dword(ports, 0, 0), 0x1237_8086);
    assert_eq!(config_dword(ports, 1, 0), 0x1110_1af4);
    assert_eq!(config_dword(ports, 1, 0x08), 0x0500_0001);
    assert_eq!(config_dword(ports, 1, 0x2c), 0x1100_1af4);
    assert_eq!(config_dword(ports, 1, 0x34) & 0xff, 0x40);
    assert_eq!(config_dword(ports, 1, 0x40) & 0x07ff_ffff, 0x0001_0011);
    assert_eq!(config_dword(ports, 1, 0x44), 1);
    assert_eq!(config_dword(ports, 1, 0x48), 0x801);
    // Absent functions read all-ones.
    assert_eq!(config_dword(ports, dev2, 0), 0xffff_ffff);

    let r = root.lock().unwrap();
    let f = r.function(1, 0).expect("the device stays");
    let decoded = r.decoded();
    for d in &decoded {
        assert!(f.memory_enabled(), "decoded with memory decoding off");
        let bar = f.bar(d.bar).expect("a decoded BAR exists");
        // Nothing is decoded at an address its BAR does not report.
        assert_eq!(bar.addr, d.addr);
        assert!(d.addr >= RAM_END && d.addr + d.size <= r.limit());
        for e in &decoded {
            assert!(e == d || e.addr + e.size <= d.addr || d.addr + d.size <= e.addr);
        }
    }
    for i in 0..BAR_COUNT {
        let Some(bar) = f.bar(i) else { continue };
        let sizing = bar.is_sizing_pattern(bar.addr);
        match r.decoded_at(1, 0, i) {
            Some(at) => assert_eq!(at, bar.addr),
            // A BAR the guest placed is decoded unless its place is taken or invalid.
            None if f.memory_enabled() && !sizing => assert!(!r.is_free(bar.addr, bar.size)),
            None => {}
        }
    }
    let l = logic.lock().unwrap();
    for v in MSIX_VECTORS..64 {
        assert!(!l.msix.pending(v));
    }
}

fuzz_target!(|data: &[u8]| {
    let (space, cap) = vesper::config_space(
        BarAddresses {
            bar0: 0xc000_0000,
            bar1: 0xc000_1000,
            bar2: 0xc020_0000,
        },
        REGION_SIZE,
    )
    .unwrap();
    let logic = Arc::new(Mutex::new(VesperLogic::new(1, cap)));
    let root = Arc::new(Mutex::new(PciRoot::new()));
    {
        let mut r = root.lock().unwrap();
        r.set_rules(&[(0, RAM_END)], 36);
        r.add_device(1, 0, space, Box::new(Shared(logic.clone())))
            .unwrap();
    }
    let mut ports = PciPorts::without_reset(root.clone());
    let mut steps = 0;
    let mut rest = data;
    // Each step: op, a length (mostly 1, 2, 4 or 8; any up to 16, e.g. string port I/O),
    // 8 bytes of operand (address/offset), then the data.
    while rest.len() >= 10 && steps < 256 {
        steps += 1;
        let op = rest[0];
        let len = match rest[1] {
            l @ 0..=0x7f => [1usize, 2, 4, 8][usize::from(l & 3)],
            l => usize::from(l % 17),
        };
        let arg = u64::from_le_bytes(rest[2..10].try_into().unwrap());
        rest = &rest[10..];
        let take = len.min(rest.len());
        let mut bytes = [0u8; 16];
        bytes[..take].copy_from_slice(&rest[..take]);
        rest = &rest[take..];
        let value = &bytes[..len];
        match op % 6 {
            // Config ports: any port offset 0-7 and width.
            0 => ports.write(arg % 8, value),
            1 => ports.read(arg % 8, &mut [0; 16][..len]),
            // Config address of the device (enable bit set) with a register from arg.
            2 => ports.write(0, &(0x8000_0800 | (arg as u32 & 0xfc)).to_le_bytes()),
            // MMIO at a decoded BAR's base + offset, or anywhere.
            3 | 4 => {
                let decoded = root.lock().unwrap().decoded();
                let addr = match decoded.get((arg >> 56) as usize % 4) {
                    Some(d) => d.addr.wrapping_add(arg & 0xfff),
                    None => arg,
                };
                let mut r = root.lock().unwrap();
                if op % 6 == 3 {
                    r.mmio_write(addr, value);
                } else {
                    r.mmio_read(addr, &mut [0; 16][..len]);
                }
            }
            // The host notifies a vector.
            _ => {
                let v = (arg % 4) as u16;
                let n = logic.lock().unwrap().notify(v);
                assert_eq!(n == Notify::NoSuchVector, v >= MSIX_VECTORS);
            }
        }
        check(&root, &mut ports, &logic, 2 + (arg % 30) as u8);
    }
});
