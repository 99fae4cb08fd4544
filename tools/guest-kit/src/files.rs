//! File plumbing of the kit's steps: the change hash, atomic writes, reads that name
//! the file, and the walks that find module sources and built modules.

use std::fs;
use std::path::{Path, PathBuf};

use crate::error::{io_err, KitError};

/// FNV-1a 64, enough to notice changed inputs.
#[derive(Clone, Copy)]
pub(crate) struct Fnv(u64);

impl Fnv {
    pub(crate) fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    pub(crate) fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // length prefix keeps (a, bc) and (ab, c) apart
        for &x in (b.len() as u64).to_le_bytes().iter().chain(b) {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
    pub(crate) fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

pub(crate) fn write_atomic(path: &Path, data: &[u8], mode: Option<u32>) -> Result<(), KitError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
    if let Some(m) = mode {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(m)).map_err(io_err("chmod", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("rename into", path))
}

pub(crate) fn read(path: &Path) -> Result<Vec<u8>, KitError> {
    fs::read(path).map_err(io_err("read", path))
}

/// Files under `dir` (recursively; hidden entries skipped) whose name `keep` takes,
/// added to `out`.
pub(crate) fn walk(
    dir: &Path,
    keep: &dyn Fn(&str) -> bool,
    out: &mut Vec<PathBuf>,
) -> Result<(), KitError> {
    let rd = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for e in rd {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        if e.file_type().map_err(io_err("stat", &path))?.is_dir() {
            walk(&path, keep, out)?;
        } else if keep(&name) {
            out.push(path);
        }
    }
    Ok(())
}

/// Module sources under `dir` (recursively; hidden entries and generated `*.mod.c`
/// skipped), sorted.
pub(crate) fn module_sources(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), KitError> {
    let source = |name: &str| {
        (name.ends_with(".c") && !name.ends_with(".mod.c"))
            || name.ends_with(".h")
            || name == "Kbuild"
            || name == "Makefile"
    };
    walk(dir, &source, out)?;
    out.sort();
    Ok(())
}

/// Built `*.ko` files under `dir` (recursively, hidden entries skipped).
pub(crate) fn built_modules(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), KitError> {
    walk(dir, &|name: &str| name.ends_with(".ko"), out)
}
