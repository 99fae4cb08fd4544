//! kallsyms: the kernel's own symbol table, decoded out of guest memory.
//!
//! The kernel keeps every symbol's name and address in compressed tables built at link
//! time by `scripts/kallsyms.c` and read by `kernel/kallsyms.c`. VMCOREINFO gives their
//! addresses, so a host can name every function and variable of a kernel it has never
//! seen, without a vmlinux or the guest's help:
//!
//! - `kallsyms_num_syms`: how many symbols (`unsigned int`).
//! - `kallsyms_names`: per symbol, a length then that many token bytes. The length is
//!   one byte, or, when its top bit is set, a two-byte ULEB128 (Linux 6.1+, for long
//!   Rust names). The first expanded character is the type letter (`T`, `t`, `D`, ...).
//! - `kallsyms_token_index` (256 × `u16`) and `kallsyms_token_table`: token byte `t`
//!   expands to the NUL-terminated string at `token_table[token_index[t]]`.
//! - Addresses: `kallsyms_offsets` (`i32` each) from `kallsyms_relative_base` with
//!   `CONFIG_KALLSYMS_BASE_RELATIVE`, else `kallsyms_addresses` (`u64` each).
//!
//! The guest wrote all of it, so every count, index and length is checked against a
//! bound, and each kind of bad table has its own [`KallsymsError`]. The tables are
//! read in large pieces because each read of kernel memory walks the page tables, and
//! a kernel has ~150,000 symbols.

use std::fmt;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::memory::{KernelMemory, MemoryError};

/// Most symbols accepted (a distribution kernel has ~150,000).
pub const MAX_SYMS: u32 = 2_000_000;
/// Longest symbol name accepted, in bytes after expansion, without the type letter
/// (the kernel's `KSYM_NAME_LEN` is 512 since 6.1).
pub const MAX_NAME_LEN: usize = 512;
/// How far past the nearest symbol [`Kallsyms::symbolize`] still names an address:
/// kallsyms has no sizes, and no kernel function or object is this large.
pub const MAX_SYMBOLIZE_OFFSET: u64 = 1 << 20;

/// Most bytes read from `kallsyms_names` per symbol on average: a two-byte length and
/// 255 tokens (real kernels average ~12).
const MAX_NAMES_BYTES_PER_SYM: u64 = 2 + 255;
/// Most bytes read from `kallsyms_names` in all (a real table is ~2 MiB).
const MAX_NAMES_BYTES: u64 = 64 << 20;
/// Largest token table accepted (a real one is ~1 KiB: 256 short strings).
const MAX_TOKEN_TABLE: u64 = 16 << 10;
/// Longest token read past the last token's start: a longer one could not appear in
/// any name this reader accepts.
const MAX_TOKEN_LEN: u64 = MAX_NAME_LEN as u64 + 1;
/// Size of the bulk reads of the names and address tables.
const CHUNK: u64 = 64 << 10;
/// Mappings begin and end at page boundaries, so a read ahead that failed is retried
/// up to one.
const PAGE: u64 = 4096;

/// The VMCOREINFO / table names, also used to say which table a read failed in.
const NAMES: &str = "kallsyms_names";
const NUM_SYMS: &str = "kallsyms_num_syms";
const TOKEN_TABLE: &str = "kallsyms_token_table";
const TOKEN_INDEX: &str = "kallsyms_token_index";
const OFFSETS: &str = "kallsyms_offsets";
const RELATIVE_BASE: &str = "kallsyms_relative_base";
const ADDRESSES: &str = "kallsyms_addresses";

/// Why the kallsyms tables could not be located or decoded.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KallsymsError {
    /// VMCOREINFO lacks the address of a table.
    #[error("VMCOREINFO has no SYMBOL({symbol})")]
    NotInVmcoreinfo {
        /// The table, e.g. `kallsyms_names`.
        symbol: &'static str,
    },
    /// Guest memory holding a table could not be read.
    #[error("reading {table} (at {addr:#x})")]
    Read {
        /// The table, e.g. `kallsyms_offsets`.
        table: &'static str,
        /// Where the table starts.
        addr: u64,
        /// Why the read failed.
        #[source]
        source: MemoryError,
    },
    /// A table would run past the end of the address space.
    #[error("{table} at {addr:#x} runs past the end of the address space")]
    AddressOverflow {
        /// The table.
        table: &'static str,
        /// Where the table starts.
        addr: u64,
    },
    /// `kallsyms_num_syms` is zero.
    #[error("kallsyms_num_syms is 0")]
    NoSymbols,
    /// `kallsyms_num_syms` is implausibly large.
    #[error("kallsyms_num_syms is {count}, over the limit of {max}")]
    TooManySymbols {
        /// The count the guest claims.
        count: u32,
        /// The limit.
        max: u32,
    },
    /// A token's index points past the largest token table accepted.
    #[error("token {token:#04x} starts at {index}, past the token table bound of {bound} bytes")]
    TokenIndexOutOfBounds {
        /// The token byte.
        token: u8,
        /// Its `kallsyms_token_index` entry.
        index: u16,
        /// The bound.
        bound: u64,
    },
    /// A token's string has no NUL within the bytes read of the token table.
    #[error("token {token:#04x} (at {index}) has no NUL within the first {bound} bytes of the token table")]
    TokenUnterminated {
        /// The token byte.
        token: u8,
        /// Its `kallsyms_token_index` entry.
        index: u16,
        /// How many bytes of the table were searched.
        bound: u64,
    },
    /// A symbol's entry has no tokens, or expands to nothing but a type letter.
    #[error("symbol {index} has an empty name")]
    EmptyName {
        /// The symbol's position in the tables.
        index: u32,
    },
    /// A symbol's name expands past [`MAX_NAME_LEN`].
    #[error("symbol {index}'s name expands past {max} bytes")]
    NameTooLong {
        /// The symbol's position in the tables.
        index: u32,
        /// The limit.
        max: usize,
    },
    /// A symbol's name or type holds a byte that is not printable ASCII (real names
    /// are C, assembly or mangled Rust identifiers; other bytes would reach terminals).
    #[error("symbol {index}'s name holds byte {byte:#04x}, which is not printable ASCII")]
    BadNameByte {
        /// The symbol's position in the tables.
        index: u32,
        /// The offending byte.
        byte: u8,
    },
    /// The names run past the most bytes read from `kallsyms_names`.
    #[error("symbol {index}'s entry runs past the {bound} bytes read from kallsyms_names")]
    NamesPastBound {
        /// The symbol's position in the tables.
        index: u32,
        /// The bound.
        bound: u64,
    },
}

/// Where the tables are (from VMCOREINFO) and how addresses are encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KallsymsLocation {
    /// `kallsyms_names`.
    pub names: u64,
    /// `kallsyms_num_syms`.
    pub num_syms: u64,
    /// `kallsyms_token_table`.
    pub token_table: u64,
    /// `kallsyms_token_index`.
    pub token_index: u64,
    /// Where the addresses are, and their encoding.
    pub addresses: Addresses,
}

