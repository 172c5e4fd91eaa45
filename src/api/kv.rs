//! KV wire shapes: `KVPair` and the `kv export` format.

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::decode::DecodeError;
use crate::types::KvEntry;

pub(super) fn base64_engine() -> base64::engine::GeneralPurpose {
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
    /// Fails only when the value cannot be read back from the server's value file.
    pub fn new(entry: &'a KvEntry, with_value: bool) -> Result<KvPair<'a>, ValueUnreadable> {
        let value = match with_value && !entry.value.is_empty() {
            true => Some(base64_engine().encode(entry.value.read().map_err(|error| {
                ValueUnreadable(format!("cannot read the value of {:?}: {error}", entry.key))
            })?)),
            false => None,
        };
        Ok(KvPair {
            lock_index: entry.lock_index,
            key: &entry.key,
            flags: entry.flags,
            value,
            create_index: entry.indexes.create,
            modify_index: entry.indexes.modify,
            session: &entry.session,
        })
    }
}

/// A stored KV value could not be read (an I/O error on the value file): a server fault,
/// answered with a 500 and this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ValueUnreadable(pub String);

/// A `KVPair` as a JSON value, for responses that embed it.
pub fn kv_pair(entry: &KvEntry, with_value: bool) -> Result<Value, ValueUnreadable> {
    Ok(serde_json::to_value(KvPair::new(entry, with_value)?).unwrap_or(Value::Null))
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
