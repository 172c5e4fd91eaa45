//! Agent lifecycle: dev mode's temporary data dir, clean shutdown on signals and on leave,
//! config files with unknown keys, refusing bad config, and refusing a corrupt data dir.

use std::time::Duration;

use crate::support::{cli, json, Agent, AgentOptions, BINARY};

fn dev_data_dir(log: &str) -> std::path::PathBuf {
    let line = log
        .lines()
        .find(|line| line.contains("agent started"))
        .expect("started line");
    let start = line.find("data_dir=").expect("data_dir field") + "data_dir=".len();
    std::path::PathBuf::from(line[start..].split_whitespace().next().unwrap())
}

#[tokio::test]
async fn dev_agent_serves_and_removes_its_temporary_data_dir_on_sigterm() {
    let mut agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    assert_eq!(
        client.put("/v1/kv/x", b"1".to_vec()).await.unwrap().status,
        200
    );
    let data_dir = dev_data_dir(&agent.log());
    assert!(data_dir.join("raft").exists());
    let members = json(&client.get("/v1/agent/members").await.unwrap());
    assert_eq!(members[0]["Name"], "test-node");
    assert_eq!(members[0]["Tags"]["role"], "consul");
    // Segments, as in Consul's community edition: the default and `_all` list every member,
    // another is an error.
    for segment in ["", "_all"] {
        let listed = json(
            &client
                .get(&format!("/v1/agent/members?segment={segment}"))
                .await
                .unwrap(),
        );
        assert_eq!(listed, members);
    }
    let other = client.get("/v1/agent/members?segment=alpha").await.unwrap();
    assert_eq!(
        (other.status.as_u16(), other.text().trim()),
        (
            500,
            "Network segments are not supported in this version of Consul"
        )
    );
    let wan = client
        .get("/v1/agent/members?wan&segment=alpha")
        .await
        .unwrap();
    assert_eq!(
        (wan.status.as_u16(), wan.text().trim()),
        (400, "Cannot provide a segment with wan=true")
    );
    let own = json(&client.get("/v1/agent/self").await.unwrap());
    assert_eq!(own["Config"]["NodeName"], "test-node");
    assert_eq!(own["Config"]["Datacenter"], "dc1");
    assert_eq!(own["Config"]["Server"], true);
    let version = json(&client.get("/v1/agent/version").await.unwrap());
    assert!(version["HumanVersion"]
        .as_str()
        .unwrap()
        .contains("concord"));
    let peers = json(&client.get("/v1/status/peers").await.unwrap());
    assert_eq!(peers.as_array().unwrap().len(), 1);

    agent.signal("TERM");
    assert_eq!(
        agent.wait_exit(Duration::from_secs(20)).await,
        Some(0),
        "{}",
        agent.log()
    );
    assert!(
        !data_dir.exists(),
        "dev data dir {} survived",
        data_dir.display()
    );
    assert!(agent.log().contains("shutdown complete"));
}

#[tokio::test]
async fn leave_shuts_the_agent_down() {
    let mut agent = Agent::start(AgentOptions::default()).await;
    let (code, stdout, stderr) = cli(&agent, &["leave"], None);
    assert_eq!(code, 0, "{stderr}");
    assert!(stdout.contains("Graceful leave complete"));
    assert_eq!(agent.wait_exit(Duration::from_secs(20)).await, Some(0));
}

