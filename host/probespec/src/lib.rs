//! Probe specs: a few lines that say where to probe a guest kernel, which hits matter
//! and what to record, turned into a kernel module for that guest's kernel.
//!
//! `parse` (syntax, [`syntax`]) → `check` against the kernel's symbols and BTF
//! ([`check`], [`kernel`]) → `generate` C against Vesper's relay API ([`gen`]) →
//! `kbuild` with the kernel's headers, cached by content ([`build`]). The module
//! carries its record layout in `.modinfo` (`vesper_relay::layout`), so the host decodes
//! its records by name with no decoder written for it.

pub mod build;
pub mod check;
mod error;
pub mod gen;
pub mod kernel;
pub mod syntax;

#[cfg(test)]
mod tests;

use std::fs;
use std::path::Path;

pub use build::{default_cache_dir, Built};
pub use check::{check, Plan};
pub use error::{Pos, SpecError};
pub use gen::{generate, GENERATOR_VERSION};
pub use kernel::{KernelFiles, KernelInfo};
pub use syntax::{parse, Spec};

/// The probe name a spec file gets when it says none: its file stem.
pub fn default_name(spec_path: &Path) -> String {
    check::sanitize_name(
        &spec_path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default(),
    )
}

/// Parses and checks `text` against `kernel`: every error a spec can have, before
/// anything is built.
pub fn check_text(text: &str, kernel: &KernelInfo, name: &str) -> Result<Plan, SpecError> {
    check(&parse(text)?, kernel, name)
}

/// The module built from the spec at `spec_path` for kernel `release` of the kit in
/// `kit` (the kit's own kernel when `None`), through the cache in `cache`; a failure as
/// one line naming the spec's line and column (what a probe group's member needs).
pub fn build_module(
    spec_path: &Path,
    kit: &Path,
    release: Option<&str>,
    cache: &Path,
) -> Result<std::path::PathBuf, String> {
    KernelFiles::from_kit(kit, release)
        .and_then(|f| build(spec_path, &f, cache))
        .map(|b| b.ko)
        .map_err(|e| e.report(spec_path))
}

/// Builds the spec at `spec_path` for `files`, from the cache in `cache` when it holds
/// it (then neither BTF nor kbuild is touched). Syntax errors come first, then the
/// kernel checks, then the build.
pub fn build(spec_path: &Path, files: &KernelFiles, cache: &Path) -> Result<Built, SpecError> {
    let text = fs::read_to_string(spec_path).map_err(error::io(spec_path))?;
    let spec = parse(&text)?;
    let symvers = build::symvers_for(files)?;
    let key = build::cache_key(&text, files, &symvers);
    let dest = cache.join(&key);
    let name = default_name(spec_path);
    if dest.join("done").is_file() {
        let module = fs::read_to_string(dest.join("done")).map_err(error::io(&dest))?;
        let (module, probe) = module
            .trim()
            .split_once(' ')
            .unwrap_or((module.trim(), &name));
        let ko = dest.join(format!("{module}.ko"));
        if ko.is_file() {
            tracing::debug!(key, "probe module from the cache");
            return Ok(Built {
                ko,
                module: module.to_string(),
                probe: probe.to_string(),
                key,
                cached: true,
            });
        }
    }
    let kernel = KernelInfo::load(files)?;
    let plan = check(&spec, &kernel, &name)?;
    let c = generate(&plan, &format!("{} (key {key})", spec_path.display()));
    fs::create_dir_all(cache).map_err(error::io(cache))?;
    let tmp = cache.join(format!(".{key}.{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    build::kbuild(&tmp, &plan.module, &c, files, &symvers)?;
    let stamp = tmp.join("done");
    fs::write(&stamp, format!("{} {}\n", plan.module, plan.name)).map_err(error::io(&stamp))?;
    build::publish(&tmp, &dest)?;
    Ok(Built {
        ko: dest.join(format!("{}.ko", plan.module)),
        module: plan.module,
        probe: plan.name,
        key,
        cached: false,
    })
}
