//! A server's side of the seam: it owns the Raft node, the state store, the write batcher
//! (`writes`), the published leadership, and the leader-only services that answer requests
//! (session renewals through `SessionTimers`, leaf signing and CA configuration through
//! `CaManager`).
//!
//! Leadership is observed in one place: a task turns openraft's metrics into `Leadership` and
//! publishes it on a `watch` channel only when it changes; the leader's duties, the session
//! timers and the CA wait on that channel instead of polling Raft.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::ca_manager::CaManager;
use super::connections::{CallError, Connections};
use super::forward::{Forwarder, SendBatch};
use super::handover::Handover;
use super::lease::Lease;
use super::raft_network::PeerContacts;
use super::session_ttl::SessionTimers;
use super::wire::{Frame, PeerRef, RaftConfiguration, RaftServer, Reply, Request, CALL_PATH};
use super::writes::{WriteOutcome, Writer};
use super::{mismatched, Consistency, LeaderContact, Leadership, RpcError, RPC_HOLD_TIMEOUT};
use crate::raft::{NodeId, Raft};
use crate::state::Store;
use crate::tasks::Tasks;
use crate::types::operator::AutopilotReport;
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

/// How long one forwarded request may take on the leader (a write waits for its commit).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a request waiting for a leader pauses before it tries again, when leadership
/// does not change sooner.
const RETRY_PAUSE: Duration = Duration::from_millis(250);
/// How many leader leases a leadership handover may take before it is given up.
const HANDOVER_WINDOW_LEASES: u32 = 4;
/// How often at most refused Raft traffic from outside the configuration is logged.
const STRANGER_LOG_EVERY: Duration = Duration::from_secs(10);

pub struct ServerRpc {
    raft: Raft,
    /// Connections to the other servers (Raft traffic and forwarded requests).
    connections: Arc<Connections>,
    store: Arc<Store>,
    node_id: NodeId,
    writer: Writer,
    leadership: watch::Receiver<Leadership>,
    last_contact: LastContact,
    /// Grouped confirmations of this server's leadership, and the lease they give it.
    lease: Lease,
    /// Batches this server's writes to the leader while it follows.
    forwarder: Forwarder,
    /// When a Raft message from outside the configuration was last logged (ms after start).
    stranger_logged_ms: AtomicU64,
    /// Set while the leader has been silent past the leader lease (`election`); cleared by
    /// the next message from a leader.
    leader_silent: watch::Sender<bool>,
    /// The server the leader announced it hands leadership to, and until when.
    handover_expected: Mutex<Option<(NodeId, Instant)>>,
    /// When each server last answered this one's Raft traffic.
    contacts: Arc<PeerContacts>,
    /// The leader's latest autopilot report; `None` while this server does not lead.
    autopilot: Mutex<Option<AutopilotReport>>,
    /// Closed while this leader hands leadership over (`handover`).
    handover: Handover,
    /// Session TTL timers (the leader's).
    pub sessions: SessionTimers,
    /// The built-in CA's leader side.
    pub ca: CaManager,
    /// Requests for other datacenters (`?dc=`), and this one's answers to them.
    pub federation: super::federation::Federation,
}

