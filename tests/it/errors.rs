//! Consul's status codes and texts for every error in ARCHITECTURE.md's error table, and a
//! sweep of every route: a method it does not take, an unknown query parameter and (for
//! routes with a JSON body) a malformed body each get Consul's answer, never a hang and never
//! a 5xx Consul would not give.

use std::time::Duration;

use hyper::Method;

use crate::support::{header, Agent, AgentOptions};

/// Every route, as a concrete path, with the methods it takes and whether its body is JSON.
const ROUTES: &[(&str, &[&str], bool)] = &[
    ("/v1/kv/", &["GET", "PUT", "DELETE"], false),
    ("/v1/kv/some/key", &["GET", "PUT", "DELETE"], false),
    ("/v1/txn", &["PUT"], true),
    ("/v1/acl/bootstrap", &["PUT"], true),
    ("/v1/acl/token", &["PUT"], true),
    ("/v1/acl/token/self", &["GET"], false),
    ("/v1/acl/token/x", &["GET", "PUT", "DELETE"], true),
    ("/v1/acl/tokens", &["GET"], false),
    ("/v1/acl/policy", &["PUT"], true),
    ("/v1/acl/policies", &["GET"], false),
    ("/v1/acl/role", &["PUT"], true),
    ("/v1/acl/roles", &["GET"], false),
    ("/v1/catalog/register", &["PUT"], true),
    ("/v1/catalog/deregister", &["PUT"], true),
    ("/v1/catalog/datacenters", &["GET"], false),
    ("/v1/catalog/nodes", &["GET"], false),
    ("/v1/catalog/services", &["GET"], false),
    ("/v1/catalog/service/web", &["GET"], false),
    ("/v1/catalog/connect/web", &["GET"], false),
    ("/v1/catalog/gateway-services/gw", &["GET"], false),
    ("/v1/catalog/node/n1", &["GET"], false),
    ("/v1/catalog/node-services/n1", &["GET"], false),
    ("/v1/status/leader", &["GET"], false),
    ("/v1/status/peers", &["GET"], false),
    ("/v1/agent/self", &["GET"], false),
    ("/v1/agent/version", &["GET"], false),
    ("/v1/agent/members", &["GET"], false),
    ("/v1/agent/metrics", &["GET"], false),
    ("/v1/agent/services", &["GET"], false),
    ("/v1/agent/checks", &["GET"], false),
    ("/v1/agent/service/register", &["PUT"], true),
    ("/v1/agent/check/register", &["PUT"], true),
    ("/v1/agent/check/update/c1", &["PUT"], true),
    ("/v1/agent/maintenance", &["PUT"], false),
    ("/v1/event/list", &["GET"], false),
    ("/v1/coordinate/datacenters", &["GET"], false),
    ("/v1/coordinate/nodes", &["GET"], false),
    ("/v1/coordinate/update", &["PUT"], true),
    ("/v1/operator/raft/configuration", &["GET"], false),
    (
        "/v1/operator/autopilot/configuration",
        &["GET", "PUT"],
        true,
    ),
    ("/v1/operator/autopilot/health", &["GET"], false),
    ("/v1/session/create", &["PUT"], true),
    ("/v1/session/list", &["GET"], false),
    ("/v1/config", &["PUT"], true),
    ("/v1/config/service-defaults", &["GET"], false),
    ("/v1/discovery-chain/web", &["GET", "POST"], true),
    ("/v1/connect/ca/roots", &["GET"], false),
    ("/v1/connect/ca/configuration", &["GET", "PUT"], true),
    ("/v1/agent/connect/authorize", &["POST"], true),
    ("/v1/connect/intentions", &["GET", "POST"], true),
    (
        "/v1/connect/intentions/match?by=destination&name=web",
        &["GET"],
        false,
    ),
    ("/v1/health/service/web", &["GET"], false),
    ("/v1/health/connect/web", &["GET"], false),
    ("/v1/health/ingress/web", &["GET"], false),
    ("/v1/health/checks/web", &["GET"], false),
    ("/v1/health/node/n1", &["GET"], false),
    ("/v1/health/state/any", &["GET"], false),
];

async fn send(
    agent: &Agent,
    method: &str,
    path: &str,
    body: &[u8],
) -> concord::api::client::Response {
    let method = Method::from_bytes(method.as_bytes()).unwrap();
    tokio::time::timeout(
        Duration::from_secs(10),
        agent
            .client()
            .request(method.clone(), path, Some(body.to_vec())),
    )
    .await
    .unwrap_or_else(|_| panic!("{method} {path} hung"))
    .unwrap_or_else(|error| panic!("{method} {path}: {error}"))
}

fn with_query(path: &str, query: &str) -> String {
    let separator = if path.contains('?') { '&' } else { '?' };
    format!("{path}{separator}{query}")
}

#[tokio::test]
async fn every_route_answers_wrong_methods_unknown_parameters_and_bad_bodies_as_consul() {
    let agent = Agent::start(AgentOptions::default()).await;
    for (path, methods, json_body) in ROUTES {
        // A method the route does not take: 405, `Allow` lists OPTIONS and the route's.
        let wrong = ["GET", "PUT", "POST", "DELETE"]
            .into_iter()
            .find(|m| !methods.contains(m))
            .unwrap_or("PATCH");
        let response = send(&agent, wrong, path, b"").await;
        assert_eq!(response.status, 405, "{wrong} {path}: {}", response.text());
        assert_eq!(response.text(), format!("method {wrong} not allowed"));
        let allow = header(&response, "Allow");
        assert!(allow.starts_with("OPTIONS"), "{path}: Allow {allow}");
        for method in *methods {
            assert!(
                allow.contains(method),
                "{path}: Allow {allow} lacks {method}"
            );
        }
        let options = send(&agent, "OPTIONS", path, b"").await;
        assert_eq!(options.status, 200, "OPTIONS {path}");
        // Reads: an unknown parameter is ignored, as Consul ignores it.
        if methods.contains(&"GET") {
            let plain = send(&agent, "GET", path, b"").await;
            let odd = send(&agent, "GET", &with_query(path, "bogus-param=1"), b"").await;
            assert_eq!(plain.status, odd.status, "GET {path}?bogus-param=1");
            assert!(!odd.status.is_server_error() || plain.status.is_server_error());
        }
        // A JSON body that is not JSON: the client's error, a 400 (401 where ACLs are off).
        if *json_body {
            let method = methods.iter().find(|m| **m != "GET").unwrap();
            let response = send(&agent, method, path, b"{not json").await;
            let expected = if path.starts_with("/v1/acl/") {
                401
            } else {
                400
            };
            assert_eq!(
                response.status,
                expected,
                "{method} {path} with a malformed body: {}",
                response.text()
            );
            assert!(!response.text().is_empty(), "{method} {path}: no message");
        }
    }
}
