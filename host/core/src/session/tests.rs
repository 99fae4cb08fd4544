//! Session tests: the guest's part is played over the real region layout.

use super::*;
use vesper_shmem::guest_side::{post_request, scribble, take_response};

const GEN: u32 = 7;
const STAGING: u64 = DATA_AREA_OFFSET;

struct Guest {
    region: SharedRegion,
    next_id: u64,
    generation: u32,
}

impl Guest {
    fn new() -> Self {
        Self {
            region: SharedRegion::create("session-test", MIN_REGION_SIZE).unwrap(),
            next_id: 1,
            generation: GEN,
        }
    }

    fn post<T: ByteValued>(&mut self, kind: u32, payload: &T) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        let h = MsgHeader {
            kind,
            id,
            generation: self.generation,
            ..Default::default()
        };
        post_request(&self.region, h, payload.as_slice()).unwrap();
        id
    }

    fn hello(&mut self) -> u64 {
        let mut h = HelloRequest {
            nr_cpus: 2,
            region_size: MIN_REGION_SIZE,
            ..Default::default()
        };
        fill_c_str(&mut h.kernel_release, b"6.1.0-test");
        fill_c_str(&mut h.vermagic, b"6.1.0-test SMP mod_unload ");
        self.post(REQ_HELLO, &h)
    }

    fn wait(&mut self) -> u64 {
        self.post(REQ_WAIT_COMMAND, &0u32)
    }

    fn grant(&self, grant_ref: u32, offset: u64, len: u32, access: u32, owner: u32) {
        let e = GrantEntry {
            offset,
            len,
            access,
            owner,
            generation: self.generation,
            state: GRANT_STATE_ACTIVE,
            reserved: 0,
        };
        self.region
            .write_obj(e, grant_entry_offset(grant_ref).unwrap())
            .unwrap();
    }

    fn response(&self) -> Message {
        take_response(&self.region).unwrap().expect("a response")
    }

    /// The guest says the module's init starts; returns the host's answer status.
    fn init_starts(&mut self, s: &mut Session, command_id: u64, now: Instant) -> i32 {
        let req = ProgressRequest {
            command_id,
            stage: STAGE_INIT_MODULE,
            reserved: 0,
        };
        self.post(REQ_PROGRESS, &req);
        s.poll(&self.region, now);
        let r = self.response();
        assert_eq!(r.header.kind, REQ_PROGRESS | RSP_FLAG);
        r.header.status
    }

    fn complete(&mut self, command_id: u64, op: u32, error: i32, stage: u32, log: &str) -> u64 {
        let mut c = CompletionRequest {
            command_id,
            op,
            error,
            stage,
            data_grant: GRANT_REF_NONE,
            ..Default::default()
        };
        c.log[..log.len()].copy_from_slice(log.as_bytes());
        c.log_len = log.len() as u32;
        self.post(REQ_COMPLETION, &c)
    }
}

fn cfg() -> SessionConfig {
    SessionConfig {
        max_chunk: 4096,
        ..Default::default()
    }
}

fn up(s: &mut Session, g: &mut Guest, now: Instant) {
    g.hello();
    g.wait();
    let out = s.poll(&g.region, now);
    assert!(out.notify);
    assert!(matches!(
        out.events[0],
        SessionEvent::GuestUp {
            restarted: false,
            ..
        }
    ));
    let r = g.response();
    assert_eq!(r.header.kind, REQ_HELLO | RSP_FLAG);
    let hello: HelloResponse = r.payload_as().unwrap();
    assert_eq!(hello.max_chunk, 4096);
    assert_eq!(s.guest().unwrap().kernel_release, "6.1.0-test");
}

fn done(out: PollOutcome) -> Result<Reply, CommandError> {
    out.events
        .into_iter()
        .find_map(|e| match e {
            SessionEvent::Done { result, .. } => Some(result),
            _ => None,
        })
        .expect("a Done event")
}

