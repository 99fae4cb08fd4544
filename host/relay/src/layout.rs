//! Record layouts that travel with the module that writes them.
//!
//! A module generated from a probe spec (`host/probespec`) writes `RECORD_SPEC` records
//! whose fields only that spec knows. It carries their description in its `.modinfo`
//! (key [`MODINFO_KEY`]), one line of text:
//!
//! ```text
//! vesper-record/1 probe=exit_svc size=32 severity=urgent kind=service_exit field=pid:i32:0 field=comm:str16:8
//! ```
//!
//! The host reads it when it pushes the module and decodes that module's records by
//! name with it. The text comes from a module file, so it is checked like guest input:
//! bounded lengths and counts, every field inside the record.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use vesper_shared_abi::SPEC_RECORD_MAX;

/// The `.modinfo` key holding a module's record layout.
pub const MODINFO_KEY: &str = "vesper_record";
/// First word of a layout line; the number is the format's version.
pub const LAYOUT_MAGIC: &str = "vesper-record/1";
/// Most fields a layout describes.
pub const MAX_FIELDS: usize = 64;
/// Longest probe or field name.
pub const MAX_NAME: usize = 63;

/// A field's wire type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FieldType {
    /// A little-endian integer of 1, 2, 4 or 8 bytes.
    Int {
        /// Size in bytes.
        size: u8,
        /// Two's complement.
        signed: bool,
    },
    /// A NUL-padded text of `len` bytes (a task name, a char array).
    Text {
        /// Bytes in the record.
        len: u32,
    },
}

impl FieldType {
    /// Bytes the field takes in the record.
    pub fn size(self) -> u32 {
        match self {
            FieldType::Int { size, .. } => u32::from(size),
            FieldType::Text { len } => len,
        }
    }

    /// Alignment of the field in the record (C's natural alignment).
    pub fn align(self) -> u32 {
        match self {
            FieldType::Int { size, .. } => u32::from(size),
            FieldType::Text { .. } => 1,
        }
    }
}

impl fmt::Display for FieldType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FieldType::Int { size, signed } => {
                write!(
                    f,
                    "{}{}",
                    if *signed { 'i' } else { 'u' },
                    u32::from(*size) * 8
                )
            }
            FieldType::Text { len } => write!(f, "str{len}"),
        }
    }
}

/// One named field of a record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldLayout {
    /// Its name in decoded records and events.
    pub name: String,
    /// Byte offset in the payload.
    pub offset: u32,
    /// Wire type.
    pub ty: FieldType,
}

/// How a spec module's records are laid out and what they mean.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordLayout {
    /// The probe's name.
    pub probe: String,
    /// Payload size in bytes.
    pub size: u32,
    /// Urgent records are failure signals (an event each); bulk ones are only records.
    pub urgent: bool,
    /// The event kind an urgent record becomes.
    pub kind: Option<String>,
    /// Fields in record order.
    pub fields: Vec<FieldLayout>,
}

/// A decoded field value.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum FieldValue {
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// Text up to its first NUL.
    Text(String),
}

/// What is wrong with a layout line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("bad record layout ({MODINFO_KEY}): {0}")]
pub struct LayoutError(pub String);

fn bad(msg: impl Into<String>) -> LayoutError {
    LayoutError(msg.into())
}

fn check_name(what: &str, name: &str) -> Result<(), LayoutError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_NAME
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "{what} name {name:?} is not 1-{MAX_NAME} of A-Za-z0-9_"
        )))
    }
}

fn parse_type(s: &str) -> Result<FieldType, LayoutError> {
    let int = |size: u8, signed| Ok(FieldType::Int { size, signed });
    match s {
        "i8" => int(1, true),
        "i16" => int(2, true),
        "i32" => int(4, true),
        "i64" => int(8, true),
        "u8" => int(1, false),
        "u16" => int(2, false),
        "u32" => int(4, false),
        "u64" => int(8, false),
        _ => match s.strip_prefix("str").and_then(|n| n.parse::<u32>().ok()) {
            Some(len) if (1..=SPEC_RECORD_MAX).contains(&len) => Ok(FieldType::Text { len }),
            _ => Err(bad(format!("unknown field type {s:?}"))),
        },
    }
}

