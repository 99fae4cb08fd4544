//! Why a running guest has no frontend session, told from evidence rather than a
//! timeout: the kernel's and the frontend's own words on the guest's serial console
//! (and in its printk ring), the kernel's boot stage and module list read from the
//! guest's RAM as `vesper debug` reads it (no help from the guest), and a hello vesperd
//! refused. `vm start` fails at once when the guest refused the frontend and says why
//! at its timeout otherwise; `vm status` shows the same in `frontend`.
//!
//! This file judges the evidence (no I/O); `live` reads it from a running guest and
//! serves `vm start`'s wait and `vm status`.

use std::sync::Mutex;

use vesper_api::VmStatus;
use vesper_core::{GuestInfo, FRONTEND_VERSIONS};

pub(crate) mod live;

/// The frontend's module name, as the kernel and the module tools print it.
const FRONTEND: &str = "vesper_front";
/// What the kit's `/init` says when its insmod of the frontend failed.
const KIT_NOT_LOADED: &str = "vesper-init: FRONTEND NOT LOADED";
/// The kernel's first line of a boot: evidence before the last one is another boot's.
const BANNER: &str = "Linux version ";
/// Lines quoted in a diagnosis.
const MAX_QUOTES: usize = 2;

/// Why the frontend is not there, by the guest's own words.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Cause {
    /// The kernel refused the module as one built for another kernel.
    WrongKernel,
    /// Module signature enforcement refused it.
    Signature,
    /// Lockdown refused it.
    Lockdown,
    /// Loading it was not permitted (no capability, modules disabled, lockdown).
    NotPermitted,
    /// Not installed for this kernel.
    NotInstalled,
    /// The frontend and the host's region speak other ABI versions.
    Abi { host: u32, frontend: u32 },
    /// The frontend bound the device but its start-up failed.
    StartFailed,
    /// The frontend loaded but did not bind a device (it may bind another).
    NotBound,
    /// Its load failed for a reason not told apart above.
    LoadFailed,
}

impl Cause {
    /// Whether it means the frontend will not come up this boot.
    fn fatal(self) -> bool {
        self != Cause::NotBound
    }
}

/// One line of the guest's console or kernel log that tells about the frontend.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Evidence {
    cause: Cause,
    /// The line, without its timestamp.
    line: String,
    /// It names the frontend; one that does not (a signature refusal is printed
    /// without the module's name) may be about another module.
    named: bool,
    /// The kernel's own message about the frontend (`vesper_front: ...`).
    kernel: bool,
}

/// The line without the kernel's `[    1.234567] ` timestamp.
fn strip_timestamp(line: &str) -> &str {
    let t = line.trim();
    if let Some(rest) = t.strip_prefix('[') {
        if let Some((stamp, after)) = rest.split_once(']') {
            if stamp.trim().chars().all(|c| c.is_ascii_digit() || c == '.') {
                return after.trim_start();
            }
        }
    }
    t
}

/// What a kernel message of the frontend's (`vesper_front: MSG`) says, if anything.
fn kernel_cause(msg: &str) -> Option<Cause> {
    const WRONG_KERNEL: &[&str] = &[
        "disagrees about version of symbol",
        "version magic '",
        "Unknown symbol",
        "struct module size",
    ];
    if WRONG_KERNEL.iter().any(|p| msg.contains(p)) {
        return Some(Cause::WrongKernel);
    }
    if let Some(abi) = abi_mismatch(msg) {
        return Some(abi);
    }
    if msg.contains("host refused HELLO") || msg.contains("start-up failed") {
        return Some(Cause::StartFailed);
    }
    msg.ends_with("not binding").then_some(Cause::NotBound)
}

/// The frontend's "Vesper ABI H, this frontend speaks F, not binding".
fn abi_mismatch(msg: &str) -> Option<Cause> {
    let number = |s: &str| -> Option<u32> {
        let digits: String = s.chars().take_while(char::is_ascii_digit).collect();
        digits.parse().ok()
    };
    let (_, host) = msg.split_once("Vesper ABI ")?;
    let (_, frontend) = msg.split_once("this frontend speaks ")?;
    Some(Cause::Abi {
        host: number(host)?,
        frontend: number(frontend)?,
    })
}

