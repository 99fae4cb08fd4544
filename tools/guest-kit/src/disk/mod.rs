//! The kit's Debian disk guest: a real Debian 12 installation on a qcow2 disk that
//! boots through firmware (SeaBIOS, GRUB), with Vesper's frontend installed as a user
//! would install it — the `vesper-frontend` DKMS package ([`deb`]), whose postinst
//! builds the module for the guest's kernel inside the guest's own root — and the
//! tests' hand as a systemd service on ttyS0 (`guest/disk/`).
//!
//! Step 10 builds the package, step 11 the disk ([`plan`] says what it is made of,
//! [`image`] builds it), each only when its inputs changed.

pub(crate) mod deb;
mod image;
mod log;
mod mounts;
pub(crate) mod plan;
#[cfg(test)]
mod tests;

use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub(crate) use deb::{ensure_frontend_deb, FrontendDeb};
use plan::{disk_name, DiskPlan};

use crate::files::write_atomic;
use crate::kernel::is_root;
use crate::{io_err, KitError, Progress};

/// The disk's directory in the kit.
pub(crate) fn disk_dir(kit_dir: &Path) -> PathBuf {
    kit_dir.join("disk")
}

/// What step 11 leaves: the disk, or why there is none.
pub(crate) struct DiskOutcome {
    pub(crate) disk: Option<PathBuf>,
    pub(crate) missing: Option<String>,
}

/// `.NAME.hash`: the stamp holding the cache key `NAME` was built from.
fn stamp_of(disk: &Path) -> PathBuf {
    let name = disk.file_name().unwrap_or_default().to_string_lossy();
    disk.with_file_name(format!(".{name}.hash"))
}

/// Step 11: `<kit>/disk/debian-12-<release>.qcow2`, built unless its stamp holds the
/// plan's key. With `skip` a current disk is still recorded, a missing or outdated one
/// is not built. Disks of other kernel releases are removed once the new one is in
/// place.
pub(crate) fn ensure_disk(
    p: &Progress,
    kit_dir: &Path,
    release: &str,
    helpers: (&Path, &Path),
    deb: FrontendDeb,
    skip: bool,
) -> Result<(DiskOutcome, String), KitError> {
    let plan = DiskPlan::new(release, helpers.0, helpers.1, deb)?;
    let key = plan.key();
    let dir = disk_dir(kit_dir);
    let disk = dir.join(disk_name(release));
    let stamp = stamp_of(&disk);
    let current = fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == key);
    if disk.is_file() && current {
        let note = format!("up to date ({}, inputs unchanged)", size_of(&disk));
        let done = DiskOutcome {
            disk: Some(disk),
            missing: None,
        };
        return Ok((done, note));
    }
    if skip {
        let why = format!(
            "not built (skipped: --no-disk); build it with `cargo run -p vesper-guest-kit -- \
             build`, which makes {}",
            disk.display()
        );
        let done = DiskOutcome {
            disk: None,
            missing: Some(why),
        };
        return Ok((done, "skipped (--no-disk)".into()));
    }
    if !is_root() {
        return Err(KitError::DiskNeedsRoot);
    }
    let t = Instant::now();
    let _ = fs::remove_file(&stamp);
    image::build(p, &plan, &dir, &disk)?;
    write_atomic(&stamp, format!("{key}\n").as_bytes(), None)?;
    remove_other_releases(&dir, &disk)?;
    let note = format!(
        "built {} ({}) in {:.0}s",
        disk.display(),
        size_of(&disk),
        t.elapsed().as_secs_f64()
    );
    let done = DiskOutcome {
        disk: Some(disk),
        missing: None,
    };
    Ok((done, note))
}

fn size_of(path: &Path) -> String {
    let bytes = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    format!("{:.0} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Removes `debian-12-*.qcow2` disks (and stamps) in `dir` other than `keep`.
fn remove_other_releases(dir: &Path, keep: &Path) -> Result<(), KitError> {
    for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let path = e.map_err(io_err("list", dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        let ours = name.is_some_and(|n| n.starts_with("debian-12-") && n.ends_with(".qcow2"));
        if ours && path != keep {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
            let _ = fs::remove_file(stamp_of(&path));
        }
    }
    Ok(())
}
