//! ACLs end to end: real agents with `acl { enabled = true }`, tokens and policies made over
//! the HTTP API and the CLI, and every endpoint family asked with a token that has the rule it
//! needs, one that lacks it, and none; DNS through `dig`, xDS through a real Envoy, and a
//! client agent that must stop honouring a deleted token.

use std::time::Duration;

use concord::api::client::{Client, Response};
use hyper::Method;
use serde_json::{json, Value};

use crate::envoy::Envoy;
use crate::support::{cli, eventually, json, Agent, AgentOptions, Placement};

/// The initial management token every test agent is configured with.
const MANAGEMENT: &str = "6c5a9d4e-2f1b-4c8a-9e3d-7b0f1a2c3d4e";

fn acl_config(default_policy: &str) -> String {
    format!(
        "acl {{\n  enabled = true\n  default_policy = \"{default_policy}\"\n  tokens {{ initial_management = \"{MANAGEMENT}\" }}\n}}"
    )
}

/// A `-dev` agent with ACLs on, logging at debug (so the secrets test sees the most).
async fn acl_agent(default_policy: &str) -> Agent {
    Agent::start(AgentOptions {
        extra_args: vec![
            "-hcl".into(),
            acl_config(default_policy),
            "-log-level=debug".into(),
            // Gossip encryption, so the keyring endpoints answer.
            "-encrypt".into(),
            "pUqJrVyVRj5jsiYEkM/tFQYfWyJIv4s3XkvDwy7Cu5s=".into(),
        ],
        ready_token: Some(MANAGEMENT.into()),
        ..AgentOptions::default()
    })
    .await
}

fn client(agent: &Agent, token: Option<&str>) -> Client {
    Client::from_flags(Some(&agent.address()), token).expect("client")
}

async fn call(client: &Client, method: Method, path: &str, body: Option<&str>) -> Response {
    client
        .request(method, path, body.map(|body| body.as_bytes().to_vec()))
        .await
        .expect("request")
}

/// Creates a policy with `rules` and a token holding it; returns the token's SecretID.
async fn token_with(agent: &Agent, name: &str, rules: &str) -> String {
    let admin = client(agent, Some(MANAGEMENT));
    let body = json!({"Name": name, "Rules": rules}).to_string();
    let policy = call(&admin, Method::PUT, "/v1/acl/policy", Some(&body)).await;
    assert_eq!(policy.status, 200, "policy {name}: {}", policy.text());
    let body = json!({"Description": name, "Policies": [{"Name": name}]}).to_string();
    let token = call(&admin, Method::PUT, "/v1/acl/token", Some(&body)).await;
    assert_eq!(token.status, 200, "token {name}: {}", token.text());
    json(&token)["SecretID"]
        .as_str()
        .expect("secret")
        .to_string()
}

