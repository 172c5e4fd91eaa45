//! Three servers on their own loopback addresses with Consul's default ports form one Raft
//! cluster by themselves (`-bootstrap-expect 3` and a join); every server and a client agent
//! take writes and serve reads in each consistency mode; `operator raft list-peers` shows the
//! voters; a fourth server joins as a non-voter and is promoted; the cluster keeps taking
//! writes after its leader is killed, and the old leader, restarted on its data, rejoins as a
//! follower and catches up.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::{cli, eventually, header, Agent, AgentOptions, Partition, Placement};

/// Addresses no other test uses.
const SERVERS: [&str; 4] = ["127.0.14.1", "127.0.14.2", "127.0.14.3", "127.0.14.4"];

const CLIENT: &str = "127.0.14.5";

fn server(index: usize, expect: Option<u32>, data_dir: &std::path::Path) -> AgentOptions {
    server_at(&SERVERS, index, expect, data_dir)
}

/// Server `index` of the servers at `ips`; each joins the first, the first the second.
pub(crate) fn server_at(
    ips: &[&str],
    index: usize,
    expect: Option<u32>,
    data_dir: &std::path::Path,
) -> AgentOptions {
    let mut config = json!({
        // Raft timings as `-dev` has them, so elections take a fraction of a second.
        "performance": {"raft_multiplier": 1},
        "autopilot": {"server_stabilization_time": "1s"},
        // Snapshots every few entries, keeping no log behind them, so a server that joins
        // late or was down catches up by a snapshot sent over the server port.
        "raft_snapshot_threshold": 16,
        "raft_trailing_logs": 0,
    });
    // 0: a server that never bootstraps and waits to be added.
    config["bootstrap_expect"] = json!(expect.unwrap_or(0));
    AgentOptions {
        placement: Some(Placement {
            ip: ips[index].into(),
            node: format!("s{}", index + 1),
            server: true,
            join: vec![ips[usize::from(index == 0)].into()],
            config: Some(config.to_string()),
            data_dir: Some(data_dir.to_path_buf()),
        }),
        ..AgentOptions::default()
    }
}

/// A data dir for each of `count` servers.
pub(crate) fn data_dirs(count: usize) -> Vec<tempfile::TempDir> {
    (0..count)
        .map(|_| tempfile::tempdir().expect("dir"))
        .collect()
}

/// The first `count` servers of `ips`, each expecting `count` and on its dir of `data`.
pub(crate) fn spawn_servers(
    ips: &[&str],
    count: usize,
    data: &[tempfile::TempDir],
) -> Vec<Option<Agent>> {
    let expect = u32::try_from(count).expect("a small cluster");
    (0..count)
        .map(|index| {
            Some(Agent::spawn(server_at(
                ips,
                index,
                Some(expect),
                data[index].path(),
            )))
        })
        .collect()
}

pub(crate) async fn get(agent: &Agent, path: &str) -> Option<(u16, Value)> {
    let response = agent.client().get(path).await.ok()?;
    let body = serde_json::from_slice(&response.body).unwrap_or(Value::Null);
    Some((response.status.as_u16(), body))
}

/// The leader's server RPC address as `agent` reports it, once it knows one.
pub(crate) async fn leader(agent: &Agent) -> Option<String> {
    let (_, leader) = get(agent, "/v1/status/leader").await?;
    leader
        .as_str()
        .filter(|leader| !leader.is_empty())
        .map(str::to_string)
}

