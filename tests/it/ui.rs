//! The web UI's internal endpoints, in Consul's shapes: service summaries with check counts
//! (a sidecar's checks counted for the service it fronts), nodes with their services and
//! checks, one node, and blocking on catalog changes.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{json, Agent, AgentOptions};

async fn register(agent: &Agent, body: Value) {
    let response = agent
        .client()
        .put("/v1/catalog/register", body.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
}

fn instance(node: &str, address: &str, id: &str, status: &str) -> Value {
    json!({
        "Node": node, "Address": address,
        "Service": {"ID": id, "Service": "web", "Tags": ["v2", "v1"], "Port": 80},
        "Check": {"CheckID": format!("{id}-alive"), "Name": "alive", "Status": status,
                  "ServiceID": id}
    })
}

#[tokio::test]
async fn ui_summaries_count_instances_and_checks_and_block_on_changes() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    register(&agent, instance("web-b", "10.7.0.2", "web-2", "critical")).await;
    register(&agent, instance("web-a", "10.7.0.1", "web-1", "passing")).await;
    // A node check on web-a counts once for web.
    register(
        &agent,
        json!({"Node": "web-a", "Address": "10.7.0.1",
               "Check": {"CheckID": "disk", "Name": "disk", "Status": "warning"}}),
    )
    .await;
    // A sidecar for web, registered with the agent (on its own node).
    let sidecar = json!({"ID": "web-1-sidecar", "Name": "web-sidecar-proxy",
        "Kind": "connect-proxy", "Port": 21000,
        "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web-1",
                  "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]},
        "Check": {"CheckID": "sidecar-alive", "Name": "sidecar", "TTL": "30s",
                  "Status": "passing"}});
    let response = client
        .put("/v1/agent/service/register", sidecar.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    crate::support::eventually(
        "the sidecar in the catalog",
        Duration::from_secs(10),
        || async {
            let checks = json(
                &client
                    .get("/v1/health/checks/web-sidecar-proxy")
                    .await
                    .ok()?,
            );
            (checks[0]["Status"] == "passing").then_some(())
        },
    )
    .await;

    let listed = client.get("/v1/internal/ui/services").await.unwrap();
    let index: u64 = listed.headers["X-Consul-Index"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let services = json(&listed);
    let names: Vec<&str> = services
        .as_array()
        .unwrap()
        .iter()
        .map(|summary| summary["Name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["consul", "web", "web-sidecar-proxy"]);
    let web = &services[1];
    assert_eq!(web["InstanceCount"], 2);
    assert_eq!(web["Nodes"], json!(["web-a", "web-b"]));
    assert_eq!(web["Tags"], json!(["v1", "v2"]));
    assert_eq!(web["Datacenter"], "dc1");
    // web-1-alive, sidecar-alive and the sidecar node's serfHealth pass (a sidecar's checks,
    // its node's included, count for what it fronts, as in Consul), disk warns (once),
    // web-2-alive is critical.
    assert_eq!(
        (
            &web["ChecksPassing"],
            &web["ChecksWarning"],
            &web["ChecksCritical"]
        ),
        (&json!(3), &json!(1), &json!(1))
    );
    assert_eq!(web["ConnectedWithProxy"], true);
    assert_eq!(web["ExternalSources"], Value::Null);
    assert_eq!(web["GatewayConfig"], json!({}));
    assert!(web.get("Kind").is_none(), "{web}");
    assert_eq!(services[2]["Kind"], "connect-proxy");

    // A blocking read wakes when an instance's health changes.
    let waiter = {
        let client = agent.client();
        tokio::spawn(async move {
            client
                .get(&format!("/v1/internal/ui/services?index={index}&wait=20s"))
                .await
                .unwrap()
        })
    };
    register(&agent, instance("web-b", "10.7.0.2", "web-2", "passing")).await;
    let woke = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the blocking read returned")
        .unwrap();
    assert_eq!(json(&woke)[1]["ChecksCritical"], 0);

    let nodes = json(&client.get("/v1/internal/ui/nodes").await.unwrap());
    let web_a = nodes
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["Node"] == "web-a")
        .expect("web-a listed");
    assert_eq!(web_a["Address"], "10.7.0.1");
    assert_eq!(web_a["Services"][0]["ID"], "web-1");
    assert_eq!(web_a["Checks"].as_array().unwrap().len(), 2);
    let one = json(&client.get("/v1/internal/ui/node/web-b").await.unwrap());
    assert_eq!(one["Services"][0]["ID"], "web-2");
    assert_eq!(one["Checks"][0]["Status"], "passing");
    let missing = client.get("/v1/internal/ui/node/nowhere").await.unwrap();
    assert_eq!(missing.status, 404);

    // Topology: web's sidecar declares db upstream; an exact intention makes api downstream.
    for (source, destination, action) in [("web", "db", "deny"), ("api", "web", "allow")] {
        let made = client
            .put(
                &format!("/v1/connect/intentions/exact?source={source}&destination={destination}"),
                json!({"Action": action}).to_string().into(),
            )
            .await
            .unwrap();
        assert_eq!(made.status, 200, "{}", made.text());
    }
    let topology = json(
        &client
            .get("/v1/internal/ui/service-topology/web?kind=")
            .await
            .unwrap(),
    );
    assert_eq!(topology["Protocol"], "tcp");
    let db = &topology["Upstreams"][0];
    assert_eq!(
        (&db["Name"], &db["Source"], &db["InstanceCount"]),
        (&json!("db"), &json!("proxy-registration"), &json!(0))
    );
    assert_eq!(
        db["Intention"],
        json!({"Allowed": false, "HasPermissions": false, "ExternalSource": "",
               "HasExact": true, "DefaultAllow": true})
    );
    let api = &topology["Downstreams"][0];
    assert_eq!(
        (&api["Name"], &api["Source"]),
        (&json!("api"), &json!("specific-intention"))
    );
    assert_eq!(api["Intention"]["Allowed"], true);
    for (query, text) in [
        ("", "Missing service kind"),
        ("?kind=bogus", "Unsupported service kind \"bogus\""),
    ] {
        let refused = client
            .get(&format!("/v1/internal/ui/service-topology/web{query}"))
            .await
            .unwrap();
        assert_eq!(
            (refused.status.as_u16(), refused.text()),
            (400, text.to_string())
        );
    }
}

/// Runs one scenario of `tests/ui/browser.py` (Playwright driving Debian's Chromium) against
/// `agent`; screenshots land in `target/ui-screenshots/`.
async fn browser(scenario: &'static str, agent: &Agent, argument: String) {
    let base = format!("http://{}", agent.address());
    let ran = tokio::task::spawn_blocking(move || {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut command = std::process::Command::new("python");
        command.arg(format!("{root}/tests/ui/browser.py")).args([
            scenario,
            &base,
            &format!("{root}/target/ui-screenshots"),
        ]);
        command
            .arg(argument)
            .output()
            .expect("python runs (scripts/test installs Playwright into .venv)")
    })
    .await
    .unwrap();
    assert!(
        ran.status.success(),
        "the {scenario} browser scenario failed:\n{}{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
}

/// The UI served by a `-dev` agent, in a real browser: a service turning critical without a
/// reload, KV create/edit/delete with a CAS conflict reported, a binary value, a deny
/// intention listed, and the agent killed mid-edit without losing the text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_in_a_real_browser_follows_the_catalog_and_edits_kv_and_intentions() {
    let agent = Agent::start(AgentOptions::default()).await;
    // The scenario ends by killing the agent mid-edit.
    browser("plain", &agent, agent.child.id().to_string()).await;
}

/// With ACLs on and a deny default the UI shows nothing until a token is entered, then what
/// the token may see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ui_logs_in_with_a_token_when_acls_are_on() {
    const MANAGEMENT: &str = "3b1f0a9c-5d2e-4f7a-8c6b-1e2d3f4a5b6c";
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            format!(
                "acl {{\n enabled = true\n default_policy = \"deny\"\n tokens {{ initial_management = \"{MANAGEMENT}\" }}\n}}"
            ),
        ],
        ready_token: Some(MANAGEMENT.into()),
        ..AgentOptions::default()
    })
    .await;
    browser("acl", &agent, MANAGEMENT.to_string()).await;
}
