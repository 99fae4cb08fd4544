//! The mini frontend (`tests/guests/mini-frontend`, a freestanding guest that speaks the
//! real Vesper protocol without Linux) in the builtin VMM (`vesper_builtin::Machine`),
//! driven by the real host side: `vesper_core::Session` over the `BuiltinTransport`
//! (region, doorbells, MSI-X), `RelayReader` for the records, and the console commands
//! of the Linux test guest's hand mode.
//!
//! What a user would notice: the guest comes up and says who it is; `lsmod` lists its
//! frontend through a real grant; a module push is refused with a message saying why; a
//! killed service arrives as exactly one exit record with its pid, name and signal; a
//! reboot comes back as a new generation with a fresh channel; a panic arrives as a
//! panic record and through pvpanic; a host writing nonsense into the response ring
//! costs answers, not the guest; a channel the host does not read fills up, drops (and
//! counts) the newest records, and flows again once read. Each test skips loudly without
//! a usable /dev/kvm.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use vesper_builtin::{
    BootImage, BuiltinTransport, ConsoleInput, Machine, MachineEvent, MachineSpec,
};
use vesper_core::{
    CommandError, GuestInfo, GuestModule, Reply, Session, SessionConfig, SessionEvent, Transport,
};
use vesper_e2e::kvm_usable;
use vesper_guest_kit::{build_mini_frontend, repo_root, MINI_FRONTEND_DIR};
use vesper_relay::{decode, ChannelSpec, Decoded, Record};
use vesper_shared_abi::{
    PAGE_SIZE, RECORD_FLAG_URGENT, REQ_WAIT_COMMAND, RING_SLOTS, RSP_FLAG, RSP_RING_OFFSET,
    SLOT_SIZE, VECTOR_CONTROL, VECTOR_RELAY,
};
use vesper_shmem::SharedRegion;

const WAIT: Duration = Duration::from_secs(20);
const MIB: u64 = 1 << 20;
/// The guest is linked at 4 MiB; 32 MiB leaves room and stays far below the PCI hole.
const RAM_MIB: u32 = 32;
const REGION: u64 = 4 * MIB;
const HAND: &str = "vesper-hand: ";

/// The repository being tested: found from the working directory (cargo runs tests in
/// the package's directory), not from a path compiled into a dependency, which a build
/// from another checkout sharing the target directory may have set.
fn repo() -> PathBuf {
    std::env::current_dir()
        .ok()
        .and_then(|cwd| {
            cwd.ancestors()
                .find(|d| d.join(MINI_FRONTEND_DIR).join("Makefile").is_file())
                .map(PathBuf::from)
        })
        .unwrap_or_else(repo_root)
}

fn mini_frontend() -> PathBuf {
    let root = repo();
    let kit = match std::env::var_os("VESPER_KIT_DIR") {
        Some(d) if !d.is_empty() => PathBuf::from(d),
        _ => root.join(".vesper-kit"),
    };
    let (elf, _) = build_mini_frontend(&root, &kit.join("mini-frontend"))
        .unwrap_or_else(|e| panic!("building the mini frontend: {e}"));
    elf
}

/// One VM at a time in this file: the idle test finds its vCPU thread by name.
static ONE_VM: Mutex<()> = Mutex::new(());

/// A running mini frontend and the host session talking to it.
struct Mini {
    // Dropped first: stopping the machine ends the guest before the rest goes.
    machine: Option<Machine>,
    transport: BuiltinTransport,
    session: Session,
    console: ConsoleInput,
    console_log: PathBuf,
    _dir: tempfile::TempDir,
    panics: Arc<AtomicU32>,
    resets: Arc<AtomicU32>,
    /// Guest hellos seen, in order.
    hellos: Vec<GuestInfo>,
    /// Relay records read so far, with their channel.
    records: Vec<(Arc<ChannelSpec>, Record)>,
    opened: Vec<ChannelSpec>,
    closed: Vec<(Arc<ChannelSpec>, Option<String>)>,
    misbehaviour: Vec<String>,
    done: Vec<(u64, Result<Reply, CommandError>)>,
    /// False once the test plays a rogue host on the region itself.
    host_polls: bool,
    _one_vm: std::sync::MutexGuard<'static, ()>,
}

