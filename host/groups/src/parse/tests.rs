//! Group files checked as a whole: every kind of bad input names its place.

use std::path::Path;

use super::*;

/// A minimal kernel module named `name` (modcheck's fixture).
fn tiny_module(name: &str) -> Vec<u8> {
    let modinfo = format!("license=GPL\0name={name}\0vermagic=6.1.0 SMP\0").into_bytes();
    vesper_modcheck::fixture::tiny_module(&modinfo, 62, 1)
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
    ProbeGroup::load(&file, &mut crate::no_spec_builds)
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
    let e = err(p, &format!("{head}[[module]]\nspec = \"exit.probe\"\n"));
    assert!(
        e.contains(":5:") && e.contains("member 2: spec") && e.contains("cannot be built here"),
        "{e}"
    );
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
    let e = ProbeGroup::load(&p.join("nope.toml"), &mut crate::no_spec_builds)
        .unwrap_err()
        .report();
    assert!(
        e.contains("cannot read group file") && e.contains("nope.toml"),
        "{e}"
    );
}

#[test]
fn a_spec_member_is_the_module_its_builder_made() {
    let d = dir_with(&["a", "built"]);
    let p = d.path();
    let mut asked = Vec::new();
    let built = p.join("built.ko");
    let mut builder = |spec: &Path| {
        asked.push(spec.to_path_buf());
        Ok(built.clone())
    };
    let file = p.join("group.toml");
    std::fs::write(
        &file,
        "name = \"g\"\n[[module]]\npath = \"a.ko\"\n[[module]]\nspec = \"svc.probe\"\n",
    )
    .unwrap();
    let g = ProbeGroup::load(&file, &mut builder).unwrap();
    assert_eq!(asked, [p.join("svc.probe")]);
    assert_eq!(g.modules(), ["a", "built"]);
    assert_eq!(
        g.members[1].spec.as_deref(),
        Some(p.join("svc.probe").as_path())
    );
    assert!(g.summary().contains("built (built from"), "{}", g.summary());
    // A builder's refusal names the member's place and keeps the builder's words.
    let mut failing = |_: &Path| Err("svc.probe:2:9: unknown function do_exti".to_string());
    let e = ProbeGroup::load(&file, &mut failing).unwrap_err().report();
    assert!(
        e.contains("group.toml:5:8") && e.contains("member 2") && e.contains("do_exti"),
        "{e}"
    );
}
