//! openraft's log storage: entries in the write-ahead log (`wal`), and the vote, the committed
//! log id and the purge point as small records in sled.
//!
//! Durability: `append` writes the batch to the current segment, then hands openraft's callback
//! to a flusher thread that `fdatasync`s the segment and only then reports the entries as
//! flushed, which is what lets openraft acknowledge them. Callbacks that queue up while one
//! fsync runs are all answered by the next, in order: group commit without reordering.
//!
//! Metadata writes are rare (a vote per election, the purge point per snapshot) and are made
//! durable inline: sled's flush, then an fsync of sled's data file. sled's flush alone ends in
//! `sync_file_range` on Linux, which neither flushes the device's write cache nor metadata;
//! fsync acts on the inode, so our own handle to the file covers what sled wrote.

use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, PoisonError};

use openraft::storage::{LogFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::{Entry, ErrorSubject, ErrorVerb, StorageIOError, Vote};
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::progress::ProgressMarker;
use super::wal::Wal;
use super::{LogId, NodeId, StorageError, TypeConfig};
use crate::types::shape::{with_shape, Shape};

/// Bumped if the encoding of stored records ever changes; checked on every read.
/// Version 2: services carry Connect fields, and config entries and CA state exist. Version 1
/// was never released, so it is refused rather than translated. Version 3: nodes and services
/// carry a locality; version 2 records still decode (`types::shape`).
const FORMAT_VERSION: u8 = 3;
/// Records of shape V1, before localities, which this build still reads.
const SHAPE_V1: u8 = 2;

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

/// About the most bytes of entries one read for replication returns (always at least one
/// entry), so about the most one AppendEntries call carries. openraft alone bounds a call by
/// entry count (`max_payload_entries`, 300), and concord's entries are group-committed batches
/// of up to about 1 MiB each: a follower that had fallen behind was sent hundreds of MB in one
/// call that could not finish within the call's deadline (the heartbeat interval), so it
/// never caught up, while the leader re-read and re-encoded that range on every retry.
const REPLICATION_READ_BYTES: u64 = 2 * 1024 * 1024;

/// An append waiting for its fsync: openraft's callback, the last index it wrote, and the
/// segment files it wrote to.
type FlushRequest = (LogFlushed<TypeConfig>, u64, Vec<Arc<File>>);

#[derive(Clone)]
pub struct LogStore {
    wal: Arc<Mutex<Wal>>,
    db: sled::Db,
    /// Our own handle to sled's data file, to fsync it (see the module docs).
    db_file: Arc<File>,
    meta: sled::Tree,
    /// The WAL directory, named in errors.
    path: PathBuf,
    flusher: mpsc::Sender<FlushRequest>,
    progress: Arc<ProgressMarker>,
}

pub(super) fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![FORMAT_VERSION];
    // Serialising plain owned data into a Vec cannot fail.
    bincode::serialize_into(&mut bytes, value).unwrap_or_default();
    bytes
}

