//! What the Debian disk guest is made of, as data: the suite, the packages, dpkg's path
//! filters, the files put into the root, the commands run in its chroot and the
//! kernel command line. `image.rs` carries a plan out; the plan's [`DiskPlan::key`]
//! is the disk's cache key, so any change to it rebuilds the disk.

use std::path::Path;

use crate::files::{read, Fnv};
use crate::KitError;

use super::deb::{self, FrontendDeb};

/// Bumped when the build changes in a way the plan's data does not show (the image
/// layout, the order of steps, the checks).
const RECIPE: u32 = 1;
/// The Debian release the disk runs.
pub(crate) const SUITE: &str = "bookworm";
/// Size of the disk the guest sees (sparse: the qcow2 holds only what is used).
pub(crate) const IMAGE_BYTES: u64 = 3 << 30;
/// The root filesystem's label.
pub(crate) const ROOT_LABEL: &str = "vesper-root";
/// The disk's device in the guest (virtio-blk), where the guest's own `grub-pc`
/// upgrades reinstall GRUB.
pub(crate) const GUEST_DISK: &str = "/dev/vda";
/// Stands for the loop device of the disk in [`DiskPlan::chroot`] commands.
pub(crate) const DISK_PLACEHOLDER: &str = "@DISK@";

/// Packages on top of mmdebstrap's `minbase` (the kernel and its headers are added).
pub(crate) const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    // DHCP's name servers into /etc/resolv.conf (networkd alone leaves it alone)
    "systemd-resolved",
    "udev",
    "kmod",
    "initramfs-tools",
    "grub-pc",
    "dkms",
    "gcc",
    "make",
    // `ps`, `ip`: what a test typing `sh ...` expects of a Debian guest
    "procps",
    "iproute2",
];

/// The hand (`vesper-hand.service` runs it on ttyS0).
pub(crate) const HAND_SH: &str = include_str!("../../guest/disk/vesper-hand.sh");
/// The hand's unit.
pub(crate) const HAND_SERVICE: &str = include_str!("../../guest/disk/vesper-hand.service");
/// The template unit `start NAME` starts (the kit's svc under the name NAME).
pub(crate) const SVC_SERVICE: &str = include_str!("../../guest/disk/vesper-svc@.service");
/// systemd-networkd: DHCP on the virtio NIC.
pub(crate) const NETWORK: &str = include_str!("../../guest/disk/80-vesper-dhcp.network");
/// GRUB's settings (`/etc/default/grub.d/vesper.cfg`): serial console, no wait.
pub(crate) const GRUB_DEFAULT: &str = include_str!("../../guest/disk/grub-default");
/// dpkg's path filters, one `--dpkgopt` per line that is not a comment.
pub(crate) const DPKG_NODOC: &str = include_str!("../../guest/disk/dpkg-nodoc");

/// Units masked in the guest: ttyS0 is the hand's, apt's timers would run apt at random
/// times in tests, and getty-static starts gettys on tty2-6 where there is no logind.
pub(crate) const MASKED_UNITS: &[&str] = &[
    "serial-getty@ttyS0.service",
    "getty-static.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
];

/// A file put into the root before the chroot commands run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ImageFile {
    /// Absolute path in the guest.
    pub(crate) path: String,
    pub(crate) mode: u32,
    pub(crate) data: Vec<u8>,
}

/// A command run in the root's chroot (`/proc`, `/sys` and a private `/dev` mounted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ChrootCmd {
    /// What it does, for progress lines and errors.
    pub(crate) what: &'static str,
    /// argv; [`DISK_PLACEHOLDER`] is replaced by the disk's loop device.
    pub(crate) argv: Vec<String>,
    /// Its stdin, if any.
    pub(crate) input: Option<String>,
}

/// Everything the disk is built from.
#[derive(Debug, Clone)]
pub(crate) struct DiskPlan {
    pub(crate) release: String,
    /// Every package mmdebstrap installs besides `minbase`.
    pub(crate) packages: Vec<String>,
    /// mmdebstrap `--dpkgopt` values.
    pub(crate) dpkg_opts: Vec<String>,
    pub(crate) files: Vec<ImageFile>,
    /// Symlinks made after the files: (absolute path in the guest, target).
    pub(crate) links: Vec<(String, String)>,
    pub(crate) chroot: Vec<ChrootCmd>,
    /// The frontend package, installed in the chroot with `dpkg -i`.
    pub(crate) deb: FrontendDeb,
    /// Where the package is put in the root for `dpkg -i`.
    pub(crate) deb_in_root: String,
}

/// The disk's file name in `<kit>/disk/`.
pub(crate) fn disk_name(release: &str) -> String {
    format!("debian-12-{release}.qcow2")
}

/// The lines of [`DPKG_NODOC`] that are options (comments and blanks dropped).
pub(crate) fn dpkg_opts(text: &str) -> Vec<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_string)
        .collect()
}

/// The guest's `/etc/fstab`: the root by UUID.
pub(crate) fn fstab(uuid: &str) -> String {
    format!(
        "# <file system> <mount point> <type> <options> <dump> <pass>\n\
         UUID={uuid} / ext4 errors=remount-ro 0 1\n"
    )
}

fn text(path: &str, mode: u32, data: &str) -> ImageFile {
    ImageFile {
        path: path.into(),
        mode,
        data: data.as_bytes().to_vec(),
    }
}

fn argv(words: &[&str]) -> Vec<String> {
    words.iter().map(|w| w.to_string()).collect()
}

