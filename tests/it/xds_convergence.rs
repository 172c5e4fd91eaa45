//! Convergence of Envoy sidecars after bursts of config changes: the canary scenario from
//! issue 22 repeated with real Envoy, and a seeded random sequence of writes against
//! simulated Envoys (`sim_envoy`). Both compare what each Envoy holds with what its stream
//! on the agent believes it holds (`/v1/agent/xds`).

use std::collections::BTreeMap;
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tonic::transport::Channel;

use crate::envoy::{backend, get, Envoy};
use crate::sim_envoy::SimEnvoy;
use crate::support::{cli, eventually, free_port, Agent, AgentOptions};

/// The sidecars of the scenario, in the order their Envoys start.
const PROXIES: [&str; 3] = [
    "api-v1-sidecar-proxy",
    "api-v2-sidecar-proxy",
    "web-sidecar-proxy",
];

/// How long a quiet mesh may take to converge after a burst (Envoy's own initial fetch
/// timeout is 15 s, so a missed resource shows as a timeout here rather than a slow pass).
const CONVERGENCE: Duration = Duration::from_secs(10);

/// Writes `entry` with `concord config write`, as an operator would.
fn config_write(agent: &Agent, entry: Value) {
    let (code, _, stderr) = cli(
        agent,
        &["config", "write", "-"],
        Some(entry.to_string().as_bytes()),
    );
    assert_eq!(code, 0, "{stderr}");
}

/// Registers a service with a default sidecar (Consul's two checks) and `upstreams`.
async fn register(
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
        .map(|(name, port)| json!({"DestinationName": name, "LocalBindPort": port}))
        .collect();
    let mut body = json!({
        "ID": id, "Name": name, "Port": port,
        "Connect": {"SidecarService": {"Port": sidecar_port, "Proxy": {"Upstreams": upstreams}}},
    });
    for (key, value) in extra.as_object().unwrap() {
        body[key] = value.clone();
    }
    let response = agent
        .client()
        .put("/v1/agent/service/register", body.to_string().into_bytes())
        .await
        .expect("register");
    assert_eq!(response.status, 200, "{}", response.text());
}

async fn delete_entry(agent: &Agent, kind: &str, name: &str) {
    let response = agent
        .client()
        .delete(&format!("/v1/config/{kind}/{name}"))
        .await
        .expect("config delete");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// The four writes of the issue, one right after the other.
fn canary_burst(agent: &Agent) {
    config_write(
        agent,
        json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
    );
    config_write(
        agent,
        json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
    );
    config_write(
        agent,
        json!({"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v1", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        }}),
    );
    config_write(
        agent,
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 80, "ServiceSubset": "v1"},
            {"Weight": 20, "ServiceSubset": "v2"},
        ]}),
    );
}

/// Undoes the burst, as quickly.
async fn canary_undo(agent: &Agent) {
    delete_entry(agent, "service-splitter", "api").await;
    delete_entry(agent, "service-resolver", "api").await;
    delete_entry(agent, "service-defaults", "web").await;
    delete_entry(agent, "service-defaults", "api").await;
}

