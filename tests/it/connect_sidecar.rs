//! Sidecar registration: `connect { sidecar_service {} }` in a config file or an API body
//! expands to a `<id>-sidecar-proxy` connect-proxy with Consul's defaults, ports come from the
//! sidecar range, `/v1/catalog/connect` and `/v1/health/connect` list the proxies, config
//! entries can be bootstrapped from the server config, and the sidecar leaves with its parent.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, json, Agent, AgentOptions};

#[tokio::test]
async fn sidecar_service_expands_with_consuls_defaults() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("web.hcl"),
        r#"
service {
  name = "web"
  port = 8080
  tags = ["v1"]
  meta = { version = "v1" }
  connect {
    sidecar_service {}
  }
}
config_entries {
  bootstrap = [
    { kind = "service-defaults", name = "web", protocol = "http" },
  ]
}
"#,
    )
    .unwrap();
    let agent = Agent::start(AgentOptions {
        extra_args: vec!["-config-dir".into(), dir.path().display().to_string()],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();

    let services = json(&client.get("/v1/agent/services").await.unwrap());
    let proxy = &services["web-sidecar-proxy"];
    assert_eq!(proxy["Kind"], "connect-proxy");
    assert_eq!(proxy["Service"], "web-sidecar-proxy");
    assert_eq!(proxy["Port"], 21000, "the lowest port of the sidecar range");
    assert_eq!(
        proxy["Tags"],
        json!(["v1"]),
        "tags inherited from the parent"
    );
    assert_eq!(proxy["Meta"], json!({"version": "v1"}));
    assert_eq!(
        proxy["Proxy"],
        json!({"DestinationServiceName": "web", "DestinationServiceID": "web",
               "LocalServiceAddress": "127.0.0.1", "LocalServicePort": 8080, "Mode": "",
               "MeshGateway": {}, "Expose": {}})
    );

    // A second sidecar over the API, with an upstream, takes the next port.
    let register = json!({
        "Name": "api", "Port": 9090,
        "Connect": {"SidecarService": {"Proxy": {"Upstreams": [
            {"DestinationName": "web", "LocalBindPort": 9191}]}}},
    });
    let response = client
        .put("/v1/agent/service/register", register.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let services = json(&client.get("/v1/agent/services").await.unwrap());
    let api_proxy = &services["api-sidecar-proxy"];
    assert_eq!(api_proxy["Port"], 21001);
    assert_eq!(api_proxy["Proxy"]["Upstreams"][0]["DestinationName"], "web");
    assert_eq!(
        api_proxy["Proxy"]["Upstreams"][0]["DestinationType"],
        "service"
    );
    assert_eq!(api_proxy["Proxy"]["Upstreams"][0]["LocalBindPort"], 9191);

    // The catalog lists web's proxy under /v1/catalog/connect/web.
    let nodes: Value = eventually(
        "web's proxy in the catalog",
        Duration::from_secs(10),
        || async {
            let body = json(&client.get("/v1/catalog/connect/web").await.ok()?);
            (body.as_array()?.len() == 1).then_some(body)
        },
    )
    .await;
    assert_eq!(nodes[0]["ServiceKind"], "connect-proxy");
    assert_eq!(nodes[0]["ServiceID"], "web-sidecar-proxy");
    assert_eq!(nodes[0]["ServicePort"], 21000);
    assert_eq!(nodes[0]["ServiceProxy"]["DestinationServiceName"], "web");
    assert_eq!(
        json(&client.get("/v1/catalog/connect/db").await.unwrap()),
        json!([])
    );

    // Its checks: the listening TCP check and the alias of web.
    let health = eventually(
        "the sidecar's two checks",
        Duration::from_secs(10),
        || async {
            let health = json(&client.get("/v1/health/connect/web").await.ok()?);
            let names: Vec<String> = health[0]["Checks"]
                .as_array()?
                .iter()
                .map(|check| check["Name"].as_str().unwrap_or_default().to_string())
                .collect();
            let wanted = ["Connect Sidecar Listening", "Connect Sidecar Aliasing web"];
            wanted
                .iter()
                .all(|name| names.iter().any(|n| n == name))
                .then_some(health)
        },
    )
    .await;
    assert_eq!(health[0]["Service"]["Proxy"]["LocalServicePort"], 8080);
    // Nothing listens on 21000, so the proxy is not passing yet.
    let passing = json(&client.get("/v1/health/connect/web?passing").await.unwrap());
    assert_eq!(passing, json!([]));

    // The bootstrap config entry was written by the leader.
    let entry = eventually("bootstrap entry", Duration::from_secs(10), || async {
        let response = client.get("/v1/config/service-defaults/web").await.ok()?;
        (response.status == 200).then(|| json(&response))
    })
    .await;
    assert_eq!(entry["Protocol"], "http");

    // Deregistering api removes its sidecar with it.
    let response = client
        .put("/v1/agent/service/deregister/api", Vec::new())
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let services = json(&client.get("/v1/agent/services").await.unwrap());
    assert!(services.get("api-sidecar-proxy").is_none(), "{services}");

    // A connect-proxy registered without a destination is refused.
    let bad = json!({"Name": "p", "Kind": "connect-proxy", "Port": 1});
    let response = client
        .put("/v1/agent/service/register", bad.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 400);
    assert!(
        response.text().contains("DestinationServiceName"),
        "{}",
        response.text()
    );
}
