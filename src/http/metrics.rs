//! `/v1/agent/metrics`, in Consul's JSON shape (`?format=prometheus` for the text format).
//!
//! Only what concord needs operators to see today: the leaf certificates' health (issue
//! failures, time left on each service's certificate), so that a certificate can never lapse
//! silently; and the xDS server's (streams per proxy, responses sent, updates Envoy rejected
//! in all and per proxy; per stream whether it converged, its resources per type and
//! condition, responses unanswered and the last ACKed nonce per type), so that a rejected or
//! stuck configuration is never a silent stall; and the agent's tasks by name, with the
//! runtime's total, so a leak shows; and the LAN pool's members by status and the gossip
//! messages it refused (wrong or missing encryption, garbage), so an attack or a
//! misconfigured key shows. The full metrics pipeline (the `metrics`
//! crate and a Prometheus exporter) is a later issue.

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

pub const XDS_STREAMS: &str = "concord.xds.streams";
pub const XDS_RESPONSES: &str = "concord.xds.responses_sent";
pub const XDS_REJECTED: &str = "concord.xds.rejected";
pub const XDS_RESOURCES: &str = "concord.xds.resources";
pub const XDS_PENDING: &str = "concord.xds.pending_responses";
pub const XDS_LAST_ACK_NONCE: &str = "concord.xds.last_ack_nonce";
pub const XDS_CONVERGED: &str = "concord.xds.converged";
pub const TASKS: &str = "concord.tasks";
pub const RUNTIME_TASKS: &str = "concord.runtime.alive_tasks";
pub const GOSSIP_MEMBERS: &str = "concord.gossip.members";
pub const GOSSIP_DROPPED: &str = "concord.gossip.dropped_messages";

/// One exported value: its name, labels and value.
type Sample = (&'static str, Vec<(&'static str, String)>, f64);

pub async fn metrics(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::AgentRead(&state.config.node_name),
    )?;
    let now = SystemTime::now();
    let mut gauges: Vec<Sample> = state
        .leaves
        .current()
        .iter()
        .map(|cert| {
            let left = cert
                .valid_before
                .duration_since(now)
                .map_or(0.0, |left| left.as_secs_f64());
            (
                LEAF_SECONDS_LEFT,
                vec![("service", cert.service.clone())],
                left,
            )
        })
        .collect();
    let mut counters: Vec<Sample> = vec![
        (
            LEAF_ISSUE_FAILURES,
            Vec::new(),
            state.leaves.failures.load(Ordering::Relaxed) as f64,
        ),
        (
            XDS_RESPONSES,
            Vec::new(),
            state.xds.responses_sent.load(Ordering::Relaxed) as f64,
        ),
        (
            XDS_REJECTED,
            Vec::new(),
            state.xds.rejected.load(Ordering::Relaxed) as f64,
        ),
    ];
    // Per proxy: open streams, and how many of its updates Envoy rejected.
    for (proxy, status) in state.xds.proxies() {
        gauges.push((
            XDS_STREAMS,
            vec![("proxy", proxy.clone())],
            status.streams as f64,
        ));
        counters.push((XDS_REJECTED, vec![("proxy", proxy)], status.rejected as f64));
    }
    // Every long-lived task by name, and everything the runtime has alive (connections
    // included): a count that only grows is a leak.
    for (name, count) in state.tasks.alive() {
        gauges.push((TASKS, vec![("name", name.to_string())], count as f64));
    }
    gauges.push((
        RUNTIME_TASKS,
        Vec::new(),
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as f64,
    ));
    // Per stream: how many resources are in each condition, responses unanswered, the last
    // ACKed nonce per type, and whether it has converged (see `/v1/agent/xds` for detail).
    let reports = state
        .xds
        .inspect(None, super::xds_status::INSPECT_LIMIT)
        .await;
    for report in &reports {
        let proxy = || ("proxy", report.proxy.clone());
        gauges.push((
            XDS_CONVERGED,
            vec![proxy()],
            f64::from(u8::from(report.converged)),
        ));
        for t in &report.types {
            let kind = || ("type", super::xds_status::type_name(t.type_url).to_string());
            let mut by_condition = std::collections::BTreeMap::new();
            for resource in &t.resources {
                *by_condition
                    .entry(resource.condition.as_str())
                    .or_insert(0u32) += 1;
            }
            for (condition, count) in by_condition {
                gauges.push((
                    XDS_RESOURCES,
                    vec![proxy(), kind(), ("state", condition.to_string())],
                    f64::from(count),
                ));
            }
            gauges.push((XDS_PENDING, vec![proxy(), kind()], t.pending.len() as f64));
            if let Some((nonce, _)) = &t.last_ack {
                let sequence = u64::from_str_radix(nonce, 16).unwrap_or(0);
                gauges.push((XDS_LAST_ACK_NONCE, vec![proxy(), kind()], sequence as f64));
            }
        }
    }
    let members = state.lan.members().await;
    for status in [
        crate::gossip::MemberStatus::Alive,
        crate::gossip::MemberStatus::Failed,
        crate::gossip::MemberStatus::Left,
    ] {
        let count = members.iter().filter(|m| m.status == status).count();
        gauges.push((
            GOSSIP_MEMBERS,
            vec![("status", status.as_str().to_string())],
            count as f64,
        ));
    }
    counters.push((
        GOSSIP_DROPPED,
        Vec::new(),
        state.lan.dropped_messages() as f64,
    ));
    gauges.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    counters.sort_by(|a, b| (a.0, &a.1).cmp(&(b.0, &b.1)));
    if call.get("format") == Some("prometheus") {
        return Ok((
            [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
            prometheus(&counters, &gauges),
        )
            .into_response());
    }
    let labels = |labels: &[(&str, String)]| -> Value {
        labels
            .iter()
            .map(|(key, value)| (key.to_string(), Value::String(value.clone())))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let gauges: Vec<Value> = gauges
        .iter()
        .map(|(name, l, value)| json!({"Name": name, "Value": value, "Labels": labels(l)}))
        .collect();
    let counters: Vec<Value> = counters
        .iter()
        .map(|(name, l, value)| {
            json!({
                "Name": name, "Count": *value as u64, "Rate": 0.0, "Sum": value,
                "Min": 1.0, "Max": 1.0, "Mean": 1.0, "Stddev": 0.0, "Labels": labels(l),
            })
        })
        .collect();
    let body = json!({
        "Timestamp": format_rfc3339(unix_now()),
        "Gauges": gauges,
        "Points": [],
        "Counters": counters,
        "Samples": [],
    });
    Ok(reply::json(&body, call.pretty(&state)))
}

fn prometheus(counters: &[Sample], gauges: &[Sample]) -> String {
    let metric = |name: &str| name.replace(['.', '-'], "_");
    let mut text = String::new();
    let mut typed = std::collections::HashSet::new();
    for (kind, samples) in [("counter", counters), ("gauge", gauges)] {
        for (name, labels, value) in samples {
            if typed.insert(*name) {
                text.push_str(&format!("# TYPE {} {kind}\n", metric(name)));
            }
            let labels: Vec<String> = labels
                .iter()
                .map(|(key, value)| format!("{key}=\"{value}\""))
                .collect();
            let labels = if labels.is_empty() {
                String::new()
            } else {
                format!("{{{}}}", labels.join(","))
            };
            text.push_str(&format!("{}{labels} {value}\n", metric(name)));
        }
    }
    text
}
