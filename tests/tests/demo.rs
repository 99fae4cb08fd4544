//! `tools/demo`, the README's first command, run as a new user runs it: its release
//! binaries must have every feature (the host probes' eBPF objects included), and every
//! step it shows must do what it says.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use vesper_e2e::repo_root;

/// `cargo build -p vesper-hostprobe` with `clang` for the eBPF compiler;
/// returns the size of the `hostprobe.bpf.o` the build script left in its OUT_DIR.
fn build_hostprobe_with(clang: &Path) -> u64 {
    // A target directory of its own: a `-p` build resolves other features than the
    // workspace's, and would make the next workspace build redo its dependencies.
    let out = Command::new(env!("CARGO"))
        .args(["build", "-p", "vesper-hostprobe", "--message-format=json"])
        .current_dir(repo_root())
        .env("CARGO_TARGET_DIR", repo_root().join("target/clang-appears"))
        .env("VESPER_BPF_CLANG", clang)
        .stderr(Stdio::inherit())
        .output()
        .expect("cargo build");
    assert!(
        out.status.success(),
        "cargo build of vesper-hostprobe failed"
    );
    let out_dir = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "build-script-executed")
        .filter(|m| {
            m["package_id"]
                .as_str()
                .is_some_and(|p| p.contains("hostprobe"))
        })
        .find_map(|m| m["out_dir"].as_str().map(PathBuf::from))
        .expect("vesper-hostprobe's build script output");
    std::fs::metadata(out_dir.join("hostprobe.bpf.o"))
        .map(|m| m.len())
        .unwrap_or(0)
}

fn which(cmd: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join(cmd))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("no {cmd} on PATH (the guest kit installs it)"))
}

/// On a fresh machine `cargo build` may run before clang is installed: the build then
/// has no eBPF objects, and must get them at the next build once clang is there, with
/// nothing changed but the machine.
#[test]
fn a_build_made_before_clang_was_installed_gets_the_ebpf_objects_once_it_is() {
    let bin = tempfile::tempdir().unwrap();
    let clang = bin.path().join("clang");
    assert_eq!(build_hostprobe_with(&clang), 0, "built without clang");
    std::os::unix::fs::symlink(which("clang"), &clang).unwrap();
    assert!(
        build_hostprobe_with(&clang) > 0,
        "clang is installed now, but the build kept the empty eBPF object"
    );
}

#[test]
fn the_demo_shows_every_step_with_host_probes() {
    let out = Command::new("bash")
        .arg(repo_root().join("tools/demo"))
        .current_dir(repo_root())
        .env_remove("VESPER_SOCKET")
        .stdin(Stdio::null())
        .output()
        .expect("run tools/demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let all = format!(
        "{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tools/demo failed:\n{all}");

    // `host stat`: a row of figures per vCPU, not "no host probes".
    let stat = section(&stdout, "$ vesper host stat demo");
    assert!(!stat.contains("no host probes"), "{stat}");
    let header = stat
        .lines()
        .position(|l| l.trim_start().starts_with("vcpu"));
    let rows: Vec<&str> = stat
        .lines()
        .skip(header.expect("a per-vCPU table") + 1)
        .take_while(|l| !l.trim().is_empty())
        .collect();
    assert!(
        !rows.is_empty()
            && rows.iter().all(|r| {
                let cols: Vec<&str> = r.split_whitespace().collect();
                cols.len() >= 9 && cols[0].parse::<u32>().is_ok() && cols[1].parse::<u32>().is_ok()
            }),
        "no per-vCPU figures:\n{stat}"
    );

    // The watched service killed with SIGKILL, seen by the module and by the spec.
    assert!(all.contains("exit svc pid="), "{all}");
    assert!(all.contains("killed by SIGKILL (9)"), "{all}");
    assert!(
        all.contains("exit_svc ") && all.contains("comm=\"svc\""),
        "{all}"
    );
    // The guest's kernel read from the host.
    let info = section(&stdout, "$ vesper debug info demo");
    assert!(
        info.contains("Linux ") && info.contains("KASLR offset"),
        "{info}"
    );
    // The panic, as the probe's record and in the event stream.
    assert!(all.contains("PANIC on cpu"), "{all}");
    let events = section(&stdout, "$ vesper events");
    for kind in ["service_exit", "panic", "guest_panicked"] {
        assert!(events.contains(kind), "no {kind} event:\n{events}");
    }
}

/// The output of one command the demo shows: from its `$ …` line to the next one.
fn section<'a>(stdout: &'a str, command: &str) -> &'a str {
    let start = stdout
        .find(command)
        .unwrap_or_else(|| panic!("the demo never ran {command:?}:\n{stdout}"));
    let rest = &stdout[start + command.len()..];
    let end = rest.find("\n$ ").unwrap_or(rest.len());
    &rest[..end]
}