/// Operators see the same in `/v1/agent/metrics`: every proxy converged, its resources held,
/// nothing pending, the last ACKed nonce per type.
async fn assert_metrics_show_convergence(agent: &Agent) {
    let metrics = crate::support::json(&agent.client().get("/v1/agent/metrics").await.unwrap());
    let gauges = metrics["Gauges"].as_array().cloned().unwrap_or_default();
    let gauge = |name: &str, proxy: &str, extra: &[(&str, &str)]| -> Vec<f64> {
        gauges
            .iter()
            .filter(|g| {
                g["Name"] == crate::support::gauge_name(name).as_str()
                    && g["Labels"]["proxy"] == proxy
            })
            .filter(|g| extra.iter().all(|(k, v)| g["Labels"][*k] == *v))
            .filter_map(|g| g["Value"].as_f64())
            .collect()
    };
    for proxy in PROXIES {
        assert_eq!(
            gauge("xds.converged", proxy, &[]),
            [1.0],
            "{proxy}: {metrics:#}"
        );
        let held = gauge(
            "xds.resources",
            proxy,
            &[("type", "Cluster"), ("state", "held")],
        );
        assert!(held.iter().sum::<f64>() >= 1.0, "{proxy}: {metrics:#}");
        let pending = gauge("xds.pending_responses", proxy, &[]);
        // One per type the stream uses (a proxy without upstreams asks for no endpoints and
        // no routes).
        assert!(pending.len() >= 2, "{proxy}: {metrics:#}");
        assert!(pending.iter().all(|p| *p == 0.0), "{proxy}: {metrics:#}");
        let nonces = gauge("xds.last_ack_nonce", proxy, &[]);
        assert!(
            nonces.len() == pending.len() && nonces.iter().all(|n| *n >= 1.0),
            "{proxy}: {metrics:#}"
        );
    }
}

/// Registers api-v1 and api-v2 (default sidecars, Consul's two checks each) and starts their
/// Envoys; waits until both sidecars pass their checks, which must follow Envoy taking its
/// listeners closely (`Agent::probe_now`), not the checks' 10 s interval.
async fn start_api(agent: &Agent, ports: &[u16; 2]) -> Vec<Envoy> {
    let mut envoys = Vec::new();
    for (version, port) in ["v1", "v2"].into_iter().zip(ports) {
        let id = format!("api-{version}");
        let meta = json!({"Meta": {"version": version}});
        register(agent, &id, "api", *port, free_port(), &[], meta).await;
        envoys.push(Envoy::start(agent, &id).await);
    }
    eventually(
        "both api sidecars passing once their Envoys listen",
        Duration::from_secs(3),
        || async {
            let response = agent
                .client()
                .get("/v1/health/connect/api?passing")
                .await
                .ok()?;
            let passing: Value = serde_json::from_slice(&response.body).ok()?;
            (passing.as_array()?.len() == 2).then_some(())
        },
    )
    .await;
    envoys
}

async fn deregister(agent: &Agent, id: &str) {
    let response = agent
        .client()
        .put(&format!("/v1/agent/service/deregister/{id}"), Vec::new())
        .await
        .expect("deregister");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Issue 22's scenario, repeated: api v1 and v2 come up with their sidecars, web calls api
/// through its Envoy, and the four config writes of a canary follow one right after the
/// other. Every Envoy must converge to exactly what its stream believes it holds, and the
/// 80/20 split must land. Then everything is undone and api goes away, and the next run
/// starts from there. `CONCORD_CANARY_RUNS` sets the number of runs (20 in CI; more as a
/// soak, see README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_bursts_always_leave_every_subset_with_its_endpoints() {
    let runs: usize = std::env::var("CONCORD_CANARY_RUNS")
        .ok()
        .and_then(|runs| runs.parse().ok())
        .unwrap_or(20);
    let agent = Agent::start(AgentOptions::default()).await;
    let upstream = free_port();
    let backends = [backend("v1").await, backend("v2").await];
    register(
        &agent,
        "web",
        "web",
        free_port(),
        free_port(),
        &[("api", upstream)],
        json!({}),
    )
    .await;
    let web = Envoy::start(&agent, "web").await;

    for run in 0..runs {
        let api = start_api(&agent, &backends).await;
        let envoys = [&api[0], &api[1], &web];
        if run == 0 {
            // Traffic flows; a deny, then an allow, take effect.
            eventually("web → api traffic", Duration::from_secs(10), || async {
                matches!(get(upstream).await, Ok((200, _))).then_some(())
            })
            .await;
            for (action, expect_traffic) in [("-deny", false), ("-allow", true)] {
                let args = ["intention", "create", action, "-replace", "web", "api"];
                let (code, _, stderr) = cli(&agent, &args, None);
                assert_eq!(code, 0, "{stderr}");
                eventually(action, Duration::from_secs(10), || async {
                    let flows = matches!(get(upstream).await, Ok((200, _)));
                    (flows == expect_traffic).then_some(())
                })
                .await;
            }
        }

        canary_burst(&agent);
        for (envoy, proxy) in envoys.iter().zip(PROXIES) {
            envoy.assert_converges(&agent, proxy, CONVERGENCE).await;
        }
        let mut v1 = 0;
        let mut failed = Vec::new();
        for _ in 0..1000 {
            match get(upstream).await {
                Ok((200, body)) if body == "v1" => v1 += 1,
                Ok((200, body)) if body == "v2" => {}
                other => failed.push(other),
            }
        }
        assert!(
            failed.is_empty() && (749..=851).contains(&v1),
            "run {run}: v1 got {v1} of 1000 (expected 800 ± 51), {} failed (first {:?})\n{}",
            failed.len(),
            failed.first(),
            web.admin("/clusters").await
        );
        for envoy in envoys {
            assert_eq!(
                envoy.rejections().await,
                Vec::<(String, u64)>::new(),
                "{}",
                envoy.log()
            );
        }
        if run == 0 {
            assert_metrics_show_convergence(&agent).await;
        }

        canary_undo(&agent).await;
        drop(api);
        for id in ["api-v1", "api-v2"] {
            deregister(&agent, id).await;
        }
        web.assert_converges(&agent, PROXIES[2], CONVERGENCE).await;
    }
}

