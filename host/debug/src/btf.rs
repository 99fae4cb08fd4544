//! BTF (BPF Type Format): the type information the kernel carries about itself
//! (`/sys/kernel/btf/vmlinux`, or the `.BTF` section a guest kernel keeps in memory).
//!
//! The blob is hostile input (it is read out of a guest), so parsing checks every
//! length and offset against the blob, allocates only in proportion to bytes that are
//! actually there, and every query that follows type references is bounded, so a
//! blob with reference loops gives an error instead of a hang.
//!
//! This file holds `Btf`, the parsed types with their name indexes and the bounded
//! queries over them (resolve, sizes, members, C type names). The type model is
//! `types`'s, the errors `error`'s, reading the blob's type section `parse`'s.

mod error;
mod parse;
mod types;

pub use error::BtfError;
use parse::{le_u16, le_u32, Legacy, Parser, HEADER_LEN, MAGIC, MAGIC_SWAPPED, TYPE_RECORD};
pub use types::{Member, Type, TypeId};

use std::collections::{HashMap, HashSet};
use std::fmt;

/// A parsed BTF blob with name indexes for lookups.
pub struct Btf {
    /// Index = type id; entry 0 is `Type::Void`.
    types: Vec<Type>,
    /// Name → first ids of the kinds the lookups want.
    names: HashMap<String, NameIds>,
    /// Enum constant → value of its first occurrence.
    enum_values: HashMap<String, i64>,
}

/// First ids per name (0 = none) — one small record instead of a list per name.
#[derive(Debug, Default, Clone, Copy)]
struct NameIds {
    first_struct: TypeId,
    first_union: TypeId,
    /// First struct/union/enum/typedef/int/float.
    first_type: TypeId,
}

impl fmt::Debug for Btf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The full type list is far too big for a debug line.
        f.debug_struct("Btf")
            .field("types", &self.len())
            .field("names", &self.names.len())
            .field("enum_values", &self.enum_values.len())
            .finish()
    }
}

/// Typedef/qualifier hops `resolve` follows before calling it a loop.
const MAX_RESOLVE_HOPS: u32 = 64;
/// Nested arrays `size_of` follows before calling it a loop.
const MAX_ARRAY_DEPTH: u32 = 64;
/// Nesting of anonymous struct/union members `member` looks through.
const MAX_ANON_DEPTH: u32 = 16;
/// How many member names a `NoMember` error lists.
const KNOWN_LIST: usize = 30;
/// Declarator nesting `type_name` renders before giving up with "?".
const MAX_NAME_DEPTH: u32 = 32;
/// Types `type_name` visits in total: function prototypes nest parameter lists, so
/// depth alone does not bound the work.
const NAME_BUDGET: u32 = 512;

