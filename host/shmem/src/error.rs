use thiserror::Error;
use vesper_shared_abi::{GRANT_FRAMES_MAX_LEN, RING_SLOTS, SLOT_PAYLOAD_SIZE};

/// Errors of the shared-region layer. Variants after `OutOfBounds` are guest
/// misbehaviour: [`ShmemError::is_guest_misbehaviour`] tells them apart.
#[derive(Debug, Error)]
pub enum ShmemError {
    /// memfd_create or ftruncate failed.
    #[error("cannot create the shared-memory file")]
    Create(#[source] std::io::Error),
    /// mmap failed.
    #[error("cannot map the shared region")]
    Map(#[source] vm_memory::mmap::MmapRegionError),
    /// The requested size is unusable.
    #[error("region size {0:#x} must be a power of two of at least 2 MiB")]
    BadSize(u64),
    /// A host access fell outside the region (a host bug, never guest-triggered).
    #[error("access at {offset:#x}+{len:#x} is outside the region")]
    OutOfBounds {
        /// Offset of the access.
        offset: u64,
        /// Length of the access.
        len: u64,
    },
    /// The response ring has no free slot (the guest is not consuming).
    #[error("response ring is full: the guest is not consuming responses")]
    ResponseRingFull,
    /// The guest's request producer is further ahead than the ring can hold.
    #[error("request producer {producer} is {} slots past consumer {consumer} (ring holds {RING_SLOTS})", producer.wrapping_sub(*consumer))]
    RingOverrun {
        /// Producer index the guest wrote.
        producer: u32,
        /// Host's consumer index.
        consumer: u32,
    },
    /// The guest's response consumer is ahead of what the host produced.
    #[error("response consumer {consumer} is ahead of the host's producer {producer}")]
    ConsumerAhead {
        /// Host's producer index.
        producer: u32,
        /// Consumer index the guest wrote.
        consumer: u32,
    },
    /// A message declares more payload than a slot holds.
    #[error("message declares {len} payload bytes; a slot holds {SLOT_PAYLOAD_SIZE}")]
    PayloadTooLong {
        /// Declared payload length.
        len: u32,
    },
    /// A message's payload is shorter than its kind requires.
    #[error("message kind {kind} carries {len} payload bytes; it needs {needed}")]
    PayloadTooShort {
        /// Message kind.
        kind: u32,
        /// Declared payload length.
        len: u32,
        /// Bytes the kind needs.
        needed: usize,
    },
    /// A grant reference past the grant table.
    #[error("grant {0} is outside the grant table")]
    GrantRefOutOfRange(u32),
    /// The grant entry is not active.
    #[error("grant {0} is not active")]
    GrantInactive(u32),
    /// The grant belongs to an older generation of the guest.
    #[error("grant {grant_ref} is from generation {found}; the guest is at {current}")]
    GrantStale {
        /// Grant reference.
        grant_ref: u32,
        /// Generation in the entry.
        found: u32,
        /// Current guest generation.
        current: u32,
    },
    /// The grant does not allow the access the host needs.
    #[error("grant {grant_ref} allows access {allowed:#x}; the host needs {needed:#x}")]
    GrantAccess {
        /// Grant reference.
        grant_ref: u32,
        /// Access bits in the entry.
        allowed: u32,
        /// Access bits needed.
        needed: u32,
    },
    /// The grant is for another purpose.
    #[error("grant {grant_ref} is owned by {found}; expected {expected}")]
    GrantOwner {
        /// Grant reference.
        grant_ref: u32,
        /// Owner in the entry.
        found: u32,
        /// Owner needed.
        expected: u32,
    },
    /// The granted range is not inside the data area of the region.
    #[error("grant {grant_ref} covers {offset:#x}+{len:#x}, outside the data area")]
    GrantRange {
        /// Grant reference.
        grant_ref: u32,
        /// Offset in the entry.
        offset: u64,
        /// Length in the entry.
        len: u32,
    },
    /// A grant of guest RAM frames reached a transport that shares only the region.
    #[error("grant {0} names guest RAM frames (GRANT_GUEST_FRAMES), which this transport cannot reach; the guest must grant a data-area range (the host does not offer HOST_FEATURE_GUEST_FRAMES)")]
    GrantIsGuestFrames(u32),
    /// A region-range grant where guest RAM frames were expected.
    #[error("grant {0} names a region range; guest RAM frames (GRANT_GUEST_FRAMES) were expected")]
    GrantNotGuestFrames(u32),
    /// A guest-frame grant whose address is not page aligned.
    #[error("grant {grant_ref} names frames at {gpa:#x}, which is not page aligned")]
    GrantFrameMisaligned {
        /// Grant reference.
        grant_ref: u32,
        /// Guest-physical address in the entry.
        gpa: u64,
    },
    /// A guest-frame grant whose length is zero, not whole pages, or too long.
    #[error("grant {grant_ref} names {len:#x} bytes of frames; it must be a non-zero multiple of 4 KiB up to {GRANT_FRAMES_MAX_LEN:#x}")]
    GrantFrameLength {
        /// Grant reference.
        grant_ref: u32,
        /// Length in the entry.
        len: u32,
    },
    /// A guest-frame grant that runs past the end of the address space.
    #[error("grant {grant_ref} names frames {gpa:#x}+{len:#x}, past the end of the address space")]
    GrantFrameOverflow {
        /// Grant reference.
        grant_ref: u32,
        /// Guest-physical address in the entry.
        gpa: u64,
        /// Length in the entry.
        len: u32,
    },
    /// The granted range is smaller than the data the host must move.
    #[error("grant {grant_ref} holds {len} bytes; {wanted} are needed")]
    GrantTooSmall {
        /// Grant reference.
        grant_ref: u32,
        /// Granted length.
        len: u32,
        /// Bytes needed.
        wanted: u64,
    },
}

impl ShmemError {
    /// True when the error was caused by bytes the guest wrote (as opposed to a host
    /// failure such as mmap): the guest is misbehaving.
    pub fn is_guest_misbehaviour(&self) -> bool {
        !matches!(
            self,
            ShmemError::Create(_)
                | ShmemError::Map(_)
                | ShmemError::BadSize(_)
                | ShmemError::OutOfBounds { .. }
        )
    }
}