/// Runs a whole load as the guest would, returning the image the guest reassembled.
fn guest_fetches(s: &mut Session, g: &mut Guest, now: Instant) -> (u64, Vec<u8>) {
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    assert_eq!(cmd.op, OP_LOAD);
    let mut image = Vec::new();
    while (image.len() as u64) < cmd.image_size {
        g.grant(0, STAGING, 4096, GRANT_WRITE, GRANT_OWNER_STAGING);
        let req = FetchChunkRequest {
            command_id: cmd.command_id,
            offset: image.len() as u64,
            grant_ref: 0,
            reserved: 0,
        };
        g.post(REQ_FETCH_CHUNK, &req);
        assert!(s.poll(&g.region, now).notify);
        let r = g.response();
        assert_eq!(r.header.status, 0);
        let chunk: ChunkResponse = r.payload_as().unwrap();
        let mut buf = vec![0u8; chunk.len as usize];
        g.region.read_slice(&mut buf, STAGING).unwrap();
        assert_eq!(crc32fast::hash(&buf), chunk.crc32);
        image.extend_from_slice(&buf);
    }
    assert_eq!(crc32fast::hash(&image), cmd.image_crc32);
    (cmd.command_id, image)
}

#[test]
fn a_load_streams_the_image_through_granted_pages_and_completes() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    let image: Arc<[u8]> = (0..10_000u32).map(|i| i as u8).collect::<Vec<_>>().into();
    let id = s.submit(
        Command::Load {
            name: "probe".into(),
            image: image.clone(),
            params: "a=1".into(),
            init_timeout: None,
        },
        now,
    );
    assert!(s.poll(&g.region, now).notify);
    let (cid, got) = guest_fetches(&mut s, &mut g, now);
    assert_eq!(cid, id);
    assert_eq!(&got[..], &image[..]);
    g.complete(cid, OP_LOAD, 0, STAGE_DONE, "");
    g.wait();
    let r = done(s.poll(&g.region, now)).unwrap();
    assert_eq!(
        r,
        Reply::Loaded {
            name: "probe".into(),
            bytes: 10_000
        }
    );
}

#[test]
fn init_failures_carry_errno_and_the_kernel_log() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    s.submit(
        Command::Load {
            name: "bad".into(),
            image: vec![1u8; 10].into(),
            params: String::new(),
            init_timeout: None,
        },
        now,
    );
    s.poll(&g.region, now);
    let (cid, _) = guest_fetches(&mut s, &mut g, now);
    g.complete(
        cid,
        OP_LOAD,
        -19,
        STAGE_INIT_MODULE,
        "bad: refusing to load",
    );
    let e = done(s.poll(&g.region, now)).unwrap_err();
    let text = e.to_string();
    assert!(matches!(e, CommandError::InitFailed { errno: -19, .. }));
    assert!(
        text.contains("ENODEV") && text.contains("bad: refusing to load"),
        "{text}"
    );
}

#[test]
fn guest_errnos_map_to_operator_errors() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    for (errno, check) in [(-2, "not loaded"), (-11, "in use")] {
        s.submit(
            Command::Unload {
                name: "x".into(),
                force: false,
            },
            now,
        );
        s.poll(&g.region, now);
        let cmd: CommandResponse = g.response().payload_as().unwrap();
        assert_eq!(c_str_bytes(&cmd.name), b"x");
        g.complete(cmd.command_id, OP_UNLOAD, errno, STAGE_DELETE_MODULE, "");
        g.wait();
        let e = done(s.poll(&g.region, now)).unwrap_err();
        assert!(e.to_string().contains(check), "{e}");
        assert_eq!(g.response().header.kind, REQ_COMPLETION | RSP_FLAG);
    }
}

#[test]
fn a_guest_that_goes_silent_mid_transfer_times_out_and_late_fetches_are_cancelled() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    s.submit(
        Command::Load {
            name: "p".into(),
            image: vec![9u8; 9000].into(),
            params: String::new(),
            init_timeout: None,
        },
        now,
    );
    s.poll(&g.region, now);
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    g.grant(0, STAGING, 4096, GRANT_WRITE, GRANT_OWNER_STAGING);
    g.post(
        REQ_FETCH_CHUNK,
        &FetchChunkRequest {
            command_id: cmd.command_id,
            offset: 0,
            grant_ref: 0,
            reserved: 0,
        },
    );
    s.poll(&g.region, now);
    g.response();
    // The guest stops answering.
    let later = now + Duration::from_secs(11);
    assert!(s.next_deadline().unwrap() <= later);
    let e = done(s.poll(&g.region, later)).unwrap_err();
    assert!(matches!(
        e,
        CommandError::Timeout {
            stage: "transfer",
            ..
        }
    ));
    // It wakes up and asks for the next chunk: the host refuses, the guest gives up.
    g.post(
        REQ_FETCH_CHUNK,
        &FetchChunkRequest {
            command_id: cmd.command_id,
            offset: 4096,
            grant_ref: 0,
            reserved: 0,
        },
    );
    let out = s.poll(&g.region, later);
    assert!(matches!(out.events[0], SessionEvent::LateStep { .. }));
    assert_eq!(g.response().header.status, -ECANCELED);
}

