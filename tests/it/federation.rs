//! Two datacenters, one server each plus a client agent in the first, joined in the WAN pool
//! by `retry_join_wan`: `?dc=` requests from the first datacenter (to its server or its client
//! agent) are answered by the second, reads, writes, blocking queries and the CLI alike, and
//! so are DNS names of the second (`<svc>.service.dc2.consul`) and a prepared query's failover.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{cli, eventually, json, Agent, AgentOptions, Placement};

const DC1_SERVER: &str = "127.0.36.1";
const DC2_SERVER: &str = "127.0.36.2";
const DC1_CLIENT: &str = "127.0.36.3";

fn agent(node: &str, ip: &str, server: bool, config: Value) -> AgentOptions {
    AgentOptions {
        placement: Some(Placement {
            ip: ip.into(),
            node: node.into(),
            server,
            join: if server {
                Vec::new()
            } else {
                vec![DC1_SERVER.into()]
            },
            config: Some(config.to_string()),
            data_dir: None,
        }),
        ..AgentOptions::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_naming_another_datacenter_are_answered_there() {
    let (dc1, dc2, client) = tokio::join!(
        Agent::start(agent("s1", DC1_SERVER, true, json!({"datacenter": "dc1"}))),
        Agent::start(agent(
            "s2",
            DC2_SERVER,
            true,
            json!({"datacenter": "dc2", "retry_join_wan": [DC1_SERVER], "retry_interval_wan": "1s"}),
        )),
        Agent::start(agent("c1", DC1_CLIENT, false, json!({"datacenter": "dc1"}))),
    );
    eventually(
        "dc2 in dc1's datacenters",
        Duration::from_secs(20),
        || async {
            let listed = json(&dc1.client().get("/v1/catalog/datacenters").await.ok()?);
            (listed == json!(["dc1", "dc2"])).then_some(())
        },
    )
    .await;
    // Each datacenter's server is a WAN area member with a coordinate, named `<node>.<dc>`.
    for asker in [&dc1, &client] {
        eventually(
            "both servers' WAN coordinates",
            Duration::from_secs(20),
            || async {
                let areas = json(
                    &asker
                        .client()
                        .get("/v1/coordinate/datacenters")
                        .await
                        .ok()?,
                );
                let named = |index: usize| areas[index]["Coordinates"][0]["Node"].clone();
                let listed = (
                    areas[0]["Datacenter"].clone(),
                    named(0),
                    areas[1]["Datacenter"].clone(),
                    named(1),
                );
                (listed == (json!("dc1"), json!("s1.dc1"), json!("dc2"), json!("s2.dc2")))
                    .then_some(())
            },
        )
        .await;
    }
    // A client agent knows the datacenters through its server.
    eventually(
        "dc2 in the client's datacenters",
        Duration::from_secs(20),
        || async {
            let listed = json(&client.client().get("/v1/catalog/datacenters").await.ok()?);
            (listed == json!(["dc1", "dc2"])).then_some(())
        },
    )
    .await;

    // A service only dc2 has, found from dc1's server and from dc1's client agent.
    let registration = json!({"Node": "db-host", "Address": "10.36.0.9",
        "Service": {"Service": "only-in-dc2", "Port": 5432}});
    let response = dc2
        .client()
        .put("/v1/catalog/register", registration.to_string().into())
        .await
        .unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    for asker in [&dc1, &client] {
        let services = json(
            &asker
                .client()
                .get("/v1/catalog/services?dc=dc2")
                .await
                .unwrap(),
        );
        assert!(services.get("only-in-dc2").is_some(), "{services}");
        let local = json(&asker.client().get("/v1/catalog/services").await.unwrap());
        assert!(local.get("only-in-dc2").is_none(), "{local}");
        let health = json(
            &asker
                .client()
                .get("/v1/health/service/only-in-dc2?dc=dc2")
                .await
                .unwrap(),
        );
        assert_eq!(health[0]["Node"]["Datacenter"], "dc2", "{health}");
    }
    let (code, out, err) = cli(&dc1, &["catalog", "services", "-datacenter", "dc2"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.lines().any(|line| line == "only-in-dc2"), "{out}");

    // A KV write with ?dc=dc2 lands in dc2 only; a blocking read there wakes for it.
    let index = dc1
        .client()
        .get("/v1/kv/shared?dc=dc2")
        .await
        .unwrap()
        .headers
        .get("X-Consul-Index")
        .and_then(|value| value.to_str().ok()?.parse::<u64>().ok())
        .expect("an index from dc2");
    let watcher = {
        let client = client.client();
        tokio::spawn(async move {
            client
                .get(&format!("/v1/kv/shared?dc=dc2&index={index}&wait=20s"))
                .await
                .unwrap()
        })
    };
    let written = dc1
        .client()
        .put("/v1/kv/shared?dc=dc2", b"from-dc1".to_vec())
        .await
        .unwrap();
    assert_eq!(written.text(), "true");
    let woke = watcher.await.unwrap();
    assert_eq!(woke.status, 200);
    assert_eq!(json(&woke)[0]["Key"], "shared");
    assert_eq!(
        &dc2.client().get("/v1/kv/shared?raw").await.unwrap().body[..],
        b"from-dc1"
    );
    assert_eq!(dc1.client().get("/v1/kv/shared").await.unwrap().status, 404);

    // A prepared query fails over to the nearest other datacenter while its own instances
    // are critical, and comes back when they recover.
    let web = |address: &str, status: &str| {
        json!({"Node": "web-host", "Address": address,
            "Service": {"ID": "web", "Service": "web", "Port": 80},
            "Check": {"CheckID": "web-alive", "Name": "alive", "Status": status, "ServiceID": "web"}})
        .to_string()
    };
    for (server, address) in [(&dc1, "10.36.0.1"), (&dc2, "10.36.0.2")] {
        let response = server
            .client()
            .put("/v1/catalog/register", web(address, "passing").into())
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
    }
    let created = dc1
        .client()
        .request(
            hyper::Method::POST,
            "/v1/query",
            Some(
                json!({"Name": "web-fo", "Service": {"Service": "web", "Failover": {"NearestN": 1}}})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 200, "{}", created.text());
    let executed = || async {
        let answer = json(
            &client
                .client()
                .get("/v1/query/web-fo/execute")
                .await
                .unwrap(),
        );
        (
            answer["Datacenter"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
            answer["Failovers"].as_u64().unwrap_or(99),
            answer["Nodes"][0]["Node"]["Datacenter"]
                .as_str()
                .unwrap_or_default()
                .to_string(),
        )
    };
    // The DNS form agrees, asked at dc1's server or its client agent.
    let looked_up = |asker| crate::support::dig_short(asker, "web-fo.query.consul", "A");
    assert_eq!(executed().await, ("dc1".into(), 0, "dc1".into()));
    for asker in [&dc1, &client] {
        assert_eq!(looked_up(asker), ["10.36.0.1"]);
    }
    let failing = dc1
        .client()
        .put("/v1/catalog/register", web("10.36.0.1", "critical").into())
        .await
        .unwrap();
    assert_eq!(failing.status, 200);
    assert_eq!(executed().await, ("dc2".into(), 1, "dc2".into()));
    for asker in [&dc1, &client] {
        assert_eq!(looked_up(asker), ["10.36.0.2"]);
    }
    let recovered = dc1
        .client()
        .put("/v1/catalog/register", web("10.36.0.1", "passing").into())
        .await
        .unwrap();
    assert_eq!(recovered.status, 200);
    assert_eq!(executed().await, ("dc1".into(), 0, "dc1".into()));
    for asker in [&dc1, &client] {
        assert_eq!(looked_up(asker), ["10.36.0.1"]);
    }

    // DNS names of dc2 are answered by dc2, asked at dc1's server or its client agent.
    for asker in [&dc1, &client] {
        assert_eq!(
            crate::support::dig_short(asker, "only-in-dc2.service.dc2.consul", "A"),
            ["10.36.0.9"]
        );
        assert_eq!(
            crate::support::dig_short(asker, "web.service.dc2.dc.consul", "A"),
            ["10.36.0.2"]
        );
        assert!(crate::support::dig_short(asker, "only-in-dc2.service.consul", "A").is_empty());
    }

    // A datacenter nobody knows is Consul's 500.
    let unknown = dc1.client().get("/v1/kv/shared?dc=dc9").await.unwrap();
    assert_eq!(
        (unknown.status.as_u16(), unknown.text()),
        (500, "No path to datacenter".to_string())
    );
    // The agent's own endpoints never travel.
    let own = json(&dc1.client().get("/v1/agent/self?dc=dc2").await.unwrap());
    assert_eq!(own["Config"]["Datacenter"], "dc1");
}

const PRIMARY: &str = "127.0.37.1";
const SECONDARY: &str = "127.0.37.2";
const MANAGEMENT: &str = "0d2f6b1e-8c47-4a9b-b3e5-5a7c9d1f2e30";

/// A server of `datacenter` with ACLs on (deny by default) whose primary is dc1: dc1 makes
/// the management token, dc2 replicates tokens with it.
fn acl_server(node: &str, ip: &str, datacenter: &str) -> AgentOptions {
    let tokens = match datacenter {
        "dc1" => json!({"initial_management": MANAGEMENT}),
        _ => json!({"replication": MANAGEMENT}),
    };
    let mut config = json!({
        "datacenter": datacenter,
        "primary_datacenter": "dc1",
        "acl": {"enabled": true, "default_policy": "deny", "enable_token_replication": true,
                "tokens": tokens},
        "connect": {"enabled": true},
    });
    if datacenter != "dc1" {
        config["retry_join_wan"] = json!([PRIMARY]);
        config["retry_interval_wan"] = json!("1s");
    }
    AgentOptions {
        ready_token: Some(MANAGEMENT.into()),
        ..agent(node, ip, true, config)
    }
}

async fn call(
    agent: &Agent,
    method: hyper::Method,
    path: &str,
    body: Option<Value>,
) -> concord::api::client::Response {
    concord::api::client::Client::from_flags(Some(&agent.address()), Some(MANAGEMENT))
        .expect("client")
        .request(method, path, body.map(|body| body.to_string().into_bytes()))
        .await
        .expect("request")
}

/// What the primary owns (ACL policies and global tokens, config entries, intentions) is
/// replicated to the secondary, writes of it made at the secondary land in the primary, and
/// a local token stays where it was made.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_primarys_global_objects_replicate_and_writes_of_them_go_to_the_primary() {
    use hyper::Method;
    // The secondary is ready only once the management token made in dc1 resolves there.
    let (dc1, dc2) = tokio::join!(
        Agent::start(acl_server("p1", PRIMARY, "dc1")),
        Agent::start(acl_server("s1", SECONDARY, "dc2")),
    );
    let own = json(&call(&dc1, Method::GET, "/v1/acl/token/self", None).await);
    let replicated = json(&call(&dc2, Method::GET, "/v1/acl/token/self", None).await);
    assert_eq!(own["AccessorID"], replicated["AccessorID"], "{replicated}");

    // A policy and a global token made in dc1 work in dc2.
    let policy = call(
        &dc1,
        Method::PUT,
        "/v1/acl/policy",
        Some(json!({"Name": "app-reader", "Rules": "key_prefix \"app/\" { policy = \"read\" }"})),
    )
    .await;
    assert_eq!(policy.status, 200, "{}", policy.text());
    let policy_id = json(&policy)["ID"].as_str().unwrap().to_string();
    let token = call(
        &dc1,
        Method::PUT,
        "/v1/acl/token",
        Some(json!({"Description": "reader", "Policies": [{"Name": "app-reader"}]})),
    )
    .await;
    assert_eq!(token.status, 200, "{}", token.text());
    let reader = json(&token)["SecretID"].as_str().unwrap().to_string();
    let written = call(&dc2, Method::PUT, "/v1/kv/app/x", Some(json!("v"))).await;
    assert_eq!(written.status, 200, "{}", written.text());
    let as_reader = concord::api::client::Client::from_flags(Some(&dc2.address()), Some(&reader))
        .expect("client");
    eventually(
        "the reader token works in dc2",
        Duration::from_secs(20),
        || async { (as_reader.get("/v1/kv/app/x").await.ok()?.status == 200).then_some(()) },
    )
    .await;

    // A local token made in dc2 stays there.
    let local = call(
        &dc2,
        Method::PUT,
        "/v1/acl/token",
        Some(json!({"Description": "dc2 only", "Local": true})),
    )
    .await;
    assert_eq!(local.status, 200, "{}", local.text());
    let local_path = format!(
        "/v1/acl/token/{}",
        json(&local)["AccessorID"].as_str().unwrap()
    );
    assert_eq!(call(&dc1, Method::GET, &local_path, None).await.status, 403);

    // A config entry and a policy written at dc2 are written in dc1, and come back.
    let entry = json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"});
    let set = call(&dc2, Method::PUT, "/v1/config", Some(entry)).await;
    assert_eq!((set.status.as_u16(), set.text()), (200, "true".to_string()));
    let in_primary = call(&dc1, Method::GET, "/v1/config/service-defaults/web", None).await;
    assert_eq!(
        json(&in_primary)["Protocol"],
        "http",
        "{}",
        in_primary.text()
    );
    let made_here = call(
        &dc2,
        Method::PUT,
        "/v1/acl/policy",
        Some(json!({"Name": "from-dc2", "Rules": "node_prefix \"\" { policy = \"read\" }"})),
    )
    .await;
    assert_eq!(made_here.status, 200, "{}", made_here.text());
    let in_primary = call(&dc1, Method::GET, "/v1/acl/policy/name/from-dc2", None).await;
    assert_eq!(in_primary.status, 200, "{}", in_primary.text());
    eventually(
        "the config entry back in dc2",
        Duration::from_secs(20),
        || async {
            let read = call(&dc2, Method::GET, "/v1/config/service-defaults/web", None).await;
            (read.status == 200 && json(&read)["Protocol"] == "http").then_some(())
        },
    )
    .await;

    // An intention made in dc1 decides in dc2 (a deny default says no until it arrives).
    let allow = call(
        &dc1,
        Method::PUT,
        "/v1/connect/intentions/exact?source=web&destination=db",
        Some(json!({"Action": "allow"})),
    )
    .await;
    assert_eq!(allow.status, 200, "{}", allow.text());
    eventually(
        "the intention decides in dc2",
        Duration::from_secs(20),
        || async {
            let check = call(
                &dc2,
                Method::GET,
                "/v1/connect/intentions/check?source=web&destination=db",
                None,
            )
            .await;
            (json(&check)["Allowed"] == true).then_some(())
        },
    )
    .await;

    // One trust domain: dc2 lists dc1's roots and signs leaves with an intermediate dc1's
    // active root certified, so a dc2 leaf verifies against dc1's root alone.
    let primary_roots = json(&call(&dc1, Method::GET, "/v1/connect/ca/roots", None).await);
    let secondary_roots = eventually("dc2 has dc1's roots", Duration::from_secs(20), || async {
        // A 500 until the CA has its roots.
        let read = call(&dc2, Method::GET, "/v1/connect/ca/roots", None).await;
        let roots = (read.status == 200).then(|| json(&read))?;
        (roots["ActiveRootID"] == primary_roots["ActiveRootID"]).then_some(roots)
    })
    .await;
    assert_eq!(secondary_roots["TrustDomain"], primary_roots["TrustDomain"]);
    assert_eq!(
        secondary_roots["Roots"][0]["RootCert"],
        primary_roots["Roots"][0]["RootCert"]
    );
    let leaf = json(&call(&dc2, Method::GET, "/v1/agent/connect/ca/leaf/web", None).await);
    let service_uri = leaf["ServiceURI"].as_str().unwrap_or_default();
    let trust_domain = primary_roots["TrustDomain"].as_str().unwrap();
    assert_eq!(
        service_uri,
        format!("spiffe://{trust_domain}/ns/default/dc/dc2/svc/web")
    );
    let chain = leaf["CertPEM"].as_str().expect("a leaf");
    let end = "-----END CERTIFICATE-----";
    let cut = chain.find(end).expect("a certificate") + end.len();
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| {
        let path = dir.path().join(name);
        std::fs::write(&path, text).unwrap();
        path.display().to_string()
    };
    let root = write(
        "root.pem",
        primary_roots["Roots"][0]["RootCert"].as_str().unwrap(),
    );
    let leaf_only = write("leaf.pem", &chain[..cut]);
    let rest = write("rest.pem", chain[cut..].trim_start());
    let verify = |untrusted: Option<&str>| {
        let mut command = std::process::Command::new("openssl");
        command.args(["verify", "-CAfile", &root]);
        if let Some(untrusted) = untrusted {
            command.args(["-untrusted", untrusted]);
        }
        command.arg(&leaf_only).output().expect("openssl runs")
    };
    let verified = verify(Some(&rest));
    assert!(
        verified.status.success(),
        "{}{}",
        String::from_utf8_lossy(&verified.stdout),
        String::from_utf8_lossy(&verified.stderr)
    );
    assert!(
        !verify(None).status.success(),
        "the leaf needs its intermediate"
    );

    // Deleting the policy in dc1 deletes it in dc2; the local token outlives every round.
    let deleted = call(
        &dc1,
        Method::DELETE,
        &format!("/v1/acl/policy/{policy_id}"),
        None,
    )
    .await;
    assert_eq!(deleted.status, 200, "{}", deleted.text());
    eventually(
        "the policy gone from dc2",
        Duration::from_secs(20),
        || async {
            let read = call(
                &dc2,
                Method::GET,
                &format!("/v1/acl/policy/{policy_id}"),
                None,
            )
            .await;
            (read.status != 200).then_some(())
        },
    )
    .await;
    assert_eq!(as_reader.get("/v1/kv/app/x").await.unwrap().status, 403);
    assert_eq!(call(&dc2, Method::GET, &local_path, None).await.status, 200);
}
