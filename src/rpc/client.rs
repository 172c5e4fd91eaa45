//! A client agent's side of the seam. It keeps no Raft state: it follows a server's state
//! store (the tables, then every applied batch of log entries, in order) into a replica of
//! its own, and sends everything else (writes, read barriers, session renewals, leaf signing,
//! CA configuration) to a server on the server port.
//!
//! - Reads come from the replica. A default or `?consistent` read first asks a server for a
//!   read barrier and waits until the replica has applied the index it answers with, so it
//!   sees everything committed before the read began; `?stale` reads the replica as it is.
//! - A write returns once the replica has applied it, so the agent reads its own writes.
//! - Blocking queries and watches wake on the replica's changes, exactly as on a server.
//!
//! Servers are the LAN members with `role=consul` in this datacenter. Requests go to the
//! head of the list; a server that fails moves to the tail (Consul's router). A request that
//! could not be sent is retried on the next server for up to `RPC_HOLD_TIMEOUT`, as is one a
//! server refused for want of a leader; one that may have been carried out is not retried.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::sync::{watch, Notify};
use tokio_util::sync::CancellationToken;

use super::codec::SmallCodec;
use super::connections::{CallError, Connections};
use super::service::FEED_SILENCE;
use super::wire::{self, Feed, FollowRequest, Frame, Reply};
use super::{mismatched, Consistency, LeaderContact, Leadership, RpcError, RPC_HOLD_TIMEOUT};
use crate::gossip::{Member, MemberStatus, Pool};
use crate::state::Store;
use crate::tasks::Tasks;
use crate::types::{Command, CommandResult};

/// How long one request may take on a server (a write waits for its commit).
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// The largest feed message accepted (the tables are sent whole).
const MAX_FEED_MESSAGE: usize = 1 << 30;
/// How often the server list is refreshed from the pool even without member events.
const SERVER_REFRESH: Duration = Duration::from_secs(10);

/// Where requests go: servers in the order they are tried.
#[derive(Default)]
struct Servers {
    list: Vec<SocketAddr>,
}

pub struct ClientRpc {
    node: String,
    store: Arc<Store>,
    servers: Mutex<Servers>,
    connections: Connections,
    servers_changed: Notify,
    leadership: watch::Sender<Leadership>,
    peers: Mutex<Vec<String>>,
    /// The replica's last applied index.
    applied: watch::Sender<u64>,
    /// Whether the replica has received a server's tables at least once.
    synced: AtomicBool,
    /// When the feed last brought anything (a change or a heartbeat).
    last_heard: Mutex<Option<Instant>>,
}

impl ClientRpc {
    /// Starts following whichever server `pool` shows, as `node`, connecting from `bind`.
    pub fn start(
        node: String,
        bind: std::net::IpAddr,
        tls: Arc<crate::tls::Tls>,
        pool: Pool,
        tasks: &Tasks,
    ) -> Arc<ClientRpc> {
        let client = Arc::new(ClientRpc {
            node,
            store: Arc::new(Store::new()),
            servers: Mutex::new(Servers::default()),
            connections: Connections::new(bind, tls),
            servers_changed: Notify::new(),
            leadership: watch::Sender::new(Leadership::default()),
            peers: Mutex::new(Vec::new()),
            applied: watch::Sender::new(0),
            synced: AtomicBool::new(false),
            last_heard: Mutex::new(None),
        });
        let tracker = client.clone();
        let stop = tasks.shutdown().clone();
        tasks.spawn("rpc.servers", async move {
            tracker.track_servers(pool, stop).await
        });
        let follower = client.clone();
        let stop = tasks.shutdown().clone();
        tasks.spawn("rpc.follow", async move { follower.follow(stop).await });
        client
    }

    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    pub fn leadership(&self) -> watch::Receiver<Leadership> {
        self.leadership.subscribe()
    }

