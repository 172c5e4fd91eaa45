//! The Raft network between servers: each Raft RPC is one `Raft` call on the target server's
//! RPC port (`rpc::service`), its body the bincode of openraft's own request and answer
//! (`rpc::wire::RaftRequest`/`RaftReply`). Snapshots travel in openraft's chunks, one call
//! each. Connections are shared with the server's other calls to its peers.

// openraft's network traits fix `RPCError` (over 256 bytes) as the error type, so the
// helpers that build it return it too.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::connections::{CallError, Connections};
use super::wire::{self, Frame, RaftReply, RaftRequest};
use crate::raft::{NodeId, TypeConfig};

/// When each server last answered this one's Raft traffic: autopilot's `LastContact`, as
/// the leader sees its followers (openraft 0.9 keeps no such time).
#[derive(Default)]
pub struct PeerContacts {
    answered: Mutex<HashMap<NodeId, Instant>>,
}

impl PeerContacts {
    fn note(&self, peer: NodeId) {
        let mut answered = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        answered.insert(peer, Instant::now());
    }

    /// How long ago `peer` last answered; `None` if it never did.
    pub fn since(&self, peer: NodeId) -> Option<Duration> {
        let answered = self.answered.lock().unwrap_or_else(PoisonError::into_inner);
        answered.get(&peer).map(Instant::elapsed)
    }
}

#[derive(Clone)]
pub struct Network {
    connections: Arc<Connections>,
    contacts: Arc<PeerContacts>,
}

impl Network {
    pub fn new(connections: Arc<Connections>, contacts: Arc<PeerContacts>) -> Network {
        Network {
            connections,
            contacts,
        }
    }
}

pub struct Connection {
    target: NodeId,
    /// The target's server RPC address; `None` when its node record holds no address.
    address: Option<SocketAddr>,
    connections: Arc<Connections>,
    contacts: Arc<PeerContacts>,
}

type Failure<E> = RPCError<NodeId, BasicNode, RaftError<NodeId, E>>;

impl Connection {
    async fn send<E: std::error::Error>(
        &self,
        request: RaftRequest,
        option: &RPCOption,
    ) -> Result<RaftReply, Failure<E>> {
        let Some(address) = self.address else {
            let reason = std::io::Error::other(format!("node {} has no address", self.target));
            return Err(RPCError::Unreachable(Unreachable::new(&reason)));
        };
        let answer = self
            .connections
            .unary(
                address,
                wire::RAFT_PATH,
                Frame::encode(&request),
                option.hard_ttl(),
                false,
            )
            .await;
        let frame = match answer {
            Ok(frame) => frame,
            Err(CallError::Connect(reason)) => {
                let reason = std::io::Error::other(format!("{address}: {reason}"));
                return Err(RPCError::Unreachable(Unreachable::new(&reason)));
            }
            Err(CallError::Status(status)) => {
                let reason = std::io::Error::other(format!("{address}: {}", status.message()));
                return Err(RPCError::Network(NetworkError::new(&reason)));
            }
        };
        let reply = frame.decode::<RaftReply>().map_err(|error| {
            let reason = std::io::Error::other(format!("{address}: {error}"));
            RPCError::Network(NetworkError::new(&reason))
        })?;
        self.contacts.note(self.target);
        Ok(reply)
    }

    fn remote<T, E: std::error::Error>(
        &self,
        answer: Result<T, RaftError<NodeId, E>>,
    ) -> Result<T, Failure<E>> {
        answer.map_err(|error| RPCError::RemoteError(RemoteError::new(self.target, error)))
    }
}

fn mismatched<E: std::error::Error>() -> Failure<E> {
    let reason = std::io::Error::other("the server answered a different Raft request");
    RPCError::Network(NetworkError::new(&reason))
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> Connection {
        Connection {
            target,
            address: node.addr.parse().ok(),
            connections: self.connections.clone(),
            contacts: self.contacts.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, Failure<openraft::error::Infallible>> {
        match self.send(RaftRequest::Append(rpc), &option).await? {
            RaftReply::Append(answer) => self.remote(answer),
            _ => Err(mismatched()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<InstallSnapshotResponse<NodeId>, Failure<InstallSnapshotError>> {
        match self.send(RaftRequest::Snapshot(rpc), &option).await? {
            RaftReply::Snapshot(answer) => self.remote(answer),
            _ => Err(mismatched()),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, Failure<openraft::error::Infallible>> {
        match self.send(RaftRequest::Vote(rpc), &option).await? {
            RaftReply::Vote(answer) => self.remote(answer),
            _ => Err(mismatched()),
        }
    }
}
