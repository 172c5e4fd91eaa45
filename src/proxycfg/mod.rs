//! proxycfg: what one connect proxy's Envoy configuration depends on, as one immutable,
//! ordered snapshot.
//!
//! A `Snapshot` is a pure function of the state store's tables, the proxy's leaf certificate
//! and the agent's intention default: its registration, the destination's protocol and
//! intentions, each upstream's compiled discovery chain with the healthy endpoints of every
//! chain target, and the CA roots. `Watcher` keeps one task per proxy that recomputes the
//! snapshot whenever one of its inputs may have changed and publishes it on a `watch` channel
//! only when it differs, so xDS streams wake exactly when there is something new. The model is
//! made of ordered maps and vectors; the xDS layer derives resource versions from it, never
//! from protobuf bytes.

mod endpoints;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};

use serde_json::Value;
use tokio::sync::watch;

use crate::agent::leaf::{IssuedCert, LeafCache};
use crate::connect::chain::{self, Chain};
use crate::connect::entry::service_protocol;
use crate::connect::intention::{self, DefaultPolicy};
use crate::rpc::Cluster;
use crate::state::catalog::{CHECKS_TOPIC, SERVICES_TOPIC};
use crate::state::connect::CA_TOPIC;
use crate::state::{Match, Tables};
use crate::tasks::Tasks;
use crate::types::config_entry::PermissionHttp;
use crate::types::connect::ServiceProxy;
use crate::types::Service;

pub use endpoints::Endpoint;

/// Local app connect timeout when `local_connect_timeout_ms` is not set.
const LOCAL_CONNECT_TIMEOUT_MS: u64 = 5000;

