//! The guest's side of a relay channel, written in Rust from `PROTOCOL.md`'s Writer
//! steps. For tests, the fuzz target and the throughput benchmark: it plays the guest
//! over the real layout and memory. The product's writer is `guest-module/vesper_relay.c`.

use std::mem::{offset_of, size_of};
use std::sync::atomic::Ordering;

use vesper_shared_abi::*;
use vesper_shmem::{SharedRegion, ShmemError};
use vm_memory::ByteValued;

/// Why a write did not happen.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteError {
    /// Every sub-buffer is unconsumed (no-overwrite).
    Full,
    /// The record cannot fit in a sub-buffer.
    TooBig,
}

#[derive(Debug, Default, Clone)]
struct CpuState {
    produced: u32,
    committed: u32,
    seq: u64,
    written: u64,
    dropped: u64,
}

/// A channel laid out in the data area, with its grants, as the frontend would.
#[derive(Debug)]
pub struct GuestChannel {
    n_subbufs: u32,
    subbuf_size: u32,
    overwrite: bool,
    control: u64,
    consumer: u64,
    buffers: Vec<u64>,
    n_cpus: u32,
    cpus: Vec<CpuState>,
}

fn grant(
    region: &SharedRegion,
    grant_ref: u32,
    offset: u64,
    len: u64,
    access: u32,
    generation: u32,
) -> Result<(), ShmemError> {
    let e = GrantEntry {
        offset,
        len: len as u32,
        access,
        owner: GRANT_OWNER_RELAY,
        generation,
        state: GRANT_STATE_ACTIVE,
        reserved: 0,
    };
    region.write_obj(
        e,
        grant_entry_offset(grant_ref).ok_or(ShmemError::GrantRefOutOfRange(grant_ref))?,
    )
}

impl GuestChannel {
    /// Lays out a channel at data-area offset `base`, grants it using grant refs from
    /// `first_grant` on, and returns it with the `REQ_RELAY_OPEN` payload to post.
    #[allow(clippy::too_many_arguments)]
    pub fn create(
        region: &SharedRegion,
        generation: u32,
        channel_id: u32,
        n_cpus: u32,
        n_subbufs: u32,
        subbuf_size: u32,
        overwrite: bool,
        base: u64,
        first_grant: u32,
    ) -> Result<(Self, RelayOpenRequest), ShmemError> {
        let control_len = n_cpus as u64 * (64 + 4 * n_subbufs as u64);
        let consumer_len = n_cpus as u64 * 64;
        let buf_len = n_subbufs as u64 * subbuf_size as u64;
        let control = base;
        let consumer = (control + control_len).next_multiple_of(PAGE_SIZE);
        let first_buf = (consumer + consumer_len).next_multiple_of(PAGE_SIZE);
        let buffers: Vec<u64> = (0..n_cpus as u64)
            .map(|i| first_buf + i * buf_len)
            .collect();
        region.write_slice(&vec![0u8; (first_buf - base) as usize], base)?;
        grant(
            region,
            first_grant,
            control,
            control_len,
            GRANT_READ,
            generation,
        )?;
        grant(
            region,
            first_grant + 1,
            consumer,
            consumer_len,
            GRANT_READ | GRANT_WRITE,
            generation,
        )?;
        let mut req = RelayOpenRequest {
            channel_id,
            flags: if overwrite { RELAY_FLAG_OVERWRITE } else { 0 },
            subbuf_size,
            n_subbufs,
            n_cpus,
            control_grant: first_grant,
            consumer_grant: first_grant + 1,
            buffer_grants: [GRANT_REF_NONE; 64],
            ..Default::default()
        };
        fill_c_str(&mut req.module, b"test_probe");
        fill_c_str(&mut req.name, b"stress");
        for (i, at) in buffers.iter().enumerate() {
            grant(
                region,
                first_grant + 2 + i as u32,
                *at,
                buf_len,
                GRANT_READ,
                generation,
            )?;
            req.buffer_grants[i] = first_grant + 2 + i as u32;
        }
        let cpus = vec![CpuState::default(); n_cpus as usize];
        Ok((
            Self {
                n_subbufs,
                subbuf_size,
                overwrite,
                control,
                consumer,
                buffers,
                n_cpus,
                cpus,
            },
            req,
        ))
    }

