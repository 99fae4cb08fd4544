//! The `vesperd` API: requests, replies, error codes and a blocking client.
#![deny(missing_docs)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};
use thiserror::Error;
pub mod debug;

pub use vesper_core::{GuestInfo, GuestModule, DEFAULT_INIT_TIMEOUT};
pub use vesper_debug::expr::Evaluated;
pub use vesper_debug::kallsyms::Symbol;
pub use vesper_debug::printk::{format_dmesg, LogRecord};
pub use vesper_debug::tasks::Task;
pub use vesper_debug::unwind::{Backtrace, Frame, TraceEnd};
pub use vesper_debug::vmcore::DumpSummary;
pub use vesper_events::{Event, EventKind, Filter, Source};
pub use vesper_qemu::{AccelChoice, AccelRequest, QemuError as QemuAccelError};
pub use vesper_relay::{BufferStats, Decoded};

/// Largest request line the daemon accepts (a base64 image of the default size limit
/// plus slack).
pub const MAX_REQUEST_BYTES: usize = 64 << 20;

/// What `vm start` asks for.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct VmStartRequest {
    /// VM name.
    pub name: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub cpus: u32,
    /// Accelerator request.
    pub accel: AccelRequest,
    /// Guest-kit directory, or the daemon's default.
    pub kit_dir: Option<PathBuf>,
    /// Init mode of the test initramfs (`vesper.mode=`).
    pub mode: String,
    /// Extra kernel command-line words.
    pub extra_cmdline: Option<String>,
    /// Wait this long for the frontend's hello; 0 = don't wait.
    pub wait_secs: u64,
    /// Restart the guest in place when it reboots (otherwise the VM exits).
    #[serde(default)]
    pub allow_reboot: bool,
    /// Which VMM runs the guest.
    #[serde(default)]
    pub vmm: Vmm,
    /// What to boot instead of the kit's kernel: a kernel image path, or `mini` for the
    /// kit's mini frontend (builtin VMM only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernel: Option<String>,
}

/// Which VMM runs a guest.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Vmm {
    /// QEMU, a separate process reached through ivshmem.
    #[default]
    Qemu,
    /// Vesper's own VMM inside the daemon (`vesper-hypervisor`).
    Builtin,
}

impl std::str::FromStr for Vmm {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "qemu" => Ok(Self::Qemu),
            "builtin" => Ok(Self::Builtin),
            other => Err(format!("unknown VMM {other:?}: use qemu or builtin")),
        }
    }
}

impl std::fmt::Display for Vmm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Qemu => "qemu",
            Self::Builtin => "builtin",
        })
    }
}

/// A request to the daemon.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Start a test VM.
    VmStart(VmStartRequest),
    /// Stop a VM.
    VmStop {
        /// VM name.
        name: String,
    },
    /// List VMs.
    VmList,
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
}

/// What kind of failure, for scripts and exit codes.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The request does not parse or is invalid.
    BadRequest,
    /// No guest by that name.
    UnknownGuest,
    /// A guest by that name exists already.
    GuestExists,
    /// The guest has no frontend connected (yet).
    GuestNotReady,
    /// The module image was refused on the host.
    BadModule,
    /// Already loaded.
    AlreadyLoaded,
    /// Not loaded.
    NotLoaded,
    /// In use.
    InUse,
    /// Its init failed in the guest.
    InitFailed,
    /// Any other guest-side failure.
    GuestFailed,
    /// The guest stopped answering.
    Timeout,
    /// The module's init was still running in the guest when the wait for it ended:
    /// the load's outcome is not known yet.
    InitStillRunning,
    /// The guest broke the protocol.
    GuestMisbehaving,
    /// The VM could not be started.
    VmStartFailed,
    /// A daemon-side failure.
    Internal,
    /// The caller's uid/gid is not allowed to use the daemon.
    PermissionDenied,
}

/// Exit code of the CLI for a timeout: the guest stopped answering, a VM did not stop in
/// time, or vesperd did not reply within `--timeout` (62 is ETIME, "timer expired").
pub const TIMEOUT_EXIT_CODE: i32 = 62;

