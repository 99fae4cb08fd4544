//! The server→client message sequence of the ivshmem protocol, as pure data.
//!
//! Every message is one little-endian `i64`, optionally with one fd (SCM_RIGHTS).

/// Protocol version the server announces.
pub const PROTOCOL_VERSION: i64 = 0;

/// Which fd a message carries, by role (the glue maps roles to real fds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FdRole {
    /// No fd.
    None,
    /// The shared-memory fd.
    SharedMemory,
    /// Eventfd for `vector` of peer `peer`.
    Vector {
        /// Peer the eventfd belongs to.
        peer: u16,
        /// Vector number.
        vector: usize,
    },
}

/// One message: value plus the fd it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Message {
    /// The little-endian i64 payload.
    pub value: i64,
    /// The attached fd, if any.
    pub fd: FdRole,
}

/// Messages a newly connected client `client` receives, given the peers already
/// present (`existing`) and the vector count.
pub fn connect_sequence(client: u16, existing: &[u16], vectors: usize) -> Vec<Message> {
    let mut out = vec![
        Message {
            value: PROTOCOL_VERSION,
            fd: FdRole::None,
        },
        Message {
            value: client as i64,
            fd: FdRole::None,
        },
        Message {
            value: -1,
            fd: FdRole::SharedMemory,
        },
    ];
    for &peer in existing.iter().chain(std::iter::once(&client)) {
        out.extend((0..vectors).map(|vector| Message {
            value: peer as i64,
            fd: FdRole::Vector { peer, vector },
        }));
    }
    out
}

/// Messages an existing client receives when `peer` joins.
pub fn peer_joined(peer: u16, vectors: usize) -> Vec<Message> {
    (0..vectors)
        .map(|vector| Message {
            value: peer as i64,
            fd: FdRole::Vector { peer, vector },
        })
        .collect()
}

/// Message an existing client receives when `peer` leaves.
pub fn peer_left(peer: u16) -> Message {
    Message {
        value: peer as i64,
        fd: FdRole::None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_gets_version_id_memory_then_peers_then_itself() {
        let seq = connect_sequence(1, &[0], 2);
        let values: Vec<i64> = seq.iter().map(|m| m.value).collect();
        assert_eq!(values, [0, 1, -1, 0, 0, 1, 1]);
        assert_eq!(seq[2].fd, FdRole::SharedMemory);
        assert_eq!(seq[4].fd, FdRole::Vector { peer: 0, vector: 1 });
        assert_eq!(seq[6].fd, FdRole::Vector { peer: 1, vector: 1 });
        assert_eq!(seq[0].fd, FdRole::None);
    }

    #[test]
    fn joins_and_leaves() {
        assert_eq!(
            peer_joined(3, 1),
            [Message {
                value: 3,
                fd: FdRole::Vector { peer: 3, vector: 0 }
            }]
        );
        assert_eq!(peer_left(3).fd, FdRole::None);
    }
}
