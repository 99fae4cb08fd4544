//! The protocol target over a fake VM: real remote-protocol packets over a socket pair,
//! checked against what the fake VM saw.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use vesper_hypervisor::debug::{HwBreakpoint, HwKind};
use vesper_hypervisor::{
    DebugStop, GuestDebug, GuestDebugSupport, HypervisorError, ResumeAction, StopCause,
    VcpuSnapshot,
};

use super::memory::Mmu;
use super::{server, DebugVm, GdbServer};

const RAM: usize = 64 << 10;
const TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
struct State {
    vcpus: Vec<VcpuSnapshot>,
    ram: Vec<u8>,
    paused: bool,
    ended: bool,
    debug: GuestDebug,
    support: Option<GuestDebugSupport>,
    resumes: Vec<Vec<ResumeAction>>,
    /// Stops delivered, one per resume, while running.
    stops: VecDeque<DebugStop>,
}

/// A VM in a mutex: RAM at 0 with paging off, two vCPUs.
#[derive(Clone)]
struct FakeVm(Arc<Mutex<State>>);

const KVM_PVM: GuestDebugSupport = GuestDebugSupport {
    single_step: true,
    sw_breakpoints: false,
    hw_breakpoints: true,
    watchpoints: false,
    why_not: "kvm_pvm",
};
const HARDWARE: GuestDebugSupport = GuestDebugSupport {
    single_step: true,
    sw_breakpoints: true,
    hw_breakpoints: true,
    watchpoints: true,
    why_not: "",
};

impl FakeVm {
    fn new(support: GuestDebugSupport) -> Self {
        let vcpus = (0..2)
            .map(|i| VcpuSnapshot {
                vcpu: i,
                rip: 0x1000 + u64::from(i),
                rflags: 0x2,
                gprs: [0x11 * (u64::from(i) + 1); 16],
                ..Default::default()
            })
            .collect();
        let mut ram = vec![0u8; RAM];
        ram[0x2000..0x2006].copy_from_slice(b"vesper");
        Self(Arc::new(Mutex::new(State {
            vcpus,
            ram,
            support: Some(support),
            ..State::default()
        })))
    }

    fn st(&self) -> MutexGuard<'_, State> {
        self.0.lock().unwrap()
    }

    fn check_paused(&self) -> Result<(), HypervisorError> {
        let st = self.st();
        if st.ended {
            Err(HypervisorError::VmEnded)
        } else if !st.paused {
            Err(HypervisorError::VmNotPaused)
        } else {
            Ok(())
        }
    }
}

impl DebugVm for FakeVm {
    fn vcpu_count(&self) -> u32 {
        self.st().vcpus.len() as u32
    }
    fn support(&self) -> GuestDebugSupport {
        self.st().support.unwrap()
    }
    fn pause(&self, _: Duration) -> Result<(), HypervisorError> {
        let mut st = self.st();
        if st.ended {
            return Err(HypervisorError::VmEnded);
        }
        st.paused = true;
        Ok(())
    }
    fn is_paused(&self) -> bool {
        self.st().paused
    }
    fn ended(&self) -> bool {
        self.st().ended
    }
    fn resume(&self, actions: &[ResumeAction]) -> Result<(), HypervisorError> {
        self.check_paused()?;
        let mut st = self.st();
        st.resumes.push(actions.to_vec());
        st.paused = false;
        Ok(())
    }
    fn wait_stop(&self, timeout: Duration) -> Result<Option<DebugStop>, HypervisorError> {
        {
            let mut st = self.st();
            if st.ended {
                return Err(HypervisorError::VmEnded);
            }
            if !st.paused {
                if let Some(stop) = st.stops.pop_front() {
                    st.paused = true;
                    st.vcpus[stop.vcpu as usize].rip = stop.pc;
                    return Ok(Some(stop));
                }
            }
        }
        std::thread::sleep(timeout.min(Duration::from_millis(5)));
        Ok(None)
    }
    fn registers(&self, vcpu: u32) -> Result<VcpuSnapshot, HypervisorError> {
        self.check_paused()?;
        let st = self.st();
        let count = st.vcpus.len() as u32;
        st.vcpus
            .get(vcpu as usize)
            .cloned()
            .ok_or(HypervisorError::NoSuchVcpu { vcpu, count })
    }
    fn set_registers(&self, regs: &VcpuSnapshot) -> Result<(), HypervisorError> {
        self.check_paused()?;
        let mut st = self.st();
        let now = &mut st.vcpus[regs.vcpu as usize];
        if now.segments != regs.segments {
            return Err(HypervisorError::RegisterRefused("segments"));
        }
        *now = regs.clone();
        Ok(())
    }
    fn set_guest_debug(&self, config: GuestDebug) -> Result<(), HypervisorError> {
        self.check_paused()?;
        self.st().debug = config;
        Ok(())
    }
    fn read_phys(&self, gpa: u64, buf: &mut [u8]) -> Result<(), HypervisorError> {
        let st = self.st();
        let src = usize::try_from(gpa)
            .ok()
            .and_then(|a| st.ram.get(a..a.checked_add(buf.len())?))
            .ok_or(HypervisorError::NotGuestRam {
                gpa,
                len: buf.len() as u64,
            })?;
        buf.copy_from_slice(src);
        Ok(())
    }
    fn write_phys(&self, gpa: u64, data: &[u8]) -> Result<(), HypervisorError> {
        let mut st = self.st();
        let dst = usize::try_from(gpa)
            .ok()
            .and_then(|a| st.ram.get_mut(a..a.checked_add(data.len())?))
            .ok_or(HypervisorError::NotGuestRam {
                gpa,
                len: data.len() as u64,
            })?;
        dst.copy_from_slice(data);
        Ok(())
    }
}