impl Mini {
    fn boot() -> Mini {
        Self::boot_with(1)
    }

    fn boot_with(vcpus: u32) -> Mini {
        let one_vm = ONE_VM.lock().unwrap_or_else(PoisonError::into_inner);
        let elf = mini_frontend();
        let dir = tempfile::tempdir().expect("temp dir");
        let console_log = dir.path().join("console.log");
        let spec = MachineSpec {
            name: "mini-frontend-test".into(),
            vcpus,
            memory_mib: RAM_MIB,
            boot: BootImage::Elf {
                path: elf,
                cmdline: "vesper.test=mini-frontend".into(),
            },
            region_size: REGION,
            console_log: console_log.clone(),
            allow_reboot: true,
        };
        let (panics, resets) = (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let (p, r) = (panics.clone(), resets.clone());
        let events: vesper_builtin::EventSink = Arc::new(move |e| match e {
            MachineEvent::GuestPanicked => {
                p.fetch_add(1, Ordering::SeqCst);
            }
            MachineEvent::Reset { .. } => {
                r.fetch_add(1, Ordering::SeqCst);
            }
            MachineEvent::CrashLoaded => {}
        });
        let (machine, transport) = Machine::start(&spec, events).expect("start the machine");
        // The builtin VMM owns guest RAM: the guest grants its module list from there.
        let session =
            Session::new(SessionConfig::default()).with_guest_frames(transport.guest_frames());
        Mini {
            console: machine.console(),
            machine: Some(machine),
            transport,
            session,
            console_log,
            _dir: dir,
            panics,
            resets,
            hellos: Vec::new(),
            records: Vec::new(),
            opened: Vec::new(),
            closed: Vec::new(),
            misbehaviour: Vec::new(),
            done: Vec::new(),
            host_polls: true,
            _one_vm: one_vm,
        }
    }

    fn console_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.console_log).unwrap_or_default()).into_owned()
    }

    /// Everything the test saw, for failure messages.
    fn state(&self) -> String {
        format!(
            "console:\n{}\nhellos: {:?}\nmisbehaviour: {:?}\nrecords: {:?}",
            self.console_text(),
            self.hellos,
            self.misbehaviour,
            self.records
        )
    }

    /// One round of the host side: what the daemon does on a doorbell or its tick.
    fn pump(&mut self) {
        if !self.host_polls {
            return;
        }
        for v in [VECTOR_CONTROL, VECTOR_RELAY] {
            self.transport.ack_doorbell(v);
        }
        let out = self.session.poll(self.transport.region(), Instant::now());
        if out.notify {
            self.transport.notify_guest().expect("notify the guest");
        }
        for ev in out.events {
            match ev {
                SessionEvent::GuestUp { info, .. } => self.hellos.push(info),
                SessionEvent::HelloRefused {
                    frontend_version, ..
                } => self.misbehaviour.push(format!(
                    "hello of frontend version {frontend_version} refused"
                )),
                SessionEvent::Done { id, result } => self.done.push((id, result)),
                SessionEvent::Misbehaviour(e) => self.misbehaviour.push(e.to_string()),
                SessionEvent::RelayOpened(spec) => self.opened.push(spec),
                SessionEvent::RelayRefused(e) => self.misbehaviour.push(e.to_string()),
                SessionEvent::Records { channel, records } => self
                    .records
                    .extend(records.into_iter().map(|r| (channel.clone(), r))),
                SessionEvent::RelayClosed { channel, error, .. } => {
                    self.closed.push((channel, error))
                }
                SessionEvent::LateStep { id, what } => {
                    self.misbehaviour.push(format!("late step {id}: {what}"))
                }
                SessionEvent::InitEnded { name, .. } => self.misbehaviour.push(format!(
                    "init of {name} ended, but the mini frontend loads nothing"
                )),
            }
        }
    }

    /// Pumps until `done` holds or WAIT passes (then fails with `what`).
    fn pump_until(&mut self, what: &str, done: impl Fn(&Mini) -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}\n{}",
                self.state()
            );
            self.pump();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn run(&mut self, cmd: vesper_core::Command) -> Result<Reply, CommandError> {
        let id = self.session.submit(cmd, Instant::now());
        self.pump_until("a command's completion", |m| {
            m.done.iter().any(|(d, _)| *d == id)
        });
        let i = self.done.iter().position(|(d, _)| *d == id).unwrap();
        self.done.remove(i).1
    }

    /// Types `line` on the console and returns the first hand reply after it that
    /// contains `expect`, pumping the host side meanwhile.
    fn hand(&mut self, line: &str, expect: &str) -> String {
        let from = self.console_text().len();
        self.console
            .send(format!("{line}\n").as_bytes())
            .unwrap_or_else(|e| panic!("typing `{line}`: {e}\n{}", self.state()));
        // Whole lines only: a reply may be caught half-written.
        let find = |m: &Mini| {
            let text = m.console_text();
            let end = text.rfind('\n').map_or(from, |e| e.max(from));
            text[from..end]
                .lines()
                .filter_map(|l| l.trim_end_matches('\r').strip_prefix(HAND))
                .find(|r| r.contains(expect))
                .map(str::to_owned)
        };
        self.pump_until(&format!("`{expect}` in reply to `{line}`"), |m| {
            find(m).is_some()
        });
        find(self).unwrap()
    }

    /// Records of `rtype`-decoded kind read so far.
    fn decoded(&self) -> Vec<(Arc<ChannelSpec>, &Record, Decoded)> {
        self.records
            .iter()
            .map(|(c, r)| (c.clone(), r, decode(r.rtype, &r.payload)))
            .collect()
    }

    fn exits(&self) -> Vec<Decoded> {
        self.decoded()
            .into_iter()
            .map(|(_, _, d)| d)
            .filter(|d| matches!(d, Decoded::Exit { .. }))
            .collect()
    }
}

