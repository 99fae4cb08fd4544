//! The host reader of one relay channel.

use std::mem::{offset_of, size_of};
use std::sync::atomic::Ordering;

use serde::{Deserialize, Serialize};
use vesper_shared_abi::*;
use vesper_shmem::grant::GrantNeed;
use vesper_shmem::{SharedRegion, ValidGrant};

use crate::RelayError;

const HEADER: usize = size_of::<RecordHeader>();
const BUF_CONTROL: u64 = size_of::<RelayBufControl>() as u64;
const CONSUMER: u64 = size_of::<RelayConsumer>() as u64;

/// A channel the host accepted: geometry and the grants it was opened with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelSpec {
    /// Guest-chosen id.
    pub id: u32,
    /// Owning module.
    pub module: String,
    /// Channel name.
    pub name: String,
    /// Overwrite mode.
    pub overwrite: bool,
    /// Bytes per sub-buffer.
    pub subbuf_size: u32,
    /// Sub-buffers per CPU.
    pub n_subbufs: u32,
    /// CPU buffers.
    pub n_cpus: u32,
    #[serde(skip)]
    control: ValidGrant,
    #[serde(skip)]
    consumer: ValidGrant,
    #[serde(skip)]
    buffers: Vec<ValidGrant>,
    #[serde(skip)]
    generation: u32,
    #[serde(skip)]
    request: RelayOpenRequest,
}

impl ChannelSpec {
    /// The `REQ_RELAY_OPEN` the channel was accepted from (kept by the daemon so that a
    /// restarted one can check it again and resume the channel).
    pub fn open_request(&self) -> &RelayOpenRequest {
        &self.request
    }
}

fn range(
    channel: u32,
    what: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), RelayError> {
    if value < min || value > max {
        return Err(RelayError::BadGeometry {
            channel,
            what,
            value,
            min,
            max,
        });
    }
    Ok(())
}

fn grant(
    region: &SharedRegion,
    channel: u32,
    what: &'static str,
    grant_ref: u32,
    access: u32,
    generation: u32,
    expected: u64,
) -> Result<ValidGrant, RelayError> {
    let need = GrantNeed {
        access,
        owner: GRANT_OWNER_RELAY,
        generation,
    };
    let g = region
        .grant(grant_ref, need)
        .map_err(|source| RelayError::Grant {
            channel,
            what,
            source,
        })?;
    if g.len as u64 != expected {
        return Err(RelayError::GrantSize {
            channel,
            what,
            len: g.len,
            expected,
        });
    }
    Ok(g)
}

