//! The two ways `vesper debug` reads a QEMU guest's RAM, side by side on one running
//! guest: mapping QEMU's shared memfd read-only (vesperd's own VMs, libvirt domains
//! with memfd backing) and `pread` on `/proc/PID/mem` at QEMU's own addresses (a QEMU
//! started by hand, whose RAM is private; what `vm attach --qmp` uses). The same QEMU
//! serves both: its RAM is the memfd, mapped by QEMU, so `/proc/PID/mem` reads the same
//! pages through QEMU's mapping. Measured: opening the kernel (VMCOREINFO scan, page
//! tables, kallsyms), an 8-byte read of `jiffies` (page-table walk included), a 4 KiB
//! physical read, and whole `debug ps` / `debug dmesg` walks.
//!
//! `cargo build --release --workspace --bins && cargo bench -p vesper-e2e --bench ram_source`

use std::sync::Arc;
use std::time::{Duration, Instant};

use vesper_debug::{Kernel, KernelMemory, MappedRam, PhysMemory, ProcMemRam, ProcSegment};
use vesper_e2e::Daemon;

const READS: usize = 20_000;
const PAGES: usize = 5_000;
const WALKS: usize = 30;
const OPENS: usize = 3;

/// Opens one RAM source: the memory and the guest-physical ranges it holds.
type OpenRam<'a> = dyn Fn() -> (Arc<dyn PhysMemory>, Vec<std::ops::Range<u64>>) + 'a;

fn median_us(mut f: impl FnMut(), n: usize) -> (f64, f64) {
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    (v[v.len() / 2], v[(v.len() - 1) * 99 / 100])
}

fn main() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start("bench");
    let accel = format!("{} ({})", vm["accel"]["accel"], vm["accel"]["reason"]);
    let pid = d.qemu_pid("bench") as u32;
    let bytes = vm["memory_mib"].as_u64().unwrap_or(512) << 20;
    let qmp = vesper_api::run_dir::qmp_socket(&vesper_api::run_dir::of(d.run_dir.path(), "bench"));
    let (segs, ram_bytes) = vesper_qemu::Qmp::connect_waiting(&qmp, Duration::from_secs(10))
        .and_then(|mut q| q.ram_layout())
        .expect("QEMU's RAM layout");
    assert_eq!(ram_bytes, bytes);

    let memfd = || {
        let path = vesper_qemu::memfd_of(pid, vesper_qemu::RAM_MEMFD_NAME)
            .unwrap()
            .expect("guest-RAM memfd");
        let ram = MappedRam::map(
            std::fs::File::open(path).unwrap(),
            vesper_debug::ram::q35_layout(bytes),
        )
        .unwrap();
        let r = ram.ranges();
        (Arc::new(ram) as Arc<dyn PhysMemory>, r)
    };
    let procmem = || {
        let s = segs
            .iter()
            .map(|s| ProcSegment {
                gpa: s.gpa,
                len: s.len,
                hva: s.hva,
            })
            .collect();
        let ram = ProcMemRam::open(pid, s).unwrap();
        let r = ram.ranges();
        (Arc::new(ram) as Arc<dyn PhysMemory>, r)
    };
    let sources: [(&str, &OpenRam<'_>); 2] = [
        ("memfd (mmap, MAP_SHARED)", &memfd),
        ("/proc/PID/mem (pread)", &procmem),
    ];

    println!(
        "ram_source: guest {pid}, {} MiB, accel {accel}",
        bytes >> 20
    );
    println!("| µs, p50 (p99) | open kernel | read jiffies (8 B) | read_phys 4 KiB | debug ps | debug dmesg |");
    println!("|---|---:|---:|---:|---:|---:|");
    let mut rows = Vec::new();
    for (name, open) in sources {
        let mut k = None;
        let (open_us, _) = median_us(
            || {
                let (ram, ranges) = open();
                k = Some(Kernel::open(ram, &ranges).expect("open kernel"));
            },
            OPENS,
        );
        let k = k.unwrap();
        let jiffies = k.symbol("jiffies").expect("jiffies").addr;
        let read = median_us(
            || {
                std::hint::black_box(k.read_u64(jiffies).unwrap());
            },
            READS,
        );
        let mut page = vec![0u8; 4096];
        let mut addr = 0x100000u64;
        let phys = median_us(
            || {
                k.phys().read_phys(addr, &mut page).unwrap();
                addr = 0x100000 + (addr + 4096) % (64 << 20);
            },
            PAGES,
        );
        let ps = median_us(|| drop(vesper_debug::tasks::list_tasks(&k).unwrap()), WALKS);
        let layout =
            vesper_debug::printk::PrintkLayout::from_vmcoreinfo(|key| k.vmcoreinfo().lookup(key))
                .unwrap();
        let log = median_us(
            || drop(vesper_debug::printk::read_log(&k as &dyn KernelMemory, &layout).unwrap()),
            WALKS,
        );
        println!(
            "| {name} | {:.0} | {:.2} ({:.2}) | {:.2} ({:.2}) | {:.0} ({:.0}) | {:.0} ({:.0}) |",
            open_us, read.0, read.1, phys.0, phys.1, ps.0, ps.1, log.0, log.1
        );
        rows.push((read.0, phys.0, ps.0, log.0));
    }
    let (m, p) = (rows[0], rows[1]);
    println!(
        "/proc/PID/mem ÷ memfd, p50: read {:.1}×, 4 KiB {:.1}×, ps {:.1}×, dmesg {:.1}×",
        p.0 / m.0,
        p.1 / m.1,
        p.2 / m.2,
        p.3 / m.3
    );
    println!("n: open {OPENS}, reads {READS}, pages {PAGES}, walks {WALKS}");
}
