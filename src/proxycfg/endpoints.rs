//! The endpoints of one discovery-chain target: the instances that take mesh traffic for the
//! target's service (its sidecar proxies and Connect-native instances) that are healthy
//! enough, with Consul's weights.

use serde_json::json;

use crate::api::catalog::{agent_service, health_check, node as node_json};
use crate::connect::chain::Target;
use crate::filter::Filter;
use crate::state::Tables;
use crate::types::{HealthStatus, Node, Service};

/// Envoy's largest load-balancing weight Consul uses.
const MAX_WEIGHT: u32 = 128;

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Endpoint {
    pub address: String,
    pub port: u16,
    pub weight: u32,
}

/// The target's endpoints, sorted. An instance with a critical check (its own, its node's, or
/// with `OnlyPassing` a warning) is left out, so Envoy never routes to it; a warning instance
/// gets `Weights.Warning`; a weight below 1 leaves it out as Consul marks it unhealthy.
pub fn healthy(tables: &Tables, target: &Target, datacenter: &str) -> Vec<Endpoint> {
    let filter = if target.subset.filter.is_empty() {
        None
    } else {
        // The filter was validated when the resolver was written.
        Filter::parse(&target.subset.filter).ok()
    };
    let mut endpoints: Vec<Endpoint> = tables
        .connect_nodes(&target.service)
        .filter_map(|(node, service)| {
            let weight = match tables.instance_health(&node.name, &service.id) {
                HealthStatus::Passing => service.weights.passing,
                HealthStatus::Warning if !target.subset.only_passing => service.weights.warning,
                _ => return None,
            };
            if weight < 1 {
                return None;
            }
            if let Some(filter) = &filter {
                if !filter.matches(&instance_json(tables, node, service, datacenter)) {
                    return None;
                }
            }
            let address = if service.address.is_empty() {
                node.address.clone()
            } else {
                service.address.clone()
            };
            Some(Endpoint {
                address,
                port: service.port,
                weight: weight.min(MAX_WEIGHT),
            })
        })
        .collect();
    endpoints.sort();
    endpoints
}

/// The instance as `/v1/health/connect` shows it, which is what subset filters are written
/// against (`Service.Meta.version == v2`).
fn instance_json(
    tables: &Tables,
    node: &Node,
    service: &Service,
    datacenter: &str,
) -> serde_json::Value {
    let checks: Vec<_> = tables
        .instance_checks(&node.name, &service.id)
        .map(health_check)
        .collect();
    json!({
        "Node": node_json(node),
        "Service": agent_service(service, datacenter),
        "Checks": checks,
    })
}
