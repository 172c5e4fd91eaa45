//! `/v1/agent/service*` and `/v1/agent/check*`: what this agent runs. Registrations change the
//! agent's local state; anti-entropy carries them to the catalog.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Visible};
use super::AppState;
use crate::acl::Access;
use crate::agent::{is_maintenance, service_maintenance_id, NODE_MAINTENANCE};
use crate::api::catalog as wire;
use crate::api::decode;
use crate::api::definition::{self, DefinitionPolicy};
use crate::types::HealthStatus;

fn policy(state: &AppState) -> DefinitionPolicy {
    DefinitionPolicy {
        enable_script_checks: state.config.enable_script_checks,
        remote: true,
    }
}

fn ok() -> Response {
    axum::http::StatusCode::OK.into_response()
}

pub async fn services(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let datacenter = &state.config.datacenter;
    let services: Map<String, Value> = state
        .agent
        .registered_services()
        .iter()
        .filter(|service| visible.service(&service.name))
        .map(|service| (service.id.clone(), wire::agent_service(service, datacenter)))
        .filter(|(_, service)| {
            options
                .filter
                .as_ref()
                .is_none_or(|filter| filter.matches(service))
        })
        .collect();
    Ok(visible.mark(reply::json(&Value::Object(services), options.pretty)))
}

/// A service's content hash: changes whenever anything in its JSON does.
fn content_hash(service: &Value) -> String {
    format!("{:08x}", crc32fast::hash(service.to_string().as_bytes()))
}

/// `GET /v1/agent/service/:id`, with Consul's hash-based blocking: `?hash=<ContentHash>`
/// waits (up to `wait`) until the service's definition differs from that hash.
pub async fn service(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let known_hash = call.get("hash").map(str::to_string);
    let deadline = tokio::time::Instant::now() + options.wait;
    let mut changes = state.agent.subscribe();
    loop {
        // Mark the current version seen before reading, so a change after the read wakes us.
        changes.borrow_and_update();
        let service = state
            .agent
            .registered_service(&id)
            .ok_or_else(|| ApiError::NotFound(format!("unknown service ID: {id}")))?;
        state
            .authorizer
            .authorize(call.token().as_deref(), Access::ServiceRead(&service.name))?;
        let mut body = wire::agent_service(&service, &state.config.datacenter);
        let hash = content_hash(&body);
        let unchanged = known_hash.as_deref() == Some(hash.as_str());
        if !unchanged
            || tokio::time::Instant::now() >= deadline
            || state.agent.shutdown_token().is_cancelled()
        {
            body["ContentHash"] = Value::String(hash.clone());
            let mut response = reply::json(&body, options.pretty);
            if let Ok(value) = axum::http::HeaderValue::from_str(&hash) {
                response.headers_mut().insert("X-Consul-ContentHash", value);
            }
            return Ok(response);
        }
        tokio::select! {
            changed = changes.changed() => if changed.is_err() { return Err(ApiError::Internal("agent stopped".into())) },
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.agent.shutdown_token().cancelled() => {}
        }
    }
}

pub async fn register_service(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    let value = super::body::read_json(&state, &call, body).await?;
    let definition = definition::service(value.clone(), policy(&state))?;
    // The service, its sidecar, and the service each proxy stands for (Consul's rule: a
    // token that may not write `db` may not register a proxy taking `db`'s traffic).
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    let mut services = vec![&definition.service];
    services.extend(definition.sidecar.as_ref().map(|sidecar| &sidecar.service));
    for service in services {
        identity.check(Access::ServiceWrite(&service.name))?;
        if let Some(proxy) = &service.proxy {
            if !proxy.destination_service_name.is_empty() {
                identity.check(Access::ServiceWrite(&proxy.destination_service_name))?;
            }
        }
    }
    state.agent.register_service(value)?;
    Ok(ok())
}

pub async fn deregister_service(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    // An unknown service is a 404 before any authorization question, as in Consul.
    let name = state
        .agent
        .service(&id)
        .map(|service| service.name)
        .ok_or_else(|| {
            ApiError::NotFound(format!(
            "Unknown service ID {id:?}. Ensure that the service ID is passed, not the service name."
        ))
        })?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::ServiceWrite(&name))?;
    state.agent.deregister_service(&id);
    Ok(ok())
}

pub async fn checks(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let checks: Map<String, Value> = state
        .agent
        .checks()
        .iter()
        .filter(|check| visible.check(check))
        .map(|check| (check.check_id.clone(), wire::health_check(check)))
        .filter(|(_, check)| {
            options
                .filter
                .as_ref()
                .is_none_or(|filter| filter.matches(check))
        })
        .collect();
    Ok(visible.mark(reply::json(&Value::Object(checks), options.pretty)))
}

pub async fn register_check(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    let value = super::body::read_json(&state, &call, body).await?;
    // Parse first so a bad definition is a 400 before any authorization question.
    definition::check(value.clone(), policy(&state))?;
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::NodeWrite(state.agent.node_name()),
    )?;
    state.agent.register_check(value)?;
    Ok(ok())
}

pub async fn deregister_check(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::NodeWrite(state.agent.node_name()),
    )?;
    if !state.agent.deregister_check(&id) {
        return Err(ApiError::NotFound(format!(
            "Unknown check ID {id:?}. Ensure that the check ID is passed, not the check name."
        )));
    }
    Ok(ok())
}

