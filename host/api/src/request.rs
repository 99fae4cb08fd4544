//! What clients ask vesperd for: every request, and the shapes they carry.

use std::path::PathBuf;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::{EventKind, Filter, VmDefinition};

/// Largest request line the daemon accepts (a base64 image of the default size limit
/// plus slack).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// What `vm start` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmStartRequest {
    /// VM name.
    pub name: String,
    /// How to build the VM (paths absolute). `None`: as it is defined in vesperd's run
    /// directory (`RUN/guests/NAME/definition.toml`, written by its last start), else
    /// the kit's test VM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub definition: Option<VmDefinition>,
    /// Guest-kit directory, or the daemon's default.
    pub kit_dir: Option<PathBuf>,
    /// Wait this long for the frontend's hello; 0 = don't wait.
    pub wait_secs: u64,
}

/// What `vm attach` asks for: vesperd serves the Vesper device of a VM it did not
/// start (README.md, "VMs Vesper did not start").
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmAttachRequest {
    /// The name Vesper knows it by.
    pub name: String,
    /// How to reach it.
    pub target: AttachTarget,
    /// Its serial console, a Unix socket QEMU listens on (`-serial
    /// unix:PATH,server=on,wait=off`), for `vm send` and the console log; a libvirt
    /// domain's `<serial type='unix'>` bind socket is found in its XML.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console: Option<PathBuf>,
    /// Wait this long for the frontend's hello; 0 = don't wait.
    pub wait_secs: u64,
}

/// The VM `vm attach` takes over.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AttachTarget {
    /// A QEMU started by hand, through its QMP socket: the Vesper device is hot-plugged.
    Qmp {
        /// The QMP socket (`-qmp unix:PATH,server=on,wait=off`).
        socket: PathBuf,
        /// QEMU is about to start with the Vesper device on its command line (a
        /// machine without PCI hot-plug): serve its ivshmem server now and wait for it.
        #[serde(default)]
        cold_plug: bool,
    },
    /// A libvirt domain whose XML has the Vesper `<shmem>` device.
    Libvirt {
        /// The domain's name.
        domain: String,
        /// libvirt's connection URI (`qemu:///system` when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        connect: Option<String>,
    },
}

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start a VM (boxed: a definition is large beside the other requests).
    VmStart(Box<VmStartRequest>),
    /// Attach a VM Vesper did not start (boxed like `VmStart`).
    VmAttach(Box<VmAttachRequest>),
    /// Let go of an attached VM: its Vesper device is unplugged, the VM runs on.
    VmDetach {
        /// VM name.
        name: String,
    },
    /// Stop a VM.
    VmStop {
        /// VM name.
        name: String,
    },
    /// Fences a guest on this host (`fenced: true`: it is stopped if it runs, and no
    /// `vm start` of that name is taken until it is unfenced), or unfences it. The
    /// mark is kept in the run directory: it outlives vesperd restarts.
    VmFence {
        /// VM name.
        name: String,
        /// Fence (true), unfence (false), or only say whether it is fenced (null).
        fenced: Option<bool>,
    },
    /// List VMs.
    VmList,
    /// The guest kit this vesperd uses (`--kit-dir`, `$VESPER_KIT_DIR` or its default):
    /// where `vesper probe` finds kernel headers, the debug vmlinux and the frontend.
    KitInfo,
    /// Type a line into a VM's serial console (for test hands and kernel developers:
    /// Vesper itself never needs the guest's user space).
    VmSend {
        /// VM name.
        name: String,
        /// The line, without newline.
        line: String,
    },
    /// Push and load a module.
    Insmod {
        /// Guest name.
        guest: String,
        /// File name it came from (for messages).
        file_name: String,
        /// Image, base64.
        image_b64: String,
        /// Module parameters.
        params: Vec<String>,
        /// How long to wait for the module's init once it runs, in seconds (the
        /// daemon's default when absent).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        init_timeout_secs: Option<u64>,
    },
    /// Load a probe group's modules in order, all or nothing: on a failure the ones
    /// loaded are unloaded again and the error names the member that failed.
    GroupApply {
        /// Guest name.
        guest: String,
        /// Group name.
        group: String,
        /// The group file, for messages.
        #[serde(default)]
        source: String,
        /// Members in load order.
        members: Vec<GroupMemberImage>,
    },
    /// Unload a probe group's modules in reverse load order; a member not loaded is
    /// reported, the others are still unloaded.
    GroupRemove {
        /// Guest name.
        guest: String,
        /// Group name.
        group: String,
        /// Its modules in load order; absent: those vesperd recorded when it applied the
        /// group.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        modules: Option<Vec<String>>,
    },
    /// The groups applied to a guest and whether each member is loaded now.
    GroupList {
        /// Guest name.
        guest: String,
    },
    /// Unload a module.
    Rmmod {
        /// Guest name.
        guest: String,
        /// Module name.
        name: String,
        /// Force.
        force: bool,
    },
    /// List a guest's modules.
    Lsmod {
        /// Guest name.
        guest: String,
    },
    /// Guest kernel log tail.
    Dmesg {
        /// Guest name.
        guest: String,
    },
    /// Stream a guest's relay records (one `Record` reply per line, then `End` unless
    /// following).
    RelayCat {
        /// Guest name.
        guest: String,
        /// Module that owns the channel.
        module: String,
        /// Channel name; all of the module's channels if absent.
        channel: Option<String>,
        /// Keep streaming new records.
        follow: bool,
    },
    /// Per-channel counters.
    RelayStat {
        /// Guest name.
        guest: String,
    },
    /// One VM's state and health.
    VmStatus {
        /// VM name.
        name: String,
    },
    /// Pause a VM (QMP `stop`): its vCPUs stop, its memory stays readable.
    VmPause {
        /// VM name.
        name: String,
    },
    /// Resume a paused VM (QMP `cont`).
    VmResume {
        /// VM name.
        name: String,
    },
    /// What the host kernel sees of a guest's vCPUs (eBPF on its vCPU threads): exits
    /// and their reasons, host steal, stalls.
    HostStat {
        /// Guest name.
        guest: String,
    },
    /// Read the guest kernel from the host (guest RAM, no help from the guest).
    Debug {
        /// Guest name.
        guest: String,
        /// What to read.
        debug: DebugOp,
    },
    /// Stream events (one `Event` reply per line): the history from `from_seq` (if
    /// given), then, when following, every new event that passes `filter`.
    Subscribe {
        /// Which events.
        #[serde(default)]
        filter: Filter,
        /// Resume from this sequence number (within the daemon's history).
        from_seq: Option<u64>,
        /// Keep streaming.
        #[serde(default)]
        follow: bool,
    },
    /// Adds a cluster manager's event to the stream (`vesper cluster bridge` reports its
    /// decisions, `vesper cluster alert` Pacemaker's alerts): kinds `decision` and
    /// `cluster` only; vesperd numbers and timestamps it.
    Publish {
        /// The guest it is about; empty for none (a node left the cluster).
        #[serde(default)]
        guest: String,
        /// `decision` or `cluster`.
        kind: EventKind,
        /// Who sends it: `bridge` or `alert`.
        origin: String,
        /// The cluster node it comes from.
        node: String,
        /// Details: a JSON object.
        payload: serde_json::Value,
    },
}

