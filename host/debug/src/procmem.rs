//! Guest RAM read through the VMM's own mapping of it: `pread` on `/proc/PID/mem` at
//! the host virtual address where the VMM (QEMU) maps each guest-physical range, the
//! way `drgn --qemu` reads a guest. For a VMM whose RAM is private anonymous memory
//! (a QEMU started by hand, without `memory-backend-memfd,share=on`), where there is no
//! file to map. The caller says where each range lives (QEMU's `gpa2hva`); every read
//! is checked against those ranges and a short or failed read is an error, never a
//! partial buffer. Reading another process's memory needs ptrace rights over it (root,
//! or the same uid under Yama's `ptrace_scope` 0).

use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use crate::memory::{MemoryError, PhysMemory};
use crate::ram::RamError;

/// Where a piece of guest-physical RAM lives in the VMM's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcSegment {
    /// First guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// The VMM's virtual address of `gpa`.
    pub hva: u64,
}

/// Guest RAM read with `pread` from `/proc/PID/mem`.
#[derive(Debug)]
pub struct ProcMemRam {
    file: File,
    pid: u32,
    segments: Vec<ProcSegment>,
}

impl ProcMemRam {
    /// Opens `/proc/PID/mem` of process `pid` (read-only) with `segments`, which must be
    /// non-empty, not overlap and not wrap around either address space.
    pub fn open(pid: u32, segments: Vec<ProcSegment>) -> Result<Self, RamError> {
        check_segments(&segments)?;
        let path = format!("/proc/{pid}/mem");
        let file = File::open(&path).map_err(|source| RamError::ProcMem { path, source })?;
        let ram = Self {
            file,
            pid,
            segments,
        };
        // A first read proves the rights and the addresses (ptrace refusals show here).
        let mut probe = [0u8; 8];
        let first = ram.segments[0].gpa;
        ram.read_phys(first, &mut probe)
            .map_err(|e| RamError::BadLayout(format!("reading the first RAM range: {e}")))?;
        Ok(ram)
    }

    /// The guest-physical RAM ranges.
    pub fn ranges(&self) -> Vec<Range<u64>> {
        self.segments.iter().map(|s| s.gpa..s.gpa + s.len).collect()
    }

    /// Bytes of RAM.
    pub fn size(&self) -> u64 {
        self.segments.iter().map(|s| s.len).sum()
    }

    /// The process read.
    pub fn pid(&self) -> u32 {
        self.pid
    }
}

fn check_segments(segments: &[ProcSegment]) -> Result<(), RamError> {
    let bad = |m: String| Err(RamError::BadLayout(m));
    if segments.is_empty() {
        return bad("no guest RAM ranges".into());
    }
    let mut sorted: Vec<&ProcSegment> = segments.iter().collect();
    sorted.sort_by_key(|s| s.gpa);
    let mut end = 0u64;
    for s in sorted {
        if s.len == 0 {
            return bad(format!("empty RAM range at {:#x}", s.gpa));
        }
        let (Some(gpa_end), Some(_)) = (s.gpa.checked_add(s.len), s.hva.checked_add(s.len)) else {
            return bad(format!("RAM range {:#x}+{:#x} wraps around", s.gpa, s.len));
        };
        if s.gpa < end {
            return bad(format!("RAM ranges overlap at {:#x}", s.gpa));
        }
        end = gpa_end;
    }
    Ok(())
}

impl PhysMemory for ProcMemRam {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        let len = buf.len() as u64;
        let not_ram = MemoryError::NotRam { addr, len };
        let end = addr.checked_add(len).ok_or(not_ram.clone())?;
        let s = self
            .segments
            .iter()
            .find(|s| addr >= s.gpa && end <= s.gpa + s.len)
            .ok_or(not_ram)?;
        let at = s.hva + (addr - s.gpa);
        let unreadable = |why: String| MemoryError::Unreadable { addr, len, why };
        let mut done = 0usize;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], at + done as u64) {
                Ok(0) => {
                    return Err(unreadable(format!(
                        "/proc/{}/mem ended after {done} bytes (QEMU exited or unmapped its RAM)",
                        self.pid
                    )))
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(unreadable(format!(
                        "/proc/{}/mem at {:#x}: {e}",
                        self.pid,
                        at + done as u64
                    )))
                }
            }
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("/proc/{}/mem (pread of QEMU's own RAM mapping)", self.pid)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_come_from_the_process_mapping_and_stay_inside_the_ranges() {
        // Our own memory stands for QEMU's: two "guest" ranges in one buffer.
        let data: Vec<u8> = (0..3 * 4096u32).map(|i| (i % 251) as u8).collect();
        let base = data.as_ptr() as u64;
        let segs = vec![
            ProcSegment {
                gpa: 0,
                len: 2 * 4096,
                hva: base,
            },
            ProcSegment {
                gpa: 1 << 32,
                len: 4096,
                hva: base + 2 * 4096,
            },
        ];
        let ram = ProcMemRam::open(std::process::id(), segs).unwrap();
        let mut b = [0u8; 16];
        ram.read_phys(4090, &mut b).unwrap();
        assert_eq!(&b[..], &data[4090..4106]);
        ram.read_phys((1 << 32) + 8, &mut b).unwrap();
        assert_eq!(&b[..], &data[2 * 4096 + 8..2 * 4096 + 24]);
        assert_eq!(ram.size(), 3 * 4096);
        assert_eq!(ram.ranges(), vec![0..2 * 4096, (1 << 32)..(1 << 32) + 4096]);
        for addr in [2 * 4096 - 2, 3 * 4096, (1 << 32) + 4090, u64::MAX - 1] {
            assert!(matches!(
                ram.read_phys(addr, &mut b),
                Err(MemoryError::NotRam { .. })
            ));
        }
        drop(data);
    }

    #[test]
    fn an_unmapped_address_is_an_error_not_a_panic_and_bad_layouts_are_refused() {
        // Page 0 of our address space is never mapped: the first read fails at open.
        let segs = vec![ProcSegment {
            gpa: 0,
            len: 4096,
            hva: 0,
        }];
        assert!(matches!(
            ProcMemRam::open(std::process::id(), segs),
            Err(RamError::BadLayout(_))
        ));
        let seg = |gpa, len| ProcSegment { gpa, len, hva: 0 };
        for bad in [
            vec![],
            vec![seg(0, 0)],
            vec![seg(0, 8192), seg(4096, 4096)],
            vec![seg(u64::MAX - 10, 4096)],
        ] {
            assert!(check_segments(&bad).is_err(), "{bad:?}");
        }
        assert!(matches!(
            ProcMemRam::open(u32::MAX, vec![seg(0, 4096)]),
            Err(RamError::ProcMem { .. })
        ));
    }
}
