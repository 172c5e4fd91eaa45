//! Outgoing connections, plain or TLS: the server RPC connector tonic's channels use (from
//! the agent's bind address, TLS with `verify_outgoing`, checking the server's name), and the
//! CLI's HTTP(S) connector.

use std::future::Future;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper::Uri;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use rustls::ClientConfig;
use tokio::net::TcpSocket;

pub use super::stream::Stream;

/// Connects to `address` (from `local` when given), then runs a TLS handshake naming
/// `server_name` when `tls` is set.
pub async fn connect(
    address: SocketAddr,
    local: Option<IpAddr>,
    tls: Option<(Arc<ClientConfig>, ServerName<'static>)>,
) -> io::Result<Stream> {
    let socket = match address {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(local) = local {
        socket.bind(SocketAddr::new(local, 0))?;
    }
    let tcp = socket.connect(address).await?;
    tcp.set_nodelay(true)?;
    match tls {
        None => Ok(Stream::Plain(tcp)),
        Some((config, name)) => {
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|error| {
                    io::Error::new(error.kind(), format!("TLS to {address}: {error}"))
                })?;
            Ok(Stream::Tls(Box::new(stream.into())))
        }
    }
}

type Connecting = Pin<Box<dyn Future<Output = io::Result<TokioIo<Stream>>> + Send>>;

/// Server RPC connections: from the agent's bind address; TLS with the configuration current
/// when the connection is made, naming `server.<dc>.<domain>`.
#[derive(Clone)]
pub struct RpcConnector {
    pub local: Option<IpAddr>,
    pub tls: Arc<super::Tls>,
}

impl tower::Service<Uri> for RpcConnector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let local = self.local;
        let tls = self.tls.rpc_outgoing().map(|config| {
            let name = ServerName::try_from(self.tls.server_name().to_string())
                .unwrap_or_else(|_| ServerName::try_from("server.invalid").expect("a valid name"));
            (config, name)
        });
        Box::pin(async move {
            let address = socket_address(&uri)?;
            connect(address, local, tls).await.map(TokioIo::new)
        })
    }
}

/// The CLI's connections to its agent: `https://` addresses over TLS with `config`, naming
/// `server_name` (`-tls-server-name`) or the address's host.
#[derive(Clone)]
pub struct HttpConnector {
    pub tls: Option<Arc<ClientConfig>>,
    pub server_name: Option<String>,
}

impl tower::Service<Uri> for HttpConnector {
    type Response = TokioIo<Stream>;
    type Error = io::Error;
    type Future = Connecting;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        let config = self.tls.clone();
        let server_name = self.server_name.clone();
        Box::pin(async move {
            let https = uri.scheme_str() == Some("https");
            let host = uri
                .host()
                .unwrap_or_default()
                .trim_matches(['[', ']'])
                .to_string();
            let port = uri.port_u16().unwrap_or(if https { 443 } else { 80 });
            let address = tokio::net::lookup_host((host.as_str(), port))
                .await?
                .next()
                .ok_or_else(|| io::Error::other(format!("{host}: no address")))?;
            let tls = match (https, config) {
                (false, _) => None,
                (true, None) => return Err(io::Error::other("https:// needs a TLS configuration")),
                (true, Some(config)) => {
                    let name = server_name.unwrap_or(host);
                    let name = ServerName::try_from(name.clone()).map_err(|_| {
                        io::Error::other(format!("{name:?} is not a valid TLS server name"))
                    })?;
                    Some((config, name))
                }
            };
            connect(address, None, tls).await.map(TokioIo::new)
        })
    }
}

fn socket_address(uri: &Uri) -> io::Result<SocketAddr> {
    let authority = uri
        .authority()
        .ok_or_else(|| io::Error::other(format!("{uri}: no address")))?;
    authority
        .as_str()
        .parse()
        .map_err(|_| io::Error::other(format!("{uri}: not an IP address and port")))
}
