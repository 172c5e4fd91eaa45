//! The in-memory state store: indexed tables of nodes, services, checks and KV entries, applied
//! from the Raft log and read by every protocol edge. KV values are the one thing kept outside
//! the heap, in an unlinked value file (`values.rs`); the tables hold handles to them.
//!
//! Readers never wait for writers: the tables are persistent maps (`imbl`), so a reader clones
//! one `Arc<Tables>` and keeps a consistent view for as long as it likes, while the single
//! writer (the Raft state machine) clones the tables in O(1), applies a batch of commands and
//! publishes the result with one pointer swap. A Raft snapshot is just one more reader.
//!
//! Architecture invariant: `apply` is deterministic. It reads no clock, config or randomness;
//! its only I/O is the value file, which decides where a value is held, never what it is (a
//! value the file cannot take stays in memory). Every write takes the Raft index, which becomes
//! CreateIndex/ModifyIndex. This module knows nothing of HTTP, Raft, or sled.

pub mod acl;
pub mod catalog;
pub mod connect;
pub mod coordinate;
pub mod health;
pub mod kv;
pub mod operator;
pub mod query;
mod restore;
pub mod session;
pub mod txn;
mod values;
pub mod watch;

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use imbl::{OrdMap, OrdSet};
use serde::{Deserialize, Serialize};

use crate::types::shape::{with_shape, Shape};
use crate::types::{Check, Command, CommandResult, KvEntry, Node, Service};
pub use watch::{Match, WatchGuard, WatchRegistry};

/// The last Raft index that changed each table; it answers list queries that have no finer
/// index and is what blocking queries see for an empty result.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableIndexes {
    pub nodes: u64,
    pub services: u64,
    pub checks: u64,
    pub kv: u64,
    pub sessions: u64,
}

/// One consistent version of every table.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Tables {
    nodes: OrdMap<String, Node>,
    /// Keyed by (node name, service id).
    services: OrdMap<(String, String), Service>,
    /// Service name -> the (node, service id) keys of its instances.
    service_instances: OrdMap<String, OrdSet<(String, String)>>,
    /// Connect destination -> the (node, service id) keys of the instances taking its mesh
    /// traffic (its sidecar proxies and Connect-native instances). Derived from `services`,
    /// so it is left out of the snapshot encoding (keeping the format unchanged) and rebuilt
    /// on restore.
    #[serde(skip)]
    connect_instances: OrdMap<String, OrdSet<(String, String)>>,
    /// Keyed by (node name, check id).
    checks: OrdMap<(String, String), Check>,
    /// Keys and entries sit behind `Arc` so that the copy-on-write of a B-tree node clones
    /// pointers, not 1 KiB values: a write copies a few nodes of 64 entries each.
    kv: KvMap,
    /// Deleted keys and the index that deleted them, so a blocking read of a prefix sees
    /// deletes. Reaped through Raft (`Command::ReapTombstones`).
    tombstones: OrdMap<Arc<str>, u64>,
    /// Last index that changed anything about a service name's instances, removal included.
    service_index: OrdMap<String, u64>,
    /// Last index that changed a node or anything registered on it, removal included.
    node_index: OrdMap<String, u64>,
    sessions: OrdMap<String, Arc<crate::types::session::Session>>,
    /// Keyed by (kind, name).
    config_entries: OrdMap<(String, String), Arc<crate::types::connect::ConfigEntry>>,
    /// Last index that changed any entry of a kind, deletes included.
    config_index: OrdMap<String, u64>,
    ca: Option<Arc<crate::types::connect::CaState>>,
    table_index: TableIndexes,
    /// Raft index of the last applied command.
    last_index: u64,
    /// Locks released by the batch being applied, with their sessions' lock-delay; drained by
    /// `Store::apply_batch` and never part of a published or snapshotted version.
    #[serde(skip)]
    released_locks: Vec<(String, std::time::Duration)>,
    /// Node → its network coordinate (`coordinate.rs`). Encoded after the tables by
    /// `Store::encode`, not by serde, so older snapshots still decode.
    #[serde(skip)]
    coordinates: OrdMap<String, crate::types::coordinate::Coordinate>,
    #[serde(skip)]
    coordinates_index: u64,
    /// Autopilot's configuration (`operator.rs`), encoded after the coordinates.
    #[serde(skip)]
    autopilot: Option<Arc<crate::types::operator::AutopilotConfig>>,
    /// Tokens, policies and roles (`acl.rs`), encoded after autopilot's section.
    #[serde(skip)]
    acl: acl::AclTables,
    /// Prepared queries by ID (`query.rs`) and the last index that changed them, encoded
    /// after the ACL section.
    #[serde(skip)]
    queries: OrdMap<String, Arc<crate::types::query::PreparedQuery>>,
    #[serde(skip)]
    queries_index: u64,
    /// Set by a `Command::Restore` in the batch being applied: every blocking query is
    /// woken and followers start over from the tables. Never published set.
    #[serde(skip)]
    restored: bool,
    /// A restore whose pieces are arriving (`restore.rs`), encoded after the prepared
    /// queries (format 7).
    #[serde(skip)]
    staged_restore: Option<Arc<restore::StagedRestore>>,
    /// Where KV values are kept (`values.rs`): local to this process, never encoded.
    #[serde(skip)]
    values: values::ValueStore,
}