/// Checks a `REQ_RELAY_OPEN` of guest `generation`: geometry, then every grant.
pub fn validate_open(
    region: &SharedRegion,
    req: &RelayOpenRequest,
    generation: u32,
) -> Result<ChannelSpec, RelayError> {
    let id = req.channel_id;
    range(
        id,
        "sub-buffer size",
        req.subbuf_size as u64,
        RELAY_MIN_SUBBUF_SIZE as u64,
        RELAY_MAX_SUBBUF_SIZE as u64,
    )?;
    if !req.subbuf_size.is_multiple_of(PAGE_SIZE as u32) {
        return Err(RelayError::BadGeometry {
            channel: id,
            what: "sub-buffer size (not page-aligned)",
            value: req.subbuf_size as u64,
            min: RELAY_MIN_SUBBUF_SIZE as u64,
            max: RELAY_MAX_SUBBUF_SIZE as u64,
        });
    }
    range(
        id,
        "sub-buffer count",
        req.n_subbufs as u64,
        2,
        RELAY_MAX_SUBBUFS as u64,
    )?;
    range(id, "CPU count", req.n_cpus as u64, 1, RELAY_MAX_CPUS as u64)?;
    let (n_cpus, n_subbufs) = (req.n_cpus as u64, req.n_subbufs as u64);
    let control = grant(
        region,
        id,
        "control",
        req.control_grant,
        GRANT_READ,
        generation,
        n_cpus * (BUF_CONTROL + 4 * n_subbufs),
    )?;
    let consumer = grant(
        region,
        id,
        "consumer",
        req.consumer_grant,
        GRANT_READ | GRANT_WRITE,
        generation,
        n_cpus * CONSUMER,
    )?;
    let buffers = (0..req.n_cpus as usize)
        .map(|cpu| {
            grant(
                region,
                id,
                "buffer",
                req.buffer_grants[cpu],
                GRANT_READ,
                generation,
                n_subbufs * req.subbuf_size as u64,
            )
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(ChannelSpec {
        id,
        module: String::from_utf8_lossy(c_str_bytes(&req.module)).into_owned(),
        name: String::from_utf8_lossy(c_str_bytes(&req.name)).into_owned(),
        overwrite: req.flags & RELAY_FLAG_OVERWRITE != 0,
        subbuf_size: req.subbuf_size,
        n_subbufs: req.n_subbufs,
        n_cpus: req.n_cpus,
        control,
        consumer,
        buffers,
        generation,
        request: *req,
    })
}

/// One record, copied out of the guest's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// CPU buffer it came from.
    pub cpu: u32,
    /// Its sequence number in that buffer.
    pub seq: u64,
    /// `RECORD_*` type.
    pub rtype: u16,
    /// `RECORD_FLAG_*`.
    pub flags: u16,
    /// Guest timestamp.
    pub timestamp_ns: u64,
    /// Payload.
    pub payload: Vec<u8>,
}

/// A record as a view into the reader's copy, valid during the callback.
#[derive(Debug, Clone, Copy)]
pub struct RecordRef<'a> {
    /// CPU buffer it came from.
    pub cpu: u32,
    /// Its sequence number in that buffer.
    pub seq: u64,
    /// `RECORD_*` type.
    pub rtype: u16,
    /// `RECORD_FLAG_*`.
    pub flags: u16,
    /// Guest timestamp.
    pub timestamp_ns: u64,
    /// Payload.
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    /// An owned copy.
    pub fn to_record(&self) -> Record {
        Record {
            cpu: self.cpu,
            seq: self.seq,
            rtype: self.rtype,
            flags: self.flags,
            timestamp_ns: self.timestamp_ns,
            payload: self.payload.to_vec(),
        }
    }
}

/// Counters of one CPU buffer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BufferStats {
    /// Sub-buffers the guest produced.
    pub produced: u32,
    /// Sub-buffers the host consumed.
    pub consumed: u32,
    /// Records the guest says it wrote.
    pub written: u64,
    /// Records the guest says it dropped.
    pub dropped: u64,
    /// Records lost to overwrite (sequence gaps the host saw).
    pub lost: u64,
    /// Records the host received.
    pub received: u64,
}

/// Counters of a channel.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChannelStats {
    /// The channel.
    pub spec: ChannelSpec,
    /// One entry per CPU buffer.
    pub cpus: Vec<BufferStats>,
}

#[derive(Debug, Default, Clone)]
struct Cursor {
    consumed: u32,
    offset: u32,
    next_seq: u64,
    lost: u64,
    received: u64,
    /// After a resume: records below this sequence number were already delivered by
    /// the previous host and are skipped; the first one at or above it re-anchors
    /// `next_seq` without counting a loss.
    floor: Option<u64>,
}

/// Reads one channel. Holds the host's cursors; the guest's state is read afresh, once,
/// at each [`RelayReader::poll`].
#[derive(Debug)]
pub struct RelayReader {
    spec: ChannelSpec,
    cursors: Vec<Cursor>,
    scratch: Vec<u8>,
}

impl RelayReader {
    /// A reader for an accepted channel.
    pub fn new(spec: ChannelSpec) -> Self {
        let cursors = vec![Cursor::default(); spec.n_cpus as usize];
        let scratch = Vec::with_capacity(spec.subbuf_size as usize);
        Self {
            spec,
            cursors,
            scratch,
        }
    }

