//! The Vesper guest kit: the project's reproducible way to get a Linux test guest on a
//! Debian 12 host.
//!
//! [`Kit::ensure`] installs what the host needs (QEMU, busybox-static, compiler, the cloud
//! kernel's headers), fetches the current `linux-image-<ver>-cloud-amd64` kernel, builds the
//! guest modules and the static helpers ([`HELPERS`]: `bench-insmod`, `svc`, `hog`), and
//! packs a busybox initramfs, and builds the mini frontend ([`build_mini_frontend`]: the
//! freestanding guest that speaks the Vesper protocol without Linux, for the built-in
//! VMM), packages the frontend for DKMS and builds the Debian 12 disk guest that installs
//! it ([`Kit::debian_disk`]: SeaBIOS + GRUB, systemd, the tests' hand on ttyS0) — all
//! cached under one git-ignored directory ([`default_kit_dir`]), rebuilt only when inputs
//! change. [`Kit::load`] reads an already built kit without building anything.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub mod apt;
mod build_steps;
mod cmd;
mod contents;
mod debug_files;
mod disk;
mod error;
mod files;
mod initramfs;
mod kernel;
pub mod newc;
mod tree;

pub use contents::*;
use error::io_err;
pub use error::KitError;
use files::{built_modules, module_sources, read, write_atomic, Fnv};
use initramfs::initramfs_bytes;
pub use tree::{frontend_overlay, initramfs_with, KernelTree, FRONTEND_IN_INITRAMFS};

pub use build_steps::build_mini_frontend;
#[cfg(test)]
use build_steps::mini_frontend_sources;
use build_steps::{build_helpers, build_modules};
use kernel::{
    cached_kernel, drivers_dir, fetch_kernel, headers_installed, headers_package, kdir_of,
    missing_packages, resolve_via_apt, Apt, GUEST_DRIVERS,
};

const MANIFEST: &str = "manifest.json";
/// 2: `svc` and `hog` helpers (hand mode); 3: the mini frontend. Older kits must be
/// rebuilt.
const MANIFEST_FORMAT: u32 = 3;
const STEPS: usize = 12;

/// Options of [`Kit::ensure`].
#[derive(Debug, Clone, Default)]
pub struct EnsureOptions {
    /// Kit directory; `None` = [`default_kit_dir`].
    pub kit_dir: Option<PathBuf>,
    /// Repository root holding `guest-module/`, `probes/`, `tests/modules/`; `None` = this
    /// crate's repository.
    pub repo_root: Option<PathBuf>,
    /// Ask apt for the newest kernel even when the cache already holds a usable one.
    pub refresh_kernel: bool,
    /// No progress lines on stderr (warnings are still printed).
    pub quiet: bool,
    /// Do not build the Debian disk guest (a current one is still recorded in the
    /// manifest; a missing or outdated one is not built, and [`Kit::debian_disk`] is
    /// then `None`).
    pub skip_disk: bool,
}

