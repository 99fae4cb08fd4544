//! The Vesper guest kit: the project's reproducible way to get a Linux test guest on a
//! Debian 12 host.
//!
//! [`Kit::ensure`] installs what the host needs (QEMU, busybox-static, compiler, the cloud
//! kernel's headers), fetches the current `linux-image-<ver>-cloud-amd64` kernel, builds the
//! guest modules and the static helpers ([`HELPERS`]: `bench-insmod`, `svc`, `hog`), and
//! packs a busybox initramfs, and builds the mini frontend ([`build_mini_frontend`]: the
//! freestanding guest that speaks the Vesper protocol without Linux, for the built-in
//! VMM) — all cached under one git-ignored directory ([`default_kit_dir`]), rebuilt only
//! when inputs change. [`Kit::load`] reads an already built kit without building anything.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use serde::{Deserialize, Serialize};

pub mod apt;
mod cmd;
pub mod newc;

/// Host packages the kit needs besides the kernel headers.
pub const HOST_PACKAGES: &[&str] = &[
    "qemu-system-x86",
    "busybox-static",
    "cpio",
    "gcc",
    "make",
    "libc6-dev",
    // ocf-tester for the OCF agent's e2e test (tools/ocf), and xmllint, which it lints
    // the agent's meta-data with (only a Recommends of resource-agents).
    "resource-agents",
    "libxml2-utils",
    // gdb for `vesper debug gdb` and its e2e test (real gdb against QEMU's gdbstub).
    "gdb",
];

/// Directories (relative to the repository root) whose Makefiles build guest modules.
pub const MODULE_DIRS: &[&str] = &["guest-module", "probes", "tests/modules"];

/// Sources of the mini frontend (relative to the repository root).
pub const MINI_FRONTEND_DIR: &str = "tests/guests/mini-frontend";
/// The generated wire header the mini frontend is built against (relative to the root).
pub const ABI_HEADER: &str = "guest-module/include/vesper_abi.h";
/// File name of the mini frontend's ELF in its output directory.
pub const MINI_FRONTEND_ELF: &str = "mini-frontend.elf";

/// Busybox applets linked in the initramfs's `/bin`.
pub const APPLETS: &[&str] = &[
    "sh", "mount", "insmod", "rmmod", "lsmod", "sleep", "cat", "echo", "mkdir", "poweroff", "kill",
    "dmesg", "ln", "readlink", "stty",
];

/// Source of the guest's `/init`.
pub const INIT_SCRIPT: &str = include_str!("../guest/init.sh");
/// Source of the `bench-insmod` helper.
pub const BENCH_INSMOD_C: &str = include_str!("../guest/bench_insmod.c");
/// Source of the `svc` helper (the service that hand mode starts under a chosen name).
pub const SVC_C: &str = include_str!("../guest/svc.c");
/// Source of the `hog` helper (hand mode's `oom`: eats memory until OOM-killed).
pub const HOG_C: &str = include_str!("../guest/hog.c");

/// A static C helper compiled with `gcc -static -O2` and installed as `/bin/<name>`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Helper {
    /// Binary name (in `<kit>/guest-bin/` and the initramfs's `/bin`).
    pub name: &'static str,
    /// Name of the C file written next to it.
    pub source_name: &'static str,
    /// The C source.
    pub source: &'static str,
}

/// The static helpers, in build order.
pub const HELPERS: &[Helper] = &[
    Helper {
        name: "bench-insmod",
        source_name: "bench_insmod.c",
        source: BENCH_INSMOD_C,
    },
    Helper {
        name: "svc",
        source_name: "svc.c",
        source: SVC_C,
    },
    Helper {
        name: "hog",
        source_name: "hog.c",
        source: HOG_C,
    },
];

const MANIFEST: &str = "manifest.json";
/// 2: `svc` and `hog` helpers (hand mode); 3: the mini frontend. Older kits must be
/// rebuilt.
const MANIFEST_FORMAT: u32 = 3;
const STEPS: usize = 9;
const BUSYBOX: &str = "/bin/busybox";

