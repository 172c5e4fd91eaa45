//! The gRPC edge: Envoy's `AggregatedDiscoveryService`, delta and state-of-the-world.
//!
//! Each stream is one task that owns its protocol state and `select!`s on the next request,
//! the proxy's next snapshot, and shutdown; nothing about a stream is shared or locked. The
//! first request's `node.id` names the proxy (its service id); its token passes the one
//! authorization seam before anything is read. A malformed request ends only its own stream
//! with a gRPC error; a rejected resource is logged once with Envoy's message, counted, and
//! shown in the proxy's status, and is not resent until its content changes.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::delta::{BadRequest, DeltaStream, Received, Rejection};
use super::resources::{self, Resources};
use super::sotw::SotwStream;
use crate::acl::{Access, Authorizer};
use crate::proxycfg::{NotReady, Snapshot, SnapshotReceiver, Watcher};

/// Responses a stream may have queued before its task waits for Envoy to read them.
const STREAM_BUFFER: usize = 8;

/// Per-proxy xDS health, for `/v1/agent/metrics` and logs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProxyStatus {
    pub streams: u64,
    pub rejected: u64,
    pub last_rejection: Option<String>,
}

/// Counters shared by every stream.
#[derive(Default)]
pub struct XdsStatus {
    pub streams_opened: AtomicU64,
    pub responses_sent: AtomicU64,
    pub rejected: AtomicU64,
    proxies: Mutex<HashMap<String, ProxyStatus>>,
}

impl XdsStatus {
    pub fn proxies(&self) -> HashMap<String, ProxyStatus> {
        self.proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    fn update(&self, proxy: &str, f: impl FnOnce(&mut ProxyStatus)) {
        let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        f(proxies.entry(proxy.to_string()).or_default());
    }

    fn reject(&self, proxy: &str, rejection: &Rejection) {
        self.rejected.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            proxy,
            type_url = %rejection.type_url,
            resources = ?rejection.names,
            code = rejection.code,
            message = %rejection.message,
            "Envoy rejected configuration; not resending it until it changes"
        );
        self.update(proxy, |status| {
            status.rejected += 1;
            status.last_rejection = Some(rejection.message.clone());
        });
    }
}

pub struct XdsServer {
    pub watcher: Arc<Watcher>,
    pub authorizer: Authorizer,
    pub status: Arc<XdsStatus>,
    pub shutdown: CancellationToken,
}

type ResponseStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// What a stream task hands to its response stream. Boxed because the channel allocates its
/// slots in blocks of 32 and an unboxed `Result<DeltaDiscoveryResponse, Status>` is 192
/// bytes: 6 KB per stream once 32 responses have passed through it, 256 bytes boxed.
type Outgoing<T> = Box<Result<T, Status>>;

fn into_stream<T: Send + 'static>(receiver: mpsc::Receiver<Outgoing<T>>) -> ResponseStream<T> {
    Box::pin(futures::stream::unfold(
        receiver,
        |mut receiver| async move { receiver.recv().await.map(|item| (*item, receiver)) },
    ))
}

fn token<T>(request: &Request<T>) -> Option<String> {
    request
        .metadata()
        .get("x-consul-token")
        .and_then(|value| value.to_str().ok())
        .map(str::to_string)
}

/// Closes the stream's status entry when the stream task ends, however it ends.
struct StreamGuard {
    status: Arc<XdsStatus>,
    proxy: Option<String>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        if let Some(proxy) = &self.proxy {
            self.status.update(proxy, |status| {
                status.streams = status.streams.saturating_sub(1)
            });
        }
    }
}

/// What both protocol variants need from a stream task.
struct StreamContext {
    watcher: Arc<Watcher>,
    authorizer: Authorizer,
    status: Arc<XdsStatus>,
    shutdown: CancellationToken,
    token: Option<String>,
}

impl StreamContext {
    /// Picks the proxy from the first request's node id and checks the token may act for it.
    fn attach(
        &self,
        node_id: Option<&str>,
        guard: &mut StreamGuard,
    ) -> Result<SnapshotReceiver, Status> {
        let proxy = node_id.filter(|id| !id.is_empty()).ok_or_else(|| {
            Status::invalid_argument(
                "the first request must carry node.id (the proxy's service id)",
            )
        })?;
        self.authorizer
            .authorize(self.token.as_deref(), Access::ServiceWrite(proxy))
            .map_err(|_| Status::permission_denied("Permission denied"))?;
        self.status.update(proxy, |status| status.streams += 1);
        guard.proxy = Some(proxy.to_string());
        Ok(self.watcher.subscribe(proxy))
    }
}

/// Waits for the proxy's next snapshot; forever before the stream has a proxy.
async fn next_snapshot(snapshots: &mut Option<SnapshotReceiver>) -> bool {
    match snapshots {
        Some(receiver) => receiver.changed().await.is_ok(),
        None => std::future::pending().await,
    }
}

/// What a stream last generated, and from which snapshot.
type Generated = Option<(Arc<Snapshot>, Resources)>;

/// The resources of the proxy's current snapshot (reusing what is unchanged since
/// `generated`), or None while it cannot have any.
fn current_resources(
    snapshots: &mut SnapshotReceiver,
    proxy: &str,
    generated: Generated,
) -> Generated {
    match &*snapshots.borrow_and_update() {
        Ok(snapshot) => {
            let previous = generated
                .as_ref()
                .map(|(snapshot, resources)| (&**snapshot, resources));
            let resources = resources::generate(snapshot, previous);
            Some((snapshot.clone(), resources))
        }
        Err(NotReady::UnknownProxy) => {
            tracing::debug!(
                proxy,
                "no connect proxy with this id is registered here yet"
            );
            None
        }
        Err(reason) => {
            tracing::debug!(proxy, ?reason, "proxy configuration not ready");
            None
        }
    }
}

