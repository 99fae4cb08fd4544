//! Tests of `kallsyms.rs`.

use super::*;
use crate::memory::fake::FakeMemory;
use proptest::prelude::*;
use std::cell::Cell;

// Where a Debian 12 guest had the tables.
const A_NAMES: u64 = 0xffff_ffff_aa57_5590;
const A_NUM_SYMS: u64 = 0xffff_ffff_aa57_5588;
const A_TOKEN_TABLE: u64 = 0xffff_ffff_aa6c_9d08;
const A_TOKEN_INDEX: u64 = 0xffff_ffff_aa6c_a0a0;
const A_OFFSETS: u64 = 0xffff_ffff_aa52_00b0;
const A_RELATIVE_BASE: u64 = 0xffff_ffff_aa57_5580;
const A_ADDRESSES: u64 = 0xffff_ffff_aa40_0000;
/// The base a relative table counts from (`_text`, say).
const BASE: u64 = 0xffff_ffff_a900_0000;

/// Multi-character tokens on bytes no name uses, the way scripts/kallsyms.c does;
/// printable ASCII stands for itself, and the other bytes are empty strings.
const MULTI: [(u8, &str); 6] = [
    (0x01, "Tsys_"),
    (0x02, "_call"),
    (0x03, "tdo_"),
    (0x04, "xxxxxxxxxxxxxxxx"),
    (0x80, "init"),
    (0xfe, "_rcu"),
];

fn token(b: u8) -> Vec<u8> {
    if let Some((_, s)) = MULTI.iter().find(|(t, _)| *t == b) {
        s.as_bytes().to_vec()
    } else if (0x21..0x7f).contains(&b) {
        vec![b]
    } else {
        Vec::new()
    }
}

/// The token table and its index, as scripts/kallsyms.c lays them out.
fn token_tables() -> (Vec<u8>, Vec<u8>) {
    let mut table = Vec::new();
    let mut index = Vec::new();
    for b in 0..=u8::MAX {
        index.extend_from_slice(&(table.len() as u16).to_le_bytes());
        table.extend(token(b));
        table.push(0);
    }
    (table, index)
}

/// `type letter + name`, compressed greedily, with its length prefix.
fn encode_name(full: &str) -> Vec<u8> {
    let mut bytes = full.as_bytes();
    let mut toks = Vec::new();
    while !bytes.is_empty() {
        let multi = MULTI
            .iter()
            .filter(|(_, s)| bytes.starts_with(s.as_bytes()))
            .max_by_key(|(_, s)| s.len());
        match multi {
            Some((t, s)) => {
                toks.push(*t);
                bytes = &bytes[s.len()..];
            }
            None => {
                toks.push(bytes[0]);
                bytes = &bytes[1..];
            }
        }
    }
    let n = toks.len();
    let mut out = if n < 0x80 {
        vec![n as u8]
    } else {
        assert!(n < 0x8000);
        vec![0x80 | (n & 0x7f) as u8, (n >> 7) as u8]
    };
    out.extend(toks);
    out
}

/// The raw bytes of every table, for tests to corrupt before mapping them.
#[derive(Clone, Debug)]
struct Raw {
    num_syms: Vec<u8>,
    names: Vec<u8>,
    token_table: Vec<u8>,
    token_index: Vec<u8>,
    offsets: Vec<u8>,
    relative_base: Vec<u8>,
    addresses: Vec<u8>,
    absolute: bool,
    absolute_percpu: bool,
}

impl Raw {
    /// Base-relative tables with absolute per-cpu symbols, for `(type+name, addr)`.
    fn relative(syms: &[(&str, u64)]) -> Self {
        let offsets = syms
            .iter()
            .flat_map(|&(_, addr)| {
                let off: i32 = if addr < 1 << 31 {
                    addr as i32
                } else {
                    let below = BASE.wrapping_sub(1).wrapping_sub(addr) as i64;
                    i32::try_from(below).expect("address too far from BASE")
                };
                off.to_le_bytes()
            })
            .collect();
        Self::with_addresses(syms, offsets, false)
    }

