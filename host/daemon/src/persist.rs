//! What vesperd keeps on disk about its running VMs, so that a restarted vesperd finds
//! them again (`RUN_DIR/guests/NAME/vm.json`, `channels.json`), and each VM's
//! definition (`definition.toml`, kept after it stops).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use vesper_core::GuestInfo;
use vesper_qemu::AccelChoice;
use vesper_shared_abi::RelayOpenRequest;
use vm_memory::ByteValued;

/// One running VM as a later vesperd needs to know it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmRecord {
    /// VM name.
    pub name: String,
    /// QEMU's pid.
    pub pid: u32,
    /// QEMU's start time (field 22 of `/proc/PID/stat`): tells pid reuse apart.
    pub start_time: u64,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator and why.
    pub accel: AccelChoice,
    /// Test-init mode.
    pub mode: String,
    /// Serial console log.
    pub console_log: PathBuf,
    /// Serial console socket.
    pub console_sock: PathBuf,
    /// QMP command socket.
    pub qmp: PathBuf,
    /// QMP event-only socket.
    pub qmp_events: PathBuf,
    /// Size of the shared region.
    pub region_size: u64,
    /// The frontend's last hello.
    pub guest: Option<GuestInfo>,
    /// A builtin VM: it runs inside this vesperd and ends with it, so nothing is saved
    /// for a later vesperd to adopt.
    #[serde(default)]
    pub builtin: bool,
    /// A VM Vesper did not start (`vm attach`): how to reach it again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<AttachedRecord>,
}

/// How an attached VM is reached, as vm.json keeps it for an adoption.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttachedRecord {
    /// A QEMU started by hand: its QMP socket.
    Qmp {
        /// The user's QMP socket.
        socket: PathBuf,
    },
    /// A libvirt domain.
    Libvirt {
        /// libvirt's connection URI.
        uri: String,
        /// The domain.
        domain: String,
        /// The ivshmem server socket its XML names.
        ivshmem: PathBuf,
    },
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

impl VmRecord {
    /// Writes `dir/vm.json` (atomically).
    pub fn save(&self, dir: &Path) {
        if self.builtin {
            return;
        }
        let r = serde_json::to_vec_pretty(self)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&vesper_api::run_dir::vm_record(dir), &b));
        if let Err(e) = r {
            tracing::warn!(guest = %self.name, "cannot save {}/vm.json (a restarted vesperd will not find this VM): {e}", dir.display());
        }
    }

    /// Reads `dir/vm.json`.
    pub fn load(dir: &Path) -> Result<Self, String> {
        let b = std::fs::read(vesper_api::run_dir::vm_record(dir)).map_err(|e| e.to_string())?;
        serde_json::from_slice(&b).map_err(|e| e.to_string())
    }
}

/// The VM's definition as its last start left it in the run directory, if any.
pub fn defined(dir: &Path) -> Result<Option<vesper_vmdef::VmDefinition>, String> {
    let path = vesper_api::run_dir::definition(dir);
    if !path.exists() {
        return Ok(None);
    }
    vesper_vmdef::from_toml_file(&path)
        .map(Some)
        .map_err(|e| format!("its definition {}: {e}; fix or remove it", path.display()))
}

/// The vmlinux a guest's definition names for `vesper debug`, if any.
pub fn defined_vmlinux(run_dir: &Path, guest: &str) -> Option<PathBuf> {
    let dir = vesper_api::run_dir::of(run_dir, guest);
    defined(&dir).ok().flatten().and_then(|d| d.debug_vmlinux())
}

/// Forgets the VM of `dir` (it stopped or exited).
pub fn remove(dir: &Path) {
    let _ = std::fs::remove_file(vesper_api::run_dir::vm_record(dir));
    let _ = std::fs::remove_file(vesper_api::run_dir::channels_record(dir));
    let _ = std::fs::remove_file(vesper_api::run_dir::layouts_record(dir));
}

/// The record layout (its `vesper_record` text) of each probe-spec module pushed into
/// the guest, by module name: an adopting vesperd decodes their records by name too.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Layouts(pub BTreeMap<String, String>);

