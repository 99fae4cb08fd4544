//! Guest RAM of a VM Vesper did not start, for `vesper debug`. vesperd's own QEMU VMs
//! have a shared `memory-backend-memfd` laid out as q35 lays it out (debug.rs maps it);
//! an attached QEMU was built by someone else, so its layout is asked for over QMP
//! (`info mtree` and `gpa2hva`, `vesper_qemu::Qmp::ram_layout`) and read through its
//! memfd when it has one (a libvirt domain with `<source type='memfd'/>`), else with
//! `pread` on `/proc/PID/mem` at QEMU's own addresses (a QEMU started by hand, with
//! private anonymous RAM). Both sit behind the same `PhysMemory`.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vesper_api::{ApiError, ErrorCode};
use vesper_debug::{MappedRam, PhysMemory, ProcMemRam, ProcSegment, RamRange};

/// How `vesper debug` will read process `pid`'s guest RAM (`vm status` says it).
pub(crate) fn kind(pid: u32) -> String {
    match vesper_qemu::memfd_of(pid, vesper_qemu::RAM_MEMFD_NAME) {
        Ok(Some(_)) => "memfd".into(),
        _ => format!("/proc/{pid}/mem"),
    }
}

/// Guest RAM and its guest-physical ranges.
type Ram = (Arc<dyn PhysMemory>, Vec<Range<u64>>);

/// The guest RAM of attached QEMU `pid`, whose QMP vesperd serves at `qmp`, and its
/// guest-physical ranges.
pub(crate) fn open(guest: &str, pid: u32, qmp: &Path) -> Result<Ram, ApiError> {
    let failed = |m: String| ApiError::new(ErrorCode::GuestFailed, format!("{guest}: {m}"));
    let (segs, _) = vesper_qemu::Qmp::connect_waiting(qmp, Duration::from_secs(5))
        .and_then(|mut q| q.ram_layout())
        .map_err(|e| failed(format!("where QEMU keeps guest RAM is unknown: {e}")))?;
    let one_region = segs.windows(2).all(|w| w[0].region == w[1].region);
    if let (true, Ok(Some(path))) = (
        one_region,
        vesper_qemu::memfd_of(pid, vesper_qemu::RAM_MEMFD_NAME),
    ) {
        let layout = segs
            .iter()
            .map(|s| RamRange {
                gpa: s.gpa,
                len: s.len,
                file_offset: s.offset,
            })
            .collect();
        let mapped = std::fs::File::open(&path)
            .map_err(|e| e.to_string())
            .and_then(|f| MappedRam::map(f, layout).map_err(|e| e.to_string()));
        match mapped {
            Ok(ram) => {
                let ranges = ram.ranges();
                return Ok((Arc::new(ram), ranges));
            }
            Err(e) => tracing::warn!(
                guest,
                "QEMU's RAM memfd {} does not map ({e}); reading /proc/{pid}/mem",
                path.display()
            ),
        }
    }
    let segments = segs
        .iter()
        .map(|s| ProcSegment {
            gpa: s.gpa,
            len: s.len,
            hva: s.hva,
        })
        .collect();
    let ram = ProcMemRam::open(pid, segments).map_err(|e| failed(format!("guest RAM: {e}")))?;
    let ranges = ram.ranges();
    Ok((Arc::new(ram), ranges))
}