/// Where a simulated Envoy and its stream disagree, or None when the stream has converged and
/// holds exactly what the client holds.
async fn sim_divergence(agent: &Agent, client: &SimEnvoy) -> Option<String> {
    let held = client.held();
    if !held.errors.is_empty() {
        return Some(format!("client errors: {:?}", held.errors));
    }
    if !held.idle() {
        let server = agent
            .client()
            .get(&format!("/v1/agent/xds?proxy={}", client.proxy))
            .await
            .map(|r| r.text())
            .unwrap_or_default();
        return Some(format!(
            "client busy: {held:?}\nrecent:\n{}\nthe agent's view: {server}",
            held.recent.iter().cloned().collect::<Vec<_>>().join("\n")
        ));
    }
    let response = agent
        .client()
        .get(&format!("/v1/agent/xds?proxy={}", client.proxy))
        .await
        .ok()?;
    let status: Value = serde_json::from_slice(&response.body).ok()?;
    let streams = status["Streams"].as_array().cloned().unwrap_or_default();
    let [stream] = streams.as_slice() else {
        return Some(format!("{} streams", streams.len()));
    };
    if stream["Converged"] != Value::Bool(true) {
        return Some(format!("stream not converged: {stream:#}"));
    }
    if stream["DiffersFromFresh"]
        .as_array()
        .is_none_or(|d| !d.is_empty())
    {
        return Some(format!(
            "differs from fresh: {}",
            stream["DiffersFromFresh"]
        ));
    }
    for (type_name, ours) in [
        "Cluster",
        "ClusterLoadAssignment",
        "Listener",
        "RouteConfiguration",
    ]
    .into_iter()
    .zip(held.resources())
    {
        let theirs: BTreeMap<String, String> = stream["Types"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["Type"] == type_name)
            .flat_map(|t| t["Resources"].as_array().cloned().unwrap_or_default())
            .filter(|r| r["State"] == "held")
            .map(|r| {
                (
                    r["Name"].as_str().unwrap_or_default().to_string(),
                    r["Acked"].as_str().unwrap_or_default().to_string(),
                )
            })
            .collect();
        if &theirs != ours {
            return Some(format!(
                "{type_name}: the stream holds {theirs:?}, the client {ours:?}"
            ));
        }
    }
    None
}

