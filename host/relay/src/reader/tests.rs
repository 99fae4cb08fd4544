use super::*;
use crate::guest_writer::{GuestChannel, WriteError};
use vesper_shmem::guest_side::scribble;
use vm_memory::ByteValued;

const GEN: u32 = 3;
const BASE: u64 = DATA_AREA_OFFSET + 0x10_0000;

fn setup(
    n_cpus: u32,
    n_subbufs: u32,
    overwrite: bool,
) -> (SharedRegion, GuestChannel, RelayReader) {
    let region = SharedRegion::create("relay-test", 8 << 20).unwrap();
    let (ch, req) = GuestChannel::create(
        &region, GEN, 1, n_cpus, n_subbufs, 4096, overwrite, BASE, 10,
    )
    .unwrap();
    let spec = validate_open(&region, &req, GEN).unwrap();
    assert_eq!(spec.name, "stress");
    (region, ch, RelayReader::new(spec))
}

fn stress(i: u64, n: u64) -> Vec<u8> {
    StressRecord {
        index: i,
        total: n,
        filler: [0; 3],
    }
    .as_slice()
    .to_vec()
}

#[test]
fn no_overwrite_delivers_exactly_what_was_written_when_the_reader_keeps_up() {
    let (region, mut ch, mut rd) = setup(2, 4, false);
    let mut got = Vec::new();
    let n = 5000u64;
    let mut i = 0;
    while i < n {
        match ch
            .write(&region, (i % 2) as u32, RECORD_STRESS, 0, &stress(i, n))
            .unwrap()
        {
            Ok(_) => i += 1,
            Err(WriteError::Full) => rd.poll(&region, &mut got).unwrap(),
            Err(e) => panic!("{e:?}"),
        }
    }
    rd.poll(&region, &mut got).unwrap();
    assert_eq!(got.len() as u64, n);
    let mut idx: Vec<u64> = got
        .iter()
        .map(|r| match crate::decode(r.rtype, &r.payload) {
            crate::Decoded::Stress { index, .. } => index,
            other => panic!("{other:?}"),
        })
        .collect();
    idx.sort();
    assert!(idx.iter().copied().eq(0..n));
    let st = rd.stats(&region);
    assert_eq!(st.cpus.iter().map(|c| c.lost).sum::<u64>(), 0);
    assert_eq!(st.cpus.iter().map(|c| c.received).sum::<u64>(), n);
}

#[test]
fn a_full_buffer_without_overwrite_drops_new_records_and_frees_on_consume() {
    let (region, mut ch, mut rd) = setup(1, 2, false);
    let mut full = 0;
    for i in 0..200 {
        if ch
            .write(&region, 0, RECORD_STRESS, 0, &stress(i, 200))
            .unwrap()
            == Err(WriteError::Full)
        {
            full += 1;
        }
    }
    // 2 sub-buffers of 64 records, one kept as the current: 64 fit before it is full.
    assert!(full > 0);
    let mut got = Vec::new();
    rd.poll(&region, &mut got).unwrap();
    assert_eq!(got.len() as u64 + full, 200);
    assert!(
        ch.write(&region, 0, RECORD_STRESS, 0, &stress(0, 1))
            .unwrap()
            .is_ok(),
        "consumption frees space"
    );
}

#[test]
fn overwrite_received_plus_lost_equals_written() {
    let (region, mut ch, mut rd) = setup(1, 4, true);
    let mut got = Vec::new();
    let n = 3000;
    for i in 0..n {
        ch.write(&region, 0, RECORD_STRESS, 0, &stress(i, n))
            .unwrap()
            .unwrap();
        if i % 700 == 0 {
            rd.poll(&region, &mut got).unwrap();
        }
    }
    rd.poll(&region, &mut got).unwrap();
    let st = &rd.stats(&region).cpus[0];
    assert!(st.lost > 0);
    assert_eq!(st.received + st.lost, n);
    assert_eq!(got.last().unwrap().seq, n - 1);
}

#[test]
fn uncommitted_bytes_are_never_parsed() {
    let (region, mut ch, mut rd) = setup(1, 4, false);
    ch.write(&region, 0, RECORD_STRESS, 0, &stress(0, 2))
        .unwrap()
        .unwrap();
    // A half-written second record past the committed position (a guest that died mid-record).
    scribble(&region, rd.spec.buffers[0].offset + 64, &[0xff; 40]).unwrap();
    let mut got = Vec::new();
    rd.poll(&region, &mut got).unwrap();
    assert_eq!(got.len(), 1);
}

#[test]
fn bad_open_requests_are_refused_with_their_reason() {
    let region = SharedRegion::create("relay-test", 8 << 20).unwrap();
    let (_, req) = GuestChannel::create(&region, GEN, 1, 1, 4, 4096, false, BASE, 10).unwrap();
    let e = |f: &dyn Fn(&mut RelayOpenRequest), g: u32| {
        let mut r = req;
        f(&mut r);
        validate_open(&region, &r, g).unwrap_err().to_string()
    };
    assert!(e(&|r| r.subbuf_size = 100, GEN).contains("sub-buffer size"));
    assert!(e(&|r| r.subbuf_size = 4096 + 8, GEN).contains("page-aligned"));
    assert!(e(&|r| r.n_subbufs = 1, GEN).contains("sub-buffer count"));
    assert!(e(&|r| r.n_cpus = 65, GEN).contains("CPU count"));
    assert!(e(&|r| r.n_subbufs = 8, GEN).contains("grant holds"));
    assert!(e(&|r| r.buffer_grants[0] = 9999, GEN).contains("outside the grant table"));
    assert!(e(&|r| r.consumer_grant = r.control_grant, GEN).contains("consumer grant"));
    assert!(e(&|_| {}, GEN + 1).contains("generation"));
}

