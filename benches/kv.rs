//! KV benchmark for a single `concord agent -dev` server, driven over its HTTP API from this
//! process. Each section spawns its own fresh agent (on a free 127.0.0.1 port, with `TMPDIR`
//! pointed at a scratch directory this binary removes) and stops it afterwards:
//!
//! * `start`: spawn to the first `PUT /v1/kv/probe` answering `true`, five times (median, max);
//! * `rss`: the agent's VmRSS 3 s after it first serves;
//! * `put`: 64 HTTP/1.1 connections writing unique 256-byte keys with 1 KiB values for 10 s;
//! * `seq`: 3,000 sequential durable PUTs over one connection (p50/p99/max);
//! * `get`: 64 connections reading 1,000 preloaded keys at random for 10 s (default consistency);
//! * `watch`: 10,000 blocking queries on distinct keys, each on its own connection: the agent's
//!   RSS growth, then write-to-wake latency for 500 sampled watchers woken one at a time;
//! * `acl`: the `put` and `get` loads twice, on an agent with ACLs off and on one with ACLs on
//!   (deny default), every request carrying a token with 100 policies of 20 rules each;
//! * `metrics`: the `put` and `get` loads with metrics off and on, seven alternating rounds;
//! * `query`: 64 connections executing one prepared query (10 passing instances) by name, then
//!   reading the same instances from `/v1/health/service` for comparison;
//! * `federation`: two `-dev` servers of two datacenters joined in the WAN pool; sequential
//!   GETs of one key in each, from the first: the latency `?dc=` adds;
//! * `tls`: the `get` load over plaintext HTTP and over HTTPS (keep-alive, TLS 1.3) on one
//!   agent, alternating three rounds each: the HTTPS/plaintext throughput ratio; then 2,000
//!   new TLS connections, each a full handshake, from 4 workers: agent CPU per handshake;
//! * `template`: 1,000 services, each with one instance, and one `concord template` process
//!   rendering 100 templates of 10 services each; 200 catalog changes (a service's port), each
//!   timed from the write's answer to the affected file's new content; then the process's RSS;
//! * `ui`: 1,000 services registered, then the web UI loaded ten times in Debian's Chromium
//!   (`tests/ui/bench.py`, Playwright): first contentful paint of `/ui/`, and the services
//!   page's time from its data's arrival to the next frame drawn with it.
//!
//! Run everything with `cargo bench --bench kv`, or a subset with
//! `CONCORD_BENCH=put,get cargo bench --bench kv`. The client shares the machine's cores with
//! the agent, so every load section also reports how many cores each side used;
//! `CONCORD_BENCH_CLIENT=raw` swaps the hyper client for a leaner hand-written HTTP/1.1 one, as
//! a check that client overhead is not what limits a figure. `cargo test`
//! builds this target but skips the work (it only runs when cargo passes `--bench`). All
//! traffic goes to 127.0.0.1, and every loop is bounded in both count and time.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch, Barrier, Semaphore};
use tokio::task::JoinSet;

#[path = "common/mod.rs"]
mod common;
use common::agent::BenchAgent;
use common::http::Answer;
use common::process::{own_stat_path, stat_path, CpuMeter};
use common::{millis, Stats, Table};

const BINARY: &str = env!("CARGO_BIN_EXE_concord");
const SECTIONS: &[&str] = &[
    "start",
    "rss",
    "put",
    "seq",
    "get",
    "watch",
    "acl",
    "metrics",
    "query",
    "federation",
    "tls",
    "template",
    "ui",
];

const KEY_BYTES: usize = 256;
const VALUE_BYTES: usize = 1024;
const LOAD_CONNECTIONS: usize = 64;
const LOAD_DURATION: Duration = Duration::from_secs(10);
/// Upper bound on requests per load worker, far above what 10 s allows.
const MAX_OPS_PER_WORKER: u64 = 5_000_000;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const START_RUNS: usize = 5;
const SEQUENTIAL_PUTS: u64 = 3_000;
const GET_KEYS: usize = 1_000;
const WATCHERS: usize = 10_000;
const WAKE_SAMPLES: usize = 500;
const CONNECT_PARALLELISM: usize = 256;

