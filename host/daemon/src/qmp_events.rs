//! QEMU's event-only QMP socket: its events become `guest_panicked`, `shutdown`, `stop`
//! and `reset` events, one per thing that happened to the VM.
//!
//! One guest reboot makes QEMU report `RESET` more than once: the guest kernel resets
//! the machine, and SeaBIOS, finding itself warm-booted, resets it again at once ("In
//! resume ... Attempting a hard reboot" on its debug port) — sometimes twice, through
//! the keyboard controller and then port 0xCF9. Those follow-ups are folded into the
//! first `reset` ([`RebootFold`]); a subscriber sees one event per reboot.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::watch;
use vesper_api::VmStatus;
use vesper_core::GuestInfo;
use vesper_events::{EventKind, Source};
use vesper_qemu::QmpEvent;

use crate::events::{note_failure, EventBus};

/// What runs when a guest panics, before anyone hears of it (`--dump-on-panic`).
pub type PanicHook = Arc<dyn Fn(&str) + Send + Sync>;

/// The event kind of a VM event a failover engine cares about, by QEMU's name for it
/// (the builtin VMM reports its own under the same names).
pub(crate) fn vm_event_kind(name: &str) -> Option<EventKind> {
    Some(match name {
        "GUEST_PANICKED" => EventKind::GuestPanicked,
        "SHUTDOWN" => EventKind::Shutdown,
        "STOP" => EventKind::Stop,
        "RESET" => EventKind::Reset,
        _ => return None,
    })
}

/// How soon after a reset a guest-requested one counts as the same reboot (the
/// firmware's reset comes within 100 ms even under TCG on a loaded host; a Linux guest
/// cannot boot and reboot again this fast).
pub(crate) const SAME_REBOOT: Duration = Duration::from_secs(1);

/// Folds the resets one reboot makes into its first: a `RESET` the guest asked for
/// (`guest: true`, as the firmware's are) within [`SAME_REBOOT`] of the last published
/// one, while the guest has not come up again since (same frontend generation).
#[derive(Debug, Default)]
pub(crate) struct RebootFold {
    /// The last published reset: when (QEMU's clock, ns), its seq, the generation then.
    last: Option<(u64, u64, Option<u32>)>,
}

impl RebootFold {
    /// `Some(seq)` of the reset `ev` (at `at_ns`, with the guest's frontend at
    /// `generation`) belongs to; `None` if it is an event of its own.
    pub(crate) fn folds_into(
        &self,
        ev: &QmpEvent,
        at_ns: u64,
        generation: Option<u32>,
    ) -> Option<u64> {
        let (t, seq, gen) = self.last?;
        let same = ev.name == "RESET"
            && ev.data["guest"] == true
            && gen == generation
            && at_ns.saturating_sub(t) < SAME_REBOOT.as_nanos() as u64;
        same.then_some(seq)
    }

    /// Remembers a published event (only resets matter).
    pub(crate) fn published(&mut self, ev: &QmpEvent, at_ns: u64, seq: u64, gen: Option<u32>) {
        if ev.name == "RESET" {
            self.last = Some((at_ns, seq, gen));
        }
    }
}

/// Connects to the event socket (QEMU creates it while it starts) and opens command
/// mode; `None` when QEMU never offered it.
async fn connect(path: &std::path::Path, name: &str) -> Option<tokio::net::UnixStream> {
    for _ in 0..200 {
        if let Ok(mut s) = tokio::net::UnixStream::connect(path).await {
            let caps = vesper_qemu::QMP_CAPABILITIES.as_bytes();
            return s.write_all(caps).await.is_ok().then_some(s);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::warn!(guest = %name, "no QMP event socket at {}; QMP events unavailable", path.display());
    None
}

/// Listens to QEMU's event-only QMP socket and publishes the events a failover engine
/// cares about (`GUEST_PANICKED` from pvpanic, `SHUTDOWN`, `STOP`, `RESET`).
pub(crate) async fn listen(
    path: std::path::PathBuf,
    name: String,
    bus: Arc<EventBus>,
    status: Arc<Mutex<VmStatus>>,
    up: watch::Receiver<Option<GuestInfo>>,
    on_panic: Option<PanicHook>,
) {
    let Some(stream) = connect(&path, &name).await else {
        return;
    };
    let mut fold = RebootFold::default();
    let mut lines = tokio::io::BufReader::new(stream).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let Some(ev) = vesper_qemu::parse_event(&line) else {
            continue;
        };
        tracing::debug!(guest = %name, socket = %path.display(), %line, "QMP event");
        let Some(kind) = vm_event_kind(&ev.name) else {
            continue;
        };
        let at_ns = ev.timestamp_ns.unwrap_or_else(crate::events::now_ns);
        let generation = up.borrow().as_ref().map(|i| i.generation);
        if let Some(seq) = fold.folds_into(&ev, at_ns, generation) {
            tracing::info!(guest = %name, event = %ev.name, data = %ev.data, seq, "QMP event of the same reboot as event {seq} (the firmware's reset): not published again");
            continue;
        }
        if kind == EventKind::GuestPanicked {
            if let Some(hook) = &on_panic {
                hook(&name);
            }
        }
        let source = Source::Qmp {
            event: ev.name.clone(),
        };
        let e = bus.publish(&name, kind, source, ev.timestamp_ns, ev.data.clone());
        fold.published(&ev, at_ns, e.seq, generation);
        note_failure(&status, &e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reset(guest: bool) -> QmpEvent {
        QmpEvent {
            name: "RESET".into(),
            data: serde_json::json!({ "guest": guest, "reason": "guest-reset" }),
            timestamp_ns: None,
        }
    }

    const MS: u64 = 1_000_000;

    #[test]
    fn the_firmware_resets_of_one_reboot_fold_into_the_first() {
        let mut f = RebootFold::default();
        assert_eq!(f.folds_into(&reset(true), 1000 * MS, Some(1)), None);
        f.published(&reset(true), 1000 * MS, 7, Some(1));
        // As seen: the kernel's reset, SeaBIOS's 72 ms later, another 2 ms after that.
        assert_eq!(f.folds_into(&reset(true), 1072 * MS, Some(1)), Some(7));
        assert_eq!(f.folds_into(&reset(true), 1074 * MS, Some(1)), Some(7));
    }

    #[test]
    fn a_later_reboot_a_new_generation_or_a_host_reset_is_an_event_of_its_own() {
        let mut f = RebootFold::default();
        f.published(&reset(true), 1000 * MS, 7, Some(1));
        assert_eq!(f.folds_into(&reset(true), 2000 * MS, Some(1)), None);
        assert_eq!(f.folds_into(&reset(true), 1100 * MS, Some(2)), None);
        assert_eq!(f.folds_into(&reset(false), 1100 * MS, Some(1)), None);
        let stop = QmpEvent {
            name: "STOP".into(),
            ..reset(true)
        };
        assert_eq!(f.folds_into(&stop, 1001 * MS, Some(1)), None);
        f.published(&stop, 1001 * MS, 8, Some(1));
        assert_eq!(f.folds_into(&reset(true), 1002 * MS, Some(1)), Some(7));
    }
}