#[test]
fn a_command_nobody_picks_up_fails_as_not_responding() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    g.hello();
    s.poll(&g.region, now);
    g.response();
    s.submit(Command::List, now);
    assert!(s.poll(&g.region, now).events.is_empty());
    let e = done(s.poll(&g.region, now + Duration::from_secs(10))).unwrap_err();
    assert!(matches!(e, CommandError::NotResponding { .. }));
}

#[test]
fn bad_grants_fail_the_command_and_the_host_writes_nothing() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    s.submit(
        Command::Load {
            name: "p".into(),
            image: vec![0xAB; 100].into(),
            params: String::new(),
            init_timeout: None,
        },
        now,
    );
    s.poll(&g.region, now);
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    // A grant pointing at the ring area, read-only, and owned by someone else.
    g.grant(3, REQ_RING_OFFSET, 4096, GRANT_WRITE, GRANT_OWNER_STAGING);
    g.post(
        REQ_FETCH_CHUNK,
        &FetchChunkRequest {
            command_id: cmd.command_id,
            offset: 0,
            grant_ref: 3,
            reserved: 0,
        },
    );
    let before = {
        let mut b = vec![0u8; 4096];
        g.region.read_slice(&mut b, REQ_RING_OFFSET).unwrap();
        b
    };
    let e = done(s.poll(&g.region, now)).unwrap_err();
    assert!(
        matches!(e, CommandError::Misbehaving(ShmemError::GrantRange { .. })),
        "{e}"
    );
    assert_eq!(g.response().header.status, -EINVAL);
    let mut after = vec![0u8; 4096];
    g.region.read_slice(&mut after, REQ_RING_OFFSET).unwrap();
    // Only the consumer index (host-owned, at byte 64) may have moved.
    assert_eq!(before[..64], after[..64]);
    assert_eq!(before[68..], after[68..]);
}

#[test]
fn module_lists_are_read_from_the_granted_range() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    s.submit(Command::List, now);
    s.poll(&g.region, now);
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    let mut e = ModuleEntry {
        size: 16384,
        refcount: 0,
        state: 0,
        flags: MODULE_FLAG_PUSHED,
        ..Default::default()
    };
    fill_c_str(&mut e.name, b"vesper_exit_probe");
    g.region.write_obj(e, STAGING).unwrap();
    g.grant(5, STAGING, 4096, GRANT_READ, GRANT_OWNER_MODLIST);
    let mut c = CompletionRequest {
        command_id: cmd.command_id,
        op: OP_LIST,
        data_grant: 5,
        data_len: 88,
        ..Default::default()
    };
    g.post(REQ_COMPLETION, &c);
    let r = done(s.poll(&g.region, now)).unwrap();
    let Reply::Modules(m) = r else {
        panic!("{r:?}")
    };
    assert_eq!(m[0].name, "vesper_exit_probe");
    assert!(m[0].pushed && !m[0].frontend);
    // A list length that is not a whole number of entries is refused.
    g.response();
    g.wait();
    s.submit(Command::List, now);
    s.poll(&g.region, now);
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    c.command_id = cmd.command_id;
    c.data_len = 87;
    g.post(REQ_COMPLETION, &c);
    assert!(matches!(
        done(s.poll(&g.region, now)),
        Err(CommandError::BadGuestData(_))
    ));
}

#[test]
fn a_restarted_guest_fails_the_active_command_and_keeps_the_queue() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    s.submit(Command::Kmsg, now);
    s.poll(&g.region, now);
    g.response();
    let queued = s.submit(Command::List, now);
    g.generation += 1;
    g.hello();
    let out = s.poll(&g.region, now);
    assert!(out.events.iter().any(|e| matches!(
        e,
        SessionEvent::Done {
            result: Err(CommandError::GuestRestarted),
            ..
        }
    )));
    assert!(out.events.iter().any(|e| matches!(
        e,
        SessionEvent::GuestUp {
            restarted: true,
            ..
        }
    )));
    g.response();
    g.wait();
    s.poll(&g.region, now);
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    assert_eq!(cmd.command_id, queued);
}

