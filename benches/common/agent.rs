//! One `concord agent -dev` per bench section: free 127.0.0.1 ports for HTTP, gRPC and DNS,
//! `TMPDIR` pointed at a scratch directory that is removed with the agent (its dev data dir
//! lives there), and its log kept for the report.

// Each bench binary compiles this file and uses its own subset of it.
#![allow(dead_code)]

use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use concord::api::client::Client;
use tokio::process::{Child, Command};

use super::process::{free_ports, log_problems, proc_status_kb, stat_path, tail};

/// The agent this build made; `CONCORD_BENCH_BINARY` points a bench at another build (a
/// baseline commit's) so two versions are measured in one run on the same machine.
const BINARY: &str = env!("CARGO_BIN_EXE_concord");

fn binary() -> String {
    std::env::var("CONCORD_BENCH_BINARY").unwrap_or_else(|_| BINARY.to_string())
}
/// How long an agent may take to serve before the bench gives up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// One readiness probe's limit.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct BenchAgent {
    child: Child,
    pub pid: u32,
    pub http: SocketAddr,
    pub grpc: SocketAddr,
    pub dns: SocketAddr,
    spawned: Instant,
    client: Client,
    /// Holds the agent's TMPDIR, its log, and whatever else a bench keeps beside it.
    scratch: tempfile::TempDir,
}

impl BenchAgent {
    /// Starts `concord agent -dev -node bench` with `extra` arguments, at `log_level` if given
    /// (`-dev` alone logs at debug).
    pub async fn spawn(log_level: Option<&str>, extra: &[&str]) -> Result<BenchAgent> {
        let scratch = tempfile::Builder::new()
            .prefix("concord-bench-")
            .tempdir()
            .context("cannot create a scratch dir")?;
        let ports = free_ports(3)?;
        let log = File::create(scratch.path().join("agent.log"))?;
        let binary = binary();
        let mut command = Command::new(&binary);
        command
            .args(["agent", "-dev", "-node", "bench"])
            .args(["-http-port", &ports[0].to_string()])
            .args(["-grpc-port", &ports[1].to_string()])
            .args(["-dns-port", &ports[2].to_string()]);
        if let Some(level) = log_level {
            command.args(["-log-level", level]);
        }
        let spawned = Instant::now();
        let child = command
            .args(extra)
            .env("TMPDIR", scratch.path())
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {binary}"))?;
        let pid = child
            .id()
            .ok_or_else(|| anyhow!("the agent exited at once"))?;
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, ports[0]));
        let client = Client::from_flags(Some(&http.to_string()), None).map_err(|e| anyhow!(e))?;
        Ok(BenchAgent {
            child,
            pid,
            http,
            grpc: SocketAddr::from((Ipv4Addr::LOCALHOST, ports[1])),
            dns: SocketAddr::from((Ipv4Addr::LOCALHOST, ports[2])),
            spawned,
            client,
            scratch,
        })
    }

    /// concord's own HTTP client for this agent (keep-alive connections, pooled).
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// Polls `PUT /v1/kv/probe` every millisecond until it answers `true` (Raft has a leader
    /// and commits); returns the time since the process was started.
    pub async fn wait_writable(&mut self) -> Result<Duration> {
        let deadline = self.spawned + READY_TIMEOUT;
        loop {
            let put = self.client.put("/v1/kv/probe", b"1".to_vec());
            if let Ok(Ok(response)) = tokio::time::timeout(PROBE_TIMEOUT, put).await {
                if response.status.is_success() && response.text().trim() == "true" {
                    return Ok(self.spawned.elapsed());
                }
            }
            self.still_starting(deadline, "PUT /v1/kv/probe = true")?;
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// Polls `GET /v1/catalog/service/consul` until it lists the server itself.
    pub async fn wait_registered(&mut self) -> Result<Duration> {
        let deadline = self.spawned + READY_TIMEOUT;
        loop {
            let get = self.client.get("/v1/catalog/service/consul");
            if let Ok(Ok(response)) = tokio::time::timeout(PROBE_TIMEOUT, get).await {
                let listed = response.json().unwrap_or_default();
                if listed.as_array().is_some_and(|list| list.len() == 1) {
                    return Ok(self.spawned.elapsed());
                }
            }
            self.still_starting(deadline, "server in the catalog")?;
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// An error once the agent has exited or `deadline` has passed.
    fn still_starting(&mut self, deadline: Instant, waiting_for: &str) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!(
                "the agent exited during start-up ({status}):\n{}",
                self.log_tail()
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "no {waiting_for} within {READY_TIMEOUT:?}:\n{}",
                self.log_tail()
            );
        }
        Ok(())
    }

    pub fn scratch(&self) -> &Path {
        self.scratch.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.scratch.path().join("agent.log")).unwrap_or_default()
    }

    pub fn log_tail(&self) -> String {
        tail(&self.log(), 20)
    }

    /// Prints the agent log's WARN and ERROR lines, grouped by message.
    pub fn report_log(&self) {
        let (count, summary) = log_problems(&self.log(), &[" WARN ", " ERROR "]);
        println!("agent log: {count} WARN/ERROR lines{summary}");
    }

    pub fn stat_path(&self) -> PathBuf {
        stat_path(self.pid)
    }

    pub fn rss_kb(&self) -> Result<u64> {
        proc_status_kb(self.pid, "VmRSS")
            .ok_or_else(|| anyhow!("cannot read VmRSS of pid {}", self.pid))
    }

    pub fn rss_mb(&self) -> Result<f64> {
        self.rss_kb().map(|kb| kb as f64 / 1024.0)
    }

    pub fn threads(&self) -> u64 {
        proc_status_kb(self.pid, "Threads").unwrap_or(0)
    }

    /// Asks the agent to leave (so its dev data dir is cleaned up), then kills it if needed.
    pub async fn stop(mut self) {
        let leave = self.client.put("/v1/agent/leave", Vec::new());
        let _ = tokio::time::timeout(Duration::from_secs(2), leave).await;
        match tokio::time::timeout(Duration::from_secs(15), self.child.wait()).await {
            Ok(Ok(_)) => {}
            _ => {
                println!("agent {} did not leave in 15 s; killing it", self.pid);
                let _ = self.child.kill().await;
            }
        }
    }
}
