//! The cluster's configuration: crm shell templates (`tools/cluster/cib/*.crm`) with
//! `@NAME@` placeholders, rendered for the lab and loaded with `crm configure load
//! update` on a live cluster — the same command a cluster of machines would run. Extra
//! templates (`up --cib FILE`) add to it: the event bridge, alerts, fencing.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::LabError;

/// The lab's template variables. Templates may use any of them; `@X@` for an unknown `X`
/// is an error, so a typo never reaches Pacemaker.
#[derive(Debug, Clone)]
pub struct Vars(pub BTreeMap<&'static str, String>);

/// Where things are, for [`Vars::new`].
#[derive(Debug, Clone)]
pub struct Places {
    /// Directory of `vesper` and `vesperd`.
    pub bin_dir: PathBuf,
    /// The guest kit.
    pub kit_dir: PathBuf,
    /// Its probe modules (the manifest's `modules_dir`).
    pub modules_dir: PathBuf,
    /// The lab's node names.
    pub nodes: Vec<String>,
    /// Where every node sees every node's `/run` (as `DIR/nN/run`).
    pub node_runs: PathBuf,
}

impl Vars {
    /// The variables for a lab.
    pub fn new(p: &Places) -> Self {
        let module = |m: &str| p.modules_dir.join(format!("{m}.ko")).display().to_string();
        let sock = |f: &str| format!("{}/{f}", crate::NODE_VESPER_RUN);
        let mut v = BTreeMap::new();
        v.insert("GUEST", "web1".to_string());
        v.insert("VESPER", p.bin_dir.join("vesper").display().to_string());
        v.insert("SOCKET", sock("vesperd.sock"));
        v.insert("ALERT_SOCKET", crate::NODE_ALERT_SOCKET.to_string());
        v.insert("KIT_DIR", p.kit_dir.display().to_string());
        v.insert("MODULES_DIR", p.modules_dir.display().to_string());
        v.insert("EXIT_PROBE", module("vesper_exit_probe"));
        v.insert("PANIC_PROBE", module("vesper_panic_probe"));
        v.insert("OOM_PROBE", module("vesper_oom_probe"));
        v.insert("NODE1", p.nodes.first().cloned().unwrap_or_default());
        v.insert("NODES", p.nodes.join(" "));
        v.insert("VIP", crate::VIP.to_string());
        v.insert(
            "TOOLS",
            crate::repo_root().join("tools").display().to_string(),
        );
        v.insert("NODE_RUNS", p.node_runs.display().to_string());
        v.insert("CIDR", "24".to_string());
        v.insert("NIC", "eth0".to_string());
        Vars(v)
    }

    /// Sets (or overrides) placeholders from `NAME=VALUE` pairs; names are 1-32 of
    /// A-Z, 0-9 and `_`.
    pub fn set(&mut self, pairs: &[(String, String)]) -> Result<(), LabError> {
        for (k, v) in pairs {
            let ok = (1..=32).contains(&k.len())
                && k.chars()
                    .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_');
            if !ok {
                return Err(LabError::Usage(format!(
                    "--var {k}={v}: a placeholder name is 1-32 of A-Z, 0-9 and _"
                )));
            }
            // Leaked once per up: the map's keys are static names.
            let name: &'static str = match self.0.keys().find(|n| **n == k.as_str()) {
                Some(n) => n,
                None => Box::leak(k.clone().into_boxed_str()),
            };
            self.0.insert(name, v.clone());
        }
        Ok(())
    }

    /// `template` with every `@NAME@` replaced; unknown names are listed in the error.
    pub fn render(&self, template: &str, what: &Path) -> Result<String, LabError> {
        let mut out = String::with_capacity(template.len());
        let mut unknown = Vec::new();
        let mut rest = template;
        while let Some(at) = rest.find('@') {
            out.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let name_len = after
                .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                .unwrap_or(after.len());
            let name = &after[..name_len];
            if name_len > 0 && after[name_len..].starts_with('@') {
                match self.0.get(name) {
                    Some(v) => out.push_str(v),
                    None => unknown.push(name.to_string()),
                }
                rest = &after[name_len + 1..];
            } else {
                out.push('@');
                rest = after;
            }
        }
        out.push_str(rest);
        if unknown.is_empty() {
            Ok(out)
        } else {
            Err(LabError::Usage(format!(
                "CIB template {}: unknown placeholders {} (known: {})",
                what.display(),
                unknown
                    .iter()
                    .map(|u| format!("@{u}@"))
                    .collect::<Vec<_>>()
                    .join(" "),
                self.0.keys().copied().collect::<Vec<_>>().join(" ")
            )))
        }
    }
}

