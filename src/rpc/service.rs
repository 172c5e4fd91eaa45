//! The server RPC service on the server port: client agents send their writes, read barriers
//! and leader-only requests here (`Call`), and follow the state store (`Follow`): the tables
//! first, then every applied batch of log entries in order, so a client's replica passes
//! through exactly the states a Raft follower's would.
//!
//! Like the ADS service, it is routed by hand in place of generated code: two methods, one
//! message type (`wire::Frame`), a codec whose buffers start small.

use openraft::raft::AppendEntriesResponse;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::Stream;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::{broadcast, watch};
use tokio_util::sync::CancellationToken;
use tonic::codegen::{http, Body, BoxFuture, Service, StdError};
use tonic::server::{Grpc, NamedService, ServerStreamingService, UnaryService};
use tonic::{Request, Response, Status};

use super::codec::SmallCodec;
use super::connections::FORWARDED;
use crate::acl::{Access, Authorizer};
use crate::tls::listen::{self, Peer};
use crate::tls::Tls;

use super::server::ServerRpc;
use super::wire::{
    self, AutoEncryptReply, AutoEncryptRequest, Feed, FollowRequest, Frame, RaftReply, RaftRequest,
};
use super::Leadership;
use crate::state::{Change, Store, Tables};

/// How often a follower hears from its server when nothing changes; it gives up on a server
/// it has not heard from in `FEED_SILENCE`.
pub const FEED_HEARTBEAT: Duration = Duration::from_secs(2);
pub const FEED_SILENCE: Duration = Duration::from_secs(6);

/// The largest Raft message a server accepts: a batch of log entries (each up to about 1 MiB,
/// see `writes`) or one snapshot chunk.
const MAX_RAFT_MESSAGE: usize = 1 << 30;

#[derive(Clone)]
pub struct RpcService {
    server: Arc<ServerRpc>,
    tls: Arc<Tls>,
    /// Checks auto_encrypt's tokens; set once the agent has built it (until then the
    /// request is refused as not ready).
    authorizer: Arc<OnceLock<Authorizer>>,
    shutdown: CancellationToken,
}

impl RpcService {
    /// `authorizer` is filled in by the agent once it has built it.
    pub fn new(
        server: Arc<ServerRpc>,
        tls: Arc<Tls>,
        authorizer: Arc<OnceLock<Authorizer>>,
        shutdown: CancellationToken,
    ) -> RpcService {
        RpcService {
            server,
            tls,
            authorizer,
            shutdown,
        }
    }
}

/// A client agent's auto_encrypt request: its token must grant `node:write` on its node;
/// the leader signs its CSR for its agent identity.
struct AutoEncryptCall(RpcService);

impl UnaryService<Frame> for AutoEncryptCall {
    type Response = Frame;
    type Future = BoxFuture<Response<Frame>, Status>;

    fn call(&mut self, request: Request<Frame>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            if !service.tls.auto_encrypt_server() {
                return Err(Status::permission_denied(
                    "auto_encrypt is not allowed on this server (auto_encrypt.allow_tls)",
                ));
            }
            let asked: AutoEncryptRequest = request
                .into_inner()
                .decode()
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
            let authorizer = service
                .authorizer
                .get()
                .ok_or_else(|| Status::unavailable("the server is starting"))?;
            authorizer
                .authorize(Some(&asked.token), Access::NodeWrite(&asked.node))
                .map_err(|error| Status::permission_denied(error.to_string()))?;
            let ip_san = asked
                .ip_san
                .iter()
                .map(|ip| {
                    ip.parse().map_err(|_| {
                        Status::invalid_argument(format!(
                            "auto_encrypt.ip_san: {ip:?} is not an IP address"
                        ))
                    })
                })
                .collect::<Result<Vec<_>, _>>()?;
            let sign = wire::Request::SignAgent {
                csr_pem: asked.csr_pem,
                node_id: asked.node_id,
                dns_san: asked.dns_san,
                ip_san,
            };
            let leaf = match service.server.handle(sign, false).await {
                wire::Reply::SignLeaf(Ok(leaf)) => leaf,
                wire::Reply::SignLeaf(Err(error)) => {
                    return Err(Status::failed_precondition(error.to_string()))
                }
                _ => return Err(Status::internal("mismatched reply")),
            };
            let mut ca_pems = service.tls.rpc_ca_pems();
            if let Some(ca) = service.server.store().snapshot().ca() {
                ca_pems.extend(ca.roots.iter().map(|root| root.cert_pem.clone()));
            }
            let valid_before = leaf
                .valid_before
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |age| age.as_secs());
            tracing::info!(node = %asked.node, "signed a client agent's certificate (auto_encrypt)");
            Ok(Response::new(Frame::encode(&AutoEncryptReply {
                cert_pem: leaf.cert_pem,
                ca_pems,
                valid_before,
            })))
        })
    }
}

