//! `/v1/catalog/*`: register and deregister through Raft; list nodes, services, the instances
//! of one service, and what one node runs, each blocking on exactly what it read.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::error::ApiError;
use super::instances::Instances;
use super::params::Call;
use super::reply::{self, Reply, Visible};
use super::AppState;
use crate::acl::Access;
use crate::api::catalog::{self as wire, DeregisterIn, RegisterContext, RegisterIn};
use crate::api::decode;
use crate::state::catalog::{node_topic, NODES_TOPIC, SERVICES_TOPIC};
use crate::state::Match;
use crate::types::{Command, CommandResult};

fn catalog_result(result: CommandResult) -> Result<(), ApiError> {
    match result {
        CommandResult::Catalog(Ok(())) => Ok(()),
        CommandResult::Catalog(Err(error)) => Err(error.into()),
        other => Err(ApiError::Internal(format!(
            "unexpected catalog result {other:?}"
        ))),
    }
}

pub async fn register(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let bytes = super::body::read_general(&state, &call, body).await?;
    let input: RegisterIn = decode::from_slice(&bytes)?;
    let context = RegisterContext {
        datacenter: &state.config.datacenter,
    };
    // Consul validates a registration in its Catalog RPC: a refusal is that RPC's 500.
    let request = input
        .into_request(&context)
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    identity.check(Access::NodeWrite(&request.node.name))?;
    if let Some(service) = &request.service {
        identity.check(Access::ServiceWrite(&service.name))?;
        if let Some(proxy) = &service.proxy {
            if !proxy.destination_service_name.is_empty() {
                identity.check(Access::ServiceWrite(&proxy.destination_service_name))?;
            }
        }
    }
    let (_, result) = state
        .cluster
        .write(Command::CatalogRegister(Box::new(request)))
        .await?;
    catalog_result(result)?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

pub async fn deregister(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let bytes = super::body::read_general(&state, &call, body).await?;
    let input: DeregisterIn = decode::from_slice(&bytes)?;
    let context = RegisterContext {
        datacenter: &state.config.datacenter,
    };
    // Consul validates a registration in its Catalog RPC: a refusal is that RPC's 500.
    let request = input
        .into_request(&context)
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    // One service goes with write on it; a check or the whole node needs the node's.
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    let tables = state.cluster.snapshot();
    let service_name = request.service_id.as_ref().and_then(|id| {
        tables
            .node_services(&request.node)
            .find(|service| service.id == *id)
            .map(|service| service.name.clone())
    });
    drop(tables);
    match service_name {
        Some(name) => identity.check(Access::ServiceWrite(&name))?,
        None => identity.check(Access::NodeWrite(&request.node))?,
    }
    let (_, result) = state
        .cluster
        .write(Command::CatalogDeregister(request))
        .await?;
    catalog_result(result)?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

/// Every datacenter the WAN pool knows (this one first, then by name).
pub async fn datacenters(State(state): State<Arc<AppState>>, call: Call) -> Response {
    reply::json(&json!(known_datacenters(&state).await), call.pretty(&state))
}

/// The datacenters `/v1/catalog/datacenters` lists. A client agent, which is in no WAN pool,
/// asks one of its servers.
pub async fn known_datacenters(state: &AppState) -> Vec<String> {
    if let Some(server) = state.cluster.server() {
        return server.federation.datacenters().await;
    }
    let local = state.config.datacenter.clone();
    let forward = crate::rpc::wire::HttpForward::get(&local, "/v1/catalog/datacenters", 10_000);
    match state.cluster.forward_http(forward).await {
        Ok(answer) if answer.status == 200 => serde_json::from_slice(&answer.body)
            .ok()
            .filter(|known: &Vec<String>| !known.is_empty())
            .unwrap_or_else(|| vec![local]),
        // No server to ask: this agent's own datacenter is all it knows.
        _ => vec![local],
    }
}

pub async fn nodes(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let topics = vec![(NODES_TOPIC.to_string(), Match::Exact)];
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        let nodes = tables
            .nodes()
            .filter(|node| visible.node(&node.name) && options.node_selected(node))
            .map(wire::node)
            .collect();
        let mut nodes = options.filter_list(nodes);
        if let Some(origin) = super::coordinate::near_coordinate(&state, &call, tables) {
            super::coordinate::sort_near(&mut nodes, origin, tables, |node| {
                node["Node"].as_str().unwrap_or_default()
            });
        }
        Ok((tables.table_index().nodes, Reply::Json(Value::Array(nodes))))
    })
    .await
}

