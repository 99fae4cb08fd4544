use std::mem::{offset_of, size_of};
use std::sync::atomic::Ordering;

use vesper_shared_abi::{
    slot_offset, MsgHeader, RingControl, REQ_RING_OFFSET, RING_SLOTS, RSP_FLAG, RSP_RING_OFFSET,
    SLOT_PAYLOAD_SIZE, SLOT_SIZE,
};
use vm_memory::ByteValued;

use crate::{SharedRegion, ShmemError};

const PRODUCER: u64 = offset_of!(RingControl, producer) as u64;
const CONSUMER: u64 = offset_of!(RingControl, consumer) as u64;
const HEADER_LEN: usize = size_of::<MsgHeader>();

/// One message, copied out of its slot. Parsing happens only on this copy.
#[derive(Clone)]
pub struct Message {
    /// The slot's header.
    pub header: MsgHeader,
    payload: Vec<u8>,
}

impl std::fmt::Debug for Message {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Message")
            .field("header", &self.header)
            .field("payload_len", &self.payload.len())
            .finish()
    }
}

impl Message {
    /// The payload bytes the header declares.
    pub fn payload(&self) -> &[u8] {
        &self.payload
    }

    /// The payload as a `T`. Fails when the message is too short for one.
    pub fn payload_as<T: ByteValued + Default>(&self) -> Result<T, ShmemError> {
        let needed = size_of::<T>();
        if self.payload.len() < needed {
            return Err(ShmemError::PayloadTooShort {
                kind: self.header.kind,
                len: self.header.len,
                needed,
            });
        }
        let mut val = T::default();
        val.as_mut_slice().copy_from_slice(&self.payload[..needed]);
        Ok(val)
    }
}

/// The host's end of the two control rings: consumer of requests, producer of
/// responses. The host-owned indices live here and are only written out, never read
/// back, so a guest scribbling on them cannot steer the host.
#[derive(Debug)]
pub struct HostRings {
    req_consumer: u32,
    rsp_producer: u32,
}

impl HostRings {
    /// The host end of a fresh region (all indices zero).
    pub fn new() -> Self {
        Self {
            req_consumer: 0,
            rsp_producer: 0,
        }
    }

    /// The host end as another host process left it in `region` (a restarted daemon):
    /// the request `consumer` and response `producer` words read back. `None` when they
    /// are not consistent with the guest's words (more than `RING_SLOTS` apart).
    pub fn resume(region: &SharedRegion) -> Result<Option<Self>, ShmemError> {
        let load = |at| region.load_u32(at, Ordering::Acquire);
        let req_producer = load(REQ_RING_OFFSET + PRODUCER)?;
        let req_consumer = load(REQ_RING_OFFSET + CONSUMER)?;
        let rsp_producer = load(RSP_RING_OFFSET + PRODUCER)?;
        let rsp_consumer = load(RSP_RING_OFFSET + CONSUMER)?;
        if req_producer.wrapping_sub(req_consumer) > RING_SLOTS
            || rsp_producer.wrapping_sub(rsp_consumer) > RING_SLOTS
        {
            return Ok(None);
        }
        Ok(Some(Self {
            req_consumer,
            rsp_producer,
        }))
    }

    /// A host end that ignores whatever is pending now: requests already posted are
    /// skipped, responses continue from the guest's response consumer.
    pub fn skip_to_now(region: &SharedRegion) -> Result<Self, ShmemError> {
        Ok(Self {
            req_consumer: region.load_u32(REQ_RING_OFFSET + PRODUCER, Ordering::Acquire)?,
            rsp_producer: region.load_u32(RSP_RING_OFFSET + CONSUMER, Ordering::Acquire)?,
        })
    }

    /// The header of the request `back` slots before the host's consumer (1 = the last
    /// one consumed), copied once.
    pub fn consumed_request(
        &self,
        region: &SharedRegion,
        back: u32,
    ) -> Result<MsgHeader, ShmemError> {
        let index = self.req_consumer.wrapping_sub(back);
        region.read_obj(slot_offset(REQ_RING_OFFSET, index))
    }

