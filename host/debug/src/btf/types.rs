//! The BTF type model every source produces (a parsed `.BTF` blob or DWARF converted to
//! it): `Type`, its `Member`s and the `TypeId`s that link them. Plain data.

/// A type id (0 = void).
pub type TypeId = u32;

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
