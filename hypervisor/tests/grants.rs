//! Grants of guest RAM frames, end to end under KVM: tiny protected-mode guests write
//! pages, grant them through a real `SharedRegion`'s grant table (mapped as the Vesper
//! device's BAR2) and revoke them; the host reads and writes only what is granted. A
//! guest that scribbles its grant table gets every access refused while another VM
//! runs undisturbed. Each test skips loudly if /dev/kvm cannot be opened.
//!
//! Layout: 1 MiB of RAM, code at 0x1000, BAR0 at 1 MiB, BAR2 = a 2 MiB `SharedRegion`
//! at 2 MiB (the smallest real region, aligned to its size, so out of real mode's reach:
//! the guests switch to 32-bit flat protected mode first).

use std::mem::offset_of;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vesper_hypervisor::{
    BusDevice, BusRange, GuestFrameGrants, HypervisorError, Stop, VesperConfig, Vm,
};
use vesper_shared_abi::{
    grant_entry_offset, RegionHeader, DATA_AREA_OFFSET, GRANT_ENTRIES, GRANT_GUEST_FRAMES,
    GRANT_OWNER_RELAY, GRANT_READ, GRANT_STATE_ACTIVE, GRANT_STATE_FREE, GRANT_TABLE_OFFSET,
    GRANT_WRITE, HOST_FEATURE_GUEST_FRAMES, MIN_REGION_SIZE,
};
use vesper_shmem::grant::GrantNeed;
use vesper_shmem::{SharedRegion, ShmemError};

mod common;
use common::asm::{self, PROTECTED_MODE_PRELUDE};
use common::{enter_real_mode, kvm_available, vm, LOAD, MIB, RUN};

const BAR0: u64 = MIB;
const BAR2: u64 = 2 * MIB;
/// The guest calls the host here with a step number in eax (the host acts at once, on
/// the vCPU thread, while the guest waits in the port write).
const STEP_PORT: u16 = 0x7000;
/// The guest reports values here.
const REPORT_PORT: u16 = 0x7004;

const PAGE_A: u64 = 0x2_0000; // pattern, granted read-only
const PAGE_B: u64 = 0x2_1000; // secret, never granted
const PAGE_C: u64 = 0x2_2000; // granted writable, the host writes into it
const PATTERN: u32 = 0x5650_0000;
const SECRET: u32 = 0x5ec2_e75e;
/// Reported instead of granting when the host does not offer guest-frame grants.
const NO_FRAMES: u32 = 0x0f0f_0f0f;
const HOST_WROTE: &[u8; 8] = b"host->gu";