/// A hand-made remote-protocol client (acks on, run-length encoding decoded).
struct Gdb(UnixStream);

impl Gdb {
    fn packet(&mut self, body: &str) {
        let sum = body.bytes().fold(0u8, u8::wrapping_add);
        // A server that closed shows in the reply (None), not here.
        let _ = write!(self.0, "${body}#{sum:02x}");
    }

    fn byte(&mut self) -> Option<u8> {
        let mut b = [0u8];
        match self.0.read(&mut b) {
            Ok(1) => Some(b[0]),
            _ => None,
        }
    }

    /// The next packet's body, or None at EOF.
    fn reply(&mut self) -> Option<String> {
        while self.byte()? != b'$' {}
        let mut raw = Vec::new();
        loop {
            match self.byte()? {
                b'#' => break,
                b => raw.push(b),
            }
        }
        self.byte()?;
        self.byte()?;
        let _ = self.0.write_all(b"+");
        let mut out: Vec<u8> = Vec::new();
        let mut i = 0;
        while i < raw.len() {
            if raw[i] == b'*' && i + 1 < raw.len() {
                let last = *out.last().unwrap();
                out.extend(std::iter::repeat_n(last, usize::from(raw[i + 1] - 29)));
                i += 2;
            } else {
                out.push(raw[i]);
                i += 1;
            }
        }
        Some(String::from_utf8(out).unwrap())
    }

    fn ask(&mut self, body: &str) -> String {
        self.packet(body);
        self.reply().unwrap_or_else(|| panic!("no reply to {body}"))
    }
}

/// A session over a socket pair on its own thread; returns the client side.
fn session(vm: &FakeVm) -> (Gdb, std::thread::JoinHandle<()>) {
    let (a, b) = UnixStream::pair().unwrap();
    a.set_read_timeout(Some(TIMEOUT)).unwrap();
    let vm = vm.clone();
    let t = std::thread::spawn(move || server::serve("test", vm, b));
    let mut gdb = Gdb(a);
    assert!(gdb
        .ask("qSupported:swbreak+;hwbreak+")
        .contains("PacketSize"));
    (gdb, t)
}

fn le64(hex: &str) -> u64 {
    u64::from_str_radix(hex, 16).unwrap().swap_bytes()
}

