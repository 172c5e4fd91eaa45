//! The internal endpoints Consul's web UI reads, in Consul's shapes: `/v1/internal/ui/services`
//! (one summary per service: instances, nodes, tags, check counts), `/v1/internal/ui/nodes`
//! and `/v1/internal/ui/node/<name>` (each node with its services and checks). All block on the
//! catalog and leave out what the token may not read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply, Visible};
use super::AppState;
use crate::api::catalog::{AgentServiceJson, HealthCheckJson};
use crate::connect::intention;
use crate::state::catalog::{node_topic, CHECKS_TOPIC, NODES_TOPIC, SERVICES_TOPIC};
use crate::state::connect::kind_topic;
use crate::state::{Match, Tables};
use crate::types::config_entry::SERVICE_INTENTIONS;
use crate::types::{Check, HealthStatus, Node};

/// Every catalog change: a summary counts nodes, services and checks.
fn catalog_topics() -> Vec<(String, Match)> {
    [NODES_TOPIC, SERVICES_TOPIC, CHECKS_TOPIC]
        .into_iter()
        .map(|topic| (topic.to_string(), Match::Exact))
        .collect()
}

fn catalog_index(tables: &Tables) -> u64 {
    let indexes = tables.table_index();
    indexes.nodes.max(indexes.services).max(indexes.checks)
}

/// Consul's `ServiceListingSummary` (its `ServiceSummary` flattened in).
#[derive(Serialize, Default)]
#[serde(rename_all = "PascalCase")]
struct ServiceSummary<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'a str,
    name: &'a str,
    datacenter: &'a str,
    tags: Option<BTreeSet<&'a str>>,
    nodes: BTreeSet<&'a str>,
    external_sources: Option<Vec<&'a str>>,
    instance_count: usize,
    checks_passing: usize,
    checks_warning: usize,
    checks_critical: usize,
    gateway_config: GatewayConfig,
    transparent_proxy: bool,
    connect_native: bool,
    connected_with_proxy: bool,
    connected_with_gateway: bool,
    /// Each check once (a node check counts once per service on its node), by (node, id).
    #[serde(skip)]
    checks: BTreeMap<(&'a str, &'a str), HealthStatus>,
}

/// Gateways are not built, so always `{}` (both fields are omitted when empty).
#[derive(Serialize, Default)]
struct GatewayConfig {}

/// One summary per service name the token may see, sorted by name. A sidecar's checks also
/// count for the service it fronts, and mark it `ConnectedWithProxy`.
fn summarize<'a>(
    tables: &'a Tables,
    visible: &Visible,
    datacenter: &'a str,
) -> BTreeMap<&'a str, ServiceSummary<'a>> {
    let mut summaries: BTreeMap<&str, ServiceSummary> = BTreeMap::new();
    for (node_name, service) in tables.all_services() {
        if !visible.instance(node_name, &service.name) {
            continue;
        }
        let checks: Vec<&Check> = tables
            .instance_checks(node_name, &service.id)
            .filter(|check| visible.check(check))
            .collect();
        let summary = summaries
            .entry(&service.name)
            .or_insert_with(|| ServiceSummary {
                name: &service.name,
                ..ServiceSummary::default()
            });
        summary.kind = &service.kind;
        summary.datacenter = datacenter;
        summary.instance_count += 1;
        summary.nodes.insert(node_name);
        summary.connect_native |= service.connect_native;
        if !service.tags.is_empty() {
            summary
                .tags
                .get_or_insert_with(BTreeSet::new)
                .extend(service.tags.iter().map(String::as_str));
        }
        if let Some(source) = service.meta.get("external-source") {
            let sources = summary.external_sources.get_or_insert_with(Vec::new);
            if !sources.contains(&source.as_str()) {
                sources.push(source);
            }
        }
        for check in &checks {
            summary
                .checks
                .insert((node_name, &check.check_id), check.status);
        }
        // A sidecar's checks are its service's too.
        if let Some(proxy) = service
            .proxy
            .as_ref()
            .filter(|_| service.kind == "connect-proxy")
        {
            let fronted = summaries
                .entry(&proxy.destination_service_name)
                .or_insert_with(|| ServiceSummary {
                    name: &proxy.destination_service_name,
                    ..ServiceSummary::default()
                });
            fronted.connected_with_proxy = true;
            fronted.transparent_proxy = proxy.mode == "transparent";
            for check in &checks {
                fronted
                    .checks
                    .insert((node_name, &check.check_id), check.status);
            }
        }
    }
    for summary in summaries.values_mut() {
        for status in summary.checks.values() {
            match status {
                HealthStatus::Passing => summary.checks_passing += 1,
                HealthStatus::Warning => summary.checks_warning += 1,
                HealthStatus::Critical | HealthStatus::Maintenance => summary.checks_critical += 1,
            }
        }
    }
    summaries
}

