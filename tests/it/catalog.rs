//! Catalog register/deregister and the shapes of every list endpoint, including `?tag`,
//! `?filter` and the agent's own registration.

use serde_json::json;

use crate::support::{json, Agent, AgentOptions};

#[tokio::test]
async fn register_list_and_deregister() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();

    // The agent registered itself and, as a server, the consul service.
    let services = json(&client.get("/v1/catalog/services").await.unwrap());
    assert_eq!(services["consul"], json!([]));
    let own = json(&client.get("/v1/catalog/node/test-node").await.unwrap());
    assert_eq!(own["Node"]["Node"], "test-node");
    assert_eq!(own["Services"]["consul"]["Port"], agent.server_port);

    let registration = json!({
        "Datacenter": "dc1",
        "Node": "web-host",
        "Address": "10.1.2.3",
        "TaggedAddresses": {"wan": "198.51.100.1"},
        "NodeMeta": {"rack": "r1"},
        "Service": {
            "ID": "web-1", "Service": "web", "Tags": ["v1", "primary"], "Port": 8080,
            "Meta": {"version": "1"}, "Weights": {"Passing": 3, "Warning": 1}
        },
        "Check": {"CheckID": "web-1-alive", "Name": "alive", "Status": "passing", "ServiceID": "web-1"}
    });
    let response = client
        .put("/v1/catalog/register", registration.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(json(&response), json!(true));
    // snake_case and lower-case field names register too.
    let second = json!({
        "node": "web-host-2", "address": "10.1.2.4",
        "service": {"id": "web-2", "service": "web", "tags": ["v2"], "port": 8081, "enable_tag_override": true}
    });
    let response = client
        .put("/v1/catalog/register", second.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    let nodes = json(&client.get("/v1/catalog/nodes").await.unwrap());
    let names: Vec<&str> = nodes
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["Node"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["test-node", "web-host", "web-host-2"]);
    let web_host = &nodes[1];
    assert_eq!(web_host["Address"], "10.1.2.3");
    assert_eq!(web_host["Datacenter"], "dc1");
    assert_eq!(web_host["Meta"]["rack"], "r1");
    assert_eq!(web_host["TaggedAddresses"]["wan"], "198.51.100.1");

    let services = json(&client.get("/v1/catalog/services").await.unwrap());
    assert_eq!(services["web"], json!(["primary", "v1", "v2"]));

    let instances = json(&client.get("/v1/catalog/service/web").await.unwrap());
    let instances = instances.as_array().unwrap();
    assert_eq!(instances.len(), 2);
    let first = &instances[0];
    for field in [
        "ID",
        "Node",
        "Address",
        "Datacenter",
        "TaggedAddresses",
        "NodeMeta",
        "ServiceKind",
        "ServiceID",
        "ServiceName",
        "ServiceTags",
        "ServiceAddress",
        "ServiceWeights",
        "ServiceMeta",
        "ServicePort",
        "ServiceEnableTagOverride",
        "ServiceProxy",
        "ServiceConnect",
        "CreateIndex",
        "ModifyIndex",
    ] {
        assert!(
            first.get(field).is_some(),
            "ServiceNode lacks {field}: {first}"
        );
    }
    assert_eq!(first["ServiceID"], "web-1");
    assert_eq!(first["ServicePort"], 8080);
    assert_eq!(first["ServiceWeights"], json!({"Passing": 3, "Warning": 1}));
    assert_eq!(instances[1]["ServiceEnableTagOverride"], true);

    let tagged = json(&client.get("/v1/catalog/service/web?tag=v2").await.unwrap());
    assert_eq!(tagged.as_array().unwrap().len(), 1);
    assert_eq!(tagged[0]["ServiceID"], "web-2");
    let filtered = json(
        &client
            .get("/v1/catalog/service/web?filter=ServicePort%20%3D%3D%208080")
            .await
            .unwrap(),
    );
    assert_eq!(filtered.as_array().unwrap().len(), 1);
    // The health endpoint filters its CheckServiceNodes the same way.
    let healthy = json(
        &client
            .get("/v1/health/service/web?filter=Service.Port%20%3D%3D%208080")
            .await
            .unwrap(),
    );
    assert_eq!(healthy.as_array().unwrap().len(), 1, "{healthy}");
    assert_eq!(healthy[0]["Service"]["ID"], "web-1");
    assert_eq!(
        healthy[0]["Service"]["Weights"],
        json!({"Passing": 3, "Warning": 1})
    );
    assert_eq!(healthy[0]["Node"]["Node"], "web-host");
    let by_meta = json(
        &client
            .get("/v1/catalog/nodes?filter=Meta.rack%20%3D%3D%20r1")
            .await
            .unwrap(),
    );
    assert_eq!(by_meta.as_array().unwrap().len(), 1);
    let by_tag = json(
        &client
            .get("/v1/catalog/services?filter=%22v2%22%20in%20ServiceTags")
            .await
            .unwrap(),
    );
    assert_eq!(by_tag["web"], json!(["v2"]));

    let node = json(&client.get("/v1/catalog/node/web-host").await.unwrap());
    assert_eq!(node["Services"]["web-1"]["Service"], "web");
    assert_eq!(node["Services"]["web-1"]["Tags"], json!(["v1", "primary"]));
    let node_services = json(
        &client
            .get("/v1/catalog/node-services/web-host")
            .await
            .unwrap(),
    );
    assert_eq!(node_services["Services"][0]["ID"], "web-1");
    assert_eq!(
        json(&client.get("/v1/catalog/node/nowhere").await.unwrap()),
        serde_json::Value::Null
    );

    let deregister = json!({"Node": "web-host", "ServiceID": "web-1"});
    let response = client
        .put("/v1/catalog/deregister", deregister.to_string().into())
        .await
        .unwrap();
    assert_eq!(json(&response), json!(true));
    let remaining = json(&client.get("/v1/catalog/service/web").await.unwrap());
    assert_eq!(remaining.as_array().unwrap().len(), 1);
    assert!(json(&client.get("/v1/catalog/node/web-host").await.unwrap())["Node"].is_object());

    let whole_node = json!({"Node": "web-host-2"});
    client
        .put("/v1/catalog/deregister", whole_node.to_string().into())
        .await
        .unwrap();
    assert_eq!(
        json(&client.get("/v1/catalog/service/web").await.unwrap()),
        json!([])
    );
    assert!(json(&client.get("/v1/catalog/services").await.unwrap())
        .get("web")
        .is_none());
    assert_eq!(
        json(&client.get("/v1/catalog/datacenters").await.unwrap()),
        json!(["dc1"])
    );
}

#[tokio::test]
async fn invalid_registrations_are_rejected_and_change_nothing() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let cases = [
        (json!({"Address": "10.0.0.1"}), 400, "Must provide node"),
        (json!({"Node": "n"}), 400, "Must provide address"),
        (
            json!({"Node": "n", "Address": "a", "Service": {"Port": 1}}),
            400,
            "service name",
        ),
        (
            json!({"Node": "n", "Address": "a", "Datacenter": "mars"}),
            400,
            "No path to datacenter",
        ),
        (
            json!({"Node": "n", "Address": "a", "Check": {"Name": "c", "Status": "sideways"}}),
            400,
            "Invalid check status",
        ),
        (
            json!({"Node": "n", "Address": "a", "Check": {"Name": "c", "ServiceID": "ghost"}}),
            500,
            "Unknown service",
        ),
        (json!("not an object"), 400, "decode"),
    ];
    for (body, status, message) in cases {
        let response = client
            .put("/v1/catalog/register", body.to_string().into())
            .await
            .unwrap();
        // Consul validates a registration in its Catalog RPC: every refusal but a body that
        // does not decode is that RPC's 500.
        let status = if status == 400 && message != "decode" {
            500
        } else {
            status
        };
        assert_eq!(response.status, status, "{body}: {}", response.text());
        assert!(
            response.text().contains(message),
            "{body}: {}",
            response.text()
        );
    }
    let nodes = json(&client.get("/v1/catalog/nodes").await.unwrap());
    assert_eq!(nodes.as_array().unwrap().len(), 1, "{nodes}");
}

