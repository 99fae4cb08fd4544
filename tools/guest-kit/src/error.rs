//! The kit's one error type, and how an I/O failure names what it was doing.

use std::io;
use std::path::{Path, PathBuf};

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
    /// A step of the Debian disk guest's build failed (`disk/`).
    #[error(
        "building the Debian disk guest failed while {what} (full log: {log}); fix the cause \
         and rerun `cargo run -p vesper-guest-kit`, or build the kit without the disk \
         (`cargo run -p vesper-guest-kit -- build --no-disk`): {source}"
    )]
    DiskBuild {
        /// What the build was doing.
        what: String,
        /// The build's log, every command's output.
        log: PathBuf,
        /// Why it failed.
        #[source]
        source: Box<KitError>,
    },
    /// The Debian disk guest was built but lacks what it must have.
    #[error("the Debian disk guest was built but {problem}: {path} (full log: {log})")]
    DiskCheck {
        /// What is wrong.
        problem: String,
        /// The file that shows it.
        path: PathBuf,
        /// The build's log.
        log: PathBuf,
    },
    /// A killed disk build left mounts that could not be undone.
    #[error(
        "a killed Debian disk build left mounts under {dir} that could not be undone; \
         unmount them (`findmnt -R {dir}`) and rerun"
    )]
    StaleMounts {
        /// The work directory.
        dir: PathBuf,
    },
    /// The disk must be built and we are not root.
    #[error(
        "building the Debian disk guest needs root (loop devices, mount, chroot); run as \
         root, or build the kit without it (`cargo run -p vesper-guest-kit -- build \
         --no-disk`, `EnsureOptions::skip_disk`)"
    )]
    DiskNeedsRoot,
    /// A kernel developer's tree cannot be booted or built against.
    #[error("kernel tree {}: {problem}", tree.display())]
    KernelTree {
        /// The tree.
        tree: PathBuf,
        /// What is missing, and what to do.
        problem: String,
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

pub(crate) fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> KitError {
    let path = path.to_path_buf();
    move |source| KitError::Io { op, path, source }
}
