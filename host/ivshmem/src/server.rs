use std::io::IoSlice;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use nix::sys::eventfd::{EfdFlags, EventFd};
use nix::sys::socket::{sendmsg, ControlMessage, MsgFlags};

use crate::protocol::{connect_sequence, FdRole, Message};
use crate::IvshmemError;

/// Peer ID the server itself takes: guests ring "peer 0" to reach the host.
pub const HOST_PEER: u16 = 0;

/// A connected guest (one QEMU process).
#[derive(Debug)]
pub struct GuestPeer {
    /// Its peer ID (the guest reads it from IVPosition).
    pub id: u16,
    /// The eventfds QEMU listens on, one per vector: writing one interrupts the guest.
    vectors: Vec<EventFd>,
    /// The connection; closing it tells QEMU the server went away.
    _stream: UnixStream,
}

/// The ivshmem server for one shared region.
#[derive(Debug)]
pub struct IvshmemServer {
    listener: UnixListener,
    path: PathBuf,
    vectors: usize,
    /// Host (peer 0) eventfds: the guest's doorbell writes land here.
    host_vectors: Vec<EventFd>,
    next_peer: u16,
}

fn eventfd() -> Result<EventFd, IvshmemError> {
    EventFd::from_value_and_flags(0, EfdFlags::EFD_CLOEXEC | EfdFlags::EFD_NONBLOCK)
        .map_err(IvshmemError::EventFd)
}

impl IvshmemServer {
    /// Listens on `path` (replacing a stale socket) for a device with `vectors` vectors.
    pub fn bind(path: &Path, vectors: usize) -> Result<Self, IvshmemError> {
        let listen_err = |source| IvshmemError::Listen {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::remove_file(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(listen_err(e)),
        }
        let listener = UnixListener::bind(path).map_err(listen_err)?;
        listener.set_nonblocking(true).map_err(listen_err)?;
        let host_vectors = (0..vectors).map(|_| eventfd()).collect::<Result<_, _>>()?;
        Ok(Self {
            listener,
            path: path.to_path_buf(),
            vectors,
            host_vectors,
            next_peer: HOST_PEER + 1,
        })
    }

    /// The socket path QEMU's `-chardev socket,path=` must name.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The listening socket, for readiness polling.
    pub fn listener(&self) -> &UnixListener {
        &self.listener
    }

    /// Host eventfd for `vector`: readable after the guest rang peer 0 on it.
    pub fn host_vector(&self, vector: usize) -> Option<BorrowedFd<'_>> {
        self.host_vectors.get(vector).map(|e| e.as_fd())
    }

    /// Clears the doorbell count on `vector`; returns how many rings were pending.
    pub fn take_doorbell(&self, vector: usize) -> u64 {
        self.host_vectors
            .get(vector)
            .and_then(|e| e.read().ok())
            .unwrap_or(0)
    }

    /// Accepts a waiting client, if any, and sends it the connect sequence with the
    /// shared-memory fd `shm`. The listener is non-blocking: `Ok(None)` means nobody
    /// is waiting.
    pub fn accept(&mut self, shm: BorrowedFd<'_>) -> Result<Option<GuestPeer>, IvshmemError> {
        match self.listener.accept() {
            Ok((stream, _)) => self.serve(stream, shm).map(Some),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(IvshmemError::Accept(e)),
        }
    }

    /// Sends the connect sequence to an accepted client.
    pub fn serve(
        &mut self,
        stream: UnixStream,
        shm: BorrowedFd<'_>,
    ) -> Result<GuestPeer, IvshmemError> {
        stream
            .set_nonblocking(false)
            .map_err(IvshmemError::Accept)?;
        let id = self.next_peer;
        self.next_peer = self.next_peer.wrapping_add(1).max(HOST_PEER + 1);
        let vectors = (0..self.vectors)
            .map(|_| eventfd())
            .collect::<Result<Vec<_>, _>>()?;
        for msg in connect_sequence(id, &[HOST_PEER], self.vectors) {
            let fd = match msg.fd {
                FdRole::None => None,
                FdRole::SharedMemory => Some(shm),
                FdRole::Vector { peer, vector } if peer == HOST_PEER => {
                    Some(self.host_vectors[vector].as_fd())
                }
                FdRole::Vector { vector, .. } => Some(vectors[vector].as_fd()),
            };
            send(&stream, msg, fd)?;
        }
        tracing::debug!(peer = id, path = %self.path.display(), "ivshmem client connected");
        Ok(GuestPeer {
            id,
            vectors,
            _stream: stream,
        })
    }
}

