//! QMP for a VM Vesper did not start. QEMU serves one QMP client per socket at a time,
//! and an attached VM's socket is its user's (or libvirt's), so vesperd holds that one
//! connection and serves the VM's own run-directory sockets (`qmp.sock`,
//! `qmp-events.sock`) the way QEMU would: a greeting, capabilities negotiation,
//! commands answered in order, every event to every client. Everything in vesperd that
//! speaks QMP to its own VMs (pause, `debug`, stop, the event listener) then speaks to
//! an attached one unchanged, and so may the user's own tools, through `qmp.sock`.
//!
//! Upstream is QEMU's socket, or for a libvirt domain `virsh qemu-monitor-command` per
//! command and `virsh qemu-monitor-event --loop` for events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{broadcast, mpsc, oneshot};

use crate::virsh::Virsh;

/// How long QEMU gets to greet and to answer `qmp_capabilities`.
const GREETING: Duration = Duration::from_secs(5);

/// A command on its way upstream, and where its reply goes.
type Cmd = (Value, oneshot::Sender<Value>);

/// The served sockets of one attached VM; dropping it ends them (and lets go of QEMU's
/// QMP connection).
pub(crate) struct QmpMux {
    task: tokio::task::JoinHandle<()>,
    paths: Vec<PathBuf>,
}

impl Drop for QmpMux {
    fn drop(&mut self) {
        self.task.abort();
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

impl std::fmt::Debug for QmpMux {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QmpMux")
            .field("paths", &self.paths)
            .finish()
    }
}

/// What an upstream connection is: commands in, events out, and the greeting.
struct Upstream {
    greeting: String,
    cmds: mpsc::Sender<Cmd>,
    events: broadcast::Sender<String>,
    /// Ends when the upstream does (QEMU quit, libvirt's event stream closed).
    run: UpstreamRun,
}

/// The upstream's own loop; the mux ends with it.
type UpstreamRun = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

/// Connects to QEMU's QMP socket `path` (its greeting, capabilities) and serves `serve`;
/// returns the mux and QEMU's pid (the socket's peer).
pub(crate) async fn serve_socket(path: &Path, serve: &[PathBuf]) -> Result<(QmpMux, u32), String> {
    let (up, pid) = connect_socket(path).await?;
    Ok((listen(up, serve)?, pid))
}

/// Serves `serve` for a libvirt domain (commands and events through virsh).
pub(crate) async fn serve_libvirt(virsh: Virsh, serve: &[PathBuf]) -> Result<QmpMux, String> {
    listen(libvirt_upstream(virsh)?, serve)
}

async fn connect_socket(path: &Path) -> Result<(Upstream, u32), String> {
    let shown = path.display();
    let stream = UnixStream::connect(path).await.map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => format!(
            "no QMP socket at {shown}: start QEMU with `-qmp unix:{shown},server=on,wait=off`"
        ),
        std::io::ErrorKind::ConnectionRefused => format!(
            "nothing listens on {shown} (a QEMU that exited leaves its socket file): is QEMU running?"
        ),
        _ => format!("cannot connect to {shown}: {e}"),
    })?;
    let pid = stream
        .peer_cred()
        .ok()
        .and_then(|c| c.pid())
        .and_then(|p| u32::try_from(p).ok())
        .ok_or_else(|| format!("cannot tell which process serves {shown}"))?;
    let (r, mut w) = stream.into_split();
    let mut lines = BufReader::new(r).lines();
    let greeting = match tokio::time::timeout(GREETING, lines.next_line()).await {
        Err(_) => return Err(format!(
            "{shown} sent no QMP greeting within {} s: not a QMP socket, or another client holds it (QEMU serves one QMP client at a time: close that client and attach again)",
            GREETING.as_secs()
        )),
        Ok(Ok(Some(l))) => l,
        Ok(_) => return Err(format!("{shown} closed the connection: not a QMP socket, or QEMU is busy with another client")),
    };
    let is_qmp = serde_json::from_str::<Value>(&greeting).is_ok_and(|v| v.get("QMP").is_some());
    if !is_qmp {
        let mut shown_line = greeting.clone();
        shown_line.truncate(80);
        return Err(format!(
            "{shown} is not a QMP socket: it said {shown_line:?} (give QEMU's `-qmp unix:PATH,server=on` socket)"
        ));
    }
    w.write_all(vesper_qemu::QMP_CAPABILITIES.as_bytes())
        .await
        .map_err(|e| format!("{shown}: {e}"))?;
    loop {
        let line = match tokio::time::timeout(GREETING, lines.next_line()).await {
            Ok(Ok(Some(l))) => l,
            _ => return Err(format!("{shown}: no answer to qmp_capabilities")),
        };
        let v: Value = serde_json::from_str(&line).unwrap_or_default();
        if v.get("return").is_some() {
            break;
        }
        if let Some(e) = v.get("error") {
            return Err(format!("{shown}: QEMU refused qmp_capabilities: {e}"));
        }
    }
    let (cmds, mut cmd_rx) = mpsc::channel::<Cmd>(16);
    let (events, _) = broadcast::channel(256);
    let ev = events.clone();
    let run = Box::pin(async move {
        let mut waiting: HashMap<u64, oneshot::Sender<Value>> = HashMap::new();
        let mut next = 0u64;
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    let Ok(mut v) = serde_json::from_str::<Value>(&line) else { continue };
                    if v.get("event").is_some() {
                        let _ = ev.send(line);
                    } else if let Some(id) = v.get("id").and_then(Value::as_u64) {
                        if let Some(tx) = waiting.remove(&id) {
                            v.as_object_mut().map(|o| o.remove("id"));
                            let _ = tx.send(v);
                        }
                    }
                }
                cmd = cmd_rx.recv() => {
                    let Some((mut c, tx)) = cmd else { break };
                    next += 1;
                    c["id"] = next.into();
                    if w.write_all(format!("{c}\n").as_bytes()).await.is_err() { break }
                    waiting.insert(next, tx);
                }
            }
        }
    });
    Ok((
        Upstream {
            greeting,
            cmds,
            events,
            run,
        },
        pid,
    ))
}