pub(crate) async fn peers(agent: &Agent) -> Vec<String> {
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
pub(crate) async fn agreed_leader(agents: &[&Agent]) -> String {
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

pub(crate) async fn put(agent: &Agent, key: &str, value: &str) -> (u16, String) {
    let response = agent
        .client()
        .put(&format!("/v1/kv/{key}"), value.as_bytes().to_vec())
        .await
        .expect("PUT");
    (response.status.as_u16(), response.text())
}

/// The raw value of `key` read from `agent` with `mode` (`""`, `"consistent"`, `"stale"`).
pub(crate) async fn read(agent: &Agent, key: &str, mode: &str) -> Option<String> {
    let path = match mode {
        "" => format!("/v1/kv/{key}?raw"),
        mode => format!("/v1/kv/{key}?raw&{mode}"),
    };
    let response = agent.client().get(&path).await.ok()?;
    (response.status == 200).then(|| response.text())
}

fn client() -> AgentOptions {
    AgentOptions {
        placement: Some(Placement {
            ip: CLIENT.into(),
            node: "c1".into(),
            server: false,
            join: vec![SERVERS[0].into()],
            config: None,
            data_dir: None,
        }),
        ..AgentOptions::default()
    }
}

pub(crate) fn rpc_address(agent: &Agent) -> String {
    format!("{}:8300", agent.host)
}

/// Reads `key` with `mode` from every agent and expects `value` from each.
async fn read_everywhere(agents: &[&Agent], key: &str, mode: &str, value: &str) {
    for agent in agents {
        assert_eq!(
            read(agent, key, mode).await.as_deref(),
            Some(value),
            "{mode:?} read of {key} on {}",
            agent.host
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_servers_form_a_cluster_take_a_fourth_and_survive_losing_the_leader() {
    let _turn = crate::support::timing_sensitive().await;
    let data: Vec<tempfile::TempDir> = (0..4).map(|_| tempfile::tempdir().expect("dir")).collect();
    let mut servers: Vec<Option<Agent>> = (0..3)
        .map(|index| Some(Agent::spawn(server(index, Some(3), data[index].path()))))
        .collect();
    let client = Agent::spawn(client());
    let addresses = |servers: &[Option<Agent>]| -> Vec<String> {
        let mut all: Vec<String> = servers.iter().flatten().map(rpc_address).collect();
        all.sort();
        all
    };
    let first_leader = {
        let agents: Vec<&Agent> = servers.iter().flatten().collect();
        agreed_leader(&agents).await
    };
    let expected = addresses(&servers);
    for agent in servers.iter().flatten().chain([&client]) {
        eventually(
            "every agent to list three peers",
            // The formation deadline the other cluster tests use: on 2 cores shared with
            // other tests' agents, 10 s was missed now and then.
            Duration::from_secs(30),
            || async { (peers(agent).await == expected).then_some(()) },
        )
        .await;
    }
    let follower = servers
        .iter()
        .flatten()
        .find(|agent| rpc_address(agent) != first_leader)
        .expect("a follower");

    // `operator raft list-peers`, asked of a follower, shows three voters and one leader.
    let (code, out, err) = cli(follower, &["operator", "raft", "list-peers"], None);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|line| line.split_whitespace().collect())
        .collect();
    assert_eq!(rows.len(), 3, "{out}");
    assert!(out.starts_with("Node"), "{out}");
    assert_eq!(
        rows.iter().filter(|row| row[3] == "leader").count(),
        1,
        "{out}"
    );
    assert!(rows.iter().all(|row| row[4] == "true"), "all voters: {out}");
    let mut listed: Vec<String> = rows.iter().map(|row| row[2].to_string()).collect();
    listed.sort();
    assert_eq!(listed, expected);
    let (code, _, err) = cli(
        follower,
        &[
            "operator",
            "raft",
            "remove-peer",
            "-address=127.0.99.1:8300",
        ],
        None,
    );
    assert_ne!(code, 0);
    assert!(
        err.contains("was not found in the Raft configuration"),
        "{err}"
    );

    // A write through each server and through the client is committed once and read back
    // from every agent in every consistency mode (a default or consistent read on a follower
    // or a client waits for what the leader had applied when the read began); it reaches
    // every server's own store (`?stale`).
    let everyone: Vec<&Agent> = servers.iter().flatten().chain([&client]).collect();
    for (index, writer) in everyone.iter().enumerate() {
        let key = format!("formation/{index}");
        let value = format!("v{index}");
        assert_eq!(
            put(writer, &key, &value).await,
            (200, "true".into()),
            "PUT on {}",
            writer.host
        );
        read_everywhere(&everyone, &key, "", &value).await;
        read_everywhere(&everyone, &key, "consistent", &value).await;
        for agent in &everyone {
            eventually(
                "the write in every store",
                Duration::from_secs(5),
                || async {
                    (read(agent, &key, "stale").await.as_deref() == Some(value.as_str()))
                        .then_some(())
                },
            )
            .await;
        }
    }
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

    // Enough writes that the servers snapshot and purge their logs several times over.
    for index in 0..48 {
        let key = format!("bulk/{index}");
        assert_eq!(
            put(everyone[index % 3], &key, "b").await,
            (200, "true".into())
        );
    }

    // A fourth server without -bootstrap-expect joins as a non-voter and is promoted once it
    // has caught up and stayed so for the stabilization time.
    servers.push(Some(Agent::spawn(server(3, None, data[3].path()))));
    let expected = addresses(&servers);
    let leader_agent = servers
        .iter()
        .flatten()
        .find(|agent| rpc_address(agent) == first_leader)
        .expect("the leader is one of the servers");
    eventually(
        "the fourth server to become a voter",
        Duration::from_secs(20),
        || async { (peers(leader_agent).await == expected).then_some(()) },
    )
    .await;
    let fourth = servers[3].as_ref().expect("fourth");
    assert!(
        fourth
            .log()
            .contains("installed a snapshot from the leader"),
        "the fourth server caught up from a snapshot:\n{}",
        fourth.log()
    );
    assert_eq!(read(fourth, "bulk/47", "stale").await.as_deref(), Some("b"));
    eventually(
        "the fourth server to read the earlier writes",
        Duration::from_secs(10),
        || async { (read(fourth, "formation/0", "").await.as_deref() == Some("v0")).then_some(()) },
    )
    .await;

    // A session with a TTL, created through the client and never renewed: whichever server
    // leads when its TTL runs out destroys it.
    let session = client
        .client()
        .put(
            "/v1/session/create",
            json!({"Name": "unrenewed", "TTL": "10s", "Checks": []})
                .to_string()
                .into_bytes(),
        )
        .await
        .expect("session create");
    assert_eq!(session.status, 200, "{}", session.text());
    let session: Value = serde_json::from_slice(&session.body).expect("session JSON");
    let session = session["ID"].as_str().expect("ID").to_string();

    // kill -9 of the leader: the others elect a new one and keep taking writes, through
    // themselves and through the client.
    let position = servers
        .iter()
        .position(|agent| {
            agent
                .as_ref()
                .is_some_and(|agent| rpc_address(agent) == first_leader)
        })
        .expect("leader position");
    drop(servers[position].take());
    let second_leader = {
        let survivors: Vec<&Agent> = servers.iter().flatten().collect();
        agreed_leader(&survivors).await
    };
    assert_ne!(second_leader, first_leader);
    let everyone: Vec<&Agent> = servers.iter().flatten().chain([&client]).collect();
    for (index, writer) in everyone.iter().enumerate() {
        let key = format!("after-failover/{index}");
        assert_eq!(
            put(writer, &key, "x").await,
            (200, "true".into()),
            "PUT on {}",
            writer.host
        );
        read_everywhere(&everyone, &key, "consistent", "x").await;
    }
    // The leader's duties moved with leadership: the new leader signs leaf certificates
    // (asked through a follower and through the client) and runs the session TTL timers.
    for agent in [
        servers.iter().flatten().next().expect("a survivor"),
        &client,
    ] {
        let leaf = agent
            .client()
            .get("/v1/agent/connect/ca/leaf/after-failover")
            .await
            .expect("leaf");
        assert_eq!(leaf.status, 200, "leaf on {}: {}", agent.host, leaf.text());
        let leaf: Value = serde_json::from_slice(&leaf.body).expect("leaf JSON");
        assert!(leaf["CertPEM"]
            .as_str()
            .is_some_and(|pem| pem.contains("BEGIN CERTIFICATE")));
    }
    eventually(
        "the new leader to destroy the unrenewed session",
        Duration::from_secs(40),
        || async {
            let info = get(&client, &format!("/v1/session/info/{session}")).await?;
            (info.1 == json!([]) || info.1 == Value::Null).then_some(())
        },
    )
    .await;

    // Every write acknowledged before the failover is still there.
    for index in 0..4 {
        read_everywhere(
            &everyone,
            &format!("formation/{index}"),
            "consistent",
            &format!("v{index}"),
        )
        .await;
    }

    // The old leader, restarted on its data, rejoins as a follower of the new leader and
    // catches up on what was written while it was down.
    servers[position] = Some(Agent::spawn(server(
        position,
        Some(3),
        data[position].path(),
    )));
    let restarted = servers[position].as_ref().expect("restarted");
    let all: Vec<&Agent> = servers.iter().flatten().collect();
    assert_eq!(agreed_leader(&all).await, second_leader);
    for index in 0..4 {
        eventually(
            "the restarted server to catch up",
            Duration::from_secs(10),
            || async {
                (read(restarted, &format!("after-failover/{index}"), "stale")
                    .await
                    .as_deref()
                    == Some("x"))
                .then_some(())
            },
        )
        .await;
    }
    // Autopilot may have removed it as a dead server while it was down; then it is added
    // back and promoted.
    eventually(
        "the restarted server to be a voter",
        Duration::from_secs(20),
        || async { (peers(restarted).await == expected).then_some(()) },
    )
    .await;

    // A snapshot saved through one server and restored through another reaches every
    // server's own store: a key written after the save is gone everywhere, and the saved
    // ones are back.
    save_write_restore(all[0], all[1], all[2]).await;
    for agent in &all {
        eventually(
            "the restore to reach every server",
            Duration::from_secs(10),
            || async {
                let gone = read(agent, "after-save", "stale").await.is_none();
                let kept = read(agent, "after-failover/0", "stale").await.as_deref() == Some("x");
                (gone && kept).then_some(())
            },
        )
        .await;
    }
}

/// Saves a snapshot through `saver`, writes `after-save` through `writer`, and restores the
/// snapshot through `restorer`; the caller checks that `after-save` is gone everywhere.
async fn save_write_restore(saver: &Agent, writer: &Agent, restorer: &Agent) {
    let saved = saver
        .client()
        .get("/v1/snapshot")
        .await
        .expect("snapshot save");
    assert_eq!(saved.status, 200, "{}", saved.text());
    assert_eq!(put(writer, "after-save", "y").await, (200, "true".into()));
    let restored = restorer
        .client()
        .put("/v1/snapshot", saved.body.to_vec())
        .await
        .expect("snapshot restore");
    assert_eq!(restored.status, 200, "{}", restored.text());
}

/// Addresses no other test uses, for the partition test.
const PARTITIONED: [&str; 3] = ["127.0.16.1", "127.0.16.2", "127.0.16.3"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_answers_no_consistent_read_and_acknowledges_no_write() {
    let _turn = crate::support::timing_sensitive().await;
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let servers: Vec<Agent> = (0..3)
        .map(|index| Agent::spawn(server_at(&PARTITIONED, index, Some(3), data[index].path())))
        .collect();
    let all: Vec<&Agent> = servers.iter().collect();
    let old_leader_address = agreed_leader(&all).await;
    assert_eq!(put(&servers[0], "before", "1").await, (200, "true".into()));
    let old = servers
        .iter()
        .find(|agent| rpc_address(agent) == old_leader_address)
        .expect("leader");
    let majority: Vec<&Agent> = servers
        .iter()
        .filter(|agent| agent.host != old.host)
        .collect();
    let hosts: Vec<&str> = majority.iter().map(|agent| agent.host.as_str()).collect();

    let partition = Partition::isolate(&old.host, &hosts);
    // A write sent to the old leader now is never acknowledged: it cannot reach a quorum.
    let old_client = old.client();
    let cut_off_write = tokio::spawn(async move {
        old_client
            .put("/v1/kv/cut-off", b"lost".to_vec())
            .await
            .map(|response| response.status.as_u16())
    });
    // The majority elects a new leader and takes writes.
    let new_leader = agreed_leader(&majority).await;
    assert_ne!(new_leader, old_leader_address);
    assert_eq!(put(majority[0], "during", "2").await, (200, "true".into()));
    read_everywhere(&majority, "during", "consistent", "2").await;
    // The old leader answers no consistent read (it cannot confirm its leadership) and its
    // stale reads still work, reporting a growing last contact.
    let response = old
        .client()
        .get("/v1/kv/before?consistent")
        .await
        .expect("GET");
    assert_eq!(response.status, 500, "{}", response.text());
    assert!(
        response.text().contains("No cluster leader"),
        "{}",
        response.text()
    );
    assert!(
        !cut_off_write.is_finished(),
        "the cut-off write was answered during the partition"
    );
    let last_contact = |agent: &Agent| {
        let client = agent.client();
        async move {
            let response = client.get("/v1/kv/before?stale").await.ok()?;
            (response.status == 200).then_some(())?;
            header(&response, "X-Consul-LastContact")
                .parse::<u64>()
                .ok()
        }
    };
    for agent in &majority {
        assert!(
            last_contact(agent).await.is_some(),
            "stale read on {}",
            agent.host
        );
    }
    eventually(
        "the old leader's stale reads to report a growing last contact",
        Duration::from_secs(10),
        || async { last_contact(old).await.filter(|ms| *ms > 2000) },
    )
    .await;

    // Healed: the old leader follows the new one and catches up; the write it took while cut
    // off was never acknowledged and is gone.
    drop(partition);
    assert_eq!(agreed_leader(&all).await, new_leader);
    eventually(
        "the old leader to catch up",
        Duration::from_secs(10),
        || async { (read(old, "during", "stale").await.as_deref() == Some("2")).then_some(()) },
    )
    .await;
    let answered = cut_off_write.await.expect("join");
    assert_ne!(
        answered.ok(),
        Some(200),
        "the cut-off write must not be acknowledged"
    );
    for agent in &all {
        assert_eq!(read(agent, "cut-off", "consistent").await, None);
    }
}

/// Addresses no other test uses, for the pre-vote test.
const PRE_VOTE: [&str; 3] = ["127.0.28.1", "127.0.28.2", "127.0.28.3"];

/// The server at `leader`, one of the others, and the addresses of all but that follower.
fn leader_and_a_follower<'a>(
    all: &[&'a Agent],
    leader: &str,
) -> (&'a Agent, &'a Agent, Vec<&'a str>) {
    let leader_agent = *all
        .iter()
        .find(|agent| rpc_address(agent) == leader)
        .expect("leader");
    let follower = *all
        .iter()
        .find(|agent| rpc_address(agent) != leader)
        .expect("a follower");
    let others = all
        .iter()
        .filter(|agent| agent.host != follower.host)
        .map(|agent| agent.host.as_str())
        .collect();
    (leader_agent, follower, others)
}

/// The leader's term, from the autopilot report.
async fn leader_term(agent: &Agent) -> Option<u64> {
    let (_, report) = get(agent, "/v1/operator/autopilot/health").await?;
    report["Servers"]
        .as_array()?
        .iter()
        .find(|server| server["Leader"] == true)?["LastTerm"]
        .as_u64()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_cut_off_and_back_does_not_depose_the_leader() {
    let _turn = crate::support::timing_sensitive().await;
    let data: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().expect("dir")).collect();
    let servers: Vec<Agent> = (0..3)
        .map(|index| Agent::spawn(server_at(&PRE_VOTE, index, Some(3), data[index].path())))
        .collect();
    let all: Vec<&Agent> = servers.iter().collect();
    let leader = agreed_leader(&all).await;
    let (leader_agent, follower, others) = leader_and_a_follower(&all, &leader);
    let term = eventually("the leader's term", Duration::from_secs(10), || {
        leader_term(leader_agent)
    })
    .await;

    // Cut off for several election timeouts (200–400 ms at raft_multiplier 1): without a
    // pre-vote it would raise its term again and again, and depose the leader on return.
    let partition = Partition::isolate(&follower.host, &others);
    eventually(
        "the follower to notice it is cut off",
        Duration::from_secs(10),
        || async {
            let response = follower.client().get("/v1/kv/x?stale").await.ok()?;
            let ms: u64 = header(&response, "X-Consul-LastContact").parse().ok()?;
            (ms > 3000).then_some(())
        },
    )
    .await;
    drop(partition);
    assert_eq!(
        put(leader_agent, "after-heal", "1").await,
        (200, "true".into())
    );
    eventually(
        "the follower to catch up",
        Duration::from_secs(10),
        || async {
            (read(follower, "after-heal", "stale").await.as_deref() == Some("1")).then_some(())
        },
    )
    .await;
    assert_eq!(agreed_leader(&all).await, leader, "the same leader");
    assert_eq!(
        leader_term(leader_agent).await,
        Some(term),
        "at the same term"
    );
}

const CATCH_UP: [&str; 3] = ["127.0.29.1", "127.0.29.2", "127.0.29.3"];

/// A follower cut off while the others commit 40 MB catches up by the log once back: the
/// leader sends it about 2 MiB per AppendEntries call (`raft::log_store`), where it used to
/// send everything missed in one call, which could not finish within the call's deadline
/// (the heartbeat interval), so the follower never caught up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_that_missed_tens_of_megabytes_of_log_catches_up() {
    let _turn = crate::support::timing_sensitive().await;
    let data = data_dirs(3);
    let servers: Vec<Agent> = (0..3)
        .map(|index| {
            let mut options = server_at(&CATCH_UP, index, Some(3), data[index].path());
            if let Some(placement) = options.placement.as_mut() {
                // Consul's snapshot defaults: the missed entries stay in the leader's log, so
                // the follower must take them by replication, not by a snapshot.
                let mut config: Value =
                    serde_json::from_str(placement.config.as_deref().unwrap_or("{}"))
                        .expect("config");
                config["raft_snapshot_threshold"] = json!(16384);
                config["raft_trailing_logs"] = json!(10240);
                placement.config = Some(config.to_string());
            }
            Agent::spawn(options)
        })
        .collect();
    let all: Vec<&Agent> = servers.iter().collect();
    let leader = agreed_leader(&all).await;
    let (leader_agent, follower, others) = leader_and_a_follower(&all, &leader);

    let partition = Partition::isolate(&follower.host, &others);
    // 160 values of 256 KiB, 32 at a time, so the leader commits them in entries of about
    // 1 MiB each (its write batcher's bound).
    const VALUES: usize = 160;
    for wave in 0..VALUES / 32 {
        let writes = (0..32).map(|n| {
            let client = leader_agent.client();
            let key = format!("/v1/kv/big/{:03}", wave * 32 + n);
            async move {
                let response = client.put(&key, vec![b'v'; 256 * 1024]).await;
                response.map(|response| response.status.as_u16()).ok()
            }
        });
        for status in futures::future::join_all(writes).await {
            assert_eq!(status, Some(200), "a write through the leader");
        }
    }
    assert_eq!(
        read(follower, "big/159", "stale").await,
        None,
        "the cut-off follower has not seen the writes"
    );
    drop(partition);
    let keys = eventually(
        "the follower to catch up on all 40 MB",
        Duration::from_secs(60),
        || async {
            let (status, keys) = get(follower, "/v1/kv/big/?keys&stale").await?;
            let count = keys.as_array().map_or(0, Vec::len);
            (status == 200 && count == VALUES).then_some(count)
        },
    )
    .await;
    assert_eq!(keys, VALUES);
    assert_eq!(
        read(follower, "big/159", "stale")
            .await
            .map(|value| value.len()),
        Some(256 * 1024)
    );
    assert!(
        !follower.log().contains("installed a snapshot"),
        "caught up by the log, not by a snapshot"
    );

    // A restore of that 40 MB state reaches every server too. It is committed through the
    // log like any write, so it must cross to the followers in pieces that fit the same
    // deadline.
    save_write_restore(leader_agent, follower, follower).await;
    for agent in &all {
        eventually(
            "the 40 MB restore to reach every server",
            Duration::from_secs(30),
            || async {
                let gone = read(agent, "after-save", "stale").await.is_none();
                let kept = read(agent, "big/159", "stale")
                    .await
                    .map(|value| value.len());
                (gone && kept == Some(256 * 1024)).then_some(())
            },
        )
        .await;
    }
    assert_eq!(
        put(leader_agent, "after-restore", "z").await,
        (200, "true".into())
    );
}
