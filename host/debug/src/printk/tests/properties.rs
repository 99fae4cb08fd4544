//! Property tests of the printk ring reader: a model of the ring's blocks, random
//! well-formed rings read back exactly, and mutated rings read without a panic.

use super::*;

/// The block of `begin..next` by the kernel's rules, written out separately.
fn model_block(size_bits: u32, begin: u64, next: u64) -> Option<(usize, usize)> {
    let size = 1u64 << size_bits;
    let w = |l: u64| l >> size_bits;
    let (start, len) = if w(begin) == w(next) && begin < next {
        (begin % size, next - begin)
    } else if next.is_multiple_of(size) && w(next) == w(begin).wrapping_add(1) {
        (begin % size, size - begin % size)
    } else if w(begin.wrapping_add(size)) == w(next) {
        (0, next % size)
    } else {
        return None;
    };
    Some((start as usize, len as usize))
}

fn lpos_strategy(size_bits: u32) -> impl Strategy<Value = u64> {
    let size = 1u64 << size_bits;
    prop_oneof![
        any::<u64>(),
        (0u64..4, 0..size).prop_map(move |(w, i)| w * size + (i & !7)),
        (0..size).prop_map(move |i| u64::MAX - size + 1 + (i & !7)),
        Just(1u64),
        Just(3u64),
    ]
}

fn ring_strategy() -> impl Strategy<Value = (Ring, bool)> {
    (
        0u32..=4,
        3u32..=8,
        prop_oneof![any::<u64>(), Just(DESC_ID_MASK - 2), Just(0u64)],
    )
        .prop_flat_map(|(cb, sb, base)| {
            let count = 1usize << cb;
            let desc = (
                0u64..4,
                0u64..(2 * count as u64 + 2),
                lpos_strategy(sb),
                lpos_strategy(sb),
                any::<bool>(),
            );
            let info = (
                prop_oneof![any::<u64>(), (0u64..3).prop_map(|k| k * 1000)],
                any::<u64>(),
                prop_oneof![any::<u16>(), 0u16..300],
                any::<u32>(),
            );
            (
                Just((cb, sb, base)),
                proptest::collection::vec(desc, count),
                proptest::collection::vec(info, count),
                proptest::collection::vec(any::<u8>(), 1usize << sb),
                0u64..(2 * count as u64 + 2),
                0u64..(2 * count as u64 + 2),
                any::<bool>(),
                any::<bool>(),
            )
        })
        .prop_map(
            |((cb, sb, base), descs, infos, data, head, tail, raw_ids, drop_infos)| {
                let mut ring = Ring::new(cb, sb);
                ring.data = data;
                let count = 1u64 << cb;
                for (slot, (state, id_off, begin, next, plant)) in descs.into_iter().enumerate() {
                    // An id near the base whose slot is this one, or a foreign one.
                    let mut id = base.wrapping_add(id_off) & DESC_ID_MASK;
                    if id_off % 2 == 0 {
                        id = (id & !(count - 1)) | slot as u64;
                    }
                    let at = slot * 24;
                    Ring::put_u64(&mut ring.descs, at, sv(state, id));
                    Ring::put_u64(&mut ring.descs, at + 8, begin);
                    Ring::put_u64(&mut ring.descs, at + 16, next);
                    // Often give the block its owner's id, so records get through.
                    if plant {
                        if let Some((start, len)) = model_block(sb, begin, next) {
                            if len >= 8 && start + 8 <= ring.data.len() {
                                Ring::put_u64(&mut ring.data, start, id);
                            }
                        }
                    }
                }
                for (slot, (seq, ts, len, caller)) in infos.into_iter().enumerate() {
                    let at = slot * 88;
                    let seq = if seq % 1000 == 0 {
                        seq + slot as u64
                    } else {
                        seq
                    };
                    Ring::put_u64(&mut ring.infos, at, seq);
                    Ring::put_u64(&mut ring.infos, at + 8, ts);
                    ring.infos[at + 16..at + 18].copy_from_slice(&len.to_le_bytes());
                    ring.infos[at + 20..at + 24].copy_from_slice(&caller.to_le_bytes());
                }
                ring.head_id = base.wrapping_add(head);
                ring.tail_id = base.wrapping_add(tail);
                if !raw_ids {
                    ring.head_id &= DESC_ID_MASK;
                    ring.tail_id &= DESC_ID_MASK;
                }
                (ring, drop_infos)
            },
        )
}

