//! The xDS server driving real Envoy sidecars: mTLS between two Envoys, intentions as RBAC,
//! canary splits, endpoint health, CA rotation and agent restarts. Every change is followed
//! with new connections, since Envoy applies policy changes to new connections only.

use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::envoy::{backend, get, register, Envoy};
use crate::support::{cli, eventually, free_port, json, Agent, AgentOptions};

/// How soon a change must reach new connections (the bound).
const PROPAGATION: Duration = Duration::from_secs(1);

async fn trust_domain(agent: &Agent) -> String {
    eventually("the CA to bootstrap", Duration::from_secs(10), || async {
        let response = agent.client().get("/v1/connect/ca/roots").await.ok()?;
        let roots = serde_json::from_slice::<Value>(&response.body).ok()?;
        roots["TrustDomain"].as_str().filter(|td| !td.is_empty()).map(str::to_string)
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
    let root = generate_root(td, 1, KeyType::parse("ec", 256).unwrap(), Duration::from_secs(3600), now).unwrap();
    let request = leaf_key_and_csr(&format!("spiffe://{td}/ns/default/dc/dc1/svc/web"), "web").unwrap();
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
    register(&agent, "web", "web", free_port(), web_sidecar, &[("api", upstream)], json!({})).await;
    let api_envoy = Envoy::start(&agent, "api").await;
    let web_envoy = Envoy::start(&agent, "web").await;

    // web's upstream listener reaches api's backend through both Envoys over mTLS.
    let api_cluster = sni("api", "", &td);
    eventually("api's sidecar in web's endpoints", Duration::from_secs(10), || async {
        (!web_envoy.hosts(&api_cluster).await.is_empty()).then_some(())
    })
    .await;
    assert_eq!(get(upstream).await, Ok((200, "api says hi".into())));
    let handshakes = format!("listener.0.0.0.0_{api_sidecar}.ssl.handshake");
    assert!(api_envoy.stat(&handshakes).await >= 1, "the hop into api's Envoy was TLS");

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
    assert!(api_envoy.stat(&format!("listener.0.0.0.0_{api_sidecar}.ssl.fail_verify_error")).await >= 1);
    // The mesh's own web identity, straight to the public listener, is let through.
    let web_identity = leaf_identity(&agent, "web").await;
    let direct = mtls_request(api_sidecar, &roots, &api_uri, &web_identity).unwrap();
    assert!(String::from_utf8_lossy(&direct).ends_with("api says hi"));

    // Deny: the TLS handshake completes, then RBAC closes the connection with nothing read.
    let (code, _, stderr) = cli(&agent, &["intention", "create", "-deny", "web", "api"], None);
    assert_eq!(code, 0, "{stderr}");
    let since = Instant::now();
    until_within("deny", since, upstream, |result| result.is_err()).await;
    assert!(api_envoy.stat("connect_authz.rbac.denied").await >= 1);
    let direct = mtls_request(api_sidecar, &roots, &api_uri, &web_identity);
    assert!(direct.as_ref().map_or(true, |bytes| bytes.is_empty()), "{direct:?}");

    // Allow restores new connections.
    let (code, _, stderr) =
        cli(&agent, &["intention", "create", "-replace", "-allow", "web", "api"], None);
    assert_eq!(code, 0, "{stderr}");
    let since = Instant::now();
    until_within("allow", since, upstream, |result| result.is_ok()).await;
    assert_eq!(get(upstream).await, Ok((200, "api says hi".into())));

    for envoy in [&api_envoy, &web_envoy] {
        assert_eq!(envoy.rejections().await, Vec::<(String, u64)>::new(), "{}", envoy.log());
    }
}
