//! Agent services and checks end to end: definitions from config files and the agent API,
//! check runners against real servers and scripts, anti-entropy repairing the catalog, and the
//! health endpoints.

use std::time::Duration;

use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::support::{eventually, json, Agent, AgentOptions};

/// A tiny HTTP server answering 200 to everything until the task is aborted.
async fn health_server() -> (u16, tokio::task::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let task = tokio::spawn(async move {
        loop {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buffer = [0u8; 1024];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(
                        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nConnection: close\r\n\r\nok",
                    )
                    .await;
            });
        }
    });
    (port, task)
}

fn with_config(files: &[(&str, String)], extra: &[&str]) -> (tempfile::TempDir, AgentOptions) {
    let dir = tempfile::tempdir().unwrap();
    for (name, text) in files {
        std::fs::write(dir.path().join(name), text).unwrap();
    }
    let mut extra_args = vec!["-config-dir".to_string(), dir.path().display().to_string()];
    extra_args.extend(extra.iter().map(|arg| arg.to_string()));
    (
        dir,
        AgentOptions {
            extra_args,
            ..AgentOptions::default()
        },
    )
}

/// Statuses of one service's instances' checks from `/v1/health/service/:name`.
async fn check_status(agent: &Agent, service: &str, check_id: &str) -> Option<String> {
    let body = json(
        &agent
            .client()
            .get(&format!("/v1/health/service/{service}"))
            .await
            .ok()?,
    );
    body.as_array()?
        .iter()
        .flat_map(|entry| entry["Checks"].as_array().cloned().unwrap_or_default())
        .find(|check| check["CheckID"] == check_id)
        .map(|check| check["Status"].as_str().unwrap_or_default().to_string())
}