#[test]
fn requests_of_an_old_generation_are_ignored() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    g.hello();
    s.poll(&g.region, now);
    g.response();
    g.generation = 1;
    g.wait();
    s.submit(Command::List, now);
    let out = s.poll(&g.region, now);
    assert!(!out.notify, "a stale wait must not receive a command");
}

#[test]
fn random_bytes_in_the_request_ring_never_panic_and_are_reported_once() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    let mut x = 0x1234_5678_9abc_def0u64;
    for round in 0..200 {
        let mut junk = vec![0u8; 4096];
        for b in junk.iter_mut() {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *b = x as u8;
        }
        scribble(&g.region, REQ_RING_OFFSET + (round % 17) * 4096, &junk).unwrap();
        let _ = s.poll(&g.region, now);
    }
    let broken = Guest::new();
    scribble(&broken.region, REQ_RING_OFFSET, &1000u32.to_le_bytes()).unwrap();
    let mut s2 = Session::new(cfg());
    assert_eq!(s2.poll(&broken.region, now).events.len(), 1);
    assert_eq!(s2.poll(&broken.region, now).events.len(), 0);
}

#[test]
fn relay_channels_open_deliver_records_close_and_die_with_their_generation() {
    use vesper_relay::guest_writer::GuestChannel;
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    let base = DATA_AREA_OFFSET + 0x8_0000;
    let (mut ch, req) =
        GuestChannel::create(&g.region, GEN, 5, 1, 4, 4096, false, base, 20).unwrap();
    g.post(REQ_RELAY_OPEN, &req);
    let out = s.poll(&g.region, now);
    assert!(out
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::RelayOpened(spec) if spec.id == 5)));
    assert_eq!(g.response().header.status, 0);
    ch.write(
        &g.region,
        0,
        RECORD_EXIT,
        RECORD_FLAG_URGENT,
        ExitRecord::default().as_slice(),
    )
    .unwrap()
    .unwrap();
    let out = s.poll(&g.region, now);
    let recs: Vec<_> = out
        .events
        .iter()
        .filter_map(|e| match e {
            SessionEvent::Records { records, .. } => Some(records.len()),
            _ => None,
        })
        .collect();
    assert_eq!(recs, [1]);
    assert_eq!(s.relay_stats(&g.region)[0].cpus[0].received, 1);
    // The same id again is refused; a bad geometry too.
    g.post(REQ_RELAY_OPEN, &req);
    s.poll(&g.region, now);
    assert_eq!(g.response().header.status, -EEXIST);
    let mut bad = req;
    bad.channel_id = 6;
    bad.n_subbufs = 1;
    g.post(REQ_RELAY_OPEN, &bad);
    assert!(s
        .poll(&g.region, now)
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::RelayRefused(_))));
    assert_eq!(g.response().header.status, -EINVAL);
    // Close: the last record written before it still arrives.
    ch.write(
        &g.region,
        0,
        RECORD_EXIT,
        0,
        ExitRecord::default().as_slice(),
    )
    .unwrap()
    .unwrap();
    g.post(
        REQ_RELAY_CLOSE,
        &RelayCloseRequest {
            channel_id: 5,
            reserved: 0,
        },
    );
    let out = s.poll(&g.region, now);
    assert!(out
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::Records { records, .. } if records.len() == 1)));
    assert!(out
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::RelayClosed { error: None, .. })));
    assert!(s.relay_stats(&g.region).is_empty());
    // A channel of the old generation does not survive a restart.
    let (_, req) = GuestChannel::create(&g.region, GEN, 7, 1, 4, 4096, false, base, 20).unwrap();
    g.post(REQ_RELAY_OPEN, &req);
    s.poll(&g.region, now);
    g.response();
    g.generation += 1;
    g.hello();
    let out = s.poll(&g.region, now);
    assert!(out
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::RelayClosed { error: Some(_), .. })));
    assert!(s.relay_stats(&g.region).is_empty());
}

