//! `/v1/agent/xds`: how each Envoy stream stands, for operators (concord's own endpoint; Consul
//! has none). For every stream of every proxy (or of `?proxy=<id>`): per resource type, what
//! Envoy holds as far as the stream knows (name, current version, ACKed version, condition),
//! responses sent but not yet answered with their age, the last ACKed nonce, and whether the
//! stream has converged and generates what a generation from nothing would.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::response::Response;
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::reply;
use super::AppState;
use crate::acl::Access;
use crate::xds::server::StreamReport;

/// How long a report may take: a stream blocked on an Envoy that does not read is skipped.
pub const INSPECT_LIMIT: Duration = Duration::from_secs(2);

/// The short name of a resource type URL (`Cluster`, `ClusterLoadAssignment`, ...).
pub fn type_name(type_url: &str) -> &str {
    type_url.rsplit('.').next().unwrap_or(type_url)
}

pub async fn streams(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::AgentRead(&state.config.node_name),
    )?;
    let reports = state.xds.inspect(call.get("proxy"), INSPECT_LIMIT).await;
    let body: Vec<Value> = reports.iter().map(stream_json).collect();
    Ok(reply::json(
        &json!({ "Streams": body }),
        call.pretty(&state),
    ))
}

fn stream_json(report: &StreamReport) -> Value {
    let types: Vec<Value> = report
        .types
        .iter()
        .map(|t| {
            json!({
                "Type": type_name(t.type_url),
                "TypeURL": t.type_url,
                "Wildcard": t.wildcard,
                "AckedVersion": t.acked_version(),
                "LastAckNonce": t.last_ack.as_ref().map(|(nonce, _)| nonce.clone()),
                "LastAckSecondsAgo": t.last_ack.as_ref().map(|(_, age)| age.as_secs_f64()),
                "Resources": t.resources.iter().map(|r| json!({
                    "Name": r.name,
                    "Version": r.version,
                    "Acked": r.acked,
                    "Nonce": r.nonce,
                    "State": r.condition.as_str(),
                })).collect::<Vec<_>>(),
                "Pending": t.pending.iter().map(|p| json!({
                    "Nonce": p.nonce,
                    "AgeSeconds": p.age.as_secs_f64(),
                    "Names": p.names,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "Proxy": report.proxy,
        "Protocol": report.protocol,
        "Ready": report.ready,
        "Converged": report.converged,
        "DiffersFromFresh": report.differs_from_fresh.iter()
            .map(|(type_url, name)| json!({"Type": type_name(type_url), "Name": name}))
            .collect::<Vec<_>>(),
        "Endpoints": report.endpoints,
        "Types": types,
    })
}