    /// Plain-address tables.
    fn absolute(syms: &[(&str, u64)]) -> Self {
        let addrs = syms.iter().flat_map(|s| s.1.to_le_bytes()).collect();
        Self::with_addresses(syms, addrs, true)
    }

    fn with_addresses(syms: &[(&str, u64)], addrs: Vec<u8>, absolute: bool) -> Self {
        let (token_table, token_index) = token_tables();
        let (offsets, addresses) = if absolute {
            (Vec::new(), addrs)
        } else {
            (addrs, Vec::new())
        };
        Raw {
            num_syms: (syms.len() as u32).to_le_bytes().to_vec(),
            names: syms.iter().flat_map(|s| encode_name(s.0)).collect(),
            token_table,
            token_index,
            offsets,
            relative_base: BASE.to_le_bytes().to_vec(),
            addresses,
            absolute,
            absolute_percpu: true,
        }
    }

    fn location(&self) -> KallsymsLocation {
        KallsymsLocation {
            names: A_NAMES,
            num_syms: A_NUM_SYMS,
            token_table: A_TOKEN_TABLE,
            token_index: A_TOKEN_INDEX,
            addresses: if self.absolute {
                Addresses::Absolute {
                    addresses: A_ADDRESSES,
                }
            } else {
                Addresses::Relative {
                    offsets: A_OFFSETS,
                    relative_base: A_RELATIVE_BASE,
                    absolute_percpu: self.absolute_percpu,
                }
            },
        }
    }

    /// Each table exactly its own size, one piece each; `without` is left out.
    fn memory(&self, without: Option<&str>) -> FakeMemory {
        let mut mem = FakeMemory::default();
        let pieces = [
            (NAMES, A_NAMES, &self.names),
            (NUM_SYMS, A_NUM_SYMS, &self.num_syms),
            (TOKEN_TABLE, A_TOKEN_TABLE, &self.token_table),
            (TOKEN_INDEX, A_TOKEN_INDEX, &self.token_index),
            (OFFSETS, A_OFFSETS, &self.offsets),
            (RELATIVE_BASE, A_RELATIVE_BASE, &self.relative_base),
            (ADDRESSES, A_ADDRESSES, &self.addresses),
        ];
        for (name, addr, bytes) in pieces {
            if Some(name) != without && !bytes.is_empty() {
                mem.put(addr, bytes.clone());
            }
        }
        mem
    }

    fn read(&self) -> Result<Kallsyms, KallsymsError> {
        Kallsyms::read(&self.memory(None), &self.location())
    }
}

fn long_name() -> String {
    // 200 one-byte tokens: needs the two-byte length.
    format!("t{}", "ab".repeat(100))
}

/// A small kernel: duplicates, aliases, per-cpu symbols, compressed and long names.
fn sample() -> Vec<(String, u64)> {
    vec![
        ("Tsys_call_init".into(), 0xffff_ffff_a900_1000),
        ("tdo_thing".into(), 0xffff_ffff_a900_2000),
        ("Tdo_thing".into(), 0xffff_ffff_a900_3000),
        ("tdo_thing".into(), 0xffff_ffff_a900_4000),
        ("tstatic_only".into(), 0xffff_ffff_a900_5000),
        ("tstatic_only".into(), 0xffff_ffff_a900_0800),
        ("Tstartup_64".into(), 0xffff_ffff_a900_0000),
        ("T_stext".into(), 0xffff_ffff_a900_0000),
        ("Dcall_rcu_data".into(), 0xffff_ffff_aa00_0000),
        ("Afixed_percpu_data".into(), 0),
        ("Dcurrent_task".into(), 0x1_b000),
        (long_name(), 0xffff_ffff_a900_6000),
        (format!("T{}", "x".repeat(100)), 0xffff_ffff_a900_7000),
    ]
}

fn refs(v: &[(String, u64)]) -> Vec<(&str, u64)> {
    v.iter().map(|(n, a)| (n.as_str(), *a)).collect()
}

fn names(syms: &[&Symbol]) -> Vec<(String, u64, char)> {
    syms.iter()
        .map(|s| (s.name.clone(), s.addr, s.kind))
        .collect()
}

