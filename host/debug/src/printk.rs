//! The kernel log, read out of the guest's lockless printk ring buffer (Linux 5.10 and
//! later, `kernel/printk/printk_ringbuffer.{c,h}`; written against 6.1), so the host can
//! show `dmesg` of a guest whose kernel is hung, has panicked, or is still running.
//!
//! The ring has three parts: an array of descriptors (`struct prb_desc`: a state word
//! holding the record's id and state, and where its text is), a parallel array of
//! `struct printk_info` (sequence number, timestamp, text length, caller), and the text
//! data ring, where each block starts with the id of the descriptor that owns it. The
//! layout comes from VMCOREINFO, so no debug info is needed.
//!
//! Everything read is hostile: the guest may be writing the log while we read, may have
//! died half way through a write, or may lie. So each of the three arrays is copied to
//! the host once (a handful of `KernelMemory` reads in all), every index, length and
//! position is checked against those copies, and a record counts only if its
//! descriptor read the same before and after its text was copied — the double read the
//! kernel's own reader does (`desc_read()`). A record that fails a check is skipped and
//! counted in [`LogReadout::torn`], never shown half-written.

#![deny(clippy::arithmetic_side_effects)]

use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::memory::{KernelMemory, MemoryError};

/// Where the state lives in `prb_desc.state_var`: its top two bits
/// (`DESC_FLAGS_SHIFT` = `DESC_SV_BITS` - 2 on a 64-bit kernel).
const DESC_FLAGS_SHIFT: u32 = 62;
/// The id bits of a state word; ids count modulo 2^62 (`DESC_ID_MASK`).
const DESC_ID_MASK: u64 = !(3 << DESC_FLAGS_SHIFT);
/// `desc_committed`: written, may still be extended by its writer.
const STATE_COMMITTED: u64 = 1;
/// `desc_finalized`: written for good.
const STATE_FINALIZED: u64 = 2;
/// `desc_reusable`: its text was recycled (the ring wrapped), the record is gone.
const STATE_REUSABLE: u64 = 3;
/// Size of the descriptor id at the start of every data block (`unsigned long`).
const BLOCK_ID_SIZE: u64 = 8;

/// Most descriptors accepted: 2^24 (a 2^29-byte log buffer at the kernel's 32 bytes
/// per record is only 2^24 descriptors; more is a lie).
pub const MAX_COUNT_BITS: u32 = 24;
/// Largest text data ring accepted: 2^30 bytes.
pub const MAX_SIZE_BITS: u32 = 30;
/// Most bytes copied out of the guest for the three arrays together.
pub const MAX_RING_BYTES: u64 = 64 << 20;
/// Largest struct size (or field offset) believed from VMCOREINFO; the real ones are
/// under 100 bytes, and a bound keeps every offset sum far from overflow.
const MAX_STRUCT_SIZE: u64 = 4096;

/// Why the printk ring could not be read at all (a single bad record is not an error:
/// it is skipped and counted in [`LogReadout::torn`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PrintkError {
    /// VMCOREINFO lacks a key the reader needs (a kernel before 5.10 has no lockless
    /// ring, and so none of its keys).
    #[error("VMCOREINFO has no {key} (the lockless printk ring needs Linux 5.10 or later)")]
    NotInVmcoreinfo {
        /// The key, e.g. `SYMBOL(prb)`.
        key: String,
    },
    /// VMCOREINFO describes a layout that cannot be (a field outside its struct, a
    /// zero or huge struct size).
    #[error("VMCOREINFO describes an impossible printk ring layout: {what}")]
    BadLayout {
        /// What is wrong.
        what: String,
    },
    /// A read of guest memory failed.
    #[error("cannot read {what} ({len} bytes at {addr:#x})")]
    Memory {
        /// What was being read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// How many bytes.
        len: u64,
        /// Why.
        #[source]
        source: MemoryError,
    },
    /// A pointer the ring needs is null (the ring is not set up yet, or was wiped).
    #[error("{what} is a null pointer")]
    NullPointer {
        /// Which pointer.
        what: &'static str,
    },
    /// A region would run past the end of the address space.
    #[error("{what} ({len} bytes at {addr:#x}) runs past the end of the address space")]
    AddressOverflow {
        /// What was to be read.
        what: &'static str,
        /// Where.
        addr: u64,
        /// How many bytes.
        len: u64,
    },
    /// The descriptor ring claims more than 2^[`MAX_COUNT_BITS`] descriptors.
    #[error("the descriptor ring claims 2^{count_bits} descriptors (at most 2^24 believed)")]
    CountBitsTooLarge {
        /// `prb_desc_ring.count_bits` as read.
        count_bits: u32,
    },
    /// The text data ring claims more than 2^[`MAX_SIZE_BITS`] bytes.
    #[error("the text data ring claims 2^{size_bits} bytes (at most 2^30 believed)")]
    SizeBitsTooLarge {
        /// `prb_data_ring.size_bits` as read.
        size_bits: u32,
    },
    /// The descriptor, info and text arrays together exceed [`MAX_RING_BYTES`].
    #[error("the printk ring's arrays total {bytes} bytes (at most {limit} copied)")]
    RingTooLarge {
        /// Their total size.
        bytes: u64,
        /// The limit.
        limit: u64,
    },
}

