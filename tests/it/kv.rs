//! KV semantics over real HTTP: put/get, recurse, keys with separator, flags, CAS, delete, and
//! bad input answered with Consul's status codes without changing anything.

use base64::Engine;

use crate::support::{header, json, Agent, AgentOptions};

fn b64(text: &str) -> String {
    base64::engine::general_purpose::STANDARD.encode(text)
}

#[tokio::test]
async fn put_get_recurse_keys_flags_and_delete() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();

    let missing = client.get("/v1/kv/app/missing").await.unwrap();
    assert_eq!(missing.status, 404);
    assert!(missing.body.is_empty());
    assert_ne!(header(&missing, "X-Consul-Index"), "0");

    for (key, value) in [
        ("app/a", "1"),
        ("app/b/c", "2"),
        ("app/b/d", "3"),
        ("other", "4"),
    ] {
        let response = client
            .put(&format!("/v1/kv/{key}"), value.into())
            .await
            .unwrap();
        assert_eq!(response.status, 200);
        assert_eq!(json(&response), serde_json::json!(true));
    }
    let flagged = client
        .put("/v1/kv/app/a?flags=42", b"1".to_vec())
        .await
        .unwrap();
    assert_eq!(json(&flagged), serde_json::json!(true));

    let single = client.get("/v1/kv/app/a").await.unwrap();
    let pair = &json(&single)[0];
    assert_eq!(pair["Key"], "app/a");
    assert_eq!(pair["Value"], b64("1"));
    assert_eq!(pair["Flags"], 42);
    assert_eq!(pair["LockIndex"], 0);
    assert!(pair["CreateIndex"].as_u64().unwrap() < pair["ModifyIndex"].as_u64().unwrap());
    assert!(pair.get("Session").is_none());
    assert_eq!(
        header(&single, "X-Consul-Index"),
        pair["ModifyIndex"].to_string()
    );
    assert_eq!(header(&single, "X-Consul-KnownLeader"), "true");
    assert_eq!(header(&single, "X-Consul-Effective-Consistency"), "leader");

    // A PUT without ?flags stores 0, as Consul does.
    client.put("/v1/kv/app/a", b"1".to_vec()).await.unwrap();
    assert_eq!(
        json(&client.get("/v1/kv/app/a").await.unwrap())[0]["Flags"],
        0
    );

    let raw = client.get("/v1/kv/app/b/c?raw").await.unwrap();
    assert_eq!(&raw.body[..], b"2");
    assert_eq!(header(&raw, "content-type"), "text/plain");

    let recurse = json(&client.get("/v1/kv/app/?recurse").await.unwrap());
    let keys: Vec<&str> = recurse
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["Key"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["app/a", "app/b/c", "app/b/d"]);

    let listed = json(&client.get("/v1/kv/app/?keys").await.unwrap());
    assert_eq!(listed, serde_json::json!(["app/a", "app/b/c", "app/b/d"]));
    let folded = json(&client.get("/v1/kv/app/?keys&separator=/").await.unwrap());
    assert_eq!(folded, serde_json::json!(["app/a", "app/b/"]));
    let root = json(&client.get("/v1/kv/?keys&separator=/").await.unwrap());
    assert_eq!(root, serde_json::json!(["app/", "other"]));

    // An empty value is stored and returned as null.
    client.put("/v1/kv/empty", Vec::new()).await.unwrap();
    assert_eq!(
        json(&client.get("/v1/kv/empty").await.unwrap())[0]["Value"],
        serde_json::Value::Null
    );

    let deleted = client.delete("/v1/kv/app/b?recurse").await.unwrap();
    assert_eq!(json(&deleted), serde_json::json!(true));
    let after = json(&client.get("/v1/kv/app?recurse").await.unwrap());
    assert_eq!(after.as_array().unwrap().len(), 1);
    client.delete("/v1/kv/other").await.unwrap();
    assert_eq!(client.get("/v1/kv/other").await.unwrap().status, 404);
    assert_eq!(
        client.get("/v1/kv/nothing/?recurse").await.unwrap().status,
        404
    );
}

#[tokio::test]
async fn cas_writes_and_deletes() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let created = client
        .put("/v1/kv/lock?cas=0", b"first".to_vec())
        .await
        .unwrap();
    assert_eq!(json(&created), serde_json::json!(true));
    let again = client
        .put("/v1/kv/lock?cas=0", b"second".to_vec())
        .await
        .unwrap();
    assert_eq!(json(&again), serde_json::json!(false));

    let index = json(&client.get("/v1/kv/lock").await.unwrap())[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    let stale = client
        .put(&format!("/v1/kv/lock?cas={}", index + 100), b"x".to_vec())
        .await
        .unwrap();
    assert_eq!(json(&stale), serde_json::json!(false));
    let fresh = client
        .put(&format!("/v1/kv/lock?cas={index}"), b"third".to_vec())
        .await
        .unwrap();
    assert_eq!(json(&fresh), serde_json::json!(true));
    assert_eq!(
        &client.get("/v1/kv/lock?raw").await.unwrap().body[..],
        b"third"
    );

    let new_index = json(&client.get("/v1/kv/lock").await.unwrap())[0]["ModifyIndex"]
        .as_u64()
        .unwrap();
    let wrong = client
        .delete(&format!("/v1/kv/lock?cas={index}"))
        .await
        .unwrap();
    assert_eq!(json(&wrong), serde_json::json!(false));
    assert_eq!(client.get("/v1/kv/lock").await.unwrap().status, 200);
    let right = client
        .delete(&format!("/v1/kv/lock?cas={new_index}"))
        .await
        .unwrap();
    assert_eq!(json(&right), serde_json::json!(true));
    assert_eq!(client.get("/v1/kv/lock").await.unwrap().status, 404);
}