#[tokio::test]
async fn config_service_appears_in_catalog_and_health() {
    let (_dir, options) = with_config(
        &[(
            "web.json",
            r#"{"service": {"name": "web", "tags": ["rails"], "port": 80}}"#.into(),
        )],
        &[],
    );
    let agent = Agent::start(options).await;
    let client = agent.client();
    let instances = eventually("web in the catalog", Duration::from_secs(10), || async {
        let body = json(&client.get("/v1/catalog/service/web").await.ok()?);
        (body.as_array()?.len() == 1).then_some(body)
    })
    .await;
    assert_eq!(instances[0]["ServiceTags"], json!(["rails"]));
    assert_eq!(instances[0]["ServicePort"], 80);
    assert_eq!(instances[0]["Node"], "test-node");

    let health = json(&client.get("/v1/health/service/web").await.unwrap());
    let entry = &health[0];
    assert_eq!(entry["Service"]["Service"], "web");
    assert_eq!(entry["Node"]["Node"], "test-node");
    let checks: Vec<&str> = entry["Checks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["CheckID"].as_str().unwrap())
        .collect();
    assert_eq!(
        checks,
        ["serfHealth"],
        "node checks count toward the instance"
    );
    let passing = json(&client.get("/v1/health/service/web?passing").await.unwrap());
    assert_eq!(passing.as_array().unwrap().len(), 1);
    let local = json(&client.get("/v1/agent/services").await.unwrap());
    assert_eq!(local["web"]["Port"], 80);
    // A server's own `consul` service is the catalog's, not the agent API's (as in Consul).
    assert!(local.get("consul").is_none(), "{local}");
    let catalog = json(&client.get("/v1/catalog/service/consul").await.unwrap());
    assert_eq!(catalog[0]["ServiceName"], "consul");
}

#[tokio::test]
async fn http_check_follows_a_real_server_and_gates_passing() {
    let (port, server) = health_server().await;
    let service = json!({"service": {
        "name": "api", "port": port,
        "check": {"id": "api-http", "http": format!("http://127.0.0.1:{port}/health"), "interval": "1s", "timeout": "500ms"}
    }});
    let (_dir, options) = with_config(&[("api.json", service.to_string())], &[]);
    let agent = Agent::start(options).await;
    let client = agent.client();

    eventually(
        "the HTTP check to pass",
        Duration::from_secs(10),
        || async {
            (check_status(&agent, "api", "api-http").await.as_deref() == Some("passing"))
                .then_some(())
        },
    )
    .await;
    let passing = json(&client.get("/v1/health/service/api?passing").await.unwrap());
    assert_eq!(passing.as_array().unwrap().len(), 1);
    let checks = json(&client.get("/v1/agent/checks").await.unwrap());
    assert!(
        checks["api-http"]["Output"]
            .as_str()
            .unwrap()
            .contains("200"),
        "{checks}"
    );
    assert_eq!(checks["api-http"]["Type"], "http");

    server.abort();
    // Critical within about one interval (1s) of the server going away; the deadline leaves
    // room for a loaded CI machine.
    eventually(
        "the HTTP check to go critical",
        Duration::from_secs(5),
        || async {
            (check_status(&agent, "api", "api-http").await.as_deref() == Some("critical"))
                .then_some(())
        },
    )
    .await;
    let passing = json(&client.get("/v1/health/service/api?passing").await.unwrap());
    assert_eq!(passing, json!([]), "a critical instance leaves ?passing");
    let states = json(&client.get("/v1/health/state/critical").await.unwrap());
    assert!(states
        .as_array()
        .unwrap()
        .iter()
        .any(|c| c["CheckID"] == "api-http"));
}

#[tokio::test]
async fn ttl_checks_pass_on_update_and_expire() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let service = json!({"Name": "worker", "Check": {"CheckID": "worker-ttl", "TTL": "1s"}});
    let response = client
        .put("/v1/agent/service/register", service.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());

    let passed = client
        .put("/v1/agent/check/pass/worker-ttl?note=alive", Vec::new())
        .await
        .unwrap();
    assert_eq!(passed.status, 200, "{}", passed.text());
    eventually(
        "the TTL check to pass in the catalog",
        Duration::from_secs(5),
        || async {
            (check_status(&agent, "worker", "worker-ttl")
                .await
                .as_deref()
                == Some("passing"))
            .then_some(())
        },
    )
    .await;
    let checks = json(&client.get("/v1/agent/checks").await.unwrap());
    assert_eq!(checks["worker-ttl"]["Output"], "alive");

    // No further updates: the TTL runs out and the check goes critical.
    eventually(
        "the TTL check to expire",
        Duration::from_secs(5),
        || async {
            (check_status(&agent, "worker", "worker-ttl")
                .await
                .as_deref()
                == Some("critical"))
            .then_some(())
        },
    )
    .await;
    let checks = json(&client.get("/v1/agent/checks").await.unwrap());
    assert_eq!(checks["worker-ttl"]["Output"], "TTL expired");

    let update = json!({"Status": "warning", "Output": "slow"});
    client
        .put(
            "/v1/agent/check/update/worker-ttl",
            update.to_string().into(),
        )
        .await
        .unwrap();
    eventually(
        "the update to reach the catalog",
        Duration::from_secs(5),
        || async {
            (check_status(&agent, "worker", "worker-ttl")
                .await
                .as_deref()
                == Some("warning"))
            .then_some(())
        },
    )
    .await;
    let unknown = client
        .put("/v1/agent/check/pass/nope", Vec::new())
        .await
        .unwrap();
    assert_eq!(unknown.status, 404);
}

#[tokio::test]
async fn script_check_exit_codes_map_to_states() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec!["-hcl".into(), "enable_script_checks = true".into()],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();
    client
        .put(
            "/v1/agent/service/register",
            json!({"Name": "batch"}).to_string().into(),
        )
        .await
        .unwrap();
    for (id, code) in [("exit-0", 0), ("exit-1", 1), ("exit-2", 2)] {
        let check = json!({
            "ID": id, "Name": id, "ServiceID": "batch", "Interval": "1s",
            "Args": ["sh", "-c", format!("echo out-{code}; exit {code}")]
        });
        let response = client
            .put("/v1/agent/check/register", check.to_string().into())
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    for (id, expected) in [
        ("exit-0", "passing"),
        ("exit-1", "warning"),
        ("exit-2", "critical"),
    ] {
        eventually(
            &format!("{id} to be {expected}"),
            Duration::from_secs(10),
            || async {
                let status = check_status(&agent, "batch", id).await;
                (status.as_deref() == Some(expected)).then_some(())
            },
        )
        .await;
    }
    let checks = json(&client.get("/v1/agent/checks").await.unwrap());
    assert!(
        checks["exit-1"]["Output"]
            .as_str()
            .unwrap()
            .contains("out-1"),
        "{checks}"
    );
}

