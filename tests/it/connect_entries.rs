//! Config entries through the real CLI and HTTP API: every kind round-trips from HCL and JSON
//! files, every validation rule refuses (a 500, as Consul; 400 for a body that is no entry) naming the field and storing nothing, and
//! the discovery chain of a canary splitter matches Consul's shape (golden file).

use serde_json::{json, Value};

use crate::support::{cli, json, Agent, AgentOptions};

/// Waits for the CA to bootstrap (the discovery chain needs the trust domain).
pub async fn ca_ready(agent: &Agent) -> Value {
    crate::support::eventually("CA roots", std::time::Duration::from_secs(10), || async {
        let response = agent.client().get("/v1/connect/ca/roots").await.ok()?;
        (response.status == 200).then(|| json(&response))
    })
    .await
}

/// (file name, file text, what `config read` must show apart from the indexes).
fn entries() -> Vec<(&'static str, &'static str, Value)> {
    vec![
        (
            "defaults.hcl",
            r#"
kind = "service-defaults"
name = "web"
protocol = "http"
mutual_tls_mode = "strict"
meta = { owner_team = "payments" }
max_inbound_connections = 100
"#,
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http",
                   "MutualTLSMode": "strict", "Meta": {"owner_team": "payments"},
                   "MaxInboundConnections": 100}),
        ),
        (
            "proxy.json",
            r#"{"Kind": "proxy-defaults", "Name": "global",
                "Config": {"local_connect_timeout_ms": 1000, "envoy_prometheus_bind_addr": "0.0.0.0:9102"},
                "MeshGateway": {"Mode": "local"}}"#,
            json!({"Kind": "proxy-defaults", "Name": "global",
                   "Config": {"local_connect_timeout_ms": 1000, "envoy_prometheus_bind_addr": "0.0.0.0:9102"},
                   "MeshGateway": {"Mode": "local"}}),
        ),
        (
            "resolver.hcl",
            r#"
kind = "service-resolver"
name = "web"
default_subset = "v1"
connect_timeout = "3s"
subsets = {
  v1 = { filter = "Service.Meta.version == v1" }
  v2 = { filter = "Service.Meta.version == v2", only_passing = true }
}
failover = {
  "*" = { datacenters = ["dc2"] }
}
"#,
            json!({"Kind": "service-resolver", "Name": "web", "DefaultSubset": "v1",
                   "ConnectTimeout": "3s",
                   "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"},
                               "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": true}},
                   "Failover": {"*": {"Datacenters": ["dc2"]}}}),
        ),
        (
            "splitter.json",
            r#"{"Kind": "service-splitter", "Name": "web",
                "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                           {"Weight": 10, "ServiceSubset": "v2",
                            "RequestHeaders": {"Set": {"x-canary": "true"}}}]}"#,
            json!({"Kind": "service-splitter", "Name": "web",
                   "Splits": [{"Weight": 90, "ServiceSubset": "v1"},
                              {"Weight": 10, "ServiceSubset": "v2",
                               "RequestHeaders": {"Set": {"x-canary": "true"}}}]}),
        ),
        (
            "router.hcl",
            r#"
kind = "service-router"
name = "web"
routes = [
  {
    match = { http = { path_prefix = "/admin", header = [{ name = "x-debug", present = true }] } }
    destination = { service_subset = "v2", prefix_rewrite = "/", num_retries = 2 }
  },
]
"#,
            json!({"Kind": "service-router", "Name": "web",
                   "Routes": [{"Match": {"HTTP": {"PathPrefix": "/admin",
                                                  "Header": [{"Name": "x-debug", "Present": true}]}},
                               "Destination": {"ServiceSubset": "v2", "PrefixRewrite": "/", "NumRetries": 2}}]}),
        ),
        (
            "intentions.hcl",
            r#"
Kind = "service-intentions"
Name = "web"
Sources = [
  { Name = "frontend", Action = "allow", Description = "the UI" },
  {
    Name = "admin"
    Permissions = [
      { Action = "allow", HTTP = { PathPrefix = "/admin", Methods = ["GET", "PUT"] } },
    ]
  },
  { Name = "*", Action = "deny" },
]
"#,
            json!({"Kind": "service-intentions", "Name": "web",
                   "Sources": [
                       {"Name": "frontend", "Action": "allow", "Description": "the UI",
                        "Precedence": 9, "Type": "consul"},
                       {"Name": "admin", "Permissions": [{"Action": "allow",
                         "HTTP": {"PathPrefix": "/admin", "Methods": ["GET", "PUT"]}}],
                        "Precedence": 9, "Type": "consul"},
                       {"Name": "*", "Action": "deny", "Precedence": 8, "Type": "consul"}]}),
        ),
        (
            "mesh.json",
            r#"{"Kind": "mesh", "Name": "mesh",
                "TransparentProxy": {"MeshDestinationsOnly": true},
                "TLS": {"Incoming": {"TLSMinVersion": "TLSv1_2"}}}"#,
            json!({"Kind": "mesh", "Name": "mesh",
                   "TransparentProxy": {"MeshDestinationsOnly": true},
                   "TLS": {"Incoming": {"TLSMinVersion": "TLSv1_2"}}}),
        ),
    ]
}

