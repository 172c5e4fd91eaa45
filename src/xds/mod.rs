//! xDS: delivers proxycfg snapshots to Envoy over gRPC.
//!
//! `resources` turns a snapshot into Envoy's protobuf resources with content-derived
//! versions (`rbac` builds the intention filters; both build their string and header matches
//! with `matchers`); `delta` and `sotw` are the two ADS protocol state machines, without I/O;
//! `server` is the tonic service whose stream tasks drive them, routed by `grpc` with small
//! per-stream buffers; `bootstrap` is the Envoy bootstrap `concord connect envoy` writes.

pub mod bootstrap;
pub mod delta;
#[cfg(test)]
mod golden_tests;
mod grpc;
pub mod matchers;
pub mod rbac;
#[cfg(test)]
mod render;
pub mod resources;
pub mod server;
pub mod sotw;
#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use server::{XdsServer, XdsStatus};

/// Serves ADS on `listener` until `shutdown`.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: XdsServer,
    max_streams: u32,
    shutdown: CancellationToken,
) {
    let address: Option<SocketAddr> = listener.local_addr().ok();
    let incoming = tonic::transport::server::TcpIncoming::from(listener)
        .with_nodelay(Some(true))
        .with_keepalive(Some(Duration::from_secs(30)));
    let served = tonic::transport::Server::builder()
        // Envoy sends no pings of its own; these reap streams whose peer vanished.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(max_streams))
        .add_service(grpc::AdsService::new(server))
        .serve_with_incoming_shutdown(incoming, shutdown.cancelled_owned())
        .await;
    if let Err(error) = served {
        tracing::error!(?address, %error, "gRPC (xDS) server failed");
    }
}

/// A shared handle for callers that only read the counters.
pub type Status = Arc<XdsStatus>;
