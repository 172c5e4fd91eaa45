//! The write path and read consistency: every write becomes a Raft command, acknowledged only
//! after it committed on a quorum and was applied; reads choose their consistency here.
//!
//! Forwarding to a leader on another server arrives with the multi-server cluster; until then a
//! server that is not leader answers "No cluster leader" rather than pretending.

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};

use crate::raft::{NodeId, Raft, WRITE_TIMEOUT};
use crate::state::Store;
use crate::types::{Command, CommandResult};

#[derive(Debug, thiserror::Error)]
pub enum RpcError {
    #[error("No cluster leader")]
    NoLeader,
    #[error("Timed out waiting for the write to commit")]
    Timeout,
    #[error("rpc error: {0}")]
    Raft(String),
}

/// How a read must relate to the leader (`?stale`, default, `?consistent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Consistency {
    Stale,
    Leader,
    Consistent,
}

impl Consistency {
    pub fn header_value(self) -> &'static str {
        match self {
            Consistency::Stale => "stale",
            Consistency::Leader => "leader",
            Consistency::Consistent => "consistent",
        }
    }
}

/// What a read learned about the leader, for `X-Consul-KnownLeader` / `LastContact`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LeaderContact {
    pub known_leader: bool,
    pub last_contact_ms: u64,
}

#[derive(Clone)]
pub struct Rpc {
    raft: Raft,
    store: Arc<Store>,
    node_id: NodeId,
    /// Kept so every read can look at the leader without cloning the whole metrics struct.
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, openraft::BasicNode>>,
}

impl Rpc {
    pub fn new(raft: Raft, store: Arc<Store>, node_id: NodeId) -> Rpc {
        let metrics = raft.metrics();
        Rpc {
            raft,
            store,
            node_id,
            metrics,
        }
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    /// Commits `command` through Raft; returns its log index and what applying it produced.
    pub async fn write(&self, command: Command) -> Result<(u64, CommandResult), RpcError> {
        let write = self.raft.client_write(command);
        let response = tokio::time::timeout(WRITE_TIMEOUT, write)
            .await
            .map_err(|_| RpcError::Timeout)?
            .map_err(|error| match error {
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => RpcError::NoLeader,
                other => RpcError::Raft(other.to_string()),
            })?;
        Ok((response.log_id.index, response.data))
    }

    /// Prepares a read at `consistency`: a consistent read first confirms leadership with a
    /// quorum and waits until that commit is applied locally.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<LeaderContact, RpcError> {
        let contact = self.leader_contact();
        match consistency {
            Consistency::Stale => Ok(contact),
            Consistency::Leader if contact.known_leader => Ok(contact),
            Consistency::Leader => Err(RpcError::NoLeader),
            Consistency::Consistent => {
                self.raft
                    .ensure_linearizable()
                    .await
                    .map_err(|error| match error {
                        RaftError::APIError(_) => RpcError::NoLeader,
                        other => RpcError::Raft(other.to_string()),
                    })?;
                Ok(contact)
            }
        }
    }

    pub fn leader_contact(&self) -> LeaderContact {
        LeaderContact {
            known_leader: self.metrics.borrow().current_leader.is_some(),
            last_contact_ms: 0,
        }
    }

    pub fn is_leader(&self) -> bool {
        self.metrics.borrow().current_leader == Some(self.node_id)
    }

    /// The server RPC address of the current leader, `""` when there is none.
    pub fn leader_address(&self) -> String {
        let metrics = self.raft.metrics().borrow().clone();
        metrics
            .current_leader
            .and_then(|leader| {
                metrics
                    .membership_config
                    .nodes()
                    .find(|(id, _)| **id == leader)
                    .map(|(_, node)| node.addr.clone())
            })
            .unwrap_or_default()
    }

    /// Server RPC addresses of the voters.
    pub fn peer_addresses(&self) -> Vec<String> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        membership
            .voter_ids()
            .filter_map(|id| membership.get_node(&id).map(|node| node.addr.clone()))
            .collect()
    }
}