impl Btf {
    /// Parses a little-endian BTF blob (e.g. the bytes of `/sys/kernel/btf/vmlinux`).
    pub fn parse(bytes: &[u8]) -> Result<Btf, BtfError> {
        let len = bytes.len();
        let magic = le_u16(bytes, 0).ok_or(BtfError::Truncated {
            len,
            need: HEADER_LEN,
        })?;
        if magic == MAGIC_SWAPPED {
            return Err(BtfError::BigEndian);
        }
        if magic != MAGIC {
            return Err(BtfError::BadMagic { magic });
        }
        if len < HEADER_LEN {
            return Err(BtfError::Truncated {
                len,
                need: HEADER_LEN,
            });
        }
        let version = bytes.get(2).copied().unwrap_or(0);
        if version != 1 {
            return Err(BtfError::BadVersion { version });
        }
        let field = |at| le_u32(bytes, at).unwrap_or(0);
        let (hdr_len, type_off, type_len, str_off, str_len) =
            (field(4), field(8), field(12), field(16), field(20));
        // Longer headers (future fields) are fine: the sections are located from hdr_len.
        if (hdr_len as usize) < HEADER_LEN {
            return Err(BtfError::HeaderTooShort {
                hdr_len,
                need: HEADER_LEN as u32,
            });
        }
        if hdr_len as usize > len {
            return Err(BtfError::HeaderPastEnd { hdr_len, len });
        }
        let section = |off: u32, sec_len: u32| {
            let start = u64::from(hdr_len).checked_add(u64::from(off))?;
            let end = start.checked_add(u64::from(sec_len))?;
            if end > len as u64 {
                return None;
            }
            Some((usize::try_from(start).ok()?, usize::try_from(end).ok()?))
        };
        let (sec_start, sec_end) =
            section(type_off, type_len).ok_or(BtfError::TypeSectionPastEnd {
                hdr_len,
                off: type_off,
                sec_len: type_len,
                len,
            })?;
        let (str_start, str_end) =
            section(str_off, str_len).ok_or(BtfError::StringSectionPastEnd {
                hdr_len,
                off: str_off,
                sec_len: str_len,
                len,
            })?;
        let strs = bytes
            .get(str_start..str_end)
            .ok_or(BtfError::StringSectionPastEnd {
                hdr_len,
                off: str_off,
                sec_len: str_len,
                len,
            })?;
        if strs.first().is_some_and(|&b| b != 0) {
            return Err(BtfError::StringSectionStart { offset: str_start });
        }

        // A real vmlinux BTF copies out name bytes worth under half its size (names
        // are shared, but short); twice the blob leaves ample headroom while keeping a
        // hostile blob (every record naming one long string) to a few times its size.
        let name_budget = len.saturating_mul(2).max(1 << 20);
        let mut p = Parser {
            blob: bytes,
            sec_end,
            pos: sec_start,
            strs,
            name_budget,
            name_budget_total: name_budget,
        };

        // Each type takes at least one 12-byte record, so this is bounded by the blob.
        let mut types = Vec::with_capacity(sec_end.saturating_sub(sec_start) / TYPE_RECORD + 1);
        types.push(Type::Void);
        let mut legacy = Legacy::default();
        while p.pos < p.sec_end {
            // Ids cannot run out: a u32 type_len holds fewer than u32::MAX records.
            let id = TypeId::try_from(types.len()).map_err(|_| BtfError::TypePastEnd {
                type_id: TypeId::MAX,
                kind: 0,
                offset: p.pos,
                need: TYPE_RECORD as u64,
                have: p.sec_end.saturating_sub(p.pos),
            })?;
            types.push(p.parse_type(id, &mut legacy)?);
        }

        let mut btf = Btf {
            types,
            names: HashMap::new(),
            enum_values: HashMap::new(),
        };
        btf.fix_legacy_bitfields(&legacy);
        let (names, enum_values) = build_indexes(&btf.types);
        btf.names = names;
        btf.enum_values = enum_values;
        Ok(btf)
    }

    /// A `Btf` over types from another source (DWARF): index = type id, entry 0 is
    /// taken to be void whatever it holds.
    pub fn from_types(mut types: Vec<Type>) -> Btf {
        match types.first_mut() {
            Some(t) => *t = Type::Void,
            None => types.push(Type::Void),
        }
        let (names, enum_values) = build_indexes(&types);
        Btf {
            types,
            names,
            enum_values,
        }
    }

    /// Structs without kind_flag encode bitfields in the member's int type (its bit
    /// count and bit offset); fold that into the members so callers see one encoding.
    fn fix_legacy_bitfields(&mut self, legacy: &Legacy) {
        let int_offset = |id: TypeId| {
            legacy
                .int_offsets
                .binary_search_by_key(&id, |&(i, _)| i)
                .ok()
                .and_then(|i| legacy.int_offsets.get(i))
                .map_or(0, |&(_, off)| off)
        };
        let mut fixes = Vec::new();
        for &sid in &legacy.aggregates {
            let members = match self.ty(sid) {
                Ok(Type::Struct { members, .. } | Type::Union { members, .. }) => members,
                _ => continue,
            };
            for (mi, m) in members.iter().enumerate() {
                let Ok(rid) = self.resolve(m.type_id) else {
                    continue;
                };
                let Ok(&Type::Int { size, bits, .. }) = self.ty(rid) else {
                    continue;
                };
                let off = int_offset(rid);
                let full_width = size.checked_mul(8) == Some(bits);
                if bits != 0 && (off != 0 || !full_width) {
                    fixes.push((sid, mi, bits, off));
                }
            }
        }
        for (sid, mi, bits, off) in fixes {
            let t = usize::try_from(sid)
                .ok()
                .and_then(|i| self.types.get_mut(i));
            if let Some(Type::Struct { members, .. } | Type::Union { members, .. }) = t {
                if let Some(m) = members.get_mut(mi) {
                    m.bitfield_size = Some(bits);
                    m.bit_offset = m.bit_offset.saturating_add(u64::from(off));
                }
            }
        }
    }

    /// Number of types (ids 1..=len).
    pub fn len(&self) -> usize {
        self.types.len().saturating_sub(1)
    }

