//! `vesper`: operator CLI for vesperd.

mod backtrace;
mod cluster;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};
use vesper_api::{
    call, call_stream, default_socket, AccelRequest, ApiError, ClientError, DebugOp, Decoded,
    Event, EventKind, Filter, RecordView, Reply, Request, Response, VmStartRequest, VmStatus, Vmm,
};

const AFTER_HELP: &str = "\
Exit codes: 0 success; 1 the guest refused or failed the operation (already loaded, \
not loaded, in use, init failed, misbehaving guest); 2 usage; 65 bad module file or \
request; 66 file not found; 68 unknown guest; 69 vesperd unreachable, or it went away \
before replying (the command may have completed); 70 internal error; 71 VM failed to \
start; 73 VM name taken; 74 cannot read the file; 75 guest not ready (try again); 62 \
timed out: the guest stopped answering, a VM did not stop, or no reply within --timeout; \
124 insmod: the module's init was still running at --init-timeout (it ends live \
or gone: `vesper lsmod`, and a module_loaded or module_failed event says which).";

/// Push kernel probe modules into running guests and manage test VMs.
#[derive(Debug, Parser)]
#[command(name = "vesper", version, about, after_help = AFTER_HELP)]
struct Cli {
    /// vesperd's socket (default: $VESPER_SOCKET, $XDG_RUNTIME_DIR/vesper/vesperd.sock or /tmp/vesper-UID/vesperd.sock).
    #[arg(long, global = true)]
    socket: Option<PathBuf>,
    /// Print the daemon's reply as JSON.
    #[arg(long, global = true)]
    json: bool,
    /// Give up waiting for the daemon after this many seconds.
    #[arg(long, global = true, default_value_t = 300)]
    timeout: u64,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Test VMs run by vesperd.
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
        /// module_failed, cluster.
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
    /// For a Pacemaker cluster: the event bridge and the alert agent.
    Cluster {
        #[command(subcommand)]
        cmd: cluster::ClusterCmd,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCmd {
    /// Check a policy file and summarise it (no daemon needed). Exit 0 if valid, 65 if not.
    Check {
        /// The TOML policy.
        file: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
enum RelayCmd {
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
enum VmCmd {
    /// Start a test VM from the guest kit.
    Start {
        /// VM name.
        name: String,
        /// Memory in MiB.
        #[arg(long, default_value_t = 512)]
        memory: u32,
        /// vCPUs.
        #[arg(long, default_value_t = 1)]
        cpus: u32,
        /// Accelerator: auto (KVM if hardware-backed, else TCG), kvm or tcg.
        #[arg(long, default_value = "auto")]
        accel: String,
        /// Guest-kit directory.
        #[arg(long)]
        kit_dir: Option<PathBuf>,
        /// Test init mode (freeze: user space frozen after boot; bench: in-guest insmod benchmark).
        #[arg(long, default_value = "freeze")]
        mode: String,
        /// Extra kernel command-line words.
        #[arg(long)]
        append: Option<String>,
        /// Return without waiting for the guest's frontend.
        #[arg(long)]
        no_wait: bool,
        /// Seconds to wait for the guest's frontend.
        #[arg(long, default_value_t = 120)]
        boot_timeout: u64,
        /// Restart the guest in place when it reboots (default: the VM exits).
        #[arg(long)]
        allow_reboot: bool,
        /// VMM: qemu (a QEMU process reached through ivshmem) or builtin (Vesper's own
        /// KVM VMM inside vesperd; needs /dev/kvm).
        #[arg(long, default_value = "qemu")]
        vmm: String,
        /// Boot this kernel image instead of the kit's, or `mini` for the kit's mini
        /// frontend (a non-Linux guest speaking the Vesper protocol; builtin VMM only).
        #[arg(long)]
        kernel: Option<String>,
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
enum DebugCmd {
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

pub(crate) fn fail(json: bool, code: i32, kind: &str, message: &str) -> ExitCode {
    if json {
        println!(
            "{}",
            serde_json::json!({ "ok": false, "error": { "code": kind, "message": message } })
        );
    } else {
        eprintln!("vesper: {message}");
    }
    ExitCode::from(code as u8)
}

/// Exits for a failure to talk to the daemon: unreachable or gone (69), no reply within
/// --timeout (the timeout code), anything else internal (70).
fn client_fail(json: bool, e: ClientError) -> ExitCode {
    let (code, kind) = match &e {
        ClientError::Connect { .. } => (69, "unreachable"),
        ClientError::WentAway => (69, "went_away"),
        ClientError::Timeout(_) => (vesper_api::TIMEOUT_EXIT_CODE, "timeout"),
        _ => (70, "internal"),
    };
    fail(json, code, kind, &e.to_string())
}

/// Exits for a daemon-side error with the code its kind maps to.
fn api_fail(json: bool, e: ApiError) -> ExitCode {
    let kind = serde_json::to_value(e.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    fail(json, e.code.exit_code(), &kind, &e.message)
}

fn main() -> ExitCode {
    // Output piped into `head` should end us quietly, as it ends any Unix tool, not
    // panic in println!.
    // SAFETY: setting a signal's disposition to the default before any other thread
    // exists; no handler code is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Cmd::Cluster { cmd } = &cli.cmd {
        return cluster::run(cli.socket.clone(), cli.json, cmd);
    }
    if let Cmd::Events {
        follow,
        guests,
        kinds,
        since,
    } = &cli.cmd
    {
        return events(&cli, *follow, guests, kinds, *since);
    }
    if let Cmd::Policy {
        cmd: PolicyCmd::Check { file },
    } = &cli.cmd
    {
        return match vesper_failover::check(file) {
            Ok(summary) => {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({ "ok": true, "result": { "valid": true, "summary": summary } })
                    );
                } else {
                    println!("{}: valid\n{summary}", file.display());
                }
                ExitCode::SUCCESS
            }
            Err(e) => fail(cli.json, 65, "invalid_policy", &e.report()),
        };
    }
    if let Cmd::Vm {
        cmd: VmCmd::Status { name },
    } = &cli.cmd
    {
        return vm_status(&cli, name);
    }
    if let Cmd::Relay {
        cmd:
            RelayCmd::Cat {
                guest,
                module,
                channel,
                follow,
            },
    } = &cli.cmd
    {
        let req = Request::RelayCat {
            guest: guest.clone(),
            module: module.clone(),
            channel: channel.clone(),
            follow: *follow,
        };
        return relay_cat(&cli, &req);
    }
    let req = match build_request(&cli.cmd) {
        Ok(r) => r,
        Err((code, kind, msg)) => return fail(cli.json, code, kind, &msg),
    };
    if let Request::Debug { guest, debug } = &req {
        if looks_like_a_file(guest) {
            return debug_core(&cli, guest, debug.clone());
        }
    }
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    match call(&socket, &req, reply_timeout(&cli)) {
        Err(e) => client_fail(cli.json, e),
        Ok(Err(e)) => api_fail(cli.json, e),
        Ok(Ok(reply)) => {
            if cli.json {
                println!("{}", serde_json::json!({ "ok": true, "result": reply }));
            } else {
                print_human(&reply);
            }
            ExitCode::SUCCESS
        }
    }
}

/// How long to wait for the daemon's reply: --timeout, and for insmod at least the
/// init wait with a minute to spare for the transfer.
fn reply_timeout(cli: &Cli) -> Duration {
    let asked = Duration::from_secs(cli.timeout);
    match &cli.cmd {
        Cmd::Insmod { init_timeout, .. } => {
            let init = init_timeout.map_or(vesper_api::DEFAULT_INIT_TIMEOUT, Duration::from_secs);
            asked.max(init + Duration::from_secs(60))
        }
        _ => asked,
    }
}

type Refusal = (i32, &'static str, String);

fn build_request(cmd: &Cmd) -> Result<Request, Refusal> {
    Ok(match cmd {
        Cmd::Vm {
            cmd:
                VmCmd::Start {
                    name,
                    memory,
                    cpus,
                    accel,
                    kit_dir,
                    mode,
                    append,
                    no_wait,
                    boot_timeout,
                    allow_reboot,
                    vmm,
                    kernel,
                },
        } => {
            let vmm: Vmm = vmm.parse().map_err(|e: String| (2, "usage", e))?;
            let kernel = kernel.as_ref().map(|k| match k.as_str() {
                "mini" => k.clone(),
                path => std::path::absolute(path)
                    .map(|p| p.display().to_string())
                    .unwrap_or_else(|_| path.to_string()),
            });
            let accel: AccelRequest = accel
                .parse()
                .map_err(|e: vesper_api::QemuAccelError| (2, "usage", e.to_string()))?;
            let kit_dir = kit_dir
                .as_ref()
                .map(|d| std::path::absolute(d).unwrap_or_else(|_| d.clone()));
            Request::VmStart(VmStartRequest {
                name: name.clone(),
                memory_mib: *memory,
                cpus: *cpus,
                accel,
                kit_dir,
                mode: mode.clone(),
                extra_cmdline: append.clone(),
                wait_secs: if *no_wait { 0 } else { *boot_timeout },
                allow_reboot: *allow_reboot,
                vmm,
                kernel,
            })
        }
        Cmd::Vm {
            cmd: VmCmd::Stop { name },
        } => Request::VmStop { name: name.clone() },
        Cmd::Vm { cmd: VmCmd::List } => Request::VmList,
        Cmd::Vm {
            cmd: VmCmd::Send { name, text },
        } => Request::VmSend {
            name: name.clone(),
            line: text.join(" "),
        },
        Cmd::Insmod {
            guest,
            file,
            params,
            init_timeout,
        } => {
            let image = std::fs::read(file).map_err(|e| match e.kind() {
                std::io::ErrorKind::NotFound => {
                    (66, "no_input", format!("{}: no such file", file.display()))
                }
                _ => (
                    74,
                    "io_error",
                    format!("cannot read {}: {e}", file.display()),
                ),
            })?;
            let name = file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            Request::insmod(guest, &name, &image, params.clone()).with_init_timeout(*init_timeout)
        }
        Cmd::Vm {
            cmd: VmCmd::Pause { name },
        } => Request::VmPause { name: name.clone() },
        Cmd::Vm {
            cmd: VmCmd::Resume { name },
        } => Request::VmResume { name: name.clone() },
        Cmd::Debug { cmd } => {
            let (guest, op) = match cmd {
                DebugCmd::Info { guest } => (guest, DebugOp::Info),
                DebugCmd::Sym { guest, query } => (
                    guest,
                    DebugOp::Sym {
                        query: query.clone(),
                    },
                ),
                DebugCmd::Read {
                    guest,
                    expr,
                    count,
                    hex,
                    vmlinux,
                } => (
                    guest,
                    DebugOp::Read {
                        expr: expr.clone(),
                        count: *count,
                        hex: *hex,
                        // vesperd resolves paths in its own working directory.
                        vmlinux: vmlinux
                            .as_ref()
                            .map(|v| std::path::absolute(v).unwrap_or_else(|_| v.clone())),
                    },
                ),
                DebugCmd::Ps { guest } => (guest, DebugOp::Ps),
                DebugCmd::Dmesg { guest } => (guest, DebugOp::Dmesg),
                DebugCmd::Bt { guest, pid, cpu } => (
                    guest,
                    DebugOp::Bt {
                        pid: *pid,
                        cpu: *cpu,
                    },
                ),
                DebugCmd::Dump { guest, name } => (guest, DebugOp::Dump { name: name.clone() }),
                DebugCmd::Dumps { guest } => (guest, DebugOp::Dumps),
                DebugCmd::Gdb { guest, vmlinux } => (
                    guest,
                    DebugOp::Gdb {
                        vmlinux: vmlinux
                            .as_ref()
                            .map(|v| std::path::absolute(v).unwrap_or_else(|_| v.clone())),
                    },
                ),
            };
            Request::Debug {
                guest: guest.clone(),
                debug: op,
            }
        }
        Cmd::Rmmod { guest, name, force } => Request::Rmmod {
            guest: guest.clone(),
            name: name.clone(),
            force: *force,
        },
        Cmd::Lsmod { guest } => Request::Lsmod {
            guest: guest.clone(),
        },
        Cmd::Dmesg { guest } => Request::Dmesg {
            guest: guest.clone(),
        },
        Cmd::Relay {
            cmd: RelayCmd::Stat { guest },
        } => Request::RelayStat {
            guest: guest.clone(),
        },
        Cmd::Relay {
            cmd: RelayCmd::Cat { .. },
        }
        | Cmd::Events { .. }
        | Cmd::Cluster { .. }
        | Cmd::Policy { .. }
        | Cmd::Vm {
            cmd: VmCmd::Status { .. },
        } => unreachable!("handled in main"),
    })
}

fn relay_cat(cli: &Cli, req: &Request) -> ExitCode {
    stream(cli, req)
}

/// Prints a streamed reply (records, events, gaps) line by line until it ends.
fn stream(cli: &Cli, req: &Request) -> ExitCode {
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let mut failure = None;
    let json = cli.json;
    let out = call_stream(&socket, req, None, |r: Response| {
        match r {
            Ok(Reply::End { .. }) => {}
            Ok(reply) if json => println!("{}", serde_json::json!({ "ok": true, "result": reply })),
            Ok(reply) => print_human(&reply),
            Err(e) => failure = Some(e),
        }
        true
    });
    match (out, failure) {
        (Err(e), _) => client_fail(cli.json, e),
        (Ok(()), Some(e)) => api_fail(cli.json, e),
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}

fn events(
    cli: &Cli,
    follow: bool,
    guests: &[String],
    kinds: &[String],
    since: Option<u64>,
) -> ExitCode {
    let mut filter = Filter {
        guests: guests.to_vec(),
        kinds: Vec::new(),
    };
    for k in kinds {
        match k.parse::<EventKind>() {
            Ok(k) => filter.kinds.push(k),
            Err(e) => return fail(cli.json, 2, "usage", &e.to_string()),
        }
    }
    let req = Request::Subscribe {
        filter,
        from_seq: since,
        follow,
    };
    stream(cli, &req)
}

/// LSB status codes, for init scripts and the OCF agent.
const STATUS_RUNNING: u8 = 0;
const STATUS_FAILED: u8 = 1;
const STATUS_NOT_RUNNING: u8 = 3;
/// LSB's "status unknown": the VM runs but its guest is not up yet, so its health is
/// not known.
const STATUS_BOOTING: u8 = 4;

fn vm_status(cli: &Cli, name: &str) -> ExitCode {
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let req = Request::VmStatus {
        name: name.to_string(),
    };
    match call(&socket, &req, Duration::from_secs(cli.timeout)) {
        Err(e) => client_fail(cli.json, e),
        Ok(Err(ApiError {
            code: vesper_api::ErrorCode::UnknownGuest,
            message,
        })) => {
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": false, "error": { "code": "unknown_guest", "message": message } })
                );
            } else {
                println!("{name}: not running ({message})");
            }
            ExitCode::from(STATUS_NOT_RUNNING)
        }
        Ok(Err(e)) => api_fail(cli.json, e),
        Ok(Ok(Reply::VmStatus(v))) => {
            let code = match (&v.state[..], &v.failure) {
                ("exited", _) => STATUS_NOT_RUNNING,
                ("booting", _) => STATUS_BOOTING,
                (_, Some(_)) => STATUS_FAILED,
                _ => STATUS_RUNNING,
            };
            if cli.json {
                println!("{}", serde_json::json!({ "ok": true, "result": v }));
            } else {
                println!("{}", vm_line(&v));
                if let Some(f) = &v.failure {
                    println!(
                        "{name}: FAILED: {} (event #{}, {})",
                        f.summary, f.seq, f.kind
                    );
                }
            }
            ExitCode::from(code)
        }
        Ok(Ok(other)) => fail(
            cli.json,
            70,
            "internal",
            &format!("unexpected reply {other:?}"),
        ),
    }
}

fn event_line(e: &Event) -> String {
    let secs = e.time_ns / 1_000_000_000;
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    let src = match &e.source {
        vesper_api::Source::Probe { module, channel } => format!("probe {module}/{channel}"),
        vesper_api::Source::Qmp { event } => format!("qmp {event}"),
        vesper_api::Source::Vmm { event } => format!("vmm {event}"),
        vesper_api::Source::Process => "process".into(),
        vesper_api::Source::Frontend => "frontend".into(),
        vesper_api::Source::Engine => "engine".into(),
        vesper_api::Source::Cluster { origin, node } => format!("cluster {origin}@{node}"),
    };
    let detail = match e.kind {
        EventKind::Decision => e.payload["reason"].as_str().unwrap_or_default().to_string(),
        EventKind::Cluster => e.payload["summary"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
        EventKind::GuestUp => format!(
            "kernel {} gen {}",
            e.payload["kernel_release"].as_str().unwrap_or("?"),
            e.payload["generation"]
        ),
        EventKind::ModuleLoaded | EventKind::ModuleFailed => {
            let module = e.payload["module"].as_str().unwrap_or("?");
            let ms = e.payload["init_ms"].as_f64().unwrap_or_default();
            let late = if e.payload["after_host_gave_up"] == true {
                " (after insmod stopped waiting)"
            } else {
                ""
            };
            match e.payload["errno_name"].as_str() {
                Some(errno) => format!("{module}: init failed with {errno} after {ms:.0} ms{late}"),
                None => format!("{module}: live, init took {ms:.0} ms{late}"),
            }
        }
        _ => {
            let mut p = e.payload.clone();
            if let Some(o) = p.as_object_mut() {
                for k in ["type", "cpu", "record_seq", "latency_ns"] {
                    o.remove(k);
                }
            }
            if p.is_null() {
                String::new()
            } else {
                p.to_string()
            }
        }
    };
    format!(
        "#{:<6} {h:02}:{m:02}:{s:02}.{:06} {:<10} {:<14} [{src}] {detail}",
        e.seq,
        (e.time_ns / 1000) % 1_000_000,
        e.guest,
        e.kind.name()
    )
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        1 => "SIGHUP",
        2 => "SIGINT",
        3 => "SIGQUIT",
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "signal",
    }
}

fn record_line(r: &RecordView) -> String {
    let head = format!(
        "{:>10.6}s cpu{} #{:<5} {}/{}{}",
        r.guest_time_ns as f64 / 1e9,
        r.cpu,
        r.seq,
        r.module,
        r.channel,
        if r.urgent { " urgent" } else { "" }
    );
    let body = match &r.decoded {
        Decoded::Panic { cpu, pid, message } => format!("PANIC on cpu {cpu} (pid {pid}): {}", message.trim_end()),
        Decoded::Exit { pid, tid, signal, comm, .. } if *signal != 0 => {
            format!("exit {comm} pid={pid} tid={tid} killed by {} ({signal})", signal_name(*signal))
        }
        Decoded::Exit { pid, tid, status, comm, .. } => format!("exit {comm} pid={pid} tid={tid} status={status}"),
        Decoded::Oom { pid, comm, total_vm_kb, anon_rss_kb, file_rss_kb, oom_score_adj } => format!(
            "OOM kill {comm} pid={pid} total_vm={total_vm_kb}kB anon_rss={anon_rss_kb}kB file_rss={file_rss_kb}kB oom_score_adj={oom_score_adj}"
        ),
        Decoded::Stress { index, total } => format!("stress {index}/{total}"),
        Decoded::Raw { rtype, len } => match &r.text {
            Some(t) => t.trim_end_matches('\0').trim_end().to_string(),
            None => format!("raw type {rtype}, {len} bytes"),
        },
    };
    format!("{head}  {body}")
}

fn print_relay_stats(channels: &[vesper_api::ChannelView]) {
    if channels.is_empty() {
        println!("no relay channels");
        return;
    }
    let row = |cols: [&str; 10]| {
        println!(
            "{:<28} {:<6} {:>4} {:>9} {:>9} {:>9} {:>9} {:>8} {:>8} {:>9}",
            cols[0],
            cols[1],
            cols[2],
            cols[3],
            cols[4],
            cols[5],
            cols[6],
            cols[7],
            cols[8],
            cols[9]
        )
    };
    row([
        "module/channel",
        "state",
        "cpu",
        "produced",
        "consumed",
        "written",
        "received",
        "dropped",
        "lost",
        "mode",
    ]);
    for c in channels {
        let name = format!("{}/{}", c.module, c.channel);
        let state = if c.open { "open" } else { "closed" };
        let mode = if c.overwrite { "overwrite" } else { "no-overw" };
        for (cpu, b) in c.cpus.iter().enumerate() {
            let n = [
                cpu as u64,
                b.produced as u64,
                b.consumed as u64,
                b.written,
                b.received,
                b.dropped,
                b.lost,
            ]
            .map(|v| v.to_string());
            row([
                &name, state, &n[0], &n[1], &n[2], &n[3], &n[4], &n[5], &n[6], mode,
            ]);
        }
        if let Some(e) = &c.error {
            println!("  {name}: {e}");
        }
    }
}

fn vm_line(v: &VmStatus) -> String {
    let guest = match &v.guest {
        Some(g) => format!("kernel {} gen {}", g.kernel_release, g.generation),
        None => "frontend not connected".into(),
    };
    let boot = v
        .boot_secs
        .map(|s| format!(", up after {s:.1}s"))
        .unwrap_or_default();
    format!(
        "{:<12} {:<8} {:<7} pid {:<8} {} ({}), {guest}{boot}",
        v.name,
        v.state,
        v.vmm.to_string(),
        v.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()),
        serde_json::to_value(v.accel.accel)
            .ok()
            .and_then(|a| a.as_str().map(str::to_string))
            .unwrap_or_default(),
        v.accel.reason
    )
}

fn print_human(reply: &Reply) {
    match reply {
        Reply::VmStarted(v) => {
            println!("{}", vm_line(v));
            println!("console log: {}", v.console_log.display());
        }
        Reply::VmStopped {
            name,
            killed: false,
        } => println!("{name}: stopped"),
        Reply::VmStopped { name, killed: true } => {
            println!("{name}: stopped (killed: it did not quit within its grace period)")
        }
        Reply::VmSent { .. } => {}
        Reply::VmList { vms } if vms.is_empty() => println!("no VMs"),
        Reply::VmList { vms } => vms.iter().for_each(|v| println!("{}", vm_line(v))),
        Reply::Loaded {
            guest,
            name,
            bytes,
            millis,
        } => {
            println!("{guest}: loaded {name} ({bytes} bytes pushed, {millis:.1} ms)")
        }
        Reply::Unloaded {
            guest,
            name,
            millis,
        } => println!("{guest}: unloaded {name} ({millis:.1} ms)"),
        Reply::Modules { modules, .. } => {
            println!(
                "{:<24} {:>10} {:>4}  {:<8} by",
                "Module", "Size", "Used", "State"
            );
            for m in modules {
                let by = if m.frontend {
                    "vesper (frontend)"
                } else if m.pushed {
                    "vesper"
                } else {
                    "-"
                };
                println!(
                    "{:<24} {:>10} {:>4}  {:<8} {by}",
                    m.name, m.size, m.refcount, m.state
                );
            }
        }
        Reply::Kmsg { log, .. } => print!(
            "{}",
            if log.ends_with('\n') {
                log.clone()
            } else {
                format!("{log}\n")
            }
        ),
        Reply::RelayStats { channels, .. } => print_relay_stats(channels),
        Reply::Published { seq } => println!("event #{seq}"),
        Reply::Record(r) => println!("{}", record_line(r)),
        Reply::Gap { missed } => {
            println!("-- {missed} missed (reader too slow, or older than the daemon keeps) --")
        }
        Reply::Event(e) => println!("{}", event_line(e)),
        Reply::VmStatus(v) => println!("{}", vm_line(v)),
        Reply::VmPaused { name, paused } => {
            println!("{name}: {}", if *paused { "paused" } else { "running" })
        }
        Reply::DebugInfo(i) => println!(
            "{}: Linux {}, KASLR offset {:#x}, {} symbols, VMCOREINFO at guest-physical {:#x}, {}-level page tables at {:#x}, {} MiB RAM",
            i.guest,
            i.release,
            i.kaslr_offset,
            i.symbols,
            i.vmcoreinfo_paddr,
            if i.five_level { 5 } else { 4 },
            i.page_table_root,
            i.ram_mib
        ),
        Reply::DebugSymbols { symbols, .. } => {
            for m in symbols {
                match m.offset {
                    Some(off) => println!(
                        "{:#018x} {} {}+{off:#x}",
                        m.symbol.addr + off,
                        m.symbol.kind,
                        m.symbol.name
                    ),
                    None => println!("{:#018x} {} {}", m.symbol.addr, m.symbol.kind, m.symbol.name),
                }
            }
        }
        Reply::DebugValue { value, .. } => {
            let at = value
                .symbol
                .as_deref()
                .map(|s| format!(" <{s}>"))
                .unwrap_or_default();
            println!(
                "{} = {}\n  ({}, {} bytes at {:#x}{at})",
                value.expr,
                serde_json::to_string_pretty(&value.value).unwrap_or_default(),
                value.type_name,
                value.size,
                value.address
            );
        }
        Reply::DebugTasks { tasks, torn, .. } => {
            println!("{:>7} {:>7} {:>7} S {:>3} COMM", "PID", "TGID", "PPID", "CPU");
            for t in tasks {
                let cpu = t.cpu.map(|c| c.to_string()).unwrap_or_else(|| "-".into());
                let comm = if t.kernel_thread {
                    format!("[{}]", t.comm)
                } else {
                    t.comm.clone()
                };
                println!(
                    "{:>7} {:>7} {:>7} {} {:>3} {comm}",
                    t.pid, t.tgid, t.ppid, t.state, cpu
                );
            }
            if let Some(why) = torn {
                println!("-- walk stopped early: {why} --");
            }
        }
        Reply::DebugDump { dump, .. } => println!(
            "{}: {} bytes ({} MiB of RAM, {} zero pages left out, {} segments) in {} ms",
            dump.path.display(),
            dump.bytes_written,
            dump.ram_bytes >> 20,
            dump.zero_pages_skipped,
            dump.segments,
            dump.millis
        ),
        Reply::DebugDumps { dumps, guest } if dumps.is_empty() => println!("{guest}: no vmcores"),
        Reply::DebugDumps { dumps, .. } => {
            for d in dumps {
                println!("{:>12} {}", d.bytes, d.path.display());
            }
        }
        Reply::DebugGdb(g) => {
            println!(
                "{}: gdb endpoint at {}; symbols from {} (.text at {:#x}, KASLR offset {:#x})",
                g.guest,
                g.socket.display(),
                g.symbol_file.display(),
                g.text_base,
                g.kaslr_offset
            );
            println!("{}", shell_words(&g.command));
        }
        Reply::DebugBacktrace { backtrace, .. } => backtrace::print(backtrace),
        Reply::DebugLog { records, torn, .. } => {
            print!("{}", vesper_api::format_dmesg(records));
            if *torn > 0 {
                println!("-- {torn} record(s) skipped: the guest was rewriting them --");
            }
        }
        Reply::End { .. } => {}
    }
}

/// `words` as one shell command line, each word quoted when it needs to be.
fn shell_words(words: &[String]) -> String {
    words
        .iter()
        .map(|w| {
            if !w.is_empty()
                && w.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_./=:,+@%".contains(c))
            {
                w.clone()
            } else {
                format!("'{}'", w.replace('\'', "'\\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A debug target that names a vmcore file rather than a VM (VM names have no '/').
fn looks_like_a_file(target: &str) -> bool {
    target.contains('/') || target.ends_with(".vmcore")
}

/// `vesper debug OP FILE`: the vmcore read in process, no daemon needed.
fn debug_core(cli: &Cli, path: &str, op: DebugOp) -> ExitCode {
    use vesper_debug::vmcore::{Vmcore, VmcoreError};
    let core = match Vmcore::open(path) {
        Ok(c) => c,
        Err(VmcoreError::Read { ref source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return fail(cli.json, 66, "no_input", &format!("{path}: no such file"))
        }
        Err(e) => return fail(cli.json, 65, "bad_vmcore", &format!("{path}: {e}")),
    };
    let ram = core.ram_ranges();
    // The dump's NT_PRSTATUS notes, CPU n at index n: `bt --cpu N` and running tasks.
    let cpus: Vec<vesper_debug::unwind::Registers> = core.cpus().iter().map(Into::into).collect();
    let ram_bytes = ram.iter().map(|r| r.end - r.start).sum();
    let kernel = match vesper_debug::Kernel::open(std::sync::Arc::new(core), &ram) {
        Ok(k) => k,
        Err(e) => return fail(cli.json, 65, "bad_vmcore", &format!("{path}: {e}")),
    };
    let dwarf = vesper_debug::dwarf::DwarfFiles::new();
    match vesper_api::debug::serve(&kernel, path, op, ram_bytes, &cpus, &dwarf) {
        Err(e) => api_fail(cli.json, e),
        Ok(reply) => {
            if cli.json {
                println!("{}", serde_json::json!({ "ok": true, "result": reply }));
            } else {
                print_human(&reply);
            }
            ExitCode::SUCCESS
        }
    }
}
