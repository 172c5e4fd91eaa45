//! A compiled discovery chain: a service's router → splitter → resolver graph as nodes keyed
//! `<type>:<name>` and targets keyed by target id, exactly as Consul shapes it. Plain data:
//! `connect::chain` compiles it, `proxycfg` and `xds` turn it into Envoy's routes and
//! clusters, and `api::chain` renders Consul's JSON for `/v1/discovery-chain`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_json::Value;

#[derive(Clone, Debug, PartialEq)]
pub struct Chain {
    pub service_name: String,
    pub namespace: String,
    pub partition: String,
    pub datacenter: String,
    /// Set when a caller overrode the protocol, timeout or gateway mode.
    pub customization_hash: String,
    /// Every node is a default resolver: the chain nobody configured.
    pub default: bool,
    pub protocol: String,
    pub start_node: String,
    pub nodes: BTreeMap<String, Node>,
    pub targets: BTreeMap<String, Target>,
    /// Consul allocates virtual IPs for transparent proxying; concord does not (yet), and
    /// says so with Consul's own empty value.
    pub auto_virtual_ips: Option<Vec<String>>,
    pub manual_virtual_ips: Option<Vec<String>>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Node {
    /// `router`, `splitter` or `resolver`.
    pub r#type: &'static str,
    pub name: String,
    pub routes: Option<Vec<RouteNode>>,
    pub splits: Option<Vec<SplitNode>>,
    pub resolver: Option<ResolverNode>,
    pub load_balancer: Option<Value>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct RouteNode {
    /// The route as written in the service-router (or the implicit catch-all).
    pub definition: Value,
    pub next_node: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct SplitNode {
    /// The split as written in the service-splitter.
    pub definition: Value,
    pub weight: f32,
    pub next_node: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct ResolverNode {
    pub connect_timeout: Duration,
    pub default: bool,
    pub request_timeout: Option<Duration>,
    pub target: String,
    pub failover: Option<FailoverNode>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct FailoverNode {
    pub targets: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Target {
    pub connect_timeout: Duration,
    pub id: String,
    pub service: String,
    pub service_subset: String,
    pub namespace: String,
    pub partition: String,
    pub datacenter: String,
    pub mesh_gateway: Value,
    pub subset: TargetSubset,
    pub transparent_proxy: Value,
    pub sni: String,
    pub name: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct TargetSubset {
    pub filter: String,
    pub only_passing: bool,
}

/// A weight in its shortest decimal form (`80`, `33.33`), as Go prints a float32: how a
/// split's weight appears in the definitions a chain echoes.
pub fn weight_json(weight: f32) -> Value {
    let text = format!("{weight}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}