fn check_sample(k: &Kallsyms) {
    let sample = sample();
    assert_eq!(k.len(), sample.len());
    assert!(!k.is_empty());
    let mut want: Vec<(String, u64, char)> = sample
        .iter()
        .map(|(full, a)| (full[1..].to_string(), *a, full.chars().next().unwrap()))
        .collect();
    want.sort_by_key(|w| w.1);
    let got: Vec<_> = k
        .symbols()
        .iter()
        .map(|s| (s.name.clone(), s.addr, s.kind))
        .collect();
    assert_eq!(got, want);
    let long = k.lookup(&long_name()[1..]).unwrap();
    assert_eq!((long.kind, long.name.len()), ('t', 200));
    assert_eq!(
        k.lookup(&"x".repeat(100)).unwrap().addr,
        0xffff_ffff_a900_7000
    );
}

#[test]
fn decodes_relative_with_percpu() {
    let raw = Raw::relative(&refs(&sample()));
    // The sample exercises both length forms and both offset signs.
    assert!(raw
        .names
        .windows(2)
        .any(|w| w == [0x80 | (201 & 0x7f), 201 >> 7]));
    let offs: Vec<i32> = raw
        .offsets
        .chunks(4)
        .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert!(offs.iter().any(|&o| o < 0) && offs.iter().any(|&o| o > 0));
    check_sample(&raw.read().unwrap());
}

#[test]
fn decodes_absolute() {
    check_sample(&Raw::absolute(&refs(&sample())).read().unwrap());
}

#[test]
fn offset_arithmetic() {
    let syms = [("Ta", 0), ("Tb", 0), ("Tc", 0), ("Td", 0)];
    let mut raw = Raw::relative(&syms);
    raw.offsets = [-1i32, 0, 5, i32::MIN]
        .iter()
        .flat_map(|o| o.to_le_bytes())
        .collect();
    let addr = |k: &Kallsyms, n: &str| k.lookup(n).unwrap().addr;
    let k = raw.read().unwrap();
    assert_eq!(addr(&k, "a"), BASE);
    assert_eq!(addr(&k, "b"), 0);
    assert_eq!(addr(&k, "c"), 5);
    assert_eq!(addr(&k, "d"), BASE.wrapping_sub(1).wrapping_add(1 << 31));
    // Without ABSOLUTE_PERCPU every offset is unsigned, up from the base.
    raw.absolute_percpu = false;
    let k = raw.read().unwrap();
    assert_eq!(addr(&k, "a"), BASE.wrapping_add(0xffff_ffff));
    assert_eq!(addr(&k, "b"), BASE);
    assert_eq!(addr(&k, "c"), BASE + 5);
    assert_eq!(addr(&k, "d"), BASE.wrapping_add(0x8000_0000));
}

#[test]
fn lookups() {
    let k = Raw::relative(&refs(&sample())).read().unwrap();
    // The global wins over static namesakes, wherever it is.
    let s = k.lookup("do_thing").unwrap();
    assert_eq!((s.kind, s.addr), ('T', 0xffff_ffff_a900_3000));
    // No global: the first.
    assert_eq!(k.lookup("static_only").unwrap().addr, 0xffff_ffff_a900_0800);
    assert_eq!(k.lookup("sys_call_init").unwrap().kind, 'T');
    assert_eq!(k.lookup("current_task").unwrap().addr, 0x1_b000);
    assert!(k.lookup("nope").is_none());
    assert!(k.lookup("").is_none());
    assert!(k.lookup("do_thin").is_none());
    assert_eq!(
        names(&k.lookup_all("do_thing")),
        vec![
            ("do_thing".into(), 0xffff_ffff_a900_2000, 't'),
            ("do_thing".into(), 0xffff_ffff_a900_3000, 'T'),
            ("do_thing".into(), 0xffff_ffff_a900_4000, 't'),
        ]
    );
    assert!(k.lookup_all("nope").is_empty());
}