/// Where the ring is and how it is laid out (from VMCOREINFO).
///
/// Offsets are kept relative to the struct they are read from: the ring header
/// (`struct printk_ringbuffer`, nested structs flattened), one descriptor, one info.
/// Each was checked to fit, with its width, inside its struct.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PrintkLayout {
    /// Address of the kernel variable `prb` (a pointer to the ring).
    prb: u64,
    /// `SIZE(printk_ringbuffer)`: how much of the header is copied.
    ringbuffer_size: usize,
    /// `desc_ring.count_bits` (u32) in the header.
    count_bits: usize,
    /// `desc_ring.descs` (pointer) in the header.
    descs: usize,
    /// `desc_ring.infos` (pointer) in the header.
    infos: usize,
    /// `desc_ring.head_id.counter` (u64) in the header.
    head_id: usize,
    /// `desc_ring.tail_id.counter` (u64) in the header.
    tail_id: usize,
    /// `text_data_ring.size_bits` (u32) in the header.
    size_bits: usize,
    /// `text_data_ring.data` (pointer) in the header.
    data: usize,
    /// `SIZE(prb_desc)`: the descriptor array's stride.
    desc_size: usize,
    /// `state_var.counter` (u64) in a descriptor.
    desc_state_var: usize,
    /// `text_blk_lpos.begin` (u64) in a descriptor.
    desc_begin: usize,
    /// `text_blk_lpos.next` (u64) in a descriptor.
    desc_next: usize,
    /// `SIZE(printk_info)`: the info array's stride.
    info_size: usize,
    /// `seq` (u64) in an info.
    info_seq: usize,
    /// `ts_nsec` (u64) in an info.
    info_ts_nsec: usize,
    /// `text_len` (u16) in an info.
    info_text_len: usize,
    /// `caller_id` (u32) in an info.
    info_caller_id: usize,
}

