//! `vesper cluster …`: the commands a Pacemaker cluster runs — the event bridge (as a
//! resource on every node) and the alert agent (Pacemaker runs it per alert).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;
use vesper_api::{default_socket, EventKind};
use vesper_cluster::alert::Alert;
use vesper_cluster::pacemaker::{ClusterManager, Pacemaker};
use vesper_cluster::run::{publish, run_bridge, BridgeConfig};

use crate::exit::fail;

#[derive(Debug, Subcommand)]
pub enum ClusterCmd {
    /// Follow vesperd's failure events and tell Pacemaker of each at once
    /// (`crm_resource --fail` on the guest's ocf:vesper:vesper resource), one report per
    /// incident; each report is recorded as a `decision` event. Runs until killed;
    /// survives vesperd restarts. Run it on every node (a cloned resource).
    Bridge {
        /// This node's cluster name (default: `crm_node -n`).
        #[arg(long)]
        node: Option<String>,
        /// Longest a Pacemaker tool may take, in seconds.
        #[arg(long, default_value_t = 10)]
        tool_timeout: u64,
    },
    /// A Pacemaker alert agent: reads the alert from the CRM_alert_* environment and
    /// adds it to vesperd's stream as a `cluster` event. The alert's recipient is
    /// vesperd's alert socket (`vesperd --alert-socket`); wrap this in
    /// tools/ocf/alert_vesper.
    Alert,
}

pub fn run(cli_socket: Option<PathBuf>, json: bool, cmd: &ClusterCmd) -> ExitCode {
    match cmd {
        ClusterCmd::Bridge { node, tool_timeout } => {
            init_logs();
            let config = BridgeConfig {
                socket: cli_socket.unwrap_or_else(default_socket),
                node: node.clone(),
                max_backoff: Duration::from_secs(2),
                attempts: 3,
            };
            let pacemaker = Pacemaker::new(Duration::from_secs(*tool_timeout));
            match run_bridge(&config, &pacemaker, &|| true) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fail(json, 78, "cluster", &format!("bridge: {e}")),
            }
        }
        ClusterCmd::Alert => alert(cli_socket, json),
    }
}

fn init_logs() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("VESPER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn alert(cli_socket: Option<PathBuf>, json: bool) -> ExitCode {
    let alert = match Alert::from_vars(std::env::vars()) {
        Ok(a) => a,
        Err(e) => return fail(json, 2, "usage", &e.to_string()),
    };
    // Pacemaker's alert `recipient` names the socket; --socket overrides it.
    let socket = cli_socket
        .or_else(|| std::env::var_os("CRM_alert_recipient").map(PathBuf::from))
        .unwrap_or_else(default_socket);
    let pacemaker = Pacemaker::new(Duration::from_secs(5));
    // A resource alert about a Vesper guest is filed under that guest.
    let guest = alert
        .resource
        .as_deref()
        .and_then(|r| {
            let resources = pacemaker.resources().ok()?;
            resources.guest_of(r).map(str::to_string)
        })
        .unwrap_or_default();
    // Alerts come by the dozen during a failover, on every node, while guests boot: this
    // node's name from the kernel (Pacemaker's default node name; `VESPER_NODE` where the
    // cluster names nodes otherwise), not from a `crm_node` process per alert.
    let node = std::env::var("VESPER_NODE")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|n| n.trim().to_string())
        .filter(|n| !n.is_empty())
        .or_else(|| pacemaker.local_node().ok())
        .unwrap_or_else(|| "unknown".to_string());
    match publish(
        &socket,
        &guest,
        EventKind::Cluster,
        "alert",
        &node,
        alert.payload,
    ) {
        Ok(seq) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({ "ok": true, "result": { "seq": seq } })
                );
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail(
            json,
            69,
            "unreachable",
            &format!("alert {}: {e}", alert.kind),
        ),
    }
}
