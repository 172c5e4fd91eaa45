//! Outage recovery with `peers.json`: three servers lose two for good; the survivor, stopped
//! and started again with a `peers.json` that lists only itself, leads a one-server cluster
//! holding every write, and new servers join it. A `peers.json` that does not parse is
//! refused at start with a message and changes nothing.

use std::time::Duration;

use serde_json::json;

use crate::raft_cluster::{
    agreed_leader, data_dirs, leader, peers, put, read, rpc_address, server_at, spawn_servers,
};
use crate::support::{eventually, Agent};

/// Addresses no other test uses.
const SERVERS: [&str; 5] = [
    "127.0.17.1",
    "127.0.17.2",
    "127.0.17.3",
    "127.0.17.4",
    "127.0.17.5",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_json_brings_back_a_cluster_that_lost_two_of_three_servers() {
    let _turn = crate::support::timing_sensitive().await;
    let data = data_dirs(5);
    let mut servers = spawn_servers(&SERVERS, 3, &data);
    let first_leader = {
        let all: Vec<&Agent> = servers.iter().flatten().collect();
        agreed_leader(&all).await
    };
    // More writes than the snapshot threshold, so what is recovered is a snapshot and the
    // log after it.
    for index in 0..40 {
        let writer = servers[index % 3].as_ref().expect("server");
        assert_eq!(
            put(writer, &format!("before/{index}"), "v").await,
            (200, "true".into())
        );
    }
    let survivor = servers
        .iter()
        .flatten()
        .position(|agent| rpc_address(agent) != first_leader)
        .expect("a follower");
    {
        let agent = servers[survivor].as_ref().expect("survivor");
        eventually(
            "the survivor to hold every write",
            Duration::from_secs(10),
            || async {
                (read(agent, "before/39", "stale").await.as_deref() == Some("v")).then_some(())
            },
        )
        .await;
    }
    // Two servers, the leader among them, are lost for good: without a quorum the survivor
    // has no leader.
    for index in (0..3).filter(|index| *index != survivor) {
        drop(servers[index].take());
    }
    let agent = servers[survivor].take().expect("survivor");
    eventually(
        "the survivor to lose its leader",
        Duration::from_secs(20),
        || async { leader(&agent).await.is_none().then_some(()) },
    )
    .await;
    drop(agent);

    // A peers.json that does not parse: the server refuses to start and says why; the file
    // and the data stay as they were.
    let peers_file = data[survivor].path().join("raft").join("peers.json");
    std::fs::write(&peers_file, "[{\"id\": ").expect("write peers.json");
    let mut refused = Agent::spawn(server_at(
        &SERVERS,
        survivor,
        Some(3),
        data[survivor].path(),
    ));
    let code = refused.wait_exit(Duration::from_secs(20)).await;
    assert_ne!(code, Some(0), "{}", refused.log());
    assert!(
        refused.log().contains("peers.json does not parse"),
        "{}",
        refused.log()
    );
    assert!(peers_file.exists());
    drop(refused);

    // The file Consul documents, listing the one remaining server: it leads alone, holds
    // every write made before the outage, takes new ones, and the file is gone.
    let node_id = std::fs::read_to_string(data[survivor].path().join("node-id")).expect("node-id");
    let address = format!("{}:8300", SERVERS[survivor]);
    let peers_json = json!([{"id": node_id.trim(), "address": address, "non_voter": false}]);
    std::fs::write(&peers_file, peers_json.to_string()).expect("write peers.json");
    let recovered = Agent::spawn(server_at(
        &SERVERS,
        survivor,
        Some(3),
        data[survivor].path(),
    ));
    assert_eq!(agreed_leader(&[&recovered]).await, address);
    assert_eq!(peers(&recovered).await, vec![address.clone()]);
    assert!(!peers_file.exists(), "peers.json is deleted once applied");
    assert!(recovered
        .log()
        .contains("recovered the Raft configuration from peers.json"));
    for index in 0..40 {
        assert_eq!(
            read(&recovered, &format!("before/{index}"), "consistent")
                .await
                .as_deref(),
            Some("v"),
            "before/{index}"
        );
    }
    assert_eq!(put(&recovered, "after", "1").await, (200, "true".into()));

    // New servers join the recovered one, catch up and become voters.
    let joining: Vec<Agent> = (3..5)
        .map(|index| {
            let mut options = server_at(&SERVERS, index, None, data[index].path());
            if let Some(placement) = options.placement.as_mut() {
                placement.join = vec![SERVERS[survivor].into()];
            }
            Agent::spawn(options)
        })
        .collect();
    let mut expected: Vec<String> = joining.iter().map(rpc_address).collect();
    expected.push(address);
    expected.sort();
    eventually(
        "the new servers to become voters",
        Duration::from_secs(30),
        || async { (peers(&recovered).await == expected).then_some(()) },
    )
    .await;
    for agent in &joining {
        assert_eq!(
            read(agent, "after", "consistent").await.as_deref(),
            Some("1")
        );
        assert_eq!(read(agent, "before/0", "stale").await.as_deref(), Some("v"));
    }
}
