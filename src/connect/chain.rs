//! The discovery chain: a service's router -> splitter -> resolver graph compiled into
//! Consul's shape (nodes keyed `<type>:<name>`, targets keyed by target id). The xDS server
//! turns the same structure into routes and clusters, so HTTP shows exactly what Envoy gets.
//!
//! Routers and splitters only apply to HTTP-family protocols (writes enforce this); a tcp
//! chain is its resolver alone.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

use super::entry::{duration_value, service_protocol};
use crate::state::Tables;
pub use crate::types::chain::{
    weight_json, Chain, FailoverNode, Node, ResolverNode, RouteNode, SplitNode, Target,
    TargetSubset,
};
use crate::types::config_entry::{self as ce, Typed};

/// Consul's default upstream connect timeout.
const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Nesting limit for splitters and redirects, so a cycle is an error, not a hang.
const MAX_DEPTH: usize = 16;

/// Overrides a caller may apply (`POST /v1/discovery-chain/:service`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Overrides {
    pub protocol: String,
    pub connect_timeout: Option<Duration>,
    pub mesh_gateway_mode: String,
}

impl Overrides {
    fn is_empty(&self) -> bool {
        *self == Overrides::default()
    }

    /// A short stable digest, Consul's `CustomizationHash` ("" without overrides).
    fn hash(&self) -> String {
        if self.is_empty() {
            return String::new();
        }
        let text = format!(
            "{}|{:?}|{}",
            self.protocol, self.connect_timeout, self.mesh_gateway_mode
        );
        // FNV-1a: stable across builds and platforms, unlike std's hasher.
        let hash = text.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
        });
        format!("{:08x}", hash >> 32)
    }
}

/// Where the chain is compiled: this datacenter and the mesh's trust domain.
pub struct Context<'a> {
    pub datacenter: &'a str,
    pub trust_domain: &'a str,
}

/// Reads the typed config entries a chain is compiled from.
struct Entries<'a> {
    tables: &'a Tables,
}

impl Entries<'_> {
    fn get(&self, kind: &str, name: &str) -> Option<std::sync::Arc<Typed>> {
        self.tables
            .config_entry(kind, name)
            .map(|entry| entry.typed())
    }

    fn resolver(&self, service: &str) -> Option<ce::ServiceResolver> {
        match self.get(ce::SERVICE_RESOLVER, service)?.as_ref() {
            Typed::Resolver(resolver) => Some(resolver.clone()),
            _ => None,
        }
    }

    fn splitter(&self, service: &str) -> Option<ce::ServiceSplitter> {
        match self.get(ce::SERVICE_SPLITTER, service)?.as_ref() {
            Typed::Splitter(splitter) => Some(splitter.clone()),
            _ => None,
        }
    }

    fn router(&self, service: &str) -> Option<(ce::ServiceRouter, Value)> {
        let typed = self.get(ce::SERVICE_ROUTER, service)?;
        let Typed::Router(router) = typed.as_ref() else {
            return None;
        };
        // The routes as written, to echo each definition back in the chain.
        let json = self
            .tables
            .config_entry(ce::SERVICE_ROUTER, service)
            .map(|entry| entry.json.clone())
            .unwrap_or_default();
        let routes = serde_json::from_str::<Value>(&json)
            .ok()
            .and_then(|json| json.get("Routes").cloned())
            .unwrap_or(Value::Array(Vec::new()));
        Some((router.clone(), routes))
    }
}

struct Compiler<'a> {
    entries: Entries<'a>,
    context: &'a Context<'a>,
    overrides: &'a Overrides,
    nodes: BTreeMap<String, Node>,
    targets: BTreeMap<String, Target>,
    http: bool,
}

/// Target id, `[<subset>.]<service>.<namespace>.<partition>.<dc>`.
fn target_id(service: &str, subset: &str, datacenter: &str) -> String {
    let base = format!("{service}.default.default.{datacenter}");
    if subset.is_empty() {
        base
    } else {
        format!("{subset}.{base}")
    }
}