/// `GET /v1/internal/ui/services`: every service's summary, sorted by name.
pub async fn services(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let datacenter = state.config.datacenter.clone();
    reply::blocking_filtered(&state, &options, catalog_topics(), &visible, |tables| {
        let listed: Vec<ServiceSummary> = summarize(tables, &visible, &datacenter)
            .into_values()
            .collect();
        Ok((catalog_index(tables), reply::list(&options, &listed)))
    })
    .await
}

/// Consul's `ServiceTopology`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Topology<'a> {
    protocol: String,
    transparent_proxy: bool,
    upstreams: Vec<Neighbour<'a>>,
    downstreams: Vec<Neighbour<'a>>,
    #[serde(rename = "FilteredByACLs")]
    filtered_by_acls: bool,
}

/// Consul's `ServiceTopologySummary`: a neighbour's summary, why it is one, and what the
/// intentions decide for the connection.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Neighbour<'a> {
    #[serde(flatten)]
    summary: ServiceSummary<'a>,
    source: &'static str,
    intention: IntentionDecision,
}

/// Consul's `IntentionDecisionSummary`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct IntentionDecision {
    allowed: bool,
    has_permissions: bool,
    external_source: &'static str,
    has_exact: bool,
    default_allow: bool,
}

fn decision(
    tables: &Tables,
    source: &str,
    destination: &str,
    default: intention::DefaultPolicy,
) -> IntentionDecision {
    let matched = intention::matching(tables, source, destination);
    let default_allow = match default {
        intention::DefaultPolicy::Configured { allow }
        | intention::DefaultPolicy::Acl { allow } => allow,
    };
    IntentionDecision {
        allowed: intention::decide(tables, source, destination, default).allowed,
        has_permissions: matched.as_ref().is_some_and(|found| found.is_l7()),
        external_source: "",
        has_exact: matched
            .as_ref()
            .is_some_and(|found| found.source() != "*" && found.destination() != "*"),
        default_allow,
    }
}

/// `GET /v1/internal/ui/service-topology/<name>?kind=`: the services `name` calls (the
/// upstreams its sidecars declare, then those an exact intention lets it reach) and those that
/// call it (the sidecars declaring it, then the sources of exact intentions to it), each with
/// its summary and the intentions' decision for the connection.
pub async fn topology(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    match call.get("kind") {
        None => return Err(ApiError::BadRequest("Missing service kind".into())),
        Some("" | "ingress-gateway" | "api-gateway") => {}
        Some(other) => {
            return Err(ApiError::BadRequest(format!(
                "Unsupported service kind {other:?}"
            )))
        }
    }
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let datacenter = state.config.datacenter.clone();
    let default = super::intention::default_policy(&state);
    let mut topics = catalog_topics();
    topics.push((kind_topic(SERVICE_INTENTIONS), Match::Exact));
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        let mut upstreams: BTreeMap<String, &'static str> = BTreeMap::new();
        let mut downstreams: BTreeMap<String, &'static str> = BTreeMap::new();
        for (_, service) in tables.all_services() {
            let Some(proxy) = service.proxy.as_ref() else {
                continue;
            };
            let declared = proxy
                .upstreams
                .iter()
                .filter(|upstream| matches!(upstream.destination_type.as_str(), "" | "service"));
            for upstream in declared {
                if proxy.destination_service_name == name {
                    upstreams.insert(upstream.destination_name.clone(), REGISTRATION);
                }
                if upstream.destination_name == name {
                    downstreams.insert(proxy.destination_service_name.clone(), REGISTRATION);
                }
            }
        }
        for found in intention::match_source(tables, &name) {
            if found.source() == name && found.destination() != "*" {
                upstreams
                    .entry(found.destination().to_string())
                    .or_insert(SPECIFIC_INTENTION);
            }
        }
        for found in intention::match_destination(tables, &name) {
            if found.destination() == name && found.source() != "*" {
                downstreams
                    .entry(found.source())
                    .or_insert(SPECIFIC_INTENTION);
            }
        }
        let mut summaries = summarize(tables, &visible, &datacenter);
        let scope = Scope {
            tables,
            visible: &visible,
            datacenter: &datacenter,
            name: &name,
            default,
        };
        let body = Topology {
            protocol: crate::connect::entry::service_protocol(tables, &name),
            transparent_proxy: false,
            upstreams: scope.neighbours(&mut summaries, &upstreams, true),
            downstreams: scope.neighbours(&mut summaries, &downstreams, false),
            filtered_by_acls: visible.dropped(),
        };
        Ok((
            catalog_index(tables).max(tables.config_kind_index(SERVICE_INTENTIONS)),
            Reply::JsonBytes(reply::json_body(&body, options.pretty)),
        ))
    })
    .await
}

