//! `/v1/session/*`: create, destroy, renew, and blocking reads by id, node or all.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply, Visible};
use super::AppState;
use crate::acl::Access;
use crate::api::session as wire;
use crate::state::session::SESSIONS_TOPIC;
use crate::state::Match;
use crate::types::{Command, CommandResult};

fn fsm_result(result: CommandResult) -> Result<(), ApiError> {
    match result {
        CommandResult::Error(error) => Err(error.into()),
        _ => Ok(()),
    }
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let value = super::body::read_json(&state, &call, body).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let session = wire::create_request(value, id.clone(), state.agent.node_name())?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::SessionWrite(&session.node))?;
    // The leader's TTL timer starts when it next looks at its sessions (within 200 ms).
    let (_, result) = state.cluster.write(Command::SessionCreate(session)).await?;
    // Consul's Session.Apply wraps what its state store refused.
    fsm_result(result).map_err(|error| match error {
        ApiError::Internal(message) => ApiError::Internal(format!("apply failed: {message}")),
        other => other,
    })?;
    Ok(reply::json(&json!({"ID": id}), call.pretty(&state)))
}

pub async fn destroy(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let node = state
        .cluster
        .snapshot()
        .session(&id)
        .map(|session| session.node.clone());
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::SessionWrite(node.as_deref().unwrap_or("")),
    )?;
    let (_, result) = state.cluster.write(Command::SessionDestroy { id }).await?;
    fsm_result(result)?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

pub async fn renew(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let not_found = || ApiError::NotFound(format!("Session id '{id}' not found"));
    let node = state
        .cluster
        .snapshot()
        .session(&id)
        .map(|session| session.node.clone())
        .ok_or_else(not_found)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::SessionWrite(&node))?;
    // Renewal is the leader's (its TTL timers live there).
    let session = state
        .cluster
        .renew_session(&id)
        .await?
        .ok_or_else(not_found)?;
    Ok(reply::json(
        &json!([wire::session(&session)]),
        call.pretty(&state),
    ))
}

/// Which sessions a read returns.
enum Selection {
    Id(String),
    Node(String),
    All,
}

async fn read(state: &AppState, call: Call, selection: Selection) -> Result<Response, ApiError> {
    let options = call.read_options(state)?;
    let visible = Visible::of(state, &call)?;
    let topics = vec![(SESSIONS_TOPIC.to_string(), Match::Exact)];
    reply::blocking_filtered(state, &options, topics, &visible, |tables| {
        let sessions = tables
            .sessions()
            .filter(|session| visible.may(Access::SessionRead(&session.node)))
            .filter(|session| match &selection {
                Selection::Id(id) => &session.id == id,
                Selection::Node(node) => &session.node == node,
                Selection::All => true,
            })
            .map(wire::session)
            .collect();
        Ok((
            tables.table_index().sessions,
            Reply::Json(Value::Array(sessions)),
        ))
    })
    .await
}

pub async fn info(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    read(&state, call, Selection::Id(id)).await
}

pub async fn node(
    State(state): State<Arc<AppState>>,
    Path(node): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    read(&state, call, Selection::Node(node)).await
}

pub async fn list(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    read(&state, call, Selection::All).await
}