    pub fn peer_addresses(&self) -> Vec<String> {
        self.peers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// What a read from the replica knows of the leader: whether the server it follows
    /// knows one, and how long ago the feed last brought anything.
    pub fn leader_contact(&self) -> LeaderContact {
        let heard = *self
            .last_heard
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        LeaderContact {
            known_leader: !self.leadership.borrow().leader_address.is_empty(),
            last_contact_ms: heard.map_or(0, |at| at.elapsed().as_millis() as u64),
        }
    }

    pub async fn write(&self, command: Command) -> Result<(u64, CommandResult), RpcError> {
        let Reply::Write(result) = self.request(wire::Request::Write(command)).await? else {
            return Err(mismatched());
        };
        let (index, result) = result?;
        if self.wait_applied(index).await.is_err() {
            tracing::warn!(
                index,
                "a write committed but the replica has not applied it yet"
            );
        }
        Ok((index, result))
    }

    pub async fn read_barrier(&self, consistency: Consistency) -> Result<LeaderContact, RpcError> {
        if consistency == Consistency::Stale {
            return match self.synced.load(Ordering::Acquire) {
                true => Ok(self.leader_contact()),
                false => Err(RpcError::NoServers),
            };
        }
        let Reply::ReadBarrier(result) = self
            .request(wire::Request::ReadBarrier(consistency))
            .await?
        else {
            return Err(mismatched());
        };
        let (contact, index) = result?;
        self.wait_applied(index).await?;
        Ok(contact)
    }

    /// Waits until the replica has applied `index`.
    async fn wait_applied(&self, index: u64) -> Result<(), RpcError> {
        let mut applied = self.applied.subscribe();
        let waited =
            tokio::time::timeout(RPC_HOLD_TIMEOUT, applied.wait_for(|at| *at >= index)).await;
        match waited {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(RpcError::ShutDown),
            Err(_) => Err(RpcError::Timeout),
        }
    }

    /// Sends `request` to a server, trying others while it could not be sent or no server
    /// had a leader, for up to `RPC_HOLD_TIMEOUT`.
    pub async fn request(&self, request: wire::Request) -> Result<Reply, RpcError> {
        self.request_within(request, REQUEST_TIMEOUT).await
    }

    /// `request`, waiting up to `timeout` for each server's answer (a forwarded blocking
    /// query may take its whole wait).
    pub async fn request_within(
        &self,
        request: wire::Request,
        timeout: Duration,
    ) -> Result<Reply, RpcError> {
        metrics::counter!(crate::telemetry::CLIENT_RPC).increment(1);
        let deadline = tokio::time::Instant::now() + RPC_HOLD_TIMEOUT;
        let idempotent = request.idempotent();
        let frame = Frame::encode(&request);
        let mut last_error = RpcError::NoServers;
        loop {
            if tokio::time::Instant::now() >= deadline {
                return Err(last_error);
            }
            let Some(server) = self.head() else {
                let _ = tokio::time::timeout_at(deadline, self.servers_changed.notified()).await;
                continue;
            };
            let sent = self
                .connections
                .unary(server, wire::CALL_PATH, frame.clone(), timeout, false)
                .await;
            let reply = match sent {
                Ok(answer) => answer.decode::<Reply>(),
                Err(error) => {
                    tracing::debug!(%server, %error, "a server call failed; trying the next");
                    self.failed(server);
                    last_error = RpcError::Unreachable(format!("{server}: {error}"));
                    if idempotent || matches!(error, CallError::Connect(_)) {
                        continue;
                    }
                    return Err(last_error);
                }
            };
            match reply {
                Ok(reply) if reply.refused() => {
                    last_error = RpcError::NoLeader;
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Ok(reply) => return Ok(reply),
                Err(error) => return Err(RpcError::Unreachable(format!("{server}: {error}"))),
            }
        }
    }

    fn head(&self) -> Option<SocketAddr> {
        let servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        servers.list.first().copied()
    }

    /// `server` failed a request: drop its connection and try it last from now on.
    fn failed(&self, server: SocketAddr) {
        self.connections.forget(server);
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(position) = servers.list.iter().position(|s| *s == server) {
            let failed = servers.list.remove(position);
            servers.list.push(failed);
        }
    }

    /// Replaces the server list, keeping the order of servers still in it (the one in use
    /// stays in use) and adding new ones at the end.
    fn set_servers(&self, current: Vec<SocketAddr>) {
        let mut servers = self.servers.lock().unwrap_or_else(PoisonError::into_inner);
        let mut list: Vec<SocketAddr> = servers
            .list
            .iter()
            .copied()
            .filter(|server| current.contains(server))
            .collect();
        for server in current {
            if !list.contains(&server) {
                list.push(server);
            }
        }
        if list != servers.list {
            tracing::info!(servers = ?list, "servers known from gossip");
            self.connections.retain(&list);
            servers.list = list;
            drop(servers);
            self.servers_changed.notify_waiters();
        }
    }

    /// Keeps the server list in step with the LAN pool.
    async fn track_servers(self: Arc<Self>, pool: Pool, stop: CancellationToken) {
        let datacenter = pool.identity().tag("dc").to_string();
        let mut events = pool.events();
        loop {
            self.set_servers(servers_in(&pool.members().await, &datacenter));
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = events.recv() => {}
                _ = tokio::time::sleep(SERVER_REFRESH) => {}
            }
        }
    }

    /// Follows one server's store at a time, moving on when it fails or goes silent.
    async fn follow(self: Arc<Self>, stop: CancellationToken) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let Some(server) = self.head() else {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = self.servers_changed.notified() => {}
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
                continue;
            };
            match self.follow_server(server, &stop).await {
                Ok(()) => return,
                Err(error) => {
                    tracing::warn!(%server, %error, "lost the state feed from a server");
                    self.failed(server);
                    self.leadership.send_modify(|leadership| {
                        leadership.leader_address.clear();
                    });
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(5));
        }
    }

