//! What the cluster benchmarks share (tests/benches/cluster_*.rs): a series of failovers
//! of one guest back and forth between two nodes, and the figures they print. Each bench
//! says how one failover is caused and timed; the series does the rest the same way
//! for all of them: print the round, clear the failure so the guest may come back, wait
//! until it runs where the next round starts.

use std::time::Duration;

use crate::cluster::{ClusterLab, Failover};

/// A pseudo-random duration in [0, max) (the clock's nanoseconds; no RNG crate needed):
/// kills at a random phase of a monitor interval, which the steps before them are
/// regular enough to lock onto otherwise.
pub fn jitter(max: Duration) -> Duration {
    let ns = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    max.mul_f64(f64::from(ns) / 1e9)
}

/// The `q` quantile (0.5 = p50, 1.0 = max) of `v`, nearest rank; NaN when empty.
pub fn pct(v: &[f64], q: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    v[((v.len() - 1) as f64 * q).round() as usize]
}

/// The clocks of a failover, in the order of [`Series::clocks`].
pub const CLOCK_NAMES: [&str; 3] = [
    "failure recorded",
    "running on the other node",
    "service answering there",
];

/// A failover series' figures, one entry per round.
#[derive(Debug, Default, Clone)]
pub struct Series {
    pub detected: Vec<f64>,
    pub moved: Vec<f64>,
    pub answering: Vec<f64>,
    /// The node the guest runs on after the last round.
    pub at: String,
}

impl Series {
    /// The three clocks with their names, as the benches print them.
    pub fn clocks(&self) -> [(&'static str, &[f64]); 3] {
        [
            (CLOCK_NAMES[0], &self.detected),
            (CLOCK_NAMES[1], &self.moved),
            (CLOCK_NAMES[2], &self.answering),
        ]
    }

    /// One line per clock: `kill -> WHAT  p50 X s  max Y s`.
    pub fn print(&self, indent: &str) {
        for (what, v) in self.clocks() {
            println!(
                "{indent}kill -> {what:26} p50 {:6.2} s  max {:6.2} s",
                pct(v, 0.5),
                pct(v, 1.0)
            );
        }
    }
}

/// `n` failovers of `resources` (the guest's first) between `from` and `to`, each made
/// and timed by `one(from, to)` (which also waits until the guest's service answers on
/// `from` first, if it must); after each, `crm_resource --cleanup` forgets the failure
/// and the series waits until the resources run on the new `from`. Prints each round
/// as `LABEL i from -> to: ...`.
pub fn failover_series(
    lab: &ClusterLab,
    label: &str,
    resources: &[&str],
    (from, to): (&str, &str),
    n: usize,
    mut one: impl FnMut(&str, &str) -> Failover,
) -> Series {
    let (mut from, mut to) = (from.to_string(), to.to_string());
    let mut s = Series::default();
    for i in 0..n {
        let f = one(&from, &to);
        println!(
            "{label} {:2} {from} -> {to}: failure recorded {:6.2} s, running on {to} {:6.2} s, svc answering {:6.2} s",
            i + 1,
            f.detected.as_secs_f64(),
            f.moved.as_secs_f64(),
            f.answering.as_secs_f64()
        );
        s.detected.push(f.detected.as_secs_f64());
        s.moved.push(f.moved.as_secs_f64());
        s.answering.push(f.answering.as_secs_f64());
        lab.exec(
            &to,
            &["crm_resource", "--cleanup", "--resource", resources[0]],
        )
        .ok();
        std::mem::swap(&mut from, &mut to);
        lab.wait_started(resources, &from, Duration::from_secs(120));
    }
    s.at = from;
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_are_nearest_rank() {
        let v = [3.0, 1.0, 2.0, 5.0, 4.0];
        assert_eq!(pct(&v, 0.5), 3.0);
        assert_eq!(pct(&v, 1.0), 5.0);
        assert_eq!(pct(&v, 0.0), 1.0);
        assert!(pct(&[], 0.5).is_nan());
    }

    #[test]
    fn jitter_stays_below_its_bound() {
        for _ in 0..100 {
            assert!(jitter(Duration::from_secs(2)) < Duration::from_secs(2));
        }
    }
}
