//! The seam between everything that uses cluster state and where that state lives. `Cluster`
//! is the one type HTTP, DNS, proxycfg and xDS, the agent (anti-entropy, check runners, the
//! leaf cache) and blocking queries use for writes, reads and watches, and for the requests
//! only a leader can answer (session renewals, leaf signing, CA configuration). A server
//! answers from itself (`ServerRpc`: Raft, the state store, the write batcher, the leader's
//! services); a client agent (`ClientRpc`) reads from a replica of a server's state store that
//! the server streams to it (`service`, `wire`) and sends everything else to a server, on the
//! server port, rotating servers on failure.
//!
//! Code that is itself leader-only (tombstone reaping, the CA's bootstrap and pruning, the
//! session TTL timers, catalog reconciliation) takes the `ServerRpc` explicitly, so its
//! assumption is in its signature.
//!
//! Errors are typed (`RpcError`); a call a follower cannot answer says so with
//! `ForwardToLeader { leader }`, which the server-to-server transport will act on. Only
//! `http::error` turns them into status codes.

pub mod auto_encrypt;
pub mod ca_manager;
pub mod client;
pub mod codec;
pub mod connections;
pub mod election;
pub mod federation;
pub mod forward;
pub mod handover;
pub mod lease;
#[cfg(test)]
pub mod memory;
pub mod raft_network;
pub mod server;
pub mod service;
pub mod session_ttl;
pub mod wire;
pub mod writes;

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use ca_manager::{CaError, Leaf, SignError};
pub use client::ClientRpc;
pub use server::ServerRpc;
pub use wire::{PeerRef, RaftConfiguration, RaftServer};

use crate::raft::NodeId;
use crate::state::{Match, Tables, WatchGuard};
use crate::types::connect::{CaConfig, CaState};
use crate::types::operator::AutopilotReport;
use crate::types::session::Session;
use crate::types::{Command, CommandResult};

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum RpcError {
    #[error("No cluster leader")]
    NoLeader,
    /// A client agent knows of no server to send the request to.
    #[error("No known Consul servers")]
    NoServers,
    /// A client agent could not reach the server it sent the request to. The request may or
    /// may not have been carried out, so it is not retried elsewhere.
    #[error("rpc error: {0}")]
    Unreachable(String),
    /// Only the leader at `leader` (its server RPC address) can answer.
    #[error("not the leader; the leader is {leader}")]
    ForwardToLeader { leader: String },
    #[error("Timed out waiting for the write to commit")]
    Timeout,
    #[error("the agent is shutting down")]
    ShutDown,
    /// A failure inside Raft itself (storage, a fatal error), as openraft describes it.
    #[error("rpc error: {0}")]
    Raft(String),
    /// The request was understood and refused; the text says why.
    #[error("{0}")]
    Refused(String),
    /// No server of the datacenter a request names is known (Consul's `ErrNoDCPath`).
    #[error("No path to datacenter")]
    NoPathToDatacenter,
}

/// How long a request waits for a leader, or keeps trying servers (Consul's
/// `rpc_hold_timeout`).
pub const RPC_HOLD_TIMEOUT: Duration = Duration::from_secs(7);

fn mismatched() -> RpcError {
    RpcError::Unreachable("the server answered a different request".into())
}

/// How a read must relate to the leader (`?stale`, default, `?consistent`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
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
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderContact {
    pub known_leader: bool,
    pub last_contact_ms: u64,
}

/// Who leads, as published by the server whenever it changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Leadership {
    pub is_leader: bool,
    pub leader: Option<NodeId>,
    /// The leader's server RPC address, `""` when there is none.
    pub leader_address: String,
    pub term: u64,
}

/// A server's Raft progress as `/v1/agent/self` and `/v1/agent/metrics` show it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RaftStatus {
    /// `Leader`, `Follower`, `Candidate` or `Learner`.
    pub state: &'static str,
    pub term: u64,
    pub last_log_index: u64,
    pub applied_index: u64,
    pub last_snapshot_index: u64,
    /// Voters other than this server.
    pub peers: usize,
    /// Milliseconds since the leader last reached this server (0 on the leader).
    pub last_contact_ms: u64,
    pub is_leader: bool,
}

