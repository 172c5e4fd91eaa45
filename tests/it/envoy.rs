//! Test support for the xDS tests: real Envoy sidecars started through `concord connect
//! envoy`, tiny HTTP backends, raw one-shot HTTP requests (a new connection each time, since
//! policy changes apply to new connections only), and Envoy admin stats.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use crate::support::{free_port, Agent, BINARY};

/// The Envoy binary: on PATH (scripts/test puts .venv/bin there) or in the repo's .venv.
pub fn envoy_binary() -> String {
    let local = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/envoy");
    if local.exists() {
        return local.display().to_string();
    }
    "envoy".into()
}

/// A running Envoy sidecar. Killed when dropped.
pub struct Envoy {
    child: Child,
    pub admin_port: u16,
    log_path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Runs `concord connect envoy -sidecar-for <service>` (which execs Envoy) and waits
    /// until Envoy has accepted its first clusters and listeners.
    pub async fn start(agent: &Agent, sidecar_for: &str) -> Envoy {
        Envoy::start_with_token(agent, sidecar_for, None).await
    }

    /// `start` with `-token` (the HTTP lookups and Envoy's xDS stream both use it).
    pub async fn start_with_token(agent: &Agent, sidecar_for: &str, token: Option<&str>) -> Envoy {
        let mut args: Vec<String> = vec![
            "-grpc-addr".into(),
            format!("{}:{}", agent.host, agent.grpc_port),
        ];
        if let Some(token) = token {
            args.extend(["-token".into(), token.into()]);
        }
        Envoy::start_with_args(agent, sidecar_for, &args).await
    }

