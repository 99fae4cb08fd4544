//! The process of a VM Vesper did not start (`vm attach`): not vesperd's child, so its
//! end is seen by polling `/proc` (pid and start time, as for an adopted VM), and it is
//! stopped the way its owner stops it — QMP `quit` for a QEMU started by hand,
//! `virsh shutdown` then `virsh destroy` for a libvirt domain. When vesperd lets go of
//! it (`vm detach`, vesperd's own exit) it is left running.

use std::path::Path;
use std::time::{Duration, Instant};

use vesper_api::AttachedView;

use crate::persist::{AttachedRecord, VmRecord};
use crate::qmp_mux::QmpMux;
use crate::virsh::Virsh;

/// How long an attached VM gets to stop before it is killed (QMP) or destroyed
/// (libvirt); within `vm stop`'s own wait.
const STOP_GRACE: Duration = Duration::from_secs(5);

/// Who owns the VM's life cycle.
#[derive(Debug, Clone)]
pub(crate) enum Owner {
    /// A QEMU started by hand, reached through its QMP socket.
    Qmp,
    /// A libvirt domain.
    Libvirt(Virsh),
}

/// An attached VM's QEMU.
#[derive(Debug)]
pub(crate) struct AttachedProcess {
    /// QEMU's pid.
    pub(crate) pid: u32,
    /// Its start time (`/proc/PID/stat` field 22).
    pub(crate) start_time: u64,
    /// Who stops it.
    pub(crate) owner: Owner,
    /// The QMP sockets vesperd serves for it; they go with the process's task.
    pub(crate) _mux: Option<QmpMux>,
}

impl AttachedProcess {
    /// Waits until QEMU is gone; says so.
    pub(crate) async fn wait(&self) -> String {
        while crate::persist::alive(self.pid, self.start_time) {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        match &self.owner {
            Owner::Qmp => "gone (a QEMU vesperd attached: its exit status is its parent's)".into(),
            Owner::Libvirt(v) => format!("gone (libvirt domain {} ended)", v.domain),
        }
    }

    /// Asks the VM to stop, off the async workers; returns the deadline after which it
    /// is killed ([`Self::start_kill`]).
    pub(crate) fn request_stop(&self, qmp: &Path, name: &str) -> Instant {
        let (qmp, name, owner) = (qmp.to_path_buf(), name.to_string(), self.owner.clone());
        std::thread::spawn(move || match owner {
            Owner::Qmp => {
                if let Err(e) = vesper_qemu::Qmp::connect(&qmp, Duration::from_secs(2))
                    .and_then(|mut q| q.execute("quit", None))
                {
                    tracing::warn!(guest = %name, "QMP quit failed ({e}); QEMU will be killed");
                }
            }
            Owner::Libvirt(v) => {
                if let Err(e) = v.act_blocking("shutdown") {
                    tracing::warn!(guest = %name, "{e}; the domain will be destroyed");
                }
            }
        });
        Instant::now() + STOP_GRACE
    }

    /// Ends the VM now: SIGKILL for a QEMU started by hand, `virsh destroy` for a
    /// libvirt domain (libvirt must see its domain end, not find QEMU killed).
    pub(crate) fn start_kill(&self) {
        if !crate::persist::alive(self.pid, self.start_time) {
            return;
        }
        match &self.owner {
            Owner::Qmp => {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(self.pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
            Owner::Libvirt(v) => {
                let v = v.clone();
                std::thread::spawn(move || {
                    if let Err(e) = v.act_blocking("destroy") {
                        tracing::warn!(domain = %v.domain, "{e}");
                    }
                });
            }
        }
    }
}

/// `vm list`'s view of an attached VM.
pub(crate) fn view(record: &AttachedRecord, pid: u32, qmp: &Path) -> AttachedView {
    let (how, target) = match record {
        AttachedRecord::Qmp { socket } => ("qmp", socket.display().to_string()),
        AttachedRecord::Libvirt { uri, domain, .. } => ("libvirt", format!("{domain} ({uri})")),
    };
    AttachedView {
        how: how.into(),
        target,
        ram: crate::ram_source::kind(pid),
        qmp: qmp.to_path_buf(),
    }
}

/// Reaches an attached VM of an earlier vesperd again (its QMP socket, or libvirt) and
/// serves its run-directory QMP sockets, for the adoption.
pub(crate) async fn reattach(record: &VmRecord) -> Result<AttachedProcess, String> {
    let serve = [record.qmp.clone(), record.qmp_events.clone()];
    let (owner, mux) = match &record.attached {
        Some(AttachedRecord::Qmp { socket }) => {
            let (mux, pid) = crate::qmp_mux::serve_socket(socket, &serve).await?;
            if pid != record.pid {
                return Err(format!(
                    "{} is now served by process {pid}, not the QEMU {} attached",
                    socket.display(),
                    record.pid
                ));
            }
            (Owner::Qmp, mux)
        }
        Some(AttachedRecord::Libvirt { uri, domain, .. }) => {
            let v = Virsh::new(domain, Some(uri));
            let mux = crate::qmp_mux::serve_libvirt(v.clone(), &serve).await?;
            (Owner::Libvirt(v), mux)
        }
        None => return Err("not an attached VM".into()),
    };
    Ok(AttachedProcess {
        pid: record.pid,
        start_time: record.start_time,
        owner,
        _mux: Some(mux),
    })
}
