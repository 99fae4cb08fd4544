//! Host-kernel probes (`vesper host stat`, `vcpu_stall`): vesperd's eBPF programs on
//! the host's KVM and scheduler tracepoints, filtered to a VM's vCPU threads.
//!
//! What a user would notice: a builtin VM's exit counts grow with guest work (beside an
//! idle interval of the same length, in the same run); pausing it raises one
//! `vcpu_stall` per vCPU, which no probe inside the guest could report, and none while
//! it idles or after it resumes; an eBPF object the kernel's verifier refuses leaves
//! vesperd running, and `host stat` says why, with the verifier's log. The builtin VM is
//! used because this host's /dev/kvm (kvm_pvm) runs it on KVM, where QEMU's Linux
//! guests run under TCG. A QEMU guest's vCPU threads (`CPU n/TCG` or `/KVM`) are found
//! by name; a QEMU stopped with SIGSTOP stalls with its vCPUs `stopped`, which the
//! scheduler tracepoints see even under TCG. Needs root (eBPF), and /dev/kvm for the
//! builtin VM; skipped loudly otherwise.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::Value;
use vesper_e2e::code_vm::{gated_vm, GATE_THEN_SPIN};
use vesper_e2e::{kvm_usable, say_skipped, signal, Daemon};
use vesper_hostprobe::figures::VcpuState;
use vesper_hostprobe::{Config, HostProbes, Stall, VcpuSource};

const WAIT: Duration = Duration::from_secs(30);
// Long enough that a loaded 2-core host does not starve a vCPU that long by chance.
const THRESHOLD_MS: u64 = 500;

fn root(test: &str) -> bool {
    let root = nix::unistd::geteuid().is_root();
    if !root {
        say_skipped(test, "host probes load eBPF programs: root only");
    }
    root
}

fn usable(test: &str) -> bool {
    root(test) && kvm_usable(test)
}

fn stat(d: &Daemon, guest: &str) -> Value {
    d.cli(&["--json", "host", "stat", guest]).ok().result()
}

fn sum(s: &Value, key: &str) -> u64 {
    s["vcpus"]
        .as_array()
        .map(|v| v.iter().map(|c| c[key].as_u64().unwrap_or(0)).sum())
        .unwrap_or(0)
}

fn reason(s: &Value, name: &str) -> u64 {
    s["vcpus"][0]["exit_reasons"]
        .as_array()
        .and_then(|r| r.iter().find(|p| p[0] == name))
        .and_then(|p| p[1].as_u64())
        .unwrap_or(0)
}

fn stalls(d: &Daemon, guest: &str) -> Vec<Value> {
    d.events(&["--kind", "vcpu_stall", "--guest", guest])
}

