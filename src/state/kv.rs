//! The KV table: reads with Consul's index rules, and the one implementation of every KV verb,
//! used by single-key writes and transactions (`txn.rs`) alike.

use std::ops::Bound;
use std::sync::Arc;

use super::Tables;
use crate::types::value::Value;
use crate::types::{ApplyError, KvEntry, KvOp, RaftIndexes, TxnResult};

/// The watch topic of one key; prefix watches use the same form with the prefix.
pub fn topic(key: &str) -> String {
    format!("kv/{key}")
}

impl Tables {
    /// Makes each KV map key share its entry's key allocation again; decoding gives them
    /// separate copies, which would double the memory held for keys.
    pub(super) fn share_kv_keys(&mut self) {
        self.kv = self
            .kv
            .values()
            .map(|entry| (entry.key.clone(), entry.clone()))
            .collect();
    }

    pub fn kv_get(&self, key: &str) -> Option<&KvEntry> {
        self.kv.get(key).map(|entry| &**entry)
    }

    /// Entries whose key starts with `prefix`, in lexicographic order.
    pub fn kv_list<'a>(&'a self, prefix: &'a str) -> impl Iterator<Item = &'a KvEntry> + 'a {
        self.kv
            .range::<_, str>((Bound::Included(prefix), Bound::Unbounded))
            .take_while(move |(key, _)| key.starts_with(prefix))
            .map(|(_, entry)| &**entry)
    }

    /// The index a blocking read of `key` (or of everything under it, with `recurse`) reports:
    /// the highest ModifyIndex among live entries and tombstones it covers, so deletes count,
    /// falling back to the KV table's index when nothing was ever there.
    pub fn kv_index(&self, key: &str, recurse: bool) -> u64 {
        let highest = if recurse {
            let live = self.kv_list(key).map(|entry| entry.indexes.modify).max();
            let dead = self
                .tombstones
                .range::<_, str>((Bound::Included(key), Bound::Unbounded))
                .take_while(|(dead_key, _)| dead_key.starts_with(key))
                .map(|(_, index)| *index)
                .max();
            live.max(dead)
        } else {
            let live = self.kv_get(key).map(|entry| entry.indexes.modify);
            live.max(self.tombstones.get(key).copied())
        };
        highest.unwrap_or(self.table_index.kv)
    }

    pub fn tombstone_count(&self) -> usize {
        self.tombstones.len()
    }
}

/// Applies one KV write outside a transaction. `Ok(false)` is a CAS mismatch.
pub(super) fn apply_single(
    tables: &mut Tables,
    index: u64,
    op: &KvOp,
    touched: &mut Vec<String>,
) -> Result<bool, ApplyError> {
    match apply_op(tables, index, op, touched) {
        Ok(_) => Ok(true),
        Err(OpFailure::Mismatch(_)) => Ok(false),
        Err(OpFailure::Invalid(error)) => Err(error),
    }
}

pub(super) fn reap_tombstones(tables: &mut Tables, up_to_index: u64) {
    let reaped: Vec<Arc<str>> = tables
        .tombstones
        .iter()
        .filter(|(_, index)| **index <= up_to_index)
        .map(|(key, _)| key.clone())
        .collect();
    for key in reaped {
        tables.tombstones.remove(&key);
    }
}

pub(super) enum OpFailure {
    /// A condition did not hold (CAS index, existence); not an error of the request.
    Mismatch(String),
    Invalid(ApplyError),
}

impl OpFailure {
    /// The failure as a transaction reports it (`Errors[].What`).
    pub(super) fn what(self) -> String {
        match self {
            OpFailure::Mismatch(what) => what,
            OpFailure::Invalid(error) => error.to_string(),
        }
    }
}

/// The results one op contributes to a transaction's `Results`.
pub(super) type OpResults = Option<Vec<TxnResult>>;