type KvMap = OrdMap<Arc<str>, Arc<KvEntry>>;

impl Tables {
    pub fn last_index(&self) -> u64 {
        self.last_index
    }

    /// How many entries each replicated table holds, for `snapshot inspect`.
    pub fn counts(&self) -> Vec<(&'static str, usize)> {
        vec![
            ("Node", self.nodes.len()),
            ("Service", self.services.len()),
            ("Check", self.checks.len()),
            ("KVS", self.kv.len()),
            ("Tombstone", self.tombstones.len()),
            ("Session", self.sessions.len()),
            ("ConfigEntry", self.config_entries.len()),
            ("ConnectCA", usize::from(self.ca.is_some())),
            ("Coordinate", self.coordinates.len()),
            ("Autopilot", usize::from(self.autopilot.is_some())),
            ("ACLToken", self.acl_tokens().count()),
            ("ACLPolicy", self.acl_policies().count()),
            ("ACLRole", self.acl_roles().count()),
            ("PreparedQuery", self.queries.len()),
        ]
    }

    pub fn table_index(&self) -> TableIndexes {
        self.table_index
    }

    /// Applies one command at `index`, recording the watch topics it touched.
    /// The tables as they would be after `command`, to validate a change against the graph
    /// it would make before proposing it: the FSM's own code on an O(1) copy, at the next
    /// index. Nothing is published and nobody is woken.
    pub fn proposed(&self, command: &Command) -> (Tables, CommandResult) {
        let mut tables = self.clone();
        let result = tables.apply(self.last_index + 1, command, &mut Vec::new());
        (tables, result)
    }

    fn apply(&mut self, index: u64, command: &Command, touched: &mut Vec<String>) -> CommandResult {
        self.last_index = self.last_index.max(index);
        match command {
            Command::Kv(op) => match kv::apply_single(self, index, op, touched) {
                Ok(applied) => CommandResult::Kv(applied),
                Err(error) => CommandResult::Error(error),
            },
            Command::Txn(ops) => CommandResult::Txn(txn::apply(self, index, ops, touched)),
            Command::Transaction(ops) => CommandResult::Txn(txn::apply(self, index, ops, touched)),
            Command::Restore(bytes) => self.replace_with(index, bytes),
            Command::RestoreChunk { id, offset, bytes } => self.stage_restore(id, *offset, bytes),
            Command::RestoreCommit { id, len } => self.commit_restore(index, id, *len),
            Command::CatalogRegister(request) => {
                let result = catalog::register(self, index, request, touched);
                session::invalidate_unhealthy(self, index, touched);
                CommandResult::Catalog(result)
            }
            Command::CatalogDeregister(request) => {
                let result = catalog::deregister(self, index, request, touched);
                session::invalidate_unhealthy(self, index, touched);
                CommandResult::Catalog(result)
            }
            Command::SessionCreate(new) => match session::create(self, index, new, touched) {
                Ok(()) => CommandResult::Done,
                Err(error) => CommandResult::Error(error),
            },
            Command::SessionDestroy { id } => {
                session::destroy(self, index, id, touched);
                CommandResult::Done
            }
            Command::ReapTombstones { up_to_index } => {
                kv::reap_tombstones(self, *up_to_index);
                CommandResult::Done
            }
            Command::ConfigEntrySet { entry, cas } => {
                CommandResult::Cas(connect::set(self, index, entry, *cas, touched))
            }
            Command::ConfigEntryDelete { kind, name, cas } => {
                CommandResult::Cas(connect::delete(self, index, kind, name, *cas, touched))
            }
            Command::CaSet {
                state,
                expected_index,
            } => CommandResult::Cas(connect::set_ca(
                self,
                index,
                state,
                *expected_index,
                touched,
            )),
            Command::CoordinateBatchUpdate(updates) => {
                coordinate::update(self, index, updates, touched);
                CommandResult::Done
            }
            Command::AutopilotSetConfig { config, cas } => {
                CommandResult::Cas(operator::set_autopilot(self, index, config, *cas, touched))
            }
            Command::Acl(op) => acl::apply(self, index, op, touched),
            Command::PreparedQuery(op) => match query::apply(self, index, op, touched) {
                Ok(()) => CommandResult::Done,
                Err(error) => CommandResult::Error(error),
            },
            Command::Batch(commands) => CommandResult::Batch(
                commands
                    .iter()
                    .map(|command| self.apply(index, command, touched))
                    .collect(),
            ),
        }
    }
}