impl Request {
    /// An `Insmod` request carrying `image`.
    pub fn insmod(guest: &str, file_name: &str, image: &[u8], params: Vec<String>) -> Self {
        Request::Insmod {
            guest: guest.to_string(),
            file_name: file_name.to_string(),
            image_b64: base64::engine::general_purpose::STANDARD.encode(image),
            params,
            init_timeout_secs: None,
        }
    }

    /// An `Insmod` request that waits `secs` for the module's init (other requests are
    /// returned as they are).
    pub fn with_init_timeout(mut self, secs: Option<u64>) -> Self {
        if let Request::Insmod {
            init_timeout_secs, ..
        } = &mut self
        {
            *init_timeout_secs = secs;
        }
        self
    }
}

/// One module of a `GroupApply`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupMemberImage {
    /// File name it came from (for messages).
    pub file_name: String,
    /// Image, base64.
    pub image_b64: String,
    /// Module parameters.
    pub params: Vec<String>,
}

impl GroupMemberImage {
    /// A member carrying `image`.
    pub fn new(file_name: &str, image: &[u8], params: Vec<String>) -> Self {
        Self {
            file_name: file_name.to_string(),
            image_b64: base64::engine::general_purpose::STANDARD.encode(image),
            params,
        }
    }
}

/// Decodes an `Insmod` image.
pub fn decode_image(b64: &str) -> Result<Vec<u8>, String> {
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|e| format!("image is not valid base64: {e}"))
}

/// What `vesper debug` reads.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum DebugOp {
    /// The kernel found in guest RAM: release, KASLR offset, where VMCOREINFO is.
    Info,
    /// A symbol by name, `PREFIX*` for a listing, or an address to symbolize.
    Sym {
        /// Name, prefix with `*`, or address (hex with 0x, or decimal).
        query: String,
    },
    /// An expression's value (`vesper_debug::expr`).
    Read {
        /// The expression.
        expr: String,
        /// Elements to read.
        count: u64,
        /// Integers in hex.
        hex: bool,
        /// Types from this vmlinux's (or module's) DWARF instead of the guest's BTF.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vmlinux: Option<PathBuf>,
    },
    /// The task list.
    Ps,
    /// The kernel log from the printk ring in guest memory.
    Dmesg,
    /// A kernel stack trace (ORC): of task `pid`, or of CPU `cpu` from its registers.
    /// The guest is paused while its stack is walked.
    Bt {
        /// Thread id of the task.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<i32>,
        /// CPU number.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cpu: Option<u32>,
    },
    /// Save an ELF vmcore of the guest (paused while it is written).
    Dump {
        /// File name in the guest's dump directory; `GUEST-TIME.vmcore` if absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        name: Option<String>,
    },
    /// The guest's saved vmcores.
    Dumps,
    /// A gdb session (QEMU's gdbstub, or a builtin VM's own server), symbols, command.
    Gdb {
        /// A vmlinux with debug info for this kernel (Debian's `-dbg` package), for
        /// types; loaded at the KASLR offset.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vmlinux: Option<PathBuf>,
    },
}