impl PrintkLayout {
    /// `get(key)` returns the VMCOREINFO value for keys like "SYMBOL(prb)",
    /// "OFFSET(prb_desc_ring.head_id)", "SIZE(printk_info)" (SYMBOL values are the hex
    /// addresses, the others decimal; the caller parses — you get u64). A missing key →
    /// [`PrintkError::NotInVmcoreinfo`]. VMCOREINFO sits in guest memory, so its
    /// numbers are checked too: every field must fit inside its struct
    /// ([`PrintkError::BadLayout`] otherwise).
    pub fn from_vmcoreinfo(get: impl Fn(&str) -> Option<u64>) -> Result<Self, PrintkError> {
        let key =
            |k: &str| get(k).ok_or_else(|| PrintkError::NotInVmcoreinfo { key: k.to_owned() });
        // A struct size: non-zero (it is an array stride) and small.
        let size = |k: &str| {
            let v = key(k)?;
            if v == 0 || v > MAX_STRUCT_SIZE {
                return Err(bad_layout(format!(
                    "{k}={v} (expected 1..={MAX_STRUCT_SIZE})"
                )));
            }
            Ok(v)
        };
        // A field offset, checked to leave `width` bytes inside a struct of `outer`.
        let field = |k: &str, width: u64, outer: u64| {
            let off = key(k)?;
            match off.checked_add(width) {
                Some(end) if end <= outer => Ok(off),
                _ => Err(bad_layout(format!(
                    "{k}={off} leaves no room for {width} bytes in a {outer}-byte struct"
                ))),
            }
        };

        let prb = key("SYMBOL(prb)")?;
        if prb == 0 {
            return Err(PrintkError::NullPointer {
                what: "SYMBOL(prb)",
            });
        }
        let rb_size = size("SIZE(printk_ringbuffer)")?;
        let desc_ring_size = size("SIZE(prb_desc_ring)")?;
        let data_ring_size = size("SIZE(prb_data_ring)")?;
        let atomic_size = size("SIZE(atomic_long_t)")?;
        let lpos_size = size("SIZE(prb_data_blk_lpos)")?;
        let desc_size = size("SIZE(prb_desc)")?;
        let info_size = size("SIZE(printk_info)")?;

        // state_var, head_id and tail_id are atomic_long_t; the word is its `counter`.
        let counter = field("OFFSET(atomic_long_t.counter)", 8, atomic_size)?;
        let desc_ring = field(
            "OFFSET(printk_ringbuffer.desc_ring)",
            desc_ring_size,
            rb_size,
        )?;
        let text_ring = field(
            "OFFSET(printk_ringbuffer.text_data_ring)",
            data_ring_size,
            rb_size,
        )?;
        let in_desc_ring = |k: &str, width: u64| sum(desc_ring, field(k, width, desc_ring_size)?);
        let in_text_ring = |k: &str, width: u64| sum(text_ring, field(k, width, data_ring_size)?);
        let lpos = field("OFFSET(prb_desc.text_blk_lpos)", lpos_size, desc_size)?;

        Ok(Self {
            prb,
            ringbuffer_size: to_usize(rb_size)?,
            count_bits: to_usize(in_desc_ring("OFFSET(prb_desc_ring.count_bits)", 4)?)?,
            descs: to_usize(in_desc_ring("OFFSET(prb_desc_ring.descs)", 8)?)?,
            infos: to_usize(in_desc_ring("OFFSET(prb_desc_ring.infos)", 8)?)?,
            head_id: to_usize(sum(
                in_desc_ring("OFFSET(prb_desc_ring.head_id)", atomic_size)?,
                counter,
            )?)?,
            tail_id: to_usize(sum(
                in_desc_ring("OFFSET(prb_desc_ring.tail_id)", atomic_size)?,
                counter,
            )?)?,
            size_bits: to_usize(in_text_ring("OFFSET(prb_data_ring.size_bits)", 4)?)?,
            data: to_usize(in_text_ring("OFFSET(prb_data_ring.data)", 8)?)?,
            desc_size: to_usize(desc_size)?,
            desc_state_var: to_usize(sum(
                field("OFFSET(prb_desc.state_var)", atomic_size, desc_size)?,
                counter,
            )?)?,
            desc_begin: to_usize(sum(
                lpos,
                field("OFFSET(prb_data_blk_lpos.begin)", 8, lpos_size)?,
            )?)?,
            desc_next: to_usize(sum(
                lpos,
                field("OFFSET(prb_data_blk_lpos.next)", 8, lpos_size)?,
            )?)?,
            info_size: to_usize(info_size)?,
            info_seq: to_usize(field("OFFSET(printk_info.seq)", 8, info_size)?)?,
            info_ts_nsec: to_usize(field("OFFSET(printk_info.ts_nsec)", 8, info_size)?)?,
            info_text_len: to_usize(field("OFFSET(printk_info.text_len)", 2, info_size)?)?,
            info_caller_id: to_usize(field("OFFSET(printk_info.caller_id)", 4, info_size)?)?,
        })
    }
}

fn bad_layout(what: String) -> PrintkError {
    PrintkError::BadLayout { what }
}

