//! The probes loaded into this host's kernel (root only; skipped loudly otherwise):
//! a refused object carries the verifier's log, and the scheduler probes see a stopped
//! thread stall while a sleeping one does not.

use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use vesper_hostprobe::{
    unverifiable_object, Config, HostProbeError, HostProbes, Stall, VcpuSource,
};

fn root() -> bool {
    // SAFETY: geteuid cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    if !root {
        eprintln!("*** SKIPPED: host probes need root");
    }
    root
}

#[test]
fn an_object_the_verifier_refuses_gives_its_log() {
    if !root() {
        return;
    }
    let mut config = Config::with_threshold(Duration::from_millis(200));
    config.object = Some(unverifiable_object().expect("built with clang").to_vec());
    let Err(e) = HostProbes::start(config, Box::new(|_| {})) else {
        panic!("the verifier took a program that dereferences a maybe-NULL map value");
    };
    let HostProbeError::Verifier { program, log, .. } = &e else {
        panic!("not a verifier error: {e:?}");
    };
    assert_eq!(program, "sched_switch");
    assert!(log.contains("map_value_or_null"), "{log}");
    let text = e.to_string();
    assert!(
        text.contains("verifier refused") && text.contains("map_value_or_null"),
        "{text}"
    );
    assert!(
        text.len() < 2000,
        "the log is shortened: {} chars",
        text.len()
    );
}

#[test]
fn a_stopped_thread_stalls_once_and_a_sleeping_one_never() {
    if !root() {
        return;
    }
    let stalls: Arc<Mutex<Vec<Stall>>> = Arc::default();
    let seen = stalls.clone();
    let probes = HostProbes::start(
        Config::with_threshold(Duration::from_millis(300)),
        Box::new(move |s| seen.lock().unwrap().push(s)),
    )
    .expect("host probes load as root");
    assert!(probes.attached().iter().any(|t| t == "sched:sched_switch"));
    let mut stopped = Command::new("sleep").arg("30").spawn().unwrap();
    let mut sleeping = Command::new("sleep").arg("30").spawn().unwrap();
    let (a, b) = (stopped.id(), sleeping.id());
    probes.watch(
        "stopped",
        VcpuSource::Listed(Arc::new(move || vec![(0, a)])),
    );
    probes.watch(
        "sleeping",
        VcpuSource::Listed(Arc::new(move || vec![(0, b)])),
    );
    std::thread::sleep(Duration::from_millis(200));
    // SAFETY: kill with a pid we spawned and a valid signal.
    assert_eq!(unsafe { libc::kill(a as i32, libc::SIGSTOP) }, 0);
    let started = Instant::now();
    while stalls.lock().unwrap().is_empty() && started.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(700));
    let got = stalls.lock().unwrap().clone();
    let figures = probes.figures("stopped").expect("watched");
    // SAFETY: as above.
    unsafe { libc::kill(a as i32, libc::SIGCONT) };
    let _ = (
        stopped.kill(),
        sleeping.kill(),
        stopped.wait(),
        sleeping.wait(),
    );
    assert_eq!(
        got.len(),
        1,
        "one stall, of the stopped thread only: {got:?}"
    );
    assert_eq!((got[0].guest.as_str(), got[0].tid), ("stopped", a));
    assert_eq!(got[0].state.name(), "stopped");
    assert!(got[0].stalled_ms > 300, "{got:?}");
    assert_eq!(figures.stalls, 1);
    assert!(figures.vcpus[0].stalled, "{figures:?}");
    assert_eq!(probes.figures("sleeping").unwrap().stalls, 0);
}
