//! Vesper's side of a Pacemaker cluster: the guests the CIB manages ([`cib`]), the event
//! bridge that reports a guest's failure to Pacemaker the moment vesperd learns of it
//! ([`bridge`] decides, [`run`] carries it out), and Pacemaker's alerts read into
//! `cluster` events ([`alert`]). Pacemaker is reached through its tools ([`pacemaker`]).
#![deny(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]

pub mod alert;
pub mod bridge;
pub mod cib;
pub mod pacemaker;
pub mod run;

use thiserror::Error;

/// Why a cluster operation failed.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The CIB could not be read as XML.
    #[error("cannot read the CIB: {0}")]
    Cib(String),
    /// A Pacemaker tool is not installed.
    #[error("{0} not found: install Pacemaker's command-line tools (Debian: pacemaker-cli-utils)")]
    ToolMissing(String),
    /// A Pacemaker tool failed.
    #[error("`{command}` failed: {why}")]
    Tool {
        /// The command line.
        command: String,
        /// Its exit status and what it printed on stderr.
        why: String,
    },
    /// A Pacemaker tool did not finish in time (a node cut off from its cluster).
    #[error("`{command}` did not finish within {secs} s (is this node connected to its cluster?); killed it")]
    ToolTimeout {
        /// The command line.
        command: String,
        /// The limit.
        secs: f64,
    },
    /// Not run the way an alert agent is.
    #[error("not an alert: {0}")]
    NotAnAlert(&'static str),
    /// An alert kind this version does not know.
    #[error("unknown alert kind {0:?} (Pacemaker sends node, fencing, resource or attribute)")]
    UnknownAlert(String),
    /// vesperd refused or failed a request.
    #[error("vesperd: {0}")]
    Daemon(String),
}