#[test]
fn symbolize() {
    let k = Raw::relative(&refs(&sample())).read().unwrap();
    let at = |a| k.symbolize(a).map(|(s, off)| (s.name.clone(), off));
    assert_eq!(at(0xffff_ffff_a900_2000), Some(("do_thing".into(), 0)));
    assert_eq!(at(0xffff_ffff_a900_2abc), Some(("do_thing".into(), 0xabc)));
    // Aliases: the kernel's first.
    assert_eq!(at(0xffff_ffff_a900_0010), Some(("startup_64".into(), 0x10)));
    // Below the first symbol, and more than 1 MiB past the last.
    let k2 = Raw::relative(&[("Ta", 0xffff_ffff_a900_1000), ("Tb", 0xffff_ffff_a900_2000)])
        .read()
        .unwrap();
    assert!(k2.symbolize(0xffff_ffff_a900_0fff).is_none());
    assert!(k2.symbolize(0).is_none());
    assert_eq!(
        k2.symbolize(0xffff_ffff_a900_2000 + (1 << 20)).unwrap().1,
        1 << 20
    );
    assert!(k2
        .symbolize(0xffff_ffff_a900_2000 + (1 << 20) + 1)
        .is_none());
    assert!(k2.symbolize(u64::MAX).is_none());
    // Per-cpu offsets symbolize against per-cpu symbols.
    assert_eq!(at(0x1_b008), Some(("current_task".into(), 8)));
}