/// One protocol variant's stream state: delta or state-of-the-world.
pub trait Protocol: Default + Send + 'static {
    type Request: prost::Message + Default + Send + 'static;
    type Response: Send + 'static;
    fn node_id(request: &Self::Request) -> Option<&str>;
    fn on_request(&mut self, request: &Self::Request) -> Result<Received, BadRequest>;
    fn responses(&mut self, resources: &Resources) -> Vec<Self::Response>;
}

impl Protocol for DeltaStream {
    type Request = DeltaDiscoveryRequest;
    type Response = DeltaDiscoveryResponse;
    fn node_id(request: &Self::Request) -> Option<&str> {
        request.node.as_ref().map(|node| node.id.as_str())
    }
    fn on_request(&mut self, request: &Self::Request) -> Result<Received, BadRequest> {
        DeltaStream::on_request(self, request)
    }
    fn responses(&mut self, resources: &Resources) -> Vec<Self::Response> {
        DeltaStream::responses(self, resources)
    }
}

impl Protocol for SotwStream {
    type Request = DiscoveryRequest;
    type Response = DiscoveryResponse;
    fn node_id(request: &Self::Request) -> Option<&str> {
        request.node.as_ref().map(|node| node.id.as_str())
    }
    fn on_request(&mut self, request: &Self::Request) -> Result<Received, BadRequest> {
        SotwStream::on_request(self, request)
    }
    fn responses(&mut self, resources: &Resources) -> Vec<Self::Response> {
        SotwStream::responses(self, resources)
    }
}

/// The stream task: requests, snapshots and shutdown, until Envoy goes away.
async fn run<P: Protocol>(
    context: StreamContext,
    mut inbound: Streaming<P::Request>,
    out: mpsc::Sender<Outgoing<P::Response>>,
) {
    let mut guard = StreamGuard {
        status: context.status.clone(),
        proxy: None,
    };
    let mut stream = P::default();
    let mut snapshots: Option<SnapshotReceiver> = None;
    let mut generated: Generated = None;
    loop {
        tokio::select! {
            message = inbound.message() => {
                let request = match message {
                    Ok(Some(request)) => request,
                    Ok(None) => return,
                    Err(status) => {
                        // A request that does not decode, or a broken transport; the
                        // status reaches the client if it is still there.
                        tracing::debug!(%status, "xDS stream ended");
                        let _ = out.send(Box::new(Err(status))).await;
                        return;
                    }
                };
                if snapshots.is_none() {
                    match context.attach(P::node_id(&request), &mut guard) {
                        Ok(mut receiver) => {
                            generated = current_resources(&mut receiver, guard.proxy.as_deref().unwrap_or_default(), None);
                            snapshots = Some(receiver);
                        }
                        Err(status) => {
                            let _ = out.send(Box::new(Err(status))).await;
                            return;
                        }
                    }
                }
                match stream.on_request(&request) {
                    Ok(Received::Send) => {}
                    Ok(Received::Rejected(rejection)) => {
                        context.status.reject(guard.proxy.as_deref().unwrap_or_default(), &rejection);
                        continue;
                    }
                    Err(BadRequest::EmptyTypeUrl) => {
                        let _ = out.send(Box::new(Err(Status::invalid_argument("type URL is required for ADS")))).await;
                        return;
                    }
                    Err(BadRequest::UnknownType(type_url)) => {
                        tracing::debug!(%type_url, "ignoring a request for a type concord does not serve");
                        continue;
                    }
                }
            }
            alive = next_snapshot(&mut snapshots) => {
                if !alive {
                    return;
                }
                if let Some(receiver) = snapshots.as_mut() {
                    generated = current_resources(receiver, guard.proxy.as_deref().unwrap_or_default(), generated.take());
                }
            }
            _ = context.shutdown.cancelled() => return,
        }
        if let Some((_, resources)) = &generated {
            for response in stream.responses(resources) {
                context
                    .status
                    .responses_sent
                    .fetch_add(1, Ordering::Relaxed);
                if out.send(Box::new(Ok(response))).await.is_err() {
                    return;
                }
            }
        }
    }
}

impl XdsServer {
    fn context<T>(&self, request: &Request<T>) -> StreamContext {
        self.status.streams_opened.fetch_add(1, Ordering::Relaxed);
        StreamContext {
            watcher: self.watcher.clone(),
            authorizer: self.authorizer.clone(),
            status: self.status.clone(),
            shutdown: self.shutdown.clone(),
            token: token(request),
        }
    }
}

#[tonic::async_trait]
impl AggregatedDiscoveryService for XdsServer {
    type StreamAggregatedResourcesStream = ResponseStream<DiscoveryResponse>;
    type DeltaAggregatedResourcesStream = ResponseStream<DeltaDiscoveryResponse>;

    async fn stream_aggregated_resources(
        &self,
        request: Request<Streaming<DiscoveryRequest>>,
    ) -> Result<Response<Self::StreamAggregatedResourcesStream>, Status> {
        let context = self.context(&request);
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run::<SotwStream>(context, request.into_inner(), sender));
        Ok(Response::new(into_stream(receiver)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let context = self.context(&request);
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        tokio::spawn(run::<DeltaStream>(context, request.into_inner(), sender));
        Ok(Response::new(into_stream(receiver)))
    }
}
