//! A guest without a working frontend, end to end on real guests under QEMU: `vm start`
//! and `vm status` say why from the guest's own evidence (its console, its kernel's
//! module list in its RAM) instead of "did not connect". The kit's `/init` plays the
//! guest: `vesper.front=skip` never loads the frontend, `vesper.front=bad` has the
//! kernel refuse a copy of it as one built for another kernel.

use std::time::{Duration, Instant};

use serde_json::Value;
use vesper_e2e::{kit, CliOutput, Daemon};

/// `vesper --json vm start NAME --boot-timeout SECS --append APPEND`, and how long it took.
fn start(d: &Daemon, name: &str, secs: u64, append: &str) -> (CliOutput, Duration) {
    let t = Instant::now();
    let out = d.cli(&[
        "--json",
        "vm",
        "start",
        name,
        "--boot-timeout",
        &secs.to_string(),
        "--append",
        append,
    ]);
    (out, t.elapsed())
}

fn error_message(out: &CliOutput) -> String {
    let v: Value = out.json();
    assert_eq!(v["ok"], false, "{out:?}");
    v["error"]["message"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message: {out:?}"))
        .to_string()
}

#[test]
fn a_guest_that_never_loads_the_frontend_is_told_at_the_timeout_and_by_vm_status() {
    let d = Daemon::start(&[]);
    let release = &kit().release;
    let (out, took) = start(&d, "nofront", 20, "vesper.front=skip");
    assert_eq!(out.code, 62, "a boot timeout: {out:?}\n{}", d.log());
    assert!(took >= Duration::from_secs(20), "took {took:?}");
    let msg = error_message(&out);
    // The modules the kit's /init loaded (its drivers), counted in the guest's RAM.
    let loaded = d
        .console("nofront")
        .lines()
        .filter(|l| l.starts_with("vesper-init: loaded "))
        .count();
    assert!(loaded >= 1, "no driver loaded:\n{}", d.console("nofront"));
    let modules = match loaded {
        1 => "1 module is".to_string(),
        n => format!("{n} modules are"),
    };
    let said = format!(
        "the guest kernel {release} runs, {modules} loaded, vesper_front is not among them: \
         the frontend is not installed or not loaded at boot (install vesper-frontend, or \
         `modprobe vesper_front` in the guest)"
    );
    assert!(
        msg.starts_with(&format!(
            "nofront: the Vesper frontend did not connect within 20 s: {said} (VM left running; `vesper vm stop nofront`)."
        )),
        "{msg}"
    );
    assert!(
        msg.contains("console tail:\n") && msg.contains("vesper.front=skip"),
        "{msg}"
    );

    // vm status says the same, in JSON and to a person; the guest is not up (LSB 4).
    let st = d.cli(&["--json", "vm", "status", "nofront"]);
    assert_eq!(st.code, 4, "{st:?}");
    let v = st.json()["result"].clone();
    assert_eq!(v["state"], "booting", "{v}");
    assert_eq!(v["frontend"].as_str(), Some(said.as_str()), "{v}");
    let human = d.cli(&["vm", "status", "nofront"]);
    assert_eq!(human.code, 4, "{human:?}");
    assert!(
        human
            .stdout
            .contains(&format!("nofront: no frontend session: {said}")),
        "{human:?}"
    );
    // The VM was left running, as the message says.
    d.cli(&["vm", "stop", "nofront"]).ok();
}

#[test]
fn a_frontend_the_kernel_refuses_fails_the_start_at_once_with_its_cause() {
    let d = Daemon::start(&[]);
    let release = &kit().release;
    let (out, took) = start(&d, "badfront", 180, "vesper.front=bad");
    assert_eq!(out.code, 71, "vm_start_failed: {out:?}\n{}", d.log());
    // The refusal is on the console within seconds of boot; the 180 s are not waited.
    assert!(took < Duration::from_secs(90), "took {took:?}");
    let v: Value = out.json();
    assert_eq!(v["error"]["code"], "vm_start_failed", "{v}");
    let msg = error_message(&out);
    assert!(
        msg.starts_with(&format!(
            "badfront: the guest kernel {release} refused vesper_front as a module built for \
             another kernel (`vesper_front: disagrees about version of symbol module_layout`"
        )),
        "{msg}"
    );
    assert!(
        msg.contains(&format!(
            "install the vesper-frontend package built for {release}"
        )) && msg.contains("(VM left running; `vesper vm stop badfront`)"),
        "{msg}"
    );
    // vm status tells the same of the guest left running.
    let st = d.cli(&["--json", "vm", "status", "badfront"]);
    assert_eq!(st.code, 4, "{st:?}");
    let frontend = st.json()["result"]["frontend"].clone();
    assert!(
        frontend.as_str().is_some_and(
            |f| f.contains("refused vesper_front as a module built for another kernel")
        ),
        "{frontend}"
    );
    d.cli(&["vm", "stop", "badfront"]).ok();
}
