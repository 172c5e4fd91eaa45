//! `?dc=<other>`: a request for another datacenter is carried whole to a server there
//! (`rpc::federation`) and its answer returned as it came, so every endpoint behaves across
//! datacenters as it does at home. The agent's own endpoints (`/v1/agent/*`) are about this
//! agent and never travel.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderName, HeaderValue, StatusCode};
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

pub async fn to_datacenter(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    let Some(datacenter) = elsewhere(&request, &state.config.datacenter).map(str::to_string) else {
        return next.run(request).await;
    };
    let (parts, body) = request.into_parts();
    // The largest body any endpoint takes; the remote agent applies the endpoint's own limit.
    let limits = &state.config.limits;
    let most = limits
        .http_max_body_size
        .max(limits.kv_max_value_size)
        .max(limits.txn_max_req_len)
        .max(limits.snapshot_max_size);
    let body = match axum::body::to_bytes(body, most).await {
        Ok(body) => body,
        Err(error) => {
            return (
                StatusCode::BAD_REQUEST,
                format!("Failed to read request body: {error}"),
            )
                .into_response()
        }
    };
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
