//! VMCOREINFO: the `KEY=VALUE` text the kernel keeps in its own memory for dump tools
//! (kernel/crash_core.c). It names the page-table root, the physical load offset, the
//! kallsyms tables and the printk ring's layout, so a host can read a kernel whose
//! symbols and types it has never seen, without the guest's help.
//!
//! Found by scanning guest RAM: the text sits at the start of a page (the
//! `vmcoreinfo_data` buffer) or 24 bytes in (the ELF note copy, after its 12-byte header
//! and the padded name "VMCOREINFO"). A candidate counts only if it parses; the caller
//! checks it further against memory (see `Kernel::open`).

use std::collections::BTreeMap;

use thiserror::Error;

use crate::memory::{MemoryError, PhysMemory};

/// Largest VMCOREINFO text accepted (the kernel's buffer is one page; notes are 4 KiB).
pub const MAX_LEN: usize = 16 << 10;
/// Where in a page the text may start: the data buffer, or the note's descriptor.
const PAGE_OFFSETS: [u64; 2] = [0, 24];
const PAGE_SIZE: u64 = 4096;
const MAGIC: &[u8] = b"OSRELEASE=";

/// Why no usable VMCOREINFO was found or parsed.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum VmcoreInfoError {
    /// The text does not start with `OSRELEASE=`.
    #[error("not VMCOREINFO text (it starts with OSRELEASE=)")]
    NoMagic,
    /// A line without `=`, or with bytes that are not printable ASCII.
    #[error("VMCOREINFO line {line} is malformed")]
    BadLine {
        /// 1-based line number.
        line: usize,
    },
    /// A key the reader needs is absent.
    #[error("VMCOREINFO has no {key}")]
    Missing {
        /// The key, e.g. `SYMBOL(init_top_pgt)`.
        key: String,
    },
    /// A value that does not parse as the number its key implies.
    #[error("VMCOREINFO {key}={value:?} is not a number")]
    BadNumber {
        /// The key.
        key: String,
        /// Its value.
        value: String,
    },
    /// No candidate anywhere in guest RAM.
    #[error("no VMCOREINFO in {scanned_mib} MiB of guest RAM (a kernel without CONFIG_CRASH_CORE, or not booted far enough)")]
    NotFound {
        /// How much RAM was scanned.
        scanned_mib: u64,
    },
    /// Reading guest RAM failed.
    #[error("reading guest RAM for VMCOREINFO")]
    Memory(#[source] MemoryError),
}

/// Parsed VMCOREINFO.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmcoreInfo {
    entries: BTreeMap<String, String>,
    raw: String,
}

impl VmcoreInfo {
    /// Parses the text (up to its first NUL, at most [`MAX_LEN`] bytes).
    pub fn parse(bytes: &[u8]) -> Result<Self, VmcoreInfoError> {
        let bytes = &bytes[..bytes.len().min(MAX_LEN)];
        let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
        let text = &bytes[..end];
        if !text.starts_with(MAGIC) {
            return Err(VmcoreInfoError::NoMagic);
        }
        let mut entries = BTreeMap::new();
        for (i, line) in text.split(|&b| b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            let bad = VmcoreInfoError::BadLine { line: i + 1 };
            if !line.iter().all(|b| b.is_ascii_graphic() || *b == b' ') {
                return Err(bad);
            }
            let eq = line.iter().position(|&b| b == b'=').ok_or(bad.clone())?;
            let (k, v) = (&line[..eq], &line[eq + 1..]);
            if k.is_empty() {
                return Err(bad);
            }
            // ASCII checked above.
            let k = String::from_utf8_lossy(k).into_owned();
            entries
                .entry(k)
                .or_insert_with(|| String::from_utf8_lossy(v).into_owned());
        }
        Ok(Self {
            entries,
            raw: String::from_utf8_lossy(text).into_owned(),
        })
    }

    /// The raw value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.entries.get(key).map(String::as_str)
    }

    /// The text as found.
    pub fn raw(&self) -> &str {
        &self.raw
    }

    /// `OSRELEASE`.
    pub fn osrelease(&self) -> &str {
        self.get("OSRELEASE").unwrap_or_default()
    }

    /// A value as a number: `SYMBOL(...)` and `KERNELOFFSET` are hexadecimal, the rest
    /// decimal and possibly negative (`NUMBER(phys_base)=-415236096`, returned as its
    /// two's complement).
    pub fn value(&self, key: &str) -> Result<u64, VmcoreInfoError> {
        let v = self.get(key).ok_or_else(|| VmcoreInfoError::Missing {
            key: key.to_string(),
        })?;
        let bad = || VmcoreInfoError::BadNumber {
            key: key.to_string(),
            value: v.to_string(),
        };
        if key.starts_with("SYMBOL(") || key == "KERNELOFFSET" {
            u64::from_str_radix(v, 16).map_err(|_| bad())
        } else if let Some(neg) = v.strip_prefix('-') {
            neg.parse::<u64>()
                .ok()
                .and_then(|n| 0i64.checked_sub_unsigned(n))
                .map(|n| n as u64)
                .ok_or_else(bad)
        } else {
            v.parse::<u64>().map_err(|_| bad())
        }
    }

    /// `value(key)`, or `None` when absent or malformed (for optional keys).
    pub fn lookup(&self, key: &str) -> Option<u64> {
        self.value(key).ok()
    }

    /// `SYMBOL(name)`.
    pub fn symbol(&self, name: &str) -> Result<u64, VmcoreInfoError> {
        self.value(&format!("SYMBOL({name})"))
    }
}

