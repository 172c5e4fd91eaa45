//! The domain model: catalog nodes, services and checks, KV entries, and the versioned
//! `Command` enum that is the only thing ever written to the Raft log.
//!
//! These are concord's own types, not Consul's JSON: the wire shapes live in `api` with explicit
//! conversions. Everything here is plain data that encodes with bincode, so no field uses
//! `skip_serializing_if` or untagged enums (bincode is not self-describing).
//!
//! Architecture invariant: this module imports nothing else from the crate and no transport.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub mod acl;
pub mod agent;
pub mod apply;
pub mod bytes;
pub mod chain;
pub mod config_entry;
pub mod connect;
pub mod coordinate;
pub mod duration;
pub mod operator;
pub mod query;
pub mod session;
pub mod shape;
pub mod txn;
pub mod value;

pub use apply::ApplyError;
pub use txn::{CatalogVerb, KvOp, OpFailure, TxnError, TxnOp, TxnOutcome, TxnResult};

/// Consul's health states, in the order a list of checks aggregates them (worst wins).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum HealthStatus {
    Passing,
    Warning,
    Critical,
    Maintenance,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Passing => "passing",
            HealthStatus::Warning => "warning",
            HealthStatus::Critical => "critical",
            HealthStatus::Maintenance => "maintenance",
        }
    }

    pub fn parse(text: &str) -> Option<HealthStatus> {
        match text {
            "passing" => Some(HealthStatus::Passing),
            "warning" => Some(HealthStatus::Warning),
            "critical" => Some(HealthStatus::Critical),
            "maintenance" => Some(HealthStatus::Maintenance),
            _ => None,
        }
    }
}

/// The Raft indexes every stored object carries. `create` is the index of the write that made
/// the object, `modify` of the last write that changed it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RaftIndexes {
    pub create: u64,
    pub modify: u64,
}

/// A catalog node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub id: String,
    pub name: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub meta: BTreeMap<String, String>,
    pub indexes: RaftIndexes,
    /// From the agent's `locality` config (storage shape V2 on).
    #[serde(with = "shape::added_in_v2")]
    pub locality: Option<Locality>,
}

/// Where a node or service runs, for locality-aware routing. Requests name its fields as
/// Consul does (`Region`, `Zone`); responses are written by `api::catalog`, which leaves an
/// empty one out as Consul does (bincode needs every field, so serde may not skip any).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Locality {
    pub region: String,
    pub zone: String,
}

impl Locality {
    /// Consul's one rule: a zone belongs to a region.
    pub fn check(&self) -> Result<(), LocalityError> {
        if self.region.is_empty() && !self.zone.is_empty() {
            return Err(LocalityError);
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("zone cannot be set without region")]
pub struct LocalityError;

/// An address a service can also be reached at (`TaggedAddresses` entries of a service).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAddress {
    pub address: String,
    pub port: u16,
}

/// DNS SRV weights of a service instance by health state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Weights {
    pub passing: u32,
    pub warning: u32,
}

impl Default for Weights {
    fn default() -> Self {
        Weights {
            passing: 1,
            warning: 1,
        }
    }
}

/// One service instance registered on a node.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub name: String,
    /// "" for a typical service, otherwise `connect-proxy`, `mesh-gateway`, ...
    pub kind: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub tagged_addresses: BTreeMap<String, ServiceAddress>,
    pub weights: Weights,
    pub enable_tag_override: bool,
    /// Set for `connect-proxy` services.
    pub proxy: Option<connect::ServiceProxy>,
    /// `Connect.Native`: the application speaks mTLS itself.
    pub connect_native: bool,
    pub indexes: RaftIndexes,
    /// As registered; a sidecar without one takes its service's. Routing falls back to the
    /// node's, as Consul's does, but the service's own stays unset (storage shape V2
    /// on).
    #[serde(with = "shape::added_in_v2")]
    pub locality: Option<Locality>,
}

/// A health check as the catalog stores it. Node-level checks have an empty `service_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Check {
    pub node: String,
    pub check_id: String,
    pub name: String,
    pub status: HealthStatus,
    pub notes: String,
    pub output: String,
    pub service_id: String,
    pub service_name: String,
    pub service_tags: Vec<String>,
    pub check_type: String,
    pub interval: String,
    pub timeout: String,
    pub indexes: RaftIndexes,
}

/// One KV entry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KvEntry {
    pub key: std::sync::Arc<str>,
    pub value: value::Value,
    pub flags: u64,
    pub lock_index: u64,
    pub session: String,
    pub indexes: RaftIndexes,
}