/// Assembles a 32-bit guest (`main` and what follows) behind the protected-mode
/// prelude, linked at `LOAD`, with this test's addresses and ports as assembler symbols.
fn assemble(body: &str) -> Vec<u8> {
    asm::assemble(
        &format!(
            r#"{PROTECTED_MODE_PRELUDE}
    .set BAR2, {BAR2:#x}
    .set TABLE, {table:#x}
    .set STEP_PORT, {STEP_PORT:#x}
    .set REPORT_PORT, {REPORT_PORT:#x}
{body}
"#,
            table = BAR2 + GRANT_TABLE_OFFSET,
        ),
        LOAD,
    )
}

/// A grant the guest writes into entry `grant_ref`; `generation` 0 means "the
/// generation the guest is in".
#[derive(Clone, Copy)]
struct Step {
    grant_ref: u32,
    gpa: u64,
    len: u32,
    access: u32,
    generation: u32,
    state: u32,
}

impl Step {
    fn frames(grant_ref: u32, gpa: u64, access: u32) -> Self {
        Self {
            grant_ref,
            gpa,
            len: 4096,
            access: access | GRANT_GUEST_FRAMES,
            generation: 0,
            state: GRANT_STATE_ACTIVE,
        }
    }
}

/// The guest of the grant walk-through. It checks the host offers guest-frame grants
/// (else reports `NO_FRAMES` and stops), starts a new generation, fills page A with
/// `PATTERN + i` and page B with `SECRET`, then for each step writes the step's entry
/// into the grant table (state last) and calls the host on `STEP_PORT` with the step
/// number. Finally it reports the first two dwords of page C and halts.
fn walk_guest(steps: &[Step]) -> Vec<u8> {
    let mut table = String::new();
    for s in steps {
        table += &format!(
            "    .long {:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}, {:#x}\n",
            s.grant_ref,
            s.gpa as u32,
            (s.gpa >> 32) as u32,
            s.len,
            s.access,
            GRANT_OWNER_RELAY,
            s.generation,
            s.state
        );
    }
    assemble(&format!(
        r#"
main:
    mov eax, [BAR2 + {features}]
    test eax, {HOST_FEATURE_GUEST_FRAMES}
    jnz 1f
    mov eax, {NO_FRAMES:#x}
    mov dx, REPORT_PORT
    out dx, eax
    hlt
1:  mov eax, [BAR2 + {generation}]
    inc eax
    jnz 2f
    inc eax
2:  mov [BAR2 + {generation}], eax
    mov ebp, eax
    cld
    mov edi, {PAGE_A:#x}
    mov ecx, 1024
    mov eax, {PATTERN:#x}
3:  stosd
    inc eax
    loop 3b
    mov edi, {PAGE_B:#x}
    mov ecx, 1024
    mov eax, {SECRET:#x}
    rep stosd
    mov esi, offset steps
    xor ebx, ebx
step:
    cmp ebx, {n}
    je done
    mov edi, [esi]
    shl edi, 5
    add edi, TABLE
    mov eax, [esi + 4]
    mov [edi], eax
    mov eax, [esi + 8]
    mov [edi + 4], eax
    mov eax, [esi + 12]
    mov [edi + 8], eax
    mov eax, [esi + 16]
    mov [edi + 12], eax
    mov eax, [esi + 20]
    mov [edi + 16], eax
    mov eax, [esi + 24]
    test eax, eax
    jnz 4f
    mov eax, ebp
4:  mov [edi + 20], eax
    mov dword ptr [edi + 28], 0
    mov eax, [esi + 28]
    mov [edi + 24], eax
    mov eax, ebx
    mov dx, STEP_PORT
    out dx, eax
    add esi, 32
    inc ebx
    jmp step
done:
    mov dx, REPORT_PORT
    mov eax, [{PAGE_C:#x}]
    out dx, eax
    mov eax, [{PAGE_C:#x} + 4]
    out dx, eax
    hlt
    .balign 4
steps:
{table}
"#,
        features = offset_of!(RegionHeader, host_features),
        generation = offset_of!(RegionHeader, generation),
        n = steps.len(),
    ))
}

/// The guest that scribbles: fills the whole grant table with xorshift32 bytes from
/// `seed`, calls `STEP_PORT` once after the first pass, and keeps scribbling forever.
fn scribble_guest(seed: u32) -> Vec<u8> {
    assemble(&format!(
        r#"
main:
    mov eax, {seed:#x}
    xor esi, esi
pass:
    mov edi, TABLE
    mov ecx, {dwords}
fill:
    mov edx, eax
    shl edx, 13
    xor eax, edx
    mov edx, eax
    shr edx, 17
    xor eax, edx
    mov edx, eax
    shl edx, 5
    xor eax, edx
    mov [edi], eax
    add edi, 4
    loop fill
    test esi, esi
    jnz 1f
    mov ebx, eax
    mov dx, STEP_PORT
    out dx, eax
    mov eax, ebx
1:  inc esi
    jmp pass
"#,
        seed = seed.max(1),
        dwords = GRANT_ENTRIES * 32 / 4,
    ))
}

/// Calls `on_step(value)` for each dword written to `STEP_PORT`, records dwords written
/// to `REPORT_PORT`.
struct HostPorts {
    on_step: Box<dyn FnMut(u32) + Send>,
    reports: Vec<u32>,
}

impl BusDevice for HostPorts {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        let &[a, b, c, d] = data else { return };
        let value = u32::from_le_bytes([a, b, c, d]);
        match offset {
            0 => (self.on_step)(value),
            4 => self.reports.push(value),
            _ => {}
        }
    }
}

struct Machine {
    vm: Vm,
    region: Arc<SharedRegion>,
    ports: Arc<Mutex<HostPorts>>,
}

/// A 1 MiB VM running `code`, with the Vesper device over a fresh 2 MiB region (host
/// `features` offered) and the host ports calling `on_step`.
fn machine(
    code: &[u8],
    features: u32,
    on_step: impl FnOnce(GuestFrameGrants, Arc<SharedRegion>) -> Box<dyn FnMut(u32) + Send>,
) -> Machine {
    let region = Arc::new(SharedRegion::create("grants-test", MIN_REGION_SIZE).unwrap());
    region.offer_host_features(features).unwrap();
    let mut vm = vm(1, MIB, false, Box::new(std::io::sink()));
    enter_real_mode(&mut vm, code);
    vm.add_vesper_device(VesperConfig {
        peer_id: 1,
        bar0: BAR0,
        bar2: BAR2,
        region: region.fd(),
        region_size: region.size(),
    })
    .expect("add the Vesper device");
    let ports = Arc::new(Mutex::new(HostPorts {
        on_step: on_step(vm.frame_grants().clone(), region.clone()),
        reports: Vec::new(),
    }));
    vm.register_pio(BusRange::new(STEP_PORT.into(), 8).unwrap(), ports.clone())
        .unwrap();
    Machine { vm, region, ports }
}

fn need(region: &SharedRegion) -> GrantNeed {
    GrantNeed {
        access: GRANT_READ,
        owner: GRANT_OWNER_RELAY,
        generation: region.header().unwrap().generation,
    }
}

/// What the host saw at each step: (step, what it tried, the result).
type Seen = Arc<Mutex<Vec<(u32, &'static str, Result<Vec<u8>, HypervisorError>)>>>;

fn walk_steps() -> Vec<Step> {
    let a = Step::frames(3, PAGE_A, GRANT_READ);
    vec![
        /* 0 */ a,
        /* 1 */ Step::frames(5, PAGE_C, GRANT_READ | GRANT_WRITE),
        /* 2 */
        Step {
            state: GRANT_STATE_FREE,
            ..a
        }, // revoked
        /* 3 */
        Step {
            gpa: BAR2 + DATA_AREA_OFFSET,
            ..a
        }, // the region itself: device memory
        /* 4 */
        Step {
            gpa: MIB - 0x1000,
            len: 0x2000,
            ..a
        }, // runs past RAM into BAR0
        /* 5 */
        Step {
            gpa: PAGE_A + 0x10,
            ..a
        }, // misaligned
        /* 6 */
        Step {
            generation: 0xdead,
            ..a
        }, // an older generation
        /* 7 */
        Step {
            access: GRANT_READ,
            gpa: DATA_AREA_OFFSET,
            ..a
        }, // a region-range grant
    ]
}

/// The host side of the walk: at each step, the accesses a host would try.
fn walk_host(
    seen: Seen,
) -> impl FnOnce(GuestFrameGrants, Arc<SharedRegion>) -> Box<dyn FnMut(u32) + Send> {
    move |grants, region| {
        Box::new(move |step| {
            let n = need(&region);
            let log = |what, r| seen.lock().unwrap().push((step, what, r));
            log("read A", grants.read(&region, 3, n, 0, 4096));
            if step == 0 {
                log("read B next door", grants.read(&region, 3, n, 4096, 4096));
                log("read A and B", grants.read(&region, 3, n, 0, 8192));
                log("read never granted", grants.read(&region, 4, n, 0, 4096));
                log(
                    "write read-only",
                    grants.write(&region, 3, n, 0, b"x").map(|()| Vec::new()),
                );
                log(
                    "as a region range",
                    region
                        .grant(3, n)
                        .map(|_| Vec::new())
                        .map_err(HypervisorError::FrameGrant),
                );
            }
            if step == 1 {
                log(
                    "write C",
                    grants
                        .write(&region, 5, n, 0, HOST_WROTE)
                        .map(|()| Vec::new()),
                );
            }
        })
    }
}

fn pattern_page() -> Vec<u8> {
    (0..1024u32)
        .flat_map(|i| (PATTERN + i).to_le_bytes())
        .collect()
}

/// Runs the walk on a fresh machine and checks every step; returns the machine.
fn run_walk() -> Machine {
    let seen: Seen = Arc::default();
    let mut m = machine(
        &walk_guest(&walk_steps()),
        HOST_FEATURE_GUEST_FRAMES,
        walk_host(seen.clone()),
    );
    assert_eq!(m.vm.run(RUN).expect("run").stop, Stop::Halted);
    let seen = seen.lock().unwrap();
    let at = |step: u32, what: &str| {
        &seen
            .iter()
            .find(|(s, w, _)| *s == step && *w == what)
            .unwrap_or_else(|| panic!("step {step} {what} never ran: {:?}", *seen))
            .2
    };
    use HypervisorError as H;
    use ShmemError as S;
    // Granted: the host reads exactly the guest's pattern.
    assert_eq!(at(0, "read A").as_ref().unwrap(), &pattern_page());
    // Next door, more than granted, never granted, wrong access, wrong transport.
    assert!(matches!(
        at(0, "read B next door"),
        Err(H::GrantOutside {
            grant_ref: 3,
            granted: 4096,
            at: 4096,
            ..
        })
    ));
    assert!(matches!(at(0, "read A and B"), Err(H::GrantOutside { .. })));
    assert!(matches!(
        at(0, "read never granted"),
        Err(H::FrameGrant(S::GrantInactive(4)))
    ));
    assert!(matches!(
        at(0, "write read-only"),
        Err(H::FrameGrant(S::GrantAccess { .. }))
    ));
    assert!(matches!(
        at(0, "as a region range"),
        Err(H::FrameGrant(S::GrantIsGuestFrames(3)))
    ));
    assert!(at(1, "write C").is_ok());
    assert!(at(1, "read A").is_ok(), "grant 3 still live at step 1");
    // Revoked, then every kind of bad entry, each with its own error.
    assert!(matches!(
        at(2, "read A"),
        Err(H::FrameGrant(S::GrantInactive(3)))
    ));
    assert!(
        matches!(at(3, "read A"), Err(H::GrantNotGuestRam { gpa, .. }) if *gpa == BAR2 + DATA_AREA_OFFSET)
    );
    assert!(matches!(
        at(4, "read A"),
        Err(H::GrantNotGuestRam { len: 0x2000, .. })
    ));
    assert!(matches!(
        at(5, "read A"),
        Err(H::FrameGrant(S::GrantFrameMisaligned { .. }))
    ));
    assert!(matches!(
        at(6, "read A"),
        Err(H::FrameGrant(S::GrantStale { found: 0xdead, .. }))
    ));
    assert!(matches!(
        at(7, "read A"),
        Err(H::FrameGrant(S::GrantNotGuestFrames(3)))
    ));
    // No copy the host got holds a byte of page B, the never-granted neighbour.
    let secret = SECRET.to_le_bytes();
    let copies: Vec<&Vec<u8>> = seen
        .iter()
        .filter_map(|(_, _, r)| r.as_ref().ok())
        .filter(|c| !c.is_empty())
        .collect();
    assert!(!copies.is_empty());
    assert!(
        copies.iter().all(|c| !c.windows(4).any(|w| w == secret)),
        "page B leaked"
    );
    // The guest read back what the host wrote into its page C.
    let host_wrote: Vec<u32> = HOST_WROTE
        .chunks(4)
        .map(|c| u32::from_le_bytes(c.try_into().unwrap()))
        .collect();
    assert_eq!(m.ports.lock().unwrap().reports, host_wrote);
    drop(seen);
    m
}

#[test]
fn the_host_reads_and_writes_granted_guest_frames_and_nothing_else() {
    if !kvm_available("guest frame grants") {
        return;
    }
    let m = run_walk();
    // After the run, through the Vm: grant 5 is still live, grant 3 is not.
    let n = need(&m.region);
    assert_eq!(
        m.vm.frame_grants().read(&m.region, 5, n, 0, 8).unwrap(),
        HOST_WROTE
    );
    assert!(m.vm.frame_grants().read(&m.region, 3, n, 0, 8).is_err());
    assert!(m
        .vm
        .frame_grants()
        .write(&m.region, 5, n, 4090, b"too long")
        .is_err());
    // Copied: the walk's two reads of A and its write of C, then the read of C above.
    // Refused and counted: the walk's four at step 0 and one per step 2-7, then two above
    // (`region.grant` is the region transport's check, not a frame access).
    let stats = m.vm.frame_grants().stats();
    assert_eq!(stats.granted, 4);
    assert_eq!(stats.refused, 12);
    // The guest touched only RAM, the region (a memslot) and its ports.
    assert_eq!(m.vm.unmapped_accesses().total(), 0);
}

#[test]
fn a_guest_grants_no_frames_when_the_host_does_not_offer_them() {
    if !kvm_available("guest frame grants not offered") {
        return;
    }
    let seen: Seen = Arc::default();
    let mut m = machine(&walk_guest(&walk_steps()), 0, walk_host(seen.clone()));
    assert_eq!(m.vm.run(RUN).expect("run").stop, Stop::Halted);
    assert_eq!(m.ports.lock().unwrap().reports, vec![NO_FRAMES]);
    assert!(seen.lock().unwrap().is_empty());
    let free = |r| {
        m.region
            .read_obj::<vesper_shared_abi::GrantEntry>(grant_entry_offset(r).unwrap())
            .unwrap()
            .state
    };
    assert!((0..GRANT_ENTRIES).all(|r| free(r) == GRANT_STATE_FREE));
}

#[test]
fn a_guest_scribbling_its_grant_table_gets_every_access_refused_while_another_vm_runs() {
    if !kvm_available("scribbled grant table") {
        return;
    }
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    eprintln!("scribble seed {seed:#x}");
    let scribbling = Arc::new(AtomicBool::new(false));
    let flag = scribbling.clone();
    let mut bad = machine(
        &scribble_guest(seed),
        HOST_FEATURE_GUEST_FRAMES,
        move |_, _| Box::new(move |_| flag.store(true, Ordering::Release)),
    );
    let grants = bad.vm.frame_grants().clone();
    let region = bad.region.clone();
    let stop_bad = bad.vm.stop_handle();
    let bad_vm = std::thread::spawn(move || bad.vm.run(RUN));

    // The well-behaved VM runs its whole walk meanwhile.
    let good = std::thread::spawn(run_walk);

    let start = Instant::now();
    while !scribbling.load(Ordering::Acquire) {
        assert!(start.elapsed() < RUN, "the scribbler never finished a pass");
        std::thread::sleep(Duration::from_millis(1));
    }
    // Read every entry, over and over, while the guest keeps rewriting the table.
    let mut accesses = 0u64;
    let reading = Instant::now();
    while reading.elapsed() < Duration::from_millis(1500) {
        for r in 0..GRANT_ENTRIES {
            let n = GrantNeed {
                access: 0,
                owner: GRANT_OWNER_RELAY,
                generation: region.header().unwrap().generation,
            };
            let read = grants.read(&region, r, n, 0, 4096);
            let write = grants.write(&region, r, n, 0, b"x");
            for e in [read.err(), write.err()] {
                accesses += 1;
                match e {
                    Some(HypervisorError::FrameGrant(e)) => assert!(e.is_guest_misbehaviour()),
                    Some(
                        HypervisorError::GrantNotGuestRam { .. }
                        | HypervisorError::GrantOutside { .. },
                    ) => {}
                    other => {
                        panic!("seed {seed:#x}: entry {r}: not refused as misbehaviour: {other:?}")
                    }
                }
            }
        }
    }
    let secs = reading.elapsed().as_secs() + 1;
    let stats = grants.stats();
    assert_eq!(stats.granted, 0);
    assert_eq!(stats.refused, accesses);
    assert!(accesses > 1000, "only {accesses} accesses");
    assert!(
        stats.logged <= u64::from(vesper_hypervisor::grants::LOG_BURST) * (secs + 1),
        "{stats:?}"
    );

    // The good VM's walk passed (its asserts ran in its thread); the scribbler still
    // runs: nothing it did stopped the host or its vCPU, and it ends when told to.
    let good = good.join().expect("the other VM's walk");
    assert_eq!(good.vm.frame_grants().stats().granted, 3);
    assert!(!bad_vm.is_finished(), "the scribbler is still running");
    stop_bad.stop();
    assert_eq!(
        bad_vm.join().unwrap().expect("scribbler run").stop,
        Stop::HostStopped
    );
}