fn sum(a: u64, b: u64) -> Result<u64, PrintkError> {
    a.checked_add(b)
        .ok_or_else(|| bad_layout(format!("offset {a} + {b} overflows")))
}

fn to_usize(v: u64) -> Result<usize, PrintkError> {
    usize::try_from(v).map_err(|_| bad_layout(format!("{v} does not fit in usize")))
}

/// One record of the kernel log.
///
/// `Deserialize` too: it travels in the daemon's API replies (`vesper-api`'s `Reply`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Sequence number (what `dmesg -r`/`/dev/kmsg` call the record's number).
    pub seq: u64,
    /// Timestamp: nanoseconds since boot (`local_clock()`).
    pub ts_nsec: u64,
    /// `caller_id`: a task id, or 0x80000000 | CPU number when logged from interrupt
    /// context.
    pub caller_id: u32,
    /// The text, lossy UTF-8; may hold several lines, has no trailing newline.
    pub text: String,
}

/// What [`read_log`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogReadout {
    /// The readable records, oldest first.
    pub records: Vec<LogRecord>,
    /// Records skipped because a writer was changing them (or their bytes made no
    /// sense): a descriptor reserved (being written, or abandoned by a writer that
    /// died), holding another id, changed between the two reads, or with a sequence
    /// number, block or text length that does not check out.
    pub torn: u64,
    /// Records whose text the ring already recycled (state reusable): lost to the
    /// ring's size, as the kernel's own reader counts them, not torn. A fresh ring's
    /// placeholder counts here too.
    #[serde(default)]
    pub recycled: u64,
}

/// The header fields of `struct printk_ringbuffer` that the reader uses.
struct Header {
    count_bits: u32,
    descs: u64,
    infos: u64,
    head_id: u64,
    tail_id: u64,
    size_bits: u32,
    data: u64,
}

/// Reads every readable record, oldest first.
///
/// Copies the ring header, the descriptor array, the info array and the text data ring
/// out of the guest, then the descriptor array once more; a record is shown only if its
/// descriptor is committed or finalized with the expected id in both copies, its
/// sequence number fits its slot and rises over the previous record's, and its text
/// lies inside a well-formed data block that starts with its id. Anything else counts
/// as torn. Errors only when the ring itself cannot be found or read.
pub fn read_log(mem: &dyn KernelMemory, layout: &PrintkLayout) -> Result<LogReadout, PrintkError> {
    let prb = mem
        .read_u64(layout.prb)
        .map_err(|source| PrintkError::Memory {
            what: "the prb pointer (SYMBOL(prb))",
            addr: layout.prb,
            len: 8,
            source,
        })?;
    if prb == 0 {
        return Err(PrintkError::NullPointer {
            what: "prb (the printk ring pointer)",
        });
    }
    let raw = read_bytes(mem, prb, layout.ringbuffer_size, "struct printk_ringbuffer")?;
    let header = parse_header(&raw, layout)?;

    if header.count_bits > MAX_COUNT_BITS {
        return Err(PrintkError::CountBitsTooLarge {
            count_bits: header.count_bits,
        });
    }
    if header.size_bits > MAX_SIZE_BITS {
        return Err(PrintkError::SizeBitsTooLarge {
            size_bits: header.size_bits,
        });
    }
    for (ptr, what) in [
        (header.descs, "prb->desc_ring.descs"),
        (header.infos, "prb->desc_ring.infos"),
        (header.data, "prb->text_data_ring.data"),
    ] {
        if ptr == 0 {
            return Err(PrintkError::NullPointer { what });
        }
    }

    // Both shifts are bounded above (24 and 30), so they cannot overflow.
    let count = 1u64.checked_shl(header.count_bits).unwrap_or(u64::MAX);
    let data_size = 1u64.checked_shl(header.size_bits).unwrap_or(u64::MAX);
    let too_large = |bytes: Option<u64>| PrintkError::RingTooLarge {
        bytes: bytes.unwrap_or(u64::MAX),
        limit: MAX_RING_BYTES,
    };
    let descs_len = count.checked_mul(layout.desc_size as u64);
    let infos_len = count.checked_mul(layout.info_size as u64);
    let total = descs_len
        .zip(infos_len)
        .and_then(|(d, i)| d.checked_add(i))
        .and_then(|di| di.checked_add(data_size));
    let (Some(descs_len), Some(infos_len), Some(total)) = (descs_len, infos_len, total) else {
        return Err(too_large(None));
    };
    if total > MAX_RING_BYTES {
        return Err(too_large(Some(total)));
    }
    // All three are at most MAX_RING_BYTES, so they fit a usize on any 64-bit host.
    let as_len = |v: u64| usize::try_from(v).map_err(|_| too_large(Some(total)));

    // The order matters: descriptors first, then what they point at, then the
    // descriptors again. A writer must change a descriptor's state word before it
    // may touch that record's info or recycle its text block (desc_reserve() and
    // data_make_reusable()), so a descriptor that reads the same both times vouches
    // for the info and text copied in between.
    let descs = read_bytes(
        mem,
        header.descs,
        as_len(descs_len)?,
        "the descriptor array",
    )?;
    let infos = read_bytes(
        mem,
        header.infos,
        as_len(infos_len)?,
        "the printk_info array",
    )?;
    let data = read_bytes(mem, header.data, as_len(data_size)?, "the text data ring")?;
    let descs_again = read_bytes(
        mem,
        header.descs,
        as_len(descs_len)?,
        "the descriptor array (second read)",
    )?;

    let copies = Copies {
        layout,
        count_mask: count.wrapping_sub(1),
        size_bits: header.size_bits,
        descs: &descs,
        descs_again: &descs_again,
        infos: &infos,
        data: &data,
    };
    Ok(copies.walk(header.tail_id, header.head_id, count))
}

