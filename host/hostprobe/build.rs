//! Compiles the eBPF C programs with clang (`-target bpf -O2 -g`: BTF for CO-RE) into
//! OUT_DIR. Without clang the objects are empty and the crate says at run time that it
//! was built without them (the guest kit installs clang: `cargo run -p vesper-guest-kit`),
//! and this script runs again at every build until clang is there.

use std::path::PathBuf;
use std::process::Command;

const OBJECTS: &[&str] = &["hostprobe", "unverifiable"];

fn main() {
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let clang = std::env::var("VESPER_BPF_CLANG").unwrap_or_else(|_| "clang".into());
    println!("cargo:rerun-if-env-changed=VESPER_BPF_CLANG");
    for name in OBJECTS {
        let src = format!("bpf/{name}.bpf.c");
        println!("cargo:rerun-if-changed={src}");
        let obj = out.join(format!("{name}.bpf.o"));
        let status = Command::new(&clang)
            .args([
                "-target",
                "bpf",
                "-O2",
                "-g",
                "-Wall",
                "-D__TARGET_ARCH_x86",
            ])
            // asm/types.h, which linux/types.h includes, lives under the multiarch dir.
            .args(["-I", "/usr/include/x86_64-linux-gnu"])
            .arg("-c")
            .arg(&src)
            .arg("-o")
            .arg(&obj)
            .status();
        match status {
            Ok(s) if s.success() => {}
            Ok(s) => panic!("{clang} failed on {src} ({s}): fix the C source"),
            Err(e) => {
                rerun_until_clang_is_there(&out);
                println!(
                    "cargo:warning=no {clang} ({e}): host probes are built without their eBPF \
                     objects; install clang, libbpf-dev and linux-libc-dev \
                     (`cargo run -p vesper-guest-kit -- build` does)"
                );
                std::fs::write(&obj, b"").expect("write empty object");
            }
        }
    }
}

/// Without clang the objects are empty; a later build must not keep them once clang is
/// installed (the guest kit installs it after a first `cargo build` on a fresh machine).
/// Cargo reruns a build script while a `rerun-if-changed` path does not exist, so a path
/// never created reruns this script at every build until clang is there. (Naming clang's
/// own path would not do: dpkg keeps the package's old mtimes, older than the last run.)
fn rerun_until_clang_is_there(out: &std::path::Path) {
    println!(
        "cargo:rerun-if-changed={}",
        out.join("rerun-until-clang-is-there").display()
    );
}
