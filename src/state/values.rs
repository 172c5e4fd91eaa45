//! Where the tables keep KV values: in an unlinked file (`types::value::ValueFile`) in the
//! server's data directory, so the process holds keys, metadata and indexes, and the kernel's
//! page cache holds values. Consul keeps every value on its heap, which is what runs its
//! servers out of memory (consul-api.md §10, 17); concord's memory grows with the number of
//! keys, not with the size of their values.
//!
//! The file is a cache of the tables, not a record: it is never fsync'd and vanishes with the
//! process, and the Raft log and snapshots hold the values durably. A restart refills it as
//! the snapshot is restored and the log applied.
//!
//! Writes append. A value overwritten or deleted stays in the file as garbage until garbage
//! exceeds both the live bytes and `COMPACT_MIN_BYTES`; then every live value is copied into a
//! fresh file, so a byte is copied at most once per byte of garbage written. Published
//! versions of the tables still refer to the old file, which goes when the last of them does.
//! The same copy moves inline values in, which is how a decoded snapshot's values get there.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::Tables;
use crate::types::value::{Value, ValueFile};
use crate::types::KvEntry;

/// Garbage below this is never worth a copy of the live values.
const COMPACT_MIN_BYTES: u64 = 64 * 1024 * 1024;

#[derive(Clone, Debug, Default)]
pub(super) struct ValueStore {
    /// Where value files are created; the system's temporary directory when unset (tests,
    /// client agents' replicas).
    dir: Option<Arc<Path>>,
    file: Option<Arc<ValueFile>>,
    /// Bytes of `file` that the current tables refer to.
    live: u64,
    /// After a failed copy, the file length at which to try again, so a full disk is not
    /// retried on every write.
    retry_at: u64,
}

impl ValueStore {
    pub(super) fn in_dir(dir: &Path) -> ValueStore {
        ValueStore {
            dir: Some(Arc::from(dir)),
            ..ValueStore::default()
        }
    }

    /// An empty store in the same directory, for tables that replace these wholesale.
    pub(super) fn fresh(&self) -> ValueStore {
        ValueStore {
            dir: self.dir.clone(),
            ..ValueStore::default()
        }
    }

    fn dir(&self) -> PathBuf {
        self.dir
            .as_deref()
            .map_or_else(std::env::temp_dir, Path::to_path_buf)
    }

    /// Stores `bytes`, keeping them in memory if the file cannot take them: a write is never
    /// lost to a full disk, it only costs memory until the next successful copy.
    pub(super) fn keep(&mut self, bytes: &[u8]) -> Value {
        if bytes.is_empty() {
            return Value::default();
        }
        let stored = match &self.file {
            Some(file) => file.append(bytes),
            None => ValueFile::create_in(&self.dir()).and_then(|file| {
                let file = Arc::new(file);
                self.file = Some(file.clone());
                file.append(bytes)
            }),
        };
        match stored {
            Ok(value) => {
                self.live += bytes.len() as u64;
                value
            }
            Err(error) => {
                tracing::warn!(%error, "cannot write a KV value to the value file; keeping it in memory");
                Value::from(bytes)
            }
        }
    }

    /// Records that the tables no longer refer to `value`.
    pub(super) fn forget(&mut self, value: &Value) {
        if self.holds(value) {
            self.live = self.live.saturating_sub(value.len() as u64);
        }
    }

    /// Records that the tables refer to `value` again (a lock change keeping its value).
    pub(super) fn reuse(&mut self, value: &Value) {
        if self.holds(value) {
            self.live += value.len() as u64;
        }
    }

    fn holds(&self, value: &Value) -> bool {
        matches!((value.file(), &self.file), (Some(a), Some(b)) if Arc::ptr_eq(a, b))
    }

    fn wants_copy(&self) -> bool {
        let written = self.file.as_ref().map_or(0, |file| file.len());
        let garbage = written.saturating_sub(self.live);
        garbage > self.live.max(COMPACT_MIN_BYTES) && written >= self.retry_at
    }

    /// Bytes in the current file, live or not, and the live ones.
    pub(super) fn usage(&self) -> (u64, u64) {
        (self.file.as_ref().map_or(0, |file| file.len()), self.live)
    }
}

impl Tables {
    /// Values are kept in files created in `dir` from now on.
    pub(super) fn keep_values_in(&mut self, dir: &Path) {
        self.values = ValueStore::in_dir(dir);
    }

    /// Copies the live values into a fresh file when garbage has grown past the live bytes.
    pub(super) fn compact_values_if_due(&mut self) {
        if self.values.wants_copy() {
            self.move_values_to_fresh_file();
        }
    }

    /// Copies every value the KV table refers to, stored or inline, into a fresh file. On an
    /// I/O error nothing changes and the copy is retried once the file has doubled.
    pub(super) fn move_values_to_fresh_file(&mut self) {
        match self.copied_values() {
            Ok((kv, values)) => {
                self.kv = kv;
                self.values = values;
            }
            Err(error) => {
                let written = self.values.usage().0;
                self.values.retry_at = written.saturating_mul(2).max(1);
                tracing::warn!(%error, "cannot copy KV values into a fresh value file");
            }
        }
    }

