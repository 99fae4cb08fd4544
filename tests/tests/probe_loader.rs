//! Probe Loader end to end: a real guest under QEMU whose user space is frozen.

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vesper_e2e::{module, qemu_region, signal, Daemon};

#[test]
fn a_probe_is_pushed_listed_live_and_removed_while_user_space_is_frozen() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start("vm1");
    assert_eq!(vm["state"], "up");
    assert!(vm["guest"]["kernel_release"]
        .as_str()
        .unwrap()
        .ends_with("-cloud-amd64"));
    // PID 1 has exec'd into `sleep`: nothing in user space will help Vesper.
    d.wait_console(
        "vm1",
        "vesper-init: user space frozen",
        Duration::from_secs(30),
    );

    let out = d.cli(&["insmod", "vm1", &module("vesper_exit_probe")]).ok();
    assert!(
        out.stdout.contains("vm1: loaded vesper_exit_probe"),
        "{out:?}"
    );

    let lsmod = d.cli(&["--json", "lsmod", "vm1"]).ok().json();
    let mods = lsmod["result"]["modules"].as_array().unwrap();
    let probe = mods
        .iter()
        .find(|m| m["name"] == "vesper_exit_probe")
        .expect("probe listed");
    assert_eq!(probe["state"], "live");
    assert_eq!(probe["pushed"], true);
    assert!(probe["size"].as_u64().unwrap() > 0);
    let human = d.cli(&["lsmod", "vm1"]).ok().stdout;
    assert!(
        human
            .lines()
            .any(|l| l.starts_with("vesper_exit_probe") && l.contains("live")),
        "{human}"
    );

    // The kprobe fired in the guest kernel (its self-check makes a kernel thread exit).
    let dmesg = d.cli(&["dmesg", "vm1"]).ok().stdout;
    assert!(
        dmesg.contains("vesper_exit_probe: kprobe on do_exit live"),
        "{dmesg}"
    );
    assert!(dmesg.contains("vesper_exit_probe: exit comm="), "{dmesg}");

    d.cli(&["rmmod", "vm1", "vesper_exit_probe"]).ok();
    assert!(!d
        .module_names("vm1")
        .contains(&"vesper_exit_probe".to_string()));
    assert!(d
        .cli(&["dmesg", "vm1"])
        .ok()
        .stdout
        .contains("vesper_exit_probe: removed after"));
}

#[test]
fn twenty_load_unload_cycles_leave_the_module_list_as_it_was() {
    let d = Daemon::start(&[]);
    d.vm_start("vm1");
    let before = d.module_names("vm1");
    assert!(before.contains(&"vesper_front".to_string()));
    let probe = module("vesper_exit_probe");
    for i in 0..20 {
        let out = d.cli(&["--json", "insmod", "vm1", &probe]);
        assert_eq!(out.code, 0, "cycle {i}: {out:?}");
        assert_eq!(out.json()["result"]["name"], "vesper_exit_probe");
        let out = d.cli(&["rmmod", "vm1", "vesper_exit_probe"]);
        assert_eq!(out.code, 0, "cycle {i}: {out:?}");
    }
    assert_eq!(d.module_names("vm1"), before);
}

/// Replaces every occurrence of `from` by `to` (same length) in a copy of `bytes`.
fn patched(bytes: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut out = bytes.to_vec();
    let mut hits = 0;
    let mut i = 0;
    while i + from.len() <= out.len() {
        if &out[i..i + from.len()] == from {
            out[i..i + from.len()].copy_from_slice(to);
            hits += 1;
            i += from.len();
        } else {
            i += 1;
        }
    }
    assert!(hits > 0, "pattern not found");
    out
}

