//! Runs the failover engine in the daemon: every event in, decisions out as events,
//! actions carried out on this host's VMs.

use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use vesper_api::{BootDefinition, VmDefinition, VmStartRequest};
use vesper_events::{Event, EventKind, Source};
use vesper_failover::{Action, Engine, GuestSpec, Policy, View};

use crate::daemon::Shared;
use crate::events::now_ns;
use crate::groups::GroupImage;
use crate::modules::insmod;
use crate::vm_lifecycle::vm_stop;
use crate::vm_start::vm_start;

/// Longest the engine waits for a VM it starts to come up.
const START_TIMEOUT_SECS: u64 = 180;

/// Decides on every event, in order, and carries out each decision in its own task (a
/// slow VM start never delays the next decision).
pub async fn run(daemon: Shared, policy: Policy, mut feed: mpsc::UnboundedReceiver<Arc<Event>>) {
    let mut engine = Engine::new(policy.clone());
    tracing::info!("failover engine running:\n{}", policy.summary());
    while let Some(event) = feed.recv().await {
        if event.kind == EventKind::Decision {
            continue;
        }
        let view = View {
            running: daemon.running(),
        };
        for d in engine.on_event(&event, &view, now_ns()) {
            let mut e = d.to_event(now_ns());
            announce_probe_group(&policy, &d.action, &mut e.payload);
            let published = daemon.bus.publish(
                &e.guest,
                EventKind::Decision,
                Source::Engine,
                None,
                e.payload,
            );
            tracing::info!(seq = published.seq, "failover decision: {}", d.reason);
            tokio::spawn(carry_out(
                daemon.clone(),
                policy.clone(),
                d.action,
                event.clone(),
            ));
        }
    }
}

/// A decision that starts a guest with a `probe_group` says so: the group file in the
/// payload and the reason.
fn announce_probe_group(policy: &Policy, action: &Action, payload: &mut serde_json::Value) {
    let started = match action {
        Action::Restart { guest } => guest,
        Action::StartStandby { standby, .. } => standby,
        _ => return,
    };
    let Some(r) = policy.guest(started).and_then(|g| g.probe_group.as_ref()) else {
        return;
    };
    let path = r.path.display().to_string();
    if let Some(reason) = payload["reason"].as_str() {
        payload["reason"] =
            format!("{reason}; then pushes probe group {path} (all or nothing)").into();
    }
    payload["probe_group"] = path.into();
}

async fn carry_out(daemon: Shared, policy: Policy, action: Action, event: Arc<Event>) {
    // A panicked guest's vmcore is written before anything touches the VM.
    let touches = match &action {
        Action::Restart { guest } | Action::Stop { guest } | Action::Fence { guest } => {
            Some(guest.as_str())
        }
        Action::StartStandby {
            replaces,
            stop_failed: true,
            ..
        } => Some(replaces.as_str()),
        _ => None,
    };
    if let Some(guest) = touches {
        crate::debug::wait_for_dump(&daemon, guest).await;
    }
    let result = match action {
        Action::Restart { guest } => {
            let _ = vm_stop(&daemon, &guest).await;
            start(&daemon, &policy, &guest).await
        }
        Action::StartStandby {
            standby,
            replaces,
            stop_failed,
        } => {
            if stop_failed {
                if let Err(e) = vm_stop(&daemon, &replaces).await {
                    tracing::warn!(guest = %replaces, "could not stop the failed guest: {}", e.message);
                }
            }
            start(&daemon, &policy, &standby).await
        }
        Action::Stop { guest } | Action::Fence { guest } => vm_stop(&daemon, &guest)
            .await
            .map(|_| ())
            .map_err(|e| e.message),
        Action::Hook {
            command,
            timeout_secs,
            env,
        } => hook(&command, timeout_secs, &env, &event).await,
        Action::GiveUp { .. } => Ok(()),
    };
    if let Err(why) = result {
        tracing::warn!("failover action after event {} failed: {why}", event.seq);
    }
}