/// Where cluster state is read from and written to. Cheap to clone.
#[derive(Clone)]
pub enum Cluster {
    /// This agent is a server: calls go to its own Raft node and state store.
    Server(Arc<ServerRpc>),
    /// This agent is a client: reads come from a replica of a server's state store that the
    /// server streams to it, everything else is sent to a server.
    Client(Arc<ClientRpc>),
    /// One in-memory node without Raft, for unit tests above the seam.
    #[cfg(test)]
    Memory(Arc<memory::MemoryCluster>),
}

impl Cluster {
    /// Commits `command`; returns its log index and what applying it produced.
    pub async fn write(&self, command: Command) -> Result<(u64, CommandResult), RpcError> {
        let started = std::time::Instant::now();
        let timer = write_timer(&command);
        let outcome = match self {
            Cluster::Server(server) => server.write(command).await,
            Cluster::Client(client) => client.write(command).await,
            #[cfg(test)]
            Cluster::Memory(memory) => Ok(memory.apply(&command)),
        };
        if let (Some(timer), Ok(_)) = (timer, &outcome) {
            metrics::histogram!(timer).record(crate::telemetry::ms_since(started));
        }
        outcome
    }

    /// Prepares a read at `consistency` (see `ServerRpc::read_barrier`).
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<LeaderContact, RpcError> {
        match self {
            Cluster::Server(server) => server.read_barrier(consistency).await,
            Cluster::Client(client) => client.read_barrier(consistency).await,
            #[cfg(test)]
            Cluster::Memory(memory) => match consistency {
                Consistency::Stale => Ok(memory.leader_contact()),
                _ if memory.leader_contact().known_leader => Ok(memory.leader_contact()),
                _ => Err(RpcError::NoLeader),
            },
        }
    }

    /// This server's Raft progress, for stats and metrics; none on a client.
    pub fn raft_status(&self) -> Option<RaftStatus> {
        match self {
            Cluster::Server(server) => Some(server.raft_status()),
            Cluster::Client(_) => None,
            #[cfg(test)]
            Cluster::Memory(_) => None,
        }
    }

    /// The current state: an immutable snapshot, cheap to take.
    pub fn snapshot(&self) -> Arc<Tables> {
        match self {
            Cluster::Server(server) => server.store().snapshot(),
            Cluster::Client(client) => client.store().snapshot(),
            #[cfg(test)]
            Cluster::Memory(memory) => memory.store.snapshot(),
        }
    }

    /// Registers interest in `topics`; register before reading so no change is missed.
    pub fn watch(&self, topics: &[(String, Match)]) -> WatchGuard {
        match self {
            Cluster::Server(server) => server.store().watch(topics),
            Cluster::Client(client) => client.store().watch(topics),
            #[cfg(test)]
            Cluster::Memory(memory) => memory.store.watch(topics),
        }
    }

    pub fn leader_contact(&self) -> LeaderContact {
        match self {
            Cluster::Server(server) => server.leader_contact(),
            Cluster::Client(client) => client.leader_contact(),
            #[cfg(test)]
            Cluster::Memory(memory) => memory.leader_contact(),
        }
    }

