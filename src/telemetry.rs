//! Metrics under Consul's names, through the `metrics` facade, with one process-wide recorder
//! behind it (metrics-exporter-prometheus). Call sites name a metric without its prefix
//! (`raft.apply`); `Named` puts `telemetry.metrics_prefix` in front and, unless
//! `disable_hostname` is set, this machine's hostname into gauge names, as Consul's go-metrics
//! does (`consul.<host>.runtime.num_goroutines`).
//!
//! Every name is in `METRICS`, the one list of what concord emits: it gives each its kind and
//! help text, and lets the JSON form of `/v1/agent/metrics` show Consul's dotted names (the
//! Prometheus text can only carry them with `_`). The JSON is read back from the exporter's
//! own rendering, so both forms come from one registry.
//!
//! Timers are in milliseconds, as Consul's. Values are cumulative since the agent started
//! (Consul's JSON shows the last 10-second interval instead; see ARCHITECTURE.md).

use std::collections::{BTreeMap, HashMap};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle, PrometheusRecorder};
use serde_json::{json, Value};

use crate::config::Telemetry as TelemetryConfig;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Counter,
    Gauge,
    /// A duration in milliseconds (a Prometheus summary).
    Timer,
}

pub const RAFT_APPLY: &str = "raft.apply";
pub const RAFT_COMMIT_TIME: &str = "raft.commitTime";
pub const RAFT_FSM_APPLY: &str = "raft.fsm.apply";
pub const RAFT_STATE_LEADER: &str = "raft.state.leader";
pub const RAFT_LAST_INDEX: &str = "raft.last_index";
pub const RAFT_APPLIED_INDEX: &str = "raft.applied_index";
pub const SERVER_IS_LEADER: &str = "server.isLeader";
pub const RPC_REQUEST: &str = "rpc.request";
pub const CLIENT_RPC: &str = "client.rpc";
pub const API_HTTP: &str = "api.http";
pub const KVS_APPLY: &str = "kvs.apply";
pub const TXN_APPLY: &str = "txn.apply";
pub const SESSION_APPLY: &str = "session.apply";
pub const CATALOG_REGISTER: &str = "catalog.register";
pub const CATALOG_DEREGISTER: &str = "catalog.deregister";
pub const CONFIG_ENTRY_APPLY: &str = "config_entry.apply";
pub const ACL_APPLY: &str = "acl.apply";
pub const PREPARED_QUERY_APPLY: &str = "prepared-query.apply";
pub const PREPARED_QUERY_EXECUTE: &str = "prepared-query.execute";
pub const CATALOG_SERVICE_QUERY: &str = "catalog.service.query";
pub const HEALTH_SERVICE_QUERY: &str = "health.service.query";
pub const STATE_NODES: &str = "state.nodes";
pub const STATE_SERVICE_INSTANCES: &str = "state.service_instances";
pub const STATE_KV_ENTRIES: &str = "state.kv_entries";
pub const DNS_DOMAIN_QUERY: &str = "dns.domain_query";
pub const DNS_PTR_QUERY: &str = "dns.ptr_query";
pub const XDS_SERVER_STREAMS: &str = "xds.server.streams";
pub const XDS_STREAMS: &str = "xds.streams";
pub const XDS_RESPONSES: &str = "xds.responses_sent";
pub const XDS_REJECTED: &str = "xds.rejected";
pub const XDS_RESOURCES: &str = "xds.resources";
pub const XDS_PENDING: &str = "xds.pending_responses";
pub const XDS_LAST_ACK_NONCE: &str = "xds.last_ack_nonce";
pub const XDS_CONVERGED: &str = "xds.converged";
pub const LEAF_ISSUE_FAILURES: &str = "connect.leaf.issue_failures";
pub const LEAF_SECONDS_LEFT: &str = "connect.leaf.seconds_until_expiry";
pub const CHECKS: &str = "agent.checks";
pub const TASKS: &str = "tasks";
pub const RUNTIME_GOROUTINES: &str = "runtime.num_goroutines";
pub const RUNTIME_SYS_BYTES: &str = "runtime.sys_bytes";
pub const GOSSIP_MEMBERS: &str = "gossip.members";
pub const GOSSIP_DROPPED: &str = "gossip.dropped_messages";

