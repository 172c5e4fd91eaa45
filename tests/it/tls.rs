//! Agent TLS with files from `concord tls`: three servers and a client agent on their own
//! loopback addresses with `verify_incoming`, `verify_outgoing` and `verify_server_hostname`
//! form a cluster and serve over mutual TLS, while a server holding a client certificate
//! never gets into Raft; HTTPS needs a client certificate; Envoy takes its configuration
//! from the gRPC-TLS port; a certificate rotated under load is picked up by `concord reload`
//! with no failed request, and a reload with a broken file keeps the running one. A client
//! agent with only the CA file gets its certificate from the servers (auto_encrypt).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::{json, Value};

use crate::envoy::{backend, register, Envoy};
use crate::raft_cluster::{agreed_leader, get, read};
use crate::support::{eventually, free_port, Agent, AgentOptions, Placement, BINARY};

/// Addresses no other test uses.
const SERVERS: [&str; 3] = ["127.0.40.1", "127.0.40.2", "127.0.40.3"];
const CLIENT: &str = "127.0.40.4";
const ROGUE: &str = "127.0.40.5";
/// A client agent with no certificate of its own: auto_encrypt gets it one.
const AUTO: &str = "127.0.40.6";

/// Runs `concord <args>` in `dir`, expecting success; its stdout.
fn concord_in(dir: &Path, args: &[&str]) -> String {
    let output = Command::new(BINARY)
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run concord");
    assert!(
        output.status.success(),
        "concord {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The agent CA and certificates as an operator makes them: three servers, two client
/// agents, one for the CLI.
fn make_files(dir: &Path) {
    let out = concord_in(dir, &["tls", "ca", "create"]);
    assert!(out.contains("==> Saved consul-agent-ca.pem"), "{out}");
    assert!(out.contains("==> Saved consul-agent-ca-key.pem"), "{out}");
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(dir.join("consul-agent-ca-key.pem"))
        .expect("CA key")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "the CA key is private");
    // A second CA would overwrite the first: refused.
    let again = Command::new(BINARY)
        .args(["tls", "ca", "create"])
        .current_dir(dir)
        .output()
        .expect("run");
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("consul-agent-ca.pem already exists."));
    for node in ["s1", "s2", "s3"] {
        concord_in(
            dir,
            &[
                "tls", "cert", "create", "-server", "-dc", "dc1", "-node", node,
            ],
        );
    }
    // The first client agent's HTTPS is reached at its own address.
    concord_in(
        dir,
        &[
            "tls",
            "cert",
            "create",
            "-client",
            "-additional-ipaddress",
            CLIENT,
        ],
    );
    concord_in(dir, &["tls", "cert", "create", "-client"]);
    concord_in(dir, &["tls", "cert", "create", "-cli"]);
    for name in [
        "dc1-server-consul-0.pem",
        "dc1-server-consul-2-key.pem",
        "dc1-client-consul-1.pem",
        "dc1-cli-consul-0-key.pem",
    ] {
        assert!(dir.join(name).exists(), "{name} was written");
    }
}

/// The `tls` stanza of an agent presenting `<prefix>.pem`, verifying everything.
fn tls_config(dir: &Path, prefix: &str) -> Value {
    let file = |name: String| dir.join(name).display().to_string();
    json!({
        "ports": {"https": 8501},
        "tls": {
            "defaults": {
                "ca_file": file("consul-agent-ca.pem".into()),
                "cert_file": file(format!("{prefix}.pem")),
                "key_file": file(format!("{prefix}-key.pem")),
                "verify_incoming": true,
                "verify_outgoing": true,
            },
            "internal_rpc": {"verify_server_hostname": true},
        },
    })
}

fn member(ip: &str, node: &str, server: Option<u32>, mut config: Value) -> AgentOptions {
    config["performance"] = json!({"raft_multiplier": 1});
    config["autopilot"] = json!({"server_stabilization_time": "1s"});
    if let Some(expect) = server {
        config["bootstrap_expect"] = json!(expect);
    }
    AgentOptions {
        placement: Some(Placement {
            ip: ip.into(),
            node: node.into(),
            server: server.is_some(),
            join: vec![if ip == SERVERS[0] {
                SERVERS[1]
            } else {
                SERVERS[0]
            }
            .into()],
            config: Some(config.to_string()),
            data_dir: None,
        }),
        ..AgentOptions::default()
    }
}

