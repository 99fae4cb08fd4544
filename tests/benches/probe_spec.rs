//! Probe specs against hand-written C: the generated `do_exit` probe
//! (`probes/specs/exit_svc.probe`) beside `vesper_exit_probe` (`probes/exit_probe.c`),
//! and `vesper probe run` from spec to first record, cold and cached.
//!
//! Cost per hit, the method of `probe_cost` (tests/modules/probe_cost.c): a fixture
//! (`probe_spec_fixture.c`, built here with kbuild) calls a noipa `long f(long code)`
//! from a kernel thread, interrupts off, best of several runs, timed in the guest. Both
//! probes are retargeted onto that function by one textual change each (the kprobe's
//! `symbol_name`; the hand-written one's load self-check, which exits a thread through
//! `do_exit`, is told to accept zero hits) — their handlers are the shipped code. Two
//! cases: a miss (the thread is `vesper-cost`: the name filter rejects it) and a hit
//! (the thread is `svc`: every call writes an urgent record; 150 calls per run so the
//! 16 KiB per-CPU channel never fills, 50 ms between runs for the host to drain it).
//! Records/s is what one CPU writes at that cost.
//!
//! `cargo build --release --workspace --bins && cargo bench -p vesper-e2e --bench probe_spec`

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vesper_e2e::{kit, Daemon};
use vesper_probespec::build::kbuild;
use vesper_probespec::{KernelFiles, KernelInfo};

const FIXTURE: &str = include_str!("probe_spec_fixture.c");
const TARGET: &str = "vesper_spec_cost_target";

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn replace_once(src: &str, from: &str, to: &str) -> String {
    assert_eq!(src.matches(from).count(), 1, "{from:?} must occur once");
    src.replace(from, to)
}

struct Modules {
    target: PathBuf,
    run: PathBuf,
    hand: PathBuf,
    generated: PathBuf,
}

fn build_all(dir: &Path, files: &KernelFiles) -> Modules {
    let front = vesper_probespec::build::symvers_for(files).unwrap();
    let target = kbuild(
        &dir.join("target"),
        TARGET,
        &format!("#define VESPER_SPEC_COST_TARGET\n{FIXTURE}"),
        files,
        &front,
    )
    .unwrap();
    let target_syms = std::fs::read_to_string(dir.join("target/Module.symvers")).unwrap();
    let run = kbuild(
        &dir.join("run"),
        "vesper_spec_cost_run",
        FIXTURE,
        files,
        &format!("{front}{target_syms}"),
    )
    .unwrap();

    let hand_src = std::fs::read_to_string(repo().join("probes/exit_probe.c")).unwrap();
    let hand_src = replace_once(
        &hand_src,
        ".symbol_name = \"do_exit\"",
        &format!(".symbol_name = \"{TARGET}\""),
    );
    let hand_src = replace_once(&hand_src, "if (hits <= 0) {", "if (hits < 0) {");
    let hand = kbuild(
        &dir.join("hand"),
        "vesper_exit_probe",
        &hand_src,
        files,
        &front,
    )
    .unwrap();

    let spec_path = repo().join("probes/specs/exit_svc.probe");
    let kernel = KernelInfo::load(files).unwrap();
    let plan = vesper_probespec::check_text(
        &std::fs::read_to_string(&spec_path).unwrap(),
        &kernel,
        "exit_svc",
    )
    .unwrap();
    let c =
        vesper_probespec::generate(&plan, "probes/specs/exit_svc.probe (benchmark: retargeted)");
    let c = replace_once(
        &c,
        ".symbol_name = \"do_exit\"",
        &format!(".symbol_name = \"{TARGET}\""),
    );
    let generated = kbuild(&dir.join("gen"), &plan.module, &c, files, &front).unwrap();
    Modules {
        target,
        run,
        hand,
        generated,
    }
}

fn insmod(d: &Daemon, path: &Path, params: &[&str]) {
    let mut a = vec!["insmod", "vm1", path.to_str().unwrap()];
    a.extend_from_slice(params);
    d.cli(&a).ok();
}