    /// Bytes the channel occupies from its base.
    pub fn footprint(n_cpus: u32, n_subbufs: u32, subbuf_size: u32) -> u64 {
        let control_len = n_cpus as u64 * (64 + 4 * n_subbufs as u64);
        (control_len.next_multiple_of(PAGE_SIZE) + (n_cpus as u64 * 64).next_multiple_of(PAGE_SIZE))
            + n_cpus as u64 * n_subbufs as u64 * subbuf_size as u64
    }

    fn publish(&self, region: &SharedRegion, cpu: u32) -> Result<(), ShmemError> {
        let s = &self.cpus[cpu as usize];
        let ctl = self.control + cpu as u64 * 64;
        region.store_u64(
            s.written,
            ctl + offset_of!(RelayBufControl, written) as u64,
            Ordering::Relaxed,
        )?;
        region.store_u64(
            s.dropped,
            ctl + offset_of!(RelayBufControl, dropped) as u64,
            Ordering::Relaxed,
        )?;
        let pos = ((s.produced as u64) << 32) | s.committed as u64;
        region.store_u64(
            pos,
            ctl + offset_of!(RelayBufControl, position) as u64,
            Ordering::Release,
        )
    }

    /// Writes one record on `cpu`; returns whether a sub-buffer switch happened (the
    /// guest would ring the relay doorbell then).
    pub fn write(
        &mut self,
        region: &SharedRegion,
        cpu: u32,
        rtype: u16,
        flags: u16,
        payload: &[u8],
    ) -> Result<Result<bool, WriteError>, ShmemError> {
        let size = (size_of::<RecordHeader>() + payload.len())
            .next_multiple_of(RECORD_ALIGN as usize) as u32;
        let (n, sub) = (self.n_subbufs, self.subbuf_size);
        if size > sub {
            self.cpus[cpu as usize].dropped += 1;
            return Ok(Err(WriteError::TooBig));
        }
        let mut switched = false;
        if self.cpus[cpu as usize].committed + size > sub {
            let consumed_at =
                self.consumer + cpu as u64 * 64 + offset_of!(RelayConsumer, consumed) as u64;
            let consumed = region.load_u32(consumed_at, Ordering::Acquire)?;
            let s = &mut self.cpus[cpu as usize];
            if !self.overwrite && s.produced.wrapping_add(1).wrapping_sub(consumed) >= n {
                s.dropped += 1;
                return Ok(Err(WriteError::Full));
            }
            let pad_at = self.control
                + self.n_cpus as u64 * 64
                + (cpu as u64 * n as u64 + (s.produced % n) as u64) * 4;
            region.store_u32(sub - s.committed, pad_at, Ordering::Relaxed)?;
            s.produced = s.produced.wrapping_add(1);
            s.committed = 0;
            self.publish(region, cpu)?;
            switched = true;
        }
        let s = &mut self.cpus[cpu as usize];
        let at =
            self.buffers[cpu as usize] + (s.produced % n) as u64 * sub as u64 + s.committed as u64;
        let h = RecordHeader {
            len: (size_of::<RecordHeader>() + payload.len()) as u32,
            rtype,
            flags,
            seq: s.seq,
            timestamp_ns: 0,
        };
        // Straight into the buffer, as the C writer does.
        let hl = size_of::<RecordHeader>();
        region.guest_write(h.as_slice(), at)?;
        region.guest_write(payload, at + hl as u64)?;
        s.seq += 1;
        s.committed += size;
        s.written += 1;
        // Only the position per record; the counters go out at switches and `flush`.
        let pos = ((s.produced as u64) << 32) | s.committed as u64;
        let ctl = self.control + cpu as u64 * 64 + offset_of!(RelayBufControl, position) as u64;
        region.guest_store_u64(pos, ctl, Ordering::Release)?;
        Ok(Ok(switched))
    }

    /// Publishes the `written`/`dropped` counters of every CPU (otherwise published at
    /// sub-buffer switches only).
    pub fn flush(&self, region: &SharedRegion) -> Result<(), ShmemError> {
        (0..self.n_cpus).try_for_each(|cpu| self.publish(region, cpu))
    }

    /// Records written on `cpu`.
    pub fn written(&self, cpu: u32) -> u64 {
        self.cpus[cpu as usize].written
    }
}
