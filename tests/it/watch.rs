//! `concord watch` against a real agent: the handler runs with the new data on each change of
//! what it watches, and only then.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::support::{eventually, Agent, AgentOptions, BINARY};

#[tokio::test]
async fn watch_runs_its_handler_on_each_change_of_a_key() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal");
    let handler = format!(
        "cat >> {0}; echo \"index=$CONSUL_INDEX\" >> {0}",
        journal.display()
    );
    let mut watch = Command::new(BINARY)
        .args(["watch", "-type", "key", "-key", "app/config", &handler])
        .env("CONSUL_HTTP_ADDR", agent.address())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn watch");
    let read = || std::fs::read_to_string(&journal).unwrap_or_default();
    // First run: the key does not exist yet, so the handler gets null.
    eventually("the first handler run", Duration::from_secs(20), || async {
        read().contains("null").then_some(())
    })
    .await;
    for (value, encoded) in [("one", "b25l"), ("two", "dHdv")] {
        client.put("/v1/kv/app/config", value.into()).await.unwrap();
        eventually(
            &format!("the handler to see {value}"),
            Duration::from_secs(20),
            || async { read().contains(encoded).then_some(()) },
        )
        .await;
    }
    // A write to another key does not run the handler.
    let runs_before = read().matches("index=").count();
    client.put("/v1/kv/app/other", b"x".to_vec()).await.unwrap();
    client
        .put("/v1/kv/app/config", b"three".to_vec())
        .await
        .unwrap();
    eventually(
        "the handler to see three",
        Duration::from_secs(20),
        || async { read().contains("dGhyZWU=").then_some(()) },
    )
    .await;
    assert_eq!(
        read().matches("index=").count(),
        runs_before + 1,
        "{}",
        read()
    );
    let _ = watch.kill();
    let _ = watch.wait();

    // Without a handler, watch prints the current data once and exits.
    let output = Command::new(BINARY)
        .args(["watch", "-type", "key", "-key", "app/config"])
        .env("CONSUL_HTTP_ADDR", agent.address())
        .output()
        .unwrap();
    assert!(output.status.success());
    let printed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(printed["Value"], "dGhyZWU=");
}