/// What a token without the family's rule gets.
#[derive(Clone, Copy)]
enum Without {
    /// 403.
    Refused,
    /// 409 with the refusal in the transaction's `Errors` (Consul checks every operation of
    /// a transaction before applying any and reports each by position).
    RefusedInTxn,
    /// 200 (or 404 for a KV listing filtered to nothing) without the marker.
    Filtered(&'static str),
}

struct Case {
    family: &'static str,
    rules: &'static str,
    method: Method,
    path: &'static str,
    body: Option<&'static str>,
    without: Without,
    /// ACL and snapshot rights, which `default_policy = "allow"` does not grant.
    acl_rights: bool,
}

fn case(
    family: &'static str,
    rules: &'static str,
    method: Method,
    path: &'static str,
    body: Option<&'static str>,
    without: Without,
) -> Case {
    Case {
        family,
        rules,
        method,
        path,
        body,
        without,
        acl_rights: false,
    }
}

/// One request per endpoint family in Consul's permission table.
fn cases() -> Vec<Case> {
    use Without::{Filtered, Refused, RefusedInTxn};
    vec![
        case(
            "kv read",
            r#"key_prefix "app/" { policy = "read" }"#,
            Method::GET,
            "/v1/kv/app/config",
            None,
            Refused,
        ),
        case(
            "kv write",
            r#"key_prefix "app/" { policy = "write" }"#,
            Method::PUT,
            "/v1/kv/app/new",
            Some("v"),
            Refused,
        ),
        case(
            "kv listing",
            r#"key_prefix "app/" { policy = "read" }"#,
            Method::GET,
            "/v1/kv/app/?recurse",
            None,
            Filtered("app/config"),
        ),
        case(
            "kv recursive delete",
            r#"key_prefix "tmp/" { policy = "write" }"#,
            Method::DELETE,
            "/v1/kv/tmp/?recurse",
            None,
            Refused,
        ),
        case(
            "txn",
            r#"key_prefix "app/" { policy = "write" }"#,
            Method::PUT,
            "/v1/txn",
            Some(r#"[{"KV":{"Verb":"set","Key":"app/txn","Value":"dg=="}}]"#),
            RefusedInTxn,
        ),
        case(
            "txn read",
            r#"key_prefix "app/" { policy = "read" }"#,
            Method::PUT,
            "/v1/txn",
            Some(r#"[{"KV":{"Verb":"get-tree","Key":"app/"}}]"#),
            Filtered("app/config"),
        ),
        case(
            "txn catalog",
            r#"node "txn-node" { policy = "write" } service "txn-svc" { policy = "write" }"#,
            Method::PUT,
            "/v1/txn",
            Some(
                r#"[{"Node":{"Verb":"set","Node":{"Node":"txn-node","Address":"10.0.0.8"}}},
                    {"Service":{"Verb":"set","Node":"txn-node","Service":{"Service":"txn-svc"}}},
                    {"Check":{"Verb":"set","Check":{"Node":"txn-node","CheckID":"c","ServiceID":"txn-svc"}}}]"#,
            ),
            RefusedInTxn,
        ),
        case(
            "catalog services",
            r#"service "web" { policy = "read" }"#,
            Method::GET,
            "/v1/catalog/services",
            None,
            Filtered("\"web\""),
        ),
        case(
            "catalog nodes",
            r#"node_prefix "" { policy = "read" }"#,
            Method::GET,
            "/v1/catalog/nodes",
            None,
            Filtered("test-node"),
        ),
        case(
            "catalog register",
            r#"node "ext" { policy = "write" } service "ext-svc" { policy = "write" }"#,
            Method::PUT,
            "/v1/catalog/register",
            Some(
                r#"{"Node":"ext","Address":"10.0.0.9","Service":{"Service":"ext-svc","Port":80}}"#,
            ),
            Refused,
        ),
        case(
            "health service",
            r#"service "web" { policy = "read" } node_prefix "" { policy = "read" }"#,
            Method::GET,
            "/v1/health/service/web",
            None,
            Filtered("\"web\""),
        ),
        case(
            "health state",
            r#"node_prefix "" { policy = "read" }"#,
            Method::GET,
            "/v1/health/state/any",
            None,
            Filtered("serfHealth"),
        ),
        case(
            "agent read",
            r#"agent_prefix "" { policy = "read" }"#,
            Method::GET,
            "/v1/agent/self",
            None,
            Refused,
        ),
        case(
            "agent members",
            r#"node_prefix "" { policy = "read" }"#,
            Method::GET,
            "/v1/agent/members",
            None,
            Filtered("test-node"),
        ),
        case(
            "agent services",
            r#"service "web" { policy = "read" }"#,
            Method::GET,
            "/v1/agent/services",
            None,
            Filtered("\"web\""),
        ),
        case(
            "agent service register",
            r#"service "api" { policy = "write" }"#,
            Method::PUT,
            "/v1/agent/service/register",
            Some(r#"{"Name":"api","Port":81}"#),
            Refused,
        ),
        case(
            "session create",
            r#"session_prefix "" { policy = "write" }"#,
            Method::PUT,
            "/v1/session/create",
            Some("{}"),
            Refused,
        ),
        case(
            "session list",
            r#"session_prefix "" { policy = "read" }"#,
            Method::GET,
            "/v1/session/list",
            None,
            Filtered("\"Node\""),
        ),
        case(
            "event fire",
            r#"event_prefix "deploy" { policy = "write" }"#,
            Method::PUT,
            "/v1/event/fire/deploy",
            None,
            Refused,
        ),
        case(
            "operator",
            r#"operator = "read""#,
            Method::GET,
            "/v1/operator/raft/configuration",
            None,
            Refused,
        ),
        case(
            "config entry",
            r#"service "web" { policy = "write" }"#,
            Method::PUT,
            "/v1/config",
            Some(r#"{"Kind":"service-defaults","Name":"web","Protocol":"http"}"#),
            Refused,
        ),
        case(
            "mesh config entry",
            r#"mesh = "write""#,
            Method::PUT,
            "/v1/config",
            Some(r#"{"Kind":"proxy-defaults","Name":"global"}"#),
            Refused,
        ),
        case(
            "intentions",
            r#"service "web" { policy = "read" intentions = "write" }"#,
            Method::PUT,
            "/v1/connect/intentions/exact?source=api&destination=web",
            Some(r#"{"Action":"allow"}"#),
            Refused,
        ),
        case(
            "leaf certificate",
            r#"service "web" { policy = "write" }"#,
            Method::GET,
            "/v1/agent/connect/ca/leaf/web",
            None,
            Refused,
        ),
        case(
            "agent check register",
            r#"node "test-node" { policy = "write" }"#,
            Method::PUT,
            "/v1/agent/check/register",
            Some(r#"{"Name":"mem","TTL":"30s"}"#),
            Refused,
        ),
        case(
            "agent maintenance",
            r#"node "test-node" { policy = "write" }"#,
            Method::PUT,
            "/v1/agent/maintenance?enable=false",
            None,
            Refused,
        ),
        case(
            "catalog deregister",
            r#"node "gone" { policy = "write" }"#,
            Method::PUT,
            "/v1/catalog/deregister",
            Some(r#"{"Node":"gone"}"#),
            Refused,
        ),
        case(
            "discovery chain",
            r#"service "web" { policy = "read" }"#,
            Method::GET,
            "/v1/discovery-chain/web",
            None,
            Refused,
        ),
        case(
            "connect ca configuration",
            r#"operator = "read""#,
            Method::GET,
            "/v1/connect/ca/configuration",
            None,
            Refused,
        ),
        case(
            "autopilot",
            r#"operator = "read""#,
            Method::GET,
            "/v1/operator/autopilot/configuration",
            None,
            Refused,
        ),
        case(
            "keyring",
            r#"keyring = "read""#,
            Method::GET,
            "/v1/operator/keyring",
            None,
            Refused,
        ),
        case(
            "event list",
            r#"event_prefix "seed" { policy = "read" }"#,
            Method::GET,
            "/v1/event/list",
            None,
            Filtered("seed-event"),
        ),
        Case {
            acl_rights: true,
            ..case(
                "snapshot",
                r#"acl = "write""#,
                Method::GET,
                "/v1/snapshot",
                None,
                Refused,
            )
        },
        Case {
            acl_rights: true,
            ..case(
                "acl read",
                r#"acl = "read""#,
                Method::GET,
                "/v1/acl/policies",
                None,
                Refused,
            )
        },
    ]
}

/// State the cases read: a KV entry, the `web` service, a session.
async fn seed(agent: &Agent) {
    let admin = client(agent, Some(MANAGEMENT));
    for (method, path, body) in [
        (Method::PUT, "/v1/kv/app/config", "v1"),
        (Method::PUT, "/v1/kv/tmp/a", "v"),
        (
            Method::PUT,
            "/v1/agent/service/register",
            r#"{"Name":"web","Port":8080}"#,
        ),
        (Method::PUT, "/v1/session/create", "{}"),
        (Method::PUT, "/v1/event/fire/seed-event", ""),
    ] {
        let response = call(&admin, method, path, Some(body)).await;
        assert_eq!(response.status, 200, "{path}: {}", response.text());
    }
    // The agent's anti-entropy puts `web` in the catalog.
    eventually("web in the catalog", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let response = call(&admin, Method::GET, "/v1/catalog/service/web", None).await;
            (json(&response)
                .as_array()
                .is_some_and(|list| !list.is_empty()))
            .then_some(())
        }
    })
    .await;
}

fn succeeded(case: &Case, response: &Response) -> bool {
    let body = response.text();
    match case.without {
        Without::Filtered(marker) => response.status == 200 && body.contains(marker),
        Without::Refused | Without::RefusedInTxn => response.status == 200,
    }
}

async fn matrix(default_policy: &str) -> (Agent, Vec<String>) {
    let agent = acl_agent(default_policy).await;
    seed(&agent).await;
    let mut secrets = vec![MANAGEMENT.to_string()];
    let unrelated = token_with(
        &agent,
        "unrelated",
        r#"key "unrelated" { policy = "read" }"#,
    )
    .await;
    secrets.push(unrelated.clone());
    let without = client(&agent, Some(&unrelated));
    for (position, case) in cases().iter().enumerate() {
        let secret = token_with(&agent, &format!("case-{position}"), case.rules).await;
        secrets.push(secret.clone());
        let with = client(&agent, Some(&secret));
        // Without first, so a refused write leaves nothing for the granted one to trip on.
        let refused = call(&without, case.method.clone(), case.path, case.body).await;
        let denied_here = default_policy == "deny" || case.acl_rights;
        match (denied_here, case.without) {
            (false, _) => assert!(
                succeeded(case, &refused),
                "{} with default allow and no rule: {} {}",
                case.family,
                refused.status,
                refused.text()
            ),
            (true, Without::Refused) => {
                assert_eq!(refused.status, 403, "{}: {}", case.family, refused.text());
                assert!(
                    refused
                        .text()
                        .starts_with("Permission denied: token with AccessorID '"),
                    "{}: {}",
                    case.family,
                    refused.text()
                );
            }
            (true, Without::RefusedInTxn) => {
                assert_eq!(refused.status, 409, "{}: {}", case.family, refused.text());
                let errors = json(&refused)["Errors"].clone();
                let whats: Vec<&str> = errors
                    .as_array()
                    .expect("Errors")
                    .iter()
                    .map(|error| error["What"].as_str().unwrap_or_default())
                    .collect();
                assert!(
                    !whats.is_empty()
                        && whats.iter().all(|what| {
                            what.starts_with("Permission denied: token with AccessorID '")
                        }),
                    "{}: {errors}",
                    case.family
                );
            }
            (true, Without::Filtered(marker)) => {
                let body = refused.text();
                assert!(
                    (refused.status == 200 || refused.status == 404) && !body.contains(marker),
                    "{} should be filtered: {} {body}",
                    case.family,
                    refused.status
                );
                if refused.status == 200 {
                    assert_eq!(
                        crate::support::header(&refused, "X-Consul-Results-Filtered-By-ACLs"),
                        "true",
                        "{}",
                        case.family
                    );
                }
            }
        }
        let granted = call(&with, case.method.clone(), case.path, case.body).await;
        assert!(
            succeeded(case, &granted),
            "{} with its rule ({}): {} {}",
            case.family,
            case.rules,
            granted.status,
            granted.text()
        );
    }
    (agent, secrets)
}

/// No secret in any log line the agent wrote.
fn assert_no_secrets_logged(agent: &Agent, secrets: &[String]) {
    let log = agent.log();
    assert!(log.len() > 1000, "the agent logged almost nothing:\n{log}");
    for secret in secrets {
        assert!(
            !log.contains(secret.as_str()),
            "secret {secret} in the agent log"
        );
    }
}

#[tokio::test]
async fn acl_permission_matrix_with_default_deny() {
    let (agent, secrets) = matrix("deny").await;
    // The anonymous token: refused with Consul's implicit-token text, and never told what
    // was filtered.
    let anonymous = client(&agent, None);
    let refused = call(&anonymous, Method::GET, "/v1/kv/app/config", None).await;
    assert_eq!(refused.status, 403);
    assert_eq!(
        refused.text(),
        "Permission denied: anonymous token lacks permission 'key:read' on \"app/config\". \
         The anonymous token is used implicitly when a request does not specify a token."
    );
    let listing = call(&anonymous, Method::GET, "/v1/catalog/services", None).await;
    assert_eq!(listing.status, 200);
    assert_eq!(json(&listing), json!({}));
    assert_eq!(
        crate::support::header(&listing, "X-Consul-Results-Filtered-By-ACLs"),
        ""
    );
    // An unknown token is not the anonymous one.
    let unknown = client(&agent, Some("00000000-1111-2222-3333-444444444444"));
    let refused = call(&unknown, Method::GET, "/v1/catalog/services", None).await;
    assert_eq!(
        (refused.status.as_u16(), refused.text()),
        (403, "ACL not found".into())
    );
    // The agent's default token stands in for a request without one, from the next request.
    let reader = token_with(
        &agent,
        "default-reader",
        r#"key_prefix "app/" { policy = "read" }"#,
    )
    .await;
    let (code, out, err) = cli(
        &agent,
        &[
            "acl",
            "set-agent-token",
            "-token",
            MANAGEMENT,
            "default",
            &reader,
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let read = call(&anonymous, Method::GET, "/v1/kv/app/config", None).await;
    assert_eq!(read.status, 200, "{}", read.text());
    let mut secrets = secrets;
    secrets.push(reader);
    assert_no_secrets_logged(&agent, &secrets);
}

#[tokio::test]
async fn acl_permission_matrix_with_default_allow() {
    let (agent, secrets) = matrix("allow").await;
    // An explicit deny still wins over the allow default.
    let denied = token_with(
        &agent,
        "deny-app",
        r#"key_prefix "app/" { policy = "deny" }"#,
    )
    .await;
    let refused = call(
        &client(&agent, Some(&denied)),
        Method::GET,
        "/v1/kv/app/config",
        None,
    )
    .await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    // The anonymous token may do what the default allows, but not read ACLs.
    let anonymous = client(&agent, None);
    let read = call(&anonymous, Method::GET, "/v1/kv/app/config", None).await;
    assert_eq!(read.status, 200, "{}", read.text());
    let acl = call(&anonymous, Method::GET, "/v1/acl/tokens", None).await;
    assert_eq!(acl.status, 403, "{}", acl.text());
    assert_no_secrets_logged(&agent, &secrets);
}

#[tokio::test]
async fn acl_bootstrap_once_then_refused_then_reset_through_the_index_file() {
    let data = tempfile::tempdir().expect("tempdir");
    let mut agent = Agent::spawn(AgentOptions {
        dev: false,
        data_dir: Some(data.path().to_path_buf()),
        extra_args: vec![
            "-hcl".into(),
            "acl {\n enabled = true\n default_policy = \"deny\"\n}".into(),
        ],
        ..AgentOptions::default()
    });
    let anonymous = client(&agent, None);
    // Bootstrap as soon as there is a leader to take it.
    let first = eventually("the first bootstrap", Duration::from_secs(20), || {
        let anonymous = anonymous.clone();
        async move {
            // Refused connections until the agent listens.
            let response = anonymous.put("/v1/acl/bootstrap", Vec::new()).await.ok()?;
            (response.status == 200).then(|| json(&response))
        }
    })
    .await;
    let secret = first["SecretID"].as_str().expect("secret").to_string();
    assert_eq!(
        first["ID"], first["SecretID"],
        "the legacy ID field is the secret"
    );
    assert_eq!(first["Description"], "Bootstrap Token (Global Management)");
    // The management token reads every token; its policy is global-management.
    let admin = client(&agent, Some(&secret));
    let own = eventually(
        "the bootstrap token's policy",
        Duration::from_secs(10),
        || {
            let admin = admin.clone();
            async move {
                let response = call(&admin, Method::GET, "/v1/acl/token/self", None).await;
                let own = json(&response);
                (own["Policies"][0]["Name"] == "global-management").then_some(own)
            }
        },
    )
    .await;
    assert_eq!(own["AccessorID"], first["AccessorID"]);

    // A second bootstrap is refused, naming the reset index.
    let again = call(&anonymous, Method::PUT, "/v1/acl/bootstrap", None).await;
    assert_eq!(again.status, 403, "{}", again.text());
    let text = again.text();
    let index: u64 = text
        .strip_prefix("Permission denied: ACL bootstrap no longer allowed (reset index: ")
        .and_then(|rest| rest.strip_suffix(')'))
        .and_then(|number| number.parse().ok())
        .unwrap_or_else(|| panic!("unexpected refusal: {text}"));
    let (code, _, err) = cli(&agent, &["acl", "bootstrap"], None);
    assert_ne!(code, 0);
    assert!(err.contains("ACL bootstrap no longer allowed"), "{err}");

    // A wrong index in the reset file is refused and changes nothing.
    let reset = data.path().join("acl-bootstrap-reset");
    std::fs::write(&reset, format!("{}", index + 7)).expect("reset file");
    let wrong = call(&anonymous, Method::PUT, "/v1/acl/bootstrap", None).await;
    assert_eq!(wrong.status, 500);
    assert_eq!(
        wrong.text(),
        format!(
            "Invalid bootstrap reset index (specified {}, reset index: {index})",
            index + 7
        )
    );
    // The right one bootstraps again, through the CLI, and the file is used up.
    std::fs::write(&reset, format!("{index}")).expect("reset file");
    let (code, out, err) = cli(&agent, &["acl", "bootstrap", "-format=json"], None);
    assert_eq!(code, 0, "{out}{err}");
    let second: Value = serde_json::from_str(&out).expect("json");
    assert_ne!(second["SecretID"], first["SecretID"]);
    assert!(!reset.exists(), "the reset file is deleted once used");
    // Both management tokens work.
    let tokens = call(&admin, Method::GET, "/v1/acl/tokens", None).await;
    assert_eq!(tokens.status, 200, "{}", tokens.text());
    let listed = json(&tokens);
    for token in [&first, &second] {
        assert!(
            listed
                .as_array()
                .expect("list")
                .iter()
                .any(|listed| listed["AccessorID"] == token["AccessorID"]),
            "{listed}"
        );
    }
    assert!(
        agent.child.try_wait().expect("wait").is_none(),
        "the agent kept running"
    );
}

#[tokio::test]
async fn acl_service_identity_token_registers_its_service_and_runs_its_envoy() {
    let agent = acl_agent("deny").await;
    let admin = client(&agent, Some(MANAGEMENT));
    let body = json!({
        "Description": "web's token",
        "TemplatedPolicies": [{"TemplateName": "builtin/service", "TemplateVariables": {"Name": "web"}}],
    })
    .to_string();
    let created = call(&admin, Method::PUT, "/v1/acl/token", Some(&body)).await;
    assert_eq!(created.status, 200, "{}", created.text());
    let web_token = json(&created)["SecretID"]
        .as_str()
        .expect("secret")
        .to_string();
    let web = client(&agent, Some(&web_token));

    // Its own service and sidecar: yes. Another service, or a proxy for one: no.
    let backend = crate::envoy::backend("web").await;
    let register = json!({
        "ID": "web", "Name": "web", "Port": backend,
        "Connect": {"SidecarService": {"Port": crate::support::free_port()}},
    })
    .to_string();
    let response = call(
        &web,
        Method::PUT,
        "/v1/agent/service/register",
        Some(&register),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    let other = r#"{"Name":"db","Port":5432}"#;
    let response = call(&web, Method::PUT, "/v1/agent/service/register", Some(other)).await;
    assert_eq!(response.status, 403, "{}", response.text());
    assert!(
        response
            .text()
            .contains("lacks permission 'service:write' on \"db\""),
        "{}",
        response.text()
    );
    let proxy_for_db = r#"{"Name":"web-sidecar-proxy","Kind":"connect-proxy","Port":21999,"Proxy":{"DestinationServiceName":"db"}}"#;
    let response = call(
        &web,
        Method::PUT,
        "/v1/agent/service/register",
        Some(proxy_for_db),
    )
    .await;
    assert_eq!(response.status, 403, "{}", response.text());
    // Its own leaf, not another's.
    let leaf = call(&web, Method::GET, "/v1/agent/connect/ca/leaf/web", None).await;
    assert_eq!(leaf.status, 200, "{}", leaf.text());
    let leaf = call(&web, Method::GET, "/v1/agent/connect/ca/leaf/db", None).await;
    assert_eq!(leaf.status, 403, "{}", leaf.text());

    // Its Envoy is accepted with the token...
    let envoy = Envoy::start_with_token(&agent, "web", Some(&web_token)).await;
    assert!(envoy.stat("cluster_manager.cds.update_success").await >= 1);
    drop(envoy);

    // ... and one without a token is refused on the xDS stream itself: its bootstrap is
    // written with the management token (for the HTTP lookups), then the stream's token
    // removed, as a sidecar started without `-token` would have none.
    let admin_port = crate::support::free_port();
    let (code, bootstrap, err) = cli(
        &agent,
        &[
            "connect",
            "envoy",
            "-sidecar-for",
            "web",
            "-bootstrap",
            "-token",
            MANAGEMENT,
            "-grpc-addr",
            &format!("127.0.0.1:{}", agent.grpc_port),
            "-admin-bind",
            &format!("127.0.0.1:{admin_port}"),
        ],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(bootstrap.contains(MANAGEMENT));
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("bootstrap.json");
    std::fs::write(&path, bootstrap.replace(MANAGEMENT, "")).expect("bootstrap");
    let log = dir.path().join("envoy.log");
    let mut child = std::process::Command::new(crate::envoy::envoy_binary())
        .arg("--config-path")
        .arg(&path)
        .args([
            "--disable-hot-restart",
            "-l",
            "warning",
            "--file-flush-interval-msec",
            "50",
            "--log-path",
        ])
        .arg(&log)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("envoy");
    let refusal = eventually("Envoy's stream refused", Duration::from_secs(60), || {
        let log = log.clone();
        async move {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            // Envoy logs the stream's status message as it came, percent-encoded.
            text.lines()
                .map(|line| line.replace("%20", " ").replace("%22", "\""))
                .find(|line| line.contains("config stream to local_agent closed: 7"))
        }
    })
    .await;
    assert!(
        refusal.contains(
            "Permission denied: anonymous token lacks permission 'service:write' on \"web\""
        ),
        "{refusal}"
    );
    let stats = envoy_stats(admin_port).await;
    assert!(
        stats.contains("cluster_manager.cds.update_success: 0"),
        "{stats}"
    );
    let _ = child.kill();
    let _ = child.wait();
}

/// Envoy's `/stats` text, or "" while it is not answering.
async fn envoy_stats(admin_port: u16) -> String {
    let admin = Client::from_flags(Some(&format!("127.0.0.1:{admin_port}")), None).expect("client");
    match admin.get("/stats").await {
        Ok(response) => response.text(),
        Err(_) => String::new(),
    }
}

fn dig_status(agent: &Agent, name: &str) -> (String, String) {
    let output = std::process::Command::new("dig")
        .arg("@127.0.0.1")
        .args(["-p", &agent.dns_port.to_string()])
        .args(["+tries=1", "+time=2", name, "SRV"])
        .output()
        .expect("dig runs (install bind9-dnsutils)");
    let text = String::from_utf8_lossy(&output.stdout).into_owned();
    let status = text
        .split("status: ")
        .nth(1)
        .and_then(|rest| rest.split(',').next())
        .unwrap_or_default()
        .to_string();
    (status, text)
}

#[tokio::test]
async fn acl_dns_sees_services_only_with_a_dns_token() {
    let agent = acl_agent("deny").await;
    let admin = client(&agent, Some(MANAGEMENT));
    let response = call(
        &admin,
        Method::PUT,
        "/v1/agent/service/register",
        Some(r#"{"Name":"web","Port":8080}"#),
    )
    .await;
    assert_eq!(response.status, 200, "{}", response.text());
    eventually("web in the catalog", Duration::from_secs(10), || {
        let admin = admin.clone();
        async move {
            let response = call(&admin, Method::GET, "/v1/catalog/service/web", None).await;
            json(&response)
                .as_array()
                .is_some_and(|list| !list.is_empty())
                .then_some(())
        }
    })
    .await;
    // No dns or default token, deny default: the name does not exist for DNS.
    let (status, text) = dig_status(&agent, "web.service.consul");
    assert_eq!(status, "NXDOMAIN", "{text}");
    // A token from the builtin/dns template, set as the agent's DNS token over the API.
    let body = json!({"TemplatedPolicies": [{"TemplateName": "builtin/dns"}]}).to_string();
    let created = call(&admin, Method::PUT, "/v1/acl/token", Some(&body)).await;
    assert_eq!(created.status, 200, "{}", created.text());
    let dns_token = json(&created)["SecretID"]
        .as_str()
        .expect("secret")
        .to_string();
    let body = json!({"Token": dns_token}).to_string();
    let set = call(&admin, Method::PUT, "/v1/agent/token/dns", Some(&body)).await;
    assert_eq!(set.status, 200, "{}", set.text());
    let (status, text) = dig_status(&agent, "web.service.consul");
    assert_eq!(status, "NOERROR", "{text}");
    assert!(text.contains("8080"), "{text}");
    assert_no_secrets_logged(&agent, &[MANAGEMENT.to_string(), dns_token]);
}

/// A server and a client agent, each on its own loopback address.
async fn placed(ip: &str, node: &str, server: bool, join: &str) -> Agent {
    Agent::start(AgentOptions {
        placement: Some(Placement {
            ip: ip.into(),
            node: node.into(),
            server,
            join: if server {
                Vec::new()
            } else {
                vec![join.into()]
            },
            config: Some(
                json!({
                    "acl": {"enabled": true, "default_policy": "deny",
                            "tokens": {"initial_management": MANAGEMENT}},
                    "performance": {"raft_multiplier": 1},
                })
                .to_string(),
            ),
            data_dir: None,
        }),
        ready_token: Some(MANAGEMENT.into()),
        ..AgentOptions::default()
    })
    .await
}

#[tokio::test]
async fn acl_token_changes_apply_on_the_next_request_and_deletion_within_a_second_on_clients() {
    let server = placed("127.0.34.1", "acl-server", true, "").await;
    let client_agent = placed("127.0.34.2", "acl-client", false, "127.0.34.1").await;
    let secret = token_with(
        &server,
        "app-reader",
        r#"key_prefix "app/" { policy = "read" }"#,
    )
    .await;
    let admin = client(&server, Some(MANAGEMENT));
    let put = call(&admin, Method::PUT, "/v1/kv/app/config", Some("v")).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let put = call(&admin, Method::PUT, "/v1/kv/ops/config", Some("v")).await;
    assert_eq!(put.status, 200, "{}", put.text());
    let on_client = client(&client_agent, Some(&secret));
    eventually(
        "the token works on the client",
        Duration::from_secs(10),
        || {
            let on_client = on_client.clone();
            async move {
                let response = call(&on_client, Method::GET, "/v1/kv/app/config", None).await;
                (response.status == 200).then_some(())
            }
        },
    )
    .await;

    // A policy change: the token's next request on the server sees it.
    let on_server = client(&server, Some(&secret));
    let refused = call(&on_server, Method::GET, "/v1/kv/ops/config", None).await;
    assert_eq!(refused.status, 403);
    let policy = call(&admin, Method::GET, "/v1/acl/policy/name/app-reader", None).await;
    let mut policy = json(&policy);
    policy["Rules"] = json!(r#"key_prefix "" { policy = "read" }"#);
    let id = policy["ID"].as_str().expect("id").to_string();
    let updated = call(
        &admin,
        Method::PUT,
        &format!("/v1/acl/policy/{id}"),
        Some(&policy.to_string()),
    )
    .await;
    assert_eq!(updated.status, 200, "{}", updated.text());
    let read = call(&on_server, Method::GET, "/v1/kv/ops/config", None).await;
    assert_eq!(read.status, 200, "{}", read.text());

    // Deleted (through the CLI, against the server): refused on the server at once and on the
    // client within a second.
    let own = call(&on_server, Method::GET, "/v1/acl/token/self", None).await;
    let accessor = json(&own)["AccessorID"]
        .as_str()
        .expect("accessor")
        .to_string();
    let (code, out, err) = cli(
        &server,
        &[
            "acl", "token", "delete", "-token", MANAGEMENT, "-id", &accessor,
        ],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    let gone = call(&on_server, Method::GET, "/v1/kv/app/config", None).await;
    assert_eq!(
        (gone.status.as_u16(), gone.text()),
        (403, "ACL not found".into())
    );
    eventually(
        "the client refuses the deleted token",
        Duration::from_secs(1),
        || {
            let on_client = on_client.clone();
            async move {
                let response = call(&on_client, Method::GET, "/v1/kv/app/config", None).await;
                (response.status == 403 && response.text() == "ACL not found").then_some(())
            }
        },
    )
    .await;
}

#[tokio::test]
async fn acl_api_refuses_bad_input_with_consuls_messages() {
    let agent = acl_agent("deny").await;
    let admin = client(&agent, Some(MANAGEMENT));
    let bad_rules =
        json!({"Name": "broken", "Rules": "key_prefix \"a/\" {\n  policy = \n}"}).to_string();
    let response = call(&admin, Method::PUT, "/v1/acl/policy", Some(&bad_rules)).await;
    assert_eq!(response.status, 500);
    assert!(
        response
            .text()
            .starts_with("Failed to parse ACL rules: At "),
        "{}",
        response.text()
    );
    let bad_policy =
        json!({"Name": "bad", "Rules": r#"key "a" { policy = "sometimes" }"#}).to_string();
    let response = call(&admin, Method::PUT, "/v1/acl/policy", Some(&bad_policy)).await;
    assert_eq!(
        (response.status.as_u16(), response.text()),
        (500, r#"Invalid key policy: "sometimes""#.into())
    );
    let unknown = json!({"Policies": [{"Name": "no-such-policy"}]}).to_string();
    let response = call(&admin, Method::PUT, "/v1/acl/token", Some(&unknown)).await;
    assert_eq!(
        (response.status.as_u16(), response.text()),
        (
            500,
            r#"No such ACL policy with name "no-such-policy""#.into()
        )
    );
    let reserved = json!({"AccessorID": "00000000-0000-0000-0000-000000000099"}).to_string();
    let response = call(&admin, Method::PUT, "/v1/acl/token", Some(&reserved)).await;
    assert_eq!(response.status, 500);
    assert!(
        response.text().contains("are reserved"),
        "{}",
        response.text()
    );
    let missing = call(
        &admin,
        Method::GET,
        "/v1/acl/policy/8f1b9c2e-0000-4000-8000-000000000000",
        None,
    )
    .await;
    assert_eq!(
        (missing.status.as_u16(), missing.text()),
        (404, "Requested policy does not exist: ACL not found".into())
    );
    let root = client(&agent, Some("manage"));
    let response = call(&root, Method::GET, "/v1/kv/app", None).await;
    assert_eq!(
        (response.status.as_u16(), response.text()),
        (500, "Cannot resolve root ACL".into())
    );
    let delete = call(
        &admin,
        Method::DELETE,
        "/v1/acl/policy/00000000-0000-0000-0000-000000000001",
        None,
    )
    .await;
    assert_eq!(
        delete.text(),
        "Delete operation not permitted on the builtin global-management policy"
    );
    // A token may be given a lifetime, within Consul's bounds.
    let body =
        json!({"ExpirationTTL": "1m", "Policies": [{"Name": "global-management"}]}).to_string();
    let created = call(&admin, Method::PUT, "/v1/acl/token", Some(&body)).await;
    assert_eq!(created.status, 200, "{}", created.text());
    assert!(json(&created)["ExpirationTime"].is_string());
    let too_long = json!({"ExpirationTTL": "48h"}).to_string();
    let response = call(&admin, Method::PUT, "/v1/acl/token", Some(&too_long)).await;
    assert_eq!(response.status, 500, "{}", response.text());
    // What the UI asks: several authorizations at once, each answered for the caller.
    let reader = token_with(
        &agent,
        "ui-reader",
        r#"key_prefix "app/" { policy = "read" }"#,
    )
    .await;
    let asks = r#"[{"Resource":"key","Segment":"app/x","Access":"read"},{"Resource":"key","Segment":"app/x","Access":"write"},{"Resource":"operator","Access":"read"}]"#;
    let answered = call(
        &client(&agent, Some(&reader)),
        Method::POST,
        "/v1/internal/acl/authorize",
        Some(asks),
    )
    .await;
    let allows: Vec<Value> = json(&answered)
        .as_array()
        .expect("list")
        .iter()
        .map(|answer| answer["Allow"].clone())
        .collect();
    assert_eq!(
        allows,
        vec![json!(true), json!(false), json!(false)],
        "{}",
        answered.text()
    );
    let bad = call(
        &admin,
        Method::POST,
        "/v1/internal/acl/authorize",
        Some(r#"[{"Resource":"dragons","Access":"read"}]"#),
    )
    .await;
    assert_eq!(
        (bad.status.as_u16(), bad.text()),
        (400, r#"Invalid ACL resource requested: "dragons""#.into())
    );
    // Templated policies: listed, read by their (slashed) name, previewed for a name.
    let listed = call(&admin, Method::GET, "/v1/acl/templated-policies", None).await;
    assert!(
        json(&listed)["builtin/dns"]["Description"].is_string(),
        "{}",
        listed.text()
    );
    let read = call(
        &admin,
        Method::GET,
        "/v1/acl/templated-policy/name/builtin/service",
        None,
    )
    .await;
    assert_eq!(
        json(&read)["TemplateName"],
        "builtin/service",
        "{}",
        read.text()
    );
    let preview = call(
        &admin,
        Method::POST,
        "/v1/acl/templated-policy/preview/builtin/service",
        Some(r#"{"Name":"api"}"#),
    )
    .await;
    let rules = json(&preview)["Rules"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert!(
        rules.contains("service \"api-sidecar-proxy\""),
        "{}",
        preview.text()
    );
    let unnamed = call(
        &admin,
        Method::POST,
        "/v1/acl/templated-policy/preview/builtin/service",
        Some("{}"),
    )
    .await;
    assert_eq!(unnamed.status, 400, "{}", unnamed.text());
    // With ACLs off, /v1/acl/* says so.
    let plain = Agent::start(AgentOptions::default()).await;
    let response = call(&plain.client(), Method::GET, "/v1/acl/tokens", None).await;
    assert_eq!(
        (response.status.as_u16(), response.text()),
        (401, "ACL support disabled".into())
    );
}

#[tokio::test]
async fn acl_cli_manages_policies_roles_and_tokens() {
    let agent = acl_agent("deny").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{MANAGEMENT}\n")).expect("token file");
    let token_file = token_file.display().to_string();
    let run = |args: &[&str]| {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["-token-file", token_file.as_str()]);
        let (code, out, err) = cli(&agent, &all, None);
        assert_eq!(code, 0, "{args:?}: {out}{err}");
        out
    };
    let rules = dir.path().join("rules.hcl");
    std::fs::write(&rules, "key_prefix \"app/\" {\n  policy = \"write\"\n}\n").expect("rules");
    let created = run(&[
        "acl",
        "policy",
        "create",
        "-name",
        "app",
        "-rules",
        &format!("@{}", rules.display()),
    ]);
    assert!(created.contains("Name:         app"), "{created}");
    let read = run(&["acl", "policy", "read", "-name", "app", "-format=json"]);
    let policy: Value = serde_json::from_str(&read).expect("json");
    assert!(policy["Rules"]
        .as_str()
        .expect("rules")
        .contains("key_prefix \"app/\""));
    let role = run(&[
        "acl",
        "role",
        "create",
        "-name",
        "app-role",
        "-policy-name",
        "app",
    ]);
    assert!(role.contains("app-role"), "{role}");
    let token = run(&[
        "acl",
        "token",
        "create",
        "-role-name",
        "app-role",
        "-description",
        "via role",
        "-format=json",
    ]);
    let token: Value = serde_json::from_str(&token).expect("json");
    let secret = token["SecretID"].as_str().expect("secret").to_string();
    let accessor = token["AccessorID"].as_str().expect("accessor").to_string();
    assert_eq!(token["Roles"][0]["Name"], "app-role");
    // The role's policy applies to the token.
    let holder = client(&agent, Some(&secret));
    let put = call(&holder, Method::PUT, "/v1/kv/app/x", Some("1")).await;
    assert_eq!(put.status, 200, "{}", put.text());
    // `token read -self` with the token's own secret prints Consul's layout.
    let (code, own, err) = cli(
        &agent,
        &["acl", "token", "read", "-self", "-token", &secret],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(
        own.contains(&format!("AccessorID:       {accessor}")),
        "{own}"
    );
    assert!(own.contains("Description:      via role"), "{own}");
    assert!(own.contains("Roles:"), "{own}");
    // Update adds a service identity and keeps the roles only when asked to merge.
    let updated = run(&[
        "acl",
        "token",
        "update",
        "-id",
        &accessor,
        "-service-identity",
        "web",
        "-merge-roles",
        "-format=json",
    ]);
    let updated: Value = serde_json::from_str(&updated).expect("json");
    assert_eq!(updated["ServiceIdentities"][0]["ServiceName"], "web");
    assert_eq!(updated["Roles"][0]["Name"], "app-role");
    assert_eq!(
        updated["SecretID"], token["SecretID"],
        "an update keeps the secret"
    );
    let cloned = run(&[
        "acl",
        "token",
        "clone",
        "-id",
        &accessor,
        "-description",
        "copy",
        "-format=json",
    ]);
    let cloned: Value = serde_json::from_str(&cloned).expect("json");
    assert_ne!(cloned["AccessorID"], updated["AccessorID"]);
    assert_eq!(cloned["Description"], "copy");
    assert_eq!(cloned["ServiceIdentities"], updated["ServiceIdentities"]);
    let listed = run(&["acl", "token", "list", "-format=json"]);
    let listed: Value = serde_json::from_str(&listed).expect("json");
    assert!(listed.as_array().expect("list").len() >= 4, "{listed}");
    // Deleting the role takes its policy away from the token.
    run(&["acl", "role", "delete", "-name", "app-role"]);
    let put = call(&holder, Method::PUT, "/v1/kv/app/x", Some("2")).await;
    assert_eq!(put.status, 403, "{}", put.text());
    run(&["acl", "token", "delete", "-id", &accessor]);
    let (code, _, err) = cli(
        &agent,
        &["acl", "token", "read", "-self", "-token", &secret],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("ACL not found"), "{err}");
    run(&["acl", "policy", "delete", "-name", "app"]);
    let (code, _, err) = cli(
        &agent,
        &[
            "acl",
            "policy",
            "read",
            "-name",
            "app",
            "-token-file",
            &token_file,
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("Requested policy does not exist"), "{err}");
}

#[tokio::test]
async fn prepared_queries_are_guarded_by_query_rules_and_hide_their_tokens() {
    let agent = acl_agent("deny").await;
    seed(&agent).await;
    let writer = token_with(
        &agent,
        "query-writer",
        r#"query_prefix "web-" { policy = "write" }
           service_prefix "" { policy = "read" }
           node_prefix "" { policy = "read" }"#,
    )
    .await;
    let reader = token_with(
        &agent,
        "query-reader",
        r#"query_prefix "web-" { policy = "read" }"#,
    )
    .await;
    let (as_writer, as_reader) = (client(&agent, Some(&writer)), client(&agent, Some(&reader)));
    let body = json!({"Name": "web-q", "Token": writer, "Service": {"Service": "web"}}).to_string();
    let refused = call(&as_reader, Method::POST, "/v1/query", Some(&body)).await;
    assert_eq!(refused.status, 403, "{}", refused.text());
    assert!(
        refused
            .text()
            .ends_with("lacks permission 'query:write' on \"web-q\""),
        "{}",
        refused.text()
    );
    let created = call(&as_writer, Method::POST, "/v1/query", Some(&body)).await;
    assert_eq!(created.status, 200, "{}", created.text());
    let id = json(&created)["ID"].as_str().unwrap().to_string();
    let elsewhere = json!({"Name": "db-q", "Service": {"Service": "db"}}).to_string();
    let refused = call(&as_writer, Method::POST, "/v1/query", Some(&elsewhere)).await;
    assert_eq!(refused.status, 403, "{}", refused.text());

    // The reader lists and reads it without its token; the writer sees the token.
    let listed = json(&call(&as_reader, Method::GET, "/v1/query", None).await);
    assert_eq!(listed[0]["Name"], "web-q");
    assert_eq!(listed[0]["Token"], "<hidden>");
    let read = json(&call(&as_writer, Method::GET, &format!("/v1/query/{id}"), None).await);
    assert_eq!(read[0]["Token"], writer);
    // A token with no query rule sees nothing (and is told so).
    let nobody = token_with(&agent, "nobody", r#"key "x" { policy = "read" }"#).await;
    let hidden = call(
        &client(&agent, Some(&nobody)),
        Method::GET,
        "/v1/query",
        None,
    )
    .await;
    assert_eq!(json(&hidden), json!([]));
    assert_eq!(
        crate::support::header(&hidden, "X-Consul-Results-Filtered-By-ACLs"),
        "true"
    );
    // Executing runs with the query's own token: the reader, who may not read `web`, gets
    // the instances the writer's token may see.
    let executed = json(&call(&as_reader, Method::GET, "/v1/query/web-q/execute", None).await);
    assert_eq!(
        executed["Nodes"].as_array().map(Vec::len),
        Some(1),
        "{executed}"
    );
}