async fn set_ttl(
    state: &AppState,
    call: &Call,
    id: &str,
    status: HealthStatus,
    output: &str,
) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::NodeWrite(state.agent.node_name()),
    )?;
    state.agent.update_ttl(id, status, output)?;
    Ok(ok())
}

pub async fn pass(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let note = call.get("note").unwrap_or("").to_string();
    set_ttl(&state, &call, &id, HealthStatus::Passing, &note).await
}

pub async fn warn(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let note = call.get("note").unwrap_or("").to_string();
    set_ttl(&state, &call, &id, HealthStatus::Warning, &note).await
}

pub async fn fail(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let note = call.get("note").unwrap_or("").to_string();
    set_ttl(&state, &call, &id, HealthStatus::Critical, &note).await
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct UpdateIn {
    status: String,
    output: String,
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    let value = super::body::read_json(&state, &call, body).await?;
    let update: UpdateIn = serde_json::from_value(decode::canonicalize(value))
        .map_err(|error| ApiError::BadRequest(format!("Request decode failed: {error}")))?;
    let status = HealthStatus::parse(&update.status)
        .filter(|status| *status != HealthStatus::Maintenance)
        .ok_or_else(|| {
            ApiError::BadRequest(format!("Invalid check status: {:?}", update.status))
        })?;
    set_ttl(&state, &call, &id, status, &update.output).await
}

/// The worst status among `checks` (Consul's aggregation), passing when there are none; a
/// maintenance check makes it "maintenance".
fn aggregate(checks: &[crate::types::Check]) -> HealthStatus {
    if checks.iter().any(|check| is_maintenance(&check.check_id)) {
        return HealthStatus::Maintenance;
    }
    checks
        .iter()
        .map(|check| check.status)
        .max()
        .unwrap_or(HealthStatus::Passing)
}

/// Reads the required `?enable=` flag of the maintenance endpoints.
fn enable_flag(call: &Call) -> Result<bool, ApiError> {
    match call.get("enable") {
        None => Err(ApiError::BadRequest("Missing value for enable".into())),
        Some(text) => super::params::go_bool(text)
            .ok_or_else(|| ApiError::BadRequest(format!("Invalid value for enable: {text:?}"))),
    }
}

pub async fn node_maintenance(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    let enable = enable_flag(&call)?;
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::NodeWrite(state.agent.node_name()),
    )?;
    if enable {
        state
            .agent
            .enable_maintenance("", call.get("reason").unwrap_or(""))?;
    } else {
        state.agent.remove_check(NODE_MAINTENANCE);
    }
    Ok(ok())
}

pub async fn service_maintenance(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let enable = enable_flag(&call)?;
    let service = state
        .agent
        .service(&id)
        .ok_or_else(|| ApiError::NotFound(format!("No service registered with ID {id:?}")))?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::ServiceWrite(&service.name))?;
    if enable {
        state
            .agent
            .enable_maintenance(&id, call.get("reason").unwrap_or(""))?;
    } else {
        state.agent.remove_check(&service_maintenance_id(&id));
    }
    Ok(ok())
}

/// One service's entry for `/v1/agent/health/service/*`.
fn service_health(state: &AppState, service: &crate::types::Service) -> (HealthStatus, Value) {
    let checks: Vec<crate::types::Check> = state
        .agent
        .checks()
        .into_iter()
        .filter(|check| check.service_id.is_empty() || check.service_id == service.id)
        .collect();
    let status = aggregate(&checks);
    let body = serde_json::json!({
        "AggregatedStatus": status.as_str(),
        "Service": wire::agent_service(service, &state.config.datacenter),
        "Checks": checks.iter().map(wire::health_check).collect::<Vec<_>>(),
    });
    (status, body)
}

/// 200 passing, 429 warning, 503 critical or maintenance; `?format=text` answers the word.
fn health_response(status: HealthStatus, body: Value, call: &Call, state: &AppState) -> Response {
    let code = match status {
        HealthStatus::Passing => axum::http::StatusCode::OK,
        HealthStatus::Warning => axum::http::StatusCode::TOO_MANY_REQUESTS,
        HealthStatus::Critical | HealthStatus::Maintenance => {
            axum::http::StatusCode::SERVICE_UNAVAILABLE
        }
    };
    let mut response = if call.get("format") == Some("text") {
        status.as_str().to_string().into_response()
    } else {
        reply::json(&body, call.pretty(state))
    };
    *response.status_mut() = code;
    response
}

pub async fn health_by_id(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let service = state
        .agent
        .service(&id)
        .ok_or_else(|| ApiError::NotFound(format!("ServiceId {id} not found")))?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::ServiceRead(&service.name))?;
    let (status, body) = service_health(&state, &service);
    Ok(health_response(status, body, &call, &state))
}

pub async fn health_by_name(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::ServiceRead(&name))?;
    let entries: Vec<(HealthStatus, Value)> = state
        .agent
        .registered_services()
        .iter()
        .filter(|service| service.name == name)
        .map(|service| service_health(&state, service))
        .collect();
    if entries.is_empty() {
        return Err(ApiError::NotFound(format!("ServiceName {name} Not Found")));
    }
    let status = entries
        .iter()
        .map(|(status, _)| *status)
        .max()
        .unwrap_or(HealthStatus::Passing);
    let body = Value::Array(entries.into_iter().map(|(_, body)| body).collect());
    Ok(health_response(status, body, &call, &state))
}

pub async fn reload(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::AgentWrite(&state.config.node_name),
    )?;
    state.agent.reload()?;
    Ok(ok())
}
