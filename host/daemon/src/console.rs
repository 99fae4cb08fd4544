//! A QEMU guest's serial console, owned by vesperd: one connection to QEMU's console
//! socket from launch on, whose output vesperd appends to `console.log` and whose
//! input carries `vm send`.
//!
//! Why not QEMU's own `logfile=`: QEMU logs a byte its UART could not hand to a
//! connected client (the socket full: a reader a few hundred bytes behind, as QEMU
//! sends byte by byte) *and* logs it again when the UART retries, so the log doubled
//! letters now and then on a loaded host. What vesperd reads from the socket is exact.
//! QEMU waits for this connection before it starts the guest (`wait=on`), so no early
//! line is lost.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::OwnedWriteHalf;
use tokio::net::UnixStream;
use tokio::sync::Mutex;

/// How long a connect waits for QEMU to create its console socket.
pub(crate) const CONNECT_PATIENCE: Duration = Duration::from_secs(20);

/// The console of one QEMU guest.
#[derive(Debug)]
pub(crate) struct QemuConsole {
    socket: PathBuf,
    log: PathBuf,
    input: Mutex<Option<OwnedWriteHalf>>,
}

impl QemuConsole {
    /// The console at `socket`, logged to `log` (nothing is connected yet).
    pub(crate) fn new(socket: &Path, log: &Path) -> Arc<Self> {
        Arc::new(Self {
            socket: socket.to_path_buf(),
            log: log.to_path_buf(),
            input: Mutex::new(None),
        })
    }

    /// Connects (waiting up to `patience` for the socket to appear) and starts copying
    /// the guest's output to the log. A no-op when connected.
    pub(crate) async fn connect(&self, patience: Duration) -> io::Result<()> {
        let mut input = self.input.lock().await;
        if input.is_none() {
            *input = Some(self.open(patience).await?);
        }
        Ok(())
    }

    async fn open(&self, patience: Duration) -> io::Result<OwnedWriteHalf> {
        let deadline = Instant::now() + patience;
        let stream = loop {
            match UnixStream::connect(&self.socket).await {
                Ok(s) => break s,
                Err(e)
                    if Instant::now() < deadline
                        && matches!(
                            e.kind(),
                            io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                        ) =>
                {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                Err(e) => return Err(e),
            }
        };
        let (mut output, input) = stream.into_split();
        // Plain appends (to the page cache, microseconds): readers of the log, `tail`
        // and the tests, see each chunk as soon as it is read.
        let mut log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let path = self.log.clone();
        // Read at once whatever comes: an unread client stalls the guest's UART.
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 << 10];
            loop {
                match output.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if let Err(e) = std::io::Write::write_all(&mut log, &buf[..n]) {
                            tracing::warn!(log = %path.display(), "console log write failed: {e}");
                        }
                    }
                }
            }
        });
        Ok(input)
    }

    /// Types `line` and a newline into the console; reconnects once if QEMU dropped
    /// the connection (e.g. after vesperd adopted the VM).
    pub(crate) async fn send(&self, line: &str) -> io::Result<()> {
        let mut input = self.input.lock().await;
        for attempt in 0..2 {
            if input.is_none() {
                *input = Some(self.open(Duration::ZERO).await?);
            }
            let stream = input.as_mut().expect("connected above");
            match stream.write_all(format!("{line}\n").as_bytes()).await {
                Ok(()) => return Ok(()),
                Err(e) if attempt == 0 => {
                    tracing::debug!(socket = %self.socket.display(), "console connection lost ({e}); reconnecting");
                    *input = None;
                }
                Err(e) => return Err(e),
            }
        }
        unreachable!("the loop returns on its second attempt")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::UnixListener;

    #[tokio::test]
    async fn output_is_logged_exactly_and_input_reaches_the_socket() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, log) = (
            vesper_api::run_dir::console_socket(dir.path()),
            vesper_api::run_dir::console_log(dir.path()),
        );
        let console = QemuConsole::new(&sock, &log);
        // The console waits for the socket to appear, as for a QEMU just started.
        let sock2 = sock.clone();
        let server = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let l = UnixListener::bind(&sock2).unwrap();
            let (mut s, _) = l.accept().await.unwrap();
            // Byte by byte, as QEMU's UART writes.
            for b in b"vesper-hand: stack end svc pid=91\r\n" {
                s.write_all(&[*b]).await.unwrap();
            }
            let mut got = vec![0u8; 5];
            s.read_exact(&mut got).await.unwrap();
            got
        });
        console.connect(Duration::from_secs(5)).await.unwrap();
        console.send("ping").await.unwrap();
        assert_eq!(server.await.unwrap(), b"ping\n");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            if text.contains('\n') {
                assert_eq!(text, "vesper-hand: stack end svc pid=91\r\n");
                break;
            }
            assert!(Instant::now() < deadline, "log: {text:?}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    #[tokio::test]
    async fn no_socket_is_a_clear_error_after_the_patience() {
        let dir = tempfile::tempdir().unwrap();
        let console = QemuConsole::new(&dir.path().join("none.sock"), &dir.path().join("l"));
        let e = console
            .connect(Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
    }
}
