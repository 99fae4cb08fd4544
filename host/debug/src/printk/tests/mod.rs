//! Tests of `printk.rs`.

#![allow(clippy::arithmetic_side_effects)]

use std::cell::Cell;
use std::collections::HashMap;

use proptest::prelude::*;

use super::*;
use crate::memory::fake::FakeMemory;

const PRB_SYM: u64 = 0xffff_ffff_aae6_22c0;
const RB_ADDR: u64 = 0xffff_ffff_ab00_1000;
const DESCS_ADDR: u64 = 0xffff_8880_0100_0000;
const INFOS_ADDR: u64 = 0xffff_8880_0200_0000;
const DATA_ADDR: u64 = 0xffff_8880_0300_0000;

const RESERVED: u64 = 0;
const COMMITTED: u64 = 1;
const FINALIZED: u64 = 2;
const REUSABLE: u64 = 3;
const NO_LPOS: u64 = 0x3;

/// The VMCOREINFO lines of a Debian 6.1 guest.
const VMCOREINFO_6_1: &[(&str, u64)] = &[
    ("SYMBOL(prb)", PRB_SYM),
    ("SYMBOL(printk_rb_static)", 0xffff_ffff_aae6_2300),
    ("SYMBOL(clear_seq)", 0xffff_ffff_ab5c_6e40),
    ("SIZE(printk_ringbuffer)", 88),
    ("OFFSET(printk_ringbuffer.desc_ring)", 0),
    ("OFFSET(printk_ringbuffer.text_data_ring)", 48),
    ("OFFSET(printk_ringbuffer.fail)", 80),
    ("SIZE(prb_desc_ring)", 48),
    ("OFFSET(prb_desc_ring.count_bits)", 0),
    ("OFFSET(prb_desc_ring.descs)", 8),
    ("OFFSET(prb_desc_ring.infos)", 16),
    ("OFFSET(prb_desc_ring.head_id)", 24),
    ("OFFSET(prb_desc_ring.tail_id)", 32),
    ("SIZE(prb_desc)", 24),
    ("OFFSET(prb_desc.state_var)", 0),
    ("OFFSET(prb_desc.text_blk_lpos)", 8),
    ("SIZE(prb_data_blk_lpos)", 16),
    ("OFFSET(prb_data_blk_lpos.begin)", 0),
    ("OFFSET(prb_data_blk_lpos.next)", 8),
    ("SIZE(printk_info)", 88),
    ("OFFSET(printk_info.seq)", 0),
    ("OFFSET(printk_info.ts_nsec)", 8),
    ("OFFSET(printk_info.text_len)", 16),
    ("OFFSET(printk_info.caller_id)", 20),
    ("OFFSET(printk_info.dev_info)", 24),
    ("SIZE(dev_printk_info)", 64),
    ("OFFSET(dev_printk_info.subsystem)", 0),
    ("LENGTH(printk_info_subsystem)", 16),
    ("OFFSET(dev_printk_info.device)", 16),
    ("LENGTH(printk_info_device)", 48),
    ("SIZE(prb_data_ring)", 32),
    ("OFFSET(prb_data_ring.size_bits)", 0),
    ("OFFSET(prb_data_ring.data)", 8),
    ("OFFSET(prb_data_ring.head_lpos)", 16),
    ("OFFSET(prb_data_ring.tail_lpos)", 24),
    ("SIZE(atomic_long_t)", 8),
    ("OFFSET(atomic_long_t.counter)", 0),
];

