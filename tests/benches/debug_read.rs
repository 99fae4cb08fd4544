//! An 8-byte read of a kernel symbol (`jiffies`) from a running guest, side by side in
//! one run: Vesper's host-side read (vesper-debug over the guest's RAM memfd, in
//! process and through vesperd's API), QEMU's gdbstub (`m` packets, what gdb does),
//! and a round trip through the guest's frontend (`lsmod`, the cheapest command that
//! returns data: any read the guest served would cost at least that). Then `debug ps`
//! and `debug dmesg` beside the identical walks with every read an `m` packet to the
//! gdbstub — what gdb's `lx-ps` / `lx-dmesg` do, without their Python on top (so the
//! baseline is, if anything, flattered). Last, typed reads with DWARF types from the
//! kit's debug vmlinux (`read --vmlinux`) beside the guest's BTF: the first read (BTF:
//! read out of guest memory and parsed; DWARF: the file mapped, its names indexed and
//! the type converted) and warm reads, in process and through vesperd.
//!
//! `cargo bench -p vesper-e2e --bench debug_read` (after `cargo build --release
//! --workspace --bins`).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vesper_api::{call, DebugOp, Reply, Request};
use vesper_debug::{Kernel, KernelMemory, MappedRam, MemoryError};
use vesper_e2e::{kit, Daemon};

const LIB_READS: usize = 20_000;
const API_READS: usize = 300;
const GDB_READS: usize = 300;
const FRONTEND_READS: usize = 100;
const WALKS: usize = 50;
const API_WALKS: usize = 20;
const GDB_WALKS: usize = 5;
const MIB: u64 = 1 << 20;

struct Stats {
    p50: f64,
    p99: f64,
    n: usize,
}

fn stats(mut v: Vec<f64>) -> Stats {
    v.sort_by(f64::total_cmp);
    let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Stats {
        p50: pick(0.5),
        p99: pick(0.99),
        n: v.len(),
    }
}

/// `n` runs of a whole walk: stats in microseconds, and the items of the last.
fn walk(n: usize, mut f: impl FnMut() -> usize) -> (Stats, usize) {
    let mut items = 0;
    let v = (0..n)
        .map(|_| {
            let (us, got) = time(&mut f);
            items = got;
            us
        })
        .collect();
    (stats(v), items)
}

fn time<T>(f: impl FnOnce() -> T) -> (f64, T) {
    let t = Instant::now();
    let r = f();
    (t.elapsed().as_secs_f64() * 1e6, r)
}

/// QEMU's guest-RAM memfd among its open files.
fn ram_file(pid: i32) -> std::fs::File {
    let path = vesper_qemu::memfd_of(pid as u32, vesper_qemu::RAM_MEMFD_NAME)
        .expect("proc fds")
        .unwrap_or_else(|| panic!("QEMU {pid} has no guest-RAM memfd"));
    std::fs::File::open(path).expect("open guest RAM")
}

/// A minimal gdb remote-protocol client, one packet at a time, acknowledging each
/// reply (QEMU 7.2 has no no-ack mode).
struct Rsp(UnixStream);

impl Rsp {
    /// Sends `body` and returns the first reply `want` accepts (QEMU may send a stop
    /// notification of its own first, when it stops the guest for the new client).
    fn ask(&mut self, body: &str, want: impl Fn(&str) -> bool) -> String {
        let sum = body.bytes().fold(0u8, |a, b| a.wrapping_add(b));
        write!(self.0, "${body}#{sum:02x}").expect("send");
        for _ in 0..4 {
            let r = self.reply();
            if want(&r) {
                return r;
            }
        }
        panic!("gdbstub never answered {body:?} as expected");
    }

