//! `vesper probe check|build|run`: probe specs turned into modules for a guest's kernel
//! (`vesper-probespec`), pushed with the ordinary insmod request and followed through
//! the relay stream.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use vesper_api::{call, call_stream, default_socket, Reply, Request};
use vesper_probespec::{KernelFiles, KernelInfo, SpecError};

use crate::args::{Cli, KernelArgs, ProbeCmd};
use crate::exit::{api_fail, client_fail, fail};
use crate::kit::KitFinder;
use crate::output::print_human;

fn spec_fail(json: bool, spec: &Path, e: &SpecError) -> ExitCode {
    let (code, kind) = match e {
        SpecError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound => {
            (66, "no_input")
        }
        SpecError::Io { .. } => (74, "io_error"),
        SpecError::Kernel { .. } => (66, "no_kernel_files"),
        SpecError::Build { .. } => (70, "build_failed"),
        _ => (65, "invalid_spec"),
    };
    fail(json, code, kind, &e.report(spec))
}

fn files(cli: &Cli, k: &KernelArgs, release: Option<&str>) -> Result<KernelFiles, SpecError> {
    let kit = KitFinder::new(cli, k.kit.clone()).find(release)?;
    KernelFiles::from_kit(&kit, k.kernel.as_deref().or(release))
}

fn cache(k: &KernelArgs) -> PathBuf {
    k.cache
        .clone()
        .unwrap_or_else(vesper_probespec::default_cache_dir)
}

pub(crate) fn run(cli: &Cli, cmd: &ProbeCmd) -> ExitCode {
    match cmd {
        ProbeCmd::Check { spec, kernel } => {
            let checked = std::fs::read_to_string(spec)
                .map_err(|source| SpecError::Io {
                    path: spec.clone(),
                    source,
                })
                .and_then(|text| {
                    let spec_ast = vesper_probespec::parse(&text)?;
                    let f = files(cli, kernel, None)?;
                    let k = KernelInfo::load(&f)?;
                    vesper_probespec::check(&spec_ast, &k, &vesper_probespec::default_name(spec))
                });
            match checked {
                Err(e) => spec_fail(cli.json, spec, &e),
                Ok(plan) => {
                    if cli.json {
                        println!(
                            "{}",
                            serde_json::json!({ "ok": true, "result": { "valid": true, "module": plan.module, "probe": plan.name, "layout": plan.layout.to_string() } })
                        );
                    } else {
                        println!(
                            "{}: valid: module {}, record {} bytes: {}",
                            spec.display(),
                            plan.module,
                            plan.layout.size,
                            plan.layout
                                .fields
                                .iter()
                                .map(|f| format!("{} {}", f.name, f.ty))
                                .collect::<Vec<_>>()
                                .join(", ")
                        );
                    }
                    ExitCode::SUCCESS
                }
            }
        }
        ProbeCmd::Build { spec, kernel, out } => {
            let t = Instant::now();
            let built = files(cli, kernel, None)
                .and_then(|f| vesper_probespec::build(spec, &f, &cache(kernel)));
            let b = match built {
                Ok(b) => b,
                Err(e) => return spec_fail(cli.json, spec, &e),
            };
            let mut ko = b.ko.clone();
            if let Some(out) = out {
                if let Err(e) = std::fs::copy(&b.ko, out) {
                    return fail(
                        cli.json,
                        73,
                        "io_error",
                        &format!("cannot write {}: {e}", out.display()),
                    );
                }
                ko = out.clone();
            }
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if cli.json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "result": { "ko": ko, "module": b.module, "probe": b.probe, "cached": b.cached, "key": b.key, "millis": ms } })
                );
            } else {
                println!(
                    "{} ({}, {} in {ms:.0} ms)",
                    ko.display(),
                    b.module,
                    if b.cached { "cached" } else { "built" }
                );
            }
            ExitCode::SUCCESS
        }
        ProbeCmd::Run {
            guest,
            spec,
            kernel,
            count,
            duration,
            keep,
        } => run_spec(
            cli,
            guest,
            spec,
            kernel,
            Follow {
                count: *count,
                duration: duration.map(Duration::from_secs),
                keep: *keep,
            },
        ),
    }
}

/// How long `probe run` follows, and what it leaves behind.
struct Follow {
    count: Option<u64>,
    duration: Option<Duration>,
    keep: bool,
}

/// Unloads `module` from `guest` (a failure is logged: the run's own result stands).
fn unload(socket: &Path, guest: &str, module: &str, timeout: Duration) {
    let rm = Request::Rmmod {
        guest: guest.to_string(),
        name: module.to_string(),
        force: false,
    };
    match call(socket, &rm, timeout) {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::warn!(module, "unloading after run: {}", e.message),
        Err(e) => tracing::warn!(module, "unloading after run: {e}"),
    }
}

/// On SIGINT or SIGTERM, unloads `module` before exiting (128 + the signal), so an
/// interrupted run leaves nothing loaded. The signals are blocked in this thread (and
/// the threads it starts later) and taken by one waiting thread.
fn unload_on_interrupt(socket: PathBuf, guest: String, module: String, timeout: Duration) {
    use nix::sys::signal::{SigSet, Signal};
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    if let Err(e) = set.thread_block() {
        tracing::warn!("cannot catch Ctrl-C ({e}): an interrupted run leaves {module} loaded");
        return;
    }
    std::thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("vesper: {sig}: unloading {module} from {guest}");
            unload(&socket, &guest, &module, timeout);
            std::process::exit(128 + sig as i32);
        }
    });
}

