//! Grants of guest RAM frames: the host reads (or writes) guest RAM only where a live
//! grant entry with `GRANT_GUEST_FRAMES` names it.
//!
//! Only a transport that owns guest RAM can honour such a grant, and this VMM does: it
//! offers `HOST_FEATURE_GUEST_FRAMES` and the host side of the transport goes through
//! [`GuestFrameGrants`]. Each access copies the entry once out of the region's grant
//! table, checks it (`vesper_shmem::grant::check_frame_entry`: live, current
//! generation, access, owner, page-aligned address, bounded whole pages), checks that the
//! whole granted range is guest RAM (not the PCI hole, not a device memslot such as the
//! region itself, not past the end of RAM), and only then copies through `vm-memory`'s
//! checked accessors. The guest may rewrite the entry at any time; the check and the
//! copy use the one copy of the entry, and the frames stay guest RAM whatever the entry
//! says afterwards, so a race costs the guest its own data, never the host's memory.
//!
//! Every refusal is guest misbehaviour: counted, and logged at most
//! [`LOG_BURST`] times per [`LOG_WINDOW`] (a guest scribbling its table cannot flood the
//! log), the count of the silenced ones logged with the next line that gets through.
//! Lock order: the log budget's mutex is a leaf, held only to decide whether to log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vesper_shared_abi::{GRANT_READ, GRANT_WRITE};
use vesper_shmem::grant::{GrantNeed, ValidFrameGrant};
use vesper_shmem::SharedRegion;
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

use crate::error::{HypervisorError, Result};

/// Refusals logged per window at most.
pub const LOG_BURST: u32 = 10;
/// The window over which [`LOG_BURST`] applies.
pub const LOG_WINDOW: Duration = Duration::from_secs(1);

/// Counters of a VM's frame-grant accesses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FrameGrantStats {
    /// Accesses that copied bytes.
    pub granted: u64,
    /// Accesses refused (every one guest misbehaviour).
    pub refused: u64,
    /// Refusals that were logged.
    pub logged: u64,
}

/// How many lines may be logged: at most `LOG_BURST` per `LOG_WINDOW`. Pure, no clock.
#[derive(Debug)]
pub struct LogBudget {
    window_start: Option<Instant>,
    in_window: u32,
    silenced: u64,
}

impl LogBudget {
    /// A budget whose first window starts at the first event.
    pub const fn new() -> Self {
        Self {
            window_start: None,
            in_window: 0,
            silenced: 0,
        }
    }

    /// Called for each event at `now`: `Some(silenced)` if this one may be logged, with
    /// how many were silenced since the last logged one; `None` to stay silent.
    pub fn admit(&mut self, now: Instant) -> Option<u64> {
        let fresh = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= LOG_WINDOW);
        if fresh {
            self.window_start = Some(now);
            self.in_window = 0;
        }
        if self.in_window >= LOG_BURST {
            self.silenced = self.silenced.saturating_add(1);
            return None;
        }
        self.in_window += 1;
        Some(std::mem::take(&mut self.silenced))
    }
}

impl Default for LogBudget {
    fn default() -> Self {
        Self::new()
    }
}

#[derive(Debug, Default)]
struct Counters {
    granted: AtomicU64,
    refused: AtomicU64,
    logged: AtomicU64,
    budget: Mutex<LogBudget>,
}

/// The host's access to guest RAM through frame grants. Cheap to clone; clones share
/// the counters, and it is `Send + Sync`, so the transport's threads use it while the
/// vCPUs run.
#[derive(Clone, Debug)]
pub struct GuestFrameGrants {
    /// Guest RAM only: device memory (the region's BAR) is never in here.
    memory: GuestMemoryMmap,
    counters: Arc<Counters>,
}

impl GuestFrameGrants {
    /// Access to `memory`, which must hold guest RAM and nothing else.
    pub fn new(memory: GuestMemoryMmap) -> Self {
        Self {
            memory,
            counters: Arc::default(),
        }
    }

    /// Copies `len` bytes at byte `at` of the frames granted by `grant_ref` in `region`'s
    /// grant table. `need` says what the grant must carry; `GRANT_READ` is always needed.
    pub fn read(
        &self,
        region: &SharedRegion,
        grant_ref: u32,
        need: GrantNeed,
        at: u64,
        len: u64,
    ) -> Result<Vec<u8>> {
        let need = GrantNeed {
            access: need.access | GRANT_READ,
            ..need
        };
        let result = self
            .locate(region, grant_ref, need, at, len)
            .and_then(|gpa| {
                // `locate` bounded `len` by the grant's length (at most GRANT_FRAMES_MAX_LEN).
                let mut buf = vec![0u8; len as usize];
                self.memory
                    .read_slice(&mut buf, GuestAddress(gpa))
                    .map_err(|source| HypervisorError::GuestRamAccess { gpa, len, source })?;
                Ok(buf)
            });
        self.account(grant_ref, result)
    }

