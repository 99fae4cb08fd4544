//! Opened files kept by path, so a second `read --vmlinux` neither maps nor indexes
//! again; a file whose size or mtime changed is opened afresh.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use super::elf::DwarfFile;
use super::DwarfError;

/// Files kept at once (each holds a mapping and its index, ~100 MB for a vmlinux).
const MAX_FILES: usize = 4;

/// A file as opened: its size and mtime then, and the file.
type Entry = (u64, Option<SystemTime>, Arc<DwarfFile>);

/// Opened DWARF files by path, size and mtime.
#[derive(Debug, Default)]
pub struct DwarfFiles {
    files: Mutex<HashMap<PathBuf, Entry>>,
}

impl DwarfFiles {
    /// An empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The file at `path`, opened once per (size, mtime).
    pub fn get(&self, path: &Path) -> Result<Arc<DwarfFile>, DwarfError> {
        let meta = std::fs::metadata(path).map_err(|source| DwarfError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        let (size, mtime) = (meta.len(), meta.modified().ok());
        if let Some((s, m, f)) = self.files.lock().expect("files lock").get(path) {
            if *s == size && *m == mtime {
                return Ok(f.clone());
            }
        }
        let f = Arc::new(DwarfFile::open(path)?);
        let mut files = self.files.lock().expect("files lock");
        if files.len() >= MAX_FILES && !files.contains_key(path) {
            files.clear();
        }
        files.insert(path.to_path_buf(), (size, mtime, f.clone()));
        Ok(f)
    }
}
