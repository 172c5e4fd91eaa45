//! Three servers on their own loopback addresses with Consul's default ports form one Raft
//! cluster by themselves (`-bootstrap-expect 3` and a join), every server takes writes and
//! serves reads in each consistency mode, a fourth server joins as a non-voter and is
//! promoted, and the cluster keeps taking writes after its leader is killed.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{eventually, Agent, AgentOptions, Placement};

/// Addresses no other test uses.
const SERVERS: [&str; 4] = ["127.0.14.1", "127.0.14.2", "127.0.14.3", "127.0.14.4"];

fn server(index: usize, expect: Option<u32>) -> AgentOptions {
    let mut config = json!({
        // Raft timings as `-dev` has them, so elections take a fraction of a second.
        "performance": {"raft_multiplier": 1},
        "autopilot": {"server_stabilization_time": "1s"},
    });
    // 0: a server that never bootstraps and waits to be added.
    config["bootstrap_expect"] = json!(expect.unwrap_or(0));
    AgentOptions {
        placement: Some(Placement {
            ip: SERVERS[index].into(),
            node: format!("s{}", index + 1),
            server: true,
            // Each joins the first; the first joins the second.
            join: vec![SERVERS[usize::from(index == 0)].into()],
            config: Some(config.to_string()),
        }),
        ..AgentOptions::default()
    }
}

async fn get(agent: &Agent, path: &str) -> Option<(u16, Value)> {
    let response = agent.client().get(path).await.ok()?;
    let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    Some((response.status.as_u16(), body))
}

/// The leader's server RPC address as `agent` reports it, once it knows one.
async fn leader(agent: &Agent) -> Option<String> {
    let (_, leader) = get(agent, "/v1/status/leader").await?;
    leader
        .as_str()
        .filter(|leader| !leader.is_empty())
        .map(str::to_string)
}

async fn peers(agent: &Agent) -> Vec<String> {
    let mut peers: Vec<String> = match get(agent, "/v1/status/peers").await {
        Some((200, Value::Array(list))) => list
            .iter()
            .filter_map(|peer| peer.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    };
    peers.sort();
    peers
}

/// Waits until every one of `agents` names the same leader, which is one of them.
async fn agreed_leader(agents: &[&Agent]) -> String {
    eventually(
        "the servers to agree on a leader",
        Duration::from_secs(20),
        || async {
            let mut seen = Vec::new();
            for agent in agents {
                seen.push(leader(agent).await?);
            }
            let first = seen[0].clone();
            let known = agents
                .iter()
                .any(|agent| first == format!("{}:8300", agent.host));
            (known && seen.iter().all(|leader| *leader == first)).then_some(first)
        },
    )
    .await
}

async fn put(agent: &Agent, key: &str, value: &str) -> (u16, String) {
    let response = agent
        .client()
        .put(&format!("/v1/kv/{key}"), value.as_bytes().to_vec())
        .await
        .expect("PUT");
    (response.status.as_u16(), response.text())
}

/// The raw value of `key` read from `agent` with `mode` (`""`, `"consistent"`, `"stale"`).
async fn read(agent: &Agent, key: &str, mode: &str) -> Option<String> {
    let path = match mode {
        "" => format!("/v1/kv/{key}?raw"),
        mode => format!("/v1/kv/{key}?raw&{mode}"),
    };
    let response = agent.client().get(&path).await.ok()?;
    (response.status == 200).then(|| response.text())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_form_a_cluster_take_a_fourth_and_survive_losing_the_leader() {
    let mut servers: Vec<Option<Agent>> = (0..3)
        .map(|index| Some(Agent::spawn(server(index, Some(3)))))
        .collect();
    let all = |servers: &[Option<Agent>]| -> Vec<String> {
        servers
            .iter()
            .flatten()
            .map(|agent| format!("{}:8300", agent.host))
            .collect()
    };
    let first_leader = {
        let agents: Vec<&Agent> = servers.iter().flatten().collect();
        agreed_leader(&agents).await
    };
    let mut expected = all(&servers);
    expected.sort();
    for agent in servers.iter().flatten() {
        let agent_peers = eventually(
            "every server to list three peers",
            Duration::from_secs(10),
            || async {
                let peers = peers(agent).await;
                (peers == expected).then_some(peers)
            },
        )
        .await;
        assert_eq!(agent_peers.len(), 3);
    }

    // A write through each server is committed once and read back from every server in
    // every consistency mode (a default or consistent read on a follower waits for what the
    // leader had applied when the read began).
    for (index, writer) in servers.iter().flatten().enumerate() {
        let key = format!("formation/{index}");
        assert_eq!(
            put(writer, &key, &format!("v{index}")).await,
            (200, "true".into())
        );
        for reader in servers.iter().flatten() {
            assert_eq!(
                read(reader, &key, "").await.as_deref(),
                Some(format!("v{index}").as_str()),
                "default read on {}",
                reader.host
            );
            assert_eq!(
                read(reader, &key, "consistent").await.as_deref(),
                Some(format!("v{index}").as_str()),
                "consistent read on {}",
                reader.host
            );
        }
    }
    let follower = servers
        .iter()
        .flatten()
        .find(|agent| format!("{}:8300", agent.host) != first_leader)
        .expect("a follower");
    let response = follower
        .client()
        .get("/v1/kv/formation/0?stale")
        .await
        .expect("stale read");
    assert_eq!(response.status, 200);
    assert_eq!(
        crate::support::header(&response, "X-Consul-KnownLeader"),
        "true"
    );

    // A fourth server without -bootstrap-expect joins as a non-voter and is promoted once it
    // has caught up and stayed so for the stabilization time.
    servers.push(Some(Agent::spawn(server(3, None))));
    let mut expected = all(&servers);
    expected.sort();
    let leader_agent = servers
        .iter()
        .flatten()
        .find(|agent| format!("{}:8300", agent.host) == first_leader)
        .expect("the leader is one of the servers");
    eventually(
        "the fourth server to become a voter",
        Duration::from_secs(20),
        || async { (peers(leader_agent).await == expected).then_some(()) },
    )
    .await;
    let fourth = servers[3].as_ref().expect("fourth");
    eventually(
        "the fourth server to read the earlier writes",
        Duration::from_secs(10),
        || async { (read(fourth, "formation/0", "").await.as_deref() == Some("v0")).then_some(()) },
    )
    .await;

    // kill -9 of the leader: the others elect a new one and keep taking writes.
    let position = servers
        .iter()
        .position(|agent| {
            agent
                .as_ref()
                .is_some_and(|agent| format!("{}:8300", agent.host) == first_leader)
        })
        .expect("leader position");
    drop(servers[position].take());
    let survivors: Vec<&Agent> = servers.iter().flatten().collect();
    let second_leader = agreed_leader(&survivors).await;
    assert_ne!(second_leader, first_leader);
    for (index, writer) in survivors.iter().enumerate() {
        let key = format!("after-failover/{index}");
        assert_eq!(put(writer, &key, "x").await, (200, "true".into()));
        for reader in &survivors {
            assert_eq!(read(reader, &key, "consistent").await.as_deref(), Some("x"));
        }
    }
    // Every write acknowledged before the failover is still there.
    for index in 0..3 {
        for reader in &survivors {
            assert_eq!(
                read(reader, &format!("formation/{index}"), "consistent").await,
                Some(format!("v{index}"))
            );
        }
    }
}