    /// Copies `data` to byte `at` of the frames granted by `grant_ref`. `need` says what
    /// the grant must carry; `GRANT_WRITE` is always needed.
    pub fn write(
        &self,
        region: &SharedRegion,
        grant_ref: u32,
        need: GrantNeed,
        at: u64,
        data: &[u8],
    ) -> Result<()> {
        let need = GrantNeed {
            access: need.access | GRANT_WRITE,
            ..need
        };
        let len = data.len() as u64;
        let result = self
            .locate(region, grant_ref, need, at, len)
            .and_then(|gpa| {
                self.memory
                    .write_slice(data, GuestAddress(gpa))
                    .map_err(|source| HypervisorError::GuestRamAccess { gpa, len, source })
            });
        self.account(grant_ref, result)
    }

    /// The counters so far (shared by every clone).
    pub fn stats(&self) -> FrameGrantStats {
        FrameGrantStats {
            granted: self.counters.granted.load(Ordering::Relaxed),
            refused: self.counters.refused.load(Ordering::Relaxed),
            logged: self.counters.logged.load(Ordering::Relaxed),
        }
    }

    /// Copies the entry once, checks it, checks the grant is guest RAM and that
    /// `[at, at + len)` lies inside it. Returns the guest address of byte `at`.
    fn locate(
        &self,
        region: &SharedRegion,
        grant_ref: u32,
        need: GrantNeed,
        at: u64,
        len: u64,
    ) -> Result<u64> {
        let grant = region
            .frame_grant(grant_ref, need)
            .map_err(HypervisorError::FrameGrant)?;
        self.check_ram(&grant)?;
        let outside = || HypervisorError::GrantOutside {
            grant_ref,
            granted: grant.len,
            at,
            len,
        };
        let end = at.checked_add(len).ok_or_else(outside)?;
        if end > u64::from(grant.len) {
            return Err(outside());
        }
        // No overflow: gpa + grant.len fits (check_frame_entry) and at + len <= grant.len.
        Ok(grant.gpa + at)
    }

    /// The whole granted range must be RAM, even the part this access does not touch: a
    /// grant naming device memory is refused as a whole.
    fn check_ram(&self, grant: &ValidFrameGrant) -> Result<()> {
        // `len` is at most GRANT_FRAMES_MAX_LEN, so it fits a usize.
        if self
            .memory
            .check_range(GuestAddress(grant.gpa), grant.len as usize)
        {
            Ok(())
        } else {
            Err(HypervisorError::GrantNotGuestRam {
                grant_ref: grant.grant_ref,
                gpa: grant.gpa,
                len: grant.len,
            })
        }
    }

