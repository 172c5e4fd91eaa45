//! The server RPC service's messages (`proto/concord/rpc/v1/rpc.proto`): a protobuf `Frame`
//! whose body is the bincode of the Rust types below, the encoding the Raft log already uses
//! for `Command`.

use bytes::Bytes;
use openraft::error::{InstallSnapshotError, RaftError};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use super::ca_manager::{CaError, Leaf, SignError};
use super::writes::WriteOutcome;
use super::{Consistency, LeaderContact, RpcError};
use crate::raft::{NodeId, TypeConfig};
use crate::types::connect::CaConfig;
use crate::types::operator::AutopilotReport;
use crate::types::session::Session;
use crate::types::shape::{with_shape, Shape};
use crate::types::{Command, CommandResult};

pub const SERVICE: &str = "concord.rpc.v1.Cluster";
pub const CALL_PATH: &str = "/concord.rpc.v1.Cluster/Call";
pub const FOLLOW_PATH: &str = "/concord.rpc.v1.Cluster/Follow";
pub const RAFT_PATH: &str = "/concord.rpc.v1.Cluster/Raft";
/// A client agent asking for its TLS certificate (auto_encrypt); the one call a server that
/// verifies incoming connections takes without a client certificate.
pub const AUTO_ENCRYPT_PATH: &str = "/concord.rpc.v1.Cluster/AutoEncrypt";

/// The body encoding this build writes. Format 1 (before nodes and services carried a
/// locality) is still read, so a server of the previous version can feed this one.
const FORMAT: u32 = 2;
/// Frames of shape V1, before localities, which this build still reads.
const SHAPE_V1: u32 = 1;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Frame {
    #[prost(uint32, tag = "1")]
    pub format: u32,
    #[prost(bytes = "bytes", tag = "2")]
    pub body: Bytes,
}

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("unknown frame format {0}")]
    Format(u32),
    #[error("undecodable frame: {0}")]
    Body(String),
}

impl Frame {
    pub fn encode<T: Serialize>(value: &T) -> Frame {
        // Encoding plain owned data into a Vec cannot fail.
        let body = bincode::serialize(value).unwrap_or_default();
        Frame {
            format: FORMAT,
            body: Bytes::from(body),
        }
    }

    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        use bincode::Options;
        let shape = match self.format {
            FORMAT => Shape::V2,
            SHAPE_V1 => Shape::V1,
            other => return Err(FrameError::Format(other)),
        };
        // The limit bounds what a garbled length prefix can make bincode allocate.
        with_shape(shape, || {
            bincode::DefaultOptions::new()
                .with_fixint_encoding()
                .allow_trailing_bytes()
                .with_limit(self.body.len() as u64)
                .deserialize(&self.body)
        })
        .map_err(|error| FrameError::Body(error.to_string()))
    }
}

