//! `vesper`: operator CLI for vesperd.

mod args;
mod backtrace;
mod cluster;
mod exit;
mod kit;
mod output;
mod probe;
mod request;
mod vm_attach;
mod vm_start;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;

use crate::args::{Cli, Cmd, GroupCmd, PolicyCmd, RelayCmd, VmCmd};
use crate::exit::{api_fail, client_fail, fail};
use crate::output::{print_human, vm_line};
use crate::request::{build_request, reply_timeout};
use vesper_api::{
    call, call_stream, default_socket, ApiError, DebugOp, EventKind, Filter, Reply, Request,
    Response,
};

fn main() -> ExitCode {
    // Output piped into `head` should end us quietly, as it ends any Unix tool, not
    // panic in println!.
    // SAFETY: setting a signal's disposition to the default before any other thread
    // exists; no handler code is involved.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    if let Cmd::Probe { cmd } = &cli.cmd {
        return probe::run(&cli, cmd);
    }
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
    if let Cmd::Group {
        cmd: GroupCmd::Check { file },
    } = &cli.cmd
    {
        return match request::load_group(&cli, file, || None) {
            Ok(g) => {
                if cli.json {
                    println!(
                        "{}",
                        serde_json::json!({ "ok": true, "result": { "valid": true, "group": g.name, "modules": g.modules() } })
                    );
                } else {
                    print!("{}: valid\n{}", file.display(), g.summary());
                }
                ExitCode::SUCCESS
            }
            Err((code, kind, msg)) => fail(cli.json, code, kind, &msg),
        };
    }
    if let Cmd::Policy {
        cmd: PolicyCmd::Check { file },
    } = &cli.cmd
    {
        return match check_policy(&cli, file) {
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
    let req = match build_request(&cli) {
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

/// `vesper policy check`: the policy and every probe group it names.
fn check_policy(cli: &Cli, file: &std::path::Path) -> Result<String, vesper_failover::PolicyError> {
    let policy = vesper_failover::Policy::load(file)?;
    policy.check_probe_groups(|p| {
        let mut specs = probe::group_spec_builder(kit::KitFinder::new(cli, None), || None);
        vesper_groups::ProbeGroup::load(p, &mut specs)
            .map(drop)
            .map_err(|e| e.report())
    })?;
    Ok(policy.summary())
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
            ..
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
