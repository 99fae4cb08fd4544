//! BTF (BPF Type Format): the type information the kernel carries about itself
//! (`/sys/kernel/btf/vmlinux`, or the `.BTF` section a guest kernel keeps in memory).
//!
//! The blob is hostile input (it is read out of a guest), so parsing checks every
//! length and offset against the blob, allocates only in proportion to bytes that are
//! actually there, and every query that follows type references is bounded, so a
//! blob with reference loops gives an error instead of a hang.

use std::collections::{HashMap, HashSet};
use std::fmt;

use thiserror::Error;

/// A type id (0 = void).
pub type TypeId = u32;

/// Why a BTF blob was refused, or why a query on it failed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum BtfError {
    /// The blob is too short to hold the fixed part of the header.
    #[error("BTF blob is {len} bytes, shorter than the {need}-byte header")]
    Truncated {
        /// Bytes present.
        len: usize,
        /// Bytes needed.
        need: usize,
    },
    /// The first two bytes are not the BTF magic.
    #[error("not BTF: magic at byte 0 is {magic:#06x}, expected 0xeb9f")]
    BadMagic {
        /// The magic read (little-endian).
        magic: u16,
    },
    /// The magic is byte-swapped: a big-endian blob, which this reader does not handle.
    #[error("BTF blob is big-endian (magic reads as 0x9feb at byte 0); only little-endian BTF is supported")]
    BigEndian,
    /// The header version is not 1.
    #[error("BTF version {version} at byte 2 is not supported (only version 1)")]
    BadVersion {
        /// The version byte.
        version: u8,
    },
    /// `hdr_len` is smaller than the header fields it must cover.
    #[error("BTF hdr_len {hdr_len} (byte 4) is shorter than the {need}-byte header")]
    HeaderTooShort {
        /// The `hdr_len` field.
        hdr_len: u32,
        /// Minimum accepted.
        need: u32,
    },
    /// `hdr_len` runs past the end of the blob.
    #[error("BTF hdr_len {hdr_len} (byte 4) runs past the end of the {len}-byte blob")]
    HeaderPastEnd {
        /// The `hdr_len` field.
        hdr_len: u32,
        /// Blob length.
        len: usize,
    },
    /// The type section runs past the end of the blob.
    #[error("BTF type section (hdr_len {hdr_len} + type_off {off}, type_len {sec_len}) runs past the end of the {len}-byte blob")]
    TypeSectionPastEnd {
        /// The `hdr_len` field.
        hdr_len: u32,
        /// The `type_off` field.
        off: u32,
        /// The `type_len` field.
        sec_len: u32,
        /// Blob length.
        len: usize,
    },
    /// The string section runs past the end of the blob.
    #[error("BTF string section (hdr_len {hdr_len} + str_off {off}, str_len {sec_len}) runs past the end of the {len}-byte blob")]
    StringSectionPastEnd {
        /// The `hdr_len` field.
        hdr_len: u32,
        /// The `str_off` field.
        off: u32,
        /// The `str_len` field.
        sec_len: u32,
        /// Blob length.
        len: usize,
    },
    /// The string section does not start with the empty string.
    #[error("BTF string section at byte {offset:#x} does not start with a NUL byte")]
    StringSectionStart {
        /// Blob offset of the string section.
        offset: usize,
    },
    /// A name offset points outside the string section.
    #[error("type {type_id}: name offset {name_off} is past the end of the {str_len}-byte string section")]
    NameOutOfBounds {
        /// The type whose record holds the name.
        type_id: TypeId,
        /// The name offset.
        name_off: u32,
        /// String section length.
        str_len: u32,
    },
    /// A name has no NUL before the end of the string section.
    #[error("type {type_id}: name at string offset {name_off} is not NUL-terminated within the string section")]
    NameNotTerminated {
        /// The type whose record holds the name.
        type_id: TypeId,
        /// The name offset.
        name_off: u32,
    },
    /// A name is longer than any kernel identifier can be.
    #[error("type {type_id}: name at string offset {name_off} is longer than {max} bytes")]
    NameTooLong {
        /// The type whose record holds the name.
        type_id: TypeId,
        /// The name offset.
        name_off: u32,
        /// The limit.
        max: usize,
    },
    /// The names copied out of the blob add up to far more than the blob itself.
    #[error("type {type_id}: names total more than {budget} bytes (names are reused too often for a real BTF blob)")]
    NamesTooLarge {
        /// The type being read when the budget ran out.
        type_id: TypeId,
        /// The budget, in bytes.
        budget: usize,
    },
    /// A type record (or its trailing members/params/values) runs past the type section.
    #[error("type {type_id} (kind {kind}) at byte {offset:#x}: needs {need} bytes but only {have} remain in the type section")]
    TypePastEnd {
        /// The type.
        type_id: TypeId,
        /// Its kind number (0 if the fixed part itself is cut short).
        kind: u32,
        /// Blob offset where the missing data starts.
        offset: usize,
        /// Bytes needed.
        need: u64,
        /// Bytes left in the type section.
        have: usize,
    },
    /// A kind number this reader does not know (and cannot skip: its size is unknown).
    #[error("type {type_id} at byte {offset:#x}: unknown BTF kind {kind}")]
    UnknownKind {
        /// The type.
        type_id: TypeId,
        /// The kind number.
        kind: u32,
        /// Blob offset of the type record.
        offset: usize,
    },
    /// A type id that is not in the blob.
    #[error("type id {id} does not exist (the BTF has types 1..={count})")]
    NoSuchType {
        /// The id asked for.
        id: TypeId,
        /// Number of types.
        count: usize,
    },
    /// A chain of typedefs/qualifiers (or arrays) that does not end.
    #[error("type {id}: reference chain too long (a loop?)")]
    TypeLoop {
        /// The id the walk started from.
        id: TypeId,
    },
    /// The type has no size (void, a function, a forward declaration, ...).
    #[error("type {id} ({what}) has no size")]
    NoSize {
        /// The id asked for (before resolving).
        id: TypeId,
        /// What it resolved to.
        what: &'static str,
    },
    /// An array's size (element size × length) does not fit in 64 bits.
    #[error("type {id}: array size overflows 64 bits")]
    ArraySizeOverflow {
        /// The array's id.
        id: TypeId,
    },
    /// A member's bit offset (summed through anonymous members) does not fit in 64 bits.
    #[error("type {id}: member bit offset overflows 64 bits")]
    OffsetOverflow {
        /// The struct/union being searched.
        id: TypeId,
    },
    /// Member lookup on something that is not a struct or union.
    #[error("type {id} ({name_of_type}) is not a struct or union")]
    NotAStruct {
        /// The id asked for.
        id: TypeId,
        /// Its C-like name.
        name_of_type: String,
    },
    /// The struct/union has no member of that name.
    #[error(
        "{type_name} has no member `{member}` (it has: {})",
        list_or_none(known)
    )]
    NoMember {
        /// The struct/union's C-like name.
        type_name: String,
        /// The member asked for.
        member: String,
        /// The first few member names it does have.
        known: Vec<String>,
    },
}

