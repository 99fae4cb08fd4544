//! `vesper debug read EXPR`: a small C-like expression over kernel symbols and BTF
//! types, evaluated to an address and a type, then read and rendered.
//!
//! ```text
//! jiffies                       a symbol (type from the table below, else unsigned long)
//! init_task.comm                a member, through nested and anonymous structs
//! init_task.mm->pgd             `->` follows a pointer member
//! (struct uts_namespace)init_uts_ns.name.release   the symbol's type, given
//! *(struct task_struct *)0xffff888003a8c000        an object at an address
//! 0xffffffff81000000            raw bytes at an address (unsigned long)
//! ```
//! BTF has no types for global variables, so a symbol's type comes from a cast, or a
//! short table of well-known ones; anything else reads as `unsigned long`. With
//! DWARF (`--vmlinux`) a global's type is its variable DIE's, and the types come from
//! the file as small graphs per root (`crate::dwarf`); the evaluation is the same.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use crate::btf::{Btf, Type, TypeId};
use crate::dwarf::{Converted, DwarfFile};
use crate::error::DebugError;
use crate::kernel::Kernel;
use crate::memory::KernelMemory;

/// Where the kernel half of the address space starts.
const KERNEL_HALF: u64 = 0xff00_0000_0000_0000;
/// Largest object `read` copies out.
pub const MAX_READ: u64 = 1 << 20;
/// Most elements `--count` reads.
pub const MAX_COUNT: u64 = 4096;
/// Nesting rendered for structs inside structs.
const MAX_DEPTH: usize = 3;
/// Array elements rendered (the rest are counted).
const MAX_ELEMS: u64 = 256;

/// Globals whose types the kernel's BTF does not carry.
const KNOWN_GLOBALS: &[(&str, &str)] = &[
    ("init_task", "struct task_struct"),
    ("init_uts_ns", "struct uts_namespace"),
    ("init_mm", "struct mm_struct"),
    ("init_nsproxy", "struct nsproxy"),
    ("init_pid_ns", "struct pid_namespace"),
    ("jiffies", "unsigned long"),
    ("jiffies_64", "u64"),
    ("nr_threads", "int"),
    ("max_threads", "int"),
    ("panic_cpu", "atomic_t"),
    ("system_state", "enum system_states"),
];

/// A parsed expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expr {
    base: Base,
    path: Vec<Step>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Base {
    /// A symbol, with an optional cast to its object type.
    Symbol { name: String, ty: Option<String> },
    /// `*(T *)ADDR`, or a bare address (`ty` None).
    Address { addr: u64, ty: Option<String> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Step {
    Member(String),
    Deref(String),
}

fn bad(expr: &str, why: impl std::fmt::Display) -> DebugError {
    DebugError::Expr(format!("cannot parse {expr:?}: {why}"))
}

fn parse_number(s: &str) -> Option<u64> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u64::from_str_radix(hex, 16).ok(),
        None => s.parse().ok(),
    }
}

fn is_ident(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.')
}

