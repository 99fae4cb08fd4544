//! Pacemaker through its own command-line tools, each run with a time limit: the local
//! node's name (`crm_node -n`), the resources (`cibadmin --query`), a failure report
//! (`crm_resource --fail`). The trait lets the bridge's loop run against a fake.

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cib::Resources;
use crate::ClusterError;

/// What the bridge needs from a cluster manager.
pub trait ClusterManager {
    /// This node's name in the cluster.
    fn local_node(&self) -> Result<String, ClusterError>;
    /// The guests the cluster manages, and their resources.
    fn resources(&self) -> Result<Resources, ClusterError>;
    /// Tells the cluster `resource` failed on `node`, so it recovers it now.
    fn fail_resource(&self, resource: &str, node: &str) -> Result<(), ClusterError>;
}

/// Pacemaker on this node.
#[derive(Debug, Clone)]
pub struct Pacemaker {
    timeout: Duration,
}

impl Pacemaker {
    /// Pacemaker's tools, each given at most `timeout` (a node that lost its cluster
    /// connection makes them wait).
    pub fn new(timeout: Duration) -> Self {
        Self { timeout }
    }
}

impl ClusterManager for Pacemaker {
    fn local_node(&self) -> Result<String, ClusterError> {
        let out = run_tool("crm_node", &["-n"], self.timeout)?;
        let name = out.trim();
        if name.is_empty() {
            return Err(ClusterError::Tool {
                command: "crm_node -n".into(),
                why: "printed no node name".into(),
            });
        }
        Ok(name.to_string())
    }

    fn resources(&self) -> Result<Resources, ClusterError> {
        let xml = run_tool(
            "cibadmin",
            &["--query", "--scope", "resources"],
            self.timeout,
        )?;
        Resources::from_cib_xml(&xml)
    }

    fn fail_resource(&self, resource: &str, node: &str) -> Result<(), ClusterError> {
        run_tool(
            "crm_resource",
            &["--fail", "--resource", resource, "--node", node],
            self.timeout,
        )
        .map(drop)
    }
}

/// Runs one tool and returns its standard output; a non-zero exit, a missing tool and
/// a tool that outlives `timeout` (killed) each have their error.
pub fn run_tool(tool: &str, args: &[&str], timeout: Duration) -> Result<String, ClusterError> {
    let command = std::iter::once(tool)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = Command::new(tool)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => ClusterError::ToolMissing(tool.to_string()),
            _ => ClusterError::Tool {
                command: command.clone(),
                why: e.to_string(),
            },
        })?;
    // Pipes are drained on threads so a chatty tool never blocks on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut r) = r {
                let _ = r.read_to_string(&mut s);
            }
            s
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(ClusterError::ToolTimeout {
                    command,
                    secs: timeout.as_secs_f64(),
                });
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(2)),
            Err(e) => {
                return Err(ClusterError::Tool {
                    command,
                    why: e.to_string(),
                })
            }
        }
    };
    let stdout = out.join().unwrap_or_default();
    let stderr = err.join().unwrap_or_default();
    if !status.success() {
        let why = stderr.trim();
        return Err(ClusterError::Tool {
            command,
            why: format!(
                "{status}{}{}",
                if why.is_empty() { "" } else { ": " },
                why.lines().take(3).collect::<Vec<_>>().join(" / ")
            ),
        });
    }
    Ok(stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tools_that_fail_hang_or_are_missing_say_which_and_why() {
        let t = Duration::from_secs(5);
        assert_eq!(run_tool("echo", &["node-a"], t).unwrap(), "node-a\n");
        let e = run_tool("sh", &["-c", "echo no such resource >&2; exit 6"], t).unwrap_err();
        assert!(e.to_string().contains("no such resource"), "{e}");
        let e = run_tool("vesper-no-such-tool", &[], t).unwrap_err();
        assert!(matches!(e, ClusterError::ToolMissing(_)), "{e}");
        let started = Instant::now();
        let e = run_tool("sleep", &["30"], Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, ClusterError::ToolTimeout { .. }), "{e}");
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the hung tool was killed"
        );
    }
}