/// The property: no panic, and every shown text is exactly the bytes after the id in
/// its descriptor's block, within that block.
fn check_ring(ring: &Ring, drop_infos: bool) -> Result<(), TestCaseError> {
    let mut mem = ring.memory();
    if drop_infos {
        mem.0.retain(|(a, _)| *a != INFOS_ADDR);
    }
    let out = match read_log(&mem, &layout()) {
        Ok(out) => out,
        Err(e) => {
            prop_assert!(drop_infos, "{}", e);
            return Ok(());
        }
    };
    let count = ring.count();
    prop_assert!(out.records.len() as u64 + out.torn + out.recycled <= count);
    let mut prev = None;
    let mut shown = 0;
    for r in &out.records {
        prop_assert!(prev.is_none_or(|p| r.seq > p));
        prev = Some(r.seq);
        let slot = (r.seq & (count - 1)) as usize;
        let (begin, next) = (
            le_u64(&ring.descs, slot * 24 + 8).unwrap(),
            le_u64(&ring.descs, slot * 24 + 16).unwrap(),
        );
        let text_len = le_u16(&ring.infos, slot * 88 + 16).unwrap() as usize;
        if begin & 1 == 1 {
            prop_assert_eq!(&r.text, "");
            continue;
        }
        let (start, len) = model_block(ring.size_bits, begin, next).unwrap();
        prop_assert!(
            len >= 8 + text_len,
            "text_len {} in a {}-byte block",
            text_len,
            len
        );
        let bytes = &ring.data[start + 8..start + 8 + text_len];
        prop_assert_eq!(&r.text, &String::from_utf8_lossy(bytes));
        shown += text_len;
    }
    prop_assert!(shown <= ring.data.len());
    Ok(())
}

/// A well-formed ring of random records (ids, positions and texts random, the data
/// ring wrapping or not), then random words and bytes overwritten.
fn mutated_ring_strategy() -> impl Strategy<Value = (Ring, bool)> {
    (
        0u32..=4,
        5u32..=8,
        prop_oneof![any::<u64>(), Just(DESC_ID_MASK - 2)],
        prop_oneof![any::<u64>(), 0u64..1024],
    )
        .prop_flat_map(|(cb, sb, id, lpos)| {
            let count = 1usize << cb;
            let max_text = (1usize << sb) / 2 - 16;
            let record = (
                any::<u64>(),
                proptest::collection::vec(any::<u8>(), 0..=max_text),
                any::<bool>(),
            );
            let mutation = (0u8..3, any::<usize>(), any::<u64>());
            (
                Just((cb, sb, id, lpos & !7)),
                proptest::collection::vec(record, 0..=count),
                proptest::collection::vec(mutation, 0..4),
                prop::bool::weighted(0.1),
            )
        })
        .prop_map(|((cb, sb, id, lpos), records, mutations, drop_infos)| {
            let mut ring = Ring::starting_at(cb, sb, id, lpos);
            for (ts, text, empty) in records {
                if empty && text.len() % 4 == 0 {
                    ring.push_empty(ts);
                } else {
                    ring.push_bytes(ts, &text);
                }
            }
            for (target, at, value) in mutations {
                let buf = match target {
                    0 => &mut ring.descs,
                    1 => &mut ring.infos,
                    _ => &mut ring.data,
                };
                let at = (at % buf.len()) & !7;
                let end = (at + 8).min(buf.len());
                buf[at..end].copy_from_slice(&value.to_le_bytes()[..end - at]);
            }
            (ring, drop_infos)
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_rings_never_panic_and_texts_stay_in_their_blocks(
        (ring, drop_infos) in ring_strategy()
    ) {
        check_ring(&ring, drop_infos)?;
    }

    #[test]
    fn damaged_rings_never_panic_and_texts_stay_in_their_blocks(
        (ring, drop_infos) in mutated_ring_strategy()
    ) {
        check_ring(&ring, drop_infos)?;
    }
}
