use std::ops::Range;

use proptest::prelude::*;

use super::orc::{OrcEntry, OrcReg, OrcTable, OrcType, OrcVersion};
use super::*;
use crate::memory::fake::FakeMemory;

const TEXT: u64 = 0xffff_ffff_8100_0000;
const STACK: u64 = 0xffff_c900_0001_0000;

/// Code made of named functions, each with one ORC entry for all of it.
#[derive(Default)]
struct FakeCode(Vec<(Range<u64>, &'static str, Option<OrcEntry>)>);

impl FakeCode {
    fn func(mut self, at: u64, name: &'static str, orc: Option<OrcEntry>) -> Self {
        self.0.push((at..at + 0x100, name, orc));
        self
    }
}

impl CodeInfo for FakeCode {
    fn orc(&self, ip: u64) -> Result<Option<OrcEntry>, DebugError> {
        Ok(self.0.iter().find(|f| f.0.contains(&ip)).and_then(|f| f.2))
    }
    fn locate(&self, ip: u64) -> Option<Location> {
        let f = self.0.iter().find(|f| f.0.contains(&ip))?;
        Some(Location {
            function: f.1.to_string(),
            offset: ip - f.0.start,
            module: None,
        })
    }
}

fn call(sp_offset: i16) -> Option<OrcEntry> {
    Some(OrcEntry {
        sp_offset,
        bp_offset: 0,
        sp_reg: OrcReg::Sp,
        bp_reg: OrcReg::Undefined,
        kind: OrcType::Call,
        signal: false,
    })
}

fn end() -> Option<OrcEntry> {
    Some(OrcEntry {
        sp_offset: 0,
        bp_offset: 0,
        sp_reg: OrcReg::Undefined,
        bp_reg: OrcReg::Undefined,
        kind: OrcType::EndOfStack,
        signal: false,
    })
}

fn words(mem: &mut FakeMemory, at: u64, w: &[u64]) {
    mem.put(
        at,
        w.iter().flat_map(|v| v.to_le_bytes()).collect::<Vec<u8>>(),
    );
}

fn start(ip: u64, sp: u64) -> Start {
    Start {
        ip,
        sp,
        bp: 0,
        signal: false,
        regs: None,
    }
}

fn names(frames: &[Frame]) -> Vec<String> {
    frames
        .iter()
        .map(|f| f.function.clone().unwrap_or_default())
        .collect()
}

/// a (16 bytes of frame) → b (8 bytes) → c, the bottom.
fn three_calls() -> (FakeMemory, FakeCode) {
    let (a, b, c) = (TEXT, TEXT + 0x1000, TEXT + 0x2000);
    let mut mem = FakeMemory::default();
    // a's frame: a local, then the return address into b; b's: the return into c.
    words(&mut mem, STACK, &[0xdead, b + 0x10, c + 0x20, 0]);
    let code = FakeCode::default()
        .func(a, "a", call(16))
        .func(b, "b", call(8))
        .func(c, "c", end());
    (mem, code)
}

#[test]
fn call_frames_are_followed_to_the_bottom_of_the_stack() {
    let (mem, code) = three_calls();
    let (frames, end) = unwind(&mem, &code, start(TEXT + 0x40, STACK));
    assert_eq!(names(&frames), ["a+0x40", "b+0x10", "c+0x20"]);
    assert_eq!(frames[1].sp, STACK + 16);
    assert_eq!(frames[2].sp, STACK + 24);
    assert!(frames.iter().all(|f| f.reliable && !f.from_regs));
    assert_eq!(end, TraceEnd::StackEnd);
}

#[test]
fn a_return_address_is_looked_up_at_its_call() {
    // b's call is the last instruction of b; its return address is c's first byte.
    let (_, code) = three_calls();
    let mut mem = FakeMemory::default();
    words(&mut mem, STACK, &[0xdead, TEXT + 0x1100, TEXT + 0x2020]);
    let code = code.func(TEXT + 0x1100, "after_b", call(-64));
    let (frames, _) = unwind(&mem, &code, start(TEXT + 8, STACK));
    // The frame is named by the address (after_b+0x0) but unwound with b's entry
    // (sp + 8): not after_b's bogus one, which would go the wrong way.
    assert_eq!(names(&frames)[..3], ["a+0x8", "after_b+0x0", "c+0x20"]);
}

#[test]
fn an_entry_from_user_space_ends_the_kernel_trace() {
    let (k, entry) = (TEXT, TEXT + 0x1000);
    let mut mem = FakeMemory::default();
    let mut regs = vec![0u64; 21];
    regs[16] = 0x40_1000; // ip
    regs[17] = 0x33; // cs: user
    regs[19] = 0x7ffd_0000; // sp
    words(&mut mem, STACK, &[entry + 8]);
    words(&mut mem, STACK + 8, &regs);
    let regs_entry = Some(OrcEntry {
        sp_offset: 0,
        bp_offset: 0,
        sp_reg: OrcReg::Sp,
        bp_reg: OrcReg::Undefined,
        kind: OrcType::Regs,
        signal: true,
    });
    let code = FakeCode::default().func(k, "do_syscall_64", call(8)).func(
        entry,
        "entry_SYSCALL_64",
        regs_entry,
    );
    let (frames, end) = unwind(&mem, &code, start(k + 0x30, STACK));
    assert_eq!(
        names(&frames),
        ["do_syscall_64+0x30", "entry_SYSCALL_64+0x8"]
    );
    assert_eq!(
        end,
        TraceEnd::UserSpace {
            ip: 0x40_1000,
            sp: 0x7ffd_0000
        }
    );
}

#[test]
fn an_interrupt_frame_goes_on_with_the_interrupted_code() {
    // irq handler → (pt_regs of the interrupted kernel code) → interrupted → bottom.
    let (irq, hit, bottom) = (TEXT, TEXT + 0x1000, TEXT + 0x2000);
    let mut mem = FakeMemory::default();
    let mut regs = vec![0u64; 21];
    regs[4] = STACK + 0x1000; // bp
    regs[16] = hit + 0x44; // ip: the next instruction to run, not a return address
    regs[17] = 0x10; // cs: kernel
    regs[19] = STACK + 0x2000; // sp
    words(&mut mem, STACK, &regs);
    words(&mut mem, STACK + 0x2000, &[bottom + 4]);
    let regs_entry = Some(OrcEntry {
        sp_offset: 0,
        bp_offset: 0,
        sp_reg: OrcReg::Sp,
        bp_reg: OrcReg::Undefined,
        kind: OrcType::Regs,
        signal: true,
    });
    let code = FakeCode::default()
        .func(irq, "asm_sysvec", regs_entry)
        .func(hit, "spin", call(8))
        .func(bottom, "kthread", end());
    let (frames, end) = unwind(&mem, &code, start(irq + 8, STACK));
    assert_eq!(
        names(&frames),
        ["asm_sysvec+0x8", "spin+0x44", "kthread+0x4"]
    );
    assert!(frames[1].from_regs && !frames[2].from_regs);
    assert_eq!(end, TraceEnd::StackEnd);
}

#[test]
fn code_without_orc_data_is_unwound_by_frame_pointer_and_marked_unreliable() {
    let (bpf, caller) = (TEXT, TEXT + 0x1000);
    let mut mem = FakeMemory::default();
    // push %rbp; mov %rsp,%rbp: [bp] = saved bp, [bp+8] = return address.
    words(&mut mem, STACK, &[STACK + 0x40, caller + 2]);
    let code = FakeCode::default()
        .func(bpf, "bpf_prog", None)
        .func(caller, "caller", end());
    let mut s = start(bpf + 1, STACK);
    s.bp = STACK;
    let (frames, end) = unwind(&mem, &code, s);
    assert_eq!(names(&frames), ["bpf_prog+0x1", "caller+0x2"]);
    assert!(frames[0].reliable && !frames[1].reliable);
    assert_eq!(end, TraceEnd::StackEnd);
}

#[test]
fn a_corrupt_stack_keeps_the_frames_before_the_damage() {
    let (mem, code) = three_calls();
    // b's return address overwritten with a data pointer.
    let mut bad = FakeMemory::default();
    words(
        &mut bad,
        STACK,
        &[0xdead, TEXT + 0x1010, 0xffff_8880_1234_5678],
    );
    let (frames, end) = unwind(&bad, &code, start(TEXT + 8, STACK));
    assert_eq!(names(&frames)[..2], ["a+0x8", "b+0x10"]);
    let TraceEnd::Error { message } = end else {
        panic!("{end:?}")
    };
    assert!(message.contains("not kernel text"), "{message}");
    // An unreadable stack word names its address.
    let (frames, end) = unwind(&mem, &code, start(TEXT + 8, STACK + 0x100));
    assert_eq!(frames.len(), 1);
    let TraceEnd::Error { message } = end else {
        panic!("{end:?}")
    };
    assert!(
        message.contains(&format!("{:#x}", STACK + 0x108)),
        "{message}"
    );
}

#[test]
fn a_stack_going_the_wrong_way_is_an_error_not_a_loop() {
    let a = TEXT;
    let mut mem = FakeMemory::default();
    words(&mut mem, STACK + 0xe0, &[0, 0, a + 1]);
    // a claims its caller's frame is below its own.
    let code = FakeCode::default().func(a, "a", call(-8));
    let (frames, end) = unwind(&mem, &code, start(a + 8, STACK + 0x100));
    assert_eq!(frames.len(), 1);
    let TraceEnd::Error { message } = end else {
        panic!("{end:?}")
    };
    assert!(message.contains("wrong way"), "{message}");
}

#[test]
fn an_endless_stack_stops_at_the_frame_limit() {
    let a = TEXT;
    let mut mem = FakeMemory::default();
    words(&mut mem, STACK, &vec![a + 1; MAX_FRAMES * 2]);
    let code = FakeCode::default().func(a, "a", call(8));
    let (frames, end) = unwind(&mem, &code, start(a + 8, STACK));
    assert_eq!(frames.len(), MAX_FRAMES, "{end:?}");
    assert_eq!(end, TraceEnd::Limit);
}

#[test]
fn a_cpu_in_user_space_has_no_kernel_frames() {
    let regs = Registers {
        rip: 0x40_1000,
        rsp: 0x7ffd_0000,
        cs: 0x33,
        ..Default::default()
    };
    let s = Start {
        ip: regs.rip,
        sp: regs.rsp,
        bp: 0,
        signal: true,
        regs: Some(regs),
    };
    let (frames, end) = unwind(&FakeMemory::default(), &FakeCode::default(), s);
    assert!(frames.is_empty());
    assert_eq!(
        end,
        TraceEnd::UserSpace {
            ip: 0x40_1000,
            sp: 0x7ffd_0000
        }
    );
}

#[test]
fn registers_from_the_cpu_feed_entries_based_on_them() {
    // An entry stub whose caller's sp is in r10 (the kernel's realigned stacks).
    let (stub, caller) = (TEXT, TEXT + 0x1000);
    let mut mem = FakeMemory::default();
    words(&mut mem, STACK + 0x80 - 8, &[caller + 3]);
    let code = FakeCode::default()
        .func(
            stub,
            "stub",
            Some(OrcEntry {
                sp_offset: 0,
                bp_offset: 0,
                sp_reg: OrcReg::R10,
                bp_reg: OrcReg::Undefined,
                kind: OrcType::Call,
                signal: false,
            }),
        )
        .func(caller, "caller", end());
    let regs = Registers {
        rip: stub + 5,
        rsp: STACK,
        r10: STACK + 0x80,
        cs: 0x10,
        ..Default::default()
    };
    let s = Start {
        ip: regs.rip,
        sp: regs.rsp,
        bp: 0,
        signal: true,
        regs: Some(regs),
    };
    let (frames, end) = unwind(&mem, &code, s);
    assert_eq!(names(&frames), ["stub+0x5", "caller+0x3"]);
    assert_eq!(end, TraceEnd::StackEnd);
    // Without registers in reach the same entry is a named error.
    let (_, end) = unwind(&mem, &code, start(stub + 5, STACK));
    let TraceEnd::Error { message } = end else {
        panic!("{end:?}")
    };
    assert!(message.contains("r10"), "{message}");
}

#[test]
fn entry_layouts_decode_per_kernel_version() {
    assert_eq!(
        OrcVersion::of_release("6.1.0-57-cloud-amd64"),
        OrcVersion::V1
    );
    assert_eq!(OrcVersion::of_release("5.10.0-30-amd64"), OrcVersion::V1);
    assert_eq!(OrcVersion::of_release("6.3.1"), OrcVersion::V2);
    assert_eq!(
        OrcVersion::of_release("6.12.48+deb13-amd64"),
        OrcVersion::V3
    );
    // sp = SP + 16, bp = PREV_SP - 16, call.
    let flags_v1: u16 = 5 | (1 << 4);
    let e = OrcEntry::decode(entry_bytes(16, -16, flags_v1), OrcVersion::V1);
    assert_eq!(
        (e.sp_reg, e.bp_reg, e.kind, e.signal),
        (OrcReg::Sp, OrcReg::PrevSp, OrcType::Call, false)
    );
    assert_eq!((e.sp_offset, e.bp_offset), (16, -16));
    // v1: regs type 1 is a signal frame; sp undefined + end = the bottom.
    let e = OrcEntry::decode(entry_bytes(0, 0, 5 | (1 << 8)), OrcVersion::V1);
    assert_eq!((e.kind, e.signal), (OrcType::Regs, true));
    assert_eq!(
        OrcEntry::decode(entry_bytes(0, 0, 1 << 10), OrcVersion::V1).kind,
        OrcType::EndOfStack
    );
    assert_eq!(
        OrcEntry::decode(entry_bytes(0, 0, 0), OrcVersion::V1).kind,
        OrcType::Undefined
    );
    // v2: signal bit 10, end bit 11.
    assert_eq!(
        OrcEntry::decode(entry_bytes(0, 0, 1 << 11), OrcVersion::V2).kind,
        OrcType::EndOfStack
    );
    assert!(OrcEntry::decode(entry_bytes(8, 0, 5 | (1 << 10)), OrcVersion::V2).signal);
    // v3: 3-bit type (1 = end of stack, 2 = call, 4 = partial regs), signal bit 11.
    assert_eq!(
        OrcEntry::decode(entry_bytes(0, 0, 1 << 8), OrcVersion::V3).kind,
        OrcType::EndOfStack
    );
    let e = OrcEntry::decode(entry_bytes(8, 0, 5 | (4 << 8) | (1 << 11)), OrcVersion::V3);
    assert_eq!((e.kind, e.signal), (OrcType::RegsPartial, true));
    assert_eq!(
        OrcEntry::decode(entry_bytes(8, 0, 5 | (7 << 8)), OrcVersion::V3).kind,
        OrcType::Unknown(7)
    );
}

fn entry_bytes(sp: i16, bp: i16, flags: u16) -> [u8; 6] {
    let mut b = [0u8; 6];
    b[0..2].copy_from_slice(&sp.to_le_bytes());
    b[2..4].copy_from_slice(&bp.to_le_bytes());
    b[4..6].copy_from_slice(&flags.to_le_bytes());
    b
}

/// An ORC table in fake memory with entries at `ips` (relative offsets, as the
/// kernel stores them), entry i having sp_offset i.
fn table(ips: &[u64]) -> (FakeMemory, OrcTable) {
    let (ip_table, entries) = (0xffff_ffff_82c0_0000u64, 0xffff_ffff_82d0_0000u64);
    let mut mem = FakeMemory::default();
    let rel: Vec<u8> = ips
        .iter()
        .enumerate()
        .flat_map(|(i, ip)| ((ip.wrapping_sub(ip_table + i as u64 * 4)) as i32).to_le_bytes())
        .collect();
    mem.put(ip_table, rel);
    let ents: Vec<u8> = (0..ips.len())
        .flat_map(|i| entry_bytes(i as i16, 0, 5))
        .collect();
    mem.put(entries, ents);
    let t = OrcTable {
        ip_table,
        entries,
        count: ips.len() as u64,
        version: OrcVersion::V1,
    };
    (mem, t)
}

#[test]
fn the_table_lookup_finds_the_last_entry_at_or_below() {
    let (mem, t) = table(&[TEXT, TEXT + 0x10, TEXT + 0x10, TEXT + 0x40]);
    let at = |ip| t.find(&mem, ip).unwrap().map(|e| e.sp_offset);
    assert_eq!(at(TEXT - 1), None);
    assert_eq!(at(TEXT), Some(0));
    assert_eq!(at(TEXT + 0xf), Some(0));
    // Of duplicates, the rightmost (section terminators come first).
    assert_eq!(at(TEXT + 0x10), Some(2));
    assert_eq!(at(TEXT + 0x1000), Some(3));
    // A table claiming more entries than any kernel has is not searched.
    let huge = OrcTable {
        count: u64::MAX,
        ..t
    };
    assert_eq!(huge.find(&mem, TEXT).unwrap(), None);
    // One claiming more than memory holds is an error, not a panic.
    let long = OrcTable { count: 1000, ..t };
    assert!(long.find(&mem, TEXT + 0x40).is_err());
}

proptest! {
    /// Whatever the stack and the ORC data hold, the walk ends, within the limit,
    /// without panicking.
    #[test]
    fn any_stack_and_orc_data_end_the_walk(
        stack in proptest::collection::vec(any::<u64>(), 0..64),
        picks in proptest::collection::vec(0u64..4, 0..64),
        entries in proptest::collection::vec((any::<i16>(), any::<i16>(), any::<u16>()), 4),
        sp_off in 0u64..64,
    ) {
        let mut mem = FakeMemory::default();
        // Stack words: arbitrary, or return addresses into the fake functions.
        let w: Vec<u64> = stack.iter().zip(picks.iter().chain(std::iter::repeat(&9)))
            .map(|(v, p)| if *p < 4 { TEXT + p * 0x1000 + (v & 0xff) } else { *v })
            .collect();
        words(&mut mem, STACK, &w);
        let mut code = FakeCode::default();
        for (i, (sp, bp, flags)) in entries.iter().enumerate() {
            let e = OrcEntry::decode(entry_bytes(*sp, *bp, *flags), OrcVersion::V1);
            code = code.func(TEXT + i as u64 * 0x1000, "f", Some(e));
        }
        let mut s = start(TEXT + 1, STACK + sp_off * 8);
        s.bp = STACK + 8;
        let (frames, _) = unwind(&mem, &code, s);
        prop_assert!(frames.len() <= MAX_FRAMES);
    }
}