/// Everything that can go wrong while building or loading a kit.
#[derive(Debug, thiserror::Error)]
pub enum KitError {
    /// A command ran and exited unsuccessfully.
    #[error("`{command}` failed ({status}); last output:\n{stderr_tail}")]
    CommandFailed {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// The last lines of its stderr (or stdout when stderr was empty).
        stderr_tail: String,
    },
    /// A command could not be started at all.
    #[error("could not run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// apt does not know the package (even after `apt-get update`).
    #[error("package {package} cannot be resolved by apt: {detail}")]
    PackageUnresolvable {
        /// The package.
        package: String,
        /// What apt said.
        detail: String,
    },
    /// Packages must be installed but we are not root.
    #[error("packages {packages:?} are missing and installing them needs root (run as root, or install them by hand)")]
    NeedRoot {
        /// The packages that would be installed.
        packages: Vec<String>,
    },
    /// A file that a step should have produced (or that must exist) is missing.
    #[error("missing {what}: {path}")]
    MissingFile {
        /// What it is.
        what: String,
        /// Where it was expected.
        path: PathBuf,
    },
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Io {
        /// What we were doing.
        op: &'static str,
        /// On which path.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: io::Error,
    },
    /// There is no usable kit at this directory.
    #[error("no guest kit at {dir}: {reason}; run `cargo run -p vesper-guest-kit` first")]
    NotBuilt {
        /// The kit directory.
        dir: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The manifest could not be written or parsed.
    #[error("manifest {path}: {source}")]
    Manifest {
        /// Path of manifest.json.
        path: PathBuf,
        /// The JSON error.
        #[source]
        source: serde_json::Error,
    },
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KitError {
    let path = path.to_path_buf();
    move |source| KitError::Io { op, path, source }
}

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
        let kit = b.run(opts.refresh_kernel)?;
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
        Ok(m.kit)
    }

    /// `<modules_dir>/<name>.ko` (whether or not it was built).
    pub fn module(&self, name: &str) -> PathBuf {
        self.modules_dir.join(format!("{name}.ko"))
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

struct Apt {
    updated: bool,
}

impl Apt {
    fn update(&mut self) -> Result<(), KitError> {
        if !self.updated {
            require_root(&["(apt-get update)".into()])?;
            cmd::run(apt_get().arg("update"))?;
            self.updated = true;
        }
        Ok(())
    }

    fn install(&mut self, pkgs: &[String]) -> Result<(), KitError> {
        require_root(pkgs)?;
        cmd::run(
            apt_get()
                .args(["install", "-y", "--no-install-recommends"])
                .args(pkgs),
        )?;
        Ok(())
    }

    /// `apt-get install`, retried once after `apt-get update` when it fails.
    fn install_with_update(&mut self, pkgs: &[String]) -> Result<(), KitError> {
        match self.install(pkgs) {
            Err(KitError::CommandFailed { .. }) if !self.updated => {
                self.update()?;
                self.install(pkgs)
            }
            r => r,
        }
    }
}

fn apt_get() -> Command {
    let mut c = Command::new("apt-get");
    c.env("DEBIAN_FRONTEND", "noninteractive");
    c
}

fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0"))
        })
        .unwrap_or(false)
}

fn require_root(pkgs: &[String]) -> Result<(), KitError> {
    if is_root() {
        Ok(())
    } else {
        Err(KitError::NeedRoot {
            packages: pkgs.to_vec(),
        })
    }
}

/// The subset of `pkgs` that dpkg does not report as installed.
fn missing_packages(pkgs: &[String]) -> Result<Vec<String>, KitError> {
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

fn headers_package(release: &str) -> String {
    format!("linux-headers-{release}")
}

fn kdir_of(release: &str) -> PathBuf {
    Path::new("/lib/modules").join(release).join("build")
}

fn headers_installed(release: &str) -> Result<bool, KitError> {
    Ok(kdir_of(release).join("Makefile").is_file()
        && missing_packages(&[headers_package(release)])?.is_empty())
}

/// FNV-1a 64, enough to notice changed inputs.
#[derive(Clone, Copy)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn bytes(&mut self, b: &[u8]) -> &mut Self {
        // length prefix keeps (a, bc) and (ab, c) apart
        for &x in (b.len() as u64).to_le_bytes().iter().chain(b) {
            self.0 ^= u64::from(x);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
        self
    }
    fn hex(&self) -> String {
        format!("{:016x}", self.0)
    }
}