/// Upstream SNI and cluster name, `[<subset>.]<service>.default.<dc>.internal.<td>`.
pub fn sni(service: &str, subset: &str, datacenter: &str, trust_domain: &str) -> String {
    let base = format!("{service}.default.{datacenter}.internal.{trust_domain}");
    if subset.is_empty() {
        base
    } else {
        format!("{subset}.{base}")
    }
}

impl Compiler<'_> {
    /// The node a (service, subset) destination starts at: its splitter when it has one and no
    /// subset is named, else its resolver.
    fn destination(&mut self, service: &str, subset: &str, depth: usize) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "discovery chain for {service:?} nests splitters or redirects more than {MAX_DEPTH} deep"
            ));
        }
        if self.http && subset.is_empty() {
            if let Some(splitter) = self.entries.splitter(service) {
                return self.splitter(service, &splitter, depth);
            }
        }
        self.resolver(service, subset, self.context.datacenter, depth)
    }

    fn splitter(
        &mut self,
        service: &str,
        splitter: &ce::ServiceSplitter,
        depth: usize,
    ) -> Result<String, String> {
        let name = format!("{service}.default.default");
        let key = format!("splitter:{name}");
        if self.nodes.contains_key(&key) {
            return Ok(key);
        }
        let mut splits = Vec::new();
        for split in &splitter.splits {
            let split_service = if split.service.is_empty() {
                service
            } else {
                split.service.as_str()
            };
            // A split to the splitter's own service without a subset means its resolver,
            // not the splitter again.
            let next = if split_service == service && split.service_subset.is_empty() {
                self.resolver(service, "", self.context.datacenter, depth + 1)?
            } else {
                self.destination(split_service, &split.service_subset, depth + 1)?
            };
            splits.push(SplitNode {
                definition: split_definition(split),
                weight: split.weight,
                next_node: next,
            });
        }
        self.nodes.insert(
            key.clone(),
            Node {
                r#type: "splitter",
                name,
                routes: None,
                splits: Some(splits),
                resolver: None,
                load_balancer: None,
            },
        );
        Ok(key)
    }

    fn resolver(
        &mut self,
        service: &str,
        subset: &str,
        datacenter: &str,
        depth: usize,
    ) -> Result<String, String> {
        if depth > MAX_DEPTH {
            return Err(format!(
                "discovery chain for {service:?} nests splitters or redirects more than {MAX_DEPTH} deep"
            ));
        }
        let entry = self.entries.resolver(service);
        if let Some(redirect) = entry.as_ref().and_then(|entry| entry.redirect.clone()) {
            let to_service = if redirect.service.is_empty() {
                service
            } else {
                &redirect.service
            };
            let to_dc = if redirect.datacenter.is_empty() {
                datacenter
            } else {
                &redirect.datacenter
            };
            return self.resolver(to_service, &redirect.service_subset, to_dc, depth + 1);
        }
        let subset = match (&entry, subset) {
            (Some(entry), "") => entry.default_subset.clone(),
            _ => subset.to_string(),
        };
        let definition = match (&entry, subset.as_str()) {
            (_, "") => None,
            (Some(entry), subset) => Some(entry.subsets.get(subset).cloned().ok_or_else(|| {
                format!("service {service:?} does not have a subset named {subset:?}")
            })?),
            (None, subset) => {
                return Err(format!(
                    "service {service:?} does not have a subset named {subset:?}"
                ))
            }
        };
        let id = target_id(service, &subset, datacenter);
        let key = format!("resolver:{id}");
        if self.nodes.contains_key(&key) {
            return Ok(key);
        }
        let connect_timeout = match (&self.overrides.connect_timeout, &entry) {
            (Some(timeout), _) => *timeout,
            (None, Some(entry)) => match &entry.connect_timeout {
                Some(value) => match duration_value("ConnectTimeout", value)
                    .map_err(|error| error.to_string())?
                {
                    zero if zero.is_zero() => DEFAULT_CONNECT_TIMEOUT,
                    timeout => timeout,
                },
                None => DEFAULT_CONNECT_TIMEOUT,
            },
            (None, None) => DEFAULT_CONNECT_TIMEOUT,
        };
        let request_timeout = match entry
            .as_ref()
            .and_then(|entry| entry.request_timeout.as_ref())
        {
            Some(value) => {
                Some(duration_value("RequestTimeout", value).map_err(|error| error.to_string())?)
                    .filter(|t| !t.is_zero())
            }
            None => None,
        };
        let target = self.target(service, &subset, datacenter, definition, connect_timeout);
        let failover = match &entry {
            Some(entry) => {
                let rule = entry
                    .failover
                    .get(if subset.is_empty() {
                        "*"
                    } else {
                        subset.as_str()
                    })
                    .or_else(|| entry.failover.get("*"));
                match rule {
                    Some(rule) => Some(self.failover(service, &subset, rule, connect_timeout)?),
                    None => None,
                }
            }
            None => None,
        };
        self.nodes.insert(
            key.clone(),
            Node {
                r#type: "resolver",
                name: id,
                routes: None,
                splits: None,
                resolver: Some(ResolverNode {
                    connect_timeout,
                    request_timeout,
                    default: entry.is_none(),
                    target,
                    failover,
                }),
                load_balancer: entry.as_ref().and_then(|entry| entry.load_balancer.clone()),
            },
        );
        Ok(key)
    }

    fn target(
        &mut self,
        service: &str,
        subset: &str,
        datacenter: &str,
        definition: Option<ce::ResolverSubset>,
        connect_timeout: Duration,
    ) -> String {
        let id = target_id(service, subset, datacenter);
        let name = sni(service, subset, datacenter, self.context.trust_domain);
        let mesh_gateway = if self.overrides.mesh_gateway_mode.is_empty() {
            serde_json::json!({})
        } else {
            serde_json::json!({"Mode": self.overrides.mesh_gateway_mode})
        };
        self.targets.entry(id.clone()).or_insert_with(|| Target {
            id: id.clone(),
            service: service.to_string(),
            service_subset: subset.to_string(),
            namespace: "default".into(),
            partition: "default".into(),
            datacenter: datacenter.to_string(),
            mesh_gateway,
            subset: definition
                .map(|definition| TargetSubset {
                    filter: definition.filter,
                    only_passing: definition.only_passing,
                })
                .unwrap_or(TargetSubset {
                    filter: String::new(),
                    only_passing: false,
                }),
            transparent_proxy: serde_json::json!({}),
            connect_timeout,
            sni: name.clone(),
            name,
        });
        id
    }

    fn failover(
        &mut self,
        service: &str,
        subset: &str,
        rule: &ce::ResolverFailover,
        connect_timeout: Duration,
    ) -> Result<FailoverNode, String> {
        let mut destinations: Vec<(String, String, String)> = Vec::new();
        if !rule.targets.is_empty() {
            for target in &rule.targets {
                destinations.push((
                    or(&target.service, service),
                    target.service_subset.clone(),
                    or(&target.datacenter, self.context.datacenter),
                ));
            }
        } else {
            let to_service = or(&rule.service, service);
            let to_subset = if rule.service_subset.is_empty() && rule.service.is_empty() {
                subset.to_string()
            } else {
                rule.service_subset.clone()
            };
            if rule.datacenters.is_empty() {
                destinations.push((to_service, to_subset, self.context.datacenter.to_string()));
            } else {
                for datacenter in &rule.datacenters {
                    destinations.push((to_service.clone(), to_subset.clone(), datacenter.clone()));
                }
            }
        }
        let mut targets = Vec::new();
        for (to_service, to_subset, to_dc) in destinations {
            let definition = match self.entries.resolver(&to_service) {
                Some(resolver) if !to_subset.is_empty() => {
                    Some(resolver.subsets.get(&to_subset).cloned().ok_or_else(|| {
                        format!("service {to_service:?} does not have a subset named {to_subset:?}")
                    })?)
                }
                _ => None,
            };
            targets.push(self.target(&to_service, &to_subset, &to_dc, definition, connect_timeout));
        }
        Ok(FailoverNode { targets })
    }

    fn router(
        &mut self,
        service: &str,
        router: &ce::ServiceRouter,
        definitions: Value,
    ) -> Result<String, String> {
        let name = format!("{service}.default.default");
        let key = format!("router:{name}");
        let mut routes = Vec::new();
        for (i, route) in router.routes.iter().enumerate() {
            let (to_service, to_subset) = match &route.destination {
                Some(destination) => (
                    or(&destination.service, service),
                    destination.service_subset.clone(),
                ),
                None => (service.to_string(), String::new()),
            };
            let next = self.destination(&to_service, &to_subset, 1)?;
            routes.push(RouteNode {
                definition: definitions.get(i).cloned().unwrap_or(Value::Null),
                next_node: next,
            });
        }
        // Consul appends a catch-all to the service itself.
        let next = self.destination(service, "", 1)?;
        routes.push(RouteNode {
            definition: serde_json::json!({
                "Match": {"HTTP": {"PathPrefix": "/"}},
                "Destination": {"Service": service},
            }),
            next_node: next,
        });
        self.nodes.insert(
            key.clone(),
            Node {
                r#type: "router",
                name,
                routes: Some(routes),
                splits: None,
                resolver: None,
                load_balancer: None,
            },
        );
        Ok(key)
    }
}

