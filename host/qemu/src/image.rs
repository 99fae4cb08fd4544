//! Disk images as `qemu-img` sees them, before QEMU is started on them: the format, and
//! whether another QEMU holds the image (QEMU's own image locks).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Disk, DiskFormat, Firmware};

/// Finds each disk's format (or checks the one given) and that no other process holds
/// it, so a bad disk is refused before any VM process exists.
pub fn inspect_disk(disk: &Disk) -> Result<DiskFormat, String> {
    let path = disk.path.display().to_string();
    let writes = !(disk.readonly || disk.snapshot);
    if let Some(holders) = lock_conflict(&disk.path, writes)? {
        let hint = if writes {
            "stop it, or add --snapshot if it only reads the image"
        } else {
            "stop it: it writes the image"
        };
        return Err(format!(
            "disk {path} is in use by another QEMU ({holders}); {hint}"
        ));
    }
    let mut cmd = Command::new("qemu-img");
    cmd.args(["info", "--output=json"]);
    if disk.readonly || disk.snapshot {
        // Opened read-only by the VM too: another reader may share it.
        cmd.arg("--force-share");
    }
    let out = cmd.arg(&path).output().map_err(|e| {
        format!("disk {path}: cannot run qemu-img ({e}); install the qemu-utils package")
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if err.contains("lock") {
            return Err(format!(
                "disk {path} is in use by another QEMU (its image lock is held: {err}); stop that VM, or add --snapshot to run on a throw-away overlay"
            ));
        }
        return Err(format!("disk {path}: qemu-img cannot read it: {err}"));
    }
    let info: serde_json::Value = serde_json::from_slice(&out.stdout)
        .map_err(|e| format!("disk {path}: qemu-img info said no JSON: {e}"))?;
    let found = info["format"].as_str().unwrap_or_default();
    let format = DiskFormat::from_qemu_name(found).ok_or_else(|| {
        format!("disk {path} is in format {found:?}; Vesper attaches qcow2 or raw (convert it: qemu-img convert -O qcow2)")
    })?;
    match disk.format {
        Some(given) if given != format => Err(format!(
            "disk {path} is {}, not {} as its definition says; fix its format (or drop it to have it found)",
            format.as_str(),
            given.as_str()
        )),
        _ => Ok(format),
    }
}

/// Where Debian's `ovmf` package puts the UEFI firmware (code, variable template).
const OVMF: &[(&str, &str)] = &[
    (
        "/usr/share/OVMF/OVMF_CODE_4M.fd",
        "/usr/share/OVMF/OVMF_VARS_4M.fd",
    ),
    (
        "/usr/share/OVMF/OVMF_CODE.fd",
        "/usr/share/OVMF/OVMF_VARS.fd",
    ),
];

/// UEFI firmware for a VM whose variable store is `vars` (copied from OVMF's template
/// on first use, kept across starts so boot entries persist).
pub fn uefi_firmware(vars: &Path) -> Result<Firmware, String> {
    let (code, template) = OVMF
        .iter()
        .find(|(c, t)| Path::new(c).is_file() && Path::new(t).is_file())
        .ok_or("UEFI firmware not found (/usr/share/OVMF); install the ovmf package, or use --firmware bios")?;
    if !vars.exists() {
        std::fs::copy(template, vars)
            .map_err(|e| format!("cannot copy {template} to {}: {e}", vars.display()))?;
    }
    Ok(Firmware::Uefi {
        code: PathBuf::from(code),
        vars: vars.to_path_buf(),
    })
}

/// QEMU's image locks (block/file-posix.c): a process holding permission P locks byte
/// 100 + P, one refusing to share P locks byte 200 + P; P = 0 consistent read,
/// 1 write, 3 resize.
const LOCK_PERM_BASE: i64 = 100;
const LOCK_SHARED_BASE: i64 = 200;

/// Whether starting a QEMU on `path` (writing it, or only reading) would conflict with
/// a lock another process holds; then who holds the file open.
fn lock_conflict(path: &Path, writes: bool) -> Result<Option<String>, String> {
    let file = std::fs::File::open(path).map_err(|e| format!("disk {}: {e}", path.display()))?;
    // We would refuse to share write and resize; we need read, and write if we write.
    let mut bytes = vec![LOCK_PERM_BASE + 1, LOCK_PERM_BASE + 3, LOCK_SHARED_BASE];
    if writes {
        bytes.push(LOCK_SHARED_BASE + 1);
    }
    for byte in bytes {
        if lock_held(&file, byte) {
            return Ok(Some(holders(path)));
        }
    }
    Ok(None)
}

fn lock_held(file: &std::fs::File, byte: i64) -> bool {
    let mut fl = libc::flock {
        l_type: libc::F_WRLCK as i16,
        l_whence: libc::SEEK_SET as i16,
        l_start: byte,
        l_len: 1,
        // OFD locks want 0 here; the kernel fills in -1 for a conflicting one.
        l_pid: 0,
    };
    match nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_GETLK(&mut fl)) {
        Ok(_) => fl.l_type != libc::F_UNLCK as i16,
        Err(_) => false,
    }
}

/// The processes that hold `path` open, as `pid N (comm)`, from `/proc/*/fd`.
fn holders(path: &Path) -> String {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(path) else {
        return "a process holds its lock".into();
    };
    let me = std::process::id().to_string();
    let mut found = vec![];
    for proc in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let pid = proc.file_name().to_string_lossy().into_owned();
        if !pid.bytes().all(|b| b.is_ascii_digit()) || pid == me {
            continue;
        }
        let holds = std::fs::read_dir(proc.path().join("fd"))
            .into_iter()
            .flatten()
            .flatten()
            .any(|fd| {
                std::fs::metadata(fd.path())
                    .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
            });
        if holds {
            let comm = std::fs::read_to_string(proc.path().join("comm")).unwrap_or_default();
            found.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    if found.is_empty() {
        "a process holds its lock".into()
    } else {
        found.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lock(file: &std::fs::File, byte: i64, kind: i32) {
        let fl = libc::flock {
            l_type: kind as i16,
            l_whence: libc::SEEK_SET as i16,
            l_start: byte,
            l_len: 1,
            l_pid: 0,
        };
        nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_OFD_SETLK(&fl)).expect("lock");
    }

    #[test]
    fn a_writers_locks_refuse_a_writer_and_a_reader_and_a_readers_refuse_only_a_writer() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        std::fs::write(&img, vec![0u8; 4096]).unwrap();
        assert_eq!(lock_conflict(&img, true).unwrap(), None);
        // A reading QEMU (snapshot=on): holds read, refuses to share write.
        let reader = std::fs::File::open(&img).unwrap();
        lock(&reader, LOCK_PERM_BASE, libc::F_RDLCK);
        lock(&reader, LOCK_SHARED_BASE + 1, libc::F_RDLCK);
        assert_eq!(lock_conflict(&img, false).unwrap(), None);
        let held = lock_conflict(&img, true).unwrap().expect("conflict");
        assert!(
            held.contains(&format!("pid {}", std::process::id())) || held.contains("lock"),
            "{held}"
        );
        drop(reader);
        // A writing QEMU: holds write too.
        let writer = std::fs::File::open(&img).unwrap();
        lock(&writer, LOCK_PERM_BASE + 1, libc::F_RDLCK);
        assert!(lock_conflict(&img, false).unwrap().is_some());
    }
}