fn write_atomic(path: &Path, data: &[u8], mode: Option<u32>) -> Result<(), KitError> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
    fs::write(&tmp, data).map_err(io_err("write", &tmp))?;
    if let Some(m) = mode {
        fs::set_permissions(&tmp, fs::Permissions::from_mode(m)).map_err(io_err("chmod", &tmp))?;
    }
    fs::rename(&tmp, path).map_err(io_err("rename into", path))
}

fn read(path: &Path) -> Result<Vec<u8>, KitError> {
    fs::read(path).map_err(io_err("read", path))
}

/// Module sources under `dir` (recursively; hidden entries and generated `*.mod.c` skipped),
/// sorted.
fn module_sources(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), KitError> {
    let rd = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for e in rd {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        let ft = e.file_type().map_err(io_err("stat", &path))?;
        if ft.is_dir() {
            module_sources(&path, out)?;
        } else if (name.ends_with(".c") && !name.ends_with(".mod.c"))
            || name.ends_with(".h")
            || name == "Kbuild"
            || name == "Makefile"
        {
            out.push(path);
        }
    }
    out.sort();
    Ok(())
}

/// Built `*.ko` files under `dir` (recursively, hidden entries skipped).
fn built_modules(dir: &Path, out: &mut Vec<PathBuf>) -> Result<(), KitError> {
    let rd = fs::read_dir(dir).map_err(io_err("list", dir))?;
    for e in rd {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with('.') {
            continue;
        }
        let path = e.path();
        if e.file_type().map_err(io_err("stat", &path))?.is_dir() {
            built_modules(&path, out)?;
        } else if name.ends_with(".ko") {
            out.push(path);
        }
    }
    Ok(())
}

struct Builder {
    dir: PathBuf,
    root: PathBuf,
    p: Progress,
    apt: Apt,
}

impl Builder {
    fn run(&mut self, refresh_kernel: bool) -> Result<Kit, KitError> {
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
            Ok(((), format!("installed {}", missing.join(" "))))
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

        // 5. guest modules
        let modules_dir = dir.join("modules").join(&release);
        let root = &self.root;
        let p = &self.p;
        let modules = p.step(
            5,
            &format!("building guest modules against {release}"),
            || build_modules(p, root, &kdir, &release, &modules_dir),
        )?;

        // 6. static helpers
        let bin_dir = dir.join("guest-bin");
        let helpers = p.step(6, "building static helpers (gcc -static)", || {
            build_helpers(&bin_dir)
        })?;
        let helper_path = |name: &str| bin_dir.join(name);

        // 7. the mini frontend (independent of the kernel)
        let mini_dir = dir.join("mini-frontend");
        let mini_frontend = p.step(7, "building the mini frontend (freestanding ELF64)", || {
            let (elf, built) = build_mini_frontend(root, &mini_dir)?;
            let note = if built {
                format!("built {}", elf.display())
            } else {
                "up to date (sources unchanged)".to_string()
            };
            Ok((elf, note))
        })?;

        // 8. initramfs
        let initramfs = dir.join(format!("initramfs-{release}.cpio"));
        p.step(8, "packing the initramfs", || {
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

        // 9. manifest
        let kit = Kit {
            dir: dir.clone(),
            release: release.clone(),
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
        };
        p.step(9, "writing manifest.json", || {
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
        })?;
        Ok(kit)
    }
}

/// Newest release with a cached `vmlinuz` whose headers are installed.
fn cached_kernel(dir: &Path) -> Result<Option<String>, KitError> {
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

fn resolve_via_apt(apt: &mut Apt) -> Result<String, KitError> {
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
fn fetch_kernel(
    apt: &mut Apt,
    dir: &Path,
    release: &str,
    kernel_dir: &Path,
) -> Result<(), KitError> {
    let dl = dir.join("downloads");
    fs::create_dir_all(&dl).map_err(io_err("create", &dl))?;
    let pkg = format!("linux-image-{release}");
    let prefix = apt::image_deb_prefix(release);
    let find_deb = || -> Result<Option<PathBuf>, KitError> {
        let rd = fs::read_dir(&dl).map_err(io_err("list", &dl))?;
        Ok(rd.filter_map(|e| e.ok()).map(|e| e.path()).find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        }))
    };
    let deb = match find_deb()? {
        Some(d) => d,
        None => {
            // As root, apt warns that the download is unsandboxed (_apt cannot write to the
            // cwd); that warning is harmless and ignored.
            let download = || cmd::run(apt_get().current_dir(&dl).args(["download", &pkg]));
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
            })?
        }
    };
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
            "*/drivers/misc/pvpanic/*.ko".to_string(),
        ],
    )?;
    fs::create_dir_all(kernel_dir).map_err(io_err("create", kernel_dir))?;
    let drivers = drivers_dir(kernel_dir);
    fs::create_dir_all(&drivers).map_err(io_err("create", &drivers))?;
    let pvpanic_src = tmp.join(format!("lib/modules/{release}/kernel/drivers/misc/pvpanic"));
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
const GUEST_DRIVERS: [&str; 2] = ["pvpanic", "pvpanic-pci"];