    /// Follows `server` until it fails (an error) or the agent stops (`Ok`).
    async fn follow_server(
        &self,
        server: SocketAddr,
        stop: &CancellationToken,
    ) -> Result<(), String> {
        let channel = self
            .connections
            .channel(server)
            .await
            .map_err(|error| error.to_string())?;
        let mut grpc =
            tonic::client::Grpc::new(channel).max_decoding_message_size(MAX_FEED_MESSAGE);
        grpc.ready().await.map_err(|error| error.to_string())?;
        let request = tonic::Request::new(Frame::encode(&FollowRequest {
            node: self.node.clone(),
        }));
        let mut feed = grpc
            .server_streaming(
                request,
                tonic::codegen::http::uri::PathAndQuery::from_static(wire::FOLLOW_PATH),
                SmallCodec::<Frame, Frame>::default(),
            )
            .await
            .map_err(|status| status.message().to_string())?
            .into_inner();
        loop {
            let message = tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                message = tokio::time::timeout(FEED_SILENCE, feed.message()) => message,
            };
            let frame = match message {
                Err(_) => return Err(format!("silent for {FEED_SILENCE:?}")),
                Ok(Err(status)) => return Err(status.message().to_string()),
                Ok(Ok(None)) => return Err("the server ended the feed".into()),
                Ok(Ok(Some(frame))) => frame,
            };
            let feed_message: Feed = frame.decode().map_err(|error| error.to_string())?;
            self.apply(feed_message)?;
            *self
                .last_heard
                .lock()
                .unwrap_or_else(PoisonError::into_inner) = Some(Instant::now());
        }
    }

    fn apply(&self, feed: Feed) -> Result<(), String> {
        match feed {
            Feed::Tables(bytes) => {
                self.store
                    .restore(&bytes)
                    .map_err(|error| error.to_string())?;
                self.synced.store(true, Ordering::Release);
            }
            Feed::Applied(entries) => {
                self.store.apply_batch(
                    entries
                        .iter()
                        .map(|(index, command)| (*index, command.as_ref())),
                );
            }
            Feed::Leader {
                leader_address,
                term,
                peers,
            } => {
                self.leadership.send_replace(Leadership {
                    is_leader: false,
                    leader: None,
                    leader_address,
                    term,
                });
                *self.peers.lock().unwrap_or_else(PoisonError::into_inner) = peers;
                return Ok(());
            }
            Feed::Heartbeat => return Ok(()),
        }
        self.applied
            .send_replace(self.store.snapshot().last_index());
        Ok(())
    }
}

/// The server RPC addresses of the alive servers of `datacenter` among `members`.
pub fn servers_in(members: &[Member], datacenter: &str) -> Vec<SocketAddr> {
    members
        .iter()
        .filter(|member| member.status == MemberStatus::Alive)
        .filter(|member| member.identity.tag("dc") == datacenter)
        .filter_map(server_address)
        .collect()
}

/// A server member's RPC address (its gossip address with its `port` tag); `None` for a
/// member that is not a server.
pub fn server_address(member: &Member) -> Option<SocketAddr> {
    if member.identity.tag("role") != "consul" {
        return None;
    }
    let port = member.identity.tag("port").parse().ok()?;
    Some(SocketAddr::new(member.identity.addr.ip(), port))
}
