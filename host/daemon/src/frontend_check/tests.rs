//! The console matching, on lines as guests print them (the kit's from real boots).

use super::*;

const BANNER_LINE: &str = "[    0.000000] Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0) #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1\r\n";
const REL: &str = "6.1.0-57-cloud-amd64";

/// A console: the banner, then `lines` (CRLF-ended, as QEMU's serial port gives them).
fn console(lines: &[&str]) -> String {
    let mut s = format!("SeaBIOS (version 1.16.2-debian-1.16.2-1)\r\n{BANNER_LINE}");
    for l in lines {
        s.push_str(l);
        s.push_str("\r\n");
    }
    s
}

fn refused(lines: &[&str]) -> Option<String> {
    let text = console(lines);
    refusal(&evidence(&text), console_release(&text).as_deref())
}

fn running(modules: &[&str], log: &[&str]) -> Ram {
    Ram::Kernel(KernelView {
        release: REL.into(),
        stage: Stage::Running,
        modules: Ok(modules
            .iter()
            .map(|m| (m.to_string(), "live".to_string()))
            .collect()),
        log: log.iter().map(|l| l.to_string()).collect(),
    })
}

#[test]
fn a_kit_boot_whose_frontend_loads_shows_no_refusal() {
    // The unsigned module's taint is a warning: the kernel loads it.
    let ok = [
        "[    3.512379] vesper_front: loading out-of-tree module taints kernel.",
        "[    3.514829] vesper_front: module verification failed: signature and/or required key missing - tainting kernel",
        "[    3.551873] vesper_front: loader ready (kallsyms_lookup_name at kallsyms_lookup_name+0x0/0xd0)",
        "[    3.560343] vesper_front: 0000:00:01.0: bound to Vesper region of 8388608 bytes (MSI-X)",
        "[    3.566066] vesper_front: host v1, generation 1, chunk 1048576 bytes, host max image 33554432",
        "vesper-init: frontend loaded (/lib/vesper/vesper_front.ko)",
    ];
    assert_eq!(evidence(&console(&ok)), vec![]);
    assert_eq!(refused(&ok), None);
}

#[test]
fn a_module_built_for_another_kernel_is_refused_with_the_kernels_words() {
    let why = refused(&[
        "[    3.460459] vesper_front: disagrees about version of symbol module_layout",
        "vesper-init: FRONTEND NOT LOADED: insmod /tmp/vesper_front.ko failed (exit 8): insmod: can't insert '/tmp/vesper_front.ko': invalid module format",
    ])
    .expect("a refusal");
    assert!(
        why.starts_with(&format!(
            "the guest kernel {REL} refused vesper_front as a module built for another kernel (`vesper_front: disagrees about version of symbol module_layout`, `vesper-init: FRONTEND NOT LOADED"
        )),
        "{why}"
    );
    assert!(
        why.contains(&format!(
            "install the vesper-frontend package built for {REL}"
        )),
        "{why}"
    );
    for other_kernel in [
        "[    4.1] vesper_front: version magic '6.1.0-50-cloud-amd64 SMP preempt mod_unload modversions ' should be '6.1.0-57-cloud-amd64 SMP preempt mod_unload modversions '",
        "[    4.1] vesper_front: Unknown symbol relay_open (err -2)",
        "[    4.1] vesper_front: .gnu.linkonce.this_module section size must match the kernel's built struct module size at run time",
        "insmod: ERROR: could not insert module vesper_front.ko: Invalid module format",
        "modprobe: ERROR: could not insert 'vesper_front': Exec format error",
    ] {
        let why = refused(&[other_kernel]).unwrap_or_else(|| panic!("{other_kernel}"));
        assert!(why.contains("built for another kernel"), "{why}");
    }
}

#[test]
fn signature_enforcement_is_told_from_the_kernel_and_the_tool() {
    let why = refused(&[
        "[    2.9] Loading of unsigned module is rejected",
        "modprobe: ERROR: could not insert 'vesper_front': Key was rejected by service",
    ])
    .expect("a refusal");
    assert!(
        why.starts_with(&format!("the guest kernel {REL} refused vesper_front for its signature (`modprobe: ERROR: could not insert 'vesper_front': Key was rejected by service`, `Loading of unsigned module is rejected`)")),
        "{why}"
    );
    assert!(
        why.contains("sign vesper_front.ko") && why.contains("module.sig_enforce=1"),
        "{why}"
    );
    // systemd-modules-load's words, alone.
    let why = refused(&[
        "systemd-modules-load[180]: Failed to insert module 'vesper_front': Required key not available",
    ])
    .expect("a refusal");
    assert!(why.contains("for its signature"), "{why}");
}

