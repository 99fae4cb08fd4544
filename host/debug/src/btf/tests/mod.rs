//! Tests of `btf.rs`.

use super::parse::*;
use super::*;
use proptest::prelude::*;

/// A tiny BTF writer: types are appended in id order (ids are predictable, so
/// forward references are just numbers).
struct Enc {
    strs: Vec<u8>,
    types: Vec<u8>,
    n: TypeId,
}

impl Enc {
    fn new() -> Enc {
        Enc {
            strs: vec![0],
            types: Vec::new(),
            n: 0,
        }
    }
    fn s(&mut self, name: &str) -> u32 {
        if name.is_empty() {
            return 0;
        }
        let off = self.strs.len() as u32;
        self.strs.extend_from_slice(name.as_bytes());
        self.strs.push(0);
        off
    }
    fn u32(&mut self, v: u32) {
        self.types.extend_from_slice(&v.to_le_bytes());
    }
    /// A raw type header; the caller appends the kind-specific data.
    fn raw(&mut self, name_off: u32, kind: u32, vlen: u32, kflag: bool, sot: u32) -> TypeId {
        self.u32(name_off);
        self.u32(vlen | (kind << 24) | (u32::from(kflag) << 31));
        self.u32(sot);
        self.n += 1;
        self.n
    }
    fn head(&mut self, name: &str, kind: u32, vlen: u32, kflag: bool, sot: u32) -> TypeId {
        let off = self.s(name);
        self.raw(off, kind, vlen, kflag, sot)
    }
    fn int(&mut self, name: &str, size: u32, enc: u32, bits: u32) -> TypeId {
        let id = self.head(name, KIND_INT, 0, false, size);
        self.u32((enc << 24) | bits);
        id
    }
    fn ptr(&mut self, target: TypeId) -> TypeId {
        self.head("", KIND_PTR, 0, false, target)
    }
    fn array(&mut self, elem: TypeId, len: u32) -> TypeId {
        let id = self.head("", KIND_ARRAY, 0, false, 0);
        self.u32(elem);
        self.u32(1);
        self.u32(len);
        id
    }
    /// Members are (name, type, raw offset word).
    fn agg(
        &mut self,
        kind: u32,
        name: &str,
        size: u32,
        kflag: bool,
        m: &[(&str, TypeId, u32)],
    ) -> TypeId {
        let id = self.head(name, kind, m.len() as u32, kflag, size);
        for &(n, t, off) in m {
            let n = self.s(n);
            self.u32(n);
            self.u32(t);
            self.u32(off);
        }
        id
    }
    fn refer(&mut self, kind: u32, name: &str, target: TypeId) -> TypeId {
        self.head(name, kind, 0, false, target)
    }
    fn enum32(&mut self, name: &str, signed: bool, vals: &[(&str, i32)]) -> TypeId {
        let id = self.head(name, KIND_ENUM, vals.len() as u32, signed, 4);
        for &(n, v) in vals {
            let n = self.s(n);
            self.u32(n);
            self.u32(v as u32);
        }
        id
    }
    fn enum64(&mut self, name: &str, vals: &[(&str, u64)]) -> TypeId {
        let id = self.head(name, KIND_ENUM64, vals.len() as u32, false, 8);
        for &(n, v) in vals {
            let n = self.s(n);
            self.u32(n);
            self.u32(v as u32);
            self.u32((v >> 32) as u32);
        }
        id
    }
    fn func_proto(&mut self, ret: TypeId, params: &[TypeId]) -> TypeId {
        let id = self.head("", KIND_FUNC_PROTO, params.len() as u32, false, ret);
        for &p in params {
            self.u32(0);
            self.u32(p);
        }
        id
    }
    fn blob(&self) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&MAGIC.to_le_bytes());
        b.push(1);
        b.push(0);
        for v in [
            24,
            0,
            self.types.len() as u32,
            self.types.len() as u32,
            self.strs.len() as u32,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&self.types);
        b.extend_from_slice(&self.strs);
        b
    }
}

