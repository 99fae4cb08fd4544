//! `vesper debug bt` end to end on the kit's real guest under QEMU: kernel stack
//! traces unwound from the host with the guest kernel's own ORC tables, checked
//! against the guest kernel's own unwinder (`/proc/PID/stack`, read by the test init's
//! hand), for sleeping tasks, kernel threads, and a CPU spinning with interrupts off.

use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{module, CliOutput, Daemon};

/// The trace's function names with offsets, innermost first.
fn functions(bt: &Value) -> Vec<String> {
    bt["frames"]
        .as_array()
        .unwrap_or_else(|| panic!("no frames: {bt}"))
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_string())
        .collect()
}

/// The frames from `vesper_hang_fn` down to the stack's end, as function names
/// without offsets: what stays the same while the CPU spins in its busy-wait loop.
fn callers_of_hang(bt: &Value) -> Vec<String> {
    let names: Vec<String> = functions(bt)
        .iter()
        .map(|f| f.split('+').next().unwrap_or(f).to_string())
        .collect();
    let from = names
        .iter()
        .position(|f| f == "vesper_hang_fn")
        .unwrap_or_else(|| panic!("vesper_hang_fn not in the trace: {bt}"));
    names[from..].to_vec()
}

/// `/proc/PID/stack` of the process named `name`, as the guest's kernel unwinds it:
/// `func+0xoff` per frame (the `/size` dropped), and its pid.
fn guest_stack(d: &Daemon, name: &str) -> (i64, Vec<String>) {
    let before = d.console("vm1").len();
    let end = d.hand(
        "vm1",
        &format!("stack {name}"),
        &format!("stack end {name} pid="),
    );
    let pid = end
        .split("pid=")
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {end:?}"));
    let console = d.console("vm1");
    let frame_line = format!("vesper-hand: stack {name} pid={pid} ");
    let frames = console[before..]
        .lines()
        .filter_map(|l| l.trim_end().strip_prefix(&frame_line))
        // "[<0>] sigsuspend+0x77/0xb0"
        .map(|f| {
            f.rsplit(' ')
                .next()
                .unwrap()
                .split('/')
                .next()
                .unwrap()
                .to_string()
        })
        .collect();
    (pid, frames)
}

