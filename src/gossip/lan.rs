//! This agent's LAN pool: who it is in the pool (its name, its gossip address and Consul's
//! member tags), the socket it gossips on, and the joins its configuration asks for.
//!
//! `start_join` must reach someone before the agent starts (as Consul's); `retry_join` is
//! tried in the background every `retry_interval`, `retry_max` times (0: until it succeeds),
//! and an agent that exhausts it stops, as Consul's does.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;

use super::identity::NodeIdentity;
use super::keyring::{Encryption, Keyring};
use super::pool::{JoinError, Pool};
use super::transport::UdpTransport;
use crate::api::human_version;
use crate::config::RuntimeConfig;
use crate::tasks::Tasks;

/// Consul's member tags for this agent.
pub fn tags(config: &RuntimeConfig, node_id: &str) -> BTreeMap<String, String> {
    let mut tags = BTreeMap::from([
        ("dc".to_string(), config.datacenter.clone()),
        ("id".to_string(), node_id.to_string()),
        ("vsn".to_string(), "2".to_string()),
        ("vsn_min".to_string(), "2".to_string()),
        ("vsn_max".to_string(), "3".to_string()),
        ("build".to_string(), human_version()),
        ("segment".to_string(), String::new()),
    ]);
    let role = if config.server_mode { "consul" } else { "node" };
    tags.insert("role".into(), role.into());
    if config.server_mode {
        let port = config.ports.server.unwrap_or(8300);
        tags.insert("port".into(), port.to_string());
        tags.insert("raft_vsn".into(), "3".into());
        match config.bootstrap_expect {
            0 => None,
            1 => tags.insert("bootstrap".into(), "1".into()),
            expect => tags.insert("expect".into(), expect.to_string()),
        };
        if let Some(port) = config.ports.serf_wan {
            tags.insert("wan_join_port".into(), port.to_string());
        }
        if let Some(grpc) = config.ports.grpc {
            tags.insert("grpc_port".into(), grpc.to_string());
        }
    }
    tags
}

/// Which of an agent's pools: the datacenter's LAN pool (every agent) or the WAN pool of
/// servers across datacenters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    Lan,
    Wan,
}

impl Area {
    /// The port a join address without one gets (Consul's defaults).
    pub fn default_port(self) -> u16 {
        match self {
            Area::Lan => 8301,
            Area::Wan => 8302,
        }
    }
}

/// Binds the LAN gossip port and starts the pool, its keyring kept in `data_dir`.
pub async fn start(
    config: &RuntimeConfig,
    node_id: &str,
    data_dir: &std::path::Path,
    tasks: &Tasks,
) -> anyhow::Result<Pool> {
    start_area(Area::Lan, config, node_id, data_dir, tasks).await
}

/// Starts a server's WAN pool (none for clients, or with `ports.serf_wan` at -1): its
/// members are `<node>.<datacenter>`, with WAN timings (local ones in `-dev`) and its own
/// keyring file, started from the same `-encrypt`, as Consul's.
pub async fn start_wan(
    config: &RuntimeConfig,
    node_id: &str,
    data_dir: &std::path::Path,
    tasks: &Tasks,
) -> anyhow::Result<Option<Pool>> {
    if !config.server_mode || config.ports.serf_wan.is_none() {
        return Ok(None);
    }
    start_area(Area::Wan, config, node_id, data_dir, tasks)
        .await
        .map(Some)
}

async fn start_area(
    area: Area,
    config: &RuntimeConfig,
    node_id: &str,
    data_dir: &std::path::Path,
    tasks: &Tasks,
) -> anyhow::Result<Pool> {
    let membership = &config.membership;
    let file = match area {
        Area::Lan => super::keyring::KEYRING_FILE,
        Area::Wan => super::keyring::WAN_KEYRING_FILE,
    };
    let keyring = Keyring::load(Some(data_dir), file, membership.encrypt.as_deref())
        .map_err(|error| anyhow::anyhow!("encrypt: {error}"))?;
    let encryption = Encryption {
        keyring,
        verify_incoming: membership.encrypt_verify_incoming,
        verify_outgoing: membership.encrypt_verify_outgoing,
    };
    let (port, name, timings) = match area {
        Area::Lan => (
            config.ports.serf_lan.unwrap_or(8301),
            config.node_name.clone(),
            membership.gossip_lan,
        ),
        Area::Wan => (
            config.ports.serf_wan.unwrap_or(8302),
            format!("{}.{}", config.node_name, config.datacenter),
            match config.dev_mode {
                true => crate::config::GossipTimings::LOCAL,
                false => crate::config::GossipTimings::WAN,
            },
        ),
    };
    let bind = SocketAddr::new(config.bind_addr, port);
    let (transport, inbound) = UdpTransport::bind(bind, tasks)
        .await
        .with_context(|| format!("cannot listen for {area:?} gossip on {bind}"))?;
    let transport_port = {
        use super::transport::Transport;
        transport.local_addr().port()
    };
    let started = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis() as u64);
    let identity = NodeIdentity {
        name,
        // The bound port, so `-serf-lan-port 0` (any free port) advertises the real one.
        addr: SocketAddr::new(config.advertise_addr, transport_port),
        started,
        tags: tags(config, node_id),
    };
    tracing::info!(address = %identity.addr, ?area, "gossip listening");
    if encryption.keyring.enabled() {
        tracing::info!("gossip encryption on");
    }
    Ok(Pool::start_with(
        identity, timings, encryption, transport, inbound, tasks,
    ))
}