fn run_spec(cli: &Cli, guest: &str, spec: &Path, kernel: &KernelArgs, follow: Follow) -> ExitCode {
    let Follow {
        count,
        duration,
        keep,
    } = follow;
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let timeout = Duration::from_secs(cli.timeout);
    let started = Instant::now();
    // The guest's own kernel, unless told otherwise.
    let release = match call(
        &socket,
        &Request::VmStatus {
            name: guest.to_string(),
        },
        timeout,
    ) {
        Err(e) => return client_fail(cli.json, e),
        Ok(Err(e)) => return api_fail(cli.json, e),
        Ok(Ok(Reply::VmStatus(v))) => v.guest.map(|g| g.kernel_release),
        Ok(Ok(other)) => {
            return fail(
                cli.json,
                70,
                "internal",
                &format!("unexpected reply {other:?}"),
            )
        }
    };
    let built = files(cli, kernel, release.as_deref())
        .and_then(|f| vesper_probespec::build(spec, &f, &cache(kernel)));
    let b = match built {
        Ok(b) => b,
        Err(e) => return spec_fail(cli.json, spec, &e),
    };
    let image = match std::fs::read(&b.ko) {
        Ok(i) => i,
        Err(e) => {
            return fail(
                cli.json,
                74,
                "io_error",
                &format!("cannot read {}: {e}", b.ko.display()),
            )
        }
    };
    let file_name = format!("{}.ko", b.module);
    match call(
        &socket,
        &Request::insmod(guest, &file_name, &image, Vec::new()),
        timeout,
    ) {
        Err(e) => return client_fail(cli.json, e),
        Ok(Err(e)) => return api_fail(cli.json, e),
        Ok(Ok(_)) => {}
    }
    tracing::info!(module = %b.module, cached = b.cached, ms = started.elapsed().as_millis() as u64, "probe loaded");
    if !keep {
        unload_on_interrupt(socket.clone(), guest.to_string(), b.module.clone(), timeout);
    }
    if !cli.json {
        eprintln!(
            "vesper: {} {} and loaded in {guest} in {:.0} ms; following channel {}",
            b.module,
            if b.cached { "from the cache" } else { "built" },
            started.elapsed().as_secs_f64() * 1e3,
            b.probe
        );
    }
    let req = Request::RelayCat {
        guest: guest.to_string(),
        module: b.module.clone(),
        channel: Some(b.probe.clone()),
        follow: true,
    };
    let mut seen = 0u64;
    let mut failure = None;
    let following = Instant::now();
    // With --duration, a read waits at most that long: a quiet probe ends the run too.
    let out = call_stream(&socket, &req, duration, |r| match r {
        Ok(Reply::End { .. }) => false,
        Ok(reply) => {
            if cli.json {
                println!("{}", serde_json::json!({ "ok": true, "result": reply }));
            } else {
                print_human(&reply);
            }
            if matches!(reply, Reply::Record(_)) {
                seen += 1;
            }
            count.is_none_or(|c| seen < c) && duration.is_none_or(|d| following.elapsed() < d)
        }
        Err(e) => {
            failure = Some(e);
            false
        }
    });
    if !keep {
        unload(&socket, guest, &b.module, timeout);
    }
    // The --duration ran out while no record came: the end asked for, not a failure.
    let out = match out {
        Err(vesper_api::ClientError::Timeout(_)) if duration.is_some() => Ok(()),
        other => other,
    };
    match (out, failure) {
        (Err(e), _) => client_fail(cli.json, e),
        (Ok(()), Some(e)) => api_fail(cli.json, e),
        (Ok(()), None) => ExitCode::SUCCESS,
    }
}

/// Builds a probe group's `spec` members (`vesper-groups`' builder) for `release`, the
/// kit's kernel when `None`: the kit `kits` finds, the default cache; a spec's error is
/// reported with its own line and column.
pub(crate) fn group_spec_builder(
    kits: KitFinder,
    mut release: impl FnMut() -> Option<String>,
) -> impl FnMut(&Path) -> Result<PathBuf, String> {
    let mut resolved: Option<Option<String>> = None;
    move |spec| {
        let release = resolved.get_or_insert_with(&mut release).clone();
        let kit = kits.find(release.as_deref()).map_err(|e| e.report(spec))?;
        let cache = vesper_probespec::default_cache_dir();
        vesper_probespec::build_module(spec, &kit, release.as_deref(), &cache)
    }
}

/// The kernel release `guest` runs, as vesperd knows it (`None` when it does not, or
/// cannot be asked: the kit's kernel is used then).
pub(crate) fn guest_release(cli: &Cli, guest: &str) -> Option<String> {
    let socket = cli.socket.clone().unwrap_or_else(default_socket);
    let req = Request::VmStatus {
        name: guest.to_string(),
    };
    match call(&socket, &req, Duration::from_secs(cli.timeout)) {
        Ok(Ok(Reply::VmStatus(v))) => v.guest.map(|g| g.kernel_release),
        _ => None,
    }
}