    /// A reader for a channel another host process was reading (a restarted
    /// `vesperd`): its cursors come back from the host-owned words of the consumer area
    /// (`consumed`, `read_offset`, `next_seq`), so nothing already delivered is read
    /// again. A cursor that cannot be right (past the writer, offset beyond the
    /// sub-buffer or the committed bytes) starts at the writer's current position
    /// instead: records may be missed, never re-read.
    pub fn resume(spec: ChannelSpec, region: &SharedRegion) -> Self {
        let mut reader = Self::new(spec);
        for cpu in 0..reader.spec.n_cpus {
            let base = reader.spec.consumer.offset + cpu as u64 * CONSUMER;
            let load = |field: usize| region.load_u32(base + field as u64, Ordering::Acquire);
            let stored = (
                load(offset_of!(RelayConsumer, consumed)),
                load(offset_of!(RelayConsumer, read_offset)),
                region.load_u64(
                    base + offset_of!(RelayConsumer, next_seq) as u64,
                    Ordering::Acquire,
                ),
                position(&reader.spec, region, cpu),
            );
            let (n, size) = (reader.spec.n_subbufs, reader.spec.subbuf_size);
            let c = &mut reader.cursors[cpu as usize];
            match stored {
                (Ok(consumed), Ok(offset), Ok(next_seq), Ok((produced, committed)))
                    if offset <= size
                        && produced.wrapping_sub(consumed) <= n
                        && (consumed != produced || offset <= committed) =>
                {
                    c.consumed = consumed;
                    c.offset = offset;
                    c.next_seq = next_seq;
                    c.floor = Some(next_seq);
                }
                (_, _, _, Ok((produced, committed))) => {
                    c.consumed = produced;
                    c.offset = committed;
                    c.floor = Some(0);
                }
                _ => c.floor = Some(0),
            }
        }
        reader
    }

    /// The channel.
    pub fn spec(&self) -> &ChannelSpec {
        &self.spec
    }

    fn check_grants(&self, region: &SharedRegion) -> Result<(), RelayError> {
        let id = self.spec.id;
        let g = self.spec.generation;
        let all = [
            (self.spec.control, GRANT_READ),
            (self.spec.consumer, GRANT_READ | GRANT_WRITE),
        ]
        .into_iter()
        .chain(self.spec.buffers.iter().map(|b| (*b, GRANT_READ)));
        for (want, access) in all {
            let now = region.grant(
                want.grant_ref,
                GrantNeed {
                    access,
                    owner: GRANT_OWNER_RELAY,
                    generation: g,
                },
            );
            if now.ok() != Some(want) {
                return Err(RelayError::GrantChanged {
                    channel: id,
                    grant_ref: want.grant_ref,
                });
            }
        }
        Ok(())
    }

    /// Reads every complete record the guest published since the last poll, appending
    /// them to `out`, and releases consumed sub-buffers back to the guest. An error
    /// means the guest broke the protocol: the caller should drop the channel.
    pub fn poll(&mut self, region: &SharedRegion, out: &mut Vec<Record>) -> Result<(), RelayError> {
        self.poll_with(region, |r| out.push(r.to_record()))
    }

    /// Like [`RelayReader::poll`], but hands each record to `f` as a view into the
    /// reader's single copy of the sub-buffer bytes: no allocation per record.
    pub fn poll_with<F: FnMut(RecordRef<'_>)>(
        &mut self,
        region: &SharedRegion,
        mut f: F,
    ) -> Result<(), RelayError> {
        self.check_grants(region)?;
        for cpu in 0..self.spec.n_cpus {
            self.poll_cpu(region, cpu, &mut f)?;
        }
        Ok(())
    }