fn layout_with(
    change: impl Fn(&mut HashMap<&'static str, u64>),
) -> Result<PrintkLayout, PrintkError> {
    let mut m: HashMap<_, _> = VMCOREINFO_6_1.iter().copied().collect();
    change(&mut m);
    PrintkLayout::from_vmcoreinfo(|k| m.get(k).copied())
}

fn layout() -> PrintkLayout {
    layout_with(|_| {}).unwrap()
}

fn sv(state: u64, id: u64) -> u64 {
    (state << 62) | (id & DESC_ID_MASK)
}

/// A ring in the real 6.1 layout, filled the way the kernel's writer fills it.
#[derive(Debug)]
struct Ring {
    count_bits: u32,
    size_bits: u32,
    descs: Vec<u8>,
    infos: Vec<u8>,
    data: Vec<u8>,
    /// As stored in the header (tests may set the flag bits).
    head_id: u64,
    tail_id: u64,
    next_id: u64,
    next_seq: u64,
    head_lpos: u64,
    empty: bool,
    /// Header pointer overrides.
    descs_ptr: u64,
    infos_ptr: u64,
    data_ptr: u64,
}

impl Ring {
    fn new(count_bits: u32, size_bits: u32) -> Self {
        Self::starting_at(count_bits, size_bits, 0, 0)
    }

    /// A ring whose first record gets id `id` and begins at data position `lpos`.
    fn starting_at(count_bits: u32, size_bits: u32, id: u64, lpos: u64) -> Self {
        let count = 1usize << count_bits;
        let id = id & DESC_ID_MASK;
        let placeholder = id.wrapping_sub(1) & DESC_ID_MASK;
        let mut ring = Self {
            count_bits,
            size_bits,
            descs: vec![0; count * 24],
            infos: vec![0; count * 88],
            data: vec![0; 1 << size_bits],
            head_id: placeholder,
            tail_id: placeholder,
            next_id: id,
            // Any seq congruent to the slot will do; not starting at 0 checks
            // that nothing assumes it.
            next_seq: (id & (count as u64 - 1)) + 7 * count as u64,
            head_lpos: lpos,
            empty: true,
            descs_ptr: DESCS_ADDR,
            infos_ptr: INFOS_ADDR,
            data_ptr: DATA_ADDR,
        };
        // An empty ring as prb_init() leaves it: head and tail on a reusable
        // placeholder descriptor without data. The first record moves the tail
        // to itself here (the kernel moves it only when the ring is full).
        ring.set_desc(placeholder, sv(REUSABLE, placeholder), 1, 1);
        ring
    }

    fn count(&self) -> u64 {
        1 << self.count_bits
    }

    fn slot(&self, id: u64) -> usize {
        (id & (self.count() - 1)) as usize
    }

    fn put_u64(buf: &mut [u8], at: usize, v: u64) {
        buf[at..at + 8].copy_from_slice(&v.to_le_bytes());
    }

    fn set_desc(&mut self, id: u64, state_var: u64, begin: u64, next: u64) {
        let at = self.slot(id) * 24;
        Self::put_u64(&mut self.descs, at, state_var);
        Self::put_u64(&mut self.descs, at + 8, begin);
        Self::put_u64(&mut self.descs, at + 16, next);
    }

    fn set_info(&mut self, id: u64, seq: u64, ts: u64, text_len: u16, caller: u32) {
        let at = self.slot(id) * 88;
        Self::put_u64(&mut self.infos, at, seq);
        Self::put_u64(&mut self.infos, at + 8, ts);
        self.infos[at + 16..at + 18].copy_from_slice(&text_len.to_le_bytes());
        self.infos[at + 20..at + 24].copy_from_slice(&caller.to_le_bytes());
    }

    fn set_state(&mut self, id: u64, state: u64) {
        let at = self.slot(id) * 24;
        Self::put_u64(&mut self.descs, at, sv(state, id));
    }

    fn set_text_len(&mut self, id: u64, text_len: u16) {
        let at = self.slot(id) * 88 + 16;
        self.infos[at..at + 2].copy_from_slice(&text_len.to_le_bytes());
    }

    fn set_seq(&mut self, id: u64, seq: u64) {
        let at = self.slot(id) * 88;
        Self::put_u64(&mut self.infos, at, seq);
    }

    fn lpos(&self, id: u64) -> (u64, u64) {
        let at = self.slot(id) * 24;
        let d = &self.descs;
        (le_u64(d, at + 8).unwrap(), le_u64(d, at + 16).unwrap())
    }

    /// Appends a finalized record, allocating its block as data_alloc() does.
    fn push(&mut self, ts: u64, text: &str) -> u64 {
        self.push_bytes(ts, text.as_bytes())
    }

    fn push_bytes(&mut self, ts: u64, text: &[u8]) -> u64 {
        let id = self.next_id;
        let sb = self.size_bits;
        let size = 1u64 << sb;
        let block = (8 + text.len() as u64).next_multiple_of(8);
        let begin = self.head_lpos;
        let mut next = begin.wrapping_add(block);
        let mut start = (begin & (size - 1)) as usize;
        if begin >> sb != next >> sb {
            // Does not fit before the end: the data goes at the start, and the id
            // is written at both places, as data_alloc() does.
            next = ((next >> sb) << sb).wrapping_add(block);
            if start + 8 <= self.data.len() {
                Self::put_u64(&mut self.data, start, id);
            }
            start = 0;
        }
        Self::put_u64(&mut self.data, start, id);
        self.data[start + 8..start + 8 + text.len()].copy_from_slice(text);
        self.record(id, begin, next, ts, text.len() as u16);
        self.head_lpos = next;
        id
    }

    /// Appends a finalized data-less record (an empty line).
    fn push_empty(&mut self, ts: u64) -> u64 {
        let id = self.next_id;
        self.record(id, NO_LPOS, NO_LPOS, ts, 0);
        id
    }

    fn record(&mut self, id: u64, begin: u64, next: u64, ts: u64, len: u16) {
        self.set_desc(id, sv(FINALIZED, id), begin, next);
        let seq = self.next_seq;
        self.set_info(id, seq, ts, len, 100 + (seq as u32));
        self.head_id = id;
        if self.empty {
            self.tail_id = id;
            self.empty = false;
        }
        self.next_id = (id + 1) & DESC_ID_MASK;
        self.next_seq += 1;
    }

    fn header(&self) -> Vec<u8> {
        let mut rb = vec![0u8; 88];
        rb[0..4].copy_from_slice(&self.count_bits.to_le_bytes());
        Self::put_u64(&mut rb, 8, self.descs_ptr);
        Self::put_u64(&mut rb, 16, self.infos_ptr);
        Self::put_u64(&mut rb, 24, self.head_id);
        Self::put_u64(&mut rb, 32, self.tail_id);
        rb[48..52].copy_from_slice(&self.size_bits.to_le_bytes());
        Self::put_u64(&mut rb, 56, self.data_ptr);
        Self::put_u64(&mut rb, 64, self.head_lpos);
        rb
    }

    fn memory(&self) -> FakeMemory {
        let mut m = FakeMemory::default();
        m.put(PRB_SYM, RB_ADDR.to_le_bytes());
        m.put(RB_ADDR, self.header());
        m.put(DESCS_ADDR, self.descs.clone());
        m.put(INFOS_ADDR, self.infos.clone());
        m.put(DATA_ADDR, self.data.clone());
        m
    }

    fn read(&self) -> LogReadout {
        read_log(&self.memory(), &layout()).unwrap()
    }
}

fn texts(r: &LogReadout) -> Vec<&str> {
    r.records.iter().map(|r| r.text.as_str()).collect()
}

#[test]
fn layout_from_debian_6_1_vmcoreinfo() {
    let l = layout();
    assert_eq!(l.prb, PRB_SYM);
    assert_eq!(
        (l.head_id, l.tail_id, l.size_bits, l.data),
        (24, 32, 48, 56)
    );
    assert_eq!((l.desc_size, l.desc_begin, l.desc_next), (24, 8, 16));
    assert_eq!(
        (l.info_size, l.info_text_len, l.info_caller_id),
        (88, 16, 20)
    );
}

#[test]
fn reads_records_in_order() {
    let mut ring = Ring::new(4, 10);
    ring.push(1_500_000_000, "hello");
    ring.push(2_000_001_000, "two\nlines");
    ring.push(3_000_000_000, "Linux version 6.1.0-18-amd64");
    let out = ring.read();
    assert_eq!(out.torn, 0);
    assert_eq!(
        texts(&out),
        ["hello", "two\nlines", "Linux version 6.1.0-18-amd64"]
    );
    let seqs: Vec<_> = out.records.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [112, 113, 114]);
    assert_eq!(out.records[1].ts_nsec, 2_000_001_000);
    assert_eq!(out.records[0].caller_id, 212);
}

