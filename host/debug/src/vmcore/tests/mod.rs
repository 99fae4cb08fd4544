//! Tests of the vmcore writer and reader: what is written reads back, and what is
//! refused is refused before any file appears.

use std::fs::File;
use std::path::Path;
use std::process::Command;

use super::*;
use crate::memory::PhysMemory;
use crate::vmcoreinfo::VmcoreInfo;

mod hostile;
mod tools;

const KIB: u64 = 1024;
const MIB: u64 = 1 << 20;
const INFO: &str = "OSRELEASE=6.1.0-test\nPAGESIZE=4096\n\
    SYMBOL(init_top_pgt)=ffffffff82a0a000\nNUMBER(phys_base)=0\nKERNELOFFSET=0\n";
const DIRECT: u64 = 0xffff_8880_0000_0000;

/// Guest RAM made of `(base, bytes)` pieces; a read must fall in one piece.
struct Guest(Vec<(u64, Vec<u8>)>);

impl Guest {
    fn ranges(&self) -> Vec<Range<u64>> {
        self.0
            .iter()
            .map(|(b, v)| *b..*b + v.len() as u64)
            .collect()
    }

    fn page_mut(&mut self, paddr: u64) -> &mut [u8] {
        let (base, bytes) = self
            .0
            .iter_mut()
            .find(|(b, v)| paddr >= *b && paddr < *b + v.len() as u64)
            .expect("page in the guest");
        let at = (paddr - *base) as usize;
        &mut bytes[at..at + PAGE as usize]
    }

    fn zero(&mut self, pages: Range<u64>) {
        for p in pages.step_by(PAGE as usize) {
            self.page_mut(p).fill(0);
        }
    }
}

impl PhysMemory for Guest {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        for (base, bytes) in &self.0 {
            let Some(off) = addr.checked_sub(*base) else {
                continue;
            };
            if let Some(src) = bytes.get(off as usize..off as usize + buf.len()) {
                buf.copy_from_slice(src);
                return Ok(());
            }
        }
        Err(MemoryError::NotRam {
            addr,
            len: buf.len() as u64,
        })
    }
}

/// A word no zero page has: its own address, mixed.
fn pattern(addr: u64) -> u64 {
    addr.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1
}

fn patterned(base: u64, len: u64) -> (u64, Vec<u8>) {
    let bytes = (base..base + len)
        .step_by(8)
        .flat_map(|a| pattern(a).to_le_bytes())
        .collect();
    (base, bytes)
}

/// Three RAM ranges with a hole between each: 4 MiB + 12 KiB (not a multiple of
/// the 2 MiB chunk), 2 MiB, and 1 MiB all zero. Zero pages lead, trail, stand
/// alone, run for 1 MiB, and run for 800 KiB into the kernel image (1 MiB..1.25
/// MiB); one page is zero but for its last byte; VMCOREINFO sits at 0x3000.
fn guest() -> Guest {
    let mut g = Guest(vec![
        patterned(0, 4 * MIB + 12 * KIB),
        patterned(8 * MIB, 2 * MIB),
        (12 * MIB, vec![0; MIB as usize]),
    ]);
    g.zero(0..2 * PAGE);
    g.zero(10 * PAGE..11 * PAGE);
    g.zero(100 * PAGE..300 * PAGE);
    g.zero(4 * MIB..4 * MIB + 12 * KIB);
    g.zero(8 * MIB..8 * MIB + 5 * PAGE);
    g.zero(9 * MIB - 256 * KIB..9 * MIB + 768 * KIB);
    for p in (50..70).step_by(2) {
        g.zero(8 * MIB + p * PAGE..8 * MIB + (p + 1) * PAGE);
    }
    let p = g.page_mut(20 * PAGE);
    p.fill(0);
    p[PAGE as usize - 1] = 0x80;
    let p = g.page_mut(3 * PAGE);
    p.fill(0);
    p[..INFO.len()].copy_from_slice(INFO.as_bytes());
    g
}

fn layout() -> KernelLayout {
    KernelLayout {
        page_offset_base: Some(DIRECT),
        phys_base: 0,
        image: Some(MIB..MIB + 256 * KIB),
    }
}

fn info() -> VmcoreInfo {
    VmcoreInfo::parse(INFO.as_bytes()).unwrap()
}

