//! `/v1/txn` wire shapes: the operations of a transaction body (`KV`, `Node`, `Service`,
//! `Check`) and the `Results`/`Errors` answer.
//!
//! Consul checks each operation before it applies any (`Txn.preCheck`): a bad verb, a missing
//! key or node name, or a token without the right is reported against the operation's
//! position (a 409 with `Errors`), not as a 400. Only a body that is not a list of operations,
//! or a value that is not base64, fails the whole request with 400.

use std::collections::BTreeMap;

use base64::Engine;
use serde::Deserialize;
use serde_json::{json, Value};

use super::catalog::{self as wire, CheckIn, ServiceIn};
use super::kv::{base64_engine, kv_pair, ValueUnreadable};
use crate::types::{
    CatalogVerb, KvOp, Locality, Node, OpFailure, RaftIndexes, Service, TxnError, TxnOp, TxnResult,
};

/// One element of a `PUT /v1/txn` body.
#[derive(Debug, Deserialize)]
pub struct TxnOpIn {
    #[serde(rename = "KV")]
    kv: Option<KvOpIn>,
    #[serde(rename = "Node")]
    node: Option<NodeOpIn>,
    #[serde(rename = "Service")]
    service: Option<ServiceOpIn>,
    #[serde(rename = "Check")]
    check: Option<CheckOpIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct KvOpIn {
    verb: String,
    key: String,
    #[serde(deserialize_with = "base64_value")]
    value: Vec<u8>,
    flags: u64,
    index: u64,
    session: String,
}

/// A KV operation's `Value`: base64, or null for none. Decoding it is part of parsing the
/// body, as in Consul, so bad base64 fails the request.
fn base64_value<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<Vec<u8>, D::Error> {
    let text: Option<String> = Option::deserialize(deserializer)?;
    text.map_or(Ok(Vec::new()), |text| {
        base64_engine()
            .decode(text)
            .map_err(|error| serde::de::Error::custom(format!("failed to decode value: {error}")))
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NodeOpIn {
    verb: String,
    node: NodeIn,
}

/// Consul's `api.Node` as a transaction carries it (`Meta`, not a registration's `NodeMeta`).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NodeIn {
    #[serde(rename = "ID")]
    id: String,
    node: String,
    address: String,
    datacenter: String,
    tagged_addresses: BTreeMap<String, String>,
    meta: BTreeMap<String, String>,
    modify_index: u64,
    locality: Option<Locality>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ServiceOpIn {
    verb: String,
    node: String,
    service: ServiceIn,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CheckOpIn {
    verb: String,
    check: CheckIn,
}

fn refuse<T>(what: impl Into<String>) -> Result<T, OpFailure> {
    Err(OpFailure(what.into()))
}

/// Parses a catalog verb; `modify_index` is the entry's `ModifyIndex`, the CAS verbs' index.
fn catalog_verb(kind: &str, verb: &str, modify_index: u64) -> Result<CatalogVerb, OpFailure> {
    Ok(match verb {
        "set" => CatalogVerb::Set,
        "cas" => CatalogVerb::Cas {
            index: modify_index,
        },
        "get" => CatalogVerb::Get,
        "delete" => CatalogVerb::Delete,
        "delete-cas" => CatalogVerb::DeleteCas {
            index: modify_index,
        },
        other => return refuse(format!("unknown {kind} operation: {other}")),
    })
}

impl TxnOpIn {
    /// The domain operation, or what Consul's pre-check reports against it. `datacenter` is
    /// the agent's, given to nodes that name none.
    pub fn into_op(self, datacenter: &str) -> Result<TxnOp, OpFailure> {
        if let Some(kv) = self.kv {
            kv.into_op().map(TxnOp::Kv)
        } else if let Some(node) = self.node {
            node.into_op(datacenter)
        } else if let Some(service) = self.service {
            service.into_op()
        } else if let Some(check) = self.check {
            check.into_op()
        } else {
            refuse("unknown operation type")
        }
    }
}

impl KvOpIn {
    fn into_op(self) -> Result<KvOp, OpFailure> {
        let KvOpIn {
            verb,
            key,
            value,
            flags,
            index,
            session,
        } = self;
        if key.is_empty() && verb != "delete-tree" {
            return refuse("Must provide key");
        }
        Ok(match verb.as_str() {
            "set" => KvOp::Set { key, value, flags },
            "cas" => KvOp::Cas {
                key,
                value,
                flags,
                index,
            },
            "get" => KvOp::Get { key },
            "get-or-empty" => KvOp::GetOrEmpty { key },
            "get-tree" => KvOp::GetTree { prefix: key },
            "check-index" => KvOp::CheckIndex { key, index },
            "check-not-exists" => KvOp::CheckNotExists { key },
            "delete" => KvOp::Delete { key },
            "delete-tree" => KvOp::DeleteTree { prefix: key },
            "delete-cas" => KvOp::DeleteCas { key, index },
            "lock" | "unlock" | "check-session" if session.is_empty() => {
                return refuse(format!("verb {verb:?} needs a Session"))
            }
            "lock" => KvOp::Lock {
                key,
                value,
                flags,
                session,
            },
            "unlock" => KvOp::Unlock {
                key,
                value,
                flags,
                session,
            },
            "check-session" => KvOp::CheckSession { key, session },
            other => return refuse(format!("unknown KV verb {other:?}")),
        })
    }
}

impl NodeOpIn {
    fn into_op(self, datacenter: &str) -> Result<TxnOp, OpFailure> {
        let node = self.node;
        let verb = catalog_verb("node", &self.verb, node.modify_index)?;
        if verb != CatalogVerb::Get {
            if node.node.is_empty() {
                return refuse("Must provide node");
            }
            if !node.id.is_empty() && uuid::Uuid::parse_str(&node.id).is_err() {
                return refuse(format!("Bad node ID: invalid UUID {:?}", node.id));
            }
        }
        Ok(TxnOp::Node {
            verb,
            node: Node {
                id: node.id,
                name: node.node,
                address: node.address,
                datacenter: if node.datacenter.is_empty() {
                    datacenter.to_string()
                } else {
                    node.datacenter
                },
                tagged_addresses: node.tagged_addresses,
                meta: node.meta,
                indexes: RaftIndexes::default(),
                locality: node.locality,
            },
        })
    }
}

impl ServiceOpIn {
    fn into_op(self) -> Result<TxnOp, OpFailure> {
        let verb = catalog_verb("service", &self.verb, self.service.modify_index)?;
        let service = if verb == CatalogVerb::Get {
            // A read names the instance by id alone.
            Service {
                id: self.service.id,
                ..Service::default()
            }
        } else if self.service.service.is_empty() {
            return refuse("Must provide service name with ID");
        } else {
            self.service
                .into_service()
                .map_err(|error| OpFailure(error.to_string()))?
        };
        Ok(TxnOp::Service {
            verb,
            node: self.node,
            service,
        })
    }
}

impl CheckOpIn {
    fn into_op(self) -> Result<TxnOp, OpFailure> {
        let verb = catalog_verb("check", &self.verb, self.check.modify_index)?;
        let node = self.check.node.clone();
        let check = self
            .check
            .into_check(&node)
            .map_err(|error| OpFailure(error.to_string()))?;
        Ok(TxnOp::Check { verb, check })
    }
}

/// `{"Results": [...], "Errors": null}` of a committed transaction. Services are shown as
/// Consul's `NodeService`, which carries no datacenter; `datacenter` fills the agent shape's.
pub fn results(results: &[TxnResult], datacenter: &str) -> Result<Value, ValueUnreadable> {
    let results = results
        .iter()
        .map(|result| {
            Ok(match result {
                TxnResult::Kv { entry, with_value } => json!({"KV": kv_pair(entry, *with_value)?}),
                TxnResult::Node(node) => json!({"Node": wire::node(node)}),
                TxnResult::Service(service) => {
                    json!({"Service": wire::agent_service(service, datacenter)})
                }
                TxnResult::Check(check) => json!({"Check": wire::health_check(check)}),
            })
        })
        .collect::<Result<Vec<_>, ValueUnreadable>>()?;
    Ok(json!({"Results": results, "Errors": Value::Null}))
}

/// `{"Results": null, "Errors": [{"OpIndex", "What"}]}` of a rolled-back or refused one.
pub fn errors(errors: &[TxnError]) -> Value {
    json!({
        "Results": Value::Null,
        "Errors": errors
            .iter()
            .map(|error| json!({"OpIndex": error.op_index, "What": error.what}))
            .collect::<Vec<_>>(),
    })
}
