//! Group files checked as a whole: every kind of bad input names its place.

use std::path::Path;

use super::*;

/// A minimal ELF64 x86-64 ET_REL kernel module named `name` (modcheck's test shape).
fn tiny_module(name: &str) -> Vec<u8> {
    let modinfo = format!("license=GPL\0name={name}\0vermagic=6.1.0 SMP\0").into_bytes();
    let modinfo = &modinfo[..];
    let (machine, e_type) = (62u16, 1u16);
    let shstrtab = b"\0.modinfo\0.gnu.linkonce.this_module\0.shstrtab\0";
    let this_module = [0u8; 64];
    let mut out = vec![0u8; 64];
    let modinfo_off = out.len();
    out.extend_from_slice(modinfo);
    let this_off = out.len();
    out.extend_from_slice(&this_module);
    let strtab_off = out.len();
    out.extend_from_slice(shstrtab);
    while !out.len().is_multiple_of(8) {
        out.push(0);
    }
    let shoff = out.len();
    let sh = |name: u32, ty: u32, off: usize, size: usize| {
        let mut s = Vec::with_capacity(64);
        s.extend_from_slice(&name.to_le_bytes());
        s.extend_from_slice(&ty.to_le_bytes());
        s.extend_from_slice(&0u64.to_le_bytes()); // flags
        s.extend_from_slice(&0u64.to_le_bytes()); // addr
        s.extend_from_slice(&(off as u64).to_le_bytes());
        s.extend_from_slice(&(size as u64).to_le_bytes());
        s.extend_from_slice(&0u32.to_le_bytes()); // link
        s.extend_from_slice(&0u32.to_le_bytes()); // info
        s.extend_from_slice(&1u64.to_le_bytes()); // align
        s.extend_from_slice(&0u64.to_le_bytes()); // entsize
        s
    };
    out.extend(sh(0, 0, 0, 0));
    out.extend(sh(1, 1, modinfo_off, modinfo.len()));
    out.extend(sh(10, 1, this_off, this_module.len()));
    out.extend(sh(36, 3, strtab_off, shstrtab.len()));
    let h = &mut out[..64];
    h[..4].copy_from_slice(b"\x7fELF");
    h[4] = 2; // ELFCLASS64
    h[5] = 1; // little endian
    h[6] = 1; // version
    h[16..18].copy_from_slice(&e_type.to_le_bytes());
    h[18..20].copy_from_slice(&machine.to_le_bytes());
    h[20..24].copy_from_slice(&1u32.to_le_bytes());
    h[40..48].copy_from_slice(&(shoff as u64).to_le_bytes());
    h[52..54].copy_from_slice(&64u16.to_le_bytes()); // ehsize
    h[58..60].copy_from_slice(&64u16.to_le_bytes()); // shentsize
    h[60..62].copy_from_slice(&4u16.to_le_bytes()); // shnum
    h[62..64].copy_from_slice(&3u16.to_le_bytes()); // shstrndx
    out
}

fn dir_with(modules: &[&str]) -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    for m in modules {
        std::fs::write(d.path().join(format!("{m}.ko")), tiny_module(m)).unwrap();
    }
    d
}

fn check(dir: &Path, text: &str) -> Result<ProbeGroup, GroupError> {
    let file = dir.join("group.toml");
    std::fs::write(&file, text).unwrap();
    ProbeGroup::load(&file)
}

fn err(dir: &Path, text: &str) -> String {
    check(dir, text).unwrap_err().report()
}

#[test]
fn a_group_of_three_loads_in_order_with_its_parameters() {
    let d = dir_with(&["a", "b", "c"]);
    let g = check(
        d.path(),
        "name = \"g\"\n[[module]]\npath = \"a.ko\"\nparams = [\"x=1\"]\n\
         [[module]]\npath = \"b.ko\"\norder = -1\n[[module]]\npath = \"c.ko\"\n",
    )
    .unwrap();
    assert_eq!(g.name, "g");
    assert_eq!(g.modules(), ["b", "a", "c"]);
    assert_eq!(g.members[1].params, ["x=1"]);
    assert_eq!(g.members[0].number, 2);
    assert!(g.summary().contains("a ("), "{}", g.summary());
}

#[test]
fn bad_groups_are_refused_naming_the_line_and_member() {
    let d = dir_with(&["a", "b"]);
    let p = d.path();
    let head = "name = \"g\"\n[[module]]\npath = \"a.ko\"\n";
    let e = err(p, &format!("{head}[[module]]\npath = \"gone.ko\"\n"));
    assert!(
        e.contains("group.toml:5:8") && e.contains("member 2") && e.contains("gone.ko"),
        "{e}"
    );
    let e = err(p, &format!("{head}[[module]]\npath = \"a.ko\"\n"));
    assert!(
        e.contains(":5:") && e.contains("\"a\" again") && e.contains("member 1"),
        "{e}"
    );
    let e = err(p, &format!("{head}colour = \"red\"\n"));
    assert!(
        e.contains(":4:") && e.contains("unknown key `colour`"),
        "{e}"
    );
    let e = err(p, &format!("{head}params = [\"ok=1\", \"=bad\"]\n"));
    assert!(
        e.contains(":4:19") && e.contains("member 1 (a)") && e.contains("\"=bad\""),
        "{e}"
    );
    let e = err(p, &format!("{head}[[module]]\nspec = \"exit.spec\"\n"));
    assert!(e.contains(":5:") && e.contains("not supported yet"), "{e}");
    let e = err(p, &format!("{head}[[module]]\nparams = []\n"));
    assert!(e.contains("member 2 needs exactly one of"), "{e}");
    let e = err(p, "[[module]]\npath = \"a.ko\"\n");
    assert!(e.contains("missing key `name`"), "{e}");
    let e = err(p, "name = \"g\"\n");
    assert!(e.contains("no members"), "{e}");
    let e = err(p, "name = \"a b\"\n[[module]]\npath = \"a.ko\"\n");
    assert!(e.contains(":1:8") && e.contains("group name"), "{e}");
    std::fs::write(p.join("junk.ko"), b"not elf").unwrap();
    let e = err(p, "name = \"g\"\n[[module]]\npath = \"junk.ko\"\n");
    assert!(e.contains(":3:8") && e.contains("not an ELF"), "{e}");
    let e = err(p, &format!("{head}params = [\"{}=1\"]\n", "x".repeat(1100)));
    assert!(e.contains("limit is 1023"), "{e}");
    let e = ProbeGroup::load(&p.join("nope.toml")).unwrap_err().report();
    assert!(
        e.contains("cannot read group file") && e.contains("nope.toml"),
        "{e}"
    );
}
