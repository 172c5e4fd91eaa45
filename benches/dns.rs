//! DNS benchmark for a single `concord agent -dev` server, driven by dnsperf (Debian's
//! package: `apt-get install -y dnsperf`) and by this process. Each section spawns its own
//! fresh agent (free 127.0.0.1 ports, `-log-level warn`, `TMPDIR` in a scratch directory this
//! binary removes), registers its services over the HTTP API, and stops it afterwards:
//!
//! * `a`: 1,000 services × 3 passing instances (each with its own address, TTL 0); dnsperf
//!   sends `<svc>.service.consul A` for 10 s as fast as it can (qps), then for 5 s at half
//!   that rate with `-v`, whose per-query latencies give p50/p99;
//! * `srv`: one service with 1,000 instances on 1,000 nodes; 1,020 sequential SRV queries
//!   over one TCP connection from this process, each answer checked to hold 1,000 records.
//!   Reported for the last 1,000: the agent's CPU time per query (its utime + stime over
//!   them; with one client at a time this is the server's time per query) and the round
//!   trip, which bounds it from above (p50/p99/max).
//!
//! Run everything with `cargo bench --bench dns`, or one section with
//! `CONCORD_BENCH=srv cargo bench --bench dns`. dnsperf shares the machine's two cores with the
//! agent, so the qps figure is for both on one box. `cargo test` builds this target but skips
//! the work (it only runs when cargo passes `--bench`).

use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::Command;

#[path = "common/mod.rs"]
mod common;
use common::agent::BenchAgent;
use common::process::{cpu_ticks, CLOCK_TICKS_PER_SEC};
use common::{millis, Stats, Table};

const BINARY: &str = env!("CARGO_BIN_EXE_concord");
const SECTIONS: &[&str] = &["a", "srv"];
/// SRV queries that warm the connection and the allocator before timing starts.
const WARM_UP_QUERIES: u16 = 20;
/// SRV queries in all; the agent's CPU over the timed ones is read in 10 ms ticks.
const SRV_QUERIES: u16 = 1_020;

fn print_machine() {
    common::print_machine(
        BINARY,
        "client: dnsperf (section a), a hand-written TCP DNS client (section srv)",
        "qps: answered queries per second; latencies in ms",
    );
}

fn main() -> Result<()> {
    common::run_sections(
        "dns",
        SECTIONS,
        print_machine,
        |section, table| match section {
            "a" => Box::pin(bench_a(table)),
            _ => Box::pin(bench_srv(table)),
        },
    )
}

/// An agent at `-log-level warn`, ready to answer.
async fn start_agent() -> Result<BenchAgent> {
    let mut agent = BenchAgent::spawn(Some("warn"), &[]).await?;
    agent.wait_registered().await?;
    println!(
        "agent pid {}: HTTP {}, DNS {}",
        agent.pid, agent.http, agent.dns
    );
    Ok(agent)
}

/// Registers every body through the catalog, 16 at a time.
async fn register(agent: &BenchAgent, bodies: Vec<serde_json::Value>) -> Result<()> {
    use futures::StreamExt;
    let client = agent.client();
    let mut pending = futures::stream::iter(bodies.into_iter().map(|body| async move {
        let response = client
            .put("/v1/catalog/register", body.to_string().into_bytes())
            .await
            .map_err(|error| anyhow!(error))?;
        if !response.status.is_success() {
            bail!("register failed: {}", response.text());
        }
        Ok(())
    }))
    .buffer_unordered(16);
    while let Some(result) = pending.next().await {
        result?;
    }
    Ok(())
}

