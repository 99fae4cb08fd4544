use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::QemuError;

/// An accelerator QEMU runs the guest with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualisation.
    Kvm,
    /// Software emulation.
    Tcg,
}

/// What the operator asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AccelRequest {
    /// KVM if hardware-backed, else TCG.
    #[default]
    Auto,
    /// KVM or fail.
    Kvm,
    /// TCG.
    Tcg,
}

impl std::str::FromStr for AccelRequest {
    type Err = QemuError;
    fn from_str(s: &str) -> Result<Self, QemuError> {
        match s {
            "auto" => Ok(Self::Auto),
            "kvm" => Ok(Self::Kvm),
            "tcg" => Ok(Self::Tcg),
            other => Err(QemuError::BadAccel(other.to_string())),
        }
    }
}

/// The accelerator chosen and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccelChoice {
    /// Chosen accelerator.
    pub accel: Accel,
    /// Human reason.
    pub reason: String,
}

/// Why KVM cannot run a stock Linux guest here, or `None` when it can. A `/dev/kvm`
/// served by the paravirtual `kvm_pvm` module runs small hand-made guests but not a stock
/// Linux kernel, so only `kvm_intel`/`kvm_amd` count.
fn kvm_problem(sys_module: &Path, dev_kvm: &Path) -> Option<String> {
    vesper_hypervisor::KvmBacking::detect_at(sys_module, dev_kvm).linux_problem()
}

/// Chooses the accelerator for `request` on this host.
pub fn choose_accel(request: AccelRequest) -> Result<AccelChoice, QemuError> {
    choose_with(request, Path::new("/sys/module"), Path::new("/dev/kvm"))
}

fn choose_with(
    request: AccelRequest,
    sys_module: &Path,
    dev_kvm: &Path,
) -> Result<AccelChoice, QemuError> {
    match (request, kvm_problem(sys_module, dev_kvm)) {
        (AccelRequest::Tcg, _) => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: "TCG requested".into(),
        }),
        (AccelRequest::Kvm | AccelRequest::Auto, None) => Ok(AccelChoice {
            accel: Accel::Kvm,
            reason: "hardware KVM available".into(),
        }),
        (AccelRequest::Kvm, Some(p)) => Err(QemuError::KvmUnusable(p)),
        (AccelRequest::Auto, Some(p)) => Ok(AccelChoice {
            accel: Accel::Tcg,
            reason: format!("TCG: {p}"),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pvm_or_missing_kvm_falls_back_to_tcg_and_says_why() {
        let d = std::env::temp_dir().join(format!("accel-{}", std::process::id()));
        let sys = d.join("module");
        std::fs::create_dir_all(sys.join("kvm_pvm")).unwrap();
        let kvm = d.join("kvm");
        std::fs::write(&kvm, b"").unwrap();
        let c = choose_with(AccelRequest::Auto, &sys, &kvm).unwrap();
        assert_eq!(c.accel, Accel::Tcg);
        assert!(c.reason.contains("kvm_pvm"));
        assert!(matches!(
            choose_with(AccelRequest::Kvm, &sys, &kvm),
            Err(QemuError::KvmUnusable(_))
        ));
        std::fs::create_dir_all(sys.join("kvm_intel")).unwrap();
        assert_eq!(
            choose_with(AccelRequest::Auto, &sys, &kvm).unwrap().accel,
            Accel::Kvm
        );
        assert_eq!(
            choose_with(AccelRequest::Tcg, &sys, &kvm).unwrap().accel,
            Accel::Tcg
        );
        let gone = choose_with(AccelRequest::Auto, &sys, &d.join("nope")).unwrap();
        assert!(gone.reason.contains("cannot be opened"));
        assert!("fast".parse::<AccelRequest>().is_err());
    }
}
