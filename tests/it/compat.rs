//! A published Consul client library driving a real agent: python-consul (PyPI, installed into
//! ./.venv by scripts/test) runs tests/compat/python_consul.py against a fresh dev agent,
//! through KV, txn, agent, health, prepared query, catalog, session, event, coordinate,
//! operator, config, connect and snapshot calls, asserting on what each returns.

use std::path::PathBuf;

use crate::support::{Agent, AgentOptions};

#[tokio::test]
async fn python_consul_drives_every_api_family() {
    let agent = Agent::start(AgentOptions::default()).await;
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test, which installs python-consul there",
        python.display()
    );
    let output = tokio::process::Command::new(&python)
        .arg(root.join("tests/compat/python_consul.py"))
        .arg(agent.address())
        .arg("test-node")
        .output()
        .await
        .expect("run python");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && stdout.contains("every step passed"),
        "python-consul against concord:\n{stdout}\n{stderr}\nagent log ends:\n{}",
        agent
            .log()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// Endpoints clients call for gateways: concord refuses gateway config entries, so no gateway
/// fronts or exposes anything, and both lists are Consul's empty `[]` with an index to block
/// on (never a 404 that a client would read as "no such endpoint").
#[tokio::test]
async fn gateway_lists_are_empty_arrays_with_an_index() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    for path in [
        "/v1/catalog/gateway-services/ingress",
        "/v1/health/ingress/web",
    ] {
        let response = client.get(path).await.unwrap();
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert_eq!(
            crate::support::json(&response),
            serde_json::json!([]),
            "{path}"
        );
        let index: u64 = crate::support::header(&response, "X-Consul-Index")
            .parse()
            .unwrap_or(0);
        assert!(index >= 1, "{path}: index {index}");
    }
    // A gateway entry cannot be written, so there is nothing these lists could be missing.
    let response = client
        .put(
            "/v1/config",
            br#"{"Kind": "ingress-gateway", "Name": "ingress"}"#.to_vec(),
        )
        .await
        .unwrap();
    assert!(response.status.is_client_error() || response.status.is_server_error());
    assert!(
        response.text().contains("ingress-gateway"),
        "{}",
        response.text()
    );
}

/// `?node-meta=key:value` (repeatable, all must match) narrows catalog and health reads to
/// nodes carrying that meta; `?peer=` reads a cluster peer's imported data, and concord has
/// no peerings, so a named peer reads empty while the local data stays as it was.
#[tokio::test]
async fn node_meta_and_peer_narrow_catalog_and_health_reads() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    for (node, rack, zone) in [("n1", "r1", "a"), ("n2", "r1", "b"), ("n3", "r2", "a")] {
        let body = serde_json::json!({
            "Node": node, "Address": "10.0.0.1",
            "NodeMeta": {"rack": rack, "zone": zone},
            "Service": {"Service": "web", "Port": 80},
        });
        let response = client
            .put("/v1/catalog/register", body.to_string().into_bytes())
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let names = |value: serde_json::Value, field: &str| -> Vec<String> {
        let mut names: Vec<String> = value
            .as_array()
            .unwrap()
            .iter()
            .map(|item| {
                item.pointer(field)
                    .and_then(serde_json::Value::as_str)
                    .unwrap_or_default()
                    .to_string()
            })
            .filter(|name| name.starts_with('n'))
            .collect();
        names.sort();
        names
    };
    let get = |path: &'static str| {
        let client = client.clone();
        async move { crate::support::json(&client.get(path).await.unwrap()) }
    };
    assert_eq!(
        names(get("/v1/catalog/nodes?node-meta=rack:r1").await, "/Node"),
        ["n1", "n2"]
    );
    assert_eq!(
        names(
            get("/v1/catalog/service/web?node-meta=rack:r1&node-meta=zone:a").await,
            "/Node"
        ),
        ["n1"]
    );
    assert_eq!(
        names(
            get("/v1/health/service/web?node-meta=zone:a").await,
            "/Node/Node"
        ),
        ["n1", "n3"]
    );
    let services = get("/v1/catalog/services?node-meta=rack:r9").await;
    assert_eq!(services, serde_json::json!({}));
    for path in [
        "/v1/catalog/nodes?peer=other",
        "/v1/catalog/service/web?peer=other",
        "/v1/health/service/web?peer=other",
    ] {
        assert_eq!(get(path).await, serde_json::json!([]), "{path}");
    }
    assert_eq!(
        names(get("/v1/catalog/service/web").await, "/Node"),
        ["n1", "n2", "n3"]
    );
}

/// `?cached`: every read is served from the agent's own copy of the state, so a cached read
/// is Consul's hit (`X-Cache: HIT`) with an `Age` in seconds; without it, no cache headers.
#[tokio::test]
async fn cached_reads_say_hit_with_an_age() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    for path in [
        "/v1/health/service/consul?cached",
        "/v1/catalog/services?cached",
        "/v1/catalog/service/consul?cached&stale",
    ] {
        let response = client.get(path).await.unwrap();
        assert_eq!(response.status, 200, "{path}: {}", response.text());
        assert_eq!(
            crate::support::header(&response, "X-Cache"),
            "HIT",
            "{path}"
        );
        let age: u64 = crate::support::header(&response, "Age")
            .parse()
            .unwrap_or_else(|_| panic!("{path}: no numeric Age"));
        assert!(age < 60, "{path}: Age {age}");
    }
    let plain = client.get("/v1/health/service/consul").await.unwrap();
    assert!(plain.headers.get("X-Cache").is_none());
    assert!(plain.headers.get("Age").is_none());
}
