//! `/v1/coordinate/*`: the network coordinates agents sent for their nodes (blocking on the
//! coordinates table), a manual update, and the servers' coordinates per datacenter; plus
//! `?near=` sorting for the catalog and health reads that take it.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply};
use super::AppState;
use crate::acl::Access;
use crate::state::coordinate::COORDINATES_TOPIC;
use crate::state::{Match, Tables};
use crate::types::coordinate::{Coordinate, NodeCoordinate};
use crate::types::Command;

fn entry(node: &str, coord: &Coordinate) -> Value {
    json!({"Node": node, "Segment": "", "Coord": coord})
}

pub async fn nodes(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let visible = super::reply::Visible::of(&state, &call)?;
    let topics = vec![(COORDINATES_TOPIC.to_string(), Match::Exact)];
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        let list = tables
            .coordinates()
            .filter(|(node, _)| visible.node(node))
            .map(|(node, coord)| entry(node, coord))
            .collect();
        Ok((
            tables.coordinates_index().max(1),
            Reply::Json(Value::Array(options.filter_list(list))),
        ))
    })
    .await
}

pub async fn node(
    State(state): State<Arc<AppState>>,
    Path(node): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::NodeRead(&node))?;
    let topics = vec![(COORDINATES_TOPIC.to_string(), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        let index = tables.coordinates_index().max(1);
        match tables.coordinate(&node) {
            Some(coord) => Ok((index, Reply::Json(json!([entry(&node, coord)])))),
            None => Ok((index, Reply::NotFound)),
        }
    })
    .await
}

/// The WAN pool's servers by datacenter with their coordinates (`<node>.<dc>`), one WAN area
/// per datacenter as Consul lists them; a client agent asks one of its servers.
pub async fn datacenters(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    let Some(server) = state.cluster.server() else {
        let forward = crate::rpc::wire::HttpForward::get(
            &state.config.datacenter,
            "/v1/coordinate/datacenters",
            10_000,
        );
        let answer = state.cluster.forward_http(forward).await?;
        let body: Value = serde_json::from_slice(&answer.body)
            .map_err(|error| ApiError::Internal(format!("a server's answer: {error}")))?;
        return Ok(reply::json(&body, call.pretty(&state)));
    };
    let mut areas: std::collections::BTreeMap<String, Vec<Value>> = Default::default();
    areas.entry(state.config.datacenter.clone()).or_default();
    for wan_server in server.federation.wan_servers().await {
        let coordinates = areas.entry(wan_server.datacenter).or_default();
        if let Some(coord) = wan_server.coordinate {
            coordinates.push(json!({"Node": wan_server.name, "Coord": coord}));
        }
    }
    let body: Vec<Value> = areas
        .into_iter()
        .map(|(datacenter, coordinates)| {
            json!({"Datacenter": datacenter, "AreaID": "wan", "Coordinates": coordinates})
        })
        .collect();
    Ok(reply::json(&Value::Array(body), call.pretty(&state)))
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    let value = super::body::read_json(&state, &call, body).await?;
    let node = value["Node"].as_str().unwrap_or_default().to_string();
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::NodeWrite(&node))?;
    let coord: Coordinate = serde_json::from_value(value["Coord"].clone())
        .map_err(|error| ApiError::BadRequest(format!("Request decode failed: {error}")))?;
    if !coord.is_valid() {
        return Err(ApiError::BadRequest(
            "Coordinate is invalid (8 finite dimensions, finite error, adjustment and height)"
                .into(),
        ));
    }
    state
        .cluster
        .write(Command::CoordinateBatchUpdate(vec![NodeCoordinate {
            node,
            coord,
        }]))
        .await?;
    Ok(reply::json(&Value::Bool(true), false))
}

/// The coordinate `?near=` names: `_agent` is this agent's node.
pub fn near_coordinate<'t>(
    state: &AppState,
    call: &Call,
    tables: &'t Tables,
) -> Option<&'t Coordinate> {
    let near = call.get("near").filter(|near| !near.is_empty())?;
    let node = match near {
        "_agent" => state.config.node_name.as_str(),
        other => other,
    };
    tables.coordinate(node)
}

/// Sorts `items` by the estimated round trip from `origin` to each item's node (nodes without
/// a coordinate last, in their original order), as Consul's `?near=` does.
pub fn sort_near<T>(
    items: &mut [T],
    origin: &Coordinate,
    tables: &Tables,
    node: impl Fn(&T) -> &str,
) {
    items.sort_by_cached_key(|item| {
        tables
            .coordinate(node(item))
            .map_or(u128::MAX, |coord| origin.distance_to(coord).as_nanos())
    });
}