#[test]
fn empty_ring_reads_nothing_and_errs_not() {
    let ring = Ring::new(4, 10);
    let out = ring.read();
    assert!(out.records.is_empty());
    // The placeholder descriptor is reusable: recycled, not torn.
    assert_eq!((out.torn, out.recycled), (0, 1));
}

#[test]
fn invalid_utf8_is_replaced() {
    let mut ring = Ring::new(2, 8);
    let id = ring.push(0, "ab");
    let (begin, _) = ring.lpos(id);
    ring.data[begin as usize + 9] = 0xff;
    assert_eq!(texts(&ring.read()), ["a\u{fffd}"]);
}

#[test]
fn block_wrapping_to_the_start_of_the_data_ring() {
    // 128-byte ring, first block at 96: 8 + 20 bytes need 32, which would end
    // exactly at the end, so 6.1 puts it at the start.
    let mut ring = Ring::starting_at(3, 7, 0, 3 * 128 + 96);
    let a = ring.push(1, "twenty bytes of text");
    let b = ring.push(2, "after the wrapped one");
    let (begin, next) = ring.lpos(a);
    assert_ne!(begin >> 7, next >> 7, "the first block wraps");
    // Garbage where a reader that ignored the wrap would look.
    ring.data[96 + 8..128].fill(b'#');
    let out = ring.read();
    assert_eq!(out.torn, 0);
    assert_eq!(
        texts(&out),
        ["twenty bytes of text", "after the wrapped one"]
    );
    assert_eq!(ring.lpos(b).0, next);
}

