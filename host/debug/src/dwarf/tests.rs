//! Real objects from the C compiler: layouts converted from `cc -g` DWARF must match
//! what the compiler itself says (sizeof/offsetof printed by a helper program built
//! from the same header), and broken files each give their own error.

use std::path::{Path, PathBuf};
use std::process::Command;

use gimli::constants as dw;
use object::{Object, ObjectSection};

use super::{DwarfError, DwarfFile, DwarfFiles};
use crate::btf::{Btf, BtfError, Type};

const HEADER: &str = r#"
#include <stddef.h>
typedef unsigned long long u64;
enum color { RED = 1, GREEN = -2, BLUE = 100 };
struct node { struct node *next; int value; };
struct lonely { int only_behind_a_pointer; };
union word { char bytes[3]; long whole; };
struct flags {
    unsigned int a : 3;
    unsigned int b : 5;
    int c : 9;
    unsigned char d;
    unsigned long long e : 40;
    unsigned long long f : 20;
};
struct outer {
    char tag;
    u64 id;
    struct node head;
    struct node *list;
    union word w;
    enum color color;
    struct flags flags;
    int grid[3][5];
    union { int u_int; long long u_wide; };
    struct { short s_lo; short s_hi; };
    const volatile char *name;
    struct lonely *lonely;
    int (*callback)(struct outer *, int);
    char tail[];
};
typedef struct outer outer_t;
typedef int loop_t;
"#;

const USES: &str = r#"
struct outer the_outer;
outer_t *an_outer;
loop_t a_loop;
union word a_word;
"#;

