//! DWARF type DIEs → [`crate::btf::Type`]: a worklist over the type graph reachable
//! from one root DIE. Each DIE met gets a type id and a place on the worklist; the
//! worklist is bounded ([`MAX_TYPES`]), nothing recurses on file data, every
//! reference is checked against its unit before it is followed.
//!
//! Only what lies inside the root is converted in full: a named struct or union met
//! only behind a pointer becomes a `Fwd` by its name, which `read` converts as a
//! root of its own when an expression dereferences it. Following every pointer
//! would pull in most of the kernel (`struct task_struct` reaches ~200,000 DIEs
//! across units) for a read that touches one member. A declaration met inside
//! (`struct mm_struct;`) is replaced by the first definition of that name in the
//! file, as a debugger does.

use std::collections::HashMap;

use gimli::{constants as dw, AttributeValue, DebugInfoOffset, UnitOffset};

use super::elf::{DwarfFile, Reader};
use super::tables::{Index, Kind};
use super::DwarfError;
use crate::btf::{Member, Type, TypeId};

/// Types one root may pull in: `struct task_struct` in Debian's 6.1 vmlinux needs
/// 290 types; a graph of 200,000 is not a real kernel's.
pub(crate) const MAX_TYPES: usize = 200_000;
/// Members, enumerators, parameters or dimensions of one DIE.
const MAX_CHILDREN: usize = 1 << 16;
/// Typedef/qualifier hops before a chain is called a loop (real chains are a few).
const MAX_CHAIN: usize = 64;

type Units<'a> = HashMap<usize, gimli::Unit<Reader<'a>>>;

/// One conversion in progress.
pub(crate) struct Converter<'a> {
    file: &'a DwarfFile,
    dwarf: gimli::Dwarf<Reader<'a>>,
    index: &'a Index,
    units: Units<'a>,
    /// DIE offset → id.
    ids: HashMap<usize, TypeId>,
    /// Index = id; entries wait as `Void` until converted.
    types: Vec<Type>,
    /// The DIE behind each id (0 for synthesized inner array dimensions).
    origin: Vec<usize>,
    /// Per id: converted in full (else a struct behind a pointer, kept as a `Fwd`).
    full: Vec<bool>,
    work: Vec<(usize, TypeId)>,
    root: String,
}

/// A DIE's unit-local view: where it is and what it says.
struct Die<'a> {
    unit: usize,
    entry: gimli::DebuggingInformationEntry<Reader<'a>>,
    offset: usize,
}

impl<'a> Converter<'a> {
    pub(crate) fn new(file: &'a DwarfFile, index: &'a Index, root: &str) -> Self {
        Converter {
            file,
            dwarf: file.dwarf(),
            index,
            units: HashMap::new(),
            ids: HashMap::new(),
            types: vec![Type::Void],
            origin: vec![0],
            full: vec![true],
            work: Vec::new(),
            root: root.to_string(),
        }
    }

    /// Converts everything reachable from the DIE at `die`; returns the types (id 0
    /// void) and the root's id.
    pub(crate) fn run(mut self, die: usize) -> Result<(Vec<Type>, TypeId), DwarfError> {
        let root = self.id_for(die, true)?;
        while let Some((off, id)) = self.work.pop() {
            let t = self.convert(off, id)?;
            if let Some(slot) = self.types.get_mut(id as usize) {
                *slot = t;
            }
        }
        self.check_chains()?;
        tracing::debug!(root = %self.root, types = self.types.len(), "DWARF types converted");
        Ok((self.types, root))
    }

    fn bad(&self, offset: usize, why: impl Into<String>) -> DwarfError {
        DwarfError::bad(self.file.path(), offset, why)
    }

    /// The id of the DIE at `off`, queueing it when it is new, or when it was met
    /// behind a pointer before and is now needed in `full`.
    fn id_for(&mut self, off: usize, full: bool) -> Result<TypeId, DwarfError> {
        if let Some(&id) = self.ids.get(&off) {
            if let Some(f) = self.full.get_mut(id as usize) {
                if full && !*f {
                    *f = true;
                    self.work.push((off, id));
                }
            }
            return Ok(id);
        }
        let id = self.push(Type::Void, off)?;
        if let Some(f) = self.full.last_mut() {
            *f = full;
        }
        self.ids.insert(off, id);
        self.work.push((off, id));
        Ok(id)
    }