/// Runs the fixture once; returns its ns per call.
fn run_fixture(
    d: &Daemon,
    m: &Modules,
    label: &str,
    comm: &str,
    n: u64,
    reps: u32,
    pause_ms: u32,
) -> f64 {
    let params = [
        format!("label={label}"),
        format!("comm={comm}"),
        format!("n={n}"),
        format!("reps={reps}"),
        format!("pause_ms={pause_ms}"),
        format!("chunk={}", n.min(1000)),
    ];
    let p: Vec<&str> = params.iter().map(String::as_str).collect();
    insmod(d, &m.run, &p);
    let key = format!("vesper_spec_cost: label={label} ns_per_call=");
    let deadline = Instant::now() + Duration::from_secs(600);
    let v = loop {
        let log = d.cli(&["dmesg", "vm1"]).ok().stdout;
        if let Some(v) = log
            .lines()
            .filter_map(|l| l.split_once(&key).map(|(_, v)| v.trim().to_string()))
            .next_back()
        {
            break v.parse::<f64>().unwrap();
        }
        assert!(
            Instant::now() < deadline,
            "fixture {label} never finished:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(300));
    };
    d.cli(&["rmmod", "vm1", "vesper_spec_cost_run"]).ok();
    v
}

fn relay_counts(d: &Daemon, module: &str) -> (u64, u64, u64) {
    let v = d.cli(&["--json", "relay", "stat", "vm1"]).ok().json();
    let mut t = (0, 0, 0);
    for c in v["result"]["channels"]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        if c["module"] == module {
            for cpu in c["cpus"].as_array().cloned().unwrap_or_default() {
                t.0 += cpu["written"].as_u64().unwrap_or(0);
                t.1 += cpu["dropped"].as_u64().unwrap_or(0);
                t.2 += cpu["received"].as_u64().unwrap_or(0);
            }
        }
    }
    t
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `vesper probe run` until its first record: (ms until it said the probe is live,
/// ms until the first record line), the trigger (svc exits) sent once it is live.
fn spec_to_first_record(d: &Daemon, cache: &Path, n: u32) -> (f64, f64) {
    d.hand("vm1", "start svc", "started svc");
    let t = Instant::now();
    let mut child = d.spawn_probe_run(
        false,
        "vm1",
        &repo().join("probes/specs/exit_svc.probe"),
        cache,
        &["--count", "1"],
    );
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.contains("loaded in vm1"), "run {n}: {line}");
    let live = t.elapsed().as_secs_f64() * 1e3;
    d.cli(&["vm", "send", "vm1", "exit svc 3"]).ok();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut rec = String::new();
    out.read_line(&mut rec).unwrap();
    let first = t.elapsed().as_secs_f64() * 1e3;
    assert!(rec.contains("comm=\"svc\""), "run {n}: {rec}");
    assert!(child.wait().unwrap().success());
    (live, first)
}

fn main() {
    let build_dir = tempfile::tempdir().unwrap();
    let files = KernelFiles::from_kit(&kit().dir, Some(&kit().release)).unwrap();
    let m = build_all(build_dir.path(), &files);
    let d = Daemon::start(&[]);
    let vm = d.vm_start_with("vm1", &["--mode", "hand"]);
    d.wait_console("vm1", "vesper-init: hand ready", Duration::from_secs(120));
    let accel = format!("{} ({})", vm["accel"]["accel"], vm["accel"]["reason"]);
    insmod(&d, &m.target, &[]);

    // Per-hit cost, alternating the probes so drift hits both alike.
    let (miss_n, hit_n) = (100_000, 150);
    let none_miss = run_fixture(&d, &m, "none-miss", "vesper-cost", miss_n, 5, 0);
    let none_hit = run_fixture(&d, &m, "none-hit", "svc", hit_n, 40, 50);
    let mut hand = (Vec::new(), Vec::new());
    let mut gen = (Vec::new(), Vec::new());
    for round in 0..3 {
        for (which, path, params, acc) in [
            (
                "hand",
                &m.hand,
                vec!["watch_comm=svc", "quiet=1"],
                &mut hand,
            ),
            ("gen", &m.generated, vec![], &mut gen),
        ] {
            insmod(&d, path, &params);
            acc.0.push(run_fixture(
                &d,
                &m,
                &format!("{which}-miss-{round}"),
                "vesper-cost",
                miss_n,
                5,
                0,
            ));
            acc.1.push(run_fixture(
                &d,
                &m,
                &format!("{which}-hit-{round}"),
                "svc",
                hit_n,
                40,
                50,
            ));
            let module = if which == "hand" {
                "vesper_exit_probe"
            } else {
                "vesper_spec_exit_svc"
            };
            let (w, dr, rx) = relay_counts(&d, module);
            println!("round {round} {module}: relay written={w} dropped={dr} received={rx}");
            d.cli(&["rmmod", "vm1", module]).ok();
        }
    }
    let (hm, hh, gm, gh) = (median(hand.0), median(hand.1), median(gen.0), median(gen.1));

    // Spec to first record, cold (empty cache) and cached.
    let cache = tempfile::tempdir().unwrap();
    let mut cold = Vec::new();
    let mut warm = Vec::new();
    for i in 0..3 {
        let c = tempfile::tempdir().unwrap();
        cold.push(spec_to_first_record(&d, c.path(), i));
    }
    spec_to_first_record(&d, cache.path(), 99);
    for i in 0..3 {
        warm.push(spec_to_first_record(&d, cache.path(), i));
    }

    println!(
        "\ngenerated do_exit probe (probes/specs/exit_svc.probe) vs hand-written vesper_exit_probe"
    );
    println!("guest kernel {}, accel {accel}; cost per call of a probed function, in guest, median of 3 rounds (each best of its runs)", kit().release);
    println!(
        "{:<34} {:>12} {:>12} {:>8}",
        "ns per call", "hand-written", "generated", "ratio"
    );
    println!(
        "{:<34} {:>12.2} {:>12.2} {:>8}",
        "no probe (bare call), miss run", none_miss, none_miss, ""
    );
    println!(
        "{:<34} {:>12.2} {:>12.2} {:>8}",
        "no probe (bare call), hit run", none_hit, none_hit, ""
    );
    println!(
        "{:<34} {:>12.2} {:>12.2} {:>7.2}x",
        "probe hit, filter miss",
        hm,
        gm,
        gm / hm
    );
    println!(
        "{:<34} {:>12.2} {:>12.2} {:>7.2}x",
        "probe hit, record written",
        hh,
        gh,
        gh / hh
    );
    println!(
        "{:<34} {:>12.2} {:>12.2} {:>7.2}x",
        "  minus the bare call",
        hh - none_hit,
        gh - none_hit,
        (gh - none_hit) / (hh - none_hit)
    );
    println!(
        "{:<34} {:>12.0} {:>12.0} {:>7.2}x",
        "records/s (one CPU, writer side)",
        1e9 / hh,
        1e9 / gh,
        hh / gh
    );
    println!("(ratio = generated / hand-written; for records/s higher is better)");
    let ms = |v: &[(f64, f64)], f: fn(&(f64, f64)) -> f64| median(v.iter().map(f).collect());
    println!("\nvesper probe run, spec to first record (median of 3; trigger sent when the probe is live)");
    println!("{:<34} {:>12} {:>12}", "ms", "cold", "cached");
    println!(
        "{:<34} {:>12.0} {:>12.0}",
        "spec -> probe live in the guest",
        ms(&cold, |x| x.0),
        ms(&warm, |x| x.0)
    );
    println!(
        "{:<34} {:>12.0} {:>12.0}",
        "spec -> first record printed",
        ms(&cold, |x| x.1),
        ms(&warm, |x| x.1)
    );
    println!(
        "{:<34} {:>12.1}x",
        "cold / cached (to first record)",
        ms(&cold, |x| x.1) / ms(&warm, |x| x.1)
    );
}