#[test]
fn registers_read_and_written_in_gdbs_layout() {
    let vm = FakeVm::new(KVM_PVM);
    {
        let mut st = vm.st();
        st.vcpus[0].gprs[6] = 0x6666; // rsp in the snapshot
        st.vcpus[0].gprs[7] = 0x7777; // rbp
    }
    let (mut gdb, t) = session(&vm);
    assert!(vm.is_paused(), "attaching stops the VM");
    assert!(gdb.ask("?").starts_with('T'));
    assert_eq!(gdb.ask("Hg1"), "OK");
    let g = gdb.ask("g");
    assert_eq!(le64(&g[0..16]), 0x11, "rax");
    assert_eq!(
        le64(&g[6 * 16..7 * 16]),
        0x7777,
        "gdb's 7th register is rbp"
    );
    assert_eq!(
        le64(&g[7 * 16..8 * 16]),
        0x6666,
        "gdb's 8th register is rsp"
    );
    assert_eq!(le64(&g[16 * 16..17 * 16]), 0x1000, "rip");
    // One register: rip is gdb's number 16 (0x10).
    assert_eq!(le64(&gdb.ask("p10")), 0x1000);
    // Writes: one register, then all of them.
    assert_eq!(
        gdb.ask(&format!("P0={:016x}", 0x1234u64.swap_bytes())),
        "OK"
    );
    assert_eq!(vm.st().vcpus[0].gprs[0], 0x1234);
    let mut all = gdb.ask("g");
    all.replace_range(16..32, &format!("{:016x}", 0x55u64.swap_bytes()));
    assert_eq!(gdb.ask(&format!("G{all}")), "OK");
    assert_eq!(vm.st().vcpus[0].gprs[1], 0x55, "rbx");
    // Thread 2 is vCPU 1; a segment change is refused with an error, not a hang.
    assert_eq!(gdb.ask("Hg2"), "OK");
    assert_eq!(le64(&gdb.ask("p10")), 0x1001);
    assert!(gdb.ask("P12=08000000").starts_with('E'), "cs is refused");
    assert!(gdb.ask("P28=00000000000000000000").starts_with('E'), "st0");
    let threads = gdb.ask("qfThreadInfo");
    assert_eq!(threads, "m01,02");
    assert_eq!(gdb.ask("D"), "OK");
    t.join().unwrap();
    assert!(!vm.is_paused(), "detached: the VM runs again");
}

