//! Probe specs end to end: a spec built for the kit's guest kernel, pushed by `vesper
//! probe run`, filtering in the guest and decoded by name on the host; BTF members read
//! right; bad specs refused with line and column before anything is built.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{bin_dir, kit, Daemon};

const WAIT: Duration = Duration::from_secs(90);

fn spec(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../probes/specs")
        .join(name)
}

fn kit_dir() -> String {
    kit().dir.display().to_string()
}

/// `vesper probe ARGS --kit KIT --cache CACHE` (no daemon needed).
fn probe(cache: &Path, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin_dir().join("vesper"))
        .arg("probe")
        .args(args)
        .args(["--kit", &kit_dir(), "--cache", cache.to_str().unwrap()])
        .output()
        .expect("run vesper");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The pid in a hand reply line (`... pid=PID ...`).
fn pid_in(reply: &str) -> i64 {
    let at = reply.find("pid=").expect("pid= in reply") + 4;
    reply[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .expect("pid")
}

#[test]
fn an_exit_spec_filtered_on_one_name_records_only_it_decoded_by_name() {
    let cache = tempfile::tempdir().unwrap();
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);

    // `probe run` builds (cold cache), pushes, and follows; --keep leaves it loaded.
    let run = d.spawn_probe_run(
        true,
        "vm1",
        &spec("exit_svc.probe"),
        cache.path(),
        &["--count", "1", "--keep"],
    );
    d.wait_loaded("vm1", "vesper_spec_exit_svc", WAIT);

    // Others exit first (killed, and with a code); then svc exits with code 3.
    d.hand("vm1", "start other", "started other");
    d.hand("vm1", "start svcx", "started svcx");
    d.hand("vm1", "kill 9 other", "killed other");
    d.hand("vm1", "kill 9 svcx", "killed svcx");
    let started = d.hand("vm1", "start svc", "started svc");
    let svc_pid = pid_in(&started);
    d.hand("vm1", "exit svc 3", "exit requested svc");

    let out = run.wait_with_output().unwrap();
    assert!(out.status.success(), "probe run: {out:?}\n{}", d.log());
    let first: Value = serde_json::from_str(
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .expect("a record line"),
    )
    .unwrap();
    let rec = &first["result"];
    assert_eq!(rec["reply"], "record", "{first}");
    assert_eq!(rec["decoded"]["type"], "probe", "{rec}");
    let f = &rec["decoded"]["fields"];
    assert_eq!(f["comm"], "svc", "{rec}");
    assert_eq!(f["pid"], svc_pid, "{rec}");
    assert_eq!(f["tid"], svc_pid, "{rec}");
    assert_eq!(f["exit_code"], 3 << 8, "{rec}");
    assert_eq!(f["status"], 3, "{rec}");
    assert_eq!(f["signal"], 0, "{rec}");

    // Only svc's exit, ever: the others' never reached the host.
    std::thread::sleep(Duration::from_millis(500));
    let recs = d.relay_records("vm1", "vesper_spec_exit_svc", "exit_svc");
    assert_eq!(recs.len(), 1, "{recs:?}");

    // Urgent with kind service_exit: an event of the pinned shape, named fields on top.
    let deadline = Instant::now() + WAIT;
    let ev = loop {
        let evs = d.events(&["--kind", "service_exit"]);
        if let Some(e) = evs.into_iter().find(|e| e["payload"]["type"] == "probe") {
            break e;
        }
        assert!(
            Instant::now() < deadline,
            "no service_exit event from the spec"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ev["payload"]["comm"], "svc", "{ev}");
    assert_eq!(ev["payload"]["pid"], svc_pid, "{ev}");
    assert_eq!(ev["payload"]["probe"], "exit_svc", "{ev}");
    assert_eq!(ev["source"]["module"], "vesper_spec_exit_svc", "{ev}");

    // The second build of the same spec for the same kernel comes from the cache.
    let (code, stdout, stderr) = probe(
        cache.path(),
        &[
            "build",
            "--kernel",
            &kit().release,
            spec("exit_svc.probe").to_str().unwrap(),
        ],
    );
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("cached"), "{stdout}");

    // A vesperd restarted beside the running guest adopts it and still decodes the
    // spec module's records by name (the layout is kept in the guest's run directory).
    let d = Daemon::start_in(d.detach(), &[]);
    let deadline = Instant::now() + WAIT;
    loop {
        let st = d.cli(&["--json", "vm", "status", "vm1"]);
        if st.code == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not adopted: {st:?}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let started = d.hand("vm1", "start svc", "started svc");
    let again = pid_in(&started);
    d.hand("vm1", "exit svc 4", "exit requested svc");
    let recs = d.wait_records("vm1", "vesper_spec_exit_svc", "exit_svc", WAIT, |r| {
        r.iter().any(|r| r["decoded"]["fields"]["pid"] == again)
    });
    let rec = recs
        .iter()
        .find(|r| r["decoded"]["fields"]["pid"] == again)
        .unwrap();
    assert_eq!(rec["decoded"]["type"], "probe", "{rec}");
    assert_eq!(rec["decoded"]["fields"]["status"], 4, "{rec}");
    assert_eq!(rec["decoded"]["fields"]["comm"], "svc", "{rec}");
}

#[test]
fn a_spec_recording_btf_members_reads_what_the_guest_kernel_reports() {
    let cache = tempfile::tempdir().unwrap();
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.wait_console("vm1", "vesper-init: hand ready", WAIT);
    let (code, stdout, stderr) = probe(
        cache.path(),
        &[
            "build",
            spec("hog_exit_btf.probe").to_str().unwrap(),
            "--out",
        ]
        .into_iter()
        .chain([cache.path().join("hog.ko").to_str().unwrap()])
        .collect::<Vec<_>>(),
    );
    assert_eq!(code, 0, "{stdout}{stderr}");
    d.cli(&[
        "insmod",
        "vm1",
        cache.path().join("hog.ko").to_str().unwrap(),
    ])
    .ok();
    // The same exit seen through the sched_process_exit tracepoint, and a kretprobe
    // that must at least register.
    for (spec_file, ko) in [
        ("process_exit_tp.probe", "tp.ko"),
        ("alloc_failures.probe", "kret.ko"),
        ("oom_victim.probe", "oom.ko"),
    ] {
        let out = cache.path().join(ko);
        let (code, stdout, stderr) = probe(
            cache.path(),
            &[
                "build",
                spec(spec_file).to_str().unwrap(),
                "--out",
                out.to_str().unwrap(),
            ],
        );
        assert_eq!(code, 0, "{spec_file}: {stdout}{stderr}");
        d.cli(&["insmod", "vm1", out.to_str().unwrap()]).ok();
    }

    // hog sets its own oom_score_adj to 1000 and is killed by the OOM killer, whose
    // report in the guest's log names its pid and oom_score_adj.
    let reply = d.hand("vm1", "oom", "oom hog");
    let hog_pid = pid_in(&reply);
    let console = d.wait_console("vm1", "oom_score_adj:", WAIT);
    let line = console
        .lines()
        .find(|l| l.contains("Killed process") && l.contains("(hog)"))
        .expect("the guest's OOM report");
    let adj: i64 = line
        .rsplit("oom_score_adj:")
        .next()
        .unwrap()
        .trim()
        .split(|c: char| !c.is_ascii_digit() && c != '-')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        line.contains(&format!("Killed process {hog_pid} ")),
        "{line}"
    );

    let recs = d.wait_records(
        "vm1",
        "vesper_spec_hog_exit_btf",
        "hog_exit_btf",
        WAIT,
        |r| !r.is_empty(),
    );
    let f = &recs[0]["decoded"]["fields"];
    assert_eq!(f["comm"], "hog", "{f}");
    assert_eq!(f["pid"], hog_pid, "{f}");
    assert_eq!(f["task_tgid"], hog_pid, "task->tgid read through BTF: {f}");
    assert_eq!(
        f["oom_score_adj"], adj,
        "task->signal->oom_score_adj vs the guest's report: {f}"
    );
    assert_eq!(adj, 1000);
    assert!(f["ppid"].as_i64().unwrap() >= 1, "{f}");
    assert_ne!(f["ppid"], hog_pid, "{f}");

    // The tracepoint's task argument: the hog, killed by SIGKILL (task->exit_code 9).
    let tp = d.wait_records(
        "vm1",
        "vesper_spec_process_exit_tp",
        "process_exit_tp",
        WAIT,
        |r| r.iter().any(|r| r["decoded"]["fields"]["pid"] == hog_pid),
    );
    let hog = tp
        .iter()
        .find(|r| r["decoded"]["fields"]["pid"] == hog_pid)
        .unwrap();
    assert_eq!(hog["decoded"]["fields"]["comm"], "hog", "{hog}");
    assert_eq!(hog["decoded"]["fields"]["exit_code"], 9, "{hog}");

    // An urgent spec of kind `probe` (mark_oom_victim's argument): an event of its own
    // kind, the spec's fields on top, the shape checked by `events`.
    let deadline = Instant::now() + WAIT;
    let ev = loop {
        if let Some(e) = d.events(&["--kind", "probe"]).into_iter().next() {
            break e;
        }
        assert!(Instant::now() < deadline, "no probe event:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    };
    assert_eq!(ev["payload"]["probe"], "oom_victim", "{ev}");
    assert_eq!(ev["payload"]["pid"], hog_pid, "{ev}");
    assert_eq!(ev["payload"]["oom_score_adj"], adj, "{ev}");
    assert_eq!(ev["payload"]["comm"], "hog", "{ev}");
}

#[test]
fn bad_specs_are_refused_with_line_and_column_before_building() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&str, &str, &str)] = &[
        ("syntax", "kprobe:do_exit {\n  record pid comm;\n}\n", ":2:14: syntax error: expected `;` after a statement"),
        ("nofunc", "kprobe:do_exitt { record pid; }\n", ":1:1: the guest kernel"),
        ("notp", "tracepoint:sched:sched_nothing { record pid; }\n", "has no tracepoint `sched:sched_nothing`"),
        ("tpsystem", "tracepoint:block:sched_process_exit { record pid; }\n", "has no tracepoint `block:sched_process_exit` (it is `tracepoint:sched:sched_process_exit`)"),
        ("nofield", "kprobe:do_exit {\n  record task->signal->oom_scor_adj;\n}\n", ":2:24: struct signal_struct has no member `oom_scor_adj`"),
        ("filtertype", "kprobe:do_exit /pid == \"svc\"/ { record pid; }\n", ":1:17: filter compares `pid` (s32) with a string"),
        ("filtertype2", "kprobe:do_exit /comm == 3/ { record pid; }\n", "filter compares `comm` (char[16]) with a number"),
        ("toolarge", "kprobe:do_exit {\n record comm, task->comm as c1, task->real_parent->comm as c2, task->group_leader->comm as c3,\n task->parent->comm as c4, task->real_parent->real_parent->comm as c5, task->parent->parent->comm as c6,\n task->group_leader->real_parent->comm as c7, task->group_leader->parent->comm as c8,\n task->parent->real_parent->comm as c9, task->real_parent->parent->comm as c10, task->real_parent->group_leader->comm as c11,\n task->parent->group_leader->comm as c12, task->group_leader->group_leader->comm as c13, task->real_parent->real_parent->real_parent->comm as c14,\n task->parent->parent->parent->comm as c15, task->real_parent->real_parent->parent->comm as c16;\n}\n", "a record holds at most 256"),
        ("shape", "kprobe:do_exit { record pid, comm; severity urgent; kind service_exit; }\n", "kind service_exit events carry tid (number), exit_code (number), signal (number), status (number)"),
    ];
    for (name, text, want) in cases {
        let p = dir.path().join(format!("{name}.probe"));
        std::fs::write(&p, text).unwrap();
        let (code, stdout, stderr) = probe(dir.path(), &["build", p.to_str().unwrap()]);
        assert_eq!(code, 65, "{name}: {stdout}{stderr}");
        assert!(stderr.contains(want), "{name}: want {want:?} in {stderr:?}");
        assert!(
            stderr.contains(&format!("{name}.probe:")),
            "{name}: the file is named: {stderr}"
        );
    }
    // Nothing was built for any of them.
    let built: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().is_dir())
        .collect();
    assert!(built.is_empty(), "{built:?}");
    // The shipped examples are all valid for the kit's kernel.
    for e in std::fs::read_dir(spec("")).unwrap() {
        let p = e.unwrap().path();
        let (code, stdout, stderr) = probe(dir.path(), &["check", p.to_str().unwrap()]);
        assert_eq!(code, 0, "{}: {stdout}{stderr}", p.display());
    }
}