/// "a, b, c", or "no named members" for an empty list.
fn list_or_none(names: &[String]) -> String {
    if names.is_empty() {
        "no named members".to_string()
    } else {
        names.join(", ")
    }
}

/// One BTF type.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Type {
    /// Id 0.
    Void,
    /// An integer (or char, or bool).
    Int {
        /// C name, e.g. "unsigned long".
        name: String,
        /// Size in bytes.
        size: u32,
        /// Signed encoding.
        signed: bool,
        /// Char encoding.
        is_char: bool,
        /// Bool encoding.
        is_bool: bool,
        /// Number of value bits.
        bits: u32,
    },
    /// A pointer.
    Ptr {
        /// Pointee.
        target: TypeId,
    },
    /// An array.
    Array {
        /// Element type.
        elem: TypeId,
        /// Number of elements.
        len: u32,
    },
    /// A struct.
    Struct {
        /// Tag name (None if anonymous).
        name: Option<String>,
        /// Size in bytes.
        size: u32,
        /// Members in declaration order.
        members: Vec<Member>,
    },
    /// A union.
    Union {
        /// Tag name (None if anonymous).
        name: Option<String>,
        /// Size in bytes.
        size: u32,
        /// Members in declaration order.
        members: Vec<Member>,
    },
    /// An enum (32- or 64-bit).
    Enum {
        /// Tag name (None if anonymous).
        name: Option<String>,
        /// Size in bytes.
        size: u32,
        /// Values are signed.
        signed: bool,
        /// Constants and their values (unsigned 64-bit values above `i64::MAX` wrap).
        values: Vec<(String, i64)>,
    },
    /// A forward declaration.
    Fwd {
        /// Tag name.
        name: String,
        /// `union` rather than `struct`.
        union: bool,
    },
    /// A typedef.
    Typedef {
        /// Its name.
        name: String,
        /// Aliased type.
        target: TypeId,
    },
    /// `volatile`.
    Volatile {
        /// Qualified type.
        target: TypeId,
    },
    /// `const`.
    Const {
        /// Qualified type.
        target: TypeId,
    },
    /// `restrict`.
    Restrict {
        /// Qualified type.
        target: TypeId,
    },
    /// A type tag (`__attribute__((btf_type_tag(...)))`, e.g. `__user`).
    TypeTag {
        /// Tagged type.
        target: TypeId,
    },
    /// A function.
    Func {
        /// Its name.
        name: String,
        /// Its `FuncProto`.
        proto: TypeId,
    },
    /// A function signature.
    FuncProto {
        /// Return type.
        ret: TypeId,
        /// Parameter types (a trailing 0 means `...`).
        params: Vec<TypeId>,
    },
    /// A variable.
    Var {
        /// Its name.
        name: String,
        /// Its type.
        target: TypeId,
    },
    /// A data section (e.g. ".data..percpu").
    Datasec {
        /// Section name.
        name: String,
        /// Size in bytes.
        size: u32,
    },
    /// A floating-point type.
    Float {
        /// C name.
        name: String,
        /// Size in bytes.
        size: u32,
    },
    /// A declaration tag.
    DeclTag {
        /// Tagged type.
        target: TypeId,
    },
}