/// A built guest kit. Also the content of `<dir>/manifest.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kit {
    /// The kit directory.
    pub dir: PathBuf,
    /// Kernel release, e.g. `6.1.0-56-cloud-amd64`.
    pub release: String,
    /// The kernel image (`-kernel`).
    pub kernel: PathBuf,
    /// The kernel's build config.
    pub kernel_config: PathBuf,
    /// The initramfs (`-initrd`), uncompressed newc cpio.
    pub initramfs: PathBuf,
    /// Directory with the built guest modules (`<name>.ko`).
    pub modules_dir: PathBuf,
    /// Module name → path, for every module built.
    pub modules: BTreeMap<String, PathBuf>,
    /// Kernel build directory the modules were built against.
    pub kdir: PathBuf,
    /// The static `bench-insmod` helper (also in the initramfs as `/bin/bench-insmod`).
    pub bench_insmod: PathBuf,
    /// The static `svc` helper (also in the initramfs as `/bin/svc`).
    pub svc: PathBuf,
    /// The static `hog` helper (also in the initramfs as `/bin/hog`).
    pub hog: PathBuf,
    /// The mini frontend: a freestanding ELF64 guest speaking the Vesper protocol without
    /// Linux (`tests/guests/mini-frontend`), for `Vm::boot_elf64` in the built-in VMM.
    pub mini_frontend: PathBuf,
    /// QEMU accelerator hint for this host: `kvm` (VT-x/AMD-V KVM present) or `tcg`.
    pub accel: String,
    /// The kernel's `vmlinux` with DWARF, from Debian's `linux-image-<release>-dbg`
    /// (for crash, drgn and gdb); `None` when it could not be had, and then
    /// [`Kit::debug_vmlinux_missing`] says why. Absent from older manifests (same
    /// format: kits built by older code still load).
    #[serde(default)]
    pub debug_vmlinux: Option<PathBuf>,
    /// Why there is no `debug_vmlinux`, and what to do about it.
    #[serde(default)]
    pub debug_vmlinux_missing: Option<String>,
    /// `<dir>/debug-modules/<release>/`: a debug file (`NAME.ko` with DWARF and the
    /// same GNU build ID as the module the guest loads) for every module the kit's
    /// guests load — the kernel drivers of the init (pvpanic, from the `-dbg` package)
    /// and every module the kit builds (`modules`; the copies guests load of
    /// `tests/modules`' fixtures are stripped, these are not). drgn needs them (`-s`
    /// each) to unwind through module code. `None` when the drivers' files could not
    /// be had ([`Kit::debug_modules_missing`] says why) and in older manifests.
    #[serde(default)]
    pub debug_modules_dir: Option<PathBuf>,
    /// Why there is no `debug_modules_dir`, and what to do about it.
    #[serde(default)]
    pub debug_modules_missing: Option<String>,
    /// The frontend as a Debian DKMS package, `<dir>/deb/vesper-frontend_VERSION_all.deb`
    /// (sources in `/usr/src/vesper-frontend-VERSION/`, built by DKMS in the guest).
    /// `None` in older manifests.
    #[serde(default)]
    pub frontend_deb: Option<PathBuf>,
    /// The Debian 12 disk guest, `<dir>/disk/debian-12-<release>.qcow2`: boots through
    /// SeaBIOS and GRUB (root by UUID, `console=ttyS0 panic=-1`), the frontend
    /// installed from [`Kit::frontend_deb`] by DKMS and loaded at boot, the tests' hand
    /// on ttyS0 as `vesper-hand.service`. Use it with `-snapshot` (or a copy): it is
    /// the kit's, shared. `None` when it was not built ([`Kit::debian_disk_missing`]
    /// says why) and in older manifests.
    #[serde(default)]
    pub debian_disk: Option<PathBuf>,
    /// Why there is no `debian_disk`, and what to do about it.
    #[serde(default)]
    pub debian_disk_missing: Option<String>,
}

#[derive(Serialize, Deserialize)]
struct Manifest {
    format: u32,
    #[serde(flatten)]
    kit: Kit,
}

/// The repository root (this crate lives at `<root>/tools/guest-kit`).
pub fn repo_root() -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    p.canonicalize().unwrap_or(p)
}

/// `$VESPER_KIT_DIR`, or `<repo root>/.vesper-kit`.
pub fn default_kit_dir() -> PathBuf {
    match std::env::var_os("VESPER_KIT_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => repo_root().join(".vesper-kit"),
    }
}

/// `kvm` when `/dev/kvm` is backed by hardware virtualisation (kvm_intel/kvm_amd), else
/// `tcg` (e.g. the paravirtual `kvm_pvm`, under which a stock kernel does not boot usefully).
pub fn accel_hint() -> &'static str {
    match vesper_hypervisor::KvmBacking::detect().linux_problem() {
        None => "kvm",
        Some(_) => "tcg",
    }
}

impl Kit {
    /// Builds or reuses everything (host packages, kernel, headers, modules, helper,
    /// initramfs, manifest). Progress lines go to stderr. Safe to call concurrently: a lock
    /// file in the kit directory serialises builders.
    pub fn ensure(opts: &EnsureOptions) -> Result<Kit, KitError> {
        let dir = opts.kit_dir.clone().unwrap_or_else(default_kit_dir);
        let root = opts.repo_root.clone().unwrap_or_else(repo_root);
        fs::create_dir_all(&dir).map_err(io_err("create", &dir))?;
        let dir = dir.canonicalize().map_err(io_err("resolve", &dir))?;
        let lock_path = dir.join(".lock");
        let lock = fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
        lock.lock().map_err(io_err("lock", &lock_path))?;
        let mut b = Builder {
            dir,
            root,
            p: Progress { quiet: opts.quiet },
            apt: Apt { updated: false },
        };
        let started = Instant::now();
        let kit = b.run(opts.refresh_kernel, opts.skip_disk)?;
        b.p.line(&format!(
            "kit ready in {:.1}s: {}",
            started.elapsed().as_secs_f64(),
            kit.dir.display()
        ));
        Ok(kit)
    }

