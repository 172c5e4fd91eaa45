//! `/v1/txn`: atomic success, rollback with 409 and per-operation errors, read-only fast path,
//! and the operation-count and body limits.

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
        ("{not json", "Failed to parse body"),
        (
            r#"[{"KV": {"Verb": "explode", "Key": "k"}}]"#,
            "unknown KV verb",
        ),
        (
            r#"[{"KV": {"Verb": "set", "Key": "k", "Value": "%%%"}}]"#,
            "base64",
        ),
        (r#"[{"Node": {"Verb": "set"}}]"#, "only KV"),
    ] {
        let response = client.put("/v1/txn", body.into()).await.unwrap();
        assert_eq!(response.status, 400, "{body}: {}", response.text());
        assert!(
            response.text().contains(message),
            "{body}: {}",
            response.text()
        );
    }
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
