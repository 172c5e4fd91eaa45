//! The gRPC edge: Envoy's `AggregatedDiscoveryService`, delta and state-of-the-world.
//!
//! Each stream is one task that owns its protocol state and `select!`s on the next request,
//! the proxy's next snapshot, and shutdown; nothing about a stream is shared or locked. The
//! first request's `node.id` names the proxy (its service id); its token passes the one
//! authorization seam before anything is read. A malformed request ends only its own stream
//! with a gRPC error; a rejected resource is logged once with Envoy's message, counted, and
//! shown in the proxy's status, and is not resent until its content changes.
//!
//! Every stream with a proxy is listed in `XdsStatus` with a small channel through which
//! `/v1/agent/xds` and `/v1/agent/metrics` ask the stream task itself for a report (what
//! Envoy holds, what is in flight, whether it has converged and whether its resources equal
//! a generation from nothing), so the protocol state stays owned by its task and costs nothing
//! until someone asks.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, DiscoveryRequest, DiscoveryResponse,
};
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::delta::{self, BadRequest, DeltaStream, Received, Rejection, TypeReport};
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

/// One stream's report, made by its own task on request.
#[derive(Clone, Debug)]
pub struct StreamReport {
    pub proxy: String,
    pub protocol: &'static str,
    /// Whether the stream has resources to serve (the proxy is registered and has its
    /// certificate).
    pub ready: bool,
    pub types: Vec<TypeReport>,
    /// Nothing in flight and Envoy holds exactly the current resources.
    pub converged: bool,
    /// Resources (type URL, name) whose incrementally generated form differs from
    /// generating the same snapshot from nothing; always empty unless there is a bug.
    pub differs_from_fresh: Vec<(&'static str, String)>,
    /// The `address:port` of each current load assignment's endpoints, by cluster name, so
    /// what a stream believes Envoy holds can be compared with Envoy's own `/clusters`.
    pub endpoints: std::collections::BTreeMap<String, Vec<String>>,
}

/// A stream task's one-slot mailbox for report requests: lighter than a channel per stream
/// (thousands of idle streams each carry one).
#[derive(Default)]
struct InspectSlot {
    waiting: Mutex<Option<oneshot::Sender<StreamReport>>>,
    ring: tokio::sync::Notify,
}

/// How the status registry reaches a stream task.
struct StreamHandle {
    proxy: String,
    inspect: Arc<InspectSlot>,
}

/// Counters shared by every stream.
#[derive(Default)]
pub struct XdsStatus {
    pub streams_opened: AtomicU64,
    pub responses_sent: AtomicU64,
    pub rejected: AtomicU64,
    proxies: Mutex<HashMap<String, ProxyStatus>>,
    streams: Mutex<HashMap<u64, StreamHandle>>,
    next_stream: AtomicU64,
}

impl XdsStatus {
    /// Asks every stream (of `proxy`, or all) for its report. A stream that cannot answer
    /// within `limit` (its task is blocked sending to an Envoy that does not read) is left
    /// out; the caller sees fewer streams than `proxies()` counts.
    pub async fn inspect(&self, proxy: Option<&str>, limit: Duration) -> Vec<StreamReport> {
        let handles: Vec<_> = self
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
            .filter(|handle| proxy.is_none_or(|proxy| handle.proxy == proxy))
            .map(|handle| handle.inspect.clone())
            .collect();
        // Each stream on its own clock: one stuck stream must not hide the others. A stream
        // whose last report request is still unanswered is busy, and is skipped at once.
        let asks = handles.into_iter().map(|inspect| async move {
            let (reply, answer) = oneshot::channel();
            {
                let mut waiting = inspect
                    .waiting
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                if waiting.as_ref().is_some_and(|earlier| !earlier.is_closed()) {
                    return None;
                }
                *waiting = Some(reply);
            }
            inspect.ring.notify_one();
            tokio::time::timeout(limit, answer).await.ok()?.ok()
        });
        let mut reports: Vec<StreamReport> = futures::future::join_all(asks)
            .await
            .into_iter()
            .flatten()
            .collect();
        reports.sort_by(|a, b| a.proxy.cmp(&b.proxy));
        reports
    }

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
    /// Told when a sidecar's Envoy has taken its listeners, to probe its checks now.
    pub agent: Arc<crate::agent::Agent>,
    pub authorizer: Authorizer,
    pub status: Arc<XdsStatus>,
    /// Stream tasks run under it and stop at shutdown.
    pub tasks: crate::tasks::Tasks,
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
    id: u64,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        self.status
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.id);
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
    agent: Arc<crate::agent::Agent>,
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
        inspect: Arc<InspectSlot>,
    ) -> Result<SnapshotReceiver, Status> {
        let proxy = node_id.filter(|id| !id.is_empty()).ok_or_else(|| {
            Status::invalid_argument(
                "the first request must carry node.id (the proxy's service id)",
            )
        })?;
        // As Consul: the token must be able to write the service the proxy stands for (its
        // destination), and an unknown token is a failed authentication, not a denial.
        let destination = self
            .agent
            .service(proxy)
            .map(|service| match &service.proxy {
                Some(config) if !config.destination_service_name.is_empty() => {
                    config.destination_service_name.clone()
                }
                _ => service.name.clone(),
            })
            .unwrap_or_else(|| proxy.to_string());
        self.authorizer
            .resolve_exact(self.token.as_deref())
            .and_then(|identity| identity.check(Access::ServiceWrite(&destination)))
            .map_err(|error| match error {
                crate::acl::AclError::PermissionDenied(message) => {
                    Status::permission_denied(message)
                }
                other => Status::unauthenticated(format!("unauthenticated: {other}")),
            })?;
        self.status.update(proxy, |status| status.streams += 1);
        guard.proxy = Some(proxy.to_string());
        self.status
            .streams
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                guard.id,
                StreamHandle {
                    proxy: proxy.to_string(),
                    inspect,
                },
            );
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
    /// Whether Envoy has ACKed listeners and the secrets they name on this stream (it is up
    /// and listening: a listener warms until its certificates arrive, and with SDS they can
    /// come after the listener's own ACK).
    fn holds_listeners(&self) -> bool;
    /// The protocol's name in reports.
    const NAME: &'static str;
    /// What the stream believes Envoy holds, against the current resources.
    fn report(&self, resources: &Resources) -> Vec<TypeReport>;
    /// Logs a request at trace level: the protocol exchange, for debugging convergence.
    fn trace_request(_proxy: &str, _request: &Self::Request) {}
    fn trace_response(_proxy: &str, _response: &Self::Response) {}
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
    fn holds_listeners(&self) -> bool {
        DeltaStream::holds(self, resources::LISTENER) && DeltaStream::holds(self, resources::SECRET)
    }
    const NAME: &'static str = "delta";
    fn report(&self, resources: &Resources) -> Vec<TypeReport> {
        DeltaStream::report(self, resources)
    }
    fn trace_request(proxy: &str, request: &Self::Request) {
        tracing::trace!(
            proxy,
            type_url = short_type(&request.type_url),
            nonce = %request.response_nonce,
            nack = request.error_detail.is_some(),
            subscribe = ?request.resource_names_subscribe,
            unsubscribe = ?request.resource_names_unsubscribe,
            initial = ?request.initial_resource_versions,
            "delta request"
        );
    }
    fn trace_response(proxy: &str, response: &Self::Response) {
        let names: Vec<(&str, &str)> = response
            .resources
            .iter()
            .map(|r| (r.name.as_str(), r.version.as_str()))
            .collect();
        tracing::trace!(
            proxy,
            type_url = short_type(&response.type_url),
            nonce = %response.nonce,
            resources = ?names,
            removed = ?response.removed_resources,
            "delta response"
        );
    }
}