#[test]
fn lockdown_refines_a_bare_eperm() {
    let why = refused(&[
        "[    2.9] Lockdown: insmod: unsigned module loading is restricted; see man kernel_lockdown.7",
        "insmod: ERROR: could not insert module /lib/modules/vesper_front.ko: Operation not permitted",
    ])
    .expect("a refusal");
    assert!(
        why.starts_with(&format!("the guest kernel {REL} is in lockdown mode")),
        "{why}"
    );
    assert!(why.contains("Secure Boot off"), "{why}");
    // Without the kernel's word, EPERM is all there is.
    let why = refused(&[
        "insmod: ERROR: could not insert module vesper_front.ko: Operation not permitted",
    ])
    .expect("a refusal");
    assert!(why.contains("did not permit loading vesper_front"), "{why}");
}

#[test]
fn a_refusal_without_the_modules_name_alone_fails_nothing_but_hints() {
    let lines = ["[    2.9] Loading of unsigned module is rejected"];
    assert_eq!(refused(&lines), None);
    let why = diagnose(&console(&lines), &running(&["pvpanic", "virtio_net"], &[]));
    assert!(
        why.starts_with(&format!("the guest kernel {REL} runs, 2 modules are loaded, vesper_front is not among them: the frontend is not installed or not loaded at boot (install vesper-frontend, or `modprobe vesper_front` in the guest); the kernel did refuse a module during boot (`Loading of unsigned module is rejected`): if that was vesper_front, it enforces module signatures")),
        "{why}"
    );
}

#[test]
fn the_kernel_log_in_ram_counts_when_the_console_is_quiet() {
    // A guest booted with `quiet`: only the printk ring has the kernel's words.
    let ram = running(
        &["pvpanic"],
        &["vesper_front: disagrees about version of symbol module_layout"],
    );
    let why = diagnose("", &ram);
    assert!(
        why.starts_with(&format!(
            "the guest kernel {REL} refused vesper_front as a module built for another kernel"
        )),
        "{why}"
    );
}

#[test]
fn not_installed_says_for_which_kernel() {
    let why = refused(&[&format!(
        "modprobe: FATAL: Module vesper_front not found in directory /lib/modules/{REL}"
    )])
    .expect("a refusal");
    assert!(
        why.starts_with(&format!(
            "vesper_front is not installed for the guest kernel {REL}"
        )),
        "{why}"
    );
    let why = refused(&[
        "vesper-init: FRONTEND NOT LOADED: /lib/vesper/vesper_front.ko is missing from the initramfs",
    ])
    .expect("a refusal");
    assert!(why.contains("not installed"), "{why}");
}

#[test]
fn an_abi_mismatch_names_both_versions() {
    let why = refused(&[
        "[    3.56] vesper_front: 0000:00:01.0: Vesper ABI 2, this frontend speaks 1, not binding",
    ])
    .expect("a refusal");
    assert!(
        why.starts_with(
            "the guest's vesper_front speaks Vesper ABI 1 and this vesperd's region is ABI 2"
        ),
        "{why}"
    );
    let info = GuestInfo {
        kernel_release: REL.into(),
        vermagic: String::new(),
        nr_cpus: 1,
        region_size: 0,
        generation: 1,
    };
    let why = hello_refusal(&info, 7);
    assert!(
        why.contains("speaks frontend protocol version 7, this vesperd speaks version 1"),
        "{why}"
    );
}

#[test]
fn a_failed_start_up_is_a_refusal_but_a_device_not_bound_is_not() {
    let why = refused(&[
        "[    3.56] vesper_front: host refused HELLO: -71",
        "[    3.56] vesper_front: start-up failed (-71), frontend idle",
    ])
    .expect("a refusal");
    assert!(why.contains("its start-up failed"), "{why}");
    // Another ivshmem device is not Vesper's: the frontend may bind the next one.
    let other = ["[    3.5] vesper_front: 0000:00:05.0: ivshmem region magic 0x0 is not Vesper's, not binding"];
    assert_eq!(refused(&other), None);
    let why = diagnose(&console(&other), &running(&["vesper_front"], &[]));
    assert!(
        why.starts_with(&format!("vesper_front is loaded in the guest kernel {REL} (live) but has not said hello: it did not bind the Vesper device (`vesper_front: 0000:00:05.0: ivshmem region magic 0x0 is not Vesper's, not binding`)")),
        "{why}"
    );
}