pub async fn services(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let topics = vec![(SERVICES_TOPIC.to_string(), Match::Exact)];
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        // The filter applies to each instance (as a ServiceNode); the answer is the union of
        // the matching instances' tags per service name.
        let mut names: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for (node_name, service) in tables.all_services() {
            if !visible.service(&service.name) {
                continue;
            }
            if !tables
                .node(node_name)
                .is_some_and(|node| options.node_selected(node))
            {
                continue;
            }
            if let Some(filter) = &options.filter {
                let node = tables.node(node_name);
                let matches =
                    node.is_some_and(|node| filter.matches(&wire::service_node(node, service)));
                if !matches {
                    continue;
                }
            }
            names
                .entry(service.name.clone())
                .or_default()
                .extend(service.tags.iter().cloned());
        }
        let body: Map<String, Value> = names
            .into_iter()
            .map(|(name, tags)| (name, Value::from(tags.into_iter().collect::<Vec<_>>())))
            .collect();
        Ok((
            tables.table_index().services,
            Reply::Json(Value::Object(body)),
        ))
    })
    .await
}

pub async fn service(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    metrics::counter!(crate::telemetry::CATALOG_SERVICE_QUERY, "service" => name.clone())
        .increment(1);
    service_nodes(&state, Instances::Named(&name), call).await
}

/// `GET /v1/catalog/connect/:name`: the instances that take mesh traffic for `name` (its
/// sidecar proxies and Connect-native instances), as catalog service nodes.
pub async fn connect(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    service_nodes(&state, Instances::Connect(&name), call).await
}

async fn service_nodes(
    state: &AppState,
    which: Instances<'_>,
    call: Call,
) -> Result<Response, ApiError> {
    let (Instances::Named(name) | Instances::Connect(name)) = which;
    let _ = name;
    let options = call.read_options(state)?;
    let visible = Visible::of(state, &call)?;
    let tags: Vec<String> = call.all("tag").map(str::to_string).collect();
    reply::blocking_filtered(state, &options, which.topics(), &visible, |tables| {
        let instances = which
            .rows(tables, &tags)
            .filter(|(node, service)| visible.instance(&node.name, &service.name))
            .filter(|(node, _)| options.node_selected(node))
            .map(|(node, service)| wire::service_node(node, service))
            .collect();
        let mut instances = options.filter_list(instances);
        if let Some(origin) = super::coordinate::near_coordinate(state, &call, tables) {
            super::coordinate::sort_near(&mut instances, origin, tables, |instance| {
                instance["Node"].as_str().unwrap_or_default()
            });
        }
        Ok((which.index(tables), Reply::Json(Value::Array(instances))))
    })
    .await
}

/// How `/v1/catalog/node/:node` and `/v1/catalog/node-services/:node` shape a node's services:
/// a map by service id, or a list.
#[derive(Clone, Copy)]
enum NodeServicesShape {
    ById,
    List,
}

pub async fn node(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    node_view(&state, name, call, NodeServicesShape::ById).await
}

pub async fn node_services(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    node_view(&state, name, call, NodeServicesShape::List).await
}

/// One node and its services (the filter applies to each service); `null` for an unknown node.
async fn node_view(
    state: &AppState,
    name: String,
    call: Call,
    shape: NodeServicesShape,
) -> Result<Response, ApiError> {
    let options = call.read_options(state)?;
    let visible = Visible::of(state, &call)?;
    let datacenter = state.config.datacenter.clone();
    let topics = vec![(node_topic(&name), Match::Exact)];
    reply::blocking_filtered(state, &options, topics, &visible, |tables| {
        // A node the token may not read is answered as an unknown one, as Consul does.
        let body = match tables.node(&name).filter(|node| visible.node(&node.name)) {
            None => Value::Null,
            Some(node) => {
                let services = tables
                    .node_services(&name)
                    .filter(|service| visible.service(&service.name))
                    .map(|service| {
                        (
                            service.id.clone(),
                            wire::agent_service(service, &datacenter),
                        )
                    });
                let services = services.filter(|(_, service)| {
                    options
                        .filter
                        .as_ref()
                        .is_none_or(|filter| filter.matches(service))
                });
                let services = match shape {
                    NodeServicesShape::ById => Value::Object(services.collect::<Map<_, _>>()),
                    NodeServicesShape::List => {
                        Value::Array(services.map(|(_, service)| service).collect())
                    }
                };
                json!({"Node": wire::node(node), "Services": services})
            }
        };
        Ok((tables.node_index(&name), Reply::Json(body)))
    })
    .await
}

/// `GET /v1/catalog/gateway-services/:gateway`: the services a terminating or ingress gateway
/// fronts, from its config entry. concord refuses gateway config entries (no gateway can be
/// configured yet), so every gateway fronts nothing: `[]`, as Consul answers for a gateway
/// without an entry, blocking on the two gateway kinds' entries.
pub async fn gateway_services(
    State(state): State<Arc<AppState>>,
    Path(gateway): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::ServiceRead(&gateway))?;
    let options = call.read_options(&state)?;
    let kinds = ["ingress-gateway", "terminating-gateway"];
    let topics = kinds
        .iter()
        .map(|kind| (crate::state::connect::kind_topic(kind), Match::Exact))
        .collect();
    reply::blocking(&state, &options, topics, |tables| {
        let index = kinds
            .iter()
            .map(|kind| tables.config_kind_index(kind))
            .max()
            .unwrap_or(0);
        Ok((index, Reply::Json(Value::Array(Vec::new()))))
    })
    .await
}
