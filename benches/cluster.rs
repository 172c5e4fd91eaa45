//! Multi-server benchmark: three concord servers beside three etcd members (Debian's
//! `etcd-server`, 3.4), each on its own loopback address, measured in the same run so the
//! ratios hold when the machine's speed drifts.
//!
//! * `failover`: three servers at `raft_multiplier 1`; the leader is killed with SIGKILL and a
//!   follower is sent writes, one after another, until one commits: the time from the kill to
//!   that commit. The killed server is restarted on its data and rejoins before the next kill;
//!   `FAILOVER_KILLS` kills.
//! * `writes`: `WRITERS` concurrent HTTP/1.1 connections spread over the three members, each
//!   writing `WRITES_PER_CONNECTION` 256-byte keys with 1 KiB values one after another: concord
//!   (`PUT /v1/kv`) and etcd (`POST /v3/kv/put` on its gateway), the same writes to both, so
//!   the memory compared afterwards holds the same data; then reads of those keys for
//!   `LOAD_SECONDS` each: concord default and `?consistent`, etcd serializable and
//!   linearizable; then each leader's resident memory.
//!
//! `CONCORD_BENCH=failover cargo bench --bench cluster` runs one section. `cargo test` builds
//! this target but skips the work (it only runs when cargo passes `--bench`).

use std::net::SocketAddr;
use std::path::Path;
use std::process::Stdio;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use hyper::body::Bytes;
use hyper::Method;
use tokio::process::{Child, Command};

// Shared by every bench; this one uses a subset.
#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;
use common::http::Conn;
use common::process::{proc_status_kb, unlinked_file_bytes};
use common::{Stats, Table};

const BINARY: &str = env!("CARGO_BIN_EXE_concord");
const SECTIONS: &[&str] = &["failover", "writes"];
const FAILOVER_KILLS: usize = 20;
const WRITERS: usize = 1000;
const LOAD_SECONDS: u64 = 10;
/// 100,000 writes in all: about 6 s for concord here, 15 s for etcd.
const WRITES_PER_CONNECTION: u64 = 100;
const KEY_BYTES: usize = 256;
const VALUE_BYTES: usize = 1024;
/// How long any one condition may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(10);

fn main() -> Result<()> {
    common::run_sections(
        "cluster",
        SECTIONS,
        || {
            common::print_machine(
                BINARY,
                "peer: etcd 3.4 (Debian etcd-server), three members; every member on its own 127.0.x.y",
                "times in ms; rates per second; memory in MB (VmRSS)",
            )
        },
        |section, table| match section {
            "failover" => Box::pin(failover(table)),
            _ => Box::pin(writes(table)),
        },
    )
}

/// One member process (concord server or etcd), killed when dropped; its data dir outlives it.
struct Member {
    child: Option<Child>,
    ip: String,
    node: String,
    data: tempfile::TempDir,
}

impl Member {
    fn pid(&self) -> u32 {
        self.child.as_ref().and_then(Child::id).unwrap_or(0)
    }

    fn rss_mb(&self) -> f64 {
        proc_status_kb(self.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0
    }

    /// What the resident memory is made of: anonymous (heap) pages, and the bytes of
    /// unlinked files held open (concord's KV value file, in the page cache).
    fn memory(&self) -> Memory {
        Memory {
            rss_mb: self.rss_mb(),
            anon_mb: proc_status_kb(self.pid(), "RssAnon").unwrap_or(0) as f64 / 1024.0,
            unlinked_mb: unlinked_file_bytes(self.pid()) as f64 / 1_048_576.0,
        }
    }

    async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Memory {
    rss_mb: f64,
    anon_mb: f64,
    unlinked_mb: f64,
}

fn logs(dir: &Path) -> Result<(Stdio, Stdio)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("member.log"))?;
    Ok((Stdio::from(log.try_clone()?), Stdio::from(log)))
}

const CONCORD_IPS: [&str; 3] = ["127.0.18.1", "127.0.18.2", "127.0.18.3"];
const ETCD_IPS: [&str; 3] = ["127.0.19.1", "127.0.19.2", "127.0.19.3"];