impl Expr {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Self, DebugError> {
        let t = text.trim();
        let (base, rest) = if let Some(after) = t.strip_prefix("*(") {
            // *(T *)ADDR
            let close = after
                .find(')')
                .ok_or_else(|| bad(t, "no ')' after the type"))?;
            let ty = after[..close].trim();
            let ty = ty
                .strip_suffix('*')
                .ok_or_else(|| bad(t, "the cast must be to a pointer: *(struct T *)ADDR"))?
                .trim();
            let (addr, rest) = split_word(after[close + 1..].trim());
            let addr =
                parse_number(addr).ok_or_else(|| bad(t, format!("{addr:?} is not an address")))?;
            (
                Base::Address {
                    addr,
                    ty: Some(ty.to_string()),
                },
                rest,
            )
        } else if let Some(after) = t.strip_prefix('(') {
            // (T)SYMBOL
            let close = after
                .find(')')
                .ok_or_else(|| bad(t, "no ')' after the type"))?;
            let ty = after[..close].trim().to_string();
            let (name, rest) = split_word(after[close + 1..].trim());
            if !is_ident(name) {
                return Err(bad(t, format!("{name:?} is not a symbol name")));
            }
            (
                Base::Symbol {
                    name: name.to_string(),
                    ty: Some(ty),
                },
                rest,
            )
        } else {
            let (word, rest) = split_word(t);
            match parse_number(word) {
                Some(addr) => (Base::Address { addr, ty: None }, rest),
                None if is_ident(word) => (
                    Base::Symbol {
                        name: word.to_string(),
                        ty: None,
                    },
                    rest,
                ),
                None => {
                    return Err(bad(
                        t,
                        format!("{word:?} is neither a symbol nor an address"),
                    ))
                }
            }
        };
        let mut path = Vec::new();
        let mut rest = rest;
        while !rest.is_empty() {
            let (step, after): (fn(String) -> Step, &str) = if let Some(a) = rest.strip_prefix("->")
            {
                (Step::Deref, a)
            } else if let Some(a) = rest.strip_prefix('.') {
                (Step::Member, a)
            } else {
                return Err(bad(t, format!("unexpected {rest:?}")));
            };
            let end = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            if end == 0 {
                return Err(bad(t, "a member name is missing"));
            }
            path.push(step(after[..end].to_string()));
            rest = &after[end..];
        }
        Ok(Self { base, path })
    }
}

/// Splits a leading symbol or number from the `.member`/`->member` path after it.
fn split_word(s: &str) -> (&str, &str) {
    // Symbols may contain '.' (static symbols like "foo.isra.0") only when no path
    // follows; a path starts at the first '.' or "->".
    let end = s
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .unwrap_or(s.len());
    (&s[..end], &s[end..])
}

/// What an expression evaluated to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Evaluated {
    /// The expression.
    pub expr: String,
    /// Where the object is.
    pub address: u64,
    /// Its C type.
    #[serde(rename = "type")]
    pub type_name: String,
    /// Its size in bytes (one element).
    pub size: u64,
    /// The value (one element), or the elements with `--count`.
    pub value: Value,
    /// The symbol the address falls in, `name+0xoff`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
}

/// C spellings of base types and the names BTF gives them.
const C_INT_NAMES: &[(&str, &str)] = &[
    ("unsigned long", "long unsigned int"),
    ("unsigned long long", "long long unsigned int"),
    ("long", "long int"),
    ("long long", "long long int"),
    ("unsigned", "unsigned int"),
    ("unsigned short", "short unsigned int"),
    ("short", "short int"),
    ("signed char", "signed char"),
];

/// Where `read` takes its types from.
#[derive(Debug, Clone, Copy)]
pub enum TypeSource<'a> {
    /// The guest kernel's own BTF, read out of its memory.
    Btf,
    /// A vmlinux (or module) with DWARF, given by the user.
    Dwarf(&'a DwarfFile),
}

/// A type graph and a type in it.
enum Graph {
    Btf(Arc<Btf>),
    Dwarf(Arc<Converted>),
}

impl Graph {
    fn btf(&self) -> &Btf {
        match self {
            Graph::Btf(b) => b,
            Graph::Dwarf(c) => &c.btf,
        }
    }
}

/// The type named `name` ("struct task_struct", "unsigned long", "u64") in `src`.
fn named(k: &Kernel, src: TypeSource<'_>, name: &str) -> Result<(Graph, TypeId), DebugError> {
    match src {
        TypeSource::Btf => {
            let btf = k.btf()?;
            let id = type_by_name(&btf, name)?;
            Ok((Graph::Btf(btf), id))
        }
        TypeSource::Dwarf(f) => {
            let n = name.trim();
            let c = match f.type_named(n) {
                Err(crate::dwarf::DwarfError::NoType { .. }) if dwarf_spelling(n) != n => {
                    f.type_named(dwarf_spelling(n))
                }
                r => r,
            }?;
            let id = c.root;
            Ok((Graph::Dwarf(c), id))
        }
    }
}