/// Ids of the sample blob, for the assertions.
struct Sample {
    int: TypeId,
    char_: TypeId,
    ulong: TypeId,
    u64_: TypeId,
    cchar_ptr: TypeId,
    comm: TypeId,
    list_head: TypeId,
    demo: TypeId,
    fn_ptr: TypeId,
    demo_t: TypeId,
    dual_union: TypeId,
    dual_struct: TypeId,
    oldbits: TypeId,
    cptr_const: TypeId,
    ptr_to_array: TypeId,
}

fn sample() -> (Vec<u8>, Sample) {
    let mut e = Enc::new();
    let int = e.int("int", 4, 1, 32);
    let char_ = e.int("char", 1, 2, 8);
    let ulong = e.int("unsigned long", 8, 0, 64);
    let u64_ = e.refer(KIND_TYPEDEF, "u64", ulong);
    let cchar = e.refer(KIND_CONST, "", char_);
    let cchar_ptr = e.ptr(cchar);
    let comm = e.array(char_, 16);
    // Anonymous union { int a; u64 b; }.
    let anon = e.agg(KIND_UNION, "", 8, false, &[("a", int, 0), ("b", u64_, 0)]);
    // The fwd must not win over the struct below.
    e.head("list_head", KIND_FWD, 0, false, 0);
    let list_head = e.n + 1;
    let lh_ptr = list_head + 1;
    e.agg(
        KIND_STRUCT,
        "list_head",
        16,
        false,
        &[("next", lh_ptr, 0), ("prev", lh_ptr, 64)],
    );
    e.ptr(list_head);
    let demo = e.agg(
        KIND_STRUCT,
        "demo",
        56,
        true,
        &[
            ("head", list_head, 0),
            ("", anon, 128),
            ("comm", comm, 192),
            ("flags", int, (3 << 24) | 320),
            ("name", cchar_ptr, 384),
        ],
    );
    e.enum32(
        "pid_type",
        true,
        &[("PIDTYPE_PID", 0), ("PIDTYPE_TGID", 1), ("NEG", -1)],
    );
    e.enum64("big", &[("BIG", 1 << 32), ("HUGE", u64::MAX)]);
    let proto = e.func_proto(int, &[cchar_ptr, ulong]);
    let fn_ptr = e.ptr(proto);
    let demo_t = e.refer(KIND_TYPEDEF, "demo_t", demo);
    let dual_union = e.agg(KIND_UNION, "dual", 4, false, &[("x", int, 0)]);
    let dual_struct = e.agg(KIND_STRUCT, "dual", 4, false, &[("y", int, 0)]);
    // Old-style bitfields: a 3-bit int type, no kind_flag.
    let u3 = e.int("unsigned int", 4, 0, 3);
    let oldbits = e.agg(
        KIND_STRUCT,
        "oldbits",
        4,
        false,
        &[("lo", u3, 0), ("hi", u3, 3)],
    );
    let cptr_const = e.refer(KIND_CONST, "", cchar_ptr);
    let ptr_to_array = e.ptr(comm);
    e.refer(KIND_FUNC, "do_thing", proto);
    e.head("double", KIND_FLOAT, 0, false, 8);
    let var = e.refer(KIND_VAR, "jiffies", ulong);
    e.u32(1);
    let ds = e.head(".data", KIND_DATASEC, 1, false, 8);
    e.u32(var);
    e.u32(0);
    e.u32(8);
    e.refer(KIND_TYPE_TAG, "user", char_);
    e.refer(KIND_DECL_TAG, "tag", ds);
    e.u32(u32::MAX);
    let ids = Sample {
        int,
        char_,
        ulong,
        u64_,
        cchar_ptr,
        comm,
        list_head,
        demo,
        fn_ptr,
        demo_t,
        dual_union,
        dual_struct,
        oldbits,
        cptr_const,
        ptr_to_array,
    };
    (e.blob(), ids)
}

