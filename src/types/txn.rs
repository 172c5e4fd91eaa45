//! KV operations, shared by single KV writes and transactions; the catalog operations a
//! transaction may also carry; and transaction outcomes.

use serde::{Deserialize, Serialize};

use super::{Check, KvEntry, Node, Service};

/// One KV verb of Consul's transaction API. Single-key HTTP writes use the same verbs so there
/// is exactly one implementation of each.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum KvOp {
    Set {
        key: String,
        #[serde(with = "super::bytes")]
        value: Vec<u8>,
        flags: u64,
    },
    /// Write only if the key's ModifyIndex equals `index` (0: only if absent).
    Cas {
        key: String,
        #[serde(with = "super::bytes")]
        value: Vec<u8>,
        flags: u64,
        index: u64,
    },
    Get {
        key: String,
    },
    GetOrEmpty {
        key: String,
    },
    GetTree {
        prefix: String,
    },
    CheckIndex {
        key: String,
        index: u64,
    },
    CheckNotExists {
        key: String,
    },
    Delete {
        key: String,
    },
    DeleteTree {
        prefix: String,
    },
    DeleteCas {
        key: String,
        index: u64,
    },
    /// Acquire: write and take the lock if it is free or already held by `session`.
    Lock {
        key: String,
        #[serde(with = "super::bytes")]
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    /// Release: write and free the lock if `session` holds it.
    Unlock {
        key: String,
        #[serde(with = "super::bytes")]
        value: Vec<u8>,
        flags: u64,
        session: String,
    },
    CheckSession {
        key: String,
        session: String,
    },
}

impl KvOp {
    /// The key (or prefix) the operation acts on.
    pub fn key(&self) -> &str {
        match self {
            KvOp::Set { key, .. }
            | KvOp::Cas { key, .. }
            | KvOp::Get { key }
            | KvOp::GetOrEmpty { key }
            | KvOp::CheckIndex { key, .. }
            | KvOp::CheckNotExists { key }
            | KvOp::Delete { key }
            | KvOp::DeleteCas { key, .. }
            | KvOp::Lock { key, .. }
            | KvOp::Unlock { key, .. }
            | KvOp::CheckSession { key, .. } => key,
            KvOp::GetTree { prefix } | KvOp::DeleteTree { prefix } => prefix,
        }
    }

    /// True for verbs that only read, so a transaction made of them can skip Raft.
    pub fn is_read(&self) -> bool {
        matches!(
            self,
            KvOp::Get { .. }
                | KvOp::GetOrEmpty { .. }
                | KvOp::GetTree { .. }
                | KvOp::CheckIndex { .. }
                | KvOp::CheckNotExists { .. }
                | KvOp::CheckSession { .. }
        )
    }
}

/// What a catalog operation of a transaction does to its node, service or check. The CAS
/// verbs compare against the entry's ModifyIndex; 0 means "only if absent" for `Cas`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum CatalogVerb {
    Set,
    Cas { index: u64 },
    Get,
    Delete,
    DeleteCas { index: u64 },
}

/// One operation of a `/v1/txn` transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Kv(KvOp),
    /// Found by `node.id` when it is set, else by name, as Consul looks nodes up.
    Node {
        verb: CatalogVerb,
        node: Node,
    },
    Service {
        verb: CatalogVerb,
        node: String,
        service: Service,
    },
    /// The check's own `node` names the node it is on.
    Check {
        verb: CatalogVerb,
        check: Check,
    },
}

impl TxnOp {
    pub fn is_read(&self) -> bool {
        match self {
            TxnOp::Kv(op) => op.is_read(),
            TxnOp::Node { verb, .. } | TxnOp::Service { verb, .. } | TxnOp::Check { verb, .. } => {
                *verb == CatalogVerb::Get
            }
        }
    }
}

/// One entry of a successful transaction's `Results`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnResult {
    Kv {
        entry: KvEntry,
        /// Whether the value is returned (only `get`, `get-or-empty` and `get-tree` do).
        with_value: bool,
    },
    Node(Node),
    Service(Service),
    Check(Check),
}

/// Why one operation of a transaction failed, in Consul's words (`Errors[].What`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct OpFailure(pub String);

impl OpFailure {
    /// The failure reported against the operation at `op_index`.
    pub fn at(self, op_index: usize) -> TxnError {
        TxnError {
            op_index,
            what: self.0,
        }
    }
}

/// Why a transaction rolled back, pointing at the failing operation.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnError {
    pub op_index: usize,
    pub what: String,
}

/// The outcome of a transaction: all of it applied, or none of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOutcome {
    Committed(Vec<TxnResult>),
    RolledBack(Vec<TxnError>),
}
