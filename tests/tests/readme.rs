//! The README's command lines as a new user types them: vesperd started as `vesperd &`
//! (no `--kit-dir`), the CLI from a fresh shell (no `VESPER_KIT_DIR`, a new `HOME`), spec
//! paths relative to the repository. The README's command forms that no other test or
//! `tools/demo` runs are run here too.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use vesper_e2e::{bin_dir, kit, repo_root, Daemon};

const WAIT: Duration = Duration::from_secs(90);

/// `vesper ARGS` as typed in a fresh login shell in the repository: only `PATH`, a new
/// empty `HOME` (so a cold probe cache) and `VESPER_SOCKET` (as the README's
/// `export` sets it).
fn fresh_shell(home: &Path, socket: &Path, args: &[&str]) -> Command {
    let mut c = Command::new(bin_dir().join("vesper"));
    c.args(args)
        .current_dir(repo_root())
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", home)
        .env("VESPER_SOCKET", socket)
        .stdin(Stdio::null());
    c
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn wait_output(child: Child) -> Output {
    child.wait_with_output().expect("wait for vesper")
}

#[test]
fn the_readme_probe_run_line_finds_the_kit_vesperd_uses() {
    let home = tempfile::tempdir().unwrap();
    let d = Daemon::start_without_kit_dir(&[]);
    // `vm start` found the kit by itself (vesperd's default)...
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);

    // ...and so does `probe run` from a shell that never heard of VESPER_KIT_DIR.
    let run = fresh_shell(
        home.path(),
        &d.socket,
        &[
            "probe",
            "run",
            "vm1",
            "probes/specs/exit_svc.probe",
            "--count",
            "1",
        ],
    )
    .stdout(Stdio::piped())
    .stderr(Stdio::piped())
    .spawn()
    .expect("spawn vesper probe run");
    d.wait_loaded("vm1", "vesper_spec_exit_svc", WAIT);
    let started = d.hand("vm1", "start svc", "started svc");
    d.hand("vm1", "exit svc 3", "exit requested svc");
    let out = wait_output(run);
    let all = text(&out);
    assert!(out.status.success(), "{all}\n{}", d.log());
    let stdout = String::from_utf8_lossy(&out.stdout);
    let pid = started
        .split_whitespace()
        .find_map(|w| w.strip_prefix("pid="))
        .expect("pid in the hand's reply");
    assert!(
        stdout.contains(&format!("pid={pid}")) && stdout.contains("comm=\"svc\""),
        "no record of svc's exit: {all}"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("built and loaded in vm1"),
        "{all}"
    );
    // Not left loaded: the run unloads when its count is reached.
    let deadline = Instant::now() + WAIT;
    while d
        .module_names("vm1")
        .iter()
        .any(|m| m == "vesper_spec_exit_svc")
    {
        assert!(Instant::now() < deadline, "left loaded after the run");
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn probe_build_without_a_daemon_uses_the_repository_kit() {
    let home = tempfile::tempdir().unwrap();
    let no_daemon = home.path().join("no-vesperd.sock");
    let out = fresh_shell(
        home.path(),
        &no_daemon,
        &["probe", "build", "probes/specs/alloc_failures.probe"],
    )
    .output()
    .unwrap();
    let all = text(&out);
    let repo_kit = repo_root().join(".vesper-kit");
    if kit().dir.canonicalize().ok() == repo_kit.canonicalize().ok() {
        assert!(out.status.success(), "{all}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains(".ko ("),
            "{all}"
        );
    } else {
        // This run's kit is elsewhere ($VESPER_KIT_DIR): the repository has none, and
        // the error says where it looked.
        assert_eq!(out.status.code(), Some(66), "{all}");
        assert!(all.contains(&repo_kit.display().to_string()), "{all}");
        assert!(all.contains("no-vesperd.sock"), "{all}");
    }
}

#[test]
fn a_daemon_whose_kit_is_missing_is_named_in_the_error() {
    let home = tempfile::tempdir().unwrap();
    let empty = tempfile::tempdir().unwrap();
    let empty_dir = empty.path().to_str().unwrap();
    let d = Daemon::start_without_kit_dir(&["--kit-dir", empty_dir]);
    let out = fresh_shell(
        home.path(),
        &d.socket,
        &["probe", "build", "probes/specs/alloc_failures.probe"],
    )
    .output()
    .unwrap();
    let all = text(&out);
    assert_eq!(out.status.code(), Some(66), "{all}");
    assert!(all.contains(&format!("vesperd's kit {empty_dir}")), "{all}");
    assert!(all.contains("cargo run -p vesper-guest-kit"), "{all}");
}

/// The README's command forms no other test runs: `debug sym 'PREFIX*'`, `debug read
/// --hex`, a bare `debug dump`, `rmmod --force`, `group remove FILE`, `probe check
/// --kernel` and `policy check` of a valid policy.
#[test]
fn the_readmes_remaining_command_forms_do_what_it_says() {
    let policy = repo_root().join("host/failover/examples/policy.toml");
    let d = Daemon::start(&[]);
    let out = d.cli(&["policy", "check", policy.to_str().unwrap()]).ok();
    assert!(
        out.stdout.contains("valid") && out.stdout.contains("rule 1:"),
        "{out:?}"
    );
    let spec = repo_root().join("probes/specs/exit_svc.probe");
    let spec = spec.to_str().unwrap();
    let out = d
        .cli(&["probe", "check", spec, "--kernel", &kit().release])
        .ok();
    assert!(
        out.stdout.contains("valid: module vesper_spec_exit_svc"),
        "{out:?}"
    );

    d.vm_start("vm1");
    let out = d.cli(&["debug", "sym", "vm1", "schedule*"]).ok();
    let names: Vec<&str> = out
        .stdout
        .lines()
        .filter_map(|l| l.split_whitespace().nth(2))
        .collect();
    assert!(names.contains(&"schedule"), "{out:?}");
    assert!(names.iter().all(|n| n.starts_with("schedule")), "{out:?}");
    let out = d.cli(&["debug", "read", "vm1", "jiffies", "--hex"]).ok();
    assert!(out.stdout.contains("0x"), "{out:?}");
    d.cli(&["debug", "dump", "vm1"]).ok();
    let dumps = d.cli(&["--json", "debug", "dumps", "vm1"]).ok().json();
    assert_eq!(
        dumps["result"]["dumps"].as_array().map(Vec::len),
        Some(1),
        "{dumps}"
    );

    let exit_probe = vesper_e2e::module("vesper_exit_probe");
    d.cli(&["insmod", "vm1", &exit_probe]).ok();
    d.cli(&["rmmod", "vm1", "vesper_exit_probe", "--force"])
        .ok();
    assert!(!d
        .module_names("vm1")
        .iter()
        .any(|m| m == "vesper_exit_probe"));

    let dir = tempfile::tempdir().unwrap();
    let group = dir.path().join("group.toml");
    std::fs::write(
        &group,
        format!(
            "name = \"pair\"\n[[module]]\npath = {exit_probe:?}\n[[module]]\npath = {:?}\n",
            vesper_e2e::module("vesper_panic_probe")
        ),
    )
    .unwrap();
    let group = group.to_str().unwrap();
    d.cli(&["group", "apply", "vm1", group]).ok();
    assert_eq!(
        d.module_names("vm1")
            .iter()
            .filter(|m| m.starts_with("vesper_") && *m != "vesper_front")
            .count(),
        2
    );
    d.cli(&["group", "remove", "vm1", group]).ok();
    let left: Vec<String> = d
        .module_names("vm1")
        .into_iter()
        .filter(|m| m == "vesper_exit_probe" || m == "vesper_panic_probe")
        .collect();
    assert!(left.is_empty(), "group remove by file left {left:?}");
}