impl RecordLayout {
    /// Parses a layout line (from a module's `.modinfo`: untrusted).
    pub fn parse(text: &str) -> Result<RecordLayout, LayoutError> {
        let mut words = text.split_ascii_whitespace();
        match words.next() {
            Some(LAYOUT_MAGIC) => {}
            Some(other) => {
                return Err(bad(format!(
                    "starts with {other:?}, not {LAYOUT_MAGIC} (a newer Vesper's module?)"
                )))
            }
            None => return Err(bad("empty")),
        }
        let mut l = RecordLayout {
            probe: String::new(),
            size: 0,
            urgent: false,
            kind: None,
            fields: Vec::new(),
        };
        let mut size = None;
        for w in words {
            let (key, value) = w
                .split_once('=')
                .ok_or_else(|| bad(format!("{w:?} is not key=value")))?;
            match key {
                "probe" => {
                    check_name("probe", value)?;
                    l.probe = value.to_string();
                }
                "size" => {
                    let n = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| (1..=SPEC_RECORD_MAX).contains(n))
                        .ok_or_else(|| {
                            bad(format!("size {value:?} not in 1..={SPEC_RECORD_MAX}"))
                        })?;
                    size = Some(n);
                }
                "severity" => {
                    l.urgent = match value {
                        "urgent" => true,
                        "bulk" => false,
                        _ => return Err(bad(format!("severity {value:?} is not urgent|bulk"))),
                    }
                }
                "kind" => {
                    check_name("kind", value)?;
                    l.kind = Some(value.to_string());
                }
                "field" => {
                    if l.fields.len() == MAX_FIELDS {
                        return Err(bad(format!("more than {MAX_FIELDS} fields")));
                    }
                    let mut parts = value.split(':');
                    let (Some(name), Some(ty), Some(off), None) =
                        (parts.next(), parts.next(), parts.next(), parts.next())
                    else {
                        return Err(bad(format!("field {value:?} is not NAME:TYPE:OFFSET")));
                    };
                    check_name("field", name)?;
                    if l.fields.iter().any(|f| f.name == name) {
                        return Err(bad(format!("field {name} twice")));
                    }
                    let ty = parse_type(ty)?;
                    let offset = off
                        .parse::<u32>()
                        .map_err(|_| bad(format!("field {name}: offset {off:?}")))?;
                    l.fields.push(FieldLayout {
                        name: name.to_string(),
                        offset,
                        ty,
                    });
                }
                // Keys a later version adds are skipped: the fields are what decoding needs.
                _ => {}
            }
        }
        if l.probe.is_empty() {
            return Err(bad("no probe="));
        }
        l.size = size.ok_or_else(|| bad("no size="))?;
        for f in &l.fields {
            let end = f.offset.checked_add(f.ty.size());
            if end.is_none_or(|e| e > l.size) {
                return Err(bad(format!(
                    "field {} ({} at {}) ends past the record's {} bytes",
                    f.name, f.ty, f.offset, l.size
                )));
            }
        }
        Ok(l)
    }

    /// Decodes a payload by name; `None` when it is shorter than the layout's size.
    pub fn decode(&self, payload: &[u8]) -> Option<BTreeMap<String, FieldValue>> {
        if payload.len() < self.size as usize {
            return None;
        }
        let mut out = BTreeMap::new();
        for f in &self.fields {
            let at = f.offset as usize;
            let raw = payload.get(at..at + f.ty.size() as usize)?;
            let v = match f.ty {
                FieldType::Int { size, signed } => {
                    let mut b = [0u8; 8];
                    b[..raw.len()].copy_from_slice(raw);
                    let u = u64::from_le_bytes(b);
                    if signed {
                        let shift = 64 - u32::from(size) * 8;
                        FieldValue::Int(((u << shift) as i64) >> shift)
                    } else {
                        FieldValue::UInt(u)
                    }
                }
                FieldType::Text { .. } => {
                    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
                    FieldValue::Text(String::from_utf8_lossy(&raw[..end]).into_owned())
                }
            };
            out.insert(f.name.clone(), v);
        }
        Some(out)
    }
}

impl fmt::Display for RecordLayout {
    /// The layout line [`RecordLayout::parse`] reads.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{LAYOUT_MAGIC} probe={} size={} severity={}",
            self.probe,
            self.size,
            if self.urgent { "urgent" } else { "bulk" }
        )?;
        if let Some(k) = &self.kind {
            write!(f, " kind={k}")?;
        }
        for fl in &self.fields {
            write!(f, " field={}:{}:{}", fl.name, fl.ty, fl.offset)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> RecordLayout {
        RecordLayout {
            probe: "exit_svc".into(),
            size: 32,
            urgent: true,
            kind: Some("service_exit".into()),
            fields: vec![
                FieldLayout {
                    name: "pid".into(),
                    offset: 0,
                    ty: FieldType::Int {
                        size: 4,
                        signed: true,
                    },
                },
                FieldLayout {
                    name: "adj".into(),
                    offset: 4,
                    ty: FieldType::Int {
                        size: 2,
                        signed: true,
                    },
                },
                FieldLayout {
                    name: "comm".into(),
                    offset: 8,
                    ty: FieldType::Text { len: 16 },
                },
                FieldLayout {
                    name: "code".into(),
                    offset: 24,
                    ty: FieldType::Int {
                        size: 8,
                        signed: false,
                    },
                },
            ],
        }
    }

    #[test]
    fn round_trips_and_decodes_by_name() {
        let l = sample();
        let text = l.to_string();
        assert_eq!(RecordLayout::parse(&text).unwrap(), l);
        let mut p = vec![0u8; 32];
        p[..4].copy_from_slice(&(-5i32).to_le_bytes());
        p[4..6].copy_from_slice(&(-1000i16).to_le_bytes());
        p[8..11].copy_from_slice(b"svc");
        p[24..32].copy_from_slice(&0x900u64.to_le_bytes());
        let d = l.decode(&p).unwrap();
        assert_eq!(d["pid"], FieldValue::Int(-5));
        assert_eq!(d["adj"], FieldValue::Int(-1000));
        assert_eq!(d["comm"], FieldValue::Text("svc".into()));
        assert_eq!(d["code"], FieldValue::UInt(0x900));
        assert_eq!(l.decode(&p[..31]), None);
    }

    #[test]
    fn hostile_layouts_are_refused() {
        for bad in [
            "",
            "vesper-record/9 probe=x size=8",
            "vesper-record/1 size=8",
            "vesper-record/1 probe=x",
            "vesper-record/1 probe=x size=99999",
            "vesper-record/1 probe=x size=8 field=a:i64:4",
            "vesper-record/1 probe=x size=8 field=a:i64:4294967295",
            "vesper-record/1 probe=x size=8 field=a:f32:0",
            "vesper-record/1 probe=x size=8 field=a:u8:0 field=a:u8:1",
            "vesper-record/1 probe=x size=8 field=a-b:u8:0",
            "vesper-record/1 probe=x size=8 severity=loud",
            "vesper-record/1 probe=x size=8 field=a:u8",
        ] {
            assert!(RecordLayout::parse(bad).is_err(), "{bad:?} accepted");
        }
    }
}
