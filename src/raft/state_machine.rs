//! The Raft state machine: applies committed entries to the state store and keeps the latest
//! snapshot in a file (`snapshot_file`).
//!
//! The state store itself lives in memory; what makes it durable is the log plus the latest
//! snapshot. On start the snapshot is restored and openraft re-applies the committed entries
//! after it.

use std::io::Cursor;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use openraft::storage::{RaftSnapshotBuilder, RaftStateMachine, Snapshot, SnapshotMeta};
use openraft::{
    BasicNode, Entry, EntryPayload, ErrorSubject, ErrorVerb, StorageIOError, StoredMembership,
};

use super::snapshot_file::SnapshotFiles;
use super::{LogId, NodeId, StorageError, TypeConfig};
use crate::state::{Store, Tables};
use crate::types::{Command, CommandResult};

type Membership = StoredMembership<NodeId, BasicNode>;

/// A snapshot as stored on disk: openraft's metadata and the encoded tables.
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

pub struct StateMachine {
    store: Arc<Store>,
    snapshots: Arc<SnapshotFiles>,
    path: PathBuf,
    last_applied: Option<LogId>,
    last_membership: Membership,
}

fn snapshot_error(path: &Path, verb: ErrorVerb, error: impl std::fmt::Display) -> StorageError {
    StorageIOError::new(
        ErrorSubject::Snapshot(None),
        verb,
        &std::io::Error::other(format!("{}: {error}", path.display())),
    )
    .into()
}

impl StateMachine {
    /// Opens the snapshot directory and restores the latest snapshot, if any, into `store`.
    pub(super) fn open(snapshot_dir: &Path, store: Arc<Store>) -> Result<StateMachine, String> {
        let snapshots = Arc::new(SnapshotFiles::open(snapshot_dir)?);
        let mut machine = StateMachine {
            store,
            path: snapshots.path(),
            snapshots,
            last_applied: None,
            last_membership: Membership::default(),
        };
        if let Some(stored) = machine.snapshots_read()? {
            machine
                .store
                .restore(&stored.data)
                .map_err(|error| format!("snapshot {}: {error}", stored.meta.snapshot_id))?;
            machine.last_applied = stored.meta.last_log_id;
            machine.last_membership = stored.meta.last_membership;
        }
        Ok(machine)
    }

    /// The last log index covered by the restored snapshot (0 without one).
    pub fn snapshot_index(&self) -> u64 {
        self.last_applied.map_or(0, |log_id| log_id.index)
    }

    /// Takes `membership` as the applied configuration; only outage recovery does this, on a
    /// stopped server, before it saves a snapshot carrying it.
    pub(super) fn replace_membership(&mut self, membership: Membership) {
        self.last_membership = membership;
    }

    fn snapshots_read(&self) -> Result<Option<StoredSnapshot>, String> {
        Ok(self
            .snapshots
            .read()?
            .map(|(meta, data)| StoredSnapshot { meta, data }))
    }

    fn read_stored(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        self.snapshots_read()
            .map_err(|error| snapshot_error(&self.path, ErrorVerb::Read, error))
    }
}

/// Stores a snapshot durably and returns it. Used both for snapshots built here and for
/// snapshots received from a leader.
async fn persist(
    snapshots: &Arc<SnapshotFiles>,
    path: &Path,
    stored: StoredSnapshot,
) -> Result<Snapshot<TypeConfig>, StorageError> {
    let files = snapshots.clone();
    let meta = stored.meta.clone();
    // Writing and fsyncing a file blocks; keep it off the async workers.
    let data = tokio::task::spawn_blocking(move || {
        files
            .write(&stored.meta, &stored.data)
            .map(|()| stored.data)
    })
    .await
    .map_err(|error| snapshot_error(path, ErrorVerb::Write, error))?
    .map_err(|error| snapshot_error(path, ErrorVerb::Write, error))?;
    Ok(Snapshot {
        meta,
        snapshot: Box::new(Cursor::new(data)),
    })
}

/// Builds a snapshot of one consistent version of the tables, taken when openraft asked for
/// the builder, so applying may continue while it encodes.
pub struct SnapshotBuilder {
    tables: Arc<Tables>,
    last_applied: Option<LogId>,
    last_membership: Membership,
    snapshots: Arc<SnapshotFiles>,
    path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let tables = self.tables.clone();
        // Encoding a large state is CPU work; keep it off the async workers.
        let data = tokio::task::spawn_blocking(move || Store::encode(&tables))
            .await
            .map_err(|error| snapshot_error(&self.path, ErrorVerb::Write, error))?
            .map_err(|error| snapshot_error(&self.path, ErrorVerb::Write, error))?;
        let snapshot_id = match self.last_applied {
            Some(log_id) => format!("{}-{}", log_id.leader_id, log_id.index),
            None => "empty".to_string(),
        };
        let meta = SnapshotMeta {
            last_log_id: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshot_id,
        };
        persist(&self.snapshots, &self.path, StoredSnapshot { meta, data }).await
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, Membership), StorageError> {
        Ok((self.last_applied, self.last_membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<CommandResult>, StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let entries: Vec<Entry<TypeConfig>> = entries.into_iter().collect();
        let Some(last) = entries.last() else {
            return Ok(Vec::new());
        };
        self.last_applied = Some(last.log_id);
        for entry in &entries {
            if let EntryPayload::Membership(membership) = &entry.payload {
                self.last_membership = Membership::new(Some(entry.log_id), membership.clone());
            }
        }
        let commands = entries.iter().map(|entry| {
            let command: Option<&Command> = match &entry.payload {
                EntryPayload::Normal(command) => Some(command),
                EntryPayload::Blank | EntryPayload::Membership(_) => None,
            };
            (entry.log_id.index, command)
        });
        let started = std::time::Instant::now();
        let results = self.store.apply_batch(commands);
        metrics::histogram!(crate::telemetry::RAFT_FSM_APPLY)
            .record(crate::telemetry::ms_since(started));
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            tables: self.store.snapshot(),
            last_applied: self.last_applied,
            last_membership: self.last_membership.clone(),
            snapshots: self.snapshots.clone(),
            path: self.path.clone(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, BasicNode>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let snapshot_size = data.len();
        self.store
            .restore(&data)
            .map_err(|error| snapshot_error(&self.path, ErrorVerb::Read, error))?;
        self.last_applied = meta.last_log_id;
        self.last_membership = meta.last_membership.clone();
        let stored = StoredSnapshot {
            meta: meta.clone(),
            data,
        };
        persist(&self.snapshots, &self.path, stored).await?;
        tracing::info!(
            index = meta.last_log_id.map_or(0, |log| log.index),
            bytes = snapshot_size,
            "installed a snapshot from the leader"
        );
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.read_stored()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