impl Layouts {
    /// Reads `dir/layouts.json` (empty when absent or unreadable).
    pub fn load(dir: &Path) -> Self {
        std::fs::read(vesper_api::run_dir::layouts_record(dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Records `module`'s layout text (`None`: it has none), written atomically.
    pub fn note(dir: &Path, module: &str, layout: Option<String>) {
        let mut all = Self::load(dir);
        let was = match &layout {
            Some(l) => all.0.insert(module.to_string(), l.clone()),
            None => all.0.remove(module),
        };
        // Most pushes are of modules without a layout, or again of the same one: no write.
        if was == layout {
            return;
        }
        let r = serde_json::to_vec(&all)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&vesper_api::run_dir::layouts_record(dir), &b));
        if let Err(e) = r {
            tracing::warn!("cannot save {}/layouts.json: {e}", dir.display());
        }
    }
}

/// The `REQ_RELAY_OPEN` of every open relay channel, by channel id, as hex bytes.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Channels(pub BTreeMap<u32, String>);

impl Channels {
    /// Reads `dir/channels.json` (empty when absent).
    pub fn load(dir: &Path) -> Self {
        std::fs::read(vesper_api::run_dir::channels_record(dir))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    /// Writes `dir/channels.json` (atomically).
    pub fn save(&self, dir: &Path) {
        let r = serde_json::to_vec(self)
            .map_err(std::io::Error::other)
            .and_then(|b| write_atomic(&vesper_api::run_dir::channels_record(dir), &b));
        if let Err(e) = r {
            tracing::warn!("cannot save {}/channels.json: {e}", dir.display());
        }
    }

    /// Remembers an accepted channel.
    pub fn insert(&mut self, req: &RelayOpenRequest) {
        let hex = req.as_slice().iter().map(|b| format!("{b:02x}")).collect();
        self.0.insert(req.channel_id, hex);
    }

    /// The requests, decoded (malformed entries are skipped).
    pub fn requests(&self) -> Vec<RelayOpenRequest> {
        self.0
            .values()
            .filter_map(|hex| {
                let mut req = RelayOpenRequest::default();
                let raw = req.as_mut_slice();
                if hex.len() != raw.len() * 2 {
                    return None;
                }
                for (i, b) in raw.iter_mut().enumerate() {
                    *b = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
                }
                Some(req)
            })
            .collect()
    }
}

/// Field 22 of `/proc/PID/stat` (start time in clock ticks since boot), and whether the
/// process is a zombie; `None` if there is no such process.
pub fn proc_start(pid: u32) -> Option<(u64, bool)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields count after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field N is fields[N - 3].
    let zombie = matches!(fields.first(), Some(&"Z") | Some(&"X"));
    Some((fields.get(22 - 3)?.parse().ok()?, zombie))
}

/// True while process `pid` started at `start_time` runs (not reused, not a zombie).
pub fn alive(pid: u32, start_time: u64) -> bool {
    matches!(proc_start(pid), Some((t, false)) if t == start_time)
}

/// True if `pid` runs `qemu-system-x86_64`.
pub fn is_qemu(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .ok()
        .and_then(|c| {
            let argv0 = c.split(|b| *b == 0).next()?.to_vec();
            Some(String::from_utf8_lossy(&argv0).ends_with("qemu-system-x86_64"))
        })
        .unwrap_or(false)
}

/// Opens QEMU `pid`'s Vesper region through its memfd.
pub fn open_region(pid: u32) -> Result<std::fs::File, String> {
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| e.to_string())?;
    for entry in fds.flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if target.to_string_lossy().starts_with("/memfd:vesper-") {
            return std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open(entry.path())
                .map_err(|e| format!("{}: {e}", entry.path().display()));
        }
    }
    Err(format!("QEMU {pid} holds no Vesper region"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn channel_requests_round_trip_and_our_own_start_time_is_read() {
        let mut req = RelayOpenRequest {
            channel_id: 7,
            subbuf_size: 4096,
            ..Default::default()
        };
        req.buffer_grants[1] = 42;
        let mut c = Channels::default();
        c.insert(&req);
        let back: Channels = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back.requests(), vec![req]);
        let me = std::process::id();
        let (t, zombie) = proc_start(me).unwrap();
        assert!(!zombie && alive(me, t) && !alive(me, t + 1));
    }
}