/// How a kernel stores its symbols' addresses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Addresses {
    /// CONFIG_KALLSYMS_BASE_RELATIVE: i32 offsets from a base.
    Relative {
        /// `kallsyms_offsets`: one `i32` per symbol.
        offsets: u64,
        /// `kallsyms_relative_base`: the address of an `unsigned long`.
        relative_base: u64,
        /// CONFIG_KALLSYMS_ABSOLUTE_PERCPU: non-negative offsets are absolute
        /// addresses (per-cpu symbols), negative ones `off` give `base - 1 - off`, i.e. up from the base.
        absolute_percpu: bool,
    },
    /// Plain u64 addresses.
    Absolute {
        /// `kallsyms_addresses`: one `u64` per symbol.
        addresses: u64,
    },
}

impl KallsymsLocation {
    /// From VMCOREINFO lookups: `symbol("kallsyms_names")` returns the
    /// `SYMBOL(kallsyms_names)` value. Offsets with a relative base are preferred over
    /// plain addresses when both are given. Assumes x86-64 SMP, where
    /// CONFIG_KALLSYMS_ABSOLUTE_PERCPU is always set (`absolute_percpu = true`); build
    /// the location by hand for other kernels.
    pub fn from_vmcoreinfo(symbol: impl Fn(&str) -> Option<u64>) -> Result<Self, KallsymsError> {
        let need = |name: &'static str| {
            symbol(name).ok_or(KallsymsError::NotInVmcoreinfo { symbol: name })
        };
        let names = need(NAMES)?;
        let num_syms = need(NUM_SYMS)?;
        let token_table = need(TOKEN_TABLE)?;
        let token_index = need(TOKEN_INDEX)?;
        let addresses = match (symbol(OFFSETS), symbol(ADDRESSES)) {
            (Some(offsets), _) => Addresses::Relative {
                offsets,
                relative_base: need(RELATIVE_BASE)?,
                absolute_percpu: true,
            },
            (None, Some(addresses)) => Addresses::Absolute { addresses },
            // Modern kernels are base-relative; name the table they would export.
            (None, None) => return Err(KallsymsError::NotInVmcoreinfo { symbol: OFFSETS }),
        };
        Ok(Self {
            names,
            num_syms,
            token_table,
            token_index,
            addresses,
        })
    }
}

/// One kernel symbol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    /// The name, without the type letter.
    pub name: String,
    /// The address (per-cpu symbols: the offset into each CPU's per-cpu area).
    pub addr: u64,
    /// the type letter ('T', 't', 'D', ...), as `nm` and `/proc/kallsyms` print it:
    /// upper case for global symbols.
    pub kind: char,
}

impl Symbol {
    /// Whether the symbol is global (an upper-case type letter, as `nm` prints it).
    pub fn is_global(&self) -> bool {
        self.kind.is_ascii_uppercase()
    }
}

/// A guest kernel's symbol table.
#[derive(Clone)]
pub struct Kallsyms {
    /// Sorted by address; symbols at the same address keep the kernel's order.
    syms: Vec<Symbol>,
    /// Positions in `syms`, sorted by name, then by position.
    by_name: Vec<usize>,
}

impl fmt::Debug for Kallsyms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Listing 150,000 symbols helps no one reading a Debug dump.
        f.debug_struct("Kallsyms")
            .field("symbols", &self.syms.len())
            .finish_non_exhaustive()
    }
}

impl Kallsyms {
    /// Reads and decodes the tables at `loc` out of `mem`.
    pub fn read(mem: &dyn KernelMemory, loc: &KallsymsLocation) -> Result<Kallsyms, KallsymsError> {
        let count = mem
            .read_u32(loc.num_syms)
            .map_err(|source| KallsymsError::Read {
                table: NUM_SYMS,
                addr: loc.num_syms,
                source,
            })?;
        if count == 0 {
            return Err(KallsymsError::NoSymbols);
        }
        if count > MAX_SYMS {
            return Err(KallsymsError::TooManySymbols {
                count,
                max: MAX_SYMS,
            });
        }
        let tokens = read_tokens(mem, loc)?;
        let names = read_names(mem, loc.names, count, &tokens)?;
        let addrs = read_addresses(mem, &loc.addresses, count)?;

        let mut syms: Vec<Symbol> = names
            .into_iter()
            .zip(addrs)
            .map(|((kind, name), addr)| Symbol { name, addr, kind })
            .collect();
        // Stable, so aliases keep the kernel's order, which puts the name it prefers
        // (non-weak, fewest leading underscores) first.
        syms.sort_by_key(|s| s.addr);
        let mut by_name: Vec<usize> = (0..syms.len()).collect();
        // Stable too: equal names stay in address order.
        by_name.sort_by(|&a, &b| syms[a].name.cmp(&syms[b].name));
        Ok(Kallsyms { syms, by_name })
    }

    /// How many symbols there are.
    pub fn len(&self) -> usize {
        self.syms.len()
    }

    /// Whether there are none (never, for a table [`Kallsyms::read`] accepted).
    pub fn is_empty(&self) -> bool {
        self.syms.is_empty()
    }

    /// Every symbol, in address order.
    pub fn symbols(&self) -> &[Symbol] {
        &self.syms
    }

    /// The symbol called `name`; when several share it (static functions), the global
    /// one (upper-case kind) if any, else the first (lowest address).
    pub fn lookup(&self, name: &str) -> Option<&Symbol> {
        let all = self.name_range(name);
        all.iter()
            .map(|&i| &self.syms[i])
            .find(|s| s.is_global())
            .or_else(|| all.first().map(|&i| &self.syms[i]))
    }

    /// Every symbol called `name`, in address order.
    pub fn lookup_all(&self, name: &str) -> Vec<&Symbol> {
        self.name_range(name)
            .iter()
            .map(|&i| &self.syms[i])
            .collect()
    }

    /// The symbol containing `addr`: the nearest at or below it, with the offset; None
    /// below the first symbol or more than [`MAX_SYMBOLIZE_OFFSET`] (1 MiB) past the
    /// nearest one (symbols have no sizes in kallsyms). Of several symbols at the same
    /// address, the kernel's first, as its own stack traces print. Per-cpu symbols
    /// (x86-64: absolute addresses from 0 up) take part too, so small numbers
    /// symbolize against them; callers naming pointers may want to skip low results.
    pub fn symbolize(&self, addr: u64) -> Option<(&Symbol, u64)> {
        let above = self.syms.partition_point(|s| s.addr <= addr);
        let nearest = self.syms.get(above.checked_sub(1)?)?;
        let offset = addr.checked_sub(nearest.addr)?;
        if offset > MAX_SYMBOLIZE_OFFSET {
            return None;
        }
        let first = self.syms.partition_point(|s| s.addr < nearest.addr);
        Some((self.syms.get(first)?, offset))
    }

