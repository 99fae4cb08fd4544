//! A kernel developer's own tree (`make` done in it): its bzImage, vmlinux and release,
//! the frontend built against it (cached by tree, release, build and frontend sources),
//! and the initramfs overlay that hands that frontend to the kit's test initramfs at
//! boot, so nothing is installed anywhere.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::error::{io_err, KitError};
use crate::files::{module_sources, read, write_atomic, Fnv};

/// Where the kit's /init loads the frontend from.
pub const FRONTEND_IN_INITRAMFS: &str = "lib/vesper/vesper_front.ko";

/// A configured and built kernel tree.
#[derive(Debug, Clone)]
pub struct KernelTree {
    /// The tree's top directory.
    pub root: PathBuf,
    /// `arch/x86/boot/bzImage`.
    pub bzimage: PathBuf,
    /// `vmlinux`, if the build left it (with DWARF when configured so).
    pub vmlinux: Option<PathBuf>,
    /// `include/config/kernel.release`.
    pub release: String,
}

impl KernelTree {
    /// Opens `root`, checking what booting and building against it needs.
    pub fn open(root: &Path) -> Result<Self, KitError> {
        let root = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let problem = |problem: &str| KitError::KernelTree {
            tree: root.clone(),
            problem: problem.to_string(),
        };
        if !root.join("Makefile").is_file() {
            return Err(problem("no Makefile: not a kernel tree"));
        }
        let release = fs::read_to_string(root.join("include/config/kernel.release"))
            .map_err(|_| problem("no include/config/kernel.release: configure and build it (make olddefconfig && make)"))?
            .trim()
            .to_string();
        if !root.join("Module.symvers").is_file() {
            return Err(problem(
                "no Module.symvers: build it with modules (make, or make modules_prepare) so the frontend can be built against it",
            ));
        }
        let bzimage = root.join("arch/x86/boot/bzImage");
        if !bzimage.is_file() {
            return Err(problem(
                "no arch/x86/boot/bzImage: build the kernel (make bzImage), or give --kernel IMAGE",
            ));
        }
        let vmlinux = Some(root.join("vmlinux")).filter(|v| v.is_file());
        Ok(Self {
            root,
            bzimage,
            vmlinux,
            release,
        })
    }

    /// Builds `vesper_front.ko` from `frontend_src` (the repository's `guest-module/`)
    /// against this tree under `cache_dir`, unless a build of the same inputs is there.
    pub fn build_frontend(
        &self,
        frontend_src: &Path,
        cache_dir: &Path,
    ) -> Result<PathBuf, KitError> {
        let mut sources = Vec::new();
        module_sources(frontend_src, &mut sources)?;
        let mut h = Fnv::new();
        h.bytes(self.release.as_bytes())
            .bytes(self.root.as_os_str().as_encoded_bytes())
            .bytes(&read(&self.root.join("Module.symvers"))?);
        for s in &sources {
            h.bytes(
                s.strip_prefix(frontend_src)
                    .unwrap_or(s)
                    .as_os_str()
                    .as_encoded_bytes(),
            )
            .bytes(&read(s)?);
        }
        let dir = cache_dir.join(format!("{}-{}", self.release, h.hex()));
        let ko = dir.join("vesper_front.ko");
        if ko.is_file() {
            return Ok(ko);
        }
        let src = dir.join("src");
        let _ = fs::remove_dir_all(&src);
        for s in &sources {
            let to = src.join(s.strip_prefix(frontend_src).unwrap_or(s));
            if let Some(parent) = to.parent() {
                fs::create_dir_all(parent).map_err(io_err("create", parent))?;
            }
            fs::copy(s, &to).map_err(io_err("copy to", &to))?;
        }
        let mut make = Command::new("make");
        make.arg("-C")
            .arg(&src)
            .arg(format!("KDIR={}", self.root.display()));
        if !self.makes_module_btf() {
            // The module loads without its BTF (only BPF programs on its types want it).
            make.arg("CONFIG_DEBUG_INFO_BTF_MODULES=");
        }
        crate::cmd::run(&mut make)?;
        let built = read(&src.join("vesper_front.ko"))?;
        write_atomic(&ko, &built, None)?;
        Ok(ko)
    }
}