/// A split as Consul echoes it: Weight always, the rest only when set.
fn split_definition(split: &ce::Split) -> Value {
    let mut out = serde_json::Map::new();
    out.insert("Weight".into(), weight_json(split.weight));
    for (key, value) in [
        ("Service", &split.service),
        ("ServiceSubset", &split.service_subset),
        ("Namespace", &split.namespace),
        ("Partition", &split.partition),
    ] {
        if !value.is_empty() {
            out.insert(key.into(), Value::String(value.clone()));
        }
    }
    for (key, value) in [
        ("RequestHeaders", &split.request_headers),
        ("ResponseHeaders", &split.response_headers),
    ] {
        if let Some(value) = value {
            out.insert(key.into(), value.clone());
        }
    }
    Value::Object(out)
}

fn or(value: &str, fallback: &str) -> String {
    if value.is_empty() {
        fallback.to_string()
    } else {
        value.to_string()
    }
}

/// Why a chain does not compile (a splitter naming a subset its resolver lacks, a redirect
/// loop, ...), in Consul's words. `graph` turns it into an `EntryError` (the write is
/// refused); a proxy whose upstream's chain does not compile keeps its last configuration;
/// the discovery-chain endpoint answers it with a 500, as Consul does.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ChainError(String);

/// Compiles `service`'s chain from the entries in `tables`.
pub fn compile(
    tables: &Tables,
    service: &str,
    context: &Context<'_>,
    overrides: &Overrides,
) -> Result<Chain, ChainError> {
    compile_chain(tables, service, context, overrides).map_err(ChainError)
}