/// Everything one proxy's Envoy configuration is generated from.
#[derive(Clone, Debug, PartialEq)]
pub struct Snapshot {
    pub proxy_id: String,
    /// The destination service the proxy fronts.
    pub service: String,
    pub datacenter: String,
    pub trust_domain: String,
    pub public: PublicListener,
    pub leaf: Leaf,
    /// Every CA root Envoy should trust (active and rotated-out-but-not-pruned), PEM. Shared
    /// by every snapshot made from the same tables.
    pub roots_pem: Arc<Vec<String>>,
    pub intentions: Intentions,
    /// For a TCP destination, the services whose sidecars reach it through an upstream, in
    /// name order: each gets a filter chain of its own on the public listener, so an intention
    /// change drains only the connections of the sources it affects. Empty for HTTP-family
    /// destinations (their RBAC is per request).
    pub mesh_sources: Arc<Vec<String>>,
    pub upstreams: Vec<UpstreamSnapshot>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct PublicListener {
    pub address: String,
    pub port: u16,
    pub protocol: String,
    pub local_address: String,
    pub local_port: u16,
    pub local_connect_timeout_ms: u64,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Leaf {
    pub cert_pem: String,
    pub private_key_pem: String,
}

/// The intentions for the destination, highest precedence first, as RBAC needs them.
#[derive(Clone, Debug, PartialEq)]
pub struct Intentions {
    pub default_allow: bool,
    pub rules: Vec<IntentionRule>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IntentionRule {
    /// Source service name, or `*`.
    pub source: String,
    pub precedence: u32,
    pub action: RuleAction,
}

#[derive(Clone, Debug, PartialEq)]
pub enum RuleAction {
    Allow,
    Deny,
    /// L7 permissions in order; the first match decides.
    Permissions(Vec<Permission>),
}

#[derive(Clone, Debug, PartialEq)]
pub struct Permission {
    pub allow: bool,
    pub path_exact: String,
    pub path_prefix: String,
    pub path_regex: String,
    pub methods: Vec<String>,
    pub headers: Vec<HeaderRule>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct HeaderRule {
    pub name: String,
    pub present: bool,
    pub exact: String,
    pub prefix: String,
    pub suffix: String,
    pub contains: String,
    pub regex: String,
    pub invert: bool,
    pub ignore_case: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct UpstreamSnapshot {
    /// The upstream's Envoy id: its destination name.
    pub id: String,
    pub bind_address: String,
    pub bind_port: u16,
    /// Shared by every proxy with the same upstream (see `Shared`).
    pub chain: Arc<Chain>,
    /// Healthy endpoints per chain target id, shared likewise.
    pub endpoints: BTreeMap<String, Arc<Vec<Endpoint>>>,
}

/// Why no snapshot can be made (yet) for a proxy id.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum NotReady {
    /// No connect-proxy with this id is registered on this node.
    UnknownProxy,
    /// The CA has not bootstrapped yet, or the leaf is not issued yet.
    WaitingForCertificate,
    /// An upstream's chain does not compile (a config entry refers to something missing).
    Chain(chain::ChainError),
}

/// Inputs that are not in the tables.
pub struct Context<'a> {
    pub node: &'a str,
    pub datacenter: &'a str,
    pub default_policy: DefaultPolicy,
}

/// The parts of snapshots that many proxies have in common (an upstream's compiled chain, a
/// target's healthy endpoints, the CA roots), computed once per version of the tables and
/// shared. Without it, a change that touches every proxy (a splitter used by all of them)
/// compiles the same chain and filters the same instances once per proxy.
#[derive(Default)]
pub struct Shared {
    /// The tables the entries were computed from; held so the pointer cannot be reused.
    tables: Option<Arc<Tables>>,
    chains: HashMap<(String, chain::Overrides), Result<Arc<Chain>, chain::ChainError>>,
    endpoints: HashMap<String, Arc<Vec<Endpoint>>>,
    roots_pem: Option<Arc<Vec<String>>>,
    /// Per destination service, the services whose sidecars reach it through an upstream.
    sources: Option<Arc<HashMap<String, Arc<Vec<String>>>>>,
}

impl Shared {
    /// Forgets everything computed from other tables than `tables`.
    fn for_tables(&mut self, tables: &Arc<Tables>) {
        if !self
            .tables
            .as_ref()
            .is_some_and(|held| Arc::ptr_eq(held, tables))
        {
            *self = Shared {
                tables: Some(tables.clone()),
                ..Shared::default()
            };
        }
    }

    /// An upstream's compiled chain, compiled once per version of the tables.
    fn chain(
        &mut self,
        tables: &Tables,
        context: &chain::Context<'_>,
        upstream: &crate::types::connect::Upstream,
    ) -> Result<Arc<Chain>, chain::ChainError> {
        let config = parse_config(&upstream.config_json);
        let overrides = chain::Overrides {
            protocol: config_str(&config, "protocol")
                .unwrap_or_default()
                .to_string(),
            connect_timeout: config_u64(&config, "connect_timeout_ms")
                .map(std::time::Duration::from_millis),
            mesh_gateway_mode: String::new(),
        };
        self.chains
            .entry((upstream.destination_name.clone(), overrides))
            .or_insert_with_key(|(name, overrides)| {
                chain::compile(tables, name, context, overrides).map(Arc::new)
            })
            .clone()
    }

    /// For each service, the services whose sidecars reach it: every connect proxy's
    /// upstreams, followed through their chains to the services they target (a redirect or
    /// failover reaches another service than the one named). An upstream whose chain does
    /// not compile counts for the service it names.
    fn sources(
        &mut self,
        tables: &Arc<Tables>,
        context: &chain::Context<'_>,
    ) -> Arc<HashMap<String, Arc<Vec<String>>>> {
        if let Some(sources) = &self.sources {
            return sources.clone();
        }
        let mut by_destination: HashMap<String, std::collections::BTreeSet<String>> =
            HashMap::new();
        for (_, service) in tables.all_services() {
            let Some(proxy) = service
                .proxy
                .as_ref()
                .filter(|_| service.kind == "connect-proxy")
            else {
                continue;
            };
            for upstream in &proxy.upstreams {
                if upstream.destination_type == "prepared_query" {
                    continue;
                }
                let targets: Vec<String> = match self.chain(tables, context, upstream) {
                    Ok(chain) => chain.targets.values().map(|t| t.service.clone()).collect(),
                    Err(_) => vec![upstream.destination_name.clone()],
                };
                for target in targets {
                    by_destination
                        .entry(target)
                        .or_default()
                        .insert(proxy.destination_service_name.clone());
                }
            }
        }
        let sources: Arc<HashMap<_, _>> = Arc::new(
            by_destination
                .into_iter()
                .map(|(destination, sources)| {
                    (destination, Arc::new(sources.into_iter().collect()))
                })
                .collect(),
        );
        self.sources = Some(sources.clone());
        sources
    }
}

fn config_str<'a>(config: &'a Value, key: &str) -> Option<&'a str> {
    config
        .get(key)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
}

fn config_u64(config: &Value, key: &str) -> Option<u64> {
    match config.get(key)? {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

fn parse_config(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

/// The proxy registered under `proxy_id` on `node`.
pub fn find_proxy<'t>(tables: &'t Tables, node: &'t str, proxy_id: &str) -> Option<&'t Service> {
    tables
        .service(node, proxy_id)
        .filter(|service| service.kind == "connect-proxy")
}

/// Computes the snapshot for `proxy_id` from `tables` and its leaf certificate, taking the
/// parts other proxies share from `shared` (or putting them there).
pub fn compute(
    tables: &Arc<Tables>,
    context: &Context<'_>,
    shared: &Mutex<Shared>,
    proxy_id: &str,
    leaf: Option<&IssuedCert>,
) -> Result<Snapshot, NotReady> {
    let service = find_proxy(tables, context.node, proxy_id).ok_or(NotReady::UnknownProxy)?;
    let proxy = service.proxy.clone().unwrap_or_default();
    let ca = tables.ca().ok_or(NotReady::WaitingForCertificate)?;
    let leaf = leaf.ok_or(NotReady::WaitingForCertificate)?;
    let trust_domain = ca.trust_domain();
    let destination = proxy.destination_service_name.clone();
    let config = parse_config(&proxy.config_json);
    let protocol = config_str(&config, "protocol")
        .map(str::to_string)
        .unwrap_or_else(|| service_protocol(tables, &destination));
    let public = PublicListener {
        address: config_str(&config, "bind_address")
            .map(str::to_string)
            .unwrap_or_else(|| "0.0.0.0".into()),
        port: config_u64(&config, "bind_port")
            .and_then(|port| u16::try_from(port).ok())
            .unwrap_or(service.port),
        protocol,
        local_address: non_empty(&proxy.local_service_address, "127.0.0.1"),
        local_port: proxy.local_service_port,
        local_connect_timeout_ms: config_u64(&config, "local_connect_timeout_ms")
            .unwrap_or(LOCAL_CONNECT_TIMEOUT_MS),
    };
    let chain_context = chain::Context {
        datacenter: context.datacenter,
        trust_domain: &trust_domain,
    };
    let mut upstreams = Vec::new();
    for upstream in &proxy.upstreams {
        if upstream.destination_type == "prepared_query" {
            // Prepared queries do not exist yet; such an upstream gets no listener.
            continue;
        }
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.for_tables(tables);
        let chain = shared
            .chain(tables, &chain_context, upstream)
            .map_err(NotReady::Chain)?;
        let endpoints = chain
            .targets
            .iter()
            .map(|(id, target)| {
                let endpoints = shared
                    .endpoints
                    .entry(id.clone())
                    .or_insert_with(|| {
                        Arc::new(endpoints::healthy(tables, target, context.datacenter))
                    })
                    .clone();
                (id.clone(), endpoints)
            })
            .collect();
        drop(shared);
        upstreams.push(UpstreamSnapshot {
            id: upstream.destination_name.clone(),
            bind_address: non_empty(&upstream.local_bind_address, "127.0.0.1"),
            bind_port: upstream.local_bind_port,
            chain,
            endpoints,
        });
    }
    let roots_pem = {
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.for_tables(tables);
        shared
            .roots_pem
            .get_or_insert_with(|| {
                let mut roots: Vec<_> = ca.roots.iter().collect();
                // Active root first, then the rest by age: a stable order keeps versions
                // stable.
                roots.sort_by_key(|root| (!root.active, root.not_before_unix, root.id.clone()));
                Arc::new(roots.iter().map(|root| root.cert_pem.clone()).collect())
            })
            .clone()
    };
    let mesh_sources = if is_http(&public.protocol) {
        Arc::default()
    } else {
        let mut shared = shared.lock().unwrap_or_else(PoisonError::into_inner);
        shared.for_tables(tables);
        shared
            .sources(tables, &chain_context)
            .get(&destination)
            .cloned()
            .unwrap_or_default()
    };
    Ok(Snapshot {
        proxy_id: proxy_id.to_string(),
        service: destination.clone(),
        datacenter: context.datacenter.to_string(),
        trust_domain,
        public,
        leaf: Leaf {
            cert_pem: leaf.cert_pem.clone(),
            private_key_pem: leaf.private_key_pem.clone(),
        },
        roots_pem,
        intentions: intentions(tables, &destination, context.default_policy),
        mesh_sources,
        upstreams,
    })
}

/// Whether a service protocol is HTTP-family (HTTP connection managers, L7 intentions).
pub fn is_http(protocol: &str) -> bool {
    matches!(protocol, "http" | "http2" | "grpc")
}

fn non_empty(value: &str, default: &str) -> String {
    if value.is_empty() {
        default.to_string()
    } else {
        value.to_string()
    }
}

/// The destination's intentions in precedence order, one per source (the first wins).
fn intentions(tables: &Tables, destination: &str, default: DefaultPolicy) -> Intentions {
    let default_allow = match default {
        DefaultPolicy::Configured { allow } | DefaultPolicy::Acl { allow } => allow,
    };
    let mut seen = std::collections::HashSet::new();
    let mut rules = Vec::new();
    for found in intention::match_destination(tables, destination) {
        let source = found.source();
        if !seen.insert(source.clone()) {
            continue;
        }
        let action = found.with_source(|source| match &source.permissions {
            Some(permissions) if !permissions.is_empty() => RuleAction::Permissions(
                permissions
                    .iter()
                    .map(|permission| {
                        permission_rule(
                            permission.action == "allow",
                            permission.http.as_ref().cloned().unwrap_or_default(),
                        )
                    })
                    .collect(),
            ),
            _ if source.action == "allow" => RuleAction::Allow,
            _ => RuleAction::Deny,
        });
        rules.push(IntentionRule {
            source,
            precedence: found.precedence,
            action,
        });
    }
    Intentions {
        default_allow,
        rules,
    }
}

fn permission_rule(allow: bool, http: PermissionHttp) -> Permission {
    Permission {
        allow,
        path_exact: http.path_exact,
        path_prefix: http.path_prefix,
        path_regex: http.path_regex,
        methods: http.methods,
        headers: http
            .header
            .into_iter()
            .map(|header| HeaderRule {
                name: header.name,
                present: header.present,
                exact: header.exact,
                prefix: header.prefix,
                suffix: header.suffix,
                contains: header.contains,
                regex: header.regex,
                invert: header.invert,
                ignore_case: header.ignore_case,
            })
            .collect(),
    }
}

/// What a snapshot task waits on: any catalog or health change, any config entry, the CA.
/// Deliberately broad: recomputing a snapshot costs microseconds, and publishing only on a
/// real difference keeps Envoy from seeing spurious updates.
fn topics() -> Vec<(String, Match)> {
    vec![
        (SERVICES_TOPIC.to_string(), Match::Exact),
        (CHECKS_TOPIC.to_string(), Match::Exact),
        ("config/".to_string(), Match::Prefix),
        (CA_TOPIC.to_string(), Match::Exact),
    ]
}

pub type SnapshotReceiver = watch::Receiver<Result<Arc<Snapshot>, NotReady>>;
type SnapshotSender = Arc<watch::Sender<Result<Arc<Snapshot>, NotReady>>>;

/// One snapshot task per proxy id, started on first use and ended when its last subscriber
/// (an xDS stream) goes: a stream naming a proxy nobody registered leaves nothing behind.
pub struct Watcher {
    cluster: Cluster,
    leaves: Arc<LeafCache>,
    node: String,
    datacenter: String,
    default_policy: DefaultPolicy,
    tasks: Tasks,
    proxies: Mutex<HashMap<String, SnapshotSender>>,
    shared: Mutex<Shared>,
}

impl Watcher {
    pub fn new(
        cluster: Cluster,
        leaves: Arc<LeafCache>,
        node: String,
        datacenter: String,
        default_policy: DefaultPolicy,
        tasks: Tasks,
    ) -> Arc<Watcher> {
        Arc::new(Watcher {
            cluster,
            leaves,
            node,
            datacenter,
            default_policy,
            tasks,
            proxies: Mutex::new(HashMap::new()),
            shared: Mutex::new(Shared::default()),
        })
    }

    /// The snapshots of `proxy_id`, current first.
    pub fn subscribe(self: &Arc<Self>, proxy_id: &str) -> SnapshotReceiver {
        let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sender) = proxies.get(proxy_id) {
            return sender.subscribe();
        }
        let (sender, receiver) = watch::channel(Err(NotReady::UnknownProxy));
        let sender = Arc::new(sender);
        proxies.insert(proxy_id.to_string(), sender.clone());
        let watcher = self.clone();
        let proxy_id = proxy_id.to_string();
        self.tasks.spawn_graceful("proxycfg.watcher", async move {
            watcher.maintain(proxy_id, sender).await
        });
        receiver
    }

    /// How many proxies have a snapshot task.
    pub fn watched(&self) -> usize {
        self.proxies
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Takes `proxy_id` out of the map if its last subscriber is gone (checked under the
    /// map's lock, so nobody subscribes in between); false if someone still listens.
    fn retire(&self, proxy_id: &str, sender: &SnapshotSender) -> bool {
        let mut proxies = self.proxies.lock().unwrap_or_else(PoisonError::into_inner);
        if sender.receiver_count() > 0 {
            return false;
        }
        if proxies
            .get(proxy_id)
            .is_some_and(|held| Arc::ptr_eq(held, sender))
        {
            proxies.remove(proxy_id);
        }
        true
    }

    fn context(&self) -> Context<'_> {
        Context {
            node: &self.node,
            datacenter: &self.datacenter,
            default_policy: self.default_policy,
        }
    }

    async fn maintain(self: Arc<Self>, proxy_id: String, sender: SnapshotSender) {
        let mut leaf: Option<watch::Receiver<Option<Arc<IssuedCert>>>> = None;
        let mut leaf_service = String::new();
        loop {
            // Register interest before reading so that a change in between is not missed.
            let guard = self.cluster.watch(&topics());
            let tables = self.cluster.snapshot();
            let service = find_proxy(&tables, &self.node, &proxy_id)
                .and_then(|service| service.proxy.as_ref())
                .map(|proxy: &ServiceProxy| proxy.destination_service_name.clone());
            if let Some(service) = &service {
                if *service != leaf_service {
                    leaf = Some(self.leaves.subscribe(service));
                    leaf_service = service.clone();
                }
            }
            let cert = leaf
                .as_mut()
                .and_then(|receiver| receiver.borrow_and_update().clone());
            let next = compute(
                &tables,
                &self.context(),
                &self.shared,
                &proxy_id,
                cert.as_deref(),
            );
            sender.send_if_modified(|current| {
                let changed = match (&*current, &next) {
                    (Ok(old), Ok(new)) => **old != *new,
                    (old, new) => old.as_ref().err() != new.as_ref().err(),
                };
                if changed {
                    *current = next.map(Arc::new);
                }
                changed
            });
            if let Err(NotReady::Chain(error)) = &*sender.borrow() {
                tracing::warn!(proxy = %proxy_id, %error, "cannot build the proxy's configuration");
            }
            tokio::select! {
                _ = guard.changed() => {}
                closed = async {
                    match leaf.as_mut() {
                        Some(receiver) => receiver.changed().await.is_err(),
                        None => std::future::pending().await,
                    }
                } => if closed { return },
                _ = sender.closed() => {
                    if self.retire(&proxy_id, &sender) {
                        return;
                    }
                }
                _ = self.tasks.shutdown().cancelled() => return,
            }
        }
    }
}