/// Prints `KEY VALUE` lines for every layout fact the test checks; bitfields are
/// found by setting one in a zeroed struct and looking at the bits that changed.
const HELPER: &str = r#"
#include <stdio.h>
#include <string.h>
#define SIZE(T) printf("size %s %zu\n", #T, sizeof(T))
#define OFF(T, M) printf("off %s.%s %zu\n", #T, #M, offsetof(T, M))
#define BITS(T, M) do { T x; memset(&x, 0, sizeof x); x.M = -1; \
    unsigned char *p = (unsigned char *)&x; size_t lo = (size_t)-1, n = 0; \
    for (size_t i = 0; i < sizeof x * 8; i++) if (p[i / 8] >> (i % 8) & 1) { if (lo == (size_t)-1) lo = i; n++; } \
    printf("bit %s.%s %zu\n", #T, #M, lo); printf("width %s.%s %zu\n", #T, #M, n); } while (0)
int main(void) {
    SIZE(struct outer); SIZE(struct node); SIZE(union word); SIZE(struct flags);
    SIZE(enum color); SIZE(outer_t); SIZE(u64);
    OFF(struct outer, tag); OFF(struct outer, id); OFF(struct outer, head);
    OFF(struct outer, list); OFF(struct outer, w); OFF(struct outer, color);
    OFF(struct outer, flags); OFF(struct outer, grid); OFF(struct outer, u_int);
    OFF(struct outer, u_wide); OFF(struct outer, s_lo); OFF(struct outer, s_hi);
    OFF(struct outer, name); OFF(struct outer, lonely); OFF(struct outer, callback); OFF(struct outer, tail);
    OFF(struct node, next); OFF(struct node, value); OFF(union word, whole);
    OFF(struct flags, d);
    BITS(struct flags, a); BITS(struct flags, b); BITS(struct flags, c);
    BITS(struct flags, e); BITS(struct flags, f);
    return 0;
}
"#;

fn cc(dir: &Path, args: &[&str]) {
    let out = Command::new("cc")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run cc (the tests need a C compiler)");
    assert!(
        out.status.success(),
        "cc {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The test objects, built once per test in a fresh directory.
struct Built {
    dir: tempfile::TempDir,
}

impl Built {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("types.h"), HEADER).unwrap();
        std::fs::write(
            dir.path().join("types.c"),
            format!("#include \"types.h\"\n{USES}"),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("helper.c"),
            format!("#include \"types.h\"\n{HELPER}"),
        )
        .unwrap();
        cc(dir.path(), &["-g", "-O0", "-c", "types.c", "-o", "types.o"]);
        Built { dir }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// What the compiler says: key → value.
    fn facts(&self) -> Vec<(String, String, u64)> {
        cc(self.dir.path(), &["-O0", "helper.c", "-o", "helper"]);
        let out = Command::new(self.path("helper")).output().unwrap();
        assert!(out.status.success());
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| {
                let (kind, rest) = l.split_once(' ').unwrap();
                let (what, v) = rest.rsplit_once(' ').unwrap();
                (kind.to_string(), what.to_string(), v.parse().unwrap())
            })
            .collect()
    }
}

fn open(p: &Path) -> DwarfFile {
    DwarfFile::open(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// Size and member facts for `ty` (a C type, possibly `T.member`) from DWARF.
fn dwarf_fact(f: &DwarfFile, kind: &str, what: &str) -> u64 {
    let (ty, member) = match what.split_once('.') {
        Some((t, m)) => (t, Some(m)),
        None => (what, None),
    };
    let c = f.type_named(ty).unwrap_or_else(|e| panic!("{ty}: {e}"));
    let btf: &Btf = &c.btf;
    match (kind, member) {
        ("size", None) => btf.size_of(c.root).unwrap(),
        (k, Some(m)) => {
            let mem = btf
                .member(c.root, m)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            match k {
                "off" => {
                    assert_eq!(mem.bit_offset % 8, 0, "{what}");
                    mem.bit_offset / 8
                }
                "bit" => mem.bit_offset,
                "width" => u64::from(mem.bitfield_size.expect("a bitfield")),
                _ => unreachable!("{k}"),
            }
        }
        _ => unreachable!("{kind} {what}"),
    }
}

#[test]
fn layouts_from_dwarf_match_the_compiler() {
    let b = Built::new();
    let f = open(&b.path("types.o"));
    assert!(f.is_relocatable());
    let facts = b.facts();
    assert!(facts.len() > 30, "{facts:?}");
    for (kind, what, want) in &facts {
        assert_eq!(dwarf_fact(&f, kind, what), *want, "{kind} {what}");
    }
    let stats = f.index_stats().unwrap();
    assert!(stats.units >= 1 && stats.names > 5, "{stats:?}");

    // Names as a reader sees them.
    let c = f.type_named("struct outer").unwrap();
    let name_of = |m: &str| c.btf.type_name(c.btf.member(c.root, m).unwrap().type_id);
    assert_eq!(name_of("grid"), "int [3][5]");
    assert_eq!(name_of("id"), "u64");
    assert_eq!(name_of("list"), "struct node *");
    // gcc nests the qualifiers either way round.
    let name = name_of("name");
    assert!(
        name.ends_with(" char *") && name.contains("const") && name.contains("volatile"),
        "{name}"
    );
    assert_eq!(name_of("tail"), "char [0]");
    assert!(
        name_of("callback").contains("(*)("),
        "{}",
        name_of("callback")
    );
    let color = c.btf.member(c.root, "color").unwrap().type_id;
    match c.btf.ty(c.btf.resolve(color).unwrap()).unwrap() {
        Type::Enum { values, signed, .. } => {
            assert_eq!(
                values,
                &[
                    ("RED".into(), 1),
                    ("GREEN".into(), -2),
                    ("BLUE".into(), 100)
                ]
            );
            assert!(*signed);
        }
        t => panic!("color is {t:?}"),
    }
    // A struct only behind a pointer is kept by name until something dereferences
    // it; one also embedded (`head`) is there in full.
    let pointee = |m: &str| {
        let Type::Ptr { target } = c.btf.ty(c.btf.member(c.root, m).unwrap().type_id).unwrap()
        else {
            panic!("{m} is not a pointer")
        };
        c.btf.ty(*target).unwrap().clone()
    };
    assert!(matches!(pointee("lonely"), Type::Fwd { name, union: false } if name == "lonely"));
    assert!(matches!(pointee("list"), Type::Struct { name: Some(n), .. } if n == "node"));

    // Variables carry their types; a typedef resolves to its struct.
    let v = f.variable("the_outer").unwrap().unwrap();
    assert_eq!(v.btf.type_name(v.root), "struct outer");
    let p = f.variable("an_outer").unwrap().unwrap();
    assert_eq!(p.btf.type_name(p.root), "outer_t *");
    assert!(f.variable("no_such_variable").unwrap().is_none());
    let t = f.type_named("outer_t").unwrap();
    assert_eq!(
        t.btf.size_of(t.root).unwrap(),
        dwarf_fact(&f, "size", "struct outer")
    );
    // C spellings of base types are DWARF's.
    assert_eq!(
        f.type_named("long long unsigned int")
            .map(|c| c.btf.size_of(c.root).unwrap())
            .unwrap(),
        8
    );
}

#[test]
fn unknown_types_and_members_are_named_errors() {
    let b = Built::new();
    let f = open(&b.path("types.o"));
    let e = f.type_named("struct nope").unwrap_err();
    assert!(
        matches!(&e, DwarfError::NoType { name, .. } if name == "struct nope"),
        "{e}"
    );
    let c = f.type_named("struct outer").unwrap();
    match c.btf.member(c.root, "nope") {
        Err(BtfError::NoMember { member, known, .. }) => {
            assert_eq!(member, "nope");
            assert!(known.contains(&"u_wide".to_string()), "{known:?}");
        }
        r => panic!("{r:?}"),
    }
}

#[test]
fn files_that_are_not_usable_dwarf_say_why() {
    let b = Built::new();
    let dir = b.dir.path();
    // No debug info.
    cc(dir, &["-O0", "-c", "types.c", "-o", "plain.o"]);
    let e = DwarfFile::open(&b.path("plain.o")).unwrap_err();
    assert!(matches!(e, DwarfError::NoDebugInfo { .. }), "{e}");
    // Compressed debug sections.
    let out = Command::new("objcopy")
        .current_dir(dir)
        .args(["--compress-debug-sections=zlib", "types.o", "z.o"])
        .output()
        .expect("objcopy (binutils)");
    assert!(out.status.success(), "{out:?}");
    let e = DwarfFile::open(&b.path("z.o")).unwrap_err();
    assert!(
        matches!(&e, DwarfError::Compressed { section, .. } if section.starts_with(".debug_")),
        "{e}"
    );
    // Truncated: the section headers are gone.
    let bytes = std::fs::read(b.path("types.o")).unwrap();
    std::fs::write(b.path("short.o"), &bytes[..bytes.len() / 2]).unwrap();
    let e = DwarfFile::open(&b.path("short.o")).unwrap_err();
    assert!(matches!(e, DwarfError::NotElf { .. }), "{e}");
    // Not ELF, empty, a directory, missing.
    std::fs::write(b.path("text"), "hello").unwrap();
    assert!(matches!(
        DwarfFile::open(&b.path("text")),
        Err(DwarfError::NotElf { .. })
    ));
    std::fs::write(b.path("empty"), "").unwrap();
    assert!(matches!(
        DwarfFile::open(&b.path("empty")),
        Err(DwarfError::NotAFile { .. })
    ));
    assert!(matches!(
        DwarfFile::open(dir),
        Err(DwarfError::NotAFile { .. })
    ));
    assert!(matches!(
        DwarfFile::open(&b.path("missing")),
        Err(DwarfError::Io { .. })
    ));
}

/// The `.debug_info` file offset, the unit start and the DIE of typedef `name`,
/// with where its `DW_AT_type` points (unit-relative).
fn typedef_die(path: &Path, name: &str) -> (usize, usize, usize, usize) {
    let f = open(path);
    let bytes = std::fs::read(path).unwrap();
    let obj = object::File::parse(&*bytes).unwrap();
    let info = obj
        .section_by_name(".debug_info")
        .unwrap()
        .file_range()
        .unwrap()
        .0 as usize;
    let dwarf = f.dwarf();
    let mut units = dwarf.units();
    while let Some(h) = units.next().unwrap() {
        let start = h.debug_info_offset().unwrap().0;
        let unit = dwarf.unit(h).unwrap();
        let mut cursor = unit.entries();
        while let Some(e) = cursor.next_dfs().unwrap() {
            let n = e
                .attr_value(dw::DW_AT_name)
                .and_then(|v| dwarf.attr_string(&unit, v).ok());
            if e.tag() == dw::DW_TAG_typedef && n.map(|s| s.slice()) == Some(name.as_bytes()) {
                let Some(gimli::AttributeValue::UnitRef(t)) = e.attr_value(dw::DW_AT_type) else {
                    panic!("{name} has no ref4 type")
                };
                return (info, start, e.offset().0, t.0);
            }
        }
    }
    panic!("no typedef {name}")
}

/// A copy of types.o whose typedef `loop_t` points at `to` (unit-relative).
fn patched(b: &Built, to: u32, file: &str) -> PathBuf {
    let src = b.path("types.o");
    let (info, unit, die, target) = typedef_die(&src, "loop_t");
    let mut bytes = std::fs::read(&src).unwrap();
    let at = info + unit + die;
    let needle = u32::try_from(target).unwrap().to_le_bytes();
    let pos = bytes[at..at + 16]
        .windows(4)
        .position(|w| w == needle)
        .expect("the DW_AT_type bytes within the DIE")
        + at;
    bytes[pos..pos + 4].copy_from_slice(&to.to_le_bytes());
    let out = b.path(file);
    std::fs::write(&out, bytes).unwrap();
    out
}

#[test]
fn bad_references_and_typedef_loops_are_named_errors() {
    let b = Built::new();
    let (_, _, die, _) = typedef_die(&b.path("types.o"), "loop_t");
    // A reference past the end of its unit.
    let f = open(&patched(&b, 0x7fff_fff0, "oob.o"));
    let e = f.type_named("loop_t").unwrap_err();
    assert!(
        matches!(&e, DwarfError::BadDie { why, .. } if why.contains("outside")),
        "{e}"
    );
    // Everything else still reads.
    assert!(f.type_named("struct outer").is_ok());
    // A typedef naming itself.
    let f = open(&patched(&b, u32::try_from(die).unwrap(), "loop.o"));
    let e = f.type_named("loop_t").unwrap_err();
    assert!(matches!(e, DwarfError::ReferenceCycle { .. }), "{e}");
    let e = f.variable("a_loop").unwrap_err();
    assert!(matches!(e, DwarfError::ReferenceCycle { .. }), "{e}");
}

#[test]
fn files_are_kept_until_they_change() {
    let b = Built::new();
    let files = DwarfFiles::new();
    let p = b.path("types.o");
    let one = files.get(&p).unwrap();
    one.index_stats().unwrap();
    let again = files.get(&p).unwrap();
    assert!(std::sync::Arc::ptr_eq(&one, &again));
    // Rewritten (another size): opened afresh.
    cc(
        b.dir.path(),
        &["-g", "-O0", "-DEXTRA", "-c", "types.c", "-o", "types2.o"],
    );
    let mut more = std::fs::read(b.path("types2.o")).unwrap();
    more.extend_from_slice(&[0; 64]);
    std::fs::write(&p, more).unwrap();
    let fresh = files.get(&p).unwrap();
    assert!(!std::sync::Arc::ptr_eq(&one, &fresh));
}

#[test]
fn a_linked_file_must_carry_the_guest_kernels_build_id() {
    let b = Built::new();
    std::fs::write(b.path("main.c"), "int main(void) { return 0; }\n").unwrap();
    cc(
        b.dir.path(),
        &["-g", "-Wl,--build-id", "types.c", "main.c", "-o", "linked"],
    );
    let f = open(&b.path("linked"));
    assert!(!f.is_relocatable());
    let id: String = f
        .build_id()
        .expect("a build-id")
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    f.check_build_id(Some(&id)).unwrap();
    f.check_build_id(Some(&id.to_uppercase())).unwrap();
    let e = f.check_build_id(Some("0123abcd")).unwrap_err();
    assert!(
        matches!(&e, DwarfError::Mismatch { what: "build-id", file, .. } if *file == id),
        "{e}"
    );
    // A guest that does not say is taken on trust; a module is never compared.
    f.check_build_id(None).unwrap();
    open(&b.path("types.o"))
        .check_build_id(Some("0123abcd"))
        .unwrap();
    // Linked, the layouts are the same.
    let c = f.type_named("struct outer").unwrap();
    assert_eq!(
        c.btf.size_of(c.root).unwrap(),
        dwarf_fact(&open(&b.path("types.o")), "size", "struct outer")
    );
}