    fn copied_values(&self) -> std::io::Result<(super::KvMap, ValueStore)> {
        let mut values = self.values.fresh();
        let file = Arc::new(ValueFile::create_in(&values.dir())?);
        values.file = Some(file.clone());
        let mut kv = super::KvMap::new();
        for (key, entry) in &self.kv {
            let value = match entry.value.is_empty() {
                true => Value::default(),
                false => file.append(&entry.value.read()?)?,
            };
            values.live += value.len() as u64;
            let moved = KvEntry {
                value,
                ..(**entry).clone()
            };
            kv.insert(key.clone(), Arc::new(moved));
        }
        Ok((kv, values))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::KvOp;

    fn set(tables: &mut Tables, index: u64, key: &str, value: Vec<u8>) {
        let op = KvOp::Set {
            key: key.into(),
            value,
            flags: 0,
        };
        tables.apply(index, &crate::types::Command::Kv(op), &mut Vec::new());
    }

    fn stored_in(tables: &Tables, key: &str) -> Arc<ValueFile> {
        match &tables.kv_get(key).unwrap().value {
            Value::Stored { file, .. } => file.clone(),
            Value::Inline(_) => panic!("{key} is held in memory"),
        }
    }

    #[test]
    fn values_live_in_the_file_and_overwrites_are_reclaimed_by_a_copy() {
        let dir = tempfile::tempdir().unwrap();
        let mut tables = Tables::default();
        tables.keep_values_in(dir.path());
        let value = |fill: u8| vec![fill; 1024 * 1024];
        set(&mut tables, 1, "kept", value(1));
        set(&mut tables, 2, "churn", value(2));
        set(&mut tables, 3, "empty", Vec::new());
        let first = stored_in(&tables, "kept");
        assert_eq!(tables.values.usage(), (2 << 20, 2 << 20));
        assert!(tables.kv_get("empty").unwrap().value.is_empty());
        // A version published before the copy keeps reading the old file.
        let published = tables.clone();

        // Overwrites turn the old bytes into garbage; past 64 MiB of it (more than the live
        // bytes), the live values move to a fresh file.
        let mut index = 4;
        while Arc::ptr_eq(&stored_in(&tables, "kept"), &first) {
            set(&mut tables, index, "churn", value(index as u8));
            index += 1;
            assert!(index < 100, "the value file was never compacted");
        }
        let (written, live) = tables.values.usage();
        assert_eq!(live, 2 << 20);
        assert_eq!(written, live);
        assert_eq!(tables.kv_get("kept").unwrap().value, Value::from(value(1)));
        let churned = tables.kv_get("churn").unwrap();
        assert_eq!(churned.value, Value::from(value((index - 1) as u8)));
        assert_eq!(churned.indexes.modify, index - 1);
        assert_eq!(churned.indexes.create, 2);
        assert_eq!(
            published.kv_get("churn").unwrap().value,
            Value::from(value(2))
        );
    }

    #[test]
    fn deletes_and_lock_changes_keep_the_live_count_true() {
        let dir = tempfile::tempdir().unwrap();
        let mut tables = Tables::default();
        tables.keep_values_in(dir.path());
        set(&mut tables, 1, "a", b"12345".to_vec());
        set(&mut tables, 2, "b", b"678".to_vec());
        super::super::kv::release_lock(&mut tables, 3, "a", &mut Vec::new());
        assert_eq!(tables.values.usage(), (8, 8));
        super::super::kv::delete_key(&mut tables, 4, "a", &mut Vec::new());
        assert_eq!(tables.values.usage(), (8, 3));
        tables.move_values_to_fresh_file();
        assert_eq!(tables.values.usage(), (3, 3));
        assert_eq!(
            tables.kv_get("b").unwrap().value,
            Value::from(b"678".to_vec())
        );
    }

    #[test]
    fn a_restored_snapshot_moves_its_values_into_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let source = super::super::Store::new();
        let op = KvOp::Set {
            key: "k".into(),
            value: b"restored".to_vec(),
            flags: 7,
        };
        source.apply_batch([(1, Some(&crate::types::Command::Kv(op)))]);
        let bytes = super::super::Store::encode(&source.snapshot()).unwrap();

        let target = super::super::Store::keeping_values_in(dir.path());
        target.restore(&bytes).unwrap();
        let tables = target.snapshot();
        let entry = tables.kv_get("k").unwrap();
        assert!(matches!(entry.value, Value::Stored { .. }));
        assert_eq!(entry.value, Value::from(b"restored".to_vec()));
        assert_eq!(entry.flags, 7);
        assert_eq!(tables.values.usage(), (8, 8));
    }
}
