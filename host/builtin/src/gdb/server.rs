//! The socket side: one listener thread per VM, one session thread per client, one
//! client at a time.

use std::io::{ErrorKind, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use gdbstub::conn::{Connection, ConnectionExt};
use gdbstub::stub::GdbStub;

use super::target::{EventLoop, GdbTarget, PAUSE};
use super::DebugVm;
use crate::BuiltinError;

/// How often the listener looks at its quit flag and whether the VM is gone.
const ACCEPT_POLL_MS: libc::c_int = 200;
/// How long a turned-away client is given to send its first packet, and how many bytes
/// of it are read at most.
const REFUSE_WAIT: Duration = Duration::from_secs(2);
const REFUSE_READ_MAX: usize = 4096;
/// Replies are sent when gdbstub flushes, or when this many bytes are waiting.
const WRITE_BUFFER: usize = 64 << 10;

/// A gdb endpoint for one VM. Dropping it stops the listener within its poll interval
/// without waiting for it (a session in progress ends when its client leaves or the
/// VM does).
pub struct GdbServer {
    socket: PathBuf,
    quit: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl GdbServer {
    /// Listens on `socket` (a stale file there is replaced) for gdb clients of `vm`,
    /// named `name` in logs. The listener ends when the VM does.
    pub fn spawn<V: DebugVm + Clone>(
        name: &str,
        socket: PathBuf,
        vm: V,
    ) -> Result<Self, BuiltinError> {
        let bind_err = |source| BuiltinError::GdbSocket {
            path: socket.clone(),
            source,
        };
        let _ = std::fs::remove_file(&socket);
        let listener = UnixListener::bind(&socket).map_err(bind_err)?;
        listener.set_nonblocking(true).map_err(bind_err)?;
        let inode = std::fs::metadata(&socket).map_err(bind_err)?.ino();
        let quit = Arc::new(AtomicBool::new(false));
        let (q, path, guest) = (quit.clone(), socket.clone(), name.to_string());
        let thread = std::thread::Builder::new()
            .name(format!("gdb-{guest}"))
            .spawn(move || {
                listen(&guest, &listener, &vm, &q);
                // Only our own socket: a newer server may have bound the path since.
                if std::fs::metadata(&path).is_ok_and(|m| m.ino() == inode) {
                    let _ = std::fs::remove_file(&path);
                }
            })
            .map_err(BuiltinError::Thread)?;
        tracing::info!(guest = name, socket = %socket.display(), "gdb endpoint listening");
        Ok(Self {
            socket,
            quit,
            thread: Some(thread),
        })
    }

    /// Where gdb connects.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Whether it still listens (it stops when the VM ends).
    pub fn listening(&self) -> bool {
        self.thread.as_ref().is_some_and(|t| !t.is_finished())
    }
}

impl Drop for GdbServer {
    fn drop(&mut self) {
        self.quit.store(true, Ordering::Release);
    }
}

fn listen<V: DebugVm + Clone>(name: &str, listener: &UnixListener, vm: &V, quit: &AtomicBool) {
    let busy = Arc::new(AtomicBool::new(false));
    while !quit.load(Ordering::Acquire) && !vm.ended() {
        let mut fds = libc::pollfd {
            fd: listener.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd for a listener this function borrows; a timeout in ms.
        unsafe { libc::poll(&mut fds, 1, ACCEPT_POLL_MS) };
        let client = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock || e.kind() == ErrorKind::Interrupted => {
                continue
            }
            Err(e) => {
                tracing::warn!(guest = name, "gdb endpoint: accept failed: {e}");
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        if busy.swap(true, Ordering::AcqRel) {
            tracing::warn!(guest = name, "a second gdb client was turned away");
            let why = format!("another gdb client is attached to {name}; detach it first");
            // On its own thread: a silent client must not hold up the listener.
            let _ = std::thread::Builder::new()
                .name("gdb-refuse".into())
                .spawn(move || refuse_client(client, &why));
            continue;
        }
        let (vm, busy, name) = (vm.clone(), busy.clone(), name.to_string());
        let spawned = std::thread::Builder::new()
            .name(format!("gdb-session-{name}"))
            .spawn(move || {
                serve(&name, vm, client);
                busy.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            tracing::warn!("gdb endpoint: cannot start a session thread: {e}");
        }
    }
}

/// Tells a client why it cannot have a session and closes it: the reply to its first
/// packet is `E.text`, which gdb prints (a reply before gdb asks would be lost).
fn refuse_client(mut client: UnixStream, why: &str) {
    let body: String = format!("E.vesperd: {why}")
        .chars()
        .filter(|c| !matches!(c, '$' | '#' | '}' | '*'))
        .collect();
    let sum = body.bytes().fold(0u8, u8::wrapping_add);
    let _ = client.set_nonblocking(false);
    let _ = client.set_read_timeout(Some(REFUSE_WAIT));
    let _ = client.set_write_timeout(Some(REFUSE_WAIT));
    // Up to the end of the first packet (`#` and two checksum digits), or silence.
    let mut after_hash = None;
    let mut b = [0u8];
    for _ in 0..REFUSE_READ_MAX {
        match Read::read(&mut client, &mut b) {
            Ok(1) => {}
            _ => break,
        }
        match (b[0], after_hash) {
            (b'#', None) => after_hash = Some(0),
            (_, Some(n)) if n + 1 == 2 => break,
            (_, Some(n)) => after_hash = Some(n + 1),
            _ => {}
        }
    }
    let _ = write!(client, "+${body}#{sum:02x}");
    // Its ack, then our close.
    let _ = Read::read(&mut client, &mut b);
    let _ = client.shutdown(std::net::Shutdown::Both);
}

/// One client: the VM stops for it, and runs again after it if it ran before.
pub(crate) fn serve<V: DebugVm>(name: &str, vm: V, client: UnixStream) {
    let was_paused = vm.is_paused();
    if !was_paused {
        if let Err(e) = vm.pause(PAUSE) {
            tracing::warn!(
                guest = name,
                "gdb client refused: the VM cannot be stopped: {e}"
            );
            refuse_client(client, &format!("{name} cannot be stopped: {e}"));
            return;
        }
    }
    tracing::info!(guest = name, "gdb client attached; the VM is stopped");
    let _ = client.set_nonblocking(false);
    let mut target = GdbTarget::new(vm);
    let stub = GdbStub::new(Client::new(client));
    match stub.run_blocking::<EventLoop<V, Client>>(&mut target) {
        Ok(reason) => tracing::info!(guest = name, ?reason, "gdb client left"),
        Err(e) => tracing::warn!(guest = name, "gdb session ended: {e}"),
    }
    target.detach(!was_paused);
    tracing::info!(
        guest = name,
        running = !was_paused && !target.vm.ended(),
        "gdb client detached; breakpoints removed"
    );
}

/// gdbstub's connection over a Unix stream: replies buffered until flushed, and a peek
/// that tells a closed socket from an idle one.
pub(crate) struct Client {
    stream: UnixStream,
    out: Vec<u8>,
}

impl Client {
    pub(crate) fn new(stream: UnixStream) -> Self {
        Self {
            stream,
            out: Vec::new(),
        }
    }
}

impl Connection for Client {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        if self.out.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        if self.out.len() >= WRITE_BUFFER {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        let out = std::mem::take(&mut self.out);
        Write::write_all(&mut self.stream, &out)
    }
}

impl ConnectionExt for Client {
    fn read(&mut self) -> Result<u8, Self::Error> {
        self.flush()?;
        let mut b = [0u8];
        self.stream.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        self.flush()?;
        let mut b = [0u8];
        // SAFETY: a one-byte buffer we own, on a socket this struct owns.
        let n = unsafe {
            libc::recv(
                self.stream.as_raw_fd(),
                b.as_mut_ptr().cast(),
                1,
                libc::MSG_PEEK | libc::MSG_DONTWAIT,
            )
        };
        match n {
            1 => Ok(Some(b[0])),
            0 => Err(std::io::Error::new(
                ErrorKind::UnexpectedEof,
                "the gdb client closed the connection",
            )),
            _ => {
                let e = std::io::Error::last_os_error();
                match e.kind() {
                    ErrorKind::WouldBlock | ErrorKind::Interrupted => Ok(None),
                    _ => Err(e),
                }
            }
        }
    }
}
