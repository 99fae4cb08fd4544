//! The command line: every command, its arguments and help texts (clap).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

pub(crate) const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 the guest refused or failed the operation (already loaded, \
not loaded, in use, init failed, misbehaving guest); 2 usage; 65 bad module file or \
request; 66 file not found; 68 unknown guest; 69 vesperd unreachable, or it went away \
before replying (the command may have completed); 70 internal error; 71 VM failed to \
start; 73 VM name taken; 74 cannot read the file; 75 guest not ready (try again); 62 \
timed out: the guest stopped answering, a VM did not stop, or no reply within --timeout; \
124 insmod: the module's init was still running at --init-timeout (it ends live \
or gone: `vesper lsmod`, and a module_loaded or module_failed event says which). `vm \
status` (LSB): 0 running and healthy, 1 running but a failure was seen, 3 not running, 4 \
booting.";

/// Push kernel probe modules into running guests and manage test VMs.
#[derive(Debug, Parser)]
#[command(name = "vesper", version, about, after_help = AFTER_HELP)]
pub(crate) struct Cli {
    /// vesperd's socket (default: $VESPER_SOCKET, $XDG_RUNTIME_DIR/vesper/vesperd.sock or /tmp/vesper-UID/vesperd.sock).
    #[arg(long, global = true)]
    pub(crate) socket: Option<PathBuf>,
    /// Print the daemon's reply as JSON.
    #[arg(long, global = true)]
    pub(crate) json: bool,
    /// Give up waiting for the daemon after this many seconds.
    #[arg(long, global = true, default_value_t = 300)]
    pub(crate) timeout: u64,
    #[command(subcommand)]
    pub(crate) cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Cmd {
    /// VMs run by vesperd.
    Vm {
        #[command(subcommand)]
        cmd: VmCmd,
    },
    /// Push a module into GUEST and load it in kernel context.
    Insmod {
        /// Guest name.
        guest: String,
        /// Module file (.ko).
        file: PathBuf,
        /// Module parameters (name=value).
        params: Vec<String>,
        /// Wait this many seconds for the module's init once it runs in the guest
        /// (default 120); past it, exit 124 with the init still running.
        #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
        init_timeout: Option<u64>,
    },
    /// Unload module NAME from GUEST.
    Rmmod {
        /// Guest name.
        guest: String,
        /// Module name.
        name: String,
        /// Force the unload (O_TRUNC), even if in use.
        #[arg(long)]
        force: bool,
    },
    /// List GUEST's loaded modules.
    Lsmod {
        /// Guest name.
        guest: String,
    },
    /// Show the tail of GUEST's kernel log.
    Dmesg {
        /// Guest name.
        guest: String,
    },
    /// Probe groups: modules pushed and removed as one, all or nothing.
    Group {
        #[command(subcommand)]
        cmd: GroupCmd,
    },
    /// Failure events and decisions (probes, QEMU, the failover engine).
    Events {
        /// Keep printing new events as they happen.
        #[arg(long, short)]
        follow: bool,
        /// Only this guest (repeatable).
        #[arg(long = "guest")]
        guests: Vec<String>,
        /// Only this kind (repeatable): panic, service_exit, oom, guest_panicked,
        /// shutdown, stop, reset, vm_exit, guest_up, decision, module_loaded,
        /// module_failed, cluster, probe, vcpu_stall.
        #[arg(long = "kind")]
        kinds: Vec<String>,
        /// Start from this sequence number (resume).
        #[arg(long)]
        since: Option<u64>,
    },
    /// Failover policies.
    Policy {
        #[command(subcommand)]
        cmd: PolicyCmd,
    },
    /// Read a guest's kernel from the host, in its RAM: symbols, memory, tasks, log.
    /// Needs nothing from the guest: works while it runs, is paused, hangs or panicked.
    Debug {
        #[command(subcommand)]
        cmd: DebugCmd,
    },
    /// Probe output read from the guest's shared relay buffers.
    Relay {
        #[command(subcommand)]
        cmd: RelayCmd,
    },
    /// Probe specs: a few lines compiled into a probe module for a guest's kernel.
    Probe {
        #[command(subcommand)]
        cmd: ProbeCmd,
    },
    /// What the host kernel sees of a guest (eBPF in vesperd on its vCPU threads).
    Host {
        #[command(subcommand)]
        cmd: HostCmd,
    },
    /// For a Pacemaker cluster: the event bridge and the alert agent.
    Cluster {
        #[command(subcommand)]
        cmd: crate::cluster::ClusterCmd,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum GroupCmd {
    /// Load every module of a group file in order; if one fails, the ones loaded are
    /// unloaded again and the error names the member that failed.
    Apply {
        /// Guest name.
        guest: String,
        /// The group file (TOML).
        file: PathBuf,
    },
    /// Unload a group's modules in reverse order (members not loaded are reported).
    Remove {
        /// Guest name.
        guest: String,
        /// The group file, or the name of a group this vesperd applied.
        group: String,
    },
    /// The groups applied to GUEST and whether each member is loaded.
    List {
        /// Guest name.
        guest: String,
    },
    /// Check a group file and every module it names (no daemon needed). Exit 0 if
    /// valid, 65 if not.
    Check {
        /// The group file (TOML).
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum PolicyCmd {
    /// Check a policy file and summarise it (no daemon needed). Exit 0 if valid, 65 if not.
    Check {
        /// The TOML policy.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum HostCmd {
    /// Per vCPU: state, exits and their reasons, exit rate, host steal (runnable but
    /// not running), stalls. A vCPU out of the guest, stopped or starved longer than
    /// vesperd's --stall-threshold-ms raises a `vcpu_stall` event.
    Stat {
        /// Guest name.
        guest: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum RelayCmd {
    /// Print the records of MODULE's channels (decoded when the type is known).
    Cat {
        /// Guest name.
        guest: String,
        /// Module that owns the channel.
        module: String,
        /// Channel name (all of the module's channels if omitted).
        channel: Option<String>,
        /// Keep printing new records as they arrive.
        #[arg(long, short)]
        follow: bool,
    },
    /// Per-channel produced/consumed/written/dropped/lost/received counters.
    Stat {
        /// Guest name.
        guest: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum VmCmd {
    /// Start a VM: the kit's test VM, or your own (a disk, a kernel, firmware boot).
    Start(Box<crate::vm_start::StartArgs>),
    /// Attach a VM Vesper did not start: a QEMU started by hand (--qmp) or a libvirt
    /// domain (--libvirt); vesperd serves its Vesper device from then on.
    Attach(Box<crate::vm_attach::AttachArgs>),
    /// Let go of an attached VM: its Vesper device is unplugged, the VM runs on.
    Detach {
        /// VM name.
        name: String,
    },
    /// Fence a guest on this host: stop it if it runs, and refuse to start it here
    /// until it is unfenced (kept across vesperd restarts); what fence_vesper's `off` does.
    Fence {
        /// VM name.
        name: String,
    },
    /// Whether a guest is fenced on this host (`--json`: `fenced` true or false).
    Fenced {
        /// VM name.
        name: String,
    },
    /// Lift a guest's fence on this host: it may start here again (it is not started).
    Unfence {
        /// VM name.
        name: String,
    },
    /// Stop a VM; returns once its process is gone (killed if it does not quit within
    /// its grace period, which the reply says); 62 if it still has not ended.
    Stop {
        /// VM name.
        name: String,
    },
    /// List VMs.
    List,
    /// One VM's state and health. Exit status (LSB): 0 running and healthy, 1 running
    /// but Vesper saw a failure since it came up, 3 not running, 4 booting (the VM runs,
    /// its guest's frontend is not up yet).
    Status {
        /// VM name.
        name: String,
    },
    /// Type a line into a VM's serial console (the guest's user space, if it listens).
    Send {
        /// VM name.
        name: String,
        /// Words of the line.
        #[arg(required = true)]
        text: Vec<String>,
    },
    /// Pause a VM: its vCPUs stop; `vesper debug` still reads its memory.
    Pause {
        /// VM name.
        name: String,
    },
    /// Resume a paused VM.
    Resume {
        /// VM name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum DebugCmd {
    /// The kernel vesperd found in the guest's RAM: release, KASLR offset, symbols.
    Info {
        /// Guest name.
        guest: String,
    },
    /// A symbol's address (NAME), a listing (PREFIX*), or the symbol an address is in
    /// (0xADDR).
    Sym {
        /// Guest name.
        guest: String,
        /// NAME, PREFIX* or ADDRESS.
        query: String,
    },
    /// Read kernel memory as a typed value: SYMBOL, SYMBOL.member->member,
    /// (struct T)SYMBOL.member, *(struct T *)ADDR, ADDR.
    Read {
        /// Guest name.
        guest: String,
        /// The expression.
        expr: String,
        /// Read this many consecutive elements.
        #[arg(long, default_value_t = 1)]
        count: u64,
        /// Integers in hexadecimal.
        #[arg(long)]
        hex: bool,
        /// Take types from this vmlinux's (or module's) DWARF instead of the guest
        /// kernel's BTF (Debian's linux-image-RELEASE-dbg; the guest kit fetches it).
        #[arg(long, value_name = "PATH")]
        vmlinux: Option<std::path::PathBuf>,
    },
    /// The task list, walked in guest memory from init_task (pid, state, CPU, comm).
    Ps {
        /// Guest name.
        guest: String,
    },
    /// The kernel log, read from the printk ring in guest memory (works on a hung or
    /// panicked guest, unlike `vesper dmesg`).
    Dmesg {
        /// Guest name.
        guest: String,
    },
    /// A kernel stack trace, unwound with the kernel's ORC tables: of task PID (from
    /// what the scheduler saved, or its CPU's registers while it runs), or of a CPU.
    /// The guest is paused while its stacks are walked.
    Bt {
        /// Guest name.
        guest: String,
        /// The task's thread id (`vesper debug ps` lists them).
        #[arg(required_unless_present = "cpu", conflicts_with = "cpu")]
        pid: Option<i32>,
        /// Trace CPU N from its registers instead.
        #[arg(long, value_name = "N")]
        cpu: Option<u32>,
    },
    /// Save an ELF vmcore of the guest (VMCOREINFO, zero pages left out), pausing it
    /// while it is written; crash, gdb and `vesper debug ... FILE` read it.
    Dump {
        /// Guest name.
        guest: String,
        /// File name in the guest's dump directory (default GUEST-TIME.vmcore).
        #[arg(long)]
        name: Option<String>,
    },
    /// The guest's saved vmcores.
    Dumps {
        /// Guest name.
        guest: String,
    },
    /// Attach gdb: QEMU's gdbstub endpoint, a symbol file made from the guest's
    /// kallsyms, and the gdb command line that loads them (attaching stops the guest
    /// until gdb continues or detaches).
    Gdb {
        /// Guest name.
        guest: String,
        /// A vmlinux with debug info for the guest's kernel (Debian's
        /// linux-image-VERSION-dbg), loaded at the KASLR offset, for types.
        #[arg(long)]
        vmlinux: Option<PathBuf>,
    },
}

#[derive(Debug, Subcommand)]
pub(crate) enum ProbeCmd {
    /// Check a spec against a guest kernel (symbols, BTF types), building nothing.
    Check {
        /// Spec file.
        spec: PathBuf,
        #[command(flatten)]
        kernel: KernelArgs,
    },
    /// Generate C from a spec and build it into a module for a guest kernel (cached).
    Build {
        /// Spec file.
        spec: PathBuf,
        #[command(flatten)]
        kernel: KernelArgs,
        /// Also copy the module here.
        #[arg(long, short)]
        out: Option<PathBuf>,
    },
    /// Build (cached) for GUEST's kernel, push, load, and print its records as they come.
    Run {
        /// Guest name.
        guest: String,
        /// Spec file.
        spec: PathBuf,
        #[command(flatten)]
        kernel: KernelArgs,
        /// Stop after this many records.
        #[arg(long)]
        count: Option<u64>,
        /// Stop after this many seconds (with --count: whichever comes first).
        #[arg(long, value_name = "SECS")]
        duration: Option<u64>,
        /// Leave the module loaded when done (default: unloaded when the run ends,
        /// also on Ctrl-C or SIGTERM).
        #[arg(long)]
        keep: bool,
    },
}

#[derive(Debug, clap::Args)]
pub(crate) struct KernelArgs {
    /// Guest kernel release (default: the kit's kernel; for `run`, the guest's).
    #[arg(long)]
    pub(crate) kernel: Option<String>,
    /// Guest kit directory (default: $VESPER_KIT_DIR, else vesperd's kit, else the
    /// repository's .vesper-kit).
    #[arg(long)]
    pub(crate) kit: Option<PathBuf>,
    /// Build cache (default: $VESPER_PROBE_CACHE or ~/.cache/vesper/probes).
    #[arg(long)]
    pub(crate) cache: Option<PathBuf>,
}
