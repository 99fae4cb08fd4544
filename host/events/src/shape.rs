//! The JSON shape of each event kind's payload, pinned: what keys a subscriber may rely
//! on and their JSON types. [`check`] holds an event to it, and to one more rule — no
//! string in a payload is a Rust `Debug` rendering (`Ok(…)`, `Some(…)`, `ExitStatus(…)`),
//! which is how internals leak into an interface. The e2e harness checks every event
//! the tests see, so a payload that changes shape fails them; README's event section
//! documents the same table.

use serde_json::Value;

use crate::{Event, EventKind};

/// A JSON type a key must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonType {
    /// A string.
    Str,
    /// An integer (signed or unsigned).
    Int,
    /// An integer, or `null` where the value is not known.
    IntOrNull,
    /// Any number.
    Num,
    /// `true` or `false`.
    Bool,
    /// An object.
    Obj,
    /// Any value, `null` included (data another program defines: QEMU's, Pacemaker's).
    Any,
}

impl JsonType {
    fn matches(self, v: &Value) -> bool {
        match self {
            JsonType::Str => v.is_string(),
            JsonType::Int => v.is_i64() || v.is_u64(),
            JsonType::IntOrNull => v.is_null() || v.is_i64() || v.is_u64(),
            JsonType::Num => v.is_number(),
            JsonType::Bool => v.is_boolean(),
            JsonType::Obj => v.is_object(),
            JsonType::Any => true,
        }
    }
}

use JsonType::{Any, Bool, Int, IntOrNull, Num, Obj, Str};

/// Keys every probe record's payload carries besides its own.
const RECORD: &[(&str, JsonType)] = &[
    ("type", Str),
    ("cpu", Int),
    ("record_seq", Int),
    // null while the guest's clock is not mapped yet (just after boot or adoption).
    ("latency_ns", IntOrNull),
];

/// The keys `kind`'s payload always has, with their types. A payload may have more
/// (QEMU's event data, an alert's variables), never fewer.
pub fn required(kind: EventKind) -> Vec<(&'static str, JsonType)> {
    let own: &[(&str, JsonType)] = match kind {
        EventKind::Panic => &[("pid", Int), ("message", Str)],
        EventKind::ServiceExit => &[
            ("pid", Int),
            ("tid", Int),
            ("exit_code", Int),
            ("signal", Int),
            ("status", Int),
            ("comm", Str),
        ],
        EventKind::Oom => &[
            ("pid", Int),
            ("oom_score_adj", Int),
            ("total_vm_kb", Int),
            ("anon_rss_kb", Int),
            ("file_rss_kb", Int),
            ("comm", Str),
        ],
        // QEMU's event data as QEMU sends it (the builtin VMM sends the same keys).
        EventKind::GuestPanicked | EventKind::Stop => &[],
        EventKind::Shutdown | EventKind::Reset => &[("guest", Bool), ("reason", Str)],
        // Plus one of: `code` (exit code), `signal` + `signal_number`, `reason`.
        EventKind::VmExit => &[("requested", Bool)],
        EventKind::GuestUp => &[
            ("kernel_release", Str),
            ("vermagic", Str),
            ("nr_cpus", Int),
            ("region_size", Int),
            ("generation", Int),
        ],
        // The failover engine's (`action`: an object) or a cluster bridge's (a string).
        EventKind::Decision => &[
            ("guest", Str),
            ("event_seq", Int),
            ("event_kind", Str),
            ("action", Any),
            ("reason", Str),
        ],
        EventKind::ModuleLoaded => &[
            ("module", Str),
            ("bytes", Int),
            ("init_ms", Num),
            ("after_host_gave_up", Bool),
        ],
        EventKind::ModuleFailed => &[
            ("module", Str),
            ("bytes", Int),
            ("init_ms", Num),
            ("after_host_gave_up", Bool),
            ("errno", Int),
            ("errno_name", Str),
            ("error", Str),
        ],
        EventKind::Cluster => &[("alert_kind", Str), ("summary", Str), ("alert", Obj)],
        // Plus the spec's own fields, by the names it gave them.
        EventKind::Probe => &[("probe", Str)],
        EventKind::VcpuStall => &[
            ("vcpu", Int),
            ("tid", Int),
            ("state", Str),
            ("stalled_ms", Int),
            ("threshold_ms", Int),
        ],
    };
    let record = matches!(
        kind,
        EventKind::Panic | EventKind::ServiceExit | EventKind::Oom | EventKind::Probe
    );
    own.iter()
        .chain(if record { RECORD } else { &[] })
        .copied()
        .collect()
}

