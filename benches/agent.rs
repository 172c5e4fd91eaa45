//! Agent benchmark for a single `concord agent -dev` server: the cost of running many local
//! health checks, and how fast a check's status change reaches a blocking health query. Each
//! section spawns its own fresh agent (on a free 127.0.0.1 port, with `TMPDIR` pointed at a
//! scratch directory this binary removes) and stops it afterwards:
//!
//! * `checks`: 1,000 services with one HTTP check each at a 1 s interval, all probing a tiny
//!   HTTP/1.1 health server this binary runs on its own thread. Once every check passes (and
//!   the catalog has caught up), the agent's CPU (% of one core) over 20 s, its VmRSS at the
//!   end and the number of passing checks; also the health server's request rate and CPU, as a
//!   check that the probed side was not what limited anything;
//! * `wake`: 200 times, a blocking `GET /v1/health/service/flip?index=N` is put in flight,
//!   then the service's TTL check is flipped (pass/fail alternately): the time from sending the
//!   flip to the blocking query returning with the new status (p50/p99/max). That spans the
//!   flip request, the agent's local update, anti-entropy's catalog write through Raft (with
//!   fsync) and the wake-up of the query.
//!
//! Run everything with `cargo bench --bench agent`, or one section with
//! `CONCORD_BENCH=wake cargo bench --bench agent`. The bench shares the machine's cores with
//! the agent, so CPU figures for both sides are reported. `cargo test` builds this target but
//! skips the work (it only runs when cargo passes `--bench`). All traffic goes to 127.0.0.1,
//! and every loop is bounded in both count and time.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use hyper::body::Bytes;
use hyper::{Method, StatusCode};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinSet;

#[path = "common/mod.rs"]
mod common;
use common::agent::BenchAgent;
use common::http::Conn;
use common::process::{cpu_ticks, CpuMeter, CLOCK_TICKS_PER_SEC};
use common::{millis, Stats, Table};

const BINARY: &str = env!("CARGO_BIN_EXE_concord");
const SECTIONS: &[&str] = &["checks", "wake"];

const SERVICES: usize = 1_000;
/// Connections registering the services; a few, so registration takes seconds, not minutes.
const REGISTER_CONNECTIONS: usize = 8;
const CHECK_INTERVAL: &str = "1s";
const CHECK_TIMEOUT: &str = "1s";
/// How long every check may take to pass (each first fires within one interval).
const PASSING_TIMEOUT: Duration = Duration::from_secs(60);
/// How long anti-entropy may take to write 1,000 status changes to the catalog.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(120);
const POLL_EVERY: Duration = Duration::from_millis(250);
const MEASURE_SECONDS: u64 = 20;
/// The health server's per-connection budget; a probe's own timeout is 1 s.
const HEALTH_CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_REQUEST_HEAD: usize = 16 * 1024;
const HEALTH_RESPONSE: &[u8] =
    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n\
Connection: close\r\n\r\nok";

