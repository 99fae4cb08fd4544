//! What serves `/dev/kvm` on this host. A paravirtual `kvm_pvm` runs small hand-made
//! guests but not a stock Linux kernel, so callers that boot Linux need to know.

use std::path::Path;

/// What `/dev/kvm` is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvmBacking {
    /// VT-x or AMD-V: `kvm_intel` or `kvm_amd` is loaded.
    Hardware(&'static str),
    /// The paravirtual `kvm_pvm`: tiny guests run, a stock Linux kernel does not.
    Paravirtual,
    /// `/dev/kvm` opens but none of those modules is loaded (another implementation):
    /// not trusted to boot Linux.
    Unknown,
    /// `/dev/kvm` cannot be used; says why.
    Unavailable(String),
}

impl KvmBacking {
    /// This host's, from `/sys/module` and `/dev/kvm`.
    pub fn detect() -> Self {
        Self::detect_at(Path::new("/sys/module"), Path::new("/dev/kvm"))
    }

    /// As `detect`, with the paths given (for tests).
    pub fn detect_at(sys_module: &Path, dev_kvm: &Path) -> Self {
        if let Err(e) = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(dev_kvm)
        {
            return Self::Unavailable(format!("{} cannot be opened ({e})", dev_kvm.display()));
        }
        if let Some(m) = ["kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| sys_module.join(m).exists())
        {
            return Self::Hardware(m);
        }
        if sys_module.join("kvm_pvm").exists() {
            return Self::Paravirtual;
        }
        Self::Unknown
    }

    /// Why a stock Linux guest cannot boot here, or `None` if it can.
    pub fn linux_problem(&self) -> Option<String> {
        match self {
            Self::Hardware(_) => None,
            Self::Unknown => Some("neither kvm_intel nor kvm_amd is loaded".into()),
            Self::Paravirtual => Some(
                "/dev/kvm is the paravirtual kvm_pvm, which does not boot a stock Linux guest"
                    .into(),
            ),
            Self::Unavailable(why) => Some(why.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_decide_and_an_unopenable_device_says_why() {
        let d = tempfile::tempdir().unwrap();
        let sys = d.path().join("module");
        let kvm = d.path().join("kvm");
        std::fs::write(&kvm, b"").unwrap();
        std::fs::create_dir_all(&sys).unwrap();
        let unknown = KvmBacking::detect_at(&sys, &kvm);
        assert_eq!(unknown, KvmBacking::Unknown);
        assert!(unknown.linux_problem().unwrap().contains("kvm_intel"));
        std::fs::create_dir_all(sys.join("kvm_pvm")).unwrap();
        let pvm = KvmBacking::detect_at(&sys, &kvm);
        assert_eq!(pvm, KvmBacking::Paravirtual);
        assert!(pvm.linux_problem().unwrap().contains("kvm_pvm"));
        std::fs::create_dir_all(sys.join("kvm_amd")).unwrap();
        let hw = KvmBacking::detect_at(&sys, &kvm);
        assert_eq!(hw, KvmBacking::Hardware("kvm_amd"));
        assert_eq!(hw.linux_problem(), None);
        let gone = KvmBacking::detect_at(&sys, &d.path().join("nope"));
        assert!(gone.linux_problem().unwrap().contains("cannot be opened"));
    }
}
