//! Tests of the disk guest's pure parts: the package's generated files, the plan and
//! its cache key, the grub.cfg check, the mount table walk, and the hand's protocol
//! (run by the host's /bin/sh, as the guest's dash runs it).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use super::deb::*;
use super::mounts::mounts_under;
use super::plan::*;
use crate::{repo_root, INIT_SCRIPT};

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("guest-kit-disk-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn dkms_conf_names_the_module_and_autoinstalls() {
    let c = dkms_conf("1.2.3");
    for line in [
        "PACKAGE_NAME=\"vesper-frontend\"",
        "PACKAGE_VERSION=\"1.2.3\"",
        "BUILT_MODULE_NAME[0]=\"vesper_front\"",
        "DEST_MODULE_LOCATION[0]=\"/updates/dkms\"",
        "AUTOINSTALL=\"yes\"",
    ] {
        assert!(c.lines().any(|l| l == line), "dkms.conf lacks {line}:\n{c}");
    }
}

#[test]
fn control_is_a_dkms_package_of_arch_all() {
    let c = control("1.2.3", 42);
    for line in [
        "Package: vesper-frontend",
        "Version: 1.2.3",
        "Architecture: all",
        "Depends: dkms",
        "Installed-Size: 42",
        "Section: kernel",
    ] {
        assert!(c.lines().any(|l| l == line), "control lacks {line}:\n{c}");
    }
    // every continuation line of the description starts with a space
    let desc = c.split_once("Description: ").unwrap().1;
    assert!(desc.lines().skip(1).all(|l| l.starts_with(' ')), "{c}");
    assert!(c.ends_with('\n') && !c.contains("\n\n"));
    assert_eq!(deb_name("1.2.3"), "vesper-frontend_1.2.3_all.deb");
}

