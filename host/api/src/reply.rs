//! What vesperd answers: every reply, the views of VMs, records and channels, and
//! the wire form of a reply or an error.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::{
    AccelChoice, ApiError, Backtrace, BufferStats, Decoded, DumpSummary, ErrorCode, Evaluated,
    Event, EventKind, GuestInfo, GuestModule, LogRecord, Symbol, Task, Vmm,
};

/// A saved vmcore.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DumpFile {
    /// Its path.
    pub path: PathBuf,
    /// Its size in bytes.
    pub bytes: u64,
    /// When it was written (Unix seconds).
    pub written: u64,
}

/// How to attach gdb to a guest's kernel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GdbSession {
    /// Guest.
    pub guest: String,
    /// The gdb remote endpoint (a relay to QEMU's gdbstub, or a builtin VM's server).
    pub socket: PathBuf,
    /// ELF symbols: from kallsyms (QEMU), or the ELF a builtin VM booted (or empty).
    pub symbol_file: PathBuf,
    /// Where its `.text` goes (`add-symbol-file -s .text`); 0: linked addresses.
    pub text_base: u64,
    /// The kernel image's KASLR offset (`symbol-file VMLINUX -o`).
    pub kaslr_offset: u64,
    /// gdb's command line, word by word; attaching stops the guest until gdb
    /// detaches or continues.
    pub command: Vec<String>,
}

/// The kernel `vesper debug info` found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DebugInfo {
    /// Guest.
    pub guest: String,
    /// Kernel release.
    pub release: String,
    /// KASLR offset of the kernel image.
    pub kaslr_offset: u64,
    /// Guest-physical address of VMCOREINFO.
    pub vmcoreinfo_paddr: u64,
    /// Kernel symbols read from kallsyms.
    pub symbols: usize,
    /// Page-table root (guest-physical) used for kernel addresses.
    pub page_table_root: u64,
    /// Five-level paging.
    pub five_level: bool,
    /// Guest RAM, MiB.
    pub ram_mib: u64,
    /// How vesperd reads the guest's RAM: QEMU's shared memfd, or `/proc/PID/mem`.
    #[serde(default)]
    pub ram_source: String,
}

/// A VM Vesper did not start, as `vm list` and `vm status` show it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AttachedView {
    /// `qmp` or `libvirt`.
    pub how: String,
    /// The QMP socket, or the libvirt domain.
    pub target: String,
    /// How `vesper debug` reads its RAM: `memfd` or `/proc/PID/mem`.
    pub ram: String,
    /// The QMP socket vesperd serves for it (QEMU takes one QMP client at a time, and
    /// vesperd is it): other QMP clients connect here.
    pub qmp: PathBuf,
}

/// One VM as `vm list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VmStatus {
    /// Name.
    pub name: String,
    /// "booting", "up", "exited".
    pub state: String,
    /// QEMU pid (the daemon's own for a builtin VM).
    pub pid: Option<u32>,
    /// Which VMM runs it.
    #[serde(default)]
    pub vmm: Vmm,
    /// Accelerator and why.
    pub accel: AccelChoice,
    /// What the frontend reported, once up.
    pub guest: Option<GuestInfo>,
    /// Serial console log.
    pub console_log: PathBuf,
    /// Seconds from start to the frontend's hello.
    pub boot_secs: Option<f64>,
    /// The first failure Vesper saw since the guest last came up, if any.
    #[serde(default)]
    pub failure: Option<FailureView>,
    /// Memory given to the VM, MiB.
    #[serde(default)]
    pub memory_mib: u32,
    /// Set when Vesper did not start this VM (`vm attach`): how it is reached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attached: Option<AttachedView>,
    /// Set when this vesperd adopted the VM from an earlier one (daemon restart), with
    /// what that costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<String>,
    /// Why a running guest has no frontend session, while it has none: vesperd's
    /// diagnosis from its console, its kernel's log and module list in its RAM, or the
    /// hello it refused (a frontend version this vesperd does not speak).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frontend: Option<String>,
}

/// A failure seen in a guest, as `vm status` reports it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FailureView {
    /// The event's sequence number.
    pub seq: u64,
    /// Its kind.
    pub kind: EventKind,
    /// One line saying what happened.
    pub summary: String,
}