#[tokio::test]
async fn every_kind_round_trips_through_config_write_and_read() {
    let agent = Agent::start(AgentOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    for (file, text, expected) in entries() {
        let kind = expected["Kind"].as_str().unwrap();
        let name = expected["Name"].as_str().unwrap();
        // Each entry as written, then the same entry in the other format.
        let (stem, _) = file.split_once('.').unwrap();
        let other = if file.ends_with(".hcl") {
            (
                format!("{stem}-as.json"),
                serde_json::to_string_pretty(&expected).unwrap(),
            )
        } else {
            (format!("{stem}-as.hcl"), hcl::to_string(&expected).unwrap())
        };
        let mut indexes = Vec::new();
        for (file, text) in [(file.to_string(), text.to_string()), other] {
            let path = dir.path().join(&file);
            std::fs::write(&path, &text).unwrap();
            let (code, stdout, stderr) =
                cli(&agent, &["config", "write", path.to_str().unwrap()], None);
            assert_eq!(code, 0, "{file}: {stderr}\n{text}");
            assert_eq!(
                stdout.trim(),
                format!("Config entry written: {kind}/{name}")
            );

            let (code, stdout, stderr) = cli(
                &agent,
                &["config", "read", "-kind", kind, "-name", name],
                None,
            );
            assert_eq!(code, 0, "{file}: {stderr}");
            let mut read: Value = serde_json::from_str(&stdout).unwrap();
            assert!(stdout.contains("\n    \""), "4-space indent: {stdout}");
            let object = read.as_object_mut().unwrap();
            let create = object.remove("CreateIndex").unwrap().as_u64().unwrap();
            let modify = object.remove("ModifyIndex").unwrap().as_u64().unwrap();
            assert!(create > 0 && modify >= create);
            indexes.push((create, modify));
            assert_eq!(read, expected, "{file}\n{text}");
        }
        // The rewrite kept CreateIndex and moved ModifyIndex.
        assert_eq!(indexes[0].0, indexes[1].0);
        assert!(indexes[1].1 > indexes[0].1);

        let (code, stdout, _) = cli(&agent, &["config", "list", "-kind", kind], None);
        assert_eq!(code, 0);
        assert_eq!(stdout.lines().collect::<Vec<_>>(), vec![name]);
    }

    // The same entry over HTTP in the other spelling reads back identically.
    let client = agent.client();
    let snake = json!({"kind": "service-defaults", "name": "api", "protocol": "grpc",
                       "local_request_timeout_ms": 500});
    let put = client
        .put("/v1/config", snake.to_string().into())
        .await
        .unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    let read = json(&client.get("/v1/config/service-defaults/api").await.unwrap());
    assert_eq!(read["Protocol"], "grpc");
    assert_eq!(read["LocalRequestTimeoutMs"], 500);

    // CAS: 0 creates only; a stale index is refused; the current one applies.
    let index = read["ModifyIndex"].as_u64().unwrap();
    let again = client
        .put("/v1/config?cas=0", snake.to_string().into())
        .await
        .unwrap();
    assert_eq!(json(&again), json!(false));
    let stale = client
        .put(
            &format!("/v1/config?cas={}", index - 1),
            snake.to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(json(&stale), json!(false));
    let fresh = client
        .put(&format!("/v1/config?cas={index}"), snake.to_string().into())
        .await
        .unwrap();
    assert_eq!(json(&fresh), json!(true));

    // Delete through the CLI; reading it afterwards is Consul's 404.
    let (code, stdout, _) = cli(
        &agent,
        &[
            "config",
            "delete",
            "-kind",
            "service-defaults",
            "-name",
            "api",
        ],
        None,
    );
    assert_eq!(code, 0);
    assert_eq!(stdout.trim(), "Config entry deleted: service-defaults/api");
    let gone = client.get("/v1/config/service-defaults/api").await.unwrap();
    assert_eq!(gone.status, 404);
    assert_eq!(
        gone.text(),
        "Config entry not found for \"service-defaults\" / \"api\""
    );
}

#[tokio::test]
async fn invalid_entries_are_refused_with_the_field_and_rule_and_nothing_is_stored() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    // A tcp service and an http one with subsets, for the rules that depend on other entries.
    for entry in [
        json!({"Kind": "service-defaults", "Name": "db", "Protocol": "tcp"}),
        json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
        json!({"Kind": "service-resolver", "Name": "web",
               "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}}),
        json!({"Kind": "service-router", "Name": "web", "Routes": [{"Match": {"HTTP": {"PathPrefix": "/x"}}}]}),
    ] {
        let response = client
            .put("/v1/config", entry.to_string().into())
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{entry}: {}", response.text());
    }
    let cases = [
        (
            json!({"Kind": "service-splitter", "Name": "web", "Splits": [
            {"Weight": 80, "ServiceSubset": "v1"}, {"Weight": 19.99, "Service": "other"}]}),
            "the sum of all split weights must be 100, not 99.990000",
        ),
        (
            json!({"Kind": "service-splitter", "Name": "web", "Splits": [
            {"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v1"}]}),
            "split destination occurs more than once",
        ),
        (
            json!({"Kind": "service-splitter", "Name": "web", "Splits": [
            {"Weight": 50, "ServiceSubset": "v1"}, {"Weight": 50, "ServiceSubset": "v9"}]}),
            "does not have a subset named \"v9\"",
        ),
        (
            json!({"Kind": "service-router", "Name": "db", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/"}}}]}),
            "uses a protocol \"tcp\" that does not permit advanced routing",
        ),
        (
            json!({"Kind": "service-splitter", "Name": "db", "Splits": [{"Weight": 100}]}),
            "uses a protocol \"tcp\"",
        ),
        (
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "tcp"}),
            "existing service-router \"web\"",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "db",
                "Subsets": {"v1": {"Filter": "Service.Meta.version =="}}}),
            "Filter for subset \"v1\" is not a valid expression",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "db", "DefaultSubset": "v3",
                "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}}),
            "DefaultSubset \"v3\" is not a valid subset",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "db", "Redirect": {"Service": "other"},
                "Failover": {"*": {"Service": "backup"}}}),
            "Redirect and Failover cannot both be set",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "db",
                "Failover": {"*": {"Service": "backup", "Targets": [{"Service": "b2"}]}}}),
            "Failover[\"*\"]: Targets cannot be set with Service",
        ),
        (
            json!({"Kind": "service-resolver", "Name": "db", "Failover": {"*": {}}}),
            "Failover[\"*\"]: one of Service",
        ),
        (
            json!({"Kind": "service-router", "Name": "web", "Routes": [
            {"Match": {"HTTP": {"PathExact": "admin"}}}]}),
            "Routes[0].Match.HTTP.PathExact doesn't start with '/'",
        ),
        (
            json!({"Kind": "service-intentions", "Name": "web", "Sources": [
            {"Name": "api", "Action": "allow",
             "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]}),
            "Sources[0].Action must be omitted if Permissions are specified",
        ),
        (
            json!({"Kind": "service-intentions", "Name": "web", "Sources": [{"Name": "api", "Action": "maybe"}]}),
            "Sources[0].Action must be set to 'allow' or 'deny'",
        ),
        (
            json!({"Kind": "service-intentions", "Name": "db", "Sources": [
            {"Name": "api", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}]}),
            "uses a protocol \"tcp\"",
        ),
        (
            json!({"Kind": "proxy-defaults", "Name": "other"}),
            "only \"global\" is supported",
        ),
        (
            json!({"Kind": "mesh", "Name": "x"}),
            "only \"mesh\" is supported",
        ),
        (
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http", "Protcol": "tcp"}),
            "unknown field `Protcol`",
        ),
        (
            json!({"Kind": "ingress-gatway", "Name": "x"}),
            "invalid config entry kind",
        ),
        (
            json!({"Kind": "service-defaults", "Name": "web", "Protocol": "smtp"}),
            "Protocol \"smtp\" is not supported",
        ),
    ];
    for (entry, message) in cases {
        let before = client.get("/v1/config/service-defaults/web").await.unwrap();
        let response = client
            .put("/v1/config", entry.to_string().into())
            .await
            .unwrap();
        // Consul: a body that is no config entry is the client's 400; a rule broken is its
        // RPC's 500.
        let decoding =
            message.contains("unknown field") || message.contains("invalid config entry kind");
        let expected = if decoding { 400 } else { 500 };
        assert_eq!(response.status, expected, "{entry}: {}", response.text());
        assert!(
            response.text().contains(message),
            "{entry}: {} (wanted {message})",
            response.text()
        );
        let kind = entry["Kind"].as_str().unwrap();
        let name = entry["Name"].as_str().unwrap();
        if kind == "service-defaults" {
            let after = client.get("/v1/config/service-defaults/web").await.unwrap();
            assert_eq!(
                json(&after),
                json(&before),
                "{entry} changed the stored entry"
            );
        } else if name != "web" || kind != "service-router" {
            let stored = client
                .get(&format!("/v1/config/{kind}/{name}"))
                .await
                .unwrap();
            assert_ne!(stored.status, 200, "{entry} was stored");
        }
    }
    // The CLI reports the server's message and exits 1.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, json!({"Kind": "service-splitter", "Name": "web", "Splits": [{"Weight": 99.99, "ServiceSubset": "v1"}]}).to_string()).unwrap();
    let (code, _, stderr) = cli(&agent, &["config", "write", path.to_str().unwrap()], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("Error writing config entry service-splitter/web: Unexpected response code: 500 (Splits: the sum of all split weights must be 100, not 99.990000)"), "{stderr}");
}

/// Deleting an entry that others depend on is refused like writing a bad one: otherwise every
/// proxy whose chain no longer compiles keeps its old configuration, silently.
#[tokio::test]
async fn deletions_that_would_strand_other_entries_are_refused() {
    let agent = Agent::start(AgentOptions::default()).await;
    let client = agent.client();
    for entry in [
        json!({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "http"}}),
        json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
        json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
        json!({"Kind": "service-resolver", "Name": "api",
               "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}}),
        // web's splitter sends to a subset of api: a chain across services.
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [
            {"Weight": 100, "Service": "api", "ServiceSubset": "v1"}]}),
        json!({"Kind": "service-router", "Name": "api", "Routes": [
            {"Match": {"HTTP": {"PathPrefix": "/x"}}}]}),
    ] {
        let response = client
            .put("/v1/config", entry.to_string().into())
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{entry}: {}", response.text());
    }
    // Writing api's resolver without the subset web uses is refused too (another service's
    // chain, not only api's own).
    let response = client
        .put(
            "/v1/config",
            json!({"Kind": "service-resolver", "Name": "api"})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(response.status, 500, "{}", response.text());
    assert!(
        response
            .text()
            .contains("does not have a subset named \"v1\""),
        "{}",
        response.text()
    );
    for (path, message) in [
        (
            "service-resolver/api",
            "does not have a subset named \"v1\"",
        ),
        // api and web are http through their service-defaults and proxy-defaults: dropping
        // one leaves the other, dropping both would strand api's router.
        ("proxy-defaults/global", ""),
        ("service-defaults/api", "existing service-router \"api\""),
    ] {
        let response = client.delete(&format!("/v1/config/{path}")).await.unwrap();
        if message.is_empty() {
            assert_eq!(response.status, 200, "{path}: {}", response.text());
            continue;
        }
        assert_eq!(response.status, 500, "{path}: {}", response.text());
        assert!(
            response.text().contains(message),
            "{path}: {}",
            response.text()
        );
        let stored = client.get(&format!("/v1/config/{path}")).await.unwrap();
        assert_eq!(stored.status, 200, "{path} was deleted");
    }
    // Once nothing depends on them, they go.
    for path in [
        "service-router/api",
        "service-splitter/web",
        "service-resolver/api",
        "service-defaults/api",
    ] {
        let response = client.delete(&format!("/v1/config/{path}")).await.unwrap();
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
}

#[tokio::test]
async fn canary_discovery_chain_matches_consuls_shape() {
    let agent = Agent::start(AgentOptions::default()).await;
    let roots = ca_ready(&agent).await;
    let trust_domain = roots["TrustDomain"].as_str().unwrap().to_string();
    let client = agent.client();
    // Before any entry: the default tcp chain.
    let default = json(&client.get("/v1/discovery-chain/web").await.unwrap());
    assert_eq!(default["Chain"]["Default"], true);
    assert_eq!(
        default["Chain"]["StartNode"],
        "resolver:web.default.default.dc1"
    );
    for entry in [
        json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}),
        json!({"Kind": "service-resolver", "Name": "web", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"}}}),
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [
            {"Weight": 80, "ServiceSubset": "v1"}, {"Weight": 20, "ServiceSubset": "v2"}]}),
    ] {
        let response = client
            .put("/v1/config", entry.to_string().into())
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let response = client.get("/v1/discovery-chain/web").await.unwrap();
    assert_eq!(response.status, 200);
    // The trust domain is random per cluster; the golden file names it.
    let text = response
        .text()
        .replace(&trust_domain, "11111111-2222-3333-4444-555555555555.consul");
    let actual: Value = serde_json::from_str(&text).unwrap();
    let golden = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/it/testdata/discovery-chain-splitter.golden.json");
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(
            &golden,
            serde_json::to_string_pretty(&actual).unwrap() + "\n",
        )
        .unwrap();
    }
    let expected: Value = serde_json::from_str(&std::fs::read_to_string(&golden).unwrap()).unwrap();
    assert_eq!(
        actual, expected,
        "regenerate with UPDATE_GOLDEN=1 only after checking the diff"
    );

    // Overrides change the customization hash and the timeouts.
    let overridden = client
        .request(
            hyper::Method::POST,
            "/v1/discovery-chain/web",
            Some(
                json!({"OverrideConnectTimeout": "7s"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await
        .unwrap();
    let overridden = json(&overridden);
    assert_eq!(
        overridden["Chain"]["Targets"]["v1.web.default.default.dc1"]["ConnectTimeout"],
        "7s"
    );
    assert_eq!(
        overridden["Chain"]["CustomizationHash"]
            .as_str()
            .unwrap()
            .len(),
        8
    );
}
