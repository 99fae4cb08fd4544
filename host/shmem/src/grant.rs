//! Grant checks: the host touches a data-area range only through a [`ValidGrant`],
//! which exists only after every field of the (once-copied) entry was checked. A grant
//! of guest RAM frames (`GRANT_GUEST_FRAMES`) is never a region range: [`check_entry`]
//! refuses it, and only a transport that owns guest RAM checks it, with
//! [`check_frame_entry`], into a [`ValidFrameGrant`].

use vesper_shared_abi::{
    grant_entry_offset, GrantEntry, DATA_AREA_OFFSET, GRANT_FRAMES_MAX_LEN, GRANT_GUEST_FRAMES,
    GRANT_STATE_ACTIVE, PAGE_SIZE,
};

use crate::{SharedRegion, ShmemError};

/// A grant entry that passed every check, with the copy it was checked on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidGrant {
    /// The grant reference.
    pub grant_ref: u32,
    /// Region offset of the range.
    pub offset: u64,
    /// Length of the range.
    pub len: u32,
}

/// A grant of guest RAM frames whose entry passed every check that needs no knowledge
/// of guest RAM: the transport still checks that `[gpa, gpa + len)` is RAM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ValidFrameGrant {
    /// The grant reference.
    pub grant_ref: u32,
    /// Guest-physical address of the first frame; page aligned.
    pub gpa: u64,
    /// Length: whole pages, at most `GRANT_FRAMES_MAX_LEN`; `gpa + len` does not overflow.
    pub len: u32,
    /// The entry's access bits (`GRANT_GUEST_FRAMES` set).
    pub access: u32,
}

/// What the host needs of a grant.
#[derive(Debug, Clone, Copy)]
pub struct GrantNeed {
    /// Access bits that must be set.
    pub access: u32,
    /// Owner the entry must carry.
    pub owner: u32,
    /// The guest's current generation.
    pub generation: u32,
}

/// State and generation: is the entry live in the guest's current generation?
fn check_live(grant_ref: u32, entry: &GrantEntry, need: GrantNeed) -> Result<(), ShmemError> {
    if entry.state != GRANT_STATE_ACTIVE {
        return Err(ShmemError::GrantInactive(grant_ref));
    }
    if entry.generation != need.generation {
        return Err(ShmemError::GrantStale {
            grant_ref,
            found: entry.generation,
            current: need.generation,
        });
    }
    Ok(())
}

/// Access bits and owner, as the operation needs them.
fn check_use(grant_ref: u32, entry: &GrantEntry, need: GrantNeed) -> Result<(), ShmemError> {
    if entry.access & need.access != need.access {
        return Err(ShmemError::GrantAccess {
            grant_ref,
            allowed: entry.access,
            needed: need.access,
        });
    }
    if entry.owner != need.owner {
        return Err(ShmemError::GrantOwner {
            grant_ref,
            found: entry.owner,
            expected: need.owner,
        });
    }
    Ok(())
}

/// Checks a copied entry naming a data-area range. Pure, so it is unit- and
/// fuzz-testable. A grant of guest RAM frames is refused here: its `offset` is not a
/// region offset.
pub fn check_entry(
    grant_ref: u32,
    entry: &GrantEntry,
    need: GrantNeed,
    region_size: u64,
) -> Result<ValidGrant, ShmemError> {
    check_live(grant_ref, entry, need)?;
    if entry.access & GRANT_GUEST_FRAMES != 0 {
        return Err(ShmemError::GrantIsGuestFrames(grant_ref));
    }
    check_use(grant_ref, entry, need)?;
    let in_data_area = entry.offset >= DATA_AREA_OFFSET
        && entry.len > 0
        && entry
            .offset
            .checked_add(entry.len as u64)
            .is_some_and(|end| end <= region_size);
    if !in_data_area {
        return Err(ShmemError::GrantRange {
            grant_ref,
            offset: entry.offset,
            len: entry.len,
        });
    }
    Ok(ValidGrant {
        grant_ref,
        offset: entry.offset,
        len: entry.len,
    })
}