    /// Leadership as last published.
    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        match self {
            Cluster::Server(server) => server.leadership(),
            Cluster::Client(client) => client.leadership(),
            #[cfg(test)]
            Cluster::Memory(memory) => memory.leadership(),
        }
    }

    /// Server RPC addresses of the voters.
    pub fn peer_addresses(&self) -> Vec<String> {
        match self {
            Cluster::Server(server) => server.peer_addresses(),
            Cluster::Client(client) => client.peer_addresses(),
            #[cfg(test)]
            Cluster::Memory(_) => vec!["127.0.0.1:8300".into()],
        }
    }

    /// How long `key` is still held back by a released lock's lock-delay.
    pub fn lock_delay_remaining(&self, key: &str) -> Option<Duration> {
        match self {
            Cluster::Server(server) => server.store().lock_delay_remaining(key),
            Cluster::Client(client) => client.store().lock_delay_remaining(key),
            #[cfg(test)]
            Cluster::Memory(memory) => memory.store.lock_delay_remaining(key),
        }
    }

    /// Renews a session's TTL on the leader; `Ok(None)` when there is no such session.
    pub async fn renew_session(&self, id: &str) -> Result<Option<Session>, RpcError> {
        #[cfg(test)]
        if let Cluster::Memory(memory) = self {
            if !memory.leader_contact().known_leader {
                return Err(RpcError::NoLeader);
            }
            return Ok(memory.store.snapshot().session(id).cloned());
        }
        match self.request(wire::Request::RenewSession(id.into())).await? {
            wire::Reply::RenewSession(answer) => answer,
            _ => Err(mismatched()),
        }
    }

    /// Has the leader sign a leaf CSR for `service`.
    pub async fn sign_leaf(&self, csr_pem: &str, service: &str) -> Result<Leaf, SignError> {
        #[cfg(test)]
        if let Cluster::Memory(_) = self {
            return Err(SignError::Unavailable("no CA in a memory cluster".into()));
        }
        let request = wire::Request::SignLeaf {
            csr_pem: csr_pem.into(),
            service: service.into(),
        };
        match self.request(request).await? {
            wire::Reply::SignLeaf(answer) => answer,
            _ => Err(mismatched().into()),
        }
    }

    /// Applies a new CA configuration on the leader; true when it rotated the root.
    pub async fn set_ca_config(&self, config: CaConfig) -> Result<bool, CaError> {
        #[cfg(test)]
        if let Cluster::Memory(_) = self {
            return Err(CaError::Unavailable("no CA in a memory cluster".into()));
        }
        match self.request(wire::Request::SetCaConfig(config)).await? {
            wire::Reply::SetCaConfig(answer) => answer,
            _ => Err(mismatched().into()),
        }
    }

    /// The leader's autopilot report.
    pub async fn autopilot_health(&self) -> Result<AutopilotReport, RpcError> {
        match self.request(wire::Request::AutopilotHealth).await? {
            wire::Reply::AutopilotHealth(answer) => answer,
            _ => Err(mismatched()),
        }
    }

    /// Hands leadership to `target` (or the most up-to-date other voter); the new leader's
    /// server address.
    pub async fn transfer_leader(&self, target: Option<PeerRef>) -> Result<String, RpcError> {
        match self.request(wire::Request::TransferLeader(target)).await? {
            wire::Reply::TransferLeader(answer) => answer,
            _ => Err(mismatched()),
        }
    }

    /// The Raft configuration, from the leader unless `stale` (then from the server asked).
    pub async fn raft_configuration(&self, stale: bool) -> Result<RaftConfiguration, RpcError> {
        let request = wire::Request::RaftConfiguration { stale };
        match self.request(request).await? {
            wire::Reply::RaftConfiguration(answer) => answer,
            _ => Err(mismatched()),
        }
    }

    /// Removes a server from the Raft configuration, on the leader.
    pub async fn remove_raft_peer(&self, peer: PeerRef) -> Result<(), RpcError> {
        match self.request(wire::Request::RemovePeer(peer)).await? {
            wire::Reply::RemovePeer(answer) => answer,
            _ => Err(mismatched()),
        }
    }

    /// Carries an HTTP request to the datacenter it names (`federation`): from a server
    /// directly, from a client through one of its servers.
    pub async fn forward_http(
        &self,
        forward: wire::HttpForward,
    ) -> Result<wire::HttpAnswer, RpcError> {
        let reply = match self {
            Cluster::Server(server) => server.handle(wire::Request::Http(forward), false).await,
            Cluster::Client(client) => {
                let timeout = Duration::from_millis(forward.timeout_ms);
                client
                    .request_within(wire::Request::Http(forward), timeout)
                    .await?
            }
            #[cfg(test)]
            Cluster::Memory(_) => return Err(RpcError::NoPathToDatacenter),
        };
        match reply {
            wire::Reply::Http(answer) => answer,
            _ => Err(mismatched()),
        }
    }

    /// Carries a DNS query to the datacenter it names, as `forward_http` an HTTP request.
    pub async fn forward_dns(&self, forward: wire::DnsForward) -> Result<Vec<u8>, RpcError> {
        match self.request(wire::Request::Dns(forward)).await? {
            wire::Reply::Dns(answer) => answer,
            _ => Err(mismatched()),
        }
    }

    /// Carries a prepared query's DNS lookup to the datacenters it fails over to; the first
    /// answer with records, or an error when none had any.
    pub async fn failover_dns(&self, forward: wire::QueryDnsForward) -> Result<Vec<u8>, RpcError> {
        match self.request(wire::Request::QueryDns(forward)).await? {
            wire::Reply::Dns(answer) => answer,
            _ => Err(mismatched()),
        }
    }

    /// Sends `request` where it is answered: this server (or its leader), or a server.
    async fn request(&self, request: wire::Request) -> Result<wire::Reply, RpcError> {
        match self {
            Cluster::Server(server) => Ok(server.handle(request, false).await),
            Cluster::Client(client) => client.request(request).await,
            #[cfg(test)]
            Cluster::Memory(_) => Err(RpcError::Refused("no Raft in a memory cluster".into())),
        }
    }

    /// The CA's replicated state, once it has bootstrapped.
    pub fn ca_state(&self) -> Option<Arc<CaState>> {
        self.snapshot().ca().cloned()
    }

    /// Whether this agent is a client (which keeps no Raft state and asks its servers).
    pub fn is_client(&self) -> bool {
        matches!(self, Cluster::Client(_))
    }

    /// The server handle, for code that only runs on servers.
    pub fn server(&self) -> Option<&Arc<ServerRpc>> {
        match self {
            Cluster::Server(server) => Some(server),
            Cluster::Client(_) => None,
            #[cfg(test)]
            Cluster::Memory(_) => None,
        }
    }
}

