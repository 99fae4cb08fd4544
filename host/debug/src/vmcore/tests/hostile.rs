//! Hostile files: each kind of bad vmcore has its own error, and random bytes never
//! panic the reader.

use std::sync::OnceLock;

use goblin::elf::header::{EI_CLASS, EI_DATA};
use proptest::prelude::*;

use super::*;

/// headers: 0 the note, 1 the leading zero page, 2 pages 1..5, 3 pages 6..16.
/// A small valid dump: one 64 KiB range, page 0 and 5 zero, two CPUs. Its program
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