/// A success reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Reply {
    /// VM started (and up, if waited for).
    VmStarted(VmStatus),
    /// A VM Vesper did not start is attached (and up, if waited for).
    VmAttached(VmStatus),
    /// An attached VM was let go: it runs on without the Vesper device.
    VmDetached {
        /// Name.
        name: String,
        /// The device and its chardev were unplugged (false: the guest had not
        /// released the device in time; QEMU removes it when the guest does).
        unplugged: bool,
        /// What is left, if anything.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        note: Option<String>,
    },
    /// VM stopped: its process is gone.
    VmStopped {
        /// Name.
        name: String,
        /// It did not quit within the grace period and was killed.
        #[serde(default)]
        killed: bool,
    },
    /// A guest was fenced or unfenced on this host.
    VmFenced {
        /// Name.
        name: String,
        /// Whether it is fenced now.
        fenced: bool,
        /// A VM of that name was running and was stopped.
        stopped: bool,
    },
    /// VMs.
    VmList {
        /// Every VM.
        vms: Vec<VmStatus>,
    },
    /// The daemon's guest kit.
    KitInfo {
        /// Its directory (whether or not a kit is built there).
        dir: std::path::PathBuf,
        /// The kit's kernel release; `None` when there is no usable kit in `dir`.
        release: Option<String>,
        /// Why there is no usable kit in `dir`, when there is none.
        problem: Option<String>,
    },
    /// A line was typed into the console.
    VmSent {
        /// VM name.
        name: String,
    },
    /// Module loaded.
    Loaded {
        /// Guest.
        guest: String,
        /// Module name.
        name: String,
        /// Bytes pushed.
        bytes: u64,
        /// Milliseconds from request to completion.
        millis: f64,
    },
    /// Module unloaded.
    Unloaded {
        /// Guest.
        guest: String,
        /// Module name.
        name: String,
        /// Milliseconds from request to completion.
        millis: f64,
    },
    /// A probe group loaded, every member live.
    GroupApplied {
        /// Guest.
        guest: String,
        /// Group name.
        group: String,
        /// Its modules, in load order.
        modules: Vec<String>,
        /// Milliseconds from request to completion.
        millis: f64,
    },
    /// A probe group unloaded.
    GroupRemoved {
        /// Guest.
        guest: String,
        /// Group name.
        group: String,
        /// Modules unloaded, in unload order.
        removed: Vec<String>,
        /// Members that were not loaded (nothing to unload).
        not_loaded: Vec<String>,
        /// Milliseconds from request to completion.
        millis: f64,
    },
    /// What the host kernel sees of a guest's vCPUs.
    HostStat(HostStat),
    /// Probe groups applied to a guest.
    Groups {
        /// Guest.
        guest: String,
        /// Each group and its members, in load order.
        groups: Vec<GroupView>,
    },
    /// Modules.
    Modules {
        /// Guest.
        guest: String,
        /// Every loaded module.
        modules: Vec<GuestModule>,
    },
    /// Kernel log tail.
    Kmsg {
        /// Guest.
        guest: String,
        /// Log text.
        log: String,
    },
    /// One relay record of a stream.
    Record(RecordView),
    /// Records or events a follower missed (it read too slowly, or resumed from a
    /// sequence number the daemon no longer keeps).
    Gap {
        /// How many.
        missed: u64,
    },
    /// End of a non-following stream.
    End {
        /// Records sent.
        records: u64,
    },
    /// One VM.
    VmStatus(VmStatus),
    /// One event of a stream.
    Event(Event),
    /// A VM was paused or resumed.
    VmPaused {
        /// Name.
        name: String,
        /// Paused now (false: running again).
        paused: bool,
    },
    /// `debug info`.
    DebugInfo(DebugInfo),
    /// `debug gdb`.
    DebugGdb(GdbSession),
    /// `debug dump`: the vmcore written.
    DebugDump {
        /// Guest.
        guest: String,
        /// What was written.
        dump: DumpSummary,
    },
    /// `debug dumps`.
    DebugDumps {
        /// Guest.
        guest: String,
        /// Saved vmcores, oldest first.
        dumps: Vec<DumpFile>,
    },
    /// `debug sym`: matching symbols (with the offset into the symbol for an address).
    DebugSymbols {
        /// Guest.
        guest: String,
        /// Matches, at most a few hundred.
        symbols: Vec<SymbolMatch>,
    },
    /// `debug read`.
    DebugValue {
        /// Guest.
        guest: String,
        /// The expression, its address, type and value.
        #[serde(flatten)]
        value: Evaluated,
    },
    /// `debug ps`.
    DebugTasks {
        /// Guest.
        guest: String,
        /// Tasks, init_task first.
        tasks: Vec<Task>,
        /// Where the walk stopped early (the list changed under it), if it did.
        torn: Option<String>,
    },
    /// `debug bt`.
    DebugBacktrace {
        /// Guest.
        guest: String,
        /// The trace, innermost frame first, and why it ended.
        #[serde(flatten)]
        backtrace: Backtrace,
    },
    /// `debug dmesg`.
    DebugLog {
        /// Guest.
        guest: String,
        /// Records, oldest first.
        records: Vec<LogRecord>,
        /// Records skipped because the guest was rewriting them.
        torn: u64,
        /// Older records the ring already recycled (lost to its size).
        recycled: u64,
    },
    /// An event was added to the stream.
    Published {
        /// Its sequence number.
        seq: u64,
    },
    /// Relay counters.
    RelayStats {
        /// Guest.
        guest: String,
        /// Every channel the guest opened since it started.
        channels: Vec<ChannelView>,
    },
}

/// A probe group as `group list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupView {
    /// Group name.
    pub name: String,
    /// The group file it was applied from.
    pub source: String,
    /// Members in load order.
    pub members: Vec<GroupMemberView>,
}

/// One member of a [`GroupView`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct GroupMemberView {
    /// Module name.
    pub module: String,
    /// In the guest's module list now.
    pub loaded: bool,
}