#[test]
fn block_ending_exactly_at_the_ring_end_is_plain() {
    // Later kernels put a block that ends exactly at the end of the ring there.
    let mut ring = Ring::starting_at(3, 7, 0, 96);
    let id = ring.push(1, "x");
    ring.set_desc(id, sv(FINALIZED, id), 96, 128);
    Ring::put_u64(&mut ring.data, 96, id);
    ring.data[104..128].copy_from_slice(b"exactly at the end......");
    ring.set_text_len(id, 24);
    assert_eq!(texts(&ring.read()), ["exactly at the end......"]);
}

#[test]
fn data_less_record_is_an_empty_line() {
    let mut ring = Ring::new(3, 8);
    ring.push(1, "before");
    ring.push_empty(2);
    let failed = ring.push_empty(3);
    // FAILED_LPOS: begin & 1, text lost.
    ring.set_desc(failed, sv(FINALIZED, failed), 1, 1);
    ring.set_text_len(failed, 40);
    ring.push(4, "after");
    let out = ring.read();
    assert_eq!(out.torn, 0);
    assert_eq!(texts(&out), ["before", "", "", "after"]);
}

#[test]
fn unreadable_states_and_foreign_ids_are_torn() {
    let mut ring = Ring::new(4, 10);
    let ids: Vec<u64> = (0..7).map(|i| ring.push(i, &format!("r{i}"))).collect();
    ring.set_state(ids[1], RESERVED);
    ring.set_state(ids[2], REUSABLE);
    ring.set_state(ids[3], COMMITTED); // readable: written, not yet finalized
                                       // The slot holds a record from one lap later (or earlier).
    let at = ring.slot(ids[4]) * 24;
    Ring::put_u64(&mut ring.descs, at, sv(FINALIZED, ids[4] + 16));
    let out = ring.read();
    assert_eq!(texts(&out), ["r0", "r3", "r5", "r6"]);
    assert_eq!((out.torn, out.recycled), (2, 1));
}

