//! Vesper's vmcores in the kernel debuggers people use: the kit's guest panics with
//! two vCPUs (the one that does not panic is taken offline by the panic), a policy
//! says `[dump] on_panic = true`, and the vmcore vesperd writes is opened by crash,
//! drgn and gdb with the kit's debug vmlinux (Debian's `-dbg` package). Each must read
//! the panic message or `init_task.comm`, and the panicking CPU's registers.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vesper_debug::vmcore::Vmcore;
use vesper_e2e::{debug_vmlinux, CliOutput, Daemon};

const PANIC: &str = "Kernel panic - not syncing: sysrq triggered crash";

/// Runs a debugger to completion with no terminal; its stdout and stderr together.
fn run(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e} (the guest kit installs it)"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd:?} failed:\n{text}");
    text
}

/// A 2-vCPU hand-mode guest told to panic under a policy that dumps on panic, and the
/// vmcore vesperd wrote of it (the policy file is kept in `dir`).
fn panic_dump(dir: &Path) -> (Daemon, PathBuf) {
    let policy = dir.join("policy.toml");
    // The policy's knob, not vesperd's flag, turns the dump on.
    std::fs::write(
        &policy,
        "[host]\nmax_guests = 1\nmax_memory_mib = 512\n\n[dump]\non_panic = true\n",
    )
    .unwrap();
    let d = Daemon::start(&["--policy", policy.to_str().unwrap()]);
    d.vm_start_with("vm1", &["--mode", "hand", "--cpus", "2"]);
    d.hand("vm1", "panic", "panicking");
    let core = first_dump(&d, "vm1");
    (d, core)
}