/// A dump of `g` with no kernel layout and default options: what most tests write.
fn dump_plain(g: &Guest, dir: &Path, name: &str) -> Result<DumpSummary, VmcoreError> {
    write_vmcore(
        g,
        &g.ranges(),
        &info(),
        None,
        dir,
        name,
        &DumpOptions::default(),
    )
}

fn cpu(n: u64) -> PrStatusRegs {
    PrStatusRegs {
        pid: n as u32 + 1,
        rip: 0xffff_ffff_8100_0000 + n,
        rsp: 0xffff_c900_0000_0000 + n * 0x1000,
        rbp: 0x1234 + n,
        rax: n,
        r15: 0xf15,
        gs: 0x6,
        cs: 0x10,
        ss: 0x18,
        rflags: 0x246,
        fs_base: 0x7f00_0000_0000,
        gs_base: 0xffff_8880_7fc0_0000 + n,
        control: ControlRegs {
            cr0: 0x8005_0033,
            cr2: n,
            cr3: 0x1ff0_0000 + n * PAGE,
            cr4: 0x0075_1eb0,
        },
        ..Default::default()
    }
}

/// Non-zero pages, zero pages outside `keep`, and zero pages inside it.
fn count_pages(g: &Guest, keep: Option<&Range<u64>>) -> (u64, u64, u64) {
    let (mut data, mut skipped, mut forced) = (0, 0, 0);
    for (base, bytes) in &g.0 {
        for (i, page) in bytes.chunks(PAGE as usize).enumerate() {
            let p = base + i as u64 * PAGE;
            match (
                page.iter().all(|&b| b == 0),
                keep.is_some_and(|k| k.contains(&p)),
            ) {
                (false, _) => data += 1,
                (true, false) => skipped += 1,
                (true, true) => forced += 1,
            }
        }
    }
    (data, skipped, forced)
}