impl Drop for Mini {
    fn drop(&mut self) {
        // Stops the VM and waits for its thread.
        drop(self.machine.take());
    }
}

fn pid_of(reply: &str) -> i32 {
    reply
        .split("pid=")
        .nth(1)
        .and_then(|p| p.split_whitespace().next())
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {reply:?}"))
}

#[test]
fn the_mini_frontend_says_hello_answers_commands_and_reports_a_killed_service_once() {
    if !kvm_usable("mini frontend commands") {
        return;
    }
    let mut m = Mini::boot();
    m.pump_until("the hello", |m| !m.hellos.is_empty());
    let hello = m.hellos[0].clone();
    assert_eq!(hello.kernel_release, "vesper-mini", "{}", m.state());
    assert!(hello.vermagic.contains("mini frontend"), "{hello:?}");
    assert_eq!((hello.nr_cpus, hello.region_size), (1, REGION));
    assert_eq!(hello.generation, 1, "first boot of a fresh region");
    m.pump_until("the relay channel", |m| !m.opened.is_empty());
    let chan = m.opened[0].clone();
    assert_eq!(
        (
            chan.module.as_str(),
            chan.name.as_str(),
            chan.n_cpus,
            chan.overwrite
        ),
        ("vesper_mini", "hand", 1, false)
    );
    m.pump_until("`vesper-mini: up` on the console", |m| {
        m.console_text().contains("vesper-mini: up")
    });
    let region = m.transport.region();
    assert_eq!(region.header().unwrap().guest_state, 1, "guest_state UP");

    // lsmod: the frontend itself, read through its grant — of guest RAM frames, since
    // the builtin VMM offers them: the host reads the list where the guest wrote it.
    assert_ne!(
        region.header().unwrap().host_features & vesper_shared_abi::HOST_FEATURE_GUEST_FRAMES,
        0,
        "the builtin VMM offers guest-frame grants"
    );
    let list = m.run(vesper_core::Command::List).expect("list");
    assert!(
        m.console_text()
            .contains("vesper-mini: module list granted from guest RAM"),
        "{}",
        m.state()
    );
    assert_eq!(
        list,
        Reply::Modules(vec![GuestModule {
            name: "vesper_mini".into(),
            size: 0,
            refcount: 0,
            state: "live".into(),
            pushed: false,
            frontend: true,
        }])
    );

    // A push is refused before any transfer, with the reason in the guest log.
    let image: Arc<[u8]> = vec![0x7f; 4096].into();
    let err = m
        .run(vesper_core::Command::Load {
            name: "vesper_exit_probe".into(),
            image,
            params: String::new(),
            init_timeout: None,
        })
        .expect_err("the mini frontend cannot load modules");
    let text = err.to_string();
    assert!(
        text.contains("EOPNOTSUPP")
            && text.contains("the mini frontend cannot load kernel modules"),
        "{text}"
    );
    let err = m
        .run(vesper_core::Command::Unload {
            name: "nothing_here".into(),
            force: false,
        })
        .expect_err("nothing to unload");
    assert!(
        matches!(&err, CommandError::NotLoaded { name } if name == "nothing_here"),
        "{err}"
    );
    let Reply::Kmsg(log) = m.run(vesper_core::Command::Kmsg).expect("kmsg") else {
        panic!("kmsg answered with something else")
    };
    assert!(log.contains("vesper-mini: up"), "{log}");
    assert!(log.contains("cannot load kernel modules"), "{log}");
    // The clock: calibrated on KVM (kvmclock), else refused with the reason.
    match m.run(vesper_core::Command::Clock) {
        Ok(Reply::Clock(ns)) => assert!(ns > 0, "a running guest's clock is past 0"),
        Err(e) => assert!(e.to_string().contains("no calibrated clock"), "{e}"),
        Ok(other) => panic!("clock answered {other:?}"),
    }

    // The hand: the same lines as the Linux guest's.
    assert_eq!(m.hand("ping", "pong"), "pong");
    let pid = pid_of(&m.hand("start svc", "started svc"));
    let other = pid_of(&m.hand("start other", "started other"));
    assert_ne!(pid, other);
    let killed = m.hand("kill 9 svc", "killed svc");
    assert_eq!(killed, format!("killed svc pid={pid} sig=9"));
    m.pump_until("the exit record", |m| !m.exits().is_empty());
    // Nothing more is coming for that one death: a later, different record proves the
    // reader is past it.
    m.hand("exit other 3", "exit requested other");
    m.pump_until("the second exit record", |m| m.exits().len() >= 2);
    let exits = m.exits();
    assert_eq!(
        exits,
        vec![
            Decoded::Exit {
                pid,
                tid: pid,
                exit_code: 9,
                signal: 9,
                status: 0,
                comm: "svc".into()
            },
            Decoded::Exit {
                pid: other,
                tid: other,
                exit_code: 3 << 8,
                signal: 0,
                status: 3,
                comm: "other".into()
            }
        ],
        "{}",
        m.state()
    );
    let (chan, rec, _) = &m.decoded()[0];
    assert_eq!(
        (chan.module.as_str(), chan.name.as_str()),
        ("vesper_mini", "hand")
    );
    assert_eq!((rec.seq, rec.flags), (0, RECORD_FLAG_URGENT));
    assert_eq!(m.hand("kill 9 svc", "no process"), "no process svc");
    assert_eq!(m.hand("kill FOO nobody", "no process"), "no process nobody");
    assert_eq!(
        m.hand("fly away", "unknown command"),
        "unknown command: fly away"
    );
    assert!(m
        .hand("start a/b", "error")
        .starts_with("error: bad name a/b"));
    assert!(m
        .hand("exit other 256", "error")
        .starts_with("error: bad exit code"));

    let oom = pid_of(&m.hand("oom", "oom hog"));
    m.pump_until("the OOM record", |m| {
        m.decoded()
            .iter()
            .any(|(_, _, d)| matches!(d, Decoded::Oom { .. }))
    });
    let ooms: Vec<Decoded> = m
        .decoded()
        .into_iter()
        .map(|(_, _, d)| d)
        .filter(|d| matches!(d, Decoded::Oom { .. }))
        .collect();
    assert!(
        matches!(&ooms[..], [Decoded::Oom { pid: p, comm, oom_score_adj: 1000, .. }] if *p == oom && comm == "hog"),
        "{ooms:?}"
    );
    assert_eq!(m.exits().len(), 2, "no exit record beyond the two deaths");
    assert!(m.misbehaviour.is_empty(), "{:?}", m.misbehaviour);
}