pub(super) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    match bytes.split_first() {
        Some((&FORMAT_VERSION, rest)) => bincode::deserialize(rest).map_err(|e| e.to_string()),
        Some((&SHAPE_V1, rest)) => with_shape(Shape::V1, || {
            bincode::deserialize(rest).map_err(|e| e.to_string())
        }),
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

/// sled keeps its log in one file named `db` inside its directory.
fn open_data_file(sled_path: &Path) -> Result<File, String> {
    let file = sled_path.join("db");
    File::open(&file).map_err(|error| format!("cannot open {}: {error}", file.display()))
}

impl LogStore {
    /// Opens the WAL and the metadata tree, and checks that the metadata and the last entry
    /// decode, so a damaged log is reported at start-up rather than on first use.
    pub(super) fn open(
        db: sled::Db,
        sled_path: &Path,
        wal_dir: &Path,
        progress: Arc<ProgressMarker>,
    ) -> Result<LogStore, String> {
        let meta = db.open_tree("meta").map_err(|e| e.to_string())?;
        let check = |key: &[u8], decodes: fn(&[u8]) -> Result<(), String>| -> Result<(), String> {
            match meta.get(key).map_err(|e| e.to_string())? {
                Some(bytes) => decodes(&bytes).map_err(|error| {
                    format!(
                        "{}: corrupt {} record: {error}",
                        sled_path.display(),
                        String::from_utf8_lossy(key)
                    )
                }),
                None => Ok(()),
            }
        };
        check(VOTE_KEY, |bytes| decode::<Vote<NodeId>>(bytes).map(drop))?;
        check(COMMITTED_KEY, |bytes| {
            decode::<Option<LogId>>(bytes).map(drop)
        })?;
        check(LAST_PURGED_KEY, |bytes| decode::<LogId>(bytes).map(drop))?;
        let wal = Wal::open(wal_dir)?;
        if let Some(last) = wal.last_index() {
            for location in wal.locate(last, last + 1) {
                decode::<Entry<TypeConfig>>(&location.read()?).map_err(|error| {
                    format!("{}: corrupt last log entry: {error}", wal_dir.display())
                })?;
            }
        }
        let db_file = Arc::new(open_data_file(sled_path)?);
        let flusher = spawn_flusher(progress.clone())?;
        Ok(LogStore {
            wal: Arc::new(Mutex::new(wal)),
            db,
            db_file,
            meta,
            path: wal_dir.to_path_buf(),
            flusher,
            progress,
        })
    }

    fn wal(&self) -> MutexGuard<'_, Wal> {
        // Every WAL mutation leaves it consistent before it can fail, so a panic elsewhere
        // while the lock was held does not make it unusable.
        self.wal.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn read_meta<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        let read_error =
            |error: String| io_error(ErrorSubject::Store, ErrorVerb::Read, &self.path, error);
        match self.meta.get(key).map_err(|e| read_error(e.to_string()))? {
            Some(bytes) => Ok(Some(decode(&bytes).map_err(read_error)?)),
            None => Ok(None),
        }
    }

    /// Writes one metadata record and makes it durable before returning.
    async fn write_meta<T: Serialize>(&self, key: &[u8], value: &T) -> Result<(), StorageError> {
        let write_error =
            |error: String| io_error(ErrorSubject::Store, ErrorVerb::Write, &self.path, error);
        self.meta
            .insert(key, encode(value))
            .map_err(|e| write_error(e.to_string()))?;
        self.db
            .flush_async()
            .await
            .map_err(|e| write_error(e.to_string()))?;
        let file = self.db_file.clone();
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| write_error(e.to_string()))?
            .map_err(|e| write_error(e.to_string()))
    }

    fn last_purged(&self) -> Result<Option<LogId>, StorageError> {
        self.read_meta(LAST_PURGED_KEY)
    }

    fn read_entries(&self, start: u64, end: u64) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        self.read_entries_within(start, end, u64::MAX)
    }

    /// The entries in `start..end`, stopping before the one that would take their records past
    /// `budget` bytes; the first is returned whatever its size.
    fn read_entries_within(
        &self,
        start: u64,
        end: u64,
        budget: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let read_error =
            |error: String| io_error(ErrorSubject::Logs, ErrorVerb::Read, &self.path, error);
        // Located under the WAL's lock, read after it is released.
        let locations = self.wal().locate_within(start, end, budget);
        locations
            .iter()
            .map(|location| decode(&location.read().map_err(read_error)?).map_err(read_error))
            .collect()
    }

    fn last_entry_id(&self) -> Result<Option<LogId>, StorageError> {
        let Some(last) = self.wal().last_index() else {
            return Ok(None);
        };
        Ok(self
            .read_entries(last, last + 1)?
            .pop()
            .map(|entry| entry.log_id))
    }

    /// The highest index the log holds: the last entry, or the purge point.
    pub fn last_durable_index(&self) -> Result<u64, StorageError> {
        let last = self.last_entry_id()?.or(self.last_purged()?);
        Ok(last.map_or(0, |log_id| log_id.index))
    }
}