#[test]
fn hostile_positions_padding_and_headers_are_errors_not_panics() {
    let (region, mut ch, mut rd) = setup(1, 4, false);
    ch.write(&region, 0, RECORD_STRESS, 0, &stress(0, 1))
        .unwrap()
        .unwrap();
    let ctl = rd.spec.control.offset;
    // Committed past the sub-buffer.
    region.store_u64(5000, ctl, Ordering::Release).unwrap();
    assert!(matches!(
        rd.poll(&region, &mut Vec::new()),
        Err(RelayError::BadPosition { .. })
    ));
    // Produced far ahead without overwrite.
    let (region, _, mut rd) = setup(1, 4, false);
    region
        .store_u64(100 << 32, rd.spec.control.offset, Ordering::Release)
        .unwrap();
    assert!(matches!(
        rd.poll(&region, &mut Vec::new()),
        Err(RelayError::BadPosition { .. })
    ));
    // A record claiming more bytes than were committed.
    let (region, mut ch, mut rd) = setup(1, 4, false);
    ch.write(&region, 0, RECORD_STRESS, 0, &stress(0, 1))
        .unwrap()
        .unwrap();
    scribble(&region, rd.spec.buffers[0].offset, &4000u32.to_le_bytes()).unwrap();
    assert!(matches!(
        rd.poll(&region, &mut Vec::new()),
        Err(RelayError::BadRecord { .. })
    ));
    // A revoked grant stops the reader.
    let (region, _, mut rd) = setup(1, 4, false);
    let g = rd.spec.buffers[0].grant_ref;
    scribble(
        &region,
        grant_entry_offset(g).unwrap() + 24,
        &0u32.to_le_bytes(),
    )
    .unwrap();
    assert!(matches!(
        rd.poll(&region, &mut Vec::new()),
        Err(RelayError::GrantChanged { .. })
    ));
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
    #[test]
    fn random_bytes_over_the_whole_channel_never_panic_or_read_outside_grants(seed: u64, rounds in 1usize..20) {
        let (region, mut ch, mut rd) = setup(2, 4, seed % 2 == 0);
        let mut x = seed | 1;
        let span = GuestChannel::footprint(2, 4, 4096);
        for r in 0..rounds {
            let _ = ch.write(&region, (r % 2) as u32, RECORD_STRESS, 0, &stress(r as u64, 0));
            let mut junk = [0u8; 64];
            for b in junk.iter_mut() { x ^= x << 13; x ^= x >> 7; x ^= x << 17; *b = x as u8; }
            let at = BASE + (x % span);
            let _ = scribble(&region, at.min(BASE + span - 64), &junk);
            let _ = rd.poll(&region, &mut Vec::new());
        }
    }
}

#[test]
fn a_resumed_reader_continues_exactly_where_the_old_one_stopped() {
    let (region, mut ch, mut rd) = setup(2, 4, false);
    let index = |r: &Record| match crate::decode(r.rtype, &r.payload) {
        crate::Decoded::Stress { index, .. } => index,
        other => panic!("{other:?}"),
    };
    let mut got = Vec::new();
    // Enough to switch sub-buffers a few times, and stop mid-sub-buffer.
    for i in 0..300u64 {
        ch.write(&region, (i % 2) as u32, RECORD_STRESS, 0, &stress(i, 0))
            .unwrap()
            .unwrap();
        if i % 37 == 0 {
            rd.poll(&region, &mut got).unwrap();
        }
    }
    rd.poll(&region, &mut got).unwrap();
    assert_eq!(got.len(), 300);
    let spec = rd.spec().clone();
    drop(rd); // the old host is gone
    for i in 300..420u64 {
        ch.write(&region, (i % 2) as u32, RECORD_STRESS, 0, &stress(i, 0))
            .unwrap()
            .unwrap();
    }
    let mut rd = RelayReader::resume(spec.clone(), &region);
    let mut after = Vec::new();
    rd.poll(&region, &mut after).unwrap();
    let idx: Vec<u64> = after.iter().map(index).collect();
    let mut sorted = idx.clone();
    sorted.sort();
    assert!(sorted.iter().copied().eq(300..420), "{idx:?}");
    assert_eq!(
        rd.stats(&region).cpus.iter().map(|c| c.lost).sum::<u64>(),
        0
    );

    // Impossible cursors (a scribbled consumer area) skip to the writer, never re-read.
    let cons = region.grant(
        rd.spec().consumer.grant_ref,
        GrantNeed {
            access: GRANT_READ | GRANT_WRITE,
            owner: GRANT_OWNER_RELAY,
            generation: GEN,
        },
    );
    let cons = cons.unwrap();
    scribble(&region, cons.offset, &[0xff; 128]).unwrap();
    let mut rd = RelayReader::resume(spec, &region);
    let mut none = Vec::new();
    rd.poll(&region, &mut none).unwrap();
    assert!(none.is_empty(), "{} records re-read", none.len());
    ch.write(&region, 0, RECORD_STRESS, 0, &stress(999, 0))
        .unwrap()
        .unwrap();
    rd.poll(&region, &mut none).unwrap();
    assert_eq!(none.iter().map(index).collect::<Vec<_>>(), vec![999]);
}