fn member(btf: &Btf, id: TypeId, name: &str) -> Member {
    btf.member(id, name).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn sample_blob_queries() {
    let (blob, s) = sample();
    let btf = Btf::parse(&blob).unwrap();
    assert_eq!(btf.len(), 29);
    assert!(!btf.is_empty());
    assert_eq!(btf.ty(0).unwrap(), &Type::Void);
    assert_eq!(
        btf.ty(s.char_).unwrap(),
        &Type::Int {
            name: "char".into(),
            size: 1,
            signed: false,
            is_char: true,
            is_bool: false,
            bits: 8
        }
    );
    assert_eq!(
        btf.ty(s.comm).unwrap(),
        &Type::Array {
            elem: s.char_,
            len: 16
        }
    );
    assert!(matches!(
        btf.ty(30),
        Err(BtfError::NoSuchType { id: 30, count: 29 })
    ));

    // Lookups.
    assert_eq!(btf.struct_named("list_head"), Some(s.list_head));
    assert_eq!(btf.struct_named("dual"), Some(s.dual_struct));
    assert_eq!(btf.type_named("dual"), Some(s.dual_union));
    assert_eq!(btf.type_named("u64"), Some(s.u64_));
    assert_eq!(btf.type_named("unsigned long"), Some(s.ulong));
    assert_eq!(btf.type_named("pid_type"), Some(13));
    assert_eq!(btf.type_named("double"), Some(25));
    assert_eq!(btf.type_named("do_thing"), None);
    assert_eq!(btf.struct_named("u64"), None);
    assert_eq!(btf.struct_named("nope"), None);

    // resolve / size_of.
    assert_eq!(btf.resolve(s.u64_).unwrap(), s.ulong);
    assert_eq!(btf.resolve(s.demo_t).unwrap(), s.demo);
    assert_eq!(btf.resolve(s.cptr_const).unwrap(), s.cchar_ptr);
    assert_eq!(btf.size_of(s.u64_).unwrap(), 8);
    assert_eq!(btf.size_of(s.comm).unwrap(), 16);
    assert_eq!(btf.size_of(s.list_head).unwrap(), 16);
    assert_eq!(btf.size_of(s.demo_t).unwrap(), 56);
    assert_eq!(btf.size_of(s.fn_ptr).unwrap(), 8);
    assert_eq!(btf.size_of(s.ptr_to_array).unwrap(), 8);
    assert!(matches!(
        btf.size_of(0),
        Err(BtfError::NoSize {
            id: 0,
            what: "void"
        })
    ));
    assert!(matches!(
        btf.size_of(9),
        Err(BtfError::NoSize {
            id: 9,
            what: "forward declaration"
        })
    ));

    // Members, including through the anonymous union and the bitfield.
    let head = member(&btf, s.demo_t, "head");
    assert_eq!(
        (head.type_id, head.bit_offset, head.bitfield_size),
        (s.list_head, 0, None)
    );
    let a = member(&btf, s.demo, "a");
    assert_eq!((a.type_id, a.bit_offset), (s.int, 128));
    let b = member(&btf, s.demo, "b");
    assert_eq!(
        (b.name.as_deref(), b.type_id, b.bit_offset),
        (Some("b"), s.u64_, 128)
    );
    assert_eq!(member(&btf, s.demo, "comm").bit_offset, 192);
    let flags = member(&btf, s.demo, "flags");
    assert_eq!((flags.bit_offset, flags.bitfield_size), (320, Some(3)));
    assert_eq!(member(&btf, s.demo, "name").type_id, s.cchar_ptr);
    assert_eq!(member(&btf, s.list_head, "prev").bit_offset, 64);
    let hi = member(&btf, s.oldbits, "hi");
    assert_eq!((hi.bit_offset, hi.bitfield_size), (3, Some(3)));
    assert_eq!(member(&btf, s.dual_union, "x").bit_offset, 0);

    // Names.
    assert_eq!(btf.type_name(0), "void");
    assert_eq!(btf.type_name(s.list_head), "struct list_head");
    assert_eq!(btf.type_name(s.list_head + 1), "struct list_head *");
    assert_eq!(btf.type_name(s.comm), "char [16]");
    assert_eq!(btf.type_name(s.u64_), "u64");
    assert_eq!(btf.type_name(s.cchar_ptr), "const char *");
    assert_eq!(btf.type_name(s.cptr_const), "const char *const");
    assert_eq!(btf.type_name(s.ptr_to_array), "char (*)[16]");
    assert_eq!(
        btf.type_name(s.fn_ptr),
        "int (*)(const char *, unsigned long)"
    );
    assert_eq!(btf.type_name(8), "union <anonymous>");
    assert_eq!(btf.type_name(9), "struct list_head");
    assert_eq!(
        btf.type_name(24),
        "int do_thing(const char *, unsigned long)"
    );
    assert_eq!(btf.type_name(999), "?");

    // Enum constants (signed 32-bit, and 64-bit).
    assert_eq!(btf.enum_value("PIDTYPE_PID"), Some(0));
    assert_eq!(btf.enum_value("PIDTYPE_TGID"), Some(1));
    assert_eq!(btf.enum_value("NEG"), Some(-1));
    assert_eq!(btf.enum_value("BIG"), Some(1 << 32));
    assert_eq!(btf.enum_value("HUGE"), Some(-1));
    assert_eq!(btf.enum_value("TASK_RUNNING"), None);
    let Type::Enum { signed, size, .. } = btf.ty(btf.type_named("pid_type").unwrap()).unwrap()
    else {
        panic!("pid_type is not an enum");
    };
    assert!(*signed);
    assert_eq!(*size, 4);
}

/// Calls every query on `btf` with ids and names derived from it and from `extra`.
fn exercise(btf: &Btf, extra_id: u32, extra_name: &str) {
    let n = btf.len() as u32;
    let ids = (0..=n.saturating_add(2).min(64)).chain([extra_id, u32::MAX, n]);
    let mut names = vec![extra_name.to_string(), String::new()];
    for id in ids {
        let _ = btf.ty(id);
        let _ = btf.resolve(id);
        let _ = btf.size_of(id);
        let name = btf.type_name(id);
        names.push(name);
        if let Ok(Type::Struct { members, .. } | Type::Union { members, .. }) = btf.ty(id) {
            names.extend(members.iter().filter_map(|m| m.name.clone()));
        }
        for nm in &names {
            let _ = btf.member(id, nm);
        }
        if let Err(e) = btf.member(id, extra_name) {
            let _ = e.to_string();
        }
    }
    for nm in &names {
        let _ = btf.struct_named(nm);
        let _ = btf.type_named(nm);
        let _ = btf.enum_value(nm);
    }
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        if let Ok(btf) = Btf::parse(&bytes) {
            exercise(&btf, 1, "x");
        }
    }

    #[test]
    fn arbitrary_headers_never_panic(
        hdr in proptest::collection::vec(any::<u32>(), 5),
        body in proptest::collection::vec(any::<u8>(), 0..512),
    ) {
        let mut b = vec![0x9f, 0xeb, 1, 0];
        for v in hdr {
            // Mostly small values, so the sections often land inside the blob.
            b.extend_from_slice(&(v % 600).to_le_bytes());
        }
        b.extend_from_slice(&body);
        if let Ok(btf) = Btf::parse(&b) {
            exercise(&btf, 3, "a");
        }
    }

    #[test]
    fn mutated_sample_never_panics(
        edits in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..12),
        cut in any::<Option<usize>>(),
        extra_id in any::<u32>(),
        extra_name in "[a-z_]{0,12}",
    ) {
        let (mut b, _) = sample();
        for (at, v) in edits {
            let at = at % b.len();
            b[at] = v;
        }
        if let Some(c) = cut {
            b.truncate(c % (b.len() + 1));
        }
        if let Ok(btf) = Btf::parse(&b) {
            exercise(&btf, extra_id, &extra_name);
        }
    }

    #[test]
    fn mutated_type_words_never_panic(
        edits in proptest::collection::vec((any::<usize>(), any::<u32>()), 1..8),
        extra_id in 0u32..40,
    ) {
        // Word-sized edits inside the type section hit ids, kinds and vlens whole.
        let (mut b, _) = sample();
        let type_len = u32::from_le_bytes([b[12], b[13], b[14], b[15]]) as usize;
        for (at, v) in edits {
            let at = 24 + (at % (type_len / 4)) * 4;
            let v = if v & 1 == 0 { v % 64 } else { v };
            b[at..at + 4].copy_from_slice(&v.to_le_bytes());
        }
        if let Ok(btf) = Btf::parse(&b) {
            exercise(&btf, extra_id, "comm");
        }
    }
}

