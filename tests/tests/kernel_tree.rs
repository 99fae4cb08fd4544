//! A kernel developer's build tree, booted, probed and debugged with one command:
//! `vesper vm start dev --kernel-tree TREE` boots the tree's bzImage with the frontend
//! vesperd built against the tree (appended to the kit's initramfs, nothing installed),
//! and `vesper debug` takes the tree's vmlinux where it is.
//!
//! The tree here is made of the parts a built tree has, from Debian's packages: the
//! kbuild tree of `linux-headers-REL` (what `make -C TREE M=...` needs), the kit's
//! kernel as `arch/x86/boot/bzImage` and the `-dbg` vmlinux as `vmlinux`.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use vesper_e2e::{debug_vmlinux, kit, module, Daemon};

/// Links every entry of `from` into `to`, except `but` (made a real directory).
fn link_all(from: &Path, to: &Path, but: &str) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap().flatten() {
        if e.file_name() != but {
            symlink(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

fn built_tree(dir: &Path, vmlinux: &Path) -> PathBuf {
    let k = kit();
    let headers = std::fs::canonicalize(format!("/lib/modules/{}/build", k.release))
        .expect("the kit installs the kernel's headers");
    let tree = dir.join("linux");
    link_all(&headers, &tree, "arch");
    link_all(&headers.join("arch"), &tree.join("arch"), "x86");
    link_all(&headers.join("arch/x86"), &tree.join("arch/x86"), "boot");
    std::fs::create_dir_all(tree.join("arch/x86/boot")).unwrap();
    symlink(&k.kernel, tree.join("arch/x86/boot/bzImage")).unwrap();
    symlink(vmlinux, tree.join("vmlinux")).unwrap();
    tree
}

fn md5(d: &Daemon, vm: &str, path: &str) -> String {
    let (out, rc) = d.hand_sh(vm, &format!("md5sum {path}"));
    assert_eq!(rc, 0, "{out:?}");
    out[0].split_whitespace().next().unwrap().to_string()
}

#[test]
fn a_kernel_tree_is_booted_probed_and_debugged_with_one_command() {
    let test = "a_kernel_tree_is_booted_probed_and_debugged_with_one_command";
    let Some(vmlinux) = debug_vmlinux(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let tree = built_tree(dir.path(), &vmlinux);
    let d = Daemon::start(&[]);
    d.vm_start_with(
        "dev",
        &["--kernel-tree", tree.to_str().unwrap(), "--mode", "hand"],
    );

    // The frontend the guest loaded is the one built against the tree.
    let built: Vec<PathBuf> = std::fs::read_dir(vesper_api::run_dir::frontends(d.run_dir.path()))
        .expect("vesperd built a frontend")
        .flatten()
        .map(|e| e.path().join("vesper_front.ko"))
        .collect();
    assert_eq!(built.len(), 1, "{built:?}");
    let host_md5 = std::process::Command::new("md5sum")
        .arg(&built[0])
        .output()
        .unwrap();
    let host_md5 = String::from_utf8_lossy(&host_md5.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();
    assert_eq!(md5(&d, "dev", "/lib/vesper/vesper_front.ko"), host_md5);

    // Probed: a kit probe module loads through that frontend.
    d.cli(&[
        "insmod",
        "dev",
        &module("vesper_exit_probe"),
        "watch_comm=svc",
        "quiet=1",
    ])
    .ok();
    assert!(d
        .module_names("dev")
        .iter()
        .any(|m| m == "vesper_exit_probe"));

    // Debugged with the tree's vmlinux, read where it is: DWARF types (BTF drops the
    // volatile of jiffies) and gdb's command line.
    let j = d.debug(&["read", "dev", "jiffies"]).result();
    assert_eq!(
        j["type"], "volatile long unsigned int",
        "not the tree's DWARF: {j}"
    );
    let gdb = d.debug(&["gdb", "dev"]).result().to_string();
    assert!(
        gdb.contains(tree.join("vmlinux").to_str().unwrap()),
        "gdb does not load the tree's vmlinux: {gdb}"
    );

    // A second start reuses the build.
    d.cli(&["vm", "stop", "dev"]).ok();
    d.vm_start("dev");
    assert_eq!(
        std::fs::read_dir(vesper_api::run_dir::frontends(d.run_dir.path()))
            .unwrap()
            .count(),
        1
    );
}

#[test]
fn a_tree_that_is_not_built_is_refused_naming_what_to_build() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Makefile"), "").unwrap();
    let d = Daemon::start(&[]);
    let out = d.cli(&[
        "vm",
        "start",
        "dev",
        "--kernel-tree",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(
        out.stderr.contains("kernel.release") && out.stderr.contains("make"),
        "{out:?}"
    );
    assert!(d.cli(&["--json", "vm", "list"]).result()["vms"]
        .as_array()
        .is_none_or(|v| v.is_empty()));
}
