//! `vesperd`: the Vesper host daemon.
#![deny(missing_docs)]

mod adopt;
mod attach;
mod attach_libvirt;
mod attach_slots;
mod attach_task;
mod attached_vm;
mod builtin_gdb;
mod cluster;
mod console;
mod daemon;
mod debug;
mod debug_state;
mod events;
mod failover;
mod frontend_check;
mod gdbproxy;
mod group_state;
mod groups;
mod guest;
mod host_probe_state;
mod host_probes;
mod launch;
mod modules;
mod persist;
mod qmp;
mod qmp_events;
mod qmp_mux;
mod ram_source;
mod relay;
mod server;
mod simulate;
mod streams;
mod virsh;
mod vm_lifecycle;
mod vm_start;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

/// The Vesper host daemon: runs test VMs, serves their shared regions, pushes probes.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Directory for the API socket and per-guest state (default: $XDG_RUNTIME_DIR/vesper
    /// or /tmp/vesper-UID).
    #[arg(long)]
    run_dir: Option<PathBuf>,
    /// API socket path (default: RUN_DIR/vesperd.sock, or $VESPER_SOCKET).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Guest-kit directory used by `vm start` (default: the repository's .vesper-kit).
    #[arg(long)]
    kit_dir: Option<PathBuf>,
    /// Longest silence (ms) from a guest during a command before it is abandoned.
    #[arg(long, default_value_t = 10_000)]
    step_timeout_ms: u64,
    /// Largest module image accepted, in bytes.
    #[arg(long, default_value_t = vesper_modcheck::DEFAULT_MAX_IMAGE_SIZE)]
    max_image_size: u64,
    /// Also allow this uid on the API socket (repeatable; the daemon's own uid and root
    /// are always allowed).
    #[arg(long = "allow-uid")]
    allow_uids: Vec<u32>,
    /// Allow members of this primary gid on the API socket (repeatable).
    #[arg(long = "allow-gid")]
    allow_gids: Vec<u32>,
    /// Permission bits of the API socket, octal (others than the owner need it widened,
    /// and are then still checked against the allowlist).
    #[arg(long, default_value = "600", value_parser = parse_mode)]
    socket_mode: u32,
    /// Also listen here for Pacemaker alerts (`vesper cluster alert`, run by Pacemaker as
    /// `hacluster`): a socket that takes nothing but alerts, which become `cluster` events.
    #[arg(long)]
    alert_socket: Option<PathBuf>,
    /// Group (name or gid) that may use the alert socket.
    #[arg(long, default_value = "haclient", requires = "alert_socket")]
    alert_group: String,
    /// Save a vmcore of a guest that panics (QEMU pauses it at pvpanic; the dump is
    /// written to RUN_DIR/dumps/GUEST/ before the failover engine touches the VM,
    /// which then goes on). The default: a policy's `[dump] on_panic` and each
    /// guest's `dump = true|false` override it.
    #[arg(long)]
    dump_on_panic: bool,
    /// Failover policy (TOML) for the engine; without it vesperd only reports events.
    #[arg(long)]
    policy: Option<PathBuf>,
    /// Load testing: also run this many simulated guests (`sim0`…) that speak the guest
    /// protocol from host threads over real shared regions.
    #[arg(long, default_value_t = 0)]
    simulate_guests: usize,
    /// Watched-service exits each simulated guest reports per second.
    #[arg(long, default_value_t = 1.0)]
    simulate_rate: f64,
    /// Events a subscriber may fall behind before it is sent a gap.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    event_buffer: u32,
    /// A vCPU that makes no progress this long (out of the guest, stopped, or starved
    /// of a host CPU) raises a `vcpu_stall` event (host probes, eBPF).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    stall_threshold_ms: u64,
    /// Do not load the host-kernel eBPF probes (`vesper host stat`, `vcpu_stall`).
    #[arg(long)]
    no_host_probes: bool,
    /// Load this eBPF object as the host probes instead of the built-in one.
    #[arg(long)]
    host_probe_object: Option<PathBuf>,
}

fn parse_mode(s: &str) -> Result<u32, String> {
    u32::from_str_radix(s, 8)
        .ok()
        .filter(|m| *m <= 0o777)
        .ok_or_else(|| format!("{s:?} is not an octal permission mode like 600 or 660"))
}

/// A group name or number, as a gid.
fn group_id(group: &str) -> Result<u32, String> {
    if let Ok(gid) = group.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(group) {
        Ok(Some(g)) => Ok(g.gid.as_raw()),
        Ok(None) => Err(format!(
            "no group {group:?} on this host (Pacemaker's packages create haclient; give a group that exists, or a gid)"
        )),
        Err(e) => Err(format!("cannot look up group {group:?}: {e}")),
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VESPER_LOG")
                .unwrap_or_else(|_| "info,gdbstub=warn".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let run_dir = args.run_dir.unwrap_or_else(vesper_api::default_run_dir);
    let socket = args.socket.unwrap_or_else(|| {
        if std::env::var_os("VESPER_SOCKET").is_some() {
            vesper_api::default_socket()
        } else {
            vesper_api::run_dir::api_socket(&run_dir)
        }
    });
    let policy = match args
        .policy
        .as_deref()
        .map(|p| {
            let policy = vesper_failover::Policy::load(p)?;
            let kit_dir = args.kit_dir.clone();
            policy.check_probe_groups(|p| check_probe_group(p, kit_dir.clone()))?;
            Ok::<_, vesper_failover::PolicyError>(policy)
        })
        .transpose()
    {
        Ok(p) => p,
        Err(e) => {
            let mut msg = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("vesperd: invalid failover policy: {msg}");
            return ExitCode::from(78); // EX_CONFIG
        }
    };
    let alert_socket = match args.alert_socket.map(|p| (p, group_id(&args.alert_group))) {
        None => None,
        Some((p, Ok(gid))) => Some((p, gid)),
        Some((_, Err(why))) => {
            eprintln!("vesperd: --alert-group: {why}");
            return ExitCode::from(64); // EX_USAGE
        }
    };
    let config = daemon::DaemonConfig {
        run_dir,
        socket,
        kit_dir: args.kit_dir,
        step_timeout: Duration::from_millis(args.step_timeout_ms),
        dump_on_panic: args.dump_on_panic,
        max_image_size: args.max_image_size,
        allow_uids: args.allow_uids,
        allow_gids: args.allow_gids,
        socket_mode: args.socket_mode,
        alert_socket,
        event_buffer: args.event_buffer as usize,
        policy,
        simulate_guests: args.simulate_guests,
        simulate_rate: args.simulate_rate,
        host_probes: host_probe_state::HostProbeConfig {
            enabled: !args.no_host_probes,
            stall_threshold: Duration::from_millis(args.stall_threshold_ms),
            object: args.host_probe_object,
        },
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vesperd: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(server::run(config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vesperd: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A policy's `probe_group` file, read and checked as `vesper group apply` would (its
/// `spec` members built for the kit's kernel).
fn check_probe_group(path: &std::path::Path, kit_dir: Option<PathBuf>) -> Result<(), String> {
    let mut specs = groups::spec_builder(kit_dir, None);
    vesper_groups::ProbeGroup::load(path, &mut specs)
        .map(drop)
        .map_err(|e| e.report())
}
