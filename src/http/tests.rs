//! Handler tests through the seam, without Raft: the router runs on a `Cluster::Memory`, so a
//! request goes through the real handlers, parameters, blocking loop and error mapping while
//! writes apply straight to a state store. What only a real agent can show (durability,
//! listeners, signals) stays in the black-box tests under tests/it.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use tower::ServiceExt;

use super::{router, AppState};
use crate::acl::Authorizer;
use crate::agent::Agent;
use crate::config::LoadOptions;
use crate::rpc::memory::MemoryCluster;
use crate::rpc::{Cluster, LeaderContact};
use crate::tasks::Tasks;

struct Harness {
    router: Router,
    memory: Arc<MemoryCluster>,
    tasks: Tasks,
    _data_dir: tempfile::TempDir,
}

impl Drop for Harness {
    fn drop(&mut self) {
        self.tasks.shutdown().cancel();
    }
}

fn harness() -> Harness {
    let memory = MemoryCluster::new();
    let cluster = Cluster::Memory(memory.clone());
    let options = LoadOptions {
        dev: true,
        ..LoadOptions::default()
    };
    let config = Arc::new(crate::config::load(&options).expect("dev config").config);
    let data_dir = tempfile::tempdir().expect("data dir");
    let tasks = Tasks::new();
    let node_id = "2b7a0b6c-0000-4000-8000-000000000001".to_string();
    // A pool of one on the in-memory network: this agent alone.
    let gossip_address = "127.0.0.1:8301".parse().expect("address");
    let (transport, inbound) =
        crate::gossip::transport::MemoryNetwork::new().attach(gossip_address);
    let lan = crate::gossip::Pool::start(
        crate::gossip::NodeIdentity {
            name: config.node_name.clone(),
            addr: gossip_address,
            started: 1,
            tags: crate::gossip::lan::tags(&config, &node_id),
        },
        config.membership.gossip_lan,
        transport,
        inbound,
        &tasks,
    );
    let agent = Agent::start(
        config.clone(),
        options,
        data_dir.path(),
        node_id.clone(),
        cluster.clone(),
        tasks.clone(),
    )
    .expect("agent");
    let leaves = crate::agent::leaf::LeafCache::new(
        cluster.clone(),
        agent.clone(),
        None,
        config.datacenter.clone(),
        tasks.clone(),
        Duration::from_secs(1),
    );
    let state = Arc::new(AppState {
        cluster,
        events: crate::agent::events::EventLog::start(&lan, agent.clone(), &tasks),
        agent,
        leaves,
        xds: Arc::new(crate::xds::XdsStatus::default()),
        tasks: tasks.clone(),
        config,
        authorizer: Authorizer::disabled(),
        node_id,
        lan,
        wan: None,
        stop: tokio_util::sync::CancellationToken::new(),
        shutdown: tasks.shutdown().clone(),
    });
    Harness {
        router: router(state),
        memory,
        tasks,
        _data_dir: data_dir,
    }
}

/// One request: (status, X-Consul-Index, body).
async fn call(harness: &Harness, method: &str, uri: &str, body: &str) -> (StatusCode, u64, String) {
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .body(Body::from(body.to_string()))
        .expect("request");
    let response = harness
        .router
        .clone()
        .oneshot(request)
        .await
        .expect("infallible");
    let status = response.status();
    let index = response
        .headers()
        .get("X-Consul-Index")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok())
        .unwrap_or(0);
    let bytes = response
        .into_body()
        .collect()
        .await
        .expect("body")
        .to_bytes();
    (status, index, String::from_utf8_lossy(&bytes).into_owned())
}