impl GuestPeer {
    /// Interrupts the guest on `vector`.
    pub fn notify(&self, vector: usize) -> Result<(), IvshmemError> {
        let fd = self.vectors.get(vector).ok_or(IvshmemError::NoSuchVector {
            vector,
            vectors: self.vectors.len(),
        })?;
        fd.write(1)
            .map(|_| ())
            .map_err(|source| IvshmemError::Signal { vector, source })
    }
}

impl Drop for IvshmemServer {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn send(stream: &UnixStream, msg: Message, fd: Option<BorrowedFd<'_>>) -> Result<(), IvshmemError> {
    let bytes = msg.value.to_le_bytes();
    let iov = [IoSlice::new(&bytes)];
    let raw = fd.map(|f| [f.as_raw_fd()]);
    let cmsgs: Vec<ControlMessage> = raw
        .as_ref()
        .map(|r| vec![ControlMessage::ScmRights(r)])
        .unwrap_or_default();
    sendmsg::<()>(
        stream.as_raw_fd(),
        &iov,
        &cmsgs,
        MsgFlags::MSG_NOSIGNAL,
        None,
    )
    .map(|_| ())
    .map_err(|source| IvshmemError::Send {
        value: msg.value,
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use nix::sys::socket::{recvmsg, ControlMessageOwned};
    use std::io::IoSliceMut;
    use std::os::fd::{FromRawFd, OwnedFd};

    /// Reads one message the way QEMU does.
    fn recv(stream: &UnixStream) -> (i64, Option<OwnedFd>) {
        let mut buf = [0u8; 8];
        let mut iov = [IoSliceMut::new(&mut buf)];
        let mut space = nix::cmsg_space!([std::os::fd::RawFd; 1]);
        let msg = recvmsg::<()>(
            stream.as_raw_fd(),
            &mut iov,
            Some(&mut space),
            MsgFlags::empty(),
        )
        .unwrap();
        let mut fd = None;
        for c in msg.cmsgs().unwrap() {
            if let ControlMessageOwned::ScmRights(fds) = c {
                // SAFETY: the kernel just installed this fd in our table for us.
                fd = Some(unsafe { OwnedFd::from_raw_fd(fds[0]) });
            }
        }
        (i64::from_le_bytes(buf), fd)
    }

    #[test]
    fn a_client_receives_memory_and_working_doorbells() {
        let dir = std::env::temp_dir().join(format!("ivshmem-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("s.sock");
        let mut server = IvshmemServer::bind(&path, 2).unwrap();
        let shm = nix::sys::memfd::memfd_create("t", nix::sys::memfd::MFdFlags::empty()).unwrap();
        let client = UnixStream::connect(&path).unwrap();
        let peer = server.accept(shm.as_fd()).unwrap().unwrap();
        assert!(server.accept(shm.as_fd()).unwrap().is_none());
        assert_eq!(recv(&client).0, 0);
        assert_eq!(recv(&client).0, peer.id as i64);
        let (v, mem) = recv(&client);
        assert_eq!(v, -1);
        assert!(mem.is_some());
        // Peer 0's two vectors: the client rings the host through them.
        let (p0, host0) = recv(&client);
        let (_, _host1) = recv(&client);
        assert_eq!(p0, 0);
        nix::unistd::write(host0.as_ref().unwrap(), &1u64.to_ne_bytes()).unwrap();
        assert_eq!(server.take_doorbell(0), 1);
        assert_eq!(server.take_doorbell(0), 0);
        // Its own vectors: the host interrupts it through them.
        let (own, guest0) = recv(&client);
        let _ = recv(&client);
        assert_eq!(own, peer.id as i64);
        peer.notify(0).unwrap();
        let mut b = [0u8; 8];
        nix::unistd::read(guest0.as_ref().unwrap(), &mut b).unwrap();
        assert_eq!(u64::from_ne_bytes(b), 1);
        assert!(matches!(
            peer.notify(5),
            Err(IvshmemError::NoSuchVector { .. })
        ));
        drop(server);
        assert!(!path.exists());
    }
}