    /// True if one of the last `RING_SLOTS` responses the host produced answers request
    /// `id` of `generation`.
    pub fn answered(
        &self,
        region: &SharedRegion,
        id: u64,
        generation: u32,
    ) -> Result<bool, ShmemError> {
        for back in 1..=RING_SLOTS {
            let index = self.rsp_producer.wrapping_sub(back);
            let h: MsgHeader = region.read_obj(slot_offset(RSP_RING_OFFSET, index))?;
            if h.kind & RSP_FLAG != 0 && h.id == id && h.generation == generation {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Takes the next request, if any, copying its slot once.
    pub fn pop_request(&mut self, region: &SharedRegion) -> Result<Option<Message>, ShmemError> {
        let producer = region.load_u32(REQ_RING_OFFSET + PRODUCER, Ordering::Acquire)?;
        let pending = producer.wrapping_sub(self.req_consumer);
        if pending == 0 {
            return Ok(None);
        }
        if pending > RING_SLOTS {
            return Err(ShmemError::RingOverrun {
                producer,
                consumer: self.req_consumer,
            });
        }
        let mut slot = vec![0u8; SLOT_SIZE as usize];
        region.read_slice(&mut slot, slot_offset(REQ_RING_OFFSET, self.req_consumer))?;
        // The slot is consumed whatever it holds: a bad message must not wedge the ring.
        self.req_consumer = self.req_consumer.wrapping_add(1);
        region.store_u32(
            self.req_consumer,
            REQ_RING_OFFSET + CONSUMER,
            Ordering::Release,
        )?;

        let mut header = MsgHeader::default();
        header.as_mut_slice().copy_from_slice(&slot[..HEADER_LEN]);
        if header.len > SLOT_PAYLOAD_SIZE {
            return Err(ShmemError::PayloadTooLong { len: header.len });
        }
        slot.truncate(HEADER_LEN + header.len as usize);
        slot.drain(..HEADER_LEN);
        Ok(Some(Message {
            header,
            payload: slot,
        }))
    }

    /// Answers `request` with `status` and `payload` (kind = request kind | RSP_FLAG).
    pub fn push_response(
        &mut self,
        region: &SharedRegion,
        request: &MsgHeader,
        status: i32,
        payload: &[u8],
    ) -> Result<(), ShmemError> {
        if payload.len() > SLOT_PAYLOAD_SIZE as usize {
            return Err(ShmemError::PayloadTooLong {
                len: payload.len() as u32,
            });
        }
        let consumer = region.load_u32(RSP_RING_OFFSET + CONSUMER, Ordering::Acquire)?;
        let in_flight = self.rsp_producer.wrapping_sub(consumer);
        if in_flight > RING_SLOTS {
            return Err(ShmemError::ConsumerAhead {
                producer: self.rsp_producer,
                consumer,
            });
        }
        if in_flight == RING_SLOTS {
            return Err(ShmemError::ResponseRingFull);
        }
        let header = MsgHeader {
            kind: request.kind | RSP_FLAG,
            len: payload.len() as u32,
            id: request.id,
            status,
            generation: request.generation,
            reserved: [0; 2],
        };
        let at = slot_offset(RSP_RING_OFFSET, self.rsp_producer);
        region.write_obj(header, at)?;
        region.write_slice(payload, at + HEADER_LEN as u64)?;
        self.rsp_producer = self.rsp_producer.wrapping_add(1);
        region.store_u32(
            self.rsp_producer,
            RSP_RING_OFFSET + PRODUCER,
            Ordering::Release,
        )?;
        Ok(())
    }
}

impl Default for HostRings {
    fn default() -> Self {
        Self::new()
    }
}

/// The guest's end of the rings, for host-side tests and benchmarks that play the
/// guest's part over the real layout.
#[doc(hidden)]
pub mod guest_side {
    use super::*;

    /// Posts a request as the guest frontend would.
    pub fn post_request(
        region: &SharedRegion,
        header: MsgHeader,
        payload: &[u8],
    ) -> Result<(), ShmemError> {
        let producer = region.load_u32(REQ_RING_OFFSET + PRODUCER, Ordering::Acquire)?;
        let at = slot_offset(REQ_RING_OFFSET, producer);
        region.write_obj(
            MsgHeader {
                len: payload.len() as u32,
                ..header
            },
            at,
        )?;
        region.write_slice(payload, at + HEADER_LEN as u64)?;
        region.store_u32(
            producer.wrapping_add(1),
            REQ_RING_OFFSET + PRODUCER,
            Ordering::Release,
        )
    }

    /// Takes the next response as the guest frontend would.
    pub fn take_response(region: &SharedRegion) -> Result<Option<Message>, ShmemError> {
        let producer = region.load_u32(RSP_RING_OFFSET + PRODUCER, Ordering::Acquire)?;
        let consumer = region.load_u32(RSP_RING_OFFSET + CONSUMER, Ordering::Acquire)?;
        if producer == consumer {
            return Ok(None);
        }
        let at = slot_offset(RSP_RING_OFFSET, consumer);
        let header: MsgHeader = region.read_obj(at)?;
        let mut payload = vec![0u8; header.len.min(SLOT_PAYLOAD_SIZE) as usize];
        region.read_slice(&mut payload, at + HEADER_LEN as u64)?;
        region.store_u32(
            consumer.wrapping_add(1),
            RSP_RING_OFFSET + CONSUMER,
            Ordering::Release,
        )?;
        Ok(Some(Message { header, payload }))
    }

    /// Writes raw bytes anywhere, to play a hostile guest.
    pub fn scribble(region: &SharedRegion, offset: u64, bytes: &[u8]) -> Result<(), ShmemError> {
        region.write_slice(bytes, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::guest_side::*;
    use super::*;
    use vesper_shared_abi::{MIN_REGION_SIZE, REQ_HELLO};

    fn region() -> SharedRegion {
        SharedRegion::create("ring-test", MIN_REGION_SIZE).unwrap()
    }

    fn req(id: u64) -> MsgHeader {
        MsgHeader {
            kind: REQ_HELLO,
            id,
            generation: 1,
            ..Default::default()
        }
    }

    #[test]
    fn requests_come_out_in_order_with_their_payload() {
        let r = region();
        let mut host = HostRings::new();
        assert!(host.pop_request(&r).unwrap().is_none());
        for id in 0..40u64 {
            post_request(&r, req(id), &id.to_le_bytes()).unwrap();
            let m = host.pop_request(&r).unwrap().unwrap();
            assert_eq!(m.header.id, id);
            assert_eq!(m.payload(), id.to_le_bytes());
        }
    }

    #[test]
    fn responses_echo_the_request_and_stop_when_the_guest_does_not_consume() {
        let r = region();
        let mut host = HostRings::new();
        for i in 0..RING_SLOTS {
            host.push_response(&r, &req(i as u64), -5, b"x").unwrap();
        }
        assert!(matches!(
            host.push_response(&r, &req(99), 0, b""),
            Err(ShmemError::ResponseRingFull)
        ));
        let m = take_response(&r).unwrap().unwrap();
        assert_eq!(
            (m.header.kind, m.header.id, m.header.status),
            (REQ_HELLO | RSP_FLAG, 0, -5)
        );
        host.push_response(&r, &req(99), 0, b"").unwrap();
    }

    #[test]
    fn a_producer_run_past_the_ring_is_misbehaviour() {
        let r = region();
        let mut host = HostRings::new();
        r.store_u32(
            RING_SLOTS + 1,
            REQ_RING_OFFSET + PRODUCER,
            Ordering::Release,
        )
        .unwrap();
        let e = host.pop_request(&r).unwrap_err();
        assert!(matches!(e, ShmemError::RingOverrun { .. }) && e.is_guest_misbehaviour());
    }

    #[test]
    fn an_oversized_length_is_refused_and_the_slot_still_consumed() {
        let r = region();
        let mut host = HostRings::new();
        post_request(&r, req(1), b"").unwrap();
        scribble(
            &r,
            slot_offset(REQ_RING_OFFSET, 0) + 4,
            &u32::MAX.to_le_bytes(),
        )
        .unwrap();
        assert!(matches!(
            host.pop_request(&r),
            Err(ShmemError::PayloadTooLong { .. })
        ));
        assert!(host.pop_request(&r).unwrap().is_none());
    }

    #[test]
    fn a_consumer_ahead_of_the_producer_is_misbehaviour() {
        let r = region();
        let mut host = HostRings::new();
        r.store_u32(7, RSP_RING_OFFSET + CONSUMER, Ordering::Release)
            .unwrap();
        assert!(matches!(
            host.push_response(&r, &req(1), 0, b""),
            Err(ShmemError::ConsumerAhead { .. })
        ));
    }

    #[test]
    fn short_payloads_do_not_parse() {
        let r = region();
        let mut host = HostRings::new();
        post_request(&r, req(1), &[1, 2, 3]).unwrap();
        let m = host.pop_request(&r).unwrap().unwrap();
        assert!(matches!(
            m.payload_as::<u64>(),
            Err(ShmemError::PayloadTooShort { .. })
        ));
    }
}
