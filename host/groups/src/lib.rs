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
//!
//! [[module]]
//! spec = "exit_svc.probe"           # a probe spec, built for the guest's kernel
//! ```
//!
//! [`ProbeGroup::load`] reads and checks the whole file — keys, every member's module
//! image (read, ELF and `.modinfo` checked), duplicates, parameters — before anything is
//! pushed, each problem a [`GroupError`] naming the file, line and member. A `spec`
//! member is turned into a module by the caller's [`SpecBuilder`] (the CLI and vesperd
//! build it with `vesper-probespec` for the guest's kernel; this crate builds nothing),
//! then checked like any other. Loading and unloading, all or nothing, is vesperd's part.
#![deny(missing_docs)]

mod error;
mod parse;

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

pub use error::{GroupError, Location};

/// Turns a `spec` member's file (resolved against the group file's directory) into a
/// built module file, or says why it could not (shown with the member's place).
pub type SpecBuilder<'a> = dyn FnMut(&Path) -> Result<PathBuf, String> + 'a;

/// A [`SpecBuilder`] for where nothing can be built: every `spec` member is refused.
pub fn no_spec_builds(spec: &Path) -> Result<PathBuf, String> {
    Err(format!(
        "{} is a probe spec, which cannot be built here; use `vesper group apply` or build it with `vesper probe build` and name the module with `path`",
        spec.display()
    ))
}

/// Most members a group may have.
pub const MAX_MEMBERS: usize = 32;

/// One module of a group, checked and read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// 1-based position among the file's `[[module]]` tables (how errors name it).
    pub number: usize,
    /// The module file, resolved against the group file's directory (for a `spec`
    /// member, the module built from it).
    pub path: PathBuf,
    /// The probe spec the module was built from, for a `spec` member.
    pub spec: Option<PathBuf>,
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
    /// Reads and checks a group file and every module it names; `specs` builds the
    /// `spec` members ([`no_spec_builds`] where none may be built).
    pub fn load(path: &Path, specs: &mut SpecBuilder<'_>) -> Result<ProbeGroup, GroupError> {
        let text = vesper_toml_located::read("group", path)?;
        Self::from_toml(&text, path, specs)
    }

    /// Checks group text as if read from `file` (member paths are relative to its
    /// directory).
    pub fn from_toml(
        text: &str,
        file: &Path,
        specs: &mut SpecBuilder<'_>,
    ) -> Result<ProbeGroup, GroupError> {
        parse::parse(text, file, specs)
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
            match &m.spec {
                Some(spec) => {
                    let _ = write!(s, "  {} (built from {})", m.module, spec.display());
                }
                None => {
                    let _ = write!(s, "  {} ({})", m.module, m.path.display());
                }
            }
            if !m.params.is_empty() {
                let _ = write!(s, " {}", m.params.join(" "));
            }
            s.push('\n');
        }
        s
    }
}
