//! The host-probe monitor: one thread that keeps each watched guest's vCPU threads in
//! the eBPF filter map, reads their counters every poll, turns them into figures and
//! reports each stall once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::bpf::{self, Loaded, ReasonKey, MAX_VCPUS};
use crate::figures::{reason_name, RawVcpu, VcpuState};
use crate::HostProbeError;

/// How the monitor runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// A vCPU out of the guest (or stopped, or starved) longer than this has stalled.
    pub stall_threshold: Duration,
    /// How often the counters are read (a stall is seen at most this late).
    pub poll: Duration,
    /// An eBPF object to load instead of the shipped one (tests, field fixes).
    pub object: Option<Vec<u8>>,
}

impl Config {
    /// `threshold`, polled ten times per threshold (at most every 100 ms).
    pub fn with_threshold(threshold: Duration) -> Self {
        Config {
            stall_threshold: threshold,
            poll: (threshold / 10).clamp(Duration::from_millis(5), Duration::from_millis(100)),
            object: None,
        }
    }
}

/// Where a guest's vCPU threads are found.
#[derive(Clone)]
pub enum VcpuSource {
    /// A QEMU process: its threads named `CPU n/KVM` or `CPU n/TCG`.
    Qemu {
        /// QEMU's pid.
        pid: u32,
    },
    /// A list kept by the VMM itself (`(vcpu index, thread id)`), e.g. the builtin VMM's.
    Listed(Arc<dyn Fn() -> Vec<(u32, u32)> + Send + Sync>),
}

impl VcpuSource {
    fn list(&self) -> Vec<(u32, u32)> {
        match self {
            VcpuSource::Qemu { pid } => crate::threads::qemu_vcpus(*pid),
            VcpuSource::Listed(f) => f(),
        }
    }
}

/// A vCPU found stalled: reported once per stall.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stall {
    /// Guest.
    pub guest: String,
    /// vCPU index.
    pub vcpu: u32,
    /// Its host thread.
    pub tid: u32,
    /// What it was doing (`out_of_guest`, `stopped`, `runnable`).
    pub state: VcpuState,
    /// How long it had not made progress when seen.
    pub stalled_ms: u64,
    /// The threshold it passed.
    pub threshold_ms: u64,
}

/// One exit reason and its count.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExitReason {
    /// `svm:io`, `vmx:hlt`, `vmm:io` (KVM_RUN returned to the VMM for port I/O), ...
    pub reason: String,
    /// Times seen since watching began.
    pub count: u64,
}

/// One vCPU's figures since watching began.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VcpuFigures {
    /// vCPU index.
    pub index: u32,
    /// Host thread id.
    pub tid: u32,
    /// What it is doing now.
    pub state: VcpuState,
    /// Exits from guest mode (`kvm:kvm_exit`).
    pub exits: u64,
    /// Entries into guest mode (`kvm:kvm_entry`).
    pub entries: u64,
    /// Returns of KVM_RUN to the VMM (`kvm:kvm_userspace_exit`).
    pub vmm_exits: u64,
    /// KVM_RUN calls seen: its returns, and the one it is in, if it is.
    pub kvm_runs: u64,
    /// Exits (guest-mode and to the VMM) per second over the last second or so.
    pub exit_rate: f64,
    /// Time runnable but not running (host steal), ms.
    pub steal_ms: f64,
    /// Time on a host CPU, ms.
    pub on_cpu_ms: f64,
    /// Stalled now.
    pub stalled: bool,
    /// Exit reasons, most frequent first.
    pub exit_reasons: Vec<ExitReason>,
}

/// A guest's figures.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GuestFigures {
    /// Guest.
    pub guest: String,
    /// How long it has been watched, ms.
    pub watched_ms: u64,
    /// The stall threshold, ms.
    pub threshold_ms: u64,
    /// Stalls reported since watching began.
    pub stalls: u64,
    /// Its vCPUs, by index.
    pub vcpus: Vec<VcpuFigures>,
}