impl DiskPlan {
    /// The plan for kernel `release` with the kit's built `svc` and `hog` helpers and
    /// the frontend package.
    pub(crate) fn new(
        release: &str,
        svc: &Path,
        hog: &Path,
        deb: FrontendDeb,
    ) -> Result<DiskPlan, KitError> {
        let mut packages: Vec<String> = PACKAGES.iter().map(|p| p.to_string()).collect();
        packages.push(format!("linux-image-{release}"));
        packages.push(format!("linux-headers-{release}"));
        let files = vec![
            text("/usr/local/sbin/vesper-hand", 0o755, HAND_SH),
            text("/etc/systemd/system/vesper-hand.service", 0o644, HAND_SERVICE),
            text("/etc/systemd/system/vesper-svc@.service", 0o644, SVC_SERVICE),
            text("/etc/systemd/network/80-vesper-dhcp.network", 0o644, NETWORK),
            text("/etc/default/grub.d/vesper.cfg", 0o644, GRUB_DEFAULT),
            text("/etc/hostname", 0o644, "vesper-guest\n"),
            text(
                "/etc/hosts",
                0o644,
                "127.0.0.1 localhost\n127.0.1.1 vesper-guest\n::1 localhost ip6-localhost ip6-loopback\n",
            ),
            ImageFile {
                path: "/usr/local/bin/svc".into(),
                mode: 0o755,
                data: read(svc)?,
            },
            ImageFile {
                path: "/usr/local/bin/hog".into(),
                mode: 0o755,
                data: read(hog)?,
            },
        ];
        let deb_in_root = format!("/tmp/{}", deb::deb_name(deb::version()));
        let mut mask = argv(&["systemctl", "mask"]);
        mask.extend(MASKED_UNITS.iter().map(|u| u.to_string()));
        let chroot = vec![
            ChrootCmd {
                what: "installing the frontend package (dpkg -i: DKMS builds the module)",
                argv: argv(&["dpkg", "-i", &deb_in_root]),
                input: None,
            },
            ChrootCmd {
                what: "enabling the hand and systemd-networkd",
                argv: argv(&["systemctl", "enable", "vesper-hand.service"])
                    .into_iter()
                    .chain(["systemd-networkd.service".to_string()])
                    .collect(),
                input: None,
            },
            ChrootCmd {
                what: "masking the serial getty and apt's timers",
                argv: mask,
                input: None,
            },
            ChrootCmd {
                what: "telling grub-pc where the guest's disk is",
                argv: argv(&["debconf-set-selections"]),
                input: Some(format!(
                    "grub-pc grub-pc/install_devices multiselect {GUEST_DISK}\n"
                )),
            },
            ChrootCmd {
                what: "installing GRUB into the disk's boot sector (i386-pc)",
                argv: argv(&["grub-install", "--target=i386-pc", DISK_PLACEHOLDER]),
                input: None,
            },
            ChrootCmd {
                what: "writing grub.cfg (update-grub)",
                argv: argv(&["update-grub"]),
                input: None,
            },
        ];
        Ok(DiskPlan {
            release: release.into(),
            packages,
            dpkg_opts: dpkg_opts(DPKG_NODOC),
            files,
            links: vec![(
                // mmdebstrap copies the host's; the guest's own is resolved's stub
                "/etc/resolv.conf".into(),
                "../run/systemd/resolve/stub-resolv.conf".into(),
            )],
            chroot,
            deb,
            deb_in_root,
        })
    }

    /// The disk's cache key: the recipe, the suite, the image size, and every part of
    /// the plan (the package by its own key).
    pub(crate) fn key(&self) -> String {
        let mut h = Fnv::new();
        h.bytes(&RECIPE.to_le_bytes())
            .bytes(SUITE.as_bytes())
            .bytes(&IMAGE_BYTES.to_le_bytes())
            .bytes(ROOT_LABEL.as_bytes())
            .bytes(self.release.as_bytes())
            .bytes(fstab("@UUID@").as_bytes())
            .bytes(self.deb.key.as_bytes())
            .bytes(self.deb_in_root.as_bytes());
        for p in &self.packages {
            h.bytes(p.as_bytes());
        }
        for o in &self.dpkg_opts {
            h.bytes(o.as_bytes());
        }
        for f in &self.files {
            h.bytes(f.path.as_bytes())
                .bytes(&f.mode.to_le_bytes())
                .bytes(&f.data);
        }
        for (path, target) in &self.links {
            h.bytes(path.as_bytes()).bytes(target.as_bytes());
        }
        for c in &self.chroot {
            for a in &c.argv {
                h.bytes(a.as_bytes());
            }
            h.bytes(c.input.as_deref().unwrap_or("").as_bytes());
        }
        h.hex()
    }
}

/// Checks the `grub.cfg` update-grub wrote: it must boot kernel `release` from the
/// root by `uuid`, with the serial console. `Err` says what is missing.
pub(crate) fn check_grub_cfg(cfg: &str, release: &str, uuid: &str) -> Result<(), String> {
    let linux = cfg
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("linux") && l.contains(&format!("/boot/vmlinuz-{release} ")))
        .ok_or_else(|| format!("it has no `linux /boot/vmlinuz-{release}` line"))?;
    for want in [format!("root=UUID={uuid} "), "console=ttyS0".to_string()] {
        if !linux.contains(&want) {
            return Err(format!("its kernel line lacks `{}`: {linux}", want.trim()));
        }
    }
    Ok(())
}