/// The type of the object at symbol `name`: the variable's own type in DWARF, else a
/// well-known global's, else `unsigned long`.
fn symbol_type(k: &Kernel, src: TypeSource<'_>, name: &str) -> Result<(Graph, TypeId), DebugError> {
    if let TypeSource::Dwarf(f) = src {
        if let Some(c) = f.variable(name)? {
            let id = c.root;
            return Ok((Graph::Dwarf(c), id));
        }
    }
    let ty = KNOWN_GLOBALS
        .iter()
        .find(|(n, _)| *n == name)
        .map_or("unsigned long", |(_, t)| t);
    named(k, src, ty)
}

/// How DWARF (and BTF) spell a C base type: "unsigned long" is "long unsigned int".
fn dwarf_spelling(n: &str) -> &str {
    C_INT_NAMES
        .iter()
        .find(|(c, _)| *c == n)
        .map_or(n, |(_, d)| *d)
}

/// A type resolved by name: "struct task_struct", "unsigned long", "u64".
fn type_by_name(btf: &Btf, name: &str) -> Result<TypeId, DebugError> {
    let n = name.trim();
    let found = if let Some(s) = n
        .strip_prefix("struct ")
        .or_else(|| n.strip_prefix("union "))
    {
        btf.struct_named(s.trim())
    } else if let Some(e) = n.strip_prefix("enum ") {
        btf.type_named(e.trim())
    } else {
        // BTF spells base types as DWARF does ("long unsigned int").
        btf.type_named(n)
            .or_else(|| btf.type_named(dwarf_spelling(n)))
    };
    found.ok_or_else(|| DebugError::Expr(format!("no type {n:?} in the guest kernel's BTF")))
}

/// Evaluates `expr` with the guest's BTF and reads `count` elements.
pub fn read(k: &Kernel, text: &str, count: u64, hex: bool) -> Result<Evaluated, DebugError> {
    read_with(k, TypeSource::Btf, text, count, hex)
}