/// A VMCOREINFO candidate found in guest RAM, with where it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// Guest-physical address of the text.
    pub paddr: u64,
    /// The parsed text.
    pub info: VmcoreInfo,
}

/// Every parsable VMCOREINFO in `ram` (guest-physical ranges), in address order, at
/// most `max` of them: the kernel keeps two (its data buffer and the note).
pub fn scan(
    mem: &dyn PhysMemory,
    ram: &[std::ops::Range<u64>],
    max: usize,
) -> Result<Vec<Found>, VmcoreInfoError> {
    let mut found = Vec::new();
    let mut head = [0u8; MAGIC.len()];
    let mut scanned = 0u64;
    for range in ram {
        let mut page = range.start.next_multiple_of(PAGE_SIZE);
        while page
            .checked_add(PAGE_SIZE)
            .is_some_and(|end| end <= range.end)
        {
            scanned += PAGE_SIZE;
            for off in PAGE_OFFSETS {
                let at = page + off;
                mem.read_phys(at, &mut head)
                    .map_err(VmcoreInfoError::Memory)?;
                if head != MAGIC {
                    continue;
                }
                let mut text = vec![0u8; (PAGE_SIZE - off) as usize];
                mem.read_phys(at, &mut text)
                    .map_err(VmcoreInfoError::Memory)?;
                if let Ok(info) = VmcoreInfo::parse(&text) {
                    found.push(Found { paddr: at, info });
                    if found.len() >= max {
                        return Ok(found);
                    }
                }
            }
            page += PAGE_SIZE;
        }
    }
    if found.is_empty() {
        return Err(VmcoreInfoError::NotFound {
            scanned_mib: scanned >> 20,
        });
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "OSRELEASE=6.1.0-57-cloud-amd64\nPAGESIZE=4096\n\
        SYMBOL(init_top_pgt)=ffffffffaae10000\nNUMBER(phys_base)=-415236096\n\
        OFFSET(list_head.next)=0\nKERNELOFFSET=28400000\nNUMBER(pgtable_l5_enabled)=1\n";

    #[test]
    fn values_parse_by_their_kind() {
        let v = VmcoreInfo::parse(SAMPLE.as_bytes()).unwrap();
        assert_eq!(v.osrelease(), "6.1.0-57-cloud-amd64");
        assert_eq!(v.symbol("init_top_pgt").unwrap(), 0xffff_ffff_aae1_0000);
        assert_eq!(v.value("NUMBER(phys_base)").unwrap() as i64, -415_236_096);
        assert_eq!(v.value("KERNELOFFSET").unwrap(), 0x2840_0000);
        assert_eq!(v.value("OFFSET(list_head.next)").unwrap(), 0);
        assert!(matches!(
            v.value("SYMBOL(nope)"),
            Err(VmcoreInfoError::Missing { .. })
        ));
    }

    #[test]
    fn bad_text_is_refused_by_name() {
        assert_eq!(
            VmcoreInfo::parse(b"PAGESIZE=4096\n"),
            Err(VmcoreInfoError::NoMagic)
        );
        assert_eq!(
            VmcoreInfo::parse(b"OSRELEASE=x\nno equals sign\n"),
            Err(VmcoreInfoError::BadLine { line: 2 })
        );
        assert_eq!(
            VmcoreInfo::parse(b"OSRELEASE=x\nA=\x01\n"),
            Err(VmcoreInfoError::BadLine { line: 2 })
        );
        let v = VmcoreInfo::parse(b"OSRELEASE=x\nSYMBOL(a)=xyz\nNUMBER(b)=-\n").unwrap();
        assert!(matches!(
            v.value("SYMBOL(a)"),
            Err(VmcoreInfoError::BadNumber { .. })
        ));
        assert!(matches!(
            v.value("NUMBER(b)"),
            Err(VmcoreInfoError::BadNumber { .. })
        ));
    }

    struct Ram(Vec<u8>);
    impl PhysMemory for Ram {
        fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
            let a = addr as usize;
            let src = self.0.get(a..a + buf.len()).ok_or(MemoryError::NotRam {
                addr,
                len: buf.len() as u64,
            })?;
            buf.copy_from_slice(src);
            Ok(())
        }
    }

    #[test]
    fn the_scan_finds_the_buffer_and_the_note_and_skips_lookalikes() {
        let mut ram = vec![0u8; 16 * 4096];
        // A lookalike that does not parse, and one mid-page (never where the kernel puts it).
        ram[4096..4096 + 13].copy_from_slice(b"OSRELEASE=\x01\x02\n");
        ram[2 * 4096 + 100..2 * 4096 + 100 + SAMPLE.len()].copy_from_slice(SAMPLE.as_bytes());
        ram[5 * 4096..5 * 4096 + SAMPLE.len()].copy_from_slice(SAMPLE.as_bytes());
        ram[9 * 4096 + 24..9 * 4096 + 24 + SAMPLE.len()].copy_from_slice(SAMPLE.as_bytes());
        let found = scan(&Ram(ram), std::slice::from_ref(&(0..16 * 4096)), 4).unwrap();
        let at: Vec<u64> = found.iter().map(|f| f.paddr).collect();
        assert_eq!(at, [5 * 4096, 9 * 4096 + 24]);
        assert_eq!(
            scan(&Ram(vec![0; 8192]), std::slice::from_ref(&(0..8192)), 4),
            Err(VmcoreInfoError::NotFound { scanned_mib: 0 })
        );
    }
}
