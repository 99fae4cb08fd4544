//! BTF tests of hostile blobs and failed queries: every header, string, type-section
//! and query refusal has its own error, and fan-out is bounded.

use super::*;

fn set_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

fn parse_err(b: &[u8]) -> BtfError {
    match Btf::parse(b) {
        Ok(_) => panic!("blob was accepted"),
        Err(e) => {
            // Every refusal must render a message.
            assert!(!e.to_string().is_empty());
            e
        }
    }
}

#[test]
fn header_refusals() {
    let (good, _) = sample();
    let mut b = good.clone();
    b[0] = 0x34;
    assert!(matches!(parse_err(&b), BtfError::BadMagic { .. }));
    let mut b = good.clone();
    b[0..2].copy_from_slice(&[0xeb, 0x9f]);
    assert_eq!(parse_err(&b), BtfError::BigEndian);
    let mut b = good.clone();
    b[2] = 2;
    assert_eq!(parse_err(&b), BtfError::BadVersion { version: 2 });
    assert!(matches!(
        parse_err(&good[..10]),
        BtfError::Truncated { len: 10, .. }
    ));
    assert!(matches!(parse_err(&[]), BtfError::Truncated { len: 0, .. }));

    let mut b = good.clone();
    set_u32(&mut b, 4, 16);
    assert!(matches!(
        parse_err(&b),
        BtfError::HeaderTooShort { hdr_len: 16, .. }
    ));
    let mut b = good.clone();
    let past = b.len() as u32 + 1;
    set_u32(&mut b, 4, past);
    assert!(matches!(parse_err(&b), BtfError::HeaderPastEnd { .. }));

    let mut b = good.clone();
    set_u32(&mut b, 12, u32::MAX);
    assert!(matches!(parse_err(&b), BtfError::TypeSectionPastEnd { .. }));
    let mut b = good.clone();
    set_u32(&mut b, 8, u32::MAX);
    assert!(matches!(parse_err(&b), BtfError::TypeSectionPastEnd { .. }));

    let mut b = good.clone();
    let str_len = u32::from_le_bytes(b[20..24].try_into().unwrap());
    set_u32(&mut b, 20, str_len + 1);
    assert!(matches!(
        parse_err(&b),
        BtfError::StringSectionPastEnd { .. }
    ));
    let mut b = good.clone();
    set_u32(&mut b, 16, u32::MAX);
    assert!(matches!(
        parse_err(&b),
        BtfError::StringSectionPastEnd { .. }
    ));

    let mut b = good.clone();
    let str_start = 24 + u32::from_le_bytes(b[16..20].try_into().unwrap()) as usize;
    b[str_start] = b'x';
    assert!(matches!(parse_err(&b), BtfError::StringSectionStart { .. }));
}

#[test]
fn string_refusals() {
    // Name offset past the section.
    let mut e = Enc::new();
    e.raw(100, KIND_STRUCT, 0, false, 0);
    assert_eq!(
        parse_err(&e.blob()),
        BtfError::NameOutOfBounds {
            type_id: 1,
            name_off: 100,
            str_len: 1
        }
    );
    // Offset exactly at the end.
    let mut e = Enc::new();
    e.s("abc");
    e.raw(5, KIND_TYPEDEF, 0, false, 0);
    assert!(matches!(
        parse_err(&e.blob()),
        BtfError::NameOutOfBounds { name_off: 5, .. }
    ));

    // A name running to the end of the section without a NUL.
    let mut e = Enc::new();
    e.strs.extend_from_slice(b"open");
    e.raw(1, KIND_TYPEDEF, 0, false, 0);
    assert_eq!(
        parse_err(&e.blob()),
        BtfError::NameNotTerminated {
            type_id: 1,
            name_off: 1
        }
    );

    // A member name, too (the error names the struct).
    let mut e = Enc::new();
    e.int("int", 4, 1, 32);
    e.agg(KIND_STRUCT, "s", 4, false, &[("x", 1, 0)]);
    e.strs.extend_from_slice(b"tail");
    let mut b = e.blob();
    let bad = e.strs.len() as u32 - 4;
    // Second struct's member record: name_off is the first word after the header.
    set_u32(&mut b, 24 + 16 + 12, bad);
    assert_eq!(
        parse_err(&b),
        BtfError::NameNotTerminated {
            type_id: 2,
            name_off: bad
        }
    );

    // Too long to be an identifier.
    let mut e = Enc::new();
    let long = "x".repeat(MAX_NAME_LEN + 1);
    e.head(&long, KIND_TYPEDEF, 0, false, 0);
    assert!(matches!(
        parse_err(&e.blob()),
        BtfError::NameTooLong { type_id: 1, .. }
    ));
    let mut e = Enc::new();
    e.head(&"y".repeat(MAX_NAME_LEN), KIND_TYPEDEF, 0, false, 0);
    Btf::parse(&e.blob()).unwrap();

    // Many records naming one long string: copies are budgeted.
    let mut e = Enc::new();
    let off = e.s(&"z".repeat(1000));
    for _ in 0..2000 {
        e.raw(off, KIND_TYPEDEF, 0, false, 0);
    }
    assert!(matches!(
        parse_err(&e.blob()),
        BtfError::NamesTooLarge { .. }
    ));
}