/// Leads every encoded snapshot; bumped whenever `Tables` changes shape. Format 7 is the
/// serde tables, their length first, then the coordinates, autopilot, ACL, prepared-query and
/// staged-restore sections; format 6 (no staged restore), 5 (nodes and services without a locality, no queries), 4 (no ACL section),
/// 3 (no autopilot section) and 2 (tables only) still restore.
const SNAPSHOT_FORMAT: u8 = 7;
const QUERIES_FORMAT: u8 = 6;
const ACL_FORMAT: u8 = 5;
const AUTOPILOT_FORMAT: u8 = 4;
const COORDINATES_FORMAT: u8 = 3;
const TABLES_ONLY_FORMAT: u8 = 2;

/// The parts of `Tables` encoded after its serde fields, in order.
type CoordinateSection = (Vec<(String, crate::types::coordinate::Coordinate)>, u64);
type AutopilotSection = Option<crate::types::operator::AutopilotConfig>;
type QuerySection = (Vec<crate::types::query::PreparedQuery>, u64);

/// Why a snapshot could not be restored.
#[derive(Debug, thiserror::Error)]
#[error("state snapshot is corrupt: {0}")]
pub struct RestoreError(pub String);

/// Why the tables could not be encoded.
#[derive(Debug, thiserror::Error)]
#[error("cannot encode the state: {0}")]
pub struct EncodeError(pub String);

/// What the store published, for replicas (client agents) that follow it (`Store::follow`).
#[derive(Clone, Debug)]
pub enum Change {
    /// Entries applied in order; `None` is a Raft blank or membership entry.
    Applied(Arc<Vec<(u64, Option<Command>)>>),
    /// Every table was replaced by a snapshot.
    Restored,
}

/// How many published changes a follower may fall behind before it must start over from a
/// snapshot.
const CHANGE_BUFFER: usize = 1024;

/// The shared handle: the current tables plus the watch registry.
pub struct Store {
    current: RwLock<Arc<Tables>>,
    /// Keys whose lock was released by an invalidated session, and until when they may not be
    /// acquired again (the session's lock-delay). Kept by each server's own clock, outside the
    /// replicated tables, as in Consul: it is advisory and best-effort across leader changes.
    lock_delays: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// Serialises writers so that two batches never race to publish.
    writer: Mutex<()>,
    watches: Arc<WatchRegistry>,
    /// Changes as they are published; entries are copied only while someone follows.
    changes: tokio::sync::broadcast::Sender<Change>,
}

impl Default for Store {
    fn default() -> Self {
        Store::new()
    }
}

impl Store {
    /// A store that keeps KV values in the system's temporary directory.
    pub fn new() -> Store {
        Store::with_tables(Tables::default())
    }

    /// A store that keeps KV values in files created in `dir` (a server's data directory).
    pub fn keeping_values_in(dir: &std::path::Path) -> Store {
        let mut tables = Tables::default();
        tables.keep_values_in(dir);
        Store::with_tables(tables)
    }

    fn with_tables(tables: Tables) -> Store {
        Store {
            current: RwLock::new(Arc::new(tables)),
            lock_delays: Mutex::new(std::collections::HashMap::new()),
            writer: Mutex::new(()),
            watches: Arc::new(WatchRegistry::default()),
            changes: tokio::sync::broadcast::Sender::new(CHANGE_BUFFER),
        }
    }

