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
    // One append per run, data and index together, so a reader that sees a run's data also
    // sees its index line (two appends raced the run count below).
    let handler = format!(
        "data=$(cat); printf '%s\\nindex=%s\\n' \"$data\" \"$CONSUL_INDEX\" >> {0}",
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

/// A watch from the agent's config with an HTTP handler: each change of the key is POSTed,
/// with `X-Consul-Index` and the configured headers, to an endpoint the test serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_configured_watch_calls_its_http_handler() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let received = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let seen = received.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let mut request = Vec::new();
                let mut buffer = [0u8; 4096];
                // Read until the body (its Content-Length) is complete.
                loop {
                    let Ok(n) = socket.read(&mut buffer).await else {
                        return;
                    };
                    if n == 0 {
                        return;
                    }
                    request.extend_from_slice(&buffer[..n]);
                    let text = String::from_utf8_lossy(&request).to_string();
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let length = head
                            .lines()
                            .find_map(|line| {
                                let (name, value) = line.split_once(':')?;
                                name.eq_ignore_ascii_case("content-length")
                                    .then(|| value.trim().parse::<usize>().ok())?
                            })
                            .unwrap_or(0);
                        if body.len() >= length {
                            seen.lock().unwrap().push(text);
                            let _ = socket
                                .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n")
                                .await;
                            return;
                        }
                    }
                }
            });
        }
    });
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("watch.json");
    let definition = serde_json::json!({"watches": [{
        "type": "key",
        "key": "app/flag",
        "handler_type": "http",
        "http_handler_config": {
            "path": format!("http://127.0.0.1:{port}/hook"),
            "method": "POST",
            "header": {"X-Team": ["mesh"]},
            "timeout": "5s",
        },
    }]});
    std::fs::write(&config, definition.to_string()).unwrap();
    let agent = Agent::start(AgentOptions {
        extra_args: vec!["-config-file".into(), config.display().to_string()],
        ..AgentOptions::default()
    })
    .await;
    let put = agent
        .client()
        .put("/v1/kv/app/flag", b"on".to_vec())
        .await
        .unwrap();
    assert_eq!(put.text(), "true");
    let request = eventually(
        "the handler to get the key",
        Duration::from_secs(20),
        || async {
            let requests = received.lock().unwrap().clone();
            requests
                .into_iter()
                .find(|request| request.contains("\"Key\":\"app/flag\""))
        },
    )
    .await;
    assert!(request.starts_with("POST /hook HTTP/1.1"), "{request}");
    let lower = request.to_ascii_lowercase();
    assert!(lower.contains("x-team: mesh"), "{request}");
    assert!(lower.contains("x-consul-index: "), "{request}");
    assert!(request.contains("\"Value\":\"b24=\""), "{request}");
}