const WAKE_ROUNDS: usize = 200;
/// Time for a freshly sent blocking query to reach the agent and start waiting. Loopback
/// delivery takes microseconds; 20 ms leaves room for a scheduling hiccup on a busy box.
const WAKE_SETTLE: Duration = Duration::from_millis(20);
/// How long one flip may take to show up before the round counts as missed.
const WAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Blocking queries one round may issue before giving up (a return without the expected
/// status, which should not happen, re-blocks on the returned index).
const MAX_REBLOCKS: usize = 5;
/// Upper bound on the whole `wake` loop, far above what 200 rounds need.
const WAKE_BUDGET: Duration = Duration::from_secs(300);

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const READY_TIMEOUT: Duration = Duration::from_secs(20);

fn main() -> Result<()> {
    common::run_sections(
        "agent",
        SECTIONS,
        print_machine,
        |section, table| match section {
            "checks" => Box::pin(bench_checks(table)),
            _ => Box::pin(bench_wake(table)),
        },
    )
}

// ---------------------------------------------------------------------------------------------
// Sections

async fn bench_checks(table: &mut Table) -> Result<()> {
    let server = HealthServer::start().await?;
    println!(
        "health server on {} (its own thread, {})",
        server.addr,
        server.stat_path.display()
    );
    let mut agent = BenchAgent::spawn(None, &[]).await?;
    agent.wait_writable().await?;
    let addr = agent.http;
    let idle_rss = agent.rss_mb()?;

    let registering = Instant::now();
    register_services(addr, server.addr.port()).await?;
    println!(
        "registered {SERVICES} services over {REGISTER_CONNECTIONS} connections in {:.2} s",
        registering.elapsed().as_secs_f64()
    );

    let mut conn = Conn::connect(addr).await?;
    let deadline = Instant::now() + PASSING_TIMEOUT;
    let passing = loop {
        let passing = local_passing(&mut conn).await?;
        if passing == SERVICES || Instant::now() >= deadline {
            break passing;
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    if passing < SERVICES {
        bail!(
            "only {passing} of {SERVICES} checks passing {PASSING_TIMEOUT:?} after registration \
             (health server: {} served, {} failed)",
            server.counters.served.load(Ordering::Relaxed),
            server.counters.failed.load(Ordering::Relaxed)
        );
    }
    println!(
        "all {SERVICES} checks passing (agent view) {:.2} s after registration began",
        registering.elapsed().as_secs_f64()
    );
    // Anti-entropy writes each check's first status change to the catalog through Raft; the
    // steady state to measure starts once that one-off backlog is written.
    let deadline = Instant::now() + CATALOG_TIMEOUT;
    let in_catalog = loop {
        let in_catalog = catalog_passing(&mut conn).await?;
        if in_catalog == SERVICES || Instant::now() >= deadline {
            break in_catalog;
        }
        tokio::time::sleep(POLL_EVERY).await;
    };
    println!(
        "catalog shows {in_catalog} of {SERVICES} checks passing {:.2} s after registration \
         began{}",
        registering.elapsed().as_secs_f64(),
        if in_catalog < SERVICES {
            " (still syncing; the window below includes anti-entropy writes)"
        } else {
            ""
        }
    );
    drop(conn);

    let served_before = server.counters.served.load(Ordering::Relaxed);
    let failed_before = server.counters.failed.load(Ordering::Relaxed);
    server.counters.slowest_us.store(0, Ordering::Relaxed);
    let meter = CpuMeter::start(&[
        agent.stat_path(),
        PathBuf::from("/proc/self/stat"),
        server.stat_path.clone(),
    ]);
    // Per-second agent CPU, to tell a flat per-probe cost from periodic bursts.
    let mut per_second = Vec::with_capacity(MEASURE_SECONDS as usize);
    let mut last_ticks = cpu_ticks(&agent.stat_path());
    let started = Instant::now();
    for second in 1..=MEASURE_SECONDS {
        tokio::time::sleep_until((started + Duration::from_secs(second)).into()).await;
        let ticks = cpu_ticks(&agent.stat_path());
        per_second.push(ticks.saturating_sub(last_ticks) as f64 / CLOCK_TICKS_PER_SEC * 100.0);
        last_ticks = ticks;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cores = meter.finish();
    let served = server.counters.served.load(Ordering::Relaxed) - served_before;
    let failed = server.counters.failed.load(Ordering::Relaxed) - failed_before;
    let slowest_ms = server.counters.slowest_us.load(Ordering::Relaxed) as f64 / 1000.0;
    let rss = agent.rss_mb()?;
    let threads = agent.threads();
    let mut conn = Conn::connect(addr).await?;
    let passing_end = local_passing(&mut conn).await?;
    drop(conn);

    let (agent_pct, bench_pct, server_pct) = (cores[0] * 100.0, cores[1] * 100.0, cores[2] * 100.0);
    let rate = served as f64 / elapsed;
    let per_probe_us = cores[0] * elapsed * 1e6 / served.max(1) as f64;
    let seconds = Stats::new(per_second);
    println!(
        "over {elapsed:.2} s: agent CPU {agent_pct:.1}% of one core (per second: min {:.0}%, \
         median {:.0}%, max {:.0}%), {per_probe_us:.0} us of agent CPU per probe; VmRSS \
         {rss:.1} MB (idle before registering {idle_rss:.1} MB), threads {threads}; \
         {passing_end} of {SERVICES} checks passing at the end",
        seconds.pct(0.0),
        seconds.pct(0.5),
        seconds.max()
    );
    println!(
        "health server: {served} requests = {rate:.0}/s, {failed} failed connections, slowest \
         accept-to-answer {slowest_ms:.2} ms; its thread used {server_pct:.1}% of one core, the \
         whole bench process {bench_pct:.1}%"
    );
    table.row(
        "1k HTTP checks: agent CPU (% of one core)",
        format!("{agent_pct:.1}"),
        "<= 15",
        Some(agent_pct <= 15.0),
    );
    table.row(
        "1k HTTP checks: agent RSS (MB)",
        format!("{rss:.1}"),
        "<= 60",
        Some(rss <= 60.0),
    );
    table.row(
        "1k HTTP checks: passing at the end",
        format!("{passing_end} / {SERVICES}"),
        "1000",
        Some(passing_end == SERVICES),
    );
    table.row(
        "agent CPU per probe (us)",
        format!("{per_probe_us:.0}"),
        "-",
        None,
    );
    table.row(
        "health server: probes/s, failed",
        format!("{rate:.0}, {failed}"),
        "~1000, 0",
        None,
    );
    table.row(
        "health server thread / bench process CPU (%)",
        format!("{server_pct:.1} / {bench_pct:.1}"),
        "-",
        None,
    );
    agent.stop().await;
    drop(server);
    Ok(())
}

async fn bench_wake(table: &mut Table) -> Result<()> {
    let mut agent = BenchAgent::spawn(None, &[]).await?;
    agent.wait_writable().await?;
    let addr = agent.http;
    let mut control = Conn::connect(addr).await?;
    let registration = json!({"Name": "flip", "Check": {"CheckID": "flip-ttl", "TTL": "600s"}});
    let answer = control
        .request(
            Method::PUT,
            "/v1/agent/service/register",
            Bytes::from(registration.to_string()),
        )
        .await?;
    if answer.status != StatusCode::OK {
        bail!(
            "registering flip answered {}: {}",
            answer.status,
            String::from_utf8_lossy(&answer.body)
        );
    }
    let deadline = Instant::now() + READY_TIMEOUT;
    loop {
        let (_, status) = flip_health(&mut control).await?;
        if status.is_some() {
            break;
        }
        if Instant::now() >= deadline {
            bail!("flip-ttl did not reach the catalog within {READY_TIMEOUT:?}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let meter = CpuMeter::start(&[agent.stat_path(), PathBuf::from("/proc/self/stat")]);
    let budget = Instant::now() + WAKE_BUDGET;
    let mut wake = Vec::with_capacity(WAKE_ROUNDS);
    let mut ack = Vec::with_capacity(WAKE_ROUNDS);
    let mut after_ack = Vec::with_capacity(WAKE_ROUNDS);
    let mut missed = 0usize;
    let mut premature = 0usize;
    let mut extra_returns = 0usize;
    let mut rounds = 0usize;
    for round in 0..WAKE_ROUNDS {
        if Instant::now() >= budget {
            println!("stopping after {round} rounds: the {WAKE_BUDGET:?} budget ran out");
            break;
        }
        rounds += 1;
        let (index, status) = flip_health(&mut control).await?;
        // Always the opposite of what the catalog shows, so every flip is a real change.
        let (verb, expected) = if status.as_deref() == Some("passing") {
            ("fail", "critical")
        } else {
            ("pass", "passing")
        };
        let watcher = Conn::connect(addr).await?;
        let (sent_tx, sent_rx) = oneshot::channel();
        let mut watch = tokio::spawn(watch_flip(watcher, index, expected, sent_tx));
        if !matches!(
            tokio::time::timeout(REQUEST_TIMEOUT, sent_rx).await,
            Ok(Ok(()))
        ) {
            watch.abort();
            let why = match tokio::time::timeout(Duration::from_secs(1), &mut watch).await {
                Ok(Ok(Err(error))) => format!("{error:#}"),
                _ => "no error reported".to_string(),
            };
            bail!("round {round}: the blocking query could not be sent: {why}");
        }
        tokio::time::sleep(WAKE_SETTLE).await;
        let flipped = Instant::now();
        let answer = control
            .request(
                Method::PUT,
                &format!("/v1/agent/check/{verb}/flip-ttl"),
                Bytes::new(),
            )
            .await?;
        let acknowledged = Instant::now();
        if answer.status != StatusCode::OK {
            watch.abort();
            bail!("round {round}: {verb} answered {}", answer.status);
        }
        let returns = match tokio::time::timeout(WAKE_TIMEOUT + REQUEST_TIMEOUT, &mut watch).await {
            Ok(Ok(Ok(returns))) => returns,
            Ok(Ok(Err(error))) => {
                println!("round {round}: {error:#}");
                missed += 1;
                continue;
            }
            Ok(Err(error)) => {
                println!("round {round}: the watcher task failed: {error}");
                missed += 1;
                continue;
            }
            Err(_) => {
                watch.abort();
                println!("round {round}: the watcher did not finish in time");
                missed += 1;
                continue;
            }
        };
        premature += returns.iter().filter(|r| r.at < flipped).count();
        let Some(woke) = returns
            .iter()
            .find(|r| r.at >= flipped && r.index > index && r.status.as_deref() == Some(expected))
        else {
            println!("round {round}: no return with {expected} status: {returns:?}");
            missed += 1;
            continue;
        };
        extra_returns += returns.len() - 1;
        wake.push(millis(woke.at.duration_since(flipped)));
        ack.push(millis(acknowledged.duration_since(flipped)));
        after_ack.push(match woke.at.checked_duration_since(acknowledged) {
            Some(gap) => millis(gap),
            None => -millis(acknowledged.duration_since(woke.at)),
        });
    }
    let cores = meter.finish();
    let wake = Stats::new(wake);
    let ack = Stats::new(ack);
    let after_ack = Stats::new(after_ack);
    println!(
        "{} of {rounds} flips seen ({missed} missed, {premature} blocking queries returned \
         before their flip, {extra_returns} extra returns): flip-to-wake p50 {:.3} ms, p90 \
         {:.3} ms, p99 {:.3} ms, max {:.3} ms, mean {:.3} ms",
        wake.len(),
        wake.pct(0.5),
        wake.pct(0.9),
        wake.pct(0.99),
        wake.max(),
        wake.mean()
    );
    println!(
        "flip PUT answered: p50 {:.3} ms, p99 {:.3} ms; query return minus PUT answer: p50 {:.3} \
         ms, p99 {:.3} ms; CPU over the loop: agent {:.1}%, bench {:.1}% of one core",
        ack.pct(0.5),
        ack.pct(0.99),
        after_ack.pct(0.5),
        after_ack.pct(0.99),
        cores[0] * 100.0,
        cores[1] * 100.0
    );
    table.row(
        "flip-to-wake p50 / p99 / max (ms)",
        format!(
            "{:.2} / {:.2} / {:.2}",
            wake.pct(0.5),
            wake.pct(0.99),
            wake.max()
        ),
        "p99 <= 50",
        Some(wake.pct(0.99) <= 50.0 && missed == 0 && wake.len() == WAKE_ROUNDS),
    );
    table.row(
        "flip PUT answer p50 / p99 (ms)",
        format!("{:.2} / {:.2}", ack.pct(0.5), ack.pct(0.99)),
        "-",
        None,
    );
    table.row(
        "wake - PUT answer p50 / p99 (ms)",
        format!("{:.2} / {:.2}", after_ack.pct(0.5), after_ack.pct(0.99)),
        "-",
        None,
    );
    table.row(
        "flips seen / missed / early returns",
        format!("{} / {missed} / {premature}", wake.len()),
        "200 / 0 / 0",
        None,
    );
    drop(control);
    agent.stop().await;
    Ok(())
}

/// One return of a blocking health query.
#[derive(Debug)]
struct Return {
    at: Instant,
    index: u64,
    status: Option<String>,
}

/// Blocks on `/v1/health/service/flip` past `index` until it shows `expected` (re-blocking on
/// the returned index if it shows something else), at most `MAX_REBLOCKS` queries and
/// `WAKE_TIMEOUT`; signals `sent` once the first query is on its way.
async fn watch_flip(
    mut conn: Conn,
    mut index: u64,
    expected: &'static str,
    sent: oneshot::Sender<()>,
) -> Result<Vec<Return>> {
    let give_up = Instant::now() + WAKE_TIMEOUT;
    let mut sent = Some(sent);
    let mut returns = Vec::new();
    for _ in 0..MAX_REBLOCKS {
        let path = format!("/v1/health/service/flip?index={index}&wait=30s");
        conn.send(Method::GET, &path, Bytes::new()).await?;
        if let Some(sent) = sent.take() {
            let _ = sent.send(());
        }
        let answer = tokio::time::timeout_at(give_up.into(), conn.receive())
            .await
            .map_err(|_| anyhow!("no wake within {WAKE_TIMEOUT:?} ({returns:?})"))??;
        let at = Instant::now();
        if answer.status != StatusCode::OK {
            bail!("blocking query answered {}", answer.status);
        }
        let status = flip_status(&answer.body);
        let new_index = answer.index.unwrap_or(0);
        let done = new_index > index && status.as_deref() == Some(expected);
        returns.push(Return {
            at,
            index: new_index,
            status,
        });
        if done {
            break;
        }
        index = index.max(new_index);
    }
    Ok(returns)
}

/// The catalog's index for `flip` and its TTL check's status (None before the check is there).
async fn flip_health(conn: &mut Conn) -> Result<(u64, Option<String>)> {
    let answer = conn
        .request(Method::GET, "/v1/health/service/flip", Bytes::new())
        .await?;
    if answer.status != StatusCode::OK {
        bail!("GET /v1/health/service/flip answered {}", answer.status);
    }
    let index = answer
        .index
        .ok_or_else(|| anyhow!("GET /v1/health/service/flip without X-Consul-Index"))?;
    Ok((index, flip_status(&answer.body)))
}

fn flip_status(body: &[u8]) -> Option<String> {
    let entries: Value = serde_json::from_slice(body).ok()?;
    entries.as_array()?.iter().find_map(|entry| {
        entry
            .get("Checks")?
            .as_array()?
            .iter()
            .find(|check| check.get("CheckID").and_then(Value::as_str) == Some("flip-ttl"))?
            .get("Status")?
            .as_str()
            .map(str::to_string)
    })
}

/// Registers `svc-0` .. `svc-999`, each with an HTTP check against the health server.
async fn register_services(addr: SocketAddr, health_port: u16) -> Result<()> {
    let mut workers = JoinSet::new();
    for worker in 0..REGISTER_CONNECTIONS {
        workers.spawn(async move {
            let mut conn = Conn::connect(addr).await?;
            for n in (worker..SERVICES).step_by(REGISTER_CONNECTIONS) {
                let name = format!("svc-{n}");
                let body = json!({
                    "Name": name,
                    "ID": name,
                    "Port": 8080,
                    "Check": {
                        "CheckID": format!("{name}-http"),
                        "HTTP": format!("http://127.0.0.1:{health_port}/health"),
                        "Interval": CHECK_INTERVAL,
                        "Timeout": CHECK_TIMEOUT,
                    },
                });
                let answer = conn
                    .request(
                        Method::PUT,
                        "/v1/agent/service/register",
                        Bytes::from(body.to_string()),
                    )
                    .await?;
                if answer.status != StatusCode::OK {
                    bail!(
                        "registering {name} answered {}: {}",
                        answer.status,
                        String::from_utf8_lossy(&answer.body)
                    );
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

fn is_bench_check(id: &str) -> bool {
    id.starts_with("svc-") && id.ends_with("-http")
}

/// How many of the bench's checks the agent itself reports passing.
async fn local_passing(conn: &mut Conn) -> Result<usize> {
    let answer = conn
        .request(Method::GET, "/v1/agent/checks", Bytes::new())
        .await?;
    let checks: serde_json::Map<String, Value> =
        serde_json::from_slice(&answer.body).context("/v1/agent/checks is not a JSON object")?;
    Ok(checks
        .iter()
        .filter(|(id, check)| {
            is_bench_check(id) && check.get("Status").and_then(Value::as_str) == Some("passing")
        })
        .count())
}

/// How many of the bench's checks the catalog shows passing.
async fn catalog_passing(conn: &mut Conn) -> Result<usize> {
    let answer = conn
        .request(Method::GET, "/v1/health/state/passing", Bytes::new())
        .await?;
    let checks: Vec<Value> = serde_json::from_slice(&answer.body)
        .context("/v1/health/state/passing is not a JSON array")?;
    Ok(checks
        .iter()
        .filter(|check| {
            check
                .get("CheckID")
                .and_then(Value::as_str)
                .is_some_and(is_bench_check)
        })
        .count())
}

// ---------------------------------------------------------------------------------------------
// The health server the checks probe

#[derive(Default)]
struct ServerCounters {
    served: AtomicU64,
    failed: AtomicU64,
    /// The longest accept-to-answer time seen, in microseconds.
    slowest_us: AtomicU64,
}

/// A minimal HTTP/1.1 server answering every request `200 ok` and closing the connection,
/// as a health endpoint behind `Connection: close` does. It runs on its own thread with a
/// single-threaded runtime so its CPU can be read from /proc/self/task/<tid>/stat apart from
/// the rest of the bench.
struct HealthServer {
    addr: SocketAddr,
    stat_path: PathBuf,
    counters: Arc<ServerCounters>,
    stop: Option<oneshot::Sender<()>>,
}

impl HealthServer {
    async fn start() -> Result<HealthServer> {
        let counters = Arc::new(ServerCounters::default());
        let (ready_tx, ready_rx) = oneshot::channel::<Result<(SocketAddr, PathBuf), String>>();
        let (stop_tx, stop_rx) = oneshot::channel();
        let serving = counters.clone();
        std::thread::Builder::new()
            .name("health-server".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(error) => {
                        let _ = ready_tx.send(Err(format!("runtime: {error}")));
                        return;
                    }
                };
                runtime.block_on(async move {
                    // Bound here, inside the runtime, with a backlog well above the ~1,000
                    // connections a second the checks open (std's bind would give 128).
                    let bound = (|| {
                        let socket = TcpSocket::new_v4()?;
                        socket.bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))?;
                        socket.listen(4096)
                    })();
                    let listener = match bound {
                        Ok(listener) => listener,
                        Err(error) => {
                            let _ = ready_tx.send(Err(format!("bind: {error}")));
                            return;
                        }
                    };
                    // "<pid>/task/<tid>": this thread's own stat file.
                    let ready = listener
                        .local_addr()
                        .map_err(|error| format!("local_addr: {error}"))
                        .and_then(|addr| {
                            std::fs::read_link("/proc/thread-self")
                                .map(|task| (addr, Path::new("/proc").join(task).join("stat")))
                                .map_err(|error| format!("/proc/thread-self: {error}"))
                        });
                    let ok = ready.is_ok();
                    let _ = ready_tx.send(ready);
                    if ok {
                        serve(listener, serving, stop_rx).await;
                    }
                });
            })
            .context("cannot start the health server thread")?;
        let (addr, stat_path) = tokio::time::timeout(READY_TIMEOUT, ready_rx)
            .await
            .context("the health server did not start")?
            .context("the health server thread died")?
            .map_err(|error| anyhow!("health server: {error}"))?;
        Ok(HealthServer {
            addr,
            stat_path,
            counters,
            stop: Some(stop_tx),
        })
    }
}

impl Drop for HealthServer {
    /// Ends the accept loop; the thread's runtime then drops any connection still open.
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

async fn serve(
    listener: tokio::net::TcpListener,
    counters: Arc<ServerCounters>,
    mut stop: oneshot::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    tokio::spawn(answer_health(stream, counters.clone()));
                }
                Err(_) => {
                    // E.g. out of file descriptors: count it and back off instead of spinning.
                    counters.failed.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            },
        }
    }
}

async fn answer_health(mut stream: TcpStream, counters: Arc<ServerCounters>) {
    let accepted = Instant::now();
    let exchange = async {
        let mut head = Vec::with_capacity(1024);
        while !head.windows(4).any(|window| window == b"\r\n\r\n") {
            if head.len() > MAX_REQUEST_HEAD || stream.read_buf(&mut head).await? == 0 {
                return Err(std::io::Error::other("no complete request head"));
            }
        }
        stream.write_all(HEALTH_RESPONSE).await?;
        stream.shutdown().await
    };
    match tokio::time::timeout(HEALTH_CONNECTION_TIMEOUT, exchange).await {
        Ok(Ok(())) => {
            counters.served.fetch_add(1, Ordering::Relaxed);
            let us = accepted.elapsed().as_micros().min(u128::from(u64::MAX)) as u64;
            counters.slowest_us.fetch_max(us, Ordering::Relaxed);
        }
        _ => {
            counters.failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The agent process

// ---------------------------------------------------------------------------------------------
// HTTP client

// ---------------------------------------------------------------------------------------------
// Helpers

fn print_machine() {
    common::print_machine(
        BINARY,
        "bench: hyper HTTP/1.1 client; health server on its own thread",
        "MB below = MiB (VmRSS kB / 1024); CPU % is of one core; latencies client-observed",
    );
}
