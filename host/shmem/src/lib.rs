//! Host-side access to a Vesper shared region.
//!
//! The region is shared with a guest that may be buggy or hostile, so every access here
//! goes through `vm-memory`'s bounds-checked volatile accessors, every guest-written
//! index and length is checked before use, and every message or grant is copied into
//! host memory once and parsed only from that copy (no double fetch).
//!
//! - [`SharedRegion`]: the mapping itself, created over a memfd the transport hands to
//!   the hypervisor.
//! - [`HostRings`]: the host's end of the control rings (request consumer, response
//!   producer).
//! - [`grant`]: validating a grant entry before the host touches the range it names.
#![deny(missing_docs)]

mod error;
pub mod grant;
mod region;
mod ring;

pub use error::ShmemError;
pub use grant::{ValidFrameGrant, ValidGrant};
pub use region::SharedRegion;
pub use ring::{guest_side, HostRings, Message};