impl KernelTree {
    /// Whether a module build here can generate the module's BTF, as a tree with its
    /// vmlinux does when the kernel has `CONFIG_DEBUG_INFO_BTF_MODULES`: it needs the
    /// tree's own `resolve_btfids` (built with the kernel) and `pahole` (dwarves).
    fn makes_module_btf(&self) -> bool {
        let on_path = |prog: &str| {
            std::env::var_os("PATH")
                .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(prog).is_file()))
        };
        self.root
            .join("tools/bpf/resolve_btfids/resolve_btfids")
            .is_file()
            && on_path("pahole")
    }
}

/// A newc archive holding `ko` where the kit's /init loads the frontend from; appended
/// to the kit's initramfs, its file replaces the kit's own (the kernel unpacks archives
/// in order, later entries over earlier ones).
pub fn frontend_overlay(ko: &Path) -> Result<Vec<u8>, KitError> {
    let mut w = crate::newc::Writer::new();
    w.dir("lib", 0o755);
    w.dir("lib/vesper", 0o755);
    w.file(FRONTEND_IN_INITRAMFS, 0o644, &read(ko)?);
    Ok(w.finish())
}

/// Writes `base` followed by `overlay` to `out` (atomically): one `-initrd` file.
pub fn initramfs_with(base: &Path, overlay: &[u8], out: &Path) -> Result<(), KitError> {
    let mut all = read(base)?;
    // newc archives are 4-byte aligned; a concatenated one must start aligned too.
    all.resize(all.len().next_multiple_of(4), 0);
    all.extend_from_slice(overlay);
    write_atomic(out, &all, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_unbuilt_tree_says_what_to_build() {
        let d = tempfile::tempdir().unwrap();
        let e = KernelTree::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("not a kernel tree"), "{e}");
        fs::write(d.path().join("Makefile"), "").unwrap();
        let e = KernelTree::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("kernel.release"), "{e}");
        fs::create_dir_all(d.path().join("include/config")).unwrap();
        fs::write(
            d.path().join("include/config/kernel.release"),
            "6.19.0-rc1\n",
        )
        .unwrap();
        fs::write(d.path().join("Module.symvers"), "").unwrap();
        let e = KernelTree::open(d.path()).unwrap_err().to_string();
        assert!(e.contains("make bzImage"), "{e}");
        fs::create_dir_all(d.path().join("arch/x86/boot")).unwrap();
        fs::write(d.path().join("arch/x86/boot/bzImage"), "").unwrap();
        let t = KernelTree::open(d.path()).unwrap();
        assert_eq!((t.release.as_str(), t.vmlinux), ("6.19.0-rc1", None));
    }

    #[test]
    fn the_overlay_replaces_the_kits_frontend_in_the_concatenated_initramfs() {
        let d = tempfile::tempdir().unwrap();
        let mut base = crate::newc::Writer::new();
        base.file(FRONTEND_IN_INITRAMFS, 0o644, b"kit's");
        fs::write(d.path().join("base.cpio"), base.finish()).unwrap();
        fs::write(d.path().join("front.ko"), b"tree's").unwrap();
        let overlay = frontend_overlay(&d.path().join("front.ko")).unwrap();
        let out = d.path().join("initrd");
        initramfs_with(&d.path().join("base.cpio"), &overlay, &out).unwrap();
        let bytes = fs::read(&out).unwrap();
        // Two archives, each ending in its trailer; the second one's entry is the tree's.
        let second = bytes.len() - overlay.len();
        let entries = crate::newc::parse(&bytes[second..]).unwrap();
        let front = entries
            .iter()
            .find(|e| e.name == FRONTEND_IN_INITRAMFS)
            .unwrap();
        assert_eq!(front.data, b"tree's");
        assert_eq!(second % 4, 0);
    }
}
