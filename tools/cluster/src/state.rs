//! The record of what `up` made (`STATE_DIR/state.json`), saved after every step so that
//! `down` knows it even when `up` stopped half-way.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::cmd::io_err;
use crate::{Lab, LabError};

/// One thing `up` made, in the order made; `down` undoes them in reverse.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Made {
    /// A named network namespace (`ip netns add`).
    Netns {
        /// Its name.
        name: String,
    },
    /// A mount on the host (namespace files, the private ns directory).
    Mount {
        /// Its mount point.
        path: PathBuf,
    },
    /// A daemon started inside a node.
    Process {
        /// The node.
        node: String,
        /// Which daemon (`corosync`, `pacemakerd`, `vesperd`).
        daemon: String,
        /// Its pid.
        pid: u32,
    },
}

/// A node of the lab.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// `n1`, ...
    pub name: String,
    /// Its address on the lab's subnet.
    pub addr: String,
}

/// The lab's record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct State {
    /// The lab's name.
    pub lab: String,
    /// Its nodes.
    pub nodes: Vec<NodeInfo>,
    /// Directory of `vesper` and `vesperd`.
    pub bin_dir: PathBuf,
    /// The guest kit.
    pub kit_dir: PathBuf,
    /// What was made, in order.
    pub made: Vec<Made>,
}

impl State {
    /// The lab's record; `NotUp` when there is none.
    pub fn load(lab: &Lab) -> Result<Self, LabError> {
        let path = lab.state_file();
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(LabError::NotUp {
                    lab: lab.name.clone(),
                    dir: lab.state_dir.clone(),
                })
            }
            Err(e) => return Err(io_err("read the lab's state", &path)(e)),
        };
        serde_json::from_str(&text).map_err(|e| {
            io_err("read the lab's state", &path)(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                e,
            ))
        })
    }

    /// Writes the record (atomically: a crash leaves the old one or the new one).
    pub fn save(&self, lab: &Lab) -> Result<(), LabError> {
        let path = lab.state_file();
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self).expect("state serialises");
        std::fs::write(&tmp, text).map_err(io_err("save the lab's state", &tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err("save the lab's state", &path))
    }

    /// Records `m` and saves at once.
    pub fn record(&mut self, lab: &Lab, m: Made) -> Result<(), LabError> {
        self.made.push(m);
        self.save(lab)
    }

    /// The pids of `daemon` on each node, as recorded.
    pub fn pids(&self, daemon: &str) -> Vec<(String, u32)> {
        self.made
            .iter()
            .filter_map(|m| match m {
                Made::Process {
                    node,
                    daemon: d,
                    pid,
                } if d == daemon => Some((node.clone(), *pid)),
                _ => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_finds_pids() {
        let dir = std::env::temp_dir().join(format!("vesper-lab-state-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("t")).unwrap();
        let lab = Lab::with_root("t", &dir).unwrap();
        assert!(matches!(State::load(&lab), Err(LabError::NotUp { .. })));
        let mut s = State {
            lab: "t".into(),
            ..Default::default()
        };
        s.record(
            &lab,
            Made::Netns {
                name: "t-n1".into(),
            },
        )
        .unwrap();
        s.record(
            &lab,
            Made::Process {
                node: "n1".into(),
                daemon: "vesperd".into(),
                pid: 42,
            },
        )
        .unwrap();
        let back = State::load(&lab).unwrap();
        assert_eq!(back, s);
        assert_eq!(back.pids("vesperd"), [("n1".to_string(), 42)]);
        assert!(back.pids("corosync").is_empty());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