impl ErrorCode {
    /// Exit code for the CLI (sysexits.h where one fits).
    pub fn exit_code(self) -> i32 {
        match self {
            ErrorCode::BadRequest | ErrorCode::BadModule => 65, // EX_DATAERR
            ErrorCode::UnknownGuest => 68,                      // EX_NOHOST
            ErrorCode::GuestNotReady => 75,                     // EX_TEMPFAIL
            ErrorCode::Timeout => TIMEOUT_EXIT_CODE,
            ErrorCode::VmStartFailed => 71,    // EX_OSERR
            ErrorCode::Internal => 70,         // EX_SOFTWARE
            ErrorCode::PermissionDenied => 77, // EX_NOPERM
            ErrorCode::GuestExists => 73,      // EX_CANTCREAT
            // Not a failure yet, not a success: as timeout(1) says "still running".
            ErrorCode::InitStillRunning => 124,
            ErrorCode::AlreadyLoaded
            | ErrorCode::NotLoaded
            | ErrorCode::InUse
            | ErrorCode::InitFailed
            | ErrorCode::GuestFailed
            | ErrorCode::GuestMisbehaving => 1,
        }
    }
}

/// A failure reply.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Error)]
#[error("{message}")]
pub struct ApiError {
    /// Kind.
    pub code: ErrorCode,
    /// Human message: what is wrong and what to do.
    pub message: String,
}

impl ApiError {
    /// Builds an error.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
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
    /// Set when this vesperd adopted the VM from an earlier one (daemon restart), with
    /// what that costs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopted: Option<String>,
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
    /// VM stopped: its process is gone.
    VmStopped {
        /// Name.
        name: String,
        /// It did not quit within the grace period and was killed.
        #[serde(default)]
        killed: bool,
    },
    /// VMs.
    VmList {
        /// Every VM.
        vms: Vec<VmStatus>,
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

/// Client-side failures (the daemon could not be asked).
#[derive(Debug, Error)]
pub enum ClientError {
    /// No daemon at the socket.
    #[error(
        "cannot reach vesperd at {path}: {source}; start it with `vesperd` (or pass --socket)"
    )]
    Connect {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// No reply in time.
    #[error("vesperd did not reply within {0:?} (raise --timeout, or check the daemon's log)")]
    Timeout(Duration),
    /// The conversation broke.
    #[error("talking to vesperd: {0}")]
    Io(#[from] std::io::Error),
    /// The daemon's reply does not parse.
    #[error("vesperd sent a malformed reply: {0}")]
    Malformed(String),
    /// The connection ended before a reply (the daemon died or was stopped).
    #[error("vesperd went away before replying; the command may have completed in the guest (check with `vesper lsmod` or `vesper events`)")]
    WentAway,
}

/// The default socket path: `$VESPER_SOCKET`, else `$XDG_RUNTIME_DIR/vesper/vesperd.sock`,
/// else `/tmp/vesper-<uid>/vesperd.sock`.
pub fn default_socket() -> PathBuf {
    if let Some(p) = std::env::var_os("VESPER_SOCKET") {
        return PathBuf::from(p);
    }
    default_run_dir().join("vesperd.sock")
}

/// The default run directory (see [`default_socket`]).
pub fn default_run_dir() -> PathBuf {
    match std::env::var_os("XDG_RUNTIME_DIR") {
        Some(d) => PathBuf::from(d).join("vesper"),
        None => PathBuf::from(format!("/tmp/vesper-{}", nix_uid())),
    }
}

fn nix_uid() -> u32 {
    std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m))
        .unwrap_or(0)
}