#[test]
fn text_longer_than_its_block_is_torn() {
    let mut ring = Ring::new(3, 8);
    ring.push(0, "ok");
    let bad = ring.push(0, "sixteen bytes!!!");
    ring.push(0, "ok too");
    // 16 bytes of text fill the 24-byte block; 17 do not fit.
    ring.set_text_len(bad, 16);
    assert_eq!(ring.read().torn, 0);
    ring.set_text_len(bad, 17);
    let out = ring.read();
    assert_eq!(texts(&out), ["ok", "ok too"]);
    assert_eq!(out.torn, 1);
}

#[test]
fn bad_blocks_are_torn() {
    let mut ring = Ring::new(3, 8);
    let ids: Vec<u64> = (0..5).map(|i| ring.push(0, &format!("rec {i}"))).collect();
    // Block owned by another id (recycled).
    let (b, _) = ring.lpos(ids[0]);
    Ring::put_u64(&mut ring.data, b as usize, 999);
    // Misaligned.
    let (b1, n1) = ring.lpos(ids[1]);
    ring.set_desc(ids[1], sv(FINALIZED, ids[1]), b1 + 4, n1);
    // Two wraps ahead: no such block.
    let (b2, _) = ring.lpos(ids[2]);
    ring.set_desc(ids[2], sv(FINALIZED, ids[2]), b2, b2 + 3 * 256);
    // Shorter than its id.
    let (b3, _) = ring.lpos(ids[3]);
    ring.set_desc(ids[3], sv(FINALIZED, ids[3]), b3, b3);
    let out = ring.read();
    assert_eq!(texts(&out), ["rec 4"]);
    assert_eq!(out.torn, 4);
}

#[test]
fn sequence_numbers_must_fit_and_rise() {
    let mut ring = Ring::new(3, 9);
    let ids: Vec<u64> = (0..5).map(|i| ring.push(0, &format!("s{i}"))).collect();
    // Not congruent to its slot.
    ring.set_seq(ids[1], 1_000_002);
    // Congruent, but not above the previous record's.
    let prev = 7 * 8 + 2;
    ring.set_seq(ids[3], prev - 8);
    let out = ring.read();
    assert_eq!(texts(&out), ["s0", "s2", "s4"]);
    assert_eq!(out.torn, 2);
}

#[test]
fn ids_wrap_around_2_to_the_62() {
    let mut ring = Ring::starting_at(2, 8, DESC_ID_MASK - 1, 0);
    let ids: Vec<u64> = (0..4).map(|i| ring.push(i, &format!("w{i}"))).collect();
    assert_eq!(ids, [DESC_ID_MASK - 1, DESC_ID_MASK, 0, 1]);
    let out = ring.read();
    assert_eq!(out.torn, 0);
    assert_eq!(texts(&out), ["w0", "w1", "w2", "w3"]);
    // Header ids with their top bits set (the full u64 wrapping) mean the same.
    ring.tail_id = u64::MAX - 1;
    ring.head_id = 1;
    assert_eq!(texts(&ring.read()), ["w0", "w1", "w2", "w3"]);
}

#[test]
fn at_most_count_ids_are_read_the_newest() {
    let mut ring = Ring::new(2, 8);
    for i in 0..4 {
        ring.push(i, &format!("n{i}"));
    }
    // A stale (or lying) tail far behind the head.
    ring.tail_id = ring.head_id.wrapping_sub(1000) & DESC_ID_MASK;
    let out = ring.read();
    assert_eq!(texts(&out), ["n0", "n1", "n2", "n3"]);
    assert_eq!(out.torn, 0);
    // Head and tail exactly apart by a count: still no more than `count`.
    ring.tail_id = ring.head_id.wrapping_sub(4) & DESC_ID_MASK;
    assert_eq!(ring.read().records.len(), 4);
}

