//! `/v1/agent/metrics`, in Consul's JSON shape (`?format=prometheus` for the text format).
//!
//! Only what concord needs operators to see today: the leaf certificates' health (issue
//! failures, time left on each service's certificate), so that a certificate can never lapse
//! silently. The full metrics pipeline (the `metrics` crate and a Prometheus exporter) is a
//! later issue.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::SystemTime;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::reply;
use super::AppState;
use crate::acl::Access;
use crate::types::duration::{format_rfc3339, unix_now};

pub const LEAF_ISSUE_FAILURES: &str = "concord.connect.leaf.issue_failures";
pub const LEAF_SECONDS_LEFT: &str = "concord.connect.leaf.seconds_until_expiry";

pub async fn metrics(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::AgentRead)?;
    let failures = state.leaves.failures.load(Ordering::Relaxed);
    let now = SystemTime::now();
    let mut gauges: Vec<(String, f64)> = state
        .leaves
        .current()
        .iter()
        .map(|cert| {
            let left = cert
                .valid_before
                .duration_since(now)
                .map_or(0.0, |left| left.as_secs_f64());
            (cert.service.clone(), left)
        })
        .collect();
    gauges.sort_by(|a, b| a.0.cmp(&b.0));
    if call.get("format") == Some("prometheus") {
        let metric = |name: &str| name.replace(['.', '-'], "_");
        let mut text = format!(
            "# TYPE {0} counter\n{0} {failures}\n# TYPE {1} gauge\n",
            metric(LEAF_ISSUE_FAILURES),
            metric(LEAF_SECONDS_LEFT)
        );
        for (service, left) in &gauges {
            text.push_str(&format!(
                "{}{{service=\"{service}\"}} {left}\n",
                metric(LEAF_SECONDS_LEFT)
            ));
        }
        return Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text).into_response());
    }
    let gauges: Vec<Value> = gauges
        .into_iter()
        .map(|(service, left)| {
            json!({"Name": LEAF_SECONDS_LEFT, "Value": left, "Labels": {"service": service}})
        })
        .collect();
    let count = failures as f64;
    let body = json!({
        "Timestamp": format_rfc3339(unix_now()),
        "Gauges": gauges,
        "Points": [],
        "Counters": [{
            "Name": LEAF_ISSUE_FAILURES, "Count": failures, "Rate": 0.0, "Sum": count,
            "Min": 1.0, "Max": 1.0, "Mean": 1.0, "Stddev": 0.0, "Labels": {},
        }],
        "Samples": [],
    });
    Ok(reply::json(&body, call.pretty(&state)))
}