    fn push(&mut self, t: Type, origin: usize) -> Result<TypeId, DwarfError> {
        if self.types.len() >= MAX_TYPES {
            return Err(DwarfError::TooManyTypes {
                path: self.file.path().to_path_buf(),
                root: self.root.clone(),
                max: MAX_TYPES,
            });
        }
        let id =
            TypeId::try_from(self.types.len()).map_err(|_| self.bad(origin, "too many types"))?;
        self.types.push(t);
        self.origin.push(origin);
        self.full.push(true);
        Ok(id)
    }

    /// The parsed unit starting at `start`.
    fn unit(&mut self, start: usize) -> Result<&gimli::Unit<Reader<'a>>, DwarfError> {
        if !self.units.contains_key(&start) {
            let path = self.file.path();
            let header = self
                .dwarf
                .unit_header(DebugInfoOffset(start))
                .map_err(|e| DwarfError::parse(path, start, e))?;
            let unit = self
                .dwarf
                .unit(header)
                .map_err(|e| DwarfError::parse(path, start, e))?;
            self.units.insert(start, unit);
        }
        self.units
            .get(&start)
            .ok_or_else(|| self.bad(start, "unit vanished"))
    }

    /// The DIE at `.debug_info` offset `off`, which must lie inside a unit's DIEs.
    fn die(&mut self, off: usize) -> Result<Die<'a>, DwarfError> {
        let start = self
            .index
            .unit_of(off)
            .ok_or_else(|| self.bad(off, "reference outside every unit of .debug_info"))?;
        let path = self.file.path().to_path_buf();
        let unit = self.unit(start)?;
        let local = UnitOffset(off - start);
        if local.0 < unit.header.header_size() || !local.is_in_bounds(&unit.header) {
            return Err(DwarfError::bad(
                &path,
                off,
                "reference outside its unit's DIEs",
            ));
        }
        let entry = unit
            .entry(local)
            .map_err(|e| DwarfError::parse(&path, off, e))?;
        Ok(Die {
            unit: start,
            entry,
            offset: off,
        })
    }

    /// Where `value` (a `DW_AT_type`-like reference in `die`) points.
    fn target(
        &mut self,
        die: &Die<'a>,
        value: AttributeValue<Reader<'a>>,
    ) -> Result<usize, DwarfError> {
        match value {
            AttributeValue::UnitRef(UnitOffset(o)) => {
                let unit = self.unit(die.unit)?;
                let in_bounds =
                    UnitOffset(o).is_in_bounds(&unit.header) && o >= unit.header.header_size();
                die.unit
                    .checked_add(o)
                    .filter(|_| in_bounds)
                    .ok_or_else(|| {
                        self.bad(die.offset, format!("reference {o:#x} is outside its unit"))
                    })
            }
            AttributeValue::DebugInfoRef(DebugInfoOffset(o)) => Ok(o),
            other => Err(self.bad(die.offset, format!("a type reference of form {other:?}"))),
        }
    }

    /// The id of what `die`'s `DW_AT_type` names (void when absent), needed in
    /// `full` or only by name.
    fn type_attr(&mut self, die: &Die<'a>, full: bool) -> Result<TypeId, DwarfError> {
        match die.entry.attr_value(dw::DW_AT_type) {
            None => Ok(0),
            Some(v) => {
                let off = self.target(die, v)?;
                self.id_for(off, full)
            }
        }
    }

    fn name(&mut self, die: &Die<'a>) -> Result<Option<String>, DwarfError> {
        let Some(v) = die.entry.attr_value(dw::DW_AT_name) else {
            return Ok(None);
        };
        let path = self.file.path().to_path_buf();
        self.unit(die.unit)?;
        let unit = self
            .units
            .get(&die.unit)
            .ok_or_else(|| self.bad(die.unit, "unit vanished"))?;
        let s = self
            .dwarf
            .attr_string(unit, v)
            .map_err(|e| DwarfError::parse(&path, die.offset, e))?;
        Ok(Some(String::from_utf8_lossy(s.slice()).into_owned()))
    }

    fn udata(&self, die: &Die<'a>, at: dw::DwAt) -> Option<u64> {
        die.entry.attr_value(at).and_then(|v| v.udata_value())
    }

    fn size(&self, die: &Die<'a>) -> Result<u32, DwarfError> {
        let size = self.udata(die, dw::DW_AT_byte_size).unwrap_or(0);
        u32::try_from(size)
            .map_err(|_| self.bad(die.offset, format!("byte size {size} is over 4 GiB")))
    }

    /// The DIEs directly under `die`, bounded.
    fn children(&mut self, die: &Die<'a>) -> Result<Vec<Die<'a>>, DwarfError> {
        let path = self.file.path().to_path_buf();
        let unit = self.unit(die.unit)?;
        let perr = |e| DwarfError::parse(&path, die.offset, e);
        let mut tree = unit.entries_tree(Some(die.entry.offset())).map_err(perr)?;
        let root = tree.root().map_err(perr)?;
        let mut it = root.children();
        let mut out = Vec::new();
        while let Some(child) = it.next().map_err(perr)? {
            if out.len() >= MAX_CHILDREN {
                return Err(DwarfError::bad(
                    &path,
                    die.offset,
                    format!("over {MAX_CHILDREN} children"),
                ));
            }
            let entry = child.entry().clone();
            let offset = die.unit.saturating_add(entry.offset().0);
            out.push(Die {
                unit: die.unit,
                entry,
                offset,
            });
        }
        Ok(out)
    }

    /// The type for the DIE at `off` (id `id`).
    fn convert(&mut self, off: usize, id: TypeId) -> Result<Type, DwarfError> {
        let mut die = self.die(off)?;
        let tag = die.entry.tag();
        let full = self.full.get(id as usize).copied().unwrap_or(true);
        let aggregate = matches!(
            tag,
            dw::DW_TAG_structure_type | dw::DW_TAG_class_type | dw::DW_TAG_union_type
        );
        if aggregate && !full {
            if let Some(name) = self.name(&die)? {
                return Ok(Type::Fwd {
                    name,
                    union: tag == dw::DW_TAG_union_type,
                });
            }
            // An anonymous one cannot be found again by name: convert it now.
            if let Some(f) = self.full.get_mut(id as usize) {
                *f = true;
            }
        }
        let is_decl = matches!(
            die.entry.attr_value(dw::DW_AT_declaration),
            Some(AttributeValue::Flag(true))
        );
        if is_decl {
            let kind = match tag {
                dw::DW_TAG_structure_type | dw::DW_TAG_class_type => Some(Kind::Struct),
                dw::DW_TAG_union_type => Some(Kind::Union),
                dw::DW_TAG_enumeration_type => Some(Kind::Enum),
                _ => None,
            };
            let name = self.name(&die)?;
            let def = match (kind, &name) {
                (Some(k), Some(n)) => self.index.lookup(n, k),
                _ => None,
            };
            match def {
                Some(def) if def != off => {
                    // The definition answers for the declaration.
                    self.ids.entry(def).or_insert(id);
                    die = self.die(def)?;
                }
                _ if kind.is_some() => {
                    return Ok(Type::Fwd {
                        name: name.unwrap_or_default(),
                        union: kind == Some(Kind::Union),
                    })
                }
                _ => {}
            }
        }
        Ok(match die.entry.tag() {
            dw::DW_TAG_base_type => self.base(&die)?,
            dw::DW_TAG_pointer_type | dw::DW_TAG_reference_type => Type::Ptr {
                target: self.type_attr(&die, false)?,
            },
            dw::DW_TAG_typedef => Type::Typedef {
                name: self.name(&die)?.unwrap_or_default(),
                target: self.type_attr(&die, full)?,
            },
            dw::DW_TAG_const_type => Type::Const {
                target: self.type_attr(&die, full)?,
            },
            dw::DW_TAG_volatile_type => Type::Volatile {
                target: self.type_attr(&die, full)?,
            },
            dw::DW_TAG_restrict_type => Type::Restrict {
                target: self.type_attr(&die, full)?,
            },
            // `_Atomic` changes no layout.
            dw::DW_TAG_atomic_type | dw::DW_TAG_immutable_type => Type::TypeTag {
                target: self.type_attr(&die, full)?,
            },
            dw::DW_TAG_structure_type | dw::DW_TAG_class_type | dw::DW_TAG_union_type => {
                self.aggregate(&die)?
            }
            dw::DW_TAG_enumeration_type => self.enumeration(&die)?,
            dw::DW_TAG_array_type => self.array(&die, full)?,
            dw::DW_TAG_subroutine_type => self.function(&die)?,
            dw::DW_TAG_unspecified_type => Type::Void,
            other => return Err(self.bad(die.offset, format!("{other} is not a type"))),
        })
    }

    fn base(&mut self, die: &Die<'a>) -> Result<Type, DwarfError> {
        let name = self.name(die)?.unwrap_or_default();
        let size = self.size(die)?;
        let enc = match die.entry.attr_value(dw::DW_AT_encoding) {
            Some(AttributeValue::Encoding(e)) => e,
            _ => dw::DW_ATE_unsigned,
        };
        Ok(match enc {
            dw::DW_ATE_float | dw::DW_ATE_complex_float => Type::Float { name, size },
            _ => Type::Int {
                name,
                size,
                signed: matches!(enc, dw::DW_ATE_signed | dw::DW_ATE_signed_char),
                is_char: matches!(enc, dw::DW_ATE_signed_char | dw::DW_ATE_unsigned_char),
                is_bool: enc == dw::DW_ATE_boolean,
                bits: size.saturating_mul(8),
            },
        })
    }

    fn aggregate(&mut self, die: &Die<'a>) -> Result<Type, DwarfError> {
        let name = self.name(die)?;
        let size = self.size(die)?;
        let mut members = Vec::new();
        for m in self.children(die)? {
            if m.entry.tag() != dw::DW_TAG_member {
                continue; // Nested type definitions, templates.
            }
            members.push(self.member(&m)?);
        }
        Ok(if die.entry.tag() == dw::DW_TAG_union_type {
            Type::Union {
                name,
                size,
                members,
            }
        } else {
            Type::Struct {
                name,
                size,
                members,
            }
        })
    }

    fn member(&mut self, m: &Die<'a>) -> Result<Member, DwarfError> {
        let bits = self.udata(m, dw::DW_AT_bit_size);
        let bitfield_size = bits
            .map(|b| u32::try_from(b).map_err(|_| self.bad(m.offset, format!("bit size {b}"))))
            .transpose()?;
        let byte_off = match m.entry.attr_value(dw::DW_AT_data_member_location) {
            None => 0,
            Some(AttributeValue::Exprloc(e)) => plus_uconst(e).ok_or_else(|| {
                self.bad(
                    m.offset,
                    "member location is an expression other than DW_OP_plus_uconst",
                )
            })?,
            Some(v) => v
                .udata_value()
                .ok_or_else(|| self.bad(m.offset, format!("member location {v:?}")))?,
        };
        let bit_offset = if let Some(b) = self.udata(m, dw::DW_AT_data_bit_offset) {
            Some(b)
        } else if let Some(b) = self.udata(m, dw::DW_AT_bit_offset) {
            // DWARF 2/3: counted from the storage unit's most significant bit.
            let unit_bits = self
                .udata(m, dw::DW_AT_byte_size)
                .unwrap_or(0)
                .saturating_mul(8);
            unit_bits
                .checked_sub(b)
                .and_then(|x| x.checked_sub(bits.unwrap_or(0)))
                .and_then(|x| x.checked_add(byte_off.checked_mul(8)?))
        } else {
            byte_off.checked_mul(8)
        }
        .ok_or_else(|| self.bad(m.offset, "member offset overflows"))?;
        Ok(Member {
            name: self.name(m)?,
            type_id: self.type_attr(m, true)?,
            bit_offset,
            bitfield_size,
        })
    }

    fn enumeration(&mut self, die: &Die<'a>) -> Result<Type, DwarfError> {
        let name = self.name(die)?;
        let size = match self.size(die)? {
            0 => 4,
            s => s,
        };
        let mut values = Vec::new();
        let mut signed = false;
        for c in self.children(die)? {
            if c.entry.tag() != dw::DW_TAG_enumerator {
                continue;
            }
            let v = match c.entry.attr_value(dw::DW_AT_const_value) {
                Some(AttributeValue::Sdata(v)) => {
                    signed |= v < 0;
                    v
                }
                Some(v) => v.udata_value().map(|u| u as i64).unwrap_or(0),
                None => 0,
            };
            values.push((self.name(&c)?.unwrap_or_default(), v));
        }
        Ok(Type::Enum {
            name,
            size,
            signed,
            values,
        })
    }

    fn array(&mut self, die: &Die<'a>, full: bool) -> Result<Type, DwarfError> {
        let elem = self.type_attr(die, full)?;
        let mut dims = Vec::new();
        for d in self.children(die)? {
            if d.entry.tag() != dw::DW_TAG_subrange_type {
                continue;
            }
            // A flexible or variable-length array has no constant bound: 0.
            let count = match (
                self.udata(&d, dw::DW_AT_count),
                d.entry.attr_value(dw::DW_AT_upper_bound),
            ) {
                (Some(c), _) => c,
                (None, Some(AttributeValue::Sdata(-1))) => 0,
                (None, Some(v)) => v.udata_value().map_or(0, |u| u.saturating_add(1)),
                (None, None) => 0,
            };
            let len = u32::try_from(count)
                .map_err(|_| self.bad(d.offset, format!("{count} elements")))?;
            dims.push(len);
        }
        // `int a[2][3]`: the DIE is the outer array of inner `int [3]`s.
        let (&outer, inner) = dims.split_first().unwrap_or((&0, &[]));
        let mut elem = elem;
        for &len in inner.iter().rev() {
            elem = self.push(Type::Array { elem, len }, 0)?;
        }
        Ok(Type::Array { elem, len: outer })
    }

    fn function(&mut self, die: &Die<'a>) -> Result<Type, DwarfError> {
        let ret = self.type_attr(die, false)?;
        let mut params = Vec::new();
        for p in self.children(die)? {
            match p.entry.tag() {
                dw::DW_TAG_formal_parameter => params.push(self.type_attr(&p, false)?),
                dw::DW_TAG_unspecified_parameters => params.push(0),
                _ => {}
            }
        }
        Ok(Type::FuncProto { ret, params })
    }

    /// Typedefs and qualifiers must end somewhere: a chain that comes back to itself
    /// (a typedef naming itself) is a broken file, reported with the DIE.
    fn check_chains(&self) -> Result<(), DwarfError> {
        let next = |id: TypeId| match self.types.get(id as usize) {
            Some(
                Type::Typedef { target, .. }
                | Type::Const { target }
                | Type::Volatile { target }
                | Type::Restrict { target }
                | Type::TypeTag { target },
            ) => Some(*target),
            _ => None,
        };
        for start in 0..self.types.len() {
            let mut cur = start as TypeId;
            let mut hops = 0;
            while let Some(t) = next(cur) {
                hops += 1;
                if hops > MAX_CHAIN {
                    return Err(DwarfError::ReferenceCycle {
                        path: self.file.path().to_path_buf(),
                        offset: self.origin.get(start).copied().unwrap_or(0),
                        root: self.root.clone(),
                    });
                }
                cur = t;
            }
        }
        Ok(())
    }
}

/// A member location written as `DW_OP_plus_uconst N` (DWARF 2 style).
fn plus_uconst(e: gimli::Expression<Reader<'_>>) -> Option<u64> {
    let mut r = e.0;
    let op = gimli::Reader::read_u8(&mut r).ok()?;
    if op != dw::DW_OP_plus_uconst.0 {
        return None;
    }
    let v = gimli::Reader::read_uleb128(&mut r).ok()?;
    gimli::Reader::is_empty(&r).then_some(v)
}

/// Where the object a variable DIE's type describes: its `DW_AT_type` target.
pub(crate) fn variable_type(
    file: &DwarfFile,
    index: &Index,
    off: usize,
) -> Result<usize, DwarfError> {
    let mut c = Converter::new(file, index, "variable");
    let die = c.die(off)?;
    match die.entry.attr_value(dw::DW_AT_type) {
        Some(v) => c.target(&die, v),
        None => Err(DwarfError::bad(file.path(), off, "variable without a type")),
    }
}
