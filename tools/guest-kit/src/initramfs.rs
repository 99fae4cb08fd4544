//! Step 8: the initramfs, packed in memory (deterministic, so unchanged inputs give
//! equal bytes).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::contents::{APPLETS, INIT_SCRIPT};
use crate::error::KitError;
use crate::files::read;
use crate::newc;

/// Where the host's static busybox is (package busybox-static).
const BUSYBOX: &str = "/bin/busybox";

/// Step 8: the initramfs as bytes (deterministic, so unchanged inputs give equal bytes).
/// `helpers` are installed as `/bin/<name>`.
pub(crate) fn initramfs_bytes(
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