/// A server's datacenter and the primary one (`primary_datacenter`), which owns what every
/// datacenter shares.
#[derive(Clone, Debug)]
pub struct Datacenters {
    pub local: String,
    pub primary: String,
}

impl Datacenters {
    pub fn is_primary(&self) -> bool {
        self.local == self.primary
    }
}

/// The timer a client's write of `command` is recorded under (Consul's names), or none for
/// the writes only the leader's own duties make.
fn write_timer(command: &Command) -> Option<&'static str> {
    use crate::telemetry as t;
    Some(match command {
        Command::Kv(_) => t::KVS_APPLY,
        Command::Txn(_) | Command::Transaction(_) => t::TXN_APPLY,
        Command::CatalogRegister(_) => t::CATALOG_REGISTER,
        Command::CatalogDeregister(_) => t::CATALOG_DEREGISTER,
        Command::SessionCreate(_) | Command::SessionDestroy { .. } => t::SESSION_APPLY,
        Command::ConfigEntrySet { .. } | Command::ConfigEntryDelete { .. } => t::CONFIG_ENTRY_APPLY,
        Command::Acl(_) => t::ACL_APPLY,
        Command::PreparedQuery(_) => t::PREPARED_QUERY_APPLY,
        Command::ReapTombstones { .. }
        | Command::Batch(_)
        | Command::CaSet { .. }
        | Command::CoordinateBatchUpdate(_)
        | Command::Restore(_)
        | Command::RestoreChunk { .. }
        | Command::RestoreCommit { .. }
        | Command::AutopilotSetConfig { .. } => return None,
    })
}
