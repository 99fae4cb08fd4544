//! Probe groups end to end on real guests: pushed and removed as one, all or nothing,
//! refused before anything loads, and pushed onto a standby by the failover engine.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{check_event_shape, module, Daemon};

/// Writes a group file of `members` (kit module names, or paths as they are).
fn group_file(dir: &Path, file: &str, name: &str, members: &[(&str, &[&str])]) -> PathBuf {
    let mut text = format!("name = \"{name}\"\n");
    for (m, params) in members {
        let path = if m.ends_with(".ko") {
            m.to_string()
        } else {
            module(m)
        };
        let params: Vec<String> = params.iter().map(|p| format!("{p:?}")).collect();
        text.push_str(&format!(
            "\n[[module]]\npath = {path:?}\nparams = [{}]\n",
            params.join(", ")
        ));
    }
    let p = dir.join(file);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn a_group_loads_and_unloads_as_one_and_a_bad_member_leaves_nothing_loaded() {
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&[]);
    d.vm_start("g1");
    let before = d.module_names("g1");
    let three = group_file(
        dir.path(),
        "three.toml",
        "three",
        &[
            ("vesper_exit_probe", &["quiet=1"]),
            ("vesper_panic_probe", &[]),
            ("vesper_oom_probe", &[]),
        ],
    );
    let three_s = three.to_str().unwrap();

    // Applied as one: all three live, in the group's order.
    let out = d
        .cli(&["--json", "group", "apply", "g1", three_s])
        .ok()
        .result();
    assert_eq!(
        out["modules"],
        serde_json::json!([
            "vesper_exit_probe",
            "vesper_panic_probe",
            "vesper_oom_probe"
        ])
    );
    let mods = d.module_names("g1");
    for m in [
        "vesper_exit_probe",
        "vesper_panic_probe",
        "vesper_oom_probe",
    ] {
        assert!(mods.contains(&m.to_string()), "{m} not loaded: {mods:?}");
    }
    let list = d.cli(&["--json", "group", "list", "g1"]).ok().result();
    assert_eq!(list["groups"][0]["name"], "three");
    assert!(list["groups"][0]["members"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["loaded"] == true));
    // Applying it again is refused: it is loaded already.
    let again = d.cli(&["--json", "group", "apply", "g1", three_s]);
    assert_eq!(again.code, 1, "{again:?}");
    // Removed as one, in reverse order.
    let out = d
        .cli(&["--json", "group", "remove", "g1", "three"])
        .ok()
        .result();
    assert_eq!(
        out["removed"],
        serde_json::json!([
            "vesper_oom_probe",
            "vesper_panic_probe",
            "vesper_exit_probe"
        ])
    );
    assert_eq!(d.module_names("g1"), before);

    // A member whose init fails: the two loaded before it are unloaded again and the
    // error names it, with its errno.
    let bad = group_file(
        dir.path(),
        "bad.toml",
        "bad",
        &[
            ("vesper_exit_probe", &["quiet=1"]),
            ("vesper_panic_probe", &[]),
            ("vesper_fail_init", &[]),
        ],
    );
    let out = d.cli(&["--json", "group", "apply", "g1", bad.to_str().unwrap()]);
    assert_eq!(out.code, 1, "{out:?}");
    let err = &out.json()["error"];
    assert_eq!(err["code"], "init_failed", "{err}");
    let msg = err["message"].as_str().unwrap();
    assert!(
        msg.contains("member 3 of 3")
            && msg.contains("vesper_fail_init")
            && msg.contains("ENODEV")
            && msg.contains("rolled back: unloaded vesper_panic_probe, vesper_exit_probe"),
        "{msg}"
    );
    assert_eq!(err["detail"]["failed"]["module"], "vesper_fail_init");
    assert_eq!(err["detail"]["rollback_failed"], serde_json::json!([]));
    assert_eq!(
        d.module_names("g1"),
        before,
        "the failed group left modules behind"
    );
    // The guest reported each member's init (module events, checked against their shape).
    let ev = d.events(&["--guest", "g1"]);
    ev.iter().for_each(check_event_shape);
    assert!(ev
        .iter()
        .any(|e| e["kind"] == "module_failed" && e["payload"]["module"] == "vesper_fail_init"));

    // A group naming a missing module is refused before anything is pushed, naming the
    // line and the member.
    let missing = group_file(
        dir.path(),
        "missing.toml",
        "missing",
        &[
            ("vesper_exit_probe", &[]),
            ("/nonexistent/vesper_gone.ko", &[]),
        ],
    );
    let out = d.cli(&["group", "apply", "g1", missing.to_str().unwrap()]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(
        out.stderr.contains("missing.toml:8:8")
            && out.stderr.contains("member 2")
            && out.stderr.contains("vesper_gone.ko"),
        "{out:?}"
    );
    assert_eq!(d.module_names("g1"), before);
}

fn policy(dir: &Path, probe_group: &str) -> PathBuf {
    let text = format!(
        r#"
[host]
max_guests = 2
max_memory_mib = 2048

[[guest]]
name = "p1"
memory_mib = 512

[[guest]]
name = "p2"
memory_mib = 512
probe_group = "{probe_group}"

[[group]]
name = "pair"
primary = "p1"
standbys = ["p2"]

[[rule]]
on = "vm_exit"
group = "pair"
action = "start_standby"
"#
    );
    let p = dir.join("policy.toml");
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn the_failover_engine_pushes_a_standbys_probe_group_and_the_decision_says_so() {
    let dir = tempfile::tempdir().unwrap();
    group_file(
        dir.path(),
        "standby.toml",
        "standby-probes",
        &[
            ("vesper_exit_probe", &["quiet=1"]),
            ("vesper_panic_probe", &[]),
        ],
    );
    let pol = policy(dir.path(), "standby.toml");
    let d = Daemon::start(&["--policy", pol.to_str().unwrap()]);
    // The primary need not boot: its exit is what the rule answers.
    d.vm_start_with("p1", &["--no-wait"]);
    d.cli(&["vm", "stop", "p1"]).ok();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        if d.cli(&["vm", "status", "p2"]).code == 0 {
            let mods = d.module_names("p2");
            if mods.contains(&"vesper_exit_probe".to_string())
                && mods.contains(&"vesper_panic_probe".to_string())
            {
                break;
            }
        }
        assert!(
            Instant::now() < deadline,
            "standby never came up with its group:\n{:#?}\n{}",
            d.events(&[]),
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let ev = d.events(&[]);
    ev.iter().for_each(check_event_shape);
    let decision: &Value = ev
        .iter()
        .find(|e| e["kind"] == "decision" && e["payload"]["action"]["type"] == "start_standby")
        .expect("a start_standby decision");
    assert!(decision["payload"]["probe_group"]
        .as_str()
        .unwrap()
        .ends_with("standby.toml"));
    let reason = decision["payload"]["reason"].as_str().unwrap();
    assert!(
        reason.contains("probe group") && reason.contains("standby.toml"),
        "{reason}"
    );
    let list = d.cli(&["--json", "group", "list", "p2"]).ok().result();
    assert_eq!(list["groups"][0]["name"], "standby-probes");
}

#[test]
fn a_policy_naming_a_bad_probe_group_is_refused_with_its_location() {
    let dir = tempfile::tempdir().unwrap();
    let pol = policy(dir.path(), "nowhere.toml");
    let check = std::process::Command::new(vesper_e2e::bin_dir().join("vesper"))
        .args(["policy", "check", pol.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&check.stderr);
    assert_eq!(check.status.code(), Some(65), "{err}");
    assert!(
        err.contains("policy.toml:13:15") && err.contains("nowhere.toml") && err.contains("p2"),
        "{err}"
    );
    let out = std::process::Command::new(vesper_e2e::bin_dir().join("vesperd"))
        .args([
            "--run-dir",
            dir.path().to_str().unwrap(),
            "--policy",
            pol.to_str().unwrap(),
        ])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(78), "{err}");
    assert!(
        err.contains("policy.toml:13:15") && err.contains("nowhere.toml"),
        "{err}"
    );
}

/// `vesper ARGS` against `d`, with the kit and a build cache for spec members.
fn cli_building(d: &Daemon, cache: &Path, args: &[&str]) -> vesper_e2e::CliOutput {
    std::process::Command::new(vesper_e2e::bin_dir().join("vesper"))
        .arg("--socket")
        .arg(&d.socket)
        .args(args)
        .env("VESPER_KIT_DIR", &vesper_e2e::kit().dir)
        .env("VESPER_PROBE_CACHE", cache)
        .output()
        .expect("run vesper")
        .into()
}

#[test]
fn a_group_member_may_be_a_probe_spec_built_for_the_guests_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let cache = tempfile::tempdir().unwrap();
    let d = Daemon::start(&[]);
    d.vm_start("g1");
    let spec = Path::new(env!("CARGO_MANIFEST_DIR")).join("../probes/specs/exit_svc.probe");
    let file = dir.path().join("mixed.toml");
    std::fs::write(
        &file,
        format!(
            "name = \"mixed\"\n\n[[module]]\npath = {:?}\n\n[[module]]\nspec = {:?}\n",
            module("vesper_panic_probe"),
            spec.display().to_string()
        ),
    )
    .unwrap();
    let f = file.to_str().unwrap();

    // Checked (the spec built for the kit's kernel), then applied as one.
    let check = cli_building(&d, cache.path(), &["group", "check", f]);
    assert_eq!(check.code, 0, "{check:?}");
    assert!(
        check.stdout.contains("vesper_spec_exit_svc (built from"),
        "{check:?}"
    );
    let out = cli_building(&d, cache.path(), &["--json", "group", "apply", "g1", f])
        .ok()
        .result();
    assert_eq!(
        out["modules"],
        serde_json::json!(["vesper_panic_probe", "vesper_spec_exit_svc"]),
        "{out}"
    );
    let mods = d.module_names("g1");
    assert!(
        mods.contains(&"vesper_spec_exit_svc".to_string()),
        "{mods:?}"
    );
    cli_building(&d, cache.path(), &["group", "remove", "g1", "mixed"]).ok();
    let mods = d.module_names("g1");
    assert!(
        !mods
            .iter()
            .any(|m| m == "vesper_spec_exit_svc" || m == "vesper_panic_probe"),
        "{mods:?}"
    );

    // A spec member that does not check: refused with the group's line and the spec's
    // own line and column, and nothing loaded.
    let bad_spec = dir.path().join("typo.probe");
    std::fs::write(
        &bad_spec,
        "# a typo in the function\nkprobe:do_exti { record pid; }\n",
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        format!(
            "name = \"bad\"\n[[module]]\npath = {:?}\n[[module]]\nspec = \"typo.probe\"\n",
            module("vesper_panic_probe")
        ),
    )
    .unwrap();
    let before = d.module_names("g1");
    let out = cli_building(
        &d,
        cache.path(),
        &["group", "apply", "g1", bad.to_str().unwrap()],
    );
    assert_eq!(out.code, 65, "{out:?}");
    assert!(
        out.stderr.contains("bad.toml:5:8")
            && out.stderr.contains("member 2")
            && out.stderr.contains("typo.probe:2:")
            && out.stderr.contains("do_exti"),
        "{out:?}"
    );
    assert_eq!(d.module_names("g1"), before);
}
