//! `/v1/agent/metrics`: Consul's metric names recorded where things happen, the Prometheus
//! text read by a real parser (prometheus-client's, from PyPI, installed by scripts/test), the
//! JSON shape with dotted names, and the `telemetry` stanza.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

use crate::support::{gauge_name, json, Agent, AgentOptions};

/// Family name to type, as prometheus-client's parser reads the agent's Prometheus text.
fn parse_prometheus(text: &str) -> BTreeMap<String, String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let python = root.join(".venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run scripts/test, which installs prometheus-client there",
        python.display()
    );
    let script = "import sys, json\n\
                  from prometheus_client.parser import text_string_to_metric_families\n\
                  families = text_string_to_metric_families(sys.stdin.read())\n\
                  print(json.dumps({f.name: f.type for f in families}))\n";
    let mut child = Command::new(python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run python");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "prometheus-client refused the text: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn dig(agent: &Agent, name: &str) -> String {
    let output = Command::new("dig")
        .arg("@127.0.0.1")
        .args(["-p", &agent.dns_port.to_string()])
        .args(["+tries=1", "+time=2", name])
        .output()
        .expect("dig runs (install bind9-dnsutils)");
    String::from_utf8_lossy(&output.stdout).into_owned()
}

fn named<'a>(metrics: &'a Value, section: &str, name: &str) -> Vec<&'a Value> {
    metrics[section]
        .as_array()
        .unwrap_or_else(|| panic!("no {section}: {metrics:#}"))
        .iter()
        .filter(|m| m["Name"] == name)
        .collect()
}

#[tokio::test]
async fn raft_http_dns_and_xds_series_under_consul_names() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    for i in 0..5 {
        let response = client
            .put(&format!("/v1/kv/metrics/{i}"), b"v".to_vec())
            .await
            .unwrap();
        assert_eq!(response.status, 200);
    }
    assert!(dig(&agent, "consul.service.consul").contains("status: NOERROR"));
    assert!(dig(&agent, "1.0.0.127.in-addr.arpa").contains("->>HEADER<<-"));
    let response = client.get("/v1/health/service/consul").await.unwrap();
    assert_eq!(response.status, 200);

    let text = client
        .get("/v1/agent/metrics?format=prometheus")
        .await
        .unwrap()
        .text();
    let families = parse_prometheus(&text);
    let host = gauge_name("")
        .trim_end_matches('.')
        .replace(['.', '-'], "_");
    for (family, kind) in [
        ("consul_raft_apply", "counter"),
        ("consul_raft_commitTime", "summary"),
        ("consul_raft_fsm_apply", "summary"),
        ("consul_raft_state_leader", "counter"),
        ("consul_api_http", "summary"),
        ("consul_kvs_apply", "summary"),
        ("consul_health_service_query", "counter"),
        ("consul_dns_domain_query", "summary"),
        ("consul_dns_ptr_query", "summary"),
        ("consul_xds_responses_sent", "counter"),
    ] {
        assert_eq!(
            families.get(family).map(String::as_str),
            Some(kind),
            "{family}: {families:?}"
        );
    }
    for gauge in [
        "raft_applied_index",
        "server_isLeader",
        "xds_server_streams",
        "runtime_num_goroutines",
        "state_kv_entries",
    ] {
        let family = format!("{host}_{gauge}");
        assert_eq!(
            families.get(&family).map(String::as_str),
            Some("gauge"),
            "{family}: {families:?}"
        );
    }
    assert!(
        text.contains(r#"consul_api_http_count{method="PUT",path="v1_kv_"} 5"#),
        "{text}"
    );

    let metrics = json(&client.get("/v1/agent/metrics").await.unwrap());
    assert!(metrics["Timestamp"].is_string(), "{metrics:#}");
    assert_eq!(metrics["Points"], serde_json::json!([]));
    let applies = named(&metrics, "Counters", "consul.raft.apply");
    assert!(applies[0]["Count"].as_u64().unwrap() >= 5, "{metrics:#}");
    let puts: Vec<_> = named(&metrics, "Samples", "consul.api.http")
        .into_iter()
        .filter(|s| s["Labels"]["method"] == "PUT" && s["Labels"]["path"] == "v1_kv_")
        .collect();
    assert_eq!(puts.len(), 1, "{metrics:#}");
    let put = puts[0];
    assert_eq!(put["Count"], 5, "{put}");
    let (min, max, mean) = (
        put["Min"].as_f64().unwrap(),
        put["Max"].as_f64().unwrap(),
        put["Mean"].as_f64().unwrap(),
    );
    assert!(min > 0.0 && min <= mean && mean <= max, "{put}");
    let commits = named(&metrics, "Samples", "consul.kvs.apply");
    assert!(commits[0]["Count"].as_u64().unwrap() >= 5, "{metrics:#}");
    let dns = named(&metrics, "Samples", "consul.dns.domain_query");
    assert_eq!(
        dns[0]["Labels"]["node"],
        agent_node(&client).await,
        "{metrics:#}"
    );
    let leader = named(&metrics, "Gauges", &gauge_name("server.isLeader"));
    assert_eq!(leader[0]["Value"], 1.0, "{metrics:#}");
    let kv = named(&metrics, "Gauges", &gauge_name("state.kv_entries"));
    assert_eq!(kv[0]["Value"], 5.0, "{metrics:#}");
}