/// Checks a copied entry naming guest RAM frames: live, current generation,
/// `GRANT_GUEST_FRAMES` set, access and owner as needed, page-aligned address, whole
/// pages up to `GRANT_FRAMES_MAX_LEN`, no overflow. Pure, so it is unit- and
/// fuzz-testable. Whether the frames are guest RAM is the transport's check.
pub fn check_frame_entry(
    grant_ref: u32,
    entry: &GrantEntry,
    need: GrantNeed,
) -> Result<ValidFrameGrant, ShmemError> {
    check_live(grant_ref, entry, need)?;
    if entry.access & GRANT_GUEST_FRAMES == 0 {
        return Err(ShmemError::GrantNotGuestFrames(grant_ref));
    }
    check_use(grant_ref, entry, need)?;
    let gpa = entry.offset;
    if !gpa.is_multiple_of(PAGE_SIZE) {
        return Err(ShmemError::GrantFrameMisaligned { grant_ref, gpa });
    }
    let len = entry.len;
    if len == 0 || !u64::from(len).is_multiple_of(PAGE_SIZE) || len > GRANT_FRAMES_MAX_LEN {
        return Err(ShmemError::GrantFrameLength { grant_ref, len });
    }
    if gpa.checked_add(u64::from(len)).is_none() {
        return Err(ShmemError::GrantFrameOverflow {
            grant_ref,
            gpa,
            len,
        });
    }
    Ok(ValidFrameGrant {
        grant_ref,
        gpa,
        len,
        access: entry.access,
    })
}

impl SharedRegion {
    /// Copies grant entry `grant_ref` once and checks it against `need`.
    pub fn grant(&self, grant_ref: u32, need: GrantNeed) -> Result<ValidGrant, ShmemError> {
        let at = grant_entry_offset(grant_ref).ok_or(ShmemError::GrantRefOutOfRange(grant_ref))?;
        let entry: GrantEntry = self.read_obj(at)?;
        check_entry(grant_ref, &entry, need, self.size())
    }

    /// Copies grant entry `grant_ref` once and checks it as a grant of guest RAM frames.
    pub fn frame_grant(
        &self,
        grant_ref: u32,
        need: GrantNeed,
    ) -> Result<ValidFrameGrant, ShmemError> {
        let at = grant_entry_offset(grant_ref).ok_or(ShmemError::GrantRefOutOfRange(grant_ref))?;
        let entry: GrantEntry = self.read_obj(at)?;
        check_frame_entry(grant_ref, &entry, need)
    }

    /// Writes `data` at the start of a granted range.
    pub fn write_granted(&self, grant: &ValidGrant, data: &[u8]) -> Result<(), ShmemError> {
        if data.len() as u64 > grant.len as u64 {
            return Err(ShmemError::GrantTooSmall {
                grant_ref: grant.grant_ref,
                len: grant.len,
                wanted: data.len() as u64,
            });
        }
        self.write_slice(data, grant.offset)
    }

