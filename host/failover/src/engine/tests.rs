use serde_json::{json, Value};

use super::*;

const SEC: u64 = 1_000_000_000;

const GUESTS: &str = r#"
[host]
max_guests = 4
max_memory_mib = 4096

[[guest]]
name = "web1"
memory_mib = 512

[[guest]]
name = "web2"
memory_mib = 512

[[guest]]
name = "web3"
memory_mib = 1024

[[guest]]
name = "solo"
memory_mib = 256

[[group]]
name = "web"
primary = "web1"
standbys = ["web2", "web3"]
"#;

/// The proof scenario's rules: a killed service or a panic fails over; panics also
/// notify.
const RULES: &str = r#"
[[rule]]
on = "service_exit"
where = { comm = "svc" }
group = "web"
action = "start_standby"

[[rule]]
on = "panic"
group = "web"
action = "start_standby"

[[rule]]
on = "guest_panicked"
group = "web"
action = "start_standby"

[[rule]]
on = "panic"
action = "hook"
command = ["/usr/local/bin/notify", "--x"]

[[rule]]
on = "vm_exit"
action = "restart"
"#;

fn engine(rules: &str) -> Engine {
    Engine::new(Policy::from_toml(&format!("{GUESTS}{rules}")).unwrap())
}

fn ev(seq: u64, guest: &str, kind: EventKind, payload: Value) -> Event {
    Event {
        seq,
        guest: guest.into(),
        kind,
        time_ns: seq * SEC,
        happened_ns: None,
        source: Source::Process,
        payload,
    }
}

fn exit(seq: u64, guest: &str, comm: &str, signal: i64) -> Event {
    let payload = json!({ "type": "exit", "pid": 42, "tid": 42, "exit_code": 9,
                          "signal": signal, "status": 0, "comm": comm });
    ev(seq, guest, EventKind::ServiceExit, payload)
}

fn up(seq: u64, guest: &str) -> Event {
    ev(seq, guest, EventKind::GuestUp, Value::Null)
}

fn failovers(ds: &[Decision]) -> Vec<&Action> {
    ds.iter()
        .map(|d| &d.action)
        .filter(|a| a.is_failover())
        .collect()
}

fn standby(standby: &str, replaces: &str, stop_failed: bool) -> Action {
    Action::StartStandby {
        standby: standby.into(),
        replaces: replaces.into(),
        stop_failed,
    }
}

fn give_up(guest: &str) -> Action {
    Action::GiveUp {
        guest: guest.into(),
    }
}

fn restart(guest: &str) -> Action {
    Action::Restart {
        guest: guest.into(),
    }
}

#[test]
fn a_killed_service_starts_the_first_standby_and_says_why() {
    let mut e = engine(RULES);
    let view = View::new([("web1", 512)]);
    let ds = e.on_event(&exit(7, "web1", "svc", 9), &view, 7 * SEC);
    assert_eq!(ds.len(), 1, "{ds:#?}");
    let d = &ds[0];
    assert_eq!(d.action, standby("web2", "web1", false));
    assert_eq!(
        (
            d.guest.as_str(),
            d.group.as_deref(),
            d.rule,
            d.event_seq,
            d.incident
        ),
        ("web1", Some("web"), 1, 7, Some(1))
    );
    for w in [
        "service_exit of web1 (event 7) matched rule 1 (where comm = \"svc\")",
        "starting standby web2 (512 MiB; then 2 of 4 guests and 1024 of 4096 MiB in use)",
        "web1 keeps running",
    ] {
        assert!(d.reason.contains(w), "{:?} lacks {w:?}", d.reason);
    }
    assert_eq!(e.active("web"), Some("web2"));

    // The decision is an event of its own, carrying the reason.
    let de = d.to_event(8 * SEC);
    assert_eq!(
        (de.kind, &de.source, de.guest.as_str()),
        (EventKind::Decision, &Source::Engine, "web1")
    );
    assert_eq!(de.payload["action"]["type"], "start_standby");
    assert_eq!(de.payload["action"]["standby"], "web2");
    assert_eq!(de.payload["reason"], d.reason.as_str());
    let back: Decision = serde_json::from_value(de.payload.clone()).unwrap();
    assert_eq!(&back, d);
    // … and the engine never answers its own decisions.
    assert!(e.on_event(&de, &view, 8 * SEC).is_empty());
}