fn libvirt_upstream(virsh: Virsh) -> Result<Upstream, String> {
    let mut child = virsh.event_child().map_err(|e| {
        format!("cannot run virsh qemu-monitor-event ({e}): install libvirt-clients")
    })?;
    let out = child.stdout.take().ok_or("virsh's output was not piped")?;
    let (cmds, mut cmd_rx) = mpsc::channel::<Cmd>(16);
    let (events, _) = broadcast::channel(256);
    let ev = events.clone();
    let name = virsh.domain.clone();
    let run = Box::pin(async move {
        let _child = child;
        let mut lines = BufReader::new(out).lines();
        loop {
            tokio::select! {
                line = lines.next_line() => {
                    let Ok(Some(line)) = line else { break };
                    match crate::virsh::parse_event_line(&line) {
                        Some(e) => { let _ = ev.send(e.to_string()); }
                        None => tracing::debug!(domain = %name, %line, "virsh event line not understood"),
                    }
                }
                cmd = cmd_rx.recv() => {
                    let Some((c, tx)) = cmd else { break };
                    let virsh = virsh.clone();
                    // libvirt serialises the monitor itself; replies need not wait here.
                    tokio::spawn(async move {
                        let reply = virsh.monitor_command(&c).await.unwrap_or_else(|e| {
                            json!({ "error": { "class": "GenericError", "desc": e } })
                        });
                        let mut reply = reply;
                        reply.as_object_mut().map(|o| o.remove("id"));
                        let _ = tx.send(reply);
                    });
                }
            }
        }
        tracing::info!(domain = %name, "libvirt's event stream ended");
    });
    let greeting = json!({
        "QMP": { "version": { "qemu": { "major": 0, "minor": 0, "micro": 0 }, "package": "via libvirt" }, "capabilities": [] }
    })
    .to_string();
    Ok(Upstream {
        greeting,
        cmds,
        events,
        run,
    })
}

/// Binds `serve` and runs the mux until the upstream ends.
fn listen(up: Upstream, serve: &[PathBuf]) -> Result<QmpMux, String> {
    let mut listeners = Vec::new();
    for p in serve {
        let _ = std::fs::remove_file(p);
        let l =
            UnixListener::bind(p).map_err(|e| format!("cannot listen on {}: {e}", p.display()))?;
        listeners.push(l);
    }
    let Upstream {
        greeting,
        cmds,
        events,
        run,
    } = up;
    let greeting = Arc::new(greeting);
    let task = tokio::spawn(async move {
        let mut clients = tokio::task::JoinSet::new();
        let accepts = listeners.into_iter().map(|l| {
            let (greeting, cmds, events) = (greeting.clone(), cmds.clone(), events.clone());
            async move {
                let mut clients = tokio::task::JoinSet::new();
                while let Ok((s, _)) = l.accept().await {
                    clients.spawn(client(
                        s,
                        greeting.clone(),
                        cmds.clone(),
                        events.subscribe(),
                    ));
                }
            }
        });
        for a in accepts {
            clients.spawn(a);
        }
        run.await;
        // Dropping the set ends every client: QEMU is gone, nothing more to serve.
        drop(clients);
    });
    Ok(QmpMux {
        task,
        paths: serve.to_vec(),
    })
}

