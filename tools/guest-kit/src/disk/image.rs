//! Carrying out a [`DiskPlan`]: a sparse raw image with one MS-DOS partition on a loop
//! device, ext4, Debian installed into it by mmdebstrap, the kit's files, the plan's
//! commands in its chroot (the frontend package's DKMS build, GRUB for SeaBIOS), checks
//! of what they left, then the image trimmed and converted to a compressed qcow2 that
//! is renamed into place only when complete. Loop devices and mounts are undone on
//! every path ([`Attached`]); every command's output goes to `<kit>/disk/build.log`.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use super::deb::{self, DKMS_DEST, MODULE, PACKAGE};
use super::log::BuildLog;
use super::mounts::{clear_stale, mounts_under, Attached};
use super::plan::{
    check_grub_cfg, fstab, ChrootCmd, DiskPlan, DISK_PLACEHOLDER, IMAGE_BYTES, ROOT_LABEL, SUITE,
};
use crate::{io_err, KitError, Progress};

/// The raw image's name in a work directory.
const RAW_NAME: &str = "disk.raw";
/// Work directories are `<kit>/disk/work-<pid>`.
const WORK_PREFIX: &str = "work-";
/// One partition from 1 MiB (GRUB's core image lives in the gap before it), bootable.
const PARTITION_TABLE: &str = "label: dos\nstart=2048, type=83, bootable\n";
/// Character devices of the chroot's private `/dev`: name, major, minor.
const DEV_NODES: &[(&str, u32, u32)] = &[
    ("null", 1, 3),
    ("zero", 1, 5),
    ("full", 1, 7),
    ("random", 1, 8),
    ("urandom", 1, 9),
    ("tty", 5, 0),
];

/// Prints a phase of the build and names it in its error.
struct Phase<'a> {
    p: &'a Progress,
    log: PathBuf,
}

impl Phase<'_> {
    fn run<T>(&self, what: &str, f: impl FnOnce() -> Result<T, KitError>) -> Result<T, KitError> {
        self.p.line(&format!("      disk: {what}"));
        f().map_err(|source| KitError::DiskBuild {
            what: what.to_string(),
            log: self.log.clone(),
            source: Box::new(source),
        })
    }
}

/// Builds `plan` into `out` (a qcow2 in `disk_dir`), in a work directory of
/// `disk_dir` removed afterwards; what earlier, killed builds left there is cleared
/// first.
pub(crate) fn build(
    p: &Progress,
    plan: &DiskPlan,
    disk_dir: &Path,
    out: &Path,
) -> Result<(), KitError> {
    fs::create_dir_all(disk_dir).map_err(io_err("create", disk_dir))?;
    for e in fs::read_dir(disk_dir).map_err(io_err("list", disk_dir))? {
        let path = e.map_err(io_err("list", disk_dir))?.path();
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned());
        if name.is_some_and(|n| n.starts_with(WORK_PREFIX)) && path.is_dir() {
            clear_stale(&path, RAW_NAME)?;
            fs::remove_dir_all(&path).map_err(io_err("remove", &path))?;
        }
    }
    let work = disk_dir.join(format!("{WORK_PREFIX}{}", std::process::id()));
    fs::create_dir_all(&work).map_err(io_err("create", &work))?;
    let mut log = BuildLog::create(&disk_dir.join("build.log"))?;
    let phase = Phase {
        p,
        log: log.path.clone(),
    };
    let built = build_in(&phase, &mut log, plan, &work, disk_dir, out);
    // Never remove a tree something is still mounted in (a drop that could not unmount).
    let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    if mounts_under(&info, &work).is_empty() {
        let _ = fs::remove_dir_all(&work);
    }
    built
}