impl ServerRpc {
    /// Creates the server handle and starts its write batcher and leadership publisher.
    pub fn start(
        raft: Raft,
        connections: Arc<Connections>,
        store: Arc<Store>,
        node_id: NodeId,
        datacenters: super::Datacenters,
        contacts: Arc<PeerContacts>,
        tasks: &Tasks,
    ) -> Arc<ServerRpc> {
        let writer = Writer::start(raft.clone(), tasks);
        let (publish, leadership) = watch::channel(Leadership::default());
        let (leader_silent, silent) = watch::channel(false);
        tasks.spawn(
            "rpc.leadership",
            publish_leadership(raft.clone(), node_id, publish, silent),
        );
        let handover = Handover::default();
        let lease = Lease::start(raft.clone(), leadership.clone(), handover.clone(), tasks);
        Arc::new_cyclic(|weak: &std::sync::Weak<ServerRpc>| {
            // The server owns the forwarder, so the forwarder holds it weakly.
            let weak = weak.clone();
            let send: SendBatch = Arc::new(move |commands: Vec<Command>| {
                let weak = weak.clone();
                Box::pin(async move {
                    let count = commands.len();
                    let Some(server) = weak.upgrade() else {
                        return vec![Err(RpcError::ShutDown); count];
                    };
                    match server.handle(Request::WriteBatch(commands), false).await {
                        Reply::WriteBatch(Ok(outcomes)) => outcomes,
                        Reply::WriteBatch(Err(error)) => vec![Err(error); count],
                        _ => vec![Err(mismatched()); count],
                    }
                })
            });
            ServerRpc {
                federation: super::federation::Federation::new(datacenters.local.clone()),
                ca: CaManager::new(
                    writer.clone(),
                    store.clone(),
                    leadership.clone(),
                    datacenters.local.clone(),
                    datacenters.is_primary(),
                ),
                raft,
                connections,
                store,
                node_id,
                writer,
                leadership,
                last_contact: LastContact {
                    started: Instant::now(),
                    at_ms: AtomicU64::new(0),
                },
                stranger_logged_ms: AtomicU64::new(0),
                leader_silent,
                handover_expected: Mutex::new(None),
                contacts,
                autopilot: Mutex::new(None),
                handover,
                lease,
                forwarder: Forwarder::start(send, tasks),
                sessions: SessionTimers::default(),
            }
        })
    }

    pub(super) fn connections(&self) -> &Connections {
        &self.connections
    }

    /// This server's Raft progress (see `Cluster::raft_status`).
    pub(super) fn raft_status(&self) -> super::RaftStatus {
        let metrics = self.raft.metrics().borrow().clone();
        let voters = metrics.membership_config.membership().voter_ids().count();
        let state = match metrics.state {
            openraft::ServerState::Leader => "Leader",
            openraft::ServerState::Candidate => "Candidate",
            openraft::ServerState::Learner => "Learner",
            _ => "Follower",
        };
        let is_leader = metrics.state == openraft::ServerState::Leader;
        super::RaftStatus {
            state,
            term: metrics.current_term,
            last_log_index: metrics.last_log_index.unwrap_or(0),
            applied_index: metrics.last_applied.map_or(0, |log| log.index),
            last_snapshot_index: metrics.snapshot.map_or(0, |log| log.index),
            peers: voters.saturating_sub(1),
            last_contact_ms: if is_leader {
                0
            } else {
                self.millis_since_leader_contact()
            },
            is_leader: self.is_leader(),
        }
    }

    /// Milliseconds since a leader last reached this server (since start, if none has).
    pub(super) fn millis_since_leader_contact(&self) -> u64 {
        self.last_contact.since_ms()
    }

    pub(super) fn last_log_index(&self) -> u64 {
        self.raft.metrics().borrow().last_log_index.unwrap_or(0)
    }

    /// The voters of the current configuration and their server addresses.
    fn voters(&self) -> Vec<(NodeId, Option<SocketAddr>)> {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        membership
            .voter_ids()
            .map(|id| {
                let address = membership
                    .get_node(&id)
                    .and_then(|node| node.addr.parse().ok());
                (id, address)
            })
            .collect()
    }

    pub(super) fn is_voter(&self) -> bool {
        self.voters().iter().any(|(id, _)| *id == self.node_id)
    }

    /// Whether this server is the configuration's only voter, which needs nobody's vote.
    pub(super) fn lone_voter(&self) -> bool {
        matches!(self.voters().as_slice(), [(id, _)] if *id == self.node_id)
    }

    /// How many voters there are, and the server addresses of the others.
    pub(super) fn voter_addresses(&self) -> (usize, Vec<SocketAddr>) {
        let voters = self.voters();
        let others = voters
            .iter()
            .filter(|(id, _)| *id != self.node_id)
            .filter_map(|(_, address)| *address)
            .collect();
        (voters.len(), others)
    }

