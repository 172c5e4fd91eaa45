//! The xDS server driving real Envoy sidecars: mTLS between two Envoys, intentions as RBAC,
//! canary splits, endpoint health, CA rotation and agent restarts. Most changes are followed
//! with new connections; the intention tests also hold connections open through them (an
//! HTTP keep-alive pool, a TCP deny that must close only the denied source's connection).

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::envoy::{assert_golden, backend, get, register, Envoy};
use crate::support::{cli, eventually, free_port, json, Agent, AgentOptions};

/// How soon a change must reach new connections (the bound).
const PROPAGATION: Duration = Duration::from_secs(1);

async fn trust_domain(agent: &Agent) -> String {
    eventually("the CA to bootstrap", Duration::from_secs(10), || async {
        let response = agent.client().get("/v1/connect/ca/roots").await.ok()?;
        let roots = serde_json::from_slice::<Value>(&response.body).ok()?;
        roots["TrustDomain"]
            .as_str()
            .filter(|td| !td.is_empty())
            .map(str::to_string)
    })
    .await
}

fn sni(service: &str, subset: &str, trust_domain: &str) -> String {
    let base = format!("{service}.default.dc1.internal.{trust_domain}");
    if subset.is_empty() {
        base
    } else {
        format!("{subset}.{base}")
    }
}

async fn write_entry(agent: &Agent, entry: Value) {
    let response = agent
        .client()
        .put("/v1/config", entry.to_string().into_bytes())
        .await
        .expect("config write");
    assert_eq!(response.status, 200, "{}", response.text());
}