#[test]
fn where_conditions_compare_payload_fields() {
    let mut e = engine(
        r#"
[[rule]]
on = "service_exit"
where = { comm = "svc", signal = 9, record = { ok = true } }
action = "stop"
"#,
    );
    let view = View::new([("solo", 256)]);
    let with = |comm: &str, signal: i64, ok: Value| {
        let mut e = exit(1, "solo", comm, signal);
        e.payload["record"] = json!({ "ok": ok });
        e
    };
    assert!(e
        .on_event(&with("other", 9, json!(true)), &view, 0)
        .is_empty());
    assert!(e
        .on_event(&with("svc", 15, json!(true)), &view, 0)
        .is_empty());
    assert!(e
        .on_event(&with("svc", 9, json!("true")), &view, 0)
        .is_empty());
    assert!(e.on_event(&exit(1, "solo", "svc", 9), &view, 0).is_empty());
    let ds = e.on_event(&with("svc", 9, json!(true)), &view, 0);
    assert_eq!(
        failovers(&ds),
        [&Action::Stop {
            guest: "solo".into()
        }]
    );
    assert!(
        ds[0].reason.contains("record.ok = true"),
        "{}",
        ds[0].reason
    );
}

#[test]
fn a_panic_reported_twice_is_acted_on_once() {
    for (first, second) in [
        (EventKind::Panic, EventKind::GuestPanicked),
        (EventKind::GuestPanicked, EventKind::Panic),
    ] {
        let mut e = engine(RULES);
        let mut view = View::new([("web1", 512)]);
        let mut all = e.on_event(&ev(10, "web1", first, json!({"message": "boom"})), &view, 0);
        all.extend(e.on_event(&ev(11, "web1", second, Value::Null), &view, 0));
        // The daemon fences web1: its VM process ends.
        view = View::new([("web2", 512)]);
        all.extend(e.on_event(&ev(12, "web1", EventKind::VmExit, Value::Null), &view, 0));
        assert_eq!(
            failovers(&all),
            [&standby("web2", "web1", true)],
            "{first} then {second}: {all:#?}"
        );
        assert!(
            all[0].reason.contains("stopping web1 ("),
            "{}",
            all[0].reason
        );
        let incidents = e.incidents();
        assert_eq!(incidents.len(), 1);
        assert!(incidents[0].is_open());
        assert_eq!(
            (
                incidents[0].opened_by,
                incidents[0].kind,
                incidents[0].suppressed
            ),
            (10, first, 2)
        );
        // web1 back up closes it.
        assert!(e.on_event(&up(13, "web1"), &view, 0).is_empty());
        assert_eq!(e.incidents()[0].closed_by, Some(13));
        assert!(e.open_incident("web1").is_none());
    }
}