fn start_concord(member: &mut Member) -> Result<()> {
    let config = member.data.path().join("bench.json");
    std::fs::write(
        &config,
        r#"{"bootstrap_expect": 3, "performance": {"raft_multiplier": 1}}"#,
    )?;
    let (out, err) = logs(member.data.path())?;
    let join = if member.ip == CONCORD_IPS[0] {
        CONCORD_IPS[1]
    } else {
        CONCORD_IPS[0]
    };
    let child = Command::new(BINARY)
        .args(["agent", "-server", "-node", &member.node])
        .args([
            "-bind",
            &member.ip,
            "-client",
            &member.ip,
            "-log-level",
            "warn",
        ])
        .args(["-retry-join", join])
        .arg("-config-file")
        .arg(&config)
        .arg("-data-dir")
        .arg(member.data.path().join("data"))
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .context("spawn concord")?;
    member.child = Some(child);
    Ok(())
}

async fn concord_cluster() -> Result<Vec<Member>> {
    let mut members = Vec::new();
    for (index, ip) in CONCORD_IPS.iter().enumerate() {
        let mut member = Member {
            child: None,
            ip: ip.to_string(),
            node: format!("s{}", index + 1),
            data: tempfile::tempdir()?,
        };
        start_concord(&mut member)?;
        members.push(member);
    }
    agreed_leader(&members).await?;
    Ok(members)
}

fn http(ip: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip.parse().expect("ip"), port)
}

async fn get(ip: &str, path: &str) -> Option<(u16, Bytes)> {
    let mut conn = Conn::connect(http(ip, 8500)).await.ok()?;
    let answer = conn.request(Method::GET, path, Bytes::new()).await.ok()?;
    Some((answer.status.as_u16(), answer.body))
}

