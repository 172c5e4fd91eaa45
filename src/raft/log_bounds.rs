//! A real Raft node on a real sled database: snapshots are taken and the log is purged behind
//! them, so the log stays bounded however many writes arrive, and a reopened database restores
//! the whole state from the snapshot plus the log tail.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::BasicNode;

use super::{open_storage, openraft_config, Raft};
use crate::config::RaftConfig;
use crate::state::Store;
use crate::types::{Command, KvOp};

const SNAPSHOT_THRESHOLD: u64 = 50;
const TRAILING_LOGS: u64 = 10;

async fn start(dir: &std::path::Path, store: Arc<Store>) -> (Raft, super::LogStore) {
    // After a shutdown the flusher task lets go of the database a moment later; wait for it.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let storage = loop {
        match open_storage(dir, store.clone()).await {
            Ok(storage) => break storage,
            Err(error) if std::time::Instant::now() < deadline => {
                assert!(error.to_string().contains("lock"), "{error}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("open storage: {error}"),
        }
    };
    let reader = storage.log_store.clone();
    let tuning = RaftConfig {
        multiplier: 1,
        snapshot_threshold: SNAPSHOT_THRESHOLD,
        trailing_logs: TRAILING_LOGS,
    };
    let raft = Raft::new(
        1,
        openraft_config(&tuning).expect("config"),
        NoPeers,
        storage.log_store,
        storage.state_machine,
    )
    .await
    .expect("raft");
    (raft, reader)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_and_purging_keep_the_log_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = Arc::new(Store::new());
    let (raft, mut log) = start(dir.path(), store.clone()).await;
    raft.initialize(BTreeMap::from([(1, BasicNode::new("127.0.0.1:8300"))]))
        .await
        .expect("initialize");
    let wait = || raft.wait(Some(Duration::from_secs(20)));
    wait().current_leader(1, "leader").await.expect("leader");

    let writes = 500u64;
    for n in 0..writes {
        let command = Command::Kv(KvOp::Set {
            key: format!("key/{n:04}"),
            value: vec![b'v'; 64],
            flags: n,
        });
        raft.client_write(command).await.expect("write");
    }
    let metrics = wait()
        .metrics(
            |m| {
                m.purged
                    .is_some_and(|p| p.index + SNAPSHOT_THRESHOLD + TRAILING_LOGS >= writes)
            },
            "log purged behind a recent snapshot",
        )
        .await
        .expect("purge");
    let state = log.get_log_state().await.expect("log state");
    let kept = log.try_get_log_entries(0..).await.expect("entries").len() as u64;
    assert!(
        kept <= SNAPSHOT_THRESHOLD + TRAILING_LOGS + 1,
        "{kept} entries kept; purged up to {:?}",
        state.last_purged_log_id
    );
    assert!(metrics.snapshot.is_some());
    assert_eq!(store.snapshot().kv_list("key/").count() as u64, writes);
    raft.shutdown().await.expect("shutdown");
    drop(raft);
    drop(log);

    // Reopen: the snapshot and the log tail rebuild the whole state.
    let reopened = Arc::new(Store::new());
    let (raft, _) = start(dir.path(), reopened.clone()).await;
    raft.wait(Some(Duration::from_secs(20)))
        .metrics(
            |m| m.last_applied.is_some_and(|a| a.index >= writes),
            "re-applied",
        )
        .await
        .expect("re-apply");
    let tables = reopened.snapshot();
    assert_eq!(tables.kv_list("key/").count() as u64, writes);
    assert_eq!(tables.kv_get("key/0499").map(|e| e.flags), Some(499));
    raft.shutdown().await.expect("shutdown");
}

/// The network of a one-voter cluster, which never sends a Raft RPC (the real one, on the
/// server port, is `rpc::raft_network`, above this module).
#[derive(Clone)]
struct NoPeers;

impl openraft::network::RaftNetworkFactory<super::TypeConfig> for NoPeers {
    type Network = NoPeers;

    async fn new_client(&mut self, _target: u64, _node: &BasicNode) -> NoPeers {
        NoPeers
    }
}

type Failure<E> = openraft::error::RPCError<u64, BasicNode, openraft::error::RaftError<u64, E>>;

fn unreachable<E: std::error::Error>() -> Failure<E> {
    let reason = std::io::Error::other("a one-voter cluster has no peers");
    openraft::error::RPCError::Unreachable(openraft::error::Unreachable::new(&reason))
}

impl openraft::network::RaftNetwork<super::TypeConfig> for NoPeers {
    async fn append_entries(
        &mut self,
        _rpc: openraft::raft::AppendEntriesRequest<super::TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<openraft::raft::AppendEntriesResponse<u64>, Failure<openraft::error::Infallible>>
    {
        Err(unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: openraft::raft::InstallSnapshotRequest<super::TypeConfig>,
        _option: openraft::network::RPCOption,
    ) -> Result<
        openraft::raft::InstallSnapshotResponse<u64>,
        Failure<openraft::error::InstallSnapshotError>,
    > {
        Err(unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: openraft::raft::VoteRequest<u64>,
        _option: openraft::network::RPCOption,
    ) -> Result<openraft::raft::VoteResponse<u64>, Failure<openraft::error::Infallible>> {
        Err(unreachable())
    }
}