fn set_header_generation(g: &Guest) {
    let at = std::mem::offset_of!(RegionHeader, generation) as u64;
    scribble(&g.region, at, &g.generation.to_le_bytes()).unwrap();
}

#[test]
fn a_resumed_session_answers_the_standing_wait_the_old_host_consumed() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    set_header_generation(&g);
    up(&mut s, &mut g, now);
    // One command through the old host, then the guest waits again.
    s.submit(Command::Kmsg, now);
    assert!(s.poll(&g.region, now).notify);
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    g.complete(cmd.command_id, OP_KMSG, 0, STAGE_COMMAND, "log");
    let wait = g.wait();
    let out = s.poll(&g.region, now);
    assert!(done(out).is_ok());
    let _ = g.response(); // the completion's answer
    let info = s.guest().unwrap().clone();
    drop(s); // the old host is gone

    let mut s2 = Session::resume(cfg(), &g.region, info.clone());
    assert_eq!(s2.guest(), Some(&info));
    let id = s2.submit(Command::Kmsg, now);
    assert!(
        s2.poll(&g.region, now).notify,
        "the standing wait was not recovered"
    );
    let r = g.response();
    assert_eq!(r.header.id, wait);
    assert_eq!(r.header.kind, REQ_WAIT_COMMAND | RSP_FLAG);
    let cmd: CommandResponse = r.payload_as().unwrap();
    assert_eq!((cmd.command_id, cmd.op), (id, OP_KMSG));
    g.complete(id, OP_KMSG, 0, STAGE_COMMAND, "again");
    g.wait();
    assert_eq!(
        done(s2.poll(&g.region, now)).unwrap(),
        Reply::Kmsg("again".into())
    );
    let _ = g.response(); // the completion's answer

    // A wait already answered is not answered twice: the next resume finds none
    // (the guest is mid-command), and dispatches only once the guest waits again.
    let info = s2.guest().unwrap().clone();
    s2.submit(Command::Kmsg, now);
    assert!(s2.poll(&g.region, now).notify);
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    drop(s2);
    let mut s3 = Session::resume(cfg(), &g.region, info.clone());
    let id3 = s3.submit(Command::List, now);
    assert!(!s3.poll(&g.region, now).notify);
    assert!(take_response(&g.region).unwrap().is_none());
    g.complete(cmd.command_id, OP_KMSG, 0, STAGE_COMMAND, "");
    g.wait();
    assert!(s3.poll(&g.region, now).notify);
    let _ = g.response(); // completion answered
    let c: CommandResponse = g.response().payload_as().unwrap();
    assert_eq!((c.command_id, c.op), (id3, OP_LIST));

    // The guest restarted while no host ran: a fresh session that waits for a hello.
    g.generation += 1;
    set_header_generation(&g);
    let s4 = Session::resume(cfg(), &g.region, info);
    assert!(s4.guest().is_none());
}

#[test]
fn a_channel_whose_grants_vanish_is_a_restart_only_if_the_generation_moved_on() {
    use vesper_relay::guest_writer::GuestChannel;
    let now = Instant::now();
    let free = |g: &Guest, grant_ref: u32| {
        let at = vesper_shared_abi::grant_entry_offset(grant_ref).unwrap()
            + std::mem::offset_of!(vesper_shared_abi::GrantEntry, state) as u64;
        scribble(&g.region, at, &GRANT_STATE_FREE.to_le_bytes()).unwrap();
    };
    let closed_with = |out: PollOutcome| -> Option<String> {
        out.events.into_iter().find_map(|e| match e {
            SessionEvent::RelayClosed { error, .. } => error,
            _ => None,
        })
    };
    for restart in [false, true] {
        let (mut s, mut g) = (Session::new(cfg()), Guest::new());
        up(&mut s, &mut g, now);
        set_header_generation(&g);
        let base = DATA_AREA_OFFSET + 0x8_0000;
        let (_ch, req) =
            GuestChannel::create(&g.region, GEN, 5, 1, 4, 4096, false, base, 20).unwrap();
        g.post(REQ_RELAY_OPEN, &req);
        s.poll(&g.region, now);
        assert_eq!(g.response().header.status, 0);
        if restart {
            // A rebooting frontend: new generation first, then its grants freed.
            g.generation += 1;
            set_header_generation(&g);
        }
        free(&g, req.control_grant);
        let error = closed_with(s.poll(&g.region, now)).expect("channel closed");
        if restart {
            assert_eq!(error, "guest restarted");
        } else {
            assert!(error.contains("grant"), "{error}");
        }
    }
}

