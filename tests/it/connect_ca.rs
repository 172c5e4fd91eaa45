//! The CA and intentions end to end: leafs issued by a real agent complete mutual TLS with
//! each other (and refuse another cluster's), a root rotation keeps old and new leafs
//! verifying through the cross-signed chain while the agent re-issues, and `intention check`
//! agrees with `/v1/agent/connect/authorize` on every exact/wildcard combination.

use std::time::Duration;

use concord::connect::ca::cert_info;
use concord::connect::tls::{self, Identity};
use serde_json::{json, Value};

use crate::connect_entries::ca_ready;
use crate::support::{cli, eventually, json, Agent, AgentOptions};

async fn leaf(agent: &Agent, service: &str, index: u64) -> Value {
    let path = if index == 0 {
        format!("/v1/agent/connect/ca/leaf/{service}")
    } else {
        format!("/v1/agent/connect/ca/leaf/{service}?index={index}&wait=20s")
    };
    let response = agent.client().get(&path).await.unwrap();
    assert_eq!(response.status, 200, "{}", response.text());
    json(&response)
}

fn identity(leaf: &Value) -> Identity {
    Identity::from_pem(
        leaf["CertPEM"].as_str().unwrap(),
        leaf["PrivateKeyPEM"].as_str().unwrap(),
    )
    .unwrap()
}

fn all_roots(roots: &Value) -> Vec<String> {
    roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|root| root["RootCert"].as_str().unwrap().to_string())
        .collect()
}

/// One mutual-TLS exchange: `client` connects to `server`, expecting `server_uri`.
async fn handshake(
    roots_for_server: &[String],
    roots_for_client: &[String],
    server: &Value,
    client: &Value,
) -> tls::Exchange {
    let server_roots: Vec<&str> = roots_for_server.iter().map(String::as_str).collect();
    let client_roots: Vec<&str> = roots_for_client.iter().map(String::as_str).collect();
    let server_config =
        tls::server_config(tls::roots(&server_roots).unwrap(), &identity(server)).unwrap();
    let client_config = tls::client_config(
        tls::roots(&client_roots).unwrap(),
        server["ServiceURI"].as_str().unwrap(),
        &identity(client),
    )
    .unwrap();
    tokio::task::spawn_blocking(move || tls::loopback_exchange(server_config, client_config))
        .await
        .unwrap()
}