async fn dnsperf(args: &[String]) -> Result<String> {
    let output = Command::new("dnsperf")
        .args(args)
        .output()
        .await
        .context("cannot run dnsperf (apt-get install -y dnsperf)")?;
    if !output.status.success() {
        bail!(
            "dnsperf failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn field(output: &str, label: &str) -> Option<f64> {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|value| value.parse().ok())
}

async fn bench_a(table: &mut Table) -> Result<()> {
    let agent = start_agent().await?;
    let mut bodies = Vec::new();
    for service in 0..1000usize {
        for instance in 0..3usize {
            bodies.push(json!({
                "Node": format!("node-{instance}"),
                "Address": format!("10.200.0.{}", instance + 1),
                "Service": {
                    "ID": format!("svc-{service}-{instance}"),
                    "Service": format!("svc-{service}"),
                    "Address": format!("10.{}.{}.{}", instance + 1, service / 250, service % 250 + 1),
                    "Port": 8080,
                },
                "Check": {
                    "CheckID": format!("check-{service}-{instance}"),
                    "Name": "probe",
                    "Status": "passing",
                    "ServiceID": format!("svc-{service}-{instance}"),
                },
            }));
        }
    }
    let started = Instant::now();
    register(&agent, bodies).await?;
    println!(
        "registered 3,000 instances in {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let scratch = tempfile::tempdir()?;
    let data = scratch.path().join("queries.txt");
    let lines: String = (0..1000)
        .map(|service| format!("svc-{service}.service.consul A\n"))
        .collect();
    std::fs::write(&data, lines)?;
    let base = vec![
        "-s".to_string(),
        "127.0.0.1".into(),
        "-p".into(),
        agent.dns.port().to_string(),
        "-d".into(),
        data.display().to_string(),
    ];
    let mut full = base.clone();
    full.extend(["-l", "10", "-c", "4", "-q", "256"].map(String::from));
    let output = dnsperf(&full).await?;
    println!("{output}");
    let qps = field(&output, "Queries per second:").ok_or_else(|| anyhow!("no qps"))?;
    let lost = field(&output, "Queries lost:").unwrap_or(0.0);
    table.row(
        "A qps (1,000 svcs x 3, dnsperf -c 4 -q 256)",
        format!("{qps:.0} ({lost:.0} lost)"),
        ">= 110,000",
        Some(qps >= 110_000.0),
    );

    let half = (qps / 2.0).round() as u64;
    let mut paced = base;
    paced.extend(
        ["-l", "5", "-c", "4", "-q", "256", "-v", "-Q"]
            .map(String::from)
            .into_iter()
            .chain([half.to_string()]),
    );
    let output = dnsperf(&paced).await?;
    // `-v` prints one line per answered query, its latency in seconds last.
    let latencies: Vec<f64> = output
        .lines()
        .filter(|line| line.starts_with("> "))
        .filter_map(|line| line.split_whitespace().last()?.parse::<f64>().ok())
        .map(|seconds| seconds * 1000.0)
        .collect();
    if latencies.is_empty() {
        bail!("dnsperf -v printed no per-query latencies");
    }
    let stats = Stats::new(latencies);
    println!(
        "at {half} qps: {} answers, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
        stats.len(),
        stats.pct(0.50),
        stats.pct(0.99),
        stats.max()
    );
    table.row(
        &format!("A p99 at {half} qps"),
        format!("{:.3} ms (p50 {:.3})", stats.pct(0.99), stats.pct(0.50)),
        "< 1 ms",
        Some(stats.pct(0.99) < 1.0),
    );
    agent.stop().await;
    Ok(())
}

fn srv_query(id: u16) -> Vec<u8> {
    let mut bytes = id.to_be_bytes().to_vec();
    bytes.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in ["big", "service", "consul"] {
        bytes.push(label.len() as u8);
        bytes.extend_from_slice(label.as_bytes());
    }
    bytes.extend_from_slice(&[0, 0, 33, 0, 1]);
    bytes
}

async fn bench_srv(table: &mut Table) -> Result<()> {
    let agent = start_agent().await?;
    let bodies = (0..1000usize)
        .map(|index| {
            json!({
                "Node": format!("big-{index}"),
                "Address": format!("10.2.{}.{}", index / 250, index % 250 + 1),
                "Service": {"ID": format!("big-{index}"), "Service": "big", "Port": 20000 + index},
            })
        })
        .collect();
    register(&agent, bodies).await?;
    let mut stream = tokio::net::TcpStream::connect(agent.dns).await?;
    stream.set_nodelay(true)?;
    let mut samples = Vec::new();
    let mut size = 0;
    let mut ticks_before = 0;
    for id in 0..SRV_QUERIES {
        if id == WARM_UP_QUERIES {
            ticks_before = cpu_ticks(&agent.stat_path());
        }
        let query = srv_query(id);
        let mut framed = (query.len() as u16).to_be_bytes().to_vec();
        framed.extend_from_slice(&query);
        let started = Instant::now();
        stream.write_all(&framed).await?;
        let mut prefix = [0u8; 2];
        stream.read_exact(&mut prefix).await?;
        let mut reply = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
        stream.read_exact(&mut reply).await?;
        let elapsed = started.elapsed();
        let answers = u16::from_be_bytes([reply[6], reply[7]]);
        if answers != 1000 {
            bail!("SRV answer held {answers} records, not 1,000");
        }
        size = reply.len();
        if id >= WARM_UP_QUERIES {
            samples.push(millis(elapsed));
        }
    }
    // The agent's CPU time over the timed queries (in 10 ms clock ticks; the loop takes
    // a few hundred ms), per query.
    let ticks = cpu_ticks(&agent.stat_path()).saturating_sub(ticks_before);
    let agent_cpu_ms = ticks as f64 / CLOCK_TICKS_PER_SEC * 1000.0 / samples.len() as f64;
    let stats = Stats::new(samples);
    println!(
        "SRV over TCP, 1,000 answers ({size} bytes): mean {:.3} ms, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; agent CPU {agent_cpu_ms:.3} ms per query",
        stats.mean(),
        stats.pct(0.50),
        stats.pct(0.99),
        stats.max()
    );
    table.row(
        "SRV 1,000 instances over TCP: agent CPU per query",
        format!("{agent_cpu_ms:.3} ms"),
        "<= 1 ms server time",
        Some(agent_cpu_ms <= 1.0),
    );
    table.row(
        "SRV 1,000 instances over TCP: round trip p50 / p99",
        format!(
            "{:.3} / {:.3} ms ({size} B)",
            stats.pct(0.50),
            stats.pct(0.99)
        ),
        "-",
        None,
    );
    drop(stream);
    agent.stop().await;
    Ok(())
}