#[tokio::test]
async fn localities_come_from_the_definition_or_the_parent_service_and_nodes_from_the_agent() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            "locality {\n  region = \"us-east-1\"\n  zone = \"us-east-1a\"\n}".into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();
    let eu = json!({"Region": "eu-west-1", "Zone": "eu-west-1c"});
    let us = json!({"Region": "us-east-1", "Zone": "us-east-1a"});
    let api = json!({
        "Name": "api", "Port": 9000,
        "Locality": {"region": "eu-west-1", "zone": "eu-west-1c"},
        "Connect": {"SidecarService": {}},
    });
    for body in [api, json!({"Name": "plain", "Port": 9001})] {
        let response = client
            .put("/v1/agent/service/register", body.to_string().into())
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let local = json(&client.get("/v1/agent/services").await.unwrap());
    assert_eq!(local["api"]["Locality"], eu, "as registered");
    assert_eq!(
        local["api-sidecar-proxy"]["Locality"], eu,
        "the sidecar's is its service's"
    );
    assert!(
        local["plain"].get("Locality").is_none(),
        "a service naming none has none (routing falls back to the node's): {}",
        local["plain"]
    );

    // The catalog, health and the agent's own node carry them once anti-entropy has synced.
    crate::support::eventually(
        "all three in the catalog",
        std::time::Duration::from_secs(10),
        || {
            let client = client.clone();
            async move {
                let node = json(&client.get("/v1/catalog/node/test-node").await.ok()?);
                let services = node["Services"].as_object()?;
                ["api", "api-sidecar-proxy", "plain"]
                    .iter()
                    .all(|id| services.contains_key(*id))
                    .then_some(())
            }
        },
    )
    .await;
    let catalog = json(&client.get("/v1/catalog/service/api").await.unwrap());
    assert_eq!(catalog[0]["ServiceLocality"], eu);
    let health = json(
        &client
            .get("/v1/health/service/api-sidecar-proxy")
            .await
            .unwrap(),
    );
    assert_eq!(health[0]["Service"]["Locality"], eu);
    assert_eq!(health[0]["Node"]["Locality"], us);
    let node = json(&client.get("/v1/catalog/node/test-node").await.unwrap());
    assert_eq!(node["Node"]["Locality"], us);
    assert!(node["Services"]["plain"].get("Locality").is_none());
    let plain = json(&client.get("/v1/catalog/service/plain").await.unwrap());
    assert_eq!(
        plain[0]["ServiceLocality"],
        json!(null),
        "Consul always sends this one"
    );

    // A catalog registration carries its own, or none: Consul omits an unset locality.
    let registration = json!({
        "Node": "ext", "Address": "10.2.0.1",
        "Service": {"Service": "db", "Port": 5432, "Locality": {"Region": "ap-south-1"}},
    });
    let response = client
        .put("/v1/catalog/register", registration.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let db = json(&client.get("/v1/catalog/service/db").await.unwrap());
    assert_eq!(db[0]["ServiceLocality"], json!({"Region": "ap-south-1"}));
    let ext = json(&client.get("/v1/catalog/node/ext").await.unwrap());
    assert!(ext["Node"].get("Locality").is_none(), "{ext}");

    // A zone needs a region: the agent refuses with Consul's 400, the catalog with its 500.
    let zone_only = json!({"Name": "bad", "Locality": {"Zone": "z"}});
    let response = client
        .put("/v1/agent/service/register", zone_only.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 400);
    assert_eq!(
        &response.body[..],
        b"Validation failed: 1 error occurred:\n\t* zone cannot be set without region\n\n"
    );
    let zone_only = json!({"Node": "ext", "Address": "10.2.0.1",
        "Service": {"Service": "bad", "Locality": {"Zone": "z"}}});
    let response = client
        .put("/v1/catalog/register", zone_only.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 500);
    assert_eq!(
        &response.body[..],
        b"1 error occurred:\n\t* zone cannot be set without region\n\n"
    );
}

/// A proxy registered through the catalog keeps its proxy settings, as Consul's catalog does,
/// and takes its destination's mesh traffic; a malformed upstream is refused naming it.
#[tokio::test]
async fn a_proxy_registered_in_the_catalog_keeps_its_proxy_settings() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let registration = json!({
        "Node": "mesh-host", "Address": "10.3.0.1",
        "Service": {"ID": "web-proxy", "Service": "web-sidecar-proxy", "Kind": "connect-proxy",
            "Port": 21000,
            "Proxy": {"DestinationServiceName": "web", "DestinationServiceID": "web-1",
                      "Upstreams": [{"DestinationName": "db", "LocalBindPort": 9191}]}}
    });
    let response = client
        .put("/v1/catalog/register", registration.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let listed = json(
        &client
            .get("/v1/catalog/service/web-sidecar-proxy")
            .await
            .unwrap(),
    );
    assert_eq!(listed[0]["ServiceKind"], "connect-proxy");
    assert_eq!(listed[0]["ServiceProxy"]["DestinationServiceName"], "web");
    assert_eq!(
        listed[0]["ServiceProxy"]["Upstreams"][0]["DestinationName"],
        "db"
    );
    let connect = json(&client.get("/v1/catalog/connect/web").await.unwrap());
    assert_eq!(connect[0]["ServiceID"], "web-proxy");

    let bad = json!({
        "Node": "mesh-host", "Address": "10.3.0.1",
        "Service": {"Service": "bad-proxy", "Kind": "connect-proxy",
            "Proxy": {"DestinationServiceName": "web", "Upstreams": [{"LocalBindPort": 1}]}}
    });
    let refused = client
        .put("/v1/catalog/register", bad.to_string().into())
        .await
        .unwrap();
    assert_ne!(refused.status, 200);
    assert!(
        refused
            .text()
            .contains("Upstreams[0]: DestinationName is required"),
        "{}",
        refused.text()
    );
}