    /// Symbols whose names start with `prefix` (for completion/listing), at most `max`,
    /// in name order.
    pub fn with_prefix(&self, prefix: &str, max: usize) -> Vec<&Symbol> {
        let start = self
            .by_name
            .partition_point(|&i| self.syms[i].name.as_str() < prefix);
        self.by_name
            .get(start..)
            .unwrap_or_default()
            .iter()
            .map(|&i| &self.syms[i])
            .take_while(|s| s.name.starts_with(prefix))
            .take(max)
            .collect()
    }

    /// The positions in `syms` of the symbols called `name`.
    fn name_range(&self, name: &str) -> &[usize] {
        let lo = self
            .by_name
            .partition_point(|&i| self.syms[i].name.as_str() < name);
        let hi = self
            .by_name
            .partition_point(|&i| self.syms[i].name.as_str() <= name);
        self.by_name.get(lo..hi).unwrap_or_default()
    }
}

/// A forward-moving window over one guest table, filled by large reads so that a
/// table of megabytes costs a few dozen page-table walks, not one per symbol.
struct Window<'m> {
    mem: &'m dyn KernelMemory,
    table: &'static str,
    base: u64,
    /// Bytes of the table that may be read at all.
    limit: u64,
    /// How much to read ahead.
    chunk: u64,
    /// A table offset a read up to which has failed: no later read goes that far
    /// (everything before the window's end was read, so the hole is after it).
    ceiling: u64,
    /// The table offset of `buf[0]`.
    start: u64,
    buf: Vec<u8>,
    /// Bytes before this offset are consumed and may be dropped at the next fill.
    keep: u64,
}

impl<'m> Window<'m> {
    fn new(
        mem: &'m dyn KernelMemory,
        table: &'static str,
        base: u64,
        limit: u64,
        chunk: u64,
    ) -> Self {
        Window {
            mem,
            table,
            base,
            limit,
            chunk: chunk.max(1),
            ceiling: u64::MAX,
            start: 0,
            buf: Vec::new(),
            keep: 0,
        }
    }

    /// The table offset just past the bytes held.
    fn end(&self) -> u64 {
        // `start + len` never exceeds `limit`, a u64.
        self.start.saturating_add(self.buf.len() as u64)
    }

    /// Bytes `[off, off + len)` of the table; None when they pass the limit (or lie
    /// before bytes already released, which the callers never ask for).
    fn get(&mut self, off: u64, len: u64) -> Result<Option<&[u8]>, KallsymsError> {
        let Some(end) = off.checked_add(len).filter(|&e| e <= self.limit) else {
            return Ok(None);
        };
        if end > self.end() {
            self.fill(end)?;
        }
        let (Some(lo), Some(hi)) = (off.checked_sub(self.start), end.checked_sub(self.start))
        else {
            return Ok(None);
        };
        let (Ok(lo), Ok(hi)) = (usize::try_from(lo), usize::try_from(hi)) else {
            return Ok(None);
        };
        Ok(self.buf.get(lo..hi))
    }

    /// Marks the bytes before `off` as consumed.
    fn release(&mut self, off: u64) {
        self.keep = self.keep.max(off);
    }

    /// Extends the bytes held to at least `end` (at most `limit`).
    fn fill(&mut self, end: u64) -> Result<(), KallsymsError> {
        // Drop what was consumed first, so the buffer stays about a chunk long.
        let drop = self
            .keep
            .saturating_sub(self.start)
            .min(self.buf.len() as u64);
        if drop > 0 {
            let n = usize::try_from(drop).unwrap_or(self.buf.len());
            self.buf.drain(..n);
            self.start = self.start.saturating_add(drop);
        }
        // Read ahead a chunk, but not up to where a read already failed.
        let mut target = self
            .end()
            .saturating_add(self.chunk)
            .min(self.limit)
            .min(self.ceiling.saturating_sub(1))
            .max(end);
        loop {
            match self.append(target) {
                Ok(()) => return Ok(()),
                Err(e) => {
                    self.ceiling = self.ceiling.min(target);
                    if target <= end {
                        return Err(e);
                    }
                    // The read ahead ran into memory past the table's end that is not
                    // mapped: halve it, ending on a page boundary when one is in range,
                    // since that is where mappings end (a bound of log2(CHUNK) tries).
                    let half = end.saturating_add((target - end) / 2);
                    target = self
                        .page_floor(half)
                        .filter(|&p| p >= end && p < target)
                        .unwrap_or(half);
                }
            }
        }
    }

    /// The table offset of the page boundary at or below table offset `off`.
    fn page_floor(&self, off: u64) -> Option<u64> {
        let addr = self.base.checked_add(off)?;
        (addr - addr % PAGE).checked_sub(self.base)
    }

    /// Reads the table from the end of the bytes held up to `target`.
    fn append(&mut self, target: u64) -> Result<(), KallsymsError> {
        let have = self.end();
        let overflow = KallsymsError::AddressOverflow {
            table: self.table,
            addr: self.base,
        };
        let len = target.checked_sub(have).ok_or(overflow.clone())?;
        let addr = self
            .base
            .checked_add(have)
            .filter(|a| a.checked_add(len).is_some())
            .ok_or(overflow.clone())?;
        let old = self.buf.len();
        let new = usize::try_from(len)
            .ok()
            .and_then(|l| old.checked_add(l))
            .ok_or(overflow)?;
        self.buf.resize(new, 0);
        let Some(dst) = self.buf.get_mut(old..) else {
            return Ok(());
        };
        if let Err(source) = self.mem.read(addr, dst) {
            self.buf.truncate(old);
            return Err(KallsymsError::Read {
                table: self.table,
                addr: self.base,
                source,
            });
        }
        Ok(())
    }
}

/// The 256 tokens, expanded.
type Tokens = Vec<Vec<u8>>;

