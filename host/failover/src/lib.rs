//! Vesper's failover engine: a TOML policy (this host's capacities, the guests the engine
//! may start, groups of a primary and its standbys, rules `on <kind> [where …] → action`,
//! restart limits) and the pure logic that turns each event into decisions with reasons.
//!
//! The daemon calls [`Engine::on_event`] in-process for every event, carries the
//! decisions out, and publishes each one as an event of kind `decision`
//! ([`Decision::to_event`]). Nothing here does I/O but reading the policy file and the VM
//! definition files it names ([`Policy::load`]).
//!
//! Semantics, in short:
//! - Rules are tried in file order. Every matching `hook` rule gives a hook decision; the
//!   first matching `restart`/`start_standby`/`stop`/`fence` rule that applies gives the one
//!   failover decision (or `give_up`) and opens an incident for the guest.
//! - While a guest has an open incident, none of its events cause decisions; its next
//!   `guest_up` closes the incident. So the probe's `panic` and QMP's `guest_panicked`, and
//!   the `vm_exit` of the fenced guest, cause one action.
//! - Rules without `group` apply to every guest the policy declares; events of undeclared
//!   guests are ignored.
//! - `start_standby` applies to the group's active member only (the primary until a standby
//!   took over). It tries the members after the active one in the group's order, wrapping
//!   around, and skips those running, those with an open incident and those that don't fit
//!   the host's capacities given the [`View`]. The failed guest is stopped (and its
//!   capacity counted free) when the rule says `stop_failed = true`, or, by default, when
//!   the kind means it is dead (`panic`, `guest_panicked`, `vm_exit`). If nothing fits:
//!   `give_up`, with what didn't fit and why.
//! - `restart` is bounded: at most `max_restarts` per guest in `window_secs`, then
//!   `give_up`. A guest that isn't running must fit the host to be restarted.
#![deny(missing_docs)]

mod engine;
mod error;
mod policy;

pub use engine::{Action, Decision, Engine, Incident, View, KEEP_CLOSED_INCIDENTS};
pub use error::{Location, PolicyError};
pub use policy::{
    check, kills_guest, Condition, DefinitionRef, DumpPolicy, Group, GuestSpec, HostCapacity,
    Limits, Policy, ProbeGroupRef, ProbeSpec, Rule, RuleAction, WhereValue, DEFAULT_DUMP_WAIT_SECS,
    DEFAULT_HOOK_TIMEOUT_SECS, DEFAULT_MAX_RESTARTS, DEFAULT_MODE, DEFAULT_WINDOW_SECS,
    DUMP_WAIT_SECS, HOOK_TIMEOUT_SECS,
};