/// Waits for the guest's first vmcore to be listed by `vesper debug dumps`.
fn first_dump(d: &Daemon, guest: &str) -> PathBuf {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out: CliOutput = d.cli(&["--json", "debug", "dumps", guest]);
        assert_eq!(out.code, 0, "{out:?}");
        if let Some(p) = out.json()["result"]["dumps"][0]["path"].as_str() {
            return PathBuf::from(p);
        }
        assert!(Instant::now() < deadline, "no vmcore:\n{}", d.log());
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn crash(vmlinux: &Path, core: &Path, dir: &Path) -> String {
    let cmds = dir.join("crash.cmds");
    std::fs::write(&cmds, "log\np init_task.comm\nbt\nquit\n").unwrap();
    run(Command::new("crash")
        .arg("-s")
        .args([vmlinux, core])
        .arg("-i")
        .arg(&cmds))
}

fn drgn(vmlinux: &Path, core: &Path, dir: &Path) -> String {
    let script = dir.join("check.py");
    std::fs::write(
        &script,
        "from drgn.helpers.linux.printk import get_printk_records\n\
         from drgn.helpers.linux.pid import find_task\n\
         print('comm=' + prog['init_task'].comm.string_().decode())\n\
         print('panic=' + str(any(b'Kernel panic - not syncing' in r.text for r in get_printk_records(prog))))\n\
         print('pc=%#x' % prog.stack_trace(find_task(prog, 1))[0].pc)\n",
    )
    .unwrap();
    run(Command::new("drgn")
        .args(["-q", "-c"])
        .arg(core)
        .arg("-s")
        .arg(vmlinux)
        .arg(&script))
}

fn gdb(vmlinux: &Path, core: &Path, kaslr: &str) -> String {
    run(Command::new("gdb")
        .args(["-batch", "-nx"])
        .arg("-ex")
        .arg(format!("symbol-file {} -o 0x{kaslr}", vmlinux.display()))
        .arg("-ex")
        .arg(format!("core-file {}", core.display()))
        .args([
            "-ex",
            "p init_task.comm",
            "-ex",
            "thread apply all p/x $rip",
        ]))
}

#[test]
fn crash_drgn_and_gdb_open_the_vmcore_of_a_panic() {
    let test = "crash_drgn_and_gdb_open_the_vmcore_of_a_panic";
    let Some(vmlinux) = debug_vmlinux(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, core) = panic_dump(dir.path());

    // What the dump says, read by Vesper's own reader: one NT_PRSTATUS per vCPU, the
    // panicking one naming init (pid 1, which wrote to /proc/sysrq-trigger).
    let v = Vmcore::open(&core).unwrap();
    let cpus = v.cpus();
    assert_eq!(cpus.len(), 2, "{cpus:?}");
    let panicking = cpus
        .iter()
        .find(|c| c.pid == 1)
        .unwrap_or_else(|| panic!("no CPU runs pid 1: {cpus:?}"));
    assert!(panicking.rip >= 0xffff_ffff_8000_0000, "{panicking:?}");
    assert_ne!(panicking.control.cr3, 0, "{panicking:?}");
    let info = v.vmcoreinfo().unwrap();
    let kaslr = info.get("KERNELOFFSET").expect("KERNELOFFSET").to_string();

    let text = crash(&vmlinux, &core, dir.path());
    assert!(text.contains(PANIC), "crash's log:\n{text}");
    assert!(
        text.contains("\"swapper/0"),
        "crash's init_task.comm:\n{text}"
    );
    assert!(
        text.contains("PID: 1 ") && text.contains("sysrq_handle_crash"),
        "crash's bt of the panicking task:\n{text}"
    );

    let text = drgn(&vmlinux, &core, dir.path());
    assert!(text.contains("comm=swapper/0"), "drgn:\n{text}");
    assert!(text.contains("panic=True"), "drgn:\n{text}");
    // drgn unwinds pid 1 from the registers vesperd saved for its CPU.
    assert!(
        text.contains(&format!("pc={:#x}", panicking.rip)),
        "drgn did not start pid 1's stack at its CPU's rip {:#x}:\n{text}",
        panicking.rip
    );

    let text = gdb(&vmlinux, &core, &kaslr);
    assert!(text.contains("= \"swapper/0"), "gdb:\n{text}");
    assert!(
        text.contains(&format!("= {:#x}", panicking.rip)),
        "gdb lacks the panicking CPU's rip {:#x}:\n{text}",
        panicking.rip
    );
}

/// Prints the panicking CPU's task's stack as drgn unwinds it, one `frame PC NAME`
/// line per frame (NAME from DWARF, else the ELF symbol's, assembly's; `-` for none;
/// `?` for a frame drgn has no pc for).
/// `panic_cpu` is the CPU `panic()` runs on (drgn's `crashed_thread()` takes CPU 0
/// unless kdump set `crashing_cpu`, which a pvpanic'd guest never does).
const DRGN_PANIC_BT: &str = "\
from drgn.helpers.linux.percpu import per_cpu
cpu = prog['panic_cpu'].counter.value_()
task = per_cpu(prog['runqueues'], cpu).curr
print('panic_cpu=%d pid=%d' % (cpu, task.pid.value_()))
trace = prog.stack_trace(task)
print(trace)
for f in trace:
    try:
        pc = '%#x' % f.pc
    except LookupError:
        pc = '?'
    name = f.name
    if name is None:
        try:
            name = f.symbol().name
        except LookupError:
            name = '-'
    print('frame %s %s' % (pc, name))
";

/// drgn's stack of the panicking task in `core`, with `symbols` (`-s` each).
fn drgn_panic_bt(core: &Path, symbols: &[PathBuf], dir: &Path) -> String {
    let script = dir.join("panic_bt.py");
    std::fs::write(&script, DRGN_PANIC_BT).unwrap();
    let mut cmd = Command::new("drgn");
    cmd.arg("-c").arg(core);
    for s in symbols {
        cmd.arg("-s").arg(s);
    }
    run(cmd.arg(&script))
}

/// The `frame PC NAME` lines of [`DRGN_PANIC_BT`]'s output.
fn frames(text: &str) -> Vec<(String, String)> {
    text.lines()
        .filter_map(|l| {
            let mut w = l.strip_prefix("frame ")?.split(' ');
            Some((w.next()?.to_string(), w.next()?.to_string()))
        })
        .collect()
}

#[test]
fn drgn_unwinds_the_panicking_task_through_module_code_to_user_space() {
    let test = "drgn_unwinds_the_panicking_task_through_module_code_to_user_space";
    let Some(vmlinux) = debug_vmlinux(test) else {
        return;
    };
    // The kit got the vmlinux from the -dbg package: the drivers' debug files too.
    let kit = vesper_e2e::kit();
    let symbols = kit
        .debug_symbol_files()
        .unwrap_or_else(|| panic!("no module debug files: {:?}", kit.debug_modules_missing));
    let dir = tempfile::tempdir().unwrap();
    let (_daemon, core) = panic_dump(dir.path());
    let v = Vmcore::open(&core).unwrap();
    let cpus = v.cpus();
    let panicking = cpus
        .iter()
        .find(|c| c.pid == 1)
        .unwrap_or_else(|| panic!("no CPU runs pid 1: {cpus:?}"));

    // Without the modules' debug files drgn warns and cannot leave the module code the
    // CPU stopped in (pvpanic's notifier, which told QEMU of the panic).
    let text = drgn_panic_bt(&core, std::slice::from_ref(&vmlinux), dir.path());
    assert!(
        text.contains("could not get debugging information"),
        "{text}"
    );
    assert_eq!(frames(&text).len(), 1, "{text}");

    // With them: the module frames by name, then the kernel's, down to the syscall entry
    // and the user-space pc init wrote /proc/sysrq-trigger from; no warning.
    let text = drgn_panic_bt(&core, &symbols, dir.path());
    assert!(
        !text.contains("could not get debugging information"),
        "{text}"
    );
    assert!(!text.contains("warning"), "{text}");
    assert!(text.contains("pid=1"), "not the panicking task:\n{text}");
    let frames = frames(&text);
    assert_eq!(
        frames[0].0,
        format!("{:#x}", panicking.rip),
        "not the panicking CPU's rip:\n{text}"
    );
    let expected = [
        "pvpanic_send_event",
        "pvpanic_panic_notify",
        "panic",
        "sysrq_handle_crash",
        "write_sysrq_trigger",
        "ksys_write",
        "do_syscall_64",
        "entry_SYSCALL_64",
    ];
    let mut at = 0;
    for name in expected {
        let i = frames[at..]
            .iter()
            .position(|(_, n)| n == name)
            .unwrap_or_else(|| panic!("no frame {name} after frame #{at}:\n{text}"));
        at += i + 1;
    }
    // Module code is at the module mapping's addresses, not vmlinux's.
    let module_pc = u64::from_str_radix(frames[0].0.trim_start_matches("0x"), 16).unwrap();
    assert!(module_pc >= 0xffff_ffff_c000_0000, "{text}");
    let (user_pc, _) = frames.last().unwrap();
    assert_eq!(
        at,
        frames.len() - 1,
        "frames past the syscall entry:\n{text}"
    );
    let user_pc = u64::from_str_radix(user_pc.trim_start_matches("0x"), 16)
        .unwrap_or_else(|e| panic!("user-space frame's pc {user_pc}: {e}\n{text}"));
    assert!(user_pc < 0x8000_0000_0000, "not a user-space pc:\n{text}");
}

// crash's `bt -a` and `vesper debug bt --cpu` on a dump, live and of a panic: every CPU's
// backtrace. crash before 9.0.0 cannot search the stacks of a CPU that is not panicking
// on the kit's kernel (see `CRASH_ESTACK_BUG`), QEMU's own `dump-guest-memory` files
// alike; for those CPUs `bt -c CPU -I RIP -S RSP` from the dump's registers must work.

/// What crash before 9.0.0 prints for the task on a CPU that is not panicking, on a
/// kernel without `CONFIG_X86_MCE` (Debian's cloud kernel): the #MC stack is in the TSS
/// but no IDT gate names it, so crash takes its size to be 0 and gives up searching the
/// CPU's stacks (upstream crash 8a11aa0 skips stacks it cannot read).
const CRASH_ESTACK_BUG: &str = "invalid size request: 0  type: \"stack contents\"";

/// crash's version, `[8, 0, 2]` from `crash 8.0.2`.
fn crash_version() -> Vec<u32> {
    let text = run(Command::new("crash").arg("--version"));
    let v = text
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("crash --version: {text}"));
    v.split('.').map_while(|n| n.parse().ok()).collect()
}