#[tokio::test]
async fn config_dir_is_loaded_and_unknown_keys_are_named() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("a.json"),
        r#"{"datacenter": "east", "node_meta": {"team": "core"}, "no_such_key": 1}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("b.hcl"), "node_meta { zone = \"z1\" }\n").unwrap();
    let agent = Agent::start(AgentOptions {
        extra_args: vec!["-config-dir".into(), dir.path().display().to_string()],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();
    let node = json(&client.get("/v1/catalog/node/test-node").await.unwrap());
    assert_eq!(node["Node"]["Datacenter"], "east");
    assert_eq!(node["Node"]["Meta"]["team"], "core");
    assert_eq!(node["Node"]["Meta"]["zone"], "z1");
    let log = agent.log();
    assert!(
        log.contains("a.json") && log.contains("no_such_key"),
        "{log}"
    );
    assert_eq!(
        json(&client.get("/v1/catalog/datacenters").await.unwrap()),
        serde_json::json!(["east"])
    );
    let wrong_dc = client.get("/v1/kv/x?dc=dc1").await.unwrap();
    assert_eq!(wrong_dc.status, 500);
}

#[tokio::test]
async fn agent_self_hides_secrets_in_its_debug_config() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            "node_meta {\n  rack = \"r1\"\n  api_token = \"meta-s3cret\"\n}\n".into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    let own = json(&agent.client().get("/v1/agent/self").await.unwrap());
    let debug = &own["DebugConfig"];
    // No runtime-config field is a secret yet; a secret-named key in a free-form map shows
    // the rule at work. Node meta itself is public (the catalog and `Meta` show it, as in
    // Consul), so only the DebugConfig is checked.
    assert!(!debug.to_string().contains("meta-s3cret"), "{debug}");
    assert_eq!(debug["NodeMeta"]["api_token"], "hidden");
    assert_eq!(debug["NodeMeta"]["rack"], "r1");
    assert_eq!(debug["NodeName"], "test-node");
    assert_eq!(debug["CaConfig"]["PrivateKeyType"], "ec");
}

fn run_agent(args: &[&str]) -> (i32, String) {
    let output = std::process::Command::new(BINARY)
        .arg("agent")
        .args(args)
        .output()
        .expect("run agent");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.code().unwrap_or(-1), text)
}

