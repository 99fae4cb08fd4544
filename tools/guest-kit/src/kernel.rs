//! The guest kernel from apt: host packages, the current cloud kernel's release, its
//! headers, its image and drivers (its debug symbols, from the `-dbg` package, are
//! `debug_files.rs`'s).

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{apt, cmd, io_err, KitError};

pub(crate) struct Apt {
    pub(crate) updated: bool,
}

impl Apt {
    pub(crate) fn update(&mut self) -> Result<(), KitError> {
        if !self.updated {
            require_root(&["(apt-get update)".into()])?;
            cmd::run(apt_get().arg("update"))?;
            self.updated = true;
        }
        Ok(())
    }

    pub(crate) fn install(&mut self, pkgs: &[String]) -> Result<(), KitError> {
        require_root(pkgs)?;
        cmd::run(
            apt_get()
                .args(["install", "-y", "--no-install-recommends"])
                .args(pkgs),
        )?;
        Ok(())
    }

    /// `apt-get install`, retried once after `apt-get update` when it fails.
    pub(crate) fn install_with_update(&mut self, pkgs: &[String]) -> Result<(), KitError> {
        match self.install(pkgs) {
            Err(KitError::CommandFailed { .. }) if !self.updated => {
                self.update()?;
                self.install(pkgs)
            }
            r => r,
        }
    }
}

pub(crate) fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

pub(crate) fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

pub(crate) fn require_root(pkgs: &[String]) -> Result<(), KitError> {
    if is_root() {
        Ok(())
    } else {
        Err(KitError::NeedRoot {
            packages: pkgs.to_vec(),
        })
    }
}

/// The subset of `pkgs` that dpkg does not report as installed.
pub(crate) fn missing_packages(pkgs: &[String]) -> Result<Vec<String>, KitError> {
    // dpkg-query exits 1 when a package is unknown but still reports the others.
    let out = cmd::output(
        Command::new("dpkg-query")
            .args(["-W", "-f=${Package} ${Status}\\n"])
            .args(pkgs),
    )?;
    let installed = apt::parse_installed(&String::from_utf8_lossy(&out.stdout));
    Ok(pkgs
        .iter()
        .filter(|p| !installed.contains(p.as_str()))
        .cloned()
        .collect())
}

pub(crate) fn headers_package(release: &str) -> String {
    format!("linux-headers-{release}")
}

pub(crate) fn kdir_of(release: &str) -> PathBuf {
    Path::new("/lib/modules").join(release).join("build")
}

pub(crate) fn headers_installed(release: &str) -> Result<bool, KitError> {
    Ok(kdir_of(release).join("Makefile").is_file()
        && missing_packages(&[headers_package(release)])?.is_empty())
}

/// Newest release with a cached `vmlinuz` whose headers are installed.
pub(crate) fn cached_kernel(dir: &Path) -> Result<Option<String>, KitError> {
    let kdir = dir.join("kernel");
    let Ok(rd) = fs::read_dir(&kdir) else {
        return Ok(None);
    };
    let mut rels: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|r| kdir.join(r).join("vmlinuz").is_file())
        .collect();
    rels.sort_by(|a, b| apt::cmp_release(b, a));
    for r in rels {
        if headers_installed(&r)? {
            return Ok(Some(r));
        }
    }
    Ok(None)
}

pub(crate) fn resolve_via_apt(apt: &mut Apt) -> Result<String, KitError> {
    let query = || -> Result<(Option<String>, String), KitError> {
        let out = cmd::output(Command::new("apt-cache").args(["depends", apt::META_PACKAGE]))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        Ok((apt::parse_depends_release(&stdout), cmd::tail(&out)))
    };
    let (rel, detail) = query()?;
    if let Some(r) = rel {
        return Ok(r);
    }
    if !apt.updated {
        apt.update()?;
        let (rel, detail) = query()?;
        if let Some(r) = rel {
            return Ok(r);
        }
        return Err(KitError::PackageUnresolvable {
            package: apt::META_PACKAGE.into(),
            detail,
        });
    }
    Err(KitError::PackageUnresolvable {
        package: apt::META_PACKAGE.into(),
        detail,
    })
}

