//! KV wire shapes: `KVPair`, transaction operations and results.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::decode::DecodeError;
use crate::types::{KvEntry, KvOp, TxnError, TxnResult};

fn base64_engine() -> base64::engine::GeneralPurpose {
    base64::engine::general_purpose::STANDARD
}

/// `KVPair`: `Value` is base64, or null when empty or not returned; `Session` is omitted when
/// the key is not locked. Typed, so KV reads serialise straight to bytes.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct KvPair<'a> {
    lock_index: u64,
    key: &'a str,
    flags: u64,
    value: Option<String>,
    create_index: u64,
    modify_index: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    session: &'a str,
}

impl<'a> KvPair<'a> {
    pub fn new(entry: &'a KvEntry, with_value: bool) -> KvPair<'a> {
        KvPair {
            lock_index: entry.lock_index,
            key: &entry.key,
            flags: entry.flags,
            value: (with_value && !entry.value.is_empty())
                .then(|| base64_engine().encode(&entry.value)),
            create_index: entry.indexes.create,
            modify_index: entry.indexes.modify,
            session: &entry.session,
        }
    }
}

/// A `KVPair` as a JSON value, for responses that embed it.
pub fn kv_pair(entry: &KvEntry, with_value: bool) -> Value {
    serde_json::to_value(KvPair::new(entry, with_value)).unwrap_or(Value::Null)
}

/// One element of a `PUT /v1/txn` body. Only KV operations are supported.
#[derive(Debug, Deserialize)]
pub struct TxnOpIn {
    #[serde(rename = "KV")]
    pub kv: Option<TxnKvIn>,
    #[serde(rename = "Node")]
    pub node: Option<Value>,
    #[serde(rename = "Service")]
    pub service: Option<Value>,
    #[serde(rename = "Check")]
    pub check: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct TxnKvIn {
    pub verb: String,
    pub key: String,
    pub value: Option<String>,
    pub flags: u64,
    pub index: u64,
    pub session: String,
}

impl TxnKvIn {
    /// Converts to a domain op; the error is Consul's message for the operation.
    pub fn into_op(self) -> Result<KvOp, DecodeError> {
        let value = match &self.value {
            Some(text) => base64_engine().decode(text).map_err(|error| {
                DecodeError::new(format!(
                    "failed to decode base64 value of {:?}: {error}",
                    self.key
                ))
            })?,
            None => Vec::new(),
        };
        let key = self.key;
        let needs_key = self.verb != "get-tree" && self.verb != "delete-tree";
        if needs_key && key.is_empty() {
            return Err(DecodeError::new(format!(
                "missing key for verb {:?}",
                self.verb
            )));
        }
        Ok(match self.verb.as_str() {
            "set" => KvOp::Set {
                key,
                value,
                flags: self.flags,
            },
            "cas" => KvOp::Cas {
                key,
                value,
                flags: self.flags,
                index: self.index,
            },
            "get" => KvOp::Get { key },
            "get-or-empty" => KvOp::GetOrEmpty { key },
            "get-tree" => KvOp::GetTree { prefix: key },
            "check-index" => KvOp::CheckIndex {
                key,
                index: self.index,
            },
            "check-not-exists" => KvOp::CheckNotExists { key },
            "delete" => KvOp::Delete { key },
            "delete-tree" => KvOp::DeleteTree { prefix: key },
            "delete-cas" => KvOp::DeleteCas {
                key,
                index: self.index,
            },
            "lock" | "unlock" | "check-session" if self.session.is_empty() => {
                return Err(DecodeError::new(format!(
                    "verb {:?} needs a Session",
                    self.verb
                )))
            }
            "lock" => KvOp::Lock {
                key,
                value,
                flags: self.flags,
                session: self.session,
            },
            "unlock" => KvOp::Unlock {
                key,
                value,
                flags: self.flags,
                session: self.session,
            },
            "check-session" => KvOp::CheckSession {
                key,
                session: self.session,
            },
            other => return Err(DecodeError::new(format!("unknown KV verb {other:?}"))),
        })
    }
}

pub fn txn_results(results: &[TxnResult]) -> Value {
    json!({
        "Results": results
            .iter()
            .map(|result| json!({"KV": kv_pair(&result.entry, result.with_value)}))
            .collect::<Vec<_>>(),
        "Errors": Value::Null,
    })
}

pub fn txn_errors(errors: &[TxnError]) -> Value {
    json!({
        "Results": Value::Null,
        "Errors": errors
            .iter()
            .map(|error| json!({"OpIndex": error.op_index, "What": error.what}))
            .collect::<Vec<_>>(),
    })
}

/// One entry of `concord kv export` / `kv import`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ExportEntry {
    pub key: String,
    pub flags: u64,
    pub value: String,
}

pub fn decode_base64(text: &str) -> Result<Vec<u8>, DecodeError> {
    base64_engine()
        .decode(text)
        .map_err(|error| DecodeError::new(format!("invalid base64: {error}")))
}

pub fn encode_base64(bytes: &[u8]) -> String {
    base64_engine().encode(bytes)
}