    /// Copies the first `len` bytes of a granted range.
    pub fn read_granted(&self, grant: &ValidGrant, len: u64) -> Result<Vec<u8>, ShmemError> {
        if len > grant.len as u64 {
            return Err(ShmemError::GrantTooSmall {
                grant_ref: grant.grant_ref,
                len: grant.len,
                wanted: len,
            });
        }
        let mut buf = vec![0u8; len as usize];
        self.read_slice(&mut buf, grant.offset)?;
        Ok(buf)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vesper_shared_abi::{
        GRANT_ENTRIES, GRANT_OWNER_MODLIST, GRANT_OWNER_STAGING, GRANT_READ, GRANT_STATE_FREE,
        GRANT_WRITE,
    };
    use vm_memory::ByteValued;

    const SIZE: u64 = 8 << 20;

    fn good() -> GrantEntry {
        GrantEntry {
            offset: DATA_AREA_OFFSET,
            len: 4096,
            access: GRANT_READ | GRANT_WRITE,
            owner: GRANT_OWNER_STAGING,
            generation: 3,
            state: GRANT_STATE_ACTIVE,
            reserved: 0,
        }
    }

    fn need() -> GrantNeed {
        GrantNeed {
            access: GRANT_WRITE,
            owner: GRANT_OWNER_STAGING,
            generation: 3,
        }
    }

    #[test]
    fn a_good_grant_passes() {
        assert_eq!(
            check_entry(1, &good(), need(), SIZE).unwrap(),
            ValidGrant {
                grant_ref: 1,
                offset: DATA_AREA_OFFSET,
                len: 4096
            }
        );
    }

    #[test]
    fn each_bad_field_has_its_own_error() {
        let e = |f: fn(&mut GrantEntry)| {
            let mut g = good();
            f(&mut g);
            check_entry(1, &g, need(), SIZE).unwrap_err()
        };
        assert!(matches!(e(|g| g.state = 0), ShmemError::GrantInactive(1)));
        assert!(matches!(
            e(|g| g.generation = 2),
            ShmemError::GrantStale { .. }
        ));
        assert!(matches!(
            e(|g| g.access = GRANT_READ),
            ShmemError::GrantAccess { .. }
        ));
        assert!(matches!(
            e(|g| g.owner = GRANT_OWNER_MODLIST),
            ShmemError::GrantOwner { .. }
        ));
        assert!(matches!(e(|g| g.offset = 0), ShmemError::GrantRange { .. }));
        assert!(matches!(
            e(|g| g.offset = SIZE - 100),
            ShmemError::GrantRange { .. }
        ));
        assert!(matches!(
            e(|g| g.offset = u64::MAX - 10),
            ShmemError::GrantRange { .. }
        ));
        assert!(matches!(e(|g| g.len = 0), ShmemError::GrantRange { .. }));
    }

    #[test]
    fn refs_past_the_table_are_refused() {
        let r = SharedRegion::create("g", SIZE).unwrap();
        assert!(matches!(
            r.grant(4096, need()),
            Err(ShmemError::GrantRefOutOfRange(4096))
        ));
    }

    fn frames() -> GrantEntry {
        GrantEntry {
            offset: 0x20_000,
            len: 2 * 4096,
            access: GRANT_READ | GRANT_GUEST_FRAMES,
            ..good()
        }
    }

    fn frame_need() -> GrantNeed {
        GrantNeed {
            access: GRANT_READ,
            ..need()
        }
    }

    #[test]
    fn a_region_transport_refuses_a_frame_grant_by_name() {
        assert!(matches!(
            check_entry(2, &frames(), frame_need(), SIZE),
            Err(ShmemError::GrantIsGuestFrames(2))
        ));
        // Even when the address would be a valid data-area offset.
        let inside = GrantEntry {
            offset: DATA_AREA_OFFSET,
            ..frames()
        };
        assert!(matches!(
            check_entry(2, &inside, frame_need(), SIZE),
            Err(ShmemError::GrantIsGuestFrames(2))
        ));
    }

    #[test]
    fn a_good_frame_grant_passes_and_a_range_grant_is_not_one() {
        assert_eq!(
            check_frame_entry(5, &frames(), frame_need()).unwrap(),
            ValidFrameGrant {
                grant_ref: 5,
                gpa: 0x20_000,
                len: 8192,
                access: GRANT_READ | GRANT_GUEST_FRAMES,
            }
        );
        let max = GrantEntry {
            len: GRANT_FRAMES_MAX_LEN,
            ..frames()
        };
        assert!(check_frame_entry(5, &max, frame_need()).is_ok());
        assert!(matches!(
            check_frame_entry(5, &good(), need()),
            Err(ShmemError::GrantNotGuestFrames(5))
        ));
    }

    #[test]
    fn each_bad_frame_field_has_its_own_error() {
        let e = |f: fn(&mut GrantEntry)| {
            let mut g = frames();
            f(&mut g);
            check_frame_entry(1, &g, frame_need()).unwrap_err()
        };
        assert!(matches!(
            e(|g| g.state = GRANT_STATE_FREE),
            ShmemError::GrantInactive(1)
        ));
        assert!(matches!(
            e(|g| g.generation = 9),
            ShmemError::GrantStale { found: 9, .. }
        ));
        assert!(matches!(
            e(|g| g.access = GRANT_WRITE | GRANT_GUEST_FRAMES),
            ShmemError::GrantAccess { .. }
        ));
        assert!(matches!(
            e(|g| g.owner = GRANT_OWNER_MODLIST),
            ShmemError::GrantOwner { .. }
        ));
        assert!(matches!(
            e(|g| g.offset = 0x20_010),
            ShmemError::GrantFrameMisaligned { gpa: 0x20_010, .. }
        ));
        for len in [0, 100, 4097, GRANT_FRAMES_MAX_LEN + 4096, !0xfffu32] {
            let mut g = frames();
            g.len = len;
            assert!(
                matches!(
                    check_frame_entry(1, &g, frame_need()),
                    Err(ShmemError::GrantFrameLength { .. })
                ),
                "len {len:#x}"
            );
        }
        assert!(matches!(
            e(|g| g.offset = !0xfffu64),
            ShmemError::GrantFrameOverflow { .. }
        ));
        // A range ending exactly at 2^64 has no representable end either.
        assert!(matches!(
            e(|g| {
                g.offset = !0xfffu64 - 4096;
                g.len = 8192;
            }),
            ShmemError::GrantFrameOverflow { .. }
        ));
    }

    #[test]
    fn frame_grants_are_copied_from_the_table_and_checked() {
        let r = SharedRegion::create("g", SIZE).unwrap();
        r.guest_write(frames().as_slice(), grant_entry_offset(7).unwrap())
            .unwrap();
        assert_eq!(r.frame_grant(7, frame_need()).unwrap().gpa, 0x20_000);
        assert!(matches!(
            r.grant(7, frame_need()),
            Err(ShmemError::GrantIsGuestFrames(7))
        ));
        assert!(matches!(
            r.frame_grant(8, frame_need()),
            Err(ShmemError::GrantInactive(8))
        ));
        assert!(matches!(
            r.frame_grant(GRANT_ENTRIES, frame_need()),
            Err(ShmemError::GrantRefOutOfRange(_))
        ));
    }

    proptest! {
        #[test]
        fn any_accepted_grant_lies_inside_the_data_area(offset: u64, len: u32, access: u32, state: u32) {
            let g = GrantEntry { offset, len, access, state, ..good() };
            if let Ok(v) = check_entry(0, &g, need(), SIZE) {
                prop_assert!(v.offset >= DATA_AREA_OFFSET);
                prop_assert!(v.offset + v.len as u64 <= SIZE);
                prop_assert_eq!(access & GRANT_GUEST_FRAMES, 0);
            }
        }

        #[test]
        fn any_accepted_frame_grant_is_whole_bounded_pages(
            offset: u64,
            len: u32,
            access: u32,
            state in prop_oneof![Just(GRANT_STATE_ACTIVE), any::<u32>()],
            owner in prop_oneof![Just(GRANT_OWNER_STAGING), any::<u32>()],
        ) {
            let g = GrantEntry { offset, len, access, state, owner, ..frames() };
            match check_frame_entry(0, &g, frame_need()) {
                Ok(v) => {
                    prop_assert_eq!(v.gpa % PAGE_SIZE, 0);
                    prop_assert!(v.len > 0 && v.len <= GRANT_FRAMES_MAX_LEN);
                    prop_assert_eq!(u64::from(v.len) % PAGE_SIZE, 0);
                    prop_assert!(v.gpa.checked_add(u64::from(v.len)).is_some());
                    prop_assert!(access & GRANT_GUEST_FRAMES != 0 && access & GRANT_READ != 0);
                    prop_assert!(state == GRANT_STATE_ACTIVE && owner == GRANT_OWNER_STAGING);
                }
                Err(e) => prop_assert!(e.is_guest_misbehaviour()),
            }
        }

        #[test]
        fn random_entries_are_refused_by_both_checkers_without_panic(bytes in proptest::collection::vec(any::<u8>(), 32)) {
            let g = GrantEntry::from_slice(&bytes).copied().unwrap();
            let n = need();
            // A scribbled entry passes only if it happens to be a valid grant.
            if check_frame_entry(0, &g, n).is_ok() {
                prop_assert!(g.state == GRANT_STATE_ACTIVE && g.generation == n.generation);
            }
            if check_entry(0, &g, n, SIZE).is_ok() {
                prop_assert!(g.state == GRANT_STATE_ACTIVE && g.generation == n.generation);
            }
        }
    }
}
