//! Grant checks: the host touches a data-area range only through a [`ValidGrant`],
//! which exists only after every field of the (once-copied) entry was checked.

use vesper_shared_abi::{grant_entry_offset, GrantEntry, DATA_AREA_OFFSET, GRANT_STATE_ACTIVE};

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

/// Checks a copied entry. Pure, so it is unit- and fuzz-testable.
pub fn check_entry(
    grant_ref: u32,
    entry: &GrantEntry,
    need: GrantNeed,
    region_size: u64,
) -> Result<ValidGrant, ShmemError> {
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

impl SharedRegion {
    /// Copies grant entry `grant_ref` once and checks it against `need`.
    pub fn grant(&self, grant_ref: u32, need: GrantNeed) -> Result<ValidGrant, ShmemError> {
        let at = grant_entry_offset(grant_ref).ok_or(ShmemError::GrantRefOutOfRange(grant_ref))?;
        let entry: GrantEntry = self.read_obj(at)?;
        check_entry(grant_ref, &entry, need, self.size())
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
    use vesper_shared_abi::{GRANT_OWNER_MODLIST, GRANT_OWNER_STAGING, GRANT_READ, GRANT_WRITE};

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

    proptest! {
        #[test]
        fn any_accepted_grant_lies_inside_the_data_area(offset: u64, len: u32, access: u32, state: u32) {
            let g = GrantEntry { offset, len, access, state, ..good() };
            if let Ok(v) = check_entry(0, &g, need(), SIZE) {
                prop_assert!(v.offset >= DATA_AREA_OFFSET);
                prop_assert!(v.offset + v.len as u64 <= SIZE);
            }
        }
    }
}
