//! Sessions over HTTP: create, info, renew and destroy shapes; a TTL session dies after twice
//! its TTL without renewal while a renewed one lives; a session bound to a critical check
//! cannot be created.

use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, json, Agent, AgentOptions};

#[tokio::test]
async fn session_lifecycle_and_ttl_expiry() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let create = |body: serde_json::Value| {
        let client = agent.client();
        async move {
            let response = client
                .put("/v1/session/create", body.to_string().into())
                .await
                .unwrap();
            assert_eq!(response.status, 200, "{}", response.text());
            json(&response)["ID"].as_str().unwrap().to_string()
        }
    };
    let renewed = create(json!({"Name": "renewed", "TTL": "10s"})).await;
    let abandoned = create(json!({"Name": "abandoned", "TTL": "10s", "Behavior": "delete"})).await;

    let info = json(
        &client
            .get(&format!("/v1/session/info/{renewed}"))
            .await
            .unwrap(),
    );
    assert_eq!(info[0]["Name"], "renewed");
    assert_eq!(info[0]["TTL"], "10s");
    assert_eq!(info[0]["Node"], "test-node");
    assert_eq!(info[0]["LockDelay"], 15_000_000_000u64);
    assert_eq!(info[0]["NodeChecks"], json!(["serfHealth"]));
    assert_eq!(info[0]["Behavior"], "release");

    // The abandoned session holds a key; with behavior delete the key goes with it.
    let acquired = client
        .put(&format!("/v1/kv/held?acquire={abandoned}"), b"v".to_vec())
        .await
        .unwrap();
    assert_eq!(json(&acquired), json!(true));

    // Renew one session every few seconds; leave the other alone. After twice the TTL
    // (20s) the abandoned one is invalidated by the leader.
    let renewer = {
        let client = agent.client();
        let id = renewed.clone();
        tokio::spawn(async move {
            loop {
                let response = client
                    .put(&format!("/v1/session/renew/{id}"), Vec::new())
                    .await
                    .unwrap();
                assert_eq!(response.status, 200);
                tokio::time::sleep(Duration::from_secs(4)).await;
            }
        })
    };
    eventually(
        "the abandoned session to expire",
        Duration::from_secs(40),
        || async {
            let body = json(
                &client
                    .get(&format!("/v1/session/info/{abandoned}"))
                    .await
                    .ok()?,
            );
            (body == json!([])).then_some(())
        },
    )
    .await;
    renewer.abort();
    assert_eq!(
        client.get("/v1/kv/held").await.unwrap().status,
        404,
        "behavior delete removes held keys"
    );
    let list = json(&client.get("/v1/session/list").await.unwrap());
    assert_eq!(list.as_array().unwrap().len(), 1);
    assert_eq!(list[0]["ID"], renewed.as_str());
    let by_node = json(&client.get("/v1/session/node/test-node").await.unwrap());
    assert_eq!(by_node.as_array().unwrap().len(), 1);

    let destroyed = client
        .put(&format!("/v1/session/destroy/{renewed}"), Vec::new())
        .await
        .unwrap();
    assert_eq!(json(&destroyed), json!(true));
    let gone = client
        .put(&format!("/v1/session/renew/{renewed}"), Vec::new())
        .await
        .unwrap();
    assert_eq!(gone.status, 404);
}

#[tokio::test]
async fn sessions_refuse_missing_or_critical_checks() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    client
        .put(
            "/v1/agent/check/register",
            json!({"Name": "gate", "TTL": "30s"}).to_string().into(),
        )
        .await
        .unwrap();
    // The TTL check starts critical; wait until anti-entropy has put it in the catalog.
    eventually(
        "the check in the catalog",
        Duration::from_secs(10),
        || async {
            let checks = json(&client.get("/v1/health/node/test-node").await.ok()?);
            checks
                .as_array()?
                .iter()
                .any(|c| c["CheckID"] == "gate")
                .then_some(())
        },
    )
    .await;
    for (checks, message) in [
        (json!(["gate"]), "critical"),
        (json!(["nope"]), "Missing check"),
    ] {
        let body = json!({"NodeChecks": checks});
        let response = client
            .put("/v1/session/create", body.to_string().into())
            .await
            .unwrap();
        assert_eq!(response.status, 500, "{}", response.text());
        assert!(response.text().contains(message), "{}", response.text());
    }
    let bad_ttl = client
        .put(
            "/v1/session/create",
            json!({"TTL": "1s"}).to_string().into(),
        )
        .await
        .unwrap();
    // Consul's Session RPC refuses it: a 500.
    assert_eq!(bad_ttl.status, 500);
    assert!(bad_ttl.text().contains("Invalid Session TTL"));
}