/// The connection a request came over (see `tls::listen`).
fn peer<T>(request: &Request<T>) -> Option<Peer> {
    request
        .extensions()
        .get::<Option<Peer>>()
        .cloned()
        .flatten()
}

impl NamedService for RpcService {
    const NAME: &'static str = wire::SERVICE;
}

struct Call(Arc<ServerRpc>);

impl UnaryService<Frame> for Call {
    type Response = Frame;
    type Future = BoxFuture<Response<Frame>, Status>;

    fn call(&mut self, request: Request<Frame>) -> Self::Future {
        let server = self.0.clone();
        Box::pin(async move {
            metrics::counter!(crate::telemetry::RPC_REQUEST).increment(1);
            let forwarded = request.metadata().contains_key(FORWARDED);
            let request: wire::Request = request
                .into_inner()
                .decode()
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
            Ok(Response::new(Frame::encode(
                &server.handle(request, forwarded).await,
            )))
        })
    }
}

/// A Raft RPC from another server, handed to this server's Raft node. With
/// `verify_server_hostname` only a peer whose certificate names `server.<dc>.<domain>` may
/// send one: a client agent's certificate from the same CA does not make it a server.
struct RaftCall(Arc<ServerRpc>, Arc<Tls>);

impl UnaryService<Frame> for RaftCall {
    type Response = Frame;
    type Future = BoxFuture<Response<Frame>, Status>;

    fn call(&mut self, request: Request<Frame>) -> Self::Future {
        let server = self.0.clone();
        let tls = self.1.clone();
        Box::pin(async move {
            if tls.verify_server_hostname() {
                let peer = peer(&request);
                if !peer
                    .as_ref()
                    .is_some_and(|peer| peer.certified_as(tls.server_name()))
                {
                    let from = peer
                        .map(|peer| peer.address.to_string())
                        .unwrap_or_default();
                    tracing::warn!(%from, "refused Raft traffic from a peer without a server certificate");
                    return Err(Status::permission_denied(format!(
                        "Raft traffic needs a TLS certificate for {}; {from} has none",
                        tls.server_name()
                    )));
                }
            }
            let request: RaftRequest = request
                .into_inner()
                .decode()
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
            let from = match &request {
                RaftRequest::Append(append) => append.vote.leader_id().voted_for(),
                RaftRequest::Vote(vote) => vote.vote.leader_id().voted_for(),
                RaftRequest::Snapshot(chunk) => chunk.vote.leader_id().voted_for(),
            };
            if let Some(stranger) = from.filter(|from| !server.knows_raft_member(*from)) {
                return Err(Status::permission_denied(format!(
                    "Raft node {stranger} is not in this server's Raft configuration"
                )));
            }
            let raft = server.raft();
            let reply = match request {
                RaftRequest::Append(append) => {
                    let answer = raft.append_entries(append).await;
                    // Refused for a higher vote here: not from this server's leader.
                    let from_leader = answer.as_ref().is_ok_and(|answer| {
                        !matches!(answer, AppendEntriesResponse::HigherVote(_))
                    });
                    if from_leader {
                        server.note_leader_contact();
                    }
                    RaftReply::Append(answer)
                }
                RaftRequest::Vote(vote) => RaftReply::Vote(raft.vote(vote).await),
                RaftRequest::Snapshot(chunk) => {
                    let answer = raft.install_snapshot(chunk).await;
                    if answer.is_ok() {
                        server.note_leader_contact();
                    }
                    RaftReply::Snapshot(answer)
                }
            };
            Ok(Response::new(Frame::encode(&reply)))
        })
    }
}

type FeedStream = Pin<Box<dyn Stream<Item = Result<Frame, Status>> + Send>>;

struct Follow(RpcService);

impl ServerStreamingService<Frame> for Follow {
    type Response = Frame;
    type ResponseStream = FeedStream;
    type Future = BoxFuture<Response<FeedStream>, Status>;

    fn call(&mut self, request: Request<Frame>) -> Self::Future {
        let service = self.0.clone();
        Box::pin(async move {
            let peer = peer(&request).map(|peer| peer.address);
            let follower: FollowRequest = request
                .into_inner()
                .decode()
                .map_err(|error| Status::invalid_argument(error.to_string()))?;
            tracing::debug!(node = %follower.node, ?peer, "a client agent follows the state store");
            let store = service.server.store().clone();
            let (tables, changes) = store.follow();
            let mut heartbeat = tokio::time::interval(FEED_HEARTBEAT);
            heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let feeder = Feeder {
                store,
                tables: Some(tables),
                changes,
                leadership: service.server.leadership(),
                leader_sent: false,
                server: service.server.clone(),
                heartbeat,
                shutdown: service.shutdown.clone(),
            };
            let stream = futures::stream::unfold(feeder, |mut feeder| async move {
                let feed = feeder.next().await?;
                Some((Ok(Frame::encode(&feed)), feeder))
            });
            Ok(Response::new(Box::pin(stream) as FeedStream))
        })
    }
}