/// Why a join went nowhere.
#[derive(Debug, thiserror::Error)]
pub enum LanJoinError {
    #[error("{0:?}: cloud auto-join (go-discover) is not supported; give addresses")]
    CloudAutoJoin(String),
    #[error("{0:?}: {1}")]
    Resolve(String, std::io::Error),
    #[error("no addresses to join")]
    Nothing,
    #[error(transparent)]
    Pool(#[from] JoinError),
}

/// Turns `host`, `host:port`, `ip` or `ip:port` into addresses (`default_port` when no port
/// is given).
pub async fn resolve(
    addresses: &[String],
    default_port: u16,
) -> Result<Vec<SocketAddr>, LanJoinError> {
    let mut resolved = Vec::new();
    for address in addresses {
        if address.contains("provider=") {
            return Err(LanJoinError::CloudAutoJoin(address.clone()));
        }
        let with_port = match address.parse::<std::net::IpAddr>() {
            Ok(ip) => SocketAddr::new(ip, default_port).to_string(),
            Err(_)
                if address
                    .rsplit_once(':')
                    .is_some_and(|(_, p)| p.parse::<u16>().is_ok()) =>
            {
                address.clone()
            }
            Err(_) => format!("{address}:{default_port}"),
        };
        let found = tokio::net::lookup_host(&with_port)
            .await
            .map_err(|error| LanJoinError::Resolve(address.clone(), error))?;
        resolved.extend(found);
    }
    Ok(resolved)
}

/// Joins `addresses`; how many answered, or why none did.
pub async fn join(pool: &Pool, addresses: &[String]) -> Result<usize, LanJoinError> {
    join_area(pool, Area::Lan, addresses).await
}

/// Joins `addresses` in `area`'s pool (`join -wan` for the WAN pool).
pub async fn join_area(
    pool: &Pool,
    area: Area,
    addresses: &[String],
) -> Result<usize, LanJoinError> {
    let resolved = resolve(addresses, area.default_port()).await?;
    if resolved.is_empty() {
        return Err(LanJoinError::Nothing);
    }
    Ok(pool.join(resolved).await?)
}

/// Carries out `start_join` now and `retry_join` in the background, in `pool`, which is
/// `area`'s. An exhausted `retry_join` cancels `stop`.
pub async fn join_configured(
    pool: &Pool,
    joins: &crate::config::Joins,
    area: Area,
    stop: &tokio_util::sync::CancellationToken,
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let name = match area {
        Area::Lan => "LAN",
        Area::Wan => "WAN",
    };
    if !joins.start_join.is_empty() {
        let joined = join_area(pool, area, &joins.start_join)
            .await
            .map_err(|error| anyhow::anyhow!("start_join failed ({name}): {error}"))?;
        tracing::info!(joined, "joined the {name} pool (start_join)");
    }
    if joins.retry_join.is_empty() {
        return Ok(());
    }
    let (pool, addresses) = (pool.clone(), joins.retry_join.clone());
    let (interval, max) = (joins.retry_interval, joins.retry_max);
    let stop = stop.clone();
    tasks.spawn("gossip.retry_join", async move {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            match join_area(&pool, area, &addresses).await {
                Ok(joined) => {
                    return tracing::info!(joined, attempt, "joined the {name} pool (retry_join)")
                }
                Err(error) if max != 0 && attempt >= max => {
                    tracing::error!(%error, attempt, "retry_join ({name}) gave up; stopping the agent");
                    return stop.cancel();
                }
                Err(error) => {
                    tracing::warn!(%error, attempt, "retry_join ({name}) failed; retrying in {interval:?}")
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tokio::time::sleep(interval) => {}
            }
        }
    });
    Ok(())
}