#[tokio::test]
async fn invalid_definitions_are_rejected_with_the_field_named() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let cases = [
        (
            "/v1/agent/service/register",
            json!({"Port": 80}),
            "service name",
        ),
        (
            "/v1/agent/check/register",
            json!({"Name": "c", "HTTP": "http://x"}),
            "Interval",
        ),
        (
            "/v1/agent/check/register",
            json!({"Name": "c", "TCP": "x:1", "Interval": "soon"}),
            "Interval",
        ),
        (
            "/v1/agent/check/register",
            json!({"Name": "c", "Args": ["true"], "Interval": "5s"}),
            "enable_script_checks",
        ),
        (
            "/v1/agent/check/register",
            json!({"Name": "c"}),
            "must define one of",
        ),
        (
            "/v1/agent/check/register",
            json!({"Name": "c", "TTL": "5s", "ServiceID": "ghost"}),
            "ghost",
        ),
    ];
    for (path, body, message) in cases {
        let response = client.put(path, body.to_string().into()).await.unwrap();
        // A check for a service the agent does not have is Consul's 404; a script check while
        // scripts are off is its 500 (the agent's policy refuses it); the rest are 400s.
        let status = match message {
            "ghost" => 404,
            "enable_script_checks" => 500,
            _ => 400,
        };
        assert_eq!(response.status, status, "{body}: {}", response.text());
        assert!(
            response.text().contains(message),
            "{body}: {}",
            response.text()
        );
    }
    assert_eq!(
        json(&client.get("/v1/agent/checks").await.unwrap()),
        json!({})
    );
}

#[test]
fn an_invalid_check_in_a_config_file_stops_the_agent_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("svc.json"),
        r#"{"services": [{"name": "web", "check": {"tcp": "127.0.0.1:1"}}]}"#,
    )
    .unwrap();
    let output = std::process::Command::new(crate::support::BINARY)
        .args(["agent", "-dev", "-config-dir", dir.path().to_str().unwrap()])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    assert!(!output.status.success());
    assert!(
        text.contains("svc.json") && text.contains("services[0]") && text.contains("Interval"),
        "{text}"
    );
}

#[tokio::test]
async fn anti_entropy_repairs_changes_made_behind_the_agents_back() {
    let (_dir, options) = with_config(
        &[(
            "web.json",
            r#"{"service": {"name": "web", "port": 80}}"#.into(),
        )],
        &["-hcl", "ae_interval = \"1s\""],
    );
    let agent = Agent::start(options).await;
    let client = agent.client();
    let web_count = || async {
        let body: Value = json(&client.get("/v1/catalog/service/web").await.ok()?);
        body.as_array().map(Vec::len)
    };
    eventually("web registered", Duration::from_secs(10), || async {
        (web_count().await == Some(1)).then_some(())
    })
    .await;

    // Deregister the agent's own service through the catalog: anti-entropy puts it back.
    let deregister = json!({"Node": "test-node", "ServiceID": "web"});
    client
        .put("/v1/catalog/deregister", deregister.to_string().into())
        .await
        .unwrap();
    eventually("web restored", Duration::from_secs(10), || async {
        (web_count().await == Some(1)).then_some(())
    })
    .await;

    // Register a service on the agent's node that the agent does not know: anti-entropy
    // removes it.
    let rogue =
        json!({"Node": "test-node", "Address": "127.0.0.1", "Service": {"Service": "rogue"}});
    client
        .put("/v1/catalog/register", rogue.to_string().into())
        .await
        .unwrap();
    eventually("rogue removed", Duration::from_secs(10), || async {
        let body = json(&client.get("/v1/catalog/service/rogue").await.ok()?);
        (body == json!([])).then_some(())
    })
    .await;

    // A service removed through the agent leaves the catalog at once.
    client
        .put("/v1/agent/service/deregister/web", Vec::new())
        .await
        .unwrap();
    eventually("web deregistered", Duration::from_secs(10), || async {
        (web_count().await == Some(0)).then_some(())
    })
    .await;
}