#[test]
fn a_paused_vm_stalls_once_and_its_exits_grow_with_guest_work() {
    if !usable("host probes e2e") {
        return;
    }
    let d = Daemon::start(&["--stall-threshold-ms", &THRESHOLD_MS.to_string()]);
    d.vm_start_with("hp1", &["--vmm", "builtin", "--kernel", "mini"]);
    let deadline = Instant::now() + WAIT;
    let mut s = stat(&d, "hp1");
    while sum(&s, "kvm_runs") == 0 {
        assert!(
            Instant::now() < deadline,
            "no KVM_RUN seen: {s:#}\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
        s = stat(&d, "hp1");
    }
    assert_eq!(s["available"], true, "{s:#}");
    let tps = s["tracepoints"].to_string();
    assert!(
        tps.contains("sched:sched_switch")
            && tps.contains("sched:sched_stat_runtime")
            && tps.contains("kvm:kvm_userspace_exit"),
        "{s:#}"
    );

    // Idle for a second, then a second of guest work (the mini frontend's poll loop kept
    // awake: it reads the 8250's status port, each read an exit to the VMM). Idle is
    // measured once the guest has settled into its long sleeps (100 ms slices, after
    // 100 short ones since the last input).
    std::thread::sleep(Duration::from_millis(1500));
    let idle0 = stat(&d, "hp1");
    std::thread::sleep(Duration::from_millis(1000));
    let idle1 = stat(&d, "hp1");
    d.hand("hp1", "spin 1000", "spinning");
    std::thread::sleep(Duration::from_millis(1100));
    let work = stat(&d, "hp1");
    let idle_exits = sum(&idle1, "vmm_exits") - sum(&idle0, "vmm_exits");
    let work_exits = sum(&work, "vmm_exits") - sum(&idle1, "vmm_exits");
    let work_io = reason(&work, "vmm:io") - reason(&idle1, "vmm:io");
    assert!(
        work_exits > 5 * idle_exits.max(10) && work_io > 200,
        "exits to the VMM: idle second {idle_exits}, working second {work_exits} (io {work_io})\n{work:#}"
    );
    assert!(
        stalls(&d, "hp1").is_empty(),
        "an idle or busy guest is not stalled"
    );
    assert_eq!(work["stalls"], 0);

    // Frozen by its host: its vCPU is parked out of KVM_RUN.
    d.cli(&["vm", "pause", "hp1"]).ok();
    let paused = Instant::now();
    let stall = loop {
        if let Some(e) = stalls(&d, "hp1").into_iter().next() {
            break e;
        }
        assert!(
            paused.elapsed() < WAIT,
            "no vcpu_stall after pause\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let p = &stall["payload"];
    assert_eq!(
        (p["vcpu"].as_u64(), p["state"].as_str()),
        (Some(0), Some("out_of_guest")),
        "{stall:#}"
    );
    // Past the threshold in ns; whole ms in the payload (500.4 ms reads 500).
    assert!(
        p["stalled_ms"].as_u64().unwrap() >= THRESHOLD_MS,
        "{stall:#}"
    );
    assert_eq!(p["threshold_ms"], THRESHOLD_MS);
    assert_eq!(stall["source"]["type"], "host_probe");
    let line = d.cli(&["events", "--kind", "vcpu_stall"]).ok().stdout;
    assert!(
        line.contains("vCPU 0 made no progress for") && line.contains("[host-probe]"),
        "{line}"
    );
    let frozen = stat(&d, "hp1");
    assert_eq!(
        (
            frozen["stalls"].as_u64(),
            frozen["vcpus"][0]["stalled"].as_bool()
        ),
        (Some(1), Some(true)),
        "{frozen:#}"
    );
    assert_eq!(frozen["vcpus"][0]["state"], "out_of_guest");
    // Still frozen: still the one event.
    std::thread::sleep(Duration::from_millis(3 * THRESHOLD_MS));
    assert_eq!(stalls(&d, "hp1").len(), 1);

    d.cli(&["vm", "resume", "hp1"]).ok();
    let resumed = Instant::now();
    loop {
        let s = stat(&d, "hp1");
        if s["vcpus"][0]["stalled"] == false {
            break;
        }
        assert!(
            resumed.elapsed() < WAIT,
            "still stalled after resume: {s:#}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    d.hand("hp1", "ping", "pong");
    std::thread::sleep(Duration::from_millis(3 * THRESHOLD_MS));
    assert_eq!(stalls(&d, "hp1").len(), 1, "no stall after resuming");
}

#[test]
fn an_object_the_verifier_refuses_is_reported_with_its_log_and_vesperd_runs_on() {
    if !usable("host probes verifier e2e") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.bpf.o");
    let bytes = vesper_hostprobe::unverifiable_object().expect("built with clang");
    std::fs::write(&bad, bytes).unwrap();
    let d = Daemon::start(&["--host-probe-object", bad.to_str().unwrap()]);
    d.vm_start_with("hp2", &["--vmm", "builtin", "--kernel", "mini"]);
    d.hand("hp2", "ping", "pong");
    let s = stat(&d, "hp2");
    assert_eq!(s["available"], false, "{s:#}");
    let msg = s["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("verifier refused")
            && msg.contains("sched_switch")
            && msg.contains("map_value_or_null"),
        "{msg}"
    );
    let text = d.cli(&["host", "stat", "hp2"]).ok().stdout;
    assert!(
        text.contains("no host probes") && text.contains("map_value_or_null"),
        "{text}"
    );
    let warned = d.log().matches("host probes off").count();
    assert_eq!(warned, 1, "said once:\n{}", d.log());
    assert!(d.cli(&["host", "stat", "nosuch"]).code != 0);
}

#[test]
fn a_qemu_stopped_by_a_signal_stalls_with_its_vcpus_stopped() {
    if !root("host probes QEMU e2e") {
        return;
    }
    let d = Daemon::start(&["--stall-threshold-ms", &THRESHOLD_MS.to_string()]);
    d.vm_start_with("hq1", &["--mode", "hand"]);
    let pid = d.qemu_pid("hq1");
    d.hand("hq1", "ping", "pong");
    let s = stat(&d, "hq1");
    let vcpus = s["vcpus"].as_array().cloned().unwrap_or_default();
    assert_eq!(
        vcpus.len(),
        1,
        "QEMU's one vCPU thread, found by its name: {s:#}"
    );
    let tid = vcpus[0]["tid"].as_u64().unwrap();
    let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).unwrap();
    assert!(comm.starts_with("CPU 0/"), "{comm:?}");
    assert!(vcpus[0]["on_cpu_ms"].as_f64().unwrap() > 0.0, "{s:#}");
    assert!(
        stalls(&d, "hq1").is_empty(),
        "a running guest is not stalled"
    );

    signal(pid, Signal::SIGSTOP);
    let stopped = Instant::now();
    let stall = loop {
        if let Some(e) = stalls(&d, "hq1").into_iter().next() {
            break e;
        }
        if stopped.elapsed() > WAIT {
            signal(pid, Signal::SIGCONT);
            panic!("no vcpu_stall for a stopped QEMU\n{}", d.log());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(2 * THRESHOLD_MS));
    let during = stalls(&d, "hq1").len();
    signal(pid, Signal::SIGCONT);
    let p = &stall["payload"];
    assert_eq!(
        (p["tid"].as_u64(), p["state"].as_str()),
        (Some(tid), Some("stopped")),
        "{stall:#}"
    );
    assert_eq!(during, 1, "one stall while stopped");
    d.hand("hq1", "ping", "pong");
    std::thread::sleep(Duration::from_millis(2 * THRESHOLD_MS));
    assert_eq!(stalls(&d, "hq1").len(), 1, "none after SIGCONT");
    assert_eq!(stat(&d, "hq1")["vcpus"][0]["stalled"], false);
}

/// Nothing runs as KVM_RUN starts (it would cost every exit): a guest that, after exits
/// to its VMM the probes counted, spins without ever leaving KVM_RUN again is seen back
/// inside it by the scheduler's programs, at its ticks. It must read as running guest
/// code, not as a vCPU parked out of the guest since its last exit, however long it
/// spins; its pause must still stall it, once however often a debugger reads its
/// registers meanwhile (vCPU ioctls, not KVM_RUN), and its resume end the stall. (On
/// VMX/SVM hosts `kvm_entry` also marks it inside after each of its in-kernel exits.)
#[test]
fn a_guest_spinning_without_exits_is_in_the_guest_not_stalled() {
    if !usable("host probes: spinning guest") {
        return;
    }
    // Well past what a loaded 2-core host starves a thread for by chance: starved out of
    // KVM_RUN that long, a vCPU would stall for real.
    let threshold = Duration::from_millis(1000);
    let stalls: Arc<Mutex<Vec<Stall>>> = Arc::default();
    let seen = stalls.clone();
    let probes = HostProbes::start(
        Config::with_threshold(threshold),
        Box::new(move |s| seen.lock().unwrap().push(s)),
    )
    .expect("load host probes");
    let (mut spinning, writes, gate) = gated_vm(&GATE_THEN_SPIN);
    let threads = spinning.vcpu_threads();
    let debug = spinning.debug_handle();
    let stop = spinning.stop_handle();
    probes.watch("spin", VcpuSource::Listed(Arc::new(move || threads.list())));
    let runner = std::thread::spawn(move || spinning.run(Duration::from_secs(120)));
    let state = || {
        probes
            .figures("spin")
            .and_then(|f| f.vcpus.first().map(|v| (v.state, v.stalled)))
    };
    // What the watcher says, every 20 ms for `span`. States are sampled, not asserted
    // at one instant: on a loaded host the thread may be waiting for a CPU at any one
    // (`runnable`; starved past the threshold, that is a stall of its own kind).
    let sample = |span: Duration| {
        let (from, mut seen) = (Instant::now(), Vec::new());
        while from.elapsed() < span {
            seen.extend(state());
            std::thread::sleep(Duration::from_millis(20));
        }
        seen
    };
    let out_of_guest = || {
        stalls
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.state == VcpuState::OutOfGuest)
            .count()
    };
    // The guest reads its gate, an exit each time, until the probes have counted some.
    let vmm_exits = || {
        probes
            .figures("spin")
            .and_then(|f| f.vcpus.first().map(|v| v.vmm_exits))
            .unwrap_or(0)
    };
    let started = Instant::now();
    while vmm_exits() == 0 {
        assert!(
            started.elapsed() < WAIT,
            "no exit of the vCPU thread counted"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    gate.store(true, std::sync::atomic::Ordering::Relaxed);
    // Five thresholds of spinning, from its last exit.
    let spun = sample(threshold * 5);
    let during_spin = out_of_guest();
    debug.pause(Duration::from_secs(5)).expect("pause");
    let paused = Instant::now();
    while out_of_guest() == during_spin && paused.elapsed() < WAIT {
        std::thread::sleep(Duration::from_millis(10));
    }
    // A debugger reading the paused vCPU's registers, over and over: vCPU ioctls on its
    // thread, but not KVM_RUN. No progress, so no second stall.
    let (reads, while_read) = std::thread::scope(|s| {
        let watcher = s.spawn(|| sample(threshold * 2));
        let reading = Instant::now();
        let mut reads = 0u64;
        while reading.elapsed() < threshold * 2 {
            debug.registers(0).expect("registers of the paused vCPU");
            reads += 1;
        }
        (reads, watcher.join().unwrap())
    });
    let during_pause = out_of_guest();
    let first = stalls
        .lock()
        .unwrap()
        .iter()
        .find(|s| s.state == VcpuState::OutOfGuest)
        .cloned();
    debug.resume(&[]).expect("resume");
    let resumed = sample(threshold * 2);
    let after_resume = out_of_guest();
    stop.stop();
    let _ = runner.join();

    let all = stalls.lock().unwrap().clone();
    assert_eq!(
        writes.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "the guest only read its gate"
    );
    assert!(
        during_spin == 0
            && spun.contains(&(VcpuState::InGuest, false))
            // The first figures may still be from its gate loop, out of KVM_RUN.
            && !spun[spun.len() / 2..]
                .iter()
                .any(|(s, _)| *s == VcpuState::OutOfGuest),
        "a guest spinning in KVM_RUN for 5x the threshold: seen {spun:?}, stalls {all:?}"
    );
    let stall = first.expect("no out_of_guest vcpu_stall after pause");
    assert!(stall.stalled_ms >= 1000, "{stall:?}");
    assert!(
        during_pause == 1
            && !while_read.is_empty()
            && while_read.iter().all(|&(s, stalled)| {
                stalled && !matches!(s, VcpuState::InGuest | VcpuState::Halted)
            }),
        "paused, its registers read {reads} times: seen {while_read:?}, stalls {all:?}"
    );
    // Running again: its stall over, never out of the guest once settled. On a loaded
    // 2-core host every figure may find it waiting for a CPU (the poll thread itself
    // preempts it), so `runnable` counts as back in the guest here.
    let settled = &resumed[resumed.len() / 2..];
    assert!(
        after_resume == 1
            && !settled.is_empty()
            && settled.iter().all(|&(s, stalled)| {
                !stalled && matches!(s, VcpuState::InGuest | VcpuState::Runnable)
            }),
        "spinning again after resume: seen {resumed:?}, stalls {all:?}"
    );
}