#[test]
fn memory_is_read_and_written_and_unmapped_addresses_are_errors() {
    let vm = FakeVm::new(KVM_PVM);
    let (mut gdb, t) = session(&vm);
    assert_eq!(gdb.ask("m2000,6"), hex(b"vesper"));
    assert_eq!(gdb.ask(&format!("M2000,3:{}", hex(b"VES"))), "OK");
    assert_eq!(&vm.st().ram[0x2000..0x2006], b"VESper");
    // Past RAM: an error; across its end: the part that is RAM.
    assert_eq!(gdb.ask(&format!("m{:x},4", RAM + 0x100)), "E0e");
    assert_eq!(gdb.ask(&format!("m{:x},4", RAM - 2)).len(), 4);
    assert_eq!(
        gdb.ask(&format!("M{:x},2:0000", RAM + 4)).chars().next(),
        Some('E')
    );
    gdb.packet("k");
    t.join().unwrap();
    assert!(!vm.is_paused() && !vm.ended(), "kill is a detach");
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn long_mode_addresses_walk_the_guests_page_tables() {
    let vm = FakeVm::new(KVM_PVM);
    // PML4 at 0x1000 -> PDPT 0x3000 -> PD 0x4000 -> PT 0x5000 -> page 0x2000.
    let va: u64 = 0xffff_8000_0000_0000 | 0x2000;
    let idx = |level: u32| (va >> (12 + 9 * level)) & 0x1ff;
    let set = |table: u64, index: u64, entry: u64| {
        let at = (table + index * 8) as usize;
        vm.st().ram[at..at + 8].copy_from_slice(&entry.to_le_bytes());
    };
    set(0x1000, idx(3), 0x3003);
    set(0x3000, idx(2), 0x4003);
    set(0x4000, idx(1), 0x5003);
    set(0x5000, idx(0), 0x2003);
    let regs = VcpuSnapshot {
        cr0: 1 << 31,
        cr3: 0x1000,
        efer: 0x500,
        ..Default::default()
    };
    let mmu = Mmu::of(&regs);
    let mut b = [0u8; 6];
    assert_eq!(mmu.read(&vm, va, &mut b), Ok(6));
    assert_eq!(&b, b"vesper");
    // The next page has no entry: a read across stops there; a write writes nothing.
    let mut b = [0u8; 8];
    assert_eq!(mmu.read(&vm, va + 0xffc, &mut b), Ok(4));
    assert!(mmu.write(&vm, va + 0xffc, &[1; 8]).is_err());
    assert_eq!(vm.st().ram[0x2ffc], 0, "nothing written");
    assert!(mmu.read(&vm, 0x1234, &mut b).is_err(), "not mapped");
    // Protected mode with paging is not walked; it says so.
    let legacy = Mmu::of(&VcpuSnapshot {
        cr0: 1 << 31,
        ..Default::default()
    });
    let e = legacy.read(&vm, 0x2000, &mut b).unwrap_err().to_string();
    assert!(e.contains("32-bit paging"), "{e}");
}

#[test]
fn breakpoints_use_debug_registers_where_kvm_takes_no_int3() {
    let vm = FakeVm::new(KVM_PVM);
    let (mut gdb, t) = session(&vm);
    for (i, addr) in [0x1100u64, 0x1200, 0x1300].iter().enumerate() {
        assert_eq!(gdb.ask(&format!("Z0,{addr:x},1")), "OK", "breakpoint {i}");
    }
    assert_eq!(gdb.ask("Z1,1400,1"), "OK");
    assert_eq!(
        gdb.ask("Z0,1500,1"),
        "E16",
        "a fifth: no debug register left"
    );
    assert!(
        gdb.ask("Z2,2000,4").is_empty(),
        "watchpoints not offered here"
    );
    {
        let st = vm.st();
        assert!(!st.debug.sw_breakpoints, "no int3 under kvm_pvm");
        assert_eq!(
            st.debug.hw[0],
            Some(HwBreakpoint {
                addr: 0x1100,
                kind: HwKind::Execute
            })
        );
        assert!(st.debug.hw.iter().all(Option::is_some));
        assert!(
            st.ram[0x1100..0x1400].iter().all(|&b| b == 0),
            "no memory write"
        );
    }
    // Continue; the vCPU stops in debug register 0: a software breakpoint for gdb.
    vm.st().stops.push_back(DebugStop {
        vcpu: 1,
        cause: StopCause::HwBreakpoint(0),
        pc: 0x1100,
    });
    let stop = gdb.ask("vCont;c");
    assert!(
        stop.starts_with("T05") && stop.contains("swbreak"),
        "{stop}"
    );
    assert!(stop.contains("thread:02"), "{stop}");
    assert_eq!(
        vm.st().resumes.last().unwrap(),
        &vec![ResumeAction::Continue; 2]
    );
    vm.st().stops.push_back(DebugStop {
        vcpu: 0,
        cause: StopCause::HwBreakpoint(3),
        pc: 0x1400,
    });
    let stop = gdb.ask("vCont;c");
    assert!(stop.contains("hwbreak"), "{stop}");
    assert_eq!(gdb.ask("z0,1200,1"), "OK");
    assert_eq!(vm.st().debug.hw[1], None);
    // Detach: every debug register freed, guest debug off, the VM runs.
    assert_eq!(gdb.ask("D"), "OK");
    t.join().unwrap();
    assert_eq!(vm.st().debug, GuestDebug::default());
    assert!(!vm.is_paused());
}

#[test]
fn int3_breakpoints_where_kvm_takes_them_hide_and_restore_the_byte() {
    let vm = FakeVm::new(HARDWARE);
    vm.st().ram[0x1100] = 0x55;
    let (mut gdb, t) = session(&vm);
    assert_eq!(gdb.ask("Z0,1100,1"), "OK");
    assert_eq!(vm.st().ram[0x1100], 0xcc);
    assert!(vm.st().debug.sw_breakpoints);
    assert_eq!(gdb.ask("m1100,1"), "55", "gdb reads the byte it replaced");
    assert_eq!(gdb.ask("Z2,2000,4"), "OK", "watchpoints on hardware KVM");
    assert_eq!(vm.st().debug.hw[0].map(|b| b.kind), Some(HwKind::Write(4)));
    assert_eq!(gdb.ask("Z2,2001,4"), "E16", "unaligned");
    vm.st().stops.push_back(DebugStop {
        vcpu: 0,
        cause: StopCause::SwBreakpoint,
        pc: 0x1100,
    });
    assert!(gdb.ask("c").contains("swbreak"));
    vm.st().stops.push_back(DebugStop {
        vcpu: 0,
        cause: StopCause::Watchpoint(0),
        pc: 0x1105,
    });
    let stop = gdb.ask("c");
    assert!(stop.contains("watch:2000"), "{stop}");
    // The client vanishes: the int3 is taken out, the VM runs.
    drop(gdb);
    t.join().unwrap();
    assert_eq!(vm.st().ram[0x1100], 0x55);
    assert_eq!(vm.st().debug, GuestDebug::default());
    assert!(!vm.is_paused());
}

#[test]
fn steps_interrupts_and_a_vm_that_ends() {
    let vm = FakeVm::new(KVM_PVM);
    let (mut gdb, t) = session(&vm);
    assert!(gdb.ask("vCont?").contains(";s"), "single step offered");
    vm.st().stops.push_back(DebugStop {
        vcpu: 0,
        cause: StopCause::Step,
        pc: 0x1001,
    });
    let stop = gdb.ask("vCont;s:1");
    assert!(
        stop.starts_with("T05") && stop.contains("thread:01"),
        "{stop}"
    );
    // Only thread 1 stepped: the others stayed (scheduler locking).
    assert_eq!(
        vm.st().resumes.last().unwrap(),
        &vec![ResumeAction::Step, ResumeAction::Stay]
    );
    // Running with nothing to stop it: ^C stops it with SIGINT.
    gdb.packet("vCont;c");
    std::thread::sleep(Duration::from_millis(50));
    assert!(!vm.is_paused());
    gdb.0.write_all(&[0x03]).unwrap();
    let stop = gdb.reply().unwrap();
    assert!(stop.starts_with("T02"), "{stop}");
    assert!(vm.is_paused());
    // The VM ends while running: gdb hears it exited, the session ends.
    gdb.packet("vCont;c");
    std::thread::sleep(Duration::from_millis(50));
    vm.st().ended = true;
    assert_eq!(gdb.reply().as_deref(), Some("W00"));
    t.join().unwrap();
}

#[test]
fn garbage_ends_the_session_and_the_vm_runs_on() {
    let vm = FakeVm::new(HARDWARE);
    let (mut gdb, t) = session(&vm);
    assert_eq!(gdb.ask("Z0,1100,1"), "OK");
    gdb.0
        .write_all(b"$qXfer:garbage\x00\xff#zz+++$m,#00$vCont;q#bb$g#00")
        .unwrap();
    let big = vec![b'x'; 64 << 10];
    let _ = gdb.0.write_all(b"$");
    let _ = gdb.0.write_all(&big);
    drop(gdb);
    t.join().unwrap();
    assert!(!vm.is_paused(), "the VM runs as before");
    assert_eq!(vm.st().ram[0x1100], 0, "the int3 is out");
    assert_eq!(vm.st().debug, GuestDebug::default());
}

#[test]
fn a_paused_vm_stays_paused_and_a_second_client_is_turned_away() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("gdb.sock");
    let vm = FakeVm::new(KVM_PVM);
    vm.pause(Duration::ZERO).unwrap();
    let server = GdbServer::spawn("t1", sock.clone(), vm.clone()).unwrap();
    assert!(server.listening());
    let mut first = Gdb(UnixStream::connect(&sock).unwrap());
    first.0.set_read_timeout(Some(TIMEOUT)).unwrap();
    assert!(first.ask("?").starts_with('T'));
    let mut second = Gdb(UnixStream::connect(&sock).unwrap());
    second.0.set_read_timeout(Some(TIMEOUT)).unwrap();
    second.packet("qSupported");
    let no = second.reply().unwrap();
    assert!(
        no.starts_with("E.") && no.contains("another gdb client"),
        "{no}"
    );
    assert!(second.reply().is_none(), "and closed");
    assert_eq!(first.ask("D"), "OK");
    drop(first);
    // A VM someone else paused stays paused; the endpoint serves the next client.
    let deadline = std::time::Instant::now() + TIMEOUT;
    let mut third = loop {
        // Until the first session has finished its detach, a client is turned away.
        let mut c = Gdb(UnixStream::connect(&sock).unwrap());
        c.0.set_read_timeout(Some(TIMEOUT)).unwrap();
        c.packet("?");
        let r = c.reply();
        if r.as_deref().is_some_and(|r| r.starts_with('T')) {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "{r:?}");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(vm.is_paused());
    assert_eq!(third.ask("D"), "OK");
    drop(third);
    // The VM ends: the listener goes, and its socket with it.
    vm.st().ended = true;
    let deadline = std::time::Instant::now() + TIMEOUT;
    while server.listening() {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!sock.exists());
}
