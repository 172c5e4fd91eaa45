//! `/v1/agent/metrics`, in Consul's JSON shape (`?format=prometheus` for the text format),
//! from the process's recorder (`crate::telemetry`).
//!
//! Most series are recorded where things happen (Raft, HTTP, DNS, writes). The rest are state
//! read at scrape time and set into the recorder here: the leaf certificates' health (so a
//! certificate can never lapse silently); the xDS server's streams, responses and rejections,
//! and per stream whether it converged, its resources per type and condition, responses
//! unanswered and the last ACKed nonce per type (so a rejected or stuck configuration is never
//! a silent stall); the agent's tasks by name and the runtime's total (so a leak shows); the LAN
//! pool's members by status and the gossip messages it refused (so an attack or a
//! misconfigured key shows); Raft's indexes, the catalog's size and this agent's checks.
//! A series whose labels no longer occur (a proxy gone) is set to zero.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::params::Call;
use super::reply;
use super::AppState;
use crate::acl::Access;
use crate::telemetry::{self as names};
use crate::types::duration::{format_rfc3339, unix_now};

pub async fn metrics(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::AgentRead(&state.config.node_name),
    )?;
    let telemetry = names::install(&state.config.telemetry);
    collect(&state).await;
    if call.get("format") == Some("prometheus") {
        return Ok((
            [(
                header::CONTENT_TYPE,
                "text/plain; version=0.0.4; charset=utf-8",
            )],
            telemetry.prometheus(),
        )
            .into_response());
    }
    let body = telemetry.json(format_rfc3339(unix_now()));
    Ok(reply::json(&body, call.pretty(&state)))
}

/// A gauge series set at scrape time: name and labels.
type Series = (&'static str, Vec<(&'static str, String)>);

/// The gauge series the last scrape set, to zero those that are gone.
static LAST_SCRAPE: Mutex<Option<HashSet<Series>>> = Mutex::new(None);

/// Sets the scrape-time gauges, remembering which series it set.
#[derive(Default)]
struct Scrape {
    set: HashSet<Series>,
}

impl Scrape {
    fn gauge(&mut self, name: &'static str, labels: Vec<(&'static str, String)>, value: f64) {
        gauge_handle(name, &labels).set(value);
        self.set.insert((name, labels));
    }

    /// Zeroes what the previous scrape set and this one did not.
    fn finish(self) {
        let mut last = LAST_SCRAPE.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(previous) = last.as_ref() {
            for (name, labels) in previous.difference(&self.set) {
                gauge_handle(name, labels).set(0.0);
            }
        }
        *last = Some(self.set);
    }
}

fn gauge_handle(name: &'static str, labels: &[(&'static str, String)]) -> metrics::Gauge {
    let labels: Vec<metrics::Label> = labels
        .iter()
        .map(|(key, value)| metrics::Label::new(*key, value.clone()))
        .collect();
    metrics::gauge!(name, labels)
}

fn counter_total(name: &'static str, labels: Vec<metrics::Label>, total: u64) {
    metrics::counter!(name, labels).absolute(total);
}