    /// `start` with more `concord connect envoy` flags (`-grpc-addr` among them).
    pub async fn start_with_args(agent: &Agent, sidecar_for: &str, args: &[String]) -> Envoy {
        let dir = tempfile::tempdir().expect("tempdir");
        let admin_port = free_port();
        let log_path = dir.path().join("envoy.log");
        let child = Command::new(BINARY)
            .args(["connect", "envoy", "-sidecar-for", sidecar_for])
            .args(args)
            .args(["-http-addr", &agent.address()])
            .args(["-admin-bind", &format!("127.0.0.1:{admin_port}")])
            .args(["-envoy-binary", &envoy_binary()])
            // CONCORD_ENVOY_LOG=debug makes Envoy's log (`Envoy::log`) say what it did with
            // each update; flushed every 50 ms so a failing test sees the latest lines.
            .args([
                "--",
                "--file-flush-interval-msec",
                "50",
                "-l",
                &std::env::var("CONCORD_ENVOY_LOG").unwrap_or("warning".into()),
                "--log-path",
            ])
            .arg(&log_path)
            .stdout(Stdio::null())
            .stderr(Stdio::from(
                std::fs::File::create(dir.path().join("connect-envoy.err")).expect("stderr file"),
            ))
            .spawn()
            .expect("spawn connect envoy");
        let stderr_path = dir.path().join("connect-envoy.err");
        let mut envoy = Envoy {
            child,
            admin_port,
            log_path,
            _dir: dir,
        };
        // Generous: on two cores Envoy starts beside every other test's agents.
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        loop {
            let stats = envoy.stats().await;
            let configured = stats
                .get("cluster_manager.cds.update_success")
                .copied()
                .unwrap_or(0)
                >= 1
                && stats
                    .get("listener_manager.lds.update_success")
                    .copied()
                    .unwrap_or(0)
                    >= 1
                && stats.get("cluster_manager.warming_clusters") == Some(&0)
                && stats.get("listener_manager.total_listeners_warming") == Some(&0);
            if configured {
                return envoy;
            }
            let exited = envoy.child.try_wait().ok().flatten();
            if exited.is_some() || std::time::Instant::now() > deadline {
                let log = envoy.log();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "Envoy for {sidecar_for} did not take its first configuration (exited: \
                     {exited:?}; stats: {} entries; stderr: {}); its log ends:\n{}\nagent \
                     log ends:\n{}",
                    stats.len(),
                    std::fs::read_to_string(&stderr_path).unwrap_or_default(),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                    agent
                        .log()
                        .lines()
                        .rev()
                        .take(30)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<Vec<_>>()
                        .join("\n"),
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub async fn admin(&self, path: &str) -> String {
        let client = concord::api::client::Client::from_flags(
            Some(&format!("127.0.0.1:{}", self.admin_port)),
            None,
        )
        .expect("client");
        match client.get(path).await {
            Ok(response) => response.text(),
            Err(_) => String::new(),
        }
    }

    /// Envoy's counters and gauges (histograms left out).
    pub async fn stats(&self) -> HashMap<String, u64> {
        self.admin("/stats")
            .await
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                Some((name.to_string(), value.trim().parse().ok()?))
            })
            .collect()
    }

    pub async fn stat(&self, name: &str) -> u64 {
        self.stats().await.get(name).copied().unwrap_or(0)
    }

    /// Every `update_rejected` counter, which must all stay 0.
    pub async fn rejections(&self) -> Vec<(String, u64)> {
        let mut rejected: Vec<_> = self
            .stats()
            .await
            .into_iter()
            .filter(|(name, value)| name.ends_with("update_rejected") && *value > 0)
            .collect();
        rejected.sort();
        rejected
    }

    pub async fn config_dump(&self) -> Value {
        serde_json::from_str(&self.admin("/config_dump?include_eds").await).unwrap_or_default()
    }

    /// Every `address:port` host of every cluster, from Envoy's `/clusters`.
    pub async fn all_hosts(&self) -> HashMap<String, Vec<String>> {
        let mut hosts: HashMap<String, Vec<String>> = HashMap::new();
        for line in self.admin("/clusters").await.lines() {
            let mut parts = line.split("::");
            let (Some(cluster), Some(host), Some("health_flags")) =
                (parts.next(), parts.next(), parts.next())
            else {
                continue;
            };
            hosts
                .entry(cluster.to_string())
                .or_default()
                .push(host.to_string());
        }
        for list in hosts.values_mut() {
            list.sort();
        }
        hosts
    }

    /// Where this Envoy differs from what the agent's stream for `proxy` believes it holds,
    /// or None when they agree and the stream has converged: the stream has nothing in
    /// flight, every resource is held at its current version and equals a generation from
    /// nothing, and Envoy's active clusters and routes carry exactly those versions (nothing
    /// warming), its listeners have exactly those names, and each cluster exactly its
    /// assignment's endpoints.
    pub async fn divergence(&self, agent: &Agent, proxy: &str) -> Option<String> {
        let status = match agent
            .client()
            .get(&format!("/v1/agent/xds?proxy={proxy}"))
            .await
        {
            Ok(response) => serde_json::from_slice::<Value>(&response.body).unwrap_or_default(),
            Err(error) => return Some(format!("/v1/agent/xds: {error}")),
        };
        let streams = status["Streams"].as_array().cloned().unwrap_or_default();
        let [stream] = streams.as_slice() else {
            return Some(format!("{} streams for {proxy}", streams.len()));
        };
        if stream["Converged"] != Value::Bool(true) {
            return Some(format!("stream not converged: {stream:#}"));
        }
        if stream["DiffersFromFresh"]
            .as_array()
            .is_none_or(|d| !d.is_empty())
        {
            return Some(format!(
                "differs from a fresh generation: {}",
                stream["DiffersFromFresh"]
            ));
        }
        let held = |type_name: &str| -> HashMap<String, String> {
            stream["Types"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|t| t["Type"] == type_name)
                .flat_map(|t| t["Resources"].as_array().cloned().unwrap_or_default())
                .filter(|r| r["State"] == "held")
                .map(|r| {
                    let name = r["Name"].as_str().unwrap_or_default().to_string();
                    (name, r["Acked"].as_str().unwrap_or_default().to_string())
                })
                .collect()
        };
        let dump = self.config_dump().await;
        let section = |kind: &str| -> Value {
            dump["configs"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| {
                    c["@type"]
                        .as_str()
                        .is_some_and(|t| t.ends_with(&format!(".{kind}")))
                })
                .cloned()
                .unwrap_or_default()
        };
        let clusters = section("ClustersConfigDump");
        if clusters["dynamic_warming_clusters"]
            .as_array()
            .is_some_and(|w| !w.is_empty())
        {
            return Some(format!(
                "warming clusters: {}",
                clusters["dynamic_warming_clusters"]
            ));
        }
        let envoy_clusters: HashMap<String, String> = clusters["dynamic_active_clusters"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let name = c["cluster"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (
                    name,
                    c["version_info"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        let listeners = section("ListenersConfigDump");
        // Names only: Envoy 1.40 keeps a listener's version_info across an in-place filter
        // chain update (seen: an HTTP filter chain in place, the tcp version reported).
        let mut envoy_listeners = std::collections::HashSet::new();
        // Route configurations the active listeners use; Envoy keeps others only while a
        // replaced filter chain drains.
        let mut routes_in_use = std::collections::HashSet::new();
        for listener in listeners["dynamic_listeners"]
            .as_array()
            .into_iter()
            .flatten()
        {
            if !listener["warming_state"].is_null() {
                return Some(format!("warming listener: {}", listener["name"]));
            }
            let name = listener["name"].as_str().unwrap_or_default().to_string();
            envoy_listeners.insert(name);
            let text = listener["active_state"].to_string();
            let mut rest = text.as_str();
            while let Some(at) = rest.find("\"route_config_name\":\"") {
                rest = &rest[at + "\"route_config_name\":\"".len()..];
                if let Some(end) = rest.find('"') {
                    routes_in_use.insert(rest[..end].to_string());
                }
            }
        }
        let envoy_routes: HashMap<String, String> = section("RoutesConfigDump")
            ["dynamic_route_configs"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|r| {
                let name = r["route_config"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                (
                    name,
                    r["version_info"].as_str().unwrap_or_default().to_string(),
                )
            })
            .filter(|(name, _)| routes_in_use.contains(name))
            .collect();
        let our_listeners: std::collections::HashSet<String> =
            held("Listener").into_keys().collect();
        if our_listeners != envoy_listeners {
            return Some(format!(
                "listeners: the stream holds {our_listeners:?}, Envoy {envoy_listeners:?}"
            ));
        }
        for (kind, ours, envoys) in [
            ("clusters", held("Cluster"), envoy_clusters),
            ("routes", held("RouteConfiguration"), envoy_routes),
        ] {
            if ours != envoys {
                return Some(format!(
                    "{kind}: the stream holds {ours:?}, Envoy {envoys:?}"
                ));
            }
        }
        let envoy_hosts = self.all_hosts().await;
        for name in held("ClusterLoadAssignment").keys() {
            let ours: Vec<String> = stream["Endpoints"][name]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|h| h.as_str().map(str::to_string))
                .collect();
            let envoys = envoy_hosts.get(name).cloned().unwrap_or_default();
            if ours != envoys {
                return Some(format!(
                    "endpoints of {name}: the stream holds {ours:?}, Envoy {envoys:?}"
                ));
            }
        }
        None
    }

    /// Waits until `divergence` finds none, or panics with the last one.
    pub async fn assert_converges(&self, agent: &Agent, proxy: &str, limit: Duration) {
        let deadline = std::time::Instant::now() + limit;
        loop {
            let Some(difference) = self.divergence(agent, proxy).await else {
                return;
            };
            assert!(
                std::time::Instant::now() < deadline,
                "{proxy} did not converge within {limit:?}: {difference}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// The healthy `address:port` hosts of one cluster, from Envoy's `/clusters`.
    pub async fn hosts(&self, cluster: &str) -> Vec<String> {
        let text = self.admin("/clusters").await;
        let mut hosts: Vec<String> = text
            .lines()
            .filter_map(|line| line.strip_prefix(&format!("{cluster}::")))
            .filter_map(|rest| {
                let (host, field) = rest.split_once("::")?;
                field
                    .strip_prefix("health_flags::healthy")
                    .map(|_| host.to_string())
            })
            .collect();
        hosts.sort();
        hosts
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A backend that answers every HTTP request with `name`, closing each connection.
pub async fn backend(name: &str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind backend");
    let port = listener.local_addr().expect("addr").port();
    let body = name.to_string();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let body = body.clone();
            tokio::spawn(async move {
                let mut buffer = vec![0u8; 4096];
                let mut read = 0;
                loop {
                    match socket.read(&mut buffer[read..]).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => read += n,
                    }
                    if buffer[..read].windows(4).any(|w| w == b"\r\n\r\n") || read == buffer.len() {
                        break;
                    }
                }
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = socket.write_all(response.as_bytes()).await;
                let _ = socket.shutdown().await;
            });
        }
    });
    port
}

/// One `GET /` on a new connection: (status, body), or an error when the connection fails
/// or closes without an HTTP response.
pub async fn get(port: u16) -> Result<(u16, String), String> {
    let attempt = async {
        let mut socket = TcpStream::connect(("127.0.0.1", port))
            .await
            .map_err(|error| error.to_string())?;
        socket
            .write_all(b"GET / HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n")
            .await
            .map_err(|error| error.to_string())?;
        let mut response = Vec::new();
        socket
            .read_to_end(&mut response)
            .await
            .map_err(|error| error.to_string())?;
        let text = String::from_utf8_lossy(&response).into_owned();
        let status = text
            .split(' ')
            .nth(1)
            .and_then(|code| code.parse().ok())
            .ok_or_else(|| format!("no HTTP response ({} bytes)", response.len()))?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, body)| body.to_string())
            .unwrap_or_default();
        Ok((status, body))
    };
    tokio::time::timeout(Duration::from_secs(5), attempt)
        .await
        .unwrap_or_else(|_| Err("timed out".into()))
}

/// Registers `service` on `port` with a sidecar on `sidecar_port` whose only check aliases
/// the service (so the proxy is healthy exactly when its service is), and `upstreams` as
/// (destination, local bind port). `extra` is merged into the service definition.
pub async fn register(
    agent: &Agent,
    id: &str,
    name: &str,
    port: u16,
    sidecar_port: u16,
    upstreams: &[(&str, u16)],
    extra: Value,
) {
    let upstreams: Vec<Value> = upstreams
        .iter()
        .map(|(name, port)| serde_json::json!({"DestinationName": name, "LocalBindPort": port}))
        .collect();
    let mut body = serde_json::json!({
        "ID": id,
        "Name": name,
        "Port": port,
        "Connect": {"SidecarService": {
            "Port": sidecar_port,
            "Checks": [{"Name": "alias", "AliasService": id}],
            "Proxy": {"Upstreams": upstreams},
        }},
    });
    if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
        for (key, value) in extra {
            body.insert(key.clone(), value.clone());
        }
    }
    let response = agent
        .client()
        .put("/v1/agent/service/register", body.to_string().into_bytes())
        .await
        .expect("register");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// The dynamic resources Envoy holds (clusters, listeners, routes, endpoints), with what
/// differs between runs replaced: PEMs, the trust domain, and each port in `ports` by its
/// name. Compared with `envoy/testdata/<name>.golden.json`; `UPDATE_GOLDEN=1` rewrites it.
pub async fn assert_golden(envoy: &Envoy, name: &str, trust_domain: &str, ports: &[(u16, &str)]) {
    let dump = envoy.config_dump().await;
    let mut resources = serde_json::Map::new();
    let pick = |kind: &str, list: &str, path: &[&str]| -> Value {
        let mut items: Vec<Value> = dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|config| config["@type"].as_str().is_some_and(|t| t.ends_with(kind)))
            .flat_map(|config| config[list].as_array().cloned().unwrap_or_default())
            .map(|item| path.iter().fold(item, |value, key| value[*key].clone()))
            .collect();
        items.sort_by_key(|item| {
            item["name"]
                .as_str()
                .or(item["cluster_name"].as_str())
                .unwrap_or_default()
                .to_string()
        });
        Value::Array(items)
    };
    resources.insert(
        "clusters".into(),
        pick(
            "ClustersConfigDump",
            "dynamic_active_clusters",
            &["cluster"],
        ),
    );
    resources.insert(
        "listeners".into(),
        pick(
            "ListenersConfigDump",
            "dynamic_listeners",
            &["active_state", "listener"],
        ),
    );
    resources.insert(
        "routes".into(),
        pick(
            "RoutesConfigDump",
            "dynamic_route_configs",
            &["route_config"],
        ),
    );
    resources.insert(
        "endpoints".into(),
        pick(
            "EndpointsConfigDump",
            "dynamic_endpoint_configs",
            &["endpoint_config"],
        ),
    );
    let mut text = serde_json::to_string_pretty(&Value::Object(resources)).unwrap();
    let pem = regex::Regex::new(r#""-----BEGIN[^"]*""#).unwrap();
    text = pem.replace_all(&text, "\"<pem>\"").into_owned();
    text = text.replace(trust_domain, "<trust-domain>");
    for (port, label) in ports {
        let number = regex::Regex::new(&format!(r"\b{port}\b")).unwrap();
        text = number.replace_all(&text, format!("<{label}>")).into_owned();
    }
    // Ports the caller did not name (the apps' own) are still random.
    let other = regex::Regex::new(r#"("port_value": |\d:)\d{4,5}\b"#).unwrap();
    text = other.replace_all(&text, "${1}<port>").into_owned();
    // A port placeholder left bare as a JSON number becomes a string.
    let bare = regex::Regex::new(r#": (<[a-z0-9-]+>)"#).unwrap();
    text = bare.replace_all(&text, ": \"$1\"").into_owned();
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join(format!("envoy/testdata/{name}.golden.json"));
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, format!("{text}\n")).unwrap();
    }
    let golden = std::fs::read_to_string(&path)
        .unwrap_or_else(|_| panic!("{} is missing; run with UPDATE_GOLDEN=1", path.display()));
    assert_eq!(
        text.trim_end(),
        golden.trim_end(),
        "generated Envoy config differs from {}",
        path.display()
    );
}
