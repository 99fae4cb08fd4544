//! The disk image attached to a loop device, and what is mounted from and into it,
//! undone on every path: [`Attached`] unmounts (newest first) and detaches in its
//! `Drop`, so an error anywhere in the build leaves no loop device or mount behind.
//! [`clear_stale`] undoes what a killed build (no `Drop`) left.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::log::BuildLog;
use crate::{io_err, KitError};

/// How long the partition's device node may take to appear.
const NODE_WAIT: Duration = Duration::from_secs(10);

/// A raw image on a loop device, with the mounts made on it.
pub(crate) struct Attached {
    /// `/dev/loopN`: the whole disk.
    pub(crate) disk: PathBuf,
    /// `/dev/loopNp1`: its one partition.
    pub(crate) part: PathBuf,
    /// Mount points, oldest first.
    mounts: Vec<PathBuf>,
    detached: bool,
}

/// `loopN` of `/dev/loopN`.
fn dev_name(dev: &Path) -> String {
    dev.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

impl Attached {
    /// `losetup --find --show --partscan RAW`, and the partition made known to the
    /// kernel: a kernel without the MS-DOS partition parser scans nothing, so the
    /// partition is then added from user space (`partx --add`, which reads the table
    /// itself).
    pub(crate) fn attach(raw: &Path, log: &mut BuildLog) -> Result<Attached, KitError> {
        let out = log.run(
            Command::new("losetup")
                .args(["--find", "--show", "--partscan"])
                .arg(raw),
            None,
        )?;
        let disk = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let name = dev_name(&disk);
        let a = Attached {
            part: PathBuf::from(format!("/dev/{name}p1")),
            disk,
            mounts: Vec::new(),
            detached: false,
        };
        let sys_part = Path::new("/sys/block")
            .join(&name)
            .join(format!("{name}p1"));
        if !sys_part.exists() {
            log.note("the kernel found no partition; adding it with partx");
            log.run(
                Command::new("partx")
                    .args(["--add", "--nr", "1"])
                    .arg(&a.disk),
                None,
            )?;
        }
        let t = Instant::now();
        while !a.part.exists() {
            if t.elapsed() > NODE_WAIT {
                return Err(KitError::MissingFile {
                    what: format!(
                        "device node of the disk's partition (no devtmpfs on /dev?) {:.0?} \
                         after losetup",
                        NODE_WAIT
                    ),
                    path: a.part.clone(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(a)
    }

    /// `/sys/block/loopN/dev` or `.../loopNp1/dev`: `major:minor` of the disk
    /// (`partition == false`) or of its partition.
    pub(crate) fn dev_numbers(&self, partition: bool) -> Result<String, KitError> {
        let name = dev_name(&self.disk);
        let mut p = Path::new("/sys/block").join(&name);
        if partition {
            p = p.join(format!("{name}p1"));
        }
        let p = p.join("dev");
        let s = fs::read_to_string(&p).map_err(io_err("read", &p))?;
        Ok(s.trim().to_string())
    }

    /// `mount ARGS TARGET`, undone by [`Attached::unmount_to`], [`Attached::detach`]
    /// or the drop.
    pub(crate) fn mount(
        &mut self,
        log: &mut BuildLog,
        args: &[&str],
        source: &Path,
        target: &Path,
    ) -> Result<(), KitError> {
        log.run(
            Command::new("mount").args(args).arg(source).arg(target),
            None,
        )?;
        self.mounts.push(target.to_path_buf());
        Ok(())
    }

    /// Unmounts, newest first, until `keep` mounts are left.
    pub(crate) fn unmount_to(&mut self, log: &mut BuildLog, keep: usize) -> Result<(), KitError> {
        while self.mounts.len() > keep {
            let m = self.mounts.last().cloned().expect("len > keep");
            log.run(Command::new("umount").arg(&m), None)?;
            self.mounts.pop();
        }
        Ok(())
    }

    /// Unmounts everything and detaches the loop device, errors reported (the drop
    /// would only try).
    pub(crate) fn detach(mut self, log: &mut BuildLog) -> Result<(), KitError> {
        self.unmount_to(log, 0)?;
        // partx --delete only matters where partx added the partition; elsewhere
        // detaching drops it.
        let _ = log.run(Command::new("partx").arg("--delete").arg(&self.disk), None);
        log.run(
            Command::new("losetup").arg("--detach").arg(&self.disk),
            None,
        )?;
        self.detached = true;
        Ok(())
    }
}

/// Runs a clean-up command, its output and failure ignored (a drop cannot report).
fn quietly(cmd: &mut Command) -> bool {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Drop for Attached {
    fn drop(&mut self) {
        if self.detached {
            return;
        }
        while let Some(m) = self.mounts.pop() {
            if !quietly(Command::new("umount").arg(&m)) {
                quietly(Command::new("umount").arg("--lazy").arg(&m));
            }
        }
        quietly(Command::new("partx").arg("--delete").arg(&self.disk));
        quietly(Command::new("losetup").arg("--detach").arg(&self.disk));
    }
}

/// Mount points at or under `dir` in `/proc/self/mountinfo`'s text, deepest first.
pub(crate) fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        // mountinfo escapes space, tab, newline and backslash as octal
        .map(|m| {
            m.replace("\\040", " ")
                .replace("\\011", "\t")
                .replace("\\012", "\n")
                .replace("\\134", "\\")
        })
        .map(PathBuf::from)
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|m| std::cmp::Reverse(m.components().count()));
    v
}

/// Undoes what a build killed before its drop ran left under `work`: its mounts
/// (lazily, deepest first) and the loop devices of `work`'s raw images. Then `work` can
/// be removed without reaching into a mounted tree.
pub(crate) fn clear_stale(work: &Path, raw_name: &str) -> Result<(), KitError> {
    let info = fs::read_to_string("/proc/self/mountinfo")
        .map_err(io_err("read", Path::new("/proc/self/mountinfo")))?;
    for m in mounts_under(&info, work) {
        quietly(Command::new("umount").arg("--lazy").arg(&m));
    }
    let raw = work.join(raw_name);
    if raw.exists() {
        if let Ok(out) = Command::new("losetup")
            .args(["--noheadings", "--output", "NAME", "--associated"])
            .arg(&raw)
            .output()
        {
            for dev in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                quietly(Command::new("partx").args(["--delete", dev]));
                quietly(Command::new("losetup").args(["--detach", dev]));
            }
        }
    }
    if !mounts_under(
        &fs::read_to_string("/proc/self/mountinfo").unwrap_or_default(),
        work,
    )
    .is_empty()
    {
        return Err(KitError::StaleMounts {
            dir: work.to_path_buf(),
        });
    }
    Ok(())
}
