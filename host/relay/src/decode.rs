//! Typed decoding of the record kinds `shared-abi` defines.

use std::mem::size_of;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vesper_shared_abi::*;
use vm_memory::ByteValued;

use crate::layout::{FieldValue, RecordLayout};

/// A decoded record payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Decoded {
    /// The guest kernel panicked.
    Panic {
        /// CPU that panicked.
        cpu: u32,
        /// Task that panicked.
        pid: i32,
        /// Panic message.
        message: String,
    },
    /// A watched task exited.
    Exit {
        /// Thread-group id.
        pid: i32,
        /// Thread id.
        tid: i32,
        /// `wait`-style exit code.
        exit_code: i32,
        /// Killing signal, 0 if it exited.
        signal: i32,
        /// Exit status when not signalled.
        status: i32,
        /// Command name.
        comm: String,
    },
    /// The OOM killer chose a victim.
    Oom {
        /// Victim pid.
        pid: i32,
        /// oom_score_adj.
        oom_score_adj: i32,
        /// Total VM, KiB.
        total_vm_kb: u64,
        /// Anonymous RSS, KiB.
        anon_rss_kb: u64,
        /// File RSS, KiB.
        file_rss_kb: u64,
        /// Command name.
        comm: String,
    },
    /// Stress fixture record.
    Stress {
        /// Index in the run.
        index: u64,
        /// Records in the run.
        total: u64,
    },
    /// A probe spec's record, decoded by name with the layout its module carries.
    Probe {
        /// The probe's name.
        probe: String,
        /// Its fields by name.
        fields: BTreeMap<String, FieldValue>,
    },
    /// No decoder for this type, or a payload too short for its type.
    Raw {
        /// Record type.
        rtype: u16,
        /// Payload bytes.
        len: usize,
    },
}

fn text(field: &[u8]) -> String {
    String::from_utf8_lossy(c_str_bytes(field)).into_owned()
}

fn parse<T: ByteValued + Default>(payload: &[u8]) -> Option<T> {
    let raw = payload.get(..size_of::<T>())?;
    let mut v = T::default();
    v.as_mut_slice().copy_from_slice(raw);
    Some(v)
}

/// Decodes a payload of type `rtype`. Never fails: unknown or short payloads are `Raw`.
pub fn decode(rtype: u16, payload: &[u8]) -> Decoded {
    let raw = Decoded::Raw {
        rtype,
        len: payload.len(),
    };
    match rtype {
        RECORD_PANIC => parse::<PanicRecord>(payload).map(|p| Decoded::Panic {
            cpu: p.cpu,
            pid: p.pid,
            message: text(&p.message),
        }),
        RECORD_EXIT => parse::<ExitRecord>(payload).map(|e| Decoded::Exit {
            pid: e.pid,
            tid: e.tid,
            exit_code: e.exit_code,
            signal: e.signal,
            status: e.status,
            comm: text(&e.comm),
        }),
        RECORD_OOM => parse::<OomRecord>(payload).map(|o| Decoded::Oom {
            pid: o.pid,
            oom_score_adj: o.oom_score_adj,
            total_vm_kb: o.total_vm_kb,
            anon_rss_kb: o.anon_rss_kb,
            file_rss_kb: o.file_rss_kb,
            comm: text(&o.comm),
        }),
        RECORD_STRESS => parse::<StressRecord>(payload).map(|s| Decoded::Stress {
            index: s.index,
            total: s.total,
        }),
        _ => None,
    }
    .unwrap_or(raw)
}

/// Decodes like [`decode`], and a `RECORD_SPEC` payload with `layout` (the writing
/// module's); without a layout, or too short for it, such a payload stays `Raw`.
pub fn decode_with(rtype: u16, payload: &[u8], layout: Option<&RecordLayout>) -> Decoded {
    if rtype == RECORD_SPEC {
        if let Some(fields) = layout.and_then(|l| l.decode(payload)) {
            return Decoded::Probe {
                probe: layout.map(|l| l.probe.clone()).unwrap_or_default(),
                fields,
            };
        }
    }
    decode(rtype, payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_types_decode_and_short_ones_stay_raw() {
        let mut e = ExitRecord {
            pid: 42,
            tid: 42,
            exit_code: 9,
            signal: 9,
            ..Default::default()
        };
        fill_c_str(&mut e.comm, b"svc");
        assert_eq!(
            decode(RECORD_EXIT, e.as_slice()),
            Decoded::Exit {
                pid: 42,
                tid: 42,
                exit_code: 9,
                signal: 9,
                status: 0,
                comm: "svc".into()
            }
        );
        assert_eq!(
            decode(RECORD_EXIT, &e.as_slice()[..10]),
            Decoded::Raw {
                rtype: RECORD_EXIT,
                len: 10
            }
        );
        assert_eq!(decode(999, b"abc"), Decoded::Raw { rtype: 999, len: 3 });
        let mut p = PanicRecord {
            cpu: 1,
            pid: 7,
            ..Default::default()
        };
        p.message = [b'x'; 256]; // no NUL: still bounded
        assert!(
            matches!(decode(RECORD_PANIC, p.as_slice()), Decoded::Panic { message, .. } if message.len() == 256)
        );
    }

    #[test]
    fn spec_records_decode_by_name_only_with_their_layout() {
        let l = RecordLayout::parse(
            "vesper-record/1 probe=p size=8 severity=bulk field=pid:i32:0 field=n:u32:4",
        )
        .unwrap();
        let mut p = [0u8; 8];
        p[..4].copy_from_slice(&7i32.to_le_bytes());
        p[4..].copy_from_slice(&9u32.to_le_bytes());
        match decode_with(RECORD_SPEC, &p, Some(&l)) {
            Decoded::Probe { probe, fields } => {
                assert_eq!(probe, "p");
                assert_eq!(fields["pid"], FieldValue::Int(7));
                assert_eq!(fields["n"], FieldValue::UInt(9));
            }
            d => panic!("{d:?}"),
        }
        // No layout, a short payload, or another type: not decoded by the layout.
        assert_eq!(
            decode_with(RECORD_SPEC, &p, None),
            Decoded::Raw {
                rtype: RECORD_SPEC,
                len: 8
            }
        );
        assert_eq!(
            decode_with(RECORD_SPEC, &p[..7], Some(&l)),
            Decoded::Raw {
                rtype: RECORD_SPEC,
                len: 7
            }
        );
        assert!(matches!(
            decode_with(RECORD_EXIT, &p, Some(&l)),
            Decoded::Raw { .. }
        ));
    }
}