    fn poll_cpu<F: FnMut(RecordRef<'_>)>(
        &mut self,
        region: &SharedRegion,
        cpu: u32,
        out: &mut F,
    ) -> Result<(), RelayError> {
        let (id, n, size) = (self.spec.id, self.spec.n_subbufs, self.spec.subbuf_size);
        let shmem = |source| RelayError::Shmem {
            channel: id,
            source,
        };
        let (produced, committed) = position(&self.spec, region, cpu)?;
        let before = {
            let c = &self.cursors[cpu as usize];
            (c.consumed, c.offset)
        };
        let c = &mut self.cursors[cpu as usize];
        let behind = produced.wrapping_sub(c.consumed);
        if behind > n {
            if !self.spec.overwrite {
                return Err(RelayError::BadPosition {
                    channel: id,
                    cpu,
                    what: format!("produced {produced} is {behind} sub-buffers past consumed {} without overwrite", c.consumed),
                });
            }
            c.consumed = produced.wrapping_sub(n - 1);
            c.offset = 0;
        }
        // Bounded: at most n complete sub-buffers and the current one.
        for _ in 0..=n {
            let complete = c.consumed != produced;
            let slot = (c.consumed % n) as u64;
            let end = if complete {
                let pad_at = self.spec.control.offset
                    + self.spec.n_cpus as u64 * BUF_CONTROL
                    + (cpu as u64 * n as u64 + slot) * 4;
                let padding = region.load_u32(pad_at, Ordering::Acquire).map_err(shmem)?;
                if padding > size {
                    return Err(RelayError::BadPosition {
                        channel: id,
                        cpu,
                        what: format!("padding {padding} exceeds the sub-buffer"),
                    });
                }
                size - padding
            } else {
                committed
            };
            if end > c.offset {
                let len = (end - c.offset) as usize;
                self.scratch.resize(len, 0);
                let at =
                    self.spec.buffers[cpu as usize].offset + slot * size as u64 + c.offset as u64;
                region.read_slice(&mut self.scratch, at).map_err(shmem)?;
                let lapped = self.spec.overwrite && {
                    let (now, _) = position(&self.spec, region, cpu)?;
                    now.wrapping_sub(c.consumed) >= n
                };
                if !lapped {
                    parse(&self.scratch, id, cpu, c.offset, c, out)?;
                }
                c.offset = end;
            }
            if !complete {
                break;
            }
            c.consumed = c.consumed.wrapping_add(1);
            c.offset = 0;
            save_cursor(&self.spec, region, cpu, c)?;
            let at = self.spec.consumer.offset
                + cpu as u64 * CONSUMER
                + offset_of!(RelayConsumer, consumed) as u64;
            region
                .store_u32(c.consumed, at, Ordering::Release)
                .map_err(shmem)?;
        }
        if (c.consumed, c.offset) != before {
            save_cursor(&self.spec, region, cpu, c)?;
        }
        Ok(())
    }

    /// Counters, with the guest's own read once now.
    pub fn stats(&self, region: &SharedRegion) -> ChannelStats {
        let cpus = (0..self.spec.n_cpus)
            .map(|cpu| {
                let c = &self.cursors[cpu as usize];
                let at = self.spec.control.offset + cpu as u64 * BUF_CONTROL;
                let ctl: RelayBufControl = region.read_obj(at).unwrap_or_default();
                BufferStats {
                    produced: (ctl.position >> 32) as u32,
                    consumed: c.consumed,
                    written: ctl.written,
                    dropped: ctl.dropped,
                    lost: c.lost,
                    received: c.received,
                }
            })
            .collect();
        ChannelStats {
            spec: self.spec.clone(),
            cpus,
        }
    }
}

/// Writes `cpu`'s parse position into the host-owned words of its consumer area
/// (next_seq first, then the offset: a host that dies in between re-parses records
/// it then skips by sequence, never skips unread ones).
fn save_cursor(
    spec: &ChannelSpec,
    region: &SharedRegion,
    cpu: u32,
    c: &Cursor,
) -> Result<(), RelayError> {
    let base = spec.consumer.offset + cpu as u64 * CONSUMER;
    let shmem = |source| RelayError::Shmem {
        channel: spec.id,
        source,
    };
    region
        .store_u64(
            c.next_seq,
            base + offset_of!(RelayConsumer, next_seq) as u64,
            Ordering::Release,
        )
        .map_err(shmem)?;
    region
        .store_u32(
            c.offset,
            base + offset_of!(RelayConsumer, read_offset) as u64,
            Ordering::Release,
        )
        .map_err(shmem)
}

