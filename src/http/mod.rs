//! The HTTP API on port 8500: Consul's paths, JSON shapes, headers and status codes.
//!
//! Architecture invariant: handlers translate, they do not decide. Each one parses the request,
//! passes the authorization seam (`acl`), reads a state snapshot or writes through `rpc`, and
//! shapes the answer with `api`. Errors become responses in exactly one place (`error`).

mod acl;
mod agent;
mod agent_local;
mod body;
mod catalog;
mod config;
mod connect_ca;
mod coordinate;
pub mod error;
mod event;
mod forward;
mod health;
mod instances;
mod intention;
mod keyring;
mod kv;
mod metrics;
mod operator;
mod params;
mod query;
mod replicate;
mod reply;
mod session;
mod snapshot;
#[cfg(test)]
mod tests;
mod txn;
mod ui;
mod ui_assets;
mod xds_status;

use std::sync::Arc;

use axum::http::StatusCode;
use axum::routing::{delete, get, post, put};
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::acl::Authorizer;
use crate::agent::Agent;
use crate::config::RuntimeConfig;
use crate::rpc::Cluster;

/// Everything a handler may use.
pub struct AppState {
    /// Cluster state: every read, write and watch, and the leader's services.
    pub cluster: Cluster,
    pub agent: Arc<Agent>,
    /// This agent's leaf certificates.
    pub leaves: Arc<crate::agent::leaf::LeafCache>,
    /// xDS stream counters and each proxy's status.
    pub xds: Arc<crate::xds::XdsStatus>,
    /// Every long-lived task, counted by name (for metrics).
    pub tasks: crate::tasks::Tasks,
    pub config: Arc<RuntimeConfig>,
    pub authorizer: Authorizer,
    pub node_id: String,
    /// This agent's LAN gossip pool.
    pub lan: crate::gossip::Pool,
    /// A server's WAN gossip pool (servers of every datacenter); none on clients.
    pub wan: Option<crate::gossip::Pool>,
    /// The user events this agent kept.
    pub events: Arc<crate::agent::events::EventLog>,
    /// Cancelled to ask the agent to leave and stop (`/v1/agent/leave`).
    pub stop: CancellationToken,
    /// Cancelled when the agent shuts down; blocking queries return early on it.
    pub shutdown: CancellationToken,
}