/// A client agent's request to a server.
#[derive(Debug, Serialize, Deserialize)]
pub enum Request {
    Write(Command),
    /// Writes a follower passes on together; each gets its own outcome.
    WriteBatch(Vec<Command>),
    /// Prepare a read at this consistency; the reply carries the index the reader must have
    /// applied before it reads.
    ReadBarrier(Consistency),
    RenewSession(String),
    SignLeaf {
        csr_pem: String,
        service: String,
    },
    SetCaConfig(CaConfig),
    /// The Raft voters' server addresses this server knows (Consul's `Status.Peers`);
    /// answered by the server asked, never forwarded.
    Peers,
    /// The Raft configuration: from the leader, or from the server asked when `stale`.
    RaftConfiguration {
        stale: bool,
    },
    /// Removes a server from the Raft configuration (`operator raft remove-peer`).
    RemovePeer(PeerRef),
    /// The leader's autopilot report.
    AutopilotHealth,
    /// Hands leadership to this server, or to the most up-to-date other voter.
    TransferLeader(Option<PeerRef>),
    /// From the leader to every other voter: it hands leadership to `target`, which runs
    /// once the vote lease lapses while the others hold back. Obeyed only if `from` leads at
    /// `term` as the server asked sees it.
    Handover {
        from: NodeId,
        term: u64,
        target: NodeId,
    },
    /// Would the server asked vote for `candidate`, whose log reaches this index? (`election`)
    PreVote {
        candidate: NodeId,
        last_log_index: u64,
    },
    /// An HTTP API request for another datacenter (`?dc=`), carried to a server there and
    /// answered by its own HTTP API (`federation`).
    Http(HttpForward),
    /// A DNS query naming another datacenter, answered by a server there.
    Dns(DnsForward),
    /// A DNS lookup of a prepared query that has no instances here, to be answered by the
    /// datacenters it fails over to (appended last, so older servers still decode the rest).
    QueryDns(QueryDnsForward),
    /// Sign a client agent's CSR for its agent identity (auto_encrypt), on the leader.
    SignAgent {
        csr_pem: String,
        node_id: String,
        dns_san: Vec<String>,
        ip_san: Vec<std::net::IpAddr>,
    },
}

/// A client agent's auto_encrypt request: its CSR, and the token that must grant
/// `node:write` on its node.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AutoEncryptRequest {
    pub node: String,
    pub node_id: String,
    pub csr_pem: String,
    pub token: String,
    /// `auto_encrypt.dns_san` and `ip_san`: extra names for the certificate.
    pub dns_san: Vec<String>,
    pub ip_san: Vec<String>,
}

/// What a client agent gets back: its certificate (chain), and the CA certificates it
/// should trust: the servers' own (`ca_file`) and the Connect CA's roots.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AutoEncryptReply {
    pub cert_pem: String,
    pub ca_pems: Vec<String>,
    /// Seconds since the Unix epoch when the certificate expires.
    pub valid_before: u64,
}

/// A prepared query's DNS lookup on its way elsewhere: with `datacenter` unset, to a server
/// of this datacenter, which tries each failover datacenter in turn; with it set, to a server
/// of that datacenter, which answers with the definition sent (as Consul's `ExecuteRemote`
/// sends it, so the remote datacenter need not have the query).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct QueryDnsForward {
    pub datacenter: Option<String>,
    pub query: Box<crate::types::query::PreparedQuery>,
    /// The lookup as the client sent it.
    pub message: Vec<u8>,
    /// Whether the client asked over TCP (which sizes the answer).
    pub tcp: bool,
}

/// A DNS query on its way to the datacenter it names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DnsForward {
    pub datacenter: String,
    /// The query as the client sent it.
    pub message: Vec<u8>,
    /// Whether the client asked over TCP (which sizes the answer).
    pub tcp: bool,
}

/// An HTTP request on its way to the datacenter it names.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpForward {
    pub datacenter: String,
    pub method: String,
    /// As the client sent it, `?dc=` included.
    pub path_and_query: String,
    /// The headers the answer depends on (token, content type).
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// How long each hop waits for the answer: a blocking query may take its whole wait.
    pub timeout_ms: u64,
}

impl HttpForward {
    /// A plain GET of `path_and_query` in `datacenter`: no token, no body.
    pub fn get(datacenter: &str, path_and_query: &str, timeout_ms: u64) -> HttpForward {
        HttpForward {
            datacenter: datacenter.to_string(),
            method: "GET".into(),
            path_and_query: path_and_query.to_string(),
            headers: Vec::new(),
            body: Vec::new(),
            timeout_ms,
        }
    }
}

/// What the datacenter's server answered.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HttpAnswer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// A server named by its Raft id or its server RPC address.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum PeerRef {
    Id(NodeId),
    Address(String),
}

/// One server of the Raft configuration.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftServer {
    pub id: NodeId,
    pub address: String,
    pub voter: bool,
    pub leader: bool,
    /// The last log index the server is known to hold (the leader's own, a follower's as far
    /// as the leader has matched it; 0 when unknown).
    pub last_index: u64,
}

