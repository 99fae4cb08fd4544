//! A user's own VM definitions on the kit's kernel: a definition file, the run
//! directory's copy a plain `vm start` reuses, the user's kernel, initramfs and exact
//! command line, QEMU options passed through, the definition's vmlinux in `vesper
//! debug`, and every bad disk or option refused before a VM process exists.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::Value;
use vesper_e2e::{kit, CliOutput, Daemon};

/// The virtio-rng PCI device ids (transitional, modern).
const VIRTIO_RNG: [&str; 2] = ["0x1005", "0x1044"];

fn has_rng(d: &Daemon, vm: &str) -> bool {
    let (out, rc) = d.hand_sh(vm, "cat /sys/bus/pci/devices/*/device");
    assert_eq!(rc, 0, "{out:?}");
    out.iter().any(|l| VIRTIO_RNG.contains(&l.trim()))
}

fn vm_names(d: &Daemon) -> Vec<String> {
    let list = d.cli(&["--json", "vm", "list"]).result();
    list["vms"]
        .as_array()
        .or_else(|| list.as_array())
        .map(|a| {
            a.iter()
                .filter_map(|v| v["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_definition_file_starts_the_vm_and_a_plain_start_starts_it_so_again() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("w1.toml");
    std::fs::write(
        &file,
        "memory_mib = 384\nqemu_args = [\"-device\", \"virtio-rng-pci\"]\n\n[boot]\nmode = \"hand\"\nappend = \"vesper.word=from-file\"\n",
    )
    .unwrap();
    let st = d.vm_start_with("w1", &["--config", file.to_str().unwrap()]);
    assert_eq!(st["memory_mib"], 384, "{st}");
    let (cmdline, _) = d.hand_sh("w1", "cat /proc/cmdline");
    assert!(
        cmdline.iter().any(|l| l.contains("vesper.word=from-file")),
        "{cmdline:?}"
    );
    assert!(
        has_rng(&d, "w1"),
        "the passed-through virtio-rng-pci is not in the guest"
    );

    let kept = vesper_api::run_dir::definition(&vesper_api::run_dir::of(d.run_dir.path(), "w1"));
    let def = vesper_api::vmdef::from_toml_file(&kept).expect("vesperd's copy parses");
    assert_eq!((def.memory_mib, def.name.as_deref()), (384, Some("w1")));

    d.cli(&["vm", "stop", "w1"]).ok();
    let st = d.vm_start("w1");
    assert_eq!(
        st["memory_mib"], 384,
        "a plain start forgot the definition: {st}"
    );
    assert!(d.hand("w1", "ping", "pong").contains("pong"));
    assert!(has_rng(&d, "w1"), "a plain start dropped the QEMU options");

    // Flags define it afresh.
    d.cli(&["vm", "stop", "w1"]).ok();
    let st = d.vm_start_with("w1", &["--mode", "hand"]);
    assert_eq!(st["memory_mib"], 512, "{st}");
    assert!(!has_rng(&d, "w1"));
}

#[test]
fn a_users_kernel_initrd_and_vmlinux_boot_with_exactly_their_command_line() {
    let d = Daemon::start(&[]);
    let k = kit();
    let append = "console=ttyS0 panic=-1 vesper.mode=hand vesper.word=mine";
    let vmlinux = k.debug_vmlinux.clone().unwrap_or_else(|| k.kernel.clone());
    d.vm_start_with(
        "k1",
        &[
            "--kernel",
            k.kernel.to_str().unwrap(),
            "--initrd",
            k.initramfs.to_str().unwrap(),
            "--append",
            append,
            "--vmlinux",
            vmlinux.to_str().unwrap(),
        ],
    );
    let (cmdline, _) = d.hand_sh("k1", "cat /proc/cmdline");
    assert_eq!(
        cmdline.first().map(|l| l.trim()),
        Some(append),
        "{cmdline:?}"
    );
    // `debug gdb` without --vmlinux takes the definition's, where it is.
    let gdb = d.debug(&["gdb", "k1"]).result();
    let words = gdb["gdb_command"].to_string() + &gdb.to_string();
    assert!(
        words.contains(vmlinux.to_str().unwrap()),
        "the definition's vmlinux is not in gdb's command line: {gdb}"
    );
}

fn refused(out: &CliOutput, code: i32, words: &[&str]) {
    assert_eq!(out.code, code, "{out:?}");
    for w in words {
        assert!(out.stderr.contains(w), "{w:?} missing: {out:?}");
    }
}

/// A QEMU of someone else's, holding `img` open for writing, paused.
fn holder(img: &Path) -> Child {
    let child = Command::new("qemu-system-x86_64")
        .args(["-nodefaults", "-display", "none", "-S", "-drive"])
        .arg(format!("file={},format=raw,if=virtio", img.display()))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    // Its lock is taken once the drive is opened.
    while !std::fs::read_dir(format!("/proc/{}/fd", child.id()))
        .into_iter()
        .flatten()
        .flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == img))
    {
        assert!(
            std::time::Instant::now() < deadline,
            "QEMU never opened {img:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child
}

#[test]
fn bad_disks_and_options_are_refused_before_any_vm_process_exists() {
    let d = Daemon::start(&[]);
    let dir = tempfile::tempdir().unwrap();
    let start = |args: &[&str]| {
        let mut a = vec!["vm", "start", "b1", "--no-wait"];
        a.extend_from_slice(args);
        d.cli(&a)
    };
    refused(
        &start(&["--disk", "/nonexistent/web.qcow2"]),
        66,
        &["disk /nonexistent/web.qcow2", "No such file"],
    );
    refused(
        &start(&["--", "-m", "4096"]),
        65,
        &["QEMU option -m is Vesper's to set", "--memory"],
    );
    refused(&start(&["--firmware", "bios"]), 2, &["--disk"]);
    let vmdk = dir.path().join("x.vmdk");
    assert!(Command::new("qemu-img")
        .args(["create", "-q", "-f", "vmdk"])
        .arg(&vmdk)
        .arg("16M")
        .status()
        .unwrap()
        .success());
    refused(
        &start(&["--disk", vmdk.to_str().unwrap()]),
        65,
        &["format \"vmdk\"", "qemu-img convert"],
    );
    let typo = dir.path().join("typo.toml");
    std::fs::write(&typo, "memory_mib = 512\ncpu = 2\n").unwrap();
    refused(
        &start(&["--config", typo.to_str().unwrap()]),
        65,
        &[&format!("{}:2", typo.display()), "unknown key `cpu`"],
    );

    let img = dir.path().join("data.img");
    std::fs::write(&img, vec![0u8; 16 << 20]).unwrap();
    let mut other = holder(&img);
    let pid = format!("pid {}", other.id());
    for extra in [&[][..], &["--snapshot"][..]] {
        let mut args = vec!["--disk", img.to_str().unwrap()];
        args.extend_from_slice(extra);
        refused(&start(&args), 65, &["in use by another QEMU", &pid]);
    }
    assert!(vm_names(&d).is_empty(), "a refused start left a VM behind");
    let run = vesper_api::run_dir::of(d.run_dir.path(), "b1");
    assert!(
        !vesper_api::run_dir::definition(&run).exists(),
        "a refused start wrote a definition"
    );
    let _ = other.kill();
    let _ = other.wait();
    // Free again: it starts, the image attached under a throw-away overlay.
    let st: Value = d
        .cli(&[
            "--json",
            "vm",
            "start",
            "b1",
            "--disk",
            img.to_str().unwrap(),
            "--snapshot",
            "--mode",
            "hand",
        ])
        .result();
    assert_eq!(st["name"], "b1");
    d.cli(&["vm", "stop", "b1"]).ok();
}
