//! The guest kernel's debug symbols for crash, drgn and gdb, from Debian's
//! `linux-image-<release>-dbg` package: its `vmlinux` with DWARF, and the debug files
//! (`.ko` with DWARF, the same GNU build IDs as the stripped ones the guest loads) of
//! the kernel drivers the kit's guests load. The kit's own modules add theirs to the
//! same directory when they are built (`build_steps.rs`), so one directory holds a
//! debug file for every module a kit guest has loaded — what drgn needs to unwind
//! through module code.

use std::fs;
use std::path::{Path, PathBuf};

use crate::kernel::{download_deb, Apt, GUEST_DRIVERS, GUEST_DRIVERS_SUBDIR};
use crate::{apt, cmd, io_err, KitError, Progress};

/// The kernel's `vmlinux` with DWARF, kept as `<kernel_dir>/vmlinux` (the name appears
/// only once it is complete).
pub(crate) fn debug_vmlinux_path(kernel_dir: &Path) -> PathBuf {
    kernel_dir.join("vmlinux")
}

/// `<kit>/debug-modules/<release>/`: a debug `.ko` for every module the kit's guests
/// load (the [`GUEST_DRIVERS`] from the `-dbg` package, the kit-built modules).
pub(crate) fn debug_modules_dir(kit_dir: &Path, release: &str) -> PathBuf {
    kit_dir.join("debug-modules").join(release)
}

/// Every guest driver's debug file is in `dir`.
fn drivers_present(dir: &Path) -> bool {
    GUEST_DRIVERS
        .iter()
        .all(|d| dir.join(format!("{d}.ko")).is_file())
}

/// What step 5 leaves: each of the two, or why it is missing.
pub(crate) struct DebugFiles {
    pub(crate) vmlinux: Option<PathBuf>,
    pub(crate) vmlinux_missing: Option<String>,
    pub(crate) modules_dir: Option<PathBuf>,
    pub(crate) modules_missing: Option<String>,
}

/// Step 5: the debug vmlinux and the guest drivers' debug files, each fetched only if
/// absent, both from one download of the `-dbg` package. Failing to get them leaves
/// the kit usable, so it is recorded (and warned about) rather than fatal.
pub(crate) fn ensure_debug_files(
    p: &Progress,
    apt: &mut Apt,
    kit_dir: &Path,
    release: &str,
    kernel_dir: &Path,
) -> Result<(DebugFiles, String), KitError> {
    let vmlinux = debug_vmlinux_path(kernel_dir);
    let modules = debug_modules_dir(kit_dir, release);
    let want_vmlinux = (!vmlinux.is_file()).then_some(vmlinux.as_path());
    let want_drivers = (!drivers_present(&modules)).then_some(modules.as_path());
    let mut failed = None;
    let note = match (want_vmlinux, want_drivers) {
        (None, None) => format!("cached at {} and {}", vmlinux.display(), modules.display()),
        _ => match fetch_debug_files(apt, kit_dir, release, want_vmlinux, want_drivers) {
            Ok(()) => format!(
                "extracted to {} and {}",
                vmlinux.display(),
                modules.display()
            ),
            Err(e) => {
                p.warn(&format!(
                    "getting {} failed: {e}; crash, drgn and gdb cannot read Vesper's vmcores \
                     without its vmlinux, nor drgn unwind through module code without its \
                     modules' debug files",
                    apt::dbg_package(release)
                ));
                failed = Some(e.to_string());
                "not all available (see the warning)".into()
            }
        },
    };
    let why = |what: &str| {
        format!(
            "no {what}: getting {} failed: {}; fix apt's access to Debian's archive and \
             rerun `cargo run -p vesper-guest-kit`",
            apt::dbg_package(release),
            failed.as_deref().unwrap_or("unknown error")
        )
    };
    let drivers = drivers_present(&modules);
    let files = DebugFiles {
        vmlinux_missing: (!vmlinux.is_file()).then(|| why("debug vmlinux")),
        vmlinux: vmlinux.is_file().then_some(vmlinux),
        modules_missing: (!drivers).then(|| why("debug files of the guest drivers")),
        modules_dir: drivers.then_some(modules),
    };
    Ok((files, note))
}

/// `apt-get download linux-image-<release>-dbg` (283 MB) and extract only what is
/// asked for — `usr/lib/debug/boot/vmlinux-<release>` (about 600 MB; the package
/// unpacks to 1.75 GB) moved to `vmlinux`, the [`GUEST_DRIVERS`]' debug `.ko` files
/// (tens of KiB) moved into `drivers` — then delete the `.deb`. A failed extraction
/// deletes the `.deb` too, so the next run downloads it afresh rather than trip over a
/// damaged one.
fn fetch_debug_files(
    apt: &mut Apt,
    dir: &Path,
    release: &str,
    vmlinux: Option<&Path>,
    drivers: Option<&Path>,
) -> Result<(), KitError> {
    let pkg = apt::dbg_package(release);
    let deb = download_deb(apt, dir, &pkg, &format!("{pkg}_"))?;
    let tmp = dir.join(format!("tmp-dbg-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    let vmlinux_member = format!("usr/lib/debug/boot/vmlinux-{release}");
    let drivers_member = format!("usr/lib/debug/lib/modules/{release}/{GUEST_DRIVERS_SUBDIR}");
    let mut members = Vec::new();
    if vmlinux.is_some() {
        members.push(format!("*{vmlinux_member}"));
    }
    if drivers.is_some() {
        members.push(format!("*{drivers_member}/*.ko"));
    }
    let missing = |member: String, path: PathBuf| KitError::MissingFile {
        what: format!("{member} in {}", deb.display()),
        path,
    };
    let extracted = cmd::extract_deb_members(&deb, &tmp, &members).and_then(|()| {
        if let Some(to) = drivers {
            fs::create_dir_all(to).map_err(io_err("create", to))?;
            for d in GUEST_DRIVERS {
                let src = tmp.join(&drivers_member).join(format!("{d}.ko"));
                if !src.is_file() {
                    return Err(missing(format!("{drivers_member}/{d}.ko"), src));
                }
                let dst = to.join(format!("{d}.ko"));
                fs::rename(&src, &dst).map_err(io_err("move into", &dst))?;
            }
        }
        if let Some(dest) = vmlinux {
            let src = tmp.join(&vmlinux_member);
            if !src.is_file() {
                return Err(missing(vmlinux_member.clone(), src));
            }
            // Same filesystem: the rename is atomic, so `dest` is complete or absent.
            fs::rename(&src, dest).map_err(io_err("move into", dest))?;
        }
        Ok(())
    });
    let _ = fs::remove_dir_all(&tmp);
    if extracted.is_err() {
        let _ = fs::remove_file(&deb);
    }
    extracted?;
    fs::remove_file(&deb).map_err(io_err("remove", &deb))
}
