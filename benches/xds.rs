//! xDS benchmark for a single `concord agent -dev` server: the cost of many idle delta ADS
//! streams, and how fast a config-entry write reaches every proxy. Each section spawns its own
//! fresh agent (HTTP and gRPC on free 127.0.0.1 ports, with `TMPDIR` pointed at a scratch
//! directory this binary removes) and stops it afterwards:
//!
//! * `streams`: 2,000 sidecar proxies (`web0`..`web1999`, each with an `api` upstream and one
//!   TTL check in place of the default alias and listening checks, see `web_service`) and two
//!   `api` instances (`api-v1`, `api-v2`) are registered with the agent, plus
//!   `service-defaults` (http), a `service-resolver` with v1/v2 subsets and an 80/20
//!   `service-splitter` for `api`. Once the catalog has settled, this binary opens one delta
//!   ADS stream per proxy (8 HTTP/2 connections × 250 streams) speaking as Envoy does (CDS and
//!   LDS wildcard, EDS for the clusters CDS names, RDS for `api`, every response ACKed at
//!   once) and waits until every stream has ACKed the `api` route configuration. Reported: the
//!   time that took (it includes signing 2,000 leaf certificates; this agent runs without the
//!   CSR rate limit, see `UNLIMITED_CSRS`), and the agent's VmRSS growth from before the streams opened to all of
//!   them idle and synced, per stream. Then 20 times the splitter's weights change: the time
//!   from just before the `PUT /v1/config` to each stream having received and ACKed the new
//!   `api` route (p50/p99/max per change and over all 40,000), proxy updates per second
//!   (2,000 / time until the last stream had it), the agent's CPU per proxy update, and
//!   checks that every stream got exactly one new route per change with the new weights;
//! * `envoy`: one real Envoy (from `concord connect envoy -bootstrap`) for `web`, with the same
//!   `api` config entries. 100 times the splitter's weights change: the time from just before
//!   the `PUT /v1/config` to Envoy's admin counter `http.<upstream prefix>.rds.api.update_success`
//!   moving (polled in a loop with 1 ms sleeps, one admin request per poll), p50/p99/max; each
//!   round's weights are then checked in `/config_dump`.
//!
//! Agents log at `info` (`CONCORD_BENCH_LOG_LEVEL` overrides it; see `AGENT_LOG_LEVEL`).
//! Run everything with `cargo bench --bench xds`, or one section with
//! `CONCORD_BENCH=envoy cargo bench --bench xds`. Envoy is `$ENVOY_BINARY`, else the repo's
//! `.venv/bin/envoy`, else `envoy` on PATH. The ADS client shares the machine's cores with the
//! agent, so CPU figures for both sides are reported. `cargo test` builds this target but skips
//! the work (it only runs when cargo passes `--bench`). All traffic goes to 127.0.0.1, and every
//! loop is bounded in both count and time.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::route::v3::{route, route_action, RouteConfiguration};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, Resource};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use prost::Message;
use serde_json::{json, Value};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tonic::transport::{Channel, Endpoint};

#[path = "common/mod.rs"]
mod common;
use common::agent::BenchAgent;
use common::http::Conn;
use common::process::{
    cpu_ticks, free_ports, log_problems, proc_status_kb, tail, CLOCK_TICKS_PER_SEC,
};
use common::{millis, Stats, Table};

const BINARY: &str = env!("CARGO_BIN_EXE_concord");
const SECTIONS: &[&str] = &["streams", "envoy"];

const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// The upstream every proxy has, and the route configuration named after it.
const UPSTREAM: &str = "api";

const PROXIES: usize = 2_000;
/// HTTP/2 connections the streams share (the agent allows 2,048 streams per connection).
const CHANNELS: usize = 8;
/// Connections registering the services.
const REGISTER_CONNECTIONS: usize = 8;
const WEB_PORT_BASE: u16 = 10_000;
const SIDECAR_PORT_BASE: u16 = 30_000;
/// Nothing binds upstream listeners in the `streams` section, so one port serves all proxies.
const UPSTREAM_BIND_PORT: u16 = 40_000;
/// The v1 share (%) of the splitter before any change, and the shares the changes cycle
/// through (each differs from the one before, wrapping around).
const INITIAL_V1: u32 = 80;
const V1_SHARES: [u32; 5] = [50, 60, 70, 90, 80];
const CHANGES: usize = 20;
/// How long the catalog must show no new index before the streams open; it also has to have
/// been that long since registration ended plus one sidecar check interval (10 s), so every
/// sidecar check has run once and written its status.
const SETTLE_QUIET: Duration = Duration::from_secs(3);
const SETTLE_MIN: Duration = Duration::from_secs(11);
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long all streams may take to sync (2,000 leaf certificates are signed on the way).
const SYNC_TIMEOUT: Duration = Duration::from_secs(180);
/// Idle time after the last stream synced before VmRSS is read.
const IDLE_BEFORE_RSS: Duration = Duration::from_secs(3);
/// How long one change may take to reach every stream before it counts as missed.
const CHANGE_TIMEOUT: Duration = Duration::from_secs(30);
/// Quiet time between changes, also the window in which spurious extra responses would show.
const CHANGE_PAUSE: Duration = Duration::from_millis(500);
const POLL_STREAMS_EVERY: Duration = Duration::from_millis(5);

