//! Test support: start the real `concord` binary on free loopback ports with its own data
//! dir, talk to it over HTTP, and wait for conditions with a deadline (never a fixed sleep).

use std::future::Future;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use concord::api::client::{Client, Response};

pub const BINARY: &str = env!("CARGO_BIN_EXE_concord");

/// Polls `check` until it returns `Some`, or panics with `what` after `limit`.
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port for an agent or Envoy to listen on. Taken from below the kernel's ephemeral range
/// (32768 and up here), in turn, so that no outgoing connection of any test (they use
/// ephemeral ports) can take it between this call and the listener's bind, and no two tests
/// of this process get the same one; one that something already listens on is skipped.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU16, Ordering};
    const FIRST: u16 = 20_000;
    const LAST: u16 = 32_000;
    // Start at a spot that depends on the process, so two test binaries running at once
    // are unlikely to walk the same ports.
    static NEXT: AtomicU16 = AtomicU16::new(0);
    let _ = NEXT.compare_exchange(
        0,
        FIRST + (std::process::id() % 4_000) as u16 * 3,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    loop {
        let port = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = FIRST + port.saturating_sub(FIRST) % (LAST - FIRST);
        let free_tcp = std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
            && std::net::TcpListener::bind(("0.0.0.0", port)).is_ok();
        let free_udp = std::net::UdpSocket::bind(("127.0.0.1", port)).is_ok();
        if free_tcp && free_udp {
            return port;
        }
    }
}

/// A running agent. Killed when dropped.
pub struct Agent {
    pub child: Child,
    pub http_port: u16,
    /// The gRPC (xDS) port.
    pub grpc_port: u16,
    /// The DNS port (UDP and TCP).
    pub dns_port: u16,
    /// The server RPC port (the `consul` service's port).
    pub server_port: u16,
    pub log_path: PathBuf,
    /// The loopback address the agent's HTTP API and DNS listen on.
    pub host: String,
    /// The token start-up readiness is checked with (an agent with ACLs on and a deny default
    /// shows an anonymous request nothing).
    pub ready_token: Option<String>,
    _workdir: Option<tempfile::TempDir>,
}

/// Where a cluster member runs: its own loopback address with Consul's default ports, as an
/// operator would run one agent per machine.
#[derive(Clone)]
pub struct Placement {
    pub ip: String,
    pub node: String,
    pub server: bool,
    /// Addresses to `-retry-join`.
    pub join: Vec<String>,
    /// A JSON config file to load (`-config-file`).
    pub config: Option<String>,
    /// The data dir, for an agent restarted on another's data; a fresh one when None.
    pub data_dir: Option<PathBuf>,
}

#[derive(Clone)]
pub struct AgentOptions {
    pub dev: bool,
    pub data_dir: Option<PathBuf>,
    pub extra_args: Vec<String>,
    /// A fixed gRPC port (a restarted agent keeps its Envoys' address); free when None.
    pub grpc_port: Option<u16>,
    /// A fixed DNS port; free when None.
    pub dns_port: Option<u16>,
    /// A cluster member on its own address; the other options then do not apply.
    pub placement: Option<Placement>,
    /// See `Agent::ready_token`.
    pub ready_token: Option<String>,
}

impl Default for AgentOptions {
    fn default() -> Self {
        AgentOptions {
            dev: true,
            data_dir: None,
            extra_args: Vec::new(),
            grpc_port: None,
            dns_port: None,
            placement: None,
            ready_token: None,
        }
    }
}

impl Agent {
    /// Starts `concord agent` and waits until it has a leader and serves the HTTP API.
    ///
    /// Free ports are picked by binding port 0 and letting go, so another test's agent can
    /// take the same port first; this agent then exits, and the test would talk to the other
    /// one. An agent that exits while starting is therefore retried on a new port.
    pub async fn start(options: AgentOptions) -> Agent {
        for _ in 0..3 {
            let mut agent = Agent::spawn(options.clone());
            agent.ready_token = options.ready_token.clone();
            if agent.ready_or_exited().await {
                return agent;
            }
        }
        panic!("concord agent kept exiting during start-up");
    }

