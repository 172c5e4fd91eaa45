//! Gossip benchmark: concord agents beside HashiCorp Serf agents (Debian's `serf` package,
//! `apt-get install -y serf`), each on its own loopback address, measured in the same run so
//! the ratio holds even when the machine's speed drifts.
//!
//! * `detect`: 5 concord agents (1 server, 4 clients) with Consul's LAN timings (probe 1 s,
//!   timeout 500 ms, suspicion ×4) and 5 Serf agents (the same memberlist LAN timings); one
//!   client is killed with SIGKILL and a surviving peer is polled (every 20 ms) until it lists
//!   the victim failed. Repeated `DETECT_RUNS` (12) times on fresh clusters, alternating.
//! * `rss`: the resident memory of an idle client agent (gossip, HTTP, DNS, no services) and
//!   of an idle Serf agent, 5 s after their 5-member pools converged.
//! * `converge`: 30 concord agents (1 server, 29 clients) at a 200 ms gossip interval, then a
//!   31st joins and later leaves: the time until all 30 list it alive, then left.
//!
//! `CONCORD_BENCH=detect cargo bench --bench gossip` runs one section. `cargo test` builds this
//! target but skips the work (it only runs when cargo passes `--bench`).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tokio::process::{Child, Command};

// Shared by every bench; this one needs no millisecond helpers, so parts go unused.
#[allow(dead_code)]
#[path = "common/mod.rs"]
mod common;
use common::process::proc_status_kb;
use common::{Stats, Table};

const BINARY: &str = env!("CARGO_BIN_EXE_concord");
const SECTIONS: &[&str] = &["detect", "rss", "converge"];
/// Detection is bimodal (about a third of kills wait a probe round longer before anyone
/// probes the victim, in memberlist as in foca), so a median needs more than a handful of
/// runs to mean anything; `CONCORD_BENCH_RUNS` overrides.
const DETECT_RUNS: usize = 12;

