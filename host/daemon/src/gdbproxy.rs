//! The gdb endpoint users attach to: a relay in front of QEMU's gdbstub.
//!
//! QEMU stops a guest when a gdb client connects (any byte it reads while the guest
//! runs stops it too) and leaves it stopped when the client goes away without
//! continuing — a crashed gdb, a stray `nc`, a client that sent garbage would freeze
//! the VM until someone noticed. The relay forwards bytes both ways unchanged, counts
//! malformed packets (bad framing or checksum) for the log, and when the client leaves
//! resumes the guest through QMP if it was running when the client came (a guest the
//! operator paused stays paused). One client at a time, as QEMU's gdbstub serves one.

use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::qmp::{qmp_execute, qmp_status};

/// Counts malformed remote-protocol packets in the client's byte stream.
#[derive(Debug, Default)]
pub(crate) struct PacketCheck {
    /// Inside `$...#`: the bytes so far and their sum.
    body: Option<u8>,
    /// After `#`: the expected sum, then the checksum digits seen.
    digits: Vec<u8>,
    /// Packets whose checksum was wrong or unreadable.
    pub(crate) malformed: u64,
    /// Packets that checked out.
    pub(crate) good: u64,
}

impl PacketCheck {
    /// Feeds client bytes.
    pub(crate) fn feed(&mut self, bytes: &[u8]) {
        for &b in bytes {
            match (&mut self.body, self.digits.len()) {
                (Some(sum), _) if b == b'#' => {
                    let want = *sum;
                    self.body = None;
                    self.digits.clear();
                    self.digits.push(want);
                }
                (Some(sum), _) => *sum = sum.wrapping_add(b),
                (None, 1 | 2) => {
                    self.digits.push(b);
                    if self.digits.len() == 3 {
                        let want = self.digits[0];
                        let got = std::str::from_utf8(&self.digits[1..])
                            .ok()
                            .and_then(|h| u8::from_str_radix(h, 16).ok());
                        if got == Some(want) {
                            self.good += 1;
                        } else {
                            self.malformed += 1;
                        }
                        self.digits.clear();
                    }
                }
                (None, _) if b == b'$' => self.body = Some(0),
                // Acks, ^C and noise between packets.
                (None, _) => {}
            }
        }
    }
}

/// Serves `listen` for the guest whose QEMU gdbstub is at `upstream` (and QMP at
/// `qmp`), in a thread.
pub(crate) fn spawn(
    guest: String,
    listen: PathBuf,
    upstream: PathBuf,
    qmp: PathBuf,
) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&listen);
    let listener = UnixListener::bind(&listen)?;
    std::thread::Builder::new()
        .name(format!("gdb-{guest}"))
        .spawn(move || {
            for conn in listener.incoming() {
                match conn {
                    Ok(client) => relay(&guest, client, &upstream, &qmp),
                    Err(e) => {
                        tracing::warn!(guest, "gdb endpoint: accept failed: {e}");
                        std::thread::sleep(Duration::from_millis(100));
                    }
                }
                if !listen.exists() {
                    break; // the VM's run directory is gone
                }
            }
        })?;
    Ok(())
}

fn relay(guest: &str, mut client: UnixStream, upstream: &Path, qmp: &Path) {
    let was_running = qmp_status(qmp).as_deref() == Some("running");
    let mut stub = match UnixStream::connect(upstream) {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!(guest, "gdb endpoint: QEMU's gdbstub is not there ({e})");
            return;
        }
    };
    tracing::info!(guest, "gdb client attached");
    let (Ok(mut stub_r), Ok(mut client_w)) = (stub.try_clone(), client.try_clone()) else {
        return;
    };
    let back = std::thread::spawn(move || {
        let _ = std::io::copy(&mut stub_r, &mut client_w);
        let _ = client_w.shutdown(std::net::Shutdown::Both);
    });
    let mut check = PacketCheck::default();
    let mut buf = [0u8; 16 << 10];
    loop {
        match client.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                check.feed(&buf[..n]);
                if stub.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        }
    }
    let _ = stub.shutdown(std::net::Shutdown::Both);
    let _ = back.join();
    // Whatever the client did, a guest that ran before it came runs on.
    let now = qmp_status(qmp);
    if was_running && now.as_deref() != Some("running") {
        match qmp_execute(qmp, "cont") {
            Ok(_) => {
                tracing::info!(guest, state = ?now, "gdb client left the guest stopped; resumed it")
            }
            Err(e) => tracing::warn!(
                guest,
                "gdb client left the guest stopped and QMP cont failed: {e}"
            ),
        }
    }
    if check.malformed > 0 {
        tracing::warn!(
            guest,
            good = check.good,
            malformed = check.malformed,
            "gdb client sent malformed packets (QEMU answered them with NAKs); detached it"
        );
    } else {
        tracing::info!(
            guest,
            packets = check.good,
            "gdb client left; guest detached"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packets_are_checked_by_their_checksums() {
        let mut c = PacketCheck::default();
        c.feed(b"+$qSupported:multiprocess+#c6+$g#67");
        assert_eq!((c.good, c.malformed), (2, 0));
        c.feed(b"$m,#00garbage\x03$D#4");
        c.feed(b"4");
        assert_eq!((c.good, c.malformed), (3, 1));
        c.feed(b"$x#zz");
        assert_eq!(c.malformed, 2);
    }
}
