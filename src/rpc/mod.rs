//! The write path and read consistency: every write becomes a Raft command, acknowledged only
//! after it committed on a quorum and was applied; reads choose their consistency here.
//!
//! Writes are group-committed here: openraft 0.9 waits for each append's fsync before it takes
//! the next client write, so one Raft entry per HTTP write would cost one fsync per write.
//! Instead a batcher task commits whatever writes queued up while the previous entry was being
//! committed as one `Command::Batch` entry; a lone write goes through on its own, so an idle
//! server adds no latency.
//!
//! Forwarding to a leader on another server arrives with the multi-server cluster; until then a
//! server that is not leader answers "No cluster leader" rather than pretending.

pub mod session_ttl;

use std::sync::Arc;

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot};

use crate::raft::{NodeId, Raft, WRITE_TIMEOUT};
use crate::state::Store;
use crate::types::{Command, CommandResult};

#[derive(Clone, Debug, thiserror::Error)]
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

/// Most writes one batch entry may carry, and roughly how many bytes.
const MAX_BATCH_WRITES: usize = 512;
const MAX_BATCH_BYTES: u64 = 1024 * 1024;

type WriteOutcome = Result<(u64, CommandResult), RpcError>;

struct PendingWrite {
    command: Command,
    reply: oneshot::Sender<WriteOutcome>,
}

#[derive(Clone)]
pub struct Rpc {
    raft: Raft,
    store: Arc<Store>,
    node_id: NodeId,
    /// Kept so every read can look at the leader without cloning the whole metrics struct.
    metrics: tokio::sync::watch::Receiver<openraft::RaftMetrics<NodeId, openraft::BasicNode>>,
    writes: mpsc::Sender<PendingWrite>,
}

impl Rpc {
    /// Creates the handle and starts its write batcher, which stops when the last handle is
    /// dropped.
    pub fn new(raft: Raft, store: Arc<Store>, node_id: NodeId) -> Rpc {
        let metrics = raft.metrics();
        let (writes, queue) = mpsc::channel(4 * MAX_BATCH_WRITES);
        tokio::spawn(batch_writes(raft.clone(), queue));
        Rpc {
            raft,
            store,
            node_id,
            metrics,
            writes,
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
        let (reply, outcome) = oneshot::channel();
        self.writes
            .send(PendingWrite { command, reply })
            .await
            .map_err(|_| RpcError::Raft("the write path has shut down".into()))?;
        tokio::time::timeout(WRITE_TIMEOUT, outcome)
            .await
            .map_err(|_| RpcError::Timeout)?
            .map_err(|_| RpcError::Raft("the write path has shut down".into()))?
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

/// Commits queued writes, one Raft entry at a time: everything that queued while the previous
/// entry was committing goes into the next one.
async fn batch_writes(raft: Raft, mut queue: mpsc::Receiver<PendingWrite>) {
    while let Some(first) = queue.recv().await {
        let mut bytes = bincode::serialized_size(&first.command).unwrap_or(0);
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH_WRITES && bytes < MAX_BATCH_BYTES {
            let Ok(next) = queue.try_recv() else { break };
            bytes += bincode::serialized_size(&next.command).unwrap_or(0);
            batch.push(next);
        }
        let (commands, replies): (Vec<Command>, Vec<_>) = batch
            .into_iter()
            .map(|write| (write.command, write.reply))
            .unzip();
        let single = commands.len() == 1;
        let command = if single {
            commands
                .into_iter()
                .next()
                .unwrap_or(Command::Batch(Vec::new()))
        } else {
            Command::Batch(commands)
        };
        let outcome = raft
            .client_write(command)
            .await
            .map(|response| (response.log_id.index, response.data))
            .map_err(|error| match error {
                RaftError::APIError(ClientWriteError::ForwardToLeader(_)) => RpcError::NoLeader,
                other => RpcError::Raft(other.to_string()),
            });
        match outcome {
            Ok((index, CommandResult::Batch(results))) if !single => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(Ok((index, result)));
                }
            }
            Ok((index, result)) => {
                for reply in replies {
                    let _ = reply.send(Ok((index, result.clone())));
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