#[test]
fn prefixes() {
    let k = Raw::relative(&refs(&sample())).read().unwrap();
    let got = |p, max| {
        k.with_prefix(p, max)
            .iter()
            .map(|s| s.name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(got("do_", 10), ["do_thing", "do_thing", "do_thing"]);
    assert_eq!(got("do_", 2), ["do_thing", "do_thing"]);
    assert_eq!(
        got("s", 10),
        ["startup_64", "static_only", "static_only", "sys_call_init"]
    );
    assert_eq!(got("", 3).len(), 3);
    assert!(got("zzz", 10).is_empty());
    assert!(got("do_", 0).is_empty());
    assert_eq!(got("~", 10), Vec::<String>::new());
}

#[test]
fn from_vmcoreinfo() {
    let mut table = vec![
        ("kallsyms_names", 0xffff_ffff_aa57_5590),
        ("kallsyms_num_syms", 0xffff_ffff_aa57_5588),
        ("kallsyms_token_table", 0xffff_ffff_aa6c_9d08),
        ("kallsyms_token_index", 0xffff_ffff_aa6c_a0a0),
        ("kallsyms_offsets", 0xffff_ffff_aa52_00b0),
        ("kallsyms_relative_base", 0xffff_ffff_aa57_5580),
    ];
    let loc = |t: &[(&str, u64)]| {
        KallsymsLocation::from_vmcoreinfo(|s| t.iter().find(|e| e.0 == s).map(|e| e.1))
    };
    assert_eq!(
        loc(&table),
        Ok(KallsymsLocation {
            names: A_NAMES,
            num_syms: A_NUM_SYMS,
            token_table: A_TOKEN_TABLE,
            token_index: A_TOKEN_INDEX,
            addresses: Addresses::Relative {
                offsets: A_OFFSETS,
                relative_base: A_RELATIVE_BASE,
                absolute_percpu: true
            },
        })
    );
    let without = |name: &str| {
        table
            .iter()
            .copied()
            .filter(|e| e.0 != name)
            .collect::<Vec<_>>()
    };
    for name in [
        NAMES,
        NUM_SYMS,
        TOKEN_TABLE,
        TOKEN_INDEX,
        OFFSETS,
        RELATIVE_BASE,
    ] {
        assert_eq!(
            loc(&without(name)),
            Err(KallsymsError::NotInVmcoreinfo { symbol: name }),
            "{name}"
        );
    }
    table.retain(|e| e.0 != OFFSETS && e.0 != RELATIVE_BASE);
    table.push(("kallsyms_addresses", A_ADDRESSES));
    assert_eq!(
        loc(&table).unwrap().addresses,
        Addresses::Absolute {
            addresses: A_ADDRESSES
        }
    );
}

#[test]
fn refuses_bad_counts() {
    let mut raw = Raw::relative(&[("Ta", BASE)]);
    raw.num_syms = 0u32.to_le_bytes().to_vec();
    assert_eq!(raw.read().unwrap_err(), KallsymsError::NoSymbols);
    raw.num_syms = (MAX_SYMS + 1).to_le_bytes().to_vec();
    assert_eq!(
        raw.read().unwrap_err(),
        KallsymsError::TooManySymbols {
            count: MAX_SYMS + 1,
            max: MAX_SYMS
        }
    );
    raw.num_syms = u32::MAX.to_le_bytes().to_vec();
    assert!(matches!(
        raw.read(),
        Err(KallsymsError::TooManySymbols { .. })
    ));
}

#[test]
fn refuses_bad_tokens() {
    let raw = Raw::relative(&refs(&sample()));
    let mut bad = raw.clone();
    bad.token_index[10..12].copy_from_slice(&0xffffu16.to_le_bytes());
    assert_eq!(
        bad.read().unwrap_err(),
        KallsymsError::TokenIndexOutOfBounds {
            token: 5,
            index: 0xffff,
            bound: MAX_TOKEN_TABLE
        }
    );
    // A token pointing at bytes with no NUL anywhere in the bound.
    let mut bad = raw.clone();
    let at = bad.token_table.len() as u16;
    bad.token_table.extend(vec![b'a'; 520]);
    bad.token_index[400..402].copy_from_slice(&at.to_le_bytes());
    assert_eq!(
        bad.read().unwrap_err(),
        KallsymsError::TokenUnterminated {
            token: 200,
            index: at,
            bound: u64::from(at) + MAX_TOKEN_LEN
        }
    );
}

#[test]
fn refuses_bad_names() {
    // Too long: 600 x's are 38 tokens, well within the bytes read.
    let long = format!("T{}", "x".repeat(600));
    let raw = Raw::relative(&[(&long, BASE), ("Ta", BASE), ("Tb", BASE)]);
    assert_eq!(
        raw.read().unwrap_err(),
        KallsymsError::NameTooLong {
            index: 0,
            max: MAX_NAME_LEN
        }
    );
    // Exactly the limit is fine.
    let limit = format!("T{}", "x".repeat(MAX_NAME_LEN));
    let raw = Raw::relative(&[(&limit, BASE), ("Ta", BASE), ("Tb", BASE)]);
    assert_eq!(raw.read().unwrap().lookup(&limit[1..]).unwrap().kind, 'T');

    // Entries running past num_syms × 257 bytes: two entries of 302 bytes.
    let n = format!("T{}", "ab".repeat(150));
    let raw = Raw::relative(&[(&n, BASE), (&n, BASE)]);
    assert_eq!(
        raw.read().unwrap_err(),
        KallsymsError::NamesPastBound {
            index: 1,
            bound: 2 * 257
        }
    );

    let mut raw = Raw::relative(&[("Ta", BASE), ("Tb", BASE)]);
    raw.names[3] = 0;
    assert_eq!(
        raw.read().unwrap_err(),
        KallsymsError::EmptyName { index: 1 }
    );
    // Only a type letter.
    let raw = Raw::relative(&[("Ta", BASE), ("T", BASE)]);
    assert_eq!(
        raw.read().unwrap_err(),
        KallsymsError::EmptyName { index: 1 }
    );
    // A control character in a token.
    let mut raw = Raw::relative(&[("Ta", BASE), ("Tb", BASE)]);
    let at = u16::from_le_bytes([raw.token_index[2 * 98], raw.token_index[2 * 98 + 1]]);
    raw.token_table[usize::from(at)] = 0x07;
    assert_eq!(
        raw.read().unwrap_err(),
        KallsymsError::BadNameByte {
            index: 1,
            byte: 0x07
        }
    );
}

#[test]
fn refuses_unreadable_tables() {
    for absolute in [false, true] {
        let raw = if absolute {
            Raw::absolute(&refs(&sample()))
        } else {
            Raw::relative(&refs(&sample()))
        };
        let loc = raw.location();
        let tables: &[(&str, u64)] = if absolute {
            &[
                (NUM_SYMS, A_NUM_SYMS),
                (TOKEN_INDEX, A_TOKEN_INDEX),
                (TOKEN_TABLE, A_TOKEN_TABLE),
                (NAMES, A_NAMES),
                (ADDRESSES, A_ADDRESSES),
            ]
        } else {
            &[
                (NUM_SYMS, A_NUM_SYMS),
                (TOKEN_INDEX, A_TOKEN_INDEX),
                (TOKEN_TABLE, A_TOKEN_TABLE),
                (NAMES, A_NAMES),
                (OFFSETS, A_OFFSETS),
                (RELATIVE_BASE, A_RELATIVE_BASE),
            ]
        };
        for &(name, addr) in tables {
            match Kallsyms::read(&raw.memory(Some(name)), &loc) {
                Err(KallsymsError::Read {
                    table, addr: at, ..
                }) => {
                    assert_eq!((table, at), (name, addr))
                }
                other => panic!("{name}: {other:?}"),
            }
        }
        // A truncated address table.
        let mut short = raw.clone();
        if absolute {
            short.addresses.pop();
        } else {
            short.offsets.pop();
        }
        assert!(matches!(short.read(), Err(KallsymsError::Read { .. })));
    }
}

#[test]
fn refuses_wrapping_tables() {
    let raw = Raw::relative(&[("Ta", BASE)]);
    let mut loc = raw.location();
    loc.names = u64::MAX - 1;
    let mut mem = raw.memory(Some(NAMES));
    mem.put(u64::MAX - 1, vec![0x02]);
    assert_eq!(
        Kallsyms::read(&mem, &loc).unwrap_err(),
        KallsymsError::AddressOverflow {
            table: NAMES,
            addr: u64::MAX - 1
        }
    );
}

/// Counts reads, to check the tables are read in bulk.
struct Counting<'a>(&'a FakeMemory, Cell<usize>);

impl KernelMemory for Counting<'_> {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        self.1.set(self.1.get() + 1);
        self.0.read(addr, buf)
    }
}

