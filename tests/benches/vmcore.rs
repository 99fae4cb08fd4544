//! A vmcore of a 512 MiB guest, side by side in one run: `vesper debug dump` (ELF with
//! VMCOREINFO, zero pages left out) against QEMU's own `dump-guest-memory` (QMP, plain
//! ELF of all RAM) on the same guest, several rounds each: time, MB/s of guest RAM,
//! file size.
//!
//! `cargo bench -p vesper-e2e --bench vmcore` (after `cargo build --release --workspace
//! --bins`).

use std::time::{Duration, Instant};

use vesper_api::{call, DebugOp, Reply, Request};
use vesper_e2e::{kit, Daemon};

const ROUNDS: usize = 3;
const MIB: f64 = (1u64 << 20) as f64;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start("bench");
    let accel = format!("{} ({})", vm["accel"]["accel"], vm["accel"]["reason"]);
    let ram = vm["memory_mib"].as_u64().unwrap_or(512) as f64 * MIB;
    let dir = d.run_dir.path().join("bench-dumps");
    std::fs::create_dir_all(&dir).unwrap();

    let (mut ours, mut ours_size) = (Vec::new(), 0u64);
    for i in 0..ROUNDS {
        let req = Request::Debug {
            guest: "bench".into(),
            debug: DebugOp::Dump {
                name: Some(format!("v{i}.vmcore")),
            },
        };
        let t = Instant::now();
        let r = call(&d.socket, &req, Duration::from_secs(300)).unwrap();
        let secs = t.elapsed().as_secs_f64();
        let Ok(Reply::DebugDump { dump, .. }) = r else {
            panic!("{r:?}")
        };
        ours_size = dump.bytes_written;
        std::fs::remove_file(&dump.path).unwrap();
        ours.push(secs);
    }

    let qmp = d.run_dir.path().join("guests/bench/qmp.sock");
    let (mut qemu, mut qemu_size) = (Vec::new(), 0u64);
    for i in 0..ROUNDS {
        let path = dir.join(format!("q{i}.elf"));
        let mut q = vesper_qemu::Qmp::connect(&qmp, Duration::from_secs(5)).expect("QMP");
        let args = serde_json::json!({
            "paging": false,
            "protocol": format!("file:{}", path.display()),
        });
        let t = Instant::now();
        q.execute("dump-guest-memory", Some(args))
            .expect("dump-guest-memory");
        let secs = t.elapsed().as_secs_f64();
        qemu_size = std::fs::metadata(&path).unwrap().len();
        std::fs::remove_file(&path).unwrap();
        qemu.push(secs);
    }

    let (o, q) = (median(ours), median(qemu));
    println!(
        "\nvmcore of a {:.0} MiB guest, {ROUNDS} rounds each, medians",
        ram / MIB
    );
    println!("guest kernel {}, accel {accel}", kit().release);
    println!(
        "{:<42} {:>9} {:>10} {:>12} {:>9}",
        "", "seconds", "MB/s RAM", "file MiB", "speed"
    );
    for (name, secs, size) in [
        ("vesper debug dump (zero pages left out)", o, ours_size),
        ("QMP dump-guest-memory (baseline)", q, qemu_size),
    ] {
        println!(
            "{name:<42} {secs:>9.2} {:>10.0} {:>12.1} {:>8.2}x",
            ram / MIB / secs,
            size as f64 / MIB,
            q / secs
        );
    }
}