fn parse_header(raw: &[u8], layout: &PrintkLayout) -> Result<Header, PrintkError> {
    // The layout checked every offset against SIZE(printk_ringbuffer), which is how
    // much was read, so these cannot fail; an error rather than a panic all the same.
    let short = || bad_layout("struct printk_ringbuffer is shorter than its fields".into());
    Ok(Header {
        count_bits: le_u32(raw, layout.count_bits).ok_or_else(short)?,
        descs: le_u64(raw, layout.descs).ok_or_else(short)?,
        infos: le_u64(raw, layout.infos).ok_or_else(short)?,
        head_id: le_u64(raw, layout.head_id).ok_or_else(short)?,
        tail_id: le_u64(raw, layout.tail_id).ok_or_else(short)?,
        size_bits: le_u32(raw, layout.size_bits).ok_or_else(short)?,
        data: le_u64(raw, layout.data).ok_or_else(short)?,
    })
}

/// Copies `len` bytes at `addr` out of the guest.
fn read_bytes(
    mem: &dyn KernelMemory,
    addr: u64,
    len: usize,
    what: &'static str,
) -> Result<Vec<u8>, PrintkError> {
    let len64 = len as u64;
    // The last byte must be addressable (a region may end exactly at 2^64).
    if len64 != 0 && addr.checked_add(len64.wrapping_sub(1)).is_none() {
        return Err(PrintkError::AddressOverflow {
            what,
            addr,
            len: len64,
        });
    }
    let mut buf = vec![0u8; len];
    mem.read(addr, &mut buf)
        .map_err(|source| PrintkError::Memory {
            what,
            addr,
            len: len64,
            source,
        })?;
    Ok(buf)
}

fn le_u64(buf: &[u8], off: usize) -> Option<u64> {
    let bytes = buf.get(off..off.checked_add(8)?)?;
    Some(u64::from_le_bytes(bytes.try_into().ok()?))
}

fn le_u32(buf: &[u8], off: usize) -> Option<u32> {
    let bytes = buf.get(off..off.checked_add(4)?)?;
    Some(u32::from_le_bytes(bytes.try_into().ok()?))
}

fn le_u16(buf: &[u8], off: usize) -> Option<u16> {
    let bytes = buf.get(off..off.checked_add(2)?)?;
    Some(u16::from_le_bytes(bytes.try_into().ok()?))
}

