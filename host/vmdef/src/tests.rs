use super::*;

const WEB: &str = r#"
name = "web1"
memory_mib = 1024
cpus = 2
allow_reboot = true
qemu_args = ["-device", "virtio-rng-pci"]

[boot]
firmware = "bios"

[[disk]]
path = "web1.qcow2"
snapshot = true

[[net]]
type = "user"
forwards = ["tcp::2222-:22"]
"#;

#[test]
fn a_file_reads_resolves_its_paths_and_round_trips() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("web1.toml");
    std::fs::write(&path, WEB).unwrap();
    let def = from_toml_file(&path).unwrap();
    assert_eq!(def.disks[0].path, dir.path().join("web1.qcow2"));
    assert_eq!(
        def.check("web1").unwrap(),
        BootPlan::Firmware(FirmwareKind::Bios)
    );
    let again = from_toml_str(&to_toml(&def), None).unwrap();
    assert_eq!(again, def);
}

#[test]
fn an_empty_definition_is_the_kit_test_guest() {
    let def = from_toml_str("", None).unwrap();
    assert_eq!(def, VmDefinition::default());
    assert_eq!(
        def.check("vm1").unwrap(),
        BootPlan::Kit {
            kernel: None,
            mini: false,
            mode: "freeze".into(),
            extra: None,
            tree: None,
        }
    );
}

#[test]
fn a_typo_is_named_with_its_line() {
    let e = from_toml_str("memory_mib = 512\ncpu = 2\n", Some(Path::new("/x/vm.toml")))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/x/vm.toml:2") && e.contains("unknown key `cpu`"),
        "{e}"
    );
    let e = checked("[[net]]\ntype = \"tap\"\nifname = \"a,b\"\n");
    assert!(e.contains("bad interface name"), "{e}");
}

fn checked(toml: &str) -> String {
    match from_toml_str(toml, None).and_then(|d| d.check("vm1")) {
        Ok(p) => format!("ok {p:?}"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn contradictions_each_get_their_own_error() {
    let cases = [
        ("[boot]\nfirmware = \"bios\"\n", "needs a disk"),
        (
            "[boot]\nfirmware = \"uefi\"\nkernel = \"/k\"\n[[disk]]\npath = \"/d\"\n",
            "drop --kernel",
        ),
        ("[boot]\ninitrd = \"/i\"\n", "--initrd needs --kernel"),
        (
            "[boot]\nkernel = \"/k\"\ninitrd = \"/i\"\nmode = \"hand\"\n",
            "drop it",
        ),
        ("[boot]\nkernel = \"mini\"\n", "builtin VMM"),
        (
            "vmm = \"builtin\"\n[[disk]]\npath = \"/d\"\n",
            "takes no disks",
        ),
        ("qemu_args = [\"-m\", \"4096\"]\n", "use --memory"),
        ("memory_mib = 64\n", "out of range"),
        ("name = \"other\"\n", "not \"vm1\""),
        ("[boot]\nmode = \"a b\"\n", "bad init mode"),
        (
            "[boot]\nkernel_tree = \"/t\"\ninitrd = \"/i\"\n",
            "drop --initrd",
        ),
        (
            "[boot]\nkernel_tree = \"/t\"\nfirmware = \"bios\"\n[[disk]]\npath = \"/d\"\n",
            "drop --kernel",
        ),
    ];
    for (toml, want) in cases {
        let got = checked(toml);
        assert!(got.contains(want), "{toml:?}: {got}");
    }
}

#[test]
fn a_users_kernel_and_initrd_get_exactly_their_command_line() {
    let plan =
        checked("[boot]\nkernel = \"/k\"\ninitrd = \"/i\"\nappend = \"root=/dev/vda1 ro\"\n");
    assert!(plan.contains("cmdline: \"root=/dev/vda1 ro\""), "{plan}");
    let plan = checked("[boot]\nkernel = \"/k\"\nappend = \"quiet\"\n");
    assert!(
        plan.contains("Kit") && plan.contains("extra: Some(\"quiet\")"),
        "{plan}"
    );
}

#[test]
fn files_that_are_not_there_are_named() {
    let def = from_toml_str("[[disk]]\npath = \"/nonexistent/web.qcow2\"\n", None).unwrap();
    let e = def.check_files().unwrap_err().to_string();
    assert!(e.starts_with("disk /nonexistent/web.qcow2: "), "{e}");
}

#[test]
fn a_kernel_tree_boots_its_bzimage_and_serves_its_vmlinux() {
    let tree = tempfile::tempdir().unwrap();
    std::fs::write(tree.path().join("vmlinux"), b"elf").unwrap();
    let def = from_toml_str(
        &format!("[boot]\nkernel_tree = \"{}\"\n", tree.path().display()),
        None,
    )
    .unwrap();
    let BootPlan::Kit {
        kernel, tree: t, ..
    } = def.check("dev").unwrap()
    else {
        panic!("not the kit's initramfs");
    };
    assert_eq!(kernel, Some(tree.path().join("arch/x86/boot/bzImage")));
    assert_eq!(t.as_deref(), Some(tree.path()));
    assert_eq!(def.debug_vmlinux(), Some(tree.path().join("vmlinux")));
}
