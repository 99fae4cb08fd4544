//! Host-side consumption of the relay format against `ringbuf`'s SPSC queue and a
//! crossbeam channel, side by side in one run.
//!
//! Each contender moves the same number of 64-byte records from a producer thread to a
//! consumer thread with the same capacity (4 MiB). For Vesper the producer is the exact
//! guest write protocol (`guest_writer`) on a real shared region and the consumer is the
//! host's `RelayReader` — one bounded copy per read, every header checked, sub-buffers
//! released back to the producer — woken by the relay doorbell, which the producer
//! rings at each sub-buffer switch (the protocol's batched index updates), where the
//! queues hand over every item. Target: ≥ 20 M records/s, ahead of `ringbuf`.
//!
//! `cargo bench -p vesper-relay --bench consume`

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use ringbuf::traits::{Consumer, Producer, Split};
use vesper_relay::guest_writer::{GuestChannel, WriteError};
use vesper_relay::{validate_open, RelayReader};
use vesper_shared_abi::{StressRecord, DATA_AREA_OFFSET, RECORD_STRESS};
use vesper_shmem::SharedRegion;
use vm_memory::ByteValued;

const RECORDS: u64 = 20_000_000;
const SUBBUF: u32 = 64 << 10;
const SUBBUFS: u32 = 64;
const CAPACITY: usize = (SUBBUF as usize * SUBBUFS as usize) / 64;
const RUNS: usize = 5;

type Rec = [u8; 64];

/// What every consumer does with a record: read all of it (a consumer that skips the
/// bytes is not consuming them). Folds each 8-byte word into `acc`.
#[inline(always)]
fn consume(acc: u64, bytes: &[u8]) -> u64 {
    bytes.chunks_exact(8).fold(acc, |a, w| {
        a.rotate_left(5) ^ u64::from_le_bytes(w.try_into().expect("8 bytes"))
    })
}

/// The benchmark's no-overwrite channel, as the guest lays it out, and the host's reader.
fn channel(region: &SharedRegion) -> (GuestChannel, RelayReader) {
    let (ch, req) =
        GuestChannel::create(region, 1, 1, 1, SUBBUFS, SUBBUF, false, DATA_AREA_OFFSET, 0)
            .expect("channel");
    (
        ch,
        RelayReader::new(validate_open(region, &req, 1).expect("open")),
    )
}

fn vesper() -> Duration {
    let region = Arc::new(SharedRegion::create("bench", 16 << 20).expect("region"));
    let (mut ch, mut reader) = channel(&region);
    // The relay doorbell: rung at each sub-buffer switch (and once at the end, as an
    // urgent record would), exactly as the guest rings VECTOR_RELAY.
    let bell = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let producer = {
        let (region, bell) = (region.clone(), bell.clone());
        thread::spawn(move || {
            let mut payload = StressRecord::default();
            let mut i = 0;
            while i < RECORDS {
                payload.index = i;
                match ch
                    .write(&region, 0, RECORD_STRESS, 0, payload.as_slice())
                    .expect("write")
                {
                    Ok(switched) => {
                        i += 1;
                        if switched {
                            bell.fetch_add(1, Ordering::Release);
                        }
                    }
                    Err(WriteError::Full) => std::hint::spin_loop(),
                    Err(e) => panic!("{e:?}"),
                }
            }
            bell.fetch_add(1, Ordering::Release);
        })
    };
    let (mut got, mut sum, mut seen, mut acc) = (0u64, 0u64, 0u64, 0u64);
    while got < RECORDS {
        let rung = bell.load(Ordering::Acquire);
        if rung == seen {
            std::hint::spin_loop();
            continue;
        }
        seen = rung;
        reader
            .poll_with(&region, |r| {
                got += 1;
                sum = sum.wrapping_add(r.seq);
                acc = consume(acc ^ r.seq ^ r.timestamp_ns ^ r.rtype as u64, r.payload);
            })
            .expect("poll");
    }
    let t = start.elapsed();
    producer.join().expect("producer");
    assert_eq!(
        sum,
        RECORDS * (RECORDS - 1) / 2,
        "every record exactly once, in order"
    );
    t
}

fn ringbuf_spsc() -> Duration {
    let (mut tx, mut rx) = ringbuf::HeapRb::<Rec>::new(CAPACITY).split();
    let start = Instant::now();
    let producer = thread::spawn(move || {
        let mut rec = [0u8; 64];
        for i in 0..RECORDS {
            rec[..8].copy_from_slice(&i.to_le_bytes());
            while tx.try_push(rec).is_err() {
                std::hint::spin_loop();
            }
        }
    });
    let (mut got, mut sum, mut acc) = (0u64, 0u64, 0u64);
    while got < RECORDS {
        match rx.try_pop() {
            Some(r) => {
                got += 1;
                sum = sum.wrapping_add(u64::from_le_bytes(r[..8].try_into().expect("8 bytes")));
                acc = consume(acc, &r);
            }
            None => std::hint::spin_loop(),
        }
    }
    let t = start.elapsed();
    producer.join().expect("producer");
    std::hint::black_box(acc);
    assert_eq!(sum, RECORDS * (RECORDS - 1) / 2);
    t
}

