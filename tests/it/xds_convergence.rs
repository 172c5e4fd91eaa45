//! Convergence of Envoy sidecars after bursts of config changes: the canary scenario from
//! issue 22 repeated with real Envoy.

use std::time::Duration;

use serde_json::{json, Value};

use crate::envoy::{backend, get, Envoy};
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

        canary_undo(&agent).await;
        drop(api);
        for id in ["api-v1", "api-v2"] {
            deregister(&agent, id).await;
        }
        web.assert_converges(&agent, PROXIES[2], CONVERGENCE).await;
    }
}
