//! A parsed command turned into the daemon request it stands for, checked on this
//! side first (names, kinds, paths), and how long to wait for its reply.

use std::time::Duration;

use crate::args::{Cli, Cmd, DebugCmd, GroupCmd, HostCmd, RelayCmd, VmCmd};
use vesper_api::{DebugOp, GroupMemberImage, Request};

/// How long to wait for the daemon's reply: --timeout, and for insmod at least the
/// init wait with a minute to spare for the transfer.
pub(crate) fn reply_timeout(cli: &Cli) -> Duration {
    let asked = Duration::from_secs(cli.timeout);
    match &cli.cmd {
        Cmd::Insmod { init_timeout, .. } => {
            let init = init_timeout.map_or(vesper_api::DEFAULT_INIT_TIMEOUT, Duration::from_secs);
            asked.max(init + Duration::from_secs(60))
        }
        // Attaching waits for the frontend, and a domain's start under TCG.
        Cmd::Vm {
            cmd: VmCmd::Attach(a),
        } => asked.max(Duration::from_secs(a.wait + 150)),
        // A member's init may take the default init wait.
        Cmd::Group {
            cmd: GroupCmd::Apply { .. },
        } => asked.max(vesper_api::DEFAULT_INIT_TIMEOUT + Duration::from_secs(60)),
        _ => asked,
    }
}

/// A group file read and checked whole, its `spec` members built for the kernel
/// `release` gives (asked only if there is a spec), or the refusal that names its line.
pub(crate) fn load_group(
    cli: &Cli,
    file: &std::path::Path,
    release: impl FnMut() -> Option<String>,
) -> Result<vesper_groups::ProbeGroup, Refusal> {
    let kits = crate::kit::KitFinder::new(cli, None);
    let mut specs = crate::probe::group_spec_builder(kits, release);
    vesper_groups::ProbeGroup::load(file, &mut specs).map_err(|e| (65, "invalid_group", e.report()))
}

pub(crate) use crate::exit::Refusal;

pub(crate) fn build_request(cli: &Cli) -> Result<Request, Refusal> {
    Ok(match &cli.cmd {
        Cmd::Vm {
            cmd: VmCmd::Start(start),
        } => start.request()?,
        Cmd::Vm {
            cmd: VmCmd::Attach(attach),
        } => attach.request()?,
        Cmd::Vm {
            cmd: VmCmd::Detach { name },
        } => Request::VmDetach { name: name.clone() },
        Cmd::Vm {
            cmd: VmCmd::Stop { name },
        } => Request::VmStop { name: name.clone() },
        Cmd::Vm {
            cmd: VmCmd::Fence { name },
        } => Request::VmFence {
            name: name.clone(),
            fenced: Some(true),
        },
        Cmd::Vm {
            cmd: VmCmd::Unfence { name },
        } => Request::VmFence {
            name: name.clone(),
            fenced: Some(false),
        },
        Cmd::Vm {
            cmd: VmCmd::Fenced { name },
        } => Request::VmFence {
            name: name.clone(),
            fenced: None,
        },
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
        Cmd::Group {
            cmd: GroupCmd::Apply { guest, file },
        } => {
            // Spec members are built for the guest's own kernel.
            let g = load_group(cli, file, || crate::probe::guest_release(cli, guest))?;
            Request::GroupApply {
                guest: guest.clone(),
                group: g.name.clone(),
                source: std::path::absolute(file)
                    .unwrap_or_else(|_| file.clone())
                    .display()
                    .to_string(),
                members: g
                    .members
                    .iter()
                    .map(|m| GroupMemberImage::new(&m.file_name(), &m.image, m.params.clone()))
                    .collect(),
            }
        }
        Cmd::Group {
            cmd: GroupCmd::Remove { guest, group },
        } => {
            // A path names a file; a bare word is a group vesperd applied.
            let path = std::path::Path::new(group);
            if group.ends_with(".toml") || group.contains('/') {
                let g = load_group(cli, path, || crate::probe::guest_release(cli, guest))?;
                Request::GroupRemove {
                    guest: guest.clone(),
                    modules: Some(g.modules()),
                    group: g.name,
                }
            } else {
                Request::GroupRemove {
                    guest: guest.clone(),
                    group: group.clone(),
                    modules: None,
                }
            }
        }
        Cmd::Group {
            cmd: GroupCmd::List { guest },
        } => Request::GroupList {
            guest: guest.clone(),
        },
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
        Cmd::Host {
            cmd: HostCmd::Stat { guest },
        } => Request::HostStat {
            guest: guest.clone(),
        },
        Cmd::Relay {
            cmd: RelayCmd::Cat { .. },
        }
        | Cmd::Events { .. }
        | Cmd::Cluster { .. }
        | Cmd::Probe { .. }
        | Cmd::Policy { .. }
        | Cmd::Group {
            cmd: GroupCmd::Check { .. },
        }
        | Cmd::Vm {
            cmd: VmCmd::Status { .. },
        } => unreachable!("handled in main"),
    })
}