fn curl(args: &[&str]) -> (bool, String) {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .args(args)
        .output()
        .expect("run curl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned()
            + &String::from_utf8_lossy(&output.stderr),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_concord_tls_files_serves_over_mutual_tls_and_keeps_a_client_certificate_out_of_raft(
) {
    let files = tempfile::tempdir().expect("dir");
    let dir = files.path();
    make_files(dir);
    let servers: Vec<Agent> = (0..3)
        .map(|index| {
            let prefix = format!("dc1-server-consul-{index}");
            let mut config = tls_config(dir, &prefix);
            config["auto_encrypt"] = json!({"allow_tls": true});
            Agent::spawn(member(
                SERVERS[index],
                &format!("s{}", index + 1),
                Some(3),
                config,
            ))
        })
        .collect();
    let client = Agent::spawn(member(
        CLIENT,
        "c1",
        None,
        tls_config(dir, "dc1-client-consul-0"),
    ));
    let auto = Agent::spawn(member(
        AUTO,
        "c2",
        None,
        json!({
            "tls": {
                "defaults": {
                    "ca_file": dir.join("consul-agent-ca.pem").display().to_string(),
                    "verify_outgoing": true,
                },
                "internal_rpc": {"verify_server_hostname": true},
                // Its xDS port serves with the certificate it is given.
                "grpc": {"use_auto_cert": true},
            },
            "ports": {"grpc_tls": 8503},
            "auto_encrypt": {"tls": true, "dns_san": ["c2.example"], "ip_san": [AUTO]},
        }),
    ));
    let all: Vec<&Agent> = servers.iter().collect();
    let leader = match tokio::time::timeout(Duration::from_secs(15), agreed_leader(&all)).await {
        Ok(leader) => leader,
        Err(_) => panic!(
            "no leader; logs:\n{}",
            servers
                .iter()
                .map(Agent::log)
                .collect::<Vec<_>>()
                .join("\n-----\n")
        ),
    };
    let leader_agent = *all
        .iter()
        .find(|agent| format!("{}:8300", agent.host) == leader)
        .expect("the leader is one of the servers");

    // The client agent reaches the servers only over mutual TLS.
    eventually(
        "a write through the client agent",
        Duration::from_secs(30),
        || async {
            let response = client
                .client()
                .put("/v1/kv/tls-key", b"sealed".to_vec())
                .await
                .ok()?;
            (response.status == 200).then_some(())
        },
    )
    .await;
    for server in &servers {
        assert_eq!(
            read(server, "tls-key", "consistent").await.as_deref(),
            Some("sealed")
        );
    }

    // The auto_encrypt client got a certificate from the Connect CA and, with it, reaches
    // servers that refuse any connection without one.
    eventually(
        "a write through the auto_encrypt client",
        Duration::from_secs(30),
        || async {
            let response = auto
                .client()
                .put("/v1/kv/auto-key", b"granted".to_vec())
                .await
                .ok()?;
            (response.status == 200).then_some(())
        },
    )
    .await;
    assert_eq!(
        read(leader_agent, "auto-key", "consistent")
            .await
            .as_deref(),
        Some("granted")
    );
    assert!(
        servers.iter().any(|server| server
            .log()
            .contains("signed a client agent's certificate (auto_encrypt) node=c2")),
        "a server signed c2's certificate"
    );
    assert!(auto
        .log()
        .contains("auto_encrypt: got this agent's TLS certificate"));
    // That certificate, on its gRPC-TLS port: the agent identity and the names it asked for,
    // from the Connect CA.
    let roots = client
        .client()
        .get("/v1/connect/ca/roots?pem")
        .await
        .expect("roots")
        .text();
    let roots_path = dir.join("connect-roots.pem");
    std::fs::write(&roots_path, roots).expect("write roots");
    let shown = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect {AUTO}:8503 -CAfile {} -verify_return_error </dev/null 2>/dev/null \
             | openssl x509 -noout -ext subjectAltName",
            roots_path.display()
        ))
        .output()
        .expect("openssl");
    let sans = String::from_utf8_lossy(&shown.stdout);
    assert!(sans.contains("DNS:c2.example"), "{sans}");
    assert!(sans.contains(&format!("IP Address:{AUTO}")), "{sans}");
    assert!(sans.contains("/agent/client/dc/dc1/id/"), "{sans}");

    // Without a certificate, TLS to a server gets exactly that one request answered.
    let bare = concord::tls::Tls::load(
        &concord::tls::TlsConfig {
            internal_rpc: concord::tls::ProtocolConfig {
                ca_file: Some(dir.join("consul-agent-ca.pem")),
                verify_outgoing: true,
                verify_server_hostname: true,
                ..Default::default()
            },
            ..Default::default()
        },
        "dc1",
        "consul",
        false,
        false,
    )
    .expect("TLS without a certificate");
    let connections =
        concord::rpc::connections::Connections::new("127.0.40.7".parse().expect("ip"), bare);
    let refused = connections
        .unary(
            format!("{}:8300", SERVERS[0]).parse().expect("address"),
            concord::rpc::wire::CALL_PATH,
            concord::rpc::wire::Frame::encode(&concord::rpc::wire::Request::Peers),
            Duration::from_secs(5),
            false,
        )
        .await
        .expect_err("refused without a client certificate");
    assert!(
        refused
            .to_string()
            .contains("a client certificate is required"),
        "{refused}"
    );

    // HTTPS with the CLI's certificate; without one it is refused (verify_incoming).
    let ca = dir.join("consul-agent-ca.pem").display().to_string();
    let cli_cert = dir.join("dc1-cli-consul-0.pem").display().to_string();
    let cli_key = dir.join("dc1-cli-consul-0-key.pem").display().to_string();
    let url = format!("https://{CLIENT}:8501/v1/kv/tls-key?raw");
    let (ok, body) = curl(&[
        "--cacert", &ca, "--cert", &cli_cert, "--key", &cli_key, &url,
    ]);
    assert!(
        ok && body == "sealed",
        "curl with a client certificate: {body}"
    );
    let (ok, body) = curl(&["--cacert", &ca, &url]);
    assert!(
        !ok,
        "HTTPS without a client certificate must be refused: {body}"
    );
    // Plain HTTP on the HTTPS port gets Go's answer.
    let (_, body) = curl(&[&format!("http://{CLIENT}:8501/v1/kv/tls-key")]);
    assert!(
        body.contains("Client sent an HTTP request to an HTTPS server."),
        "{body}"
    );

    // The CLI over HTTPS from Consul's environment variables.
    let output = Command::new(BINARY)
        .args(["kv", "get", "tls-key"])
        .env("CONSUL_HTTP_ADDR", format!("https://{CLIENT}:8501"))
        .env("CONSUL_CACERT", &ca)
        .env("CONSUL_CLIENT_CERT", &cli_cert)
        .env("CONSUL_CLIENT_KEY", &cli_key)
        .output()
        .expect("kv get");
    assert_eq!(
        String::from_utf8_lossy(&output.stdout).trim(),
        "sealed",
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    // And from the flags, with CONSUL_HTTP_SSL turning a bare address into HTTPS.
    let output = Command::new(BINARY)
        .args(["kv", "get", "-http-addr", &format!("{CLIENT}:8501")])
        .args([
            "-ca-file",
            &ca,
            "-client-cert",
            &cli_cert,
            "-client-key",
            &cli_key,
        ])
        .arg("tls-key")
        .env("CONSUL_HTTP_SSL", "true")
        .output()
        .expect("kv get");
    assert_eq!(String::from_utf8_lossy(&output.stdout).trim(), "sealed");

    // Then a server started with a client agent's certificate: same CA, not `server.dc1.consul`.
    let rogue = Agent::spawn(member(
        ROGUE,
        "rogue",
        Some(0),
        tls_config(dir, "dc1-client-consul-1"),
    ));
    // The rogue server joins the pool and the leader adds it to Raft as a non-voter, but
    // cannot reach it: its certificate does not name a server.
    eventually(
        "the leader to add the rogue server as a non-voter",
        Duration::from_secs(30),
        || async {
            let (_, config) = get(leader_agent, "/v1/operator/raft/configuration").await?;
            config["Servers"]
                .as_array()?
                .iter()
                .any(|server| server["Node"] == "rogue")
                .then_some(())
        },
    )
    .await;
    let response = client
        .client()
        .put("/v1/kv/after-rogue", b"1".to_vec())
        .await
        .expect("write");
    assert_eq!(response.status, 200);
    for server in &servers {
        eventually(
            "every server to apply the write",
            Duration::from_secs(10),
            || async { read(server, "after-rogue", "stale").await },
        )
        .await;
    }
    // The rogue is no voter, unhealthy to autopilot, and has neither a leader nor data.
    let (_, health) = eventually(
        "autopilot's view of the rogue",
        Duration::from_secs(10),
        || async {
            let (_, health) = get(leader_agent, "/v1/operator/autopilot/health").await?;
            let rogue = health["Servers"]
                .as_array()?
                .iter()
                .find(|server| server["Name"] == "rogue")?
                .clone();
            Some(((), rogue))
        },
    )
    .await;
    assert_eq!(health["Voter"], false, "{health}");
    assert_eq!(health["Healthy"], false, "{health}");
    assert_eq!(read(&rogue, "after-rogue", "stale").await, None);
    let (_, rogue_leader) = get(&rogue, "/v1/status/leader").await.expect("status");
    assert_eq!(
        rogue_leader,
        json!(""),
        "the rogue never heard from the leader"
    );
    let (_, config) = get(leader_agent, "/v1/operator/raft/configuration")
        .await
        .expect("config");
    let voters = config["Servers"]
        .as_array()
        .expect("servers")
        .iter()
        .filter(|server| server["Voter"] == true)
        .count();
    assert_eq!(voters, 3);
    let rejected = format!("server={ROGUE}:8300");
    assert!(
        leader_agent
            .log()
            .lines()
            .any(|line| line.contains(&rejected)
                && line.contains("certificate not valid for name \"server.dc1.consul\"")),
        "the leader's connections to the rogue fail on its name:\n{}",
        leader_agent.log()
    );
}

/// One HTTPS listener's files: the CA, and the server certificate `concord tls` made.
struct Rotation {
    dir: tempfile::TempDir,
}

impl Rotation {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new server certificate (the next index) copied over the live files; its PEM.
    fn rotate(&self) -> String {
        let out = concord_in(self.dir.path(), &["tls", "cert", "create", "-server"]);
        let saved: Vec<&str> = out
            .lines()
            .filter_map(|line| line.strip_prefix("==> Saved "))
            .collect();
        let pem = std::fs::read_to_string(self.path(saved[0])).expect("new cert");
        // Written whole, then renamed: the agent never reads half a file.
        for (from, to) in [(saved[0], "live.pem"), (saved[1], "live-key.pem")] {
            let staged = self.path(&format!("{to}.new"));
            std::fs::copy(self.path(from), &staged).expect("stage");
            std::fs::rename(&staged, self.path(to)).expect("rename");
        }
        pem
    }
}

/// The certificate an HTTPS listener presents to a new connection, as PEM (openssl).
fn presented(port: u16, ca: &Path) -> String {
    let output = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "openssl s_client -connect 127.0.0.1:{port} -CAfile {} </dev/null 2>/dev/null | openssl x509",
            ca.display()
        ))
        .output()
        .expect("openssl");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_grpc_tls_for_envoy_and_a_certificate_rotated_under_load() {
    let files = Rotation {
        dir: tempfile::tempdir().expect("dir"),
    };
    concord_in(files.dir.path(), &["tls", "ca", "create"]);
    let first = files.rotate();
    let ca = files.path("consul-agent-ca.pem");
    let https_port = free_port();
    let grpc_tls_port = free_port();
    let config = json!({
        "tls": {
            "defaults": {
                "ca_file": ca.display().to_string(),
                "cert_file": files.path("live.pem").display().to_string(),
                "key_file": files.path("live-key.pem").display().to_string(),
            },
        },
    });
    let config_path = files.path("tls.json");
    std::fs::write(&config_path, config.to_string()).expect("config");
    let mut agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-config-file".into(),
            config_path.display().to_string(),
            "-https-port".into(),
            https_port.to_string(),
            "-grpc-tls-port".into(),
            grpc_tls_port.to_string(),
            // Only the TLS port serves xDS.
            "-grpc-port=-1".into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    agent.grpc_port = grpc_tls_port;
    assert_eq!(
        presented(https_port, &ca).trim(),
        first.trim(),
        "the HTTPS port presents the configured certificate"
    );

    // Envoy gets its configuration over gRPC-TLS, trusting the agent CA.
    let web = backend("web").await;
    register(&agent, "web", "web", web, free_port(), &[], json!({})).await;
    let envoy = Envoy::start_with_args(
        &agent,
        "web",
        &[
            "-grpc-addr".into(),
            format!("https://127.0.0.1:{grpc_tls_port}"),
            "-grpc-ca-file".into(),
            ca.display().to_string(),
        ],
    )
    .await;
    assert!(envoy.stat("cluster_manager.cds.update_success").await >= 1);
    let bootstrap = Command::new(BINARY)
        .args(["connect", "envoy", "-sidecar-for", "web", "-bootstrap"])
        .args(["-http-addr", &agent.address()])
        .args(["-grpc-addr", &format!("https://127.0.0.1:{grpc_tls_port}")])
        .args(["-grpc-ca-file", &ca.display().to_string()])
        .output()
        .expect("bootstrap");
    let bootstrap: Value = serde_json::from_slice(&bootstrap.stdout).expect("bootstrap JSON");
    let socket = &bootstrap["static_resources"]["clusters"][0]["transport_socket"];
    assert_eq!(socket["name"], "tls");
    assert!(
        socket["typed_config"]["common_tls_context"]["validation_context"]["trusted_ca"]
            ["inline_string"]
            .as_str()
            .is_some_and(|pem| pem.contains("BEGIN CERTIFICATE"))
    );

    // Requests on new connections and on one kept-alive connection while the certificate
    // is replaced and the agent reloads: none fails.
    let client = concord::api::client::Client::with_tls(
        Some(&format!("https://127.0.0.1:{https_port}")),
        None,
        &concord::api::client::TlsFlags {
            ca_file: Some(ca.display().to_string()),
            ..Default::default()
        },
    )
    .expect("HTTPS client");
    client
        .put("/v1/kv/rotating", b"v".to_vec())
        .await
        .expect("put");
    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicUsize::new(0));
    let load = {
        let (stop, served, client, ca) = (stop.clone(), served.clone(), client.clone(), ca.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                match client.get("/v1/kv/rotating?raw").await {
                    Ok(response) if response.status == 200 => {}
                    other => failures.push(format!("kept-alive: {:?}", other.map(|r| r.status))),
                }
                let fresh = concord::api::client::Client::with_tls(
                    Some(&format!("https://127.0.0.1:{https_port}")),
                    None,
                    &concord::api::client::TlsFlags {
                        ca_file: Some(ca.display().to_string()),
                        ..Default::default()
                    },
                )
                .expect("client");
                match fresh.get("/v1/kv/rotating?raw").await {
                    Ok(response) if response.status == 200 => {}
                    other => {
                        failures.push(format!("new connection: {:?}", other.map(|r| r.status)))
                    }
                }
                served.fetch_add(2, Ordering::Relaxed);
            }
            failures
        })
    };
    eventually(
        "requests before the rotation",
        Duration::from_secs(10),
        || async { (served.load(Ordering::Relaxed) >= 20).then_some(()) },
    )
    .await;
    let second = files.rotate();
    let (code, _, stderr) = crate::support::cli(&agent, &["reload"], None);
    assert_eq!(code, 0, "{stderr}");
    eventually(
        "new connections to see the new certificate",
        Duration::from_secs(10),
        || async { (presented(https_port, &ca).trim() == second.trim()).then_some(()) },
    )
    .await;
    let after = served.load(Ordering::Relaxed);
    eventually(
        "requests after the rotation",
        Duration::from_secs(10),
        || async { (served.load(Ordering::Relaxed) >= after + 20).then_some(()) },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    let failures = load.await.expect("load task");
    assert!(
        failures.is_empty(),
        "requests failed during the rotation: {failures:?}"
    );

    // A reload with a broken CA file fails naming it, and the running files stay.
    std::fs::write(
        &ca,
        "-----BEGIN CERTIFICATE-----\ngarbage\n-----END CERTIFICATE-----\n",
    )
    .expect("break the CA file");
    let (code, stdout, stderr) = crate::support::cli(&agent, &["reload"], None);
    assert_ne!(code, 0);
    assert!(
        (stdout + &stderr).contains("consul-agent-ca.pem"),
        "the failed reload names the file"
    );
    let response = client
        .get("/v1/kv/rotating?raw")
        .await
        .expect("still served");
    assert_eq!(response.text(), "v");

    // Plaintext on the gRPC-TLS port: refused, with a log line (a certificate from another
    // CA is refused on the server port in `tls::tests`).
    let (ok, _) = curl(&[&format!("http://127.0.0.1:{grpc_tls_port}/")]);
    assert!(!ok, "plaintext on the gRPC-TLS port is refused");
    eventually(
        "the refusal in the log",
        Duration::from_secs(10),
        || async {
            agent
                .log()
                .contains("refused a plaintext connection on a TLS port")
                .then_some(())
        },
    )
    .await;
    drop(envoy);
    let _ = agent.child.kill();

    // An agent whose certificate file is missing does not start, and says which file.
    let mut broken = Agent::spawn(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            format!(
                "tls {{\n defaults {{\n cert_file = \"{0}/absent.pem\"\n key_file = \"{0}/live-key.pem\"\n }}\n }}",
                files.dir.path().display()
            ),
            "-https-port".into(),
            free_port().to_string(),
        ],
        ..AgentOptions::default()
    });
    let code = broken.wait_exit(Duration::from_secs(20)).await;
    assert!(code.is_some_and(|code| code != 0), "exit code {code:?}");
    assert!(
        broken.log().contains("tls.https.cert_file") && broken.log().contains("absent.pem"),
        "{}",
        broken.log()
    );
}