fn crossbeam() -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<Rec>(CAPACITY);
    let start = Instant::now();
    let producer = thread::spawn(move || {
        let mut rec = [0u8; 64];
        for i in 0..RECORDS {
            rec[..8].copy_from_slice(&i.to_le_bytes());
            tx.send(rec).expect("send");
        }
    });
    let (mut sum, mut acc) = (0u64, 0u64);
    for r in rx.iter().take(RECORDS as usize) {
        sum = sum.wrapping_add(u64::from_le_bytes(r[..8].try_into().expect("8 bytes")));
        acc = consume(acc, &r);
    }
    let t = start.elapsed();
    std::hint::black_box(acc);
    producer.join().expect("producer");
    assert_eq!(sum, RECORDS * (RECORDS - 1) / 2);
    t
}

/// A queue's consumer alone: the queue is filled through `push` (false = full), then
/// drained through `pop`; only draining is timed.
fn queue_reader_alone(mut push: impl FnMut(Rec) -> bool, mut pop: impl FnMut() -> Rec) -> Duration {
    let (mut total, mut busy, mut sum) = (0u64, Duration::ZERO, 0u64);
    let mut rec = [0u8; 64];
    while total < RECORDS {
        let mut filled = 0u64;
        while push(rec) {
            filled += 1;
            rec[0] = rec[0].wrapping_add(1);
        }
        let t = Instant::now();
        for _ in 0..filled {
            sum = consume(sum, &pop());
        }
        busy += t.elapsed();
        total += filled;
    }
    std::hint::black_box(sum);
    busy.mul_f64(RECORDS as f64 / total as f64)
}

fn ringbuf_reader_alone() -> Duration {
    let (mut tx, mut rx) = ringbuf::HeapRb::<Rec>::new(CAPACITY).split();
    queue_reader_alone(|r| tx.try_push(r).is_ok(), || rx.try_pop().expect("filled"))
}

fn crossbeam_reader_alone() -> Duration {
    let (tx, rx) = crossbeam_channel::bounded::<Rec>(CAPACITY);
    queue_reader_alone(
        |r| tx.try_send(r).is_ok(),
        || rx.try_recv().expect("filled"),
    )
}

fn best(f: fn() -> Duration) -> f64 {
    (0..RUNS)
        .map(|_| RECORDS as f64 / f().as_secs_f64())
        .fold(0.0, f64::max)
}

fn main() {
    println!(
        "relay consumption: {RECORDS} records of 64 bytes, capacity {CAPACITY} records (4 MiB; relay: {SUBBUFS} x {} KiB sub-buffers), best of {RUNS}",
        SUBBUF >> 10
    );
    let consumer = [
        best(reader_alone),
        best(ringbuf_reader_alone),
        best(crossbeam_reader_alone),
    ];
    let pipeline = [best(vesper), best(ringbuf_spsc), best(crossbeam)];
    let producer = best(producer_alone);
    println!(
        "{:<46} {:>16} {:>10} {:>18} {:>10}",
        "M records/s", "consumer, 1 core", "vs ringbuf", "producer->consumer", "vs ringbuf"
    );
    let names = [
        "vesper relay (guest protocol, shared region)",
        "ringbuf HeapRb SPSC (baseline)",
        "crossbeam bounded channel",
    ];
    for (i, name) in names.iter().enumerate() {
        println!(
            "{name:<46} {:>16.1} {:>9.2}x {:>18.1} {:>9.2}x",
            consumer[i] / 1e6,
            consumer[i] / consumer[1],
            pipeline[i] / 1e6,
            pipeline[i] / pipeline[1]
        );
    }
    println!(
        "{:<46} {:>16} {:>10} {:>18.1}",
        "(relay guest-protocol producer alone)",
        "",
        "",
        producer / 1e6
    );
    let met = consumer[0] >= 20e6 && consumer[0] > consumer[1];
    println!(
        "target: host consumption >= 20 M records/s on one core, ahead of ringbuf: {} ({:.1} M/s, {:.2}x)",
        if met { "MET" } else { "NOT MET" },
        consumer[0] / 1e6,
        consumer[0] / consumer[1]
    );
}

/// The producer with no reader (overwrite mode): the ceiling the producer side sets.
fn producer_alone() -> Duration {
    let region = SharedRegion::create("bench", 16 << 20).expect("region");
    let (mut ch, _) =
        GuestChannel::create(&region, 1, 1, 1, SUBBUFS, SUBBUF, true, DATA_AREA_OFFSET, 0)
            .expect("channel");
    let start = Instant::now();
    let mut payload = StressRecord::default();
    for i in 0..RECORDS {
        payload.index = i;
        ch.write(&region, 0, RECORD_STRESS, 0, payload.as_slice())
            .expect("write")
            .expect("room");
    }
    start.elapsed()
}

/// The reader alone: the channel is filled (no reader running), then drained.
fn reader_alone() -> Duration {
    let region = SharedRegion::create("bench", 16 << 20).expect("region");
    let (mut ch, mut reader) = channel(&region);
    let mut payload = StressRecord::default();
    let (mut total, mut busy, mut acc) = (0u64, Duration::ZERO, 0u64);
    while total < RECORDS {
        let mut filled = 0;
        loop {
            payload.index = filled;
            match ch
                .write(&region, 0, RECORD_STRESS, 0, payload.as_slice())
                .expect("write")
            {
                Ok(_) => filled += 1,
                Err(_) => break,
            }
        }
        let t = Instant::now();
        let mut got = 0;
        while got < filled {
            reader
                .poll_with(&region, |r| {
                    got += 1;
                    acc = consume(acc ^ r.seq ^ r.timestamp_ns ^ r.rtype as u64, r.payload);
                })
                .expect("poll");
        }
        busy += t.elapsed();
        total += got;
    }
    std::hint::black_box(acc);
    busy.mul_f64(RECORDS as f64 / total as f64)
}
