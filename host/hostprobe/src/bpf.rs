//! Loading the eBPF object with aya, attaching its tracepoint programs, and the typed
//! maps the host reads.

use std::collections::HashSet;
use std::path::Path;

use aya::maps::{Array, HashMap, MapData};
use aya::programs::{Program, ProgramError};
use aya::{Btf, Ebpf, EbpfLoader};

use crate::figures::RawVcpu;
use crate::{shorten_log, HostProbeError};

/// The object built from `bpf/hostprobe.bpf.c` (empty when clang was missing).
// Aligned: the ELF parser reads its headers in place.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/hostprobe.bpf.o"));
/// An object the verifier refuses (`bpf/unverifiable.bpf.c`), for tests of that path.
static UNVERIFIABLE: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/unverifiable.bpf.o"));

/// The shipped object's bytes (`None` when built without clang).
pub fn object() -> Option<&'static [u8]> {
    (!OBJECT.is_empty()).then_some(OBJECT)
}

/// An object whose program the kernel's verifier refuses (`None` without clang).
pub fn unverifiable_object() -> Option<&'static [u8]> {
    (!UNVERIFIABLE.is_empty()).then_some(UNVERIFIABLE)
}

/// Programs and the tracepoints they attach to. The scheduler's are required; the KVM
/// ones are attached where the kernel has them (no KVM module: TCG only).
const PROGRAMS: &[(&str, &str, &str, bool)] = &[
    ("sched_switch", "sched", "sched_switch", true),
    ("sched_wakeup", "sched", "sched_wakeup", true),
    ("sched_stat_runtime", "sched", "sched_stat_runtime", true),
    ("kvm_exit", "kvm", "kvm_exit", false),
    ("kvm_entry", "kvm", "kvm_entry", false),
    ("kvm_userspace_exit", "kvm", "kvm_userspace_exit", false),
];

const TRACEFS: &str = "/sys/kernel/tracing";
const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// The loaded object: its programs attached, its maps typed.
pub(crate) struct Loaded {
    /// Keeps the programs and their links alive.
    _ebpf: Ebpf,
    /// Watched thread id -> slot in `stats`.
    pub(crate) vcpus: HashMap<MapData, u32, u32>,
    /// Each slot's counters.
    pub(crate) stats: Array<MapData, RawVcpu>,
    /// The filter's generation, bumped after each change to `vcpus` (the programs'
    /// per-CPU caches look their task up again when it moved).
    pub(crate) generation: Array<MapData, u64>,
    pub(crate) reasons: HashMap<MapData, ReasonKey, u64>,
    /// `category:name` of each tracepoint attached.
    pub(crate) attached: Vec<String>,
    /// `category:name` of optional tracepoints this kernel lacks.
    pub(crate) missing: Vec<String>,
}

/// Slots in the `stats` array (`MAX_VCPUS` in the C).
pub(crate) const MAX_VCPUS: u32 = 1024;

/// Key of the `exit_reasons` map (`struct reason_key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(C)]
pub(crate) struct ReasonKey {
    pub(crate) tid: u32,
    pub(crate) reason: u32,
}

// SAFETY: two u32s, repr(C), no padding: any bytes are a valid value.
unsafe impl aya::Pod for ReasonKey {}

/// Checks what loading needs (root, BTF, tracefs) and says what is missing.
pub(crate) fn preflight() -> Result<(), HostProbeError> {
    // SAFETY: geteuid takes nothing and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid != 0 {
        return Err(HostProbeError::NotRoot { euid });
    }
    if !Path::new(VMLINUX_BTF).exists() {
        return Err(HostProbeError::NoBtf {
            path: VMLINUX_BTF.into(),
        });
    }
    mount_tracefs()
}

/// Mounts tracefs at its usual place when nothing is there (a minimal host may not
/// mount it; aya attaches tracepoints by their ids under it).
fn mount_tracefs() -> Result<(), HostProbeError> {
    let events = Path::new(TRACEFS).join("events");
    if events.exists() {
        return Ok(());
    }
    let (src, target, fstype) = (c"nodev", c"/sys/kernel/tracing", c"tracefs");
    // SAFETY: every pointer is a NUL-terminated string that outlives the call; data is
    // null, which tracefs accepts.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        return Err(HostProbeError::NoTracefs(std::io::Error::last_os_error()));
    }
    tracing::info!("mounted tracefs at {TRACEFS} for the host probes");
    Ok(())
}