/// `apt-get download` the image package, extract `vmlinuz` and the config into
/// `kernel_dir`, delete the `.deb`.
pub(crate) fn fetch_kernel(
    apt: &mut Apt,
    dir: &Path,
    release: &str,
    kernel_dir: &Path,
) -> Result<(), KitError> {
    let pkg = format!("linux-image-{release}");
    let deb = download_deb(apt, dir, &pkg, &apt::image_deb_prefix(release))?;
    let tmp = dir.join(format!("tmp-extract-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).map_err(io_err("create", &tmp))?;
    let vmlinuz_name = format!("vmlinuz-{release}");
    let config_name = format!("config-{release}");
    cmd::extract_deb_members(
        &deb,
        &tmp,
        &[
            format!("*boot/{vmlinuz_name}"),
            format!("*boot/{config_name}"),
            format!("*/{GUEST_DRIVERS_SUBDIR}/*.ko"),
        ],
    )?;
    fs::create_dir_all(kernel_dir).map_err(io_err("create", kernel_dir))?;
    let drivers = drivers_dir(kernel_dir);
    fs::create_dir_all(&drivers).map_err(io_err("create", &drivers))?;
    let pvpanic_src = tmp.join(format!("lib/modules/{release}/{GUEST_DRIVERS_SUBDIR}"));
    for d in GUEST_DRIVERS {
        let src = pvpanic_src.join(format!("{d}.ko"));
        if !src.is_file() {
            return Err(KitError::MissingFile {
                what: format!("{d}.ko in {}", deb.display()),
                path: src,
            });
        }
        let dst = drivers.join(format!("{d}.ko"));
        fs::rename(&src, &dst).map_err(io_err("move into", &dst))?;
    }
    // config first: vmlinuz is the marker of a complete kernel directory
    for (from, to) in [
        (config_name.as_str(), config_name.as_str()),
        (vmlinuz_name.as_str(), "vmlinuz"),
    ] {
        let src = tmp.join("boot").join(from);
        if !src.is_file() {
            return Err(KitError::MissingFile {
                what: format!("boot/{from} in {}", deb.display()),
                path: src,
            });
        }
        let dst = kernel_dir.join(to);
        fs::rename(&src, &dst).map_err(io_err("move into", &dst))?;
    }
    let _ = fs::remove_dir_all(&tmp);
    fs::remove_file(&deb).map_err(io_err("remove", &deb))?;
    Ok(())
}

/// Kernel drivers a real guest image would load through udev and the test guest loads
/// from its init: pvpanic makes the guest tell QEMU it panicked (QMP `GUEST_PANICKED`).
/// In load order; Debian builds them as modules.
pub(crate) const GUEST_DRIVERS: [&str; 2] = ["pvpanic", "pvpanic-pci"];
/// Where [`GUEST_DRIVERS`] are under `lib/modules/<release>/` (and, with DWARF, under
/// the `-dbg` package's `usr/lib/debug/lib/modules/<release>/`).
pub(crate) const GUEST_DRIVERS_SUBDIR: &str = "kernel/drivers/misc/pvpanic";

/// Where the extracted guest drivers live in a kernel directory.
pub(crate) fn drivers_dir(kernel_dir: &Path) -> PathBuf {
    kernel_dir.join("drivers")
}

/// `<dir>/downloads/<prefix>*.deb`, downloaded with `apt-get download PKG` unless it is
/// there already (retried once after `apt-get update`).
pub(crate) fn download_deb(
    apt: &mut Apt,
    dir: &Path,
    pkg: &str,
    prefix: &str,
) -> Result<PathBuf, KitError> {
    let dl = dir.join("downloads");
    fs::create_dir_all(&dl).map_err(io_err("create", &dl))?;
    let find_deb = || -> Result<Option<PathBuf>, KitError> {
        let rd = fs::read_dir(&dl).map_err(io_err("list", &dl))?;
        Ok(rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(prefix) && n.ends_with(".deb"))
        }))
    };
    if let Some(d) = find_deb()? {
        return Ok(d);
    }
    // As root, apt warns that the download is unsandboxed (_apt cannot write to the
    // cwd); that warning is harmless and ignored.
    let download = || cmd::run(apt_get().current_dir(&dl).args(["download", pkg]));
    match download() {
        Ok(_) => {}
        Err(KitError::CommandFailed { .. }) if !apt.updated => {
            apt.update()?;
            download()?;
        }
        Err(e) => return Err(e),
    }
    find_deb()?.ok_or_else(|| KitError::MissingFile {
        what: format!("downloaded {pkg} package"),
        path: dl.join(format!("{prefix}*.deb")),
    })
}