/// Everything concord emits: kind, name after the prefix, and its meaning (the HELP text).
pub const METRICS: &[(Kind, &str, &str)] = &[
    (
        Kind::Counter,
        RAFT_APPLY,
        "Writes committed through Raft on this leader.",
    ),
    (
        Kind::Timer,
        RAFT_COMMIT_TIME,
        "Time for one Raft entry (a batch of writes) to commit and apply, in ms.",
    ),
    (
        Kind::Timer,
        RAFT_FSM_APPLY,
        "Time to apply committed entries to the state store, in ms.",
    ),
    (
        Kind::Counter,
        RAFT_STATE_LEADER,
        "Times this server took leadership.",
    ),
    (
        Kind::Gauge,
        RAFT_LAST_INDEX,
        "Index of the last entry in this server's Raft log.",
    ),
    (
        Kind::Gauge,
        RAFT_APPLIED_INDEX,
        "Index of the last entry applied to this server's state.",
    ),
    (
        Kind::Gauge,
        SERVER_IS_LEADER,
        "1 while this server leads, else 0.",
    ),
    (
        Kind::Counter,
        RPC_REQUEST,
        "Requests from other agents this server answered.",
    ),
    (
        Kind::Counter,
        CLIENT_RPC,
        "Requests this agent sent to a server.",
    ),
    (
        Kind::Timer,
        API_HTTP,
        "HTTP API latency by method and route, in ms.",
    ),
    (
        Kind::Timer,
        KVS_APPLY,
        "Time to commit one KV write, in ms.",
    ),
    (
        Kind::Timer,
        TXN_APPLY,
        "Time to commit one transaction, in ms.",
    ),
    (
        Kind::Timer,
        SESSION_APPLY,
        "Time to commit a session create or destroy, in ms.",
    ),
    (
        Kind::Timer,
        CATALOG_REGISTER,
        "Time to commit a catalog registration, in ms.",
    ),
    (
        Kind::Timer,
        CATALOG_DEREGISTER,
        "Time to commit a catalog deregistration, in ms.",
    ),
    (
        Kind::Timer,
        CONFIG_ENTRY_APPLY,
        "Time to commit a config entry write or delete, in ms.",
    ),
    (
        Kind::Timer,
        ACL_APPLY,
        "Time to commit an ACL token, policy or role change, in ms.",
    ),
    (
        Kind::Timer,
        PREPARED_QUERY_APPLY,
        "Time to commit a prepared query write or delete, in ms.",
    ),
    (
        Kind::Timer,
        PREPARED_QUERY_EXECUTE,
        "Time to run a prepared query, in ms.",
    ),
    (
        Kind::Counter,
        CATALOG_SERVICE_QUERY,
        "Catalog queries for a service, by service.",
    ),
    (
        Kind::Counter,
        HEALTH_SERVICE_QUERY,
        "Health queries for a service, by service.",
    ),
    (Kind::Gauge, STATE_NODES, "Nodes in the catalog."),
    (
        Kind::Gauge,
        STATE_SERVICE_INSTANCES,
        "Service instances in the catalog.",
    ),
    (Kind::Gauge, STATE_KV_ENTRIES, "Keys in the KV store."),
    (
        Kind::Timer,
        DNS_DOMAIN_QUERY,
        "Time to answer a DNS query in the Consul domain, in ms.",
    ),
    (
        Kind::Timer,
        DNS_PTR_QUERY,
        "Time to answer a reverse (PTR) DNS query, in ms.",
    ),
    (Kind::Gauge, XDS_SERVER_STREAMS, "Open xDS streams."),
    (Kind::Gauge, XDS_STREAMS, "Open xDS streams by proxy."),
    (Kind::Counter, XDS_RESPONSES, "xDS responses sent."),
    (
        Kind::Counter,
        XDS_REJECTED,
        "xDS updates Envoy rejected (NACKed), in all and by proxy.",
    ),
    (
        Kind::Gauge,
        XDS_RESOURCES,
        "xDS resources by proxy, type and condition.",
    ),
    (
        Kind::Gauge,
        XDS_PENDING,
        "xDS responses Envoy has not answered, by proxy and type.",
    ),
    (
        Kind::Gauge,
        XDS_LAST_ACK_NONCE,
        "The last nonce Envoy ACKed, by proxy and type.",
    ),
    (
        Kind::Gauge,
        XDS_CONVERGED,
        "1 when a proxy holds everything it was sent, else 0.",
    ),
    (
        Kind::Counter,
        LEAF_ISSUE_FAILURES,
        "Leaf certificates that could not be issued.",
    ),
    (
        Kind::Gauge,
        LEAF_SECONDS_LEFT,
        "Seconds until each service's leaf certificate expires.",
    ),
    (Kind::Gauge, CHECKS, "This agent's checks by status."),
    (Kind::Gauge, TASKS, "The agent's long-lived tasks by name."),
    (
        Kind::Gauge,
        RUNTIME_GOROUTINES,
        "Tasks alive in the runtime (connections included).",
    ),
    (
        Kind::Gauge,
        RUNTIME_SYS_BYTES,
        "Resident memory of the agent process, in bytes.",
    ),
    (Kind::Gauge, GOSSIP_MEMBERS, "LAN pool members by status."),
    (
        Kind::Counter,
        GOSSIP_DROPPED,
        "Gossip messages refused (wrong or missing key, garbage).",
    ),
];