#[test]
fn probe_run_ends_after_its_duration_or_on_ctrl_c_and_leaves_nothing_loaded() {
    let cache = tempfile::tempdir().unwrap();
    let d = Daemon::start(&[]);
    d.vm_start("vm1");
    let run = |extra: &[&str]| {
        d.spawn_probe_run(false, "vm1", &spec("exit_svc.probe"), cache.path(), extra)
    };
    let loaded = |d: &Daemon| {
        d.module_names("vm1")
            .iter()
            .any(|m| m == "vesper_spec_exit_svc")
    };

    // --duration on a quiet probe: the run ends on time, successfully, and unloads.
    let t = Instant::now();
    let out = run(&["--duration", "2"]).wait_with_output().unwrap();
    assert!(out.status.success(), "{out:?}\n{}", d.log());
    assert!(t.elapsed() >= Duration::from_secs(2), "{:?}", t.elapsed());
    assert!(!loaded(&d), "{:?}", d.module_names("vm1"));

    // Ctrl-C while following: unloaded before the CLI exits (128 + SIGINT).
    let child = run(&[]);
    d.wait_loaded("vm1", "vesper_spec_exit_svc", WAIT);
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unloading vesper_spec_exit_svc"),
        "{out:?}"
    );
    assert!(!loaded(&d), "{:?}", d.module_names("vm1"));
}