/// Evaluates `expr` with types from `src` and reads `count` elements.
pub fn read_with(
    k: &Kernel,
    src: TypeSource<'_>,
    text: &str,
    count: u64,
    hex: bool,
) -> Result<Evaluated, DebugError> {
    if count == 0 || count > MAX_COUNT {
        return Err(DebugError::Expr(format!(
            "--count must be 1 to {MAX_COUNT}, not {count}"
        )));
    }
    let expr = Expr::parse(text)?;
    if let TypeSource::Dwarf(f) = src {
        f.check_build_id(k.vmcoreinfo().get("BUILD-ID"))?;
    }
    let (mut addr, (mut graph, mut ty)) = match &expr.base {
        Base::Symbol { name, ty } => {
            let sym = k.symbol(name)?;
            let t = match ty {
                Some(t) => named(k, src, t)?,
                None => symbol_type(k, src, name)?,
            };
            (sym.addr, t)
        }
        Base::Address { addr, ty } => (
            *addr,
            named(k, src, ty.as_deref().unwrap_or("unsigned long"))?,
        ),
    };
    for step in &expr.path {
        let btf = graph.btf();
        let (name, deref) = match step {
            Step::Member(n) => (n, false),
            Step::Deref(n) => (n, true),
        };
        if deref {
            // `a->b`: the current object is a pointer; load it.
            let target = match btf.ty(btf.resolve(ty)?)? {
                Type::Ptr { target } => *target,
                _ => {
                    return Err(DebugError::Expr(format!(
                        "`->{name}`: {} is not a pointer (use `.{name}`)",
                        btf.type_name(ty)
                    )))
                }
            };
            addr = k.read_u64(addr)?;
            ty = target;
            // A struct behind a pointer may be known by name only (a declaration, or
            // DWARF's lazily converted pointee): look it up as a root of its own.
            if let Ok(Type::Fwd { name: tag, union }) = btf.resolve(ty).and_then(|r| btf.ty(r)) {
                let kw = if *union { "union" } else { "struct" };
                (graph, ty) = named(k, src, &format!("{kw} {tag}"))?;
            }
        }
        let btf = graph.btf();
        let m = btf
            .member(ty, name)
            .map_err(|e| DebugError::Expr(e.to_string()))?;
        if m.bitfield_size.is_some() {
            return Err(DebugError::Expr(format!(
                "{name} is a bitfield; read the struct that holds it"
            )));
        }
        addr = addr
            .checked_add(m.bit_offset / 8)
            .ok_or_else(|| DebugError::Expr("address overflow".into()))?;
        ty = m.type_id;
    }
    let btf = graph.btf();
    let size = btf.size_of(ty)?;
    let total = size
        .checked_mul(count)
        .filter(|t| *t <= MAX_READ && *t > 0)
        .ok_or_else(|| {
            DebugError::Expr(format!(
                "{} × {count} bytes is over the {MAX_READ}-byte read limit",
                size
            ))
        })?;
    let mut bytes = vec![0u8; total as usize];
    k.read(addr, &mut bytes)?;
    let r = Render { k, btf, hex };
    let value = if count == 1 {
        r.value(ty, &bytes, 0)
    } else {
        Value::Array(
            bytes
                .chunks_exact(size as usize)
                .map(|b| r.value(ty, b, 0))
                .collect(),
        )
    };
    Ok(Evaluated {
        expr: text.to_string(),
        address: addr,
        type_name: btf.type_name(ty),
        size,
        value,
        symbol: k
            .symbols()
            .symbolize(addr)
            .map(|(s, off)| format!("{}+{off:#x}", s.name)),
    })
}

struct Render<'a> {
    k: &'a Kernel,
    btf: &'a Btf,
    hex: bool,
}

fn le(bytes: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = bytes.len().min(8);
    b[..n].copy_from_slice(&bytes[..n]);
    u64::from_le_bytes(b)
}