/// Where the extracted guest drivers live in a kernel directory.
fn drivers_dir(kernel_dir: &Path) -> PathBuf {
    kernel_dir.join("drivers")
}

const MODULES_STAMP: &str = ".sources-hash";

/// Step 5: build each module directory with make and copy the `.ko` files into
/// `modules_dir`, unless the sources hash matches the stamp. Returns name → path.
fn build_modules(
    p: &Progress,
    root: &Path,
    kdir: &Path,
    release: &str,
    modules_dir: &Path,
) -> Result<(BTreeMap<String, PathBuf>, String), KitError> {
    let mut h = Fnv::new();
    h.bytes(release.as_bytes())
        .bytes(kdir.as_os_str().as_encoded_bytes());
    let mut present = Vec::new();
    for rel in MODULE_DIRS {
        let d = root.join(rel);
        if !d.is_dir() {
            p.warn(&format!(
                "{} does not exist yet; skipping its modules",
                d.display()
            ));
            continue;
        }
        if !d.join("Makefile").is_file() {
            p.warn(&format!(
                "{} has no Makefile yet; skipping its modules",
                d.display()
            ));
            continue;
        }
        let mut srcs = Vec::new();
        module_sources(&d, &mut srcs)?;
        h.bytes(rel.as_bytes());
        for s in &srcs {
            let relpath = s.strip_prefix(&d).unwrap_or(s);
            h.bytes(relpath.as_os_str().as_encoded_bytes())
                .bytes(&read(s)?);
        }
        present.push(d);
    }
    let hash = h.hex();
    let stamp = modules_dir.join(MODULES_STAMP);

    // Up to date: stamp = hash line + one module name per line, all copies present.
    if let Ok(text) = fs::read_to_string(&stamp) {
        let mut lines = text.lines();
        if lines.next() == Some(hash.as_str()) {
            let names: Vec<&str> = lines.collect();
            let map: BTreeMap<String, PathBuf> = names
                .iter()
                .map(|n| (n.to_string(), modules_dir.join(format!("{n}.ko"))))
                .collect();
            if map.values().all(|p| p.is_file()) {
                return Ok((
                    map,
                    format!("up to date ({} modules, sources unchanged)", names.len()),
                ));
            }
        }
    }

    fs::create_dir_all(modules_dir).map_err(io_err("create", modules_dir))?;
    let _ = fs::remove_file(&stamp);
    for e in fs::read_dir(modules_dir).map_err(io_err("list", modules_dir))? {
        let path = e.map_err(io_err("list", modules_dir))?.path();
        if path.extension().is_some_and(|x| x == "ko") {
            fs::remove_file(&path).map_err(io_err("remove", &path))?;
        }
    }
    let jobs = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut map = BTreeMap::new();
    for d in &present {
        let t = Instant::now();
        cmd::run(
            Command::new("make")
                .arg("-C")
                .arg(d)
                .arg(format!("-j{jobs}"))
                .arg(format!("KDIR={}", kdir.display())),
        )?;
        let mut kos = Vec::new();
        built_modules(d, &mut kos)?;
        if kos.is_empty() {
            p.warn(&format!("make in {} produced no .ko files", d.display()));
        }
        for ko in kos {
            let name = ko
                .file_stem()
                .map(|s| s.to_string_lossy().into_owned())
                .unwrap_or_default();
            let dst = modules_dir.join(format!("{name}.ko"));
            if map.contains_key(&name) {
                p.warn(&format!(
                    "module {name} built twice; keeping {}",
                    ko.display()
                ));
            }
            fs::copy(&ko, &dst).map_err(io_err("copy to", &dst))?;
            map.insert(name, dst);
        }
        p.line(&format!(
            "      make -C {} done in {:.2}s",
            d.display(),
            t.elapsed().as_secs_f64()
        ));
    }
    let mut text = hash;
    for n in map.keys() {
        text.push('\n');
        text.push_str(n);
    }
    text.push('\n');
    write_atomic(&stamp, text.as_bytes(), None)?;
    let names: Vec<&str> = map.keys().map(String::as_str).collect();
    let note = if names.is_empty() {
        "no module sources yet; 0 modules".to_string()
    } else {
        format!("built {} modules: {}", map.len(), names.join(" "))
    };
    Ok((map, note))
}