    /// Loads the manifest of an already built kit (`None` = [`default_kit_dir`]) without
    /// building anything, and checks that the kernel, initramfs and helpers exist.
    pub fn load(dir: Option<&Path>) -> Result<Kit, KitError> {
        let dir = dir.map(Path::to_path_buf).unwrap_or_else(default_kit_dir);
        let path = dir.join(MANIFEST);
        let text = fs::read_to_string(&path).map_err(|e| KitError::NotBuilt {
            dir: dir.clone(),
            reason: format!("cannot read {}: {e}", path.display()),
        })?;
        let m: Manifest =
            serde_json::from_str(&text).map_err(|source| KitError::Manifest { path, source })?;
        if m.format != MANIFEST_FORMAT {
            return Err(KitError::NotBuilt {
                dir,
                reason: format!("manifest format {} (expected {MANIFEST_FORMAT})", m.format),
            });
        }
        for p in [
            &m.kit.kernel,
            &m.kit.initramfs,
            &m.kit.bench_insmod,
            &m.kit.svc,
            &m.kit.hog,
            &m.kit.mini_frontend,
        ] {
            if !p.is_file() {
                return Err(KitError::NotBuilt {
                    dir,
                    reason: format!("{} is missing", p.display()),
                });
            }
        }
        let mut kit = m.kit;
        // The disk is optional: one deleted since is recorded as missing, not fatal.
        if let Some(d) = kit.debian_disk.take_if(|d| !d.is_file()) {
            kit.debian_disk_missing = Some(format!(
                "{} is missing; rebuild it with `cargo run -p vesper-guest-kit -- build`",
                d.display()
            ));
        }
        Ok(kit)
    }

    /// `<modules_dir>/<name>.ko` (whether or not it was built).
    pub fn module(&self, name: &str) -> PathBuf {
        self.modules_dir.join(format!("{name}.ko"))
    }

    /// The files drgn takes with `-s` to read a kit guest's vmcore with every frame
    /// named: the debug vmlinux, then each `.ko` in [`Kit::debug_modules_dir`]
    /// (sorted). `None` without either; the `*_missing` fields say why.
    pub fn debug_symbol_files(&self) -> Option<Vec<PathBuf>> {
        let dir = self.debug_modules_dir.as_ref()?;
        let mut files: Vec<PathBuf> = fs::read_dir(dir)
            .ok()?
            .filter_map(|e| Some(e.ok()?.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "ko"))
            .collect();
        files.sort();
        files.insert(0, self.debug_vmlinux.clone()?);
        Some(files)
    }
}

struct Progress {
    quiet: bool,
}

impl Progress {
    fn line(&self, msg: &str) {
        if !self.quiet {
            eprintln!("guest-kit: {msg}");
        }
    }

    fn warn(&self, msg: &str) {
        eprintln!("guest-kit: warning: {msg}");
    }

    /// Runs one step; `f` returns the value and a short note on what it did.
    fn step<T>(
        &self,
        n: usize,
        what: &str,
        f: impl FnOnce() -> Result<(T, String), KitError>,
    ) -> Result<T, KitError> {
        self.line(&format!("[{n}/{STEPS}] {what} ..."));
        let t = Instant::now();
        match f() {
            Ok((v, note)) => {
                self.line(&format!(
                    "[{n}/{STEPS}] {note} ({:.2}s)",
                    t.elapsed().as_secs_f64()
                ));
                Ok(v)
            }
            Err(e) => {
                eprintln!(
                    "guest-kit: [{n}/{STEPS}] FAILED after {:.2}s",
                    t.elapsed().as_secs_f64()
                );
                Err(e)
            }
        }
    }
}

