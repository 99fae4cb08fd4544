//! Session tests: the guest's part is played over the real region layout.

use std::sync::Arc;

use super::completion::EEXIST;
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
        self.hello_of_version(*FRONTEND_VERSIONS.end())
    }

    fn hello_of_version(&mut self, frontend_version: u32) -> u64 {
        let mut h = HelloRequest {
            frontend_version,
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

/// A session and a guest that has said hello.
fn connected(now: Instant) -> (Session, Guest) {
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    up(&mut s, &mut g, now);
    (s, g)
}

/// Loading `image` as module `name`, no parameters, the default init limit.
fn load(name: &str, image: Vec<u8>) -> Command {
    Command::Load {
        name: name.into(),
        image: image.into(),
        params: String::new(),
        init_timeout: None,
    }
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
    let (mut s, mut g) = connected(now);
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
    let (mut s, mut g) = connected(now);
    s.submit(load("bad", vec![1u8; 10]), now);
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
    let (mut s, mut g) = connected(now);
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
    let (mut s, mut g) = connected(now);
    s.submit(load("p", vec![9u8; 9000]), now);
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
    let (mut s, mut g) = connected(now);
    s.submit(load("p", vec![0xAB; 100]), now);
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
    let (mut s, mut g) = connected(now);
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
    let (mut s, mut g) = connected(now);
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
fn a_hello_of_a_frontend_version_the_host_does_not_speak_is_refused_and_reported() {
    let now = Instant::now();
    let (mut s, mut g) = (Session::new(cfg()), Guest::new());
    let other = FRONTEND_VERSIONS.end() + 1;
    g.hello_of_version(other);
    g.wait();
    s.submit(Command::List, now);
    let out = s.poll(&g.region, now);
    let refused = out.events.iter().find_map(|e| match e {
        SessionEvent::HelloRefused {
            info,
            frontend_version,
        } => Some((info.kernel_release.clone(), *frontend_version)),
        _ => None,
    });
    assert_eq!(refused, Some(("6.1.0-test".into(), other)));
    assert!(!out
        .events
        .iter()
        .any(|e| matches!(e, SessionEvent::GuestUp { .. })));
    let r = g.response();
    assert_eq!(r.header.kind, REQ_HELLO | RSP_FLAG);
    assert_eq!(r.header.status, -EPROTO);
    assert!(s.guest().is_none());
    // No session: the frontend's standing wait gets no command.
    assert!(take_response(&g.region).unwrap().is_none());
    // A frontend of a version the host speaks is served as usual afterwards.
    g.generation += 1;
    up(&mut s, &mut g, now);
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
    let (mut s, g) = connected(now);
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

mod init;
mod relay;
