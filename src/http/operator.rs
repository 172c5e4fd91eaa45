//! `/v1/operator/raft/*`: the Raft configuration (`GET configuration`, from the leader unless
//! `?stale`) and removing a server from it (`DELETE peer?id=|address=`), answered by a server
//! for any agent; handing leadership to another server (`POST transfer-leader?id=`). Servers are named as Consul names them: the node id (UUID) and node name of
//! the LAN member whose `id` tag maps to the Raft id.
//!
//! `/v1/operator/autopilot/*`: autopilot's replicated configuration (GET, and PUT with
//! `?cas`), and the leader's latest health report (`health`, `state`).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::{reply, AppState};
use crate::acl::Access;
use crate::raft::node_id_from_uuid;
use crate::rpc::PeerRef;
use crate::state::operator::AUTOPILOT_TOPIC;
use crate::state::Match;
use crate::types::{Command, CommandResult};

pub async fn configuration(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorRead)?;
    let configuration = state.cluster.raft_configuration(call.has("stale")).await?;
    let members = state.lan.members().await;
    let servers: Vec<Value> = configuration
        .servers
        .iter()
        .map(|server| {
            let member = members.iter().find(|member| {
                member.identity.tag("role") == "consul"
                    && node_id_from_uuid(member.identity.tag("id")) == server.id
            });
            json!({
                "ID": member.map_or_else(|| format!("{:016x}", server.id), |m| m.identity.tag("id").to_string()),
                "Node": member.map_or("(unknown)", |m| m.identity.name.as_str()),
                "Address": server.address,
                "Leader": server.leader,
                "Voter": server.voter,
                "ProtocolVersion": "3",
                "LastIndex": server.last_index,
            })
        })
        .collect();
    Ok(reply::json(
        &json!({"Servers": servers, "Index": configuration.index}),
        call.pretty(&state),
    ))
}

pub async fn remove_peer(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorWrite)?;
    let peer =
        match (call.get("id"), call.get("address")) {
            (Some(id), _) if !id.is_empty() => PeerRef::Id(node_id_from_uuid(id)),
            (_, Some(address)) if !address.is_empty() => PeerRef::Address(address.to_string()),
            _ => return Err(ApiError::BadRequest(
                "Must specify either ?id with the server's ID or ?address with IP:port of peer \
                 to remove"
                    .into(),
            )),
        };
    state.cluster.remove_raft_peer(peer).await?;
    Ok(().into_response())
}

/// `POST /v1/operator/raft/transfer-leader[?id=<node id>]`: `{"Success": true}` once another
/// server leads.
pub async fn transfer_leader(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorWrite)?;
    let target = call
        .get("id")
        .filter(|id| !id.is_empty())
        .map(|id| PeerRef::Id(node_id_from_uuid(id)));
    state.cluster.transfer_leader(target).await?;
    Ok(reply::json(&json!({"Success": true}), call.pretty(&state)))
}

/// `GET /v1/operator/autopilot/configuration`.
pub async fn autopilot_configuration(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorRead)?;
    let topics = vec![(AUTOPILOT_TOPIC.to_string(), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        let config = tables
            .autopilot()
            .ok_or_else(|| ApiError::Internal("autopilot config not initialized yet".into()))?;
        Ok((
            config.indexes.modify,
            reply::Reply::Json(crate::api::operator::config(config)),
        ))
    })
    .await
}

/// `PUT /v1/operator/autopilot/configuration[?cas=<index>]`: `true`, or `false` when the
/// check-and-set failed.
pub async fn set_autopilot_configuration(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorWrite)?;
    let cas = call.number("cas")?;
    let body = crate::api::decode::canonicalize(super::body::read_json(&state, &call, body).await?);
    let Value::Object(body) = body else {
        return Err(ApiError::BadRequest(
            "Request decode failed: the body must be a JSON object".into(),
        ));
    };
    let config = crate::api::operator::decode_config(body)?;
    let applied = match state
        .cluster
        .write(Command::AutopilotSetConfig { config, cas })
        .await?
    {
        (_, CommandResult::Cas(applied)) => applied,
        (_, other) => return Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    };
    Ok(reply::json(&Value::Bool(applied), call.pretty(&state)))
}

/// `GET /v1/operator/autopilot/health`: 200 when every server is healthy, 429 otherwise,
/// the report in the body either way.
pub async fn autopilot_health(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    let report = autopilot_report(&state, &call).await?;
    let mut response = reply::json(&crate::api::operator::health(&report), call.pretty(&state));
    if !report.healthy {
        *response.status_mut() = axum::http::StatusCode::TOO_MANY_REQUESTS;
    }
    Ok(response)
}

/// `GET /v1/operator/autopilot/state`.
pub async fn autopilot_state(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    let report = autopilot_report(&state, &call).await?;
    Ok(reply::json(
        &crate::api::operator::state(&report),
        call.pretty(&state),
    ))
}

/// The leader's autopilot report, for a caller allowed to read it.
async fn autopilot_report(
    state: &AppState,
    call: &Call,
) -> Result<crate::types::operator::AutopilotReport, ApiError> {
    call.check_datacenter(state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::OperatorRead)?;
    Ok(state.cluster.autopilot_health().await?)
}