#[test]
fn reads_in_bulk() {
    let syms: Vec<(String, u64)> = (0..30_000u64)
        .map(|i| {
            let kind = if i % 3 == 0 { 'T' } else { 't' };
            (format!("{kind}sys_fn_{i}_call"), BASE + 0x10 * i)
        })
        .collect();
    let raw = Raw::relative(&refs(&syms));
    assert!(raw.names.len() > 3 * CHUNK as usize);
    let mut mem = raw.memory(None);
    // Like a kernel's rodata, the names are followed by more mapped memory.
    mem.0.retain(|p| p.0 != A_NAMES);
    let mut names = raw.names.clone();
    names.resize(names.len() + 2 * CHUNK as usize, 0xaa);
    mem.put(A_NAMES, names);
    let counting = Counting(&mem, Cell::new(0));
    let k = Kallsyms::read(&counting, &raw.location()).unwrap();
    assert_eq!(k.len(), 30_000);
    assert_eq!(
        k.lookup("sys_fn_29999_call").unwrap().addr,
        BASE + 0x10 * 29_999
    );
    assert_eq!(k.lookup("sys_fn_7_call").unwrap().kind, 't');
    assert!(counting.1.get() < 40, "{} reads", counting.1.get());

    // The names end where the mapping does, at a page boundary: the read ahead
    // backs off to it.
    let mut mem = raw.memory(None);
    mem.0.retain(|p| p.0 != A_NAMES);
    let mut names = raw.names.clone();
    let end = (A_NAMES + names.len() as u64).next_multiple_of(PAGE);
    names.resize((end - A_NAMES) as usize, 0);
    mem.put(A_NAMES, names);
    let counting = Counting(&mem, Cell::new(0));
    assert_eq!(
        Kallsyms::read(&counting, &raw.location()).unwrap().len(),
        30_000
    );
    assert!(counting.1.get() < 40, "{} reads", counting.1.get());

    // Exact-size pieces (no page granularity) still decode, a little less cheaply.
    let counting = Counting(&raw.memory(None), Cell::new(0));
    assert_eq!(
        Kallsyms::read(&counting, &raw.location()).unwrap().len(),
        30_000
    );
    assert!(counting.1.get() < 100, "{} reads", counting.1.get());
}

/// Skews random bytes towards NULs and printable ASCII, which get further.
fn skew(bytes: Vec<u8>) -> Vec<u8> {
    bytes
        .into_iter()
        .map(|b| match b {
            0..=39 => 0,
            40..=159 => 0x21 + b % 0x5e,
            _ => b,
        })
        .collect()
}

