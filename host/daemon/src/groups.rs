//! Probe groups in a guest: members checked on the host, then loaded in order, all or
//! nothing; unloaded in reverse. The API and the failover engine use the same code.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde_json::json;
use vesper_api::{ApiError, ErrorCode, GroupMemberView, GroupView, Reply, Response};
use vesper_core::{Command, Reply as GuestReply};

use crate::daemon::{run_command, unexpected, Shared};
use crate::group_state::AppliedGroup;
use crate::modules::{check_params, insmod};

/// One member as the daemon loads it.
pub(crate) struct GroupImage {
    pub(crate) file_name: String,
    pub(crate) image: Vec<u8>,
    pub(crate) params: Vec<String>,
}

impl GroupImage {
    /// The members of a group file, in load order.
    pub(crate) fn from_group(g: vesper_groups::ProbeGroup) -> Vec<GroupImage> {
        g.members
            .into_iter()
            .map(|m| GroupImage {
                file_name: m.file_name(),
                image: m.image,
                params: m.params,
            })
            .collect()
    }
}

/// Builds a group's `spec` members (`vesper-groups`' builder) with `vesper-probespec`
/// for kernel `release` (the kit's own when `None`), from the kit vesperd uses and the
/// default build cache; blocking (kbuild), so run it off the async threads.
pub(crate) fn spec_builder(
    kit_dir: Option<PathBuf>,
    release: Option<String>,
) -> impl FnMut(&Path) -> Result<PathBuf, String> {
    move |spec| {
        let kit = vesper_guest_kit::Kit::load(kit_dir.as_deref()).map_err(|e| e.to_string())?;
        let cache = vesper_probespec::default_cache_dir();
        vesper_probespec::build_module(spec, &kit.dir, release.as_deref(), &cache)
    }
}

/// Reads and checks the group file at `path` off the async threads, its `spec` members
/// built for `release`.
pub(crate) async fn load_group(
    daemon: &Shared,
    path: PathBuf,
    release: Option<String>,
) -> Result<vesper_groups::ProbeGroup, String> {
    let kit_dir = daemon.config.kit_dir.clone();
    tokio::task::spawn_blocking(move || {
        let mut specs = spec_builder(kit_dir, release);
        vesper_groups::ProbeGroup::load(&path, &mut specs).map_err(|e| e.report())
    })
    .await
    .map_err(|e| format!("probe group check stopped: {e}"))?
}

/// Names of the modules loaded in `guest` now.
async fn loaded(daemon: &Shared, guest: &str) -> Result<Vec<String>, ApiError> {
    match run_command(daemon, guest, Command::List).await? {
        GuestReply::Modules(m) => Ok(m.into_iter().map(|m| m.name).collect()),
        other => Err(unexpected(other)),
    }
}

async fn unload(daemon: &Shared, guest: &str, name: &str) -> Result<(), ApiError> {
    let cmd = Command::Unload {
        name: name.to_string(),
        force: false,
    };
    match run_command(daemon, guest, cmd).await? {
        GuestReply::Unloaded { .. } => Ok(()),
        other => Err(unexpected(other)),
    }
}

fn code_name(code: ErrorCode) -> serde_json::Value {
    serde_json::to_value(code).unwrap_or_default()
}