/// Built helpers: `(name, path)` in [`HELPERS`] order.
type BuiltHelpers = Vec<(&'static str, PathBuf)>;

/// Step 6: compile every [`HELPERS`] entry into `bin_dir` (each unless its stamp says it
/// is current). Returns `(name, path)` in [`HELPERS`] order.
fn build_helpers(bin_dir: &Path) -> Result<(BuiltHelpers, String), KitError> {
    fs::create_dir_all(bin_dir).map_err(io_err("create", bin_dir))?;
    let mut built = Vec::new();
    let mut out = Vec::new();
    for h in HELPERS {
        if build_helper(bin_dir, h)? {
            built.push(h.name);
        }
        out.push((h.name, bin_dir.join(h.name)));
    }
    let note = if built.is_empty() {
        format!("up to date ({} helpers)", HELPERS.len())
    } else {
        format!("built {} in {}", built.join(" "), bin_dir.display())
    };
    Ok((out, note))
}

/// Compiles one helper unless `<bin_dir>/.<name>.hash` holds its source hash; returns
/// whether it compiled.
fn build_helper(bin_dir: &Path, h: &Helper) -> Result<bool, KitError> {
    let out = bin_dir.join(h.name);
    let hash = Fnv::new().bytes(h.source.as_bytes()).hex();
    let stamp = bin_dir.join(format!(".{}.hash", h.name));
    if out.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
        return Ok(false);
    }
    let src = bin_dir.join(h.source_name);
    fs::write(&src, h.source).map_err(io_err("write", &src))?;
    let tmp = bin_dir.join(format!("{}.tmp", h.name));
    cmd::run(
        Command::new("gcc")
            .args(["-static", "-O2", "-Wall", "-Wextra", "-o"])
            .arg(&tmp)
            .arg(&src),
    )?;
    fs::rename(&tmp, &out).map_err(io_err("move into", &out))?;
    write_atomic(&stamp, format!("{hash}\n").as_bytes(), None)?;
    Ok(true)
}

/// Sources of the mini frontend under `dir`: C, headers, assembly, the linker script and
/// the Makefile, sorted (build output and hidden entries skipped).
fn mini_frontend_sources(dir: &Path) -> Result<Vec<PathBuf>, KitError> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let e = e.map_err(io_err("list", dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        let path = e.path();
        if name.starts_with('.') || !e.file_type().map_err(io_err("stat", &path))?.is_file() {
            continue;
        }
        let source = [".c", ".h", ".S", ".ld"].iter().any(|x| name.ends_with(x));
        if source || name == "Makefile" {
            out.push(path);
        }
    }
    out.sort();
    Ok(out)
}