/// Milliseconds since `start`, for a timer.
pub fn ms_since(start: Instant) -> f64 {
    start.elapsed().as_secs_f64() * 1000.0
}

/// The process's metrics: the exporter's handle, and each exported name's dotted form.
pub struct Telemetry {
    handle: PrometheusHandle,
    /// Prometheus name (`consul_raft_apply`) to Consul's (`consul.raft.apply`).
    dotted: HashMap<String, String>,
}

static INSTALLED: OnceLock<Telemetry> = OnceLock::new();

/// Installs the process's recorder from the first agent's `telemetry` stanza (a process runs
/// one agent; tests that run several in one process share the first one's). Later calls
/// return the installed one.
pub fn install(config: &TelemetryConfig) -> &'static Telemetry {
    INSTALLED.get_or_init(|| {
        let mut builder = PrometheusBuilder::new();
        if !config.prometheus_retention_time.is_zero() {
            builder = builder.idle_timeout(
                metrics_util::MetricKindMask::ALL,
                Some(config.prometheus_retention_time),
            );
        }
        let inner = builder.build_recorder();
        let handle = inner.handle();
        let host = (!config.disable_hostname).then(hostname);
        let mut names = HashMap::new();
        let mut dotted = HashMap::new();
        for (kind, name, help) in METRICS {
            let full = match (kind, &host) {
                (Kind::Gauge, Some(host)) => format!("{}.{host}.{name}", config.metrics_prefix),
                _ => format!("{}.{name}", config.metrics_prefix),
            };
            if !allowed(config, &full) {
                names.insert(*name, None);
                continue;
            }
            let key = KeyName::from(full.clone());
            let help = SharedString::const_str(help);
            match kind {
                Kind::Counter => inner.describe_counter(key.clone(), None, help),
                Kind::Gauge => inner.describe_gauge(key.clone(), None, help),
                Kind::Timer => {
                    inner.describe_histogram(key.clone(), Some(Unit::Milliseconds), help)
                }
            }
            dotted.insert(
                metrics_exporter_prometheus::formatting::sanitize_metric_name(&full),
                full,
            );
            names.insert(*name, Some(key));
        }
        let recorder = Named {
            inner,
            names,
            prefix: config.metrics_prefix.clone(),
        };
        if metrics::set_global_recorder(recorder).is_err() {
            tracing::warn!(
                "a metrics recorder was already installed; /v1/agent/metrics stays empty"
            );
        }
        // Summaries keep every observation until upkeep folds them in; without it their
        // memory grows between scrapes.
        let upkeep = handle.clone();
        let _ = std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || loop {
                std::thread::sleep(Duration::from_secs(5));
                upkeep.run_upkeep();
            });
        Telemetry { handle, dotted }
    })
}

/// Whether `telemetry.prefix_filter` and `filter_default` keep the metric named `full`: the
/// longest matching prefix decides, as in Consul.
fn allowed(config: &TelemetryConfig, full: &str) -> bool {
    config
        .prefix_filter
        .iter()
        .filter(|rule| full.starts_with(&rule[1..]))
        .max_by_key(|rule| rule.len())
        .map_or(config.filter_default, |rule| rule.starts_with('+'))
}

/// This machine's hostname as it goes into a metric name.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|name| name.trim().to_string())
        .ok()
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "localhost".to_string())
}

impl Telemetry {
    /// The Prometheus text exposition format.
    pub fn prometheus(&self) -> String {
        self.handle.render()
    }

