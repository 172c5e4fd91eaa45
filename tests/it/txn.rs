//! `/v1/txn`: atomic success, rollback with 409 and per-operation errors, read-only fast path,
//! node, service and check operations seen by the catalog, health and DNS, and the
//! operation-count and body limits.

use base64::Engine;
use serde_json::json;

use crate::support::{json, Agent, AgentOptions};

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn transaction_commits_all_or_nothing() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    client
        .put("/v1/kv/existing", b"old".to_vec())
        .await
        .unwrap();

    let ops = json!([
        {"KV": {"Verb": "set", "Key": "t/a", "Value": b64("A"), "Flags": 7}},
        {"KV": {"Verb": "set", "Key": "t/b", "Value": b64("B")}},
        {"KV": {"Verb": "get", "Key": "existing"}},
        {"KV": {"Verb": "delete", "Key": "nothing"}},
    ]);
    let response = client.put("/v1/txn", ops.to_string().into()).await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let body = json(&response);
    assert_eq!(body["Errors"], serde_json::Value::Null);
    let results = body["Results"].as_array().unwrap();
    assert_eq!(results.len(), 3, "no result entry for deletes");
    assert_eq!(results[0]["KV"]["Key"], "t/a");
    assert_eq!(results[0]["KV"]["Flags"], 7);
    assert_eq!(results[0]["KV"]["Value"], serde_json::Value::Null);
    assert_eq!(results[2]["KV"]["Value"], b64("old"));
    assert_eq!(&client.get("/v1/kv/t/b?raw").await.unwrap().body[..], b"B");

    let failing = json!([
        {"KV": {"Verb": "set", "Key": "t/a", "Value": b64("changed")}},
        {"KV": {"Verb": "set", "Key": "t/new", "Value": b64("new")}},
        {"KV": {"Verb": "check-not-exists", "Key": "existing"}},
        {"KV": {"Verb": "cas", "Key": "t/b", "Value": b64("x"), "Index": 1}},
    ]);
    let rolled_back = client
        .put("/v1/txn", failing.to_string().into())
        .await
        .unwrap();
    assert_eq!(rolled_back.status, 409);
    let body = json(&rolled_back);
    assert_eq!(body["Results"], serde_json::Value::Null);
    let errors = body["Errors"].as_array().unwrap();
    let failed_ops: Vec<u64> = errors
        .iter()
        .map(|e| e["OpIndex"].as_u64().unwrap())
        .collect();
    assert_eq!(failed_ops, [2, 3]);
    assert!(errors[0]["What"].as_str().unwrap().contains("existing"));
    assert_eq!(&client.get("/v1/kv/t/a?raw").await.unwrap().body[..], b"A");
    assert_eq!(client.get("/v1/kv/t/new").await.unwrap().status, 404);

    // Lower-case field names are accepted, as Go's decoder accepts them.
    let read_only = json!([{"kv": {"verb": "get-tree", "key": "t/"}}]);
    let response = client
        .put("/v1/txn", read_only.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(json(&response)["Results"].as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn transaction_limits_and_bad_bodies() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let op = json!({"KV": {"Verb": "set", "Key": "k", "Value": b64("v")}});
    let too_many = serde_json::Value::Array(vec![op.clone(); 129]);
    let response = client
        .put("/v1/txn", too_many.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 413);
    assert!(response.text().contains("129 > 128"), "{}", response.text());
    assert_eq!(client.get("/v1/kv/k").await.unwrap().status, 404);

    let exactly = serde_json::Value::Array(vec![op; 128]);
    assert_eq!(
        client
            .put("/v1/txn", exactly.to_string().into())
            .await
            .unwrap()
            .status,
        200
    );

    for (body, message) in [
        ("{not json", "Failed to parse body: "),
        (
            r#"[{"KV": {"Verb": "set", "Key": "k", "Value": "%%%"}}]"#,
            "Failed to parse body: failed to decode value",
        ),
    ] {
        let response = client.put("/v1/txn", body.into()).await.unwrap();
        assert_eq!(response.status, 400, "{body}: {}", response.text());
        assert!(
            response.text().contains(message),
            "{body}: {}",
            response.text()
        );
    }
    // Consul checks each operation before applying any and reports every bad one by position.
    let response = client
        .put(
            "/v1/txn",
            json!([
                {"KV": {"Verb": "explode", "Key": "k"}},
                {"KV": {"Verb": "set", "Key": "fine"}},
                {"KV": {"Verb": "set"}},
                {"Node": {"Verb": "set", "Node": {"Address": "10.0.0.1"}}},
                {"Service": {"Verb": "frob", "Node": "n"}},
                {"Service": {"Verb": "set", "Node": "n", "Service": {"ID": "s"}}},
                {"Node": {"Verb": "set", "Node": {"Node": "n", "ID": "not-a-uuid"}}},
                {},
            ])
            .to_string()
            .into(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 409, "{}", response.text());
    let errors: Vec<(u64, String)> = json(&response)["Errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["OpIndex"].as_u64().unwrap(),
                e["What"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let positions: Vec<u64> = errors.iter().map(|(at, _)| *at).collect();
    assert_eq!(positions, [0, 2, 3, 4, 5, 6, 7], "{errors:?}");
    assert_eq!(errors[0].1, "unknown KV verb \"explode\"");
    assert_eq!(errors[1].1, "Must provide key");
    assert_eq!(errors[2].1, "Must provide node");
    assert_eq!(errors[3].1, "unknown service operation: frob");
    assert_eq!(errors[4].1, "Must provide service name with ID");
    assert!(errors[5].1.starts_with("Bad node ID: "), "{}", errors[5].1);
    assert_eq!(errors[6].1, "unknown operation type");
    assert_eq!(client.get("/v1/kv/fine").await.unwrap().status, 404);
    let huge = format!(
        r#"[{{"KV": {{"Verb": "set", "Key": "k", "Value": "{}"}}}}]"#,
        "A".repeat(600 * 1024)
    );
    let response = client.put("/v1/txn", huge.into()).await.unwrap();
    assert_eq!(response.status, 413);
    assert!(
        response.text().contains("txn_max_req_len"),
        "{}",
        response.text()
    );
}

#[tokio::test]
async fn transactions_write_nodes_services_and_checks_that_discovery_serves() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let ops = json!([
        {"Node": {"Verb": "set", "Node": {
            "Node": "ext-1", "Address": "10.9.0.1", "Meta": {"rack": "r1"},
            "TaggedAddresses": {"wan": "198.51.100.1"}}}},
        {"Service": {"Verb": "set", "Node": "ext-1", "Service": {
            "ID": "pay-1", "Service": "payments", "Port": 9090, "Tags": ["v2"]}}},
        {"Check": {"Verb": "set", "Check": {
            "Node": "ext-1", "CheckID": "pay-alive", "Name": "alive",
            "Status": "passing", "ServiceID": "pay-1", "Output": "ok"}}},
        {"KV": {"Verb": "set", "Key": "payments/owner", "Value": b64("ext-1")}},
    ]);
    let response = client.put("/v1/txn", ops.to_string().into()).await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let body = json(&response);
    let results = body["Results"].as_array().unwrap();
    assert_eq!(results.len(), 4);
    let node = &results[0]["Node"];
    assert_eq!(node["Node"], "ext-1");
    assert_eq!(
        node["Datacenter"], "dc1",
        "a node without a datacenter gets the agent's"
    );
    assert_eq!(node["Meta"]["rack"], "r1");
    let index = node["ModifyIndex"].as_u64().unwrap();
    assert!(index > 0);
    assert_eq!(results[1]["Service"]["Service"], "payments");
    assert_eq!(results[1]["Service"]["Port"], 9090);
    assert_eq!(
        results[1]["Service"]["ModifyIndex"], index,
        "one Raft entry, one index"
    );
    assert_eq!(results[2]["Check"]["ServiceName"], "payments");
    assert_eq!(results[2]["Check"]["Status"], "passing");
    assert_eq!(results[3]["KV"]["Key"], "payments/owner");

    // What the transaction wrote is what discovery serves: HTTP health and DNS.
    let health = client
        .get("/v1/health/service/payments?passing")
        .await
        .unwrap();
    let instances = json(&health);
    assert_eq!(instances.as_array().unwrap().len(), 1, "{instances}");
    assert_eq!(instances[0]["Service"]["ID"], "pay-1");
    assert_eq!(instances[0]["Node"]["Address"], "10.9.0.1");
    let answer = crate::support::dig_short(&agent, "payments.service.consul", "A");
    assert_eq!(answer, ["10.9.0.1"]);

    // A read-only transaction takes the fast path and returns each entry asked for.
    let reads = json!([
        {"Node": {"Verb": "get", "Node": {"Node": "ext-1"}}},
        {"Service": {"Verb": "get", "Node": "ext-1", "Service": {"ID": "pay-1"}}},
        {"Check": {"Verb": "get", "Check": {"Node": "ext-1", "CheckID": "pay-alive"}}},
    ]);
    let response = client
        .put("/v1/txn", reads.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(
        crate::support::header(&response, "X-Consul-KnownLeader"),
        "true"
    );
    let body = json(&response);
    assert_eq!(body["Results"][0]["Node"]["Address"], "10.9.0.1");
    assert_eq!(body["Results"][1]["Service"]["Tags"], json!(["v2"]));
    assert_eq!(body["Results"][2]["Check"]["Output"], "ok");

    // A failing check and a stale CAS on the service in one transaction: nothing applies.
    let ops = json!([
        {"Check": {"Verb": "set", "Check": {
            "Node": "ext-1", "CheckID": "pay-alive", "Status": "critical", "ServiceID": "pay-1"}}},
        {"Service": {"Verb": "cas", "Node": "ext-1", "Service": {
            "ID": "pay-1", "Service": "payments", "Port": 1, "ModifyIndex": index - 1}}},
    ]);
    let response = client.put("/v1/txn", ops.to_string().into()).await.unwrap();
    assert_eq!(response.status, 409, "{}", response.text());
    assert_eq!(
        json(&response)["Errors"],
        json!([{"OpIndex": 1, "What": "failed to set service \"pay-1\" on node \"ext-1\", index is stale"}])
    );
    let health = client
        .get("/v1/health/service/payments?passing")
        .await
        .unwrap();
    assert_eq!(json(&health).as_array().unwrap().len(), 1);

    // delete-cas at the current index removes the node with everything on it.
    let ops =
        json!([{"Node": {"Verb": "delete-cas", "Node": {"Node": "ext-1", "ModifyIndex": index}}}]);
    let response = client.put("/v1/txn", ops.to_string().into()).await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(json(&response)["Results"], json!([]));
    let catalog = client.get("/v1/catalog/service/payments").await.unwrap();
    assert_eq!(json(&catalog), json!([]));
}