/// The base template shipped beside this crate.
pub fn base_template() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cib/base.crm")
}

/// The guest kit's probe modules directory, from its manifest.
pub fn modules_dir(kit_dir: &Path) -> Result<PathBuf, LabError> {
    Ok(manifest_paths(kit_dir, &["modules_dir"])?.remove(0))
}

/// The guest kit's kernel and initramfs, from its manifest.
pub fn kit_boot_files(kit_dir: &Path) -> Result<(PathBuf, PathBuf), LabError> {
    let mut v = manifest_paths(kit_dir, &["kernel", "initramfs"])?;
    let initrd = v.remove(1);
    Ok((v.remove(0), initrd))
}

/// The paths the kit's manifest gives for `keys`, in order.
fn manifest_paths(kit_dir: &Path, keys: &[&str]) -> Result<Vec<PathBuf>, LabError> {
    let manifest = kit_dir.join("manifest.json");
    let bad = |why: String| {
        LabError::Usage(format!(
            "guest kit {}: {why}; build it with `cargo run -p vesper-guest-kit -- build` (or set --kit-dir / VESPER_KIT_DIR)",
            kit_dir.display()
        ))
    };
    let text = std::fs::read_to_string(&manifest)
        .map_err(|e| bad(format!("cannot read {}: {e}", manifest.display())))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("manifest.json: {e}")))?;
    keys.iter()
        .map(|k| {
            v[k].as_str()
                .map(PathBuf::from)
                .ok_or_else(|| bad(format!("manifest.json has no {k}")))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars() -> Vars {
        Vars::new(&Places {
            bin_dir: "/b".into(),
            kit_dir: "/k".into(),
            modules_dir: "/k/modules/6.1".into(),
            nodes: vec!["n1".into(), "n2".into()],
            node_runs: "/run/vesper-lab/l/nodes".into(),
        })
    }

    #[test]
    fn placeholders_are_replaced_and_unknown_ones_refused() {
        let v = vars();
        let p = Path::new("t.crm");
        assert_eq!(
            v.render("a @NODE1@ @VESPER@ user@host @ x@@", p).unwrap(),
            "a n1 /b/vesper user@host @ x@@"
        );
        assert_eq!(
            v.render("@EXIT_PROBE@:watch_comm=svc", p).unwrap(),
            "/k/modules/6.1/vesper_exit_probe.ko:watch_comm=svc"
        );
        let e = v.render("@NOPE@ @NODE1@ @ALSO_NOT@", p).unwrap_err();
        let s = e.to_string();
        assert!(
            s.contains("@NOPE@ @ALSO_NOT@") && s.contains("t.crm"),
            "{s}"
        );
    }

    #[test]
    fn the_shipped_templates_render() {
        let text = std::fs::read_to_string(base_template()).unwrap();
        let out = vars().render(&text, &base_template()).unwrap();
        assert!(out.contains("ocf:vesper:vesper"));
        assert!(out.contains("socket=/run/vesper/vesperd.sock"));
        assert!(out.contains("migration-threshold=1"));
        assert!(!out.contains("@NODE1@"));
        let events = base_template().with_file_name("events.crm");
        let out = vars()
            .render(&std::fs::read_to_string(&events).unwrap(), &events)
            .unwrap();
        assert!(out.contains("cluster bridge") && out.contains("/tools/ocf/alert_vesper"));
        assert!(out.contains("to /run/vesper-alerts/alerts.sock"));
        let fencing = base_template().with_file_name("fencing.crm");
        let out = vars()
            .render(&std::fs::read_to_string(&fencing).unwrap(), &fencing)
            .unwrap();
        assert!(out.contains("socket=/run/vesper-lab/l/nodes/n2/run/vesper/vesperd.sock"));
        assert!(out.contains("pcmk_host_map=\"n1:web1\"") && out.contains("stonith-enabled=true"));
    }
}