/// The host-side copies of the ring, and how to index them.
struct Copies<'a> {
    layout: &'a PrintkLayout,
    /// Descriptor count - 1 (the count is a power of two).
    count_mask: u64,
    size_bits: u32,
    descs: &'a [u8],
    descs_again: &'a [u8],
    infos: &'a [u8],
    /// The text data ring; its length is exactly 2^size_bits.
    data: &'a [u8],
}

/// A descriptor's words: state, and the text block's logical positions.
#[derive(PartialEq, Eq)]
struct Desc {
    state_var: u64,
    begin: u64,
    next: u64,
}

/// A record that passed every per-record check; its text borrows the data copy.
struct Candidate<'a> {
    seq: u64,
    ts_nsec: u64,
    caller_id: u32,
    text: &'a [u8],
}

impl<'a> Copies<'a> {
    /// Reads the records with ids `tail..=head` (modulo 2^62), at most `count` of them.
    fn walk(&self, tail_id: u64, head_id: u64, count: u64) -> LogReadout {
        let head = head_id & DESC_ID_MASK;
        let tail = tail_id & DESC_ID_MASK;
        // The kernel keeps head - tail < count. If the two disagree (a torn header
        // read, or lies), take the newest `count` ids: on a live ring those are the
        // ones that can still be there, and older ids' slots hold newer records.
        let span = head.wrapping_sub(tail) & DESC_ID_MASK;
        let n = span.saturating_add(1).min(count);
        let first = head.wrapping_sub(n.saturating_sub(1)) & DESC_ID_MASK;

        let mut out = LogReadout::default();
        let mut prev_seq: Option<u64> = None;
        // Live blocks never overlap, so the shown text cannot add up to more than the
        // data ring; a guest that points many descriptors at one block could otherwise
        // make us allocate count * 64 KiB.
        let mut text_budget = self.data.len();
        for i in 0..n {
            let id = first.wrapping_add(i) & DESC_ID_MASK;
            if self.recycled(id) {
                out.recycled = out.recycled.saturating_add(1);
                continue;
            }
            let Some(c) = self.record(id) else {
                out.torn = out.torn.saturating_add(1);
                continue;
            };
            // Sequence numbers rise with ids; one that does not is stale or forged.
            let rises = prev_seq.is_none_or(|p| c.seq > p);
            let Some(left) = text_budget.checked_sub(c.text.len()).filter(|_| rises) else {
                out.torn = out.torn.saturating_add(1);
                continue;
            };
            text_budget = left;
            prev_seq = Some(c.seq);
            out.records.push(LogRecord {
                seq: c.seq,
                ts_nsec: c.ts_nsec,
                caller_id: c.caller_id,
                text: String::from_utf8_lossy(c.text).into_owned(),
            });
        }
        out
    }

    /// Whether descriptor `id` is its own, reusable, in the first copy.
    fn recycled(&self, id: u64) -> bool {
        let Some(index) = usize::try_from(id & self.count_mask).ok() else {
            return false;
        };
        self.desc(self.descs, index).is_some_and(|d| {
            d.state_var & DESC_ID_MASK == id && d.state_var >> DESC_FLAGS_SHIFT == STATE_REUSABLE
        })
    }

    /// The record with descriptor id `id`, if every check passes.
    fn record(&self, id: u64) -> Option<Candidate<'a>> {
        let l = self.layout;
        let index = usize::try_from(id & self.count_mask).ok()?;
        let desc = self.desc(self.descs, index)?;
        let state = desc.state_var >> DESC_FLAGS_SHIFT;
        // Reserved: a writer is filling it in. Reusable: its text may be recycled. A
        // different id: the slot belongs to an older or newer record.
        if desc.state_var & DESC_ID_MASK != id
            || !(state == STATE_COMMITTED || state == STATE_FINALIZED)
        {
            return None;
        }
        // The second read: any change means a writer was at it while we copied (the
        // positions too, as a committed record can be reopened and extended by its
        // writer and committed again under the same state word).
        if self.desc(self.descs_again, index)? != desc {
            return None;
        }

