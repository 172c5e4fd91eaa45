//! TLS listeners: one task accepts connections and runs their handshakes side by side (each
//! bounded by a timeout, so a silent client holds nothing), handing finished connections to
//! the HTTP or gRPC server. A failed handshake is logged with the peer and rustls' reason.
//!
//! The server port may take plaintext beside TLS (no `verify_incoming`): the first byte
//! tells them apart, a TLS record starting with 0x16 and HTTP/2's preface with `P`.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::stream::{FuturesUnordered, StreamExt};
use rustls::ServerConfig;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

pub use super::stream::{Peer, Stream};
use super::{RpcIncoming, Tls};

/// How long a client may take to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; past it, accepting waits for one to finish.
const MAX_HANDSHAKES: usize = 1024;
/// The first byte of a TLS handshake record.
const TLS_HANDSHAKE: u8 = 0x16;

/// What a listener serves, which picks its configuration from `Tls`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Https,
    Grpc,
    /// The server port: TLS when configured, plaintext unless `verify_incoming`.
    ServerRpc,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Https => "HTTPS",
            Kind::Grpc => "gRPC-TLS",
            Kind::ServerRpc => "server RPC",
        }
    }
}

/// Connections that finished their handshake, for `axum::serve` or tonic.
pub struct Incoming {
    connections: mpsc::Receiver<(Stream, SocketAddr)>,
    local: SocketAddr,
}

impl Incoming {
    /// The connections as the stream tonic's `serve_with_incoming` takes.
    pub fn into_stream(self) -> impl futures::Stream<Item = io::Result<Stream>> {
        futures::stream::unfold(self.connections, |mut connections| async move {
            let (stream, _) = connections.recv().await?;
            Some((Ok(stream), connections))
        })
    }
}

impl axum::serve::Listener for Incoming {
    type Io = Stream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Stream, SocketAddr) {
        match self.connections.recv().await {
            Some(connection) => connection,
            // The accept loop ended (shutdown): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

/// Accepts on `listener` until `shutdown`, handing each connection on once its handshake is
/// done. Each handshake takes the configuration current when it starts, so a reload applies
/// to new connections and leaves established ones alone.
pub fn accept(
    listener: TcpListener,
    kind: Kind,
    tls: Arc<Tls>,
    shutdown: CancellationToken,
) -> (Incoming, impl std::future::Future<Output = ()> + Send) {
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let (sender, connections) = mpsc::channel(64);
    let task = async move {
        let mut handshakes = FuturesUnordered::new();
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = listener.accept(), if handshakes.len() < MAX_HANDSHAKES => {
                    let (tcp, peer) = match accepted {
                        Ok(accepted) => accepted,
                        Err(error) => {
                            tracing::warn!(%error, listener = kind.name(), "accept failed");
                            // Out of descriptors and the like: let some close.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            continue;
                        }
                    };
                    let _ = tcp.set_nodelay(true);
                    handshakes.push(handshake(tcp, peer, kind, tls.clone()));
                }
                Some(done) = handshakes.next(), if !handshakes.is_empty() => {
                    if let Some(connection) = done {
                        if sender.send(connection).await.is_err() {
                            return;
                        }
                    }
                }
            }
        }
    };
    (Incoming { connections, local }, task)
}

async fn handshake(
    tcp: TcpStream,
    peer: SocketAddr,
    kind: Kind,
    tls: Arc<Tls>,
) -> Option<(Stream, SocketAddr)> {
    let config = match kind {
        Kind::Https => tls.https().map(|config| (config, false)),
        Kind::Grpc => tls.grpc().map(|config| (config, false)),
        Kind::ServerRpc => {
            let RpcIncoming { tls, plaintext } = tls.rpc_incoming();
            match tls {
                Some(config) => Some((config, plaintext)),
                None => return Some((Stream::Plain(tcp), peer)),
            }
        }
    };
    let Some((config, plaintext)) = config else {
        tracing::warn!(%peer, listener = kind.name(), "no TLS certificate loaded; connection closed");
        return None;
    };
    let outcome = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let mut first = [0u8; 1];
        let read = tcp.peek(&mut first).await?;
        if read == 1 && first[0] != TLS_HANDSHAKE {
            return Ok(Err(tcp));
        }
        tls_accept(tcp, config).await.map(Ok)
    })
    .await;
    match outcome {
        Ok(Ok(Ok(stream))) => Some((stream, peer)),
        Ok(Ok(Err(tcp))) if plaintext => Some((Stream::Plain(tcp), peer)),
        Ok(Ok(Err(mut tcp))) => {
            tracing::warn!(%peer, listener = kind.name(), "refused a plaintext connection on a TLS port");
            if kind == Kind::Https {
                // Go's answer to plain HTTP on an HTTPS port, which curl shows its user.
                let _ = tcp
                    .write_all(b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n")
                    .await;
            }
            None
        }
        Ok(Err(error)) => {
            tracing::warn!(%peer, listener = kind.name(), %error, "TLS handshake failed");
            None
        }
        Err(_) => {
            tracing::warn!(%peer, listener = kind.name(), "TLS handshake timed out");
            None
        }
    }
}

async fn tls_accept(tcp: TcpStream, config: Arc<ServerConfig>) -> io::Result<Stream> {
    let stream = tokio_rustls::TlsAcceptor::from(config).accept(tcp).await?;
    Ok(Stream::Tls(Box::new(stream.into())))
}