fn main() -> Result<()> {
    common::run_sections(
        "kv",
        SECTIONS,
        print_machine,
        |section, table| match section {
            "start" => Box::pin(bench_start(table)),
            "rss" => Box::pin(bench_idle_rss(table)),
            "put" => Box::pin(bench_put(table)),
            "seq" => Box::pin(bench_sequential(table)),
            "get" => Box::pin(bench_get(table)),
            "acl" => Box::pin(bench_acl(table)),
            "metrics" => Box::pin(bench_metrics(table)),
            "query" => Box::pin(bench_query(table)),
            "federation" => Box::pin(bench_federation(table)),
            "ui" => Box::pin(bench_ui(table)),
            "tls" => Box::pin(bench_tls(table)),
            "template" => Box::pin(bench_template(table)),
            _ => Box::pin(bench_watch(table)),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Sections

async fn bench_start(table: &mut Table) -> Result<()> {
    let mut times = Vec::with_capacity(START_RUNS);
    for run in 0..START_RUNS {
        let mut agent = BenchAgent::spawn(None, &[]).await?;
        let serving = agent.wait_writable().await?;
        let ms = millis(serving);
        println!("run {run}: first PUT /v1/kv/probe = true after {ms:.1} ms");
        times.push(ms);
        agent.stop().await;
    }
    let stats = Stats::new(times);
    table.row(
        "start-to-serving median (ms)",
        format!("{:.1}", stats.pct(0.5)),
        "<= 100",
        Some(stats.pct(0.5) <= 100.0),
    );
    table.row(
        "start-to-serving max (ms)",
        format!("{:.1}", stats.max()),
        "-",
        None,
    );
    Ok(())
}

async fn bench_idle_rss(table: &mut Table) -> Result<()> {
    let mut agent = BenchAgent::spawn(None, &[]).await?;
    agent.wait_writable().await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let rss = agent.rss_mb()?;
    println!(
        "VmRSS 3 s after serving: {rss:.1} MB, threads {}",
        agent.threads()
    );
    table.row(
        "idle RSS (MB)",
        format!("{rss:.1}"),
        "<= 25",
        Some(rss <= 25.0),
    );
    agent.stop().await;
    Ok(())
}

async fn bench_put(table: &mut Table) -> Result<()> {
    let mut agent = BenchAgent::spawn(None, &[]).await?;
    agent.wait_writable().await?;
    let value = value_bytes(VALUE_BYTES);
    let load = run_load(
        &agent,
        LOAD_CONNECTIONS,
        move |worker, n, _rng| {
            let path = format!("/v1/kv/{}", padded_key(&format!("bench/{worker:02}/"), n));
            (Method::PUT, path, value.clone())
        },
        |response| response.status == StatusCode::OK && response.body.trim_ascii() == b"true",
    )
    .await?;
    load.print("PUT");
    table.row(
        "PUT throughput, 64 conns (writes/s)",
        format!("{:.0}", load.rate()),
        ">= 10,000",
        Some(load.rate() >= 10_000.0),
    );
    load.rows(table, "PUT");
    agent.stop().await;
    Ok(())
}

async fn bench_sequential(table: &mut Table) -> Result<()> {
    let mut agent = BenchAgent::spawn(None, &[]).await?;
    agent.wait_writable().await?;
    let value = value_bytes(VALUE_BYTES);
    let mut conn = Conn::connect(agent.http).await?;
    let mut latencies = Vec::with_capacity(SEQUENTIAL_PUTS as usize);
    let cpu = agent_and_client_cpu(agent.pid);
    let started = Instant::now();
    for n in 0..SEQUENTIAL_PUTS {
        let path = format!("/v1/kv/{}", padded_key("seq/", n));
        let sent = Instant::now();
        let response = conn.request(Method::PUT, &path, value.clone()).await?;
        latencies.push(millis(sent.elapsed()));
        if response.status != StatusCode::OK || response.body.trim_ascii() != b"true" {
            bail!("sequential PUT {n} answered {}", response.status);
        }
    }
    let elapsed = started.elapsed();
    let cpu = CpuUse::from(cpu.finish());
    let stats = Stats::new(latencies);
    println!(
        "{SEQUENTIAL_PUTS} PUTs in {:.2} s: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms, \
         mean {:.3} ms; agent CPU {:.2} cores, client {:.2} cores",
        elapsed.as_secs_f64(),
        stats.pct(0.5),
        stats.pct(0.9),
        stats.pct(0.99),
        stats.max(),
        stats.mean(),
        cpu.agent,
        cpu.client
    );
    table.row(
        "sequential PUT p50 (ms)",
        format!("{:.3}", stats.pct(0.5)),
        "<= 0.3",
        Some(stats.pct(0.5) <= 0.3),
    );
    table.row(
        "sequential PUT p99 / max (ms)",
        format!("{:.3} / {:.3}", stats.pct(0.99), stats.max()),
        "-",
        None,
    );
    drop(conn);
    agent.stop().await;
    Ok(())
}

/// The `get` load's data: `GET_KEYS` keys with 1 KiB values; their read paths.
async fn preload_get_keys(addr: SocketAddr) -> Result<Arc<Vec<String>>> {
    let value = value_bytes(VALUE_BYTES);
    let keys: Vec<String> = (0..GET_KEYS as u64)
        .map(|n| padded_key("get/", n))
        .collect();
    let preload_started = Instant::now();
    preload(
        addr,
        keys.iter()
            .map(|key| (key.clone(), value.clone()))
            .collect(),
    )
    .await?;
    println!(
        "preloaded {GET_KEYS} keys in {:.2} s",
        preload_started.elapsed().as_secs_f64()
    );
    Ok(Arc::new(
        keys.iter().map(|key| format!("/v1/kv/{key}")).collect(),
    ))
}

async fn bench_get(table: &mut Table) -> Result<()> {
    let mut agent = BenchAgent::spawn(None, &[]).await?;
    agent.wait_writable().await?;
    let paths = preload_get_keys(agent.http).await?;
    let load = run_load(
        &agent,
        LOAD_CONNECTIONS,
        move |_worker, _n, rng| {
            let path = paths[rng.gen_range(0..paths.len())].clone();
            (Method::GET, path, Bytes::new())
        },
        |response| response.status == StatusCode::OK && response.index.is_some(),
    )
    .await?;
    load.print("GET");
    table.row(
        "GET throughput, 64 conns (reads/s)",
        format!("{:.0}", load.rate()),
        ">= 60,000",
        Some(load.rate() >= 60_000.0),
    );
    load.rows(table, "GET");
    agent.stop().await;
    Ok(())
}

/// TLS rounds per side in the `tls` section, and the handshakes it counts.
const TLS_ROUNDS: usize = 3;
const TLS_HANDSHAKES: usize = 2_000;

/// Agent TLS (issue 18): keep-alive GET throughput over HTTPS against plaintext on the same
/// agent and run, and the agent CPU one new TLS connection costs.
async fn bench_tls(table: &mut Table) -> Result<()> {
    use concord::tls::generate::{self, CaOptions, CertOptions, Role};
    let files = tempfile::tempdir()?;
    let ca = generate::ca(&CaOptions {
        days: 30,
        domain: "consul".into(),
        name_constraint: false,
        additional_name_constraints: Vec::new(),
        cluster_id: None,
        common_name: None,
    })?;
    let server = generate::cert(
        &ca.cert_pem,
        &ca.key_pem,
        &CertOptions {
            role: Role::Server,
            datacenter: "dc1".into(),
            domain: "consul".into(),
            node: None,
            days: 30,
            dns_names: Vec::new(),
            ip_addresses: Vec::new(),
        },
    )?;
    let path = |name: &str| files.path().join(name).display().to_string();
    std::fs::write(path("ca.pem"), &ca.cert_pem)?;
    std::fs::write(path("server.pem"), &server.cert_pem)?;
    std::fs::write(path("server-key.pem"), &server.key_pem)?;
    let config = serde_json::json!({"tls": {"defaults": {
        "ca_file": path("ca.pem"), "cert_file": path("server.pem"), "key_file": path("server-key.pem"),
    }}});
    std::fs::write(path("tls.json"), config.to_string())?;
    let https_port = common::process::free_ports(1)?[0];
    let mut agent = BenchAgent::spawn(
        Some("warn"),
        &[
            "-config-file",
            &path("tls.json"),
            "-https-port",
            &https_port.to_string(),
        ],
    )
    .await?;
    agent.wait_writable().await?;
    let https = SocketAddr::from(([127, 0, 0, 1], https_port));
    let client_config = concord::tls::client_config_from_files(&concord::tls::ClientFiles {
        ca_file: Some(path("ca.pem").into()),
        ..Default::default()
    })?;
    let paths = preload_get_keys(agent.http).await?;
    let mut plain_rates = Vec::new();
    let mut tls_rates = Vec::new();
    for round in 0..TLS_ROUNDS * 2 {
        let endpoint = match round % 2 {
            0 => Endpoint::Plain(agent.http),
            _ => Endpoint::Tls(https, client_config.clone()),
        };
        let paths = paths.clone();
        let load = run_load_on(
            agent.pid,
            endpoint,
            LOAD_CONNECTIONS,
            move |_worker, _n, rng| {
                let path = paths[rng.gen_range(0..paths.len())].clone();
                (Method::GET, path, Bytes::new())
            },
            |response| response.status == StatusCode::OK && response.index.is_some(),
        )
        .await?;
        let what = if round % 2 == 0 {
            "GET plaintext"
        } else {
            "GET HTTPS"
        };
        load.print(what);
        match round % 2 {
            0 => plain_rates.push(load.rate()),
            _ => tls_rates.push(load.rate()),
        }
    }
    let median = |rates: &mut Vec<f64>| {
        rates.sort_by(f64::total_cmp);
        rates[rates.len() / 2]
    };
    let (plain, tls) = (median(&mut plain_rates), median(&mut tls_rates));
    table.row(
        "GET plaintext, 64 keep-alive conns (reads/s, median of 3)",
        format!("{plain:.0}"),
        "-",
        None,
    );
    table.row(
        "GET HTTPS, 64 keep-alive conns (reads/s, median of 3)",
        format!("{tls:.0}"),
        "-",
        None,
    );
    table.row(
        "HTTPS / plaintext GET throughput",
        format!("{:.2}", tls / plain),
        ">= 0.70",
        Some(tls / plain >= 0.70),
    );

    // New connections, each a full handshake and nothing else.
    let cpu = agent_and_client_cpu(agent.pid);
    let started = Instant::now();
    let mut workers = JoinSet::new();
    for _ in 0..4 {
        let config = client_config.clone();
        workers.spawn(async move {
            let name = rustls::pki_types::ServerName::try_from("localhost")?;
            for _ in 0..TLS_HANDSHAKES / 4 {
                let tcp = TcpStream::connect(https).await?;
                tcp.set_nodelay(true)?;
                let mut stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name.clone(), tcp)
                    .await?;
                stream.shutdown().await?;
            }
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    let elapsed = started.elapsed();
    let cpu = CpuUse::from(cpu.finish());
    let agent_ms = cpu.agent * elapsed.as_secs_f64() * 1e3 / TLS_HANDSHAKES as f64;
    println!(
        "{TLS_HANDSHAKES} handshakes in {:.2} s: agent {:.2} cores, client {:.2} cores",
        elapsed.as_secs_f64(),
        cpu.agent,
        cpu.client
    );
    table.row(
        "agent CPU per new TLS connection (ms)",
        format!("{agent_ms:.3}"),
        "<= 1",
        Some(agent_ms <= 1.0),
    );
    agent.stop().await;
    Ok(())
}

const TEMPLATE_SERVICES: usize = 1_000;
const TEMPLATES: usize = 100;
const TEMPLATE_CHANGES: usize = 200;

/// `concord template` (issue 19): how soon a catalog change reaches the file of the template
/// that shows it, with 100 templates watching 1,000 services, and the process's memory.
async fn bench_template(table: &mut Table) -> Result<()> {
    let mut agent = BenchAgent::spawn(Some("warn"), &[]).await?;
    agent.wait_writable().await?;
    let register = |service: usize, port: usize| {
        serde_json::json!({
            "Node": format!("node-{}", service % 50),
            "Address": format!("10.0.{}.{}", service / 250, service % 250),
            "Service": {"ID": format!("svc-{service}"), "Service": format!("svc-{service}"), "Port": port},
        })
        .to_string()
    };
    let mut conn = Conn::connect(agent.http).await?;
    for service in 0..TEMPLATE_SERVICES {
        let answer = conn
            .request(
                Method::PUT,
                "/v1/catalog/register",
                Bytes::from(register(service, 8000)),
            )
            .await?;
        if answer.status != StatusCode::OK {
            bail!("register svc-{service}: {}", answer.status);
        }
    }
    let dir = tempfile::tempdir()?;
    let per = TEMPLATE_SERVICES / TEMPLATES;
    let mut args = vec!["template".to_string()];
    for template in 0..TEMPLATES {
        let mut text = String::new();
        for service in template * per..(template + 1) * per {
            text.push_str(&format!(
                "{{{{ range service \"svc-{service}\" }}}}server {{{{ .Address }}}}:{{{{ .Port }}}};\n{{{{ end }}}}"
            ));
        }
        let source = dir.path().join(format!("t{template}.ctmpl"));
        std::fs::write(&source, text)?;
        args.push("-template".into());
        args.push(format!(
            "{}:{}",
            source.display(),
            dir.path().join(format!("t{template}.out")).display()
        ));
    }
    let mut renderer = tokio::process::Command::new(BINARY)
        .args(&args)
        .env("CONSUL_HTTP_ADDR", agent.http.to_string())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let pid = renderer.id().ok_or_else(|| anyhow!("no pid"))?;
    let started = Instant::now();
    let out = |template: usize| dir.path().join(format!("t{template}.out"));
    while !(0..TEMPLATES).all(|template| out(template).exists()) {
        if started.elapsed() > Duration::from_secs(60) {
            bail!("templates not rendered within 60 s");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "{TEMPLATES} templates over {TEMPLATE_SERVICES} services rendered in {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let mut rng = StdRng::seed_from_u64(19);
    let mut latencies = Vec::with_capacity(TEMPLATE_CHANGES);
    for change in 0..TEMPLATE_CHANGES {
        let service = rng.gen_range(0..TEMPLATE_SERVICES);
        let port = 10_000 + change;
        let expected = format!(":{port};");
        let answer = conn
            .request(
                Method::PUT,
                "/v1/catalog/register",
                Bytes::from(register(service, port)),
            )
            .await?;
        if answer.status != StatusCode::OK {
            bail!("change svc-{service}: {}", answer.status);
        }
        let written = Instant::now();
        let path = out(service / per);
        loop {
            if std::fs::read_to_string(&path).is_ok_and(|text| text.contains(&expected)) {
                break;
            }
            if written.elapsed() > Duration::from_secs(10) {
                bail!("change {change} not rendered within 10 s");
            }
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        latencies.push(millis(written.elapsed()));
    }
    let rss_mb = common::process::proc_status_kb(pid, "VmRSS").unwrap_or(0) as f64 / 1024.0;
    let stats = Stats::new(latencies);
    println!(
        "change to file: p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; renderer RSS {rss_mb:.1} MB",
        stats.pct(0.5),
        stats.pct(0.99),
        stats.max()
    );
    table.row(
        "catalog change to re-rendered file, p99 (ms)",
        format!("{:.2}", stats.pct(0.99)),
        "<= 50",
        Some(stats.pct(0.99) <= 50.0),
    );
    table.row(
        "change to file, p50 / max (ms)",
        format!("{:.2} / {:.2}", stats.pct(0.5), stats.max()),
        "-",
        None,
    );
    table.row(
        "concord template RSS, 100 templates / 1,000 services (MB)",
        format!("{rss_mb:.1}"),
        "<= 30",
        Some(rss_mb <= 30.0),
    );
    let _ = renderer.kill().await;
    agent.stop().await;
    Ok(())
}

/// Instances of the service the `query` section's prepared query returns.
const QUERY_INSTANCES: usize = 10;

/// Prepared-query execution (issue 16): one query over a service with `QUERY_INSTANCES`
/// passing instances on as many nodes, executed by name from 64 connections.
async fn bench_query(table: &mut Table) -> Result<()> {
    let mut agent = BenchAgent::spawn(None, &[]).await?;
    agent.wait_writable().await?;
    let mut conn = Conn::connect(agent.http).await?;
    for n in 0..QUERY_INSTANCES {
        let body = format!(
            r#"{{"Node":"node-{n}","Address":"10.9.0.{n}","Service":{{"ID":"web","Service":"web","Port":80}},"Check":{{"CheckID":"alive","Name":"alive","Status":"passing","ServiceID":"web"}}}}"#
        );
        let answer = conn
            .request(Method::PUT, "/v1/catalog/register", Bytes::from(body))
            .await?;
        anyhow::ensure!(
            answer.status == StatusCode::OK,
            "register: {}",
            answer.status
        );
    }
    let query = r#"{"Name":"web-q","Service":{"Service":"web","OnlyPassing":true}}"#;
    let answer = conn
        .request(
            Method::POST,
            "/v1/query",
            Bytes::from_static(query.as_bytes()),
        )
        .await?;
    anyhow::ensure!(
        answer.status == StatusCode::OK,
        "query create: {}",
        answer.status
    );
    let load = run_load(
        &agent,
        LOAD_CONNECTIONS,
        |_worker, _n, _rng| {
            (
                Method::GET,
                "/v1/query/web-q/execute".to_string(),
                Bytes::new(),
            )
        },
        |response| response.status == StatusCode::OK && response.index.is_some(),
    )
    .await?;
    load.print("prepared-query execute");
    table.row(
        "prepared-query execute, 10 instances, 64 conns (/s)",
        format!("{:.0}", load.rate()),
        ">= 20,000",
        Some(load.rate() >= 20_000.0),
    );
    load.rows(table, "execute");
    // The same instances through the health endpoint, which shapes the same JSON: what
    // execution itself adds over a plain catalog read.
    let health = run_load(
        &agent,
        LOAD_CONNECTIONS,
        |_worker, _n, _rng| {
            (
                Method::GET,
                "/v1/health/service/web?passing".to_string(),
                Bytes::new(),
            )
        },
        |response| response.status == StatusCode::OK && response.index.is_some(),
    )
    .await?;
    health.print("health/service (same instances)");
    table.row(
        "health/service, same 10 instances, 64 conns (/s)",
        format!("{:.0}", health.rate()),
        "-",
        None,
    );
    health.rows(table, "health");
    agent.stop().await;
    Ok(())
}

/// Sequential reads per side in the `federation` section.
const FEDERATION_READS: usize = 2_000;

/// Cross-datacenter reads (issue 16): `GET /v1/kv/<key>` answered by the agent asked, against
/// the same through it with `?dc=` naming the other datacenter (over the server RPC port).
/// Services registered for the `ui` section.
const UI_SERVICES: usize = 1_000;
/// Fresh page loads the `ui` section times.
const UI_LOADS: usize = 10;

/// The web UI with 1,000 services (issue 17): first paint and the services page's render.
async fn bench_ui(table: &mut Table) -> Result<()> {
    let mut agent = BenchAgent::spawn(Some("warn"), &[]).await?;
    agent.wait_writable().await?;
    let mut conn = Conn::connect(agent.http).await?;
    for n in 0..UI_SERVICES {
        let body = format!(
            r#"{{"Node":"node-{}","Address":"10.8.{}.{}","Service":{{"ID":"svc-{n}","Service":"svc-{n}","Port":80,"Tags":["v1"]}},"Check":{{"CheckID":"alive-{n}","Name":"alive","Status":"passing","ServiceID":"svc-{n}"}}}}"#,
            n / 10,
            n / 256,
            n % 256
        );
        let answer = conn
            .request(Method::PUT, "/v1/catalog/register", Bytes::from(body))
            .await?;
        anyhow::ensure!(
            answer.status == StatusCode::OK,
            "register: {}",
            answer.status
        );
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let venv = format!("{root}/.venv/bin/python");
    let python = if std::path::Path::new(&venv).exists() {
        venv
    } else {
        "python3".into()
    };
    let base = format!("http://{}", agent.http);
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(python)
            .arg(format!("{root}/tests/ui/bench.py"))
            .args([base, UI_LOADS.to_string(), UI_SERVICES.to_string()])
            .current_dir(format!("{root}/tests/ui"))
            .output()
    })
    .await?
    .context("running tests/ui/bench.py (scripts/test installs Playwright and Chromium)")?;
    agent.stop().await;
    anyhow::ensure!(
        output.status.success(),
        "tests/ui/bench.py failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let figures: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    println!("ui: {figures}");
    let paint = figures["first_paint_ms"].as_f64().unwrap_or(f64::MAX);
    let render = figures["render_ms"].as_f64().unwrap_or(f64::MAX);
    table.row(
        "/ui/ first contentful paint, 1,000 services, median of 10 (ms)",
        format!(
            "{paint:.0} (max {:.0})",
            figures["first_paint_max_ms"].as_f64().unwrap_or(0.0)
        ),
        "<= 300",
        Some(paint <= 300.0),
    );
    table.row(
        "services page: data to drawn frame, 1,000 services, median of 10 (ms)",
        format!(
            "{render:.0} (max {:.0})",
            figures["render_max_ms"].as_f64().unwrap_or(0.0)
        ),
        "<= 200",
        Some(render <= 200.0),
    );
    Ok(())
}

async fn bench_federation(table: &mut Table) -> Result<()> {
    let (dc1_ip, dc2_ip) = ("127.0.38.1", "127.0.38.2");
    let mut dc1 = BenchAgent::spawn(Some("warn"), &["-datacenter", "dc1", "-bind", dc1_ip]).await?;
    let mut dc2 = BenchAgent::spawn(
        Some("warn"),
        &[
            "-datacenter",
            "dc2",
            "-bind",
            dc2_ip,
            "-retry-join-wan",
            dc1_ip,
            "-retry-interval-wan",
            "1s",
        ],
    )
    .await?;
    dc1.wait_writable().await?;
    dc2.wait_writable().await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let listed = dc1.client().get("/v1/catalog/datacenters").await;
        if listed.is_ok_and(|answer| answer.text().contains("dc2")) {
            break;
        }
        anyhow::ensure!(Instant::now() < deadline, "dc2 never joined dc1's WAN pool");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let value = value_bytes(VALUE_BYTES);
    let mut conn = Conn::connect(dc1.http).await?;
    for path in ["/v1/kv/fed", "/v1/kv/fed?dc=dc2"] {
        let answer = conn.request(Method::PUT, path, value.clone()).await?;
        anyhow::ensure!(answer.status == StatusCode::OK, "{path}: {}", answer.status);
    }
    let local = sequential_gets(&mut conn, "/v1/kv/fed").await?;
    let remote = sequential_gets(&mut conn, "/v1/kv/fed?dc=dc2").await?;
    let overhead = remote.pct(0.5) - local.pct(0.5);
    println!(
        "local GET p50 {:.3} ms p99 {:.3} ms; ?dc=dc2 GET p50 {:.3} ms p99 {:.3} ms",
        local.pct(0.5),
        local.pct(0.99),
        remote.pct(0.5),
        remote.pct(0.99)
    );
    table.row(
        "cross-DC ?dc= GET, p50 above a local read (ms)",
        format!("{overhead:.3}"),
        "<= 1",
        Some(overhead <= 1.0),
    );
    table.row(
        "local / ?dc= GET p50, sequential (ms)",
        format!("{:.3} / {:.3}", local.pct(0.5), remote.pct(0.5)),
        "-",
        None,
    );
    dc1.stop().await;
    dc2.stop().await;
    Ok(())
}

/// `FEDERATION_READS` GETs of `path` one after another on `conn`: their latencies in ms.
async fn sequential_gets(conn: &mut Conn, path: &str) -> Result<Stats> {
    let mut samples = Vec::with_capacity(FEDERATION_READS);
    for _ in 0..FEDERATION_READS {
        let sent = Instant::now();
        let answer = conn.request(Method::GET, path, Bytes::new()).await?;
        anyhow::ensure!(answer.status == StatusCode::OK, "{path}: {}", answer.status);
        samples.push(millis(sent.elapsed()));
    }
    Ok(Stats::new(samples))
}

/// The management token of the ACL section's agent, and the token every request carries.
const ACL_MANAGEMENT: &str = "0b7d2f3a-9c41-4e8f-a6d5-3e2c1b0a9f87";
const ACL_BENCH_TOKEN: &str = "5e4d3c2b-1a09-4f8e-b7d6-c5b4a3928170";
const ACL_POLICIES: usize = 100;
const ACL_RULES_PER_POLICY: usize = 20;

/// PUT then GET loads (as the `put` and `get` sections) with `query` on every path.
async fn put_and_get(agent: &BenchAgent, query: &'static str) -> Result<(Load, Load)> {
    let value = value_bytes(VALUE_BYTES);
    let put = run_load(
        agent,
        LOAD_CONNECTIONS,
        {
            let value = value.clone();
            move |worker, n, _rng| {
                let key = padded_key(&format!("bench/{worker:02}/"), n);
                (Method::PUT, format!("/v1/kv/{key}{query}"), value.clone())
            }
        },
        |response| response.status == StatusCode::OK && response.body.trim_ascii() == b"true",
    )
    .await?;
    let keys: Vec<String> = (0..GET_KEYS as u64)
        .map(|n| padded_key("get/", n))
        .collect();
    let paths: Arc<Vec<String>> = Arc::new(
        keys.iter()
            .map(|key| format!("/v1/kv/{key}{query}"))
            .collect(),
    );
    let mut conn = Conn::connect(agent.http).await?;
    for path in paths.iter() {
        let answer = conn.request(Method::PUT, path, value.clone()).await?;
        if answer.status != StatusCode::OK {
            bail!("preloading {path} answered {}", answer.status);
        }
    }
    let get = run_load(
        agent,
        LOAD_CONNECTIONS,
        move |_worker, _n, rng| {
            let path = paths[rng.gen_range(0..paths.len())].clone();
            (Method::GET, path, Bytes::new())
        },
        |response| response.status == StatusCode::OK && response.index.is_some(),
    )
    .await?;
    Ok((put, get))
}

/// Policies that match nothing the load touches but that every check walks past (prefixes
/// sharing the load's first bytes), plus the one granting the load's keys.
async fn acl_setup(agent: &BenchAgent) -> Result<()> {
    let admin = concord::api::client::Client::from_flags(
        Some(&agent.http.to_string()),
        Some(ACL_MANAGEMENT),
    )?;
    let deadline = Instant::now() + Duration::from_secs(30);
    // The leader stores the built-in policies right after it takes office.
    loop {
        let listed = admin.get("/v1/acl/policies").await;
        if listed.is_ok_and(|response| response.text().contains("global-management")) {
            break;
        }
        if Instant::now() > deadline {
            bail!("the ACL system did not initialize");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut links = Vec::new();
    for policy in 0..ACL_POLICIES {
        let mut rules = String::new();
        for rule in 0..ACL_RULES_PER_POLICY {
            let kind = ["key_prefix", "service_prefix", "node_prefix", "key"][rule % 4];
            let level = ["read", "write", "deny"][(policy + rule) % 3];
            rules.push_str(&format!(
                "{kind} \"bench/team-{policy}/svc-{rule}/\" {{ policy = \"{level}\" }}\n"
            ));
        }
        if policy == 0 {
            rules.push_str("key_prefix \"bench/\" { policy = \"write\" }\n");
            rules.push_str("key_prefix \"get/\" { policy = \"write\" }\n");
            rules.push_str("key \"probe\" { policy = \"write\" }\n");
            // The bench stops its agent with `PUT /v1/agent/leave`, carrying no token.
            rules.push_str("agent_prefix \"\" { policy = \"write\" }\n");
        }
        let name = format!("bench-{policy}");
        let body = serde_json::json!({"Name": name, "Rules": rules}).to_string();
        let response = admin.put("/v1/acl/policy", body.into_bytes()).await?;
        if !response.status.is_success() {
            bail!("creating {name}: {}", response.text());
        }
        links.push(serde_json::json!({"Name": name}));
    }
    let body = serde_json::json!({"SecretID": ACL_BENCH_TOKEN, "Policies": links}).to_string();
    let response = admin.put("/v1/acl/token", body.into_bytes()).await?;
    if !response.status.is_success() {
        bail!("creating the bench token: {}", response.text());
    }
    Ok(())
}

async fn bench_acl(table: &mut Table) -> Result<()> {
    let mut plain = BenchAgent::spawn(None, &[]).await?;
    plain.wait_writable().await?;
    let (put_off, get_off) = put_and_get(&plain, "").await?;
    plain.stop().await;
    put_off.print("PUT, ACLs off");
    get_off.print("GET, ACLs off");

    // The bench token is also the agent's default token, so the readiness probe (which
    // carries none) passes once it exists; the load names it on every request anyway.
    let hcl = format!(
        "acl {{\n enabled = true\n default_policy = \"deny\"\n tokens {{\n  initial_management = \"{ACL_MANAGEMENT}\"\n  default = \"{ACL_BENCH_TOKEN}\"\n }}\n}}"
    );
    let mut acl = BenchAgent::spawn(None, &["-hcl", &hcl]).await?;
    acl_setup(&acl).await?;
    acl.wait_writable().await?;
    let query: &'static str = Box::leak(format!("?token={ACL_BENCH_TOKEN}").into_boxed_str());
    let (put_on, get_on) = put_and_get(&acl, query).await?;
    acl.stop().await;
    put_on.print("PUT, ACLs on");
    get_on.print("GET, ACLs on");
    for (what, off, on) in [("PUT", &put_off, &put_on), ("GET", &get_off, &get_on)] {
        let ratio = on.rate() / off.rate();
        table.row(
            &format!(
                "{what} with ACLs on / off, 64 conns ({:.0} / {:.0} per s)",
                on.rate(),
                off.rate()
            ),
            format!("{ratio:.3}"),
            ">= 0.90",
            Some(ratio >= 0.90),
        );
    }
    Ok(())
}

/// Rounds of the metrics comparison: each runs PUT and GET on a fresh agent with metrics off
/// and on a fresh one with them on (which goes first alternates, so drift over the run does
/// not favour one); the medians are compared, so one noisy round cannot decide.
const METRICS_ROUNDS: usize = 7;

async fn bench_metrics(table: &mut Table) -> Result<()> {
    // Off: every metric blocked by the filter (`filter_default = false`, no allow rule), as an
    // operator turns them off; on: Consul's defaults.
    let off_hcl = "telemetry { filter_default = false }";
    let mut rates: [Vec<f64>; 4] = Default::default();
    // Agent CPU per request, beside throughput: it moves less with the client's share of
    // the two cores, so a real cost shows in it first.
    let mut cpu: [Vec<f64>; 4] = Default::default();
    for round in 0..METRICS_ROUNDS {
        let mut order = [(false, vec!["-hcl", off_hcl]), (true, vec![])];
        if round % 2 == 1 {
            order.reverse();
        }
        for (on, args) in order {
            let mut agent = BenchAgent::spawn(None, &args).await?;
            agent.wait_writable().await?;
            let (put, get) = put_and_get(&agent, "").await?;
            agent.stop().await;
            let label = if on { "on" } else { "off" };
            put.print(&format!("round {round}: PUT, metrics {label}"));
            get.print(&format!("round {round}: GET, metrics {label}"));
            let at = usize::from(on) * 2;
            rates[at].push(put.rate());
            rates[at + 1].push(get.rate());
            cpu[at].push(put.agent_us_per_op());
            cpu[at + 1].push(get.agent_us_per_op());
        }
    }
    let median = |values: &[f64]| Stats::new(values.to_vec()).pct(0.5);
    for (what, at) in [("PUT", 0), ("GET", 1)] {
        let (off, on) = (median(&rates[at]), median(&rates[at + 2]));
        let ratio = on / off;
        table.row(
            &format!(
                "{what} with metrics on / off, 64 conns, median of {METRICS_ROUNDS} ({on:.0} / {off:.0} per s)"
            ),
            format!("{ratio:.3}"),
            ">= 0.97",
            Some(ratio >= 0.97),
        );
        let (off, on) = (median(&cpu[at]), median(&cpu[at + 2]));
        table.row(
            &format!("{what} agent CPU per request on / off, median ({on:.1} / {off:.1} us)"),
            format!("{:.3}", on / off),
            "-",
            None,
        );
    }
    Ok(())
}

/// What a watcher task reports when its blocking query returns: its number, when, and status.
type Woken = (usize, Instant, u16);

async fn bench_watch(table: &mut Table) -> Result<()> {
    let mut agent = BenchAgent::spawn(None, &[]).await?;
    agent.wait_writable().await?;
    let addr = agent.http;
    let small = Bytes::from_static(b"watched-value-00");
    let preload_started = Instant::now();
    preload(
        addr,
        (0..WATCHERS)
            .map(|i| (format!("w/{i}"), small.clone()))
            .collect(),
    )
    .await?;
    println!(
        "preloaded {WATCHERS} keys in {:.2} s",
        preload_started.elapsed().as_secs_f64()
    );
    let indexes = modify_indexes(addr).await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = agent.rss_mb()?;
    let threads_before = agent.threads();
    println!("agent before watchers: VmRSS {rss_before:.1} MB, threads {threads_before}");

    let (submitted_tx, mut submitted_rx) = mpsc::unbounded_channel::<Result<(), String>>();
    let (woken_tx, mut woken_rx) = mpsc::unbounded_channel::<Woken>();
    let connect_slots = Arc::new(Semaphore::new(CONNECT_PARALLELISM));
    let mut watchers = JoinSet::new();
    let (go_tx, go_rx) = watch::channel(false);
    let opened = Instant::now();
    for i in 0..WATCHERS {
        let key = format!("w/{i}");
        let index = *indexes
            .get(&key)
            .ok_or_else(|| anyhow!("preloaded key {key} missing from the recurse read"))?;
        let path = format!("/v1/kv/{key}?index={index}&wait=5m");
        let slots = connect_slots.clone();
        let submitted = submitted_tx.clone();
        let woken = woken_tx.clone();
        let mut go = go_rx.clone();
        watchers.spawn(async move {
            let slot = slots.acquire().await;
            let mut conn = match Conn::connect_retrying(addr).await {
                Ok(conn) => conn,
                Err(error) => {
                    let _ = submitted.send(Err(format!("{error:#}")));
                    return;
                }
            };
            drop(slot);
            let _ = submitted.send(Ok(()));
            // Phase two: every connection is open; send the blocking query.
            if go.wait_for(|go| *go).await.is_err() {
                return;
            }
            let slot = slots.acquire().await;
            if let Err(error) = conn.send(Method::GET, &path, Bytes::new()).await {
                let _ = submitted.send(Err(format!("{error:#}")));
                return;
            }
            drop(slot);
            let _ = submitted.send(Ok(()));
            let answer = tokio::time::timeout(Duration::from_secs(330), conn.receive()).await;
            let status = match answer {
                Ok(Ok(answer)) => answer.status.as_u16(),
                _ => 0,
            };
            let _ = woken.send((i, Instant::now(), status));
            drop(conn);
        });
    }
    drop(submitted_tx);
    drop(woken_tx);

    // Phase one: open every connection, idle, to separate their cost from the queries'.
    let (connected, failed) = count_reports(&mut submitted_rx, WATCHERS).await;
    println!(
        "{connected} connections open ({} failed) in {:.2} s",
        failed.len(),
        opened.elapsed().as_secs_f64()
    );
    if let Some(error) = failed.first() {
        println!("first connect failure: {error}");
    }
    let rss_connected = settled_rss_mb(&agent).await?;
    println!(
        "agent with {connected} idle connections: VmRSS {rss_connected:.1} MB (+{:.1} MB)",
        rss_connected - rss_before
    );
    let sending = Instant::now();
    go_tx.send_replace(true);
    let (submitted, failed) = count_reports(&mut submitted_rx, connected).await;
    println!(
        "{submitted} blocking queries sent ({} failed) in {:.2} s",
        failed.len(),
        sending.elapsed().as_secs_f64()
    );
    if let Some(error) = failed.first() {
        println!("first send failure: {error}");
    }
    let rss_after = settled_rss_mb(&agent).await?;
    let threads_after = agent.threads();
    let mut premature = 0usize;
    while woken_rx.try_recv().is_ok() {
        premature += 1;
    }
    let growth = rss_after - rss_before;
    println!(
        "agent with {submitted} watchers: VmRSS {rss_after:.1} MB (+{growth:.1} MB in all, {:.2} \
         KB per watcher: {:.1} MB for the idle connections, {:.1} MB more once the queries were \
         in flight), threads {threads_after}; {premature} returned before any write",
        growth * 1024.0 / submitted.max(1) as f64,
        rss_connected - rss_before,
        rss_after - rss_connected
    );
    table.row(
        "10k watchers: agent RSS growth (MB)",
        format!("{growth:.1}"),
        "<= 50",
        Some(growth <= 50.0 && submitted == WATCHERS),
    );
    table.row(
        "  of which 10k idle connections (MB)",
        format!("{:.1}", rss_connected - rss_before),
        "-",
        None,
    );

    let mut writer = Conn::connect(addr).await?;
    let mut rng = StdRng::seed_from_u64(7);
    let sample = rand::seq::index::sample(&mut rng, WATCHERS, WAKE_SAMPLES);
    let mut wake = Vec::with_capacity(WAKE_SAMPLES);
    let mut after_ack = Vec::with_capacity(WAKE_SAMPLES);
    let mut woke_before_ack = 0usize;
    let mut stray = 0usize;
    let mut missed = 0usize;
    let value = Bytes::from_static(b"watched-value-01");
    for i in sample.iter() {
        while woken_rx.try_recv().is_ok() {
            stray += 1;
        }
        let path = format!("/v1/kv/w/{i}");
        let written = Instant::now();
        let response = writer.request(Method::PUT, &path, value.clone()).await?;
        let acknowledged = Instant::now();
        if response.status != StatusCode::OK {
            bail!("waking PUT {path} answered {}", response.status);
        }
        let give_up = written + Duration::from_secs(5);
        loop {
            match tokio::time::timeout_at(give_up.into(), woken_rx.recv()).await {
                Ok(Some((id, at, status))) if id == i => {
                    if status != 200 {
                        println!("watcher {i} returned status {status}");
                    }
                    wake.push(millis(at.duration_since(written)));
                    let (sign, gap) = match at.checked_duration_since(acknowledged) {
                        Some(gap) => (1.0, gap),
                        None => {
                            woke_before_ack += 1;
                            (-1.0, acknowledged.duration_since(at))
                        }
                    };
                    after_ack.push(sign * millis(gap));
                    break;
                }
                Ok(Some(_)) => stray += 1,
                _ => {
                    missed += 1;
                    break;
                }
            }
        }
    }
    let wake = Stats::new(wake);
    let after_ack = Stats::new(after_ack);
    println!(
        "woke {} of {WAKE_SAMPLES} sampled watchers ({missed} missed, {stray} other watchers \
         returned): write-to-wake p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        wake.len(),
        wake.pct(0.5),
        wake.pct(0.99),
        wake.max()
    );
    println!(
        "watcher return minus PUT ack: p50 {:.3} ms, p99 {:.3} ms ({woke_before_ack} watchers \
         returned before the PUT's own answer)",
        after_ack.pct(0.5),
        after_ack.pct(0.99)
    );
    table.row(
        "wake latency p50 / p99 / max (ms)",
        format!(
            "{:.2} / {:.2} / {:.2}",
            wake.pct(0.5),
            wake.pct(0.99),
            wake.max()
        ),
        "p99 <= 10",
        Some(wake.pct(0.99) <= 10.0 && missed == 0),
    );
    table.row(
        "watcher return - PUT ack p99 (ms)",
        format!("{:.2}", after_ack.pct(0.99)),
        "-",
        None,
    );
    let closing = Instant::now();
    watchers.shutdown().await;
    drop(writer);
    println!(
        "dropped the watchers in {:.2} s",
        closing.elapsed().as_secs_f64()
    );
    agent.stop().await;
    Ok(())
}

/// Counts `expected` watcher reports (successes, and failures with their errors), waiting at
/// most two minutes in all.
async fn count_reports(
    reports: &mut mpsc::UnboundedReceiver<Result<(), String>>,
    expected: usize,
) -> (usize, Vec<String>) {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut ok = 0usize;
    let mut failed = Vec::new();
    while ok + failed.len() < expected {
        match tokio::time::timeout_at(deadline.into(), reports.recv()).await {
            Ok(Some(Ok(()))) => ok += 1,
            Ok(Some(Err(error))) => failed.push(error),
            _ => break,
        }
    }
    (ok, failed)
}

// ---------------------------------------------------------------------------------------------
// The agent process

/// RSS once it has stopped moving: at least 2 s, then until two readings 500 ms apart
/// differ by under 0.25 MB, at most 15 s.
async fn settled_rss_mb(agent: &BenchAgent) -> Result<f64> {
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut last = agent.rss_mb()?;
    for _ in 0..26 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = agent.rss_mb()?;
        if (now - last).abs() < 0.25 {
            return Ok(now);
        }
        last = now;
    }
    Ok(last)
}

/// Cores used by the agent and by this bench over one measurement.
struct CpuUse {
    agent: f64,
    client: f64,
}

fn agent_and_client_cpu(pid: u32) -> CpuMeter {
    CpuMeter::start(&[stat_path(pid), own_stat_path()])
}

impl From<Vec<f64>> for CpuUse {
    fn from(cores: Vec<f64>) -> CpuUse {
        CpuUse {
            agent: cores.first().copied().unwrap_or(0.0),
            client: cores.get(1).copied().unwrap_or(0.0),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// Which HTTP/1.1 client the bench drives the agent with (`CONCORD_BENCH_CLIENT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ClientKind {
    /// `hyper::client::conn::http1`: a request/response dispatch task per connection.
    Hyper,
    /// A minimal client: one buffer write per request, `Content-Length` framed responses read
    /// on the calling task. Cheaper per request, so it leaves more of the shared cores to the
    /// agent.
    Raw,
}

static CLIENT: OnceLock<ClientKind> = OnceLock::new();

fn client_kind() -> ClientKind {
    *CLIENT.get_or_init(|| match std::env::var("CONCORD_BENCH_CLIENT").as_deref() {
        Ok("raw") => ClientKind::Raw,
        _ => ClientKind::Hyper,
    })
}

/// One HTTP/1.1 connection to the agent, with at most one request in flight.
enum Conn {
    Hyper(common::http::Conn),
    Raw { stream: TcpStream, buffer: Vec<u8> },
}

/// Largest response head the raw client accepts, and the largest body.
const MAX_HEAD_BYTES: usize = 64 * 1024;
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;

/// Where a load's connections go.
#[derive(Clone)]
enum Endpoint {
    Plain(SocketAddr),
    /// HTTPS, checking the agent's certificate (named `localhost`) with this configuration.
    Tls(SocketAddr, Arc<rustls::ClientConfig>),
}

impl Conn {
    async fn open(endpoint: &Endpoint) -> Result<Conn> {
        match endpoint {
            Endpoint::Plain(addr) => Conn::connect(*addr).await,
            Endpoint::Tls(addr, config) => {
                let tcp = TcpStream::connect(addr).await?;
                tcp.set_nodelay(true)?;
                let name = rustls::pki_types::ServerName::try_from("localhost")?;
                let stream = tokio_rustls::TlsConnector::from(config.clone())
                    .connect(name, tcp)
                    .await?;
                Ok(Conn::Hyper(common::http::Conn::over(stream).await?))
            }
        }
    }

    async fn connect(addr: SocketAddr) -> Result<Conn> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        Ok(match client_kind() {
            ClientKind::Raw => Conn::Raw {
                stream,
                buffer: Vec::with_capacity(8 * 1024),
            },
            ClientKind::Hyper => Conn::Hyper(common::http::Conn::over(stream).await?),
        })
    }

    async fn connect_retrying(addr: SocketAddr) -> Result<Conn> {
        let mut last = None;
        for _ in 0..50 {
            match Conn::connect(addr).await {
                Ok(conn) => return Ok(conn),
                Err(error) => last = Some(error),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or_else(|| anyhow!("no connect attempt")))
    }

    /// Sends a request; once this returns, the request is on its way (hyper: handed to the
    /// connection's driver; raw: written to the socket).
    async fn send(&mut self, method: Method, path: &str, body: Bytes) -> Result<()> {
        match self {
            Conn::Hyper(conn) => conn.send(method, path, body).await?,
            Conn::Raw { stream, .. } => {
                let mut wire = format!(
                    "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n\r\n",
                    body.len()
                )
                .into_bytes();
                wire.extend_from_slice(&body);
                stream.write_all(&wire).await?;
            }
        }
        Ok(())
    }

    /// Waits for the answer to the request `send` sent.
    async fn receive(&mut self) -> Result<Answer> {
        match self {
            Conn::Hyper(conn) => conn.receive().await,
            Conn::Raw { stream, buffer } => read_raw_response(stream, buffer).await,
        }
    }

    async fn request(&mut self, method: Method, path: &str, body: Bytes) -> Result<Answer> {
        let exchange = async {
            self.send(method, path, body).await?;
            self.receive().await
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, exchange).await {
            Ok(answer) => answer,
            Err(_) => bail!("{path}: no answer within {REQUEST_TIMEOUT:?}"),
        }
    }
}

/// Reads one `Content-Length` framed HTTP/1.1 response (what the agent's hyper server sends
/// for every answer here); bytes past it stay in `buffer`.
async fn read_raw_response(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> Result<Answer> {
    let head_end = loop {
        if let Some(at) = buffer.windows(4).position(|window| window == b"\r\n\r\n") {
            break at + 4;
        }
        if buffer.len() > MAX_HEAD_BYTES {
            bail!("response head over {MAX_HEAD_BYTES} bytes");
        }
        if stream.read_buf(buffer).await? == 0 {
            bail!("connection closed before a response head");
        }
    };
    let head = std::str::from_utf8(&buffer[..head_end]).context("response head is not UTF-8")?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let status = status_line
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse::<u16>().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .ok_or_else(|| anyhow!("bad status line {status_line:?}"))?;
    let mut length = None;
    let mut index = None;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = value.parse::<usize>().ok();
        } else if name.eq_ignore_ascii_case("x-consul-index") {
            index = value.parse::<u64>().ok();
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            bail!("unexpected Transfer-Encoding {value:?}");
        }
    }
    let length = length.ok_or_else(|| anyhow!("response without Content-Length"))?;
    if length > MAX_BODY_BYTES {
        bail!("response body of {length} bytes");
    }
    let end = head_end + length;
    while buffer.len() < end {
        buffer.reserve(end - buffer.len());
        if stream.read_buf(buffer).await? == 0 {
            bail!("connection closed inside a response body");
        }
    }
    let body = Bytes::copy_from_slice(&buffer[head_end..end]);
    buffer.drain(..end);
    Ok(Answer {
        status,
        index,
        body,
    })
}

/// Writes `entries` over `LOAD_CONNECTIONS` connections.
async fn preload(addr: SocketAddr, entries: Vec<(String, Bytes)>) -> Result<()> {
    let entries = Arc::new(entries);
    let mut workers = JoinSet::new();
    for worker in 0..LOAD_CONNECTIONS {
        let entries = entries.clone();
        workers.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            for (key, value) in entries.iter().skip(worker).step_by(LOAD_CONNECTIONS) {
                let answer = conn
                    .request(Method::PUT, &format!("/v1/kv/{key}"), value.clone())
                    .await?;
                if answer.body.trim_ascii() != b"true" {
                    bail!("preload PUT {key} answered {}", answer.status);
                }
            }
            Ok(())
        });
    }
    while let Some(done) = workers.join_next().await {
        done??;
    }
    Ok(())
}

/// The ModifyIndex of every key under `w/`, from one recursive read.
async fn modify_indexes(addr: SocketAddr) -> Result<HashMap<String, u64>> {
    let mut conn = Conn::connect(addr).await?;
    let answer = conn
        .request(Method::GET, "/v1/kv/w/?recurse", Bytes::new())
        .await?;
    let pairs: Vec<serde_json::Value> =
        serde_json::from_slice(&answer.body).context("the recurse read is not a JSON array")?;
    Ok(pairs
        .iter()
        .filter_map(|pair| {
            Some((
                pair.get("Key")?.as_str()?.to_string(),
                pair.get("ModifyIndex")?.as_u64()?,
            ))
        })
        .collect())
}

struct Load {
    ok: u64,
    errors: u64,
    elapsed: Duration,
    latency: Stats,
    cpu: CpuUse,
}

impl Load {
    fn rate(&self) -> f64 {
        self.ok as f64 / self.elapsed.as_secs_f64()
    }

    /// Agent CPU time per successful request, in microseconds.
    fn agent_us_per_op(&self) -> f64 {
        self.cpu.agent * self.elapsed.as_secs_f64() * 1e6 / self.ok.max(1) as f64
    }

    /// The table rows every load section reports.
    fn rows(&self, table: &mut Table, what: &str) {
        table.row(
            &format!("{what} latency p50 / p99 (ms)"),
            format!(
                "{:.2} / {:.2}",
                self.latency.pct(0.5),
                self.latency.pct(0.99)
            ),
            "-",
            None,
        );
        table.row(
            &format!("{what} CPU: agent / bench client (cores)"),
            format!("{:.2} / {:.2}", self.cpu.agent, self.cpu.client),
            "-",
            None,
        );
        table.row(
            &format!("{what} agent CPU per request (us)"),
            format!("{:.0}", self.agent_us_per_op()),
            "-",
            None,
        );
    }

    fn print(&self, what: &str) {
        println!(
            "{what}: {} ok, {} errors in {:.2} s = {:.0}/s; latency p50 {:.3} ms, p90 {:.3} ms, \
             p99 {:.3} ms, max {:.3} ms; CPU agent {:.2} cores ({:.0} us per request), bench \
             client {:.2} cores",
            self.ok,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.rate(),
            self.latency.pct(0.5),
            self.latency.pct(0.9),
            self.latency.pct(0.99),
            self.latency.max(),
            self.cpu.agent,
            self.agent_us_per_op(),
            self.cpu.client
        );
    }
}

/// Runs `connections` workers, each on its own connection, issuing `make`'s requests back to
/// back for `LOAD_DURATION`; counts the answers `accept` likes.
async fn run_load<M, A>(agent: &BenchAgent, connections: usize, make: M, accept: A) -> Result<Load>
where
    M: Fn(usize, u64, &mut StdRng) -> (Method, String, Bytes) + Send + Sync + 'static,
    A: Fn(&Answer) -> bool + Send + Sync + Copy + 'static,
{
    run_load_on(
        agent.pid,
        Endpoint::Plain(agent.http),
        connections,
        make,
        accept,
    )
    .await
}

/// `run_load` against `endpoint` of the agent whose process is `pid`.
async fn run_load_on<M, A>(
    pid: u32,
    endpoint: Endpoint,
    connections: usize,
    make: M,
    accept: A,
) -> Result<Load>
where
    M: Fn(usize, u64, &mut StdRng) -> (Method, String, Bytes) + Send + Sync + 'static,
    A: Fn(&Answer) -> bool + Send + Sync + Copy + 'static,
{
    let make = Arc::new(make);
    let start = Arc::new(Barrier::new(connections + 1));
    let mut workers = JoinSet::new();
    for worker in 0..connections {
        let make = make.clone();
        let start = start.clone();
        let endpoint = endpoint.clone();
        workers.spawn(async move {
            let connected = Conn::open(&endpoint).await;
            start.wait().await;
            let mut conn = connected?;
            let deadline = Instant::now() + LOAD_DURATION;
            let mut rng = StdRng::seed_from_u64(worker as u64);
            let mut latencies = Vec::with_capacity(1 << 16);
            let mut errors = 0u64;
            for n in 0..MAX_OPS_PER_WORKER {
                if Instant::now() >= deadline {
                    break;
                }
                let (method, path, body) = make(worker, n, &mut rng);
                let sent = Instant::now();
                match conn.request(method, &path, body).await {
                    Ok(answer) if accept(&answer) => latencies.push(millis(sent.elapsed())),
                    Ok(_) => errors += 1,
                    Err(_) => {
                        errors += 1;
                        conn = Conn::open(&endpoint).await?;
                    }
                }
            }
            Ok::<_, anyhow::Error>((latencies, errors))
        });
    }
    start.wait().await;
    let cpu = agent_and_client_cpu(pid);
    let started = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    while let Some(done) = workers.join_next().await {
        let (latencies, failed) = done??;
        all.extend(latencies);
        errors += failed;
    }
    let elapsed = started.elapsed();
    let cpu = CpuUse::from(cpu.finish());
    Ok(Load {
        ok: all.len() as u64,
        errors,
        elapsed,
        latency: Stats::new(all),
        cpu,
    })
}

// ---------------------------------------------------------------------------------------------
// Helpers

/// `prefix` followed by `n`, zero-padded so the key is exactly `KEY_BYTES` long.
fn padded_key(prefix: &str, n: u64) -> String {
    let width = KEY_BYTES.saturating_sub(prefix.len());
    format!("{prefix}{n:0>width$}")
}

fn value_bytes(len: usize) -> Bytes {
    let mut rng = StdRng::seed_from_u64(42);
    (0..len)
        .map(|_| rng.sample(rand::distributions::Alphanumeric))
        .collect::<Vec<u8>>()
        .into()
}

fn print_machine() {
    common::print_machine(
        BINARY,
        &format!(
            "bench client: {:?} HTTP/1.1 (CONCORD_BENCH_CLIENT=hyper|raw)",
            client_kind()
        ),
        "MB below = MiB (VmRSS kB / 1024); latencies are client-observed round trips",
    );
}
