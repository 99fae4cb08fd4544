//! The frontend check on a running guest: its console and RAM read, `vm start`'s wait
//! for a refusal, its timeout's message, and `vm status`.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vesper_api::{ApiError, ErrorCode, Reply, Response, VmStatus, Vmm};
use vesper_debug::modules::{loaded_modules, LoadedModule};
use vesper_debug::{Kernel, KernelMemory};

use super::{console_release, diagnose, evidence, refusal, KernelView, Ram, Stage};
use crate::daemon::Shared;
use crate::debug_state::Kernels;

/// How often `vm start` looks for a refusal while it waits.
const POLL: Duration = Duration::from_millis(250);
/// Console bytes looked at, from its end.
const MAX_CONSOLE: u64 = 8 << 20;
/// Console lines an error message ends with.
const TAIL: usize = 15;

/// Reads the guest's RAM as `vesper debug` does: through the kernels `vesper debug`
/// keeps when there are (`vm status`: a kernel found once is not looked for again).
fn read_ram(st: &VmStatus, kernels: Option<&Kernels>) -> Ram {
    if st.vmm == Vmm::Builtin {
        return Ram::NotRead("a builtin VM's RAM is not read for this".into());
    }
    let Some(pid) = st.pid else {
        return Ram::NotRead("no QEMU process yet".into());
    };
    let bytes = u64::from(st.memory_mib) << 20;
    // Mapping it is cheap and tells a RAM that cannot be read from one with no kernel.
    let ram = match crate::debug::map_ram(&st.name, pid, bytes) {
        Ok(r) => r,
        Err(e) => return Ram::NotRead(e.message),
    };
    let k = match kernels {
        Some(kernels) => kernels.get(&st.name, pid, bytes).map_err(|e| e.message),
        None => {
            let ranges = ram.ranges();
            Kernel::open(Arc::new(ram), &ranges)
                .map(Arc::new)
                .map_err(|e| e.to_string())
        }
    };
    match k {
        Ok(k) => Ram::Kernel(kernel_view(&k)),
        Err(e) => Ram::NoKernel(e),
    }
}

/// What the kernel found in RAM says: its release, boot stage, modules and log.
fn kernel_view(k: &Kernel) -> KernelView {
    let state = k
        .symbols()
        .lookup("system_state")
        .and_then(|s| k.read_u32(s.addr).ok());
    // SYSTEM_RUNNING's value moved between releases: the kernel's BTF says what it is.
    let running = k.btf().ok().and_then(|b| b.enum_value("SYSTEM_RUNNING"));
    let stage = match (state, running) {
        (Some(s), Some(r)) if i64::from(s) < r => Stage::Booting,
        (Some(s), Some(r)) if i64::from(s) > r => Stage::Ending,
        _ => Stage::Running,
    };
    let modules = loaded_modules(k)
        .map(|ms| {
            ms.into_iter()
                .map(|LoadedModule { name, state, .. }| (name, state.to_string()))
                .collect()
        })
        .map_err(|e| e.to_string());
    KernelView {
        release: k.release().to_string(),
        stage,
        modules,
        log: kernel_log(k),
    }
}

/// The kernel's log lines from its printk ring (empty if it cannot be read).
fn kernel_log(k: &Kernel) -> Vec<String> {
    let layout =
        vesper_debug::printk::PrintkLayout::from_vmcoreinfo(|key| k.vmcoreinfo().lookup(key));
    let log = layout.map_err(|e| e.to_string()).and_then(|l| {
        vesper_debug::printk::read_log(k as &dyn KernelMemory, &l).map_err(|e| e.to_string())
    });
    match log {
        Ok(log) => log
            .records
            .iter()
            .flat_map(|r| r.text.lines().map(str::to_string))
            .collect(),
        Err(e) => {
            tracing::debug!(release = k.release(), "kernel log unreadable: {e}");
            Vec::new()
        }
    }
}

/// The console log's text (its last [`MAX_CONSOLE`] bytes).
fn read_console(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(MAX_CONSOLE)));
    let mut bytes = Vec::new();
    let _ = f.take(MAX_CONSOLE).read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}

/// The console's last [`TAIL`] lines.
fn tail(console: &Path) -> String {
    let text = read_console(console);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(TAIL)..].join("\n")
}

/// Resolves once the guest refused its frontend — a refusal on its console, or a hello
/// vesperd refused — to the diagnosis; never while neither shows.
pub(crate) async fn refused(console: &Path, status: &Mutex<VmStatus>) -> String {
    loop {
        tokio::time::sleep(POLL).await;
        let stored = status.lock().expect("status lock").frontend.clone();
        if let Some(why) = stored {
            return why;
        }
        let path = console.to_path_buf();
        let Ok(text) = tokio::task::spawn_blocking(move || read_console(&path)).await else {
            continue;
        };
        if let Some(why) = refusal(&evidence(&text), console_release(&text).as_deref()) {
            return why;
        }
    }
}

/// The diagnosis of a guest without a session (`st` is its status now).
async fn diagnosis(st: VmStatus, daemon: Option<Shared>) -> String {
    if let Some(why) = st.frontend.clone() {
        return why;
    }
    let name = st.name.clone();
    tokio::task::spawn_blocking(move || {
        let ram = read_ram(&st, daemon.as_ref().map(|d| &d.kernels));
        diagnose(&read_console(&st.console_log), &ram)
    })
    .await
    .unwrap_or_else(|e| {
        tracing::warn!(guest = %name, "frontend diagnosis failed: {e}");
        "vesperd could not tell why (see its log)".into()
    })
}

/// `vm start`'s error when the guest refused its frontend (`why`).
pub(crate) fn refused_error(name: &str, why: &str, console: &Path) -> ApiError {
    tracing::warn!(guest = name, "no frontend: {why}");
    ApiError::new(
        ErrorCode::VmStartFailed,
        format!(
            "{name}: {why} (VM left running; `vesper vm stop {name}`).\nconsole tail:\n{}",
            tail(console)
        ),
    )
}

/// `vm start`'s error when the frontend did not say hello within `wait_secs`.
pub(crate) async fn timed_out(
    name: &str,
    wait_secs: u64,
    console: &Path,
    status: &Mutex<VmStatus>,
) -> ApiError {
    let st = status.lock().expect("status lock").clone();
    let why = diagnosis(st, None).await;
    tracing::warn!(guest = name, "no frontend after {wait_secs} s: {why}");
    ApiError::new(
        ErrorCode::Timeout,
        format!(
            "{name}: the Vesper frontend did not connect within {wait_secs} s: {why} (VM left \
             running; `vesper vm stop {name}`).\nconsole tail:\n{}",
            tail(console)
        ),
    )
}

/// `vm status`: a running guest without a session gets the diagnosis.
pub(crate) async fn vm_status(daemon: &Shared, name: &str) -> Response {
    let mut st = daemon.guest_status(name)?;
    if st.guest.is_none() && st.state != "exited" {
        st.frontend = Some(diagnosis(st.clone(), Some(daemon.clone())).await);
    }
    Ok(Reply::VmStatus(st))
}