        let info = index.checked_mul(l.info_size)?;
        let seq = le_u64(self.infos, info.checked_add(l.info_seq)?)?;
        let ts_nsec = le_u64(self.infos, info.checked_add(l.info_ts_nsec)?)?;
        let text_len = le_u16(self.infos, info.checked_add(l.info_text_len)?)?;
        let caller_id = le_u32(self.infos, info.checked_add(l.info_caller_id)?)?;
        // The ring hands out ids and sequence numbers together, one each per record,
        // starting at slot 0 with seq 0, so a record's seq is congruent to its slot.
        if seq & self.count_mask != id & self.count_mask {
            return None;
        }
        let text = self.text(&desc, id, usize::from(text_len))?;
        Some(Candidate {
            seq,
            ts_nsec,
            caller_id,
            text,
        })
    }

    fn desc(&self, array: &[u8], index: usize) -> Option<Desc> {
        let l = self.layout;
        let at = index.checked_mul(l.desc_size)?;
        Some(Desc {
            state_var: le_u64(array, at.checked_add(l.desc_state_var)?)?,
            begin: le_u64(array, at.checked_add(l.desc_begin)?)?,
            next: le_u64(array, at.checked_add(l.desc_next)?)?,
        })
    }

    /// The text of a record whose block is `desc.begin..desc.next`, as the kernel's
    /// `get_data()` finds it, checked to lie inside that block.
    fn text(&self, desc: &Desc, id: u64, text_len: usize) -> Option<&'a [u8]> {
        let (begin, next) = (desc.begin, desc.next);
        // Bit 0 set marks a data-less record (FAILED_LPOS, NO_LPOS/EMPTY_LINE_LPOS):
        // shown as an empty line.
        if begin & 1 != 0 {
            return Some(&[]);
        }
        // Every block is aligned to the id it starts with.
        if !begin.is_multiple_of(BLOCK_ID_SIZE) || !next.is_multiple_of(BLOCK_ID_SIZE) {
            return None;
        }
        let size = self.data.len() as u64;
        let index = |lpos: u64| lpos & size.wrapping_sub(1);
        let wraps = |lpos: u64| lpos.checked_shr(self.size_bits).unwrap_or(0);
        let len = next.wrapping_sub(begin);
        let (start, len) = if len != 0 && len <= size.wrapping_sub(index(begin)) {
            // A regular block: from begin up to next, in the same wrap. (Also one that
            // ends exactly at the end of the ring, which 6.1 never writes but later
            // kernels do; it is a plain block all the same.)
            (index(begin), len)
        } else if wraps(begin.wrapping_add(size)) == wraps(next) {
            // A block that did not fit before the end of the ring: its data is at
            // the start, up to next.
            (0, index(next))
        } else {
            return None;
        };
        let start = usize::try_from(start).ok()?;
        let end = start.checked_add(usize::try_from(len).ok()?)?;
        let block = self.data.get(start..end)?;
        let (owner, body) = block.split_at_checked(8)?;
        // The block must still belong to this record.
        if u64::from_le_bytes(owner.try_into().ok()?) != id {
            return None;
        }
        // The block may be longer than the text (alignment padding), never shorter.
        body.get(..text_len)
    }
}

/// `dmesg` format: one line per text line, "[%5lu.%06lu] text" from ts_nsec.
///
/// Every line of a multi-line record gets the record's timestamp, as the kernel's
/// `record_print_text()` does. Control characters other than tab are written as
/// `\xNN`, so a guest cannot send escape sequences to the terminal that shows its log.
pub fn format_dmesg(records: &[LogRecord]) -> String {
    let mut out = String::new();
    for r in records {
        let secs = r.ts_nsec / 1_000_000_000;
        let usecs = r.ts_nsec % 1_000_000_000 / 1_000;
        for line in r.text.split('\n') {
            // Writing to a String cannot fail.
            let _ = write!(out, "[{secs:5}.{usecs:06}] ");
            for c in line.chars() {
                if c.is_control() && c != '\t' {
                    let _ = write!(out, "\\x{:02x}", u32::from(c));
                } else {
                    out.push(c);
                }
            }
            out.push('\n');
        }
    }
    out
}

#[cfg(test)]
mod tests;
