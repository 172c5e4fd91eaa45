//! Operator mistakes with servers, each refused with a message and without losing data: two
//! separately bootstrapped clusters whose servers are joined into one LAN pool stay two
//! clusters; servers started with different `-bootstrap-expect` values do not form one;
//! removing the last voter is refused.

use std::time::Duration;

use crate::raft_cluster::{agreed_leader, peers, put, read, rpc_address, server_at};
use crate::support::{cli, eventually, Agent};

/// Addresses no other test uses.
const JOINED: [&str; 2] = ["127.0.20.1", "127.0.20.2"];
const MISMATCHED: [&str; 2] = ["127.0.20.3", "127.0.20.4"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_joined_by_mistake_stay_apart_and_keep_their_data() {
    let data: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("dir")).collect();
    // Each bootstraps alone; they do not join each other at start.
    let clusters: Vec<Agent> = (0..2)
        .map(|index| {
            let mut options = server_at(&JOINED, index, Some(1), data[index].path());
            if let Some(placement) = options.placement.as_mut() {
                placement.join.clear();
            }
            Agent::spawn(options)
        })
        .collect();
    for agent in &clusters {
        assert_eq!(agreed_leader(&[agent]).await, rpc_address(agent));
        assert_eq!(put(agent, "owner", &agent.host).await, (200, "true".into()));
    }
    // The mistake: their servers meet in one LAN pool.
    let (code, _, err) = cli(&clusters[0], &["join", JOINED[1]], None);
    assert_eq!(code, 0, "{err}");
    eventually(
        "each leader to see the other cluster's server and refuse to add it",
        Duration::from_secs(20),
        || async {
            clusters
                .iter()
                .all(|agent| agent.log().contains("belongs to another Raft cluster"))
                .then_some(())
        },
    )
    .await;
    for agent in &clusters {
        assert_eq!(peers(agent).await, vec![rpc_address(agent)]);
        assert_eq!(
            read(agent, "owner", "consistent").await.as_deref(),
            Some(agent.host.as_str())
        );
        assert_eq!(put(agent, "after", "1").await, (200, "true".into()));
    }

    // The last voter cannot be removed.
    let (code, _, err) = cli(
        &clusters[0],
        &[
            "operator",
            "raft",
            "remove-peer",
            &format!("-address={}", rpc_address(&clusters[0])),
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(err.contains("is the last voter"), "{err}");
    assert_eq!(peers(&clusters[0]).await, vec![rpc_address(&clusters[0])]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_expecting_different_cluster_sizes_do_not_form_one() {
    let data: Vec<tempfile::TempDir> = (0..2).map(|_| tempfile::tempdir().expect("dir")).collect();
    let servers: Vec<Agent> = [(0, 2), (1, 3)]
        .into_iter()
        .map(|(index, expect)| {
            Agent::spawn(server_at(
                &MISMATCHED,
                index,
                Some(expect),
                data[index].path(),
            ))
        })
        .collect();
    eventually(
        "both servers to report the conflicting expect values",
        Duration::from_secs(20),
        || async {
            servers
                .iter()
                .all(|agent| agent.log().contains("has a conflicting expect value"))
                .then_some(())
        },
    )
    .await;
    for agent in &servers {
        assert!(
            peers(agent).await.is_empty(),
            "{} bootstrapped:\n{}",
            agent.host,
            agent.log()
        );
    }
}
