//! `/v1/operator/raft/*`: the Raft configuration (`GET configuration`, from the leader unless
//! `?stale`) and removing a server from it (`DELETE peer?id=|address=`), answered by a server
//! for any agent. Servers are named as Consul names them: the node id (UUID) and node name of
//! the LAN member whose `id` tag maps to the Raft id.

use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::{reply, AppState};
use crate::acl::Access;
use crate::raft::node_id_from_uuid;
use crate::rpc::PeerRef;

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