fn compile_chain(
    tables: &Tables,
    service: &str,
    context: &Context<'_>,
    overrides: &Overrides,
) -> Result<Chain, String> {
    let protocol = if overrides.protocol.is_empty() {
        service_protocol(tables, service)
    } else {
        overrides.protocol.clone()
    };
    let http = matches!(protocol.as_str(), "http" | "http2" | "grpc");
    let mut compiler = Compiler {
        entries: Entries { tables },
        context,
        overrides,
        nodes: BTreeMap::new(),
        targets: BTreeMap::new(),
        http,
    };
    let router = if http {
        compiler.entries.router(service)
    } else {
        None
    };
    let start_node = match router {
        Some((router, definitions)) => compiler.router(service, &router, definitions)?,
        None => compiler.destination(service, "", 0)?,
    };
    let default = compiler.nodes.values().all(|node| {
        node.resolver
            .as_ref()
            .is_some_and(|resolver| resolver.default)
    });
    Ok(Chain {
        service_name: service.to_string(),
        namespace: "default".into(),
        partition: "default".into(),
        datacenter: context.datacenter.to_string(),
        customization_hash: overrides.hash(),
        default,
        protocol,
        start_node,
        nodes: compiler.nodes,
        targets: compiler.targets,
        auto_virtual_ips: None,
        manual_virtual_ips: None,
    })
}

#[cfg(test)]
#[path = "chain_tests.rs"]
mod tests;
