//! Boot to `guest_up` of the kit's Debian disk guest (SeaBIOS → GRUB → systemd, the
//! frontend loaded by systemd from its DKMS package) side by side with the kit's
//! initramfs guest (QEMU's direct kernel boot, busybox /init), alternating, in one run:
//! `vesper vm start` to its reply (the frontend's hello) and to the tests' hand on the
//! console.
//!
//! `cargo bench -p vesper-e2e --bench disk_boot` (after `cargo build --release
//! --workspace --bins`).

use std::time::{Duration, Instant};

use vesper_e2e::{kit, Daemon};

const ROUNDS: usize = 3;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Seconds from `vm start` to its reply (the hello) and to `hand ready`.
fn boot(d: &Daemon, name: &str, args: &[&str]) -> (f64, f64, String) {
    let t = Instant::now();
    let st = d.vm_start_with(name, args);
    let up = t.elapsed().as_secs_f64();
    d.wait_console(name, "vesper-init: hand ready", Duration::from_secs(300));
    let hand = t.elapsed().as_secs_f64();
    d.cli(&["vm", "stop", name]).ok();
    let accel = format!("{} ({})", st["accel"]["accel"], st["accel"]["reason"]);
    (up, hand, accel)
}

fn main() {
    let k = kit();
    let disk = k.debian_disk.clone().expect("the kit's Debian disk guest");
    let disk = disk.to_str().unwrap().to_string();
    let d = Daemon::start(&[]);
    let disk_args = [
        "--disk",
        &disk,
        "--snapshot",
        "--firmware",
        "bios",
        "--memory",
        "1024",
        "--net",
        "user",
        "--boot-timeout",
        "300",
    ];
    let kit_args = ["--mode", "hand", "--memory", "1024"];
    let (mut disk_up, mut disk_hand, mut kit_up, mut kit_hand) = (vec![], vec![], vec![], vec![]);
    let mut accel = String::new();
    for i in 0..ROUNDS {
        let (u, h, a) = boot(&d, &format!("disk{i}"), &disk_args);
        disk_up.push(u);
        disk_hand.push(h);
        accel = a;
        let (u, h, _) = boot(&d, &format!("kit{i}"), &kit_args);
        kit_up.push(u);
        kit_hand.push(h);
    }
    println!("accelerator: {accel}; {ROUNDS} rounds each, alternating; medians");
    println!(
        "{:<44} {:>10} {:>12}",
        "guest", "guest_up s", "hand ready s"
    );
    println!(
        "{:<44} {:>10.2} {:>12.2}",
        "Debian disk (SeaBIOS, GRUB, systemd, DKMS frontend)",
        median(disk_up.clone()),
        median(disk_hand.clone())
    );
    println!(
        "{:<44} {:>10.2} {:>12.2}",
        "kit initramfs (direct boot, busybox init)",
        median(kit_up.clone()),
        median(kit_hand.clone())
    );
    println!(
        "ratio disk / kit: guest_up {:.1}x, hand ready {:.1}x",
        median(disk_up) / median(kit_up),
        median(disk_hand) / median(kit_hand)
    );
}