#[tokio::test]
async fn bad_input_gets_consul_status_codes_and_changes_nothing() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec!["-hcl".into(), "limits { kv_max_value_size = 1024 }".into()],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();
    client.put("/v1/kv/keep", b"v".to_vec()).await.unwrap();

    let too_big = client.put("/v1/kv/big", vec![b'x'; 2048]).await.unwrap();
    assert_eq!(too_big.status, 413);
    assert!(
        too_big.text().contains("kv_max_value_size"),
        "{}",
        too_big.text()
    );
    assert!(too_big.text().contains("1024"), "{}", too_big.text());
    assert_eq!(client.get("/v1/kv/big").await.unwrap().status, 404);
    // Exactly the limit is accepted.
    assert_eq!(
        client
            .put("/v1/kv/big", vec![b'x'; 1024])
            .await
            .unwrap()
            .status,
        200
    );

    let cases: Vec<(&str, &str, u16, &str)> = vec![
        ("GET", "/v1/kv/keep?index=abc", 400, "Invalid index"),
        (
            "GET",
            "/v1/kv/keep?index=1&wait=forever",
            400,
            "Invalid wait time",
        ),
        (
            "GET",
            "/v1/kv/keep?stale&consistent",
            400,
            "conflicting semantics",
        ),
        ("GET", "/v1/kv/keep?dc=mars", 500, "No path to datacenter"),
        ("PUT", "/v1/kv//leading", 400, "must not begin with a '/'"),
        ("PUT", "/v1/kv/nul%00byte", 400, "NUL"),
        ("PUT", "/v1/kv/", 400, "Missing key name"),
        // Consul passes Go's strconv error through as a 500.
        (
            "PUT",
            "/v1/kv/keep?flags=notanumber",
            500,
            "strconv.ParseUint: parsing \"notanumber\"",
        ),
        (
            "PUT",
            "/v1/kv/keep?cas=1&acquire=abc",
            400,
            "mutually exclusive",
        ),
        ("PUT", "/v1/kv/keep?acquire=abc", 500, "Invalid session"),
        (
            "GET",
            "/v1/catalog/nodes?filter=Node%20%3D%3D",
            500,
            "boolean expression",
        ),
    ];
    for (method, path, status, message) in cases {
        let response = client
            .request(method.parse().unwrap(), path, Some(b"changed".to_vec()))
            .await
            .unwrap();
        assert_eq!(
            response.status,
            status,
            "{method} {path}: {}",
            response.text()
        );
        assert!(
            response.text().contains(message),
            "{method} {path}: {}",
            response.text()
        );
    }
    assert_eq!(&client.get("/v1/kv/keep?raw").await.unwrap().body[..], b"v");

    let not_allowed = client
        .request("POST".parse().unwrap(), "/v1/kv/keep", None)
        .await
        .unwrap();
    assert_eq!(not_allowed.status, 405);
    let allow = header(&not_allowed, "allow");
    assert!(
        allow.contains("GET") && allow.contains("PUT") && allow.contains("DELETE"),
        "{allow}"
    );
    assert_eq!(client.get("/v1/no/such/route").await.unwrap().status, 404);
}

#[tokio::test]
async fn consistent_and_stale_reads_report_their_mode() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    client.put("/v1/kv/k", b"v".to_vec()).await.unwrap();
    let consistent = client.get("/v1/kv/k?consistent").await.unwrap();
    assert_eq!(consistent.status, 200);
    assert_eq!(
        header(&consistent, "X-Consul-Effective-Consistency"),
        "consistent"
    );
    let stale = client.get("/v1/kv/k?stale").await.unwrap();
    assert_eq!(header(&stale, "X-Consul-Effective-Consistency"), "stale");
    let pretty = client.get("/v1/kv/k?pretty").await.unwrap();
    assert!(pretty.text().contains("\n  {"), "{}", pretty.text());
}

#[tokio::test]
async fn slow_request_body_times_out_with_408() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            "limits { http_body_timeout = \"300ms\" }".into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    let mut stream = tokio::net::TcpStream::connect(agent.address())
        .await
        .unwrap();
    let request = "PUT /v1/kv/slow HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\npartial";
    stream.write_all(request.as_bytes()).await.unwrap();
    // The body never completes; the agent must answer on its own, well before this limit.
    let mut answer = Vec::new();
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), async {
        let mut buffer = [0u8; 1024];
        loop {
            let n = stream.read(&mut buffer).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buffer[..n]);
            if answer.windows(4).any(|w| w == b"\r\n\r\n") {
                break;
            }
        }
    })
    .await;
    assert!(read.is_ok(), "agent kept waiting for the body");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(agent.client().get("/v1/kv/slow").await.unwrap().status, 404);
}
