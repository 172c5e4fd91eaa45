//! Autopilot on three servers: its configuration is seeded from the servers' `autopilot`
//! stanza and changed with `operator autopilot set-config` (compare-and-set); its health
//! report counts healthy servers and failure tolerance; a server killed for good is removed
//! from the Raft configuration only once `min_quorum` allows it, and is added back and
//! promoted when it returns. Leadership is handed to a named server, and to any other, with
//! writes going on; the new leaders neither bootstrap the CA again nor re-seed autopilot.

use std::time::Duration;

use serde_json::Value;

use crate::raft_cluster::{
    agreed_leader, data_dirs, get, peers, rpc_address, server_at, spawn_servers,
};
use crate::support::{cli, eventually, Agent};

/// Addresses no other test uses.
const SERVERS: [&str; 3] = ["127.0.26.1", "127.0.26.2", "127.0.26.3"];

fn addresses(servers: &[&Agent]) -> Vec<String> {
    let mut all: Vec<String> = servers.iter().map(|agent| rpc_address(agent)).collect();
    all.sort();
    all
}

/// The leader's health report as `agent` answers it: (status, body).
async fn health(agent: &Agent) -> Option<(u16, Value)> {
    get(agent, "/v1/operator/autopilot/health").await
}

/// The server at `address` in a health report.
fn server<'a>(report: &'a Value, address: &str) -> Option<&'a Value> {
    report["Servers"]
        .as_array()?
        .iter()
        .find(|server| server["Address"] == address)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn autopilot_reports_health_and_removes_a_dead_server_only_above_min_quorum() {
    let data = data_dirs(3);
    let mut servers = spawn_servers(&SERVERS, 3, &data);
    let all: Vec<&Agent> = servers.iter().flatten().collect();
    let leader = agreed_leader(&all).await;
    let everyone = addresses(&all);
    let follower = *all
        .iter()
        .find(|agent| rpc_address(agent) != leader)
        .expect("a follower");

    // Seeded from the stanza (server_stabilization_time 1s), read through a follower.
    let (code, config) = eventually(
        "the autopilot configuration to be seeded",
        Duration::from_secs(10),
        || async {
            let answer = get(follower, "/v1/operator/autopilot/configuration").await?;
            (answer.0 == 200).then_some(answer)
        },
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(config["ServerStabilizationTime"], "1s");
    assert_eq!(config["CleanupDeadServers"], true);
    assert_eq!(config["LastContactThreshold"], "200ms");
    assert_eq!(config["MinQuorum"], 0);

    // Every server healthy: 200, and one may fail.
    let (_, report) = eventually(
        "every server to be healthy",
        Duration::from_secs(20),
        || async {
            let answer = health(follower).await?;
            (answer.0 == 200 && answer.1["Servers"].as_array()?.len() == 3).then_some(answer)
        },
    )
    .await;
    assert_eq!(report["Healthy"], true);
    assert_eq!(report["FailureTolerance"], 1);
    let leader_entry = server(&report, &leader).expect("the leader is listed");
    assert_eq!(leader_entry["Leader"], true);
    assert_eq!(leader_entry["Voter"], true);
    assert_eq!(leader_entry["SerfStatus"], "alive");
    let (code, out, err) = cli(follower, &["operator", "autopilot", "state"], None);
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("Healthy:                      true"),
        "{out}"
    );
    assert!(out.contains("Failure Tolerance:            1"), "{out}");
    let statuses = |status: &str| {
        out.lines()
            .filter(|line| line.split_whitespace().collect::<Vec<_>>() == ["Status:", status])
            .count()
    };
    assert_eq!((statuses("leader"), statuses("voter")), (1, 2), "{out}");

    // What the leader does on taking office is done once for the cluster, not again by each
    // new leader: the CA root and the seeded autopilot configuration are kept as they are
    // through the handovers below.
    let roots = || async {
        let (_, roots) = get(follower, "/v1/connect/ca/roots").await.expect("roots");
        let mut ids: Vec<String> = roots["Roots"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|root| root["ID"].as_str().map(str::to_string))
            .collect();
        ids.sort();
        ids
    };
    let roots_before = roots().await;
    assert_eq!(roots_before.len(), 1, "{roots_before:?}");
    let seeded_at = config["ModifyIndex"].as_u64().expect("ModifyIndex");

    // Leadership handed to a named follower while writes go on through the third server:
    // every write is acknowledged and kept.
    let node_id = |agent: &Agent| {
        let agent = agent.client();
        async move {
            let response = agent.get("/v1/agent/self").await.expect("self");
            let body: Value = serde_json::from_slice(&response.body).expect("JSON");
            body["Config"]["NodeID"]
                .as_str()
                .expect("NodeID")
                .to_string()
        }
    };
    let old_leader = *all
        .iter()
        .find(|agent| rpc_address(agent) == leader)
        .expect("the leader");
    let third = *all
        .iter()
        .find(|agent| agent.host != old_leader.host && agent.host != follower.host)
        .expect("the third server");
    let writes = {
        let client = third.client();
        tokio::spawn(async move {
            let mut answers = Vec::new();
            for index in 0..20 {
                let response = client
                    .put(&format!("/v1/kv/handover/{index}"), b"w".to_vec())
                    .await
                    .expect("PUT");
                answers.push((response.status.as_u16(), response.text()));
            }
            answers
        })
    };
    let target = node_id(follower).await;
    let (code, out, err) = cli(
        old_leader,
        &[
            "operator",
            "raft",
            "transfer-leader",
            &format!("-id={target}"),
        ],
        None,
    );
    assert_eq!((code, out.trim()), (0, "Success"), "{err}");
    assert_eq!(agreed_leader(&all).await, rpc_address(follower));
    for answer in writes.await.expect("writes") {
        assert_eq!(answer, (200, "true".to_string()));
    }
    for index in 0..20 {
        let response = old_leader
            .client()
            .get(&format!("/v1/kv/handover/{index}?raw&consistent"))
            .await
            .expect("GET");
        assert_eq!(
            (response.status.as_u16(), response.text()),
            (200, "w".into())
        );
    }
    // Without -id it goes to another voter; an unknown id is refused.
    let (code, out, err) = cli(third, &["operator", "raft", "transfer-leader"], None);
    assert_eq!((code, out.trim()), (0, "Success"), "{err}");
    let leader = agreed_leader(&all).await;
    assert_ne!(leader, rpc_address(follower));
    let (code, _, err) = cli(
        third,
        &[
            "operator",
            "raft",
            "transfer-leader",
            "-id=00000000-0000-0000-0000-0000000000aa",
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("cannot find the server"), "{err}");
    assert_eq!(roots().await, roots_before);
    let (_, config) = get(follower, "/v1/operator/autopilot/configuration")
        .await
        .expect("config");
    assert_eq!(config["ModifyIndex"].as_u64(), Some(seeded_at));

    // set-config changes the flags given and keeps the rest; a stale cas is refused.
    let (code, out, err) = cli(
        follower,
        &["operator", "autopilot", "set-config", "-min-quorum=3"],
        None,
    );
    assert_eq!((code, out.trim()), (0, "Configuration updated!"), "{err}");
    let (code, out, err) = cli(follower, &["operator", "autopilot", "get-config"], None);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("MinQuorum = 3\n"), "{out}");
    assert!(out.contains("ServerStabilizationTime = 1s\n"), "{out}");
    assert!(out.contains("RedundancyZoneTag = \"\"\n"), "{out}");
    let stale = follower
        .client()
        .put(
            "/v1/operator/autopilot/configuration?cas=1",
            br#"{"CleanupDeadServers": true, "MinQuorum": 1}"#.to_vec(),
        )
        .await
        .expect("PUT");
    assert_eq!((stale.status.as_u16(), stale.text().trim()), (200, "false"));

    // A follower killed for good: the pool declares it failed and autopilot reports it
    // unhealthy (429) but keeps it, since min_quorum is 3.
    let victim = servers
        .iter()
        .position(|agent| {
            agent
                .as_ref()
                .is_some_and(|agent| rpc_address(agent) != leader && agent.host != follower.host)
        })
        .expect("the other follower");
    let victim_address = rpc_address(servers[victim].as_ref().expect("victim"));
    drop(servers[victim].take());
    let survivors: Vec<&Agent> = servers.iter().flatten().collect();
    let (code, report) = eventually(
        "autopilot to see the dead server failed",
        Duration::from_secs(30),
        || async {
            let answer = health(survivors[0]).await?;
            let status = server(&answer.1, &victim_address)?["SerfStatus"]
                .as_str()?
                .to_string();
            (status == "failed").then_some(answer)
        },
    )
    .await;
    assert_eq!(code, 429, "{report}");
    assert_eq!(report["Healthy"], false);
    assert_eq!(report["FailureTolerance"], 0);
    assert_eq!(peers(survivors[0]).await, everyone, "min_quorum 3 keeps it");

    // min_quorum back to 0: the dead server is removed, and the two left are healthy.
    let (code, _, err) = cli(
        survivors[0],
        &["operator", "autopilot", "set-config", "-min-quorum=0"],
        None,
    );
    assert_eq!(code, 0, "{err}");
    let two = addresses(&survivors);
    eventually(
        "autopilot to remove the dead server",
        Duration::from_secs(20),
        || async { (peers(survivors[0]).await == two).then_some(()) },
    )
    .await;
    eventually(
        "the two servers left to be healthy",
        Duration::from_secs(20),
        || async {
            let (code, report) = health(survivors[1]).await?;
            (code == 200 && report["Servers"].as_array()?.len() == 2).then_some(())
        },
    )
    .await;

    // It comes back on its data: added again and promoted.
    servers[victim] = Some(Agent::spawn(server_at(
        &SERVERS,
        victim,
        Some(3),
        data[victim].path(),
    )));
    let returned = servers[victim].as_ref().expect("returned");
    eventually(
        "the returned server to be a voter again",
        Duration::from_secs(30),
        || async { (peers(returned).await == everyone).then_some(()) },
    )
    .await;
}