/// What a module tool's line naming the frontend says (insmod, modprobe,
/// systemd-modules-load, the kit's `/init`), by the error it quotes.
fn tool_cause(line: &str) -> Option<Cause> {
    const ERRORS: &[(&str, Cause)] = &[
        ("key was rejected by service", Cause::Signature),
        ("required key not available", Cause::Signature),
        ("invalid module format", Cause::WrongKernel),
        ("exec format error", Cause::WrongKernel),
        ("unknown symbol in module", Cause::WrongKernel),
        ("operation not permitted", Cause::NotPermitted),
        ("not found in directory", Cause::NotInstalled),
        ("module vesper_front not found", Cause::NotInstalled),
        ("failed to find module", Cause::NotInstalled),
        ("no such file or directory", Cause::NotInstalled),
        ("is missing", Cause::NotInstalled),
    ];
    let lower = line.to_ascii_lowercase();
    if let Some((_, cause)) = ERRORS.iter().find(|(p, _)| lower.contains(p)) {
        return Some(*cause);
    }
    let failed = line.starts_with(KIT_NOT_LOADED)
        || lower.contains("could not insert")
        || lower.contains("can't insert")
        || lower.contains("failed to insert");
    failed.then_some(Cause::LoadFailed)
}

/// The kernel's refusals that do not name the module.
fn unnamed_cause(line: &str) -> Option<Cause> {
    if line.starts_with("Loading of ") && line.contains("module") && line.ends_with(" is rejected")
    {
        return Some(Cause::Signature);
    }
    (line.starts_with("Lockdown: ") && line.contains("module loading is restricted"))
        .then_some(Cause::Lockdown)
}

/// What one line says about the frontend, if anything.
fn classify(raw: &str) -> Option<Evidence> {
    let line = strip_timestamp(raw);
    let (cause, named, kernel) = match line.strip_prefix("vesper_front: ") {
        Some(msg) => (kernel_cause(msg)?, true, true),
        None if line.contains(FRONTEND) || line.starts_with(KIT_NOT_LOADED) => {
            (tool_cause(line)?, true, false)
        }
        None => (unnamed_cause(line)?, false, false),
    };
    Some(Evidence {
        cause,
        line: line.to_string(),
        named,
        kernel,
    })
}

/// The text of the guest's last boot: from its kernel's last banner on.
fn last_boot(text: &str) -> &str {
    text.rfind(BANNER).map_or(text, |at| &text[at..])
}

/// The evidence in `text` (a console log), its last boot's only.
fn evidence(text: &str) -> Vec<Evidence> {
    last_boot(text).lines().filter_map(classify).collect()
}

/// The kernel release the console's last boot banner names.
fn console_release(text: &str) -> Option<String> {
    let at = text.rfind(BANNER)?;
    let release = text[at + BANNER.len()..].split_whitespace().next()?;
    Some(release.to_string())
}

/// The refusal the evidence shows, explained: the frontend will not come up this boot.
fn refusal(ev: &[Evidence], release: Option<&str>) -> Option<String> {
    // The kernel's own message is the most precise; a tool's quotes its errno.
    let mut fatal = ev.iter().filter(|e| e.named && e.cause.fatal());
    let primary = fatal.clone().find(|e| e.kernel).or_else(|| fatal.next())?;
    // A bare EPERM or a failed load, next to the kernel's unnamed refusal, is that.
    let refined = ev.iter().find(|e| {
        !e.named
            && matches!(
                (primary.cause, e.cause),
                (Cause::NotPermitted, Cause::Lockdown)
                    | (Cause::LoadFailed, Cause::Lockdown | Cause::Signature)
                    | (Cause::Signature, Cause::Signature)
            )
    });
    let cause = refined.map_or(primary.cause, |e| e.cause);
    let mut quotes: Vec<&str> = vec![&primary.line];
    let same = ev
        .iter()
        .filter(|e| e.named && e.cause == primary.cause && !e.kernel)
        .chain(refined);
    for e in same {
        if quotes.len() < MAX_QUOTES && !quotes.contains(&e.line.as_str()) {
            quotes.push(&e.line);
        }
    }
    Some(explain(cause, &quotes, release))
}