/// The last part of a type URL (`Cluster`), for logs.
fn short_type(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
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
    fn holds_listeners(&self) -> bool {
        SotwStream::holds(self, resources::LISTENER) && SotwStream::holds(self, resources::SECRET)
    }
    const NAME: &'static str = "sotw";
    fn report(&self, resources: &Resources) -> Vec<TypeReport> {
        SotwStream::report(self, resources)
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
        id: context.status.next_stream.fetch_add(1, Ordering::Relaxed),
    };
    let inspections = Arc::new(InspectSlot::default());
    // Whether the agent was told this proxy's Envoy is listening.
    let mut listening = false;
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
                    match context.attach(P::node_id(&request), &mut guard, inspections.clone()) {
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
                P::trace_request(guard.proxy.as_deref().unwrap_or_default(), &request);
                match stream.on_request(&request) {
                    Ok(Received::Send) => {
                        if !listening && stream.holds_listeners() {
                            listening = true;
                            if let Some(proxy) = &guard.proxy {
                                context.agent.probe_now(proxy);
                            }
                        }
                    }
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
            _ = inspections.ring.notified() => {
                let waiting = inspections.waiting.lock().unwrap_or_else(PoisonError::into_inner).take();
                if let Some(reply) = waiting {
                    let _ = reply.send(report(&stream, guard.proxy.as_deref().unwrap_or_default(), &generated));
                }
                continue;
            }
            _ = context.shutdown.cancelled() => return,
        }
        if let Some((_, resources)) = &generated {
            for response in stream.responses(resources) {
                P::trace_response(guard.proxy.as_deref().unwrap_or_default(), &response);
                context
                    .status
                    .responses_sent
                    .fetch_add(1, Ordering::Relaxed);
                // An Envoy that stops reading must not hold the task past shutdown.
                tokio::select! {
                    sent = out.send(Box::new(Ok(response))) => if sent.is_err() { return },
                    _ = context.shutdown.cancelled() => return,
                }
            }
        }
    }
}

