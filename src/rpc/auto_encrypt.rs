//! auto_encrypt's client side: a client agent with `auto_encrypt { tls = true }` asks a
//! server (one of its configured join addresses, on the server port) for its TLS
//! certificate before it starts talking to the servers, and asks again when half of the
//! certificate's life has passed. The request carries a fresh key's CSR and the agent token
//! (`node:write` on the node); the answer is the certificate, signed by the Connect CA for
//! `spiffe://<td>/agent/client/dc/<dc>/id/<node-id>`, and the CAs to trust servers by.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_util::sync::CancellationToken;

use super::connections::Connections;
use super::wire::{AutoEncryptReply, AutoEncryptRequest, Frame, AUTO_ENCRYPT_PATH};
use crate::tls::{AutoCert, Tls};

/// How long one request may take.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries back off from one second up to this.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// Why no server gave this agent a certificate; each server's reason, joined.
#[derive(Debug, thiserror::Error)]
#[error("auto_encrypt: {0}")]
pub struct AutoEncryptError(String);

/// Who is asking.
#[derive(Clone)]
pub struct Requester {
    pub node: String,
    pub node_id: String,
    pub datacenter: String,
    pub token: String,
    /// The agent's bind address, connected from.
    pub bind: IpAddr,
}

/// Asks each of `servers` in turn; the first certificate wins.
pub async fn obtain(
    tls: &Arc<Tls>,
    servers: &[SocketAddr],
    requester: &Requester,
) -> Result<(AutoCert, SystemTime), AutoEncryptError> {
    // The server replaces the URI with the identity it decides; only the key counts.
    let placeholder = format!(
        "spiffe://auto-encrypt.invalid/agent/client/dc/{}/id/{}",
        requester.datacenter, requester.node_id
    );
    let request = crate::connect::ca::leaf_key_and_csr(&placeholder, &requester.node)
        .map_err(|error| AutoEncryptError(error.to_string()))?;
    let (dns_san, ip_san) = tls.auto_encrypt_sans();
    let asked = Frame::encode(&AutoEncryptRequest {
        node: requester.node.clone(),
        node_id: requester.node_id.clone(),
        csr_pem: request.csr_pem.clone(),
        token: requester.token.clone(),
        dns_san,
        ip_san,
    });
    // Fresh connections: whatever was connected before used the previous certificate.
    let connections = Connections::new(requester.bind, tls.clone());
    let mut reasons = Vec::new();
    for server in servers {
        let answer = connections
            .unary(
                *server,
                AUTO_ENCRYPT_PATH,
                asked.clone(),
                REQUEST_TIMEOUT,
                false,
            )
            .await
            .map_err(|error| error.to_string())
            .and_then(|frame| {
                frame
                    .decode::<AutoEncryptReply>()
                    .map_err(|error| error.to_string())
            });
        match answer {
            Ok(reply) => {
                let cert = AutoCert {
                    cert_pem: reply.cert_pem,
                    key_pem: request.key_pem,
                    ca_pems: reply.ca_pems,
                };
                return Ok((cert, UNIX_EPOCH + Duration::from_secs(reply.valid_before)));
            }
            Err(reason) => reasons.push(format!("{server}: {reason}")),
        }
    }
    Err(AutoEncryptError(match reasons.is_empty() {
        true => "no server address to ask (set retry_join or start_join)".into(),
        false => reasons.join("; "),
    }))
}

/// Asks until a server answers (backing off), installs the certificate in `tls`, and
/// returns when it expires. `None` when shut down first.
pub async fn obtain_until_given(
    tls: &Arc<Tls>,
    servers: &[SocketAddr],
    requester: &Requester,
    shutdown: &CancellationToken,
) -> Option<SystemTime> {
    let mut backoff = Duration::from_secs(1);
    let mut last_reason = String::new();
    loop {
        match obtain(tls, servers, requester).await {
            Ok((cert, expires)) => match tls.set_auto_cert(cert) {
                Ok(()) => {
                    tracing::info!("auto_encrypt: got this agent's TLS certificate");
                    return Some(expires);
                }
                Err(error) => tracing::warn!(%error, "auto_encrypt: unusable certificate"),
            },
            Err(error) => {
                let reason = error.to_string();
                if reason != last_reason {
                    tracing::warn!(%reason, "auto_encrypt: no certificate yet; retrying");
                    last_reason = reason;
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return None,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// Renews the certificate once half of its remaining life has passed, for as long as the
/// agent runs.
pub async fn keep_renewed(
    tls: Arc<Tls>,
    servers: Vec<SocketAddr>,
    requester: Requester,
    mut expires: SystemTime,
    shutdown: CancellationToken,
) {
    loop {
        let left = expires
            .duration_since(SystemTime::now())
            .unwrap_or_default();
        let wait = (left / 2).max(Duration::from_secs(10));
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(wait) => {}
        }
        match obtain_until_given(&tls, &servers, &requester, &shutdown).await {
            Some(next) => expires = next,
            None => return,
        }
    }
}