impl Render<'_> {
    fn value(&self, ty: TypeId, bytes: &[u8], depth: usize) -> Value {
        let Ok(id) = self.btf.resolve(ty) else {
            return json!(hex_bytes(bytes));
        };
        match self.btf.ty(id) {
            Ok(Type::Int {
                size,
                signed,
                is_bool,
                ..
            }) => {
                let size = (*size as usize).min(bytes.len()).min(8);
                let raw = le(&bytes[..size]);
                if *is_bool {
                    json!(raw != 0)
                } else if self.hex {
                    json!(format!("{raw:#x}"))
                } else if *signed {
                    let shift = 64 - 8 * size as u32;
                    json!(((raw << shift) as i64) >> shift)
                } else {
                    json!(raw)
                }
            }
            Ok(Type::Ptr { .. }) => {
                let p = le(bytes);
                // Low "addresses" name per-cpu offsets (NULL would read as
                // fixed_percpu_data): only kernel-half pointers get a symbol.
                let symbol = (p >= KERNEL_HALF)
                    .then(|| self.k.symbols().symbolize(p))
                    .flatten();
                match symbol {
                    Some((s, 0)) => json!(format!("{p:#x} <{}>", s.name)),
                    Some((s, off)) if off < 0x1000 => {
                        json!(format!("{p:#x} <{}+{off:#x}>", s.name))
                    }
                    _ => json!(format!("{p:#x}")),
                }
            }
            Ok(Type::Enum { values, size, .. }) => {
                let raw = le(&bytes[..(*size as usize).min(bytes.len())]);
                match values.iter().find(|(_, v)| *v as u64 == raw) {
                    Some((name, _)) => json!(name),
                    None => json!(raw),
                }
            }
            Ok(Type::Array { elem, len }) => {
                let is_char = matches!(
                    self.btf
                        .resolve(*elem)
                        .and_then(|e| self.btf.ty(e).cloned()),
                    Ok(Type::Int { size: 1, .. })
                );
                if is_char && !self.hex {
                    return json!(crate::c_string(bytes));
                }
                let Ok(esize) = self.btf.size_of(*elem) else {
                    return json!(hex_bytes(bytes));
                };
                if esize == 0 {
                    return json!([]);
                }
                let n = u64::from(*len).min(MAX_ELEMS);
                let mut v: Vec<Value> = bytes
                    .chunks_exact(esize as usize)
                    .take(n as usize)
                    .map(|b| self.value(*elem, b, depth + 1))
                    .collect();
                if u64::from(*len) > n {
                    v.push(json!(format!("... {} more", u64::from(*len) - n)));
                }
                Value::Array(v)
            }
            Ok(Type::Struct { members, .. }) | Ok(Type::Union { members, .. }) => {
                if depth >= MAX_DEPTH {
                    return json!(format!("{{...}} ({})", self.btf.type_name(id)));
                }
                let mut obj = serde_json::Map::new();
                for (i, m) in members.iter().enumerate() {
                    let name = m.name.clone().unwrap_or_else(|| format!("<anon{i}>"));
                    let start = (m.bit_offset / 8) as usize;
                    let v = match m.bitfield_size {
                        Some(bits) => {
                            let shift = (m.bit_offset % 8) as u32;
                            let raw = le(bytes.get(start..).unwrap_or_default()) >> shift;
                            let mask = if bits >= 64 {
                                u64::MAX
                            } else {
                                (1u64 << bits) - 1
                            };
                            json!(raw & mask)
                        }
                        None => {
                            let size = self.btf.size_of(m.type_id).unwrap_or(0) as usize;
                            match bytes.get(start..start + size) {
                                Some(b) => self.value(m.type_id, b, depth + 1),
                                None => Value::Null,
                            }
                        }
                    };
                    obj.insert(name, v);
                }
                Value::Object(obj)
            }
            _ => json!(hex_bytes(bytes)),
        }
    }
}

fn hex_bytes(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expressions_parse_into_a_base_and_a_path() {
        let e = Expr::parse("init_task.mm->pgd").unwrap();
        assert_eq!(
            e.base,
            Base::Symbol {
                name: "init_task".into(),
                ty: None
            }
        );
        assert_eq!(
            e.path,
            [Step::Member("mm".into()), Step::Deref("pgd".into())]
        );
        let e = Expr::parse("*(struct task_struct *)0xffff888003a8c000.comm").unwrap();
        assert_eq!(
            e.base,
            Base::Address {
                addr: 0xffff_8880_03a8_c000,
                ty: Some("struct task_struct".into())
            }
        );
        assert_eq!(e.path, [Step::Member("comm".into())]);
        let e = Expr::parse("(struct uts_namespace)init_uts_ns.name.release").unwrap();
        assert!(
            matches!(e.base, Base::Symbol { ty: Some(ref t), .. } if t == "struct uts_namespace")
        );
        assert_eq!(e.path.len(), 2);
        assert!(matches!(
            Expr::parse("4096").unwrap().base,
            Base::Address {
                addr: 4096,
                ty: None
            }
        ));
    }

    #[test]
    fn bad_expressions_say_what_is_wrong() {
        for (text, says) in [
            ("*(struct task_struct)0x10", "must be to a pointer"),
            ("*(struct task_struct *", "no ')'"),
            ("*(struct task_struct *)zz", "is not an address"),
            ("init_task.", "member name is missing"),
            ("init_task+4", "unexpected"),
            ("(struct x)9", "is not a symbol name"),
            ("-3", "neither a symbol nor an address"),
        ] {
            let e = Expr::parse(text).unwrap_err().to_string();
            assert!(e.contains(says), "{text}: {e}");
        }
    }
}
