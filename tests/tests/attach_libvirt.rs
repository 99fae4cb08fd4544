//! A libvirt domain attached (`vesper vm attach NAME --libvirt DOMAIN`): the test runs
//! a libvirtd of its own (installed with apt if missing), defines the kit's guest as a
//! domain with the Vesper `<shmem>` device and memfd memory backing, and vesperd serves
//! the device, starts the domain through libvirt, gets `guest_up`, pushes a module,
//! reads the guest's kernel through the memfd, is restarted and adopts the domain, and
//! stops it through libvirt; `vm fence` destroys it at once. Bad input first: an unknown
//! domain, and a domain without the device (its error is the XML to add), with nothing
//! left behind.
//!
//! `cargo build --workspace --bins && cargo test -p vesper-e2e --test attach_libvirt`

use std::time::{Duration, Instant};

use vesper_e2e::attach::{domain_xml, Libvirtd};
use vesper_e2e::{module, Daemon, RunDir};

const WAIT: Duration = Duration::from_secs(120);

#[test]
fn a_libvirt_domain_is_attached_started_probed_debugged_adopted_and_stopped() {
    let tmp = tempfile::tempdir().unwrap();
    let lv = Libvirtd::start(&tmp.path().join("libvirt"));
    let d = Daemon::start(&[]);
    let run = d.run_dir.path().to_path_buf();
    let uri = lv.uri.clone();
    let serial = tmp.path().join("web1.serial");

    // Unknown domain; a domain without the Vesper device.
    let out = d.cli(&[
        "vm",
        "attach",
        "web1",
        "--libvirt",
        "nosuch",
        "--connect",
        &uri,
    ]);
    assert_eq!(out.code, 71, "{out:?}");
    assert!(out.stderr.contains("no libvirt domain nosuch"), "{out:?}");
    lv.define("plain", &domain_xml("plain", &serial, "", ""), tmp.path());
    let out = d.cli(&[
        "vm",
        "attach",
        "plain",
        "--libvirt",
        "plain",
        "--connect",
        &uri,
    ]);
    assert_eq!(out.code, 71, "{out:?}");
    for s in [
        "has no Vesper device",
        "<shmem name='vesper-plain'>",
        "<model type='ivshmem-doorbell'/>",
        "guests/plain/ivshmem.sock'/>",
        "<source type='memfd'/>",
    ] {
        assert!(out.stderr.contains(s), "{s:?} not in {}", out.stderr);
    }
    for name in ["web1", "plain"] {
        let dir = vesper_api::run_dir::of(&run, name);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
    assert_eq!(lv.state("plain"), "shut off");

    // The domain as the README says to write it.
    let ivshmem = vesper_api::run_dir::ivshmem_socket(&vesper_api::run_dir::of(&run, "web1"));
    let shmem = format!(
        "<shmem name='vesper-web1'><model type='ivshmem-doorbell'/><server path='{}'/><msi vectors='2' ioeventfd='on'/></shmem>",
        ivshmem.display()
    );
    let backing = "<memoryBacking><source type='memfd'/><access mode='shared'/></memoryBacking>";
    lv.define(
        "web1",
        &domain_xml("web1", &serial, &shmem, backing),
        tmp.path(),
    );
    let out = d.cli(&[
        "--json",
        "vm",
        "attach",
        "web1",
        "--libvirt",
        "web1",
        "--connect",
        &uri,
        "--wait",
        "180",
    ]);
    assert_eq!(out.code, 0, "{out:?}\n{}", d.log());
    let vm = out.json()["result"].clone();
    assert_eq!(vm["state"], "up", "{vm}");
    assert_eq!(vm["attached"]["how"], "libvirt", "{vm}");
    assert_eq!(vm["attached"]["ram"], "memfd", "{vm}");
    assert_eq!(lv.state("web1"), "running");
    assert_eq!(
        d.events(&["--kind", "guest_up", "--guest", "web1"]).len(),
        1
    );

    d.cli(&[
        "insmod",
        "web1",
        &module("vesper_exit_probe"),
        "watch_comm=svc",
    ])
    .ok();
    assert!(d
        .module_names("web1")
        .contains(&"vesper_exit_probe".to_string()));
    let (out, rc) = d.hand_sh("web1", "uname -r");
    assert_eq!(
        (rc, out.len()),
        (0, 1),
        "the console from the domain's XML: {out:?}"
    );
    let info = d.debug(&["info", "web1"]).result();
    assert!(
        info["ram_source"].as_str().unwrap().starts_with("memfd"),
        "{info}"
    );
    let ps = d.debug(&["ps", "web1"]).result();
    assert!(
        ps["tasks"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["comm"] == "init"),
        "{ps}"
    );
    // QMP through libvirt: pause and resume.
    d.cli(&["vm", "pause", "web1"]).ok();
    assert_eq!(lv.state("web1"), "paused");
    d.cli(&["vm", "resume", "web1"]).ok();

    // A restarted vesperd adopts it (libvirt reached again, vm.json says how).
    let run_dir = d.detach();
    let d = Daemon::start_in(RunDir::Path(run_dir.path().to_path_buf()), &[]);
    let list = d.cli(&["--json", "vm", "list"]).result();
    let v = &list["vms"][0];
    assert!(
        v["name"] == "web1" && v["adopted"].is_string() && v["attached"]["how"] == "libvirt",
        "{list}"
    );
    assert!(d
        .module_names("web1")
        .contains(&"vesper_exit_probe".to_string()));
    d.debug(&["ps", "web1"]).ok();

    // `vm stop`: libvirt's shutdown, then its destroy.
    d.cli(&["vm", "stop", "web1"]).ok();
    wait_state(&lv, "web1", "shut off");
    let list = d.cli(&["--json", "vm", "list"]).result();
    assert_eq!(list["vms"], serde_json::json!([]), "{list}");
    assert!(!vesper_api::run_dir::vm_record(&vesper_api::run_dir::of(&run, "web1")).exists());

    // Attached again, then fenced: destroyed through libvirt at once.
    let out = d.cli(&[
        "vm",
        "attach",
        "web1",
        "--libvirt",
        "web1",
        "--connect",
        &uri,
        "--wait",
        "180",
    ]);
    assert_eq!(out.code, 0, "{out:?}\n{}", d.log());
    let t = Instant::now();
    d.cli(&["vm", "fence", "web1"]).ok();
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "fence took {:?}",
        t.elapsed()
    );
    assert_eq!(lv.state("web1"), "shut off");
    d.cli(&["vm", "unfence", "web1"]).ok();
}

fn wait_state(lv: &Libvirtd, domain: &str, want: &str) {
    let deadline = Instant::now() + WAIT;
    while lv.state(domain) != want {
        assert!(
            Instant::now() < deadline,
            "{domain} never {want}: {}",
            lv.state(domain)
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}