#[test]
fn overlapping_blocks_cannot_blow_up_the_output() {
    // 64-byte ring; record k claims the block from 8k to 56, with its id planted
    // at 8k, so the blocks overlap and claim 168 text bytes in all.
    let mut ring = Ring::new(3, 6);
    for k in 0..7u64 {
        let id = ring.next_id;
        ring.record(id, 8 * k, 56, k, (48 - 8 * k) as u16);
        Ring::put_u64(&mut ring.data, 8 * k as usize, id);
    }
    let out = ring.read();
    let shown: usize = out.records.iter().map(|r| r.text.len()).sum();
    assert!(shown <= 64, "{shown}");
    assert!(out.torn > 0);
    assert_eq!(out.records.len() as u64 + out.torn, 7);
}

/// Memory that a "writer" changes after a number of reads.
struct Racing {
    before: FakeMemory,
    after: FakeMemory,
    switch_after: usize,
    reads: Cell<usize>,
}

impl KernelMemory for Racing {
    fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let n = self.reads.get();
        self.reads.set(n + 1);
        if n < self.switch_after {
            self.before.read(addr, buf)
        } else {
            self.after.read(addr, buf)
        }
    }
}

#[test]
fn a_writer_between_the_two_reads_tears_the_record() {
    let mut ring = Ring::new(3, 9);
    let ids: Vec<u64> = (0..4).map(|i| ring.push(i, &format!("v{i}"))).collect();
    let before = ring.memory();
    // The writer recycles record 1 and extends record 2 in place (same state
    // word, bigger block).
    ring.set_state(ids[1], REUSABLE);
    let (b, n) = ring.lpos(ids[2]);
    ring.set_desc(ids[2], sv(COMMITTED, ids[2]), b, n + 8);
    ring.set_state(ids[2], FINALIZED);
    // Reads: prb, header, descs, infos, data | descs again.
    let racing = Racing {
        before,
        after: ring.memory(),
        switch_after: 5,
        reads: Cell::new(0),
    };
    let out = read_log(&racing, &layout()).unwrap();
    assert_eq!(racing.reads.get(), 6, "six reads of guest memory in all");
    assert_eq!(texts(&out), ["v0", "v3"]);
    assert_eq!(out.torn, 2);
}

#[test]
fn descriptors_gone_at_the_second_read_is_an_error() {
    let mut ring = Ring::new(2, 8);
    ring.push(0, "x");
    let mut after = ring.memory();
    after.0.retain(|(a, _)| *a != DESCS_ADDR);
    let racing = Racing {
        before: ring.memory(),
        after,
        switch_after: 5,
        reads: Cell::new(0),
    };
    assert!(matches!(
        read_log(&racing, &layout()),
        Err(PrintkError::Memory {
            what: "the descriptor array (second read)",
            addr: DESCS_ADDR,
            len: 96,
            ..
        })
    ));
}

#[test]
fn dmesg_format() {
    let rec = |ts, text: &str| LogRecord {
        seq: 0,
        ts_nsec: ts,
        caller_id: 0,
        text: text.into(),
    };
    assert_eq!(
        format_dmesg(&[rec(1_500_000_000, "hello")]),
        "[    1.500000] hello\n"
    );
    assert_eq!(
        format_dmesg(&[
            rec(0, "first"),
            rec(123_456_789_999_999, "a\nb"),
            rec(42_000, ""),
        ]),
        "[    0.000000] first\n[123456.789999] a\n[123456.789999] b\n[    0.000042] \n"
    );
    assert_eq!(
        format_dmesg(&[rec(u64::MAX, "x")]),
        "[18446744073.709551] x\n"
    );
    assert_eq!(
        format_dmesg(&[rec(0, "red \u{1b}[31m\ttab\r\u{9b}")]),
        "[    0.000000] red \\x1b[31m\ttab\\x0d\\x9b\n"
    );
    assert_eq!(format_dmesg(&[]), "");
}