fn build_in(
    phase: &Phase,
    log: &mut BuildLog,
    plan: &DiskPlan,
    work: &Path,
    disk_dir: &Path,
    out: &Path,
) -> Result<(), KitError> {
    let raw = work.join(RAW_NAME);
    let root = work.join("root");
    phase.run("partitioning a sparse raw image", || make_raw(log, &raw))?;
    let mut att = phase.run("attaching it to a loop device", || {
        Attached::attach(&raw, log)
    })?;
    let uuid = phase.run("making and mounting the ext4 root", || {
        make_root(log, &mut att, &root)
    })?;
    phase.run(&format!("installing Debian {SUITE} (mmdebstrap)"), || {
        mmdebstrap(log, plan, &root, disk_dir)
    })?;
    phase.run("adding the kit's files", || add_files(plan, &root, &uuid))?;
    phase.run(
        "mounting /proc, /sys and a private /dev in the root",
        || chroot_mounts(log, &mut att, &root, &uuid),
    )?;
    let disk = att.disk.display().to_string();
    for c in &plan.chroot {
        phase.run(c.what, || run_chroot(log, &root, c, &disk))?;
    }
    phase.run("checking the DKMS module, the initrd and grub.cfg", || {
        verify(log, plan, &root, &uuid)
    })?;
    phase.run("tidying, trimming and detaching the image", || {
        tidy(plan, &root)?;
        att.unmount_to(log, 1)?;
        log.run(Command::new("fstrim").arg(&root), None)?;
        att.detach(log)
    })?;
    phase.run("converting to qcow2 (compressed)", || {
        let tmp = disk_dir.join(format!(".qcow2.tmp.{}", std::process::id()));
        let converted = log
            .run(
                Command::new("qemu-img")
                    .args(["convert", "-c", "-O", "qcow2"])
                    .arg(&raw)
                    .arg(&tmp),
                None,
            )
            .and_then(|_| fs::rename(&tmp, out).map_err(io_err("rename into", out)));
        if converted.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        converted
    })
}

/// A sparse file of [`IMAGE_BYTES`] with [`PARTITION_TABLE`] written by sfdisk.
fn make_raw(log: &mut BuildLog, raw: &Path) -> Result<(), KitError> {
    let f = fs::File::create(raw).map_err(io_err("create", raw))?;
    f.set_len(IMAGE_BYTES).map_err(io_err("size", raw))?;
    drop(f);
    log.run(
        Command::new("sfdisk").arg("--quiet").arg(raw),
        Some(PARTITION_TABLE.as_bytes()),
    )?;
    Ok(())
}

/// mkfs.ext4 on the partition, mounted at `root`; returns the filesystem's UUID.
fn make_root(log: &mut BuildLog, att: &mut Attached, root: &Path) -> Result<String, KitError> {
    log.run(
        Command::new("mkfs.ext4")
            .args(["-q", "-L", ROOT_LABEL])
            .arg(&att.part),
        None,
    )?;
    let out = log.run(
        Command::new("blkid")
            .args(["-s", "UUID", "-o", "value"])
            .arg(&att.part),
        None,
    )?;
    let uuid = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if uuid.is_empty() {
        return Err(KitError::MissingFile {
            what: "the UUID of the new ext4 filesystem (blkid said nothing)".into(),
            path: att.part.clone(),
        });
    }
    fs::create_dir_all(root).map_err(io_err("create", root))?;
    let part = att.part.clone();
    att.mount(log, &["-t", "ext4"], &part, root)?;
    Ok(uuid)
}

/// mmdebstrap (root mode, `minbase`) into the mounted root, with the plan's packages
/// and dpkg filters. Downloaded packages are kept in `<disk_dir>/apt-cache` for the
/// next build (only the last build's set: older versions go).
fn mmdebstrap(
    log: &mut BuildLog,
    plan: &DiskPlan,
    root: &Path,
    disk_dir: &Path,
) -> Result<(), KitError> {
    let cache = disk_dir.join("apt-cache");
    let fresh = disk_dir.join("apt-cache.new");
    let _ = fs::remove_dir_all(&fresh);
    for d in [&cache, &fresh] {
        fs::create_dir_all(d).map_err(io_err("create", d))?;
    }
    let mut c = Command::new("mmdebstrap");
    c.args(["--mode=root", "--variant=minbase", "--format=directory"])
        .arg(format!("--include={}", plan.packages.join(",")))
        .args(plan.dpkg_opts.iter().map(|o| format!("--dpkgopt={o}")))
        .arg("--aptopt=Acquire::Languages \"none\"")
        .arg("--skip=essential/unlink")
        .arg("--setup-hook=mkdir -p \"$1\"/var/cache/apt/archives/")
        .arg(format!(
            "--setup-hook=sync-in {} /var/cache/apt/archives/",
            cache.display()
        ))
        .arg(format!(
            "--customize-hook=sync-out /var/cache/apt/archives {}",
            fresh.display()
        ))
        .arg(SUITE)
        .arg(root);
    log.run(&mut c, None)?;
    fs::remove_dir_all(&cache).map_err(io_err("remove", &cache))?;
    fs::rename(&fresh, &cache).map_err(io_err("rename into", &cache))
}