const ENVOY_ROUNDS: usize = 100;
const ENVOY_READY_TIMEOUT: Duration = Duration::from_secs(60);
const ENVOY_ROUND_TIMEOUT: Duration = Duration::from_secs(10);
const ENVOY_POLL_SLEEP: Duration = Duration::from_millis(1);
const ENVOY_PAUSE: Duration = Duration::from_millis(50);
/// Upper bound on the whole `envoy` loop, far above what 100 rounds need.
const ENVOY_BUDGET: Duration = Duration::from_secs(300);

/// `-dev` defaults to debug, which logs every HTTP/2 frame of every xDS stream (the agent's
/// filter quiets hyper but not h2); the figures are for the production level.
const AGENT_LOG_LEVEL: &str = "info";
/// The `streams` agent signs leaves without the default 50 CSRs/s limit: under it, the leaf
/// cache's retries (backoff doubling to 30 s, no jitter) come back in lock-step and ~55 leaves
/// are signed per 30 s, so 2,000 proxies would need about 18 minutes to get certificates.
const UNLIMITED_CSRS: &str = "connect {\n  ca_config {\n    csr_max_per_second = 0\n  }\n}";

fn print_machine() {
    common::print_machine(
        BINARY,
        "bench: tonic delta ADS client (8 HTTP/2 connections) and hyper HTTP/1.1 client",
        "KB below = KiB of VmRSS; CPU % is of one core; latencies client-observed",
    );
    println!("envoy: {}", envoy_binary());
}