#[test]
fn refuses_huge_rings() {
    let mut ring = Ring::new(2, 8);
    ring.count_bits = 30;
    assert_eq!(
        read_log(&ring.memory(), &layout()),
        Err(PrintkError::CountBitsTooLarge { count_bits: 30 })
    );
    let mut ring = Ring::new(2, 8);
    ring.size_bits = 40;
    assert_eq!(
        read_log(&ring.memory(), &layout()),
        Err(PrintkError::SizeBitsTooLarge { size_bits: 40 })
    );
    // Allowed bits, but 2^24 * (24 + 88) bytes of arrays.
    let mut ring = Ring::new(2, 8);
    ring.count_bits = 24;
    assert_eq!(
        read_log(&ring.memory(), &layout()),
        Err(PrintkError::RingTooLarge {
            bytes: (1 << 24) * 112 + 256,
            limit: MAX_RING_BYTES
        })
    );
}

#[test]
fn refuses_null_pointers() {
    let ring = Ring::new(2, 8);
    let mut mem = FakeMemory::default();
    mem.put(PRB_SYM, 0u64.to_le_bytes());
    assert!(matches!(
        read_log(&mem, &layout()),
        Err(PrintkError::NullPointer { .. })
    ));
    for which in 0..3 {
        let mut ring = Ring::new(2, 8);
        match which {
            0 => ring.descs_ptr = 0,
            1 => ring.infos_ptr = 0,
            _ => ring.data_ptr = 0,
        }
        let err = read_log(&ring.memory(), &layout()).unwrap_err();
        assert!(matches!(err, PrintkError::NullPointer { .. }), "{err}");
    }
    assert!(matches!(
        layout_with(|m| {
            m.insert("SYMBOL(prb)", 0);
        }),
        Err(PrintkError::NullPointer { .. })
    ));
    drop(ring);
}

#[test]
fn unreadable_memory_says_what_was_being_read() {
    let ring = Ring::new(2, 8);
    let full = ring.memory();
    for (drop_at, what) in [
        (PRB_SYM, "the prb pointer (SYMBOL(prb))"),
        (RB_ADDR, "struct printk_ringbuffer"),
        (DESCS_ADDR, "the descriptor array"),
        (INFOS_ADDR, "the printk_info array"),
        (DATA_ADDR, "the text data ring"),
    ] {
        let mem = FakeMemory(
            full.0
                .iter()
                .filter(|(a, _)| *a != drop_at)
                .cloned()
                .collect(),
        );
        match read_log(&mem, &layout()) {
            Err(e @ PrintkError::Memory { what: w, .. }) => {
                assert_eq!(w, what);
                assert!(e.to_string().contains(what), "{e}");
                assert!(std::error::Error::source(&e).is_some());
            }
            other => panic!("{what}: {other:?}"),
        }
    }
    // A region that would run off the end of the address space.
    let mut ring = Ring::new(2, 8);
    ring.data_ptr = u64::MAX - 16;
    assert!(matches!(
        read_log(&ring.memory(), &layout()),
        Err(PrintkError::AddressOverflow {
            what: "the text data ring",
            ..
        })
    ));
}

#[test]
fn refuses_missing_or_impossible_vmcoreinfo() {
    assert_eq!(
        layout_with(|m| {
            m.remove("OFFSET(prb_desc_ring.head_id)");
        }),
        Err(PrintkError::NotInVmcoreinfo {
            key: "OFFSET(prb_desc_ring.head_id)".into()
        })
    );
    for (key, value) in [
        ("SIZE(printk_info)", 0),
        ("SIZE(prb_desc)", 1 << 40),
        ("OFFSET(printk_info.text_len)", 87),
        ("OFFSET(prb_desc.text_blk_lpos)", 16),
        ("OFFSET(printk_ringbuffer.text_data_ring)", 60),
        ("OFFSET(atomic_long_t.counter)", 4),
        ("OFFSET(prb_desc_ring.tail_id)", u64::MAX),
    ] {
        let got = layout_with(|m| {
            m.insert(key, value);
        });
        assert!(
            matches!(&got, Err(PrintkError::BadLayout { what }) if what.contains(key)),
            "{key}={value}: {got:?}"
        );
    }
}

mod properties;