/// `root` + an absolute guest path.
fn in_root(root: &Path, guest_path: &str) -> PathBuf {
    root.join(guest_path.trim_start_matches('/'))
}

/// The plan's files and links, `/etc/fstab` and the frontend package (for `dpkg -i`).
fn add_files(plan: &DiskPlan, root: &Path, uuid: &str) -> Result<(), KitError> {
    let fstab = fstab(uuid);
    let mut files: Vec<(PathBuf, u32, &[u8])> = plan
        .files
        .iter()
        .map(|f| (in_root(root, &f.path), f.mode, f.data.as_slice()))
        .collect();
    files.push((root.join("etc/fstab"), 0o644, fstab.as_bytes()));
    for (path, mode, data) in files {
        let dir = path.parent().unwrap_or(root);
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let _ = fs::remove_file(&path);
        fs::write(&path, data).map_err(io_err("write", &path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))
            .map_err(io_err("chmod", &path))?;
    }
    for (path, target) in &plan.links {
        let p = in_root(root, path);
        let _ = fs::remove_file(&p);
        symlink(target, &p).map_err(io_err("symlink", &p))?;
    }
    let deb = in_root(root, &plan.deb_in_root);
    fs::copy(&plan.deb.path, &deb).map_err(io_err("copy to", &deb))?;
    Ok(())
}

/// `/proc`, `/sys` and a private `/dev` (a tmpfs with the basic nodes, the disk's loop
/// devices and `disk/by-uuid/UUID`, so that grub-install finds the disk and
/// update-grub writes `root=UUID=`), without touching the host's `/dev`.
fn chroot_mounts(
    log: &mut BuildLog,
    att: &mut Attached,
    root: &Path,
    uuid: &str,
) -> Result<(), KitError> {
    att.mount(log, &["-t", "proc"], Path::new("proc"), &root.join("proc"))?;
    att.mount(log, &["-t", "sysfs"], Path::new("sysfs"), &root.join("sys"))?;
    let dev = root.join("dev");
    att.mount(
        log,
        &["-t", "tmpfs", "-o", "mode=0755,size=16m"],
        Path::new("vesper-dev"),
        &dev,
    )?;
    let mut nodes: Vec<(String, &str, String, &str)> = DEV_NODES
        .iter()
        .map(|&(n, ma, mi)| (n.to_string(), "c", format!("{ma}:{mi}"), "666"))
        .collect();
    for (dev_path, partition) in [(&att.disk, false), (&att.part, true)] {
        let name = dev_path.file_name().unwrap_or_default();
        let numbers = att.dev_numbers(partition)?;
        nodes.push((name.to_string_lossy().into_owned(), "b", numbers, "660"));
    }
    for (name, kind, numbers, mode) in &nodes {
        let (major, minor) = numbers.split_once(':').unwrap_or((numbers, "0"));
        log.run(
            Command::new("mknod")
                .args(["-m", mode])
                .arg(dev.join(name))
                .args([kind, major, minor]),
            None,
        )?;
    }
    for d in ["pts", "shm", "disk/by-uuid"] {
        let p = dev.join(d);
        fs::create_dir_all(&p).map_err(io_err("create", &p))?;
    }
    let part_name = att.part.file_name().unwrap_or_default().to_string_lossy();
    let by_uuid = format!("disk/by-uuid/{uuid}");
    let links = [
        ("fd", "/proc/self/fd".to_string()),
        ("stdin", "/proc/self/fd/0".to_string()),
        ("stdout", "/proc/self/fd/1".to_string()),
        ("stderr", "/proc/self/fd/2".to_string()),
        (by_uuid.as_str(), format!("../../{part_name}")),
    ];
    for (name, target) in links {
        let p = dev.join(name);
        symlink(&target, &p).map_err(io_err("symlink", &p))?;
    }
    Ok(())
}