    /// The current tables and every change published after them, for a replica that starts
    /// from the tables and applies the changes in order. Taken under the writer lock, so no
    /// change is missed or seen twice. A follower that falls `CHANGE_BUFFER` changes behind
    /// gets `Lagged` and starts over.
    pub fn follow(&self) -> (Arc<Tables>, tokio::sync::broadcast::Receiver<Change>) {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        (self.snapshot(), self.changes.subscribe())
    }

    /// A consistent, immutable view of every table; cheap (one `Arc` clone).
    pub fn snapshot(&self) -> Arc<Tables> {
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Registers a blocking query's interest in `topics` (see `watch`).
    pub fn watch(&self, topics: &[(String, Match)]) -> WatchGuard {
        self.watches.watch(topics)
    }

    pub fn watch_count(&self) -> usize {
        self.watches.len()
    }

    /// Applies committed log entries in order, publishes the new tables once, then wakes the
    /// blocking queries whose topics changed. An entry without a command (a Raft blank or
    /// membership entry) only advances `last_index` and yields `CommandResult::Done`.
    pub fn apply_batch<'a>(
        &self,
        entries: impl IntoIterator<Item = (u64, Option<&'a Command>)>,
    ) -> Vec<CommandResult> {
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        let mut tables = (*self.snapshot()).clone();
        let mut touched = Vec::new();
        let followed = self.changes.receiver_count() > 0;
        let mut copied = Vec::new();
        let results = entries
            .into_iter()
            .inspect(|(index, command)| {
                if followed {
                    copied.push((*index, command.cloned()));
                }
            })
            .map(|(index, command)| match command {
                Some(command) => tables.apply(index, command, &mut touched),
                None => {
                    tables.last_index = tables.last_index.max(index);
                    CommandResult::Done
                }
            })
            .collect();
        let released = std::mem::take(&mut tables.released_locks);
        let restored = std::mem::take(&mut tables.restored);
        self.publish(tables);
        if restored {
            let _ = self.changes.send(Change::Restored);
            self.start_lock_delays(released);
            self.watches.notify_all();
            return results;
        }
        if followed {
            let _ = self.changes.send(Change::Applied(Arc::new(copied)));
        }
        self.start_lock_delays(released);
        touched.sort_unstable();
        touched.dedup();
        self.watches.notify(&touched);
        results
    }

    fn start_lock_delays(&self, released: Vec<(String, std::time::Duration)>) {
        if released.is_empty() {
            return;
        }
        let now = std::time::Instant::now();
        let mut delays = self
            .lock_delays
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        delays.retain(|_, until| *until > now);
        for (key, delay) in released {
            if !delay.is_zero() {
                delays.insert(key, now + delay);
            }
        }
    }

    /// How long `key` stays unacquirable after its holder's session was invalidated.
    pub fn lock_delay_remaining(&self, key: &str) -> Option<std::time::Duration> {
        let delays = self
            .lock_delays
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let until = *delays.get(key)?;
        until.checked_duration_since(std::time::Instant::now())
    }

    fn publish(&self, tables: Tables) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(tables);
    }

    /// Serialises one consistent version of every table, behind a format version byte. Fails
    /// only when a KV value cannot be read back from the value file.
    pub fn encode(tables: &Tables) -> Result<Vec<u8>, EncodeError> {
        let body = bincode::serialize(tables).map_err(|error| EncodeError(error.to_string()))?;
        // The sections after the tables are plain owned data: encoding them cannot fail.
        let coordinates: CoordinateSection = (
            tables
                .coordinates
                .iter()
                .map(|(node, coord)| (node.clone(), coord.clone()))
                .collect(),
            tables.coordinates_index,
        );
        let mut bytes = vec![SNAPSHOT_FORMAT];
        bytes.extend_from_slice(&(body.len() as u64).to_le_bytes());
        bytes.extend_from_slice(&body);
        bincode::serialize_into(&mut bytes, &coordinates).unwrap_or_default();
        let autopilot: AutopilotSection = tables.autopilot.as_deref().cloned();
        bincode::serialize_into(&mut bytes, &autopilot).unwrap_or_default();
        bincode::serialize_into(&mut bytes, &tables.acl).unwrap_or_default();
        let queries: QuerySection = (
            tables.prepared_queries().cloned().collect(),
            tables.queries_index,
        );
        bincode::serialize_into(&mut bytes, &queries).unwrap_or_default();
        let staged = tables
            .staged_restore
            .as_deref()
            .map(restore::StagedRestore::section);
        bincode::serialize_into(&mut bytes, &staged).unwrap_or_default();
        Ok(bytes)
    }