async fn agent_node(client: &concord::api::client::Client) -> String {
    let me = json(&client.get("/v1/agent/self").await.unwrap());
    me["Config"]["NodeName"].as_str().unwrap().to_string()
}

/// `telemetry { metrics_prefix, disable_hostname, prefix_filter, filter_default }`.
#[tokio::test]
async fn the_telemetry_stanza_names_and_filters_series() {
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            r#"telemetry {
                 metrics_prefix = "mesh"
                 disable_hostname = true
                 prefix_filter = ["-mesh.api", "+mesh.api.http.never", "-mesh.raft.fsm"]
               }"#
            .into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    let client = agent.client();
    let response = client.put("/v1/kv/x", b"1".to_vec()).await.unwrap();
    assert_eq!(response.status, 200);
    let metrics = json(&client.get("/v1/agent/metrics").await.unwrap());
    // No hostname in gauges, the prefix everywhere.
    assert_eq!(
        named(&metrics, "Gauges", "mesh.server.isLeader")[0]["Value"],
        1.0
    );
    assert!(!named(&metrics, "Samples", "mesh.kvs.apply").is_empty());
    let names: Vec<&str> = ["Gauges", "Counters", "Samples"]
        .iter()
        .flat_map(|section| metrics[section].as_array().unwrap())
        .map(|m| m["Name"].as_str().unwrap())
        .collect();
    assert!(names.iter().all(|n| n.starts_with("mesh.")), "{names:?}");
    // Blocked: the HTTP timer and the FSM timer; the rest of raft is kept.
    assert!(!names.contains(&"mesh.api.http"), "{names:?}");
    assert!(!names.contains(&"mesh.raft.fsm.apply"), "{names:?}");
    assert!(names.contains(&"mesh.raft.commitTime"), "{names:?}");

    // A filter rule without + or - is refused at start, with the key named.
    let mut refused = Agent::spawn(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            r#"telemetry { prefix_filter = ["consul.raft"] }"#.into(),
        ],
        ..AgentOptions::default()
    });
    let code = refused.wait_exit(std::time::Duration::from_secs(20)).await;
    assert!(matches!(code, Some(code) if code != 0), "{code:?}");
    assert!(
        refused.log().contains("telemetry.prefix_filter"),
        "{}",
        refused.log()
    );
}