/// The writer's `(produced, committed)` of `cpu`, loaded once.
fn position(spec: &ChannelSpec, region: &SharedRegion, cpu: u32) -> Result<(u32, u32), RelayError> {
    let at = spec.control.offset
        + cpu as u64 * BUF_CONTROL
        + offset_of!(RelayBufControl, position) as u64;
    let pos = region
        .load_u64(at, Ordering::Acquire)
        .map_err(|source| RelayError::Shmem {
            channel: spec.id,
            source,
        })?;
    let (produced, committed) = ((pos >> 32) as u32, pos as u32);
    if committed > spec.subbuf_size {
        return Err(RelayError::BadPosition {
            channel: spec.id,
            cpu,
            what: format!(
                "committed {committed} bytes in a {}-byte sub-buffer",
                spec.subbuf_size
            ),
        });
    }
    Ok((produced, committed))
}

/// Parses the records in one copy of sub-buffer bytes starting at sub-buffer offset `base`.
fn parse<F: FnMut(RecordRef<'_>)>(
    bytes: &[u8],
    channel: u32,
    cpu: u32,
    base: u32,
    c: &mut Cursor,
    out: &mut F,
) -> Result<(), RelayError> {
    let u16_at = |b: &[u8], at: usize| u16::from_le_bytes([b[at], b[at + 1]]);
    let u32_at =
        |b: &[u8], at: usize| u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"));
    let u64_at =
        |b: &[u8], at: usize| u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"));
    let (mut next_seq, mut lost, mut received) = (c.next_seq, c.lost, c.received);
    let mut at = 0usize;
    let result = loop {
        if at >= bytes.len() {
            break Ok(());
        }
        let bad = |what: String| RelayError::BadRecord {
            channel,
            cpu,
            offset: base + at as u32,
            what,
        };
        let rest = &bytes[at..];
        if rest.len() < HEADER {
            break Err(bad(format!(
                "{} trailing bytes, shorter than a record header",
                rest.len()
            )));
        }
        // Field offsets of `RecordHeader`: len 0, rtype 4, flags 6, seq 8, timestamp 16.
        let len = u32_at(rest, 0) as usize;
        if len < HEADER || len > rest.len() {
            break Err(bad(format!(
                "length {len} outside {HEADER}..={}",
                rest.len()
            )));
        }
        let seq = u64_at(rest, 8);
        if let Some(floor) = c.floor {
            if seq < floor {
                // Delivered before the host restarted.
                at += len.next_multiple_of(RECORD_ALIGN as usize).min(rest.len());
                continue;
            }
            c.floor = None;
            next_seq = seq;
        }
        if seq < next_seq {
            break Err(bad(format!("sequence {seq} after {next_seq}")));
        }
        lost += seq - next_seq;
        next_seq = seq + 1;
        received += 1;
        out(RecordRef {
            cpu,
            seq,
            rtype: u16_at(rest, 4),
            flags: u16_at(rest, 6),
            timestamp_ns: u64_at(rest, 16),
            payload: &rest[HEADER..len],
        });
        at += len.next_multiple_of(RECORD_ALIGN as usize).min(rest.len());
    };
    (c.next_seq, c.lost, c.received) = (next_seq, lost, received);
    result
}

// The parser reads header fields at fixed offsets: they must be where the ABI puts them.
const _: () = {
    assert!(offset_of!(RecordHeader, len) == 0 && offset_of!(RecordHeader, rtype) == 4);
    assert!(offset_of!(RecordHeader, flags) == 6 && offset_of!(RecordHeader, seq) == 8);
    assert!(offset_of!(RecordHeader, timestamp_ns) == 16);
};

#[cfg(test)]
mod tests;