#[test]
fn invalid_config_refuses_to_start_naming_the_problem() {
    let (code, text) = run_agent(&["-server"]);
    assert_ne!(code, 0);
    assert!(text.contains("data_dir"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.json");
    std::fs::write(&bad, r#"{"ports": {"http": "eighty"}}"#).unwrap();
    let (code, text) = run_agent(&["-dev", "-config-file", bad.to_str().unwrap()]);
    assert_ne!(code, 0);
    assert!(text.contains("bad.json"), "{text}");

    let (code, text) = run_agent(&["-dev", "-hcl", "log_level = \"loud\""]);
    assert_ne!(code, 0);
    assert!(text.contains("log_level"), "{text}");
}

/// Options for a durable agent on `data_dir`.
fn durable(data_dir: &std::path::Path) -> AgentOptions {
    AgentOptions {
        dev: false,
        data_dir: Some(data_dir.to_path_buf()),
        ..AgentOptions::default()
    }
}

/// Starts a durable agent on `data_dir`, writes `count` keys, and stops it cleanly.
async fn write_and_stop(data_dir: &std::path::Path, count: usize, size: usize) {
    let mut agent = Agent::start(durable(data_dir)).await;
    let client = agent.client();
    for n in 0..count {
        let response = client
            .put(&format!("/v1/kv/k{n}"), vec![b'v'; size])
            .await
            .unwrap();
        assert_eq!(response.status, 200);
    }
    agent.signal("TERM");
    assert_eq!(agent.wait_exit(Duration::from_secs(20)).await, Some(0));
}

#[tokio::test]
async fn corrupt_data_dir_refuses_to_start_and_is_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let options = || durable(&data_dir);
    write_and_stop(&data_dir, 20, 100).await;

    // A damaged node-id file.
    let node_id = data_dir.join("node-id");
    let original = std::fs::read(&node_id).unwrap();
    std::fs::write(&node_id, b"garbage").unwrap();
    let mut agent = Agent::spawn(options());
    assert_ne!(agent.wait_exit(Duration::from_secs(20)).await, Some(0));
    assert!(agent.log().contains("node-id"), "{}", agent.log());
    assert_eq!(
        std::fs::read(&node_id).unwrap(),
        b"garbage",
        "the file was reset"
    );
    std::fs::write(&node_id, original).unwrap();

    // Damaged Raft log files: overwrite the middle of every segment.
    let log_dir = data_dir.join("raft").join("wal");
    for entry in walk(&log_dir) {
        let mut bytes = std::fs::read(&entry).unwrap();
        if bytes.len() > 64 {
            let middle = bytes.len() / 2;
            let end = (middle + 4096).min(bytes.len());
            bytes[middle..end].iter_mut().for_each(|byte| *byte ^= 0xA5);
            std::fs::write(&entry, &bytes).unwrap();
        }
    }
    let mut agent = Agent::spawn(options());
    let code = agent.wait_exit(Duration::from_secs(20)).await;
    assert_ne!(
        code,
        Some(0),
        "started on a corrupt database:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(log.contains("wal") && log.contains("damaged"), "{log}");
}

fn walk(path: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(path).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

#[tokio::test]
async fn truncated_log_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    write_and_stop(&data_dir, 50, 200).await;

    // Lose the second half of every log segment, as a bad copy or a full disk would.
    for segment in walk(&data_dir.join("raft").join("wal")) {
        let length = std::fs::metadata(&segment).unwrap().len();
        let file = std::fs::OpenOptions::new()
            .write(true)
            .open(&segment)
            .unwrap();
        file.set_len(length / 2).unwrap();
    }
    let mut agent = Agent::spawn(durable(&data_dir));
    let code = agent.wait_exit(Duration::from_secs(20)).await;
    assert_ne!(
        code,
        Some(0),
        "started on a truncated log:\n{}",
        agent.log()
    );
    let log = agent.log();
    assert!(
        log.contains("wal") && log.contains("acknowledged writes"),
        "{log}"
    );
}

#[tokio::test]
async fn monitor_streams_log_lines_over_http_and_the_cli() {
    use std::io::{BufRead, BufReader};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let agent = Agent::start(AgentOptions::default()).await;

    let mut stream = tokio::net::TcpStream::connect(agent.address())
        .await
        .unwrap();
    stream
        .write_all(b"GET /v1/agent/monitor?loglevel=info HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut cli = std::process::Command::new(BINARY)
        .args(["monitor", "-log-level=info"])
        .env("CONSUL_HTTP_ADDR", agent.address())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let cli_lines = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    {
        let stdout = cli.stdout.take().unwrap();
        let cli_lines = cli_lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                cli_lines.lock().unwrap().push_str(&(line + "\n"));
            }
        });
    }

    // Reloads log at info; keep triggering until both streams have seen one (the CLI may
    // connect a moment later than the first reload).
    let client = agent.client();
    let mut seen = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        client.put("/v1/agent/reload", Vec::new()).await.unwrap();
        let mut buffer = [0u8; 4096];
        if let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), stream.read(&mut buffer)).await
        {
            seen.push_str(&String::from_utf8_lossy(&buffer[..n]));
        }
        let cli_saw = cli_lines.lock().unwrap().contains("configuration reloaded");
        if seen.contains("configuration reloaded") && cli_saw {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "monitor saw: {seen}\ncli saw: {}",
            cli_lines.lock().unwrap()
        );
    }
    assert!(seen.starts_with("HTTP/1.1 200"), "{seen}");
    assert!(seen.contains("[INFO]"), "{seen}");
    let _ = cli.kill();
    let _ = cli.wait();

    let bad = client.get("/v1/agent/monitor?loglevel=loud").await.unwrap();
    assert_eq!(bad.status, 400);
    let join = client
        .put("/v1/agent/join/10.0.0.2", Vec::new())
        .await
        .unwrap();
    assert_eq!(join.status, 500);
    assert!(
        join.text()
            .contains("Failed to join 10.0.0.2: no member answered"),
        "{}",
        join.text()
    );
}
