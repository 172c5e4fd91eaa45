//! The CLI against a real agent: kv get/put/delete/export/import and catalog commands with
//! Go-style flags, Consul's output and exit codes.

use crate::support::{cli, json, Agent, AgentOptions};

#[tokio::test]
async fn kv_commands_round_trip() {
    let agent = Agent::start(AgentOptions::default()).await;

    let (code, stdout, _) = cli(&agent, &["kv", "put", "app/name", "concord"], None);
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "Success! Data written to: app/name");
    let (code, stdout, _) = cli(&agent, &["kv", "get", "app/name"], None);
    assert_eq!((code, stdout.as_str()), (0, "concord\n"));

    // -flag=value, -flag value and --flag all work; data from stdin with "-".
    let (code, _, stderr) = cli(
        &agent,
        &["kv", "put", "-flags=9", "app/stdin", "-"],
        Some(b"from stdin"),
    );
    assert_eq!(code, 0, "{stderr}");
    let (_, stdout, _) = cli(&agent, &["kv", "get", "--detailed", "app/stdin"], None);
    assert!(
        stdout.contains("Flags        9")
            || stdout
                .lines()
                .any(|l| l.starts_with("Flags") && l.ends_with('9')),
        "{stdout}"
    );
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Value") && l.ends_with("from stdin")),
        "{stdout}"
    );

    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), "from file").unwrap();
    let at_file = format!("@{}", file.path().display());
    cli(&agent, &["kv", "put", "app/file", &at_file], None);
    let (_, stdout, _) = cli(&agent, &["kv", "get", "app/file"], None);
    assert_eq!(stdout, "from file\n");
    cli(&agent, &["kv", "put", "-base64", "app/b64", "aGk="], None);
    let (_, stdout, _) = cli(&agent, &["kv", "get", "app/b64"], None);
    assert_eq!(stdout, "hi\n");

    let (_, stdout, _) = cli(&agent, &["kv", "get", "-recurse", "app/"], None);
    assert_eq!(
        stdout,
        "app/b64:hi\napp/file:from file\napp/name:concord\napp/stdin:from stdin\n"
    );
    cli(&agent, &["kv", "put", "app/deep/x", "1"], None);
    let (_, stdout, _) = cli(&agent, &["kv", "get", "-keys", "app/"], None);
    assert_eq!(
        stdout,
        "app/b64\napp/deep/\napp/file\napp/name\napp/stdin\n"
    );

    // CAS through the CLI.
    let index =
        json(&agent.client().get("/v1/kv/app/name").await.unwrap())[0]["ModifyIndex"].to_string();
    let (code, _, stderr) = cli(
        &agent,
        &["kv", "put", "-cas", "-modify-index", "1", "app/name", "x"],
        None,
    );
    assert_eq!(code, 1);
    assert!(stderr.contains("CAS failed"), "{stderr}");
    let (code, _, _) = cli(
        &agent,
        &[
            "kv",
            "put",
            "-cas",
            &format!("-modify-index={index}"),
            "app/name",
            "y",
        ],
        None,
    );
    assert_eq!(code, 0);

    let (code, export, _) = cli(&agent, &["kv", "export", "app/"], None);
    assert_eq!(code, 0);
    let exported: serde_json::Value = serde_json::from_str(&export).unwrap();
    assert_eq!(exported.as_array().unwrap().len(), 5);
    assert_eq!(exported[0]["key"], "app/b64");
    assert_eq!(exported[0]["value"], "aGk=");

    let (code, stdout, _) = cli(&agent, &["kv", "delete", "-recurse", "app/"], None);
    assert_eq!(code, 0);
    assert!(stdout.contains("Deleted keys with prefix: app/"));
    let (code, _, stderr) = cli(&agent, &["kv", "get", "app/name"], None);
    assert_eq!(code, 1);
    assert!(
        stderr.contains("Error! No key exists at: app/name"),
        "{stderr}"
    );

    let (code, stdout, _) = cli(&agent, &["kv", "import", "-"], Some(export.as_bytes()));
    assert_eq!(code, 0);
    assert_eq!(
        stdout
            .lines()
            .filter(|l| l.starts_with("Imported: "))
            .count(),
        5
    );
    let (_, stdout, _) = cli(&agent, &["kv", "get", "app/stdin"], None);
    assert_eq!(stdout, "from stdin\n");
    let (_, stdout, _) = cli(&agent, &["kv", "get", "-detailed", "app/stdin"], None);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("Flags") && l.ends_with('9')),
        "flags survive export/import: {stdout}"
    );

    let (code, stdout, _) = cli(&agent, &["kv", "delete", "app/stdin"], None);
    assert_eq!(
        (code, stdout.trim()),
        (0, "Success! Deleted key: app/stdin")
    );
}

#[tokio::test]
async fn catalog_members_and_version_commands() {
    let agent = Agent::start(AgentOptions::default()).await;
    let registration = serde_json::json!({
        "Node": "web-host", "Address": "10.0.0.5",
        "Service": {"Service": "web", "Tags": ["b", "a"]}
    });
    agent
        .client()
        .put("/v1/catalog/register", registration.to_string().into())
        .await
        .unwrap();

    let (code, stdout, _) = cli(&agent, &["catalog", "datacenters"], None);
    assert_eq!((code, stdout.as_str()), (0, "dc1\n"));
    let (_, stdout, _) = cli(&agent, &["catalog", "services"], None);
    assert_eq!(stdout, "consul\nweb\n");
    let (_, stdout, _) = cli(&agent, &["catalog", "services", "-tags"], None);
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("web") && l.ends_with("a,b")),
        "{stdout}"
    );
    let (_, stdout, _) = cli(&agent, &["catalog", "nodes"], None);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(
        lines[0].starts_with("Node") && lines[0].contains("Address") && lines[0].contains("DC")
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("web-host") && l.contains("10.0.0.5")),
        "{stdout}"
    );
    let (_, stdout, _) = cli(&agent, &["catalog", "nodes", "-service=web"], None);
    assert_eq!(stdout.lines().count(), 2, "{stdout}");

    let (code, stdout, _) = cli(&agent, &["members"], None);
    assert_eq!(code, 0);
    assert!(
        stdout.lines().nth(1).unwrap().starts_with("test-node"),
        "{stdout}"
    );
    assert!(
        stdout.contains("alive") && stdout.contains("server"),
        "{stdout}"
    );

    let (code, stdout, _) = cli(&agent, &["version"], None);
    assert_eq!(code, 0);
    assert!(stdout.starts_with("Consul v1."), "{stdout}");
    let (_, stdout, _) = cli(&agent, &["version", "-format=json"], None);
    assert!(serde_json::from_str::<serde_json::Value>(&stdout).unwrap()["Version"].is_string());
}

#[tokio::test]
async fn client_errors_exit_non_zero_with_a_message() {
    let agent = Agent::start(AgentOptions::default()).await;
    let nowhere = format!("127.0.0.1:{}", crate::support::free_port());
    let (code, _, stderr) = cli(&agent, &["kv", "get", "-http-addr", &nowhere, "k"], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("Error querying agent"), "{stderr}");
    let (code, _, stderr) = cli(&agent, &["kv", "put", "-flags", "x", "k", "v"], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("-flags"), "{stderr}");
    let (code, _, stderr) = cli(&agent, &["kv", "get", "-no-such-flag", "k"], None);
    assert_ne!(code, 0);
    assert!(stderr.contains("no-such-flag"), "{stderr}");
}