struct VcpuWatch {
    index: u32,
    /// The stall under way: its state, since when, and its returns to the VMM then.
    stalled: Option<(VcpuState, u64, u64)>,
    /// When the last stall ended (0: none yet): a next one starts no earlier, so marks
    /// left from before it (a park dated before a SIGSTOP) do not date a new stall back.
    ended_ns: u64,
    /// Its returns to the VMM at the last poll that saw them move (or saw it inside
    /// KVM_RUN), and when that was: the date of a return the exit path did not time.
    moved: (u64, u64),
    /// (time, exits) at the start of the rate window, and the last rate.
    window: (u64, u64),
    rate: f64,
}

struct Watch {
    source: VcpuSource,
    since_ns: u64,
    vcpus: BTreeMap<u32, VcpuWatch>,
    stalls: u64,
    figures: Option<GuestFigures>,
}

#[derive(Default)]
struct State {
    guests: HashMap<String, Watch>,
}

/// Callback for stalls (called on the monitor's thread).
pub type OnStall = Box<dyn Fn(Stall) + Send>;

/// Loaded host probes and the thread reading them. Dropping it detaches them.
pub struct HostProbes {
    state: Arc<Mutex<State>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    attached: Vec<String>,
    missing: Vec<String>,
    threshold: Duration,
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns`.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid, writable timespec; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

impl HostProbes {
    /// Checks the host, loads and attaches the probes, and starts the monitor thread.
    pub fn start(config: Config, on_stall: OnStall) -> Result<Self, HostProbeError> {
        bpf::preflight()?;
        let loaded = match &config.object {
            Some(bytes) => bpf::load(bytes)?,
            None => bpf::load(bpf::object().ok_or(HostProbeError::NotBuilt)?)?,
        };
        let (attached, missing) = (loaded.attached.clone(), loaded.missing.clone());
        let threshold = config.stall_threshold;
        let state = Arc::new(Mutex::new(State::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s, st) = (state.clone(), stop.clone());
        let thread = std::thread::Builder::new()
            .name("hostprobe".into())
            .spawn(move || run(loaded, &s, &st, &config, &on_stall))
            .map_err(HostProbeError::Thread)?;
        Ok(HostProbes {
            state,
            stop,
            thread: Some(thread),
            attached,
            missing,
            threshold,
        })
    }

    /// Starts watching `guest`'s vCPU threads (again, from zero, if it was watched).
    pub fn watch(&self, guest: &str, source: VcpuSource) {
        let watch = Watch {
            source,
            since_ns: monotonic_ns(),
            vcpus: BTreeMap::new(),
            stalls: 0,
            figures: None,
        };
        self.lock().guests.insert(guest.to_string(), watch);
        tracing::debug!(guest, "host probes watch its vCPU threads");
    }

    /// Stops watching `guest` (its threads leave the filter at the next poll).
    pub fn unwatch(&self, guest: &str) {
        self.lock().guests.remove(guest);
    }

    /// `guest`'s latest figures (`None`: not watched; no vCPU figures before the first
    /// poll).
    pub fn figures(&self, guest: &str) -> Option<GuestFigures> {
        let st = self.lock();
        let w = st.guests.get(guest)?;
        Some(w.figures.clone().unwrap_or_else(|| GuestFigures {
            guest: guest.to_string(),
            watched_ms: 0,
            threshold_ms: self.threshold.as_millis() as u64,
            stalls: 0,
            vcpus: Vec::new(),
        }))
    }

    /// Tracepoints attached (`sched:sched_switch`, ...).
    pub fn attached(&self) -> &[String] {
        &self.attached
    }

    /// Optional tracepoints this kernel lacks (the KVM ones without a KVM module).
    pub fn missing(&self) -> &[String] {
        &self.missing
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for HostProbes {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Which threads are in the filter, in which slot of `stats`. A freed slot is taken
/// again only after every other one (round robin): a CPU whose cache still names the
/// slot until its next context switch counts into a slot nobody reads.
#[derive(Default)]
struct Filtered {
    slots: BTreeMap<u32, u32>,
    next: u32,
    /// The filter's generation, as last written to the `vcpus_gen` map.
    generation: u64,
}

impl Filtered {
    fn free_slot(&mut self) -> Option<u32> {
        let used: std::collections::HashSet<u32> = self.slots.values().copied().collect();
        let slot = (0..MAX_VCPUS)
            .map(|i| (self.next + i) % MAX_VCPUS)
            .find(|s| !used.contains(s))?;
        self.next = (slot + 1) % MAX_VCPUS;
        Some(slot)
    }
}

/// The monitor thread: poll until told to stop.
fn run(
    mut loaded: Loaded,
    state: &Mutex<State>,
    stop: &AtomicBool,
    config: &Config,
    on_stall: &OnStall,
) {
    let mut filtered = Filtered::default();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(config.poll);
        let stalls = {
            let mut st = state.lock().unwrap_or_else(PoisonError::into_inner);
            poll(&mut loaded, &mut st, &mut filtered, config)
        };
        for s in stalls {
            tracing::warn!(guest = %s.guest, vcpu = s.vcpu, tid = s.tid, state = s.state.name(),
                stalled_ms = s.stalled_ms, "vCPU stalled");
            on_stall(s);
        }
    }
}

/// One poll: sync the filter map with the watched threads, read counters, judge stalls,
/// refresh figures. Returns the stalls that began.
fn poll(
    loaded: &mut Loaded,
    st: &mut State,
    filtered: &mut Filtered,
    config: &Config,
) -> Vec<Stall> {
    let threshold = config.stall_threshold.as_nanos() as u64;
    // Which threads should be in the filter now.
    let mut wanted: BTreeMap<u32, (String, u32)> = BTreeMap::new();
    for (name, w) in &st.guests {
        for (index, tid) in w.source.list() {
            wanted.insert(tid, (name.clone(), index));
        }
    }
    let mut changed = false;
    for tid in filtered.slots.keys().copied().collect::<Vec<_>>() {
        if !wanted.contains_key(&tid) {
            let _ = loaded.vcpus.remove(&tid);
            filtered.slots.remove(&tid);
            changed = true;
        }
    }
    for tid in wanted.keys() {
        if filtered.slots.contains_key(tid) {
            continue;
        }
        let Some(slot) = filtered.free_slot() else {
            tracing::warn!(
                tid,
                "cannot watch a vCPU thread: all {MAX_VCPUS} slots in use"
            );
            continue;
        };
        // Zeroed before the thread is named: its counts start from nothing.
        let added = loaded
            .stats
            .set(slot, RawVcpu::default(), 0)
            .and_then(|()| loaded.vcpus.insert(tid, slot, 0));
        match added {
            Ok(()) => {
                filtered.slots.insert(*tid, slot);
                changed = true;
            }
            Err(e) => tracing::warn!(tid, "cannot watch a vCPU thread: {e}"),
        }
    }
    if changed {
        // Every CPU's cached answer for its running task is looked up again.
        filtered.generation += 1;
        if let Err(e) = loaded.generation.set(0, filtered.generation, 0) {
            tracing::warn!("cannot bump the vCPU filter's generation: {e}");
        }
    }
    // Exit reasons by thread; entries of threads no longer watched are dropped.
    let mut reasons: HashMap<u32, Vec<ExitReason>> = HashMap::new();
    let mut stale: Vec<ReasonKey> = Vec::new();
    for (key, count) in loaded.reasons.iter().flatten() {
        if filtered.slots.contains_key(&key.tid) {
            reasons.entry(key.tid).or_default().push(ExitReason {
                reason: reason_name(key.reason),
                count,
            });
        } else {
            stale.push(key);
        }
    }
    for key in stale {
        let _ = loaded.reasons.remove(&key);
    }
    let now = monotonic_ns();
    let mut began = Vec::new();
    for (name, w) in st.guests.iter_mut() {
        let mut vcpus = Vec::new();
        w.vcpus
            .retain(|tid, _| wanted.get(tid).is_some_and(|(g, _)| g == name));
        for (tid, (g, index)) in &wanted {
            if g != name {
                continue;
            }
            let Some(raw) = filtered
                .slots
                .get(tid)
                .and_then(|slot| loaded.stats.get(slot, 0).ok())
            else {
                continue;
            };
            let vw = w.vcpus.entry(*tid).or_insert(VcpuWatch {
                index: *index,
                stalled: None,
                ended_ns: 0,
                moved: (0, now),
                window: (now, 0),
                rate: 0.0,
            });
            vw.index = *index;
            let total = raw.exits + raw.uexits;
            let dt = now.saturating_sub(vw.window.0);
            if dt >= 1_000_000_000 {
                vw.rate = total.saturating_sub(vw.window.1) as f64 * 1e9 / dt as f64;
                vw.window = (now, total);
            }
            // Returned to the VMM since the last poll, or inside KVM_RUN now: moving.
            if raw.uexits != vw.moved.0 || raw.in_run != 0 {
                vw.moved = (raw.uexits, now);
            }
            let stall = raw.stall(now, w.since_ns.max(vw.ended_ns), vw.moved.1, threshold);
            match (stall, vw.stalled) {
                (Some((state, since)), None) => {
                    vw.stalled = Some((state, since, raw.uexits));
                    w.stalls += 1;
                    began.push(Stall {
                        guest: name.clone(),
                        vcpu: *index,
                        tid: *tid,
                        state,
                        stalled_ms: now.saturating_sub(since) / 1_000_000,
                        threshold_ms: threshold / 1_000_000,
                    });
                }
                (_, Some((state, since, uexits))) if raw.progressed(state, since, uexits) => {
                    vw.stalled = None;
                    vw.ended_ns = now;
                    tracing::info!(guest = %name, vcpu = index, "vCPU runs again");
                }
                _ => {}
            }
            let mut exit_reasons = reasons.remove(tid).unwrap_or_default();
            exit_reasons.extend(raw.vmm_reason_counts().map(|(key, count)| ExitReason {
                reason: reason_name(key),
                count,
            }));
            exit_reasons.sort_by(|a, b| b.count.cmp(&a.count).then(a.reason.cmp(&b.reason)));
            vcpus.push(VcpuFigures {
                index: *index,
                tid: *tid,
                state: raw.state(),
                exits: raw.exits,
                entries: raw.entries,
                vmm_exits: raw.uexits,
                kvm_runs: raw.kvm_runs(),
                exit_rate: vw.rate,
                steal_ms: raw.steal_ns as f64 / 1e6,
                on_cpu_ms: raw.oncpu_ns as f64 / 1e6,
                stalled: vw.stalled.is_some(),
                exit_reasons,
            });
        }
        vcpus.sort_by_key(|v| v.index);
        w.figures = Some(GuestFigures {
            guest: name.clone(),
            watched_ms: now.saturating_sub(w.since_ns) / 1_000_000,
            threshold_ms: threshold / 1_000_000,
            stalls: w.stalls,
            vcpus,
        });
    }
    began
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_freed_slot_is_reused_only_after_the_others() {
        let mut f = Filtered::default();
        let a = f.free_slot().unwrap();
        f.slots.insert(100, a);
        let b = f.free_slot().unwrap();
        f.slots.insert(101, b);
        assert_eq!((a, b), (0, 1));
        f.slots.remove(&100);
        assert_eq!(f.free_slot(), Some(2), "slot 0 rests");
        f.next = MAX_VCPUS - 1;
        assert_eq!(f.free_slot(), Some(MAX_VCPUS - 1));
        assert_eq!(
            f.free_slot(),
            Some(0),
            "wraps round, skipping slot 1 in use"
        );
        let mut full = Filtered::default();
        for t in 0..MAX_VCPUS {
            let s = full.free_slot().unwrap();
            full.slots.insert(t, s);
        }
        assert_eq!(full.free_slot(), None);
    }
}