/// Tables of random bytes (plain `u8` vectors: per-element unions are slow to
/// generate in debug builds).
fn random_tables() -> impl Strategy<Value = Raw> {
    // Small counts and indexes often enough to get past the first checks.
    let count = prop_oneof![0u32..40, any::<u32>()];
    let index = prop_oneof![
        prop::collection::vec(0u16..700, 256),
        prop::collection::vec(any::<u16>(), 256),
    ];
    let bytes = |max| prop::collection::vec(any::<u8>(), 0..max);
    (
        count,
        index,
        bytes(1200),
        bytes(3000),
        bytes(400),
        any::<u64>(),
        any::<(bool, bool)>(),
    )
        .prop_map(
            |(count, index, token_table, names, addrs, base, (absolute, percpu))| Raw {
                num_syms: count.to_le_bytes().to_vec(),
                names: skew(names),
                token_table: skew(token_table),
                token_index: index.iter().flat_map(|i| i.to_le_bytes()).collect(),
                offsets: if absolute { Vec::new() } else { addrs.clone() },
                relative_base: base.to_le_bytes().to_vec(),
                addresses: if absolute { addrs } else { Vec::new() },
                absolute,
                absolute_percpu: percpu,
            },
        )
}

/// The sample's real tables with a few bytes overwritten and maybe one cut short.
fn mutated_tables() -> impl Strategy<Value = Raw> {
    let edit = (0usize..7, any::<prop::sample::Index>(), any::<u8>());
    (
        any::<bool>(),
        prop::collection::vec(edit, 1..6),
        prop::option::of((0usize..7, any::<prop::sample::Index>())),
    )
        .prop_map(|(absolute, edits, cut)| {
            let sample = sample();
            let mut raw = if absolute {
                Raw::absolute(&refs(&sample))
            } else {
                Raw::relative(&refs(&sample))
            };
            for (which, at, byte) in edits {
                let t = pick(&mut raw, which);
                if !t.is_empty() {
                    let i = at.index(t.len());
                    t[i] = byte;
                }
            }
            if let Some((which, at)) = cut {
                let t = pick(&mut raw, which);
                let keep = at.index(t.len() + 1);
                t.truncate(keep);
            }
            raw
        })
}

fn pick(raw: &mut Raw, which: usize) -> &mut Vec<u8> {
    match which {
        0 => &mut raw.num_syms,
        1 => &mut raw.names,
        2 => &mut raw.token_table,
        3 => &mut raw.token_index,
        4 => &mut raw.offsets,
        5 => &mut raw.relative_base,
        _ => &mut raw.addresses,
    }
}

/// Everything a decoded table offers must work on whatever was decoded.
fn exercise(k: &Kallsyms) -> Result<(), TestCaseError> {
    for s in k.symbols().iter().take(16) {
        prop_assert!(k.lookup(&s.name).is_some());
        prop_assert!(!k.lookup_all(&s.name).is_empty());
        prop_assert!(k.symbolize(s.addr).is_some());
        prop_assert!(!k.with_prefix(&s.name, 2).is_empty());
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_tables_never_panic(raw in random_tables()) {
        if let Ok(k) = raw.read() {
            exercise(&k)?;
        }
    }

    #[test]
    fn mutated_tables_never_panic(raw in mutated_tables()) {
        if let Ok(k) = raw.read() {
            exercise(&k)?;
        }
    }

    #[test]
    fn encoded_tables_round_trip(
        names in prop::collection::vec("[a-z_]{1,40}", 1..30),
        addrs in prop::collection::vec(0u64..0x1000_0000, 30),
    ) {
        let syms: Vec<(String, u64)> = names
            .iter()
            .zip(&addrs)
            .map(|(n, a)| (format!("t{n}"), BASE + a))
            .collect();
        let k = Raw::relative(&refs(&syms)).read().unwrap();
        for (full, addr) in &syms {
            prop_assert!(k.lookup_all(&full[1..]).iter().any(|s| s.addr == *addr));
        }
    }
}