/// A symbol `debug sym` found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SymbolMatch {
    /// The symbol.
    #[serde(flatten)]
    pub symbol: Symbol,
    /// For an address query: how far into the symbol it is.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
}

/// One relay record as clients see it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RecordView {
    /// Guest.
    pub guest: String,
    /// Owning module.
    pub module: String,
    /// Channel name.
    pub channel: String,
    /// CPU buffer.
    pub cpu: u32,
    /// Sequence number in that buffer.
    pub seq: u64,
    /// Record type number.
    pub rtype: u16,
    /// Marked urgent by the probe.
    pub urgent: bool,
    /// Guest clock when written.
    pub guest_time_ns: u64,
    /// Host clock (Unix ns) when read from the guest's buffer.
    pub host_time_ns: u64,
    /// The guest timestamp mapped onto the host clock (Unix ns), once the daemon has
    /// synchronised with the guest's clock.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub guest_time_host_ns: Option<u64>,
    /// From the guest writing the record to the host reading it, in ns (± the clock
    /// error below).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ns: Option<i64>,
    /// Error bound of the clock mapping (half the best round trip), ns.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub clock_error_ns: Option<u64>,
    /// Typed content.
    pub decoded: Decoded,
    /// The payload as text, when it is UTF-8 (raw records of relayfs probes).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// Counters of one channel.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ChannelView {
    /// Owning module.
    pub module: String,
    /// Channel name.
    pub channel: String,
    /// Still open in the guest.
    pub open: bool,
    /// Overwrite mode.
    pub overwrite: bool,
    /// Sub-buffer size.
    pub subbuf_size: u32,
    /// Sub-buffers per CPU.
    pub n_subbufs: u32,
    /// Per-CPU counters (live while open, final after).
    pub cpus: Vec<BufferStats>,
    /// Records kept in the daemon's history.
    pub stored: usize,
    /// Why the channel ended, when not a clean close.
    pub error: Option<String>,
}

/// What the daemon sends back for one request.
pub type Response = Result<Reply, ApiError>;

/// Wire form of [`Response`].
#[derive(Debug, Serialize, Deserialize)]
pub struct WireResponse {
    /// True on success.
    pub ok: bool,
    /// Present when ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub result: Option<Reply>,
    /// Present when not ok.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ApiError>,
}

impl From<Response> for WireResponse {
    fn from(r: Response) -> Self {
        match r {
            Ok(v) => Self {
                ok: true,
                result: Some(v),
                error: None,
            },
            Err(e) => Self {
                ok: false,
                result: None,
                error: Some(e),
            },
        }
    }
}

impl From<WireResponse> for Response {
    fn from(w: WireResponse) -> Self {
        match (w.ok, w.result, w.error) {
            (true, Some(r), _) => Ok(r),
            (false, _, Some(e)) => Err(e),
            _ => Err(ApiError::new(
                ErrorCode::Internal,
                "daemon sent a reply with neither result nor error",
            )),
        }
    }
}

/// `vesper host stat`: a guest's vCPUs as the host kernel sees them (vesperd's eBPF
/// probes on the vCPU threads), since vesperd began watching them.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostStat {
    /// Guest.
    pub guest: String,
    /// Whether host probes run in this vesperd.
    pub available: bool,
    /// Why they do not (not root, no BTF, verifier refusal, ...), or a note.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Tracepoints attached (`kvm:kvm_exit`, `sched:sched_switch`, ...).
    pub tracepoints: Vec<String>,
    /// How long the guest has been watched, ms.
    pub watched_ms: u64,
    /// A vCPU making no progress this long raises `vcpu_stall`, ms.
    pub threshold_ms: u64,
    /// `vcpu_stall` events raised since watching began.
    pub stalls: u64,
    /// Its vCPUs, by index.
    pub vcpus: Vec<HostVcpu>,
}

/// One vCPU thread in `host stat`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct HostVcpu {
    /// vCPU index.
    pub index: u32,
    /// Host thread id.
    pub tid: u32,
    /// `in_guest`, `halted`, `out_of_guest`, `runnable`, `stopped`, `running`, `sleeping`.
    pub state: String,
    /// Exits from guest mode (`kvm:kvm_exit`; none on a paravirtual KVM or TCG).
    pub exits: u64,
    /// Entries into guest mode (`kvm:kvm_entry`).
    pub entries: u64,
    /// Returns of KVM_RUN to the VMM (`kvm:kvm_userspace_exit`).
    pub vmm_exits: u64,
    /// KVM_RUN calls seen: its returns, and the one it is in, if it is.
    pub kvm_runs: u64,
    /// Exits per second (guest mode and to the VMM), over the last second or so.
    pub exit_rate: f64,
    /// Runnable but not running (host steal), ms.
    pub steal_ms: f64,
    /// On a host CPU, ms.
    pub on_cpu_ms: f64,
    /// Stalled now.
    pub stalled: bool,
    /// Exit reasons and counts, most frequent first (`svm:io`, `vmm:io`, ...).
    pub exit_reasons: Vec<(String, u64)>,
}
