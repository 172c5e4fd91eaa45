//! A published Consul client library driving a real agent: python-consul (PyPI, installed into
//! ./.venv by scripts/test) runs tests/compat/python_consul.py against a fresh dev agent,
//! through KV, txn, agent, health, catalog, session, event, coordinate, operator, config,
//! connect and snapshot calls, asserting on what each returns.

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