#[test]
fn kernel_vmlinux() {
    let path = "/sys/kernel/btf/vmlinux";
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) => {
            crate::memory::fake::say_skipped("kernel_vmlinux", &format!("cannot read {path}: {e}"));
            return;
        }
    };
    let start = std::time::Instant::now();
    let btf = Btf::parse(&bytes).unwrap_or_else(|e| panic!("{path}: {e}"));
    eprintln!(
        "parsed {path}: {} bytes, {} types in {:?}",
        bytes.len(),
        btf.len(),
        start.elapsed()
    );

    let task = btf.struct_named("task_struct").expect("struct task_struct");
    assert!(matches!(btf.ty(task).unwrap(), Type::Struct { .. }));
    assert_eq!(btf.type_name(task), "struct task_struct");

    let lh = btf.struct_named("list_head").expect("struct list_head");
    let next = btf.member(lh, "next").unwrap();
    assert_eq!(next.bit_offset, 0);
    assert_eq!(btf.type_name(next.type_id), "struct list_head *");
    assert_eq!(btf.member(lh, "prev").unwrap().bit_offset, 64);
    assert_eq!(btf.size_of(lh).unwrap(), 16);

    let comm = btf.member(task, "comm").unwrap();
    let Type::Array { elem, len } = btf.ty(btf.resolve(comm.type_id).unwrap()).unwrap() else {
        panic!("task_struct.comm is {}", btf.type_name(comm.type_id));
    };
    assert_eq!(*len, 16);
    let Type::Int { name, size, .. } = btf.ty(btf.resolve(*elem).unwrap()).unwrap() else {
        panic!("comm element is not an int");
    };
    assert_eq!((name.as_str(), *size), ("char", 1));
    assert_eq!(btf.type_name(comm.type_id), "char [16]");
    assert_eq!(btf.size_of(comm.type_id).unwrap(), 16);

    let pid = btf.member(task, "pid").unwrap();
    let Type::Int { size, .. } = btf.ty(btf.resolve(pid.type_id).unwrap()).unwrap() else {
        panic!("task_struct.pid is {}", btf.type_name(pid.type_id));
    };
    assert_eq!(*size, 4);

    let u64_ = btf.type_named("u64").expect("u64");
    let Type::Int { size, signed, .. } = btf.ty(btf.resolve(u64_).unwrap()).unwrap() else {
        panic!("u64 is {}", btf.type_name(u64_));
    };
    assert_eq!((*size, *signed), (8, false));
    assert_eq!(btf.size_of(u64_).unwrap(), 8);

    assert!(btf.enum_value("PIDTYPE_PID").is_some());
    let missing = btf.member(task, "no_such_member").unwrap_err();
    let BtfError::NoMember { known, .. } = &missing else {
        panic!("{missing}");
    };
    assert!(!known.is_empty());

    // Every type answers every query without panicking.
    for id in 0..=btf.len() as u32 {
        let _ = btf.size_of(id);
        let _ = btf.type_name(id);
    }
}

mod refusals;