/// Sends one request and waits (up to `timeout`) for its reply.
pub fn call(socket: &Path, req: &Request, timeout: Duration) -> Result<Response, ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(Some(timeout))?;
    let mut w = stream.try_clone()?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::Malformed(e.to_string()))?;
    line.push('\n');
    // The daemon may answer (a refusal) and close before reading the request: a failed
    // write is then followed by the reply, which says why.
    let sent = w.write_all(line.as_bytes());
    let mut reply = String::new();
    match BufReader::new(stream).read_line(&mut reply) {
        Ok(_) => {}
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            return Err(ClientError::Timeout(timeout))
        }
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
            sent?;
            return Err(ClientError::WentAway);
        }
        Err(e) => return Err(e.into()),
    }
    if reply.is_empty() {
        // No reply: if the request never got out, that is the error to report.
        sent?;
        return Err(ClientError::WentAway);
    }
    if !reply.ends_with('\n') {
        // Cut off mid-line: the daemon died while writing.
        return Err(ClientError::WentAway);
    }
    let wire: WireResponse =
        serde_json::from_str(&reply).map_err(|e| ClientError::Malformed(e.to_string()))?;
    Ok(wire.into())
}

/// Sends one streaming request and hands each reply to `f` until it returns false,
/// the daemon sends `End` or an error, or the connection closes.
pub fn call_stream(
    socket: &Path,
    req: &Request,
    timeout: Option<Duration>,
    mut f: impl FnMut(Response) -> bool,
) -> Result<(), ClientError> {
    let stream = UnixStream::connect(socket).map_err(|source| ClientError::Connect {
        path: socket.to_path_buf(),
        source,
    })?;
    stream.set_read_timeout(timeout)?;
    let mut w = stream.try_clone()?;
    let mut line = serde_json::to_string(req).map_err(|e| ClientError::Malformed(e.to_string()))?;
    line.push('\n');
    // As in `call`: a refusal may arrive although the request could not be written.
    let _ = w.write_all(line.as_bytes());
    for line in BufReader::new(stream).lines() {
        let line = match line {
            Ok(l) => l,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ClientError::Timeout(timeout.unwrap_or_default()))
            }
            Err(e) => return Err(e.into()),
        };
        let wire: WireResponse =
            serde_json::from_str(&line).map_err(|e| ClientError::Malformed(e.to_string()))?;
        let r: Response = wire.into();
        let last = matches!(r, Ok(Reply::End { .. }) | Err(_));
        if !f(r) || last {
            break;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_replies_round_trip_as_json_lines() {
        let r = Request::insmod("vm1", "p.ko", b"\x7fELF", vec!["a=1".into()]);
        let s = serde_json::to_string(&r).unwrap();
        assert!(s.contains("\"op\":\"insmod\"") && !s.contains('\n'));
        let back: Request = serde_json::from_str(&s).unwrap();
        let Request::Insmod { image_b64, .. } = &back else {
            panic!()
        };
        assert_eq!(decode_image(image_b64).unwrap(), b"\x7fELF");
        let e: WireResponse =
            Err::<Reply, _>(ApiError::new(ErrorCode::UnknownGuest, "no guest vm9")).into();
        let s = serde_json::to_string(&e).unwrap();
        assert!(s.contains("unknown_guest"));
        let back: Response = serde_json::from_str::<WireResponse>(&s).unwrap().into();
        assert_eq!(back.unwrap_err().code.exit_code(), 68);
    }

    /// A listener that reads one request, writes `answer`, and hangs up.
    fn hangs_up_after(answer: &'static [u8]) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut line = String::new();
            BufReader::new(&s).read_line(&mut line).unwrap();
            (&s).write_all(answer).unwrap();
        });
        (dir, path)
    }

    #[test]
    fn a_daemon_that_dies_mid_command_is_not_reported_as_a_malformed_reply() {
        for answer in [&b""[..], b"{\"ok\":tr"] {
            let (_dir, path) = hangs_up_after(answer);
            let e = call(&path, &Request::VmList, Duration::from_secs(5)).unwrap_err();
            assert!(matches!(e, ClientError::WentAway), "{e:?}");
            assert!(
                e.to_string().starts_with(
                    "vesperd went away before replying; the command may have completed in the guest"
                ),
                "{e}"
            );
        }
    }

    #[test]
    fn a_missing_daemon_is_a_clear_error() {
        let e = call(
            Path::new("/nonexistent/vesperd.sock"),
            &Request::VmList,
            Duration::from_secs(1),
        )
        .unwrap_err();
        assert!(e.to_string().contains("start it with `vesperd`"));
    }
}