/// Starts `guest` as the policy declares it and pushes its probes.
async fn start(daemon: &Shared, policy: &Policy, guest: &str) -> Result<(), String> {
    let spec = policy
        .guest(guest)
        .ok_or_else(|| format!("{guest} is not declared in the policy"))?;
    let definition = definition(spec)?;
    let req = VmStartRequest {
        name: spec.name.clone(),
        definition: Some(definition),
        kit_dir: None,
        wait_secs: START_TIMEOUT_SECS,
    };
    vm_start(daemon, req).await.map_err(|e| e.message)?;
    for probe in &spec.probes {
        let path = probe_path(daemon, &probe.module)?;
        let image = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file_name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        insmod(daemon, guest, &file_name, image, probe.params.clone(), None)
            .await
            .map_err(|e| e.message)?;
    }
    if let Some(r) = &spec.probe_group {
        // Read again now: the file may have changed since the policy was checked.
        // Spec members are built for the kernel the standby just booted.
        let release = daemon
            .guest_status(guest)
            .ok()
            .and_then(|s| s.guest)
            .map(|g| g.kernel_release);
        let group = crate::groups::load_group(daemon, r.path.clone(), release).await?;
        let (name, source) = (group.name.clone(), r.path.display().to_string());
        crate::groups::apply(daemon, guest, &name, &source, GroupImage::from_group(group))
            .await
            .map_err(|e| format!("probe group {source}: {}", e.message))?;
    }
    tracing::info!(
        guest,
        "failover engine started the guest and pushed {} probe(s){}",
        spec.probes.len(),
        if spec.probe_group.is_some() {
            " and its probe group"
        } else {
            ""
        }
    );
    Ok(())
}

/// The VM `spec` declares: its definition file, read again now (it may have changed
/// since the policy was checked; vm start checks it again), or a kit test guest built
/// from the policy's own keys.
fn definition(spec: &GuestSpec) -> Result<VmDefinition, String> {
    if let Some(r) = &spec.definition {
        let def = vesper_api::vmdef::from_toml_file(&r.path).map_err(|e| {
            let mut why = format!("{}: VM definition {}: {e}", spec.name, r.path.display());
            let mut cause = std::error::Error::source(&e);
            while let Some(c) = cause {
                why.push_str(&format!(": {c}"));
                cause = c.source();
            }
            why
        })?;
        if def.memory_mib != spec.memory_mib {
            tracing::warn!(
                guest = %spec.name,
                "{} now gives {} MiB, the policy was checked with {} MiB",
                r.path.display(),
                def.memory_mib,
                spec.memory_mib
            );
        }
        return Ok(def);
    }
    Ok(VmDefinition {
        memory_mib: spec.memory_mib,
        cpus: spec.cpus,
        vmm: spec
            .vmm
            .parse()
            .map_err(|e: String| format!("{}: {e}", spec.name))?,
        boot: BootDefinition {
            kernel: spec.kernel.clone(),
            mode: Some(spec.mode.clone()),
            ..BootDefinition::default()
        },
        ..VmDefinition::default()
    })
}

/// A probe named in the policy: a path to a `.ko`, or the name of a guest-kit module.
fn probe_path(daemon: &Shared, module: &str) -> Result<std::path::PathBuf, String> {
    let p = Path::new(module);
    if p.is_file() {
        return Ok(p.to_path_buf());
    }
    let kit =
        vesper_guest_kit::Kit::load(daemon.config.kit_dir.as_deref()).map_err(|e| e.to_string())?;
    let path = kit.module(module);
    if path.is_file() {
        Ok(path)
    } else {
        Err(format!(
            "probe {module:?} is neither a file nor a module of the guest kit ({})",
            kit.modules_dir.display()
        ))
    }
}

/// Runs a hook with the event in its environment, killed after `timeout_secs`.
async fn hook(
    command: &[String],
    timeout_secs: u64,
    env: &[(String, String)],
    event: &Event,
) -> Result<(), String> {
    let (prog, args) = command.split_first().ok_or("empty hook command")?;
    let child = tokio::process::Command::new(prog)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("hook {prog}: cannot run it: {e}"))?;
    match tokio::time::timeout(Duration::from_secs(timeout_secs), child.wait_with_output()).await {
        Err(_) => Err(format!(
            "hook {prog} for event {} did not finish within {timeout_secs} s; killed",
            event.seq
        )),
        Ok(Err(e)) => Err(format!("hook {prog}: {e}")),
        Ok(Ok(out)) if out.status.success() => {
            tracing::info!(hook = %prog, event = event.seq, "hook ran");
            Ok(())
        }
        Ok(Ok(out)) => Err(format!(
            "hook {prog} for event {} failed ({}): {}",
            event.seq,
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}
