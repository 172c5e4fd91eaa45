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
        "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web-1"},
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
}