/// Holds `e`'s payload to its kind's shape; says what is wrong.
pub fn check(e: &Event) -> Result<(), String> {
    let p = &e.payload;
    let what = |why: String| Err(format!("event #{} ({}): {why}: {p}", e.seq, e.kind));
    if !p.is_object() {
        return what("the payload is not an object".into());
    }
    for (key, ty) in required(e.kind) {
        match p.get(key) {
            None => return what(format!("no {key:?}")),
            Some(v) if !ty.matches(v) => return what(format!("{key:?} is not {ty:?}")),
            Some(_) => {}
        }
    }
    if e.kind == EventKind::VmExit {
        let how = [
            p["code"].is_i64(),
            p["signal"].is_string() && p["signal_number"].is_i64(),
            p["reason"].is_string(),
        ];
        if how.iter().filter(|b| **b).count() != 1 {
            return what("a vm_exit says one of code, signal + signal_number, reason".into());
        }
    }
    if let Some(s) = debug_leak(p) {
        return what(format!("{s:?} is a Rust Debug rendering, not data"));
    }
    Ok(())
}

/// A string in `v` that looks like Rust's `Debug` output (checked on every `--json`
/// reply the e2e tests read, too).
pub fn debug_leak(v: &Value) -> Option<&str> {
    match v {
        Value::String(s) => {
            let leaky = ["Ok(", "Err(", "Some(", "ExitStatus(", "unix_wait_status"];
            leaky.iter().any(|l| s.contains(l)).then_some(s.as_str())
        }
        Value::Array(a) => a.iter().find_map(debug_leak),
        Value::Object(o) => o.values().find_map(debug_leak),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Source;

    fn ev(kind: EventKind, payload: Value) -> Event {
        Event {
            seq: 1,
            guest: "g".into(),
            kind,
            time_ns: 1,
            happened_ns: None,
            source: Source::Process,
            payload,
        }
    }

    #[test]
    fn vm_exit_says_how_as_data_and_the_old_debug_string_fails() {
        for ok in [
            json!({"code": 0, "requested": true}),
            json!({"signal": "SIGKILL", "signal_number": 9, "requested": false}),
            json!({"reason": "stopped by the host", "requested": true}),
        ] {
            check(&ev(EventKind::VmExit, ok)).unwrap();
        }
        let old = json!({"status": "Ok(ExitStatus(unix_wait_status(0)))", "requested": false});
        let e = check(&ev(EventKind::VmExit, old)).unwrap_err();
        assert!(e.contains("one of code"), "{e}");
        let both = json!({"code": 0, "reason": "x", "requested": false});
        assert!(check(&ev(EventKind::VmExit, both)).is_err());
        let leak = json!({"code": 0, "requested": false, "note": "Some(3)"});
        let e = check(&ev(EventKind::VmExit, leak)).unwrap_err();
        assert!(e.contains("Debug rendering"), "{e}");
    }

    #[test]
    fn a_record_needs_its_fields_and_the_record_keys() {
        let exit = json!({"type": "exit", "pid": 9, "tid": 9, "exit_code": 9, "signal": 9,
            "status": 0, "comm": "svc", "cpu": 0, "record_seq": 3, "latency_ns": 1000});
        check(&ev(EventKind::ServiceExit, exit.clone())).unwrap();
        let mut no_comm = exit.clone();
        no_comm.as_object_mut().unwrap().remove("comm");
        let e = check(&ev(EventKind::ServiceExit, no_comm)).unwrap_err();
        assert!(e.contains("no \"comm\""), "{e}");
        let mut pid_text = exit;
        pid_text["pid"] = "9".into();
        assert!(check(&ev(EventKind::ServiceExit, pid_text)).is_err());
        assert!(
            check(&ev(EventKind::Stop, Value::Null)).is_err(),
            "not an object"
        );
        check(&ev(EventKind::Stop, json!({}))).unwrap();
    }

    #[test]
    fn a_vcpu_stall_says_which_vcpu_how_and_how_long() {
        let stall = json!({"vcpu": 0, "tid": 4242, "state": "out_of_guest",
            "stalled_ms": 512, "threshold_ms": 500});
        check(&ev(EventKind::VcpuStall, stall.clone())).unwrap();
        let mut no_tid = stall.clone();
        no_tid.as_object_mut().unwrap().remove("tid");
        assert!(check(&ev(EventKind::VcpuStall, no_tid)).is_err());
        let mut ms_text = stall;
        ms_text["stalled_ms"] = "512".into();
        assert!(check(&ev(EventKind::VcpuStall, ms_text)).is_err());
    }
}
