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

/// How long connections may drain after shutdown begins: an Envoy that stopped reading
/// cannot take its last frames, and must not hold the agent's exit until the task limit.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);

/// Serves ADS on `listener` until `shutdown`, then lets connections drain for up to
/// `DRAIN_LIMIT`; over TLS (`ports.grpc_tls`) when `tls` is given.
pub async fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<crate::tls::Tls>>,
    server: XdsServer,
    max_streams: u32,
    shutdown: CancellationToken,
) {
    let address: Option<SocketAddr> = listener.local_addr().ok();
    match tls {
        None => {
            let incoming = tonic::transport::server::TcpIncoming::from(listener)
                .with_nodelay(Some(true))
                .with_keepalive(Some(Duration::from_secs(30)));
            serve_incoming(incoming, address, server, max_streams, shutdown).await
        }
        Some(tls) => {
            let (incoming, accepting) = crate::tls::listen::accept(
                listener,
                crate::tls::listen::Kind::Grpc,
                tls,
                shutdown.clone(),
            );
            let serving = serve_incoming(
                incoming.into_stream(),
                address,
                server,
                max_streams,
                shutdown,
            );
            tokio::join!(accepting, serving);
        }
    }
}

async fn serve_incoming<I, IO, IE>(
    incoming: I,
    address: Option<SocketAddr>,
    server: XdsServer,
    max_streams: u32,
    shutdown: CancellationToken,
) where
    I: futures::Stream<Item = Result<IO, IE>>,
    IO: tokio::io::AsyncRead
        + tokio::io::AsyncWrite
        + tonic::transport::server::Connected
        + Unpin
        + Send
        + 'static,
    IE: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let drain_deadline = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_LIMIT).await;
    };
    let serving = tonic::transport::Server::builder()
        // Envoy sends no pings of its own; these reap streams whose peer vanished.
        .http2_keepalive_interval(Some(Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(Duration::from_secs(10)))
        .max_concurrent_streams(Some(max_streams))
        .add_service(grpc::AdsService::new(server))
        .serve_with_incoming_shutdown(incoming, shutdown.clone().cancelled_owned());
    tokio::select! {
        served = serving => {
            if let Err(error) = served {
                tracing::error!(?address, %error, "gRPC (xDS) server failed");
            }
        }
        _ = drain_deadline => {
            tracing::debug!(?address, "xDS connections did not drain; closing them");
        }
    }
}

/// A shared handle for callers that only read the counters.
pub type Status = Arc<XdsStatus>;