#[test]
fn the_mini_frontend_reboots_into_a_new_generation_and_reports_its_panic() {
    if !kvm_usable("mini frontend reboot and panic") {
        return;
    }
    // Two vCPUs: the second stops at the entry, before and after the reset.
    let mut m = Mini::boot_with(2);
    m.pump_until("the first hello and channel", |m| {
        !m.hellos.is_empty() && !m.opened.is_empty()
    });
    let first = m.hellos[0].generation;
    assert_eq!(
        m.hellos[0].nr_cpus, 1,
        "only the boot CPU runs the frontend"
    );

    assert_eq!(m.hand("reboot", "rebooting"), "rebooting");
    m.pump_until("the hello after the reboot", |m| m.hellos.len() >= 2);
    assert_eq!(
        m.resets.load(Ordering::SeqCst),
        1,
        "one reset through 0xCF9"
    );
    let second = &m.hellos[1];
    assert_eq!(second.generation, first + 1, "{}", m.state());
    assert_eq!(second.kernel_release, "vesper-mini");
    assert_eq!(m.transport.region().header().unwrap().generation, first + 1);
    // The old channel went with the old generation, seen as the restart whether the
    // host looked before or after the new hello (the guest bumps the generation before
    // it frees its grants); the new boot opened a new one.
    assert!(
        m.closed
            .iter()
            .any(|(c, e)| c.name == "hand" && e.as_deref() == Some("guest restarted")),
        "{:?}",
        m.closed
    );
    m.pump_until("the channel of the new generation", |m| m.opened.len() >= 2);
    // The rebooted guest forgot its services, like a rebooted Linux guest.
    assert_eq!(m.hand("kill 9 svc", "no process"), "no process svc");
    let list = m
        .run(vesper_core::Command::List)
        .expect("list after reboot");
    assert!(matches!(&list, Reply::Modules(v) if v.len() == 1 && v[0].frontend));

    assert_eq!(m.hand("panic", "panicking"), "panicking");
    m.pump_until("the panic record", |m| {
        m.decoded()
            .iter()
            .any(|(_, _, d)| matches!(d, Decoded::Panic { .. }))
    });
    let panics: Vec<Decoded> = m
        .decoded()
        .into_iter()
        .map(|(_, _, d)| d)
        .filter(|d| matches!(d, Decoded::Panic { .. }))
        .collect();
    assert_eq!(
        panics,
        vec![Decoded::Panic {
            cpu: 0,
            pid: 1,
            message: "mini frontend: panic requested".into()
        }]
    );
    let deadline = Instant::now() + WAIT;
    while m.panics.load(Ordering::SeqCst) == 0 {
        assert!(Instant::now() < deadline, "no pvpanic write\n{}", m.state());
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(m.panics.load(Ordering::SeqCst), 1);
    assert!(m.misbehaviour.is_empty(), "{:?}", m.misbehaviour);
}

/// Writes a response slot header (kind, len, id, status, generation) at index `idx`.
fn scribble_response(region: &SharedRegion, idx: u32, len: u32, generation: u32) {
    let mut h = Vec::with_capacity(32);
    h.extend_from_slice(&(REQ_WAIT_COMMAND | RSP_FLAG).to_le_bytes());
    h.extend_from_slice(&len.to_le_bytes());
    h.extend_from_slice(&u64::MAX.to_le_bytes());
    h.extend_from_slice(&0i32.to_le_bytes());
    h.extend_from_slice(&generation.to_le_bytes());
    h.extend_from_slice(&[0; 8]);
    let slot = RSP_RING_OFFSET + PAGE_SIZE + u64::from(idx % RING_SLOTS) * u64::from(SLOT_SIZE);
    region.write_slice(&h, slot).unwrap();
}

#[test]
fn a_rogue_host_writing_nonsense_into_the_response_ring_costs_answers_not_the_guest() {
    if !kvm_usable("mini frontend rogue host") {
        return;
    }
    let mut m = Mini::boot();
    // Up, with the relay channel's answer taken (the rogue writes would skip it).
    m.pump_until("the guest up with its channel open", |m| {
        m.console_text().contains("vesper_mini/hand open")
    });
    // From here the test is the host, and a bad one.
    m.host_polls = false;
    let region = m.transport.region();
    let generation = region.header().unwrap().generation;
    let producer = RSP_RING_OFFSET;
    let consumer = RSP_RING_OFFSET + 64;
    let wait_for = |m: &Mini, text: &str| {
        let deadline = Instant::now() + WAIT;
        while !m.console_text().contains(text) {
            assert!(Instant::now() < deadline, "no `{text}`\n{}", m.state());
            std::thread::sleep(Duration::from_millis(2));
        }
    };
    let wait_consumed = |m: &Mini, to: u32| {
        let deadline = Instant::now() + WAIT;
        loop {
            let c = region.load_u32(consumer, Ordering::Acquire).unwrap();
            if c == to {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "guest response consumer {c}, expected {to}\n{}",
                m.state()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    };

    // A producer far past the ring: skipped over, not read.
    let p = region.load_u32(producer, Ordering::Acquire).unwrap();
    region
        .store_u32(p.wrapping_add(1000), producer, Ordering::Release)
        .unwrap();
    wait_for(&m, "ahead of consumer");
    // It went on from there rather than reading 1000 slots.
    let c = p.wrapping_add(1000);
    wait_consumed(&m, c);

    // A slot of the guest's generation whose length runs past the slot.
    scribble_response(region, c, u32::MAX, generation);
    region
        .store_u32(c + 1, producer, Ordering::Release)
        .unwrap();
    wait_for(&m, "length past the slot");
    // One of another generation, and one nobody asked for.
    scribble_response(region, c + 1, 0, generation + 7);
    scribble_response(region, c + 2, 0, generation);
    region
        .store_u32(c + 3, producer, Ordering::Release)
        .unwrap();
    wait_for(&m, "not our generation");
    wait_for(&m, "unexpected");
    wait_consumed(&m, c + 3);

    // Still serving: the console answers and a killed service still becomes a record.
    assert_eq!(m.hand("ping", "pong"), "pong");
    let pid = pid_of(&m.hand("start svc", "started svc"));
    m.hand("kill TERM svc", "killed svc");
    m.host_polls = true;
    m.pump_until("the exit record", |m| !m.exits().is_empty());
    assert!(
        matches!(&m.exits()[..], [Decoded::Exit { pid: p, signal: 15, .. }] if *p == pid),
        "{}",
        m.state()
    );
}

#[test]
fn a_full_channel_drops_new_records_and_counts_them_and_a_reader_frees_it_again() {
    if !kvm_usable("mini frontend full channel") {
        return;
    }
    let mut m = Mini::boot();
    m.pump_until("the guest up with its channel open", |m| {
        m.console_text().contains("vesper_mini/hand open")
    });
    // 4 sub-buffers of 4 KiB hold 256 exit records of 64 bytes; the host reads nothing
    // meanwhile, and without overwrite the writer drops the rest.
    const KILLS: usize = 300;
    const FIT: usize = 4 * 4096 / 64;
    m.host_polls = false;
    for i in 0..KILLS {
        let name = format!("s{i}");
        m.hand(&format!("start {name}"), &format!("started {name}"));
        m.hand(&format!("kill KILL {name}"), &format!("killed {name}"));
    }
    assert!(
        m.console_text().contains("relay=-28"),
        "ENOSPC drops logged"
    );
    m.host_polls = true;
    m.pump_until("every record that fit", |m| m.exits().len() >= FIT);
    let region = m.transport.region();
    let stats = m.session.relay_stats(region);
    let cpu = &stats[0].cpus[0];
    assert_eq!(
        (cpu.written, cpu.dropped, cpu.received, cpu.lost),
        (FIT as u64, (KILLS - FIT) as u64, FIT as u64, 0),
        "{stats:?}"
    );
    let seqs: Vec<u64> = m.records.iter().map(|(_, r)| r.seq).collect();
    assert_eq!(seqs, (0..FIT as u64).collect::<Vec<_>>());
    let first: Vec<String> = m
        .exits()
        .iter()
        .take(2)
        .map(|d| match d {
            Decoded::Exit { comm, .. } => comm.clone(),
            _ => unreachable!(),
        })
        .collect();
    assert_eq!(first, ["s0", "s1"], "the oldest records are the ones kept");

    // The host consumed the finished sub-buffers: the next death gets through.
    m.hand("start late", "started late");
    m.hand("kill 9 late", "killed late");
    m.pump_until("the record after the reader caught up", |m| {
        m.exits().len() > FIT
    });
    let (_, last) = m.records.last().unwrap();
    assert_eq!(
        last.seq, FIT as u64,
        "dropped records took no sequence number"
    );
    assert!(
        matches!(decode(last.rtype, &last.payload), Decoded::Exit { comm, .. } if comm == "late")
    );
}

/// CPU time (user + system, seconds) and voluntary context switches of this process's
/// thread named `name`.
fn thread_usage(name: &str) -> (f64, u64) {
    // /proc reports times in USER_HZ, 100 on x86 Linux.
    const USER_HZ: f64 = 100.0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap();
        // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        let status = std::fs::read_to_string(task.path().join("status")).unwrap();
        let switches = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap();
        return (ticks as f64 / USER_HZ, switches);
    }
    panic!("no thread named {name}");
}

#[test]
fn an_idle_mini_frontend_halts_between_polls_instead_of_spinning_a_host_cpu() {
    if !kvm_usable("mini frontend idle") {
        return;
    }
    let mut m = Mini::boot();
    m.pump_until("the guest up with its channel open", |m| {
        m.console_text().contains("vesper_mini/hand open")
    });
    assert!(
        m.console_text().contains("idle: halts between polls"),
        "{}",
        m.state()
    );
    // The daemon's pace: a poll every 50 ms, nothing to say. Returns the vCPU thread's
    // CPU seconds, its voluntary switches (one per halt that blocked) and the wall time
    // of a `secs` window that starts after `settle` seconds.
    let window = |m: &mut Mini, settle: f64, secs: f64| {
        let quiet = |m: &mut Mini, secs: f64| {
            let start = Instant::now();
            while start.elapsed().as_secs_f64() < secs {
                m.pump();
                std::thread::sleep(Duration::from_millis(50));
            }
        };
        quiet(m, settle);
        let (start, (cpu0, sw0)) = (Instant::now(), thread_usage("vcpu0"));
        quiet(m, secs);
        let (cpu1, sw1) = thread_usage("vcpu0");
        (cpu1 - cpu0, sw1 - sw0, start.elapsed().as_secs_f64())
    };
    // Idle: the first half second settles (the guest's last command is just done).
    let (idle, blocked, wall) = window(&mut m, 0.5, 2.0);
    // The baseline, same guest, same host, same run: told to keep polling without
    // halting for the whole window, as a frontend that spins would.
    assert_eq!(m.hand("spin 3000", "spinning"), "spinning 3000 ms");
    let (spin, spin_blocked, spin_wall) = window(&mut m, 0.2, 2.0);
    let figures = format!(
        "idle: {idle:.2} s of vCPU time in {wall:.2} s, {blocked} blocking halts; \
         told to spin: {spin:.2} s in {spin_wall:.2} s, {spin_blocked} blocking halts"
    );
    eprintln!("mini frontend vCPU {figures}");
    // Halting between polls, the idle guest costs a small fraction of what the same
    // guest costs spinning (measured here, on this host: under kvm_pvm every guest
    // instruction is emulated, so even the spin's absolute share varies by host).
    assert!(
        spin >= 0.2 * spin_wall,
        "the spinning baseline barely ran, so it says nothing: {figures}"
    );
    assert!(idle * 4.0 < spin, "the idle guest is not idle: {figures}");
    // At least one 100 ms sleep in two of every window's 100 ms slices.
    assert!(
        blocked as f64 >= wall * 5.0,
        "the idle guest's vCPU rarely blocked: {figures}"
    );
    // Asleep, it still answers at once (a command and the console).
    let t = Instant::now();
    assert!(matches!(
        m.run(vesper_core::Command::List),
        Ok(Reply::Modules(_))
    ));
    assert_eq!(m.hand("ping", "pong"), "pong");
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
}