/// Loads `bytes`, attaches every program this kernel has a tracepoint for.
pub(crate) fn load(bytes: &[u8]) -> Result<Loaded, HostProbeError> {
    let mut ebpf = EbpfLoader::new()
        .load(bytes)
        .map_err(|e| HostProbeError::Object(Box::new(e)))?;
    let btf = Btf::from_sys_fs().ok();
    let mut attached = Vec::new();
    let mut missing = Vec::new();
    let have: HashSet<String> = ebpf.programs().map(|(n, _)| n.to_string()).collect();
    for (name, category, event, required) in PROGRAMS {
        let tracepoint = format!("{category}:{event}");
        if !Path::new(TRACEFS)
            .join("events")
            .join(category)
            .join(event)
            .exists()
        {
            if *required {
                return Err(HostProbeError::Missing {
                    kind: "tracepoint",
                    name: tracepoint,
                });
            }
            missing.push(tracepoint);
            continue;
        }
        if !have.contains(*name) {
            if *required {
                return Err(HostProbeError::Missing {
                    kind: "program",
                    name: name.to_string(),
                });
            }
            missing.push(tracepoint);
            continue;
        }
        let program_error = |source: ProgramError| match source {
            ProgramError::LoadError {
                io_error,
                verifier_log,
            } => HostProbeError::Verifier {
                program: name.to_string(),
                log: shorten_log(&verifier_log.to_string()),
                source: io_error,
            },
            source => HostProbeError::Program {
                program: name.to_string(),
                tracepoint: tracepoint.clone(),
                source: Box::new(source),
            },
        };
        let program = ebpf
            .program_mut(name)
            .ok_or_else(|| HostProbeError::Missing {
                kind: "program",
                name: name.to_string(),
            })?;
        // tp_btf where it matters (called with the tracepoint's arguments, no record
        // built), a classic tracepoint where the record carries what is needed.
        match program {
            Program::BtfTracePoint(p) => {
                let btf = btf.as_ref().ok_or_else(|| HostProbeError::NoBtf {
                    path: VMLINUX_BTF.into(),
                })?;
                p.load(event, btf).map_err(program_error)?;
                p.attach().map_err(program_error)?;
            }
            Program::TracePoint(p) => {
                p.load().map_err(program_error)?;
                p.attach(category, event).map_err(program_error)?;
            }
            _ => {
                return Err(HostProbeError::Missing {
                    kind: "tracepoint program",
                    name: name.to_string(),
                })
            }
        }
        attached.push(tracepoint);
    }
    let vcpus = take_map(&mut ebpf, "vcpus")?;
    let reasons = take_map(&mut ebpf, "exit_reasons")?;
    let stats = ebpf.take_map("stats").ok_or(HostProbeError::Missing {
        kind: "map",
        name: "stats".into(),
    })?;
    let stats = Array::try_from(stats).map_err(|source| HostProbeError::Map {
        map: "stats",
        source: Box::new(source),
    })?;
    let generation = ebpf.take_map("vcpus_gen").ok_or(HostProbeError::Missing {
        kind: "map",
        name: "vcpus_gen".into(),
    })?;
    let generation = Array::try_from(generation).map_err(|source| HostProbeError::Map {
        map: "vcpus_gen",
        source: Box::new(source),
    })?;
    Ok(Loaded {
        _ebpf: ebpf,
        vcpus,
        stats,
        generation,
        reasons,
        attached,
        missing,
    })
}

fn take_map<K: aya::Pod, V: aya::Pod>(
    ebpf: &mut Ebpf,
    name: &'static str,
) -> Result<HashMap<MapData, K, V>, HostProbeError> {
    let map = ebpf.take_map(name).ok_or(HostProbeError::Missing {
        kind: "map",
        name: name.into(),
    })?;
    HashMap::try_from(map).map_err(|source| HostProbeError::Map {
        map: name,
        source: Box::new(source),
    })
}
