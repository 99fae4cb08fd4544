//! Load: 1,000 simulated guests (host threads speaking the real shared-memory protocol:
//! hello, relay channel, urgent exit records, doorbells) and 100 event subscribers on one
//! vesperd. Reports events/s, delivery latency (event published → line read by a
//! subscriber) and daemon memory per guest.
//!
//! `cargo build --release --workspace --bins && cargo bench -p vesper-e2e --bench load`

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use vesper_e2e::Daemon;

const GUESTS: usize = 1000;
const RATE: f64 = 1.0;
const SUBSCRIBERS: usize = 100;
const RUN: Duration = Duration::from_secs(15);

fn now_ns() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
}

struct SubResult {
    events: u64,
    gaps: u64,
    latencies_us: Vec<f64>,
}

fn subscriber(socket: std::path::PathBuf, stop: Arc<AtomicBool>) -> SubResult {
    let s = UnixStream::connect(socket).expect("connect");
    s.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    (&s).write_all(
        b"{\"op\":\"subscribe\",\"follow\":true,\"filter\":{\"kinds\":[\"service_exit\"]}}\n",
    )
    .unwrap();
    let mut r = BufReader::new(s);
    let mut out = SubResult {
        events: 0,
        gaps: 0,
        latencies_us: Vec::new(),
    };
    let mut line = String::new();
    while !stop.load(Ordering::Relaxed) {
        line.clear();
        match r.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {
                let t = now_ns();
                let v: serde_json::Value = serde_json::from_str(&line).unwrap();
                let res = &v["result"];
                if res["reply"] == "gap" {
                    out.gaps += res["missed"].as_u64().unwrap_or(0);
                } else if let Some(published) = res["time_ns"].as_u64() {
                    out.events += 1;
                    out.latencies_us
                        .push((t.saturating_sub(published)) as f64 / 1e3);
                }
            }
            Err(_) => continue,
        }
    }
    out
}

fn main() {
    let idle = Daemon::start(&[]);
    std::thread::sleep(Duration::from_secs(1));
    let base_rss = idle.rss_kib();
    drop(idle);

    let guests = GUESTS.to_string();
    let rate = RATE.to_string();
    let d = Daemon::start(&["--simulate-guests", &guests, "--simulate-rate", &rate]);
    std::thread::sleep(Duration::from_secs(3));
    let stop = Arc::new(AtomicBool::new(false));
    let subs: Vec<_> = (0..SUBSCRIBERS)
        .map(|_| {
            let (socket, stop) = (d.socket.clone(), stop.clone());
            std::thread::spawn(move || subscriber(socket, stop))
        })
        .collect();
    let started = Instant::now();
    std::thread::sleep(RUN);
    let elapsed = started.elapsed().as_secs_f64();
    let rss = d.rss_kib();
    stop.store(true, Ordering::Relaxed);
    let results: Vec<SubResult> = subs.into_iter().map(|h| h.join().unwrap()).collect();

    // Every subscriber follows every service exit: what one received or missed is what
    // was published while it listened.
    let published = results.iter().map(|r| r.events + r.gaps).max().unwrap_or(0);
    let delivered: u64 = results.iter().map(|r| r.events).sum();
    let gaps: u64 = results.iter().map(|r| r.gaps).sum();
    let mut lat: Vec<f64> = results.into_iter().flat_map(|r| r.latencies_us).collect();
    lat.sort_by(f64::total_cmp);
    let pct = |q: f64| lat[((lat.len() - 1) as f64 * q).round() as usize];
    println!("\nload: {GUESTS} simulated guests x {RATE} watched-service exits/s, {SUBSCRIBERS} subscribers, {:.0} s", elapsed);
    println!(
        "events published             {:>12.0} /s",
        published as f64 / elapsed
    );
    println!(
        "events delivered (all subs)  {:>12.0} /s  ({:.0} /s per subscriber)",
        delivered as f64 / elapsed,
        delivered as f64 / elapsed / SUBSCRIBERS as f64
    );
    println!("missed (gaps)                {:>12}", gaps);
    println!(
        "delivery latency (µs)        p50 {:.0}  p99 {:.0}  max {:.0}",
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
    println!(
        "daemon memory                {:>12} KiB with the guests, {} KiB idle -> {:.1} KiB per guest",
        rss,
        base_rss,
        (rss.saturating_sub(base_rss)) as f64 / GUESTS as f64
    );
}