struct Builder {
    dir: PathBuf,
    root: PathBuf,
    p: Progress,
    apt: Apt,
}

impl Builder {
    fn run(&mut self, refresh_kernel: bool, skip_disk: bool) -> Result<Kit, KitError> {
        // 1. host packages
        let apt = &mut self.apt;
        self.p.step(1, "checking host packages", || {
            let pkgs: Vec<String> = HOST_PACKAGES.iter().map(|s| s.to_string()).collect();
            let missing = missing_packages(&pkgs)?;
            if missing.is_empty() {
                return Ok(((), format!("all {} host packages present", pkgs.len())));
            }
            apt.update()?;
            apt.install(&missing)?;
            // Installing can remove a package that was there: a backported qemu-utils
            // conflicts with bookworm's qemu-system-x86, and apt resolves it by removing
            // qemu-utils. Install what went missing again, at the versions that fit.
            let removed = missing_packages(&pkgs)?;
            if !removed.is_empty() {
                apt.install(&removed)?;
            }
            let mut note = format!("installed {}", missing.join(" "));
            if !removed.is_empty() {
                note += &format!("; reinstalled {} (apt removed it)", removed.join(" "));
            }
            Ok(((), note))
        })?;

        // 2. kernel release
        let dir = &self.dir;
        let release = self.p.step(2, "resolving the guest kernel", || {
            if !refresh_kernel {
                if let Some(rel) = cached_kernel(dir)? {
                    let note = format!("reusing cached kernel {rel} (headers installed)");
                    return Ok((rel, note));
                }
            }
            let rel = resolve_via_apt(apt)?;
            let note = format!("{} -> {rel}", apt::META_PACKAGE);
            Ok((rel, note))
        })?;

        // 3. headers
        let kdir = kdir_of(&release);
        self.p
            .step(3, &format!("kernel headers for {release}"), || {
                if headers_installed(&release)? {
                    return Ok(((), format!("present at {}", kdir.display())));
                }
                apt.install_with_update(&[headers_package(&release)])?;
                if !kdir.join("Makefile").is_file() {
                    return Err(KitError::MissingFile {
                        what: format!(
                            "kernel build directory after installing {}",
                            headers_package(&release)
                        ),
                        path: kdir.clone(),
                    });
                }
                Ok(((), format!("installed {}", headers_package(&release))))
            })?;

        // 4. kernel image
        let kernel_dir = dir.join("kernel").join(&release);
        let kernel = kernel_dir.join("vmlinuz");
        let kernel_config = kernel_dir.join(format!("config-{release}"));
        self.p.step(4, &format!("kernel image {release}"), || {
            let drivers_present = GUEST_DRIVERS
                .iter()
                .all(|d| drivers_dir(&kernel_dir).join(format!("{d}.ko")).is_file());
            if kernel.is_file() && kernel_config.is_file() && drivers_present {
                return Ok(((), format!("cached at {}", kernel.display())));
            }
            fetch_kernel(apt, dir, &release, &kernel_dir)?;
            Ok(((), format!("extracted to {}", kernel.display())))
        })?;

        // 5. debug symbols (the kit stays usable without them)
        let p = &self.p;
        let debug = p.step(5, &format!("debug symbols for {release}"), || {
            debug_files::ensure_debug_files(p, apt, dir, &release, &kernel_dir)
        })?;

        let mut kit = self.build_guest(&release, kdir, kernel_dir, debug)?;
        self.build_disk(&mut kit, skip_disk)?;
        write_manifest(&self.p, &kit)?;
        Ok(kit)
    }

