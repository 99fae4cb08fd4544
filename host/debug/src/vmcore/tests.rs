//! Tests of `vmcore.rs`.

use super::*;
use proptest::prelude::*;
use std::process::Command;
use std::sync::OnceLock;

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

/// A small valid dump: one 64 KiB range, page 0 and 5 zero, two CPUs. Its program
/// headers: 0 the note, 1 the leading zero page, 2 pages 1..5, 3 pages 6..16.
fn small_dump() -> &'static [u8] {
    static BYTES: OnceLock<Vec<u8>> = OnceLock::new();
    BYTES.get_or_init(|| {
        let mut g = Guest(vec![patterned(0, 64 * KIB)]);
        g.zero(0..PAGE);
        g.zero(5 * PAGE..6 * PAGE);
        let dir = tempfile::tempdir().unwrap();
        let opts = DumpOptions {
            cpus: vec![cpu(0), cpu(1)],
            max_bytes: None,
        };
        let sum = write_vmcore(&g, &g.ranges(), &info(), None, dir.path(), "small", &opts).unwrap();
        std::fs::read(sum.path).unwrap()
    })
}

fn open_bytes(bytes: &[u8]) -> Result<Vmcore, VmcoreError> {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), bytes).unwrap();
    Vmcore::open(f.path())
}

fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

fn get64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap())
}

/// Offset of program header `i`'s field at `field`.
fn ph(i: usize, field: usize) -> usize {
    EHDR_SIZE as usize + PHDR_SIZE as usize * i + field
}
const P_OFFSET: usize = 8;
const P_PADDR: usize = 24;
const P_FILESZ: usize = 32;
const P_MEMSZ: usize = 40;

#[test]
fn the_small_dump_is_what_the_hostile_tests_assume() {
    let good = small_dump();
    let core = open_bytes(good).unwrap();
    let l = core.loads();
    assert_eq!(l.len(), 3);
    assert_eq!((l[0].paddr, l[0].filesz, l[0].memsz), (0, 0, PAGE));
    assert_eq!(
        (l[1].paddr, l[1].filesz, l[1].memsz),
        (PAGE, 4 * PAGE, 5 * PAGE)
    );
    assert_eq!((l[2].paddr, l[2].filesz), (6 * PAGE, 10 * PAGE));
    assert_eq!(core.cpus().len(), 2);
    assert_eq!(core.vmcoreinfo().unwrap(), info());
}