/// Guest RAM as a transport that owns it would read it: checks the grant with the
/// real frame checker, then copies from `ram` (guest-physical address = index).
#[derive(Debug)]
struct FakeRam(Vec<u8>);

impl crate::GuestFrames for FakeRam {
    fn read(
        &self,
        region: &SharedRegion,
        grant_ref: u32,
        need: GrantNeed,
        len: u64,
    ) -> Result<Vec<u8>, String> {
        let g = region
            .frame_grant(grant_ref, need)
            .map_err(|e| e.to_string())?;
        if len > u64::from(g.len) {
            return Err("longer than the grant".into());
        }
        let at = g.gpa as usize;
        self.0
            .get(at..at + len as usize)
            .map(<[u8]>::to_vec)
            .ok_or_else(|| "not guest RAM".into())
    }
}

#[test]
fn a_module_list_granted_from_guest_ram_is_read_only_by_a_transport_that_owns_it() {
    let now = Instant::now();
    let mut e = ModuleEntry {
        flags: MODULE_FLAG_FRONTEND,
        ..Default::default()
    };
    fill_c_str(&mut e.name, b"vesper_mini");
    let mut ram = vec![0u8; 0x4000];
    ram[0x2000..0x2000 + e.as_slice().len()].copy_from_slice(e.as_slice());
    for owns_ram in [true, false] {
        let mut s = Session::new(cfg());
        if owns_ram {
            s = s.with_guest_frames(Box::new(FakeRam(ram.clone())));
        }
        let mut g = Guest::new();
        up(&mut s, &mut g, now);
        s.submit(Command::List, now);
        s.poll(&g.region, now);
        let cmd: CommandResponse = g.response().payload_as().unwrap();
        g.grant(
            3,
            0x2000,
            4096,
            GRANT_READ | GRANT_GUEST_FRAMES,
            GRANT_OWNER_MODLIST,
        );
        let c = CompletionRequest {
            command_id: cmd.command_id,
            op: OP_LIST,
            data_grant: 3,
            data_len: e.as_slice().len() as u32,
            ..Default::default()
        };
        g.post(REQ_COMPLETION, &c);
        let r = done(s.poll(&g.region, now));
        if owns_ram {
            let Ok(Reply::Modules(m)) = r else {
                panic!("{r:?}")
            };
            assert_eq!(m[0].name, "vesper_mini");
            assert!(m[0].frontend);
        } else {
            // An ivshmem host cannot reach guest RAM: refused by name, never read as
            // a region offset.
            assert!(
                matches!(
                    r,
                    Err(CommandError::Misbehaving(ShmemError::GrantIsGuestFrames(3)))
                ),
                "{r:?}"
            );
        }
    }
}

fn load(name: &str, bytes: usize, init_timeout: Option<Duration>) -> Command {
    Command::Load {
        name: name.into(),
        image: vec![0x5A; bytes].into(),
        params: String::new(),
        init_timeout,
    }
}

fn init_ended(out: &PollOutcome) -> Option<(&Result<(), CommandError>, bool)> {
    out.events.iter().find_map(|e| match e {
        SessionEvent::InitEnded {
            outcome,
            after_host_gave_up,
            ..
        } => Some((outcome, *after_host_gave_up)),
        _ => None,
    })
}

