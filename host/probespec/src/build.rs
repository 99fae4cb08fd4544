//! kbuild for generated modules, and the cache that makes a second build free.
//!
//! The cache key is a hash of the spec's text, the kernel release, the generator
//! version, the relay API and ABI headers the C includes, and the frontend's export
//! CRCs: the same spec for the same guest kernel is built once. Each entry is a
//! directory `CACHE/KEY/` holding the C, its Kbuild, the headers and the `.ko`;
//! it is built under a temporary name and renamed into place when complete.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use crate::error::{io, SpecError};
use crate::kernel::{front_symvers, KernelFiles};

/// The relay API header probes include, as committed (generated headers are not retyped).
pub const RELAY_API_H: &str = include_str!("../../../guest-module/include/vesper_relay_api.h");
/// The ABI header generated from `shared-abi` by `tools/abi-header`.
pub const ABI_H: &str = include_str!("../../../guest-module/include/vesper_abi.h");

/// 64-bit FNV-1a, as hex.
pub(crate) fn fnv(parts: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for &b in p.iter().chain(&[0xff]) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// The default cache: `$VESPER_PROBE_CACHE`, else `$XDG_CACHE_HOME/vesper/probes`, else
/// `~/.cache/vesper/probes`.
pub fn default_cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("VESPER_PROBE_CACHE") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    base.join("vesper").join("probes")
}

/// The cache key of `spec_text` built for `files`.
pub fn cache_key(spec_text: &str, files: &KernelFiles, symvers: &str) -> String {
    fnv(&[
        spec_text.as_bytes(),
        files.release.as_bytes(),
        crate::gen::GENERATOR_VERSION.to_string().as_bytes(),
        RELAY_API_H.as_bytes(),
        ABI_H.as_bytes(),
        symvers.as_bytes(),
    ])
}

/// Runs kbuild on `c_source` for `files` in `dir` (created), leaving `dir/MODULE.ko`.
pub fn kbuild(
    dir: &Path,
    module: &str,
    c_source: &str,
    files: &KernelFiles,
    symvers: &str,
) -> Result<PathBuf, SpecError> {
    let t = Instant::now();
    fs::create_dir_all(dir).map_err(io(dir))?;
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        fs::write(&p, text).map_err(io(&p))
    };
    write(&format!("{module}.c"), c_source)?;
    write("vesper_relay_api.h", RELAY_API_H)?;
    write("vesper_abi.h", ABI_H)?;
    write("front.symvers", symvers)?;
    write(
        "Kbuild",
        &format!("obj-m := {module}.o\nccflags-y := -I$(src) -Werror\n"),
    )?;
    let out = Command::new("make")
        .arg("-C")
        .arg(&files.kdir)
        .arg(format!("M={}", dir.display()))
        .arg(format!(
            "KBUILD_EXTRA_SYMBOLS={}",
            dir.join("front.symvers").display()
        ))
        .arg("modules")
        .output()
        .map_err(io(Path::new("make")))?;
    let ko = dir.join(format!("{module}.ko"));
    if !out.status.success() || !ko.is_file() {
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let lines: Vec<&str> = text.lines().collect();
        return Err(SpecError::Build {
            module: module.to_string(),
            kdir: files.kdir.clone(),
            dir: dir.to_path_buf(),
            tail: lines[lines.len().saturating_sub(25)..].join("\n"),
        });
    }
    tracing::info!(
        module,
        ms = t.elapsed().as_millis() as u64,
        "built probe module"
    );
    Ok(ko)
}

/// A built module: where it is and whether the cache had it.
#[derive(Debug, Clone)]
pub struct Built {
    /// The `.ko`.
    pub ko: PathBuf,
    /// Kernel module name.
    pub module: String,
    /// Probe (and channel) name.
    pub probe: String,
    /// The cache key.
    pub key: String,
    /// True when nothing was built.
    pub cached: bool,
}

/// Reads the front's CRCs once per build call.
pub fn symvers_for(files: &KernelFiles) -> Result<String, SpecError> {
    let _shared = match &files.kit_lock {
        Some(p) if p.is_file() => {
            let f = fs::File::open(p).map_err(io(p))?;
            f.lock_shared().map_err(io(p))?;
            Some(f)
        }
        _ => None,
    };
    front_symvers(&files.front)
}

/// Moves a finished build into its cache place (another builder may have won: fine).
pub(crate) fn publish(tmp: &Path, dest: &Path) -> Result<(), SpecError> {
    match fs::rename(tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.join("done").is_file() => {
            let _ = fs::remove_dir_all(tmp);
            Ok(())
        }
        Err(e) => Err(SpecError::Io {
            path: dest.to_path_buf(),
            source: e,
        }),
    }
}
