//! Where a running QEMU keeps its guest's RAM, asked over QMP: the guest-physical RAM
//! ranges from HMP `info mtree` (what the root of the `memory` address space maps), each
//! with its memory region and the offset into it, and the host virtual address of each
//! range from HMP `gpa2hva`. A QEMU whose RAM is private anonymous memory is read
//! through `/proc/PID/mem` at those addresses; one with a shared memfd backend through
//! the memfd at those offsets.

use serde_json::json;

use crate::{QemuError, Qmp};

/// One guest-physical RAM range of a running QEMU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RamSegment {
    /// First guest-physical address.
    pub gpa: u64,
    /// Bytes.
    pub len: u64,
    /// The memory region (QEMU's name: `pc.ram`, a backend's id).
    pub region: String,
    /// Offset of `gpa` in that region (= in its memfd, for a memfd backend).
    pub offset: u64,
    /// QEMU's virtual address of `gpa` (0 until asked with `gpa2hva`).
    pub hva: u64,
}

/// An `info mtree` line: `START-END (prio P, KIND): NAME` or `...: alias NAME @TARGET
/// TSTART-TEND`, with its depth (two spaces a level) — (depth, start, len, prio, kind,
/// region, offset in it).
fn parse_line(line: &str) -> Option<(usize, u64, u64, i64, String, String, u64)> {
    let depth = (line.len() - line.trim_start().len()) / 2;
    let line = line.trim();
    let (range, rest) = line.split_once(' ')?;
    let (start, end) = range.split_once('-')?;
    let start = u64::from_str_radix(start, 16).ok()?;
    let end = u64::from_str_radix(end, 16).ok()?;
    let rest = rest.trim_start().strip_prefix("(prio ")?;
    let (attrs, rest) = rest.split_once("):")?;
    let (prio, kind) = attrs.split_once(", ")?;
    let mut words = rest.split_whitespace();
    let mut name = words.next()?.to_string();
    let mut offset = 0;
    if name == "alias" {
        let _alias = words.next()?;
        name = words.next()?.strip_prefix('@')?.to_string();
        let (t_start, _) = words.next()?.split_once('-')?;
        offset = u64::from_str_radix(t_start, 16).ok()?;
    }
    // The root's whole 64-bit span has no length that fits: it is no RAM anyway.
    let len = end.checked_sub(start)?.checked_add(1)?;
    Some((
        depth,
        start,
        len,
        prio.trim().parse().ok()?,
        kind.trim().to_string(),
        name,
        offset,
    ))
}

/// Guest RAM in `info mtree` output (the tree, not `-f`: in QEMU 7.2 the flat view
/// keeps a reference that stops an unplugged device from ever being freed): the
/// priority-0 RAM the root of address space `memory` maps (q35's and pc's
/// `ram-below-4g`/`ram-above-4g` aliases of the RAM region, or RAM mapped directly),
/// keeping the biggest regions until they hold `ram_bytes` (the machine's RAM,
/// `query-memory-size-summary`): device RAM (VGA, ROMs) is not guest RAM.
pub fn parse_mtree(text: &str, ram_bytes: u64) -> Result<Vec<RamSegment>, String> {
    let mut in_memory = false;
    let mut pieces: Vec<RamSegment> = Vec::new();
    for line in text.lines() {
        if let Some(space) = line.strip_prefix("address-space: ") {
            if in_memory {
                break;
            }
            in_memory = space.trim() == "memory";
            continue;
        }
        if !in_memory {
            continue;
        }
        // Any other heading (`memory-region: pci`, listing alias targets) ends it.
        if !line.is_empty() && !line.starts_with(' ') {
            break;
        }
        let Some((depth, gpa, len, prio, kind, region, offset)) = parse_line(line) else {
            continue;
        };
        if depth != 2 || prio != 0 || kind != "ram" || pieces.iter().any(|p| p.gpa == gpa) {
            continue;
        }
        pieces.push(RamSegment {
            gpa,
            len,
            region,
            offset,
            hva: 0,
        });
    }
    if pieces.is_empty() {
        return Err("`info mtree` shows no RAM in address space \"memory\"".into());
    }
    let mut by_region: Vec<(String, u64)> = Vec::new();
    for p in &pieces {
        match by_region.iter_mut().find(|(r, _)| *r == p.region) {
            Some((_, n)) => *n += p.len,
            None => by_region.push((p.region.clone(), p.len)),
        }
    }
    by_region.sort_by_key(|r| std::cmp::Reverse(r.1));
    let want = ram_bytes.saturating_sub(1 << 20);
    let mut kept = Vec::new();
    let mut have = 0u64;
    for (region, n) in by_region {
        if have >= want && !kept.is_empty() {
            break;
        }
        have += n;
        kept.push(region);
    }
    if have < want {
        return Err(format!(
            "`info mtree` shows {have} bytes of RAM; the machine has {ram_bytes}"
        ));
    }
    pieces.retain(|p| kept.contains(&p.region));
    pieces.sort_by_key(|p| p.gpa);
    Ok(pieces)
}

