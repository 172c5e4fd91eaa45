//! Blocking queries: a query returns promptly after a write to what it reads, long before its
//! wait expires, and keeps waiting through writes to anything else.

use std::time::Duration;

use concord::api::client::Response;
use tokio::task::JoinHandle;

use crate::support::{header, json, Agent, AgentOptions};

/// Asserts a blocking query is still waiting, giving a wrongly woken one ample time to have
/// returned.
async fn assert_still_blocked(query: &JoinHandle<Response>, why: &str) {
    let returned = tokio::time::timeout(Duration::from_millis(500), async {
        while !query.is_finished() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .is_ok();
    assert!(!returned, "{why}");
}

#[tokio::test]
async fn kv_blocking_query_wakes_only_for_its_key() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    client.put("/v1/kv/watched", b"1".to_vec()).await.unwrap();
    let index: u64 = header(
        &client.get("/v1/kv/watched").await.unwrap(),
        "X-Consul-Index",
    )
    .parse()
    .unwrap();

    let watcher = agent.client();
    let blocked = tokio::spawn(async move {
        watcher
            .get(&format!("/v1/kv/watched?index={index}&wait=60s"))
            .await
            .unwrap()
    });
    // Unrelated writes, including a key that shares the watched key as a prefix, must not wake
    // the query: after they are all acknowledged it is still blocked.
    for key in ["unrelated", "watched2", "watched/child"] {
        client
            .put(&format!("/v1/kv/{key}"), b"x".to_vec())
            .await
            .unwrap();
    }
    assert_still_blocked(&blocked, "a write to another key woke the blocking query").await;

    client.put("/v1/kv/watched", b"2".to_vec()).await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("blocking query returned well before its 60s wait")
        .unwrap();
    assert_eq!(response.status, 200);
    let new_index: u64 = header(&response, "X-Consul-Index").parse().unwrap();
    assert!(new_index > index);
    assert_eq!(json(&response)[0]["Value"], "Mg==");
}

#[tokio::test]
async fn prefix_blocking_query_sees_deletes_and_wait_expiry_returns_same_index() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    client.put("/v1/kv/dir/a", b"1".to_vec()).await.unwrap();
    client.put("/v1/kv/dir/b", b"1".to_vec()).await.unwrap();
    let index: u64 = header(
        &client.get("/v1/kv/dir/?recurse").await.unwrap(),
        "X-Consul-Index",
    )
    .parse()
    .unwrap();

    // With nothing changing, the query returns at its wait with the same index and data.
    let expired = client
        .get(&format!("/v1/kv/dir/?recurse&index={index}&wait=200ms"))
        .await
        .unwrap();
    assert_eq!(expired.status, 200);
    assert_eq!(header(&expired, "X-Consul-Index"), index.to_string());

    let watcher = agent.client();
    let blocked = tokio::spawn(async move {
        watcher
            .get(&format!("/v1/kv/dir/?recurse&index={index}&wait=60s"))
            .await
            .unwrap()
    });
    client.delete("/v1/kv/dir/b").await.unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("delete woke the prefix query")
        .unwrap();
    let new_index: u64 = header(&response, "X-Consul-Index").parse().unwrap();
    assert!(new_index > index);
    assert_eq!(json(&response).as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn catalog_service_query_wakes_for_its_service_only() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let register = |node: &str, service: &str| {
        serde_json::json!({"Node": node, "Address": "10.0.0.1", "Service": {"Service": service}})
            .to_string()
            .into_bytes()
    };
    client
        .put("/v1/catalog/register", register("n1", "web"))
        .await
        .unwrap();
    let index: u64 = header(
        &client.get("/v1/catalog/service/web").await.unwrap(),
        "X-Consul-Index",
    )
    .parse()
    .unwrap();
    let watcher = agent.client();
    let blocked = tokio::spawn(async move {
        watcher
            .get(&format!("/v1/catalog/service/web?index={index}&wait=60s"))
            .await
            .unwrap()
    });
    client
        .put("/v1/catalog/register", register("n2", "db"))
        .await
        .unwrap();
    client.put("/v1/kv/noise", b"x".to_vec()).await.unwrap();
    assert_still_blocked(&blocked, "registering another service woke the web query").await;
    client
        .put("/v1/catalog/register", register("n2", "web"))
        .await
        .unwrap();
    let response = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("web registration woke the query")
        .unwrap();
    assert_eq!(json(&response).as_array().unwrap().len(), 2);
}
