//! The DNS interface: Consul's `.consul` zone (and `alt_domain`) on UDP and TCP, answered from
//! the local state store's current snapshot, never one RPC per query.
//!
//! - `name`: query name -> `Lookup` (Consul's forms, read right to left);
//! - `zone`: `Lookup` + one `Tables` snapshot -> answer, authority and additional records
//!   (health filtering, shuffling, TTLs, SRV targets and their addresses);
//! - `respond`: raw message -> raw reply without I/O (FORMERR, REFUSED, sizing and the TC
//!   bit), so a fuzz test can drive it directly;
//! - `wire`: response encoding with hashed name compression (hickory's is quadratic);
//! - `recursor`: names outside the domain, relayed to the configured recursors;
//! - `transport`: the UDP and TCP loops with their limits (TCP idle timeout, connection cap).
//!
//! Architecture invariant: a protocol edge. Every lookup passes the authorization seam with
//! the agent's DNS token (HTTP's rule, so ACLs apply here too); it translates the catalog into
//! DNS and decides nothing the catalog does not already say; health comes from `state::health` (a
//! `HealthIndex` per catalog version, so a query costs two map lookups per instance).

mod name;
mod recursor;
pub mod respond;
mod transport;
mod wire;
mod zone;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};

use anyhow::Context as _;

use crate::acl::Authorizer;
use crate::config::dns_config::DnsConfig;
use crate::rpc::Cluster;
use crate::state::health::HealthIndex;
use crate::state::Tables;
use crate::tasks::Tasks;

pub use respond::{respond, Outcome, Transport};
use zone::Answer;

/// The node, service, check and prepared-query tables' indexes: a catalog version.
type CatalogVersion = (u64, u64, u64, u64);

/// Everything a query needs: the DNS config, this datacenter, the store, and how recent our
/// view of the leader is (for `allow_stale`/`max_stale`).
pub struct Context {
    pub config: DnsConfig,
    pub datacenter: String,
    /// Where the snapshot and the leader's contact come from.
    pub cluster: Cluster,
    /// Lookups are authorized with the agent's `dns` token, else its default token.
    pub authorizer: Authorizer,
    /// What was computed from the last catalog version a query saw (keyed by the node,
    /// service and check tables' indexes, so KV writes do not invalidate it).
    computed: Mutex<Option<Computed>>,
    /// Consul's `dns.domain_query` and `dns.ptr_query` timers, labelled with this node, made
    /// once so a query records without looking them up.
    domain_query: metrics::Histogram,
    ptr_query: metrics::Histogram,
}

/// Most answers a catalog version keeps; beyond it the cache starts over. A popular name is
/// asked thousands of times per version, so even a small cache answers most queries.
const MAX_CACHED_ANSWERS: usize = 4096;

/// Derived from one catalog version: the health index, and each in-domain answer as the zone
/// computed it (in catalog order; each response shuffles its own copy).
struct Computed {
    version: CatalogVersion,
    health: Arc<HealthIndex>,
    /// Each answer with the lookup it answers, so a cached answer is authorized without
    /// parsing the name again.
    answers: HashMap<AnswerKey, (Arc<name::Lookup>, Arc<Answer>)>,
}

/// An answer depends on the name as asked (answers carry it), the type and the domain.
type AnswerKey = (String, u16, String);

impl Context {
    pub fn new(
        config: DnsConfig,
        datacenter: String,
        cluster: Cluster,
        authorizer: Authorizer,
        node: &str,
    ) -> Context {
        let node = node.to_string();
        Context {
            config,
            datacenter,
            cluster,
            authorizer,
            computed: Mutex::new(None),
            domain_query: metrics::histogram!(crate::telemetry::DNS_DOMAIN_QUERY, "node" => node.clone()),
            ptr_query: metrics::histogram!(crate::telemetry::DNS_PTR_QUERY, "node" => node),
        }
    }

    fn version(tables: &Tables) -> CatalogVersion {
        let indexes = tables.table_index();
        (
            indexes.nodes,
            indexes.services,
            indexes.checks,
            tables.queries_index(),
        )
    }

    /// The health index for `tables`, rebuilt only when the catalog changed.
    fn health(&self, tables: &Tables) -> Arc<HealthIndex> {
        let version = Self::version(tables);
        if let Some(computed) = self
            .computed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|computed| computed.version == version)
        {
            return computed.health.clone();
        }
        // Built outside the lock: concurrent queries may build it twice, never wait on it.
        let health = Arc::new(HealthIndex::build(tables));
        let mut computed = self.computed.lock().unwrap_or_else(PoisonError::into_inner);
        if computed.as_ref().is_none_or(|held| held.version != version) {
            *computed = Some(Computed {
                version,
                health: health.clone(),
                answers: HashMap::new(),
            });
        }
        health
    }

    /// The lookup `key` names and the zone's answer to it under `tables`, both computed (by
    /// `parse` and `compute`) once per catalog version.
    fn answer(
        &self,
        tables: &Tables,
        key: AnswerKey,
        parse: impl FnOnce() -> name::Lookup,
        compute: impl FnOnce(&name::Lookup, &HealthIndex) -> Answer,
    ) -> (Arc<name::Lookup>, Arc<Answer>) {
        let version = Self::version(tables);
        if let Some(cached) = self
            .computed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .filter(|computed| computed.version == version)
            .and_then(|computed| computed.answers.get(&key))
        {
            return cached.clone();
        }
        let lookup = Arc::new(parse());
        let answer = Arc::new(compute(&lookup, &self.health(tables)));
        let mut computed = self.computed.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(computed) = computed.as_mut().filter(|held| held.version == version) {
            if computed.answers.len() >= MAX_CACHED_ANSWERS {
                computed.answers.clear();
            }
            computed
                .answers
                .insert(key, (lookup.clone(), answer.clone()));
        }
        (lookup, answer)
    }

    /// Whether the DNS token may read what `lookup` names (ACLs filter DNS as they do HTTP).
    fn permits(&self, lookup: &name::Lookup) -> bool {
        use crate::acl::Access;
        let access = match lookup {
            name::Lookup::Node { name } => Access::NodeRead(name),
            name::Lookup::Service { name, .. } | name::Lookup::Connect { name } => {
                Access::ServiceRead(name)
            }
            name::Lookup::Query { name } => Access::QueryRead(name),
            _ => return true,
        };
        self.authorizer
            .resolve_dns()
            .is_ok_and(|identity| identity.allows(access))
    }

    /// Whether the local snapshot may answer: with `allow_stale` while the last contact with a
    /// leader is within `max_stale`, otherwise only while a leader is known.
    fn readable(&self) -> bool {
        let contact = self.cluster.leader_contact();
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
    tasks: &Tasks,
) -> anyhow::Result<()> {
    let udp = tokio::net::UdpSocket::bind(address)
        .await
        .with_context(|| format!("cannot listen for DNS on udp://{address}"))?;
    let tcp = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("cannot listen for DNS on tcp://{address}"))?;
    tracing::info!(%address, "DNS listening (udp, tcp)");
    transport::spawn(cx, udp, tcp, limits, tasks);
    Ok(())
}