/// The address in `gpa2hva`'s answer (`Host virtual address for 0x100000 (pc.ram) is
/// 0x7f21a7f00000`).
pub fn parse_gpa2hva(text: &str) -> Result<u64, String> {
    let word = text
        .split_whitespace()
        .last()
        .ok_or_else(|| "gpa2hva answered nothing".to_string())?;
    word.strip_prefix("0x")
        .and_then(|h| u64::from_str_radix(h, 16).ok())
        .filter(|_| text.contains("Host virtual address"))
        .ok_or_else(|| format!("gpa2hva answered {:?}", text.trim()))
}

impl Qmp {
    /// An HMP command's text output (`human-monitor-command`).
    pub fn hmp(&mut self, command_line: &str) -> Result<String, QemuError> {
        let out = self.execute(
            "human-monitor-command",
            Some(json!({ "command-line": command_line })),
        )?;
        out.as_str().map(str::to_string).ok_or_else(|| {
            QemuError::QmpProtocol(format!("human-monitor-command returned {out}, not text"))
        })
    }

    /// The guest's RAM: its ranges, regions, offsets and QEMU's virtual addresses, and
    /// its size (`query-memory-size-summary`'s base memory).
    pub fn ram_layout(&mut self) -> Result<(Vec<RamSegment>, u64), QemuError> {
        let summary = self.execute("query-memory-size-summary", None)?;
        let ram_bytes = summary["base-memory"].as_u64().ok_or_else(|| {
            QemuError::QmpProtocol(format!("query-memory-size-summary returned {summary}"))
        })?;
        let mtree = self.hmp("info mtree")?;
        let mut segs = parse_mtree(&mtree, ram_bytes).map_err(QemuError::QmpProtocol)?;
        for s in &mut segs {
            let mut hva = |gpa: u64| {
                let out = self.hmp(&format!("gpa2hva {gpa:#x}"))?;
                parse_gpa2hva(&out).map_err(QemuError::QmpProtocol)
            };
            s.hva = hva(s.gpa)?;
            // One mapping end to end (RAM of several backends, NUMA, is not).
            let last = hva(s.gpa + s.len - 1)?;
            if last != s.hva + s.len - 1 {
                return Err(QemuError::QmpProtocol(format!(
                    "guest RAM {:#x}+{:#x} is not one mapping in QEMU (several memory backends?)",
                    s.gpa, s.len
                )));
            }
        }
        Ok((segs, ram_bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// QEMU 7.2's `info mtree` of a pc guest with 256 MiB (shortened).
    const PC: &str = "address-space: I/O
  0000000000000000-000000000000ffff (prio 0, i/o): io
    0000000000000000-0000000000000007 (prio 0, i/o): dma-chan

address-space: memory
  0000000000000000-ffffffffffffffff (prio 0, i/o): system
    0000000000000000-000000000fffffff (prio 0, ram): alias ram-below-4g @pc.ram 0000000000000000-000000000fffffff
    0000000000000000-ffffffffffffffff (prio -1, i/o): pci
      00000000000a0000-00000000000bffff (prio 1, i/o): vga-lowmem
      00000000fd000000-00000000fdffffff (prio 1, ram): vga.vram
    00000000000a0000-00000000000bffff (prio 1, i/o): alias smram-region @pci 00000000000a0000-00000000000bffff
    00000000000c0000-00000000000c3fff (prio 1, ram): alias pam-rom @pc.ram 00000000000c0000-00000000000c3fff
    00000000fd000000-00000000fdffffff (prio 0, ram): vga.vram
    00000000fffc0000-00000000ffffffff (prio 0, rom): pc.bios

memory-region: smram
  0000000000000000-00000000ffffffff (prio 0, i/o): smram
    00000000000a0000-00000000000bffff (prio 0, ram): alias smram-low @pc.ram 00000000000a0000-00000000000bffff
";

    #[test]
    fn guest_ram_is_the_ram_region_the_root_maps() {
        let segs = parse_mtree(PC, 256 << 20).unwrap();
        let got: Vec<_> = segs
            .iter()
            .map(|s| (s.gpa, s.len, s.region.as_str(), s.offset))
            .collect();
        assert_eq!(got, vec![(0, 0x1000_0000, "pc.ram", 0)]);
        // Above 4 GiB the region continues at its own offset.
        let big = PC.replacen(
            "    0000000000000000-ffffffffffffffff (prio -1, i/o): pci",
            "    0000000100000000-000000013fffffff (prio 0, ram): alias ram-above-4g @pc.ram 0000000010000000-000000004fffffff\n    0000000000000000-ffffffffffffffff (prio -1, i/o): pci",
            1,
        );
        let segs = parse_mtree(&big, (256 << 20) + (1 << 30)).unwrap();
        assert_eq!(segs.len(), 2);
        assert_eq!((segs[1].gpa, segs[1].offset), (1 << 32, 0x1000_0000));
        assert!(parse_mtree(PC, 1 << 30).is_err());
        assert!(parse_mtree("address-space: I/O\n", 1).is_err());
    }

    #[test]
    fn gpa2hva_answers_parse_and_refusals_do_not() {
        assert_eq!(
            parse_gpa2hva("Host virtual address for 0x100000 (pc.ram) is 0x7f21a7f00000\r\n"),
            Ok(0x7f21_a7f0_0000)
        );
        assert!(parse_gpa2hva("Memory at address 0xb0000000 is not RAM\r\n").is_err());
        assert!(parse_gpa2hva("").is_err());
    }
}