fn main() -> Result<()> {
    common::run_sections(
        "xds",
        SECTIONS,
        print_machine,
        |section, table| match section {
            "streams" => Box::pin(bench_streams(table)),
            _ => Box::pin(bench_envoy(table)),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Section: streams

async fn bench_streams(table: &mut Table) -> Result<()> {
    let mut agent = spawn_agent(&["-hcl", UNLIMITED_CSRS]).await?;
    agent.wait_registered().await?;
    let addr = agent.http;
    let mut control = Conn::connect(addr).await?;
    for entry in [
        json!({"Kind": "service-defaults", "Name": UPSTREAM, "Protocol": "http"}),
        resolver(),
        splitter(INITIAL_V1),
    ] {
        put_json(&mut control, "/v1/config", &entry).await?;
    }
    let registering = Instant::now();
    let mut bodies = api_instances();
    bodies.extend((0..PROXIES).map(|n| {
        web_service(
            &format!("web{n}"),
            WEB_PORT_BASE + n as u16,
            SIDECAR_PORT_BASE + n as u16,
            UPSTREAM_BIND_PORT,
            true,
        )
    }));
    register_all(addr, bodies).await?;
    println!(
        "registered {PROXIES} web services with sidecars and 2 api instances over \
         {REGISTER_CONNECTIONS} connections in {:.2} s",
        registering.elapsed().as_secs_f64()
    );
    // consul + web<n> + their sidecars + api + api-sidecar-proxy.
    let services = wait_settled(&mut control, 1 + 2 * PROXIES + 2, Instant::now()).await?;
    println!(
        "catalog settled ({services} services) {:.2} s after registration began",
        registering.elapsed().as_secs_f64()
    );
    let rss_before = agent.rss_kb()?;

    let opening = Instant::now();
    let mut channels = Vec::with_capacity(CHANNELS);
    for _ in 0..CHANNELS {
        channels.push(connect_channel(agent.grpc).await?);
    }
    let logs: Vec<Arc<Mutex<StreamLog>>> = (0..PROXIES)
        .map(|_| Arc::new(Mutex::new(StreamLog::default())))
        .collect();
    let mut streams = JoinSet::new();
    for (n, log) in logs.iter().enumerate() {
        streams.spawn(ads_stream(
            channels[n % CHANNELS].clone(),
            format!("web{n}-sidecar-proxy"),
            log.clone(),
        ));
    }
    let (synced, ended) = wait_synced(&logs, opening).await;
    let sync_secs = opening.elapsed().as_secs_f64();
    if synced < PROXIES {
        bail!(
            "only {synced} of {PROXIES} streams ACKed an `{UPSTREAM}` route within \
             {SYNC_TIMEOUT:?} ({ended} ended; first end: {:?}); agent log:\n{}",
            first_end(&logs),
            agent.log_tail()
        );
    }
    println!(
        "{PROXIES} streams opened and synced (every one ACKed the `{UPSTREAM}` route) in \
         {sync_secs:.2} s"
    );
    tokio::time::sleep(IDLE_BEFORE_RSS).await;
    let rss_idle = agent.rss_kb()?;
    let per_stream_kb = (rss_idle as f64 - rss_before as f64) / PROXIES as f64;
    println!(
        "agent VmRSS {:.1} MB before the streams, {:.1} MB with {PROXIES} idle synced streams: \
         {per_stream_kb:.1} KB per stream (peak VmHWM {:.1} MB, threads {})",
        rss_before as f64 / 1024.0,
        rss_idle as f64 / 1024.0,
        proc_status_kb(agent.pid, "VmHWM").unwrap_or(0) as f64 / 1024.0,
        proc_status_kb(agent.pid, "Threads").unwrap_or(0)
    );
    table.row(
        "2k streams: time to all synced (s)",
        format!("{sync_secs:.1}"),
        "-",
        None,
    );
    table.row(
        "2k streams: agent RSS per idle stream (KB)",
        format!(
            "{per_stream_kb:.1} ({:.1} -> {:.1} MB)",
            rss_before as f64 / 1024.0,
            rss_idle as f64 / 1024.0
        ),
        "<= 50",
        Some(per_stream_kb <= 50.0),
    );

    // The update phase.
    let routes_before: usize = logs.iter().map(|log| lock(log).routes.len()).sum();
    let others_before: u64 = logs.iter().map(|log| lock(log).others).sum();
    let agent_ticks = cpu_ticks(&agent.stat_path());
    let bench_ticks = cpu_ticks(Path::new("/proc/self/stat"));
    let mut busy = Duration::ZERO;
    let mut all = Vec::with_capacity(CHANGES * PROXIES);
    let mut rates = Vec::with_capacity(CHANGES);
    let mut puts = Vec::with_capacity(CHANGES);
    let (mut missed, mut wrong) = (0usize, 0usize);
    let mut previous = INITIAL_V1;
    for change in 0..CHANGES {
        let v1 = V1_SHARES[change % V1_SHARES.len()];
        let marks: Vec<(usize, String)> = logs
            .iter()
            .map(|log| {
                let log = lock(log);
                let version = log.routes.last().map(|r| r.version.clone());
                (log.routes.len(), version.unwrap_or_default())
            })
            .collect();
        let put_at = Instant::now();
        put_json(&mut control, "/v1/config", &splitter(v1)).await?;
        let put_ms = millis(put_at.elapsed());
        puts.push(put_ms);
        let mut latencies: Vec<Option<f64>> = vec![None; PROXIES];
        let mut pending = PROXIES;
        let deadline = put_at + CHANGE_TIMEOUT;
        while pending > 0 && Instant::now() < deadline {
            tokio::time::sleep(POLL_STREAMS_EVERY).await;
            for (n, log) in logs.iter().enumerate() {
                if latencies[n].is_some() {
                    continue;
                }
                let log = lock(log);
                let (seen, version) = &marks[n];
                if let Some(event) = log.routes[*seen..].iter().find(|r| r.version != *version) {
                    latencies[n] = Some(millis(event.acked.duration_since(put_at)));
                    if event.v1_share != Some(v1) {
                        wrong += 1;
                    }
                    pending -= 1;
                }
            }
        }
        busy += put_at.elapsed();
        missed += pending;
        let got: Vec<f64> = latencies.into_iter().flatten().collect();
        let stats = Stats::new(got.clone());
        let rate = stats.len() as f64 / (stats.max() / 1000.0);
        rates.push(rate);
        all.extend(got);
        println!(
            "change {:>2} (v1 {previous}% -> {v1}%): PUT answered in {put_ms:.1} ms; {} of \
             {PROXIES} streams updated: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms = {rate:.0} \
             proxy updates/s",
            change + 1,
            stats.len(),
            stats.pct(0.5),
            stats.pct(0.99),
            stats.max()
        );
        previous = v1;
        tokio::time::sleep(CHANGE_PAUSE).await;
    }
    let agent_cpu =
        cpu_ticks(&agent.stat_path()).saturating_sub(agent_ticks) as f64 / CLOCK_TICKS_PER_SEC;
    let bench_cpu = cpu_ticks(Path::new("/proc/self/stat")).saturating_sub(bench_ticks) as f64
        / CLOCK_TICKS_PER_SEC;
    let routes_after: usize = logs.iter().map(|log| lock(log).routes.len()).sum();
    let others_after: u64 = logs.iter().map(|log| lock(log).others).sum();
    let extra_routes = (routes_after - routes_before).saturating_sub(CHANGES * PROXIES - missed);
    let other_responses = others_after - others_before;
    let ended = logs.iter().filter(|log| lock(log).ended.is_some()).count();
    let all = Stats::new(all);
    let rates = Stats::new(rates);
    let puts = Stats::new(puts);
    let updates = (CHANGES * PROXIES - missed).max(1) as f64;
    let cpu_us_per_update = agent_cpu * 1e6 / updates;
    let busy_secs = busy.as_secs_f64().max(1e-9);
    println!(
        "over {CHANGES} changes: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms; proxy updates/s \
         worst {:.0}, median {:.0}; {missed} missed, {wrong} with wrong weights, {extra_routes} \
         extra route responses, {other_responses} non-route responses, {ended} streams ended",
        all.pct(0.5),
        all.pct(0.99),
        all.max(),
        rates.pct(0.0),
        rates.pct(0.5),
    );
    println!(
        "CPU over the update phase ({busy_secs:.2} s of waiting for updates, {CHANGE_PAUSE:?} \
         pauses excluded from the %): agent {agent_cpu:.2} s = {:.0}% of one core = \
         {cpu_us_per_update:.0} us per proxy update; bench client {bench_cpu:.2} s",
        agent_cpu / busy_secs * 100.0
    );
    table.row(
        "route change -> 2k streams ACKed p50 / p99 / max (ms)",
        format!(
            "{:.1} / {:.1} / {:.1}",
            all.pct(0.5),
            all.pct(0.99),
            all.max()
        ),
        "p99 <= 1000",
        Some(all.pct(0.99) <= 1000.0 && missed == 0),
    );
    table.row(
        "proxy updates/s, worst / median of 20 changes",
        format!("{:.0} / {:.0}", rates.pct(0.0), rates.pct(0.5)),
        ">= 1000",
        Some(rates.pct(0.0) >= 1000.0 && missed == 0),
    );
    table.row(
        "agent CPU per proxy update (us); % of a core while updating",
        format!(
            "{cpu_us_per_update:.0}; {:.0}%",
            agent_cpu / busy_secs * 100.0
        ),
        "-",
        None,
    );
    table.row(
        "splitter PUT answered, p50 / max of 20 (ms)",
        format!("{:.1} / {:.1}", puts.pct(0.5), puts.max()),
        "-",
        None,
    );
    table.row(
        "missed / wrong weights / extra routes / other responses / ended",
        format!("{missed} / {wrong} / {extra_routes} / {other_responses} / {ended}"),
        "0 / 0 / 0 / 0 / 0",
        Some(missed + wrong + extra_routes + other_responses as usize + ended == 0),
    );

    streams.abort_all();
    while streams.join_next().await.is_some() {}
    drop(channels);
    drop(control);
    agent.report_log();
    agent.stop().await;
    Ok(())
}

/// An agent at `AGENT_LOG_LEVEL` (or `$CONCORD_BENCH_LOG_LEVEL`) with `extra` arguments.
async fn spawn_agent(extra: &[&str]) -> Result<BenchAgent> {
    let log_level = std::env::var("CONCORD_BENCH_LOG_LEVEL")
        .ok()
        .filter(|level| !level.is_empty())
        .unwrap_or_else(|| AGENT_LOG_LEVEL.to_string());
    let agent = BenchAgent::spawn(Some(&log_level), extra).await?;
    println!(
        "agent pid {}: HTTP {}, gRPC {}, log level {log_level}{}{}",
        agent.pid,
        agent.http,
        agent.grpc,
        if extra.is_empty() { "" } else { ", " },
        extra
            .join(" ")
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(agent)
}

/// What one simulated Envoy saw: every `api` route it ACKed, and how many other responses.
#[derive(Default)]
struct StreamLog {
    routes: Vec<RouteEvent>,
    others: u64,
    ended: Option<String>,
}

struct RouteEvent {
    /// Just after the ACK was handed to the request stream.
    acked: Instant,
    /// The resource version; empty for a removal.
    version: String,
    /// The v1 subset's share of the weighted clusters, in percent.
    v1_share: Option<u32>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

async fn connect_channel(grpc: SocketAddr) -> Result<Channel> {
    Endpoint::from_shared(format!("http://{grpc}"))?
        .tcp_nodelay(true)
        // Envoy's own windows are far larger than h2's 64 KiB default; the initial sync of 250
        // streams per connection should not wait on window updates.
        .initial_stream_window_size(Some(1 << 20))
        .initial_connection_window_size(Some(16 << 20))
        .connect()
        .await
        .with_context(|| format!("cannot connect to the gRPC port {grpc}"))
}

fn delta_request(type_url: &str, subscribe: Vec<String>, nonce: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.to_string(),
        resource_names_subscribe: subscribe,
        response_nonce: nonce.to_string(),
        ..Default::default()
    }
}

/// One simulated Envoy; records how its stream ended.
async fn ads_stream(channel: Channel, proxy: String, log: Arc<Mutex<StreamLog>>) {
    let outcome = drive_ads(channel, &proxy, &log).await;
    lock(&log).ended = Some(match outcome {
        Ok(()) => "the server ended the stream".to_string(),
        Err(error) => format!("{error:#}"),
    });
}

async fn drive_ads(channel: Channel, proxy: &str, log: &Mutex<StreamLog>) -> Result<()> {
    let (requests, outbound) = mpsc::channel::<DeltaDiscoveryRequest>(16);
    let mut first = delta_request(CLUSTER, Vec::new(), "");
    first.node = Some(Node {
        id: proxy.to_string(),
        cluster: proxy.trim_end_matches("-sidecar-proxy").to_string(),
        ..Default::default()
    });
    requests.send(first).await?;
    requests
        .send(delta_request(LISTENER, Vec::new(), ""))
        .await?;
    requests
        .send(delta_request(ROUTE, vec![UPSTREAM.to_string()], ""))
        .await?;
    let outbound = futures::stream::unfold(outbound, |mut outbound| async move {
        outbound.recv().await.map(|request| (request, outbound))
    });
    let mut client = AggregatedDiscoveryServiceClient::new(channel);
    let mut inbound = client
        .delta_aggregated_resources(outbound)
        .await
        .context("DeltaAggregatedResources")?
        .into_inner();
    let mut endpoints: BTreeSet<String> = BTreeSet::new();
    while let Some(response) = inbound.message().await? {
        if response.type_url == CLUSTER {
            // As Envoy: subscribe to the new clusters' endpoints before ACKing the clusters.
            let fresh: Vec<String> = response
                .resources
                .iter()
                .map(|resource| resource.name.clone())
                .filter(|name| name != "local_app" && !endpoints.contains(name))
                .collect();
            if !fresh.is_empty() {
                endpoints.extend(fresh.iter().cloned());
                requests.send(delta_request(ENDPOINT, fresh, "")).await?;
            }
        }
        requests
            .send(delta_request(
                &response.type_url,
                Vec::new(),
                &response.nonce,
            ))
            .await?;
        let acked = Instant::now();
        let mut log = lock(log);
        if response.type_url != ROUTE {
            log.others += 1;
            continue;
        }
        for resource in response.resources.iter().filter(|r| r.name == UPSTREAM) {
            log.routes.push(RouteEvent {
                acked,
                version: resource.version.clone(),
                v1_share: route_v1_share(resource),
            });
        }
        if response
            .removed_resources
            .iter()
            .any(|name| name == UPSTREAM)
        {
            log.routes.push(RouteEvent {
                acked,
                version: String::new(),
                v1_share: None,
            });
        }
    }
    Ok(())
}

/// The share (%) of the `v1.` clusters in a route configuration's weighted clusters.
fn route_v1_share(resource: &Resource) -> Option<u32> {
    let any = resource.resource.as_ref()?;
    let config = RouteConfiguration::decode(any.value.as_slice()).ok()?;
    let mut weights = BTreeMap::new();
    for route in config.virtual_hosts.iter().flat_map(|host| &host.routes) {
        let Some(route::Action::Route(action)) = &route.action else {
            continue;
        };
        let Some(route_action::ClusterSpecifier::WeightedClusters(clusters)) =
            &action.cluster_specifier
        else {
            continue;
        };
        for cluster in &clusters.clusters {
            let weight = cluster.weight.as_ref().map_or(0, |weight| weight.value);
            weights.insert(cluster.name.clone(), weight);
        }
    }
    share_of_v1(
        weights
            .iter()
            .map(|(name, weight)| (name.as_str(), *weight)),
    )
}

fn share_of_v1<'a>(weights: impl Iterator<Item = (&'a str, u32)>) -> Option<u32> {
    let (mut v1, mut total) = (0u64, 0u64);
    for (name, weight) in weights {
        total += u64::from(weight);
        if name.starts_with("v1.") {
            v1 += u64::from(weight);
        }
    }
    (total > 0).then(|| ((v1 * 100 + total / 2) / total) as u32)
}

/// Polls the stream logs until every stream has ACKed an `api` route (or ended, or time is
/// up); returns (synced, ended).
async fn wait_synced(logs: &[Arc<Mutex<StreamLog>>], opening: Instant) -> (usize, usize) {
    let deadline = opening + SYNC_TIMEOUT;
    let mut next_report = opening + Duration::from_secs(10);
    loop {
        let (mut synced, mut ended) = (0, 0);
        for log in logs {
            let log = lock(log);
            if log.routes.iter().any(|route| !route.version.is_empty()) {
                synced += 1;
            } else if log.ended.is_some() {
                ended += 1;
            }
        }
        let now = Instant::now();
        if synced + ended == logs.len() || now >= deadline {
            return (synced, ended);
        }
        if now >= next_report {
            println!(
                "  {:.0} s: {synced} streams synced, {ended} ended",
                opening.elapsed().as_secs_f64()
            );
            next_report += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn first_end(logs: &[Arc<Mutex<StreamLog>>]) -> Option<String> {
    logs.iter().find_map(|log| lock(log).ended.clone())
}

// ---------------------------------------------------------------------------------------------
// Section: envoy

async fn bench_envoy(table: &mut Table) -> Result<()> {
    let mut agent = spawn_agent(&[]).await?;
    agent.wait_registered().await?;
    let mut control = Conn::connect(agent.http).await?;
    for entry in [
        json!({"Kind": "service-defaults", "Name": UPSTREAM, "Protocol": "http"}),
        resolver(),
        splitter(INITIAL_V1),
    ] {
        put_json(&mut control, "/v1/config", &entry).await?;
    }
    let ports = free_ports(4)?;
    let (web_port, sidecar_port, bind_port, admin_port) = (ports[0], ports[1], ports[2], ports[3]);
    let mut bodies = api_instances();
    bodies.push(web_service("web", web_port, sidecar_port, bind_port, false));
    register_all(agent.http, bodies).await?;

    let bootstrap = Command::new(BINARY)
        .args(["connect", "envoy", "-sidecar-for", "web", "-bootstrap"])
        .args(["-http-addr", &agent.http.to_string()])
        .args(["-grpc-addr", &agent.grpc.to_string()])
        .args(["-admin-bind", &format!("127.0.0.1:{admin_port}")])
        .env("TMPDIR", agent.scratch())
        .stdin(Stdio::null())
        .output()
        .await
        .context("cannot run concord connect envoy -bootstrap")?;
    if !bootstrap.status.success() {
        bail!(
            "concord connect envoy -bootstrap failed ({}): {}",
            bootstrap.status,
            String::from_utf8_lossy(&bootstrap.stderr)
        );
    }
    let bootstrap_path = agent.scratch().join("bootstrap.json");
    std::fs::write(&bootstrap_path, &bootstrap.stdout)?;
    let envoy_log = agent.scratch().join("envoy.log");
    let log = File::create(&envoy_log)?;
    let base_id = rand::random::<u16>();
    let mut envoy = Command::new(envoy_binary())
        .arg("-c")
        .arg(&bootstrap_path)
        .args(["--disable-hot-restart", "--base-id", &base_id.to_string()])
        .args(["-l", "warning"])
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", envoy_binary()))?;
    let envoy_pid = envoy.id().unwrap_or(0);
    let admin = SocketAddr::from((Ipv4Addr::LOCALHOST, admin_port));
    let outcome = envoy_rounds(table, &mut control, &mut envoy, admin, &envoy_log).await;

    let envoy_text = std::fs::read_to_string(&envoy_log).unwrap_or_default();
    let problems = log_problems(&envoy_text, &["[warning]", "[error]", "[critical]"]);
    println!(
        "envoy (pid {envoy_pid}) log: {} warning/error lines{}",
        problems.0, problems.1
    );
    let _ = envoy.kill().await;
    drop(control);
    agent.report_log();
    agent.stop().await;
    outcome
}

async fn envoy_rounds(
    table: &mut Table,
    control: &mut Conn,
    envoy: &mut Child,
    admin: SocketAddr,
    envoy_log: &Path,
) -> Result<()> {
    let started = Instant::now();
    let mut admin_conn: Option<Conn> = None;
    let rds_stat = loop {
        if let Ok(Some(status)) = envoy.try_wait() {
            bail!(
                "envoy exited during start-up ({status}):\n{}",
                tail(&std::fs::read_to_string(envoy_log).unwrap_or_default(), 20)
            );
        }
        if started.elapsed() > ENVOY_READY_TIMEOUT {
            bail!(
                "envoy did not take listeners and the `{UPSTREAM}` route within \
                 {ENVOY_READY_TIMEOUT:?}:\n{}",
                tail(&std::fs::read_to_string(envoy_log).unwrap_or_default(), 20)
            );
        }
        if admin_conn.is_none() {
            admin_conn = Conn::connect(admin).await.ok();
        }
        if let Some(conn) = admin_conn.as_mut() {
            match envoy_ready(conn).await {
                Ok(Some(stat)) => break stat,
                Ok(None) => {}
                Err(_) => admin_conn = None,
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let mut admin_conn = admin_conn.ok_or_else(|| anyhow!("no admin connection"))?;
    println!(
        "envoy took its listeners and the `{UPSTREAM}` route {:.2} s after start; RDS counter: \
         {rds_stat}",
        started.elapsed().as_secs_f64()
    );
    let totals_before = envoy_stats(&mut admin_conn, "update_").await?;

    let mut applied = Vec::with_capacity(ENVOY_ROUNDS);
    let mut put_answered = Vec::with_capacity(ENVOY_ROUNDS);
    let (mut missed, mut wrong, mut extra) = (0usize, 0usize, 0u64);
    let budget = Instant::now() + ENVOY_BUDGET;
    let mut rounds = 0;
    for round in 0..ENVOY_ROUNDS {
        if Instant::now() >= budget {
            break;
        }
        rounds += 1;
        let v1 = V1_SHARES[round % V1_SHARES.len()];
        let before = envoy_stat(&mut admin_conn, &rds_stat).await?;
        let put_at = Instant::now();
        put_json(control, "/v1/config", &splitter(v1)).await?;
        put_answered.push(millis(put_at.elapsed()));
        let deadline = put_at + ENVOY_ROUND_TIMEOUT;
        let mut seen = None;
        while Instant::now() < deadline {
            let now_count = envoy_stat(&mut admin_conn, &rds_stat).await?;
            if now_count > before {
                seen = Some((Instant::now(), now_count));
                break;
            }
            tokio::time::sleep(ENVOY_POLL_SLEEP).await;
        }
        let Some((at, count)) = seen else {
            println!(
                "round {round}: the route update did not reach envoy in {ENVOY_ROUND_TIMEOUT:?}"
            );
            missed += 1;
            continue;
        };
        applied.push(millis(at.duration_since(put_at)));
        extra += count - before - 1;
        tokio::time::sleep(ENVOY_PAUSE).await;
        let share = envoy_route_share(&mut admin_conn).await?;
        if share != Some(v1) {
            println!("round {round}: envoy shows v1 {share:?}%, expected {v1}%");
            wrong += 1;
        }
        let settled = envoy_stat(&mut admin_conn, &rds_stat).await?;
        extra += settled - count;
    }
    let totals_after = envoy_stats(&mut admin_conn, "update_").await?;
    let applied = Stats::new(applied);
    let put_answered = Stats::new(put_answered);
    println!(
        "{} of {rounds} changes applied in envoy ({missed} missed, {wrong} with wrong weights, \
         {extra} extra RDS updates): write-to-applied p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, \
         max {:.2} ms, mean {:.2} ms; PUT answered p50 {:.2} ms, p99 {:.2} ms",
        applied.len(),
        applied.pct(0.5),
        applied.pct(0.9),
        applied.pct(0.99),
        applied.max(),
        applied.mean(),
        put_answered.pct(0.5),
        put_answered.pct(0.99),
    );
    let mut moved: Vec<String> = totals_after
        .iter()
        .filter_map(|(name, after)| {
            let before = totals_before.get(name).copied().unwrap_or(0);
            // update_time is a timestamp gauge, not a counter.
            (*after != before && !name.ends_with("update_time"))
                .then(|| format!("{name} +{}", after.saturating_sub(before)))
        })
        .collect();
    moved.sort();
    println!("envoy update counters that moved over the rounds: {moved:?}");
    table.row(
        "config write -> applied in envoy p50 / p99 / max (ms)",
        format!(
            "{:.2} / {:.2} / {:.2}",
            applied.pct(0.5),
            applied.pct(0.99),
            applied.max()
        ),
        "p50 <= 20, p99 <= 100",
        Some(
            applied.pct(0.5) <= 20.0
                && applied.pct(0.99) <= 100.0
                && missed == 0
                && applied.len() == ENVOY_ROUNDS,
        ),
    );
    table.row(
        "envoy rounds applied / missed / wrong weights / extra",
        format!("{} / {missed} / {wrong} / {extra}", applied.len()),
        "100 / 0 / 0 / 0",
        None,
    );
    table.row(
        "config PUT answered p50 / p99 (ms)",
        format!(
            "{:.2} / {:.2}",
            put_answered.pct(0.5),
            put_answered.pct(0.99)
        ),
        "-",
        None,
    );
    Ok(())
}

/// The RDS `update_success` counter's name once Envoy has listeners and the `api` route.
async fn envoy_ready(conn: &mut Conn) -> Result<Option<String>> {
    let stats = envoy_stats(conn, "update_success").await?;
    if stats
        .get("listener_manager.lds.update_success")
        .copied()
        .unwrap_or(0)
        < 1
    {
        return Ok(None);
    }
    let suffix = format!(".rds.{UPSTREAM}.update_success");
    let Some(stat) = stats
        .iter()
        .find(|(name, value)| name.ends_with(&suffix) && **value >= 1)
        .map(|(name, _)| name.clone())
    else {
        return Ok(None);
    };
    Ok(envoy_route_share(conn).await?.map(|_| stat))
}

/// Counters and gauges whose names contain `filter` (a plain string here).
async fn envoy_stats(conn: &mut Conn, filter: &str) -> Result<BTreeMap<String, u64>> {
    let answer = conn
        .request(
            Method::GET,
            &format!("/stats?filter={filter}"),
            Bytes::new(),
        )
        .await?;
    if answer.status != StatusCode::OK {
        bail!("envoy /stats answered {}", answer.status);
    }
    Ok(String::from_utf8_lossy(&answer.body)
        .lines()
        .filter_map(|line| {
            let (name, value) = line.split_once(": ")?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect())
}

async fn envoy_stat(conn: &mut Conn, name: &str) -> Result<u64> {
    let stats = envoy_stats(conn, name).await?;
    stats
        .get(name)
        .copied()
        .ok_or_else(|| anyhow!("envoy has no stat {name}"))
}

/// The v1 share (%) of the `api` route configuration Envoy holds.
async fn envoy_route_share(conn: &mut Conn) -> Result<Option<u32>> {
    let answer = conn
        .request(
            Method::GET,
            "/config_dump?resource=dynamic_route_configs",
            Bytes::new(),
        )
        .await?;
    if answer.status != StatusCode::OK {
        return Ok(None);
    }
    let dump: Value = serde_json::from_slice(&answer.body).context("config_dump is not JSON")?;
    let Some(config) = dump
        .get("configs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|config| config.get("route_config").unwrap_or(&Value::Null))
        .find(|config| config.get("name").and_then(Value::as_str) == Some(UPSTREAM))
    else {
        return Ok(None);
    };
    let mut weights = Vec::new();
    collect_weights(config, &mut weights);
    Ok(share_of_v1(
        weights
            .iter()
            .map(|(name, weight)| (name.as_str(), *weight)),
    ))
}

fn collect_weights(value: &Value, out: &mut Vec<(String, u32)>) {
    match value {
        Value::Object(map) => {
            if let Some(clusters) = map
                .get("weighted_clusters")
                .and_then(|w| w.get("clusters"))
                .and_then(Value::as_array)
            {
                for cluster in clusters {
                    let name = cluster.get("name").and_then(Value::as_str).unwrap_or("");
                    let weight = cluster.get("weight").and_then(Value::as_u64).unwrap_or(0);
                    out.push((name.to_string(), weight as u32));
                }
            }
            map.values().for_each(|v| collect_weights(v, out));
        }
        Value::Array(items) => items.iter().for_each(|v| collect_weights(v, out)),
        _ => {}
    }
}

fn envoy_binary() -> String {
    if let Ok(binary) = std::env::var("ENVOY_BINARY") {
        if !binary.is_empty() {
            return binary;
        }
    }
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if local.exists() {
        return local.display().to_string();
    }
    "envoy".into()
}

// ---------------------------------------------------------------------------------------------
// Services and config entries

fn resolver() -> Value {
    json!({
        "Kind": "service-resolver",
        "Name": UPSTREAM,
        "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        },
    })
}

fn splitter(v1: u32) -> Value {
    json!({
        "Kind": "service-splitter",
        "Name": UPSTREAM,
        "Splits": [
            {"Weight": v1, "ServiceSubset": "v1"},
            {"Weight": 100 - v1, "ServiceSubset": "v2"},
        ],
    })
}

/// `api-v1` and `api-v2`, each with a sidecar.
fn api_instances() -> Vec<Value> {
    ["v1", "v2"]
        .into_iter()
        .enumerate()
        .map(|(n, version)| {
            json!({
                "Name": UPSTREAM,
                "ID": format!("{UPSTREAM}-{version}"),
                "Port": 9001 + n,
                "Meta": {"version": version},
                "Connect": {"SidecarService": {"Port": 29001 + n}},
            })
        })
        .collect()
}

/// A `web` service with a sidecar that has an `api` upstream. With `ttl_check` the sidecar gets
/// one TTL check (never updated) instead of the default listening + alias checks: every alias
/// check re-scans the node's services and checks on each catalog write, so 2,000 of them make
/// anti-entropy quadratic (minutes to sync 2,000 sidecars on this machine, both cores busy).
fn web_service(name: &str, port: u16, sidecar_port: u16, bind_port: u16, ttl_check: bool) -> Value {
    let mut sidecar = json!({
        "Port": sidecar_port,
        "Proxy": {"Upstreams": [{"DestinationName": UPSTREAM, "LocalBindPort": bind_port}]},
    });
    if ttl_check {
        sidecar["Checks"] = json!([{
            "CheckID": format!("service:{name}-sidecar-proxy:ttl"),
            "Name": "bench sidecar TTL",
            "TTL": "24h",
        }]);
    }
    json!({
        "Name": name,
        "ID": name,
        "Port": port,
        "Connect": {"SidecarService": sidecar},
    })
}

/// Registers the services over a few connections.
async fn register_all(addr: SocketAddr, bodies: Vec<Value>) -> Result<()> {
    let bodies = Arc::new(bodies);
    let mut workers = JoinSet::new();
    for worker in 0..REGISTER_CONNECTIONS {
        let bodies = bodies.clone();
        workers.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            for body in bodies.iter().skip(worker).step_by(REGISTER_CONNECTIONS) {
                put_json(&mut conn, "/v1/agent/service/register", body).await?;
            }
            Ok::<(), anyhow::Error>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

async fn put_json(conn: &mut Conn, path: &str, body: &Value) -> Result<()> {
    let answer = conn
        .request(Method::PUT, path, Bytes::from(body.to_string()))
        .await?;
    if answer.status != StatusCode::OK {
        bail!(
            "PUT {path} answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    Ok(())
}

/// Waits until the catalog lists `services` services and its health index has stood still for
/// `SETTLE_QUIET`, at least `SETTLE_MIN` after `since`; returns the service count.
async fn wait_settled(conn: &mut Conn, services: usize, since: Instant) -> Result<usize> {
    let deadline = since + SETTLE_TIMEOUT;
    let mut last_index = 0;
    let mut quiet_since = Instant::now();
    loop {
        let answer = conn
            .request(Method::GET, "/v1/catalog/services", Bytes::new())
            .await?;
        let listed: serde_json::Map<String, Value> = serde_json::from_slice(&answer.body)
            .context("/v1/catalog/services is not a JSON object")?;
        let health = conn
            .request(Method::GET, "/v1/health/state/any", Bytes::new())
            .await?;
        let index = health.index.unwrap_or(0);
        if index != last_index || listed.len() < services {
            last_index = index;
            quiet_since = Instant::now();
        }
        let now = Instant::now();
        if listed.len() >= services
            && now.duration_since(quiet_since) >= SETTLE_QUIET
            && now.duration_since(since) >= SETTLE_MIN
        {
            return Ok(listed.len());
        }
        if now >= deadline {
            bail!(
                "the catalog did not settle within {SETTLE_TIMEOUT:?} ({} of {services} \
                 services, index still moving: {index})",
                listed.len()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The agent process

// ---------------------------------------------------------------------------------------------
// HTTP client