/// A refusal's cause and fix, quoting the guest's lines.
fn explain(cause: Cause, quotes: &[&str], release: Option<&str>) -> String {
    let seen = quotes
        .iter()
        .map(|q| format!("`{q}`"))
        .collect::<Vec<_>>()
        .join(", ");
    let kernel = release.map_or_else(
        || "the guest kernel".to_string(),
        |r| format!("the guest kernel {r}"),
    );
    let for_it = release.unwrap_or("the guest's kernel");
    match cause {
        Cause::WrongKernel => format!(
            "{kernel} refused vesper_front as a module built for another kernel ({seen}): \
             install the vesper-frontend package built for {for_it} (the kit's guest: \
             rebuild the kit, `cargo run -p vesper-guest-kit`)"
        ),
        Cause::Signature => format!(
            "{kernel} refused vesper_front for its signature ({seen}): it enforces module \
             signatures (module.sig_enforce=1, or Secure Boot); sign vesper_front.ko with a \
             key the guest trusts (scripts/sign-file, the key enrolled with mokutil), or \
             boot the guest without signature enforcement"
        ),
        Cause::Lockdown => format!(
            "{kernel} is in lockdown mode and refused vesper_front ({seen}): a locked-down \
             kernel loads only modules signed with a key it trusts; sign vesper_front.ko \
             (the key enrolled with mokutil), or boot the guest with Secure Boot off \
             (lockdown follows it)"
        ),
        Cause::NotPermitted => format!(
            "{kernel} did not permit loading vesper_front ({seen}): the loader lacks \
             CAP_SYS_MODULE, module loading is disabled (kernel.modules_disabled=1) or the \
             kernel is locked down; load it as root at boot"
        ),
        Cause::NotInstalled => format!(
            "vesper_front is not installed for {kernel} ({seen}): install the \
             vesper-frontend package built for {for_it}"
        ),
        Cause::Abi { host, frontend } => format!(
            "the guest's vesper_front speaks Vesper ABI {frontend} and this vesperd's region \
             is ABI {host}, so it did not bind ({seen}): install the vesper-frontend that \
             comes with this vesperd"
        ),
        Cause::StartFailed => format!(
            "vesper_front bound the Vesper device but its start-up failed ({seen}); it stays \
             idle until it is loaded again (see vesperd's log)"
        ),
        Cause::NotBound => format!("vesper_front did not bind the Vesper device ({seen})"),
        Cause::LoadFailed => format!("{kernel} did not load vesper_front ({seen})"),
    }
}

/// The kernel's unnamed refusals, as a hint to a diagnosis that found no named one.
fn unnamed_hint(ev: &[Evidence]) -> String {
    let Some(e) = ev.iter().find(|e| !e.named && e.cause.fatal()) else {
        return String::new();
    };
    let fix = match e.cause {
        Cause::Lockdown => "it is locked down: sign vesper_front.ko with a key it trusts",
        _ => "it enforces module signatures: sign vesper_front.ko with a key it trusts, or boot without module.sig_enforce",
    };
    format!(
        "; the kernel did refuse a module during boot (`{}`): if that was vesper_front, {fix}",
        e.line
    )
}

/// The guest kernel's boot stage (`system_state`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// Before user space.
    Booting,
    /// Up (or its stage unreadable).
    Running,
    /// Halting, powering off, restarting or suspending.
    Ending,
}

/// A guest kernel found in RAM.
#[derive(Debug, Clone, PartialEq, Eq)]
struct KernelView {
    release: String,
    stage: Stage,
    /// The modules it has loaded, or why they could not be read.
    modules: Result<Vec<(String, String)>, String>,
    /// Its log (the printk ring), one line each.
    log: Vec<String>,
}

/// What the guest's RAM says.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Ram {
    /// Not read: why.
    NotRead(String),
    /// No kernel found in it (why the last candidate failed).
    NoKernel(String),
    /// A kernel.
    Kernel(KernelView),
}