/// Reads `kallsyms_token_index` and the strings of `kallsyms_token_table` it points to.
fn read_tokens(mem: &dyn KernelMemory, loc: &KallsymsLocation) -> Result<Tokens, KallsymsError> {
    let mut raw = [0u8; 512];
    mem.read(loc.token_index, &mut raw)
        .map_err(|source| KallsymsError::Read {
            table: TOKEN_INDEX,
            addr: loc.token_index,
            source,
        })?;
    let index: Vec<u16> = raw
        .chunks_exact(2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .collect();
    let mut last = 0u16;
    for (token, &at) in (0..=u8::MAX).zip(&index) {
        if u64::from(at) >= MAX_TOKEN_TABLE {
            return Err(KallsymsError::TokenIndexOutOfBounds {
                token,
                index: at,
                bound: MAX_TOKEN_TABLE,
            });
        }
        last = last.max(at);
    }
    // Every token ends at or before the last token's NUL, so this much suffices.
    let limit = (u64::from(last) + MAX_TOKEN_LEN).min(MAX_TOKEN_TABLE);
    let mut table = Window::new(mem, TOKEN_TABLE, loc.token_table, limit, limit);
    // Up to the last token's start is all table, so it must all be readable: one read.
    let whole = u64::from(last) + 1;
    // (`whole` is within `limit`, so this never comes back None.)
    let _ = table.get(0, whole)?;
    let mut tokens = Vec::with_capacity(256);
    for (token, &at) in (0..=u8::MAX).zip(&index) {
        let unterminated = KallsymsError::TokenUnterminated {
            token,
            index: at,
            bound: limit,
        };
        let start = u64::from(at);
        let mut end = start;
        // One byte more each turn; the window reads ahead, so this is not a read each.
        loop {
            match table.get(end, 1)? {
                None => return Err(unterminated),
                Some([0]) => break,
                Some(_) => end = end.checked_add(1).ok_or(unterminated.clone())?,
            }
        }
        let len = end.checked_sub(start).ok_or(unterminated.clone())?;
        let bytes = table.get(start, len)?.ok_or(unterminated)?;
        tokens.push(bytes.to_vec());
    }
    Ok(tokens)
}

/// Decodes `count` names from `kallsyms_names`: (type letter, name) each.
fn read_names(
    mem: &dyn KernelMemory,
    base: u64,
    count: u32,
    tokens: &Tokens,
) -> Result<Vec<(char, String)>, KallsymsError> {
    let bound = u64::from(count)
        .saturating_mul(MAX_NAMES_BYTES_PER_SYM)
        .min(MAX_NAMES_BYTES);
    let mut names = Window::new(mem, NAMES, base, bound, CHUNK);
    // A count the names have yet to bear out gets no more than a typical kernel's room.
    let mut out = Vec::with_capacity(count.min(1 << 18) as usize);
    let mut expanded = Vec::with_capacity(MAX_NAME_LEN + 1);
    let mut pos = 0u64;
    for index in 0..count {
        let past = KallsymsError::NamesPastBound { index, bound };
        let first = *names
            .get(pos, 1)?
            .ok_or(past.clone())?
            .first()
            .ok_or(past.clone())?;
        // One length byte, or two (ULEB128) when its top bit is set.
        let (len, header) = if first & 0x80 == 0 {
            (u64::from(first), 1)
        } else {
            let next = pos.checked_add(1).ok_or(past.clone())?;
            let second = *names
                .get(next, 1)?
                .ok_or(past.clone())?
                .first()
                .ok_or(past.clone())?;
            (u64::from(first & 0x7f) | (u64::from(second) << 7), 2)
        };
        if len == 0 {
            return Err(KallsymsError::EmptyName { index });
        }
        let at = pos.checked_add(header).ok_or(past.clone())?;
        let entry = names.get(at, len)?.ok_or(past.clone())?;
        expanded.clear();
        for &t in entry {
            let token = tokens
                .get(usize::from(t))
                .map(Vec::as_slice)
                .unwrap_or_default();
            // The type letter plus the name; check before growing the buffer.
            if expanded.len().saturating_add(token.len()) > MAX_NAME_LEN + 1 {
                return Err(KallsymsError::NameTooLong {
                    index,
                    max: MAX_NAME_LEN,
                });
            }
            expanded.extend_from_slice(token);
        }
        let Some((&kind, name)) = expanded.split_first() else {
            return Err(KallsymsError::EmptyName { index });
        };
        if name.is_empty() {
            return Err(KallsymsError::EmptyName { index });
        }
        if let Some(&byte) = expanded.iter().find(|b| !b.is_ascii_graphic()) {
            return Err(KallsymsError::BadNameByte { index, byte });
        }
        // All printable ASCII, so each byte is its own char.
        let name: String = name.iter().map(|&b| char::from(b)).collect();
        out.push((char::from(kind), name));
        pos = at.checked_add(len).ok_or(past)?;
        names.release(pos);
    }
    Ok(out)
}

/// Reads the `count` addresses.
fn read_addresses(
    mem: &dyn KernelMemory,
    addresses: &Addresses,
    count: u32,
) -> Result<Vec<u64>, KallsymsError> {
    match *addresses {
        Addresses::Relative {
            offsets,
            relative_base,
            absolute_percpu,
        } => {
            let base = mem
                .read_u64(relative_base)
                .map_err(|source| KallsymsError::Read {
                    table: RELATIVE_BASE,
                    addr: relative_base,
                    source,
                })?;
            read_array::<4>(mem, OFFSETS, offsets, count, |b| {
                let off = i32::from_le_bytes(b);
                if !absolute_percpu {
                    // Unsigned offsets up from the base.
                    base.wrapping_add(u64::from(off as u32))
                } else if off >= 0 {
                    // Per-cpu symbols: the offset is the address.
                    off as u64
                } else {
                    // Negative: base - 1 - off, which is at or above the base.
                    base.wrapping_sub(1).wrapping_sub(i64::from(off) as u64)
                }
            })
        }
        Addresses::Absolute { addresses } => {
            read_array::<8>(mem, ADDRESSES, addresses, count, u64::from_le_bytes)
        }
    }
}

/// Reads `count` little-endian `N`-byte values at `base` in chunks, decoding each.
fn read_array<const N: usize>(
    mem: &dyn KernelMemory,
    table: &'static str,
    base: u64,
    count: u32,
    decode: impl Fn([u8; N]) -> u64,
) -> Result<Vec<u64>, KallsymsError> {
    let overflow = KallsymsError::AddressOverflow { table, addr: base };
    // At most 2M × 8 bytes: 16 MiB, and exactly the table, so no over-read to recover.
    let total = u64::from(count)
        .checked_mul(N as u64)
        .ok_or(overflow.clone())?;
    let mut window = Window::new(mem, table, base, total, CHUNK);
    let mut out = Vec::with_capacity(count as usize);
    let mut pos = 0u64;
    while pos < total {
        let len = (total - pos).min(CHUNK);
        let bytes = window.get(pos, len)?.ok_or(overflow.clone())?;
        for value in bytes.chunks_exact(N) {
            let mut b = [0u8; N];
            b.copy_from_slice(value);
            out.push(decode(b));
        }
        pos = pos.checked_add(len).ok_or(overflow.clone())?;
        window.release(pos);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::memory::fake::FakeMemory;
    use proptest::prelude::*;
    use std::cell::Cell;

    // Where a Debian 12 guest had the tables.
    const A_NAMES: u64 = 0xffff_ffff_aa57_5590;
    const A_NUM_SYMS: u64 = 0xffff_ffff_aa57_5588;
    const A_TOKEN_TABLE: u64 = 0xffff_ffff_aa6c_9d08;
    const A_TOKEN_INDEX: u64 = 0xffff_ffff_aa6c_a0a0;
    const A_OFFSETS: u64 = 0xffff_ffff_aa52_00b0;
    const A_RELATIVE_BASE: u64 = 0xffff_ffff_aa57_5580;
    const A_ADDRESSES: u64 = 0xffff_ffff_aa40_0000;
    /// The base a relative table counts from (`_text`, say).
    const BASE: u64 = 0xffff_ffff_a900_0000;

    /// Multi-character tokens on bytes no name uses, the way scripts/kallsyms.c does;
    /// printable ASCII stands for itself, and the other bytes are empty strings.
    const MULTI: [(u8, &str); 6] = [
        (0x01, "Tsys_"),
        (0x02, "_call"),
        (0x03, "tdo_"),
        (0x04, "xxxxxxxxxxxxxxxx"),
        (0x80, "init"),
        (0xfe, "_rcu"),
    ];

    fn token(b: u8) -> Vec<u8> {
        if let Some((_, s)) = MULTI.iter().find(|(t, _)| *t == b) {
            s.as_bytes().to_vec()
        } else if (0x21..0x7f).contains(&b) {
            vec![b]
        } else {
            Vec::new()
        }
    }

    /// The token table and its index, as scripts/kallsyms.c lays them out.
    fn token_tables() -> (Vec<u8>, Vec<u8>) {
        let mut table = Vec::new();
        let mut index = Vec::new();
        for b in 0..=u8::MAX {
            index.extend_from_slice(&(table.len() as u16).to_le_bytes());
            table.extend(token(b));
            table.push(0);
        }
        (table, index)
    }

    /// `type letter + name`, compressed greedily, with its length prefix.
    fn encode_name(full: &str) -> Vec<u8> {
        let mut bytes = full.as_bytes();
        let mut toks = Vec::new();
        while !bytes.is_empty() {
            let multi = MULTI
                .iter()
                .filter(|(_, s)| bytes.starts_with(s.as_bytes()))
                .max_by_key(|(_, s)| s.len());
            match multi {
                Some((t, s)) => {
                    toks.push(*t);
                    bytes = &bytes[s.len()..];
                }
                None => {
                    toks.push(bytes[0]);
                    bytes = &bytes[1..];
                }
            }
        }
        let n = toks.len();
        let mut out = if n < 0x80 {
            vec![n as u8]
        } else {
            assert!(n < 0x8000);
            vec![0x80 | (n & 0x7f) as u8, (n >> 7) as u8]
        };
        out.extend(toks);
        out
    }

    /// The raw bytes of every table, for tests to corrupt before mapping them.
    #[derive(Clone, Debug)]
    struct Raw {
        num_syms: Vec<u8>,
        names: Vec<u8>,
        token_table: Vec<u8>,
        token_index: Vec<u8>,
        offsets: Vec<u8>,
        relative_base: Vec<u8>,
        addresses: Vec<u8>,
        absolute: bool,
        absolute_percpu: bool,
    }

    impl Raw {
        /// Base-relative tables with absolute per-cpu symbols, for `(type+name, addr)`.
        fn relative(syms: &[(&str, u64)]) -> Self {
            let offsets = syms
                .iter()
                .flat_map(|&(_, addr)| {
                    let off: i32 = if addr < 1 << 31 {
                        addr as i32
                    } else {
                        let below = BASE.wrapping_sub(1).wrapping_sub(addr) as i64;
                        i32::try_from(below).expect("address too far from BASE")
                    };
                    off.to_le_bytes()
                })
                .collect();
            Self::with_addresses(syms, offsets, false)
        }

        /// Plain-address tables.
        fn absolute(syms: &[(&str, u64)]) -> Self {
            let addrs = syms.iter().flat_map(|s| s.1.to_le_bytes()).collect();
            Self::with_addresses(syms, addrs, true)
        }

        fn with_addresses(syms: &[(&str, u64)], addrs: Vec<u8>, absolute: bool) -> Self {
            let (token_table, token_index) = token_tables();
            let (offsets, addresses) = if absolute {
                (Vec::new(), addrs)
            } else {
                (addrs, Vec::new())
            };
            Raw {
                num_syms: (syms.len() as u32).to_le_bytes().to_vec(),
                names: syms.iter().flat_map(|s| encode_name(s.0)).collect(),
                token_table,
                token_index,
                offsets,
                relative_base: BASE.to_le_bytes().to_vec(),
                addresses,
                absolute,
                absolute_percpu: true,
            }
        }

        fn location(&self) -> KallsymsLocation {
            KallsymsLocation {
                names: A_NAMES,
                num_syms: A_NUM_SYMS,
                token_table: A_TOKEN_TABLE,
                token_index: A_TOKEN_INDEX,
                addresses: if self.absolute {
                    Addresses::Absolute {
                        addresses: A_ADDRESSES,
                    }
                } else {
                    Addresses::Relative {
                        offsets: A_OFFSETS,
                        relative_base: A_RELATIVE_BASE,
                        absolute_percpu: self.absolute_percpu,
                    }
                },
            }
        }

        /// Each table exactly its own size, one piece each; `without` is left out.
        fn memory(&self, without: Option<&str>) -> FakeMemory {
            let mut mem = FakeMemory::default();
            let pieces = [
                (NAMES, A_NAMES, &self.names),
                (NUM_SYMS, A_NUM_SYMS, &self.num_syms),
                (TOKEN_TABLE, A_TOKEN_TABLE, &self.token_table),
                (TOKEN_INDEX, A_TOKEN_INDEX, &self.token_index),
                (OFFSETS, A_OFFSETS, &self.offsets),
                (RELATIVE_BASE, A_RELATIVE_BASE, &self.relative_base),
                (ADDRESSES, A_ADDRESSES, &self.addresses),
            ];
            for (name, addr, bytes) in pieces {
                if Some(name) != without && !bytes.is_empty() {
                    mem.put(addr, bytes.clone());
                }
            }
            mem
        }

        fn read(&self) -> Result<Kallsyms, KallsymsError> {
            Kallsyms::read(&self.memory(None), &self.location())
        }
    }

    fn long_name() -> String {
        // 200 one-byte tokens: needs the two-byte length.
        format!("t{}", "ab".repeat(100))
    }

    /// A small kernel: duplicates, aliases, per-cpu symbols, compressed and long names.
    fn sample() -> Vec<(String, u64)> {
        vec![
            ("Tsys_call_init".into(), 0xffff_ffff_a900_1000),
            ("tdo_thing".into(), 0xffff_ffff_a900_2000),
            ("Tdo_thing".into(), 0xffff_ffff_a900_3000),
            ("tdo_thing".into(), 0xffff_ffff_a900_4000),
            ("tstatic_only".into(), 0xffff_ffff_a900_5000),
            ("tstatic_only".into(), 0xffff_ffff_a900_0800),
            ("Tstartup_64".into(), 0xffff_ffff_a900_0000),
            ("T_stext".into(), 0xffff_ffff_a900_0000),
            ("Dcall_rcu_data".into(), 0xffff_ffff_aa00_0000),
            ("Afixed_percpu_data".into(), 0),
            ("Dcurrent_task".into(), 0x1_b000),
            (long_name(), 0xffff_ffff_a900_6000),
            (format!("T{}", "x".repeat(100)), 0xffff_ffff_a900_7000),
        ]
    }

    fn refs(v: &[(String, u64)]) -> Vec<(&str, u64)> {
        v.iter().map(|(n, a)| (n.as_str(), *a)).collect()
    }

    fn names(syms: &[&Symbol]) -> Vec<(String, u64, char)> {
        syms.iter()
            .map(|s| (s.name.clone(), s.addr, s.kind))
            .collect()
    }

    fn check_sample(k: &Kallsyms) {
        let sample = sample();
        assert_eq!(k.len(), sample.len());
        assert!(!k.is_empty());
        let mut want: Vec<(String, u64, char)> = sample
            .iter()
            .map(|(full, a)| (full[1..].to_string(), *a, full.chars().next().unwrap()))
            .collect();
        want.sort_by_key(|w| w.1);
        let got: Vec<_> = k
            .symbols()
            .iter()
            .map(|s| (s.name.clone(), s.addr, s.kind))
            .collect();
        assert_eq!(got, want);
        let long = k.lookup(&long_name()[1..]).unwrap();
        assert_eq!((long.kind, long.name.len()), ('t', 200));
        assert_eq!(
            k.lookup(&"x".repeat(100)).unwrap().addr,
            0xffff_ffff_a900_7000
        );
    }

    #[test]
    fn decodes_relative_with_percpu() {
        let raw = Raw::relative(&refs(&sample()));
        // The sample exercises both length forms and both offset signs.
        assert!(raw
            .names
            .windows(2)
            .any(|w| w == [0x80 | (201 & 0x7f), 201 >> 7]));
        let offs: Vec<i32> = raw
            .offsets
            .chunks(4)
            .map(|b| i32::from_le_bytes(b.try_into().unwrap()))
            .collect();
        assert!(offs.iter().any(|&o| o < 0) && offs.iter().any(|&o| o > 0));
        check_sample(&raw.read().unwrap());
    }

    #[test]
    fn decodes_absolute() {
        check_sample(&Raw::absolute(&refs(&sample())).read().unwrap());
    }

    #[test]
    fn offset_arithmetic() {
        let syms = [("Ta", 0), ("Tb", 0), ("Tc", 0), ("Td", 0)];
        let mut raw = Raw::relative(&syms);
        raw.offsets = [-1i32, 0, 5, i32::MIN]
            .iter()
            .flat_map(|o| o.to_le_bytes())
            .collect();
        let addr = |k: &Kallsyms, n: &str| k.lookup(n).unwrap().addr;
        let k = raw.read().unwrap();
        assert_eq!(addr(&k, "a"), BASE);
        assert_eq!(addr(&k, "b"), 0);
        assert_eq!(addr(&k, "c"), 5);
        assert_eq!(addr(&k, "d"), BASE.wrapping_sub(1).wrapping_add(1 << 31));
        // Without ABSOLUTE_PERCPU every offset is unsigned, up from the base.
        raw.absolute_percpu = false;
        let k = raw.read().unwrap();
        assert_eq!(addr(&k, "a"), BASE.wrapping_add(0xffff_ffff));
        assert_eq!(addr(&k, "b"), BASE);
        assert_eq!(addr(&k, "c"), BASE + 5);
        assert_eq!(addr(&k, "d"), BASE.wrapping_add(0x8000_0000));
    }

    #[test]
    fn lookups() {
        let k = Raw::relative(&refs(&sample())).read().unwrap();
        // The global wins over static namesakes, wherever it is.
        let s = k.lookup("do_thing").unwrap();
        assert_eq!((s.kind, s.addr), ('T', 0xffff_ffff_a900_3000));
        // No global: the first.
        assert_eq!(k.lookup("static_only").unwrap().addr, 0xffff_ffff_a900_0800);
        assert_eq!(k.lookup("sys_call_init").unwrap().kind, 'T');
        assert_eq!(k.lookup("current_task").unwrap().addr, 0x1_b000);
        assert!(k.lookup("nope").is_none());
        assert!(k.lookup("").is_none());
        assert!(k.lookup("do_thin").is_none());
        assert_eq!(
            names(&k.lookup_all("do_thing")),
            vec![
                ("do_thing".into(), 0xffff_ffff_a900_2000, 't'),
                ("do_thing".into(), 0xffff_ffff_a900_3000, 'T'),
                ("do_thing".into(), 0xffff_ffff_a900_4000, 't'),
            ]
        );
        assert!(k.lookup_all("nope").is_empty());
    }

    #[test]
    fn symbolize() {
        let k = Raw::relative(&refs(&sample())).read().unwrap();
        let at = |a| k.symbolize(a).map(|(s, off)| (s.name.clone(), off));
        assert_eq!(at(0xffff_ffff_a900_2000), Some(("do_thing".into(), 0)));
        assert_eq!(at(0xffff_ffff_a900_2abc), Some(("do_thing".into(), 0xabc)));
        // Aliases: the kernel's first.
        assert_eq!(at(0xffff_ffff_a900_0010), Some(("startup_64".into(), 0x10)));
        // Below the first symbol, and more than 1 MiB past the last.
        let k2 = Raw::relative(&[("Ta", 0xffff_ffff_a900_1000), ("Tb", 0xffff_ffff_a900_2000)])
            .read()
            .unwrap();
        assert!(k2.symbolize(0xffff_ffff_a900_0fff).is_none());
        assert!(k2.symbolize(0).is_none());
        assert_eq!(
            k2.symbolize(0xffff_ffff_a900_2000 + (1 << 20)).unwrap().1,
            1 << 20
        );
        assert!(k2
            .symbolize(0xffff_ffff_a900_2000 + (1 << 20) + 1)
            .is_none());
        assert!(k2.symbolize(u64::MAX).is_none());
        // Per-cpu offsets symbolize against per-cpu symbols.
        assert_eq!(at(0x1_b008), Some(("current_task".into(), 8)));
    }

    #[test]
    fn prefixes() {
        let k = Raw::relative(&refs(&sample())).read().unwrap();
        let got = |p, max| {
            k.with_prefix(p, max)
                .iter()
                .map(|s| s.name.clone())
                .collect::<Vec<_>>()
        };
        assert_eq!(got("do_", 10), ["do_thing", "do_thing", "do_thing"]);
        assert_eq!(got("do_", 2), ["do_thing", "do_thing"]);
        assert_eq!(
            got("s", 10),
            ["startup_64", "static_only", "static_only", "sys_call_init"]
        );
        assert_eq!(got("", 3).len(), 3);
        assert!(got("zzz", 10).is_empty());
        assert!(got("do_", 0).is_empty());
        assert_eq!(got("~", 10), Vec::<String>::new());
    }

    #[test]
    fn from_vmcoreinfo() {
        let mut table = vec![
            ("kallsyms_names", 0xffff_ffff_aa57_5590),
            ("kallsyms_num_syms", 0xffff_ffff_aa57_5588),
            ("kallsyms_token_table", 0xffff_ffff_aa6c_9d08),
            ("kallsyms_token_index", 0xffff_ffff_aa6c_a0a0),
            ("kallsyms_offsets", 0xffff_ffff_aa52_00b0),
            ("kallsyms_relative_base", 0xffff_ffff_aa57_5580),
        ];
        let loc = |t: &[(&str, u64)]| {
            KallsymsLocation::from_vmcoreinfo(|s| t.iter().find(|e| e.0 == s).map(|e| e.1))
        };
        assert_eq!(
            loc(&table),
            Ok(KallsymsLocation {
                names: A_NAMES,
                num_syms: A_NUM_SYMS,
                token_table: A_TOKEN_TABLE,
                token_index: A_TOKEN_INDEX,
                addresses: Addresses::Relative {
                    offsets: A_OFFSETS,
                    relative_base: A_RELATIVE_BASE,
                    absolute_percpu: true
                },
            })
        );
        let without = |name: &str| {
            table
                .iter()
                .copied()
                .filter(|e| e.0 != name)
                .collect::<Vec<_>>()
        };
        for name in [
            NAMES,
            NUM_SYMS,
            TOKEN_TABLE,
            TOKEN_INDEX,
            OFFSETS,
            RELATIVE_BASE,
        ] {
            assert_eq!(
                loc(&without(name)),
                Err(KallsymsError::NotInVmcoreinfo { symbol: name }),
                "{name}"
            );
        }
        table.retain(|e| e.0 != OFFSETS && e.0 != RELATIVE_BASE);
        table.push(("kallsyms_addresses", A_ADDRESSES));
        assert_eq!(
            loc(&table).unwrap().addresses,
            Addresses::Absolute {
                addresses: A_ADDRESSES
            }
        );
    }

    #[test]
    fn refuses_bad_counts() {
        let mut raw = Raw::relative(&[("Ta", BASE)]);
        raw.num_syms = 0u32.to_le_bytes().to_vec();
        assert_eq!(raw.read().unwrap_err(), KallsymsError::NoSymbols);
        raw.num_syms = (MAX_SYMS + 1).to_le_bytes().to_vec();
        assert_eq!(
            raw.read().unwrap_err(),
            KallsymsError::TooManySymbols {
                count: MAX_SYMS + 1,
                max: MAX_SYMS
            }
        );
        raw.num_syms = u32::MAX.to_le_bytes().to_vec();
        assert!(matches!(
            raw.read(),
            Err(KallsymsError::TooManySymbols { .. })
        ));
    }

    #[test]
    fn refuses_bad_tokens() {
        let raw = Raw::relative(&refs(&sample()));
        let mut bad = raw.clone();
        bad.token_index[10..12].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(
            bad.read().unwrap_err(),
            KallsymsError::TokenIndexOutOfBounds {
                token: 5,
                index: 0xffff,
                bound: MAX_TOKEN_TABLE
            }
        );
        // A token pointing at bytes with no NUL anywhere in the bound.
        let mut bad = raw.clone();
        let at = bad.token_table.len() as u16;
        bad.token_table.extend(vec![b'a'; 520]);
        bad.token_index[400..402].copy_from_slice(&at.to_le_bytes());
        assert_eq!(
            bad.read().unwrap_err(),
            KallsymsError::TokenUnterminated {
                token: 200,
                index: at,
                bound: u64::from(at) + MAX_TOKEN_LEN
            }
        );
    }

    #[test]
    fn refuses_bad_names() {
        // Too long: 600 x's are 38 tokens, well within the bytes read.
        let long = format!("T{}", "x".repeat(600));
        let raw = Raw::relative(&[(&long, BASE), ("Ta", BASE), ("Tb", BASE)]);
        assert_eq!(
            raw.read().unwrap_err(),
            KallsymsError::NameTooLong {
                index: 0,
                max: MAX_NAME_LEN
            }
        );
        // Exactly the limit is fine.
        let limit = format!("T{}", "x".repeat(MAX_NAME_LEN));
        let raw = Raw::relative(&[(&limit, BASE), ("Ta", BASE), ("Tb", BASE)]);
        assert_eq!(raw.read().unwrap().lookup(&limit[1..]).unwrap().kind, 'T');

        // Entries running past num_syms × 257 bytes: two entries of 302 bytes.
        let n = format!("T{}", "ab".repeat(150));
        let raw = Raw::relative(&[(&n, BASE), (&n, BASE)]);
        assert_eq!(
            raw.read().unwrap_err(),
            KallsymsError::NamesPastBound {
                index: 1,
                bound: 2 * 257
            }
        );

        let mut raw = Raw::relative(&[("Ta", BASE), ("Tb", BASE)]);
        raw.names[3] = 0;
        assert_eq!(
            raw.read().unwrap_err(),
            KallsymsError::EmptyName { index: 1 }
        );
        // Only a type letter.
        let raw = Raw::relative(&[("Ta", BASE), ("T", BASE)]);
        assert_eq!(
            raw.read().unwrap_err(),
            KallsymsError::EmptyName { index: 1 }
        );
        // A control character in a token.
        let mut raw = Raw::relative(&[("Ta", BASE), ("Tb", BASE)]);
        let at = u16::from_le_bytes([raw.token_index[2 * 98], raw.token_index[2 * 98 + 1]]);
        raw.token_table[usize::from(at)] = 0x07;
        assert_eq!(
            raw.read().unwrap_err(),
            KallsymsError::BadNameByte {
                index: 1,
                byte: 0x07
            }
        );
    }

    #[test]
    fn refuses_unreadable_tables() {
        for absolute in [false, true] {
            let raw = if absolute {
                Raw::absolute(&refs(&sample()))
            } else {
                Raw::relative(&refs(&sample()))
            };
            let loc = raw.location();
            let tables: &[(&str, u64)] = if absolute {
                &[
                    (NUM_SYMS, A_NUM_SYMS),
                    (TOKEN_INDEX, A_TOKEN_INDEX),
                    (TOKEN_TABLE, A_TOKEN_TABLE),
                    (NAMES, A_NAMES),
                    (ADDRESSES, A_ADDRESSES),
                ]
            } else {
                &[
                    (NUM_SYMS, A_NUM_SYMS),
                    (TOKEN_INDEX, A_TOKEN_INDEX),
                    (TOKEN_TABLE, A_TOKEN_TABLE),
                    (NAMES, A_NAMES),
                    (OFFSETS, A_OFFSETS),
                    (RELATIVE_BASE, A_RELATIVE_BASE),
                ]
            };
            for &(name, addr) in tables {
                match Kallsyms::read(&raw.memory(Some(name)), &loc) {
                    Err(KallsymsError::Read {
                        table, addr: at, ..
                    }) => {
                        assert_eq!((table, at), (name, addr))
                    }
                    other => panic!("{name}: {other:?}"),
                }
            }
            // A truncated address table.
            let mut short = raw.clone();
            if absolute {
                short.addresses.pop();
            } else {
                short.offsets.pop();
            }
            assert!(matches!(short.read(), Err(KallsymsError::Read { .. })));
        }
    }

    #[test]
    fn refuses_wrapping_tables() {
        let raw = Raw::relative(&[("Ta", BASE)]);
        let mut loc = raw.location();
        loc.names = u64::MAX - 1;
        let mut mem = raw.memory(Some(NAMES));
        mem.put(u64::MAX - 1, vec![0x02]);
        assert_eq!(
            Kallsyms::read(&mem, &loc).unwrap_err(),
            KallsymsError::AddressOverflow {
                table: NAMES,
                addr: u64::MAX - 1
            }
        );
    }

    /// Counts reads, to check the tables are read in bulk.
    struct Counting<'a>(&'a FakeMemory, Cell<usize>);

    impl KernelMemory for Counting<'_> {
        fn read(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            self.1.set(self.1.get() + 1);
            self.0.read(addr, buf)
        }
    }

    #[test]
    fn reads_in_bulk() {
        let syms: Vec<(String, u64)> = (0..30_000u64)
            .map(|i| {
                let kind = if i % 3 == 0 { 'T' } else { 't' };
                (format!("{kind}sys_fn_{i}_call"), BASE + 0x10 * i)
            })
            .collect();
        let raw = Raw::relative(&refs(&syms));
        assert!(raw.names.len() > 3 * CHUNK as usize);
        let mut mem = raw.memory(None);
        // Like a kernel's rodata, the names are followed by more mapped memory.
        mem.0.retain(|p| p.0 != A_NAMES);
        let mut names = raw.names.clone();
        names.resize(names.len() + 2 * CHUNK as usize, 0xaa);
        mem.put(A_NAMES, names);
        let counting = Counting(&mem, Cell::new(0));
        let k = Kallsyms::read(&counting, &raw.location()).unwrap();
        assert_eq!(k.len(), 30_000);
        assert_eq!(
            k.lookup("sys_fn_29999_call").unwrap().addr,
            BASE + 0x10 * 29_999
        );
        assert_eq!(k.lookup("sys_fn_7_call").unwrap().kind, 't');
        assert!(counting.1.get() < 40, "{} reads", counting.1.get());

        // The names end where the mapping does, at a page boundary: the read ahead
        // backs off to it.
        let mut mem = raw.memory(None);
        mem.0.retain(|p| p.0 != A_NAMES);
        let mut names = raw.names.clone();
        let end = (A_NAMES + names.len() as u64).next_multiple_of(PAGE);
        names.resize((end - A_NAMES) as usize, 0);
        mem.put(A_NAMES, names);
        let counting = Counting(&mem, Cell::new(0));
        assert_eq!(
            Kallsyms::read(&counting, &raw.location()).unwrap().len(),
            30_000
        );
        assert!(counting.1.get() < 40, "{} reads", counting.1.get());

        // Exact-size pieces (no page granularity) still decode, a little less cheaply.
        let counting = Counting(&raw.memory(None), Cell::new(0));
        assert_eq!(
            Kallsyms::read(&counting, &raw.location()).unwrap().len(),
            30_000
        );
        assert!(counting.1.get() < 100, "{} reads", counting.1.get());
    }

    /// Skews random bytes towards NULs and printable ASCII, which get further.
    fn skew(bytes: Vec<u8>) -> Vec<u8> {
        bytes
            .into_iter()
            .map(|b| match b {
                0..=39 => 0,
                40..=159 => 0x21 + b % 0x5e,
                _ => b,
            })
            .collect()
    }

    /// Tables of random bytes (plain `u8` vectors: per-element unions are slow to
    /// generate in debug builds).
    fn random_tables() -> impl Strategy<Value = Raw> {
        // Small counts and indexes often enough to get past the first checks.
        let count = prop_oneof![0u32..40, any::<u32>()];
        let index = prop_oneof![
            prop::collection::vec(0u16..700, 256),
            prop::collection::vec(any::<u16>(), 256),
        ];
        let bytes = |max| prop::collection::vec(any::<u8>(), 0..max);
        (
            count,
            index,
            bytes(1200),
            bytes(3000),
            bytes(400),
            any::<u64>(),
            any::<(bool, bool)>(),
        )
            .prop_map(
                |(count, index, token_table, names, addrs, base, (absolute, percpu))| Raw {
                    num_syms: count.to_le_bytes().to_vec(),
                    names: skew(names),
                    token_table: skew(token_table),
                    token_index: index.iter().flat_map(|i| i.to_le_bytes()).collect(),
                    offsets: if absolute { Vec::new() } else { addrs.clone() },
                    relative_base: base.to_le_bytes().to_vec(),
                    addresses: if absolute { addrs } else { Vec::new() },
                    absolute,
                    absolute_percpu: percpu,
                },
            )
    }

    /// The sample's real tables with a few bytes overwritten and maybe one cut short.
    fn mutated_tables() -> impl Strategy<Value = Raw> {
        let edit = (0usize..7, any::<prop::sample::Index>(), any::<u8>());
        (
            any::<bool>(),
            prop::collection::vec(edit, 1..6),
            prop::option::of((0usize..7, any::<prop::sample::Index>())),
        )
            .prop_map(|(absolute, edits, cut)| {
                let sample = sample();
                let mut raw = if absolute {
                    Raw::absolute(&refs(&sample))
                } else {
                    Raw::relative(&refs(&sample))
                };
                for (which, at, byte) in edits {
                    let t = pick(&mut raw, which);
                    if !t.is_empty() {
                        let i = at.index(t.len());
                        t[i] = byte;
                    }
                }
                if let Some((which, at)) = cut {
                    let t = pick(&mut raw, which);
                    let keep = at.index(t.len() + 1);
                    t.truncate(keep);
                }
                raw
            })
    }

    fn pick(raw: &mut Raw, which: usize) -> &mut Vec<u8> {
        match which {
            0 => &mut raw.num_syms,
            1 => &mut raw.names,
            2 => &mut raw.token_table,
            3 => &mut raw.token_index,
            4 => &mut raw.offsets,
            5 => &mut raw.relative_base,
            _ => &mut raw.addresses,
        }
    }

    /// Everything a decoded table offers must work on whatever was decoded.
    fn exercise(k: &Kallsyms) -> Result<(), TestCaseError> {
        for s in k.symbols().iter().take(16) {
            prop_assert!(k.lookup(&s.name).is_some());
            prop_assert!(!k.lookup_all(&s.name).is_empty());
            prop_assert!(k.symbolize(s.addr).is_some());
            prop_assert!(!k.with_prefix(&s.name, 2).is_empty());
        }
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn random_tables_never_panic(raw in random_tables()) {
            if let Ok(k) = raw.read() {
                exercise(&k)?;
            }
        }

        #[test]
        fn mutated_tables_never_panic(raw in mutated_tables()) {
            if let Ok(k) = raw.read() {
                exercise(&k)?;
            }
        }

        #[test]
        fn encoded_tables_round_trip(
            names in prop::collection::vec("[a-z_]{1,40}", 1..30),
            addrs in prop::collection::vec(0u64..0x1000_0000, 30),
        ) {
            let syms: Vec<(String, u64)> = names
                .iter()
                .zip(&addrs)
                .map(|(n, a)| (format!("t{n}"), BASE + a))
                .collect();
            let k = Raw::relative(&refs(&syms)).read().unwrap();
            for (full, addr) in &syms {
                prop_assert!(k.lookup_all(&full[1..]).iter().any(|s| s.addr == *addr));
            }
        }
    }
}