#[tokio::test]
async fn kv_writes_and_reads_go_through_the_seam() {
    let harness = harness();
    let (status, _, body) = call(&harness, "PUT", "/v1/kv/greeting", "hello").await;
    assert_eq!((status, body.trim()), (StatusCode::OK, "true"));
    let (status, index, body) = call(&harness, "GET", "/v1/kv/greeting?raw", "").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "hello"));
    assert!(index > 0, "X-Consul-Index is the write's index");
    let (status, _, _) = call(&harness, "GET", "/v1/kv/missing", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn a_blocking_query_wakes_on_a_write_to_its_key() {
    let harness = harness();
    let (_, index, _) = call(&harness, "PUT", "/v1/kv/watched", "1").await;
    let waiting = {
        let router = harness.router.clone();
        tokio::spawn(async move {
            let request = Request::builder()
                .uri(format!("/v1/kv/watched?raw&index={index}&wait=30s"))
                .body(Body::empty())
                .unwrap();
            let response = router.oneshot(request).await.unwrap();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    // A write elsewhere does not answer it; a write to the key does.
    call(&harness, "PUT", "/v1/kv/other", "x").await;
    call(&harness, "PUT", "/v1/kv/watched", "2").await;
    let body = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("the blocking query returns")
        .unwrap();
    assert_eq!(body, "2");
}

#[tokio::test]
async fn without_a_leader_default_reads_fail_and_stale_reads_answer() {
    let harness = harness();
    call(&harness, "PUT", "/v1/kv/k", "v").await;
    harness.memory.set_contact(LeaderContact {
        known_leader: false,
        last_contact_ms: 1500,
    });
    let (status, _, body) = call(&harness, "GET", "/v1/kv/k?raw", "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader")
    );
    let request = Request::builder()
        .uri("/v1/kv/k?raw&stale")
        .body(Body::empty())
        .unwrap();
    let response = harness.router.clone().oneshot(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["X-Consul-KnownLeader"], "false");
    assert_eq!(response.headers()["X-Consul-LastContact"], "1500");
}

#[tokio::test]
async fn a_session_renewal_without_a_leader_is_refused_with_consuls_error() {
    let harness = harness();
    // Sessions belong to a registered node with its serfHealth check (a server's leader
    // registers its own).
    let (_, _, own) = call(&harness, "GET", "/v1/agent/self", "").await;
    let own: serde_json::Value = serde_json::from_str(&own).unwrap();
    let node = own["Config"]["NodeName"].as_str().unwrap().to_string();
    let register = serde_json::json!({
        "Node": node, "Address": "127.0.0.1",
        "Check": {"CheckID": "serfHealth", "Name": "Serf Health Status", "Status": "passing"},
    })
    .to_string();
    let (status, _, body) = call(&harness, "PUT", "/v1/catalog/register", &register).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _, body) = call(&harness, "PUT", "/v1/session/create", r#"{"TTL": "30s"}"#).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let id: serde_json::Value = serde_json::from_str(&body).unwrap();
    let renew = format!("/v1/session/renew/{}", id["ID"].as_str().unwrap());
    let (status, _, body) = call(&harness, "PUT", &renew, "").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    harness.memory.set_contact(LeaderContact {
        known_leader: false,
        last_contact_ms: 0,
    });
    let (status, _, body) = call(&harness, "PUT", &renew, "").await;
    assert_eq!(
        (status, body.as_str()),
        (StatusCode::INTERNAL_SERVER_ERROR, "No cluster leader")
    );
    let (status, _, _) = call(&harness, "PUT", "/v1/session/renew/no-such-session", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn deleting_a_resolver_a_splitter_needs_is_refused_by_the_graph_rules() {
    let harness = harness();
    for entry in [
        r#"{"Kind": "service-defaults", "Name": "api", "Protocol": "http"}"#,
        r#"{"Kind": "service-resolver", "Name": "api", "Subsets": {"v1": {"Filter": "Service.Meta.version == v1"}}}"#,
        r#"{"Kind": "service-splitter", "Name": "api", "Splits": [{"Weight": 100, "ServiceSubset": "v1"}]}"#,
    ] {
        let (status, _, body) = call(&harness, "PUT", "/v1/config", entry).await;
        assert_eq!(status, StatusCode::OK, "{entry}: {body}");
    }
    let (status, _, body) = call(&harness, "DELETE", "/v1/config/service-resolver/api", "").await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR, "{body}");
    assert!(
        body.contains("does not have a subset named \"v1\""),
        "{body}"
    );
    let (status, _, _) = call(&harness, "GET", "/v1/config/service-resolver/api", "").await;
    assert_eq!(status, StatusCode::OK, "the resolver is still there");
}

#[tokio::test]
async fn wrong_methods_are_405_with_allow_and_options_answers_with_it() {
    let harness = harness();
    let answer = |method: &str, uri: &str| {
        let request = Request::builder()
            .method(method)
            .uri(uri)
            .body(Body::empty())
            .expect("request");
        let router = harness.router.clone();
        async move {
            let response = router.oneshot(request).await.expect("infallible");
            let allow = response
                .headers()
                .get("Allow")
                .and_then(|value| value.to_str().ok())
                .unwrap_or("")
                .to_string();
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .expect("body")
                .to_bytes();
            (status, allow, String::from_utf8_lossy(&bytes).into_owned())
        }
    };
    let (status, allow, body) = answer("DELETE", "/v1/agent/self").await;
    assert_eq!(status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(body, "method DELETE not allowed");
    assert_eq!(allow, "OPTIONS,GET");
    let (status, allow, body) = answer("OPTIONS", "/v1/kv/anything").await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
    assert_eq!(allow, "OPTIONS,GET,PUT,DELETE");
    // Unknown routes stay 404, whatever the method, with Consul's index handler's text.
    let (status, _, body) = answer("OPTIONS", "/v1/no/such/route").await;
    assert_eq!(
        (status, body.as_str()),
        (
            StatusCode::NOT_FOUND,
            "Invalid URL path: not a recognized HTTP API endpoint\n"
        )
    );
    let (status, _, body) = answer("GET", "/kv/forgot-the-prefix").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert!(
        body.contains("ensure the path starts with '/v1/'"),
        "{body}"
    );
}