/// Reads what is kept elsewhere into the recorder.
async fn collect(state: &AppState) {
    let mut scrape = Scrape::default();
    let now = SystemTime::now();
    for cert in state.leaves.current().iter() {
        let left = cert
            .valid_before
            .duration_since(now)
            .map_or(0.0, |left| left.as_secs_f64());
        scrape.gauge(
            names::LEAF_SECONDS_LEFT,
            vec![("service", cert.service.clone())],
            left,
        );
    }
    counter_total(
        names::LEAF_ISSUE_FAILURES,
        Vec::new(),
        state.leaves.failures.load(Ordering::Relaxed),
    );
    counter_total(
        names::XDS_RESPONSES,
        Vec::new(),
        state.xds.responses_sent.load(Ordering::Relaxed),
    );
    counter_total(
        names::XDS_REJECTED,
        Vec::new(),
        state.xds.rejected.load(Ordering::Relaxed),
    );
    // Per proxy: open streams, and how many of its updates Envoy rejected.
    let mut streams = 0;
    for (proxy, status) in state.xds.proxies() {
        streams += status.streams;
        scrape.gauge(
            names::XDS_STREAMS,
            vec![("proxy", proxy.clone())],
            status.streams as f64,
        );
        counter_total(
            names::XDS_REJECTED,
            vec![metrics::Label::new("proxy", proxy)],
            status.rejected,
        );
    }
    scrape.gauge(names::XDS_SERVER_STREAMS, Vec::new(), streams as f64);
    // Every long-lived task by name, and everything the runtime has alive (connections
    // included): a count that only grows is a leak.
    for (name, count) in state.tasks.alive() {
        scrape.gauge(names::TASKS, vec![("name", name.to_string())], count as f64);
    }
    scrape.gauge(
        names::RUNTIME_GOROUTINES,
        Vec::new(),
        tokio::runtime::Handle::current()
            .metrics()
            .num_alive_tasks() as f64,
    );
    if let Some(bytes) = resident_bytes() {
        scrape.gauge(names::RUNTIME_SYS_BYTES, Vec::new(), bytes as f64);
    }
    // Per stream: how many resources are in each condition, responses unanswered, the last
    // ACKed nonce per type, and whether it has converged (see `/v1/agent/xds` for detail).
    let reports = state
        .xds
        .inspect(None, super::xds_status::INSPECT_LIMIT)
        .await;
    for report in &reports {
        let proxy = || ("proxy", report.proxy.clone());
        scrape.gauge(
            names::XDS_CONVERGED,
            vec![proxy()],
            f64::from(u8::from(report.converged)),
        );
        for t in &report.types {
            let kind = || ("type", super::xds_status::type_name(t.type_url).to_string());
            let mut by_condition = std::collections::BTreeMap::new();
            for resource in &t.resources {
                *by_condition
                    .entry(resource.condition.as_str())
                    .or_insert(0u32) += 1;
            }
            for (condition, count) in by_condition {
                scrape.gauge(
                    names::XDS_RESOURCES,
                    vec![proxy(), kind(), ("state", condition.to_string())],
                    f64::from(count),
                );
            }
            scrape.gauge(
                names::XDS_PENDING,
                vec![proxy(), kind()],
                t.pending.len() as f64,
            );
            if let Some((nonce, _)) = &t.last_ack {
                let sequence = u64::from_str_radix(nonce, 16).unwrap_or(0);
                scrape.gauge(
                    names::XDS_LAST_ACK_NONCE,
                    vec![proxy(), kind()],
                    sequence as f64,
                );
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
        scrape.gauge(
            names::GOSSIP_MEMBERS,
            vec![("status", status.as_str().to_string())],
            count as f64,
        );
    }
    counter_total(
        names::GOSSIP_DROPPED,
        Vec::new(),
        state.lan.dropped_messages(),
    );
    let mut checks = std::collections::BTreeMap::new();
    for check in state.agent.checks() {
        *checks.entry(check.status.as_str()).or_insert(0u32) += 1;
    }
    for status in ["passing", "warning", "critical", "maintenance"] {
        let count = checks.get(status).copied().unwrap_or(0);
        scrape.gauge(
            names::CHECKS,
            vec![("status", status.to_string())],
            f64::from(count),
        );
    }
    // What a server holds: its Raft log's progress, its leadership, the catalog's size.
    if let Some(raft) = state.cluster.raft_status() {
        scrape.gauge(
            names::RAFT_LAST_INDEX,
            Vec::new(),
            raft.last_log_index as f64,
        );
        scrape.gauge(
            names::RAFT_APPLIED_INDEX,
            Vec::new(),
            raft.applied_index as f64,
        );
        scrape.gauge(
            names::SERVER_IS_LEADER,
            Vec::new(),
            f64::from(u8::from(raft.is_leader)),
        );
        let tables = state.cluster.snapshot();
        for (table, count) in tables.counts() {
            let name = match table {
                "Node" => names::STATE_NODES,
                "Service" => names::STATE_SERVICE_INSTANCES,
                "KVS" => names::STATE_KV_ENTRIES,
                _ => continue,
            };
            scrape.gauge(name, Vec::new(), count as f64);
        }
    }
    scrape.finish();
}

/// The process's resident memory, from `/proc/self/statm` (pages).
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * 4096)
}