#[tokio::test]
async fn leafs_handshake_and_survive_a_root_rotation() {
    let agent = Agent::start(AgentOptions::default()).await;
    let roots = ca_ready(&agent).await;
    let trust_domain = roots["TrustDomain"].as_str().unwrap();
    assert!(trust_domain.ends_with(".consul"));
    let original_root = roots["ActiveRootID"].as_str().unwrap().to_string();

    let web = leaf(&agent, "web", 0).await;
    let api = leaf(&agent, "api", 0).await;
    let web_uri = format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/web");
    assert_eq!(web["ServiceURI"], web_uri.as_str());
    assert_eq!(web["Service"], "web");
    let info = cert_info(web["CertPEM"].as_str().unwrap()).unwrap();
    assert_eq!(
        info.uris,
        vec![web_uri.clone()],
        "exactly one URI SAN, the SPIFFE id"
    );
    assert_eq!(info.authority_key_id, original_root);
    assert!(!info.is_ca);
    let life = info.not_after.duration_since(info.not_before).unwrap();
    assert_eq!(
        life,
        Duration::from_secs(72 * 3600),
        "Consul's default leaf TTL"
    );
    // Serials increase.
    let serial = |leaf: &Value| {
        u64::from_str_radix(&leaf["SerialNumber"].as_str().unwrap().replace(':', ""), 16).unwrap()
    };
    assert!(serial(&api) > serial(&web));

    // web -> api over mutual TLS; the server sees exactly web's identity.
    let trusted = all_roots(&roots);
    let exchange = handshake(&trusted, &trusted, &api, &web).await;
    exchange.client.expect("client side of web -> api");
    assert_eq!(exchange.server.expect("server side"), vec![web_uri.clone()]);

    // A leaf from another cluster's CA is refused by api.
    let other = Agent::start(AgentOptions::default()).await;
    ca_ready(&other).await;
    let intruder = leaf(&other, "web", 0).await;
    let refused = handshake(&trusted, &trusted, &api, &intruder).await;
    let error = refused
        .server
        .expect_err("api accepted a foreign CA's client");
    assert!(error.to_string().contains("UnknownIssuer"), "{error}");

    // An unsupported key type is refused and changes nothing.
    let client = agent.client();
    let bad = client
        .put(
            "/v1/connect/ca/configuration",
            json!({"Provider": "consul", "Config": {"PrivateKeyType": "rsa", "PrivateKeyBits": 2048}})
                .to_string()
                .into(),
        )
        .await
        .unwrap();
    assert_eq!(
        bad.status, 500,
        "Consul's answer to a CA config it cannot use"
    );
    assert!(
        bad.text()
            .contains("PrivateKeyType \"rsa\" is not supported"),
        "{}",
        bad.text()
    );
    assert_eq!(
        json(&client.get("/v1/connect/ca/roots").await.unwrap())["Roots"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // Rotate the root by changing the key size (the CLI's set-config).
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("ca.json");
    std::fs::write(
        &file,
        json!({"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}})
            .to_string(),
    )
    .unwrap();
    let (code, stdout, stderr) = cli(
        &agent,
        &[
            "connect",
            "ca",
            "set-config",
            "-config-file",
            file.to_str().unwrap(),
        ],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "Configuration updated!");
    let rotated = json(&client.get("/v1/connect/ca/roots").await.unwrap());
    let listed = rotated["Roots"].as_array().unwrap();
    assert_eq!(listed.len(), 2, "old and new roots are both listed");
    let new_root = rotated["ActiveRootID"].as_str().unwrap().to_string();
    assert_ne!(new_root, original_root);
    let old = listed
        .iter()
        .find(|root| root["ID"] == original_root.as_str())
        .unwrap();
    let new = listed
        .iter()
        .find(|root| root["ID"] == new_root.as_str())
        .unwrap();
    assert_eq!(old["Active"], false);
    assert_eq!(new["Active"], true);
    assert_eq!(new["PrivateKeyBits"], 384);
    let cross = new["IntermediateCerts"][0].as_str().unwrap();
    let cross_info = cert_info(cross).unwrap();
    assert_eq!(cross_info.subject_key_id, new_root);
    assert_eq!(
        cross_info.authority_key_id, original_root,
        "cross-signed by the old root"
    );

    // The agent re-issues api's leaf on its own: a blocking query wakes with a leaf from the
    // new root.
    let reissued = leaf(&agent, "api", api["ModifyIndex"].as_u64().unwrap()).await;
    assert_ne!(reissued["SerialNumber"], api["SerialNumber"]);
    let reissued_info = cert_info(reissued["CertPEM"].as_str().unwrap()).unwrap();
    assert_eq!(reissued_info.authority_key_id, new_root);
    assert!(
        reissued["CertPEM"].as_str().unwrap().contains(cross.trim()),
        "chain carries the cross-signed cert"
    );

    // Old-root leaf (web, not yet renewed) and new-root leaf (api) still talk, trusting both
    // roots as Envoy does during a rotation...
    let trusted = all_roots(&rotated);
    let exchange = handshake(&trusted, &trusted, &reissued, &web).await;
    exchange.client.expect("old leaf -> new leaf");
    assert_eq!(exchange.server.unwrap(), vec![web_uri.clone()]);
    // ...and a peer that still trusts only the old root verifies the new leaf through the
    // cross-signed chain, in both directions.
    let old_only = vec![old["RootCert"].as_str().unwrap().to_string()];
    let exchange = handshake(&old_only, &old_only, &reissued, &web).await;
    exchange
        .client
        .expect("old-root-only client verifies the new server leaf");
    exchange.server.expect("old-root-only server");
    let new_web = eventually("web re-issued", Duration::from_secs(20), || async {
        let current = leaf(&agent, "web", 0).await;
        (current["SerialNumber"] != web["SerialNumber"]).then_some(current)
    })
    .await;
    let exchange = handshake(&old_only, &trusted, &api, &new_web).await;
    exchange
        .client
        .expect("new client leaf against an old-root-only server");
    assert_eq!(exchange.server.unwrap(), vec![web_uri]);
}

#[tokio::test]
async fn intention_precedence_check_and_authorize_agree() {
    let agent = Agent::start(AgentOptions::default()).await;
    let roots = ca_ready(&agent).await;
    let trust_domain = roots["TrustDomain"].as_str().unwrap().to_string();
    let client = agent.client();
    let authorize = |source: &'static str, target: &'static str| {
        let client = agent.client();
        let uri = format!("spiffe://{trust_domain}/ns/default/dc/dc1/svc/{source}");
        async move {
            let body = json!({"Target": target, "ClientCertURI": uri, "ClientCertSerial": "01"});
            let response = client
                .request(
                    hyper::Method::POST,
                    "/v1/agent/connect/authorize",
                    Some(body.to_string().into_bytes()),
                )
                .await
                .unwrap();
            assert_eq!(response.status, 200, "{}", response.text());
            json(&response)
        }
    };
    let check = |source: &str, target: &str| {
        let (code, stdout, stderr) = cli(&agent, &["intention", "check", source, target], None);
        match code {
            0 => assert_eq!(stdout.trim(), "Allowed"),
            1 => assert_eq!(stdout.trim(), "Denied"),
            other => panic!("intention check exited {other}: {stderr}"),
        }
        code == 0
    };

    // Each step adds an intention; the table says who decides web -> db and api -> db after.
    let steps: [(&[&str], bool, &str, bool, &str); 4] = [
        (
            &["-deny", "*", "*"],
            false,
            "default/* => default/* (Precedence: 5, Action: DENY)",
            false,
            "(Precedence: 5",
        ),
        (
            &["-allow", "web", "*"],
            true,
            "default/web => default/* (Precedence: 6, Action: ALLOW)",
            false,
            "(Precedence: 5",
        ),
        (
            &["-deny", "*", "db"],
            false,
            "default/* => default/db (Precedence: 8, Action: DENY)",
            false,
            "(Precedence: 8",
        ),
        (
            &["-allow", "web", "db"],
            true,
            "default/web => default/db (Precedence: 9, Action: ALLOW)",
            false,
            "(Precedence: 8",
        ),
    ];
    // Nothing yet: the ACL default (allow, ACLs off).
    let decision = authorize("web", "db").await;
    assert_eq!(
        decision,
        json!({"Authorized": true, "Reason": "Default behavior configured by ACLs"})
    );
    assert!(check("web", "db"));
    for (args, web_allowed, web_reason, api_allowed, api_reason) in steps {
        let mut create = vec!["intention", "create"];
        create.extend_from_slice(args);
        let (code, stdout, stderr) = cli(&agent, &create, None);
        assert_eq!(code, 0, "{stderr}");
        assert!(stdout.starts_with("Created: "), "{stdout}");
        let decision = authorize("web", "db").await;
        assert_eq!(decision["Authorized"], web_allowed, "{decision}");
        assert_eq!(
            decision["Reason"],
            format!("Matched L4 intention: {web_reason}")
        );
        assert_eq!(
            check("web", "db"),
            web_allowed,
            "check disagrees with authorize"
        );
        let decision = authorize("api", "db").await;
        assert_eq!(decision["Authorized"], api_allowed);
        assert!(
            decision["Reason"].as_str().unwrap().contains(api_reason),
            "{decision}"
        );
        assert_eq!(check("api", "db"), api_allowed);
    }

    // Match lists by precedence; list, get and delete work by pair.
    let (_, stdout, _) = cli(&agent, &["intention", "match", "db"], None);
    assert_eq!(
        stdout.lines().collect::<Vec<_>>(),
        vec![
            "web => db (allow)",
            "* => db (deny)",
            "web => * (allow)",
            "* => * (deny)"
        ]
    );
    let matched = json(
        &client
            .get("/v1/connect/intentions/match?by=destination&name=db")
            .await
            .unwrap(),
    );
    let precedences: Vec<u64> = matched["db"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["Precedence"].as_u64().unwrap())
        .collect();
    assert_eq!(precedences, vec![9, 8, 6, 5]);
    let (code, _, stderr) = cli(&agent, &["intention", "create", "-deny", "web", "db"], None);
    assert_eq!(code, 1, "a duplicate needs -replace");
    assert!(stderr.contains("already exists"), "{stderr}");
    let (code, _, _) = cli(
        &agent,
        &["intention", "create", "-replace", "-deny", "web", "db"],
        None,
    );
    assert_eq!(code, 0);
    assert!(!check("web", "db"));
    let exact = json(
        &client
            .get("/v1/connect/intentions/exact?source=web&destination=db")
            .await
            .unwrap(),
    );
    assert_eq!(exact["Action"], "deny");
    assert_eq!(exact["Precedence"], 9);
    let (code, stdout, _) = cli(&agent, &["intention", "delete", "web", "db"], None);
    assert_eq!((code, stdout.trim()), (0, "Intention deleted."));
    assert!(!check("web", "db"), "the * => db deny applies again");
    let entry = json(
        &client
            .get("/v1/config/service-intentions/db")
            .await
            .unwrap(),
    );
    assert_eq!(
        entry["Sources"].as_array().unwrap().len(),
        1,
        "intentions are service-intentions entries"
    );

    // An L7 intention denies when only identities are known.
    let l7 = json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"});
    client
        .put("/v1/config", l7.to_string().into())
        .await
        .unwrap();
    let permissions = json!({"Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]});
    let put = client
        .put(
            "/v1/connect/intentions/exact?source=web&destination=api",
            permissions.to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(put.status, 200, "{}", put.text());
    let decision = authorize("web", "api").await;
    assert_eq!(decision["Authorized"], false);
    assert!(decision["Reason"]
        .as_str()
        .unwrap()
        .starts_with("Matched L7 intention: "));
    assert!(!check("web", "api"));
    // The deprecated by-ID API: create, update (keeping the creation time), read, delete.
    let created = client
        .request(
            hyper::Method::POST,
            "/v1/connect/intentions",
            Some(
                json!({"SourceName": "cache", "DestinationName": "db", "Action": "allow",
                       "Meta": {"team": "a"}})
                .to_string()
                .into_bytes(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.status, 200, "{}", created.text());
    let id = json(&created)["ID"].as_str().unwrap().to_string();
    let before = json(
        &client
            .get(&format!("/v1/connect/intentions/{id}"))
            .await
            .unwrap(),
    );
    assert_eq!(before["Meta"], json!({"team": "a"}));
    let update = json!({"SourceName": "cache", "DestinationName": "db", "Action": "deny",
                        "Meta": {"team": "b"}});
    let updated = client
        .put(
            &format!("/v1/connect/intentions/{id}"),
            update.to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(updated.status, 200, "{}", updated.text());
    let after = json(
        &client
            .get(&format!("/v1/connect/intentions/{id}"))
            .await
            .unwrap(),
    );
    assert_eq!(after["Action"], "deny");
    assert_eq!(after["Meta"], json!({"team": "b"}));
    assert_eq!(after["CreatedAt"], before["CreatedAt"]);
    assert!(after["UpdatedAt"].is_string());
    // PUT exact keeps the legacy id and meta it cannot express.
    let exact = client
        .put(
            "/v1/connect/intentions/exact?source=cache&destination=db",
            json!({"Action": "allow"}).to_string().into(),
        )
        .await
        .unwrap();
    assert_eq!(exact.status, 200);
    let kept = json(
        &client
            .get(&format!("/v1/connect/intentions/{id}"))
            .await
            .unwrap(),
    );
    assert_eq!(
        (kept["Action"].as_str(), &kept["Meta"]),
        (Some("allow"), &json!({"team": "b"}))
    );
    let deleted = client
        .delete(&format!("/v1/connect/intentions/{id}"))
        .await
        .unwrap();
    assert_eq!(deleted.status, 200);
    let gone = client
        .get(&format!("/v1/connect/intentions/{id}"))
        .await
        .unwrap();
    assert_eq!(gone.status, 404);

    // A bad client URI is a 400.
    let bad = client
        .request(
            hyper::Method::POST,
            "/v1/agent/connect/authorize",
            Some(
                json!({"Target": "db", "ClientCertURI": "spiffe://x/agent/client/dc/dc1/id/1"})
                    .to_string()
                    .into_bytes(),
            ),
        )
        .await
        .unwrap();
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn rate_limited_leaf_issues_are_retried_and_counted() {
    // One CSR per second: four services asking at once must be retried, not dropped.
    let agent = Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            "connect { ca_config = { csr_max_per_second = 1 } }".into(),
        ],
        ..AgentOptions::default()
    })
    .await;
    ca_ready(&agent).await;
    let services = ["a", "b", "c", "d"];
    let requests = services.map(|service| {
        let client = agent.client();
        tokio::spawn(async move {
            client
                .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
                .await
                .unwrap()
        })
    });
    for request in requests {
        request.await.unwrap();
    }
    for service in services {
        eventually("every leaf issued", Duration::from_secs(30), || async {
            let response = agent
                .client()
                .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
                .await
                .ok()?;
            (response.status == 200).then_some(())
        })
        .await;
    }
    let metrics = json(&agent.client().get("/v1/agent/metrics").await.unwrap());
    let failures = metrics["Counters"]
        .as_array()
        .unwrap()
        .iter()
        .find(|counter| counter["Name"] == "consul.connect.leaf.issue_failures")
        .unwrap()["Count"]
        .as_u64()
        .unwrap();
    assert!(
        failures > 0,
        "the rate limit should have refused some signatures: {metrics}"
    );
    let gauges: Vec<_> = metrics["Gauges"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|gauge| {
            gauge["Name"]
                == crate::support::gauge_name("connect.leaf.seconds_until_expiry").as_str()
        })
        .collect();
    assert_eq!(gauges.len(), 4, "{metrics}");
    for gauge in gauges {
        let left = gauge["Value"].as_f64().unwrap();
        assert!(left > 71.0 * 3600.0 && left <= 72.0 * 3600.0, "{gauge}");
    }
    let text = agent
        .client()
        .get("/v1/agent/metrics?format=prometheus")
        .await
        .unwrap()
        .text();
    assert!(
        text.contains(&format!("consul_connect_leaf_issue_failures {failures}")),
        "{text}"
    );
}

/// `intention create -file`: each argument is a file (or `-`, stdin) holding one intention in
/// the API's JSON; each is created as written.
#[tokio::test]
async fn intentions_are_created_from_files_and_stdin() {
    let agent = Agent::start(AgentOptions::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("deny.json");
    std::fs::write(
        &file,
        r#"{"SourceName": "web", "DestinationName": "db", "Action": "deny", "Description": "from a file"}"#,
    )
    .unwrap();
    let path = file.display().to_string();
    let (code, stdout, stderr) = cli(
        &agent,
        &["intention", "create", "-file", &path, "-"],
        Some(br#"{"SourceName": "api", "DestinationName": "db", "Action": "allow"}"#),
    );
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(
        stdout,
        "Created: web => db (deny)\nCreated: api => db (allow)\n"
    );
    let exact = json(
        &agent
            .client()
            .get("/v1/connect/intentions/exact?source=web&destination=db")
            .await
            .unwrap(),
    );
    assert_eq!(exact["Description"], "from a file");
    let (code, _, _) = cli(&agent, &["intention", "check", "web", "db"], None);
    assert_eq!(code, 1, "web => db is denied");
    let (code, _, _) = cli(&agent, &["intention", "check", "api", "db"], None);
    assert_eq!(code, 0, "api => db is allowed");
    // A file that is not an intention is refused, naming the file.
    std::fs::write(&file, "not json").unwrap();
    let (code, _, stderr) = cli(&agent, &["intention", "create", "-file", &path], None);
    assert_eq!(code, 1);
    assert!(stderr.contains("deny.json"), "{stderr}");
}

#[tokio::test]
async fn ca_configuration_shows_durations_as_they_were_given() {
    let agent = Agent::start(AgentOptions::default()).await;
    ca_ready(&agent).await;
    let client = agent.client();
    let shown = || async {
        json(&client.get("/v1/connect/ca/configuration").await.unwrap())["Config"].clone()
    };
    assert_eq!(
        shown().await["LeafCertTTL"],
        "72h",
        "the default, as people write it"
    );
    let set = |config: Value| {
        let client = client.clone();
        async move {
            let body = json!({"Provider": "consul", "Config": config}).to_string();
            let response = client
                .put("/v1/connect/ca/configuration", body.into())
                .await
                .unwrap();
            assert_eq!(response.status, 200, "{}", response.text());
        }
    };
    set(json!({"LeafCertTTL": "1440m", "RootCertTTL": "87600h0m0s"})).await;
    let config = shown().await;
    assert_eq!(config["LeafCertTTL"], "1440m");
    assert_eq!(config["RootCertTTL"], "87600h0m0s");
    assert_eq!(config["IntermediateCertTTL"], "8760h");
    // A number (nanoseconds) has no text to echo: it is shown computed.
    set(json!({"LeafCertTTL": 7_200_000_000_000u64})).await;
    let config = shown().await;
    assert_eq!(config["LeafCertTTL"], "2h");
    assert_eq!(
        config["RootCertTTL"], "87600h0m0s",
        "untouched keys keep their text"
    );
}