/// A random config entry for the mesh of the randomized test, or a deletion (kind, name).
fn random_entry(rng: &mut StdRng) -> Result<Value, (&'static str, &'static str)> {
    let protocol = || ["tcp", "http", "http2", "grpc"];
    match rng.gen_range(0..8) {
        0 => {
            let name = ["api", "web", "db"][rng.gen_range(0..3)];
            if rng.gen_bool(0.2) {
                return Err(("service-defaults", name));
            }
            let protocol = protocol()[rng.gen_range(0..4)];
            Ok(json!({"Kind": "service-defaults", "Name": name, "Protocol": protocol}))
        }
        1 => {
            if rng.gen_bool(0.3) {
                return Err(("proxy-defaults", "global"));
            }
            let protocol = protocol()[rng.gen_range(0..4)];
            Ok(
                json!({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": protocol}}),
            )
        }
        2 | 3 => {
            if rng.gen_bool(0.2) {
                return Err(("service-resolver", "api"));
            }
            let default = ["", "v1", "v2"][rng.gen_range(0..3)];
            let timeout = ["5s", "3s"][rng.gen_range(0..2)];
            Ok(
                json!({"Kind": "service-resolver", "Name": "api", "DefaultSubset": default,
                "ConnectTimeout": timeout, "Subsets": {
                    "v1": {"Filter": "Service.Meta.version == v1"},
                    "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": rng.gen_bool(0.5)},
                }}),
            )
        }
        4 => {
            if rng.gen_bool(0.3) {
                return Err(("service-splitter", "api"));
            }
            let v1 = rng.gen_range(0..=100);
            Ok(
                json!({"Kind": "service-splitter", "Name": "api", "Splits": [
                    {"Weight": v1, "ServiceSubset": "v1"},
                    {"Weight": 100 - v1, "ServiceSubset": "v2"},
                ]}),
            )
        }
        5 => {
            if rng.gen_bool(0.3) {
                return Err(("service-router", "api"));
            }
            Ok(json!({"Kind": "service-router", "Name": "api", "Routes": [
                {"Match": {"HTTP": {"PathPrefix": "/v2"}}, "Destination": {"ServiceSubset": "v2"}},
            ]}))
        }
        6 => {
            let name = ["api", "db"][rng.gen_range(0..2)];
            if rng.gen_bool(0.2) {
                return Err(("service-resolver", name));
            }
            let timeout = ["5s", "2s"][rng.gen_range(0..2)];
            Ok(json!({"Kind": "service-resolver", "Name": name, "ConnectTimeout": timeout}))
        }
        _ => {
            let name = ["api", "db"][rng.gen_range(0..2)];
            if rng.gen_bool(0.2) {
                return Err(("service-intentions", name));
            }
            let action = ["allow", "deny"][rng.gen_range(0..2)];
            Ok(json!({"Kind": "service-intentions", "Name": name,
                "Sources": [{"Name": "web", "Action": action}]}))
        }
    }
}

/// Waits until every simulated Envoy agrees with its stream, and a fresh client of each proxy
/// (no versions held) ends up holding exactly what the long-lived one holds.
async fn assert_sim_converges(agent: &Agent, channel: &Channel, clients: &[SimEnvoy], step: usize) {
    for client in clients {
        let deadline = std::time::Instant::now() + CONVERGENCE;
        loop {
            let Some(difference) = sim_divergence(agent, client).await else {
                break;
            };
            assert!(
                std::time::Instant::now() < deadline,
                "step {step}: {} did not converge: {difference}",
                client.proxy
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // A fresh client of the same proxy, holding nothing, must end up with the same
        // resources (health changes may still be settling: compare the current holdings).
        let fresh = SimEnvoy::start(channel.clone(), &client.proxy, step as u64);
        let deadline = std::time::Instant::now() + CONVERGENCE;
        loop {
            let (held, settled) = (fresh.held(), client.held());
            if held.idle() && settled.idle() && held.resources() == settled.resources() {
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "step {step}: a fresh client of {} holds {held:?}, the long-lived one {settled:?}",
                client.proxy
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// A seeded random sequence of config-entry writes and deletions (every kind concord
/// interprets, in any order, in bursts), health changes and reconnects, against simulated
/// Envoys that subscribe and ACK the way Envoy does; every 50 steps, once quiet, each must
/// hold what its stream believes and what a fresh client gets. `CONCORD_SOAK_STEPS` and
/// `CONCORD_SOAK_SEED` make it a soak (README).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_config_bursts_converge_for_simulated_envoys() {
    let steps: usize = std::env::var("CONCORD_SOAK_STEPS")
        .ok()
        .and_then(|steps| steps.parse().ok())
        .unwrap_or(400);
    let seed: u64 = std::env::var("CONCORD_SOAK_SEED")
        .ok()
        .and_then(|seed| seed.parse().ok())
        .unwrap_or(3);
    eprintln!("random_config_bursts: seed {seed}, {steps} steps");
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    for (id, name, upstreams, meta) in [
        (
            "api-v1",
            "api",
            vec![("db", free_port())],
            json!({"Meta": {"version": "v1"}}),
        ),
        ("api-v2", "api", vec![], json!({"Meta": {"version": "v2"}})),
        ("db", "db", vec![], json!({})),
        (
            "web",
            "web",
            vec![("api", free_port()), ("db", free_port())],
            json!({}),
        ),
    ] {
        crate::envoy::register(&agent, id, name, free_port(), free_port(), &upstreams, meta).await;
    }
    // api-v2's own health, flipped during the run.
    let check = json!({"ID": "canary", "Name": "canary", "ServiceID": "api-v2", "TTL": "10m"});
    let response = client
        .put("/v1/agent/check/register", check.to_string().into_bytes())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let channel = Channel::from_shared(format!("http://127.0.0.1:{}", agent.grpc_port))
        .unwrap()
        .connect()
        .await
        .expect("connect to the gRPC port");
    let clients: Vec<SimEnvoy> = [
        "web-sidecar-proxy",
        "api-v1-sidecar-proxy",
        "api-v2-sidecar-proxy",
        "db-sidecar-proxy",
    ]
    .iter()
    .enumerate()
    .map(|(i, proxy)| SimEnvoy::start(channel.clone(), proxy, seed.wrapping_add(i as u64)))
    .collect();

    let mut rng = StdRng::seed_from_u64(seed);
    let mut accepted = 0;
    for step in 0..steps {
        for _ in 0..rng.gen_range(1..=5) {
            match rng.gen_range(0..10) {
                0..=6 => {
                    let response = match random_entry(&mut rng) {
                        Ok(entry) => {
                            client
                                .put("/v1/config", entry.to_string().into_bytes())
                                .await
                        }
                        Err((kind, name)) => {
                            client.delete(&format!("/v1/config/{kind}/{name}")).await
                        }
                    }
                    .expect("config write");
                    // A write the graph rules refuse (a splitter on a tcp service, ...) is
                    // part of the sequence; it must be refused cleanly.
                    assert!(
                        [200, 400, 500].contains(&response.status.as_u16()),
                        "{}: {}",
                        response.status,
                        response.text()
                    );
                    accepted += usize::from(response.status == 200);
                }
                7 => {
                    let verb = ["pass", "fail", "warn"][rng.gen_range(0..3)];
                    let response = client
                        .put(&format!("/v1/agent/check/{verb}/canary"), Vec::new())
                        .await
                        .unwrap();
                    assert_eq!(response.status, 200, "{}", response.text());
                }
                8 => clients[rng.gen_range(0..clients.len())].reconnect().await,
                _ => {}
            }
        }
        // Pacing of the input, not synchronisation: sometimes the next burst follows at
        // once, sometimes the streams get a moment, so the interleavings vary.
        if rng.gen_bool(0.5) {
            tokio::time::sleep(Duration::from_millis(rng.gen_range(0..30))).await;
        }
        if (step + 1) % 50 == 0 || step + 1 == steps {
            assert_sim_converges(&agent, &channel, &clients, step).await;
        }
    }
    assert!(
        accepted >= steps / 2,
        "only {accepted} writes were accepted: the sequence tests little"
    );
}
