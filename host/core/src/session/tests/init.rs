//! Session tests of long module inits: the guest is free for other commands meanwhile,
//! limits, late ends, and the order of transfer and init.

use super::*;

fn load_with_limit(name: &str, bytes: usize, init_timeout: Option<Duration>) -> Command {
    let mut c = load(name, vec![0x5A; bytes]);
    if let Command::Load {
        init_timeout: limit,
        ..
    } = &mut c
    {
        *limit = init_timeout;
    }
    c
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
    let (mut s, mut g) = connected(now);
    let id = s.submit(load_with_limit("slow", 5000, None), now);
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
    let (mut s, mut g) = connected(now);
    let limit = Duration::from_secs(30);
    let id = s.submit(load_with_limit("slow", 100, Some(limit)), now);
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
    let (mut s, mut g) = connected(now);
    s.submit(load_with_limit("p", 9000, None), now);
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
    let (mut s, mut g) = connected(now);
    let id = s.submit(load_with_limit("a", 10, None), now);
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
