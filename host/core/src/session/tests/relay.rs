//! Session tests of relay channels: open, records, close, resume on a new host, and
//! channels dying with their generation.

use super::*;

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