/// A struct or union member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Name (None if anonymous).
    pub name: Option<String>,
    /// Its type.
    pub type_id: TypeId,
    /// bit offset from the start of the (outermost) struct
    pub bit_offset: u64,
    /// Some(n) for an n-bit bitfield
    pub bitfield_size: Option<u32>,
}

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

const MAGIC: u16 = 0xeb9f;
const MAGIC_SWAPPED: u16 = 0x9feb;
/// magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
const HEADER_LEN: usize = 24;
const TYPE_RECORD: usize = 12;
/// The kernel refuses identifiers longer than KSYM_NAME_LEN (512); twice that leaves
/// room while still bounding what one name can cost.
const MAX_NAME_LEN: usize = 1024;
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

const KIND_INT: u32 = 1;
const KIND_PTR: u32 = 2;
const KIND_ARRAY: u32 = 3;
const KIND_STRUCT: u32 = 4;
const KIND_UNION: u32 = 5;
const KIND_ENUM: u32 = 6;
const KIND_FWD: u32 = 7;
const KIND_TYPEDEF: u32 = 8;
const KIND_VOLATILE: u32 = 9;
const KIND_CONST: u32 = 10;
const KIND_RESTRICT: u32 = 11;
const KIND_FUNC: u32 = 12;
const KIND_FUNC_PROTO: u32 = 13;
const KIND_VAR: u32 = 14;
const KIND_DATASEC: u32 = 15;
const KIND_FLOAT: u32 = 16;
const KIND_DECL_TAG: u32 = 17;
const KIND_TYPE_TAG: u32 = 18;
const KIND_ENUM64: u32 = 19;

fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let end = at.checked_add(2)?;
    Some(u16::from_le_bytes(b.get(at..end)?.try_into().ok()?))
}

fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    Some(u32::from_le_bytes(b.get(at..end)?.try_into().ok()?))
}

/// Reads one record's fields; bounds were checked for the whole record beforehand,
/// so a short read here can only be a bug — still reported, never a panic.
fn words<const N: usize>(rec: &[u8]) -> [u32; N] {
    let mut out = [0u32; N];
    for (w, b) in out.iter_mut().zip(rec.chunks_exact(4)) {
        *w = le_u32(b, 0).unwrap_or(0);
    }
    out
}

/// What the old (no kind_flag) bitfield encoding needs once all types are read.
#[derive(Default)]
struct Legacy {
    /// Ints with a nonzero bit offset, in id order.
    int_offsets: Vec<(TypeId, u32)>,
    /// Structs/unions without kind_flag, in id order.
    aggregates: Vec<TypeId>,
}

/// State while walking the type section.
struct Parser<'a> {
    blob: &'a [u8],
    /// Blob offset one past the type section.
    sec_end: usize,
    /// Blob offset of the next unread byte.
    pos: usize,
    strs: &'a [u8],
    /// Bytes of names still allowed to be copied out.
    name_budget: usize,
    name_budget_total: usize,
}