    fn account<T>(&self, grant_ref: u32, result: Result<T>) -> Result<T> {
        let c = &self.counters;
        match &result {
            Ok(_) => {
                c.granted.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                c.refused.fetch_add(1, Ordering::Relaxed);
                let admitted = c
                    .budget
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .admit(Instant::now());
                if let Some(silenced) = admitted {
                    c.logged.fetch_add(1, Ordering::Relaxed);
                    let cause = std::error::Error::source(e)
                        .map(ToString::to_string)
                        .unwrap_or_default();
                    tracing::warn!(
                        grant_ref,
                        silenced,
                        %cause,
                        "guest misbehaviour: {e}"
                    );
                }
            }
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vesper_shared_abi::{
        grant_entry_offset, GrantEntry, GRANT_GUEST_FRAMES, GRANT_OWNER_RELAY, GRANT_STATE_ACTIVE,
        MIN_REGION_SIZE,
    };
    use vesper_shmem::ShmemError;
    use vm_memory::ByteValued;

    const GEN: u32 = 4;

    fn need() -> GrantNeed {
        GrantNeed {
            access: 0,
            owner: GRANT_OWNER_RELAY,
            generation: GEN,
        }
    }

    /// 64 KiB of RAM at 0 and 64 KiB at 1 MiB, with a hole between.
    fn setup() -> (GuestFrameGrants, SharedRegion) {
        let memory = GuestMemoryMmap::<()>::from_ranges(&[
            (GuestAddress(0), 0x1_0000),
            (GuestAddress(0x10_0000), 0x1_0000),
        ])
        .unwrap();
        let region = SharedRegion::create("grants", MIN_REGION_SIZE).unwrap();
        (GuestFrameGrants::new(memory), region)
    }

    fn grant(region: &SharedRegion, grant_ref: u32, gpa: u64, len: u32, access: u32) {
        let entry = GrantEntry {
            offset: gpa,
            len,
            access: access | GRANT_GUEST_FRAMES,
            owner: GRANT_OWNER_RELAY,
            generation: GEN,
            state: GRANT_STATE_ACTIVE,
            reserved: 0,
        };
        region
            .guest_write(entry.as_slice(), grant_entry_offset(grant_ref).unwrap())
            .unwrap();
    }

    #[test]
    fn reads_and_writes_go_to_the_granted_frames_only() {
        let (g, region) = setup();
        g.memory
            .write_slice(b"frame", GuestAddress(0x3000))
            .unwrap();
        grant(&region, 1, 0x3000, 0x1000, GRANT_READ);
        grant(&region, 2, 0x5000, 0x2000, GRANT_READ | GRANT_WRITE);
        assert_eq!(g.read(&region, 1, need(), 0, 5).unwrap(), b"frame");
        g.write(&region, 2, need(), 0x1ffc, b"tail").unwrap();
        let mut back = [0u8; 4];
        g.memory
            .read_slice(&mut back, GuestAddress(0x6ffc))
            .unwrap();
        assert_eq!(&back, b"tail");
        // Read-only grant: no write. Past the grant: no access.
        assert!(matches!(
            g.write(&region, 1, need(), 0, b"x"),
            Err(HypervisorError::FrameGrant(ShmemError::GrantAccess { .. }))
        ));
        assert!(matches!(
            g.write(&region, 2, need(), 0x1ffd, b"tail"),
            Err(HypervisorError::GrantOutside { grant_ref: 2, .. })
        ));
        assert!(matches!(
            g.read(&region, 1, need(), u64::MAX, 2),
            Err(HypervisorError::GrantOutside { .. })
        ));
        assert_eq!(
            g.stats(),
            FrameGrantStats {
                granted: 2,
                refused: 3,
                logged: 3
            }
        );
    }

    #[test]
    fn grants_that_are_not_all_ram_are_refused_whole() {
        let (g, region) = setup();
        for (gpa, len) in [
            (0xf000, 0x2000),        // runs into the hole
            (0x2_0000, 0x1000),      // in the hole
            (0x10_f000, 0x2000),     // runs past the end of RAM
            (0xfebf_f000, 0x1000),   // where devices live
            (0x1_0000_0000, 0x1000), // above 4 GiB, no RAM
        ] {
            grant(&region, 3, gpa, len, GRANT_READ);
            assert!(
                matches!(
                    g.read(&region, 3, need(), 0, 1),
                    Err(HypervisorError::GrantNotGuestRam { grant_ref: 3, .. })
                ),
                "{gpa:#x}+{len:#x}"
            );
        }
        grant(&region, 3, 0x10_f000, 0x1000, GRANT_READ);
        assert!(g.read(&region, 3, need(), 0, 0x1000).is_ok());
    }

    #[test]
    fn the_log_budget_bounds_lines_per_window_and_reports_the_silenced() {
        let mut b = LogBudget::new();
        let t0 = Instant::now();
        let logged = (0..100).filter(|_| b.admit(t0).is_some()).count();
        assert_eq!(logged, LOG_BURST as usize);
        // Next window: the first line carries the 90 silenced ones.
        assert_eq!(b.admit(t0 + LOG_WINDOW), Some(90));
        assert_eq!(b.admit(t0 + LOG_WINDOW), Some(0));
    }

    #[test]
    fn a_scribbling_guest_is_counted_but_logged_within_the_budget() {
        let (g, region) = setup();
        let mut x: u32 = 0x1234_5678;
        let mut table = vec![0u8; 4096];
        for b in table.iter_mut() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            *b = x as u8;
        }
        region
            .guest_write(&table, grant_entry_offset(0).unwrap())
            .unwrap();
        for r in 0..200 {
            assert!(g.read(&region, r, need(), 0, 8).is_err());
        }
        let s = g.stats();
        assert_eq!((s.granted, s.refused), (0, 200));
        assert!(
            s.logged >= 1 && s.logged <= u64::from(LOG_BURST) * 2,
            "{s:?}"
        );
    }
}