/// What a topology read is about: the service, the reader's view, and the default decision.
struct Scope<'a, 'r> {
    tables: &'a Tables,
    visible: &'r Visible,
    datacenter: &'a str,
    name: &'r str,
    default: intention::DefaultPolicy,
}

impl<'a> Scope<'a, '_> {
    /// The services of `listed` the token may see, each summarized (by name alone when it
    /// has no instances) with the intentions' decision for its connection with the service.
    fn neighbours(
        &self,
        summaries: &mut BTreeMap<&'a str, ServiceSummary<'a>>,
        listed: &'a BTreeMap<String, &'static str>,
        upstream: bool,
    ) -> Vec<Neighbour<'a>> {
        let mut found = Vec::new();
        for (other, source) in listed {
            if !self.visible.service(other) {
                continue;
            }
            let intention = match upstream {
                true => decision(self.tables, self.name, other, self.default),
                false => decision(self.tables, other, self.name, self.default),
            };
            let summary = summaries.remove(other.as_str()).unwrap_or_default();
            found.push(Neighbour {
                summary: ServiceSummary {
                    name: other,
                    datacenter: self.datacenter,
                    ..summary
                },
                source,
                intention,
            });
        }
        found
    }
}

const REGISTRATION: &str = "proxy-registration";
const SPECIFIC_INTENTION: &str = "specific-intention";

/// Consul's `NodeInfo`: a node with its services and checks.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NodeInfo<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    tagged_addresses: &'a BTreeMap<String, String>,
    meta: &'a BTreeMap<String, String>,
    services: Vec<AgentServiceJson<'a>>,
    checks: Vec<HealthCheckJson<'a>>,
}

fn node_info<'a>(
    tables: &'a Tables,
    node: &'a Node,
    visible: &Visible,
    datacenter: &'a str,
) -> NodeInfo<'a> {
    NodeInfo {
        id: &node.id,
        node: &node.name,
        address: &node.address,
        tagged_addresses: &node.tagged_addresses,
        meta: &node.meta,
        services: tables
            .node_services(&node.name)
            .filter(|service| visible.service(&service.name))
            .map(|service| AgentServiceJson::of(service, datacenter))
            .collect(),
        checks: tables
            .node_checks(&node.name)
            .filter(|check| visible.check(check))
            .map(HealthCheckJson::of)
            .collect(),
    }
}

/// `GET /v1/internal/ui/nodes`: every node the token may read, with its services and checks.
pub async fn nodes(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let datacenter = state.config.datacenter.clone();
    reply::blocking_filtered(&state, &options, catalog_topics(), &visible, |tables| {
        let nodes: Vec<NodeInfo> = tables
            .nodes()
            .filter(|node| visible.node(&node.name) && options.node_selected(node))
            .map(|node| node_info(tables, node, &visible, &datacenter))
            .collect();
        Ok((catalog_index(tables), reply::list(&options, &nodes)))
    })
    .await
}

/// `GET /v1/internal/ui/node/<name>`: one node as `nodes` lists it; 404 when it is not there.
pub async fn node(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let datacenter = state.config.datacenter.clone();
    let topics = vec![(node_topic(&name), Match::Exact)];
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        let found = tables.node(&name).filter(|node| visible.node(&node.name));
        let reply = match found {
            Some(node) => Reply::JsonBytes(reply::json_body(
                &node_info(tables, node, &visible, &datacenter),
                options.pretty,
            )),
            None => Reply::NotFound,
        };
        Ok((tables.node_index(&name), reply))
    })
    .await
    .map(IntoResponse::into_response)
}
