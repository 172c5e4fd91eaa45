//! `snapshot save` on one cluster and `snapshot restore` into a fresh one reproduce its KV
//! entries, services, sessions, intentions and config entries; a blocking query open across
//! the restore returns; a damaged or truncated archive is refused and changes nothing.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{cli, eventually, json, Agent, AgentOptions};

fn named(node: &str) -> AgentOptions {
    AgentOptions {
        extra_args: vec!["-node".into(), node.into()],
        ..AgentOptions::default()
    }
}

async fn get(agent: &Agent, path: &str) -> (u16, Value) {
    let response = agent.client().get(path).await.expect("GET");
    let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    (response.status.as_u16(), body)
}

async fn put(agent: &Agent, path: &str, body: Value) -> Value {
    let response = agent
        .client()
        .put(path, body.to_string().into_bytes())
        .await
        .expect("PUT");
    assert_eq!(response.status, 200, "PUT {path}: {}", response.text());
    serde_json::from_slice(&response.body).unwrap_or(Value::Null)
}

/// What the test compares between the two clusters.
async fn contents(agent: &Agent, session: &str) -> Value {
    let kv = get(agent, "/v1/kv/app?recurse").await.1;
    let kv: Vec<Value> = kv
        .as_array()
        .into_iter()
        .flatten()
        .map(|entry| json!([entry["Key"], entry["Value"], entry["Flags"]]))
        .collect();
    json!({
        "kv": kv,
        "service": get(agent, "/v1/catalog/service/billing").await.1.as_array().map(|list| list.len()),
        "session": get(agent, &format!("/v1/session/info/{session}")).await.1[0]["Name"],
        "intention": get(agent, "/v1/connect/intentions/exact?source=web&destination=billing").await.1["Action"],
        "defaults": get(agent, "/v1/config/service-defaults/billing").await.1["Protocol"],
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_moves_the_state_to_a_fresh_cluster() {
    let source = Agent::start(named("source")).await;
    let target = Agent::start(named("target")).await;
    let workdir = tempfile::tempdir().expect("dir");

    // State of every kind on the source.
    for (key, value) in [
        ("app/a", "1"),
        ("app/b/c", "two"),
        ("app/binary", "\u{0}\u{1}"),
    ] {
        let response = source
            .client()
            .put(&format!("/v1/kv/{key}?flags=7"), value.as_bytes().to_vec())
            .await
            .expect("PUT");
        assert_eq!(response.status, 200);
    }
    put(
        &source,
        "/v1/catalog/register",
        json!({"Node": "billing-1", "Address": "10.0.0.9",
               "Service": {"Service": "billing", "Port": 9000}}),
    )
    .await;
    let session = put(
        &source,
        "/v1/session/create",
        json!({"Name": "nightly", "Node": "source", "Checks": []}),
    )
    .await;
    let session = session["ID"].as_str().expect("session id").to_string();
    put(
        &source,
        "/v1/config",
        json!({"Kind": "service-defaults", "Name": "billing", "Protocol": "http"}),
    )
    .await;
    let (code, _, err) = cli(
        &source,
        &["intention", "create", "-deny", "web", "billing"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let expected = contents(&source, &session).await;
    assert_eq!(expected["service"], json!(1), "{expected}");
    assert_eq!(expected["intention"], json!("deny"), "{expected}");

    let file = workdir.path().join("backup.snap");
    let file_arg = file.to_str().expect("path");
    let (code, out, err) = cli(&source, &["snapshot", "save", file_arg], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Saved and verified snapshot to index "),
        "{out}"
    );
    let (code, out, err) = cli(&source, &["snapshot", "inspect", file_arg], None);
    assert_eq!(code, 0, "{err}");
    let kvs_row = out
        .lines()
        .find(|line| line.trim_start().starts_with("KVS"))
        .unwrap_or_default();
    assert_eq!(
        kvs_row.split_whitespace().collect::<Vec<_>>(),
        ["KVS", "3"],
        "{out}"
    );

    // Damaged and truncated archives are refused and change nothing.
    let archive = std::fs::read(&file).expect("archive");
    let mut damaged = archive.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    let truncated = archive[..archive.len() - 40].to_vec();
    for (name, bytes) in [("damaged", damaged), ("truncated", truncated)] {
        let path = workdir.path().join(name);
        std::fs::write(&path, bytes).expect("write");
        let (code, _, err) = cli(
            &target,
            &["snapshot", "restore", path.to_str().expect("path")],
            None,
        );
        assert_ne!(code, 0, "a {name} archive was restored");
        assert!(err.contains("Error restoring snapshot"), "{err}");
    }
    assert_eq!(get(&target, "/v1/kv/app/a").await.0, 404);

    // A blocking query open on the target across the restore returns.
    let (status, _) = get(&target, "/v1/kv/app/a").await;
    assert_eq!(status, 404);
    let index = target
        .client()
        .get("/v1/kv/app/a")
        .await
        .expect("GET")
        .index();
    let client = target.client();
    let blocked = tokio::spawn(async move {
        client
            .get(&format!("/v1/kv/app/a?index={index}&wait=60s"))
            .await
            .map(|response| response.status.as_u16())
    });
    let (code, out, err) = cli(&target, &["snapshot", "restore", file_arg], None);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), "Restored snapshot");
    eventually(
        "the blocking query to return",
        Duration::from_secs(10),
        || async { blocked.is_finished().then_some(()) },
    )
    .await;
    assert_eq!(blocked.await.expect("join").expect("answer"), 200);
    assert_eq!(contents(&target, &session).await, expected);
    let raw = target.client().get("/v1/kv/app/a?raw").await.expect("GET");
    assert_eq!(raw.text(), "1");
    assert_eq!(
        json(&target.client().get("/v1/kv/app/binary").await.expect("GET"))[0]["Flags"],
        7
    );
}