#[tokio::test]
async fn agent_health_endpoints_answer_with_consul_status_codes() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let service =
        json!({"Name": "queue", "ID": "queue-1", "Check": {"CheckID": "queue-ttl", "TTL": "30s"}});
    client
        .put("/v1/agent/service/register", service.to_string().into())
        .await
        .unwrap();

    let by_id = client
        .get("/v1/agent/health/service/id/queue-1")
        .await
        .unwrap();
    assert_eq!(by_id.status, 503, "a new TTL check starts critical");
    assert_eq!(json(&by_id)["AggregatedStatus"], "critical");
    client
        .put("/v1/agent/check/warn/queue-ttl", Vec::new())
        .await
        .unwrap();
    let text = client
        .get("/v1/agent/health/service/id/queue-1?format=text")
        .await
        .unwrap();
    assert_eq!(
        (text.status.as_u16(), text.text().as_str()),
        (429, "warning")
    );
    client
        .put("/v1/agent/check/pass/queue-ttl", Vec::new())
        .await
        .unwrap();
    let by_name = client
        .get("/v1/agent/health/service/name/queue")
        .await
        .unwrap();
    assert_eq!(by_name.status, 200);
    let body = json(&by_name);
    assert_eq!(body[0]["Service"]["ID"], "queue-1");
    assert_eq!(body[0]["Checks"][0]["CheckID"], "queue-ttl");
    assert_eq!(
        client
            .get("/v1/agent/health/service/name/nothing")
            .await
            .unwrap()
            .status,
        404
    );
    assert_eq!(
        client
            .get("/v1/agent/health/service/id/nothing")
            .await
            .unwrap()
            .status,
        404
    );
}