impl<'a> Parser<'a> {
    /// Takes `count` records of `each` bytes from the type section.
    fn take(
        &mut self,
        type_id: TypeId,
        kind: u32,
        count: u32,
        each: usize,
    ) -> Result<&'a [u8], BtfError> {
        let have = self.sec_end.saturating_sub(self.pos);
        let need = u64::from(count).checked_mul(each as u64);
        let fits = need
            .and_then(|n| usize::try_from(n).ok())
            .filter(|&n| n <= have);
        let Some(n) = fits else {
            return Err(BtfError::TypePastEnd {
                type_id,
                kind,
                offset: self.pos,
                need: need.unwrap_or(u64::MAX),
                have,
            });
        };
        let start = self.pos;
        // `n <= have` so this cannot pass `sec_end`; the checked form keeps it obvious.
        let end = start.checked_add(n).filter(|&e| e <= self.sec_end);
        let rec = end.and_then(|e| Some((e, self.blob.get(start..e)?)));
        let Some((end, rec)) = rec else {
            return Err(BtfError::TypePastEnd {
                type_id,
                kind,
                offset: start,
                need: n as u64,
                have,
            });
        };
        self.pos = end;
        Ok(rec)
    }

    /// The name at `off` in the string section (None for offset 0, anonymous).
    fn name(&mut self, off: u32, type_id: TypeId) -> Result<Option<String>, BtfError> {
        if off == 0 {
            return Ok(None);
        }
        let Some(rest) = usize::try_from(off)
            .ok()
            .and_then(|o| self.strs.get(o..))
            .filter(|r| !r.is_empty())
        else {
            return Err(BtfError::NameOutOfBounds {
                type_id,
                name_off: off,
                str_len: u32::try_from(self.strs.len()).unwrap_or(u32::MAX),
            });
        };
        // Looking only this far keeps each lookup short even when many names point
        // into one huge unterminated run.
        let nul = rest.iter().take(MAX_NAME_LEN + 1).position(|&b| b == 0);
        let Some(name) = nul.and_then(|n| rest.get(..n)) else {
            return Err(if rest.len() > MAX_NAME_LEN {
                BtfError::NameTooLong {
                    type_id,
                    name_off: off,
                    max: MAX_NAME_LEN,
                }
            } else {
                BtfError::NameNotTerminated {
                    type_id,
                    name_off: off,
                }
            });
        };
        let s = String::from_utf8_lossy(name).into_owned();
        // Every copy is charged: a blob whose records all point at the same long name
        // would otherwise turn a few MB into GBs of strings.
        self.name_budget =
            self.name_budget
                .checked_sub(s.len())
                .ok_or(BtfError::NamesTooLarge {
                    type_id,
                    budget: self.name_budget_total,
                })?;
        Ok(Some(s))
    }

    /// Like `name`, but for kinds that always carry one ("" if the blob has none).
    fn name_or_empty(&mut self, off: u32, type_id: TypeId) -> Result<String, BtfError> {
        Ok(self.name(off, type_id)?.unwrap_or_default())
    }

    fn members(
        &mut self,
        type_id: TypeId,
        kind: u32,
        vlen: u32,
        kind_flag: bool,
    ) -> Result<Vec<Member>, BtfError> {
        let recs = self.take(type_id, kind, vlen, 12)?;
        let mut out = Vec::with_capacity(recs.len() / 12);
        for rec in recs.chunks_exact(12) {
            let [name_off, ty, off] = words::<3>(rec);
            let (bit_offset, bitfield_size) = if kind_flag {
                let size = off >> 24;
                (off & 0x00ff_ffff, (size != 0).then_some(size))
            } else {
                (off, None)
            };
            out.push(Member {
                name: self.name(name_off, type_id)?,
                type_id: ty,
                bit_offset: u64::from(bit_offset),
                bitfield_size,
            });
        }
        Ok(out)
    }

    /// One type record at `self.pos`, with id `id`.
    fn parse_type(&mut self, id: TypeId, legacy: &mut Legacy) -> Result<Type, BtfError> {
        let offset = self.pos;
        let head = self.take(id, 0, 1, TYPE_RECORD)?;
        let [name_off, info, size_or_type] = words::<3>(head);
        let vlen = info & 0xffff;
        let kind = (info >> 24) & 0x1f;
        let kind_flag = info >> 31 != 0;
        let ty = match kind {
            KIND_INT => {
                let [data] = words::<1>(self.take(id, kind, 1, 4)?);
                let encoding = (data >> 24) & 0x0f;
                let bit_off = (data >> 16) & 0xff;
                if bit_off != 0 {
                    legacy.int_offsets.push((id, bit_off));
                }
                Type::Int {
                    name: self.name_or_empty(name_off, id)?,
                    size: size_or_type,
                    signed: encoding & 1 != 0,
                    is_char: encoding & 2 != 0,
                    is_bool: encoding & 4 != 0,
                    bits: data & 0xff,
                }
            }
            KIND_PTR => Type::Ptr {
                target: size_or_type,
            },
            KIND_ARRAY => {
                let [elem, _index_type, len] = words::<3>(self.take(id, kind, 1, 12)?);
                Type::Array { elem, len }
            }
            KIND_STRUCT | KIND_UNION => {
                let name = self.name(name_off, id)?;
                let members = self.members(id, kind, vlen, kind_flag)?;
                if !kind_flag {
                    legacy.aggregates.push(id);
                }
                if kind == KIND_STRUCT {
                    Type::Struct {
                        name,
                        size: size_or_type,
                        members,
                    }
                } else {
                    Type::Union {
                        name,
                        size: size_or_type,
                        members,
                    }
                }
            }
            KIND_ENUM | KIND_ENUM64 => {
                let name = self.name(name_off, id)?;
                let each = if kind == KIND_ENUM { 8 } else { 12 };
                let recs = self.take(id, kind, vlen, each)?;
                let mut values = Vec::with_capacity(recs.len() / each);
                for rec in recs.chunks_exact(each) {
                    let value = if kind == KIND_ENUM {
                        let [n, v] = words::<2>(rec);
                        let v = if kind_flag {
                            i64::from(v as i32)
                        } else {
                            i64::from(v)
                        };
                        (n, v)
                    } else {
                        let [n, lo, hi] = words::<3>(rec);
                        // Unsigned values past i64::MAX wrap: the API has one value type.
                        (n, ((u64::from(hi) << 32) | u64::from(lo)) as i64)
                    };
                    values.push((self.name_or_empty(value.0, id)?, value.1));
                }
                Type::Enum {
                    name,
                    size: size_or_type,
                    signed: kind_flag,
                    values,
                }
            }
            KIND_FWD => Type::Fwd {
                name: self.name_or_empty(name_off, id)?,
                union: kind_flag,
            },
            KIND_TYPEDEF => Type::Typedef {
                name: self.name_or_empty(name_off, id)?,
                target: size_or_type,
            },
            KIND_VOLATILE => Type::Volatile {
                target: size_or_type,
            },
            KIND_CONST => Type::Const {
                target: size_or_type,
            },
            KIND_RESTRICT => Type::Restrict {
                target: size_or_type,
            },
            KIND_TYPE_TAG => Type::TypeTag {
                target: size_or_type,
            },
            KIND_FUNC => Type::Func {
                name: self.name_or_empty(name_off, id)?,
                proto: size_or_type,
            },
            KIND_FUNC_PROTO => {
                // Parameter names are not part of the API, so they are not read.
                let recs = self.take(id, kind, vlen, 8)?;
                let params = recs.chunks_exact(8).map(|r| words::<2>(r)[1]).collect();
                Type::FuncProto {
                    ret: size_or_type,
                    params,
                }
            }
            KIND_VAR => {
                self.take(id, kind, 1, 4)?;
                Type::Var {
                    name: self.name_or_empty(name_off, id)?,
                    target: size_or_type,
                }
            }
            KIND_DATASEC => {
                self.take(id, kind, vlen, 12)?;
                Type::Datasec {
                    name: self.name_or_empty(name_off, id)?,
                    size: size_or_type,
                }
            }
            KIND_FLOAT => Type::Float {
                name: self.name_or_empty(name_off, id)?,
                size: size_or_type,
            },
            KIND_DECL_TAG => {
                self.take(id, kind, 1, 4)?;
                Type::DeclTag {
                    target: size_or_type,
                }
            }
            _ => {
                return Err(BtfError::UnknownKind {
                    type_id: id,
                    kind,
                    offset,
                })
            }
        };
        Ok(ty)
    }
}

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
