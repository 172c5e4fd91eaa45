//! The Raft state machine: applies committed entries to the state store and keeps snapshots
//! in the same sled database as the log.
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
use serde::{Deserialize, Serialize};

use super::log_store::{decode, encode};
use super::{LogId, NodeId, StorageError, TypeConfig};
use crate::state::{Store, Tables};
use crate::types::{Command, CommandResult};

const SNAPSHOT_KEY: &[u8] = b"current";

type Membership = StoredMembership<NodeId, BasicNode>;

/// A snapshot as stored on disk: openraft's metadata and the encoded tables.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, BasicNode>,
    data: Vec<u8>,
}

pub struct StateMachine {
    store: Arc<Store>,
    snapshots: sled::Tree,
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
    /// Opens the snapshot tree and restores the latest snapshot, if any, into `store`.
    pub fn open(db: sled::Db, path: &Path, store: Arc<Store>) -> Result<StateMachine, String> {
        let snapshots = db.open_tree("snapshots").map_err(|e| e.to_string())?;
        let mut machine = StateMachine {
            store,
            snapshots,
            path: path.to_path_buf(),
            last_applied: None,
            last_membership: Membership::default(),
        };
        if let Some(stored) = machine.read_stored().map_err(|e| e.to_string())? {
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

    fn read_stored(&self) -> Result<Option<StoredSnapshot>, StorageError> {
        let read_error = |error: String| snapshot_error(&self.path, ErrorVerb::Read, error);
        match self
            .snapshots
            .get(SNAPSHOT_KEY)
            .map_err(|e| read_error(e.to_string()))?
        {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_error)?)),
            None => Ok(None),
        }
    }
}

/// Encodes a snapshot, stores it durably and returns it. Used both for snapshots built here and
/// for snapshots received from a leader.
async fn persist(
    snapshots: &sled::Tree,
    path: &Path,
    stored: StoredSnapshot,
) -> Result<Snapshot<TypeConfig>, StorageError> {
    let write_error = |error: String| snapshot_error(path, ErrorVerb::Write, error);
    snapshots
        .insert(SNAPSHOT_KEY, encode(&stored))
        .map_err(|e| write_error(e.to_string()))?;
    snapshots
        .flush_async()
        .await
        .map_err(|e| write_error(e.to_string()))?;
    Ok(Snapshot {
        meta: stored.meta,
        snapshot: Box::new(Cursor::new(stored.data)),
    })
}

/// Builds a snapshot of one consistent version of the tables, taken when openraft asked for
/// the builder, so applying may continue while it encodes.
pub struct SnapshotBuilder {
    tables: Arc<Tables>,
    last_applied: Option<LogId>,
    last_membership: Membership,
    snapshots: sled::Tree,
    path: PathBuf,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let tables = self.tables.clone();
        // Encoding a large state is CPU work; keep it off the async workers.
        let data = tokio::task::spawn_blocking(move || Store::encode(&tables))
            .await
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
        Ok(self.store.apply_batch(commands))
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
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self.read_stored()?.map(|stored| Snapshot {
            meta: stored.meta,
            snapshot: Box::new(Cursor::new(stored.data)),
        }))
    }
}