/// Builds the mini frontend from `<repo_root>/tests/guests/mini-frontend` into
/// `out_dir/mini-frontend.elf` with its Makefile (gcc, `-Wall -Wextra -Werror`), unless
/// `out_dir/.sources-hash` says its sources and the wire header are unchanged. Returns
/// the ELF's path and whether it was (re)built. Needs only gcc and make, not the rest of
/// the kit, so tests of the built-in VMM can call it alone; a lock file in `out_dir`
/// serialises concurrent builders.
pub fn build_mini_frontend(repo_root: &Path, out_dir: &Path) -> Result<(PathBuf, bool), KitError> {
    let src = repo_root.join(MINI_FRONTEND_DIR);
    let header = repo_root.join(ABI_HEADER);
    if !src.join("Makefile").is_file() {
        return Err(KitError::MissingFile {
            what: "the mini frontend's Makefile".into(),
            path: src.join("Makefile"),
        });
    }
    fs::create_dir_all(out_dir).map_err(io_err("create", out_dir))?;
    let lock_path = out_dir.join(".lock");
    let lock = fs::File::create(&lock_path).map_err(io_err("create", &lock_path))?;
    lock.lock().map_err(io_err("lock", &lock_path))?;

    let mut h = Fnv::new();
    for s in mini_frontend_sources(&src)?.iter().chain([&header]) {
        let name = s.strip_prefix(repo_root).unwrap_or(s);
        h.bytes(name.as_os_str().as_encoded_bytes())
            .bytes(&read(s)?);
    }
    let hash = h.hex();
    let elf = out_dir.join(MINI_FRONTEND_ELF);
    let stamp = out_dir.join(MODULES_STAMP);
    if elf.is_file() && fs::read_to_string(&stamp).is_ok_and(|s| s.trim() == hash) {
        return Ok((elf, false));
    }
    let _ = fs::remove_file(&stamp);
    // -B: the hash decided; file times may lie (checkouts, clock steps, shared trees).
    cmd::run(
        Command::new("make")
            .arg("-B")
            .arg("-C")
            .arg(&src)
            .arg(format!("O={}", out_dir.display())),
    )?;
    if !elf.is_file() {
        return Err(KitError::MissingFile {
            what: "the mini frontend ELF after make".into(),
            path: elf,
        });
    }
    write_atomic(&stamp, format!("{hash}\n").as_bytes(), None)?;
    Ok((elf, true))
}