/// One client of a served socket, as QEMU would serve it.
async fn client(
    stream: UnixStream,
    greeting: Arc<String>,
    cmds: mpsc::Sender<Cmd>,
    mut events: broadcast::Receiver<String>,
) {
    let (r, mut w) = stream.into_split();
    if w.write_all(format!("{greeting}\n").as_bytes())
        .await
        .is_err()
    {
        return;
    }
    let mut lines = BufReader::new(r).lines();
    let mut negotiated = false;
    loop {
        let out = tokio::select! {
            line = lines.next_line() => {
                let Ok(Some(line)) = line else { return };
                match answer(&line, &mut negotiated, &cmds).await {
                    Some(reply) => reply,
                    None => return,
                }
            }
            ev = events.recv(), if negotiated => match ev {
                Ok(line) => line,
                Err(broadcast::error::RecvError::Lagged(_)) => continue,
                Err(broadcast::error::RecvError::Closed) => return,
            },
        };
        if w.write_all(format!("{out}\n").as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The reply to one client line; `None` when the upstream is gone.
async fn answer(line: &str, negotiated: &mut bool, cmds: &mpsc::Sender<Cmd>) -> Option<String> {
    let error = |class: &str, desc: &str| json!({ "error": { "class": class, "desc": desc } });
    let Ok(mut req) = serde_json::from_str::<Value>(line) else {
        return Some(error("GenericError", "JSON parse error").to_string());
    };
    let id = req.as_object_mut().and_then(|o| o.remove("id"));
    let mut reply = match req.get("execute").and_then(Value::as_str) {
        None => error("GenericError", "QMP input lacks member 'execute'"),
        Some("qmp_capabilities") => {
            *negotiated = true;
            json!({ "return": {} })
        }
        Some(_) if !*negotiated => error(
            "CommandNotFound",
            "Expecting capabilities negotiation with 'qmp_capabilities'",
        ),
        Some(_) => {
            let (tx, rx) = oneshot::channel();
            cmds.send((req, tx)).await.ok()?;
            rx.await.ok()?
        }
    };
    if let Some(id) = id {
        reply["id"] = id;
    }
    Some(reply.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, Write};

    /// A fake QEMU: greets, takes capabilities, answers `query-status` with the id it
    /// was given and sends an event after each command.
    fn fake_qemu(path: &Path) {
        let listener = std::os::unix::net::UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = listener.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            w.write_all(b"{\"QMP\": {\"version\": {}, \"capabilities\": []}}\n")
                .unwrap();
            for line in std::io::BufReader::new(s).lines() {
                let v: Value = serde_json::from_str(&line.unwrap()).unwrap();
                let reply = match v["execute"].as_str() {
                    Some("qmp_capabilities") => json!({ "return": {} }),
                    _ => json!({ "return": { "status": "running" }, "id": v["id"] }),
                };
                w.write_all(format!("{reply}\n").as_bytes()).unwrap();
                if v["execute"] == "query-status" {
                    w.write_all(b"{\"event\": \"STOP\", \"timestamp\": {\"seconds\": 1, \"microseconds\": 2}}\n")
                        .unwrap();
                }
            }
        });
    }

    #[tokio::test]
    async fn two_clients_share_one_qmp_connection() {
        let dir = tempfile::tempdir().unwrap();
        let up = dir.path().join("q.sock");
        fake_qemu(&up);
        let served = vec![dir.path().join("a.sock"), dir.path().join("b.sock")];
        let (mux, pid) = serve_socket(&up, &served).await.unwrap();
        assert_eq!(pid, std::process::id());
        let (a, b) = (served[0].clone(), served[1].clone());
        let events = tokio::task::spawn_blocking(move || {
            let mut ev = vesper_qemu::Qmp::connect(&b, Duration::from_secs(5)).unwrap();
            let mut q = vesper_qemu::Qmp::connect(&a, Duration::from_secs(5)).unwrap();
            let st = q.execute("query-status", None).unwrap();
            assert_eq!(st["status"], "running");
            // The event reaches the other client too.
            ev.execute("query-status", None).unwrap();
            ev.take_events().len() + q.take_events().len()
        })
        .await
        .unwrap();
        assert!(events >= 1, "no event forwarded");
        drop(mux);
        assert!(!served[0].exists() && !served[1].exists());
    }

    #[tokio::test]
    async fn a_missing_socket_and_a_socket_that_is_not_qmp_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("none.sock");
        let e = serve_socket(&none, &[]).await.unwrap_err();
        assert!(
            e.contains("no QMP socket at") && e.contains("-qmp unix:"),
            "{e}"
        );
        let chatty = dir.path().join("http.sock");
        let l = std::os::unix::net::UnixListener::bind(&chatty).unwrap();
        std::thread::spawn(move || {
            let (mut s, _) = l.accept().unwrap();
            s.write_all(b"HTTP/1.1 400 Bad Request\r\n").unwrap();
            std::thread::sleep(Duration::from_secs(1));
        });
        let e = serve_socket(&chatty, &[]).await.unwrap_err();
        assert!(e.contains("is not a QMP socket"), "{e}");
    }
}