#[test]
fn a_long_module_init_frees_the_guest_for_other_commands_and_its_end_is_reported() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    let id = s.submit(load("slow", 5000, None), now);
    s.poll(&g.region, now);
    let (cid, _) = guest_fetches(&mut s, &mut g, now);
    assert_eq!(g.init_starts(&mut s, cid, now), 0);
    // Long past the step timeout, init still runs: the load waits by the init limit.
    let later = now + Duration::from_secs(60);
    assert_eq!(
        s.next_deadline(),
        Some(now + DEFAULT_INIT_TIMEOUT),
        "only the init limit is pending"
    );
    // The guest's command thread is free: a list is dispatched and answered meanwhile.
    g.wait();
    let list = s.submit(Command::List, later);
    assert!(s.poll(&g.region, later).notify);
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    assert_eq!((cmd.command_id, cmd.op), (list, OP_LIST));
    g.complete(list, OP_LIST, 0, STAGE_DONE, "");
    let out = s.poll(&g.region, later);
    assert!(matches!(
        out.events[..],
        [SessionEvent::Done {
            id,
            result: Ok(Reply::Modules(_))
        }] if id == list
    ));
    g.response();
    // Init returns: the load completes, and the end is reported as such.
    g.complete(cid, OP_LOAD, 0, STAGE_DONE, "");
    let out = s.poll(&g.region, later);
    assert!(matches!(
        &out.events[0],
        SessionEvent::Done { id: done_id, result: Ok(Reply::Loaded { bytes: 5000, .. }) } if *done_id == id
    ));
    assert!(matches!(init_ended(&out), Some((Ok(()), false))));
    assert_eq!(g.response().header.status, 0);
}

#[test]
fn an_init_past_its_limit_ends_the_command_and_a_late_end_is_still_reported() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    let limit = Duration::from_secs(30);
    let id = s.submit(load("slow", 100, Some(limit)), now);
    s.poll(&g.region, now);
    let (cid, _) = guest_fetches(&mut s, &mut g, now);
    assert_eq!(g.init_starts(&mut s, cid, now), 0);
    assert!(s.poll(&g.region, now + limit / 2).events.is_empty());
    let out = s.poll(&g.region, now + limit);
    let e = done(out).unwrap_err();
    assert!(
        matches!(&e, CommandError::InitStillRunning { name, after } if name == "slow" && *after == limit),
        "{e}"
    );
    let text = e.to_string();
    assert!(
        text.contains("init of slow still running in the guest after 30s")
            && text.contains("will be live or gone when it returns")
            && text.contains("vesper lsmod"),
        "{text}"
    );
    // Init fails later: no second answer to the command, but the end is an event.
    g.complete(
        cid,
        OP_LOAD,
        -110,
        STAGE_INIT_MODULE,
        "slow: hardware never answered",
    );
    let out = s.poll(&g.region, now + limit * 2);
    assert!(!out
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::Done { id: d, .. } if *d == id)));
    match init_ended(&out) {
        Some((
            Err(CommandError::InitFailed {
                errno: -110, log, ..
            }),
            true,
        )) => {
            assert!(log.contains("hardware never answered"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(g.response().header.status, 0);
}

#[test]
fn a_guest_may_not_start_init_before_the_whole_image_or_after_the_host_gave_up() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    s.submit(load("p", 9000, None), now);
    s.poll(&g.region, now);
    let cmd: CommandResponse = g.response().payload_as().unwrap();
    // Nothing fetched yet: not a stage this load can enter; the load goes on.
    assert_eq!(g.init_starts(&mut s, cmd.command_id, now), -EINVAL);
    // Another command's id: the host knows nothing of it.
    assert_eq!(g.init_starts(&mut s, cmd.command_id + 100, now), -ECANCELED);
    // The host gives up on the load before the guest says init starts ...
    let later = now + Duration::from_secs(11);
    assert!(matches!(
        done(s.poll(&g.region, later)).unwrap_err(),
        CommandError::Timeout {
            stage: "transfer",
            ..
        }
    ));
    // ... so the guest is told not to start it, and nothing is loaded.
    g.post(
        REQ_PROGRESS,
        &ProgressRequest {
            command_id: cmd.command_id,
            stage: STAGE_INIT_MODULE,
            reserved: 0,
        },
    );
    let out = s.poll(&g.region, later);
    assert!(matches!(out.events[0], SessionEvent::LateStep { .. }));
    assert_eq!(g.response().header.status, -ECANCELED);
}

#[test]
fn a_load_with_init_running_fails_when_the_session_closes() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    let id = s.submit(load("a", 10, None), now);
    s.poll(&g.region, now);
    let (cid, _) = guest_fetches(&mut s, &mut g, now);
    assert_eq!(g.init_starts(&mut s, cid, now), 0);
    let closed = s.close();
    assert!(matches!(
        closed[..],
        [SessionEvent::Done { id: d, result: Err(CommandError::SessionClosed) }] if d == id
    ));
    assert_eq!(s.next_deadline(), None);
}