#[test]
fn traces_of_sleeping_tasks_match_the_guest_kernels_own_unwinder() {
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.hand("vm1", "start svc", "started svc");
    // Let svc reach its sleep.
    std::thread::sleep(Duration::from_millis(500));

    let (pid, theirs) = guest_stack(&d, "svc");
    assert!(!theirs.is_empty(), "the guest printed no stack for svc");
    let bt = d.debug(&["bt", "vm1", &pid.to_string()]).result();
    let ours = functions(&bt);
    // /proc/PID/stack leaves out the scheduler's own frames; the rest is identical,
    // offsets included.
    let past_scheduler: Vec<String> = ours
        .iter()
        .skip_while(|f| f.starts_with("__schedule+") || f.starts_with("schedule+"))
        .cloned()
        .collect();
    assert_eq!(past_scheduler, theirs, "ours: {ours:?}");
    assert_eq!(bt["pid"], pid, "{bt}");
    assert_eq!(bt["comm"], "svc", "{bt}");
    // A user process's kernel stack ends where it entered from user space.
    assert_eq!(bt["end"]["reason"], "user_space", "{bt}");
    assert!(bt["end"]["ip"].as_u64().unwrap() < 0x8000_0000_0000, "{bt}");

    // A kernel thread's stack ends at its bottom, in ret_from_fork.
    let bt = d.debug(&["bt", "vm1", "2"]).result();
    let f = functions(&bt);
    assert_eq!(bt["end"]["reason"], "stack_end", "{bt}");
    assert!(f.last().unwrap().starts_with("ret_from_fork+"), "{f:?}");
    assert!(f.iter().any(|x| x.starts_with("kthreadd+")), "{f:?}");

    // Human output: one line per frame, the way the kernel prints them.
    let out = d.cli(&["debug", "bt", "vm1", &pid.to_string()]).ok();
    assert!(out.stdout.contains("PID"), "{}", out.stdout);
    assert!(out.stdout.contains(&theirs[0]), "{}", out.stdout);
    assert!(
        out.stdout.contains("entered from user space"),
        "{}",
        out.stdout
    );

    // Bad requests: no such task, neither PID nor CPU, both.
    let out = d.debug(&["bt", "vm1", "99999"]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(out.stdout.contains("no task with pid 99999"), "{out:?}");
    let out = d.cli(&["debug", "bt", "vm1"]);
    assert_eq!(out.code, 2, "{out:?}");
    let out = d.cli(&["debug", "bt", "vm1", "1", "--cpu", "0"]);
    assert_eq!(out.code, 2, "{out:?}");

    // The guest was paused only while its stacks were walked.
    d.hand("vm1", "ping", "pong");
}

#[test]
fn a_cpu_spinning_with_interrupts_off_is_traced_from_its_registers() {
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand"]);
    d.cli(&[
        "insmod",
        "vm1",
        &module("vesper_hang"),
        "hang_ms=20000",
        "delay_ms=300",
    ])
    .ok();
    let deadline = Instant::now() + Duration::from_secs(15);
    let spinner = loop {
        let tasks = d.debug(&["ps", "vm1"]).result()["tasks"].clone();
        if let Some(t) = tasks
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["comm"] == "vesper_hang" && t["state"] == "R")
        {
            break t["pid"].as_i64().unwrap();
        }
        assert!(Instant::now() < deadline, "the hang never started: {tasks}");
        std::thread::sleep(Duration::from_millis(100));
    };
    let hung = Instant::now();
    // The spinning thread, traced from CPU 0's registers: its own function in its
    // module, under kthread. The frontend cannot answer meanwhile; the host can.
    let by_cpu = d.debug(&["bt", "vm1", "--cpu", "0"]).result();
    let by_pid = d.debug(&["bt", "vm1", &spinner.to_string()]).result();
    for bt in [&by_cpu, &by_pid] {
        let f = functions(bt);
        let frames = bt["frames"].as_array().unwrap();
        assert!(
            frames.iter().any(|x| x["function"]
                .as_str()
                .unwrap_or("")
                .starts_with("vesper_hang_fn+")
                && x["module"] == "vesper_hang"),
            "{bt}"
        );
        assert!(f.iter().any(|x| x.starts_with("kthread+")), "{f:?}");
        assert_eq!(bt["end"]["reason"], "stack_end", "{bt}");
        assert_eq!(bt["cpu"], 0, "{bt}");
        assert_eq!(bt["pid"], spinner, "{bt}");
    }
    assert!(by_pid["source"]
        .as_str()
        .unwrap()
        .contains("running on CPU 0"));
    // A CPU the guest does not have.
    let out = d.debug(&["bt", "vm1", "--cpu", "7"]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(out.stdout.contains("no CPU 7"), "{out:?}");

    // The same from a vmcore of the hung guest, read by the CLI with no daemon: the
    // CPU's registers come from the dump's NT_PRSTATUS note.
    let dump = d.debug(&["dump", "vm1", "--name", "hung.vmcore"]).result();
    let path = dump["dump"]["path"].as_str().unwrap().to_string();
    let out: CliOutput = std::process::Command::new(vesper_e2e::bin_dir().join("vesper"))
        .args(["--json", "debug", "bt", &path, "--cpu", "0"])
        .output()
        .unwrap()
        .into();
    let from_file = out.result();
    // The CPU went on spinning between the live trace and the dump, so the frames
    // above the module's function (delay_tsc at whatever instruction) may differ;
    // from vesper_hang_fn down, the two unwinds must agree.
    assert_eq!(
        callers_of_hang(&from_file),
        callers_of_hang(&by_cpu),
        "{from_file}"
    );
    assert!(
        hung.elapsed() < Duration::from_secs(18),
        "the checks outlasted the hang ({:?}): they proved nothing",
        hung.elapsed()
    );
}
