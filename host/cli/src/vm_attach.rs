//! `vesper vm attach` and `vm detach`: VMs Vesper did not start — a QEMU started by
//! hand (through its QMP socket) or a libvirt domain: their flags and request.

use std::path::PathBuf;

use clap::Args;
use vesper_api::{AttachTarget, Request, VmAttachRequest};

use crate::exit::Refusal;

/// `vm attach`'s arguments.
#[derive(Debug, Args)]
#[command(after_help = "\
--qmp: vesperd holds QEMU's QMP connection from then on (QEMU takes one client at a \
time) and serves RUN/guests/NAME/qmp.sock for other QMP clients; the Vesper device is \
hot-plugged (q35 needs a free pcie-root-port with an id; pc's pci.0 takes it). \
--libvirt: the domain's XML must carry the Vesper <shmem> device (the error prints it); \
a shut-off domain is started by vesperd, which serves its device first. \
`vm detach NAME` unplugs the device and lets go, leaving the VM running; `vm stop NAME` \
stops it (QMP quit; libvirt shutdown, destroy after 5 s).")]
pub(crate) struct AttachArgs {
    /// The name Vesper knows the VM by.
    pub(crate) name: String,
    /// QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`).
    #[arg(
        long,
        value_name = "SOCKET",
        conflicts_with = "libvirt",
        required_unless_present = "libvirt"
    )]
    pub(crate) qmp: Option<PathBuf>,
    /// A libvirt domain with the Vesper `<shmem>` device in its XML.
    #[arg(long, value_name = "DOMAIN")]
    pub(crate) libvirt: Option<String>,
    /// libvirt's connection URI [default: qemu:///system].
    #[arg(long, value_name = "URI", requires = "libvirt")]
    pub(crate) connect: Option<String>,
    /// QEMU's serial console socket (`-serial unix:PATH,server=on,wait=off`), kept by
    /// vesperd for `vm send` and RUN/guests/NAME/console.log (a domain's `<serial
    /// type='unix'>` bind socket is found in its XML).
    #[arg(long, value_name = "SOCKET")]
    pub(crate) console: Option<PathBuf>,
    /// The machine takes no PCI hot-plug: QEMU is about to start with the Vesper device
    /// on its command line; serve it now and wait (up to --wait, at least 30 s).
    #[arg(long, requires = "qmp")]
    pub(crate) cold_plug: bool,
    /// Wait this many seconds for the guest's frontend (0: do not wait).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub(crate) wait: u64,
}

impl AttachArgs {
    /// The `vm_attach` request (paths made absolute: vesperd has its own directory).
    pub(crate) fn request(&self) -> Result<Request, Refusal> {
        let abs = |p: &PathBuf| {
            std::path::absolute(p)
                .map_err(|e| (66, "file_not_found", format!("{}: {e}", p.display())))
        };
        let target = match (&self.qmp, &self.libvirt) {
            (Some(socket), _) => AttachTarget::Qmp {
                socket: abs(socket)?,
                cold_plug: self.cold_plug,
            },
            (None, Some(domain)) => AttachTarget::Libvirt {
                domain: domain.clone(),
                connect: self.connect.clone(),
            },
            (None, None) => {
                return Err((2, "usage", "give --qmp SOCKET or --libvirt DOMAIN".into()))
            }
        };
        Ok(Request::VmAttach(Box::new(VmAttachRequest {
            name: self.name.clone(),
            target,
            console: self.console.as_ref().map(abs).transpose()?,
            wait_secs: self.wait,
        })))
    }
}
