//! Connect through a leader failover: two sidecars on a client agent of a three-server
//! cluster carry traffic over mTLS; the leader is killed; the Envoys keep their certificates,
//! their listeners and their connection to the agent, traffic keeps flowing, and a change
//! made after the failover (an intention) still reaches them.

use std::time::Duration;

use serde_json::{json, Value};

use crate::envoy::{backend, get, register, Envoy};
use crate::raft_cluster::{agreed_leader, data_dirs, rpc_address, spawn_servers};
use crate::support::{cli, eventually, free_port, Agent, AgentOptions, Placement};
use crate::xds::leaf_serial;

/// Addresses no other test uses.
const SERVERS: [&str; 3] = ["127.0.27.1", "127.0.27.2", "127.0.27.3"];
const CLIENT: &str = "127.0.27.4";

/// The serial numbers of the certificates Envoy holds (lowercase hex).
async fn serials(envoy: &Envoy) -> Vec<String> {
    let certs: Value = serde_json::from_str(&envoy.admin("/certs").await).unwrap_or_default();
    let mut serials: Vec<String> = certs["certificates"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|entry| entry["cert_chain"].as_array().cloned().unwrap_or_default())
        .filter_map(|cert| cert["serial_number"].as_str().map(str::to_lowercase))
        .collect();
    serials.sort();
    serials.dedup();
    serials
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_on_a_client_keep_certificates_and_config_through_a_leader_failover() {
    let _turn = crate::support::timing_sensitive().await;
    let data = data_dirs(3);
    let mut servers = spawn_servers(&SERVERS, 3, &data);
    let client = Agent::spawn(AgentOptions {
        placement: Some(Placement {
            ip: CLIENT.into(),
            node: "c1".into(),
            server: false,
            join: vec![SERVERS[0].into()],
            // xDS for the sidecars (Consul's agents serve it only when a gRPC port is set).
            config: Some(json!({"ports": {"grpc": 8502}}).to_string()),
            data_dir: None,
        }),
        ..AgentOptions::default()
    });
    let first_leader = {
        let all: Vec<&Agent> = servers.iter().flatten().collect();
        agreed_leader(&all).await
    };
    // This wait has timed out under the full suite's load (twice in the fourth session, with
    // no cause found): on failure, say what the client saw.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = client.client().put("/v1/kv/ready", b"1".to_vec()).await;
        if response
            .as_ref()
            .is_ok_and(|response| response.status == 200)
        {
            break;
        }
        if std::time::Instant::now() > deadline {
            let tail = |log: String| log.lines().rev().take(40).collect::<Vec<_>>().join("\n");
            panic!(
                "the client did not reach the servers within 20 s; last answer {:?}; client log \
                 (newest first):\n{}",
                response.map(|response| (response.status, response.text())),
                tail(client.log())
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let api_port = backend("api says hi").await;
    let (api_sidecar, web_sidecar, upstream) = (free_port(), free_port(), free_port());
    register(&client, "api", "api", api_port, api_sidecar, &[], json!({})).await;
    register(
        &client,
        "web",
        "web",
        free_port(),
        web_sidecar,
        &[("api", upstream)],
        json!({}),
    )
    .await;
    let api_envoy = Envoy::start(&client, "api").await;
    let web_envoy = Envoy::start(&client, "web").await;
    let flowing =
        || async { (get(upstream).await == Ok((200, "api says hi".into()))).then_some(()) };
    eventually(
        "web reaches api through both Envoys",
        Duration::from_secs(20),
        flowing,
    )
    .await;
    let before = (serials(&api_envoy).await, serials(&web_envoy).await);
    assert!(!before.0.is_empty() && !before.1.is_empty(), "{before:?}");
    assert_eq!(before.1, vec![leaf_serial(&client, "web").await]);
    let listener_count = |dump: &Value| {
        dump["configs"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|config| config["dynamic_listeners"].as_array())
            .map(Vec::len)
            .sum::<usize>()
    };
    let web_listeners = listener_count(&web_envoy.config_dump().await);
    assert!(web_listeners >= 2, "public and upstream listeners");

    // The leader dies; the others elect a new one.
    let position = servers
        .iter()
        .position(|agent| {
            agent
                .as_ref()
                .is_some_and(|agent| rpc_address(agent) == first_leader)
        })
        .expect("leader");
    drop(servers[position].take());
    let survivors: Vec<&Agent> = servers.iter().flatten().collect();
    let second_leader = agreed_leader(&survivors).await;
    assert_ne!(second_leader, first_leader);

    // Traffic still flows; neither Envoy got a new certificate, lost a listener, rejected an
    // update or lost its connection to the agent.
    eventually("web still reaches api", Duration::from_secs(10), flowing).await;
    assert_eq!(
        (serials(&api_envoy).await, serials(&web_envoy).await),
        before
    );
    assert_eq!(leaf_serial(&client, "web").await, before.1[0]);
    assert_eq!(
        listener_count(&web_envoy.config_dump().await),
        web_listeners
    );
    for envoy in [&api_envoy, &web_envoy] {
        assert!(envoy.rejections().await.is_empty());
        assert_eq!(envoy.stat("control_plane.connected_state").await, 1);
    }

    // A change made after the failover, through the client, reaches the Envoys: a deny
    // intention stops the traffic at api's sidecar.
    let (code, _, err) = cli(
        &client,
        &["intention", "create", "-deny", "web", "api"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    // A refusal, then RBAC's own (the first refusals may be the old filter chain closing).
    eventually(
        "the deny to reach api's Envoy",
        Duration::from_secs(10),
        || async {
            (get(upstream).await.is_err() && api_envoy.stat("connect_authz.rbac.denied").await >= 1)
                .then_some(())
        },
    )
    .await;
}
