//! Probe groups: a named set of kernel modules with their parameters, pushed into a
//! guest and removed as one. A group file is TOML:
//!
//! ```toml
//! name = "web-probes"
//!
//! [[module]]
//! path = "vesper_exit_probe.ko"     # relative to the group file
//! params = ["watch_comm=svc"]
//!
//! [[module]]
//! path = "/abs/vesper_panic_probe.ko"
//! order = -1                        # optional: lower loads first; ties keep file order
//! ```
//!
//! [`ProbeGroup::load`] reads and checks the whole file — keys, every member's module
//! image (read, ELF and `.modinfo` checked), duplicates, parameters — before anything is
//! pushed, each problem a [`GroupError`] naming the file, line and member. A member may
//! later be `spec = "file.spec"` (a probe spec, built on demand); that is refused for now.
//! Loading and unloading, all or nothing, is vesperd's part.
#![deny(missing_docs)]

mod error;
mod parse;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use error::{GroupError, Location};

/// Most members a group may have.
pub const MAX_MEMBERS: usize = 32;

/// One module of a group, checked and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// 1-based position among the file's `[[module]]` tables (how errors name it).
    pub number: usize,
    /// The module file, resolved against the group file's directory.
    pub path: PathBuf,
    /// The module's name (its `.modinfo` `name=`), what `lsmod` and `rmmod` use.
    pub module: String,
    /// Parameters, `name=value`.
    pub params: Vec<String>,
    /// Load order key (default 0).
    pub order: i64,
    /// The image.
    pub image: Vec<u8>,
}

impl Member {
    /// The file name, for messages.
    pub fn file_name(&self) -> String {
        self.path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default()
    }
}

/// A checked group: every member's module is readable, valid and named once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeGroup {
    /// Group name.
    pub name: String,
    /// The file it was read from.
    pub file: PathBuf,
    /// Members in load order (unload in reverse).
    pub members: Vec<Member>,
}

impl ProbeGroup {
    /// Reads and checks a group file and every module it names.
    pub fn load(path: &Path) -> Result<ProbeGroup, GroupError> {
        let text = std::fs::read_to_string(path).map_err(|source| GroupError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_toml(&text, path)
    }

    /// Checks group text as if read from `file` (member paths are relative to its
    /// directory).
    pub fn from_toml(text: &str, file: &Path) -> Result<ProbeGroup, GroupError> {
        parse::parse(text, file)
    }

    /// Module names in load order.
    pub fn modules(&self) -> Vec<String> {
        self.members.iter().map(|m| m.module.clone()).collect()
    }

    /// One line per member, in load order.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "group {}: {} module(s), loaded in this order:\n",
            self.name,
            self.members.len()
        );
        for m in &self.members {
            let _ = write!(s, "  {} ({})", m.module, m.path.display());
            if !m.params.is_empty() {
                let _ = write!(s, " {}", m.params.join(" "));
            }
            s.push('\n');
        }
        s
    }
}