/// Step 8: the initramfs as bytes (deterministic, so unchanged inputs give equal bytes).
/// `helpers` are installed as `/bin/<name>`.
fn initramfs_bytes(
    modules: &BTreeMap<String, PathBuf>,
    helpers: &[(&str, PathBuf)],
    drivers: &[(String, PathBuf)],
) -> Result<Vec<u8>, KitError> {
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        return Err(KitError::MissingFile {
            what: "static busybox (package busybox-static)".into(),
            path: busybox.into(),
        });
    }
    let mut w = newc::Writer::new();
    for d in [
        "/bin",
        "/dev",
        "/proc",
        "/sys",
        "/tmp",
        "/lib",
        "/lib/vesper",
        "/lib/drivers",
    ] {
        w.dir(d, 0o755);
    }
    w.char_dev("/dev/console", 0o600, 5, 1);
    w.char_dev("/dev/null", 0o666, 1, 3);
    w.file("/bin/busybox", 0o755, &read(busybox)?);
    for a in APPLETS {
        w.symlink(&format!("/bin/{a}"), "busybox");
    }
    for (name, path) in helpers {
        w.file(&format!("/bin/{name}"), 0o755, &read(path)?);
    }
    for (name, path) in modules {
        w.file(&format!("/lib/vesper/{name}.ko"), 0o644, &read(path)?);
    }
    for (name, path) in drivers {
        w.file(&format!("/lib/drivers/{name}.ko"), 0o644, &read(path)?);
    }
    w.file("/init", 0o755, INIT_SCRIPT.as_bytes());
    Ok(w.finish())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_separates_boundaries() {
        let a = Fnv::new().bytes(b"a").bytes(b"bc").hex();
        let b = Fnv::new().bytes(b"ab").bytes(b"c").hex();
        assert_ne!(a, b);
        assert_eq!(a, Fnv::new().bytes(b"a").bytes(b"bc").hex());
    }

    #[test]
    fn module_sources_skip_generated_and_hidden() {
        let d = std::env::temp_dir().join(format!("guest-kit-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(d.join("sub")).unwrap();
        for f in [
            "a.c", "a.mod.c", "a.o", ".a.o.cmd", "Kbuild", "Makefile", "sub/b.h", "a.ko",
        ] {
            fs::write(d.join(f), f).unwrap();
        }
        let mut v = Vec::new();
        module_sources(&d, &mut v).unwrap();
        let names: Vec<String> = v
            .iter()
            .map(|p| p.strip_prefix(&d).unwrap().display().to_string())
            .collect();
        assert_eq!(names, ["Kbuild", "Makefile", "a.c", "sub/b.h"]);
        let mut kos = Vec::new();
        built_modules(&d, &mut kos).unwrap();
        assert_eq!(kos, [d.join("a.ko")]);
        fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn init_script_has_the_contract_lines() {
        for needle in [
            "vesper-init: kernel $(cat /proc/sys/kernel/osrelease)",
            "vesper-init: user space frozen",
            "exec /bin/busybox sleep 2147483647",
            "vesper.mode=*",
            "/bin/bench-insmod /lib/vesper/vesper_bench_100k.ko vesper_bench_100k \"$bench_n\"",
            "vesper-init: bench done",
            "FRONTEND NOT LOADED",
        ] {
            assert!(INIT_SCRIPT.contains(needle), "init lacks {needle:?}");
        }
        assert!(INIT_SCRIPT.starts_with("#!/bin/busybox sh\n"));
    }

    #[test]
    fn init_script_has_the_hand_protocol() {
        for needle in [
            "hand)\n        hand\n",
            "echo \"vesper-init: hand ready\"",
            "echo \"vesper-hand: $*\"",
            "hand_say \"pong\"",
            "hand_say \"started $name pid=$pid\"",
            "hand_say \"killed $name pid=$pid sig=$sig\"",
            "hand_say \"no process $name\"",
            "hand_say \"exit requested $name pid=$pid code=$code\"",
            "hand_say \"panicking\"",
            "echo c >/proc/sysrq-trigger",
            "hand_say \"oom hog pid=$!\"",
            "hand_say \"unknown command: $line\"",
            "echo -1000 >/proc/1/oom_score_adj",
            "ln -sf /bin/svc \"/tmp/svc/$name\"",
        ] {
            assert!(INIT_SCRIPT.contains(needle), "init lacks {needle:?}");
        }
        // hand mode sits next to, not in place of, the frozen/bench contract
        assert!(INIT_SCRIPT.contains("    freeze)\n        freeze\n"));
    }

    #[test]
    fn helpers_are_distinct_and_installed_where_init_expects_them() {
        let names: Vec<&str> = HELPERS.iter().map(|h| h.name).collect();
        assert_eq!(names, ["bench-insmod", "svc", "hog"]);
        for h in HELPERS {
            assert!(h.source_name.ends_with(".c"), "{}", h.source_name);
            assert!(h.source.contains("gcc -static -O2"), "{} header", h.name);
            assert!(
                INIT_SCRIPT.contains(&format!("/bin/{}", h.name)),
                "init never runs /bin/{}",
                h.name
            );
        }
        let mut srcs: Vec<&str> = HELPERS.iter().map(|h| h.source_name).collect();
        srcs.dedup();
        assert_eq!(srcs.len(), HELPERS.len());
    }

    #[test]
    fn svc_and_init_agree_on_the_exit_code_file() {
        assert!(SVC_C.contains("\"/tmp/svc-exit/%ld\""));
        assert!(INIT_SCRIPT.contains("mkdir -p /tmp/svc /tmp/svc-exit"));
        assert!(INIT_SCRIPT.contains("echo \"$code\" >\"/tmp/svc-exit/$pid\""));
        assert!(INIT_SCRIPT.contains("kill -USR1 \"$pid\""));
        assert!(SVC_C.contains("SIGUSR1"));
        assert!(HOG_C.contains("\"/proc/self/oom_score_adj\""));
        assert!(HOG_C.contains("\"1000\\n\""));
        assert!(HOG_C.contains("#define STEP (16u << 20)"));
    }

    #[test]
    fn manifest_round_trip() {
        let kit = Kit {
            dir: "/k".into(),
            release: "6.1.0-56-cloud-amd64".into(),
            kernel: "/k/kernel/x/vmlinuz".into(),
            kernel_config: "/k/kernel/x/config".into(),
            initramfs: "/k/initramfs.cpio".into(),
            modules_dir: "/k/modules/x".into(),
            modules: [(
                "vesper_front".to_string(),
                PathBuf::from("/k/modules/x/vesper_front.ko"),
            )]
            .into(),
            kdir: "/lib/modules/x/build".into(),
            bench_insmod: "/k/guest-bin/bench-insmod".into(),
            svc: "/k/guest-bin/svc".into(),
            hog: "/k/guest-bin/hog".into(),
            mini_frontend: "/k/mini-frontend/mini-frontend.elf".into(),
            accel: "tcg".into(),
        };
        let json = serde_json::to_string(&Manifest {
            format: MANIFEST_FORMAT,
            kit: kit.clone(),
        })
        .unwrap();
        let back: Manifest = serde_json::from_str(&json).unwrap();
        assert_eq!(back.kit, kit);
        assert_eq!(kit.module("vesper_front"), kit.modules["vesper_front"]);
    }

    /// Reads a little-endian integer of `N` bytes at `at`.
    fn le<const N: usize>(b: &[u8], at: usize) -> u64 {
        let mut v = [0u8; 8];
        v[..N].copy_from_slice(&b[at..at + N]);
        u64::from_le_bytes(v)
    }

    #[test]
    fn mini_frontend_builds_as_a_plain_elf64_at_4_mib_and_rebuilds_on_change() {
        // A private copy of its sources, so changing one disturbs nobody.
        let root = std::env::temp_dir().join(format!("guest-kit-mini-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let src = root.join(MINI_FRONTEND_DIR);
        fs::create_dir_all(&src).unwrap();
        for f in mini_frontend_sources(&repo_root().join(MINI_FRONTEND_DIR)).unwrap() {
            fs::copy(&f, src.join(f.file_name().unwrap())).unwrap();
        }
        let header = root.join(ABI_HEADER);
        fs::create_dir_all(header.parent().unwrap()).unwrap();
        fs::copy(repo_root().join(ABI_HEADER), &header).unwrap();
        let out = root.join("out");

        let (elf, built) = build_mini_frontend(&root, &out).unwrap();
        assert!(built);
        let b = fs::read(&elf).unwrap();
        assert_eq!(&b[..4], b"\x7fELF");
        assert_eq!((b[4], b[5]), (2, 1), "ELF64, little-endian");
        assert_eq!(le::<2>(&b, 16), 2, "ET_EXEC");
        assert_eq!(le::<2>(&b, 18), 62, "EM_X86_64");
        assert_eq!(le::<8>(&b, 24), 0x40_0000, "entry at the load address");
        let (phoff, phentsize, phnum) = (
            le::<8>(&b, 32) as usize,
            le::<2>(&b, 54) as usize,
            le::<2>(&b, 56) as usize,
        );
        let loads: Vec<(u64, u64)> = (0..phnum)
            .map(|i| phoff + i * phentsize)
            .filter(|&ph| le::<4>(&b, ph) == 1)
            .map(|ph| (le::<8>(&b, ph + 16), le::<8>(&b, ph + 24)))
            .collect();
        assert!(!loads.is_empty());
        assert!(loads
            .iter()
            .all(|&(vaddr, paddr)| vaddr == paddr && paddr >= 0x40_0000));
        assert_eq!(loads[0].1, 0x40_0000);

        assert_eq!(
            build_mini_frontend(&root, &out).unwrap(),
            (elf.clone(), false)
        );
        // A changed wire header (e.g. a regenerated vesper_abi.h) rebuilds it.
        let mut h = fs::read_to_string(&header).unwrap();
        h.push_str("\n/* changed */\n");
        fs::write(&header, h).unwrap();
        assert_eq!(build_mini_frontend(&root, &out).unwrap(), (elf, true));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn load_of_missing_kit_says_what_to_run() {
        let err = Kit::load(Some(Path::new("/nonexistent/vesper-kit"))).unwrap_err();
        assert!(
            err.to_string().contains("cargo run -p vesper-guest-kit"),
            "{err}"
        );
    }
}
