//! `definition = "FILE"` on a `[[guest]]`: the VM definition file it names, read and
//! checked with the policy, its memory what the capacity checks count.

use std::path::PathBuf;

use super::*;

/// The standby of the end-to-end test: a kit guest in hand mode with a virtio-rng.
const STANDBY: &str =
    "memory_mib = 384\nqemu_args = [\"-device\", \"virtio-rng-pci\"]\n\n[boot]\nmode = \"hand\"\n";

/// A directory holding `policy.toml` (HOST, then `guests`) and the definition files.
struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new(guests: &str, definitions: &[(&str, &str)]) -> Files {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("policy.toml"), format!("{HOST}{guests}")).unwrap();
        for (name, text) in definitions {
            std::fs::write(dir.path().join(name), text).unwrap();
        }
        Files { dir }
    }

    fn policy(&self) -> PathBuf {
        self.dir.path().join("policy.toml")
    }

    fn load(&self) -> Result<Policy, PolicyError> {
        Policy::load(&self.policy())
    }

    fn err(&self) -> PolicyError {
        match self.load() {
            Ok(p) => panic!("accepted:\n{}", p.summary()),
            Err(e) => e,
        }
    }
}

/// Asserts the message with its causes names every word in `words`.
fn reports(e: &PolicyError, words: &[&str]) {
    let m = e.report();
    for w in words {
        assert!(m.contains(w), "{m:?} lacks {w:?}");
    }
}

const WEB2: &str = "[[guest]]\nname = \"web2\"\ndefinition = \"web2.toml\"\n";

#[test]
fn a_guest_defined_by_a_file_takes_its_machine_from_it() {
    let f = Files::new(WEB2, &[("web2.toml", STANDBY)]);
    let p = f.load().unwrap();
    let web2 = p.guest("web2").unwrap();
    let d = web2.definition.as_ref().expect("its definition");
    assert_eq!(d.path, f.dir.path().join("web2.toml"));
    assert_eq!(d.at.line, Some((6, 14)));
    assert_eq!(
        (
            web2.memory_mib,
            web2.cpus,
            web2.mode.as_str(),
            web2.vmm.as_str()
        ),
        (384, 1, "hand", "qemu")
    );
    let summary = p.summary();
    assert!(
        summary.contains(&format!(
            "guest web2: 384 MiB, 1 cpu, vmm qemu, as defined in {}",
            d.path.display()
        )),
        "{summary}"
    );
    // Without `definition`, memory_mib is still required.
    let f = Files::new("[[guest]]\nname = \"web2\"\n", &[]);
    let e = f.err();
    assert!(
        matches!(&e, PolicyError::File(TomlFileError::MissingKey { key, .. }) if key == "memory_mib"),
        "{e:?}"
    );
}

#[test]
fn a_missing_definition_file_is_named_at_the_policy_line() {
    let f = Files::new(WEB2, &[]);
    let e = f.err();
    assert!(
        matches!(&e, PolicyError::BadDefinition { guest, .. } if guest == "web2"),
        "{e:?}"
    );
    reports(
        &e,
        &[
            &format!("{}:6:14", f.policy().display()),
            "\"web2\"",
            "cannot read VM definition file",
            "web2.toml",
            "No such file",
        ],
    );
}

#[test]
fn a_bad_definition_is_refused_with_its_own_error() {
    // Its own syntax: a typo, placed in the definition file.
    let f = Files::new(WEB2, &[("web2.toml", "memory_mib = 384\nmemroy = 1\n")]);
    let e = f.err();
    assert!(matches!(e, PolicyError::BadDefinition { .. }), "{e:?}");
    reports(
        &e,
        &[
            "policy.toml:6:14",
            &format!("{}:2", f.dir.path().join("web2.toml").display()),
            "memroy",
        ],
    );
    // Its checks, as VM web2.
    let f = Files::new(WEB2, &[("web2.toml", "name = \"web9\"\n")]);
    reports(
        &f.err(),
        &["policy.toml:6:14", "of VM \"web9\", not \"web2\""],
    );
    let f = Files::new(WEB2, &[("web2.toml", "qemu_args = [\"-m\", \"1G\"]\n")]);
    reports(&f.err(), &["policy.toml:6:14", "-m is Vesper's to set"]);
    // Every file it names must be there (relative to the definition file).
    let f = Files::new(
        WEB2,
        &[(
            "web2.toml",
            "[boot]\nfirmware = \"bios\"\n[[disk]]\npath = \"web2.qcow2\"\n",
        )],
    );
    reports(
        &f.err(),
        &[
            "policy.toml:6:14",
            &format!("disk {}", f.dir.path().join("web2.qcow2").display()),
        ],
    );
}

#[test]
fn machine_keys_beside_a_definition_are_refused_where_they_stand() {
    for (key, value) in [
        ("memory_mib", "512"),
        ("cpus", "2"),
        ("mode", "\"hand\""),
        ("vmm", "\"qemu\""),
        ("kernel", "\"bzImage\""),
    ] {
        let guest = format!("{WEB2}{key} = {value}\n");
        let f = Files::new(&guest, &[("web2.toml", STANDBY)]);
        let e = f.err();
        assert!(
            matches!(&e, PolicyError::KeyBesideDefinition { key: k, .. } if *k == key),
            "{e:?}"
        );
        reports(
            &e,
            &[
                "policy.toml:7:",
                &format!("`{key}` and `definition`"),
                "web2.toml holds",
                "set it there",
            ],
        );
    }
    let f = Files::new("[[guest]]\nname = \"web2\"\ndefinition = \" \"\n", &[]);
    reports(
        &f.err(),
        &["policy.toml:6:14", "empty VM definition file name"],
    );
}

#[test]
fn the_capacity_checks_count_the_definitions_memory() {
    // Too big for the host on its own: placed at `definition`.
    let f = Files::new(WEB2, &[("web2.toml", "memory_mib = 8192\n")]);
    let e = f.err();
    assert!(
        matches!(
            e,
            PolicyError::GuestTooBig {
                memory_mib: 8192,
                max_memory_mib: 4096,
                ..
            }
        ),
        "{e:?}"
    );
    reports(&e, &["policy.toml:6:14", "\"web2\"", "8192 MiB"]);
    // A standby that keeps the primary running must fit beside it: 2048 + 3072 > 4096.
    let guests = "[[guest]]\nname = \"web1\"\nmemory_mib = 2048\n\n[[guest]]\nname = \"web2\"\ndefinition = \"web2.toml\"\n\n[[group]]\nname = \"web\"\nprimary = \"web1\"\nstandbys = [\"web2\"]\n\n[[rule]]\non = \"service_exit\"\naction = \"start_standby\"\n";
    let f = Files::new(guests, &[("web2.toml", "memory_mib = 3072\n")]);
    let e = f.err();
    assert!(
        matches!(
            e,
            PolicyError::FailoverCannotFit {
                need_mib: 5120,
                max_memory_mib: 4096,
                ..
            }
        ),
        "{e:?}"
    );
    let f = Files::new(guests, &[("web2.toml", "memory_mib = 2048\n")]);
    assert_eq!(f.load().unwrap().guest("web2").unwrap().memory_mib, 2048);
}