#[test]
fn only_the_last_boot_counts() {
    let mut text =
        console(&["[    3.4] vesper_front: disagrees about version of symbol module_layout"]);
    text.push_str(&console(&[
        "vesper-init: frontend loaded (/lib/vesper/vesper_front.ko)",
    ]));
    assert_eq!(refusal(&evidence(&text), None), None);
}

#[test]
fn the_boot_stage_is_said_when_there_is_no_refusal() {
    assert_eq!(
        diagnose(
            "SeaBIOS (version 1.16.2)\r\n",
            &Ram::NoKernel("no VMCOREINFO".into())
        ),
        "no guest kernel found in its RAM yet: the guest is in its firmware or bootloader"
    );
    let booting = Ram::Kernel(KernelView {
        release: REL.into(),
        stage: Stage::Booting,
        modules: Ok(Vec::new()),
        log: Vec::new(),
    });
    assert_eq!(
        diagnose(&console(&[]), &booting),
        format!("the guest kernel {REL} is still booting (user space has not started yet)")
    );
    let one = diagnose(&console(&[]), &running(&["pvpanic"], &[]));
    assert!(
        one.contains("runs, 1 module is loaded, vesper_front is not among them"),
        "{one}"
    );
    let not_read = diagnose(&console(&[]), &Ram::NotRead("a builtin VM".into()));
    assert!(
        not_read.starts_with(&format!("the guest kernel {REL} booted and nothing on its console says vesper_front loaded or failed")),
        "{not_read}"
    );
}

#[test]
fn timestamps_and_line_ends_are_not_part_of_the_line() {
    assert_eq!(
        strip_timestamp("[    3.460459] vesper_front: x\r"),
        "vesper_front: x"
    );
    assert_eq!(strip_timestamp("[  OK  ] Started x"), "[  OK  ] Started x");
    assert_eq!(console_release(&console(&[])).as_deref(), Some(REL));
}

fn booting_status(console: &std::path::Path) -> VmStatus {
    VmStatus {
        name: "vm1".into(),
        state: "booting".into(),
        pid: None,
        vmm: vesper_api::Vmm::Qemu,
        accel: vesper_api::AccelChoice {
            accel: vesper_qemu::Accel::Tcg,
            reason: "test".into(),
        },
        guest: None,
        console_log: console.to_path_buf(),
        boot_secs: None,
        failure: None,
        memory_mib: 512,
        attached: None,
        adopted: None,
        frontend: None,
    }
}

#[tokio::test]
async fn vm_starts_wait_ends_at_a_refusal_on_the_console_or_a_refused_hello() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("console.log");
    let status = Mutex::new(booting_status(&log));
    // Nothing yet: the wait goes on.
    std::fs::write(&log, console(&["vesper-init: kernel 6.1.0-57-cloud-amd64"])).unwrap();
    let wait = tokio::time::timeout(
        std::time::Duration::from_millis(600),
        live::refused(&log, &status),
    );
    assert!(wait.await.is_err(), "no refusal yet");
    // The kernel refuses the module: the wait ends with the diagnosis.
    std::fs::write(
        &log,
        console(&["[    3.4] vesper_front: disagrees about version of symbol module_layout"]),
    )
    .unwrap();
    let why = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        live::refused(&log, &status),
    )
    .await
    .expect("the refusal is seen");
    assert!(why.contains("built for another kernel"), "{why}");
    // A hello refused for its version is shown at once, both versions named.
    std::fs::write(&log, console(&[])).unwrap();
    let info = GuestInfo {
        kernel_release: REL.into(),
        vermagic: String::new(),
        nr_cpus: 1,
        region_size: 0,
        generation: 1,
    };
    hello_refused("vm1", &status, &info, 2);
    let why = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        live::refused(&log, &status),
    )
    .await
    .expect("the refused hello is seen");
    assert!(
        why.contains("speaks frontend protocol version 2, this vesperd speaks version 1"),
        "{why}"
    );
    assert_eq!(
        status.lock().unwrap().frontend.as_deref(),
        Some(why.as_str())
    );
}
