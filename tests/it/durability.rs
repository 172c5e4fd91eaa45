//! Durability: a restart with the same data dir keeps every acknowledged write, and `kill -9`
//! in the middle of a stream of concurrent writes loses none that were acknowledged.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::json;

use crate::support::{eventually, json, Agent, AgentOptions};

fn persistent(data_dir: &std::path::Path) -> AgentOptions {
    AgentOptions {
        dev: false,
        data_dir: Some(data_dir.to_path_buf()),
        // Small snapshot settings so restarts restore from a snapshot plus a log tail, and
        // the log is purged behind it.
        extra_args: vec![
            "-hcl".into(),
            "raft_snapshot_threshold = 40\nraft_trailing_logs = 5".into(),
        ],
        ..AgentOptions::default()
    }
}

#[tokio::test]
async fn restart_keeps_every_write() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut agent = Agent::start(persistent(&data_dir)).await;
    let client = agent.client();
    for n in 0..150 {
        let response = client
            .put(&format!("/v1/kv/keep/{n:03}"), format!("v{n}").into())
            .await
            .unwrap();
        assert_eq!(json(&response), json!(true));
    }
    client.delete("/v1/kv/keep/007").await.unwrap();
    let registration =
        json!({"Node": "db-host", "Address": "10.0.0.9", "Service": {"Service": "db"}});
    client
        .put("/v1/catalog/register", registration.to_string().into())
        .await
        .unwrap();
    let before = json(&client.get("/v1/kv/keep/?recurse").await.unwrap());
    let node_id = std::fs::read_to_string(data_dir.join("node-id")).unwrap();

    agent.signal("INT");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        agent.log()
    );

    let agent = Agent::start(persistent(&data_dir)).await;
    let client = agent.client();
    let after = json(&client.get("/v1/kv/keep/?recurse").await.unwrap());
    assert_eq!(before, after, "KV changed across restart");
    assert_eq!(after.as_array().unwrap().len(), 149);
    let db = json(&client.get("/v1/catalog/service/db").await.unwrap());
    assert_eq!(db[0]["Node"], "db-host");
    assert_eq!(
        std::fs::read_to_string(data_dir.join("node-id")).unwrap(),
        node_id
    );
    // New writes continue past the old indexes.
    let old_index = after[0]["ModifyIndex"].as_u64().unwrap();
    client
        .put("/v1/kv/keep/000", b"new".to_vec())
        .await
        .unwrap();
    let rewritten = json(&client.get("/v1/kv/keep/000").await.unwrap());
    assert!(rewritten[0]["ModifyIndex"].as_u64().unwrap() > old_index);
}

#[tokio::test]
async fn kill_9_during_writes_loses_no_acknowledged_write() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut agent = Agent::start(persistent(&data_dir)).await;
    let acknowledged: Arc<Mutex<Vec<(String, String)>>> = Arc::default();

    let mut writers = Vec::new();
    for writer in 0..8 {
        let client = agent.client();
        let acknowledged = acknowledged.clone();
        writers.push(tokio::spawn(async move {
            for n in 0.. {
                let key = format!("crash/{writer}/{n:06}");
                let value = format!("{writer}-{n}");
                match client
                    .put(&format!("/v1/kv/{key}"), value.clone().into())
                    .await
                {
                    Ok(response) if response.status == 200 && response.text() == "true" => {
                        acknowledged.lock().unwrap().push((key, value));
                    }
                    // The connection died with the process: stop writing.
                    _ => return,
                }
            }
        }));
    }
    // Kill once a good number of writes are acknowledged and more are in flight.
    eventually("writes to be acknowledged", Duration::from_secs(30), || {
        let count = acknowledged.lock().unwrap().len();
        async move { (count >= 300).then_some(()) }
    })
    .await;
    agent.signal("KILL");
    agent.wait_exit(Duration::from_secs(10)).await;
    for writer in writers {
        writer.await.unwrap();
    }
    let acknowledged = acknowledged.lock().unwrap().clone();
    assert!(acknowledged.len() >= 300);

    let agent = Agent::start(persistent(&data_dir)).await;
    let client = agent.client();
    let stored = json(&client.get("/v1/kv/crash/?recurse").await.unwrap());
    let stored: std::collections::HashMap<String, String> = stored
        .as_array()
        .unwrap()
        .iter()
        .map(|pair| {
            let value = concord::api::kv::decode_base64(pair["Value"].as_str().unwrap()).unwrap();
            (
                pair["Key"].as_str().unwrap().to_string(),
                String::from_utf8(value).unwrap(),
            )
        })
        .collect();
    let lost: Vec<&(String, String)> = acknowledged
        .iter()
        .filter(|(key, value)| stored.get(key) != Some(value))
        .collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged writes lost, e.g. {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

/// Bytes in the unlinked files under `dir` that process `pid` holds open: a server's KV
/// value files (`state::values`).
fn value_file_bytes(pid: u32, dir: &std::path::Path) -> u64 {
    let dir = dir.canonicalize().unwrap();
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
        .filter(|fd| {
            std::fs::read_link(fd.path()).is_ok_and(|target| {
                target.starts_with(&dir) && target.to_string_lossy().ends_with(" (deleted)")
            })
        })
        .filter_map(|fd| std::fs::metadata(fd.path()).ok())
        .map(|meta| meta.len())
        .sum()
}

#[tokio::test]
async fn values_live_in_an_unlinked_file_whose_garbage_is_reclaimed() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let mut agent = Agent::start(persistent(&data_dir)).await;
    let pid = agent.child.id();
    let client = agent.client();
    let value = |n: usize| vec![b'a' + (n % 26) as u8; 500 * 1024];
    client.put("/v1/kv/small", b"kept".to_vec()).await.unwrap();
    client.put("/v1/kv/big", value(0)).await.unwrap();
    let stored = value_file_bytes(pid, &data_dir);
    assert!(
        stored >= 500 * 1024 + 4,
        "values are not in a file in the data dir ({stored} bytes)"
    );

    // 200 overwrites write ~100 MB; past 64 MiB of garbage the live values move to a fresh
    // file and the old one goes.
    for n in 1..=200 {
        let response = client.put("/v1/kv/big", value(n)).await.unwrap();
        assert_eq!(json(&response), json!(true));
    }
    eventually("old value files to go", Duration::from_secs(10), || {
        let stored = value_file_bytes(pid, &data_dir);
        async move { (stored < 70 * 1024 * 1024).then_some(()) }
    })
    .await;
    let big = client.get("/v1/kv/big?raw").await.unwrap();
    assert_eq!(big.body, value(200));
    let small = client.get("/v1/kv/small?raw").await.unwrap();
    assert_eq!(small.body, b"kept".to_vec());

    // The file is a cache: after a restart the values come back from the snapshot and log.
    agent.signal("INT");
    assert_eq!(agent.wait_exit(Duration::from_secs(20)).await, Some(0));
    let agent = Agent::start(persistent(&data_dir)).await;
    let client = agent.client();
    let big = client.get("/v1/kv/big?raw").await.unwrap();
    assert_eq!(big.body, value(200));
    let pid = agent.child.id();
    assert!(value_file_bytes(pid, &data_dir) >= 500 * 1024 + 4);
}