pub(super) fn apply_op(
    tables: &mut Tables,
    index: u64,
    op: &KvOp,
    touched: &mut Vec<String>,
) -> Result<OpResults, OpFailure> {
    match op {
        KvOp::Set { key, value, flags } => {
            let entry = set(tables, index, key, value, *flags, touched);
            Ok(Some(vec![without_value(&entry)]))
        }
        KvOp::Cas {
            key,
            value,
            flags,
            index: expected,
        } => {
            let current = tables.kv_get(key).map(|entry| entry.indexes.modify);
            let holds = match (*expected, current) {
                (0, None) => true,
                (0, Some(_)) => false,
                (expected, Some(modify)) => expected == modify,
                (_, None) => false,
            };
            if !holds {
                return Err(OpFailure::Mismatch(format!(
                    "failed to set key {key:?}, index is stale"
                )));
            }
            let entry = set(tables, index, key, value, *flags, touched);
            Ok(Some(vec![without_value(&entry)]))
        }
        KvOp::Get { key } => match tables.kv_get(key) {
            Some(entry) => Ok(Some(vec![with_value(entry.clone())])),
            None => Err(OpFailure::Mismatch(format!("key {key:?} doesn't exist"))),
        },
        KvOp::GetOrEmpty { key } => Ok(tables
            .kv_get(key)
            .map(|entry| vec![with_value(entry.clone())])),
        KvOp::GetTree { prefix } => Ok(Some(
            tables
                .kv_list(prefix)
                .cloned()
                .map(with_value)
                .collect::<Vec<_>>(),
        )),
        KvOp::CheckIndex {
            key,
            index: expected,
        } => match tables.kv_get(key) {
            Some(entry) if entry.indexes.modify == *expected => {
                Ok(Some(vec![without_value(entry)]))
            }
            Some(_) => Err(OpFailure::Mismatch(format!(
                "current modify index {} != {expected}",
                tables.kv_get(key).map_or(0, |entry| entry.indexes.modify)
            ))),
            None => Err(OpFailure::Mismatch(format!("key {key:?} doesn't exist"))),
        },
        KvOp::CheckNotExists { key } => match tables.kv_get(key) {
            Some(_) => Err(OpFailure::Mismatch(format!("key {key:?} exists"))),
            None => Ok(None),
        },
        KvOp::Delete { key } => {
            delete(tables, index, key, touched);
            Ok(None)
        }
        KvOp::DeleteTree { prefix } => {
            let keys: Vec<Arc<str>> = tables
                .kv_list(prefix)
                .map(|entry| entry.key.clone())
                .collect();
            for key in keys {
                delete(tables, index, &key, touched);
            }
            Ok(None)
        }
        KvOp::Lock {
            key,
            value,
            flags,
            session,
        } => {
            if !tables.sessions.contains_key(session.as_str()) {
                return Err(OpFailure::Invalid(ApplyError::InvalidSession(
                    session.clone(),
                )));
            }
            let held_by = tables
                .kv_get(key)
                .map_or("", |entry| entry.session.as_str());
            if !held_by.is_empty() && held_by != session {
                return Err(OpFailure::Mismatch(format!(
                    "key {key:?} is locked by another session"
                )));
            }
            let lock = LockChange::Acquire(session);
            let value = tables.values.keep(value);
            let entry = write(tables, index, key, value, *flags, lock, touched);
            Ok(Some(vec![without_value(&entry)]))
        }
        KvOp::Unlock {
            key,
            value,
            flags,
            session,
        } => {
            let held_by = tables
                .kv_get(key)
                .map_or("", |entry| entry.session.as_str());
            if held_by != session {
                return Err(OpFailure::Mismatch(format!(
                    "key {key:?} is not locked by session {session:?}"
                )));
            }
            let value = tables.values.keep(value);
            let entry = write(
                tables,
                index,
                key,
                value,
                *flags,
                LockChange::Release,
                touched,
            );
            Ok(Some(vec![without_value(&entry)]))
        }
        KvOp::CheckSession { key, session } => match tables.kv_get(key) {
            Some(entry) if &entry.session == session => Ok(Some(vec![without_value(entry)])),
            Some(_) => Err(OpFailure::Mismatch(format!(
                "key {key:?} is not locked by session {session:?}"
            ))),
            None => Err(OpFailure::Mismatch(format!("key {key:?} doesn't exist"))),
        },
        KvOp::DeleteCas {
            key,
            index: expected,
        } => match tables.kv_get(key) {
            Some(entry) if entry.indexes.modify == *expected => {
                delete(tables, index, key, touched);
                Ok(None)
            }
            Some(_) => Err(OpFailure::Mismatch(format!(
                "failed to delete key {key:?}, index is stale"
            ))),
            // Deleting an absent key with a CAS index is an error in Consul's txn API.
            None if *expected == 0 => Err(OpFailure::Mismatch(
                "delete-cas requires a non-zero index".into(),
            )),
            None => Err(OpFailure::Mismatch(format!("key {key:?} doesn't exist"))),
        },
    }
}