#[test]
fn type_section_refusals() {
    // vlen says 5 members, 1 is there.
    let mut e = Enc::new();
    e.int("int", 4, 1, 32);
    e.head("s", KIND_STRUCT, 5, false, 4);
    e.u32(0);
    e.u32(1);
    e.u32(0);
    assert_eq!(
        parse_err(&e.blob()),
        BtfError::TypePastEnd {
            type_id: 2,
            kind: KIND_STRUCT,
            offset: 24 + 16 + 12,
            need: 60,
            have: 12
        }
    );
    // Same for an enum64, a func_proto and a datasec with a huge vlen.
    for kind in [
        KIND_ENUM,
        KIND_ENUM64,
        KIND_FUNC_PROTO,
        KIND_DATASEC,
        KIND_UNION,
    ] {
        let mut e = Enc::new();
        e.head("x", kind, 0xffff, false, 4);
        assert!(matches!(
            parse_err(&e.blob()),
            BtfError::TypePastEnd { type_id: 1, .. }
        ));
    }
    // Kind data cut off (int without its u32), and a partial record.
    let mut e = Enc::new();
    e.head("int", KIND_INT, 0, false, 4);
    assert!(matches!(
        parse_err(&e.blob()),
        BtfError::TypePastEnd {
            type_id: 1,
            kind: KIND_INT,
            need: 4,
            have: 0,
            ..
        }
    ));
    let mut e = Enc::new();
    e.int("int", 4, 1, 32);
    e.u32(0);
    assert!(matches!(
        parse_err(&e.blob()),
        BtfError::TypePastEnd {
            type_id: 2,
            kind: 0,
            have: 4,
            ..
        }
    ));

    // Unknown kinds.
    for kind in [0, 20, 31] {
        let mut e = Enc::new();
        e.int("int", 4, 1, 32);
        e.head("", kind, 0, false, 0);
        assert_eq!(
            parse_err(&e.blob()),
            BtfError::UnknownKind {
                type_id: 2,
                kind,
                offset: 24 + 16
            }
        );
    }
}

