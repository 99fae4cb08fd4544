//! `corosync.conf` for the lab's nodes (knet, a nodelist, votequorum) and its authkey.

use std::io::Read;

use crate::state::NodeInfo;

/// The cluster's name in corosync (and so in Pacemaker).
pub const CLUSTER_NAME: &str = "vesper-lab";

/// corosync.conf for `nodes`, the same file on every node (corosync finds its own entry by
/// address). Two nodes get `two_node: 1`: the survivor of a pair keeps quorum (and,
/// implied, `wait_for_all`: a fresh cluster waits for both before it first runs anything).
pub fn conf(nodes: &[NodeInfo]) -> String {
    let mut s = format!(
        "# Written by tools/cluster/up (Vesper's cluster lab).\n\
         totem {{\n\
         \tversion: 2\n\
         \tcluster_name: {CLUSTER_NAME}\n\
         \ttransport: knet\n\
         \tcrypto_cipher: aes256\n\
         \tcrypto_hash: sha256\n\
         }}\n\n\
         nodelist {{\n"
    );
    for (i, n) in nodes.iter().enumerate() {
        s += &format!(
            "\tnode {{\n\t\tname: {}\n\t\tnodeid: {}\n\t\tring0_addr: {}\n\t}}\n",
            n.name,
            i + 1,
            n.addr
        );
    }
    s += "}\n\nquorum {\n\tprovider: corosync_votequorum\n";
    if nodes.len() == 2 {
        s += "\ttwo_node: 1\n";
    }
    s += "}\n\n\
          logging {\n\
          \tto_logfile: yes\n\
          \tlogfile: /var/log/corosync/corosync.log\n\
          \tto_stderr: no\n\
          \tto_syslog: no\n\
          \ttimestamp: on\n\
          }\n";
    s
}

/// A fresh authkey: 256 random bytes (what `corosync-keygen` writes).
pub fn authkey() -> std::io::Result<Vec<u8>> {
    let mut key = vec![0u8; 256];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut key)?;
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: usize) -> Vec<NodeInfo> {
        crate::Lab::node_names(n)
            .into_iter()
            .enumerate()
            .map(|(i, name)| NodeInfo {
                name,
                addr: crate::Lab::node_addr(i + 1),
            })
            .collect()
    }

    #[test]
    fn two_nodes_keep_quorum_alone_three_do_not() {
        let two = conf(&nodes(2));
        assert!(two.contains("transport: knet"));
        assert!(two.contains("name: n2\n\t\tnodeid: 2\n\t\tring0_addr: 10.213.0.12"));
        assert!(two.contains("two_node: 1"));
        let three = conf(&nodes(3));
        assert!(three.contains("name: n3"));
        assert!(!three.contains("two_node"));
    }

    #[test]
    fn keys_are_random() {
        let (a, b) = (authkey().unwrap(), authkey().unwrap());
        assert_eq!(a.len(), 256);
        assert_ne!(a, b);
    }
}
