//! Consul's status codes and texts for every error in ARCHITECTURE.md's error table (taken
//! from Consul's source, 1.17–1.21: `agent/http.go` and each endpoint's handler), and a
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
    ("/v1/query", &["GET", "POST"], true),
    ("/v1/query/some-id", &["GET", "PUT", "DELETE"], true),
    ("/v1/query/some-id/execute", &["GET"], false),
    ("/v1/query/some-id/explain", &["GET"], false),
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
            // Consul's legacy intention API decodes its own body and answers a 500.
            let expected = match *path {
                p if p.starts_with("/v1/acl/") => 401,
                "/v1/connect/intentions" => 500,
                _ => 400,
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

/// One row of ARCHITECTURE.md's error table: a request, Consul's status, and text the body
/// starts with (the whole body where `exact`).
struct Row {
    method: &'static str,
    path: &'static str,
    body: Vec<u8>,
    status: u16,
    text: &'static str,
}

fn row(
    method: &'static str,
    path: &'static str,
    body: &str,
    status: u16,
    text: &'static str,
) -> Row {
    Row {
        method,
        path,
        body: body.as_bytes().to_vec(),
        status,
        text,
    }
}

/// The error table, row by row (the rows that need a cluster or ACLs are in `cluster`,
/// `raft_cluster`, `acl` and `connect_ca`; the table names them).
#[tokio::test]
async fn the_error_table_as_consul_answers_it() {
    let agent = Agent::start(AgentOptions::default()).await;
    let many_ops = format!(
        "[{}]",
        vec![r#"{"KV":{"Verb":"get","Key":"a"}}"#; 129].join(",")
    );
    let rows = [
        row("PUT", "/v1/agent/service/register", "{not json", 400, "Request decode failed: "),
        row("PUT", "/v1/agent/service/register", r#"{"Name": "web", "Port": "eighty"}"#, 400, "Request decode failed: "),
        row("PUT", "/v1/agent/service/register", r#"{"Port": 80}"#, 400, "Missing service name"),
        row("PUT", "/v1/agent/check/register", r#"{"TTL": "10s"}"#, 400, "Missing check name"),
        row("PUT", "/v1/agent/check/register", r#"{"Name": "s", "Args": ["true"], "Interval": "10s"}"#, 500, "Scripts are disabled on this agent from remote calls; to enable, configure 'enable_script_checks' to true"),
        row("PUT", "/v1/agent/check/register", r#"{"Name": "c", "ServiceID": "nope", "TTL": "10s"}"#, 404, "ServiceID \"nope\" does not exist"),
        row("PUT", "/v1/agent/check/pass/nope", "", 404, "Unknown check ID \"nope\". Ensure that the check ID is passed, not the check name."),
        row("PUT", "/v1/agent/check/deregister/nope", "", 404, "Unknown check ID \"nope\". Ensure that the check ID is passed, not the check name."),
        row("PUT", "/v1/agent/service/deregister/nope", "", 404, "Unknown service ID \"nope\". Ensure that the service ID is passed, not the service name."),
        row("GET", "/v1/agent/service/nope", "", 404, "unknown service ID: nope"),
        row("GET", "/v1/agent/health/service/name/nope", "", 404, "ServiceName nope Not Found"),
        row("PUT", "/v1/catalog/register", r#"{"Address": "10.0.0.1"}"#, 500, "Must provide node"),
        row("PUT", "/v1/catalog/register", r#"{"Node": "n9"}"#, 500, "Must provide address if SkipNodeUpdate is not set"),
        row("PUT", "/v1/catalog/deregister", r#"{"Node": "never-registered"}"#, 200, "true"),
        row("PUT", "/v1/txn", &many_ops, 413, "Transaction contains too many operations (129 > 128)"),
        row("PUT", "/v1/txn", r#"[{"KV":{"Verb":"check-index","Key":"zz","Index":5}}]"#, 409, r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"#),
        row("PUT", "/v1/txn", "{not json", 400, "Failed to parse body: "),
        row("PUT", "/v1/txn", r#"[{"Node":{"Verb":"set","Node":{}}}]"#, 409, r#"{"Results":null,"Errors":[{"OpIndex":0,"What":"Must provide node"}]}"#),
        row("PUT", "/v1/txn", r#"[{"KV":{"Verb":"set","Key":"k","Value":"%%"}}]"#, 400, "Failed to parse body: failed to decode value: "),
        row("PUT", "/v1/kv/a?cas=abc", "v", 500, "strconv.ParseUint: parsing \"abc\": invalid syntax"),
        row("PUT", "/v1/kv/a?flags=bad", "v", 500, "strconv.ParseUint: parsing \"bad\": invalid syntax"),
        row("GET", "/v1/kv/missing", "", 404, ""),
        row("PUT", "/v1/kv/", "v", 400, "Missing key name"),
        row("PUT", "/v1/event/fire/big", &"x".repeat(301), 413, "Event payload too large, received 301 bytes, max size: 300 bytes. User events should be kept small for efficient gossip propagation."),
        row("GET", "/v1/kv/a?index=abc", "", 400, "Invalid index"),
        row("GET", "/v1/kv/a?wait=soon", "", 400, "Invalid wait time"),
        row("GET", "/v1/kv/a?stale&consistent", "", 400, "Cannot specify ?stale with ?consistent, conflicting semantics."),
        row("GET", "/v1/health/service/web?cached&consistent", "", 400, "Cannot specify ?cached with ?consistent, conflicting semantics."),
        row("GET", "/v1/catalog/nodes?filter=Node%20===", "", 500, "Failed to create boolean expression evaluator: "),
        row("GET", "/v1/catalog/nodes?dc=dc9", "", 500, "No path to datacenter"),
        row("GET", "/v1/acl/tokens", "", 401, "ACL support disabled"),
        row("PUT", "/v1/acl/bootstrap", "", 401, "ACL support disabled"),
        row("GET", "/v1/config/service-defaults/nope", "", 404, "Config entry not found for \"service-defaults\" / \"nope\""),
        row("GET", "/v1/config/bogus-kind", "", 500, "invalid config entry kind: bogus-kind"),
        row("DELETE", "/v1/config/bogus-kind/x", "", 400, "invalid config entry kind: bogus-kind"),
        row("DELETE", "/v1/config/service-defaults/nope", "", 200, "{}"),
        row("PUT", "/v1/config", r#"{"Kind": "ingress-gatway", "Name": "x"}"#, 400, "Request decoding failed: invalid config entry kind"),
        row("PUT", "/v1/config", r#"{"Kind": "service-defaults", "Name": "web", "Protocol": "smtp"}"#, 500, "Protocol \"smtp\" is not supported"),
        row("PUT", "/v1/connect/ca/configuration", r#"{"Provider": "consul", "Config": {"LeafCertTTL": "30m"}}"#, 500, "leaf cert TTL must be greater or equal than 1h0m0s"),
        row("POST", "/v1/connect/intentions", r#"{"SourceName": "a", "DestinationName": "b", "Action": "maybe"}"#, 500, "Sources[0].Action must be set to 'allow' or 'deny'"),
        row("POST", "/v1/connect/intentions", "{not json", 500, "Failed to decode request body: "),
        row("GET", "/v1/connect/intentions/exact?source=a", "", 500, "required query parameter 'destination' not set"),
        row("PUT", "/v1/session/create", r#"{"Node": "nope"}"#, 500, "apply failed: Missing node registration"),
        row("PUT", "/v1/session/create", r#"{"TTL": "5s"}"#, 500, "Invalid Session TTL '5000000000', must be between [10s=24h0m0s]"),
        row("PUT", "/v1/session/create", r#"{"TTL": "soon"}"#, 500, "Session TTL 'soon' invalid: "),
        row("GET", "/v1/session/info/nope", "", 200, "[]"),
        row("PUT", "/v1/session/renew/nope", "", 404, "Session id 'nope' not found"),
        row("DELETE", "/v1/operator/raft/peer?address=10.9.9.9:8300", "", 500, "address \"10.9.9.9:8300\" was not found in the Raft configuration"),
        row("GET", "/v1/no/such/endpoint", "", 404, "Invalid URL path: not a recognized HTTP API endpoint"),
        row("GET", "/kv/forgot-the-prefix", "", 404, "Invalid URL path: if attempting to use the HTTP API, ensure the path starts with '/v1/'"),
        row("DELETE", "/v1/agent/self", "", 405, "method DELETE not allowed"),
    ];
    for row in rows {
        let response = send(&agent, row.method, row.path, &row.body).await;
        let text = response.text();
        assert_eq!(
            response.status.as_u16(),
            row.status,
            "{} {}: {text}",
            row.method,
            row.path
        );
        assert!(
            text.starts_with(row.text),
            "{} {}: {text:?} does not start with {:?}",
            row.method,
            row.path,
            row.text
        );
    }
    // A KV value over `limits.kv_max_value_size` (512 KiB).
    let response = send(&agent, "PUT", "/v1/kv/big", &vec![b'x'; 600_000]).await;
    assert_eq!(response.status, 413);
    assert!(
        response
            .text()
            == "Request body(600000 bytes) too large, max size: 524288 bytes. See https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size.",
        "{}",
        response.text()
    );
}