/// Starts the flusher thread. It owns fsync, a blocking call, so it is a thread of its own
/// rather than a task that would stall an async worker; it stops when every sender is gone.
fn spawn_flusher(progress: Arc<ProgressMarker>) -> Result<mpsc::Sender<FlushRequest>, String> {
    let (sender, requests) = mpsc::channel::<FlushRequest>();
    std::thread::Builder::new()
        .name("raft-log-flush".into())
        .spawn(move || {
            while let Ok(first) = requests.recv() {
                let mut waiting = vec![first];
                waiting.extend(requests.try_iter());
                // Usually one segment; two around a segment switch.
                let mut files: Vec<&Arc<File>> = Vec::new();
                for file in waiting.iter().flat_map(|(_, _, files)| files) {
                    if !files.iter().any(|known| Arc::ptr_eq(known, file)) {
                        files.push(file);
                    }
                }
                let result = files.iter().try_for_each(|file| file.sync_data());
                if result.is_ok() {
                    if let Some(last) = waiting.iter().map(|(_, index, _)| *index).max() {
                        progress.record(last);
                    }
                }
                for (callback, _, _) in waiting {
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

fn range_to_indexes(range: &impl RangeBounds<u64>) -> (u64, u64) {
    let start = match range.start_bound() {
        Bound::Included(index) => *index,
        Bound::Excluded(index) => index.saturating_add(1),
        Bound::Unbounded => 0,
    };
    let end = match range.end_bound() {
        Bound::Included(index) => index.saturating_add(1),
        Bound::Excluded(index) => *index,
        Bound::Unbounded => u64::MAX,
    };
    (start, end)
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let (start, end) = range_to_indexes(&range);
        // Entries at or below the purge point may still sit in a kept segment; they are gone.
        let first_kept = self.last_purged()?.map_or(0, |log_id| log_id.index + 1);
        self.read_entries(start.max(first_kept), end)
    }

    /// What replication sends in one call: see `REPLICATION_READ_BYTES`.
    async fn limited_get_log_entries(
        &mut self,
        start: u64,
        end: u64,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError> {
        let first_kept = self.last_purged()?.map_or(0, |log_id| log_id.index + 1);
        self.read_entries_within(start.max(first_kept), end, REPLICATION_READ_BYTES)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.last_purged()?;
        let last_entry = self.last_entry_id()?;
        // An entry at or below the purge point is not part of the log any more.
        let last_log_id = match (last_entry, last_purged_log_id) {
            (Some(entry), Some(purged)) if entry.index <= purged.index => Some(purged),
            (entry, purged) => entry.or(purged),
        };
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
        // It need not be durable here: losing it only delays re-applying until the next commit.
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
        let records: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|entry| (entry.log_id.index, encode(&entry)))
            .collect();
        let Some(&(last_index, _)) = records.last() else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        let written = self
            .wal()
            .append(&records)
            .map_err(|error| io_error(ErrorSubject::Logs, ErrorVerb::Write, &self.path, error))?;
        if let Err(unsent) = self.flusher.send((callback, last_index, written)) {
            // The flusher thread only stops if it panicked; fsync here instead.
            let (callback, _, files) = unsent.0;
            callback.log_io_completed(files.iter().try_for_each(|file| file.sync_data()));
        }
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.wal()
            .truncate_from(log_id.index)
            .map_err(|error| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &self.path, error))?;
        // Conflicting entries were removed on purpose; the durable end moves back with them.
        self.progress.record(log_id.index.saturating_sub(1));
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Record the purge point durably first: a crash between the two steps leaves extra
        // entries below it, which reads already skip, never a gap above it.
        self.write_meta(LAST_PURGED_KEY, &log_id).await?;
        self.wal()
            .purge_through(log_id.index)
            .map_err(|error| io_error(ErrorSubject::Logs, ErrorVerb::Delete, &self.path, error))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::registration;
    use crate::types::{Command, Locality};

    #[test]
    fn records_written_before_localities_existed_still_decode() {
        let command = registration(None);
        let mut old = vec![SHAPE_V1];
        old.extend(with_shape(Shape::V1, || bincode::serialize(&command)).expect("encode"));
        assert_ne!(old[1..], encode(&command)[1..], "the shapes differ");
        assert_eq!(decode::<Command>(&old).expect("format 2"), command);

        let located = registration(Some(Locality {
            region: "eu-west-1".into(),
            zone: "eu-west-1b".into(),
        }));
        assert_eq!(
            decode::<Command>(&encode(&located)).expect("format 3"),
            located
        );
        assert!(
            decode::<Command>(&[1, 0]).is_err(),
            "format 1 was never released"
        );
    }

    /// Entries of 600 KiB values: a replication read stops before 2 MiB, but never returns
    /// nothing, and a plain read returns the whole range.
    #[tokio::test]
    async fn replication_reads_are_bounded_in_bytes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let storage = super::super::open_storage(dir.path(), Arc::new(crate::state::Store::new()))
            .await
            .expect("storage");
        let mut store = storage.log_store;
        let entry = |index: u64, bytes: usize| Entry::<TypeConfig> {
            log_id: LogId::new(openraft::CommittedLeaderId::new(1, 1), index),
            payload: openraft::EntryPayload::Normal(Command::Kv(crate::types::KvOp::Set {
                key: format!("k{index}"),
                value: vec![b'v'; bytes],
                flags: 0,
            })),
        };
        let records: Vec<(u64, Vec<u8>)> = (1..=10)
            .map(|index| (index, encode(&entry(index, 600 * 1024))))
            .collect();
        store.wal().append(&records).expect("append");

        let limited = store.limited_get_log_entries(1, 11).await.expect("read");
        let indexes: Vec<u64> = limited.iter().map(|entry| entry.log_id.index).collect();
        assert_eq!(
            indexes,
            vec![1, 2, 3],
            "three records fit in 2 MiB, four do not"
        );
        let rest = store.limited_get_log_entries(9, 11).await.expect("read");
        assert_eq!(rest.len(), 2);
        assert_eq!(
            store.try_get_log_entries(1..11).await.expect("read").len(),
            10
        );

        store
            .wal()
            .append(&[(11, encode(&entry(11, 3 * 1024 * 1024)))])
            .expect("append");
        let large = store.limited_get_log_entries(11, 12).await.expect("read");
        assert_eq!(large.len(), 1, "an entry over the budget still goes, alone");
        let after = store.limited_get_log_entries(10, 12).await.expect("read");
        assert_eq!(
            after.len(),
            1,
            "the large entry waits for a call of its own"
        );
    }
}
