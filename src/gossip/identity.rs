//! Who a gossip member is: its node name, its gossip address, when this incarnation of it
//! started, and its tags (Consul's `role`, `dc`, `id`, `port`, `expect`, `build`, `vsn`, ...).
//! foca carries identities in every header and every member update, so they stay small.
//!
//! Two identities with one address are the same member at different times: the later start
//! wins (`win_addr_conflict`), which is how a restarted agent replaces its old self. A member
//! declared down renews itself with a later start (`renew`) and rejoins, as a Consul agent
//! that was partitioned away comes back.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    /// The node name (unique in a pool).
    pub name: String,
    /// Where its gossip listens (UDP probes and gossip).
    pub addr: SocketAddr,
    /// When this incarnation started (ms since the epoch, made unique per process by
    /// `renew`): later wins an address conflict.
    pub started: u64,
    /// Consul's member tags.
    pub tags: BTreeMap<String, String>,
}

impl NodeIdentity {
    /// A stand-in for whatever member listens at `addr`, to announce ourselves to an address
    /// (a join) before knowing who is there: foca accepts an announce addressed to any
    /// identity with its own address.
    pub fn at(addr: SocketAddr) -> NodeIdentity {
        NodeIdentity {
            name: String::new(),
            addr,
            started: 0,
            tags: BTreeMap::new(),
        }
    }

    pub fn tag(&self, key: &str) -> &str {
        self.tags.get(key).map(String::as_str).unwrap_or("")
    }
}

impl foca::Identity for NodeIdentity {
    type Addr = SocketAddr;

    fn renew(&self) -> Option<Self> {
        Some(NodeIdentity {
            started: self.started + 1,
            ..self.clone()
        })
    }

    fn addr(&self) -> SocketAddr {
        self.addr
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.started > adversary.started
    }
}