    /// Waits until ready (true) or until the process exited (false).
    async fn ready_or_exited(&mut self) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        let client =
            Client::from_flags(Some(&self.address()), self.ready_token.as_deref()).expect("client");
        loop {
            if self.child.try_wait().expect("try_wait").is_some() {
                return false;
            }
            if self.answering_agent_is_ours(&client).await {
                let response = client.get("/v1/catalog/service/consul").await;
                let instances: serde_json::Value = response
                    .ok()
                    .and_then(|response| serde_json::from_slice(&response.body).ok())
                    .unwrap_or_default();
                if instances.as_array().is_some_and(|list| list.len() == 1) {
                    return true;
                }
            }
            assert!(
                Instant::now() < deadline,
                "agent did not become ready:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Starts `concord agent` without waiting for it.
    pub fn spawn(options: AgentOptions) -> Agent {
        if let Some(placement) = &options.placement {
            return Agent::spawn_placed(placement);
        }
        let workdir = tempfile::tempdir().expect("tempdir");
        let data_dir = options
            .data_dir
            .clone()
            .unwrap_or_else(|| workdir.path().join("data"));
        let http_port = free_port();
        let grpc_port = options.grpc_port.unwrap_or_else(free_port);
        let dns_port = options.dns_port.unwrap_or_else(free_port);
        let server_port = free_port();
        let log_path = workdir.path().join("agent.log");
        let mut command = Command::new(BINARY);
        command.arg("agent");
        if options.dev {
            command.arg("-dev");
        } else {
            command.args(["-server", "-bootstrap-expect=1", "-bind", "127.0.0.1"]);
            command.arg("-data-dir").arg(&data_dir);
        }
        command
            .args(["-http-port", &http_port.to_string()])
            .args(["-grpc-port", &grpc_port.to_string()])
            .args(["-dns-port", &dns_port.to_string()])
            // Gossip and the server RPC port too, or parallel agents would all want 8300-8302.
            .args(["-serf-lan-port", &free_port().to_string()])
            .args(["-serf-wan-port", &free_port().to_string()])
            .args(["-server-port", &server_port.to_string()])
            // A -dev agent's temporary data dir then goes away with the test's workdir, even
            // when the agent is killed.
            .env("TMPDIR", workdir.path())
            .args(["-node", "test-node"])
            .args(&options.extra_args)
            .stdout(Stdio::from(std::fs::File::create(&log_path).expect("log")))
            .stderr(Stdio::from(
                std::fs::OpenOptions::new()
                    .append(true)
                    .open(&log_path)
                    .expect("log"),
            ));
        let child = command.spawn().expect("spawn concord");
        // The data dir must outlive the workdir only when the caller owns it.
        let keep_workdir = Some(workdir);
        Agent {
            child,
            http_port,
            grpc_port,
            dns_port,
            server_port,
            log_path,
            host: "127.0.0.1".into(),
            ready_token: None,
            _workdir: keep_workdir,
        }
    }

    fn spawn_placed(placement: &Placement) -> Agent {
        let workdir = tempfile::tempdir().expect("tempdir");
        let log_path = workdir.path().join("agent.log");
        let mut command = Command::new(BINARY);
        command
            .arg("agent")
            .args(["-node", &placement.node])
            .args(["-bind", &placement.ip])
            .args(["-client", &placement.ip])
            .arg("-data-dir")
            .arg(
                placement
                    .data_dir
                    .clone()
                    .unwrap_or_else(|| workdir.path().join("data")),
            );
        if placement.server {
            command.arg("-server");
            // A server bootstraps alone unless its config says how many to expect.
            let expects = placement
                .config
                .as_deref()
                .is_some_and(|config| config.contains("bootstrap_expect"));
            if !expects {
                command.arg("-bootstrap-expect=1");
            }
        }
        for address in &placement.join {
            command.args(["-retry-join", address]);
        }
        // Agents of a test start together, so a first join attempt can find its peer not yet
        // listening; Consul's 30 s retry interval would then outlast every formation deadline
        // (what made cluster tests fail under the full suite's load).
        if !placement.join.is_empty() {
            command.arg("-retry-interval=1s");
        }
        if let Some(config) = &placement.config {
            let path = workdir.path().join("config.json");
            std::fs::write(&path, config).expect("config file");
            command.arg("-config-file").arg(path);
        }
        let log = std::fs::File::create(&log_path).expect("log");
        command
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log));
        Agent {
            child: command.spawn().expect("spawn concord"),
            http_port: 8500,
            grpc_port: 8502,
            dns_port: 8600,
            server_port: 8300,
            log_path,
            host: placement.ip.clone(),
            ready_token: None,
            _workdir: Some(workdir),
        }
    }

