//! Host side of Vesper relay channels.
#![deny(missing_docs)]

mod decode;
#[doc(hidden)]
pub mod guest_writer;
pub mod layout;
mod reader;

pub use decode::{decode, decode_with, Decoded};
pub use reader::{
    validate_open, BufferStats, ChannelSpec, ChannelStats, Record, RecordRef, RelayReader,
};

use thiserror::Error;
use vesper_shmem::ShmemError;

/// Why a channel was refused or dropped. All but `Shmem` host failures are guest
/// misbehaviour.
#[derive(Debug, Error)]
pub enum RelayError {
    /// A size in the open request is out of range.
    #[error("channel {channel}: {what} {value} out of range {min}..={max}")]
    BadGeometry {
        /// Channel id.
        channel: u32,
        /// Which field.
        what: &'static str,
        /// Its value.
        value: u64,
        /// Smallest allowed.
        min: u64,
        /// Largest allowed.
        max: u64,
    },
    /// A grant does not have the size the geometry implies.
    #[error("channel {channel}: {what} grant holds {len} bytes, expected {expected}")]
    GrantSize {
        /// Channel id.
        channel: u32,
        /// Which grant.
        what: &'static str,
        /// Granted length.
        len: u32,
        /// Expected length.
        expected: u64,
    },
    /// A grant failed its checks.
    #[error("channel {channel}: {what} grant: {source}")]
    Grant {
        /// Channel id.
        channel: u32,
        /// Which grant.
        what: &'static str,
        /// The check that failed.
        #[source]
        source: ShmemError,
    },
    /// The guest opened a channel id that is already open.
    #[error("channel {channel} is already open")]
    DuplicateChannel {
        /// Channel id.
        channel: u32,
    },
    /// A grant changed or was revoked while the channel was open.
    #[error("channel {channel}: grant {grant_ref} changed while the channel was open")]
    GrantChanged {
        /// Channel id.
        channel: u32,
        /// The grant.
        grant_ref: u32,
    },
    /// The writer's position is impossible.
    #[error("channel {channel} cpu {cpu}: {what}")]
    BadPosition {
        /// Channel id.
        channel: u32,
        /// CPU buffer.
        cpu: u32,
        /// What is wrong.
        what: String,
    },
    /// A record header is impossible.
    #[error("channel {channel} cpu {cpu}: malformed record at sub-buffer offset {offset}: {what}")]
    BadRecord {
        /// Channel id.
        channel: u32,
        /// CPU buffer.
        cpu: u32,
        /// Offset in the sub-buffer.
        offset: u32,
        /// What is wrong.
        what: String,
    },
    /// Region access failed.
    #[error("channel {channel}: {source}")]
    Shmem {
        /// Channel id.
        channel: u32,
        /// Cause.
        #[source]
        source: ShmemError,
    },
}
