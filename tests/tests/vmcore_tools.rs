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
    let policy = dir.path().join("policy.toml");
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