    /// True if the blob holds no types.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The type with id `id` (0 gives `Type::Void`).
    pub fn ty(&self, id: TypeId) -> Result<&Type, BtfError> {
        usize::try_from(id)
            .ok()
            .and_then(|i| self.types.get(i))
            .ok_or(BtfError::NoSuchType {
                id,
                count: self.len(),
            })
    }

    /// The first struct (or union) named `name`; structs win over unions; a `Fwd` never counts.
    pub fn struct_named(&self, name: &str) -> Option<TypeId> {
        let e = self.names.get(name)?;
        [e.first_struct, e.first_union]
            .into_iter()
            .find(|&id| id != 0)
    }

    /// The first type named `name` that is a struct, union, enum, typedef, int or float.
    pub fn type_named(&self, name: &str) -> Option<TypeId> {
        self.names
            .get(name)
            .map(|e| e.first_type)
            .filter(|&id| id != 0)
    }

    /// Strips typedef/const/volatile/restrict/type_tag (at most 64 hops, else `TypeLoop`).
    pub fn resolve(&self, id: TypeId) -> Result<TypeId, BtfError> {
        let mut cur = id;
        for _ in 0..=MAX_RESOLVE_HOPS {
            match self.ty(cur)? {
                Type::Typedef { target, .. }
                | Type::Const { target }
                | Type::Volatile { target }
                | Type::Restrict { target }
                | Type::TypeTag { target } => cur = *target,
                _ => return Ok(cur),
            }
        }
        Err(BtfError::TypeLoop { id })
    }

    /// Size in bytes (pointers are 8); void, functions, forward declarations etc. have none.
    pub fn size_of(&self, id: TypeId) -> Result<u64, BtfError> {
        // Arrays of arrays are walked iteratively, multiplying lengths, so a
        // self-referencing array is a bounded loop rather than unbounded recursion.
        let mut count: u64 = 1;
        let mut cur = id;
        for _ in 0..=MAX_ARRAY_DEPTH {
            let rid = self.resolve(cur).map_err(|e| match e {
                BtfError::TypeLoop { .. } => BtfError::TypeLoop { id },
                e => e,
            })?;
            let elem_size = match self.ty(rid)? {
                Type::Int { size, .. }
                | Type::Float { size, .. }
                | Type::Enum { size, .. }
                | Type::Struct { size, .. }
                | Type::Union { size, .. } => u64::from(*size),
                Type::Ptr { .. } => 8,
                Type::Array { elem, len } => {
                    count = count
                        .checked_mul(u64::from(*len))
                        .ok_or(BtfError::ArraySizeOverflow { id })?;
                    cur = *elem;
                    continue;
                }
                other => {
                    return Err(BtfError::NoSize {
                        id,
                        what: kind_word(other),
                    })
                }
            };
            return elem_size
                .checked_mul(count)
                .ok_or(BtfError::ArraySizeOverflow { id });
        }
        Err(BtfError::TypeLoop { id })
    }

    /// Member `name` of the struct/union `id` (after resolve), looking through anonymous
    /// struct/union members (their offsets added; nesting at most 16).
    pub fn member(&self, id: TypeId, name: &str) -> Result<Member, BtfError> {
        let sid = self.resolve(id)?;
        match self.ty(sid)? {
            Type::Struct { .. } | Type::Union { .. } => {}
            _ => {
                return Err(BtfError::NotAStruct {
                    id,
                    name_of_type: self.type_name(id),
                })
            }
        }
        let mut seen = HashSet::from([sid]);
        if let Some(m) = self.find_member(sid, name, 0, 0, &mut seen)? {
            return Ok(m);
        }
        let mut known = Vec::new();
        self.known_members(sid, 0, &mut HashSet::from([sid]), &mut known);
        Err(BtfError::NoMember {
            type_name: self.type_name(sid),
            member: name.to_string(),
            known,
        })
    }