    /// Consul's JSON shape: `Gauges`, `Counters` and `Samples` (timers), read back from the
    /// Prometheus rendering so both forms show the same values.
    pub fn json(&self, timestamp: String) -> Value {
        let parsed = parse_exposition(&self.prometheus());
        let name = |prometheus: &str| {
            self.dotted
                .get(prometheus)
                .cloned()
                .unwrap_or_else(|| prometheus.to_string())
        };
        let mut gauges = Vec::new();
        let mut counters = Vec::new();
        let mut summaries: BTreeMap<(String, Vec<(String, String)>), Summary> = BTreeMap::new();
        for sample in parsed {
            let labels = |skip: &str| -> Vec<(String, String)> {
                sample
                    .labels
                    .iter()
                    .filter(|(key, _)| key != skip)
                    .cloned()
                    .collect()
            };
            match sample.kind.as_str() {
                "gauge" => gauges.push(json!({
                    "Name": name(&sample.family),
                    "Value": sample.value,
                    "Labels": label_map(&sample.labels),
                })),
                // Cumulative: as if each increment were one of 1.
                "counter" => counters.push(aggregate(
                    name(&sample.family),
                    &sample.labels,
                    Summary {
                        count: sample.value,
                        sum: sample.value,
                        min: 1.0,
                        max: 1.0,
                    },
                    1.0,
                )),
                "summary" => {
                    let entry = summaries
                        .entry((sample.family.clone(), labels("quantile")))
                        .or_default();
                    if sample.name.ends_with("_sum") && sample.name != sample.family {
                        entry.sum = sample.value;
                    } else if sample.name.ends_with("_count") && sample.name != sample.family {
                        entry.count = sample.value;
                    } else {
                        match sample.labels.iter().find(|(key, _)| key == "quantile") {
                            Some((_, q)) if q == "0" => entry.min = sample.value,
                            Some((_, q)) if q == "1" => entry.max = sample.value,
                            _ => {}
                        }
                    }
                }
                _ => {}
            }
        }
        let by_name = |a: &Value, b: &Value| {
            (a["Name"].as_str(), a["Labels"].to_string())
                .cmp(&(b["Name"].as_str(), b["Labels"].to_string()))
        };
        gauges.sort_by(by_name);
        counters.sort_by(by_name);
        let samples: Vec<Value> = summaries
            .into_iter()
            .map(|((family, labels), s)| {
                let mean = if s.count > 0.0 { s.sum / s.count } else { 0.0 };
                aggregate(name(&family), &labels, s, mean)
            })
            .collect();
        json!({
            "Timestamp": timestamp,
            "Gauges": gauges,
            "Points": [],
            "Counters": counters,
            "Samples": samples,
        })
    }
}

#[derive(Default)]
struct Summary {
    count: f64,
    sum: f64,
    min: f64,
    max: f64,
}

/// One entry of Consul's `Counters` or `Samples`: an aggregate over its interval (here, since
/// start); `Rate` and `Stddev` are not kept.
fn aggregate(name: String, labels: &[(String, String)], s: Summary, mean: f64) -> Value {
    json!({
        "Name": name,
        "Count": s.count as u64,
        "Rate": 0.0,
        "Sum": s.sum,
        "Min": s.min,
        "Max": s.max,
        "Mean": mean,
        "Stddev": 0.0,
        "Labels": label_map(labels),
    })
}

fn label_map(labels: &[(String, String)]) -> Value {
    labels
        .iter()
        .map(|(key, value)| (key.clone(), Value::String(value.clone())))
        .collect::<serde_json::Map<_, _>>()
        .into()
}

/// One sample line of the exposition format, with its family's name and type.
#[derive(Debug, PartialEq)]
struct Sample {
    family: String,
    kind: String,
    name: String,
    labels: Vec<(String, String)>,
    value: f64,
}

