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
mod tests;