/// One follower's position in the store's changes.
struct Feeder {
    store: Arc<Store>,
    /// Tables still to be sent (first, and after a restore or a lag).
    tables: Option<std::sync::Arc<Tables>>,
    changes: broadcast::Receiver<Change>,
    leadership: watch::Receiver<Leadership>,
    leader_sent: bool,
    server: Arc<ServerRpc>,
    heartbeat: tokio::time::Interval,
    shutdown: CancellationToken,
}

impl Feeder {
    fn leader(&mut self) -> Feed {
        self.leader_sent = true;
        let leadership = self.leadership.borrow_and_update().clone();
        Feed::Leader {
            leader_address: leadership.leader_address,
            term: leadership.term,
            peers: self.server.peer_addresses(),
        }
    }

    /// The next message; `None` ends the stream (shutdown).
    async fn next(&mut self) -> Option<Feed> {
        if !self.leader_sent {
            return Some(self.leader());
        }
        if let Some(tables) = self.tables.take() {
            return tables_feed(&tables);
        }
        tokio::select! {
            biased;
            _ = self.shutdown.cancelled() => None,
            changed = self.leadership.changed() => match changed {
                Ok(()) => Some(self.leader()),
                Err(_) => None,
            },
            change = self.changes.recv() => match change {
                Ok(Change::Applied(entries)) => Some(Feed::Applied(entries.to_vec())),
                // A restored snapshot, or a follower too far behind to catch up from the
                // buffer, starts over from the tables.
                Ok(Change::Restored) | Err(RecvError::Lagged(_)) => {
                    let (tables, changes) = self.store.follow();
                    self.changes = changes;
                    tables_feed(&tables)
                }
                Err(RecvError::Closed) => None,
            },
            _ = self.heartbeat.tick() => Some(Feed::Heartbeat),
        }
    }
}

/// The tables as a feed message; a state that cannot be encoded (a value file that cannot be
/// read) ends the feed, and the follower reconnects and asks again.
fn tables_feed(tables: &crate::state::Tables) -> Option<Feed> {
    match Store::encode(tables) {
        Ok(bytes) => Some(Feed::Tables(bytes)),
        Err(error) => {
            tracing::warn!(%error, "cannot send the tables to a follower");
            None
        }
    }
}

impl<B> Service<http::Request<B>> for RpcService
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Infallible>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let service = self.clone();
        // verify_incoming, where the handshake let a connection without a client
        // certificate through (auto_encrypt.allow_tls): only auto_encrypt's request.
        if request.uri().path() != wire::AUTO_ENCRYPT_PATH && self.tls.rpc_requires_client_cert() {
            let certified = request
                .extensions()
                .get::<Option<Peer>>()
                .and_then(Option::as_ref)
                .is_some_and(|peer| peer.certificate.is_some());
            if !certified {
                return Box::pin(async move {
                    Ok(Status::unauthenticated("a client certificate is required").into_http())
                });
            }
        }
        match request.uri().path() {
            wire::AUTO_ENCRYPT_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(SmallCodec::<Frame, Frame>::default());
                Ok(grpc.unary(AutoEncryptCall(service), request).await)
            }),
            wire::CALL_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(SmallCodec::<Frame, Frame>::default());
                Ok(grpc.unary(Call(service.server), request).await)
            }),
            wire::RAFT_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(SmallCodec::<Frame, Frame>::default())
                    .max_decoding_message_size(MAX_RAFT_MESSAGE);
                Ok(grpc
                    .unary(RaftCall(service.server, service.tls), request)
                    .await)
            }),
            wire::FOLLOW_PATH => Box::pin(async move {
                let mut grpc = Grpc::new(SmallCodec::<Frame, Frame>::default())
                    .max_encoding_message_size(usize::MAX);
                Ok(grpc.server_streaming(Follow(service), request).await)
            }),
            _ => Box::pin(async move { Ok(Status::unimplemented("").into_http()) }),
        }
    }
}

/// Serves the RPC service on `listener` until shutdown, TLS as `service.tls` says.
pub async fn serve(
    listener: tokio::net::TcpListener,
    service: RpcService,
    shutdown: CancellationToken,
) {
    let address = listener.local_addr().ok();
    let (incoming, accepting) = listen::accept(
        listener,
        listen::Kind::ServerRpc,
        service.tls.clone(),
        shutdown.clone(),
    );
    let serving = async {
        let served = tonic::transport::Server::builder()
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)))
            .add_service(service)
            .serve_with_incoming_shutdown(incoming.into_stream(), shutdown.cancelled_owned())
            .await;
        if let Err(error) = served {
            tracing::error!(?address, %error, "server RPC listener failed");
        }
    };
    tokio::join!(accepting, serving);
}