/// A catalog registration: the node, and optionally one service and any number of checks.
/// Indexes inside are ignored on input; the state store assigns them.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegisterRequest {
    pub node: Node,
    pub skip_node_update: bool,
    pub service: Option<Service>,
    pub checks: Vec<Check>,
}

/// A catalog deregistration. With neither id set the whole node goes, with its services and
/// checks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeregisterRequest {
    pub node: String,
    pub service_id: Option<String>,
    pub check_id: Option<String>,
}

/// Every change to replicated state, as written to the Raft log.
///
/// Versioning: bincode encodes a variant by its position, so variants are only ever appended
/// and a variant's fields never change; a new shape gets a new variant and the old one stays
/// decodable for logs and snapshots already on disk.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// One KV operation outside a transaction (PUT / DELETE on `/v1/kv`).
    Kv(KvOp),
    /// An atomic list of KV operations (`/v1/txn`).
    Txn(Vec<KvOp>),
    /// Boxed: a registration is much larger than every other command.
    CatalogRegister(Box<RegisterRequest>),
    CatalogDeregister(DeregisterRequest),
    /// Drop KV tombstones with an index at or below this one. The leader decides when; every
    /// replica applies the same cut, so the FSM stays deterministic.
    ReapTombstones {
        up_to_index: u64,
    },
    /// Independent writes that arrived together, committed as one log entry (group commit) and
    /// applied in order; they share its Raft index. Each has its own result. Never nested.
    Batch(Vec<Command>),
    /// Creates a session; fails if its node or a bound check is missing or critical.
    SessionCreate(session::Session),
    /// Destroys a session (by request or because its TTL ran out), releasing its locks.
    SessionDestroy {
        id: String,
    },
    /// Writes a config entry; with `cas`, only if its ModifyIndex is that (0 = create only).
    ConfigEntrySet {
        entry: Box<connect::ConfigEntry>,
        cas: Option<u64>,
    },
    ConfigEntryDelete {
        kind: String,
        name: String,
        cas: Option<u64>,
    },
    /// Replaces the CA's state if it was last written at `expected_index` (0 = never). Only
    /// the leader writes it; the check keeps a deposed leader from undoing a newer rotation.
    CaSet {
        state: Box<connect::CaState>,
        expected_index: u64,
    },
    /// Agents' latest network coordinates for their nodes (unknown nodes are skipped).
    CoordinateBatchUpdate(Vec<coordinate::NodeCoordinate>),
    /// Replaces every table with a snapshot's (`state::Store::encode` bytes), as `PUT
    /// /v1/snapshot` restores one; every server applies it at the same index.
    Restore(Vec<u8>),
    /// Replaces autopilot's configuration; with `cas`, only if its ModifyIndex is that (0 =
    /// only if there is none yet, as the first leader seeds it).
    AutopilotSetConfig {
        config: operator::AutopilotConfig,
        cas: Option<u64>,
    },
    /// A change to the ACL tables: a token, policy or role, or the bootstrap.
    Acl(acl::AclOp),
    /// An atomic list of KV and catalog operations (`/v1/txn` with a Node, Service or Check
    /// operation; KV-only transactions stay `Txn`, so servers of an older version still
    /// read them during a rolling upgrade).
    Transaction(Vec<TxnOp>),
    /// Creates, replaces or deletes a prepared query.
    PreparedQuery(query::QueryOp),
    /// One piece of a snapshot being restored: `state::Store::encode` bytes from `offset`.
    /// Every server stages the pieces until `RestoreCommit`, so a large state crosses the log
    /// in entries that fit a replication call's deadline and a server RPC's message limit,
    /// where one `Restore` entry of the whole state could not. A piece at offset 0 starts
    /// restore `id`, dropping any unfinished one.
    RestoreChunk {
        id: String,
        offset: u64,
        #[serde(with = "bytes")]
        bytes: Vec<u8>,
    },
    /// Replaces every table with restore `id`'s staged state, if all `len` bytes arrived.
    RestoreCommit {
        id: String,
        len: u64,
    },
}

/// What applying a command produced. Business failures (a CAS mismatch, a rolled-back
/// transaction, a missing node) are values here, never errors. Returned from apply only, never
/// written to the log, so its shape may change.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// `true`/`false` of a single KV write or delete.
    Kv(bool),
    Txn(TxnOutcome),
    Catalog(Result<(), ApplyError>),
    Done,
    /// The results of a `Command::Batch`, in order.
    Batch(Vec<CommandResult>),
    /// Whether a compare-and-set write (config entry, CA state) was applied.
    Cas(bool),
    /// A request the FSM refused (an unknown session, say).
    Error(ApplyError),
}