/// Reads the text exposition format (as the exporter writes it: `# TYPE` before each
/// family's samples, label values quoted with `\\`, `\"` and `\n` escaped).
fn parse_exposition(text: &str) -> Vec<Sample> {
    let mut family = String::new();
    let mut kind = String::new();
    let mut samples = Vec::new();
    for line in text.lines() {
        if let Some(typed) = line.strip_prefix("# TYPE ") {
            let mut parts = typed.split_whitespace();
            family = parts.next().unwrap_or_default().to_string();
            kind = parts.next().unwrap_or_default().to_string();
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let name_end = line.find(['{', ' ']).unwrap_or(line.len());
        let name = &line[..name_end];
        let (labels, rest) = if line[name_end..].starts_with('{') {
            parse_labels(&line[name_end + 1..])
        } else {
            (Vec::new(), &line[name_end..])
        };
        let value = rest
            .split_whitespace()
            .next()
            .and_then(|v| match v {
                "+Inf" => Some(f64::INFINITY),
                "-Inf" => Some(f64::NEG_INFINITY),
                v => v.parse().ok(),
            })
            .unwrap_or(f64::NAN);
        samples.push(Sample {
            family: family.clone(),
            kind: kind.clone(),
            name: name.to_string(),
            labels,
            value,
        });
    }
    samples
}

/// Labels up to the closing `}`, and what follows it.
fn parse_labels(text: &str) -> (Vec<(String, String)>, &str) {
    let mut labels = Vec::new();
    let mut rest = text;
    loop {
        rest = rest.trim_start_matches([',', ' ']);
        if let Some(after) = rest.strip_prefix('}') {
            return (labels, after);
        }
        let Some(eq) = rest.find("=\"") else {
            return (labels, "");
        };
        let key = rest[..eq].to_string();
        let mut value = String::new();
        let mut chars = rest[eq + 2..].char_indices();
        let mut end = rest.len();
        while let Some((at, c)) = chars.next() {
            match c {
                '\\' => match chars.next() {
                    Some((_, 'n')) => value.push('\n'),
                    Some((_, other)) => value.push(other),
                    None => {}
                },
                '"' => {
                    end = eq + 2 + at + 1;
                    break;
                }
                c => value.push(c),
            }
        }
        labels.push((key, value));
        rest = &rest[end.min(rest.len())..];
    }
}

/// Puts the prefix (and for gauges the hostname) in front of every name and drops what the
/// filter blocks; names come from `METRICS`, prepared once, so recording allocates no name.
struct Named {
    inner: PrometheusRecorder,
    /// Each listed name's full name, or none when the filter blocks it.
    names: HashMap<&'static str, Option<KeyName>>,
    prefix: String,
}

impl Named {
    /// The full key, or none for a blocked metric.
    fn key(&self, key: &Key) -> Option<Key> {
        let name = match self.names.get(key.name()) {
            Some(name) => name.clone()?,
            None => KeyName::from(format!("{}.{}", self.prefix, key.name())),
        };
        Some(Key::from_parts(
            name,
            key.labels().cloned().collect::<Vec<_>>(),
        ))
    }
}

impl Recorder for Named {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_counter(key, unit, description)
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_gauge(key, unit, description)
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.inner.describe_histogram(key, unit, description)
    }

    fn register_counter(&self, key: &Key, metadata: &Metadata<'_>) -> Counter {
        self.key(key).map_or_else(Counter::noop, |key| {
            self.inner.register_counter(&key, metadata)
        })
    }

    fn register_gauge(&self, key: &Key, metadata: &Metadata<'_>) -> Gauge {
        self.key(key)
            .map_or_else(Gauge::noop, |key| self.inner.register_gauge(&key, metadata))
    }

    fn register_histogram(&self, key: &Key, metadata: &Metadata<'_>) -> Histogram {
        self.key(key).map_or_else(Histogram::noop, |key| {
            self.inner.register_histogram(&key, metadata)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_is_read_back_with_labels_escapes_and_summaries() {
        let text = "# HELP consul_api_http HTTP API latency\n\
                    # TYPE consul_api_http summary\n\
                    consul_api_http{method=\"GET\",path=\"v1_kv_\",quantile=\"0\"} 0.5\n\
                    consul_api_http{method=\"GET\",path=\"v1_kv_\",quantile=\"1\"} 9\n\
                    consul_api_http_sum{method=\"GET\",path=\"v1_kv_\"} 12\n\
                    consul_api_http_count{method=\"GET\",path=\"v1_kv_\"} 4\n\
                    # TYPE consul_tasks gauge\n\
                    consul_tasks{name=\"a \\\"b\\\"\\\\c,d}\"} 3\n\
                    # TYPE consul_raft_apply counter\n\
                    consul_raft_apply 7\n";
        let samples = parse_exposition(text);
        assert_eq!(samples.len(), 6);
        assert_eq!(samples[0].family, "consul_api_http");
        assert_eq!(
            samples[0].labels,
            [
                ("method".to_string(), "GET".to_string()),
                ("path".to_string(), "v1_kv_".to_string()),
                ("quantile".to_string(), "0".to_string()),
            ]
        );
        assert_eq!(samples[3].name, "consul_api_http_count");
        assert_eq!(samples[3].value, 4.0);
        assert_eq!(samples[4].labels[0].1, "a \"b\"\\c,d}");
        assert_eq!(samples[4].value, 3.0);
        assert_eq!(
            (samples[5].kind.as_str(), samples[5].value),
            ("counter", 7.0)
        );
    }

    #[test]
    fn every_metric_is_listed_once() {
        let mut names: Vec<&str> = METRICS.iter().map(|(_, name, _)| *name).collect();
        names.sort_unstable();
        let before = names.len();
        names.dedup();
        assert_eq!(before, names.len(), "a metric is listed twice");
    }
}