fn assert_reads_back(g: &Guest, core: &Vmcore) {
    for (base, bytes) in &g.0 {
        // Page by page, then one read across every segment of the range.
        let mut page = vec![0u8; PAGE as usize];
        for (i, want) in bytes.chunks(PAGE as usize).enumerate() {
            let at = base + i as u64 * PAGE;
            core.read_phys(at, &mut page).unwrap();
            assert!(page == want, "page {at:#x} differs");
        }
        let mut all = vec![0xaau8; bytes.len()];
        core.read_phys(*base, &mut all).unwrap();
        assert!(&all == bytes, "range {base:#x} differs");
        // Unaligned, across the boundary of a data run and its zero tail.
        let mut odd = vec![0u8; 3 * PAGE as usize + 5];
        let at = base + PAGE - 3;
        core.read_phys(at, &mut odd).unwrap();
        assert_eq!(&odd[..], &bytes[PAGE as usize - 3..4 * PAGE as usize + 2]);
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_dump_reads_back_page_for_page_without_its_zero_pages() {
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let opts = DumpOptions {
        cpus: vec![cpu(0), cpu(1)],
        max_bytes: Some(64 * MIB),
    };
    let kl = layout();
    let sum = write_vmcore(
        &g,
        &g.ranges(),
        &info(),
        Some(&kl),
        dir.path(),
        "guest.vmcore",
        &opts,
    )
    .unwrap();
    assert_eq!(files_in(dir.path()), ["guest.vmcore"]);
    let path = dir.path().join("guest.vmcore");
    let size = std::fs::metadata(&path).unwrap().len();
    let ram: u64 = g.ranges().iter().map(|r| r.end - r.start).sum();
    let (data, skipped, forced) = count_pages(&g, kl.image.as_ref());
    assert!(
        forced > 40 && skipped > 150,
        "the guest has zero pages of both kinds"
    );
    assert_eq!(sum.path, path);
    assert_eq!(sum.bytes_written, size);
    assert_eq!(sum.ram_bytes, ram);
    assert_eq!(sum.zero_pages_skipped, skipped);
    // Exactly the non-zero and image pages, after one page of headers.
    assert_eq!(size, PAGE + (data + forced) * PAGE);
    assert!(size < ram - 2 * MIB, "{size} of {ram}");

    let core = Vmcore::open(&path).unwrap();
    assert_reads_back(&g, &core);
    assert_eq!(core.ram_ranges(), g.ranges());
    assert_eq!(core.vmcoreinfo().unwrap(), info());
    assert_eq!(core.cpus(), &[cpu(0), cpu(1)]);
    assert_eq!(core.file_size(), size);

    // Every RAM PT_LOAD at its direct-map address, tiling the RAM; zero runs past
    // p_filesz; leading zero runs (range 2 and 3) with nothing in the file.
    let loads = core.loads();
    assert_eq!(sum.segments, loads.len());
    let (ram_loads, aliases): (Vec<&LoadSegment>, Vec<&LoadSegment>) =
        loads.iter().partition(|l| !l.is_image_alias());
    for l in &ram_loads {
        assert_eq!(l.vaddr, DIRECT + l.paddr);
        assert_eq!(l.offset % PAGE, 0);
    }
    assert!(ram_loads
        .iter()
        .any(|l| l.paddr == 8 * MIB && l.filesz == 0 && l.memsz == 5 * PAGE));
    assert!(ram_loads
        .iter()
        .any(|l| l.paddr == 12 * MIB && l.filesz == 0 && l.memsz == MIB));
    assert!(ram_loads
        .iter()
        .any(|l| l.paddr == 0 && l.filesz == 0 && l.memsz == 2 * PAGE));
    // The image: one alias, the same file bytes as its RAM PT_LOAD, fully backed.
    assert_eq!(aliases.len(), 1);
    let a = aliases[0];
    assert_eq!((a.paddr, a.vaddr), (MIB, START_KERNEL_MAP + MIB));
    assert_eq!((a.filesz, a.memsz), (256 * KIB, 256 * KIB));
    let holder = ram_loads
        .iter()
        .find(|l| l.paddr <= a.paddr && a.paddr + a.filesz <= l.paddr + l.filesz)
        .expect("the image lies in one RAM PT_LOAD's file bytes");
    assert_eq!(a.offset, holder.offset + (a.paddr - holder.paddr));

    // Outside the RAM the dump covers: not RAM, all or nothing.
    let mut b = [0u8; 16];
    for addr in [
        4 * MIB + 12 * KIB,
        6 * MIB,
        10 * MIB - 8,
        13 * MIB - 4,
        1 << 40,
        u64::MAX - 4,
    ] {
        assert!(
            matches!(
                core.read_phys(addr, &mut b),
                Err(MemoryError::NotRam { .. })
            ),
            "{addr:#x}"
        );
    }

    // What `Kernel::open` does first: find VMCOREINFO in RAM, through the dump.
    let found = crate::vmcoreinfo::scan(&core, &core.ram_ranges(), 8).unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!((found[0].paddr, &found[0].info), (3 * PAGE, &info()));
}

#[test]
fn without_a_layout_vaddrs_are_zero_and_there_are_no_aliases() {
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let sum = dump_plain(&g, dir.path(), "d").unwrap();
    let core = Vmcore::open(&sum.path).unwrap();
    assert!(core.loads().iter().all(|l| l.vaddr == 0));
    assert!(core.cpus().is_empty());
    let (_, skipped, _) = count_pages(&g, None);
    assert_eq!(sum.zero_pages_skipped, skipped);
    assert_reads_back(&g, &core);
}

#[test]
fn adjacent_ram_ranges_are_read_each_on_its_own() {
    // The double refuses reads across its pieces, as MappedRam does.
    let mut g = Guest(vec![patterned(0, MIB), patterned(MIB, MIB + 8 * KIB)]);
    g.zero(MIB - 4 * PAGE..MIB + 4 * PAGE);
    let dir = tempfile::tempdir().unwrap();
    let sum = dump_plain(&g, dir.path(), "adj").unwrap();
    assert_eq!(sum.zero_pages_skipped, 8);
    let core = Vmcore::open(&sum.path).unwrap();
    assert_eq!(
        core.ram_ranges(),
        std::slice::from_ref(&(0..2 * MIB + 8 * KIB))
    );
    assert_reads_back(&g, &core);
    // A read across the two ranges works in the dump.
    let mut b = vec![0u8; 2 * PAGE as usize];
    core.read_phys(MIB - PAGE, &mut b).unwrap();
    assert!(b.iter().all(|&x| x == 0));
}

#[test]
fn a_planted_link_under_the_partial_name_is_not_followed() {
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let victim = dir.path().join("victim");
    std::fs::write(&victim, b"precious").unwrap();
    std::os::unix::fs::symlink(&victim, dir.path().join(".d.partial")).unwrap();
    let e = dump_plain(&g, dir.path(), "d").unwrap_err();
    assert!(
        matches!(
            e,
            VmcoreError::Write {
                step: "creating",
                ..
            }
        ),
        "{e:?}"
    );
    std::fs::remove_file(dir.path().join(".d.partial")).unwrap();
    std::fs::hard_link(&victim, dir.path().join(".d.partial")).unwrap();
    let e = dump_plain(&g, dir.path(), "d").unwrap_err();
    assert!(
        matches!(
            e,
            VmcoreError::Write {
                step: "creating",
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
    assert!(!dir.path().join("d").exists());
}

#[test]
fn many_runs_merge_across_the_shortest_zero_gaps() {
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let job = Job {
        mem: &g,
        info: &info(),
        kernel: None,
        opts: &DumpOptions::default(),
        max_segments: 4,
    };
    let sum = job.write(&g.ranges(), dir.path(), "merged").unwrap();
    let core = Vmcore::open(&sum.path).unwrap();
    let with_bytes = core.loads().iter().filter(|l| l.filesz > 0).count();
    assert!(with_bytes <= 4, "{with_bytes} runs");
    assert_reads_back(&g, &core);
    // The long zero run (800 KiB) is the last to be filled.
    assert!(sum.zero_pages_skipped >= 200);
}

#[test]
fn cap_runs_fills_the_shortest_gaps_within_a_range_only() {
    let p = |a: u64, b: u64| a * PAGE..b * PAGE;
    let runs = vec![
        (0, p(0, 1)),
        (0, p(3, 4)),
        (0, p(5, 6)),
        (0, p(20, 21)),
        (1, p(22, 23)),
    ];
    assert_eq!(cap_runs(runs.clone(), 5).len(), 5);
    assert_eq!(
        cap_runs(runs.clone(), 4),
        [p(0, 1), p(3, 6), p(20, 21), p(22, 23)]
    );
    assert_eq!(cap_runs(runs.clone(), 3), [p(0, 6), p(20, 21), p(22, 23)]);
    // Never across RAM ranges, whatever the cap.
    assert_eq!(cap_runs(runs, 1), [p(0, 21), p(22, 23)]);
}

#[test]
fn names_ranges_and_layouts_that_do_not_hold_are_refused_before_any_file() {
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let w = |name: &str, ram: &[Range<u64>], kl: Option<&KernelLayout>, opts: &DumpOptions| {
        write_vmcore(&g, ram, &info(), kl, dir.path(), name, opts)
    };
    let ram = g.ranges();
    let none = DumpOptions::default();
    for name in ["", "a/b", "../x", ".hidden", "..", "a\0b"] {
        assert!(
            matches!(w(name, &ram, None, &none), Err(VmcoreError::BadName { .. })),
            "{name:?}"
        );
    }
    let unaligned = std::iter::once(0..100).collect();
    for bad in [vec![], unaligned, vec![0..2 * PAGE, PAGE..3 * PAGE]] {
        assert!(
            matches!(w("x", &bad, None, &none), Err(VmcoreError::BadRam(_))),
            "{bad:?}"
        );
    }
    let small = DumpOptions {
        max_bytes: Some(MIB),
        ..Default::default()
    };
    assert!(matches!(
        w("x", &ram, None, &small),
        Err(VmcoreError::TooLarge { .. })
    ));
    let layouts = [
        KernelLayout {
            page_offset_base: Some(u64::MAX - PAGE),
            ..layout()
        },
        KernelLayout {
            image: Some(MIB..MIB + (2 << 30)),
            ..layout()
        },
        KernelLayout {
            phys_base: 2 * MIB,
            ..layout()
        },
    ];
    for kl in &layouts {
        assert!(
            matches!(
                w("x", &ram, Some(kl), &none),
                Err(VmcoreError::BadLayout(_))
            ),
            "{kl:?}"
        );
    }
    assert!(files_in(dir.path()).is_empty());
}

#[test]
fn a_missing_directory_is_an_error_naming_the_path() {
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let e = dump_plain(&g, &missing, "d").unwrap_err();
    let VmcoreError::Write {
        ref path,
        step,
        ref source,
    } = e
    else {
        panic!("{e:?}");
    };
    assert_eq!(
        (path.as_path(), step),
        (missing.join("d").as_path(), "creating")
    );
    assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
    assert!(
        e.to_string().contains(&missing.display().to_string()),
        "{e}"
    );
    assert!(files_in(dir.path()).is_empty());
}

/// Guest RAM that fails after `ok` reads.
struct Failing<'a>(&'a Guest, std::sync::atomic::AtomicUsize);

impl PhysMemory for Failing<'_> {
    fn read_phys(&self, addr: u64, buf: &mut [u8]) -> Result<(), MemoryError> {
        use std::sync::atomic::Ordering;
        if self.1.fetch_sub(1, Ordering::SeqCst) == 0 {
            return Err(MemoryError::Unreadable {
                addr,
                len: buf.len() as u64,
                why: "injected".into(),
            });
        }
        self.0.read_phys(addr, buf)
    }
}

#[test]
fn a_failure_midway_leaves_no_partial_file_and_the_old_dump_intact() {
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let old = dump_plain(&g, dir.path(), "d").unwrap();
    let before = std::fs::read(&old.path).unwrap();
    // The plan reads 5 chunks; fail while writing the data.
    for ok in [2, 6] {
        let bad = Failing(&g, ok.into());
        let e = write_vmcore(
            &bad,
            &g.ranges(),
            &info(),
            None,
            dir.path(),
            "d",
            &DumpOptions::default(),
        )
        .unwrap_err();
        assert!(
            matches!(e, VmcoreError::Memory(MemoryError::Unreadable { .. })),
            "{e:?}"
        );
        assert_eq!(files_in(dir.path()), ["d"]);
        assert!(std::fs::read(&old.path).unwrap() == before);
    }
}

#[test]
fn a_stale_partial_file_is_reclaimed_and_a_locked_one_is_left_alone() {
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let partial = dir.path().join(".d.partial");
    std::fs::write(&partial, b"left by a dump that died").unwrap();
    dump_plain(&g, dir.path(), "d").unwrap();
    assert_eq!(files_in(dir.path()), ["d"]);

    std::fs::write(&partial, b"in progress").unwrap();
    let holder = File::open(&partial).unwrap();
    holder.lock().unwrap();
    let e = dump_plain(&g, dir.path(), "d2");
    assert!(e.is_ok(), "another name is not busy");
    let e = dump_plain(&g, dir.path(), "d").unwrap_err();
    assert!(matches!(e, VmcoreError::Busy { .. }), "{e:?}");
    assert_eq!(std::fs::read(&partial).unwrap(), b"in progress");
}

/// A tmpfs mounted on a fresh directory for one test, unmounted after.
struct Mount(tempfile::TempDir);

impl Mount {
    fn tmpfs(options: &str, why: &str) -> Option<Self> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            crate::memory::fake::say_skipped(why, "not root, cannot mount a tmpfs");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", options, "tmpfs"])
            .arg(dir.path())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            crate::memory::fake::say_skipped(why, "`mount -t tmpfs` failed here");
            return None;
        }
        Some(Self(dir))
    }

    fn path(&self) -> &Path {
        self.0.path()
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(self.0.path()).status();
    }
}

/// A dump into `dir` that must fail to write: the error, its step and errno.
fn write_error_in(dir: &Path) -> (VmcoreError, &'static str, Option<i32>) {
    let g = guest();
    let e = dump_plain(&g, dir, "d").unwrap_err();
    let VmcoreError::Write {
        step, ref source, ..
    } = e
    else {
        panic!("{e:?}");
    };
    let errno = source.raw_os_error();
    (e, step, errno)
}

#[test]
fn a_full_filesystem_is_enospc_and_leaves_no_file() {
    let Some(m) = Mount::tmpfs("size=1m", "the ENOSPC test") else {
        return;
    };
    let (e, step, errno) = write_error_in(m.path());
    assert_eq!(step, "writing");
    assert_eq!(errno, Some(libc::ENOSPC));
    let msg = e.to_string();
    assert!(
        msg.contains("No space left") && msg.contains(&m.path().join("d").display().to_string()),
        "{msg}"
    );
    assert!(files_in(m.path()).is_empty());
}

#[test]
fn a_read_only_filesystem_is_erofs_and_leaves_no_file() {
    let Some(m) = Mount::tmpfs("size=1m", "the EROFS test") else {
        return;
    };
    let ro = Command::new("mount")
        .args(["-o", "remount,ro"])
        .arg(m.path())
        .status()
        .is_ok_and(|s| s.success());
    if !ro {
        crate::memory::fake::say_skipped("the EROFS test", "remounting the tmpfs read-only failed");
        return;
    }
    let (_, step, errno) = write_error_in(m.path());
    assert_eq!((step, errno), ("creating", Some(libc::EROFS)));
    assert!(files_in(m.path()).is_empty());
}