/// One plan command in the chroot, the disk's loop device for [`DISK_PLACEHOLDER`].
fn run_chroot(log: &mut BuildLog, root: &Path, c: &ChrootCmd, disk: &str) -> Result<(), KitError> {
    let argv: Vec<String> = c
        .argv
        .iter()
        .map(|a| a.replace(DISK_PLACEHOLDER, disk))
        .collect();
    log.run(
        chroot(root).args(&argv),
        c.input.as_deref().map(str::as_bytes),
    )?;
    Ok(())
}

/// `chroot ROOT` with a plain, non-interactive environment.
fn chroot(root: &Path) -> Command {
    let mut c = Command::new("chroot");
    c.arg(root)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .env("LC_ALL", "C")
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        );
    c
}

/// What must be true of the root once the plan ran: DKMS built and installed the
/// module for the guest kernel (the `.ko`, modules.dep, `dkms status`), the initrd
/// exists, the hand is enabled, and grub.cfg boots the kernel by the root's UUID.
fn verify(log: &mut BuildLog, plan: &DiskPlan, root: &Path, uuid: &str) -> Result<(), KitError> {
    let rel = &plan.release;
    let fail = |problem: String, path: PathBuf, log: &BuildLog| KitError::DiskCheck {
        problem,
        path,
        log: log.path.clone(),
    };
    let modules = root.join("lib/modules").join(rel);
    let ko = modules.join(format!("{}/{MODULE}.ko", DKMS_DEST.trim_start_matches('/')));
    if !ko.is_file() {
        return Err(fail(format!("DKMS left no {MODULE}.ko for {rel}"), ko, log));
    }
    let dep = modules.join("modules.dep");
    let deps = fs::read_to_string(&dep).map_err(io_err("read", &dep))?;
    let entry = format!("{}/{MODULE}.ko:", DKMS_DEST.trim_start_matches('/'));
    if !deps.lines().any(|l| l.starts_with(&entry)) {
        return Err(fail(format!("modules.dep lacks {entry}"), dep, log));
    }
    let status = log.run(
        chroot(root).args([
            "dkms",
            "status",
            "-m",
            PACKAGE,
            "-v",
            deb::version(),
            "-k",
            rel,
        ]),
        None,
    )?;
    let status = String::from_utf8_lossy(&status.stdout).into_owned();
    if !status.contains(": installed") {
        let problem = format!("`dkms status` does not say installed: {}", status.trim());
        return Err(fail(problem, root.join("var/lib/dkms").join(PACKAGE), log));
    }
    let initrd = root.join(format!("boot/initrd.img-{rel}"));
    if !initrd.is_file() {
        return Err(fail("there is no initrd".into(), initrd, log));
    }
    let wants = root.join("etc/systemd/system/sysinit.target.wants/vesper-hand.service");
    if fs::symlink_metadata(&wants).is_err() {
        return Err(fail("the hand is not enabled".into(), wants, log));
    }
    let cfg_path = root.join("boot/grub/grub.cfg");
    let cfg = fs::read_to_string(&cfg_path).map_err(io_err("read", &cfg_path))?;
    check_grub_cfg(&cfg, rel, uuid)
        .map_err(|why| fail(format!("grub.cfg: {why}"), cfg_path, log))?;
    log.note(&format!("checked: {} ({status})", ko.display()));
    Ok(())
}

/// Removes what only the build needed: the package file, apt's lists and caches.
fn tidy(plan: &DiskPlan, root: &Path) -> Result<(), KitError> {
    let deb = in_root(root, &plan.deb_in_root);
    fs::remove_file(&deb).map_err(io_err("remove", &deb))?;
    for dir in ["var/lib/apt/lists", "var/cache/apt"] {
        let d = root.join(dir);
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_file() {
                fs::remove_file(&p).map_err(io_err("remove", &p))?;
            }
        }
    }
    Ok(())
}