/// Loads `members` in order; on a failure unloads the ones loaded, in reverse, and
/// fails naming the member and what the rollback did.
pub(crate) async fn apply(
    daemon: &Shared,
    guest: &str,
    group: &str,
    source: &str,
    members: Vec<GroupImage>,
) -> Response {
    let started = Instant::now();
    let _one_at_a_time = daemon.groups.op.lock().await;
    let now = loaded(daemon, guest).await?;
    let vermagic = daemon.guest_status(guest)?.guest.map(|i| i.vermagic);
    // Everything the host can check, for every member, before the first load.
    let mut names: Vec<String> = Vec::with_capacity(members.len());
    for (i, m) in members.iter().enumerate() {
        let refuse = |code, why: String| {
            let msg = format!(
                "group {group:?}: member {} ({}): {why}; nothing was loaded",
                i + 1,
                m.file_name
            );
            Err(ApiError::new(code, msg).with_detail(json!({
                "group": group,
                "failed": { "member": i + 1, "file": m.file_name, "module": null, "error": why },
                "rolled_back": [],
                "rollback_failed": [],
            })))
        };
        let info = match vesper_modcheck::check_module(
            &m.image,
            vermagic.as_deref(),
            daemon.config.max_image_size,
        ) {
            Ok(info) => info,
            Err(e) => return refuse(ErrorCode::BadModule, e.to_string()),
        };
        if let Err(e) = check_params(&m.params) {
            return refuse(ErrorCode::BadRequest, e.message);
        }
        if names.contains(&info.name) {
            return refuse(
                ErrorCode::BadRequest,
                format!("module {} is in the group twice", info.name),
            );
        }
        if now.contains(&info.name) {
            return refuse(
                ErrorCode::AlreadyLoaded,
                format!("module {} is loaded already", info.name),
            );
        }
        names.push(info.name);
    }
    if let Some((_, modules)) = daemon.groups.recorded(guest, group) {
        // A record whose modules are all gone (the guest restarted) is stale.
        if modules.iter().any(|m| now.contains(m)) {
            return Err(ApiError::new(
                ErrorCode::AlreadyLoaded,
                format!("group {group:?} is applied on {guest} already; `vesper group remove {guest} {group}` first"),
            ));
        }
        daemon.groups.forget(guest, group);
    }

    let total = members.len();
    let mut done: Vec<String> = Vec::with_capacity(total);
    for (i, m) in members.into_iter().enumerate() {
        let file_name = m.file_name.clone();
        match insmod(daemon, guest, &m.file_name, m.image, m.params, None).await {
            Ok(_) => done.push(names[i].clone()),
            Err(e) => {
                return Err(roll_back(
                    daemon,
                    guest,
                    group,
                    (i, total),
                    &file_name,
                    &names[i],
                    e,
                    done,
                )
                .await)
            }
        }
    }
    daemon
        .groups
        .applied
        .lock()
        .expect("groups lock")
        .entry(guest.to_string())
        .or_default()
        .push(AppliedGroup {
            name: group.to_string(),
            source: source.to_string(),
            modules: done.clone(),
        });
    tracing::info!(guest, group, modules = ?done, "probe group applied");
    Ok(Reply::GroupApplied {
        guest: guest.to_string(),
        group: group.to_string(),
        modules: done,
        millis: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Unloads `done` in reverse after member `at` failed with `e`; the error says which
/// member failed, why, and whether anything is left loaded.
#[allow(clippy::too_many_arguments)]
async fn roll_back(
    daemon: &Shared,
    guest: &str,
    group: &str,
    (at, total): (usize, usize),
    file_name: &str,
    module: &str,
    e: ApiError,
    done: Vec<String>,
) -> ApiError {
    let mut rolled_back = Vec::new();
    let mut left = Vec::new();
    for name in done.iter().rev() {
        match unload(daemon, guest, name).await {
            Ok(()) => rolled_back.push(name.clone()),
            Err(u) => {
                left.push(json!({ "module": name, "code": code_name(u.code), "error": u.message }))
            }
        }
    }
    let mut msg = format!(
        "group {group:?} on {guest}: member {} of {total} ({file_name}, module {module}) failed: {}",
        at + 1,
        e.message
    );
    if e.code == ErrorCode::InitStillRunning {
        msg.push_str(&format!(
            "; its init is still running in the guest and may yet end live: check `vesper lsmod {guest}`"
        ));
    }
    if rolled_back.is_empty() && left.is_empty() {
        msg.push_str("; nothing was loaded before it");
    } else if !rolled_back.is_empty() {
        msg.push_str(&format!(
            "; rolled back: unloaded {}",
            rolled_back.join(", ")
        ));
    }
    if !left.is_empty() {
        let names: Vec<String> = left
            .iter()
            .map(|l| {
                format!(
                    "{} ({})",
                    l["module"].as_str().unwrap_or("?"),
                    l["error"].as_str().unwrap_or("?")
                )
            })
            .collect();
        msg.push_str(&format!(
            "; ROLLBACK INCOMPLETE: still loaded: {}",
            names.join(", ")
        ));
    }
    tracing::warn!(guest, group, "probe group failed: {msg}");
    ApiError::new(e.code, msg).with_detail(json!({
        "group": group,
        "failed": {
            "member": at + 1,
            "file": file_name,
            "module": module,
            "code": code_name(e.code),
            "error": e.message,
        },
        "rolled_back": rolled_back,
        "rollback_failed": left,
    }))
}

/// Unloads a group's modules in reverse load order: `modules` given, or those recorded
/// when vesperd applied it.
pub(crate) async fn remove(
    daemon: &Shared,
    guest: &str,
    group: &str,
    modules: Option<Vec<String>>,
) -> Response {
    let started = Instant::now();
    let _one_at_a_time = daemon.groups.op.lock().await;
    let modules = match modules.or_else(|| daemon.groups.recorded(guest, group).map(|r| r.1)) {
        Some(m) => m,
        None => {
            return Err(ApiError::new(
                ErrorCode::NotLoaded,
                format!("no group {group:?} was applied on {guest} by this vesperd; give the group file instead of its name"),
            ))
        }
    };
    let (mut removed, mut not_loaded, mut failed) = (Vec::new(), Vec::new(), Vec::new());
    for name in modules.iter().rev() {
        match unload(daemon, guest, name).await {
            Ok(()) => removed.push(name.clone()),
            Err(e) if e.code == ErrorCode::NotLoaded => not_loaded.push(name.clone()),
            Err(e) => failed.push((name.clone(), e)),
        }
    }
    if failed.is_empty() {
        daemon.groups.forget(guest, group);
        return Ok(Reply::GroupRemoved {
            guest: guest.to_string(),
            group: group.to_string(),
            removed,
            not_loaded,
            millis: started.elapsed().as_secs_f64() * 1e3,
        });
    }
    let words: Vec<String> = failed
        .iter()
        .map(|(m, e)| format!("{m}: {}", e.message))
        .collect();
    let mut msg = format!(
        "group {group:?} on {guest}: could not unload {}",
        words.join("; ")
    );
    if !removed.is_empty() {
        msg.push_str(&format!("; unloaded {}", removed.join(", ")));
    }
    if !not_loaded.is_empty() {
        msg.push_str(&format!("; not loaded: {}", not_loaded.join(", ")));
    }
    let detail = json!({
        "group": group,
        "removed": removed,
        "not_loaded": not_loaded,
        "failed": failed.iter().map(|(m, e)| json!({ "module": m, "code": code_name(e.code), "error": e.message })).collect::<Vec<_>>(),
    });
    Err(ApiError::new(failed[0].1.code, msg).with_detail(detail))
}

/// The groups applied on `guest` and which of their members are loaded now.
pub(crate) async fn list(daemon: &Shared, guest: &str) -> Response {
    let now = loaded(daemon, guest).await?;
    let applied = daemon.groups.applied.lock().expect("groups lock");
    let groups = applied
        .get(guest)
        .map(|list| {
            list.iter()
                .map(|g| GroupView {
                    name: g.name.clone(),
                    source: g.source.clone(),
                    members: g
                        .modules
                        .iter()
                        .map(|m| GroupMemberView {
                            module: m.clone(),
                            loaded: now.contains(m),
                        })
                        .collect(),
                })
                .collect()
        })
        .unwrap_or_default();
    Ok(Reply::Groups {
        guest: guest.to_string(),
        groups,
    })
}