/// What a write does to the key's lock.
enum LockChange<'a> {
    Keep,
    Acquire(&'a str),
    Release,
}

fn set(
    tables: &mut Tables,
    index: u64,
    key: &str,
    value: &[u8],
    flags: u64,
    touched: &mut Vec<String>,
) -> Arc<KvEntry> {
    let value = tables.values.keep(value);
    write(tables, index, key, value, flags, LockChange::Keep, touched)
}

/// Replaces `key`'s entry; `value` is already in the value store (`values.rs`).
fn write(
    tables: &mut Tables,
    index: u64,
    key: &str,
    value: Value,
    flags: u64,
    lock: LockChange,
    touched: &mut Vec<String>,
) -> Arc<KvEntry> {
    let previous = tables.kv.get(key).cloned();
    let previous = previous.as_deref();
    if let Some(previous) = previous {
        tables.values.forget(&previous.value);
    }
    let held_by = previous.map_or("", |entry| entry.session.as_str());
    let lock_index = previous.map_or(0, |entry| entry.lock_index);
    let (session, lock_index) = match lock {
        LockChange::Keep => (held_by.to_string(), lock_index),
        // Re-acquiring a lock one already holds does not count as a new acquisition.
        LockChange::Acquire(session) if session == held_by => (session.to_string(), lock_index),
        LockChange::Acquire(session) => (session.to_string(), lock_index + 1),
        LockChange::Release => (String::new(), lock_index),
    };
    // The map's key and the entry's share one allocation: a key is stored once.
    let shared: Arc<str> = match previous {
        Some(entry) => entry.key.clone(),
        None => Arc::from(key),
    };
    let entry = KvEntry {
        key: shared.clone(),
        value,
        flags,
        lock_index,
        session,
        indexes: RaftIndexes {
            create: previous.map_or(index, |entry| entry.indexes.create),
            modify: index,
        },
    };
    let entry = Arc::new(entry);
    tables.kv.insert(shared, entry.clone());
    tables.tombstones.remove(key);
    tables.table_index.kv = index;
    touched.push(topic(key));
    tables.compact_values_if_due();
    entry
}

/// Frees a key's lock, keeping its value (a released session with behavior "release").
pub(super) fn release_lock(tables: &mut Tables, index: u64, key: &str, touched: &mut Vec<String>) {
    if let Some(entry) = tables.kv_get(key).cloned() {
        tables.values.reuse(&entry.value);
        write(
            tables,
            index,
            key,
            entry.value,
            entry.flags,
            LockChange::Release,
            touched,
        );
    }
}

pub(super) fn delete_key(tables: &mut Tables, index: u64, key: &str, touched: &mut Vec<String>) {
    delete(tables, index, key, touched);
}

fn delete(tables: &mut Tables, index: u64, key: &str, touched: &mut Vec<String>) {
    if let Some(entry) = tables.kv.remove(key) {
        tables.values.forget(&entry.value);
        tables.tombstones.insert(Arc::from(key), index);
        tables.table_index.kv = index;
        touched.push(topic(key));
    }
}

fn with_value(entry: KvEntry) -> TxnResult {
    TxnResult::Kv {
        entry,
        with_value: true,
    }
}

/// A result that reports an entry's metadata; its value is not returned, so not copied.
fn without_value(entry: &KvEntry) -> TxnResult {
    TxnResult::Kv {
        entry: KvEntry {
            key: entry.key.clone(),
            value: Value::default(),
            flags: entry.flags,
            lock_index: entry.lock_index,
            session: entry.session.clone(),
            indexes: entry.indexes,
        },
        with_value: false,
    }
}