#[test]
fn restart_storms_give_up_after_the_limit_and_the_window_resets_it() {
    let mut e = engine(
        "[[rule]]\non = \"vm_exit\"\naction = \"restart\"\n[limits]\nmax_restarts = 3\nwindow_secs = 600\n",
    );
    let down = View::default();
    let mut seq = 0;
    let mut fail = |e: &mut Engine, t: u64| {
        seq += 2;
        let ds = e.on_event(
            &ev(seq, "solo", EventKind::VmExit, Value::Null),
            &down,
            t * SEC,
        );
        e.on_event(&up(seq + 1, "solo"), &down, t * SEC);
        ds
    };
    for (i, t) in [0, 10, 20].into_iter().enumerate() {
        let ds = fail(&mut e, t);
        assert_eq!(failovers(&ds), [&restart("solo")]);
        assert!(ds[0]
            .reason
            .contains(&format!("restart {} of at most 3 in 600 s", i + 1)));
    }
    let ds = fail(&mut e, 30);
    assert_eq!(failovers(&ds), [&give_up("solo")]);
    assert!(
        ds[0]
            .reason
            .contains("solo restarted 3 times in 600 s (max_restarts = 3); giving up"),
        "{}",
        ds[0].reason
    );
    assert_eq!(fail(&mut e, 599)[0].action, give_up("solo"));
    // The restart at t = 0 s has left the window.
    assert_eq!(failovers(&fail(&mut e, 600)), [&restart("solo")]);
    assert_eq!(failovers(&fail(&mut e, 605)), [&give_up("solo")]);
}

#[test]
fn a_given_up_guest_is_left_alone_until_it_is_up_again() {
    let mut e =
        engine("[[rule]]\non = \"vm_exit\"\naction = \"restart\"\n[limits]\nmax_restarts = 1\n");
    let v = View::default();
    let fail = |seq| ev(seq, "solo", EventKind::VmExit, Value::Null);
    assert_eq!(e.on_event(&fail(1), &v, 0)[0].action, restart("solo"));
    assert!(e.on_event(&fail(2), &v, 0).is_empty());
    e.on_event(&up(3, "solo"), &v, 0);
    assert_eq!(e.on_event(&fail(4), &v, 0)[0].action, give_up("solo"));
    assert!(e.on_event(&fail(5), &v, 0).is_empty());
    assert_eq!(e.open_incident("solo").unwrap().suppressed, 1);
}

#[test]
fn when_no_standby_fits_the_engine_gives_up_and_names_what_does_not_fit() {
    let mut e = engine(RULES);
    // 3584 of 4096 MiB in use; a service exit keeps web1 running.
    let view = View::new([("web1", 512), ("big", 3072), ("web2x", 1)]);
    let ds = e.on_event(&exit(3, "web1", "svc", 9), &view, 0);
    assert_eq!(failovers(&ds), [&give_up("web1")]);
    let r = &ds[0].reason;
    assert!(
        r.contains("no standby of group web can take over from web1: web2 needs 512 MiB, 3585 of 4096 MiB in use; web3 needs 1024 MiB, 3585 of 4096 MiB in use; giving up"),
        "{r}"
    );
    assert_eq!(e.active("web"), Some("web1"));

    // Guest count: four run already.
    let mut e = engine(RULES);
    let view = View::new([("web1", 512), ("a", 1), ("b", 1), ("web2", 512)]);
    let ds = e.on_event(&exit(3, "web1", "svc", 9), &view, 0);
    assert!(
        ds[0]
            .reason
            .contains("web2 is running already; web3 would be guest 5 of at most 4 (4 running)"),
        "{}",
        ds[0].reason
    );
}

#[test]
fn a_dead_primary_frees_its_capacity_for_the_standby() {
    let mut e = engine(RULES);
    // web2 fits only once web1's 512 MiB are counted as free.
    let view = View::new([("web1", 512), ("big", 3584)]);
    let ds = e.on_event(&ev(1, "web1", EventKind::Panic, Value::Null), &view, 0);
    assert_eq!(failovers(&ds), [&standby("web2", "web1", true)]);
    assert!(
        ds[0].reason.contains("4096 of 4096 MiB"),
        "{}",
        ds[0].reason
    );
}