    fn reply(&mut self) -> String {
        // Reply: [+]$data#xx
        let mut out = Vec::new();
        let mut b = [0u8; 1];
        let mut hashes = None;
        loop {
            self.0.read_exact(&mut b).expect("gdbstub reply");
            match (b[0], hashes) {
                (b'#', None) => hashes = Some(0),
                (_, Some(n)) if n < 1 => hashes = Some(n + 1),
                (_, Some(_)) => {
                    self.0.write_all(b"+").expect("ack");
                    break;
                }
                (b'+', None) if out.is_empty() => {}
                (b'$', None) if out.is_empty() => {}
                (c, None) => out.push(c),
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

/// Kernel memory read through the gdbstub (`m ADDR,LEN`: guest-virtual addresses,
/// translated by QEMU with the vCPU's page tables), as gdb reads it.
struct GdbMemory(std::sync::Mutex<Rsp>);

/// Bytes per `m` packet (QEMU's packet buffer holds a little over 4 KiB of hex).
const GDB_CHUNK: usize = 1024;

impl KernelMemory for GdbMemory {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let mut rsp = self.0.lock().unwrap();
        for (i, chunk) in buf.chunks_mut(GDB_CHUNK).enumerate() {
            let at = addr + (i * GDB_CHUNK) as u64;
            let want = chunk.len() * 2;
            let r = rsp.ask(&format!("m{at:x},{:x}", chunk.len()), |r| {
                r.len() == want || r.starts_with('E')
            });
            if r.starts_with('E') {
                return Err(MemoryError::NotMapped {
                    addr: at,
                    why: format!("gdbstub: {r}"),
                });
            }
            for (j, b) in chunk.iter_mut().enumerate() {
                *b = u8::from_str_radix(&r[j * 2..j * 2 + 2], 16).expect("hex");
            }
        }
        Ok(())
    }
}

/// First reads, and p50 of warm ones, in microseconds: BTF beside DWARF.
struct TypeRows {
    rows: Vec<(String, Stats, Stats)>,
    index: vesper_debug::dwarf::IndexStats,
}

const FIRST_READS: usize = 5;
const WARM_READS: usize = 2_000;
const TYPED_EXPRS: [&str; 2] = ["init_task.comm", "init_task.nsproxy->uts_ns"];

fn types_bench(
    d: &Daemon,
    ram: &std::fs::File,
    memory: u64,
    vmlinux: &std::path::Path,
) -> TypeRows {
    use vesper_debug::dwarf::DwarfFile;
    use vesper_debug::expr::{read_with, TypeSource};
    let layout = vesper_debug::ram::q35_layout(memory);
    let open = || {
        let ram = MappedRam::map(ram.try_clone().unwrap(), layout.clone()).unwrap();
        let ranges = ram.ranges();
        Kernel::open(Arc::new(ram), &ranges).expect("open kernel")
    };
    let expr = TYPED_EXPRS[0];
    // First reads: a fresh kernel (BTF not yet read) or a fresh file (not indexed).
    let mut first_btf = Vec::new();
    let mut first_dwarf = Vec::new();
    let k = open();
    let mut index = None;
    for _ in 0..FIRST_READS {
        let fresh = open();
        let (us, r) = time(|| read_with(&fresh, TypeSource::Btf, expr, 1, false));
        r.expect("BTF read");
        first_btf.push(us);
        let (us, r) = time(|| {
            let f = DwarfFile::open(vmlinux).expect("open vmlinux");
            read_with(&k, TypeSource::Dwarf(&f), expr, 1, false)?;
            Ok::<_, vesper_debug::DebugError>(f.index_stats()?)
        });
        index = Some(r.expect("DWARF read"));
        first_dwarf.push(us);
    }
    let mut rows = vec![(
        format!("first read of {expr} (types loaded)"),
        stats(first_btf),
        stats(first_dwarf),
    )];
    let f = DwarfFile::open(vmlinux).expect("open vmlinux");
    for e in TYPED_EXPRS {
        let warm = |src| {
            read_with(&k, src, e, 1, false).expect("warm-up");
            stats(
                (0..WARM_READS)
                    .map(|_| time(|| read_with(&k, src, e, 1, false).unwrap()).0)
                    .collect(),
            )
        };
        rows.push((
            format!("warm read of {e}, in process"),
            warm(TypeSource::Btf),
            warm(TypeSource::Dwarf(&f)),
        ));
    }
    // Through vesperd: its first DWARF read indexes the file it then keeps.
    let req = |vmlinux: Option<std::path::PathBuf>| Request::Debug {
        guest: "bench".into(),
        debug: DebugOp::Read {
            expr: expr.into(),
            count: 1,
            hex: false,
            vmlinux,
        },
    };
    let ask = |r: &Request| {
        time(|| {
            let out = call(&d.socket, r, Duration::from_secs(120)).unwrap();
            assert!(matches!(out, Ok(Reply::DebugValue { .. })), "{out:?}");
        })
        .0
    };
    let (btf_req, dwarf_req) = (req(None), req(Some(vmlinux.to_path_buf())));
    // vesperd read BTF earlier in this run (the jiffies reads), so only DWARF is first.
    let first = ask(&dwarf_req);
    rows.push((
        "first read via vesperd (BTF loaded before; DWARF: indexed)".to_string(),
        stats(vec![ask(&btf_req)]),
        stats(vec![first]),
    ));
    rows.push((
        format!("warm read of {expr} via vesperd"),
        stats((0..API_READS).map(|_| ask(&btf_req)).collect()),
        stats((0..API_READS).map(|_| ask(&dwarf_req)).collect()),
    ));
    TypeRows {
        rows,
        index: index.expect("indexed"),
    }
}

fn main() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start("bench");
    let accel = format!("{} ({})", vm["accel"]["accel"], vm["accel"]["reason"]);
    let pid = d.qemu_pid("bench");
    let memory = vm["memory_mib"].as_u64().unwrap_or(512) * MIB;

    // 1. In process: the guest's RAM mapped read-only, the kernel opened once.
    let ram = MappedRam::map(ram_file(pid), vesper_debug::ram::q35_layout(memory)).unwrap();
    let ranges = ram.ranges();
    let (open_us, k) = time(|| Kernel::open(Arc::new(ram), &ranges).expect("open kernel"));
    let jiffies = k.symbol("jiffies").expect("jiffies").addr;
    let mut lib = Vec::with_capacity(LIB_READS);
    for _ in 0..LIB_READS {
        let (us, v) = time(|| k.read_u64(jiffies));
        v.expect("read");
        lib.push(us);
    }

    // 2. Through vesperd: `vesper debug read bench jiffies` without the CLI's start-up.
    let read = Request::Debug {
        guest: "bench".into(),
        debug: DebugOp::Read {
            expr: "jiffies".into(),
            count: 1,
            hex: false,
            vmlinux: None,
        },
    };
    call(&d.socket, &read, Duration::from_secs(60))
        .unwrap()
        .expect("warm-up: open the kernel in vesperd");
    let mut api = Vec::with_capacity(API_READS);
    for _ in 0..API_READS {
        let (us, r) = time(|| call(&d.socket, &read, Duration::from_secs(10)));
        assert!(matches!(r, Ok(Ok(Reply::DebugValue { .. }))), "{r:?}");
        api.push(us);
    }

    // 3. The frontend: a command round trip through the guest.
    let lsmod = Request::Lsmod {
        guest: "bench".into(),
    };
    let mut front = Vec::with_capacity(FRONTEND_READS);
    for _ in 0..FRONTEND_READS {
        let (us, r) = time(|| call(&d.socket, &lsmod, Duration::from_secs(10)));
        assert!(matches!(r, Ok(Ok(Reply::Modules { .. }))), "{r:?}");
        front.push(us);
    }

    // 4. QEMU's gdbstub, as gdb reads memory (the guest stops while attached).
    let sock = d.run_dir.path().join("guests/bench/qemu-gdb.sock");
    let stream = UnixStream::connect(&sock).expect("QEMU gdbstub");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut rsp = Rsp(stream);
    rsp.ask("?", |r| r.starts_with('T') || r.starts_with('S'));
    let m = format!("m{jiffies:x},8");
    let mut gdb = Vec::with_capacity(GDB_READS);
    for _ in 0..GDB_READS {
        let (us, hex) = time(|| rsp.ask(&m, |r| r.len() == 16));
        assert!(hex.bytes().all(|b| b.is_ascii_hexdigit()), "{hex:?}");
        gdb.push(us);
    }

    // 5. Whole walks: the task list and the printk ring, in process and through the
    // gdbstub (the same reads), and `debug ps` / `debug dmesg` through vesperd.
    let gdb_mem = GdbMemory(std::sync::Mutex::new(rsp));
    let layout =
        vesper_debug::printk::PrintkLayout::from_vmcoreinfo(|key| k.vmcoreinfo().lookup(key))
            .expect("printk layout");
    let ps_lib = walk(WALKS, || {
        vesper_debug::tasks::list_tasks(&k).unwrap().tasks.len()
    });
    let ps_gdb = walk(GDB_WALKS, || {
        vesper_debug::tasks::list_tasks_in(&k, &gdb_mem)
            .unwrap()
            .tasks
            .len()
    });
    let log_lib = walk(WALKS, || {
        vesper_debug::printk::read_log(&k as &dyn KernelMemory, &layout)
            .unwrap()
            .records
            .len()
    });
    let log_gdb = walk(GDB_WALKS, || {
        vesper_debug::printk::read_log(&gdb_mem, &layout)
            .unwrap()
            .records
            .len()
    });
    let mut rsp = gdb_mem.0.into_inner().unwrap();
    rsp.ask("D", |r| r == "OK");
    let api_walk = |op: DebugOp| {
        let req = Request::Debug {
            guest: "bench".into(),
            debug: op,
        };
        walk(API_WALKS, || {
            call(&d.socket, &req, Duration::from_secs(30))
                .unwrap()
                .expect("debug reply");
            0
        })
    };
    let ps_api = api_walk(DebugOp::Ps);
    let log_api = api_walk(DebugOp::Dmesg);
    let types = kit()
        .debug_vmlinux
        .as_ref()
        .map(|v| types_bench(&d, &ram_file(pid), memory, v));

    let (lib, api, front, gdb) = (stats(lib), stats(api), stats(front), stats(gdb));
    println!("\n8-byte read of jiffies from a running guest, host side, one run");
    println!(
        "guest kernel {}, accel {accel}; kernel opened from RAM in {:.0} ms",
        kit().release,
        open_us / 1e3
    );
    println!(
        "{:<46} {:>10} {:>10} {:>6} {:>14}",
        "us", "p50", "p99", "n", "p50 vs gdbstub"
    );
    for (name, s) in [
        ("vesper-debug in process (RAM memfd)", &lib),
        ("vesper debug read via vesperd's API", &api),
        ("QEMU gdbstub `m` packet (baseline)", &gdb),
        ("frontend command round trip (lsmod)", &front),
    ] {
        println!(
            "{name:<46} {:>10.2} {:>10.2} {:>6} {:>13.1}x",
            s.p50,
            s.p99,
            s.n,
            gdb.p50 / s.p50
        );
    }
    let goal = gdb.p50 / lib.p50;
    println!(
        "goal: host-side read >= 100x faster than the gdbstub -> {goal:.0}x {}",
        if goal >= 100.0 { "MET" } else { "NOT MET" }
    );
    println!("\nWhole walks (the gdbstub row does the identical reads, one `m` packet each)");
    println!(
        "{:<46} {:>10} {:>10} {:>6} {:>7} {:>14}",
        "ms", "p50", "p99", "n", "items", "p50 vs gdbstub"
    );
    for (what, lib, api, gdb) in [
        ("debug ps", &ps_lib, &ps_api, &ps_gdb),
        ("debug dmesg", &log_lib, &log_api, &log_gdb),
    ] {
        for (how, (s, items)) in [
            ("in process (RAM memfd)", lib),
            ("through vesperd's API", api),
            ("through QEMU's gdbstub (baseline)", gdb),
        ] {
            println!(
                "{:<46} {:>10.2} {:>10.2} {:>6} {:>7} {:>13.1}x",
                format!("{what}, {how}"),
                s.p50 / 1e3,
                s.p99 / 1e3,
                s.n,
                if *items > 0 {
                    items.to_string()
                } else {
                    "-".into()
                },
                gdb.0.p50 / s.p50
            );
        }
    }
    match types {
        None => println!("\nTyped reads with DWARF: skipped, the kit has no debug vmlinux"),
        Some(t) => {
            println!(
                "\nTyped reads: DWARF (kit's debug vmlinux, {} units, {} top-level DIEs, {} names indexed in {:.0} ms) beside BTF",
                t.index.units,
                t.index.dies,
                t.index.names,
                t.index.took.as_secs_f64() * 1e3
            );
            println!(
                "{:<58} {:>10} {:>10} {:>10} {:>6}",
                "us (p50)", "BTF", "DWARF", "DWARF/BTF", "n"
            );
            for (what, btf, dwarf) in &t.rows {
                println!(
                    "{what:<58} {:>10.1} {:>10.1} {:>9.2}x {:>6}",
                    btf.p50,
                    dwarf.p50,
                    dwarf.p50 / btf.p50,
                    dwarf.n
                );
            }
        }
    }
}
