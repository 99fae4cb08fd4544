//! Every host parser of guest-written bytes at once: the request ring, the grant table,
//! relay control words, padding and record headers. The input patches a region that
//! holds a live session and an open relay channel, then the host polls it; last, both
//! grant checkers (region range and guest frames) run over the patched grant table.
#![no_main]

use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use vesper_core::{Session, SessionConfig};
use vesper_relay::guest_writer::GuestChannel;
use vesper_shared_abi::*;
use vesper_shmem::grant::{check_entry, check_frame_entry, GrantNeed};
use vesper_shmem::guest_side::{post_request, scribble};
use vesper_shmem::SharedRegion;
use vm_memory::ByteValued;

const GEN: u32 = 1;
const CHANNEL_BASE: u64 = DATA_AREA_OFFSET;

fn live_session(region: &SharedRegion) -> (Session, GuestChannel) {
    let mut s = Session::new(SessionConfig::default());
    let hello = HelloRequest {
        frontend_version: *vesper_core::FRONTEND_VERSIONS.end(),
        nr_cpus: 2,
        region_size: region.size(),
        ..Default::default()
    };
    let h = MsgHeader { kind: REQ_HELLO, id: 1, generation: GEN, ..Default::default() };
    post_request(region, h, hello.as_slice()).unwrap();
    let (mut ch, req) = GuestChannel::create(region, GEN, 1, 2, 4, 4096, false, CHANNEL_BASE, 0).unwrap();
    let h = MsgHeader { kind: REQ_RELAY_OPEN, id: 2, generation: GEN, ..Default::default() };
    post_request(region, h, req.as_slice()).unwrap();
    for i in 0..100u64 {
        let _ = ch.write(region, (i % 2) as u32, RECORD_STRESS, 0, &i.to_le_bytes());
    }
    s.poll(region, Instant::now());
    (s, ch)
}

fuzz_target!(|data: &[u8]| {
    let region = SharedRegion::create("fuzz", MIN_REGION_SIZE).unwrap();
    let (mut session, _ch) = live_session(&region);
    // Input: (u32 offset, u8 len, bytes) patches, offsets folded into the areas the
    // host parses (header, grant table, rings, the channel's pages).
    let span = CHANNEL_BASE + GuestChannel::footprint(2, 4, 4096);
    let mut rest = data;
    while rest.len() >= 5 {
        let off = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as u64 % span;
        let len = (rest[4] as usize).min(rest.len() - 5);
        let bytes = &rest[5..5 + len];
        let off = off.min(span - bytes.len() as u64);
        let _ = scribble(&region, off, bytes);
        rest = &rest[5 + len..];
        let _ = session.poll(&region, Instant::now());
    }
    let _ = session.poll(&region, Instant::now());
    let _ = session.relay_stats(&region);
    check_grant_table(&region);
});

/// Both grant checkers over the (patched) table: a region-range grant never names guest
/// frames, a frame grant is always whole pages, bounded, and ends without overflow.
fn check_grant_table(region: &SharedRegion) {
    let generation = region.header().map_or(GEN, |h| h.generation);
    for grant_ref in 0..GRANT_ENTRIES {
        let at = grant_entry_offset(grant_ref).unwrap();
        let Ok(entry) = region.read_obj::<GrantEntry>(at) else { continue };
        let need = GrantNeed { access: GRANT_READ, owner: entry.owner, generation };
        if let Ok(g) = check_entry(grant_ref, &entry, need, region.size()) {
            assert_eq!(entry.access & GRANT_GUEST_FRAMES, 0);
            assert!(g.offset >= DATA_AREA_OFFSET);
            assert!(g.offset + u64::from(g.len) <= region.size());
        }
        if let Ok(g) = check_frame_entry(grant_ref, &entry, need) {
            assert_ne!(g.access & GRANT_GUEST_FRAMES, 0);
            assert!(g.gpa.is_multiple_of(PAGE_SIZE));
            assert!(g.len > 0 && g.len <= GRANT_FRAMES_MAX_LEN);
            assert!(u64::from(g.len).is_multiple_of(PAGE_SIZE));
            assert!(g.gpa.checked_add(u64::from(g.len)).is_some());
        }
    }
}