/// crash's output split at its `PID: ... CPU: N ...` headers: (N, the header and what
/// follows it up to the next header).
fn bt_sections(text: &str) -> Vec<(usize, String)> {
    let mut out: Vec<(usize, String)> = Vec::new();
    for line in text.lines() {
        let cpu = line
            .strip_prefix("PID: ")
            .and_then(|l| l.split_once("CPU: "))
            .and_then(|(_, rest)| rest.split_whitespace().next()?.parse().ok());
        match (cpu, out.last_mut()) {
            (Some(cpu), _) => out.push((cpu, format!("{line}\n"))),
            (None, Some((_, s))) => *s += &format!("{line}\n"),
            (None, None) => {}
        }
    }
    out
}

/// A backtrace with frames and no failed stack read.
fn has_frames(section: &str) -> bool {
    section.contains(" #0 [")
        && !section.contains("read of stack")
        && !section.contains("invalid size request")
}

/// Each CPU's backtrace in crash, in CPU order: its section of `bt -a`, or, where crash
/// before 9.0.0 fails with [`CRASH_ESTACK_BUG`] (and only there), what
/// `bt -c CPU -I RIP -S RSP` prints with the dump's registers for the CPU.
fn crash_bt_every_cpu(
    vmlinux: &Path,
    core: &Path,
    cpus: &[vesper_debug::vmcore::PrStatusRegs],
    dir: &Path,
) -> Vec<String> {
    let mut cmds = String::from("bt -a\necho ==== from the registers\n");
    for (i, c) in cpus.iter().enumerate() {
        cmds += &format!("bt -c {i} -I {:#x} -S {:#x}\n", c.rip, c.rsp);
    }
    cmds += "quit\n";
    let file = dir.join("bt.cmds");
    std::fs::write(&file, cmds).unwrap();
    let text = run(Command::new("crash")
        .arg("-s")
        .args([vmlinux, core])
        .arg("-i")
        .arg(&file));
    let (all, by_regs) = text
        .split_once("==== from the registers")
        .unwrap_or_else(|| panic!("crash stopped early:\n{text}"));
    let (all, by_regs) = (bt_sections(all), bt_sections(by_regs));
    let old_crash = crash_version() < vec![9];
    (0..cpus.len())
        .map(|cpu| {
            // crash before 9.0.0 ends `bt -a` at the first CPU its #MC-stack bug hits.
            let aborted = old_crash && all.iter().any(|(_, a)| a.contains(CRASH_ESTACK_BUG));
            match all.iter().find(|(c, _)| *c == cpu) {
                Some((_, a)) if has_frames(a) => return a.clone(),
                Some((_, a)) => assert!(
                    old_crash && a.contains(CRASH_ESTACK_BUG),
                    "crash's bt -a fails on CPU {cpu}, and not as crash before 9.0.0 does:\n{text}"
                ),
                None => assert!(aborted, "crash's bt -a has no CPU {cpu}:\n{text}"),
            }
            match by_regs.iter().find(|(c, _)| *c == cpu) {
                Some((_, r)) if has_frames(r) => r.clone(),
                _ => panic!("crash's bt from CPU {cpu}'s registers has no frames:\n{text}"),
            }
        })
        .collect()
}