#[test]
fn each_bad_input_gets_its_own_error_and_the_guest_keeps_working() {
    let d = Daemon::start(&[]);
    d.vm_start("vm1");
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, bytes: &[u8]| {
        let p = dir.path().join(name);
        std::fs::write(&p, bytes).unwrap();
        p.display().to_string()
    };
    let probe_path = module("vesper_exit_probe");
    let probe = std::fs::read(&probe_path).unwrap();
    let expect = |args: &[&str], code: i32, needle: &str| {
        let out = d.cli(args);
        assert_eq!(out.code, code, "{args:?}: {out:?}");
        assert!(
            out.stderr.contains(needle),
            "{args:?}: expected {needle:?} in {:?}",
            out.stderr
        );
    };

    let garbage: Vec<u8> = (0..5000u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
        .collect();
    expect(
        &["insmod", "vm1", &write("garbage.ko", &garbage)],
        65,
        "not an ELF file",
    );
    expect(
        &[
            "insmod",
            "vm1",
            &write("trunc.ko", &probe[..probe.len() / 3]),
        ],
        65,
        "truncated ELF",
    );
    let mut arm = probe.clone();
    arm[18..20].copy_from_slice(&183u16.to_le_bytes()); // EM_AARCH64
    expect(&["insmod", "vm1", &write("arm.ko", &arm)], 65, "not x86-64");
    let release = vesper_e2e::kit().release.clone();
    let other = format!("{:<width$}", "5.10.0-99-amd64", width = release.len());
    let foreign = patched(
        &probe,
        format!("vermagic={release}").as_bytes(),
        format!("vermagic={other}").as_bytes(),
    );
    expect(
        &["insmod", "vm1", &write("foreign.ko", &foreign)],
        65,
        "does not match the guest kernel",
    );
    expect(&["insmod", "vm1", &write("empty.ko", b"")], 65, "empty");
    let huge = std::fs::File::create(dir.path().join("huge.ko")).unwrap();
    huge.set_len(33 << 20).unwrap();
    expect(
        &[
            "insmod",
            "vm1",
            &dir.path().join("huge.ko").display().to_string(),
        ],
        65,
        "over the",
    );
    expect(
        &["insmod", "vm1", "/nonexistent/probe.ko"],
        66,
        "no such file",
    );
    expect(
        &["insmod", "vm9", &probe_path],
        68,
        "no guest named \"vm9\"",
    );
    expect(
        &["insmod", "vm1", &probe_path, "bad param"],
        65,
        "bad module parameter",
    );

    // Init that fails: the errno and the guest's own log line come back.
    let fail = d.cli(&["insmod", "vm1", &module("vesper_fail_init")]);
    assert_eq!(fail.code, 1, "{fail:?}");
    assert!(fail.stderr.contains("ENODEV"), "{fail:?}");
    assert!(
        fail.stderr
            .contains("vesper_fail_init: refusing to load (test fixture)"),
        "{fail:?}"
    );
    let fail_json = d
        .cli(&["--json", "insmod", "vm1", &module("vesper_fail_init")])
        .json();
    assert_eq!(fail_json["error"]["code"], "init_failed");

    d.cli(&["insmod", "vm1", &probe_path]).ok();
    expect(&["insmod", "vm1", &probe_path], 1, "already loaded");
    d.cli(&["rmmod", "vm1", "vesper_exit_probe"]).ok();
    expect(&["rmmod", "vm1", "vesper_exit_probe"], 1, "not loaded");
    expect(&["rmmod", "vm1", "no_such_module"], 1, "not loaded");

    // Parameters reach the module; a value the module rejects fails its load cleanly.
    let bad_value = d.cli(&["insmod", "vm1", &probe_path, "quiet=maybe"]);
    assert_eq!(bad_value.code, 1, "{bad_value:?}");
    assert!(
        bad_value.stderr.contains("EINVAL") && bad_value.stderr.contains("quiet"),
        "{bad_value:?}"
    );
    d.cli(&["insmod", "vm1", &probe_path, "quiet=1"]).ok();
    assert!(d.cli(&["dmesg", "vm1"]).ok().stdout.contains("quiet=1)"));
    d.cli(&["rmmod", "vm1", "vesper_exit_probe"]).ok();

    // After all of that the guest still loads and unloads.
    d.cli(&["insmod", "vm1", &probe_path]).ok();
    d.cli(&["rmmod", "vm1", "vesper_exit_probe"]).ok();
    assert!(!d
        .module_names("vm1")
        .iter()
        .any(|m| m == "vesper_fail_init" || m == "vesper_exit_probe"));
}

#[test]
fn a_guest_that_stops_answering_mid_transfer_times_out_and_nothing_is_half_loaded() {
    let d = Daemon::start(&["--step-timeout-ms", "3000"]);
    d.vm_start("vm1");
    let pid = d.qemu_pid("vm1");
    let region = qemu_region(pid);
    // The newest request the guest posted, if it is a fetch of image chunk at `offset`.
    let fetching_at = || -> Option<u64> {
        use std::sync::atomic::Ordering::Acquire;
        use vesper_shared_abi::*;
        let producer = region.load_u32(REQ_RING_OFFSET, Acquire).ok()?;
        let at = slot_offset(REQ_RING_OFFSET, producer.wrapping_sub(1));
        let h: MsgHeader = region.read_obj(at).ok()?;
        let req: FetchChunkRequest = region.read_obj(at + 32).ok()?;
        (h.kind == REQ_FETCH_CHUNK).then_some(req.offset)
    };
    let big = module("vesper_big");
    let socket = d.socket.clone();
    let bin = vesper_e2e::bin_dir().join("vesper");
    let insmod = std::thread::spawn(move || {
        std::process::Command::new(bin)
            .arg("--socket")
            .arg(socket)
            .args(["insmod", "vm1", &big])
            .output()
            .unwrap()
    });
    // Freeze the whole VM once it asks for the third of its seven 1 MiB chunks.
    let deadline = Instant::now() + Duration::from_secs(60);
    while fetching_at().is_none_or(|off| off < 2 << 20) {
        assert!(Instant::now() < deadline, "transfer never started");
        std::thread::sleep(Duration::from_micros(200));
    }
    signal(pid, Signal::SIGSTOP);
    let out = vesper_e2e::CliOutput::from(insmod.join().unwrap());
    signal(pid, Signal::SIGCONT);
    assert_eq!(out.code, vesper_api::TIMEOUT_EXIT_CODE, "{out:?}");
    assert!(
        out.stderr.contains("stopped answering during transfer"),
        "{out:?}"
    );
    assert!(
        out.stderr.contains("nothing is left half-loaded"),
        "{out:?}"
    );

    // The guest wakes up, is told the transfer was cancelled, and loads nothing.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log().contains("abandoned command") {
        assert!(
            Instant::now() < deadline,
            "guest never reported back:\n{}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!d.module_names("vm1").contains(&"vesper_big".to_string()));
    let dmesg = d.cli(&["dmesg", "vm1"]).ok().stdout;
    assert!(!dmesg.contains("loaded vesper_big"), "{dmesg}");
    // And it keeps working.
    d.cli(&["insmod", "vm1", &module("vesper_exit_probe")]).ok();
    d.cli(&["rmmod", "vm1", "vesper_exit_probe"]).ok();
}

#[test]
fn vm_lifecycle_and_operator_errors() {
    let d = Daemon::start(&[]);
    let vm = d.vm_start("vm1");
    assert!(
        vm["accel"]["reason"].as_str().unwrap().len() > 3,
        "accel choice must say why"
    );
    let again = d.cli(&["vm", "start", "vm1"]);
    assert_eq!(again.code, 73, "{again:?}");
    let bad = d.cli(&["vm", "start", "../x"]);
    assert_eq!(bad.code, 65, "{bad:?}");
    let list = d.cli(&["vm", "list"]).ok().stdout;
    assert!(list.contains("vm1") && list.contains("up"), "{list}");
    d.cli(&["vm", "stop", "vm1"]).ok();
    let gone = d.cli(&["lsmod", "vm1"]);
    assert_eq!(gone.code, 68, "{gone:?}");
    assert!(d.cli(&["vm", "list"]).ok().stdout.contains("no VMs"));
    let nobody = vesper_e2e::CliOutput::from(
        std::process::Command::new(vesper_e2e::bin_dir().join("vesper"))
            .args(["--socket", "/nonexistent/vesperd.sock", "vm", "list"])
            .output()
            .unwrap(),
    );
    assert_eq!(nobody.code, 69);
    assert!(nobody.stderr.contains("cannot reach vesperd"));

    // Booting has a status code of its own (4), distinct from running and not running.
    d.cli(&["vm", "start", "vm2", "--no-wait"]).ok();
    let st = d.cli(&["--json", "vm", "status", "vm2"]);
    let state = st.json()["result"]["state"].as_str().unwrap().to_string();
    let want = if state == "booting" { 4 } else { 0 };
    assert_eq!(st.code, want, "state {state}: {st:?}");
    // A VM that does not quit when told (QEMU frozen) is killed, and `vm stop` says so,
    // returning only once the process is gone.
    let pid = d.qemu_pid("vm2");
    signal(pid, Signal::SIGSTOP);
    let stop = d.cli(&["--json", "vm", "stop", "vm2"]).ok();
    assert_eq!(stop.json()["result"]["killed"], true, "{stop:?}");
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    assert!(
        stat.is_empty() || stat.contains(") Z "),
        "QEMU still there: {stat}"
    );
    // And a reply that does not come within --timeout is a timeout, not an internal error.
    signal(d.pid() as i32, Signal::SIGSTOP);
    let late = d.cli(&["--timeout", "1", "vm", "list"]);
    signal(d.pid() as i32, Signal::SIGCONT);
    assert_eq!(late.code, vesper_api::TIMEOUT_EXIT_CODE, "{late:?}");
}
