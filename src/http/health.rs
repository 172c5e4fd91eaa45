//! `/v1/health/*`: instances with their health (`service`), and checks by service, node or
//! state. All blocking, all read from the catalog.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::Value;

use super::error::ApiError;
use super::instances::Instances;
use super::params::Call;
use super::reply::{self, Reply, Visible};
use super::AppState;
use crate::api::catalog as wire;
use crate::state::catalog::{node_topic, service_topic, CHECKS_TOPIC};
use crate::state::Match;
use crate::types::HealthStatus;

/// `GET /v1/health/service/:name`: one entry per instance with its node and every check that
/// decides its health (node checks included). `?passing` keeps instances whose checks all pass.
pub async fn service(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    metrics::counter!(crate::telemetry::HEALTH_SERVICE_QUERY, "service" => name.clone())
        .increment(1);
    instances(&state, Instances::Named(&name), call).await
}

/// `GET /v1/health/connect/:name`: the same for the instances that take mesh traffic for
/// `name` (its sidecar proxies and Connect-native instances).
pub async fn connect(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    instances(&state, Instances::Connect(&name), call).await
}

async fn instances(
    state: &AppState,
    which: Instances<'_>,
    call: Call,
) -> Result<Response, ApiError> {
    let (Instances::Named(name) | Instances::Connect(name)) = which;
    let _ = name;
    let options = call.read_options(state)?;
    let visible = Visible::of(state, &call)?;
    // `?passing` alone means yes; a value is read as Go reads a boolean.
    let passing_only = match call.get("passing") {
        None => false,
        Some("") => true,
        Some(text) => super::params::go_bool(text)
            .ok_or_else(|| ApiError::BadRequest(format!("Invalid value for ?passing: {text:?}")))?,
    };
    let tags: Vec<String> = call.all("tag").map(str::to_string).collect();
    let datacenter = state.config.datacenter.clone();
    reply::blocking_filtered(state, &options, which.topics(), &visible, |tables| {
        let mut entries: Vec<_> = which
            .rows(tables, &tags)
            .filter(|(node, service)| visible.instance(&node.name, &service.name))
            .filter(|(node, _)| options.node_selected(node))
            .filter(|(node, service)| {
                !passing_only
                    || tables.instance_health(&node.name, &service.id) == HealthStatus::Passing
            })
            .map(|(node, service)| {
                let checks = tables
                    .instance_checks(&node.name, &service.id)
                    .filter(|check| visible.check(check));
                wire::CheckServiceNodeJson::of(node, service, &datacenter, checks)
            })
            .collect();
        if let Some(origin) = super::coordinate::near_coordinate(state, &call, tables) {
            super::coordinate::sort_near(&mut entries, origin, tables, |entry| entry.node_name());
        }
        Ok((which.index(tables), reply::list(&options, &entries)))
    })
    .await
}

/// `GET /v1/health/checks/:service`.
pub async fn service_checks(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let topics = vec![(service_topic(&name), Match::Exact)];
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        let checks = tables
            .all_checks()
            .filter(|check| check.service_name == name && visible.check(check))
            .map(wire::health_check)
            .collect();
        Ok((
            tables.service_index(&name),
            Reply::Json(Value::Array(options.filter_list(checks))),
        ))
    })
    .await
}

/// `GET /v1/health/node/:node`.
pub async fn node(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let topics = vec![(node_topic(&name), Match::Exact)];
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        let checks = tables
            .node_checks(&name)
            .filter(|check| visible.check(check))
            .map(wire::health_check)
            .collect();
        Ok((
            tables.node_index(&name),
            Reply::Json(Value::Array(options.filter_list(checks))),
        ))
    })
    .await
}

/// `GET /v1/health/state/:state` with `any`, `passing`, `warning` or `critical`.
pub async fn in_state(
    State(state): State<Arc<AppState>>,
    Path(wanted): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let filter_status = match wanted.as_str() {
        "any" => None,
        text => Some(
            HealthStatus::parse(text)
                .filter(|status| *status != HealthStatus::Maintenance)
                .ok_or_else(|| ApiError::BadRequest(format!("Invalid check state {text:?}")))?,
        ),
    };
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let topics = vec![(CHECKS_TOPIC.to_string(), Match::Exact)];
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        let checks = tables
            .all_checks()
            .filter(|check| filter_status.is_none_or(|status| check.status == status))
            .filter(|check| visible.check(check))
            .map(wire::health_check)
            .collect();
        Ok((
            tables.table_index().checks,
            Reply::Json(Value::Array(options.filter_list(checks))),
        ))
    })
    .await
}

/// `GET /v1/health/ingress/:service`: the ingress gateways' instances that expose `service`.
/// concord refuses ingress-gateway config entries (no gateway can be configured yet), so no
/// gateway exposes anything: `[]`, blocking on the catalog's services and ingress entries.
pub async fn ingress(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        crate::acl::Access::ServiceRead(&name),
    )?;
    let options = call.read_options(&state)?;
    let topics = vec![
        (
            crate::state::catalog::SERVICES_TOPIC.to_string(),
            crate::state::Match::Exact,
        ),
        (
            crate::state::connect::kind_topic("ingress-gateway"),
            crate::state::Match::Exact,
        ),
    ];
    super::reply::blocking(&state, &options, topics, |tables| {
        let index = tables
            .table_index()
            .services
            .max(tables.config_kind_index("ingress-gateway"));
        Ok((
            index,
            super::reply::Reply::Json(serde_json::Value::Array(Vec::new())),
        ))
    })
    .await
}