/// The Raft configuration as one server sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftConfiguration {
    pub servers: Vec<RaftServer>,
    /// The log index of the configuration.
    pub index: u64,
}

impl RaftConfiguration {
    /// The server `peer` names, if it is in the configuration.
    pub fn find(&self, peer: &PeerRef) -> Option<&RaftServer> {
        self.servers.iter().find(|server| match peer {
            PeerRef::Id(id) => server.id == *id,
            PeerRef::Address(address) => server.address == *address,
        })
    }
}

/// The answer to the `Request` of the same name.
#[derive(Debug, Serialize, Deserialize)]
pub enum Reply {
    Write(Result<(u64, CommandResult), RpcError>),
    /// `Err` when the batch was refused whole (this server does not lead).
    WriteBatch(Result<Vec<WriteOutcome>, RpcError>),
    ReadBarrier(Result<(LeaderContact, u64), RpcError>),
    RenewSession(Result<Option<Session>, RpcError>),
    SignLeaf(Result<Leaf, SignError>),
    SetCaConfig(Result<bool, CaError>),
    Peers(Vec<String>),
    RaftConfiguration(Result<RaftConfiguration, RpcError>),
    RemovePeer(Result<(), RpcError>),
    AutopilotHealth(Result<AutopilotReport, RpcError>),
    /// The new leader's server address.
    TransferLeader(Result<String, RpcError>),
    Handover(Result<(), RpcError>),
    PreVote(bool),
    Http(Result<HttpAnswer, RpcError>),
    /// The encoded DNS response.
    Dns(Result<Vec<u8>, RpcError>),
}

impl Request {
    /// Whether carrying the request out twice does no harm, so it may be sent again after
    /// a failure that left unknown whether it arrived.
    pub fn idempotent(&self) -> bool {
        matches!(
            self,
            Request::ReadBarrier(_)
                | Request::RenewSession(_)
                | Request::Peers
                | Request::RaftConfiguration { .. }
                | Request::AutopilotHealth
        ) || matches!(self, Request::Http(forward) if forward.method == "GET")
            || matches!(self, Request::Dns(_) | Request::QueryDns(_))
    }

    /// Whether, on the leader, the request goes through Raft (a write, or a read that needs
    /// its leadership confirmed), and so waits while leadership is being handed over.
    pub fn uses_raft(&self) -> bool {
        matches!(
            self,
            Request::Write(_) | Request::WriteBatch(_) | Request::ReadBarrier(_)
        )
    }

    /// Whether any server answers this itself rather than the leader.
    pub fn local(&self) -> bool {
        matches!(
            self,
            Request::Peers
                | Request::RaftConfiguration { stale: true }
                | Request::Handover { .. }
                | Request::PreVote { .. }
                | Request::Http(_)
                | Request::Dns(_)
                | Request::QueryDns(_)
        )
    }

    /// The answer that reports `error` for this request.
    pub fn failed(&self, error: RpcError) -> Reply {
        match self {
            Request::Write(_) => Reply::Write(Err(error)),
            Request::WriteBatch(_) => Reply::WriteBatch(Err(error)),
            Request::ReadBarrier(_) => Reply::ReadBarrier(Err(error)),
            Request::RenewSession(_) => Reply::RenewSession(Err(error)),
            Request::SignLeaf { .. } | Request::SignAgent { .. } => {
                Reply::SignLeaf(Err(SignError::Rpc(error)))
            }
            Request::SetCaConfig(_) => Reply::SetCaConfig(Err(CaError::Rpc(error))),
            // Answered locally, so it never fails for want of a leader.
            Request::Peers => Reply::Peers(Vec::new()),
            Request::RaftConfiguration { .. } => Reply::RaftConfiguration(Err(error)),
            Request::RemovePeer(_) => Reply::RemovePeer(Err(error)),
            Request::AutopilotHealth => Reply::AutopilotHealth(Err(error)),
            Request::TransferLeader(_) => Reply::TransferLeader(Err(error)),
            Request::Handover { .. } => Reply::Handover(Err(error)),
            Request::PreVote { .. } => Reply::PreVote(false),
            Request::Http(_) => Reply::Http(Err(error)),
            Request::Dns(_) | Request::QueryDns(_) => Reply::Dns(Err(error)),
        }
    }
}