/// `vesper debug bt FILE --cpu 0`: its function names and how the trace ended
/// (`stack_end`, `user_space`, ...).
fn vesper_bt_cpu0(d: &Daemon, core: &Path) -> (Vec<String>, String) {
    let bt = d
        .debug(&["bt", core.to_str().unwrap(), "--cpu", "0"])
        .result();
    assert_eq!(bt["cpu"], 0, "{bt}");
    let frames = bt["frames"]
        .as_array()
        .unwrap_or_else(|| panic!("no frames: {bt}"))
        .iter()
        .map(|f| f["function"].as_str().unwrap_or("?").to_string())
        .collect();
    let end = bt["end"]["reason"].as_str().unwrap_or("?").to_string();
    (frames, end)
}

#[test]
fn crash_and_vesper_trace_every_cpu_of_a_live_dump() {
    let test = "crash_and_vesper_trace_every_cpu_of_a_live_dump";
    let Some(vmlinux) = debug_vmlinux(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let d = Daemon::start(&[]);
    d.vm_start_with("vm1", &["--mode", "hand", "--cpus", "2"]);
    let dump = d.debug(&["dump", "vm1", "--name", "live.vmcore"]).result();
    let core = PathBuf::from(dump["dump"]["path"].as_str().unwrap());
    let v = Vmcore::open(&core).unwrap();
    let cpus = v.cpus();
    assert_eq!(cpus.len(), 2, "{cpus:?}");

    // An idle guest: each CPU's idle task (pid 0) from its registers down to
    // cpu_startup_entry, the bottom of every idle stack.
    let traces = crash_bt_every_cpu(&vmlinux, &core, cpus, dir.path());
    for (cpu, (regs, trace)) in cpus.iter().zip(&traces).enumerate() {
        assert!(
            regs.pid != 0 || trace.contains("cpu_startup_entry"),
            "crash's trace of CPU {cpu}'s idle task:\n{trace}"
        );
    }
    let (frames, end) = vesper_bt_cpu0(&d, &core);
    assert!(
        cpus[0].pid != 0
            || (end == "stack_end" && frames.iter().any(|f| f.starts_with("cpu_startup_entry+"))),
        "vesper debug bt --cpu 0 of the idle task (ended: {end}): {frames:?}"
    );
}

#[test]
fn crash_and_vesper_trace_every_cpu_of_a_panic_dump() {
    let test = "crash_and_vesper_trace_every_cpu_of_a_panic_dump";
    let Some(vmlinux) = debug_vmlinux(test) else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let (d, core) = panic_dump(dir.path());
    let v = Vmcore::open(&core).unwrap();
    let cpus = v.cpus();
    assert_eq!(cpus.len(), 2, "{cpus:?}");
    assert_eq!(
        cpus.iter().filter(|c| c.pid == 1).count(),
        1,
        "init (pid 1) panics on one CPU: {cpus:?}"
    );

    // The panicking CPU in panic; the other stopped by it (smp_send_stop: the reboot
    // IPI, or an NMI if that did not stop it).
    let traces = crash_bt_every_cpu(&vmlinux, &core, cpus, dir.path());
    for (cpu, (regs, trace)) in cpus.iter().zip(&traces).enumerate() {
        let want: &[&str] = if regs.pid == 1 {
            &["sysrq_handle_crash"]
        } else {
            &["sysvec_reboot", "stop_this_cpu", "smp_stop_nmi_callback"]
        };
        assert!(
            want.iter().any(|w| trace.contains(w)),
            "crash's trace of CPU {cpu} (pid {}) lacks {want:?}:\n{trace}",
            regs.pid
        );
    }
    // CPU 0 panicking: panic() down to init's system call; stopped: from the reboot
    // IPI (or NMI) through the interrupted idle loop to the bottom of its stack.
    let (frames, end) = vesper_bt_cpu0(&d, &core);
    let has = |f: &str| frames.iter().any(|g| g.starts_with(f));
    let ok = if cpus[0].pid == 1 {
        has("panic+") && end == "user_space"
    } else {
        has("stop_this_cpu+") && has("cpu_startup_entry+") && end == "stack_end"
    };
    assert!(
        ok,
        "vesper debug bt --cpu 0 (pid {}, ended: {end}): {frames:?}",
        cpus[0].pid
    );
}