    fn find_member(
        &self,
        sid: TypeId,
        name: &str,
        base: u64,
        depth: u32,
        seen: &mut HashSet<TypeId>,
    ) -> Result<Option<Member>, BtfError> {
        let members = match self.ty(sid)? {
            Type::Struct { members, .. } | Type::Union { members, .. } => members,
            _ => return Ok(None),
        };
        for m in members {
            let bit_offset = base
                .checked_add(m.bit_offset)
                .ok_or(BtfError::OffsetOverflow { id: sid })?;
            match &m.name {
                Some(n) if n == name => {
                    return Ok(Some(Member {
                        name: m.name.clone(),
                        type_id: m.type_id,
                        bit_offset,
                        bitfield_size: m.bitfield_size,
                    }))
                }
                Some(_) => {}
                None if depth < MAX_ANON_DEPTH => {
                    let inner = self.resolve(m.type_id)?;
                    let is_aggregate =
                        matches!(self.ty(inner)?, Type::Struct { .. } | Type::Union { .. });
                    // C forbids a name appearing twice, so a type searched once need not be
                    // searched again; this also keeps a hostile fan-out from exploding.
                    if is_aggregate && seen.insert(inner) {
                        if let Some(found) =
                            self.find_member(inner, name, bit_offset, depth + 1, seen)?
                        {
                            return Ok(Some(found));
                        }
                    }
                }
                None => {}
            }
        }
        Ok(None)
    }

    /// Best effort: names for an error message, so broken types are just skipped.
    fn known_members(
        &self,
        sid: TypeId,
        depth: u32,
        seen: &mut HashSet<TypeId>,
        out: &mut Vec<String>,
    ) {
        let members = match self.ty(sid) {
            Ok(Type::Struct { members, .. } | Type::Union { members, .. }) => members,
            _ => return,
        };
        for m in members {
            if out.len() >= KNOWN_LIST {
                return;
            }
            match &m.name {
                Some(n) => out.push(n.clone()),
                None if depth < MAX_ANON_DEPTH => {
                    if let Ok(inner) = self.resolve(m.type_id) {
                        if seen.insert(inner) {
                            self.known_members(inner, depth + 1, seen, out);
                        }
                    }
                }
                None => {}
            }
        }
    }

    /// A C-like name: "struct task_struct", "struct list_head *", "char [16]", "u64",
    /// "int (*)(void *)"; never fails ("?" marks broken or too-deep parts).
    pub fn type_name(&self, id: TypeId) -> String {
        let mut namer = Namer {
            btf: self,
            budget: NAME_BUDGET,
        };
        namer.decl(id, String::new(), 0)
    }

    /// The value of enum constant `name` (first enum that has it).
    pub fn enum_value(&self, name: &str) -> Option<i64> {
        self.enum_values.get(name).copied()
    }
}

/// Name → first ids, and enum constant → first value, for O(1) lookups.
fn build_indexes(types: &[Type]) -> (HashMap<String, NameIds>, HashMap<String, i64>) {
    let mut names: HashMap<String, NameIds> = HashMap::new();
    let mut enum_values: HashMap<String, i64> = HashMap::new();
    for (id, t) in types.iter().enumerate() {
        if let Type::Enum { values, .. } = t {
            for (n, v) in values {
                if !n.is_empty() && !enum_values.contains_key(n) {
                    enum_values.insert(n.clone(), *v);
                }
            }
        }
        let (name, is_struct, is_union) = match t {
            Type::Struct { name: Some(n), .. } => (n, true, false),
            Type::Union { name: Some(n), .. } => (n, false, true),
            Type::Enum { name: Some(n), .. }
            | Type::Typedef { name: n, .. }
            | Type::Int { name: n, .. }
            | Type::Float { name: n, .. } => (n, false, false),
            _ => continue,
        };
        if name.is_empty() {
            continue;
        }
        let Ok(id) = TypeId::try_from(id) else {
            break;
        };
        let e = match names.get_mut(name.as_str()) {
            Some(e) => e,
            None => names.entry(name.clone()).or_default(),
        };
        if e.first_type == 0 {
            e.first_type = id;
        }
        if is_struct && e.first_struct == 0 {
            e.first_struct = id;
        }
        if is_union && e.first_union == 0 {
            e.first_union = id;
        }
    }
    (names, enum_values)
}

/// A word for what a type is, for `NoSize` messages.
fn kind_word(t: &Type) -> &'static str {
    match t {
        Type::Void => "void",
        Type::Int { .. } => "int",
        Type::Ptr { .. } => "pointer",
        Type::Array { .. } => "array",
        Type::Struct { .. } => "struct",
        Type::Union { .. } => "union",
        Type::Enum { .. } => "enum",
        Type::Fwd { .. } => "forward declaration",
        Type::Typedef { .. } => "typedef",
        Type::Volatile { .. } => "volatile",
        Type::Const { .. } => "const",
        Type::Restrict { .. } => "restrict",
        Type::TypeTag { .. } => "type tag",
        Type::Func { .. } => "function",
        Type::FuncProto { .. } => "function prototype",
        Type::Var { .. } => "variable",
        Type::Datasec { .. } => "data section",
        Type::Float { .. } => "float",
        Type::DeclTag { .. } => "declaration tag",
    }
}