#[test]
fn each_kind_of_bad_file_has_its_own_error() {
    use VmcoreError as E;
    let good = small_dump();
    let edit = |f: &dyn Fn(&mut Vec<u8>)| {
        let mut b = good.to_vec();
        f(&mut b);
        open_bytes(&b)
    };
    let note_at = get64(good, ph(0, P_OFFSET)) as usize;
    let size = good.len() as u64;

    assert!(matches!(open_bytes(b""), Err(E::NotElf)));
    assert!(matches!(edit(&|b| b[1] = b'X'), Err(E::NotElf)));
    assert!(matches!(
        open_bytes(&good[..40]),
        Err(E::Truncated {
            what: "ELF header",
            ..
        })
    ));
    assert!(matches!(
        open_bytes(&good[..100]),
        Err(E::Truncated {
            what: "program headers",
            ..
        })
    ));
    assert!(matches!(
        edit(&|b| b[EI_CLASS] = 1),
        Err(E::WrongClass { class: 1 })
    ));
    assert!(matches!(
        edit(&|b| b[EI_DATA] = 2),
        Err(E::WrongEndian { data: 2 })
    ));
    assert!(matches!(
        edit(&|b| b[18] = 3),
        Err(E::WrongMachine { machine: 3 })
    ));
    assert!(matches!(
        edit(&|b| b[16] = 2),
        Err(E::NotCore { e_type: 2 })
    ));
    assert!(matches!(edit(&|b| b[54] = 32), Err(E::BadHeader(_))));
    assert!(matches!(
        edit(&|b| b[56..58].copy_from_slice(&[0, 0])),
        Err(E::BadHeader(_))
    ));
    assert!(matches!(
        edit(&|b| b[56..58].copy_from_slice(&[0xff, 0xff])),
        Err(E::TooManyHeaders { .. })
    ));
    assert!(matches!(
        edit(&|b| put64(b, 32, u64::MAX - 8)),
        Err(E::Truncated { .. })
    ));
    // Cut inside the data; a segment moved past the end; one whose end wraps.
    assert!(matches!(
        open_bytes(&good[..good.len() - 1]),
        Err(E::SegmentPastEnd { index: 3, .. })
    ));
    assert!(matches!(
        edit(&|b| put64(b, ph(2, P_OFFSET), size - 8)),
        Err(E::SegmentPastEnd { index: 2, .. })
    ));
    assert!(matches!(
        edit(&|b| put64(b, ph(2, P_OFFSET), u64::MAX - 100)),
        Err(E::SegmentPastEnd { index: 2, .. })
    ));
    assert!(matches!(
        edit(&|b| put64(b, ph(0, P_FILESZ), u64::MAX)),
        Err(E::SegmentPastEnd { index: 0, .. })
    ));
    assert!(matches!(
        edit(&|b| put64(b, ph(2, P_MEMSZ), 1)),
        Err(E::BadSegment { index: 2, .. })
    ));
    assert!(matches!(
        edit(&|b| put64(b, ph(3, P_PADDR), u64::MAX - PAGE)),
        Err(E::BadSegment { index: 3, .. })
    ));
    // Two PT_LOADs claiming the same RAM, and one reaching into the next.
    assert!(matches!(
        edit(&|b| put64(b, ph(3, P_PADDR), PAGE)),
        Err(E::Overlap { .. })
    ));
    assert!(matches!(
        edit(&|b| put64(b, ph(2, P_MEMSZ), 6 * PAGE)),
        Err(E::Overlap { .. })
    ));
    // Notes: a descriptor past the segment; a short NT_PRSTATUS; notes too large.
    assert!(matches!(
        edit(&|b| b[note_at + 4..note_at + 8].copy_from_slice(&0xffff_fff0u32.to_le_bytes())),
        Err(E::BadNote(_))
    ));
    assert!(matches!(
        edit(&|b| b[note_at + 4..note_at + 8].copy_from_slice(&100u32.to_le_bytes())),
        Err(E::BadNote(_))
    ));
    assert!(matches!(
        edit(&|b| {
            let n = get64(b, ph(0, P_FILESZ));
            put64(b, ph(0, P_FILESZ), n - 2)
        }),
        Err(E::BadNote(_))
    ));
    let mut big = good.to_vec();
    big.resize(note_at + (MAX_NOTE_BYTES as usize) + 8, 0);
    put64(&mut big, ph(0, P_FILESZ), MAX_NOTE_BYTES + 4);
    assert!(matches!(open_bytes(&big), Err(E::NotesTooLarge { .. })));
    // No VMCOREINFO note: the dump opens (RAM is still RAM), vmcoreinfo() says so.
    let vi = good.windows(11).position(|w| w == b"VMCOREINFO\0").unwrap();
    let core = edit(&|b| b[vi + 9] = b'X').unwrap();
    assert!(matches!(core.vmcoreinfo(), Err(E::NoVmcoreinfo)));
    let core = edit(&|b| b[vi + 12..vi + 14].copy_from_slice(b"XX")).unwrap();
    assert!(matches!(
        core.vmcoreinfo(),
        Err(E::VmcoreInfo(VmcoreInfoError::NoMagic))
    ));
    // A 32-bit core is refused by class before anything else is read.
    let mut elf32 = good[..52].to_vec();
    elf32[EI_CLASS] = 1;
    assert!(matches!(
        open_bytes(&elf32),
        Err(E::Truncated { .. }) | Err(E::WrongClass { .. })
    ));
    let mut elf32 = good.to_vec();
    elf32[EI_CLASS] = 1;
    assert!(matches!(
        open_bytes(&elf32),
        Err(E::WrongClass { class: 1 })
    ));
}