/// Why the guest has no session, from its console's text and its RAM.
fn diagnose(console: &str, ram: &Ram) -> String {
    let mut ev = evidence(console);
    if let Ram::Kernel(k) = ram {
        for e in k.log.iter().filter_map(|l| classify(l)) {
            if !ev.iter().any(|x| x.line == e.line) {
                ev.push(e);
            }
        }
    }
    let release = match ram {
        Ram::Kernel(k) => Some(k.release.clone()),
        _ => console_release(console),
    };
    if let Some(why) = refusal(&ev, release.as_deref()) {
        return why;
    }
    let hint = unnamed_hint(&ev);
    let k = match ram {
        Ram::Kernel(k) => k,
        Ram::NoKernel(e) => {
            return match release {
                Some(r) => format!(
                    "the console shows the guest kernel {r} starting, but no kernel is \
                     readable in its RAM yet ({e}): it is in its first instants"
                ),
                None => "no guest kernel found in its RAM yet: the guest is in its firmware \
                         or bootloader"
                    .into(),
            };
        }
        Ram::NotRead(why) => return console_only(&ev, release.as_deref(), why, &hint),
    };
    let rel = &k.release;
    match (k.stage, &k.modules) {
        (Stage::Booting, _) => {
            format!("the guest kernel {rel} is still booting (user space has not started yet)")
        }
        (Stage::Ending, _) => format!("the guest kernel {rel} is shutting down or restarting"),
        (Stage::Running, Ok(ms)) => match ms.iter().find(|(n, _)| n == FRONTEND) {
            Some((_, state)) => loaded_but_silent(&ev, rel, state),
            None => format!(
                "the guest kernel {rel} runs, {} loaded, vesper_front is not among them: the \
                 frontend is not installed or not loaded at boot (install vesper-frontend, or \
                 `modprobe vesper_front` in the guest){hint}",
                match ms.len() {
                    1 => "1 module is".to_string(),
                    n => format!("{n} modules are"),
                }
            ),
        },
        (Stage::Running, Err(e)) => format!(
            "the guest kernel {rel} runs, but its module list could not be read ({e}), and \
             nothing in its console or log says vesper_front failed{hint}"
        ),
    }
}

/// vesper_front is in the module list and has not said hello.
fn loaded_but_silent(ev: &[Evidence], release: &str, state: &str) -> String {
    let not_bound: Vec<String> = ev
        .iter()
        .filter(|e| e.cause == Cause::NotBound)
        .map(|e| format!("`{}`", e.line))
        .collect();
    let why = if not_bound.is_empty() {
        "; nothing in its console or log says why (is the VM's Vesper device there? \
         `lspci -d 1af4:1110` in the guest)"
            .to_string()
    } else {
        format!(
            ": it did not bind the Vesper device ({})",
            not_bound.join(", ")
        )
    };
    format!("vesper_front is loaded in the guest kernel {release} ({state}) but has not said hello{why}")
}

/// A diagnosis from the console alone (the RAM was not read: `why`).
fn console_only(ev: &[Evidence], release: Option<&str>, why: &str, hint: &str) -> String {
    if ev.iter().any(|e| e.cause == Cause::NotBound) {
        let silent = loaded_but_silent(ev, release.unwrap_or("?"), "loaded");
        return format!("{silent} (its RAM was not read: {why})");
    }
    match release {
        Some(r) => format!(
            "the guest kernel {r} booted and nothing on its console says vesper_front loaded \
             or failed: the frontend is probably not installed or not loaded at boot (install \
             vesper-frontend, or `modprobe vesper_front` in the guest){hint} (its RAM was not \
             read: {why})"
        ),
        None => format!(
            "no kernel on the console yet: the guest is in its firmware or bootloader (its RAM \
             was not read: {why})"
        ),
    }
}

/// What `vm status` and the start say of a hello vesperd refused.
fn hello_refusal(info: &GuestInfo, frontend_version: u32) -> String {
    let (lo, hi) = (FRONTEND_VERSIONS.start(), FRONTEND_VERSIONS.end());
    let host = if lo == hi {
        format!("version {lo}")
    } else {
        format!("versions {lo}-{hi}")
    };
    format!(
        "vesperd refused the frontend's hello: the guest's vesper_front (kernel {}) speaks \
         frontend protocol version {frontend_version}, this vesperd speaks {host}; install \
         the vesper-frontend that comes with this vesperd",
        info.kernel_release
    )
}

/// The guest task's part: a hello refused for its version is shown at once.
pub(crate) fn hello_refused(
    guest: &str,
    status: &Mutex<VmStatus>,
    info: &GuestInfo,
    frontend_version: u32,
) {
    let why = hello_refusal(info, frontend_version);
    tracing::warn!(guest, "{why}");
    status.lock().expect("status lock").frontend = Some(why);
}

#[cfg(test)]
mod tests;
