//! `?dc=<other>`: a request for another datacenter is carried whole to a server there
//! (`rpc::federation`) and its answer returned as it came, so every endpoint behaves across
//! datacenters as it does at home. The agent's own endpoints (`/v1/agent/*`) are about this
//! agent and never travel. A write of what the primary datacenter owns travels the same way
//! to the primary (`global_write`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::rpc::wire::HttpForward;

/// Headers a forwarded request keeps: what decides its answer.
const KEPT: &[&str] = &[
    "x-consul-token",
    "authorization",
    "content-type",
    "cache-control",
];

/// How long past its own wait a forwarded request may take to come back.
const MARGIN: Duration = Duration::from_secs(30);

/// The datacenter a request names, when it is another one and the request may travel.
fn elsewhere<'r>(request: &'r Request, local: &str) -> Option<&'r str> {
    let path = request.uri().path();
    if !path.starts_with("/v1/") || path.starts_with("/v1/agent/") {
        return None;
    }
    request
        .uri()
        .query()?
        .split('&')
        .find_map(|pair| pair.strip_prefix("dc="))
        .filter(|dc| !dc.is_empty() && *dc != local)
}

/// Writes of what the primary datacenter owns, which Consul's servers forward to it: ACL
/// policies, roles and the bootstrap, tokens that are not `Local`, config entries and
/// intentions. Secondaries get them back through replication (`server::replication`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Global {
    Always,
    /// A token write: global unless the token is local.
    Token,
}

fn global_write(method: &Method, path: &str) -> Option<Global> {
    let under = |prefix: &str| path == prefix || path.starts_with(&format!("{prefix}/"));
    let writes = matches!(*method, Method::PUT | Method::POST | Method::DELETE);
    if !writes {
        return None;
    }
    if path == "/v1/acl/bootstrap" || under("/v1/acl/policy") || under("/v1/acl/role") {
        return Some(Global::Always);
    }
    if under("/v1/acl/token") {
        return Some(Global::Token);
    }
    (under("/v1/config") || under("/v1/connect/intentions")).then_some(Global::Always)
}

/// Whether a token write concerns a local token: the body's `Local`, else the stored token's.
fn token_is_local(state: &AppState, path: &str, body: &[u8]) -> bool {
    let sent = serde_json::from_slice::<serde_json::Value>(body)
        .ok()
        .and_then(|value| {
            let object = value.as_object()?;
            object
                .iter()
                .find(|(key, _)| key.eq_ignore_ascii_case("local"))
                .and_then(|(_, local)| local.as_bool())
        });
    sent.unwrap_or_else(|| {
        let accessor = path
            .strip_prefix("/v1/acl/token/")
            .and_then(|rest| rest.split('/').next())
            .unwrap_or_default();
        state
            .cluster
            .snapshot()
            .acl_token(accessor)
            .is_some_and(|token| token.local)
    })
}

pub async fn to_datacenter(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let local = &state.config.datacenter;
    if let Some(datacenter) = elsewhere(&request, local).map(str::to_string) {
        let (parts, body) = request.into_parts();
        return match read_body(&state, body).await {
            Ok(body) => carry(&state, datacenter, parts, body).await,
            Err(refused) => refused,
        };
    }
    let Some(global) = global_write(request.method(), request.uri().path()) else {
        return next.run(request).await;
    };
    // A client agent hands a global write to a server of its datacenter, which knows where
    // the primary is; a server of the primary applies it.
    let client = state.cluster.is_client();
    let primary = &state.config.primary_datacenter;
    if !client && primary == local {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let body = match read_body(&state, body).await {
        Ok(body) => body,
        Err(refused) => return refused,
    };
    let stays =
        !client && global == Global::Token && token_is_local(&state, parts.uri.path(), &body);
    if stays {
        return next.run(Request::from_parts(parts, Body::from(body))).await;
    }
    let target = if client {
        local.clone()
    } else {
        primary.clone()
    };
    carry(&state, target, parts, body).await
}

/// The request's body, up to the largest any endpoint takes (the agent that answers applies
/// the endpoint's own limit), or the 400 for one that cannot be read.
async fn read_body(state: &AppState, body: Body) -> Result<axum::body::Bytes, Response> {
    let limits = &state.config.limits;
    let most = limits
        .http_max_body_size
        .max(limits.kv_max_value_size)
        .max(limits.txn_max_req_len)
        .max(limits.snapshot_max_size);
    axum::body::to_bytes(body, most).await.map_err(|error| {
        (
            StatusCode::BAD_REQUEST,
            format!("Failed to read request body: {error}"),
        )
            .into_response()
    })
}

/// Carries a request to a server of `datacenter` and returns its answer as it came.
async fn carry(
    state: &AppState,
    datacenter: String,
    parts: axum::http::request::Parts,
    body: axum::body::Bytes,
) -> Response {
    let headers = parts
        .headers
        .iter()
        .filter(|(name, _)| KEPT.contains(&name.as_str()))
        .filter_map(|(name, value)| Some((name.to_string(), value.to_str().ok()?.to_string())))
        .collect();
    let timeout = state.config.query.max_query_time + MARGIN;
    let forward = HttpForward {
        datacenter,
        method: parts.method.to_string(),
        path_and_query: parts
            .uri
            .path_and_query()
            .map_or_else(|| parts.uri.path().to_string(), ToString::to_string),
        headers,
        body: body.to_vec(),
        timeout_ms: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
    };
    match state.cluster.forward_http(forward).await {
        Ok(answer) => {
            let mut response = Response::new(Body::from(answer.body));
            *response.status_mut() =
                StatusCode::from_u16(answer.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let headers = response.headers_mut();
            // The body's framing is this hop's own.
            for (name, value) in answer.headers {
                if name == "content-length" || name == "transfer-encoding" {
                    continue;
                }
                if let (Ok(name), Ok(value)) = (
                    HeaderName::from_bytes(name.as_bytes()),
                    HeaderValue::from_str(&value),
                ) {
                    headers.append(name, value);
                }
            }
            response
        }
        // Consul's answer: a 500 with the error's text (`No path to datacenter`, ...).
        Err(error) => (StatusCode::INTERNAL_SERVER_ERROR, error.to_string()).into_response(),
    }
}