/// Renders C declarators inside-out: `inner` is what is already built around the
/// name position ("*", "[16]", ...), and each type wraps it.
struct Namer<'a> {
    btf: &'a Btf,
    budget: u32,
}

fn join(base: &str, inner: &str) -> String {
    if inner.is_empty() {
        base.to_string()
    } else {
        format!("{base} {inner}")
    }
}

/// A pointer declarator must be parenthesized before an array or call suffix binds.
fn paren(inner: &str) -> String {
    if inner.starts_with('*') {
        format!("({inner})")
    } else {
        inner.to_string()
    }
}

fn or_q(name: &str) -> &str {
    if name.is_empty() {
        "?"
    } else {
        name
    }
}

impl Namer<'_> {
    fn decl(&mut self, id: TypeId, inner: String, depth: u32) -> String {
        if depth > MAX_NAME_DEPTH || self.budget == 0 {
            return join("?", &inner);
        }
        self.budget -= 1;
        let Ok(t) = self.btf.ty(id) else {
            return join("?", &inner);
        };
        let tag = |kw: &str, name: &Option<String>| {
            format!("{kw} {}", name.as_deref().unwrap_or("<anonymous>"))
        };
        match t {
            Type::Void => join("void", &inner),
            Type::Int { name, .. } | Type::Float { name, .. } | Type::Typedef { name, .. } => {
                join(or_q(name), &inner)
            }
            Type::Struct { name, .. } => join(&tag("struct", name), &inner),
            Type::Union { name, .. } => join(&tag("union", name), &inner),
            Type::Enum { name, .. } => join(&tag("enum", name), &inner),
            Type::Fwd { name, union } => {
                let kw = if *union { "union" } else { "struct" };
                join(&format!("{kw} {}", or_q(name)), &inner)
            }
            Type::Ptr { target } => self.decl(*target, format!("*{inner}"), depth + 1),
            Type::Const { target } => self.qualified("const", *target, inner, depth),
            Type::Volatile { target } => self.qualified("volatile", *target, inner, depth),
            Type::Restrict { target } => self.qualified("restrict", *target, inner, depth),
            Type::TypeTag { target } | Type::DeclTag { target } => {
                self.decl(*target, inner, depth + 1)
            }
            Type::Array { elem, len } => {
                self.decl(*elem, format!("{}[{len}]", paren(&inner)), depth + 1)
            }
            Type::FuncProto { ret, params } => {
                let mut list = Vec::new();
                for (i, &p) in params.iter().enumerate() {
                    if self.budget == 0 {
                        list.push("?".to_string());
                        break;
                    }
                    if p == 0 && i + 1 == params.len() {
                        list.push("...".to_string());
                    } else {
                        list.push(self.decl(p, String::new(), depth + 1));
                    }
                }
                let list = if list.is_empty() {
                    "void".to_string()
                } else {
                    list.join(", ")
                };
                self.decl(*ret, format!("{}({list})", paren(&inner)), depth + 1)
            }
            Type::Func { name, proto } => self.decl(*proto, join(or_q(name), &inner), depth + 1),
            Type::Var { name, target } => self.decl(*target, join(or_q(name), &inner), depth + 1),
            Type::Datasec { name, .. } => join(&format!("SEC {}", or_q(name)), &inner),
        }
    }

    /// C writes a qualifier on a pointer after the `*`, on anything else before the type.
    fn qualified(&mut self, qual: &str, target: TypeId, inner: String, depth: u32) -> String {
        if self.pointer_below(target) {
            self.decl(target, join(qual, &inner), depth + 1)
        } else {
            let rest = self.decl(target, inner, depth + 1);
            format!("{qual} {rest}")
        }
    }

    /// Whether the first non-qualifier under `id` is a pointer.
    fn pointer_below(&self, mut id: TypeId) -> bool {
        for _ in 0..MAX_RESOLVE_HOPS {
            match self.btf.ty(id) {
                Ok(
                    Type::Const { target }
                    | Type::Volatile { target }
                    | Type::Restrict { target }
                    | Type::TypeTag { target },
                ) => id = *target,
                Ok(Type::Ptr { .. }) => return true,
                _ => return false,
            }
        }
        false
    }
}

#[cfg(test)]
mod tests;