/// The leader's index among `members` once every running member names it.
async fn agreed_leader(members: &[Member]) -> Result<usize> {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut named = Vec::new();
        for member in members.iter().filter(|member| member.child.is_some()) {
            let leader = get(&member.ip, "/v1/status/leader")
                .await
                .and_then(|(_, body)| serde_json::from_slice::<String>(&body).ok())
                .unwrap_or_default();
            named.push(leader);
        }
        if let Some(first) = named.first().filter(|first| !first.is_empty()) {
            if named.iter().all(|leader| leader == first) {
                if let Some(index) = members
                    .iter()
                    .position(|member| format!("{}:8300", member.ip) == *first)
                {
                    return Ok(index);
                }
            }
        }
        if Instant::now() > deadline {
            bail!("no agreed leader within {PATIENCE:?}: {named:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

async fn failover(table: &mut Table) -> Result<()> {
    let mut members = concord_cluster().await?;
    let mut samples = Vec::new();
    for kill in 0..FAILOVER_KILLS {
        let leader = agreed_leader(&members).await?;
        let writer = (leader + 1) % members.len();
        let writer_ip = members[writer].ip.clone();
        // The follower has applied a write before the kill, so its connections are warm.
        put_until_committed(&writer_ip, &format!("failover/warm-{kill}"), Duration::ZERO).await?;
        members[leader].kill().await;
        let killed = Instant::now();
        put_until_committed(&writer_ip, &format!("failover/{kill}"), PATIENCE).await?;
        let took = killed.elapsed();
        samples.push(common::millis(took));
        println!(
            "kill {kill}: leader {} → next committed write after {:.0} ms",
            members[leader].node,
            common::millis(took)
        );
        // The killed server comes back on its data and follows before the next kill.
        start_concord(&mut members[leader])?;
        agreed_leader(&members).await?;
        let ip = members[leader].ip.clone();
        let key = format!("/v1/kv/failover/{kill}?stale");
        let deadline = Instant::now() + PATIENCE;
        while get(&ip, &key).await.map(|(status, _)| status) != Some(200) {
            if Instant::now() > deadline {
                bail!(
                    "{} did not catch up after its restart",
                    members[leader].node
                );
            }
            tokio::time::sleep(POLL).await;
        }
    }
    let stats = Stats::new(samples);
    table.row(
        "failover at raft_multiplier 1, kill -9 of the leader → next committed write, p50 / max",
        format!(
            "{:.0} / {:.0} ms over {} kills",
            stats.pct(0.5),
            stats.max(),
            stats.len()
        ),
        "p50 ≤ 1,500 ms",
        Some(stats.pct(0.5) <= 1500.0),
    );
    Ok(())
}

/// PUTs `key` on `ip` until a write commits, retrying failures for up to `patience` (zero:
/// once).
async fn put_until_committed(ip: &str, key: &str, patience: Duration) -> Result<()> {
    let deadline = Instant::now() + patience;
    loop {
        let answered = async {
            let mut conn = Conn::connect(http(ip, 8500)).await?;
            conn.request(
                Method::PUT,
                &format!("/v1/kv/{key}"),
                Bytes::from_static(b"v"),
            )
            .await
        }
        .await;
        match answered {
            Ok(answer) if answer.status == 200 => return Ok(()),
            other if Instant::now() >= deadline => {
                bail!("no write committed on {ip}: {:?}", other.map(|a| a.status))
            }
            _ => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// An etcd member on `ip` with etcd's default ports; the three form one cluster.
fn start_etcd(member: &mut Member) -> Result<()> {
    let (out, err) = logs(member.data.path())?;
    let cluster: Vec<String> = ETCD_IPS
        .iter()
        .enumerate()
        .map(|(index, ip)| format!("e{}=http://{ip}:2380", index + 1))
        .collect();
    let child = Command::new("etcd")
        .args(["--name", &member.node])
        .arg("--data-dir")
        .arg(member.data.path().join("data"))
        .args([
            "--listen-client-urls",
            &format!("http://{}:2379", member.ip),
        ])
        .args([
            "--advertise-client-urls",
            &format!("http://{}:2379", member.ip),
        ])
        .args(["--listen-peer-urls", &format!("http://{}:2380", member.ip)])
        .args([
            "--initial-advertise-peer-urls",
            &format!("http://{}:2380", member.ip),
        ])
        .args(["--initial-cluster", &cluster.join(",")])
        .args(["--initial-cluster-state", "new", "--log-level", "warn"])
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true)
        .spawn()
        .context("spawn etcd (apt-get install -y etcd-server)")?;
    member.child = Some(child);
    Ok(())
}

async fn etcd_cluster() -> Result<Vec<Member>> {
    let mut members = Vec::new();
    for (index, ip) in ETCD_IPS.iter().enumerate() {
        let mut member = Member {
            child: None,
            ip: ip.to_string(),
            node: format!("e{}", index + 1),
            data: tempfile::tempdir()?,
        };
        start_etcd(&mut member)?;
        members.push(member);
    }
    let deadline = Instant::now() + PATIENCE;
    for member in &members {
        loop {
            let healthy = async {
                let mut conn = Conn::connect(http(&member.ip, 2379)).await?;
                conn.request(Method::GET, "/health", Bytes::new()).await
            }
            .await
            .is_ok_and(|answer| {
                answer.status == 200 && answer.body.starts_with(b"{\"health\":\"true\"")
            });
            if healthy {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "etcd member {} not healthy within {PATIENCE:?}",
                    member.node
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(members)
}

fn key(writer: usize, n: u64) -> String {
    let prefix = format!("bench/{writer:04}/{n:08}/");
    format!("{prefix}{}", "k".repeat(KEY_BYTES - prefix.len()))
}

/// What one kind of request looks like for a member kind.
#[derive(Clone, Copy)]
enum Op {
    ConcordPut,
    ConcordGet { consistent: bool },
    EtcdPut,
    EtcdGet { serializable: bool },
}

impl Op {
    fn port(self) -> u16 {
        match self {
            Op::ConcordPut | Op::ConcordGet { .. } => 8500,
            Op::EtcdPut | Op::EtcdGet { .. } => 2379,
        }
    }

    fn request(self, key: &str, value: &Bytes) -> (Method, String, Bytes) {
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
        match self {
            Op::ConcordPut => (Method::PUT, format!("/v1/kv/{key}"), value.clone()),
            Op::ConcordGet { consistent } => {
                let mode = if consistent { "?consistent" } else { "" };
                (Method::GET, format!("/v1/kv/{key}{mode}"), Bytes::new())
            }
            Op::EtcdPut => {
                let body = serde_json::json!({"key": b64(key.as_bytes()), "value": b64(value)});
                (
                    Method::POST,
                    "/v3/kv/put".into(),
                    Bytes::from(body.to_string()),
                )
            }
            Op::EtcdGet { serializable } => {
                let body =
                    serde_json::json!({"key": b64(key.as_bytes()), "serializable": serializable});
                (
                    Method::POST,
                    "/v3/kv/range".into(),
                    Bytes::from(body.to_string()),
                )
            }
        }
    }
}

struct Load {
    /// The fewest requests one connection had answered (a write load's keys 0..this exist for
    /// every writer).
    fewest_per_connection: u64,
    done: u64,
    failed: u64,
    seconds: f64,
    slowest_ms: f64,
}

/// How long a load runs: each connection sends this many requests, or sends for this long.
#[derive(Clone, Copy)]
enum Span {
    Requests(u64),
    Seconds(u64),
}

/// `WRITERS` connections spread over `ips`, each sending `op` one after another for `span`;
/// reads go over the keys `keys_per_writer` writes left behind.
async fn load(ips: &[&str], op: Op, keys_per_writer: u64, span: Span) -> Result<Load> {
    let value = Bytes::from(vec![b'v'; VALUE_BYTES]);
    let done = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let slowest_us = Arc::new(AtomicU64::new(0));
    let mut conns = Vec::new();
    for writer in 0..WRITERS {
        let address = http(ips[writer % ips.len()], op.port());
        conns.push(
            Conn::connect(address)
                .await
                .with_context(|| format!("connect {address}"))?,
        );
    }
    let started = Instant::now();
    let until = match span {
        Span::Seconds(seconds) => Some(started + Duration::from_secs(seconds)),
        Span::Requests(_) => None,
    };
    let mut tasks = Vec::new();
    for (writer, mut conn) in conns.into_iter().enumerate() {
        let (done, failed, slowest_us, value) = (
            done.clone(),
            failed.clone(),
            slowest_us.clone(),
            value.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut n = 0u64;
            let mut succeeded = 0u64;
            let more = |n: u64| match (span, until) {
                (Span::Requests(count), _) => n < count,
                (Span::Seconds(_), Some(until)) => Instant::now() < until,
                (Span::Seconds(_), None) => false,
            };
            while more(n) {
                let key = key(
                    writer,
                    if keys_per_writer == 0 {
                        n
                    } else {
                        n % keys_per_writer
                    },
                );
                let (method, path, body) = op.request(&key, &value);
                let sent = Instant::now();
                match conn.request(method, &path, body).await {
                    Ok(answer) if answer.status == 200 => {
                        succeeded += 1;
                        done.fetch_add(1, Ordering::Relaxed);
                        slowest_us.fetch_max(sent.elapsed().as_micros() as u64, Ordering::Relaxed);
                    }
                    _ => {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                }
                n += 1;
            }
            succeeded
        }));
    }
    let mut fewest = u64::MAX;
    for task in tasks {
        fewest = fewest.min(task.await?);
    }
    Ok(Load {
        fewest_per_connection: fewest,
        done: done.load(Ordering::Relaxed),
        failed: failed.load(Ordering::Relaxed),
        seconds: started.elapsed().as_secs_f64(),
        slowest_ms: slowest_us.load(Ordering::Relaxed) as f64 / 1000.0,
    })
}

impl Load {
    fn rate(&self) -> f64 {
        self.done as f64 / self.seconds
    }
}

async fn writes(table: &mut Table) -> Result<()> {
    // concord first, stopped before etcd starts, so each has the machine to itself.
    let (concord_put, concord_get, concord_consistent, concord_rss) = {
        let members = concord_cluster().await?;
        let ips: Vec<&str> = members.iter().map(|member| member.ip.as_str()).collect();
        let put = load(
            &ips,
            Op::ConcordPut,
            0,
            Span::Requests(WRITES_PER_CONNECTION),
        )
        .await?;
        println!(
            "concord PUT: {:.0}/s ({} failed), slowest {:.0} ms",
            put.rate(),
            put.failed,
            put.slowest_ms
        );
        let keys = put.fewest_per_connection.max(1);
        let get = load(
            &ips,
            Op::ConcordGet { consistent: false },
            keys,
            Span::Seconds(LOAD_SECONDS),
        )
        .await?;
        println!(
            "concord GET default: {:.0}/s ({} failed)",
            get.rate(),
            get.failed
        );
        let consistent = load(
            &ips,
            Op::ConcordGet { consistent: true },
            keys,
            Span::Seconds(LOAD_SECONDS),
        )
        .await?;
        println!(
            "concord GET ?consistent: {:.0}/s ({} failed)",
            consistent.rate(),
            consistent.failed
        );
        let leader = agreed_leader(&members).await?;
        (put, get, consistent, members[leader].memory())
    };
    let (etcd_put, etcd_get, etcd_linear, etcd_rss) = {
        let members = etcd_cluster().await?;
        let ips: Vec<&str> = members.iter().map(|member| member.ip.as_str()).collect();
        let put = load(&ips, Op::EtcdPut, 0, Span::Requests(WRITES_PER_CONNECTION)).await?;
        println!(
            "etcd put: {:.0}/s ({} failed), slowest {:.0} ms",
            put.rate(),
            put.failed,
            put.slowest_ms
        );
        let keys = put.fewest_per_connection.max(1);
        let get = load(
            &ips,
            Op::EtcdGet { serializable: true },
            keys,
            Span::Seconds(LOAD_SECONDS),
        )
        .await?;
        println!(
            "etcd range serializable: {:.0}/s ({} failed)",
            get.rate(),
            get.failed
        );
        let linear = load(
            &ips,
            Op::EtcdGet {
                serializable: false,
            },
            keys,
            Span::Seconds(LOAD_SECONDS),
        )
        .await?;
        println!(
            "etcd range linearizable: {:.0}/s ({} failed)",
            linear.rate(),
            linear.failed
        );
        let largest = members
            .iter()
            .map(Member::memory)
            .fold(
                Memory::default(),
                |a, b| if b.rss_mb > a.rss_mb { b } else { a },
            );
        (put, get, linear, largest)
    };
    let ratio = |ours: &Load, theirs: &Load| ours.rate() / theirs.rate().max(1.0);
    table.row(
        "3 servers, 1,000 writers, 256 B keys, 1 KiB values: concord / etcd writes",
        format!(
            "{:.0} / {:.0} per s = {:.2}×; slowest {:.0} ms",
            concord_put.rate(),
            etcd_put.rate(),
            ratio(&concord_put, &etcd_put),
            concord_put.slowest_ms
        ),
        "≥ 2× etcd, slowest ≤ 500 ms",
        Some(ratio(&concord_put, &etcd_put) >= 2.0 && concord_put.slowest_ms <= 500.0),
    );
    table.row(
        "default GET / etcd serializable range",
        format!(
            "{:.0} / {:.0} per s = {:.2}×",
            concord_get.rate(),
            etcd_get.rate(),
            ratio(&concord_get, &etcd_get)
        ),
        "≥ 2×",
        Some(ratio(&concord_get, &etcd_get) >= 2.0),
    );
    table.row(
        "?consistent GET / etcd linearizable range",
        format!(
            "{:.0} / {:.0} per s = {:.2}×",
            concord_consistent.rate(),
            etcd_linear.rate(),
            ratio(&concord_consistent, &etcd_linear)
        ),
        "≥ 1.5×",
        Some(ratio(&concord_consistent, &etcd_linear) >= 1.5),
    );
    table.row(
        "leader RSS after the same 100,000 writes: concord / largest etcd member",
        format!(
            "{:.1} / {:.1} MB = {:.2}×",
            concord_rss.rss_mb,
            etcd_rss.rss_mb,
            concord_rss.rss_mb / etcd_rss.rss_mb.max(1.0)
        ),
        "≤ 0.5× etcd",
        Some(concord_rss.rss_mb <= 0.5 * etcd_rss.rss_mb),
    );
    // Not a target: where each side's memory is. concord's values sit in its value file
    // (page cache, reclaimable, outside VmRSS); etcd's sit in its mmap'd bbolt file (inside
    // VmRSS as file pages) and its in-memory Raft log (anonymous).
    table.row(
        "of which anonymous (RssAnon): concord / etcd; concord's value file",
        format!(
            "{:.1} / {:.1} MB; value file {:.1} MB",
            concord_rss.anon_mb, etcd_rss.anon_mb, concord_rss.unlinked_mb
        ),
        "reported",
        None,
    );
    Ok(())
}