    fn decode(bytes: &[u8]) -> Result<Tables, RestoreError> {
        let mut tables = Store::decode_tables(bytes)?;
        tables.share_kv_keys();
        tables.acl.rebuild_secrets();
        Ok(tables)
    }

    fn decode_tables(bytes: &[u8]) -> Result<Tables, RestoreError> {
        // Formats before 6 hold nodes and services without a locality.
        match bytes.first() {
            Some(&format) if format < QUERIES_FORMAT => {
                with_shape(Shape::V1, || Store::decode_sections(bytes))
            }
            _ => Store::decode_sections(bytes),
        }
    }

    fn decode_sections(bytes: &[u8]) -> Result<Tables, RestoreError> {
        let corrupt = |error: bincode::Error| RestoreError(error.to_string());
        match bytes.split_first() {
            Some((&TABLES_ONLY_FORMAT, rest)) => bincode::deserialize(rest).map_err(corrupt),
            Some((
                &format @ (COORDINATES_FORMAT | AUTOPILOT_FORMAT | ACL_FORMAT | QUERIES_FORMAT
                | SNAPSHOT_FORMAT),
                rest,
            )) => {
                let (length, rest) = rest
                    .split_first_chunk::<8>()
                    .ok_or_else(|| RestoreError("truncated snapshot".into()))?;
                let length = usize::try_from(u64::from_le_bytes(*length))
                    .ok()
                    .filter(|length| *length <= rest.len())
                    .ok_or_else(|| RestoreError("truncated snapshot".into()))?;
                let (body, mut sections) = rest.split_at(length);
                let mut tables: Tables = bincode::deserialize(body).map_err(corrupt)?;
                let (coordinates, index): CoordinateSection =
                    bincode::deserialize_from(&mut sections).map_err(corrupt)?;
                tables.coordinates = coordinates.into_iter().collect();
                tables.coordinates_index = index;
                if format >= AUTOPILOT_FORMAT {
                    let autopilot: AutopilotSection =
                        bincode::deserialize_from(&mut sections).map_err(corrupt)?;
                    tables.autopilot = autopilot.map(Arc::new);
                }
                if format >= ACL_FORMAT {
                    tables.acl = bincode::deserialize_from(&mut sections).map_err(corrupt)?;
                }
                if format >= QUERIES_FORMAT {
                    let (queries, index): QuerySection =
                        bincode::deserialize_from(&mut sections).map_err(corrupt)?;
                    tables.queries = queries
                        .into_iter()
                        .map(|query| (query.id.clone(), Arc::new(query)))
                        .collect();
                    tables.queries_index = index;
                }
                if format >= SNAPSHOT_FORMAT {
                    let staged: Option<restore::StagedSection> =
                        bincode::deserialize_from(&mut sections).map_err(corrupt)?;
                    tables.staged_restore = staged
                        .map(|section| Arc::new(restore::StagedRestore::from_section(section)));
                }
                Ok(tables)
            }
            Some((version, _)) => Err(RestoreError(format!("unknown snapshot format {version}"))),
            None => Err(RestoreError("empty snapshot".into())),
        }
    }

    /// Checks that `bytes` decode to tables, and says how many entries each table holds.
    pub fn inspect(bytes: &[u8]) -> Result<Vec<(&'static str, usize)>, RestoreError> {
        let tables = Store::decode(bytes)?;
        Ok(tables.counts())
    }

    /// Replaces every table with a decoded snapshot and wakes every blocking query, since any
    /// answer may have changed (indexes may even go backwards, as in Consul).
    pub fn restore(&self, bytes: &[u8]) -> Result<(), RestoreError> {
        let mut tables = Store::decode(bytes)?;
        tables.rebuild_derived_indexes();
        let _writer = self.writer.lock().unwrap_or_else(PoisonError::into_inner);
        tables.values = self.snapshot().values.fresh();
        tables.move_values_to_fresh_file();
        self.publish(tables);
        let _ = self.changes.send(Change::Restored);
        self.watches.notify_all();
        Ok(())
    }
}

#[cfg(test)]
mod tests;
