//! User events: `PUT /v1/event/fire/:name` gossips one to every agent (each decides by its
//! filters whether it applies), `GET /v1/event/list` shows what this agent kept, blocking on
//! the agent-local index as Consul's does.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use base64::Engine;
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::{reply, AppState};
use crate::acl::Access;
use crate::gossip::UserEvent;

/// The largest payload fired over HTTP (Consul's `maxEventPayloadSize`).
pub const MAX_PAYLOAD: usize = 300;

fn event_json(event: &UserEvent, ltime: u64) -> Value {
    let engine = base64::engine::general_purpose::STANDARD;
    json!({
        "ID": event.id,
        "Name": event.name,
        "Payload": event.payload.as_ref().map(|payload| engine.encode(payload)),
        "NodeFilter": event.node_filter,
        "ServiceFilter": event.service_filter,
        "TagFilter": event.tag_filter,
        "Version": 1,
        "LTime": ltime,
    })
}

/// Consul's checks before an event is fired (`validateUserEvent`); its errors are 500s.
fn validate(event: &UserEvent) -> Result<(), ApiError> {
    if !event.tag_filter.is_empty() && event.service_filter.is_empty() {
        return Err(ApiError::Internal(
            "Cannot provide tag filter without service filter".into(),
        ));
    }
    for (what, filter) in [
        ("node", &event.node_filter),
        ("service", &event.service_filter),
        ("tag", &event.tag_filter),
    ] {
        if !filter.is_empty() {
            regex::Regex::new(filter)
                .map_err(|error| ApiError::Internal(format!("Invalid {what} filter: {error}")))?;
        }
    }
    Ok(())
}

pub async fn fire(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::EventWrite(&name))?;
    if name.is_empty() {
        return Err(ApiError::BadRequest("Missing name".into()));
    }
    let limits = &state.config.limits;
    let payload = super::body::read(
        body,
        call.content_length,
        MAX_PAYLOAD,
        "the event payload limit",
        limits.http_body_timeout,
    )
    .await
    .map_err(|error| match error {
        ApiError::PayloadTooLarge(_) => ApiError::PayloadTooLarge(format!(
            "Event payload too large, received {} bytes, max size: {MAX_PAYLOAD} bytes. User events should be kept small for efficient gossip propagation.",
            call.content_length.map_or_else(|| "more than 300".to_string(), |n| n.to_string())
        )),
        other => other,
    })?;
    let filter = |key: &str| call.get(key).unwrap_or_default().to_string();
    let event = UserEvent {
        id: uuid::Uuid::new_v4().to_string(),
        name,
        payload: (!payload.is_empty()).then(|| payload.to_vec()),
        node_filter: filter("node"),
        service_filter: filter("service"),
        tag_filter: filter("tag"),
        ltime: 0,
    };
    validate(&event)?;
    let fired = state
        .lan
        .fire(event)
        .await
        .map_err(|error| ApiError::Internal(error.to_string()))?;
    tracing::info!(name = %fired.name, id = %fired.id, "user event fired");
    // As Consul, the reply shows LTime 0: the Lamport time is the gossip layer's business.
    Ok(reply::json(&event_json(&fired, 0), call.pretty(&state)))
}

pub async fn list(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let visible = super::reply::Visible::of(&state, &call)?;
    let name = call.get("name").filter(|name| !name.is_empty());
    let deadline = tokio::time::Instant::now() + options.wait;
    let mut changes = state.events.changes();
    loop {
        changes.borrow_and_update();
        let (events, index) = state.events.list(name);
        // As Consul: never index 0, which would make a blocking client spin.
        let index = index.max(1);
        let waited = tokio::time::Instant::now() >= deadline || state.shutdown.is_cancelled();
        if options.index == 0 || index != options.index || waited {
            let shown: Vec<Value> = events
                .iter()
                .filter(|event| visible.may(Access::EventRead(&event.name)))
                .map(|event| event_json(event, event.ltime))
                .collect();
            let mut response = visible.mark(reply::json(&Value::Array(shown), options.pretty));
            if let Ok(value) = axum::http::HeaderValue::from_str(&index.to_string()) {
                response.headers_mut().insert("X-Consul-Index", value);
            }
            return Ok(response);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() {
                return Err(ApiError::Internal("agent stopped".into()));
            },
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
}