#[test]
fn query_refusals() {
    let mut e = Enc::new();
    let int = e.int("int", 4, 1, 32);
    // Typedef loop A -> B -> A.
    let a = e.refer(KIND_TYPEDEF, "A", int + 2);
    let b = e.refer(KIND_TYPEDEF, "B", a);
    // A self-referencing array, and an array whose size overflows u64.
    let selfarr = e.array(b + 1, 1);
    let selfarr2 = e.array(b + 2, 2);
    let ulong = e.int("unsigned long", 8, 0, 64);
    let inner = e.array(ulong, u32::MAX);
    let outer = e.array(inner, u32::MAX);
    // A struct with a member of a broken type, and one with a dangling anonymous member.
    let s = e.agg(
        KIND_STRUCT,
        "s",
        8,
        false,
        &[("first", int, 0), ("second", int, 32)],
    );
    let dangling = e.agg(KIND_STRUCT, "d", 8, false, &[("", 999, 0)]);
    let looped = e.agg(KIND_STRUCT, "l", 8, false, &[("", a, 0)]);
    let btf = Btf::parse(&e.blob()).unwrap();

    assert_eq!(btf.resolve(a), Err(BtfError::TypeLoop { id: a }));
    assert_eq!(btf.size_of(b), Err(BtfError::TypeLoop { id: b }));
    assert_eq!(btf.member(a, "x"), Err(BtfError::TypeLoop { id: a }));
    assert_eq!(
        btf.size_of(selfarr),
        Err(BtfError::TypeLoop { id: selfarr })
    );
    assert_eq!(
        btf.size_of(outer),
        Err(BtfError::ArraySizeOverflow { id: outer })
    );
    assert_eq!(btf.size_of(inner), Ok(8 * u64::from(u32::MAX)));
    assert_eq!(
        btf.resolve(999),
        Err(BtfError::NoSuchType {
            id: 999,
            count: btf.len()
        })
    );
    assert_eq!(
        btf.member(dangling, "x"),
        Err(BtfError::NoSuchType {
            id: 999,
            count: btf.len()
        })
    );
    assert_eq!(btf.member(looped, "x"), Err(BtfError::TypeLoop { id: a }));
    // Names of broken types still come out.
    assert_eq!(btf.type_name(a), "A");
    assert!(btf.type_name(selfarr).starts_with("? [1][1][1]"));
    assert_eq!(
        btf.size_of(selfarr2),
        Err(BtfError::ArraySizeOverflow { id: selfarr2 })
    );

    assert_eq!(
        btf.member(int, "x"),
        Err(BtfError::NotAStruct {
            id: int,
            name_of_type: "int".into()
        })
    );
    let err = btf.member(s, "third").unwrap_err();
    assert_eq!(
        err,
        BtfError::NoMember {
            type_name: "struct s".into(),
            member: "third".into(),
            known: vec!["first".into(), "second".into()],
        }
    );
    assert_eq!(
        err.to_string(),
        "struct s has no member `third` (it has: first, second)"
    );
}

#[test]
fn known_list_is_capped_and_flattens_anonymous_members() {
    let mut e = Enc::new();
    let int = e.int("int", 4, 1, 32);
    let inner = e.agg(KIND_UNION, "", 4, false, &[("deep", int, 0)]);
    let names: Vec<String> = (0..40).map(|i| format!("m{i}")).collect();
    let mut m: Vec<(&str, TypeId, u32)> = vec![("", inner, 0)];
    m.extend(names.iter().map(|n| (n.as_str(), int, 0)));
    let s = e.agg(KIND_STRUCT, "big", 4, false, &m);
    let btf = Btf::parse(&e.blob()).unwrap();
    let Err(BtfError::NoMember { known, .. }) = btf.member(s, "nope") else {
        panic!("expected NoMember");
    };
    assert_eq!(known.len(), KNOWN_LIST);
    assert_eq!(known[0], "deep");
    assert_eq!(known[1], "m0");
}

#[test]
fn hostile_fanout_is_bounded() {
    // 16 levels of structs, each with 1000 anonymous members of the next level:
    // a naive search would visit 1000^16 members.
    let mut e = Enc::new();
    let int = e.int("int", 4, 1, 32);
    let mut prev = e.agg(KIND_STRUCT, "", 4, false, &[("leaf", int, 0)]);
    for _ in 0..20 {
        let m: Vec<(&str, TypeId, u32)> = (0..1000).map(|_| ("", prev, 0)).collect();
        prev = e.agg(KIND_STRUCT, "", 4, false, &m);
    }
    // A function prototype with many function-pointer parameters, nested.
    let mut proto = e.func_proto(int, &[int]);
    for _ in 0..10 {
        let p = e.ptr(proto);
        proto = e.func_proto(int, &[p; 100]);
    }
    let btf = Btf::parse(&e.blob()).unwrap();
    let start = std::time::Instant::now();
    assert!(matches!(
        btf.member(prev, "nope"),
        Err(BtfError::NoMember { .. })
    ));
    // Deeper than 16 anonymous levels is not searched.
    assert!(btf.member(prev, "leaf").is_err());
    assert!(btf.type_name(proto).len() < 1 << 20);
    assert!(start.elapsed() < std::time::Duration::from_secs(5));
}
