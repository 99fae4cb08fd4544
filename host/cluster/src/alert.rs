//! A Pacemaker alert, as Pacemaker hands it to an alert agent (`CRM_alert_*` variables in
//! the environment), read into the payload of a `cluster` event.

use serde_json::{json, Value};

use crate::ClusterError;

/// Longest value kept from one variable: an alert is a line, not a document.
const MAX_VALUE: usize = 512;

/// One alert.
#[derive(Debug, Clone, PartialEq)]
pub struct Alert {
    /// `node`, `fencing`, `resource` or `attribute`.
    pub kind: String,
    /// The node it is about.
    pub node: String,
    /// The resource, for resource alerts.
    pub resource: Option<String>,
    /// The `cluster` event's payload: the alert's fields and a one-line summary.
    pub payload: Value,
}

impl Alert {
    /// Reads an alert from `vars` (the process environment, or a test's list).
    pub fn from_vars<I, K, V>(vars: I) -> Result<Alert, ClusterError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: AsRef<str>,
        V: AsRef<str>,
    {
        let mut fields = serde_json::Map::new();
        for (k, v) in vars {
            if let Some(name) = k.as_ref().strip_prefix("CRM_alert_") {
                let mut v = v.as_ref().to_string();
                if v.len() > MAX_VALUE {
                    let mut cut = MAX_VALUE;
                    while !v.is_char_boundary(cut) {
                        cut -= 1;
                    }
                    v.truncate(cut);
                }
                fields.insert(name.to_ascii_lowercase(), Value::String(v));
            }
        }
        let get = |k: &str| {
            fields
                .get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let kind = get("kind").ok_or(ClusterError::NotAnAlert(
            "CRM_alert_kind is not set: run this as a Pacemaker alert agent",
        ))?;
        if !["node", "fencing", "resource", "attribute"].contains(&kind.as_str()) {
            return Err(ClusterError::UnknownAlert(kind));
        }
        let node = get("node").unwrap_or_default();
        let resource = get("rsc");
        let desc = get("desc").unwrap_or_default();
        let summary = match kind.as_str() {
            "resource" => {
                let task = get("task").unwrap_or_else(|| "?".into());
                let interval = get("interval_ms").or_else(|| get("interval"));
                let op = match interval.as_deref() {
                    Some(i) if i != "0" => format!("{task} (every {i} ms)"),
                    _ => task,
                };
                let rc = get("rc").unwrap_or_default();
                let target = get("target_rc").unwrap_or_default();
                let verdict = if rc == target || (target.is_empty() && rc == "0") {
                    "ok".to_string()
                } else {
                    format!("failed: {desc} (rc {rc}, expected {target})")
                };
                format!(
                    "resource {} {op} on {node}: {verdict}",
                    resource.as_deref().unwrap_or("?")
                )
            }
            "node" => format!("node {node} is {desc}"),
            "fencing" => format!(
                "fencing of {node}: {desc} (rc {})",
                get("rc").unwrap_or_default()
            ),
            _ => format!(
                "attribute {} on {node} = {}",
                get("attribute_name").unwrap_or_default(),
                get("attribute_value").unwrap_or_default()
            ),
        };
        let mut payload = json!({ "alert": fields, "summary": summary });
        payload["alert_kind"] = Value::String(kind.clone());
        Ok(Alert {
            kind,
            node,
            resource,
            payload,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_monitor_reads_as_one_line_with_every_field_kept() {
        let a = Alert::from_vars([
            ("CRM_alert_kind", "resource"),
            ("CRM_alert_node", "node1"),
            ("CRM_alert_rsc", "web1-vm"),
            ("CRM_alert_task", "monitor"),
            ("CRM_alert_interval", "10000"),
            ("CRM_alert_rc", "1"),
            ("CRM_alert_target_rc", "0"),
            ("CRM_alert_desc", "error"),
            ("PATH", "/usr/bin"),
        ])
        .unwrap();
        assert_eq!(a.resource.as_deref(), Some("web1-vm"));
        assert_eq!(
            a.payload["summary"],
            "resource web1-vm monitor (every 10000 ms) on node1: failed: error (rc 1, expected 0)"
        );
        assert_eq!(a.payload["alert"]["task"], "monitor");
        assert!(a.payload["alert"].get("path").is_none());
    }

    #[test]
    fn node_and_fencing_alerts_and_bad_ones() {
        let a = Alert::from_vars([
            ("CRM_alert_kind", "node"),
            ("CRM_alert_node", "node1"),
            ("CRM_alert_desc", "lost"),
        ])
        .unwrap();
        assert_eq!(a.payload["summary"], "node node1 is lost");
        let e = Alert::from_vars([("HOME", "/root")]).unwrap_err();
        assert!(e.to_string().contains("CRM_alert_kind"), "{e}");
        let e = Alert::from_vars([("CRM_alert_kind", "weather")]).unwrap_err();
        assert!(e.to_string().contains("weather"), "{e}");
        let long = "x".repeat(10_000);
        let a = Alert::from_vars([
            ("CRM_alert_kind", "node"),
            ("CRM_alert_desc", long.as_str()),
        ])
        .unwrap();
        assert_eq!(
            a.payload["alert"]["desc"].as_str().unwrap().len(),
            MAX_VALUE
        );
    }
}