#[test]
fn a_dump_truncated_after_open_reads_as_an_error_not_a_crash() {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), small_dump()).unwrap();
    let core = Vmcore::open(f.path()).unwrap();
    f.as_file().set_len(PAGE).unwrap();
    let mut b = [0u8; 8];
    assert!(matches!(
        core.read_phys(2 * PAGE, &mut b),
        Err(MemoryError::Unreadable { .. })
    ));
    // The zero page needs no file bytes.
    core.read_phys(0, &mut b).unwrap();
    assert_eq!(b, [0; 8]);
}

/// Opens `bytes` and, when that works, uses everything the dump offers.
fn poke(bytes: &[u8]) {
    let Ok(core) = open_bytes(bytes) else {
        return;
    };
    let _ = core.vmcoreinfo();
    let _ = core.cpus();
    let mut b = [0u8; 64];
    for r in core.ram_ranges() {
        for at in [
            r.start,
            r.end.wrapping_sub(1),
            r.end.wrapping_sub(64),
            r.start.wrapping_add(4093),
        ] {
            let _ = core.read_phys(at, &mut b);
        }
    }
    for l in core.loads() {
        let _ = core.read_phys(l.paddr, &mut b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(200))]

    #[test]
    fn random_bytes_never_panic(mut bytes in proptest::collection::vec(any::<u8>(), 0..1024), elf in any::<bool>()) {
        if elf && bytes.len() >= 20 {
            // Past the magic and class checks, to reach the headers.
            bytes[..20].copy_from_slice(&small_dump()[..20]);
        }
        poke(&bytes);
    }

    #[test]
    fn random_header_edits_never_panic(
        bytes in proptest::collection::vec((0usize..1024, any::<u8>()), 0..12),
        words in proptest::collection::vec((0usize..128, prop_oneof![any::<u64>(), Just(0), Just(u64::MAX), (0u64..70_000)]), 0..6),
        cut in proptest::option::of(0usize..70_000),
    ) {
        let mut b = small_dump().to_vec();
        for (at, v) in bytes {
            b[at] = v;
        }
        for (w, v) in words {
            put64(&mut b, w * 8, v);
        }
        if let Some(cut) = cut {
            b.truncate(cut);
        }
        poke(&b);
    }
}

