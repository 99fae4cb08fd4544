//! Tests of the kit: manifests, sources, the init script's contract, the helpers.

use super::*;

#[test]
fn fnv_separates_boundaries() {
    let a = Fnv::new().bytes(b"a").bytes(b"bc").hex();
    let b = Fnv::new().bytes(b"ab").bytes(b"c").hex();
    assert_ne!(a, b);
    assert_eq!(a, Fnv::new().bytes(b"a").bytes(b"bc").hex());
}

#[test]
fn module_sources_skip_generated_and_hidden() {
    let d = std::env::temp_dir().join(format!("guest-kit-test-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(d.join("sub")).unwrap();
    for f in [
        "a.c", "a.mod.c", "a.o", ".a.o.cmd", "Kbuild", "Makefile", "sub/b.h", "a.ko",
    ] {
        fs::write(d.join(f), f).unwrap();
    }
    let mut v = Vec::new();
    module_sources(&d, &mut v).unwrap();
    let names: Vec<String> = v
        .iter()
        .map(|p| p.strip_prefix(&d).unwrap().display().to_string())
        .collect();
    assert_eq!(names, ["Kbuild", "Makefile", "a.c", "sub/b.h"]);
    let mut kos = Vec::new();
    built_modules(&d, &mut kos).unwrap();
    assert_eq!(kos, [d.join("a.ko")]);
    fs::remove_dir_all(&d).unwrap();
}

#[test]
fn init_script_has_the_contract_lines() {
    for needle in [
        "vesper-init: kernel $(cat /proc/sys/kernel/osrelease)",
        "vesper-init: user space frozen",
        "exec /bin/busybox sleep 2147483647",
        "vesper.mode=*",
        "/bin/bench-insmod /lib/vesper/vesper_bench_100k.ko vesper_bench_100k \"$bench_n\"",
        "vesper-init: bench done",
        "FRONTEND NOT LOADED",
    ] {
        assert!(INIT_SCRIPT.contains(needle), "init lacks {needle:?}");
    }
    assert!(INIT_SCRIPT.starts_with("#!/bin/busybox sh\n"));
}

#[test]
fn init_script_has_the_hand_protocol() {
    for needle in [
        "hand)\n        hand\n",
        "echo \"vesper-init: hand ready\"",
        "echo \"vesper-hand: $*\"",
        "hand_say \"pong\"",
        "hand_say \"started $name pid=$pid\"",
        "hand_say \"killed $name pid=$pid sig=$sig\"",
        "hand_say \"no process $name\"",
        "hand_say \"exit requested $name pid=$pid code=$code\"",
        "hand_say \"panicking\"",
        "echo c >/proc/sysrq-trigger",
        "hand_say \"oom hog pid=$!\"",
        "hand_say \"unknown command: $line\"",
        "hand_say \"stack $1 pid=$pid $l\"",
        "hand_say \"stack end $1 pid=$pid\"",
        "hand_say \"running $1 pid=$pid\"",
        "vesper.start=*) start_at_boot=",
        "echo -1000 >/proc/1/oom_score_adj",
        "ln -sf /bin/svc \"/tmp/svc/$name\"",
    ] {
        assert!(INIT_SCRIPT.contains(needle), "init lacks {needle:?}");
    }
    // hand mode sits next to, not in place of, the frozen/bench contract
    assert!(INIT_SCRIPT.contains("    freeze)\n        freeze\n"));
}

#[test]
fn helpers_are_distinct_and_installed_where_init_expects_them() {
    let names: Vec<&str> = HELPERS.iter().map(|h| h.name).collect();
    assert_eq!(names, ["bench-insmod", "svc", "hog"]);
    for h in HELPERS {
        assert!(h.source_name.ends_with(".c"), "{}", h.source_name);
        assert!(h.source.contains("gcc -static -O2"), "{} header", h.name);
        assert!(
            INIT_SCRIPT.contains(&format!("/bin/{}", h.name)),
            "init never runs /bin/{}",
            h.name
        );
    }
    let mut srcs: Vec<&str> = HELPERS.iter().map(|h| h.source_name).collect();
    srcs.dedup();
    assert_eq!(srcs.len(), HELPERS.len());
}

#[test]
fn svc_and_init_agree_on_the_exit_code_file() {
    assert!(SVC_C.contains("\"/tmp/svc-exit/%ld\""));
    assert!(INIT_SCRIPT.contains("mkdir -p /tmp/svc /tmp/svc-exit"));
    assert!(INIT_SCRIPT.contains("echo \"$code\" >\"/tmp/svc-exit/$pid\""));
    assert!(INIT_SCRIPT.contains("kill -USR1 \"$pid\""));
    assert!(SVC_C.contains("SIGUSR1"));
    assert!(HOG_C.contains("\"/proc/self/oom_score_adj\""));
    assert!(HOG_C.contains("\"1000\\n\""));
    assert!(HOG_C.contains("#define STEP (16u << 20)"));
}

#[test]
fn manifest_round_trip() {
    let kit = Kit {
        dir: "/k".into(),
        release: "6.1.0-56-cloud-amd64".into(),
        kernel: "/k/kernel/x/vmlinuz".into(),
        kernel_config: "/k/kernel/x/config".into(),
        initramfs: "/k/initramfs.cpio".into(),
        modules_dir: "/k/modules/x".into(),
        modules: [(
            "vesper_front".to_string(),
            PathBuf::from("/k/modules/x/vesper_front.ko"),
        )]
        .into(),
        kdir: "/lib/modules/x/build".into(),
        bench_insmod: "/k/guest-bin/bench-insmod".into(),
        svc: "/k/guest-bin/svc".into(),
        hog: "/k/guest-bin/hog".into(),
        mini_frontend: "/k/mini-frontend/mini-frontend.elf".into(),
        accel: "tcg".into(),
        debug_vmlinux: Some("/k/kernel/x/vmlinux".into()),
        debug_vmlinux_missing: None,
        debug_modules_dir: Some("/k/debug-modules/x".into()),
        debug_modules_missing: None,
        frontend_deb: Some("/k/deb/vesper-frontend_0.1.0_all.deb".into()),
        debian_disk: Some("/k/disk/debian-12-x.qcow2".into()),
        debian_disk_missing: None,
    };
    let json = serde_json::to_string(&Manifest {
        format: MANIFEST_FORMAT,
        kit: kit.clone(),
    })
    .unwrap();
    let back: Manifest = serde_json::from_str(&json).unwrap();
    assert_eq!(back.kit, kit);
    assert_eq!(kit.module("vesper_front"), kit.modules["vesper_front"]);

    // A manifest written before the debug symbols (same format) still loads, without
    // them; so does one that says why they are missing.
    let mut old: serde_json::Value = serde_json::from_str(&json).unwrap();
    old.as_object_mut().unwrap().remove("debug_vmlinux");
    old.as_object_mut().unwrap().remove("debug_vmlinux_missing");
    old.as_object_mut().unwrap().remove("debug_modules_dir");
    old.as_object_mut().unwrap().remove("debug_modules_missing");
    // ... and one written before the disk guest
    for k in ["frontend_deb", "debian_disk", "debian_disk_missing"] {
        old.as_object_mut().unwrap().remove(k);
    }
    let back: Manifest = serde_json::from_value(old.clone()).unwrap();
    assert_eq!(back.kit.debug_vmlinux, None);
    assert_eq!(back.kit.debug_modules_dir, None);
    assert_eq!(back.kit.debug_symbol_files(), None);
    assert_eq!(back.kit.debian_disk, None);
    assert_eq!(back.kit.frontend_deb, None);
    old["debug_vmlinux_missing"] = "no debug vmlinux: apt failed".into();
    let back: Manifest = serde_json::from_value(old).unwrap();
    assert_eq!(
        back.kit.debug_vmlinux_missing.as_deref(),
        Some("no debug vmlinux: apt failed")
    );
}

/// Reads a little-endian integer of `N` bytes at `at`.
fn le<const N: usize>(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v[..N].copy_from_slice(&b[at..at + N]);
    u64::from_le_bytes(v)
}

#[test]
fn mini_frontend_builds_as_a_plain_elf64_at_4_mib_and_rebuilds_on_change() {
    // A private copy of its sources, so changing one disturbs nobody.
    let root = std::env::temp_dir().join(format!("guest-kit-mini-{}", std::process::id()));
    let _ = fs::remove_dir_all(&root);
    let src = root.join(MINI_FRONTEND_DIR);
    fs::create_dir_all(&src).unwrap();
    for f in mini_frontend_sources(&repo_root().join(MINI_FRONTEND_DIR)).unwrap() {
        fs::copy(&f, src.join(f.file_name().unwrap())).unwrap();
    }
    let header = root.join(ABI_HEADER);
    fs::create_dir_all(header.parent().unwrap()).unwrap();
    fs::copy(repo_root().join(ABI_HEADER), &header).unwrap();
    let out = root.join("out");

    let (elf, built) = build_mini_frontend(&root, &out).unwrap();
    assert!(built);
    let b = fs::read(&elf).unwrap();
    assert_eq!(&b[..4], b"\x7fELF");
    assert_eq!((b[4], b[5]), (2, 1), "ELF64, little-endian");
    assert_eq!(le::<2>(&b, 16), 2, "ET_EXEC");
    assert_eq!(le::<2>(&b, 18), 62, "EM_X86_64");
    assert_eq!(le::<8>(&b, 24), 0x40_0000, "entry at the load address");
    let (phoff, phentsize, phnum) = (
        le::<8>(&b, 32) as usize,
        le::<2>(&b, 54) as usize,
        le::<2>(&b, 56) as usize,
    );
    let loads: Vec<(u64, u64)> = (0..phnum)
        .map(|i| phoff + i * phentsize)
        .filter(|&ph| le::<4>(&b, ph) == 1)
        .map(|ph| (le::<8>(&b, ph + 16), le::<8>(&b, ph + 24)))
        .collect();
    assert!(!loads.is_empty());
    assert!(loads
        .iter()
        .all(|&(vaddr, paddr)| vaddr == paddr && paddr >= 0x40_0000));
    assert_eq!(loads[0].1, 0x40_0000);

    assert_eq!(
        build_mini_frontend(&root, &out).unwrap(),
        (elf.clone(), false)
    );
    // A changed wire header (e.g. a regenerated vesper_abi.h) rebuilds it.
    let mut h = fs::read_to_string(&header).unwrap();
    h.push_str("\n/* changed */\n");
    fs::write(&header, h).unwrap();
    assert_eq!(build_mini_frontend(&root, &out).unwrap(), (elf, true));
    fs::remove_dir_all(&root).unwrap();
}

#[test]
fn load_of_missing_kit_says_what_to_run() {
    let err = Kit::load(Some(Path::new("/nonexistent/vesper-kit"))).unwrap_err();
    assert!(
        err.to_string().contains("cargo run -p vesper-guest-kit"),
        "{err}"
    );
}

#[test]
fn load_records_a_deleted_disk_as_missing() {
    let d = std::env::temp_dir().join(format!("guest-kit-load-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    let f = |n: &str| {
        let p = d.join(n);
        fs::write(&p, n).unwrap();
        p
    };
    let kit = Kit {
        dir: d.clone(),
        release: "r".into(),
        kernel: f("vmlinuz"),
        kernel_config: f("config"),
        initramfs: f("initramfs.cpio"),
        modules_dir: d.clone(),
        modules: BTreeMap::new(),
        kdir: d.clone(),
        bench_insmod: f("bench-insmod"),
        svc: f("svc"),
        hog: f("hog"),
        mini_frontend: f("mini-frontend.elf"),
        accel: "tcg".into(),
        debug_vmlinux: None,
        debug_vmlinux_missing: None,
        debug_modules_dir: None,
        debug_modules_missing: None,
        frontend_deb: None,
        debian_disk: Some(f("debian-12-r.qcow2")),
        debian_disk_missing: None,
    };
    let json = serde_json::to_vec(&Manifest {
        format: MANIFEST_FORMAT,
        kit: kit.clone(),
    })
    .unwrap();
    fs::write(d.join(MANIFEST), json).unwrap();
    assert_eq!(Kit::load(Some(&d)).unwrap(), kit);
    fs::remove_file(d.join("debian-12-r.qcow2")).unwrap();
    let loaded = Kit::load(Some(&d)).unwrap();
    assert_eq!(loaded.debian_disk, None);
    assert!(loaded
        .debian_disk_missing
        .unwrap()
        .contains("debian-12-r.qcow2 is missing"));
    fs::remove_dir_all(&d).unwrap();
}
