//! A server's side of the seam: it owns the Raft node, the state store, the write batcher
//! (`writes`), the published leadership, and the leader-only services that answer requests
//! (session renewals through `SessionTimers`, leaf signing and CA configuration through
//! `CaManager`).
//!
//! Leadership is observed in one place: a task turns openraft's metrics into `Leadership` and
//! publishes it on a `watch` channel only when it changes; the leader's duties, the session
//! timers and the CA wait on that channel instead of polling Raft.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use openraft::error::RaftError;
use tokio::sync::watch;

use super::ca_manager::{CaError, CaManager};
use super::session_ttl::SessionTimers;
use super::writes::{WriteOutcome, Writer};
use super::{Consistency, LeaderContact, Leadership, RpcError};
use crate::raft::{NodeId, Raft};
use crate::state::Store;
use crate::tasks::Tasks;
use crate::types::connect::CaConfig;
use crate::types::session::Session;
use crate::types::Command;

/// When this server last heard from a leader, for `X-Consul-LastContact` and DNS `max_stale`:
/// zero while it is the leader; otherwise the time since the leader last reached it, which the
/// server-to-server transport records (`note_leader_contact`) once there is one.
struct LastContact {
    started: Instant,
    /// Milliseconds after `started` of the last contact; 0 for never.
    at_ms: AtomicU64,
}

impl LastContact {
    fn note(&self) {
        let elapsed = self.started.elapsed().as_millis() as u64;
        self.at_ms.store(elapsed.max(1), Ordering::Relaxed);
    }

    /// Milliseconds since the last contact (since start when there was none).
    fn since_ms(&self) -> u64 {
        let now = self.started.elapsed().as_millis() as u64;
        now.saturating_sub(self.at_ms.load(Ordering::Relaxed))
    }
}

pub struct ServerRpc {
    raft: Raft,
    store: Arc<Store>,
    node_id: NodeId,
    writer: Writer,
    leadership: watch::Receiver<Leadership>,
    last_contact: LastContact,
    /// Session TTL timers (the leader's).
    pub sessions: SessionTimers,
    /// The built-in CA's leader side.
    pub ca: CaManager,
}

impl ServerRpc {
    /// Creates the server handle and starts its write batcher and leadership publisher.
    pub fn start(
        raft: Raft,
        store: Arc<Store>,
        node_id: NodeId,
        datacenter: String,
        tasks: &Tasks,
    ) -> Arc<ServerRpc> {
        let writer = Writer::start(raft.clone(), tasks);
        let (publish, leadership) = watch::channel(Leadership::default());
        tasks.spawn(
            "rpc.leadership",
            publish_leadership(raft.clone(), node_id, publish),
        );
        Arc::new(ServerRpc {
            ca: CaManager::new(
                writer.clone(),
                store.clone(),
                leadership.clone(),
                datacenter,
            ),
            raft,
            store,
            node_id,
            writer,
            leadership,
            last_contact: LastContact {
                started: Instant::now(),
                at_ms: AtomicU64::new(0),
            },
            sessions: SessionTimers::default(),
        })
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn raft(&self) -> &Raft {
        &self.raft
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn writer(&self) -> &Writer {
        &self.writer
    }

    pub async fn write(&self, command: Command) -> WriteOutcome {
        self.writer.write(command).await
    }

    /// Leadership as last published; `changed()` on a clone wakes on every change.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.clone()
    }

    pub fn is_leader(&self) -> bool {
        self.leadership.borrow().is_leader
    }

    /// Records that the leader reached this server (the server-to-server transport calls it).
    pub fn note_leader_contact(&self) {
        self.last_contact.note();
    }

    /// Fails with `ForwardToLeader` unless this server is the leader.
    pub fn require_leader(&self) -> Result<(), RpcError> {
        let leadership = self.leadership.borrow();
        if leadership.is_leader {
            Ok(())
        } else if leadership.leader.is_some() {
            Err(RpcError::ForwardToLeader {
                leader: leadership.leader_address.clone(),
            })
        } else {
            Err(RpcError::NoLeader)
        }
    }

    pub fn leader_contact(&self) -> LeaderContact {
        let leadership = self.leadership.borrow();
        LeaderContact {
            known_leader: leadership.leader.is_some(),
            last_contact_ms: if leadership.is_leader {
                0
            } else {
                self.last_contact.since_ms()
            },
        }
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
                        RaftError::APIError(
                            openraft::error::CheckIsLeaderError::ForwardToLeader(forward),
                        ) => RpcError::ForwardToLeader {
                            leader: forward
                                .leader_node
                                .map(|node| node.addr)
                                .unwrap_or_default(),
                        },
                        RaftError::APIError(_) => RpcError::NoLeader,
                        other => RpcError::Raft(other.to_string()),
                    })?;
                Ok(contact)
            }
        }
    }

    /// Renews a session's TTL; `Ok(None)` when there is no such session.
    pub fn renew_session(&self, id: &str) -> Result<Option<Session>, RpcError> {
        self.require_leader()?;
        let tables = self.store.snapshot();
        let Some(session) = tables.session(id).cloned() else {
            return Ok(None);
        };
        if let Some(ttl) = session.ttl {
            self.sessions.renew(id, ttl);
        }
        Ok(Some(session))
    }

    /// Applies a new CA configuration; true when it rotated the root.
    pub async fn set_ca_config(&self, config: CaConfig) -> Result<bool, CaError> {
        self.require_leader()?;
        self.ca.set_config(config).await
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

/// Publishes leadership from openraft's metrics whenever it changes.
async fn publish_leadership(raft: Raft, node_id: NodeId, publish: watch::Sender<Leadership>) {
    let mut metrics = raft.metrics();
    loop {
        let next = {
            let metrics = metrics.borrow_and_update();
            let leader_address = metrics
                .current_leader
                .and_then(|leader| {
                    metrics
                        .membership_config
                        .nodes()
                        .find(|(id, _)| **id == leader)
                        .map(|(_, node)| node.addr.clone())
                })
                .unwrap_or_default();
            Leadership {
                is_leader: metrics.current_leader == Some(node_id),
                leader: metrics.current_leader,
                leader_address,
                term: metrics.current_term,
            }
        };
        publish.send_if_modified(|current| {
            let changed = *current != next;
            *current = next;
            changed
        });
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