    /// Steps 6-9: what the kit builds for kernel `release` (modules, helpers, the mini
    /// frontend, the initramfs); the kit without its disk.
    fn build_guest(
        &self,
        release: &str,
        kdir: PathBuf,
        kernel_dir: PathBuf,
        debug: debug_files::DebugFiles,
    ) -> Result<Kit, KitError> {
        let (dir, root, p) = (&self.dir, &self.root, &self.p);
        let kernel = kernel_dir.join("vmlinuz");
        let kernel_config = kernel_dir.join(format!("config-{release}"));
        // 6. guest modules
        let modules_dir = dir.join("modules").join(release);
        let debug_modules = debug_files::debug_modules_dir(dir, release);
        let modules = p.step(
            6,
            &format!("building guest modules against {release}"),
            || build_modules(p, root, &kdir, release, &modules_dir, &debug_modules),
        )?;

        // 7. static helpers
        let bin_dir = dir.join("guest-bin");
        let helpers = p.step(7, "building static helpers (gcc -static)", || {
            build_helpers(&bin_dir)
        })?;
        let helper_path = |name: &str| bin_dir.join(name);

        // 8. the mini frontend (independent of the kernel)
        let mini_dir = dir.join("mini-frontend");
        let mini_frontend = p.step(8, "building the mini frontend (freestanding ELF64)", || {
            let (elf, built) = build_mini_frontend(root, &mini_dir)?;
            let note = if built {
                format!("built {}", elf.display())
            } else {
                "up to date (sources unchanged)".to_string()
            };
            Ok((elf, note))
        })?;

        // 9. initramfs
        let initramfs = dir.join(format!("initramfs-{release}.cpio"));
        p.step(9, "packing the initramfs", || {
            let drivers: Vec<(String, PathBuf)> = GUEST_DRIVERS
                .iter()
                .map(|d| {
                    (
                        d.to_string(),
                        drivers_dir(&kernel_dir).join(format!("{d}.ko")),
                    )
                })
                .collect();
            let bytes = initramfs_bytes(&modules, &helpers, &drivers)?;
            let size = bytes.len();
            if initramfs.is_file() && read(&initramfs)? == bytes {
                return Ok(((), format!("up to date ({} KiB)", size / 1024)));
            }
            write_atomic(&initramfs, &bytes, Some(0o644))?;
            Ok((
                (),
                format!("wrote {} ({} KiB)", initramfs.display(), size / 1024),
            ))
        })?;

        Ok(Kit {
            dir: dir.clone(),
            release: release.to_string(),
            kernel,
            kernel_config,
            initramfs,
            modules_dir,
            modules,
            kdir,
            bench_insmod: helper_path("bench-insmod"),
            svc: helper_path("svc"),
            hog: helper_path("hog"),
            mini_frontend,
            accel: accel_hint().to_string(),
            debug_vmlinux: debug.vmlinux,
            debug_vmlinux_missing: debug.vmlinux_missing,
            debug_modules_dir: debug.modules_dir,
            debug_modules_missing: debug.modules_missing,
            frontend_deb: None,
            debian_disk: None,
            debian_disk_missing: None,
        })
    }

    /// Steps 10-11: the frontend's DKMS package and the Debian disk guest.
    fn build_disk(&self, kit: &mut Kit, skip_disk: bool) -> Result<(), KitError> {
        let (dir, root, p) = (&self.dir, &self.root, &self.p);
        let deb = p.step(10, "packaging the frontend for DKMS (.deb)", || {
            disk::ensure_frontend_deb(root, &dir.join("deb"))
        })?;
        kit.frontend_deb = Some(deb.path.clone());
        let what = format!("the Debian 12 disk guest ({})", kit.release);
        let helpers = (kit.svc.as_path(), kit.hog.as_path());
        let disk = p.step(11, &what, || {
            disk::ensure_disk(p, dir, &kit.release, helpers, deb, skip_disk)
        })?;
        kit.debian_disk = disk.disk;
        kit.debian_disk_missing = disk.missing;
        Ok(())
    }
}

/// Step 12: `manifest.json`, rewritten only when it changed.
fn write_manifest(p: &Progress, kit: &Kit) -> Result<(), KitError> {
    let dir = &kit.dir;
    {
        p.step(12, "writing manifest.json", || {
            let path = dir.join(MANIFEST);
            let m = Manifest {
                format: MANIFEST_FORMAT,
                kit: kit.clone(),
            };
            let mut json = serde_json::to_vec_pretty(&m).map_err(|source| KitError::Manifest {
                path: path.clone(),
                source,
            })?;
            json.push(b'\n');
            if path.is_file() && read(&path)? == json {
                return Ok(((), "up to date".to_string()));
            }
            write_atomic(&path, &json, None)?;
            Ok(((), format!("wrote {}", path.display())))
        })
    }
}

#[cfg(test)]
mod tests;