pub fn router(state: Arc<AppState>) -> Router {
    let state_for_forwarding = state.clone();
    let routes = Router::new()
        .route(
            "/v1/kv/",
            get(kv::get_root).put(kv::put_root).delete(kv::delete_root),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/txn", put(txn::apply))
        .route("/v1/acl/bootstrap", put(acl::bootstrap))
        .route("/v1/acl/token", put(acl::create_token))
        .route("/v1/acl/token/self", get(acl::token_self))
        .route(
            "/v1/acl/token/{id}",
            get(acl::read_token)
                .put(acl::update_token)
                .delete(acl::delete_token),
        )
        .route("/v1/acl/token/{id}/clone", put(acl::clone_token))
        .route("/v1/acl/tokens", get(acl::list_tokens))
        .route("/v1/acl/policy", put(acl::create_policy))
        .route(
            "/v1/acl/policy/{id}",
            get(acl::read_policy)
                .put(acl::update_policy)
                .delete(acl::delete_policy),
        )
        .route("/v1/acl/policy/name/{name}", get(acl::read_policy_by_name))
        .route("/v1/acl/policies", get(acl::list_policies))
        .route("/v1/acl/role", put(acl::create_role))
        .route(
            "/v1/acl/role/{id}",
            get(acl::read_role)
                .put(acl::update_role)
                .delete(acl::delete_role),
        )
        .route("/v1/acl/role/name/{name}", get(acl::read_role_by_name))
        .route("/v1/acl/roles", get(acl::list_roles))
        .route("/v1/acl/templated-policies", get(acl::templated_policies))
        .route(
            "/v1/acl/templated-policy/name/{*name}",
            get(acl::templated_policy),
        )
        .route(
            "/v1/acl/templated-policy/preview/{*name}",
            post(acl::preview_templated_policy),
        )
        .route("/v1/agent/token/{kind}", put(acl::set_agent_token))
        .route("/v1/internal/acl/authorize", post(acl::authorize_many))
        .route("/v1/catalog/register", put(catalog::register))
        .route("/v1/catalog/deregister", put(catalog::deregister))
        .route("/v1/catalog/datacenters", get(catalog::datacenters))
        .route("/v1/catalog/nodes", get(catalog::nodes))
        .route("/v1/catalog/services", get(catalog::services))
        .route("/v1/catalog/service/{name}", get(catalog::service))
        .route("/v1/catalog/connect/{name}", get(catalog::connect))
        .route(
            "/v1/catalog/gateway-services/{gateway}",
            get(catalog::gateway_services),
        )
        .route("/v1/catalog/node/{node}", get(catalog::node))
        .route(
            "/v1/catalog/node-services/{node}",
            get(catalog::node_services),
        )
        .route("/v1/status/leader", get(agent::leader))
        .route("/v1/status/peers", get(agent::peers))
        .route("/v1/agent/self", get(agent::self_info))
        .route("/v1/agent/version", get(agent::version))
        .route("/v1/agent/members", get(agent::members))
        .route("/v1/agent/leave", put(agent::leave))
        .route("/v1/agent/monitor", get(agent::monitor))
        .route("/v1/agent/metrics", get(metrics::metrics))
        .route("/v1/agent/xds", get(xds_status::streams))
        .route("/v1/agent/join/{address}", put(agent::join))
        .route("/v1/agent/force-leave/{node}", put(agent::force_leave))
        .route("/v1/event/fire/{name}", put(event::fire))
        .route("/v1/event/list", get(event::list))
        .route("/v1/coordinate/datacenters", get(coordinate::datacenters))
        .route("/v1/coordinate/nodes", get(coordinate::nodes))
        .route("/v1/coordinate/node/{node}", get(coordinate::node))
        .route("/v1/coordinate/update", put(coordinate::update))
        .route(
            "/v1/operator/raft/configuration",
            get(operator::configuration),
        )
        .route("/v1/operator/raft/peer", delete(operator::remove_peer))
        .route(
            "/v1/operator/raft/transfer-leader",
            post(operator::transfer_leader),
        )
        .route(
            "/v1/operator/autopilot/configuration",
            get(operator::autopilot_configuration).put(operator::set_autopilot_configuration),
        )
        .route(
            "/v1/operator/autopilot/health",
            get(operator::autopilot_health),
        )
        .route(
            "/v1/operator/autopilot/state",
            get(operator::autopilot_state),
        )
        .route("/v1/snapshot", get(snapshot::save).put(snapshot::restore))
        .route(
            "/v1/operator/keyring",
            get(keyring::keyring)
                .post(keyring::keyring)
                .put(keyring::keyring)
                .delete(keyring::keyring),
        )
        .route("/v1/agent/services", get(agent_local::services))
        .route(
            "/v1/agent/service/register",
            put(agent_local::register_service),
        )
        .route(
            "/v1/agent/service/deregister/{id}",
            put(agent_local::deregister_service),
        )
        .route("/v1/agent/service/{id}", get(agent_local::service))
        .route("/v1/agent/checks", get(agent_local::checks))
        .route("/v1/agent/reload", put(agent_local::reload))
        .route("/v1/agent/maintenance", put(agent_local::node_maintenance))
        .route(
            "/v1/agent/service/maintenance/{id}",
            put(agent_local::service_maintenance),
        )
        .route(
            "/v1/agent/health/service/id/{id}",
            get(agent_local::health_by_id),
        )
        .route(
            "/v1/agent/health/service/name/{name}",
            get(agent_local::health_by_name),
        )
        .route("/v1/agent/check/register", put(agent_local::register_check))
        .route(
            "/v1/agent/check/deregister/{id}",
            put(agent_local::deregister_check),
        )
        .route("/v1/agent/check/pass/{id}", put(agent_local::pass))
        .route("/v1/agent/check/warn/{id}", put(agent_local::warn))
        .route("/v1/agent/check/fail/{id}", put(agent_local::fail))
        .route("/v1/agent/check/update/{id}", put(agent_local::update))
        .route("/v1/query", get(query::list).post(query::create))
        .route(
            "/v1/query/{id}",
            get(query::read).put(query::update).delete(query::delete),
        )
        .route("/v1/query/{id}/execute", get(query::execute))
        .route("/v1/query/{id}/explain", get(query::explain))
        .route("/v1/internal/query/execute", post(query::execute_sent))
        .route("/v1/internal/replicate/{kind}", get(replicate::list))
        .route("/v1/internal/ui/services", get(ui::services))
        .route("/v1/internal/ui/nodes", get(ui::nodes))
        .route("/v1/internal/ui/node/{node}", get(ui::node))
        .route(
            "/v1/internal/ui/service-topology/{service}",
            get(ui::topology),
        )
        .route(
            "/v1/internal/ca/sign-intermediate",
            post(connect_ca::sign_intermediate),
        )
        .route("/v1/session/create", put(session::create))
        .route("/v1/session/destroy/{id}", put(session::destroy))
        .route("/v1/session/renew/{id}", put(session::renew))
        .route("/v1/session/info/{id}", get(session::info))
        .route("/v1/session/node/{node}", get(session::node))
        .route("/v1/session/list", get(session::list))
        .route("/v1/config", put(config::put))
        .route("/v1/config/{kind}", get(config::list))
        .route(
            "/v1/config/{kind}/{name}",
            get(config::get_one).delete(config::delete),
        )
        .route(
            "/v1/discovery-chain/{service}",
            get(config::discovery_chain).post(config::discovery_chain_post),
        )
        .route("/v1/connect/ca/roots", get(connect_ca::roots))
        .route(
            "/v1/connect/ca/configuration",
            get(connect_ca::get_configuration).put(connect_ca::put_configuration),
        )
        .route("/v1/agent/connect/ca/roots", get(connect_ca::roots))
        .route("/v1/agent/connect/ca/leaf/{service}", get(connect_ca::leaf))
        .route("/v1/agent/connect/authorize", post(intention::authorize))
        .route(
            "/v1/connect/intentions",
            get(intention::list).post(intention::create),
        )
        .route(
            "/v1/connect/intentions/exact",
            get(intention::get_exact)
                .put(intention::put_exact)
                .delete(intention::delete_exact),
        )
        .route("/v1/connect/intentions/match", get(intention::matches))
        .route("/v1/connect/intentions/check", get(intention::check))
        .route(
            "/v1/connect/intentions/{id}",
            get(intention::get_by_id)
                .put(intention::update_by_id)
                .delete(intention::delete_by_id),
        )
        .route("/v1/health/service/{name}", get(health::service))
        .route("/v1/health/connect/{name}", get(health::connect))
        .route("/v1/health/ingress/{name}", get(health::ingress))
        .route("/v1/health/checks/{name}", get(health::service_checks))
        .route("/v1/health/node/{node}", get(health::node))
        .route("/v1/health/state/{state}", get(health::in_state))
        .route_layer(axum::middleware::from_fn(observe))
        .fallback(index)
        .with_state(state);
    // Outside the routes: a route's own layers see its 405 before axum adds `Allow`.
    Router::new()
        .fallback_service(routes)
        .layer(axum::middleware::from_fn(methods))
        // Outermost: a request for another datacenter goes there before anything here runs.
        .layer(axum::middleware::from_fn_with_state(
            state_for_forwarding,
            forward::to_datacenter,
        ))
}

/// Records each request's latency as Consul's `api.http` timer, labelled with the method and
/// the route as Consul spells it (`/v1/kv/{*key}` is `v1_kv_`, everything before the first
/// parameter with `/` as `_`). Blocking queries count their wait, as in Consul. Each worker
/// thread keeps the timer of every route and method it has served, so a request records
/// without allocating or touching a lock another thread holds.
async fn observe(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let started = std::time::Instant::now();
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .cloned();
    let method = request.method().clone();
    let response = next.run(request).await;
    if let Some(route) = route {
        record_http(route.as_str(), &method, crate::telemetry::ms_since(started));
    }
    response
}

/// Each route's `api.http` timers, by method.
type RouteTimers =
    std::collections::HashMap<Box<str>, Vec<(axum::http::Method, ::metrics::Histogram)>>;

thread_local! {
    static HTTP_TIMERS: std::cell::RefCell<RouteTimers> = Default::default();
}

fn record_http(route: &str, method: &axum::http::Method, ms: f64) {
    HTTP_TIMERS.with_borrow_mut(|timers| {
        let by_method = match timers.get_mut(route) {
            Some(by_method) => by_method,
            None => timers.entry(route.into()).or_default(),
        };
        if let Some((_, timer)) = by_method.iter().find(|(m, _)| m == method) {
            timer.record(ms);
            return;
        }
        let fixed = &route[..route.find('{').unwrap_or(route.len())];
        let path = fixed.trim_start_matches('/').replace('/', "_");
        let timer = ::metrics::histogram!(
            crate::telemetry::API_HTTP,
            "method" => method.as_str().to_string(),
            "path" => path
        );
        timer.record(ms);
        by_method.push((method.clone(), timer));
    });
}

/// What Consul's index handler answers for `/` and every path no route takes: with the UI on,
/// `/` redirects to it (301) and the content path serves it (`ui_assets`); otherwise a 404
/// telling an API caller the endpoint is unknown (or that API paths start with `/v1/`), and
/// for `/` a line saying the UI is off.
async fn index(
    axum::extract::State(state): axum::extract::State<Arc<AppState>>,
    uri: axum::http::Uri,
) -> axum::response::Response {
    use axum::response::IntoResponse;
    let path = uri.path();
    let content_path = state.config.ui_content_path.as_str();
    if state.config.ui_enabled && !path.starts_with("/v1/") {
        if let Some(rest) = path.strip_prefix(content_path) {
            return ui_assets::serve(&state, rest).await;
        }
        if path == "/" || path == content_path.trim_end_matches('/') {
            return (
                StatusCode::MOVED_PERMANENTLY,
                [(axum::http::header::LOCATION, content_path)],
            )
                .into_response();
        }
    }
    if path != "/" {
        let text = if path.contains("/v1/") {
            "Invalid URL path: not a recognized HTTP API endpoint\n"
        } else {
            "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'\n"
        };
        return (StatusCode::NOT_FOUND, text).into_response();
    }
    "Consul Agent: UI disabled. To enable, set ui_config.enabled=true in the agent configuration and restart."
        .into_response()
}

/// Consul's answers about methods: a route asked with a method it does not take is a 405
/// whose `Allow` lists OPTIONS and the route's methods, with the text `method X not allowed`;
/// OPTIONS on any route is a 200 carrying that `Allow`.
async fn methods(
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let method = request.method().clone();
    let mut response = next.run(request).await;
    if response.status() != StatusCode::METHOD_NOT_ALLOWED {
        return response;
    }
    let allowed = response
        .headers()
        .get(axum::http::header::ALLOW)
        .and_then(|value| value.to_str().ok())
        .unwrap_or("")
        .to_string();
    // axum answers HEAD on every GET route and lists it; Consul's routes list what they
    // registered, and none registers HEAD.
    let allow = std::iter::once("OPTIONS")
        .chain(
            allowed
                .split(',')
                .map(str::trim)
                .filter(|m| !m.is_empty() && *m != "HEAD"),
        )
        .collect::<Vec<_>>()
        .join(",");
    let allow = axum::http::HeaderValue::from_str(&allow)
        .unwrap_or(axum::http::HeaderValue::from_static("OPTIONS"));
    if method == axum::http::Method::OPTIONS {
        let mut ok = axum::response::IntoResponse::into_response(StatusCode::OK);
        ok.headers_mut().insert(axum::http::header::ALLOW, allow);
        return ok;
    }
    response = axum::response::IntoResponse::into_response((
        StatusCode::METHOD_NOT_ALLOWED,
        format!("method {method} not allowed"),
    ));
    response
        .headers_mut()
        .insert(axum::http::header::ALLOW, allow);
    response
}