#[tokio::test]
async fn maintenance_mode_and_services_cli() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cache.hcl");
    std::fs::write(
        &file,
        "service {\n  name = \"cache\"\n  port = 6379\n  tags = [\"v7\"]\n}\n",
    )
    .unwrap();
    let (code, stdout, stderr) = crate::support::cli(
        &agent,
        &["services", "register", file.to_str().unwrap()],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "Registered service: cache");
    let (code, _, stderr) = crate::support::cli(
        &agent,
        &[
            "services",
            "register",
            "-name=web",
            "-port",
            "8080",
            "-tag",
            "a",
            "-tag",
            "b",
            "-meta",
            "team=core",
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let services = json(&client.get("/v1/agent/services").await.unwrap());
    assert_eq!(services["cache"]["Tags"], json!(["v7"]));
    assert_eq!(services["web"]["Tags"], json!(["a", "b"]));
    assert_eq!(services["web"]["Meta"]["team"], "core");

    // Service maintenance takes the instance out of ?passing; the node's takes everything.
    let (code, stdout, _) = crate::support::cli(
        &agent,
        &["maint", "-enable", "-service", "web", "-reason", "deploy"],
        None,
    );
    assert_eq!(
        (code, stdout.trim()),
        (0, "Service entered maintenance mode: web")
    );
    eventually("web to leave ?passing", Duration::from_secs(10), || async {
        let body = json(&client.get("/v1/health/service/web?passing").await.ok()?);
        (body == json!([])).then_some(())
    })
    .await;
    let health = client.get("/v1/agent/health/service/id/web").await.unwrap();
    assert_eq!(health.status, 503);
    assert_eq!(json(&health)["AggregatedStatus"], "maintenance");
    let (_, listing, _) = crate::support::cli(&agent, &["maint"], None);
    assert!(
        listing.contains("ID:     web") && listing.contains("deploy"),
        "{listing}"
    );

    crate::support::cli(&agent, &["maint", "-enable"], None);
    eventually(
        "cache to leave ?passing",
        Duration::from_secs(10),
        || async {
            let body = json(&client.get("/v1/health/service/cache?passing").await.ok()?);
            (body == json!([])).then_some(())
        },
    )
    .await;
    let checks = json(&client.get("/v1/agent/checks").await.unwrap());
    assert!(checks["_node_maintenance"]["Notes"]
        .as_str()
        .unwrap()
        .contains("no reason was provided"));
    crate::support::cli(&agent, &["maint", "-disable"], None);
    crate::support::cli(&agent, &["maint", "-disable", "-service=web"], None);
    eventually("both back in ?passing", Duration::from_secs(10), || async {
        let cache = json(&client.get("/v1/health/service/cache?passing").await.ok()?);
        let web = json(&client.get("/v1/health/service/web?passing").await.ok()?);
        (cache.as_array()?.len() == 1 && web.as_array()?.len() == 1).then_some(())
    })
    .await;
    let missing = client
        .put("/v1/agent/maintenance", Vec::new())
        .await
        .unwrap();
    assert_eq!(missing.status, 400);

    let (code, stdout, _) = crate::support::cli(
        &agent,
        &["services", "deregister", file.to_str().unwrap()],
        None,
    );
    assert_eq!((code, stdout.trim()), (0, "Deregistered service: cache"));
    let (code, _, _) = crate::support::cli(&agent, &["services", "deregister", "-id", "web"], None);
    assert_eq!(code, 0);
    eventually(
        "both gone from the catalog",
        Duration::from_secs(10),
        || async {
            let services = json(&client.get("/v1/catalog/services").await.ok()?);
            (services.get("web").is_none() && services.get("cache").is_none()).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn reload_applies_config_changes_and_keeps_api_registrations() {
    let dir = tempfile::tempdir().unwrap();
    let config_dir = dir.path().join("config");
    std::fs::create_dir_all(&config_dir).unwrap();
    std::fs::write(
        config_dir.join("a.json"),
        r#"{"service": {"name": "one", "port": 1}}"#,
    )
    .unwrap();
    let agent = Agent::start(AgentOptions {
        extra_args: vec!["-config-dir".into(), config_dir.display().to_string()],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();
    client
        .put(
            "/v1/agent/service/register",
            json!({"Name": "api-made"}).to_string().into(),
        )
        .await
        .unwrap();

    std::fs::write(
        config_dir.join("a.json"),
        r#"{"service": {"name": "one", "port": 11}}"#,
    )
    .unwrap();
    std::fs::write(
        config_dir.join("b.json"),
        r#"{"service": {"name": "two", "port": 2}}"#,
    )
    .unwrap();
    let (code, stdout, stderr) = crate::support::cli(&agent, &["reload"], None);
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "Configuration reload triggered");
    let services = json(&client.get("/v1/agent/services").await.unwrap());
    assert_eq!(services["one"]["Port"], 11);
    assert_eq!(services["two"]["Port"], 2);
    assert!(services.get("api-made").is_some());

    // SIGHUP reloads too: removing a file removes its service.
    std::fs::remove_file(config_dir.join("a.json")).unwrap();
    agent.signal("HUP");
    eventually(
        "one to be removed by SIGHUP",
        Duration::from_secs(10),
        || async {
            let services = json(&client.get("/v1/agent/services").await.ok()?);
            (services.get("one").is_none()).then_some(services)
        },
    )
    .await;
    let services = json(&client.get("/v1/agent/services").await.unwrap());
    assert!(
        services.get("two").is_some() && services.get("api-made").is_some(),
        "{services}"
    );

    // A broken file makes reload fail and changes nothing.
    std::fs::write(config_dir.join("c.json"), r#"{"service": {"port": 3}}"#).unwrap();
    let (code, _, stderr) = crate::support::cli(&agent, &["reload"], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("c.json"), "{stderr}");
    assert!(json(&client.get("/v1/agent/services").await.unwrap())
        .get("two")
        .is_some());
}

#[tokio::test]
async fn api_registrations_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().join("data");
    let options = AgentOptions {
        dev: false,
        data_dir: Some(data_dir.clone()),
        ..AgentOptions::default()
    };
    let mut agent = Agent::start(options.clone()).await;
    let client = agent.client();
    let service = json!({"Name": "kept", "ID": "kept/1", "Port": 9, "Check": {"CheckID": "kept-ttl", "TTL": "30s"}});
    client
        .put("/v1/agent/service/register", service.to_string().into())
        .await
        .unwrap();
    client
        .put(
            "/v1/agent/check/register",
            json!({"Name": "node-ttl", "TTL": "30s"}).to_string().into(),
        )
        .await
        .unwrap();
    client
        .put(
            "/v1/agent/service/register",
            json!({"Name": "dropped"}).to_string().into(),
        )
        .await
        .unwrap();
    client
        .put("/v1/agent/service/deregister/dropped", Vec::new())
        .await
        .unwrap();
    agent.signal("TERM");
    agent.wait_exit(Duration::from_secs(20)).await;

    let agent = Agent::start(options).await;
    let client = agent.client();
    let services = json(&client.get("/v1/agent/services").await.unwrap());
    assert_eq!(services["kept/1"]["Port"], 9, "{services}");
    assert!(services.get("dropped").is_none(), "{services}");
    let checks = json(&client.get("/v1/agent/checks").await.unwrap());
    assert!(
        checks.get("kept-ttl").is_some() && checks.get("node-ttl").is_some(),
        "{checks}"
    );
}

#[tokio::test]
async fn a_service_critical_past_its_limit_is_deregistered() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec!["-hcl".into(), "ae_interval = \"1s\"".into()],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();
    // TTL checks start critical; this one is never updated. Consul's minimum for
    // DeregisterCriticalServiceAfter is one minute, so "30s" means one minute.
    let service =
        json!({"Name": "doomed", "Check": {"TTL": "10s", "DeregisterCriticalServiceAfter": "30s"}});
    client
        .put("/v1/agent/service/register", service.to_string().into())
        .await
        .unwrap();
    let healthy = json!({"Name": "steady", "Check": {"CheckID": "steady-ttl", "TTL": "600s", "DeregisterCriticalServiceAfter": "1m"}});
    client
        .put("/v1/agent/service/register", healthy.to_string().into())
        .await
        .unwrap();
    client
        .put("/v1/agent/check/pass/steady-ttl", Vec::new())
        .await
        .unwrap();
    let registered_at = std::time::Instant::now();
    eventually(
        "doomed to be deregistered",
        Duration::from_secs(120),
        || async {
            let services = json(&client.get("/v1/agent/services").await.ok()?);
            services.get("doomed").is_none().then_some(())
        },
    )
    .await;
    assert!(
        registered_at.elapsed() >= Duration::from_secs(59),
        "reaped before the one-minute floor"
    );
    let services = json(&client.get("/v1/agent/services").await.unwrap());
    assert!(
        services.get("steady").is_some(),
        "a passing service stays: {services}"
    );
    eventually(
        "doomed to leave the catalog",
        Duration::from_secs(10),
        || async {
            let body = json(&client.get("/v1/catalog/service/doomed").await.ok()?);
            (body == json!([])).then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn output_only_changes_wait_for_check_update_interval() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            "enable_script_checks = true\ncheck_update_interval = \"1h\"".into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();
    // The script's output changes on every run; its status stays passing.
    let check = json!({"Name": "clock", "Args": ["sh", "-c", "date +%s%N"], "Interval": "1s"});
    client
        .put("/v1/agent/check/register", check.to_string().into())
        .await
        .unwrap();
    let catalog_output = || async {
        let checks = json(&client.get("/v1/health/node/test-node").await.ok()?);
        let check = checks
            .as_array()?
            .iter()
            .find(|c| c["CheckID"] == "clock")?
            .clone();
        (check["Status"] == "passing")
            .then(|| check["Output"].as_str().unwrap_or_default().to_string())
    };
    let first = eventually(
        "the check to pass in the catalog",
        Duration::from_secs(10),
        catalog_output,
    )
    .await;
    // Locally the output moves on with every run...
    eventually("a newer local output", Duration::from_secs(10), || async {
        let checks = json(&client.get("/v1/agent/checks").await.ok()?);
        (checks["clock"]["Output"].as_str()? != first).then_some(())
    })
    .await;
    // ...but the catalog keeps the synced one until the interval passes.
    assert_eq!(catalog_output().await.as_deref(), Some(first.as_str()));
}

#[tokio::test]
async fn agent_service_supports_hash_blocking() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    client
        .put(
            "/v1/agent/service/register",
            json!({"Name": "hashed", "Port": 1}).to_string().into(),
        )
        .await
        .unwrap();
    let first = client.get("/v1/agent/service/hashed").await.unwrap();
    let hash = crate::support::header(&first, "X-Consul-ContentHash");
    assert!(!hash.is_empty());
    assert_eq!(json(&first)["ContentHash"], hash.as_str());

    // Unchanged: the query waits out its wait and returns the same hash.
    let waited = client
        .get(&format!("/v1/agent/service/hashed?hash={hash}&wait=300ms"))
        .await
        .unwrap();
    assert_eq!(
        crate::support::header(&waited, "X-Consul-ContentHash"),
        hash
    );

    let watcher = agent.client();
    let path = format!("/v1/agent/service/hashed?hash={hash}&wait=60s");
    let blocked = tokio::spawn(async move { watcher.get(&path).await.unwrap() });
    client
        .put(
            "/v1/agent/service/register",
            json!({"Name": "hashed", "Port": 2}).to_string().into(),
        )
        .await
        .unwrap();
    let changed = tokio::time::timeout(Duration::from_secs(10), blocked)
        .await
        .expect("the change woke the query")
        .unwrap();
    assert_eq!(json(&changed)["Port"], 2);
    assert_ne!(
        crate::support::header(&changed, "X-Consul-ContentHash"),
        hash
    );
}

#[tokio::test]
async fn alias_check_mirrors_another_service() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    let backend = json!({"Name": "backend", "Check": {"CheckID": "backend-ttl", "TTL": "600s"}});
    client
        .put("/v1/agent/service/register", backend.to_string().into())
        .await
        .unwrap();
    let frontend = json!({"Name": "frontend", "Check": {"CheckID": "frontend-alias", "AliasService": "backend"}});
    let response = client
        .put("/v1/agent/service/register", frontend.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    let alias_status = || async {
        let checks = json(&client.get("/v1/agent/checks").await.ok()?);
        checks["frontend-alias"]["Status"]
            .as_str()
            .map(str::to_string)
    };
    for (action, expected) in [
        ("pass", "passing"),
        ("warn", "warning"),
        ("fail", "critical"),
        ("pass", "passing"),
    ] {
        client
            .put(&format!("/v1/agent/check/{action}/backend-ttl"), Vec::new())
            .await
            .unwrap();
        eventually(
            &format!("the alias to become {expected}"),
            Duration::from_secs(10),
            || async { (alias_status().await.as_deref() == Some(expected)).then_some(()) },
        )
        .await;
    }
    client
        .put("/v1/agent/service/deregister/backend", Vec::new())
        .await
        .unwrap();
    eventually(
        "the alias to go critical without its service",
        Duration::from_secs(10),
        || async { (alias_status().await.as_deref() == Some("critical")).then_some(()) },
    )
    .await;
    let checks = json(&client.get("/v1/agent/checks").await.unwrap());
    assert_eq!(checks["frontend-alias"]["Type"], "alias");
    assert!(checks["frontend-alias"]["Output"]
        .as_str()
        .unwrap()
        .contains("not found"));
}

/// `enable_local_script_checks` lets config files define script checks and still refuses
/// them over the HTTP API (Consul's hardening setting: the API cannot run a command).
#[tokio::test]
async fn local_script_checks_run_from_config_but_not_from_the_api() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            r#"enable_local_script_checks = true
               check {
                 id = "local"
                 name = "local"
                 args = ["true"]
                 interval = "10s"
               }"#
            .into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();
    let checks = json(&client.get("/v1/agent/checks").await.unwrap());
    assert!(checks.get("local").is_some(), "{checks}");
    let response = client
        .put(
            "/v1/agent/check/register",
            json!({"Name": "remote", "Args": ["true"], "Interval": "10s"})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 500, "{}", response.text());
    assert!(
        response.text().contains("from remote calls"),
        "{}",
        response.text()
    );
    let checks = json(&client.get("/v1/agent/checks").await.unwrap());
    assert!(checks.get("remote").is_none(), "{checks}");
}
