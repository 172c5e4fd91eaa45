//! The DNS interface: Consul's `.consul` zone (and `alt_domain`) on UDP and TCP, answered from
//! the local state store's current snapshot, never one RPC per query.
//!
//! - `name`: query name -> `Lookup` (Consul's forms, read right to left);
//! - `zone`: `Lookup` + one `Tables` snapshot -> answer, authority and additional records
//!   (health filtering, shuffling, TTLs, SRV targets and their addresses);
//! - `respond`: raw message -> raw reply without I/O (FORMERR, REFUSED, sizing and the TC
//!   bit), so a fuzz test can drive it directly;
//! - `recursor`: names outside the domain, relayed to the configured recursors;
//! - `transport`: the UDP and TCP loops with their limits (TCP idle timeout, connection cap).
//!
//! Architecture invariant: a protocol edge. It translates the catalog into DNS and decides
//! nothing the catalog does not already say; health comes from `Tables::instance_health`.

mod name;
mod recursor;
pub mod respond;
mod transport;
mod zone;

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::dns_config::DnsConfig;
use crate::rpc::LeaderContact;
use crate::state::Store;

pub use respond::{respond, Outcome, Transport};

/// Everything a query needs: the DNS config, this datacenter, the store, and how recent our
/// view of the leader is (for `allow_stale`/`max_stale`).
pub struct Context {
    pub config: DnsConfig,
    pub datacenter: String,
    pub store: Arc<Store>,
    pub leader: Arc<dyn Fn() -> LeaderContact + Send + Sync>,
}

impl Context {
    /// Whether the local snapshot may answer: with `allow_stale` while the last contact with a
    /// leader is within `max_stale`, otherwise only while a leader is known.
    fn readable(&self) -> bool {
        let contact = (self.leader)();
        contact.known_leader
            || (self.config.allow_stale
                && u128::from(contact.last_contact_ms) <= self.config.max_stale.as_millis())
    }
}

/// Limits of the listeners (`limits.dns_*`).
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub tcp_idle_timeout: std::time::Duration,
    pub max_tcp_connections: usize,
}

/// Binds UDP and TCP on `address` and serves until `shutdown`.
pub async fn listen(
    cx: Arc<Context>,
    address: SocketAddr,
    limits: Limits,
    shutdown: CancellationToken,
    tasks: &mut JoinSet<()>,
) -> anyhow::Result<()> {
    let udp = tokio::net::UdpSocket::bind(address)
        .await
        .with_context(|| format!("cannot listen for DNS on udp://{address}"))?;
    let tcp = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for DNS on tcp://{address}"))?;
    tracing::info!(%address, "DNS listening (udp, tcp)");
    transport::spawn(cx, udp, tcp, limits, shutdown, tasks);
    Ok(())
}
