//! The Raft log in sled: entries keyed by big-endian index, plus the vote, the committed log id
//! and the last purged log id.
//!
//! Durability: `append` writes the batch, then hands openraft's callback to a flusher thread
//! that makes it durable and only then reports the entries as flushed, which is what lets
//! openraft acknowledge them. Callbacks that queue up while one flush runs are all answered by
//! the next flush, in order: group commit without reordering.
//!
//! "Durable" is sled's flush *plus* an fsync of sled's `db` file: on Linux sled's flush ends in
//! `sync_file_range`, which neither flushes the device's write cache nor file metadata, so on
//! its own it survives a process crash but not a power loss. fsync acts on the inode, so our own
//! handle to the file covers what sled wrote.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fs::File;
use std::sync::{mpsc, Arc};

use super::progress::ProgressMarker;

use super::{LogId, NodeId, StorageError, TypeConfig};

/// Bumped if the encoding of stored entries ever changes; checked on every read.
const FORMAT_VERSION: u8 = 1;

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    logs: sled::Tree,
    meta: sled::Tree,
    /// Our own handle to sled's data file, to fsync it (see the module docs).
    db_file: Arc<File>,
    path: PathBuf,
    flusher: mpsc::Sender<FlushRequest>,
    progress: Arc<ProgressMarker>,
}

/// An append waiting for its flush: openraft's callback and the last index it wrote.
type FlushRequest = (LogFlushed<TypeConfig>, u64);

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION];
    // Serialising plain owned data into a Vec cannot fail.
    bincode::serialize_into(&mut bytes, value).unwrap_or_default();
    bytes
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => bincode::deserialize(rest).map_err(|e| e.to_string()),
        Some((version, _)) => Err(format!("unknown storage format version {version}")),
        None => Err("empty record".into()),
    }
}

fn io_error(
    subject: ErrorSubject<NodeId>,
    verb: ErrorVerb,
    path: &Path,
    error: impl std::fmt::Display,
) -> StorageError {
    StorageIOError::new(
        subject,
        verb,
        &std::io::Error::other(format!("{}: {error}", path.display())),
    )
    .into()
}

impl LogStore {
    /// Opens the log trees and checks that the stored metadata and the last entry decode, so a
    /// damaged database is reported at start-up rather than on first use.
    pub fn open(
        db: sled::Db,
        path: &Path,
        progress: Arc<ProgressMarker>,
    ) -> Result<LogStore, String> {
        let logs = db.open_tree("logs").map_err(|e| e.to_string())?;
        let meta = db.open_tree("meta").map_err(|e| e.to_string())?;
        let check = |key: &[u8], decodes: fn(&[u8]) -> Result<(), String>| -> Result<(), String> {
            match meta.get(key).map_err(|e| e.to_string())? {
                Some(bytes) => decodes(&bytes).map_err(|error| {
                    format!("corrupt {} record: {error}", String::from_utf8_lossy(key))
                }),
                None => Ok(()),
            }
        };
        check(VOTE_KEY, |bytes| decode::<Vote<NodeId>>(bytes).map(drop))?;
        check(COMMITTED_KEY, |bytes| {
            decode::<Option<LogId>>(bytes).map(drop)
        })?;
        check(LAST_PURGED_KEY, |bytes| decode::<LogId>(bytes).map(drop))?;
        if let Some((_, bytes)) = logs.last().map_err(|e| e.to_string())? {
            decode::<Entry<TypeConfig>>(&bytes)
                .map_err(|error| format!("corrupt last log entry: {error}"))?;
        }
        let db_file = Arc::new(open_data_file(path)?);
        let flusher = spawn_flusher(db.clone(), db_file.clone(), progress.clone())?;
        Ok(LogStore {
            db,
            db_file,
            logs,
            meta,
            path: path.to_path_buf(),
            flusher,
            progress,
        })
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let read_error =
            |error: String| io_error(ErrorSubject::Store, ErrorVerb::Read, &self.path, error);
        match self.meta.get(key).map_err(|e| read_error(e.to_string()))? {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_error)?)),
            None => Ok(None),
        }
    }

    /// Writes one metadata record and fsyncs it before returning.
    async fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let write_error =
            |error: String| io_error(ErrorSubject::Store, ErrorVerb::Write, &self.path, error);
        self.meta
            .insert(key, encode(value))
            .map_err(|e| write_error(e.to_string()))?;
        self.persist().await.map_err(|e| write_error(e.to_string()))
    }

    /// Makes everything written so far durable: sled's flush, then an fsync of its file.
    async fn persist(&self) -> std::io::Result<()> {
        self.db
            .flush_async()
            .await
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let file = self.db_file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(std::io::Error::other)?
    }

    /// The highest index the database holds: the last entry, or the purge point.
    pub fn last_durable_index(&self) -> Result<u64, StorageError> {
        let last_purged: Option<LogId> = self.read_meta(LAST_PURGED_KEY)?;
        let last = self.last_entry_id()?.or(last_purged);
        Ok(last.map_or(0, |log_id| log_id.index))
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        match self.logs.last() {
            Ok(Some((_, bytes))) => decode::<Entry<TypeConfig>>(&bytes)
                .map(|entry| Some(entry.log_id))
                .map_err(|error| io_error(ErrorSubject::Logs, ErrorVerb::Read, &self.path, error)),
            Ok(None) => Ok(None),
            Err(error) => Err(io_error(
                ErrorSubject::Logs,
                ErrorVerb::Read,
                &self.path,
                error,
            )),
        }
    }

    /// Removes every entry whose index is within `range`, in one atomic batch.
    fn remove_range(&self, range: impl RangeBounds<u64>) -> Result<(), StorageError> {
        let start = bound_key(range.start_bound());
        let end = bound_key(range.end_bound());
        let mut batch = sled::Batch::default();
        for item in self.logs.range::<Vec<u8>, _>((start, end)) {
            let (key, _) = item.map_err(|error| {
                io_error(ErrorSubject::Logs, ErrorVerb::Delete, &self.path, error)
            })?;
            batch.remove(key);
        }
        self.logs
            .apply_batch(batch)
            .map_err(|error| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &self.path, error))
    }
}

fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

fn bound_key(bound: Bound<&u64>) -> Bound<Vec<u8>> {
    match bound {
        Bound::Included(index) => Bound::Included(index_key(*index)),
        Bound::Excluded(index) => Bound::Excluded(index_key(*index)),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// sled keeps its log in one file named `db` inside its directory.
fn open_data_file(path: &Path) -> Result<File, String> {
    let file = path.join("db");
    File::open(&file).map_err(|error| format!("cannot open {}: {error}", file.display()))
}

/// Starts the flusher thread. It owns fsync, a blocking call, so it is a thread of its own
/// rather than a task that would stall an async worker; it stops when every sender is gone.
fn spawn_flusher(
    db: sled::Db,
    db_file: Arc<File>,
    progress: Arc<ProgressMarker>,
) -> Result<mpsc::Sender<FlushRequest>, String> {
    let (sender, requests) = mpsc::channel::<FlushRequest>();
    std::thread::Builder::new()
        .name("raft-log-flush".into())
        .spawn(move || {
            while let Ok(first) = requests.recv() {
                let mut waiting = vec![first];
                waiting.extend(requests.try_iter());
                let result = db
                    .flush()
                    .map_err(|e| std::io::Error::other(e.to_string()))
                    .and_then(|_| db_file.sync_data());
                if result.is_ok() {
                    if let Some(last) = waiting.iter().map(|(_, index)| *index).max() {
                        progress.record(last);
                    }
                }
                for (callback, _) in waiting {
                    let outcome = match &result {
                        Ok(()) => Ok(()),
                        Err(error) => Err(std::io::Error::new(error.kind(), error.to_string())),
                    };
                    callback.log_io_completed(outcome);
                }
            }
        })
        .map_err(|error| format!("cannot start the log flusher: {error}"))?;
    Ok(sender)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let start = bound_key(range.start_bound());
        let end = bound_key(range.end_bound());
        self.logs
            .range::<Vec<u8>, _>((start, end))
            .map(|item| {
                let (_, bytes) = item.map_err(|error| {
                    io_error(ErrorSubject::Logs, ErrorVerb::Read, &self.path, error)
                })?;
                decode(&bytes).map_err(|error| {
                    io_error(ErrorSubject::Logs, ErrorVerb::Read, &self.path, error)
                })
            })
            .collect()
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id: Option<LogId> = self.read_meta(LAST_PURGED_KEY)?;
        let last_log_id = self.last_entry_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> LogStore {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError> {
        self.write_meta(VOTE_KEY, vote).await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError> {
        self.read_meta(VOTE_KEY)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // The committed id lets a restarted node re-apply its log at once, before any election.
        // It need not be fsynced here: losing it only delays re-applying until the next commit.
        self.meta
            .insert(COMMITTED_KEY, encode(&committed))
            .map_err(|error| io_error(ErrorSubject::Store, ErrorVerb::Write, &self.path, error))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.read_meta::<Option<LogId>>(COMMITTED_KEY)?.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        let mut batch = sled::Batch::default();
        let mut last_index = 0;
        for entry in entries {
            last_index = entry.log_id.index;
            batch.insert(index_key(entry.log_id.index), encode(&entry));
        }
        self.logs
            .apply_batch(batch)
            .map_err(|error| io_error(ErrorSubject::Logs, ErrorVerb::Write, &self.path, error))?;
        if let Err(unsent) = self.flusher.send((callback, last_index)) {
            // The flusher thread only stops if it panicked; make the entries durable here.
            let (callback, _) = unsent.0;
            callback.log_io_completed(self.persist().await);
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.remove_range(log_id.index..)?;
        self.persist()
            .await
            .map_err(|error| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &self.path, error))?;
        // Conflicting entries were removed on purpose; the durable end moves back with them.
        self.progress.record(log_id.index.saturating_sub(1));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point durably first: a crash between the two steps leaves extra
        // entries below it, which are harmless, never a gap above it.
        self.write_meta(LAST_PURGED_KEY, &log_id).await?;
        self.remove_range(..=log_id.index)
    }
}
