//! Reading a BTF blob's type section: the format's constants (magic, header, kinds),
//! bounds-checked little-endian reads, and the `Parser` that walks the type records,
//! checking every length and offset against the blob and copying names out only within
//! a budget. It yields `Type`s; the indexes and queries over them are `Btf`'s.

use super::error::BtfError;
use super::types::{Member, Type, TypeId};

pub(super) const MAGIC: u16 = 0xeb9f;
pub(super) const MAGIC_SWAPPED: u16 = 0x9feb;
/// magic, version, flags, hdr_len, type_off, type_len, str_off, str_len.
pub(super) const HEADER_LEN: usize = 24;
pub(super) const TYPE_RECORD: usize = 12;
/// The kernel refuses identifiers longer than KSYM_NAME_LEN (512); twice that leaves
/// room while still bounding what one name can cost.
pub(super) const MAX_NAME_LEN: usize = 1024;

pub(super) const KIND_INT: u32 = 1;
pub(super) const KIND_PTR: u32 = 2;
pub(super) const KIND_ARRAY: u32 = 3;
pub(super) const KIND_STRUCT: u32 = 4;
pub(super) const KIND_UNION: u32 = 5;
pub(super) const KIND_ENUM: u32 = 6;
pub(super) const KIND_FWD: u32 = 7;
pub(super) const KIND_TYPEDEF: u32 = 8;
pub(super) const KIND_VOLATILE: u32 = 9;
pub(super) const KIND_CONST: u32 = 10;
pub(super) const KIND_RESTRICT: u32 = 11;
pub(super) const KIND_FUNC: u32 = 12;
pub(super) const KIND_FUNC_PROTO: u32 = 13;
pub(super) const KIND_VAR: u32 = 14;
pub(super) const KIND_DATASEC: u32 = 15;
pub(super) const KIND_FLOAT: u32 = 16;
pub(super) const KIND_DECL_TAG: u32 = 17;
pub(super) const KIND_TYPE_TAG: u32 = 18;
pub(super) const KIND_ENUM64: u32 = 19;

pub(super) fn le_u16(b: &[u8], at: usize) -> Option<u16> {
    let end = at.checked_add(2)?;
    Some(u16::from_le_bytes(b.get(at..end)?.try_into().ok()?))
}

pub(super) fn le_u32(b: &[u8], at: usize) -> Option<u32> {
    let end = at.checked_add(4)?;
    Some(u32::from_le_bytes(b.get(at..end)?.try_into().ok()?))
}

/// Reads one record's fields; bounds were checked for the whole record beforehand,
/// so a short read here can only be a bug — still reported, never a panic.
pub(super) fn words<const N: usize>(rec: &[u8]) -> [u32; N] {
    let mut out = [0u32; N];
    for (w, b) in out.iter_mut().zip(rec.chunks_exact(4)) {
        *w = le_u32(b, 0).unwrap_or(0);
    }
    out
}

/// What the old (no kind_flag) bitfield encoding needs once all types are read.
#[derive(Default)]
pub(super) struct Legacy {
    /// Ints with a nonzero bit offset, in id order.
    pub(super) int_offsets: Vec<(TypeId, u32)>,
    /// Structs/unions without kind_flag, in id order.
    pub(super) aggregates: Vec<TypeId>,
}

/// State while walking the type section.
pub(super) struct Parser<'a> {
    pub(super) blob: &'a [u8],
    /// Blob offset one past the type section.
    pub(super) sec_end: usize,
    /// Blob offset of the next unread byte.
    pub(super) pos: usize,
    pub(super) strs: &'a [u8],
    /// Bytes of names still allowed to be copied out.
    pub(super) name_budget: usize,
    pub(super) name_budget_total: usize,
}

impl<'a> Parser<'a> {
    /// Takes `count` records of `each` bytes from the type section.
    pub(super) fn take(
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
    pub(super) fn name(&mut self, off: u32, type_id: TypeId) -> Result<Option<String>, BtfError> {
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
    pub(super) fn name_or_empty(&mut self, off: u32, type_id: TypeId) -> Result<String, BtfError> {
        Ok(self.name(off, type_id)?.unwrap_or_default())
    }

    pub(super) fn members(
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
    pub(super) fn parse_type(&mut self, id: TypeId, legacy: &mut Legacy) -> Result<Type, BtfError> {
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