impl Reply {
    /// Whether the server refused because it is not the leader or knows none: nothing was
    /// carried out, and the request may go elsewhere or wait for a leader.
    pub fn refused(&self) -> bool {
        fn not_leader(error: &RpcError) -> bool {
            matches!(error, RpcError::NoLeader | RpcError::ForwardToLeader { .. })
        }
        fn is<T>(result: &Result<T, RpcError>) -> bool {
            result.as_ref().err().is_some_and(not_leader)
        }
        match self {
            Reply::Write(result) => is(result),
            Reply::WriteBatch(result) => is(result),
            Reply::ReadBarrier(result) => is(result),
            Reply::RenewSession(result) => is(result),
            Reply::SignLeaf(result) => matches!(result, Err(SignError::Rpc(e)) if not_leader(e)),
            Reply::SetCaConfig(result) => matches!(result, Err(CaError::Rpc(e)) if not_leader(e)),
            Reply::Peers(_) => false,
            Reply::RaftConfiguration(result) => is(result),
            Reply::RemovePeer(result) => is(result),
            Reply::AutopilotHealth(result) => is(result),
            Reply::TransferLeader(result) => is(result),
            // Answered by the server asked.
            Reply::Handover(_) | Reply::PreVote(_) | Reply::Http(_) | Reply::Dns(_) => false,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct FollowRequest {
    /// The follower's node name, for the server's logs.
    pub node: String,
}

/// What a server streams to a follower.
#[derive(Debug, Serialize, Deserialize)]
pub enum Feed {
    /// The state store's tables (`Store::encode`); the follower replaces its own with them.
    Tables(Vec<u8>),
    /// Log entries applied after the tables, in order; `None` is a Raft blank or membership
    /// entry, which only advances the index.
    Applied(Vec<(u64, Option<Command>)>),
    /// Who leads, and the voters' server addresses.
    Leader {
        leader_address: String,
        term: u64,
        peers: Vec<String>,
    },
    /// Nothing changed; the stream is alive.
    Heartbeat,
}

/// A Raft RPC from one server to another, as openraft hands it to the network.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftRequest {
    Append(AppendEntriesRequest<TypeConfig>),
    Vote(VoteRequest<NodeId>),
    /// One chunk of a snapshot.
    Snapshot(InstallSnapshotRequest<TypeConfig>),
}

/// The answer to the `RaftRequest` of the same name, as openraft returns it.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftReply {
    Append(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    Snapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::registration;
    use crate::types::Locality;

    #[test]
    fn frames_from_the_previous_version_decode_and_unknown_formats_are_refused() {
        let command = registration(None);
        let old = Frame {
            format: SHAPE_V1,
            body: Bytes::from(
                with_shape(Shape::V1, || bincode::serialize(&command)).expect("encode"),
            ),
        };
        assert_eq!(old.decode::<Command>().expect("format 1"), command);
        let located = registration(Some(Locality {
            region: "r".into(),
            zone: "z".into(),
        }));
        let frame = Frame::encode(&located);
        assert_eq!(frame.format, FORMAT);
        assert_eq!(frame.decode::<Command>().expect("format 2"), located);
        let future = Frame {
            format: FORMAT + 1,
            ..frame
        };
        assert!(matches!(
            future.decode::<Command>(),
            Err(FrameError::Format(_))
        ));
    }
}