fn have(tool: &str) -> bool {
    Command::new(tool)
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

#[test]
fn gdb_reads_image_and_direct_map_addresses_and_registers_from_the_dump() {
    if !have("gdb") {
        crate::memory::fake::say_skipped("the gdb test", "no gdb on PATH");
        return;
    }
    let mut g = guest();
    // A known pattern at the start of the image and of another image page.
    let p = g.page_mut(MIB);
    p[..16].copy_from_slice(&[
        0x88, 0x77, 0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0xff, 0xee, 0xdd, 0xcc, 0xbb, 0xaa, 0x99,
    ]);
    let dir = tempfile::tempdir().unwrap();
    let opts = DumpOptions {
        cpus: vec![cpu(0)],
        max_bytes: None,
    };
    // A non-zero phys_base, as a relocated kernel has.
    let kl = KernelLayout {
        phys_base: MIB,
        image: Some(MIB..MIB + 256 * KIB),
        ..layout()
    };
    let sum = write_vmcore(
        &g,
        &g.ranges(),
        &info(),
        Some(&kl),
        dir.path(),
        "g.vmcore",
        &opts,
    )
    .unwrap();
    let out = Command::new("gdb")
        .args(["-batch", "-nx", "-ex"])
        .arg(format!("core-file {}", sum.path.display()))
        .args(["-ex", "x/2gx 0xffffffff80000000"])
        .args(["-ex", &format!("x/2gx {:#x}", DIRECT + MIB)])
        .args(["-ex", &format!("x/1gx {:#x}", START_KERNEL_MAP + 60 * PAGE)])
        .args(["-ex", &format!("x/1gx {:#x}", START_KERNEL_MAP + 16 * PAGE)])
        .args(["-ex", "p/x $rip", "-ex", "p/x $rsp"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let want_image = "0xffffffff80000000:\t0x1122334455667788\t0x99aabbccddeeff00".to_string();
    let want_direct = format!(
        "{:#x}:\t0x1122334455667788\t0x99aabbccddeeff00",
        DIRECT + MIB
    );
    // phys_base is 1 MiB: image page 60 is guest page 316; 16 is 272, a zero page.
    let want_page = format!(
        "{:#x}:\t{:#018x}",
        START_KERNEL_MAP + 60 * PAGE,
        pattern(MIB + 60 * PAGE)
    );
    let want_zero = format!("{:#x}:\t0x0000000000000000", START_KERNEL_MAP + 16 * PAGE);
    for want in [
        &want_image,
        &want_direct,
        &want_page,
        &want_zero,
        &format!("$1 = {:#x}", cpu(0).rip),
        &format!("$2 = {:#x}", cpu(0).rsp),
    ] {
        assert!(
            stdout.contains(want.as_str()),
            "gdb did not print {want:?}\nstdout:\n{stdout}\nstderr:\n{stderr}"
        );
    }
}

#[test]
fn readelf_reads_the_headers_and_notes_without_warnings() {
    if !have("readelf") {
        crate::memory::fake::say_skipped("the readelf test", "no readelf on PATH");
        return;
    }
    let g = guest();
    let dir = tempfile::tempdir().unwrap();
    let opts = DumpOptions {
        cpus: vec![cpu(0), cpu(1)],
        max_bytes: None,
    };
    let sum = write_vmcore(
        &g,
        &g.ranges(),
        &info(),
        Some(&layout()),
        dir.path(),
        "r",
        &opts,
    )
    .unwrap();
    let out = Command::new("readelf")
        .args(["-h", "-l", "-n", "-W"])
        .arg(&sum.path)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && stderr.is_empty(), "{stderr}");
    assert!(
        stdout.contains("CORE (Core file)") && stdout.contains("Advanced Micro Devices X86-64"),
        "{stdout}"
    );
    assert_eq!(stdout.matches("NT_PRSTATUS").count(), 2, "{stdout}");
    assert!(stdout.contains("VMCOREINFO"), "{stdout}");
    assert_eq!(stdout.matches("  LOAD ").count(), sum.segments, "{stdout}");
}

#[test]
fn the_layout_comes_from_vmcoreinfo_and_symbols() {
    let info = VmcoreInfo::parse(b"OSRELEASE=x\nNUMBER(phys_base)=-415236096\n").unwrap();
    let text = 0xffff_ffff_a800_0000u64;
    let syms = |n: &str| match n {
        "_text" => Some(text),
        "_end" => Some(text + 40 * MIB + 123),
        "page_offset_base" => Some(0xffff_ffff_b000_0000),
        _ => None,
    };
    let kl = KernelLayout::from_parts(&info, syms, |a| {
        (a == 0xffff_ffff_b000_0000).then_some(0xff2b_4000_0000_0000)
    });
    let phys = (text - START_KERNEL_MAP).wrapping_add(-415_236_096i64 as u64);
    assert_eq!(kl.page_offset_base, Some(0xff2b_4000_0000_0000));
    assert_eq!(kl.phys_base, -415_236_096i64 as u64);
    assert_eq!(kl.image, Some(phys..phys + 40 * MIB + 123));
    // The alias lands back on _text.
    assert_eq!(START_KERNEL_MAP + phys.wrapping_sub(kl.phys_base), text);
    // No variable: the fixed base; an implausible one or a huge image: none.
    let kl = KernelLayout::from_parts(&info, |_| None, |_| None);
    assert_eq!(
        (kl.page_offset_base, kl.image),
        (Some(PAGE_OFFSET_L4), None)
    );
    let bad = |n: &str| match n {
        "_text" => Some(START_KERNEL_MAP),
        "_end" => Some(START_KERNEL_MAP + MAX_IMAGE + PAGE),
        "page_offset_base" => Some(1),
        _ => None,
    };
    let kl = KernelLayout::from_parts(&info, bad, |_| Some(0x1000));
    assert_eq!((kl.page_offset_base, kl.image), (None, None));
}