    pub fn address(&self) -> String {
        format!("{}:{}", self.host, self.http_port)
    }

    pub fn client(&self) -> Client {
        Client::from_flags(Some(&self.address()), None).expect("client")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Whether the agent answering on our port is this process: the node id it reports is
    /// the one this process logged at start.
    async fn answering_agent_is_ours(&self, client: &Client) -> bool {
        let Ok(response) = client.get("/v1/agent/self").await else {
            return false;
        };
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap_or_default();
        let Some(node_id) = body["Config"]["NodeID"].as_str() else {
            return false;
        };
        self.log().contains(&format!("node_id={node_id}"))
    }

    /// Waits for the process to exit and returns its status code.
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<i32> {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(
                Instant::now() < deadline,
                "agent did not exit:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Runs the CLI against `agent` and returns (exit code, stdout, stderr).
pub fn cli(agent: &Agent, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    use std::io::Write;
    let mut child = Command::new(BINARY)
        .args(args)
        .env("CONSUL_HTTP_ADDR", agent.address())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn cli");
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input)
            .expect("write stdin");
    }
    drop(child.stdin.take());
    let output = child.wait_with_output().expect("cli output");
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

pub fn json(response: &Response) -> serde_json::Value {
    serde_json::from_slice(&response.body).unwrap_or_else(|error| {
        panic!(
            "response {} is not JSON ({error}): {}",
            response.status,
            response.text()
        )
    })
}

pub fn header(response: &Response, name: &str) -> String {
    response
        .headers
        .get(name)
        .and_then(|value| value.to_str().ok())
        .unwrap_or_default()
        .to_string()
}

/// A network partition between one loopback address and others, made with iptables (every
/// packet between them dropped, both ways) and healed when dropped. Needs root; `scripts/test`
/// installs iptables.
pub struct Partition {
    rules: Vec<(String, String)>,
}

impl Partition {
    pub fn isolate(address: &str, from: &[&str]) -> Partition {
        let mut partition = Partition { rules: Vec::new() };
        for other in from {
            for (source, destination) in [(address, *other), (*other, address)] {
                assert!(
                    iptables("-I", source, destination),
                    "iptables -I INPUT -s {source} -d {destination} -j DROP failed"
                );
                partition
                    .rules
                    .push((source.to_string(), destination.to_string()));
            }
        }
        partition
    }
}

/// Inserts (`-I`) or deletes (`-D`) one DROP rule; whether iptables succeeded.
fn iptables(action: &str, source: &str, destination: &str) -> bool {
    Command::new("iptables")
        .args([
            action,
            "INPUT",
            "-s",
            source,
            "-d",
            destination,
            "-j",
            "DROP",
        ])
        .status()
        .expect("iptables runs (scripts/test installs it; partitions need root)")
        .success()
}

impl Drop for Partition {
    fn drop(&mut self) {
        for (source, destination) in &self.rules {
            if !iptables("-D", source, destination) {
                eprintln!("could not remove iptables rule {source} -> {destination}");
            }
        }
    }
}

/// An API client for the agent on `ip` with the default HTTP port.
pub fn client_for(ip: &str) -> Client {
    Client::from_flags(Some(&format!("{ip}:8500")), None).expect("client")
}

/// A gauge's name in `/v1/agent/metrics` JSON: Consul's prefix and, since `disable_hostname`
/// is off by default, this machine's hostname before the name.
pub fn gauge_name(name: &str) -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    format!("consul.{}.{name}", host.trim())
}

/// Held for the whole of a test whose clusters must elect leaders within deadlines while
/// servers are killed or cut off (nemesis, failover, recovery). On a 2-core machine two such
/// tests side by side starve each other's agents of CPU until elections miss the deadlines;
/// holding this, they take turns while lighter tests still run beside them.
pub async fn timing_sensitive() -> tokio::sync::MutexGuard<'static, ()> {
    static TURN: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    TURN.lock().await
}

/// `dig +short` against `agent`'s DNS: the answer's records, one per line.
pub fn dig_short(agent: &Agent, name: &str, kind: &str) -> Vec<String> {
    let output = Command::new("dig")
        .arg(format!("@{}", agent.host))
        .args(["-p", &agent.dns_port.to_string()])
        .args(["+tries=1", "+time=2", "+short", name, kind])
        .output()
        .expect("dig runs (install bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}