#[test]
fn hooks_accompany_the_failover_with_the_event_in_their_environment() {
    let mut e = engine(RULES);
    let view = View::new([("web1", 512)]);
    let event = ev(
        21,
        "web1",
        EventKind::Panic,
        json!({"cpu": 0, "message": "boom"}),
    );
    let ds = e.on_event(&event, &view, 0);
    let actions: Vec<&str> = ds.iter().map(|d| d.action.name()).collect();
    assert_eq!(actions, ["start_standby", "hook"]);
    let hook = &ds[1];
    assert_eq!((hook.rule, hook.incident), (4, Some(1)));
    let Action::Hook {
        command,
        timeout_secs,
        env,
    } = &hook.action
    else {
        unreachable!()
    };
    assert_eq!(command, &["/usr/local/bin/notify", "--x"]);
    assert_eq!(*timeout_secs, 10);
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    assert_eq!(get("VESPER_EVENT_SEQ"), Some("21"));
    assert_eq!(get("VESPER_EVENT_KIND"), Some("panic"));
    assert_eq!(get("VESPER_GUEST"), Some("web1"));
    assert_eq!(get("VESPER_GROUP"), Some("web"));
    assert_eq!(get("VESPER_RULE"), Some("4"));
    assert_eq!(get("VESPER_ACTION"), Some("start_standby"));
    assert_eq!(get("VESPER_REASON"), Some(ds[0].reason.as_str()));
    let json: Event = serde_json::from_str(get("VESPER_EVENT_JSON").unwrap()).unwrap();
    assert_eq!(json, event);
    assert!(hook
        .reason
        .contains("running hook `/usr/local/bin/notify --x` (timeout 10 s)"));

    // A guest in no group: no group variable, no failover.
    let ds = e.on_event(&ev(22, "solo", EventKind::Panic, Value::Null), &view, 0);
    assert_eq!(ds.len(), 1);
    let Action::Hook { env, .. } = &ds[0].action else {
        unreachable!()
    };
    assert!(!env.iter().any(|(k, _)| k == "VESPER_GROUP"));
    assert!(env.contains(&("VESPER_ACTION".into(), "none".into())));
    assert_eq!(ds[0].incident, None);
}

#[test]
fn after_a_takeover_the_new_active_fails_over_to_the_next_standby() {
    let mut e = engine(RULES);
    let ds = e.on_event(&exit(1, "web1", "svc", 9), &View::new([("web1", 512)]), 0);
    assert_eq!(failovers(&ds), [&standby("web2", "web1", false)]);
    let view = View::new([("web1", 512), ("web2", 512)]);
    e.on_event(&up(2, "web2"), &view, 0);
    let ds = e.on_event(&exit(3, "web2", "svc", 9), &view, 0);
    assert_eq!(failovers(&ds), [&standby("web3", "web2", false)]);
    assert_eq!(ds[0].group.as_deref(), Some("web"));
    assert_eq!(e.active("web"), Some("web3"));
    // web3 fails too: web1 and web2 failed and weren't up since.
    let view = View::new([("web3", 1024)]);
    let ds = e.on_event(&ev(4, "web3", EventKind::Panic, Value::Null), &view, 0);
    assert_eq!(failovers(&ds), [&give_up("web3")]);
    assert!(
        ds[0].reason.contains(
            "web1 failed (incident 1) and hasn't been up since; web2 failed (incident 2)"
        ),
        "{}",
        ds[0].reason
    );
}

#[test]
fn only_the_active_member_fails_over_and_a_recovered_one_is_a_candidate_again() {
    let mut e = engine(RULES);
    e.on_event(&exit(1, "web1", "svc", 9), &View::new([("web1", 512)]), 0);
    let view = View::new([("web1", 512), ("web2", 512)]);
    e.on_event(&up(2, "web2"), &view, 0);
    e.on_event(&up(3, "web1"), &view, 0);
    // web1 is no longer the active one: its service exit fails nothing over.
    assert!(e.on_event(&exit(4, "web1", "svc", 9), &view, 0).is_empty());
    assert_eq!(e.active("web"), Some("web2"));
    // web2 dies; web3 is next, but too big beside what runs; web1 is up but running.
    let view = View::new([("web1", 512), ("web2", 512), ("big", 2800)]);
    let ds = e.on_event(&ev(5, "web2", EventKind::Panic, Value::Null), &view, 0);
    assert_eq!(failovers(&ds), [&give_up("web2")]);
    assert!(
        ds[0].reason.contains("web3 needs 1024 MiB"),
        "{}",
        ds[0].reason
    );
    assert!(
        ds[0].reason.contains("web1 is running already"),
        "{}",
        ds[0].reason
    );
    // Wrapping around: once web1 is down and up-to-date, it is the candidate after web3.
    let mut e = engine(RULES);
    e.on_event(&exit(1, "web1", "svc", 9), &View::new([("web1", 512)]), 0);
    e.on_event(&up(2, "web1"), &View::default(), 0);
    let view = View::new([("web2", 512), ("big", 3200)]);
    let ds = e.on_event(&ev(3, "web2", EventKind::Panic, Value::Null), &view, 0);
    assert_eq!(failovers(&ds), [&standby("web1", "web2", true)]);
}