/// Waits until requests on `port` come back with `expect` (Ok body or Err), within the
/// propagation bound, counting from `since`.
async fn until_within(
    what: &str,
    since: Instant,
    port: u16,
    expect: impl Fn(&Result<(u16, String), String>) -> bool,
) {
    loop {
        let result = get(port).await;
        if expect(&result) {
            return;
        }
        assert!(
            since.elapsed() < PROPAGATION,
            "{what} did not happen within {PROPAGATION:?}; last result {result:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A client identity from a CA that is not the mesh's.
fn foreign_identity() -> concord::connect::tls::Identity {
    use concord::connect::ca::{generate_root, leaf_key_and_csr, KeyType, Signer};
    let now = std::time::SystemTime::now();
    let td = "99999999-0000-0000-0000-000000000000.consul";
    let root = generate_root(
        td,
        1,
        KeyType::parse("ec", 256).unwrap(),
        Duration::from_secs(3600),
        now,
    )
    .unwrap();
    let request =
        leaf_key_and_csr(&format!("spiffe://{td}/ns/default/dc/dc1/svc/web"), "web").unwrap();
    let leaf = Signer::new(&root)
        .unwrap()
        .sign(&request.csr_pem, td, 1, Duration::from_secs(3600), now)
        .unwrap();
    concord::connect::tls::Identity::from_pem(&leaf.cert_pem, &request.key_pem).unwrap()
}

/// Sends one request over mutual TLS with `identity` to a public listener and returns the
/// bytes read back (the error when the handshake or read fails).
fn mtls_request(
    port: u16,
    roots_pem: &[String],
    server_uri: &str,
    identity: &concord::connect::tls::Identity,
) -> Result<Vec<u8>, String> {
    use std::io::{Read, Write};
    let pems: Vec<&str> = roots_pem.iter().map(String::as_str).collect();
    let roots = concord::connect::tls::roots(&pems)?;
    let config = concord::connect::tls::client_config(roots, server_uri, identity)?;
    let name = rustls::pki_types::ServerName::try_from("mesh").map_err(|e| e.to_string())?;
    let connection = rustls::ClientConnection::new(config, name).map_err(|e| e.to_string())?;
    let socket = std::net::TcpStream::connect(("127.0.0.1", port)).map_err(|e| e.to_string())?;
    socket.set_read_timeout(Some(Duration::from_secs(5))).ok();
    let mut tls = rustls::StreamOwned::new(connection, socket);
    tls.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    tls.read_to_end(&mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

async fn roots_pem(agent: &Agent) -> Vec<String> {
    let roots = json(&agent.client().get("/v1/connect/ca/roots").await.unwrap());
    roots["Roots"]
        .as_array()
        .unwrap()
        .iter()
        .map(|root| root["RootCert"].as_str().unwrap().to_string())
        .collect()
}

async fn leaf_identity(agent: &Agent, service: &str) -> concord::connect::tls::Identity {
    let leaf = json(
        &agent
            .client()
            .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
            .await
            .unwrap(),
    );
    concord::connect::tls::Identity::from_pem(
        leaf["CertPEM"].as_str().unwrap(),
        leaf["PrivateKeyPEM"].as_str().unwrap(),
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_traffic_flows_over_mtls_and_follows_intentions() {
    let agent = Agent::start(AgentOptions::default()).await;
    let td = trust_domain(&agent).await;
    let api_port = backend("api says hi").await;
    let (api_sidecar, web_sidecar, upstream) = (free_port(), free_port(), free_port());
    register(&agent, "api", "api", api_port, api_sidecar, &[], json!({})).await;
    register(
        &agent,
        "web",
        "web",
        free_port(),
        web_sidecar,
        &[("api", upstream)],
        json!({}),
    )
    .await;
    let api_envoy = Envoy::start(&agent, "api").await;
    let web_envoy = Envoy::start(&agent, "web").await;

    // web's upstream listener reaches api's backend through both Envoys over mTLS.
    let api_cluster = sni("api", "", &td);
    eventually(
        "api's sidecar in web's endpoints",
        Duration::from_secs(10),
        || async { (!web_envoy.hosts(&api_cluster).await.is_empty()).then_some(()) },
    )
    .await;
    assert_eq!(get(upstream).await, Ok((200, "api says hi".into())));
    let ports = [
        (api_port, "api-port"),
        (api_sidecar, "api-sidecar"),
        (web_sidecar, "web-sidecar"),
        (upstream, "upstream"),
    ];
    assert_golden(&web_envoy, "tcp-web", &td, &ports).await;
    assert_golden(&api_envoy, "tcp-api", &td, &ports).await;
    let handshakes = format!("listener.0.0.0.0_{api_sidecar}.ssl.handshake");
    assert!(
        api_envoy.stat(&handshakes).await >= 1,
        "the hop into api's Envoy was TLS"
    );

    // A plaintext client and a client from another CA are refused at api's public listener.
    let plain = get(api_sidecar).await;
    assert!(plain.is_err(), "plaintext got an HTTP answer: {plain:?}");
    let roots = roots_pem(&agent).await;
    let api_uri = format!("spiffe://{td}/ns/default/dc/dc1/svc/api");
    let foreign = mtls_request(api_sidecar, &roots, &api_uri, &foreign_identity());
    assert!(
        foreign.as_ref().map_or(true, |bytes| bytes.is_empty()),
        "a foreign-CA client got {foreign:?}"
    );
    assert!(
        api_envoy
            .stat(&format!(
                "listener.0.0.0.0_{api_sidecar}.ssl.fail_verify_error"
            ))
            .await
            >= 1
    );
    // The mesh's own web identity, straight to the public listener, is let through.
    let web_identity = leaf_identity(&agent, "web").await;
    let direct = mtls_request(api_sidecar, &roots, &api_uri, &web_identity).unwrap();
    assert!(String::from_utf8_lossy(&direct).ends_with("api says hi"));

    // Deny: the TLS handshake completes, then RBAC closes the connection with nothing read.
    let (code, _, stderr) = cli(
        &agent,
        &["intention", "create", "-deny", "web", "api"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let since = Instant::now();
    until_within("deny", since, upstream, |result| result.is_err()).await;
    // The first refusals may be the old filter chain closing (it drains at once); RBAC
    // refuses the next connections.
    eventually("RBAC to deny web", PROPAGATION, || async {
        let _ = get(upstream).await;
        (api_envoy.stat("connect_authz.rbac.denied").await >= 1).then_some(())
    })
    .await;
    let direct = mtls_request(api_sidecar, &roots, &api_uri, &web_identity);
    assert!(
        direct.as_ref().map_or(true, |bytes| bytes.is_empty()),
        "{direct:?}"
    );

    // Allow restores new connections.
    let (code, _, stderr) = cli(
        &agent,
        &["intention", "create", "-replace", "-allow", "web", "api"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let since = Instant::now();
    until_within("allow", since, upstream, |result| result.is_ok()).await;
    assert_eq!(get(upstream).await, Ok((200, "api says hi".into())));

    for envoy in [&api_envoy, &web_envoy] {
        assert_eq!(
            envoy.rejections().await,
            Vec::<(String, u64)>::new(),
            "{}",
            envoy.log()
        );
    }
}

/// A CA configuration file for `connect ca set-config` whose key type forces a new root.
fn new_root_config() -> tempfile::NamedTempFile {
    let config =
        json!({"Provider": "consul", "Config": {"PrivateKeyType": "ec", "PrivateKeyBits": 384}});
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), config.to_string()).unwrap();
    file
}

/// A TCP backend that echoes what it reads, keeping each connection open.
async fn echo_backend() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut read, mut write) = socket.split();
                let _ = tokio::io::copy(&mut read, &mut write).await;
            });
        }
    });
    port
}

/// Sends `text` on an open connection and reads it back.
async fn echo(conn: &mut tokio::net::TcpStream, text: &str) -> Result<(), String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let round = async {
        conn.write_all(text.as_bytes()).await?;
        let mut back = vec![0u8; text.len()];
        conn.read_exact(&mut back).await?;
        Ok::<_, std::io::Error>(back)
    };
    match tokio::time::timeout(Duration::from_secs(2), round).await {
        Ok(Ok(back)) if back == text.as_bytes() => Ok(()),
        Ok(Ok(back)) => Err(format!("echoed {:?}", String::from_utf8_lossy(&back))),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err("no echo within 2 s".into()),
    }
}

/// A connection through an upstream listener that echoes once it is through both Envoys.
async fn echo_connection(port: u16) -> tokio::net::TcpStream {
    eventually(
        "an echo through the mesh",
        Duration::from_secs(10),
        || async {
            let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .ok()?;
            echo(&mut conn, "hello").await.ok()?;
            Some(conn)
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tcp_deny_closes_that_sources_open_connections_and_no_others() {
    use tokio::io::AsyncReadExt;
    let agent = Agent::start(AgentOptions::default()).await;
    trust_domain(&agent).await;
    let api_port = echo_backend().await;
    let (web_upstream, admin_upstream) = (free_port(), free_port());
    register(&agent, "api", "api", api_port, free_port(), &[], json!({})).await;
    for (name, upstream) in [("web", web_upstream), ("admin", admin_upstream)] {
        register(
            &agent,
            name,
            name,
            free_port(),
            free_port(),
            &[("api", upstream)],
            json!({}),
        )
        .await;
    }
    let api_envoy = Envoy::start(&agent, "api").await;
    let web_envoy = Envoy::start(&agent, "web").await;
    let admin_envoy = Envoy::start(&agent, "admin").await;
    let mut web_conn = echo_connection(web_upstream).await;
    let mut admin_conn = echo_connection(admin_upstream).await;

    // Deny web: web's open connection is closed within the bound, admin's stays up.
    let (code, _, stderr) = cli(
        &agent,
        &["intention", "create", "-deny", "web", "api"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let since = Instant::now();
    let mut buffer = [0u8; 16];
    let closed = tokio::time::timeout(PROPAGATION, web_conn.read(&mut buffer)).await;
    assert!(
        matches!(closed, Ok(Ok(0)) | Ok(Err(_))),
        "web's established connection was not closed within {PROPAGATION:?}: {closed:?}"
    );
    assert!(since.elapsed() < PROPAGATION);
    echo(&mut admin_conn, "still here")
        .await
        .expect("admin's connection survives web's deny");
    let mut refused = tokio::net::TcpStream::connect(("127.0.0.1", web_upstream))
        .await
        .unwrap();
    assert!(
        echo(&mut refused, "again").await.is_err(),
        "a new web connection got through"
    );

    // A root rotation replaces every certificate: admin's connection stays up through it.
    let old_admin = leaf_serial(&agent, "admin").await;
    let old_api = leaf_serial(&agent, "api").await;
    let file = new_root_config();
    let path = file.path().display().to_string();
    let (code, _, stderr) = cli(
        &agent,
        &["connect", "ca", "set-config", "-config-file", &path],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    eventually(
        "both Envoys on leafs from the new root",
        Duration::from_secs(30),
        || async {
            let (admin_serial, api_serial) = (
                leaf_serial(&agent, "admin").await,
                leaf_serial(&agent, "api").await,
            );
            (admin_serial != old_admin
                && api_serial != old_api
                && envoy_serials(&admin_envoy).await.contains(&admin_serial)
                && envoy_serials(&api_envoy).await.contains(&api_serial))
            .then_some(())
        },
    )
    .await;
    echo(&mut admin_conn, "after rotation")
        .await
        .expect("admin's connection survives the rotation");
    let mut fresh = echo_connection(admin_upstream).await;
    echo(&mut fresh, "new root").await.unwrap();

    // Allow web again: its new connections get through within the bound.
    let (code, _, stderr) = cli(
        &agent,
        &["intention", "create", "-replace", "-allow", "web", "api"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let since = Instant::now();
    loop {
        let mut conn = tokio::net::TcpStream::connect(("127.0.0.1", web_upstream))
            .await
            .unwrap();
        if echo(&mut conn, "back").await.is_ok() {
            break;
        }
        assert!(
            since.elapsed() < PROPAGATION,
            "web not let back in within {PROPAGATION:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    echo(&mut admin_conn, "to the end")
        .await
        .expect("admin's connection survives web's allow");
    assert!(api_envoy.stat("connect_authz.rbac.denied").await >= 1);
    for envoy in [&api_envoy, &web_envoy, &admin_envoy] {
        assert_eq!(
            envoy.rejections().await,
            Vec::<(String, u64)>::new(),
            "{}",
            envoy.log()
        );
    }
}

/// Registers api v1 and v2 (each with a sidecar) behind an http service-defaults, a resolver
/// with subsets on `Service.Meta.version`, and `web` with an `api` upstream.
async fn canary(agent: &Agent) -> (u16, Vec<Envoy>, Vec<u16>) {
    write_entry(
        agent,
        json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}),
    )
    .await;
    write_entry(
        agent,
        json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        }}),
    )
    .await;
    let upstream = free_port();
    let mut envoys = Vec::new();
    let mut sidecars = Vec::new();
    for version in ["v1", "v2"] {
        let id = format!("api-{version}");
        let port = backend(version).await;
        let meta = json!({"Meta": {"version": version}});
        let sidecar = free_port();
        register(agent, &id, "api", port, sidecar, &[], meta).await;
        envoys.push(Envoy::start(agent, &id).await);
        sidecars.push(sidecar);
    }
    register(
        agent,
        "web",
        "web",
        free_port(),
        free_port(),
        &[("api", upstream)],
        json!({}),
    )
    .await;
    envoys.push(Envoy::start(agent, "web").await);
    (upstream, envoys, sidecars)
}

fn splitter(v1: f64, v2: f64) -> Value {
    json!({"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": v1, "ServiceSubset": "v1"},
        {"Weight": v2, "ServiceSubset": "v2"},
    ]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_canary_splits_80_20_then_moves_everything_to_v2() {
    let agent = Agent::start(AgentOptions::default()).await;
    let td = trust_domain(&agent).await;
    let (upstream, envoys, sidecars) = canary(&agent).await;
    let web = &envoys[2];
    write_entry(&agent, splitter(80.0, 20.0)).await;
    for subset in ["v1", "v2"] {
        let cluster = sni("api", subset, &td);
        eventually(
            "both subsets' endpoints in web's Envoy",
            Duration::from_secs(10),
            || async { (web.hosts(&cluster).await.len() == 1).then_some(()) },
        )
        .await;
    }
    eventually(
        "the 80/20 route in web's Envoy",
        Duration::from_secs(10),
        || async {
            let routes = web
                .admin("/config_dump?resource=dynamic_route_configs")
                .await;
            routes.contains("\"weight\": 8000").then_some(())
        },
    )
    .await;

    let mut ports = vec![(upstream, "upstream")];
    ports.extend(
        sidecars
            .iter()
            .zip(["api-v1-sidecar", "api-v2-sidecar"])
            .map(|(p, n)| (*p, n)),
    );
    // The route lands before the unsplit cluster's removal does: the golden is what web's
    // Envoy holds once its stream has converged, not whatever it holds mid-update.
    web.assert_converges(&agent, "web-sidecar-proxy", Duration::from_secs(10))
        .await;
    assert_golden(web, "canary-web", &td, &ports).await;

    // 1,000 requests: v1's share is binomial(1000, 0.8); 4 sigma is ±51.
    let mut v1 = 0;
    for _ in 0..1000 {
        match get(upstream).await {
            Ok((200, body)) if body == "v1" => v1 += 1,
            Ok((200, body)) if body == "v2" => {}
            other => panic!("request failed: {other:?}\n{}", web.log()),
        }
    }
    assert!(
        (749..=851).contains(&v1),
        "v1 got {v1} of 1000 (expected 800 ± 51)"
    );

    // 0/100: new requests all go to v2 within the propagation bound. One v2 answer proves
    // nothing (the 80/20 route gives one in five); 20 in a row would happen by chance under it
    // about once in 10^14.
    write_entry(&agent, splitter(0.0, 100.0)).await;
    let since = Instant::now();
    let streak = std::cell::Cell::new(0);
    until_within("the move to v2", since, upstream, |r| {
        streak.set(if r == &Ok((200, "v2".into())) {
            streak.get() + 1
        } else {
            0
        });
        streak.get() >= 20
    })
    .await;
    for _ in 0..100 {
        assert_eq!(get(upstream).await, Ok((200, "v2".into())));
    }

    // An L7 deny answers 403 from api's HTTP RBAC filter, on new connections and on the
    // connections web's Envoy already pooled to api: the filter's configuration arrives by
    // ECDS, and every request builds its filters from the latest one.
    let roots = roots_pem(&agent).await;
    let api_uri = format!("spiffe://{td}/ns/default/dc/dc1/svc/api");
    let web_identity = leaf_identity(&agent, "web").await;
    let (code, _, stderr) = cli(
        &agent,
        &["intention", "create", "-deny", "web", "api"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let since = Instant::now();
    loop {
        let reply = mtls_request(sidecars[1], &roots, &api_uri, &web_identity).unwrap();
        let reply = String::from_utf8_lossy(&reply).into_owned();
        if reply.starts_with("HTTP/1.1 403") && reply.ends_with("RBAC: access denied") {
            break;
        }
        assert!(
            since.elapsed() < PROPAGATION,
            "no 403 within {PROPAGATION:?}: {reply}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(envoys[1].stat("http.public_listener.rbac.denied").await >= 1);
    until_within(
        "a 403 through web's pooled connections",
        since,
        upstream,
        |result| matches!(result, Ok((403, body)) if body == "RBAC: access denied"),
    )
    .await;
    // Allowed again: the next request through the same pool passes.
    let (code, _, stderr) = cli(
        &agent,
        &["intention", "create", "-replace", "-allow", "web", "api"],
        None,
    );
    assert_eq!(code, 0, "{stderr}");
    let allowed = Instant::now();
    until_within(
        "a 200 again after the allow",
        allowed,
        upstream,
        |result| matches!(result, Ok((200, body)) if body == "v2"),
    )
    .await;
    // api's listeners stayed as they were: only the filter's configuration changed.
    for envoy in &envoys[..2] {
        assert_eq!(envoy.stat("listener_manager.listener_modified").await, 0);
    }

    for envoy in &envoys {
        assert_eq!(
            envoy.rejections().await,
            Vec::<(String, u64)>::new(),
            "{}",
            envoy.log()
        );
    }
}

/// Envoy's certificate serials (lowercase hex, no colons) from its `/certs`.
async fn envoy_serials(envoy: &Envoy) -> String {
    envoy.admin("/certs").await.to_lowercase()
}

pub(crate) async fn leaf_serial(agent: &Agent, service: &str) -> String {
    let leaf = json(
        &agent
            .client()
            .get(&format!("/v1/agent/connect/ca/leaf/{service}"))
            .await
            .unwrap(),
    );
    leaf["SerialNumber"]
        .as_str()
        .unwrap()
        .replace(':', "")
        .to_lowercase()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn critical_instances_leave_endpoints_and_a_root_rotation_drops_no_request() {
    let agent = Agent::start(AgentOptions::default()).await;
    let td = trust_domain(&agent).await;
    let upstream = free_port();
    let mut envoys = Vec::new();
    let mut sidecars = Vec::new();
    for id in ["api-1", "api-2"] {
        let port = backend(id).await;
        let sidecar = free_port();
        register(
            &agent,
            id,
            "api",
            port,
            sidecar,
            &[],
            json!({"Check": {"TTL": "600s"}}),
        )
        .await;
        let response = agent
            .client()
            .put(&format!("/v1/agent/check/pass/service:{id}"), Vec::new())
            .await
            .unwrap();
        assert_eq!(response.status, 200, "{}", response.text());
        envoys.push(Envoy::start(&agent, id).await);
        sidecars.push(sidecar);
    }
    register(
        &agent,
        "web",
        "web",
        free_port(),
        free_port(),
        &[("api", upstream)],
        json!({}),
    )
    .await;
    let web = Envoy::start(&agent, "web").await;
    let cluster = sni("api", "", &td);
    let both: Vec<String> = sidecars
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    let mut both_sorted = both.clone();
    both_sorted.sort();
    eventually(
        "both api sidecars in web's endpoints",
        Duration::from_secs(10),
        || async { (web.hosts(&cluster).await == both_sorted).then_some(()) },
    )
    .await;

    // api-2's check goes critical: its sidecar (aliasing it) leaves web's endpoints.
    let response = agent
        .client()
        .put("/v1/agent/check/fail/service:api-2", Vec::new())
        .await
        .unwrap();
    assert_eq!(response.status, 200);
    let since = Instant::now();
    loop {
        if web.hosts(&cluster).await == both[..1] {
            break;
        }
        assert!(
            since.elapsed() < PROPAGATION,
            "api-2 still in web's endpoints"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    for _ in 0..50 {
        assert_eq!(get(upstream).await, Ok((200, "api-1".into())));
    }

    // Rotate the root while requests keep flowing: none may fail.
    let old_web = leaf_serial(&agent, "web").await;
    let old_api = leaf_serial(&agent, "api").await;
    let file = new_root_config();
    let path = file.path().display().to_string();
    let rotate = tokio::task::spawn_blocking({
        let address = agent.address();
        move || {
            std::process::Command::new(crate::support::BINARY)
                .args([
                    "connect",
                    "ca",
                    "set-config",
                    "-config-file",
                    &path,
                    "-http-addr",
                    &address,
                ])
                .output()
                .unwrap()
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut sent, mut failed, mut rotated_at) = (0, Vec::new(), None);
    while rotated_at.is_none_or(|at| sent < at + 200) {
        match get(upstream).await {
            Ok((200, body)) if body == "api-1" => {}
            other => failed.push(other),
        }
        sent += 1;
        if rotated_at.is_none() && sent % 10 == 0 {
            let (web_serial, api_serial) = (
                leaf_serial(&agent, "web").await,
                leaf_serial(&agent, "api").await,
            );
            if web_serial != old_web
                && api_serial != old_api
                && envoy_serials(&web).await.contains(&web_serial)
                && envoy_serials(&envoys[0]).await.contains(&api_serial)
            {
                rotated_at = Some(sent);
            }
        }
        assert!(
            Instant::now() < deadline,
            "the Envoys never got leafs from the new root"
        );
    }
    let output = rotate.await.unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        failed.is_empty(),
        "{} of {sent} requests failed during rotation: {:?}",
        failed.len(),
        &failed[..failed.len().min(5)]
    );
    for envoy in envoys.iter().chain([&web]) {
        assert_eq!(
            envoy.rejections().await,
            Vec::<(String, u64)>::new(),
            "{}",
            envoy.log()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoy_reconnects_to_a_restarted_agent_and_is_resent_nothing_it_holds() {
    let data = tempfile::tempdir().unwrap();
    let options = AgentOptions {
        dev: false,
        data_dir: Some(data.path().to_path_buf()),
        grpc_port: Some(free_port()),
        ..AgentOptions::default()
    };
    let agent = Agent::start(options.clone()).await;
    let td = trust_domain(&agent).await;
    let (upstream, envoys, _) = canary(&agent).await;
    let web = &envoys[2];
    write_entry(&agent, splitter(80.0, 20.0)).await;
    eventually(
        "the 80/20 route and both subsets in web's Envoy",
        Duration::from_secs(10),
        || async {
            let routes = web
                .admin("/config_dump?resource=dynamic_route_configs")
                .await;
            let v1 = web.hosts(&sni("api", "v1", &td)).await.len();
            let v2 = web.hosts(&sni("api", "v2", &td)).await.len();
            (routes.contains("\"weight\": 8000") && v1 == 1 && v2 == 1).then_some(())
        },
    )
    .await;
    let held = [
        "cluster_manager.cds.update_success".to_string(),
        "listener_manager.lds.update_success".to_string(),
        format!("cluster.{}.update_success", sni("api", "v1", &td)),
        format!("cluster.{}.update_success", sni("api", "v2", &td)),
    ];
    let route = "http.upstream.api.default.default.dc1.rds.api.update_success";
    let before = web.stats().await;

    // The agent goes away: Envoy notices and keeps serving what it has.
    drop(agent);
    eventually(
        "Envoy to see the agent gone",
        Duration::from_secs(10),
        || async { (web.stat("control_plane.connected_state").await == 0).then_some(()) },
    )
    .await;
    assert!(
        get(upstream).await.is_ok(),
        "traffic stops while the agent is down"
    );

    let agent = Agent::start(options).await;
    eventually("Envoy to reconnect", Duration::from_secs(60), || async {
        (web.stat("control_plane.connected_state").await == 1).then_some(())
    })
    .await;
    // A change after the reconnect: once Envoy has it, anything resent on reconnect (which
    // goes out before it) has been counted too.
    write_entry(&agent, splitter(50.0, 50.0)).await;
    eventually(
        "the 50/50 route in web's Envoy",
        Duration::from_secs(10),
        || async {
            let routes = web
                .admin("/config_dump?resource=dynamic_route_configs")
                .await;
            routes.contains("\"weight\": 5000").then_some(())
        },
    )
    .await;
    let after = web.stats().await;
    for name in &held {
        assert_eq!(
            after.get(name),
            before.get(name),
            "{name} changed: resent on reconnect"
        );
    }
    assert_eq!(after.get(route).copied(), before.get(route).map(|n| n + 1));
    for envoy in &envoys {
        assert_eq!(
            envoy.rejections().await,
            Vec::<(String, u64)>::new(),
            "{}",
            envoy.log()
        );
    }
}
