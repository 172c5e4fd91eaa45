//! openraft wiring: the type configuration, the log store (entries in our write-ahead log,
//! vote and purge point in sled), the state machine with file snapshots, the network, and the
//! Raft configuration derived from the agent's config.
//!
//! Architecture invariant: Raft is the only writer of the state store. Everything that changes
//! replicated state is a `types::Command` in a log entry, flushed to disk on a quorum before the
//! write is acknowledged, then applied by the state machine in log order.

// openraft's storage traits fix `StorageError` (about 224 bytes) as the error type, so the
// helpers that feed them return it too rather than boxing and unboxing at every call.
#![allow(clippy::result_large_err)]

#[cfg(test)]
mod log_bounds;
mod log_store;
mod progress;
mod recovery;
mod snapshot_file;
mod state_machine;
#[cfg(test)]
mod storage_suite;
mod wal;

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

pub use log_store::LogStore;
pub use recovery::{peers_file, recover_from_peers_file};
pub use state_machine::StateMachine;

use crate::config::RaftConfig;
use crate::state::Store;
use crate::types::{Command, CommandResult};

openraft::declare_raft_types!(
    /// Concord's Raft type configuration.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type NodeId = u64;
pub type LogId = openraft::LogId<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;

/// openraft's configuration from the agent's: every timeout scaled by Consul's
/// `performance.raft_multiplier`, snapshots by `raft_snapshot_threshold` and
/// `raft_trailing_logs`.
pub fn openraft_config(config: &RaftConfig) -> anyhow::Result<Arc<openraft::Config>> {
    let multiplier = u64::from(config.multiplier.max(1));
    let openraft = openraft::Config {
        cluster_name: "concord".into(),
        heartbeat_interval: heartbeat_interval(config).as_millis() as u64,
        election_timeout_min: 200 * multiplier,
        election_timeout_max: 400 * multiplier,
        snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(config.snapshot_threshold),
        max_in_snapshot_log_to_keep: config.trailing_logs,
        ..Default::default()
    };
    Ok(Arc::new(openraft.validate()?))
}

/// How often the leader sends heartbeats: 50 ms scaled by `raft_multiplier`.
pub fn heartbeat_interval(config: &RaftConfig) -> Duration {
    Duration::from_millis(50 * u64::from(config.multiplier.max(1)))
}

/// The files of one server's Raft storage.
pub struct RaftStorage {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
}

/// Where the Raft database lives inside a data dir.
pub fn database_path(data_dir: &Path) -> PathBuf {
    data_dir.join("raft").join("raft.db")
}

/// Opens (or creates) the Raft storage under `data_dir` and restores the state store from the
/// latest snapshot. A database that cannot be opened or decoded is an error naming the file;
/// it is never reset.
pub async fn open_storage(data_dir: &Path, store: Arc<Store>) -> anyhow::Result<RaftStorage> {
    let path = database_path(data_dir);
    let db = open_database(&path)?;
    let (progress, acknowledged) =
        progress::ProgressMarker::open(&data_dir.join("raft").join("progress"))
            .map_err(|error| anyhow::anyhow!("{error}; refusing to start"))?;
    let wal_dir = data_dir.join("raft").join("wal");
    let log_store = LogStore::open(db, &path, &wal_dir, Arc::new(progress))
        .map_err(|error| anyhow::anyhow!("{error}; refusing to start"))?;
    let state_machine = StateMachine::open(&data_dir.join("raft").join("snapshots"), store)
        .map_err(|error| anyhow::anyhow!("{error}; refusing to start"))?;
    let durable = log_store
        .last_durable_index()
        .map_err(|error| anyhow::anyhow!("{error}"))?
        .max(state_machine.snapshot_index());
    if durable < acknowledged {
        anyhow::bail!(
            "{}: the Raft log ends at index {durable} but index {acknowledged} was durably \
             written before; the log is damaged. Refusing to start rather than lose \
             acknowledged writes (restore from a snapshot or another server)",
            wal_dir.display()
        );
    }
    Ok(RaftStorage {
        log_store,
        state_machine,
    })
}

fn open_database(path: &Path) -> anyhow::Result<sled::Db> {
    std::fs::create_dir_all(path)
        .map_err(|error| anyhow::anyhow!("cannot create {}: {error}", path.display()))?;
    sled::Config::new()
        .path(path)
        // sled's default cache is 1 GiB; it holds only a few small metadata records here.
        .cache_capacity(1024 * 1024)
        // Durability comes from the explicit flush and fsync of each metadata write; the
        // periodic background flush would only add idle wake-ups.
        .flush_every_ms(None)
        .open()
        .map_err(|error| {
            anyhow::anyhow!(
                "cannot open Raft database {}: {error}; refusing to start rather than reset it",
                path.display()
            )
        })
}

/// Raft node ids are u64; concord derives one from the node's UUID so it is stable across
/// restarts and the same on every server that knows the node.
pub fn node_id_from_uuid(uuid: &str) -> NodeId {
    let hex: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(16)
        .collect();
    u64::from_str_radix(&hex, 16).unwrap_or(1).max(1)
}

/// How long a write may take before the HTTP edge gives up waiting (the write may still commit).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
