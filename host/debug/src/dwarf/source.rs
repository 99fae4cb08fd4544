//! What `read` asks of a DWARF file: a type by its C name, or a global variable's
//! type, each as a small [`Btf`] holding the graph reachable from it (cached per
//! root), so the evaluator and renderer run unchanged over either source.

use std::sync::Arc;

use super::convert::{variable_type, Converter};
use super::elf::DwarfFile;
use super::tables::{Converted, Index, IndexStats, Kind};
use super::DwarfError;
use crate::btf::Btf;

/// Roots kept converted; past this the cache starts over (each read names one).
const MAX_ROOTS: usize = 64;

impl DwarfFile {
    /// The name index, built on first use (one pass over `.debug_info`).
    fn index(&self) -> Result<&Index, DwarfError> {
        match self
            .index
            .get_or_init(|| Index::build(self).map_err(|e| e.to_string()))
        {
            Ok(i) => Ok(i),
            Err(why) => Err(DwarfError::Index {
                path: self.path().to_path_buf(),
                why: why.clone(),
            }),
        }
    }

    /// Builds the index now (it is otherwise built by the first lookup) and says
    /// what it cost.
    pub fn index_stats(&self) -> Result<IndexStats, DwarfError> {
        Ok(self.index()?.stats)
    }

    /// The type `name` as C writes it: "struct task_struct", "union U", "enum E", or a
    /// typedef or base type by its DWARF name ("u64", "long unsigned int").
    pub fn type_named(&self, name: &str) -> Result<Arc<Converted>, DwarfError> {
        let n = name.trim();
        let index = self.index()?;
        let (bare, kinds): (&str, &[Kind]) = if let Some(s) = n.strip_prefix("struct ") {
            (s, &[Kind::Struct, Kind::Union])
        } else if let Some(s) = n.strip_prefix("union ") {
            (s, &[Kind::Union, Kind::Struct])
        } else if let Some(s) = n.strip_prefix("enum ") {
            (s, &[Kind::Enum])
        } else {
            (
                n,
                &[
                    Kind::Typedef,
                    Kind::Base,
                    Kind::Struct,
                    Kind::Union,
                    Kind::Enum,
                ],
            )
        };
        let bare = bare.trim();
        let die = kinds
            .iter()
            .find_map(|&k| index.lookup(bare, k))
            .ok_or_else(|| DwarfError::NoType {
                path: self.path().to_path_buf(),
                name: n.to_string(),
            })?;
        self.convert_root(format!("type {n}"), die)
    }

    /// The type of global variable `name`, if the file declares one.
    pub fn variable(&self, name: &str) -> Result<Option<Arc<Converted>>, DwarfError> {
        let key = format!("variable {name}");
        // Cached before the variable's DIE is even read: that parses its unit.
        if let Some(c) = self.cached(&key) {
            return Ok(Some(c));
        }
        let index = self.index()?;
        let Some(var) = index.lookup(name, Kind::Variable) else {
            return Ok(None);
        };
        let die = variable_type(self, index, var)?;
        self.convert_root(key, die).map(Some)
    }

    fn cached(&self, key: &str) -> Option<Arc<Converted>> {
        self.roots.lock().expect("roots lock").get(key).cloned()
    }

    fn convert_root(&self, key: String, die: usize) -> Result<Arc<Converted>, DwarfError> {
        if let Some(c) = self.cached(&key) {
            return Ok(c);
        }
        let index = self.index()?;
        let (types, root) = Converter::new(self, index, &key).run(die)?;
        let c = Arc::new(Converted {
            btf: Btf::from_types(types),
            root,
        });
        let mut roots = self.roots.lock().expect("roots lock");
        if roots.len() >= MAX_ROOTS {
            roots.clear();
        }
        roots.insert(key, c.clone());
        Ok(c)
    }
}