#[test]
fn maintainer_scripts_drive_dkms_like_dh_dkms() {
    let dir = repo_root().join(PACKAGING_DIR);
    let postinst = render(&fs::read_to_string(dir.join("postinst")).unwrap(), "9.9");
    let prerm = render(&fs::read_to_string(dir.join("prerm")).unwrap(), "9.9");
    for s in [&postinst, &prerm] {
        assert!(s.starts_with("#!/bin/sh\n") && !s.contains('@'), "{s}");
        assert!(s.contains("NAME=vesper-frontend\nVERSION=9.9\n"));
    }
    for needle in [
        "configure)",
        "dkms add -m \"$NAME\" -v \"$VERSION\"",
        "for dir in /lib/modules/*/; do",
        "/lib/modules/$kernel/build/include",
        "dkms build -m \"$NAME\" -v \"$VERSION\" -k \"$kernel\"",
        "dkms install -m \"$NAME\" -v \"$VERSION\" -k \"$kernel\"",
    ] {
        assert!(postinst.contains(needle), "postinst lacks {needle}");
    }
    assert!(prerm.contains("remove | upgrade | deconfigure)"));
    assert!(prerm.contains("dkms remove -m \"$NAME\" -v \"$VERSION\" --all"));
    for s in [&postinst, &prerm] {
        let out = Command::new("sh").args(["-n", "-c", s]).output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn package_holds_the_sources_dkms_conf_and_the_modules_load_file() {
    let entries = package_entries(&repo_root(), "0.0.1").unwrap();
    let paths: Vec<&str> = entries.iter().map(|e| e.path.as_str()).collect();
    let src = "usr/src/vesper-frontend-0.0.1";
    for want in [
        format!("{src}/Kbuild"),
        format!("{src}/Makefile"),
        format!("{src}/dkms.conf"),
        format!("{src}/vesper_main.c"),
        format!("{src}/include/vesper_abi.h"),
        "etc/modules-load.d/vesper.conf".into(),
        "DEBIAN/control".into(),
        "DEBIAN/conffiles".into(),
        "DEBIAN/postinst".into(),
        "DEBIAN/prerm".into(),
    ] {
        assert!(paths.contains(&want.as_str()), "no {want} in {paths:?}");
    }
    assert!(paths.windows(2).all(|w| w[0] < w[1]), "sorted, unique");
    for p in &paths {
        assert!(
            !p.ends_with(".o") && !p.ends_with(".ko") && !p.ends_with(".mod.c"),
            "build output {p} in the package"
        );
    }
    let get = |p: &str| entries.iter().find(|e| e.path == p).unwrap();
    assert_eq!(
        get("etc/modules-load.d/vesper.conf").data,
        b"vesper_front\n"
    );
    assert_eq!(
        get("DEBIAN/conffiles").data,
        b"/etc/modules-load.d/vesper.conf\n"
    );
    assert_eq!(get("DEBIAN/postinst").mode, 0o755);
    let control = String::from_utf8(get("DEBIAN/control").data.clone()).unwrap();
    let kib = installed_kib(&entries);
    assert!(kib > 50, "{kib} KiB");
    assert!(control.contains(&format!("Installed-Size: {kib}\n")));
}

#[test]
fn installed_size_counts_files_rounded_up_and_directories() {
    let e = |path: &str, len: usize| Entry {
        path: path.into(),
        mode: 0o644,
        data: vec![0; len],
    };
    let entries = [
        e("a/b/x", 1),
        e("a/b/y", 1025),
        e("a/z", 0),
        e("DEBIAN/control", 5000),
    ];
    // x 1 + y 2 + z 0, directories a and a/b
    assert_eq!(installed_kib(&entries), 5);
}

#[test]
fn frontend_deb_builds_once_reproducibly_and_on_change() {
    let root = temp("deb-root");
    let gm = root.join("guest-module");
    fs::create_dir_all(gm.join("include")).unwrap();
    fs::create_dir_all(root.join(PACKAGING_DIR)).unwrap();
    for f in [
        "Kbuild",
        "Makefile",
        "vesper_main.c",
        "include/vesper_abi.h",
    ] {
        fs::write(gm.join(f), format!("/* {f} */\n")).unwrap();
    }
    let real = repo_root().join(PACKAGING_DIR);
    for f in ["postinst", "prerm"] {
        fs::copy(real.join(f), root.join(PACKAGING_DIR).join(f)).unwrap();
    }
    let out = root.join("out");
    let (deb, note) = ensure_frontend_deb(&root, &out).unwrap();
    assert!(note.starts_with("built"), "{note}");
    let bytes = fs::read(&deb.path).unwrap();
    let field = |f: &str| {
        let o = Command::new("dpkg-deb")
            .arg("-f")
            .arg(&deb.path)
            .arg(f)
            .output()
            .unwrap();
        String::from_utf8(o.stdout).unwrap().trim().to_string()
    };
    assert_eq!(field("Package"), PACKAGE);
    assert_eq!(field("Version"), version());
    assert_eq!(field("Depends"), "dkms");
    let (again, note) = ensure_frontend_deb(&root, &out).unwrap();
    assert!(note.starts_with("up to date"), "{note}");
    assert_eq!(again.key, deb.key);
    // rebuilt from the same sources: the same bytes
    fs::remove_file(&deb.path).unwrap();
    ensure_frontend_deb(&root, &out).unwrap();
    assert_eq!(fs::read(&deb.path).unwrap(), bytes);
    fs::write(gm.join("vesper_main.c"), "/* changed */\n").unwrap();
    let (changed, note) = ensure_frontend_deb(&root, &out).unwrap();
    assert!(note.starts_with("built"), "{note}");
    assert_ne!(changed.key, deb.key);
    fs::remove_dir_all(&root).unwrap();
}

fn plan(release: &str, deb_key: &str, svc: &[u8]) -> DiskPlan {
    let d = temp(&format!("plan-{}", deb_key.len() + svc.len()));
    fs::write(d.join("svc"), svc).unwrap();
    fs::write(d.join("hog"), b"hog").unwrap();
    let deb = FrontendDeb {
        path: d.join("x.deb"),
        key: deb_key.into(),
    };
    let p = DiskPlan::new(release, &d.join("svc"), &d.join("hog"), deb).unwrap();
    fs::remove_dir_all(&d).unwrap();
    p
}

#[test]
fn plan_installs_the_kit_kernel_the_package_and_grub() {
    let p = plan("6.1.0-57-cloud-amd64", "k", b"svc");
    for pkg in [
        "linux-image-6.1.0-57-cloud-amd64",
        "linux-headers-6.1.0-57-cloud-amd64",
        "dkms",
        "gcc",
        "make",
        "systemd-sysv",
        "udev",
        "kmod",
        "grub-pc",
    ] {
        assert!(p.packages.iter().any(|x| x == pkg), "no {pkg}");
    }
    let argv: Vec<String> = p.chroot.iter().map(|c| c.argv.join(" ")).collect();
    assert_eq!(
        argv[0],
        format!("dpkg -i /tmp/vesper-frontend_{}_all.deb", version())
    );
    assert!(argv.contains(&format!("grub-install --target=i386-pc {DISK_PLACEHOLDER}")));
    assert_eq!(argv.last().unwrap(), "update-grub");
    let masked = argv
        .iter()
        .find(|a| a.starts_with("systemctl mask"))
        .unwrap();
    assert!(masked.contains("serial-getty@ttyS0.service"));
    let files: Vec<&str> = p.files.iter().map(|f| f.path.as_str()).collect();
    for f in [
        "/usr/local/sbin/vesper-hand",
        "/usr/local/bin/svc",
        "/usr/local/bin/hog",
        "/etc/systemd/system/vesper-hand.service",
        "/etc/systemd/system/vesper-svc@.service",
    ] {
        assert!(files.contains(&f), "no {f}");
    }
    assert!(p
        .dpkg_opts
        .contains(&"path-exclude=/usr/share/doc/*".to_string()));
    assert!(p.dpkg_opts.iter().all(|o| o.starts_with("path-")));
    assert_eq!(disk_name("R"), "debian-12-R.qcow2");
}

#[test]
fn plan_key_follows_every_input() {
    let base = plan("6.1.0-57-cloud-amd64", "k", b"svc").key();
    assert_eq!(base, plan("6.1.0-57-cloud-amd64", "k", b"svc").key());
    assert_ne!(base, plan("6.1.0-58-cloud-amd64", "k", b"svc").key());
    assert_ne!(base, plan("6.1.0-57-cloud-amd64", "k2", b"svc").key());
    assert_ne!(base, plan("6.1.0-57-cloud-amd64", "k", b"svc2").key());
    let mut p = plan("6.1.0-57-cloud-amd64", "k", b"svc");
    p.files[0].data.push(b'\n');
    assert_ne!(base, p.key());
}

#[test]
fn fstab_mounts_the_root_by_uuid() {
    assert!(fstab("abc").contains("\nUUID=abc / ext4 errors=remount-ro 0 1\n"));
}

#[test]
fn grub_cfg_check_wants_the_kernel_root_uuid_and_serial_console() {
    let rel = "6.1.0-57-cloud-amd64";
    let good = format!(
        "menuentry 'Debian GNU/Linux' {{\n\tsearch --no-floppy --fs-uuid --set=root U\n\
         \tlinux\t/boot/vmlinuz-{rel} root=UUID=U ro console=ttyS0,115200 panic=-1\n}}\n"
    );
    assert_eq!(check_grub_cfg(&good, rel, "U"), Ok(()));
    assert!(check_grub_cfg(&good, rel, "V")
        .unwrap_err()
        .contains("root=UUID=V"));
    assert!(check_grub_cfg(&good, "6.1.0-58-cloud-amd64", "U").is_err());
    let no_console = good.replace(" console=ttyS0,115200", "");
    assert!(check_grub_cfg(&no_console, rel, "U")
        .unwrap_err()
        .contains("console=ttyS0"));
    let by_device = good.replace("root=UUID=U", "root=/dev/loop0p1");
    assert!(check_grub_cfg(&by_device, rel, "U").is_err());
    assert!(GRUB_DEFAULT.contains("console=ttyS0"));
}

#[test]
fn mounts_under_a_dir_deepest_first_with_escapes() {
    let info = "22 1 0:21 / /proc rw - proc proc rw\n\
                40 30 7:1 / /k/disk/work-1/root rw - ext4 /dev/loop0p1 rw\n\
                41 40 0:5 / /k/disk/work-1/root/dev rw - tmpfs x rw\n\
                42 40 0:6 / /k/disk/work-1/root/a\\040b rw - tmpfs x rw\n\
                43 1 0:7 / /k/disk/work-10 rw - tmpfs x rw\n";
    let got = mounts_under(info, Path::new("/k/disk/work-1"));
    assert_eq!(got.len(), 3, "{got:?}");
    assert_eq!(got[2], PathBuf::from("/k/disk/work-1/root"));
    assert!(got.contains(&PathBuf::from("/k/disk/work-1/root/a b")));
}

/// Runs hand command lines through the hand's own `hand_do`, as its loop does (split
/// into words, globbing off), and returns what it answered.
fn hand(lines: &[&str]) -> String {
    let d = temp("hand");
    let script = d.join("vesper-hand");
    fs::write(&script, HAND_SH).unwrap();
    let mut sh = String::from(". \"$0\"\n");
    for l in lines {
        sh.push_str(&format!(
            "line='{}'; set -f; set -- $line; set +f; hand_do \"$line\" \"$@\"\n",
            l.replace('\'', "'\\''")
        ));
    }
    let out = Command::new("sh")
        .arg("-c")
        .arg(&sh)
        .arg(&script)
        .env("VESPER_HAND_NO_MAIN", "1")
        .env("VESPER_HAND_RUN", &d)
        .output()
        .unwrap();
    fs::remove_dir_all(&d).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn hand_answers_like_the_initramfs_hand() {
    let got = hand(&[
        "ping",
        "kill 9 vesper-no-such",
        "status vesper-no-such",
        "stack vesper-no-such",
        "exit vesper-no-such 3",
        "exit x 256",
        "kill S-G x",
        "start bad/name",
        "frob a",
        "",
    ]);
    let want = "vesper-hand: pong\n\
                vesper-hand: no process vesper-no-such\n\
                vesper-hand: no process vesper-no-such\n\
                vesper-hand: no process vesper-no-such\n\
                vesper-hand: no process vesper-no-such\n\
                vesper-hand: error: bad exit code 256 (0-255)\n\
                vesper-hand: error: bad signal S-G\n\
                vesper-hand: error: bad name bad/name (1-15 of A-Z a-z 0-9 . _ -)\n\
                vesper-hand: unknown command: frob a\n";
    assert_eq!(got, want);
    // the answers the two hands share are spelled the same
    for needle in [
        "hand_say \"pong\"",
        "hand_say \"started $name pid=$pid\"",
        "hand_say \"killed $name pid=$pid sig=$sig\"",
        "hand_say \"kill failed $name pid=$pid sig=$sig\"",
        "hand_say \"no process $name\"",
        "hand_say \"exit requested $name pid=$pid code=$code\"",
        "hand_say \"panicking\"",
        "hand_say \"rebooting\"",
        "hand_say \"oom hog pid=$!\"",
        "hand_say \"running $1 pid=$pid\"",
        "hand_say \"stack $1 pid=$pid $l\"",
        "hand_say \"stack end $1 pid=$pid\"",
        "hand_say \"unknown command: $line\"",
        "echo \"vesper-hand: $*\"",
        "echo \"vesper-init: hand ready\"",
        "echo c >/proc/sysrq-trigger",
    ] {
        assert!(INIT_SCRIPT.contains(needle), "init.sh lacks {needle:?}");
        assert!(HAND_SH.contains(needle), "the disk's hand lacks {needle:?}");
    }
}

#[test]
fn hand_sh_answers_each_output_line_then_the_status() {
    let got = hand(&[
        "sh echo one; echo 'two  spaced' >&2; exit 3",
        "  sh   true",
        "sh",
    ]);
    let want = "vesper-hand: out one\n\
                vesper-hand: out two  spaced\n\
                vesper-hand: sh end rc=3\n\
                vesper-hand: sh end rc=0\n\
                vesper-hand: error: usage: sh COMMAND...\n";
    assert_eq!(got, want);
}

#[test]
fn hand_runs_as_a_service_on_ttys0_and_svc_gets_its_comm() {
    for needle in [
        "ExecStart=/usr/local/sbin/vesper-hand",
        "StandardInput=tty-force",
        "TTYPath=/dev/ttyS0",
        "OOMScoreAdjust=-1000",
        "OOMPolicy=continue",
        "IgnoreSIGPIPE=no",
        "Conflicts=serial-getty@ttyS0.service",
        "WantedBy=sysinit.target",
    ] {
        assert!(HAND_SERVICE.contains(needle), "hand unit lacks {needle}");
    }
    for needle in [
        "Type=exec",
        "ExecStartPre=/bin/ln -sfn /usr/local/bin/svc /run/vesper-svc/%i",
        "ExecStart=/run/vesper-svc/%i",
    ] {
        assert!(SVC_SERVICE.contains(needle), "svc unit lacks {needle}");
    }
    assert!(HAND_SH.contains("systemctl start \"$unit\""));
    assert!(HAND_SH.contains("SVC=/usr/local/bin/svc"));
    assert!(NETWORK.contains("DHCP=yes"));
}

/// A build that fails with the root mounted on a loop device (mmdebstrap refuses a
/// package no archive has) leaves no mount and no loop device behind, and says which
/// phase failed and where the log is. Needs root (loop devices, mount) and apt's access
/// to Debian's archive, as the kit's own build does.
#[test]
fn a_failed_disk_build_leaves_no_loop_device_or_mount() {
    if !crate::kernel::is_root() {
        eprintln!("*** SKIPPED a_failed_disk_build_leaves_no_loop_device_or_mount: needs root");
        return;
    }
    let d = temp("failing-build");
    let mut p = plan("6.1.0-57-cloud-amd64", "k", b"svc");
    p.packages.push("vesper-no-such-package".into());
    let progress = crate::Progress { quiet: true };
    let out = d.join("disk.qcow2");
    let err = super::image::build(&progress, &p, &d, &out).unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("while installing Debian bookworm (mmdebstrap)"),
        "{text}"
    );
    assert!(
        text.contains(&d.join("build.log").display().to_string()),
        "{text}"
    );
    assert!(!out.exists());
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(mounts_under(&info, &d).is_empty(), "mounts left:\n{info}");
    let loops = Command::new("losetup").arg("--list").output().unwrap();
    let loops = String::from_utf8_lossy(&loops.stdout).into_owned();
    assert!(
        !loops.contains(&d.display().to_string()),
        "loop left:\n{loops}"
    );
    let left: Vec<_> = fs::read_dir(&d)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.iter()
            .all(|n| !n.to_string_lossy().starts_with("work-")),
        "work directory left: {left:?}"
    );
    fs::remove_dir_all(&d).unwrap();
}