    /// A pre-vote (`election`): whether this server would vote for a candidate whose log
    /// reaches `last_log_index` now. Not while it leads or has heard from a leader within the
    /// leader lease, nor for a candidate whose log is shorter than its own.
    fn would_vote(&self, candidate: NodeId, last_log_index: u64) -> bool {
        let lease = self.raft.config().election_timeout_max;
        let handed_to_another = self
            .handover_target()
            .is_some_and(|(target, _)| target != candidate);
        !self.is_leader()
            && !handed_to_another
            && self.last_contact.since_ms() >= lease
            && last_log_index >= self.last_log_index()
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

    pub fn peer_contacts(&self) -> &PeerContacts {
        &self.contacts
    }

    /// Publishes the leader's autopilot report (`None` on losing leadership).
    pub fn set_autopilot_report(&self, report: Option<AutopilotReport>) {
        *self
            .autopilot
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = report;
    }

    fn autopilot_report(&self) -> Result<AutopilotReport, RpcError> {
        self.require_leader()?;
        self.autopilot
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
            .ok_or_else(|| RpcError::Refused("autopilot has not assessed the servers yet".into()))
    }

    /// Commits `command` on the leader (this server, or the one it forwards to).
    pub async fn write(&self, command: Command) -> WriteOutcome {
        match self.handle(Request::Write(command), false).await {
            Reply::Write(outcome) => outcome,
            _ => Err(mismatched()),
        }
    }

    /// Commits `command` only if this server leads when it is proposed, never forwarding it:
    /// the leader's own duties (session timers, reconciliation, reaping, seeding) then cannot
    /// be carried out by a server that lost leadership midway, after the new leader did them.
    pub async fn write_as_leader(&self, command: Command) -> WriteOutcome {
        self.handover.passed().await;
        self.require_leader()?;
        self.writer.write(command).await
    }

    /// Answers `request`: this server if it leads (or the request was already forwarded to
    /// it by another server), otherwise the leader, to which it is forwarded once. While there
    /// is no leader, or the leader cannot be reached before sending, it waits for one for up
    /// to `RPC_HOLD_TIMEOUT`, as Consul's servers do; a request that may have reached the
    /// leader is not sent again unless repeating it is harmless.
    pub async fn handle(&self, request: Request, forwarded: bool) -> Reply {
        // A follower's writes (its own and its clients') go to the leader in batches.
        let request = match request {
            Request::Write(command) if !forwarded && !self.is_leader() => {
                return Reply::Write(self.forwarder.write(command).await)
            }
            request => request,
        };
        let deadline = tokio::time::Instant::now() + RPC_HOLD_TIMEOUT;
        let mut leadership = self.leadership.clone();
        let frame = Frame::encode(&request);
        loop {
            let current = leadership.borrow_and_update().clone();
            let leader = current.leader_address.parse::<SocketAddr>().ok();
            let last_error = match leader {
                // Held while this leader hands over, then looked at again: the request may
                // now belong to the new leader.
                _ if current.is_leader && request.uses_raft() && self.handover.in_progress() => {
                    self.handover.passed().await;
                    continue;
                }
                _ if current.is_leader || forwarded || request.local() => {
                    return self.answer(request).await
                }
                None => RpcError::NoLeader,
                Some(leader) => {
                    let sent = self
                        .connections
                        .unary(leader, CALL_PATH, frame.clone(), REQUEST_TIMEOUT, true)
                        .await;
                    match sent.map(|answer| answer.decode::<Reply>()) {
                        Ok(Ok(reply)) if !reply.refused() => return reply,
                        Ok(Ok(_)) => RpcError::NoLeader,
                        Ok(Err(error)) => {
                            return request
                                .failed(RpcError::Unreachable(format!("{leader}: {error}")))
                        }
                        Err(CallError::Status(status)) if !request.idempotent() => {
                            return request.failed(RpcError::Unreachable(format!(
                                "{leader}: {}",
                                status.message()
                            )))
                        }
                        Err(error) => RpcError::Unreachable(format!("{leader}: {error}")),
                    }
                }
            };
            // Wait for leadership to change (or a moment, for a leader that is still
            // getting ready), then try again.
            let retry_at = (tokio::time::Instant::now() + RETRY_PAUSE).min(deadline);
            if tokio::time::timeout_at(retry_at, leadership.changed())
                .await
                .is_ok_and(|changed| changed.is_err())
            {
                return request.failed(RpcError::ShutDown);
            }
            if tokio::time::Instant::now() >= deadline {
                return request.failed(last_error);
            }
        }
    }

    /// Carries out `request` here.
    async fn answer(&self, request: Request) -> Reply {
        match request {
            Request::Write(command) => Reply::Write(self.writer.write(command).await),
            Request::WriteBatch(commands) => Reply::WriteBatch(match self.require_leader() {
                Err(error) => Err(error),
                Ok(()) => Ok(futures::future::join_all(
                    commands
                        .into_iter()
                        .map(|command| self.writer.write(command)),
                )
                .await),
            }),
            Request::ReadBarrier(consistency) => Reply::ReadBarrier(
                self.local_read_barrier(consistency)
                    .await
                    .map(|contact| (contact, self.store.snapshot().last_index())),
            ),
            Request::RenewSession(id) => Reply::RenewSession(self.renew_locally(&id)),
            Request::SignAgent {
                csr_pem,
                node_id,
                dns_san,
                ip_san,
            } => Reply::SignLeaf(self.ca.sign_agent(&csr_pem, &node_id, &dns_san, &ip_san)),
            Request::SignLeaf { csr_pem, service } => {
                Reply::SignLeaf(self.ca.sign(&csr_pem, &service))
            }
            Request::SetCaConfig(config) => Reply::SetCaConfig(match self.require_leader() {
                Ok(()) => self.ca.set_config(config).await,
                Err(error) => Err(error.into()),
            }),
            Request::Peers => Reply::Peers(self.peer_addresses()),
            Request::RaftConfiguration { stale } => Reply::RaftConfiguration(
                match stale {
                    true => Ok(()),
                    false => self.require_leader(),
                }
                .map(|()| self.raft_configuration()),
            ),
            Request::RemovePeer(peer) => Reply::RemovePeer(self.remove_peer(peer).await),
            Request::AutopilotHealth => Reply::AutopilotHealth(self.autopilot_report()),
            Request::TransferLeader(target) => {
                Reply::TransferLeader(self.transfer_leader(target).await)
            }
            Request::Handover { from, term, target } => {
                Reply::Handover(self.expect_handover(from, term, target))
            }
            Request::PreVote {
                candidate,
                last_log_index,
            } => Reply::PreVote(self.would_vote(candidate, last_log_index)),
            Request::Http(forward) => {
                Reply::Http(self.federation.answer(&self.connections, forward).await)
            }
            Request::Dns(forward) => {
                Reply::Dns(self.federation.answer_dns(&self.connections, forward).await)
            }
            Request::QueryDns(forward) => Reply::Dns(
                self.federation
                    .answer_query_dns(&self.connections, forward)
                    .await,
            ),
        }
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
        self.leader_silent
            .send_if_modified(|silent| std::mem::replace(silent, false));
    }

    /// Records that the leader has been silent past the leader lease, so this server stops
    /// naming it (see `publish_leadership`).
    pub(super) fn note_leader_silent(&self) {
        self.leader_silent
            .send_if_modified(|silent| !std::mem::replace(silent, true));
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

    /// What a read learns about the leader: on a follower, the time since the leader last
    /// reached it; on the leader, 0 while its lease holds and otherwise the time since a
    /// quorum last confirmed it (so a leader cut off from its quorum reports a growing
    /// `X-Consul-LastContact`, as Consul's would once it stepped down).
    pub fn leader_contact(&self) -> LeaderContact {
        let leadership = self.leadership.borrow();
        LeaderContact {
            known_leader: leadership.leader.is_some(),
            last_contact_ms: match leadership.is_leader {
                true => self.lease.age_ms().unwrap_or(0),
                false => self.last_contact.since_ms(),
            },
        }
    }

    /// Prepares a read at `consistency` from this server's store. `?stale` reads it as it
    /// is; otherwise the leader names the index it has applied (a consistent read first
    /// confirms leadership with a quorum) and a follower waits until it has applied as much,
    /// so it sees everything committed before the read began.
    pub async fn read_barrier(&self, consistency: Consistency) -> Result<LeaderContact, RpcError> {
        if consistency == Consistency::Stale || self.is_leader() {
            match self.local_read_barrier(consistency).await {
                // Leadership moved on while the read waited (a handover): ask the new leader.
                Err(RpcError::ForwardToLeader { .. }) if consistency != Consistency::Stale => {}
                answer => return answer,
            }
        }
        let Reply::ReadBarrier(answer) =
            self.handle(Request::ReadBarrier(consistency), false).await
        else {
            return Err(mismatched());
        };
        let (contact, index) = answer?;
        self.raft
            .wait(Some(RPC_HOLD_TIMEOUT))
            .applied_index_at_least(Some(index), "read barrier")
            .await
            .map_err(|_| RpcError::Timeout)?;
        Ok(contact)
    }

    async fn local_read_barrier(
        &self,
        consistency: Consistency,
    ) -> Result<LeaderContact, RpcError> {
        let contact = self.leader_contact();
        match consistency {
            Consistency::Stale => Ok(contact),
            Consistency::Leader if contact.known_leader => {
                self.require_leader()?;
                // The leader's lease: while a quorum confirmed this leadership within the
                // shortest election timeout, no other leader can have been elected, so a
                // default read is answered without a round trip. Past it (a leader cut off
                // from its quorum, or one just elected) the read confirms with a quorum first,
                // as a consistent read does; a partitioned leader thus stops answering, as
                // Consul's steps down.
                if self.lease.age_ms().is_none() {
                    return Ok(contact);
                }
                self.lease.confirm().await?;
                Ok(self.leader_contact())
            }
            Consistency::Leader => Err(RpcError::NoLeader),
            Consistency::Consistent => {
                self.lease.confirm().await?;
                Ok(contact)
            }
        }
    }

    fn renew_locally(&self, id: &str) -> Result<Option<Session>, RpcError> {
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

    /// The voters another server knows (Consul's `Status.Peers`): empty when it is not part
    /// of a cluster yet.
    pub async fn peers_of(&self, server: SocketAddr) -> Result<Vec<String>, RpcError> {
        let frame = Frame::encode(&Request::Peers);
        let answer = self
            .connections
            .unary(server, CALL_PATH, frame, REQUEST_TIMEOUT, false)
            .await
            .map_err(|error| RpcError::Unreachable(format!("{server}: {error}")))?;
        match answer.decode::<Reply>() {
            Ok(Reply::Peers(peers)) => Ok(peers),
            Ok(_) => Err(mismatched()),
            Err(error) => Err(RpcError::Unreachable(format!("{server}: {error}"))),
        }
    }

    /// Whether Raft RPCs from `node` are accepted: a server that belongs to a cluster takes
    /// them only from members of its configuration, so a server of another cluster (one that
    /// bootstrapped alone, say) or one removed from this one cannot disrupt it; a server that
    /// belongs to none yet takes them from any leader that adds it.
    pub fn knows_raft_member(&self, node: NodeId) -> bool {
        let metrics = self.raft.metrics();
        let metrics = metrics.borrow();
        let membership = metrics.membership_config.membership();
        let mut nodes = membership.nodes().map(|(id, _)| *id).peekable();
        let known = nodes.peek().is_none() || nodes.any(|id| id == node);
        if !known {
            self.refused_stranger(node);
        }
        known
    }

    /// Logs a refused stranger at most once every `STRANGER_LOG_EVERY`.
    fn refused_stranger(&self, node: NodeId) {
        let now = self.last_contact.started.elapsed().as_millis() as u64;
        let last = self.stranger_logged_ms.load(Ordering::Relaxed);
        if last == 0 || now.saturating_sub(last) >= STRANGER_LOG_EVERY.as_millis() as u64 {
            self.stranger_logged_ms.store(now.max(1), Ordering::Relaxed);
            tracing::warn!(
                node,
                "refused Raft traffic from a server outside this cluster's configuration (it \
                 belongs to another cluster, or was removed from this one)"
            );
        }
    }

    /// The Raft configuration as this server sees it.
    pub fn raft_configuration(&self) -> RaftConfiguration {
        let metrics = self.raft.metrics().borrow().clone();
        let membership = metrics.membership_config.membership();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        let matched: BTreeMap<NodeId, u64> = metrics
            .replication
            .iter()
            .flatten()
            .map(|(id, log)| (*id, log.map_or(0, |log| log.index)))
            .collect();
        let servers = membership
            .nodes()
            .map(|(id, node)| RaftServer {
                id: *id,
                address: node.addr.clone(),
                voter: voters.contains(id),
                leader: metrics.current_leader == Some(*id),
                last_index: match *id == self.node_id {
                    true => metrics.last_log_index.unwrap_or(0),
                    false => matched.get(id).copied().unwrap_or(0),
                },
            })
            .collect();
        RaftConfiguration {
            servers,
            index: metrics
                .membership_config
                .log_id()
                .map_or(0, |log| log.index),
        }
    }

    /// Removes one server from the Raft configuration; refuses an unknown one and the last
    /// voter, which would leave nobody to elect a leader.
    async fn remove_peer(&self, peer: PeerRef) -> Result<(), RpcError> {
        self.require_leader()?;
        let configuration = self.raft_configuration();
        let Some(server) = configuration.find(&peer) else {
            return Err(RpcError::Refused(match peer {
                PeerRef::Id(id) => format!("id {id:x} was not found in the Raft configuration"),
                PeerRef::Address(address) => {
                    format!("address \"{address}\" was not found in the Raft configuration")
                }
            }));
        };
        let voters = configuration.servers.iter().filter(|s| s.voter).count();
        if server.voter && voters == 1 {
            return Err(RpcError::Refused(format!(
                "{} is the last voter; removing it would leave the cluster unable to elect a \
                 leader",
                server.address
            )));
        }
        let ids = BTreeSet::from([server.id]);
        let change = match server.voter {
            true => openraft::ChangeMembers::RemoveVoters(ids),
            false => openraft::ChangeMembers::RemoveNodes(ids),
        };
        self.raft
            .change_membership(change, false)
            .await
            .map(|_| tracing::info!(server = %server.address, "removed a server from the Raft configuration"))
            .map_err(|error| RpcError::Raft(error.to_string()))
    }

    /// Hands leadership to `target`, or to the voter furthest along the log (see
    /// `handover`); returns the new leader's server address.
    async fn transfer_leader(&self, target: Option<PeerRef>) -> Result<String, RpcError> {
        self.require_leader()?;
        let configuration = self.raft_configuration();
        let target = match &target {
            Some(peer) => configuration.find(peer).ok_or_else(|| {
                RpcError::Refused("cannot find the server to transfer leadership to".into())
            })?,
            None => configuration
                .servers
                .iter()
                .filter(|server| server.voter && server.id != self.node_id)
                .max_by_key(|server| server.last_index)
                .ok_or_else(|| {
                    RpcError::Refused("no other voter to transfer leadership to".into())
                })?,
        };
        if target.id == self.node_id {
            return Err(RpcError::Refused(format!(
                "{} is already the leader",
                target.address
            )));
        }
        if !target.voter {
            return Err(RpcError::Refused(format!(
                "{} is not a voter; only a voter can lead",
                target.address
            )));
        }
        let address: SocketAddr = target
            .address
            .parse()
            .map_err(|_| RpcError::Refused(format!("bad server address {}", target.address)))?;
        let Some(_gate) = self.handover.begin() else {
            return Err(RpcError::Refused(
                "a leadership transfer is already in progress".into(),
            ));
        };
        let window = self.handover_window();
        let term = self.leadership.borrow().term;
        let target_id = target.id;
        // Every other voter learns who is to run (and holds its own elections back), before
        // the heartbeats stop.
        let announce = Frame::encode(&Request::Handover {
            from: self.node_id,
            term,
            target: target_id,
        });
        let (_, others) = self.voter_addresses();
        let told = futures::future::join_all(others.iter().map(|peer| {
            let announce = announce.clone();
            async move {
                let answer = self
                    .connections
                    .unary(*peer, CALL_PATH, announce, REQUEST_TIMEOUT, true)
                    .await;
                (*peer, answer.map(|frame| frame.decode::<Reply>()))
            }
        }))
        .await;
        let target_told = told.iter().any(|(peer, answer)| {
            *peer == address && matches!(answer, Ok(Ok(Reply::Handover(Ok(())))))
        });
        if !target_told {
            return Err(RpcError::Refused(format!(
                "{address} could not be told to take over; leadership stays here"
            )));
        }
        let heartbeats = Heartbeats::stop(&self.raft);
        self.raft
            .wait(Some(window))
            .metrics(
                |metrics| {
                    let matched = metrics
                        .replication
                        .as_ref()
                        .and_then(|replication| replication.get(&target_id).copied().flatten());
                    matched.map(|log| log.index) >= metrics.last_log_index
                },
                "the transfer target to catch up",
            )
            .await
            .map_err(|_| {
                RpcError::Refused(format!(
                    "{address} did not catch up with the leader's log; leadership stays here"
                ))
            })?;
        // The target runs once the followers' vote lease has lapsed (`election`).
        let mut leadership = self.leadership.clone();
        let moved = tokio::time::timeout(
            window,
            leadership.wait_for(|now| now.leader.is_some() && !now.is_leader),
        )
        .await;
        drop(heartbeats);
        match moved {
            Ok(Ok(now)) => {
                let new_leader = now.leader_address.clone();
                tracing::info!(%new_leader, "handed leadership over");
                Ok(new_leader)
            }
            _ => Err(RpcError::Refused(format!(
                "{address} did not take over leadership; leadership stays here"
            ))),
        }
    }

    /// Records that the leader `from` at `term` hands leadership to `target`: until the window
    /// closes, only `target` runs or gets this server's pre-vote (`election`).
    fn expect_handover(&self, from: NodeId, term: u64, target: NodeId) -> Result<(), RpcError> {
        let metrics = self.raft.metrics().borrow().clone();
        if metrics.current_leader != Some(from) || metrics.current_term != term {
            return Err(RpcError::Refused(
                "only the current leader may hand leadership over".into(),
            ));
        }
        let until = Instant::now() + self.handover_window();
        *self
            .handover_expected
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some((target, until));
        tracing::info!(leader = from, target, "the leader is handing over");
        Ok(())
    }

    /// How long a handover may take: a few of the followers' vote leases, each counted from
    /// the last message the leader sent.
    fn handover_window(&self) -> Duration {
        let timers = self.raft.config();
        let lease = Duration::from_millis(timers.election_timeout_max + timers.heartbeat_interval);
        HANDOVER_WINDOW_LEASES * lease
    }

    /// The server a leader is handing over to, and until when, while that is so.
    pub(super) fn handover_target(&self) -> Option<(NodeId, Instant)> {
        let expected = *self
            .handover_expected
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        expected.filter(|(_, until)| Instant::now() < *until)
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
/// A follower whose leader has gone silent past the leader lease (`silent`, set by the
/// election task) knows no leader, as a Consul server that stopped hearing heartbeats does,
/// even though openraft still names the last one until an election settles it.
async fn publish_leadership(
    raft: Raft,
    node_id: NodeId,
    publish: watch::Sender<Leadership>,
    mut silent: watch::Receiver<bool>,
) {
    let mut metrics = raft.metrics();
    loop {
        let next = {
            let metrics = metrics.borrow_and_update();
            let silent = *silent.borrow_and_update();
            let current_leader = metrics
                .current_leader
                .filter(|leader| *leader == node_id || !silent);
            let leader_address = current_leader
                .and_then(|leader| {
                    metrics
                        .membership_config
                        .nodes()
                        .find(|(id, _)| **id == leader)
                        .map(|(_, node)| node.addr.clone())
                })
                .unwrap_or_default();
            Leadership {
                is_leader: current_leader == Some(node_id),
                leader: current_leader,
                leader_address,
                term: metrics.current_term,
            }
        };
        publish.send_if_modified(|current| {
            if next.is_leader && !current.is_leader {
                metrics::counter!(crate::telemetry::RAFT_STATE_LEADER).increment(1);
            }
            let changed = *current != next;
            *current = next;
            changed
        });
        tokio::select! {
            changed = metrics.changed() => if changed.is_err() { return },
            changed = silent.changed() => if changed.is_err() { return },
        }
    }
}

/// Stops the leader's heartbeats until dropped.
struct Heartbeats(Raft);

impl Heartbeats {
    fn stop(raft: &Raft) -> Heartbeats {
        raft.runtime_config().heartbeat(false);
        Heartbeats(raft.clone())
    }
}

impl Drop for Heartbeats {
    fn drop(&mut self) {
        self.0.runtime_config().heartbeat(true);
    }
}
