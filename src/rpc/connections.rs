//! Connections to other servers' RPC ports, one HTTP/2 channel per address, made on first use
//! and dropped when a call on it fails. Client agents use it to reach servers; servers use it
//! for Raft traffic and to forward requests to the leader. Over TLS with `verify_outgoing`
//! (`tls::connect::RpcConnector`).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tonic::codegen::http::uri::PathAndQuery;
use tonic::transport::{Channel, Endpoint};

use crate::tls::connect::RpcConnector;
use crate::tls::Tls;

use super::codec::SmallCodec;
use super::wire::Frame;

/// How long connecting to a server may take before the caller gives up on it.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Why a call failed, and whether the request may have reached the server.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// No connection: the request was not sent.
    #[error("{0}")]
    Connect(String),
    /// Sent, then failed or timed out: the server may have carried it out.
    #[error("{}", .0.message())]
    Status(tonic::Status),
}

pub struct Connections {
    channels: Mutex<HashMap<SocketAddr, Channel>>,
    connector: RpcConnector,
    /// The last reason connecting to each server failed, so a changed reason is logged once
    /// rather than at every retry (Raft retries every heartbeat).
    failures: Mutex<HashMap<SocketAddr, String>>,
}

impl Connections {
    /// Connections made from `bind` (any local address when it is unspecified, else the
    /// agent's own, so peers and firewall rules see it), over TLS as `tls` says.
    pub fn new(bind: IpAddr, tls: Arc<Tls>) -> Connections {
        Connections {
            channels: Mutex::default(),
            failures: Mutex::default(),
            connector: RpcConnector {
                local: (!bind.is_unspecified()).then_some(bind),
                tls,
            },
        }
    }

    /// A channel to `server`, connected now if there is none.
    pub async fn channel(&self, server: SocketAddr) -> Result<Channel, CallError> {
        if let Some(channel) = self.lock().get(&server).cloned() {
            return Ok(channel);
        }
        let connect = |error: tonic::transport::Error| CallError::Connect(error.to_string());
        let endpoint = Endpoint::from_shared(format!("http://{server}"))
            .map_err(connect)?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(Duration::from_secs(30))
            .keep_alive_timeout(Duration::from_secs(10));
        let channel = match endpoint
            .connect_with_connector(self.connector.clone())
            .await
        {
            Ok(channel) => channel,
            Err(error) => {
                // tonic's own text is "transport error"; the connector's reason is below it.
                let mut reason = error.to_string();
                let mut source = std::error::Error::source(&error);
                while let Some(cause) = source {
                    reason = format!("{reason}: {cause}");
                    source = cause.source();
                }
                let mut failures = self.failures.lock().unwrap_or_else(PoisonError::into_inner);
                if failures.get(&server) != Some(&reason) {
                    tracing::warn!(%server, %reason, "cannot connect to server");
                    failures.insert(server, reason);
                }
                return Err(connect(error));
            }
        };
        self.failures
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&server);
        self.lock().insert(server, channel.clone());
        Ok(channel)
    }

    /// Sends one request frame to `path` on `server` and returns the answer. `forwarded`
    /// marks a request a server passes on to the leader, which answers it itself.
    pub async fn unary(
        &self,
        server: SocketAddr,
        path: &'static str,
        frame: Frame,
        timeout: Duration,
        forwarded: bool,
    ) -> Result<Frame, CallError> {
        let channel = self.channel(server).await?;
        let mut grpc = tonic::client::Grpc::new(channel).max_decoding_message_size(usize::MAX);
        let answer = async {
            grpc.ready()
                .await
                .map_err(|error| CallError::Connect(error.to_string()))?;
            let mut request = tonic::Request::new(frame);
            request.set_timeout(timeout);
            if forwarded {
                request
                    .metadata_mut()
                    .insert(FORWARDED, tonic::metadata::MetadataValue::from_static("1"));
            }
            grpc.unary(
                request,
                PathAndQuery::from_static(path),
                SmallCodec::<Frame, Frame>::default(),
            )
            .await
            .map_err(CallError::Status)
        };
        match answer.await {
            Ok(response) => Ok(response.into_inner()),
            Err(error) => {
                self.forget(server);
                Err(error)
            }
        }
    }

    /// Drops the connection to `server`; the next call connects again.
    pub fn forget(&self, server: SocketAddr) {
        self.lock().remove(&server);
    }

    /// Keeps only the connections to `servers`.
    pub fn retain(&self, servers: &[SocketAddr]) {
        self.lock().retain(|server, _| servers.contains(server));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SocketAddr, Channel>> {
        self.channels.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The metadata key that marks a request one server forwarded to another.
pub const FORWARDED: &str = "x-concord-forwarded";
