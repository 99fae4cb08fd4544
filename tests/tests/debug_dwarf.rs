//! `vesper debug read --vmlinux`: types from the kit's debug vmlinux (Debian's `-dbg`
//! DWARF) must give the same answers as the guest kernel's own BTF on the kit's real
//! guest — globals, nested members, a pointer followed, a cast at an address — and a
//! kernel module's DWARF serves casts too. A wrong member and a file without DWARF
//! get clear errors; a second read does not index the file again; a vmcore read in
//! the CLI takes `--vmlinux` as well.

use serde_json::Value;
use vesper_e2e::{debug_vmlinux, module, Daemon};

/// Same value, address and size from both sources.
#[track_caller]
fn same(d: &Daemon, vmlinux: &str, expr: &str) -> Value {
    let btf = d.debug(&["read", "vm1", expr]).result();
    let dwarf = d
        .debug(&["read", "vm1", expr, "--vmlinux", vmlinux])
        .result();
    for key in ["value", "address", "size"] {
        assert_eq!(
            btf[key], dwarf[key],
            "{expr}: {key}\nBTF:   {btf}\nDWARF: {dwarf}"
        );
    }
    dwarf
}

#[test]
fn dwarf_types_from_the_debug_vmlinux_read_as_btf_does() {
    let test = "dwarf_types_from_the_debug_vmlinux_read_as_btf_does";
    let Some(vmlinux) = debug_vmlinux(test) else {
        return;
    };
    let v = vmlinux.to_str().expect("a UTF-8 path");
    let d = Daemon::start(&[]);
    d.vm_start("vm1");

    // The first read maps and indexes the 590 MB file.
    let comm = same(&d, v, "init_task.comm");
    assert_eq!(comm["value"], "swapper/0", "{comm}");
    assert_eq!(comm["type"], "char [16]", "{comm}");
    // Nested members, through anonymous structs and into embedded ones.
    same(&d, v, "init_task.thread.sp");
    same(&d, v, "init_task.mm");
    same(&d, v, "init_task.pid");
    same(&d, v, "init_uts_ns.name");
    // `->` into a struct the root only points at (converted when dereferenced).
    // (Not `active_mm`: the idle task's changes under a reader.)
    let uts = same(&d, v, "init_task.nsproxy->uts_ns");
    assert!(
        uts["value"].as_str().unwrap().ends_with("<init_uts_ns>"),
        "{uts}"
    );
    same(&d, v, "init_task.tasks.next->next");
    // A cast at an address.
    let addr = d.debug(&["sym", "vm1", "init_task"]).result()["symbols"][0]["addr"]
        .as_u64()
        .unwrap();
    let cast = format!("*(struct task_struct *){addr:#x}.comm");
    assert_eq!(same(&d, v, &cast)["value"], "swapper/0");
    same(&d, v, &format!("*(struct task_struct *){addr:#x}.thread"));
    // jiffies: DWARF knows its type (volatile); the value lies between BTF reads.
    let btf_jiffies = || d.debug(&["read", "vm1", "jiffies"]).result()["value"].as_u64();
    let before = btf_jiffies().unwrap();
    let dw = d
        .debug(&["read", "vm1", "jiffies", "--vmlinux", v])
        .result();
    let after = btf_jiffies().unwrap();
    let j = dw["value"].as_u64().unwrap();
    assert!(before <= j && j <= after, "{before} <= {j} <= {after}");
    assert_eq!(dw["type"], "volatile long unsigned int", "{dw}");

    // The file was indexed once, however many reads used it.
    let log = d.log();
    // ... and its build-id was compared with the guest kernel's.
    assert!(!log.contains("no build-id to compare"), "{log}");
    assert_eq!(
        log.matches("DWARF names indexed").count(),
        1,
        "indexed more than once:\n{log}"
    );

    // A member the type does not have.
    let out = d.debug(&["read", "vm1", "init_task.no_such_field", "--vmlinux", v]);
    assert_eq!(out.code, 65, "{out:?}");
    let msg = out.json()["error"]["message"].to_string();
    assert!(
        msg.contains("no_such_field") && msg.contains("task_struct"),
        "{msg}"
    );
    // A type the file does not have.
    let out = d.debug(&[
        "read",
        "vm1",
        "*(struct no_such_type *)0x1000",
        "--vmlinux",
        v,
    ]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(
        out.stdout.contains("no type \\\"struct no_such_type\\\""),
        "{out:?}"
    );

    // A module built without -g: an ELF with no DWARF.
    let plain = module("vesper_big");
    let out = d.debug(&["read", "vm1", "init_task.comm", "--vmlinux", &plain]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(out.stdout.contains("has no DWARF"), "{out:?}");
    // Not ELF at all (the compressed kernel image).
    let bz = vmlinux.with_file_name("vmlinuz");
    let out = d.debug(&["read", "vm1", "jiffies", "--vmlinux", bz.to_str().unwrap()]);
    assert_eq!(out.code, 65, "{out:?}");
    assert!(
        out.stdout.contains("not a little-endian 64-bit ELF"),
        "{out:?}"
    );

    // A module's DWARF (relocated on load) serves a cast at an address.
    let front = module("vesper_front");
    let m = d
        .debug(&["read", "vm1", &cast, "--vmlinux", &front])
        .result();
    assert_eq!(m["value"], "swapper/0", "{m}");

    // A vmcore, read in the CLI, with the same file.
    let dump = d.debug(&["dump", "vm1", "--name", "dwarf.vmcore"]).result();
    let core = dump["dump"]["path"].as_str().unwrap().to_string();
    let from_core = d
        .debug(&["read", &core, "init_task.comm", "--vmlinux", v])
        .result();
    assert_eq!(from_core["value"], "swapper/0", "{from_core}");
}