fn detect_runs() -> usize {
    std::env::var("CONCORD_BENCH_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .filter(|runs| *runs > 0)
        .unwrap_or(DETECT_RUNS)
}
/// How long any one condition may take before the bench gives up.
const PATIENCE: Duration = Duration::from_secs(60);
const POLL: Duration = Duration::from_millis(20);

fn binary() -> String {
    std::env::var("CONCORD_BENCH_BINARY").unwrap_or_else(|_| BINARY.to_string())
}

fn main() -> Result<()> {
    common::run_sections(
        "gossip",
        SECTIONS,
        || {
            common::print_machine(
                BINARY,
                "peer: serf (Debian 0.9.4~ds1), each agent on its own 127.0.x.y",
                "times in seconds; memory in MB (VmRSS)",
            )
        },
        |section, table| match section {
            "detect" => Box::pin(detect(table)),
            "rss" => Box::pin(rss(table)),
            _ => Box::pin(converge(table)),
        },
    )
}

/// One agent process (concord or serf), killed when dropped.
struct Member {
    child: Child,
    ip: String,
    _scratch: tempfile::TempDir,
}

impl Member {
    fn pid(&self) -> u32 {
        self.child.id().unwrap_or(0)
    }

    fn rss_mb(&self) -> f64 {
        proc_status_kb(self.pid(), "VmRSS").unwrap_or(0) as f64 / 1024.0
    }

    /// The anonymous part of RSS: memory the process itself allocated, as opposed to pages of
    /// its binary and libraries mapped from the page cache (shared by agents on one host).
    fn anon_mb(&self) -> f64 {
        proc_status_kb(self.pid(), "RssAnon").unwrap_or(0) as f64 / 1024.0
    }

    async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

fn log_file(scratch: &Path) -> Result<(Stdio, Stdio)> {
    let log = std::fs::File::create(scratch.join("agent.log"))?;
    Ok((Stdio::from(log.try_clone()?), Stdio::from(log)))
}

/// A concord agent on `ip` with default ports; a server when `join` is None.
fn concord(ip: &str, node: &str, join: Option<&str>, extra: &[&str]) -> Result<Member> {
    let scratch = tempfile::tempdir()?;
    let (out, err) = log_file(scratch.path())?;
    let mut command = Command::new(binary());
    command
        .args([
            "agent",
            "-node",
            node,
            "-bind",
            ip,
            "-client",
            ip,
            "-log-level",
            "warn",
        ])
        .arg("-data-dir")
        .arg(scratch.path().join("data"))
        .args(extra)
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    match join {
        None => command.args(["-server", "-bootstrap-expect=1"]),
        Some(server) => command.args(["-retry-join", server, "-retry-interval", "1s"]),
    };
    Ok(Member {
        child: command.spawn().context("spawn concord")?,
        ip: ip.into(),
        _scratch: scratch,
    })
}

fn serf(ip: &str, node: &str, join: Option<&str>) -> Result<Member> {
    let scratch = tempfile::tempdir()?;
    let (out, err) = log_file(scratch.path())?;
    let mut command = Command::new("serf");
    command
        .arg("agent")
        .arg(format!("-node={node}"))
        .arg(format!("-bind={ip}:7946"))
        .arg(format!("-rpc-addr={ip}:7373"))
        .arg("-log-level=warn")
        .stdout(out)
        .stderr(err)
        .kill_on_drop(true);
    if let Some(seed) = join {
        // -retry-join: a plain -join exits when the seed is not listening yet.
        command
            .arg(format!("-retry-join={seed}:7946"))
            .arg("-retry-interval=1s");
    }
    Ok(Member {
        child: command
            .spawn()
            .context("spawn serf (apt-get install -y serf)")?,
        ip: ip.into(),
        _scratch: scratch,
    })
}

/// (name, status) of every member `agent` lists; empty when it does not answer yet.
async fn concord_members(ip: &str) -> Vec<(String, String)> {
    let Ok(client) = concord::api::client::Client::from_flags(Some(&format!("{ip}:8500")), None)
    else {
        return Vec::new();
    };
    let Ok(response) = client.get("/v1/agent/members").await else {
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
    list.as_array()
        .into_iter()
        .flatten()
        .map(|member| {
            let status = match member["Status"].as_u64() {
                Some(1) => "alive",
                Some(3) => "left",
                Some(4) => "failed",
                _ => "other",
            };
            (
                member["Name"].as_str().unwrap_or_default().to_string(),
                status.to_string(),
            )
        })
        .collect()
}

async fn serf_members(ip: &str) -> Vec<(String, String)> {
    let Ok(output) = Command::new("serf")
        .args(["members", &format!("-rpc-addr={ip}:7373"), "-format=json"])
        .output()
        .await
    else {
        return Vec::new();
    };
    let list: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap_or_default();
    list["members"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|member| {
            (
                member["name"].as_str().unwrap_or_default().to_string(),
                member["status"].as_str().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Kind {
    Concord,
    Serf,
}

async fn members(kind: Kind, ip: &str) -> Vec<(String, String)> {
    match kind {
        Kind::Concord => concord_members(ip).await,
        Kind::Serf => serf_members(ip).await,
    }
}

/// Waits until `agent` lists `name` with `status`; how long that took.
async fn until_listed(kind: Kind, ip: &str, name: &str, status: &str) -> Result<Duration> {
    let started = Instant::now();
    loop {
        let listed = members(kind, ip).await;
        if listed.iter().any(|(n, s)| n == name && s == status) {
            return Ok(started.elapsed());
        }
        if started.elapsed() > PATIENCE {
            bail!("{ip} never listed {name} {status}: {listed:?}");
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Waits until every agent lists `count` members alive.
async fn until_converged(kind: Kind, ips: &[String], count: usize) -> Result<()> {
    let started = Instant::now();
    for ip in ips {
        loop {
            let alive = members(kind, ip)
                .await
                .iter()
                .filter(|(_, status)| status == "alive")
                .count();
            if alive == count {
                break;
            }
            if started.elapsed() > PATIENCE {
                bail!("{ip} lists {alive} alive, not {count}");
            }
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(())
}

fn ips(subnet: u8, count: usize) -> Vec<String> {
    (1..=count)
        .map(|host| format!("127.0.{subnet}.{host}"))
        .collect()
}

/// Five agents of `kind` on `subnet`, converged.
async fn cluster(kind: Kind, subnet: u8) -> Result<Vec<Member>> {
    let addresses = ips(subnet, 5);
    let seed = addresses[0].clone();
    let mut cluster = Vec::new();
    for (index, ip) in addresses.iter().enumerate() {
        let node = format!("n{index}");
        let join = (index > 0).then_some(seed.as_str());
        cluster.push(match kind {
            Kind::Concord => concord(ip, &node, join, &[])?,
            Kind::Serf => serf(ip, &node, join)?,
        });
    }
    until_converged(kind, &addresses, 5).await?;
    Ok(cluster)
}

async fn detection_time(kind: Kind, subnet: u8) -> Result<f64> {
    let mut cluster = cluster(kind, subnet).await?;
    // Let the pools settle past the joins' gossip before the failure.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let observer = cluster[1].ip.clone();
    cluster[4].kill().await;
    let took = until_listed(kind, &observer, "n4", "failed").await?;
    Ok(took.as_secs_f64())
}

async fn detect(table: &mut Table) -> Result<()> {
    let mut ours = Vec::new();
    let mut theirs = Vec::new();
    for run in 0..detect_runs() {
        let concord_s = detection_time(Kind::Concord, 20).await?;
        let serf_s = detection_time(Kind::Serf, 21).await?;
        println!("run {run}: concord {concord_s:.2} s, serf {serf_s:.2} s");
        ours.push(concord_s);
        theirs.push(serf_s);
    }
    let (ours, theirs) = (Stats::new(ours), Stats::new(theirs));
    table.row(
        "failure detection, 5 agents, LAN timings, kill -9: concord median (min-max)",
        format!(
            "{:.2} s ({:.2}-{:.2})",
            ours.pct(0.5),
            ours.pct(0.0),
            ours.max()
        ),
        "≤ Serf",
        Some(ours.pct(0.5) <= theirs.pct(0.5)),
    );
    table.row(
        "— serf median (min-max), same run",
        format!(
            "{:.2} s ({:.2}-{:.2})",
            theirs.pct(0.5),
            theirs.pct(0.0),
            theirs.max()
        ),
        "",
        None,
    );
    table.row(
        "— ratio concord / serf (medians)",
        format!("{:.2}", ours.pct(0.5) / theirs.pct(0.5)),
        "≤ 1.0",
        Some(ours.pct(0.5) <= theirs.pct(0.5)),
    );
    Ok(())
}

async fn rss(table: &mut Table) -> Result<()> {
    let ours = cluster(Kind::Concord, 22).await?;
    let theirs = cluster(Kind::Serf, 23).await?;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let clients: Vec<f64> = ours[1..].iter().map(Member::rss_mb).collect();
    let serfs: Vec<f64> = theirs.iter().map(Member::rss_mb).collect();
    let client = Stats::new(clients).pct(0.5);
    let serf = Stats::new(serfs).pct(0.5);
    println!(
        "concord server {:.1} MB; clients {:?}",
        ours[0].rss_mb(),
        ours[1..].iter().map(Member::rss_mb).collect::<Vec<_>>()
    );
    table.row(
        "idle client agent RSS (median of 4; gossip, HTTP, DNS, no services)",
        format!("{client:.1} MB"),
        "≤ 12 MB (stretch ≤ 6)",
        Some(client <= 12.0),
    );
    table.row(
        "— serf agent RSS (median of 5), same run",
        format!("{serf:.1} MB"),
        "",
        None,
    );
    table.row(
        "— ratio concord client / serf",
        format!("{:.2}", client / serf),
        "≤ 0.5 (G9)",
        Some(client / serf <= 0.5),
    );
    let client_anon = Stats::new(ours[1..].iter().map(Member::anon_mb).collect()).pct(0.5);
    let serf_anon = Stats::new(theirs.iter().map(Member::anon_mb).collect()).pct(0.5);
    table.row(
        "— of which anonymous (RssAnon): concord client / serf",
        format!("{client_anon:.1} / {serf_anon:.1} MB"),
        "",
        None,
    );
    Ok(())
}

/// Waits until every agent in `ips` lists `name` with `status`; the time from `started` to
/// when the last one did.
async fn until_all_list(
    ips: &[String],
    name: &str,
    status: &str,
    started: Instant,
) -> Result<Duration> {
    let mut pending: Vec<&String> = ips.iter().collect();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for ip in pending {
            let listed = concord_members(ip).await;
            if !listed.iter().any(|(n, s)| n == name && s == status) {
                still.push(ip);
            }
        }
        pending = still;
        if started.elapsed() > PATIENCE {
            bail!("{} agents never listed {name} {status}", pending.len());
        }
        if !pending.is_empty() {
            tokio::time::sleep(POLL).await;
        }
    }
    Ok(started.elapsed())
}

async fn converge(table: &mut Table) -> Result<()> {
    let addresses = ips(24, 30);
    let seed = addresses[0].clone();
    let scratch = tempfile::tempdir()?;
    let config: PathBuf = scratch.path().join("gossip.json");
    std::fs::write(&config, r#"{"gossip_lan": {"gossip_interval": "200ms"}}"#)?;
    let config_arg = config.display().to_string();
    let extra = ["-config-file", config_arg.as_str()];
    let mut members = Vec::new();
    for (index, ip) in addresses.iter().enumerate() {
        let join = (index > 0).then_some(seed.as_str());
        members.push(concord(ip, &format!("n{index:02}"), join, &extra)?);
    }
    until_converged(Kind::Concord, &addresses, 30).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let rss: Vec<f64> = members[1..].iter().map(Member::rss_mb).collect();
    println!(
        "30 agents converged; client RSS median {:.1} MB",
        Stats::new(rss).pct(0.5)
    );

    let newcomer_ip = "127.0.24.31";
    let started = Instant::now();
    let mut newcomer = concord(newcomer_ip, "newcomer", Some(&seed), &extra)?;
    // The newcomer's own start (process, bind, first join) is part of what users wait for,
    // so the clock starts at spawn.
    let joined = until_all_list(&addresses, "newcomer", "alive", started).await?;
    let client =
        concord::api::client::Client::from_flags(Some(&format!("{newcomer_ip}:8500")), None)?;
    let leave_started = Instant::now();
    let response = client.put("/v1/agent/leave", Vec::new()).await?;
    if !response.status.is_success() {
        bail!("leave failed: {}", response.text());
    }
    let left = until_all_list(&addresses, "newcomer", "left", leave_started).await?;
    newcomer.kill().await;
    table.row(
        "join visible on all of 30 agents (200 ms gossip), from spawn",
        format!("{:.2} s", joined.as_secs_f64()),
        "≤ 1.4 s",
        Some(joined.as_secs_f64() <= 1.4),
    );
    table.row(
        "leave visible (as left) on all of 30 agents, from the leave request",
        format!("{:.2} s", left.as_secs_f64()),
        "≤ 1.4 s",
        Some(left.as_secs_f64() <= 1.4),
    );
    drop(members);
    Ok(())
}
