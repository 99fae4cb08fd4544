//! Why a BTF blob was refused, or why a query on it failed (`BtfError`): each kind of
//! bad input or failed lookup has its own variant.

use thiserror::Error;

use super::types::TypeId;

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