/// The stream's report: its protocol state against what it last generated, and that
/// generation compared with one from nothing.
fn report<P: Protocol>(stream: &P, proxy: &str, generated: &Generated) -> StreamReport {
    let empty = Resources::default();
    let resources = generated
        .as_ref()
        .map_or(&empty, |(_, resources)| resources);
    let types = stream.report(resources);
    let mut differs_from_fresh = Vec::new();
    let endpoints = resources
        .of(resources::ENDPOINT)
        .into_iter()
        .flatten()
        .map(|(name, versioned)| (name.clone(), resources::endpoint_hosts(&versioned.resource)))
        .collect();
    if let Some((snapshot, resources)) = generated {
        let fresh = resources::generate(snapshot, None);
        for type_url in resources::TYPES {
            let (ours, theirs) = (resources.of(type_url), fresh.of(type_url));
            let names: std::collections::BTreeSet<&String> = ours
                .into_iter()
                .chain(theirs)
                .flat_map(|of| of.keys())
                .collect();
            for name in names {
                if ours.and_then(|of| of.get(name)) != theirs.and_then(|of| of.get(name)) {
                    differs_from_fresh.push((type_url, name.clone()));
                }
            }
        }
    }
    StreamReport {
        proxy: proxy.to_string(),
        protocol: P::NAME,
        ready: generated.is_some(),
        converged: delta::converged(&types),
        types,
        differs_from_fresh,
        endpoints,
    }
}

impl XdsServer {
    fn context<T>(&self, request: &Request<T>) -> StreamContext {
        self.status.streams_opened.fetch_add(1, Ordering::Relaxed);
        StreamContext {
            watcher: self.watcher.clone(),
            agent: self.agent.clone(),
            authorizer: self.authorizer.clone(),
            status: self.status.clone(),
            shutdown: self.tasks.shutdown().clone(),
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
        self.tasks.spawn_graceful(
            "xds.stream",
            run::<SotwStream>(context, request.into_inner(), sender),
        );
        Ok(Response::new(into_stream(receiver)))
    }

    async fn delta_aggregated_resources(
        &self,
        request: Request<Streaming<DeltaDiscoveryRequest>>,
    ) -> Result<Response<Self::DeltaAggregatedResourcesStream>, Status> {
        let context = self.context(&request);
        let (sender, receiver) = mpsc::channel(STREAM_BUFFER);
        self.tasks.spawn_graceful(
            "xds.stream",
            run::<DeltaStream>(context, request.into_inner(), sender),
        );
        Ok(Response::new(into_stream(receiver)))
    }
}