#[test]
fn at_most_one_failover_action_per_incident() {
    let mut e = engine(
        "[[rule]]\non = \"oom\"\naction = \"fence\"\n[[rule]]\non = \"oom\"\naction = \"restart\"\n[[rule]]\non = \"oom\"\naction = \"hook\"\ncommand = [\"/bin/true\"]\n",
    );
    let ds = e.on_event(
        &ev(1, "solo", EventKind::Oom, Value::Null),
        &View::new([("solo", 256)]),
        0,
    );
    let actions: Vec<&str> = ds.iter().map(|d| d.action.name()).collect();
    assert_eq!(actions, ["fence", "hook"]);
    assert_eq!(
        ds[0].action,
        Action::Fence {
            guest: "solo".into()
        }
    );
    assert!(ds[0].reason.contains("fencing solo"));
}

#[test]
fn events_the_policy_has_no_say_in_cause_nothing() {
    let mut e = engine(RULES);
    let v = View::default();
    assert!(e
        .on_event(&ev(1, "stranger", EventKind::VmExit, Value::Null), &v, 0)
        .is_empty());
    assert!(e.on_event(&up(2, "web1"), &v, 0).is_empty());
    assert!(e
        .on_event(&ev(3, "web1", EventKind::Reset, Value::Null), &v, 0)
        .is_empty());
    assert!(e.incidents().is_empty());
}

#[test]
fn start_standby_for_a_guest_in_no_group_gives_up() {
    let mut e = engine("[[rule]]\non = \"panic\"\naction = \"start_standby\"\n");
    let ds = e.on_event(
        &ev(1, "solo", EventKind::Panic, Value::Null),
        &View::default(),
        0,
    );
    assert_eq!(failovers(&ds), [&give_up("solo")]);
    assert!(
        ds[0].reason.contains("solo is in no group"),
        "{}",
        ds[0].reason
    );
}

#[test]
fn a_restart_needs_room_when_the_guest_is_not_running() {
    let mut e = engine("[[rule]]\non = \"vm_exit\"\naction = \"restart\"\n");
    let full = View::new([("a", 1), ("b", 1), ("c", 1), ("d", 1)]);
    let ds = e.on_event(&ev(1, "solo", EventKind::VmExit, Value::Null), &full, 0);
    assert_eq!(failovers(&ds), [&give_up("solo")]);
    assert!(
        ds[0].reason.contains("solo would be guest 5 of at most 4"),
        "{}",
        ds[0].reason
    );
}

#[test]
fn closed_incidents_are_forgotten_past_the_cap() {
    let mut e = engine("[[rule]]\non = \"reset\"\naction = \"stop\"\n");
    let v = View::default();
    for i in 0..(KEEP_CLOSED_INCIDENTS as u64 + 10) {
        e.on_event(&ev(2 * i, "solo", EventKind::Reset, Value::Null), &v, 0);
        e.on_event(&up(2 * i + 1, "solo"), &v, 0);
    }
    assert_eq!(e.incidents().len(), KEEP_CLOSED_INCIDENTS);
    assert_eq!(e.incidents()[0].id, 11);
}