/// `concord info` prints the agent's Stats as `consul info` does; `concord debug` bundles
/// the agent's self, members, host facts, metrics every interval and the logs of the capture
/// into a `.tar.gz`, and refuses intervals and targets Consul refuses.
#[tokio::test]
async fn info_and_debug_give_operators_the_agents_state() {
    let agent = Agent::start(AgentOptions::default()).await;
    let (code, stdout, stderr) = crate::support::cli(&agent, &["info"], None);
    assert_eq!(code, 0, "{stderr}");
    for line in [
        "consul:\n",
        "\tacl = disabled\n",
        "\tserver = true\n",
        "raft:\n",
        "\tstate = Leader\n",
        "\tnum_peers = 0\n",
        "runtime:\n",
        "serf_lan:\n",
        "\tmembers = 1\n",
    ] {
        assert!(stdout.contains(line), "{line:?} missing from:\n{stdout}");
    }
    let applied: u64 = stdout
        .lines()
        .find_map(|line| line.strip_prefix("\tapplied_index = "))
        .and_then(|value| value.parse().ok())
        .unwrap_or_else(|| panic!("no applied_index in:\n{stdout}"));
    assert!(applied >= 1, "{stdout}");

    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("bundle");
    let output_arg = format!("-output={}", output.display());
    let capture = {
        let agent_address = agent.address();
        let output_arg = output_arg.clone();
        tokio::task::spawn_blocking(move || {
            std::process::Command::new(env!("CARGO_BIN_EXE_concord"))
                .args([
                    "debug",
                    &format!("-http-addr={agent_address}"),
                    "-duration=5s",
                    "-interval=5s",
                    &output_arg,
                ])
                .output()
                .unwrap()
        })
    };
    // Something for the capture's logs: a rejected request is logged at debug level.
    let bundle = output.with_extension("tar.gz");
    crate::support::eventually(
        "the capture to start",
        std::time::Duration::from_secs(10),
        || async { output.join("agent.json").exists().then_some(()) },
    )
    .await;
    let response = agent
        .client()
        .put("/v1/txn", b"not json".to_vec())
        .await
        .unwrap();
    assert_eq!(response.status, 400);
    let finished = capture.await.unwrap();
    assert!(
        finished.status.success(),
        "{}",
        String::from_utf8_lossy(&finished.stderr)
    );
    assert!(bundle.exists() && !output.exists(), "{}", bundle.display());
    let mut files = BTreeMap::new();
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(
        std::fs::File::open(&bundle).unwrap(),
    ));
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let mut text = String::new();
        if entry.header().entry_type().is_file() {
            std::io::Read::read_to_string(&mut entry, &mut text).unwrap();
            files.insert(path, text);
        }
    }
    let file = |name: &str| {
        files
            .get(&format!("bundle/{name}"))
            .unwrap_or_else(|| panic!("{name} missing: {:?}", files.keys()))
    };
    let me: Value = serde_json::from_str(file("agent.json")).unwrap();
    assert_eq!(me["Config"]["NodeName"], agent_node(&agent.client()).await);
    let members: Value = serde_json::from_str(file("members.json")).unwrap();
    assert_eq!(members.as_array().unwrap().len(), 1);
    let host: Value = serde_json::from_str(file("host.json")).unwrap();
    assert_eq!(host["Host"]["os"], "linux");
    let index: Value = serde_json::from_str(file("index.json")).unwrap();
    assert_eq!(index["Interval"], "5s");
    assert!(
        file("consul.log").contains("request rejected"),
        "{}",
        file("consul.log")
    );
    let snapshots: Vec<&String> = files
        .iter()
        .filter(|(name, _)| name.ends_with("/metrics.json"))
        .map(|(_, body)| body)
        .collect();
    assert!(!snapshots.is_empty(), "{:?}", files.keys());
    let metrics: Value = serde_json::from_str(snapshots[0]).unwrap();
    assert!(metrics["Samples"].is_array(), "{metrics}");

    // Consul's limits: an interval under 5s, a duration under the interval, unknown targets.
    for (args, message) in [
        (
            &["debug", "-interval=1s"][..],
            "interval must be longer than 5s",
        ),
        (
            &["debug", "-duration=5s", "-interval=10s"][..],
            "duration must be longer than interval",
        ),
        (&["debug", "-capture=secrets"][..], "Invalid capture target"),
    ] {
        let (code, _, stderr) = crate::support::cli(&agent, args, None);
        assert_ne!(code, 0, "{args:?}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}
