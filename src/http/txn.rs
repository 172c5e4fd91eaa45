//! `PUT /v1/txn`: an atomic list of KV, node, service and check operations. Every operation
//! is checked first (verb, required names, the token's write rights), and any failure is
//! reported against its position without applying anything. Read-only transactions are
//! answered from a local snapshot; anything that writes goes through Raft as one command.
//! Entries the token may not read are left out of the results, as Consul filters them.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::Response;

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Visible};
use super::AppState;
use crate::acl::Access;
use crate::api::decode;
use crate::api::txn::{self as wire, TxnOpIn};
use crate::state::{txn, Tables};
use crate::types::{
    CatalogVerb, Command, CommandResult, KvOp, TxnError, TxnOp, TxnOutcome, TxnResult,
};

pub async fn apply(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let limits = &state.config.limits;
    let bytes = super::body::read(
        body,
        call.content_length,
        limits.txn_max_req_len,
        super::body::TXN_MAX_REQ_LEN_DOCS,
        limits.http_body_timeout,
    )
    .await?;
    // Consul's txn endpoint words a body it cannot parse its own way.
    let ops_in: Vec<TxnOpIn> = decode::from_slice_worded(&bytes, "Failed to parse body")?;
    if ops_in.len() > limits.txn_max_ops {
        return Err(ApiError::PayloadTooLarge(format!(
            "Transaction contains too many operations ({} > {})",
            ops_in.len(),
            limits.txn_max_ops
        )));
    }
    let datacenter = &state.config.datacenter;
    let visible = Visible::of(&state, &call)?;
    let (ops, refused) = pre_check(ops_in, datacenter, &visible, &state.cluster.snapshot());
    if !refused.is_empty() {
        return Err(ApiError::Conflict(wire::errors(&refused)));
    }
    let pretty = call.pretty(&state);
    let read_only = ops.iter().all(TxnOp::is_read);
    let (index, outcome, contact) = if read_only {
        let options = call.read_options(&state)?;
        let contact = state.cluster.read_barrier(options.consistency).await?;
        let tables = state.cluster.snapshot();
        (tables.last_index(), txn::read(&tables, &ops), Some(contact))
    } else {
        match state.cluster.write(command(ops)).await? {
            (index, CommandResult::Txn(outcome)) => (index, outcome, None),
            (_, other) => {
                return Err(ApiError::Internal(format!(
                    "unexpected transaction result {other:?}"
                )))
            }
        }
    };
    let results = match outcome {
        TxnOutcome::Committed(results) => results,
        TxnOutcome::RolledBack(errors) => return Err(ApiError::Conflict(wire::errors(&errors))),
    };
    let results: Vec<TxnResult> = results
        .into_iter()
        .filter(|result| readable(&visible, result))
        .collect();
    let mut response = reply::json(&wire::results(&results, datacenter)?, pretty);
    let headers = response.headers_mut();
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    // Only the read path reports leader contact and filtering, as Consul's Txn.Read does.
    if let Some(contact) = contact {
        let known = if contact.known_leader {
            "true"
        } else {
            "false"
        };
        headers.insert("X-Consul-KnownLeader", HeaderValue::from_static(known));
        headers.insert(
            "X-Consul-LastContact",
            HeaderValue::from(contact.last_contact_ms),
        );
        response = visible.mark(response);
    }
    Ok(response)
}

/// Converts and checks every operation, collecting each one's failure by position.
fn pre_check(
    ops_in: Vec<TxnOpIn>,
    datacenter: &str,
    visible: &Visible,
    tables: &Tables,
) -> (Vec<TxnOp>, Vec<TxnError>) {
    let mut ops = Vec::with_capacity(ops_in.len());
    let mut refused = Vec::new();
    for (op_index, op_in) in ops_in.into_iter().enumerate() {
        match op_in.into_op(datacenter) {
            Ok(op) => {
                let denied = required(&op, tables, &ops)
                    .and_then(|access| visible.identity().check(access).err());
                if let Some(denied) = denied {
                    refused.push(TxnError {
                        op_index,
                        what: denied.to_string(),
                    });
                }
                ops.push(op);
            }
            Err(failure) => refused.push(failure.at(op_index)),
        }
    }
    (ops, refused)
}

/// The right an operation needs before it runs (Consul's `Txn.preCheck`). Plain reads need
/// none: what they return is filtered instead. Checks that could reveal a key through the
/// outcome need read on it; every other KV verb needs write, as in Consul.
fn required<'a>(op: &'a TxnOp, tables: &'a Tables, earlier: &'a [TxnOp]) -> Option<Access<'a>> {
    match op {
        TxnOp::Kv(op) => match op {
            KvOp::DeleteTree { prefix } => Some(Access::KeyWritePrefix(prefix)),
            KvOp::Get { .. } | KvOp::GetTree { .. } => None,
            KvOp::CheckSession { key, .. } | KvOp::CheckIndex { key, .. } => {
                Some(Access::KeyRead(key))
            }
            op => Some(Access::KeyWrite(op.key())),
        },
        _ if op.is_read() => None,
        TxnOp::Node { node, .. } => Some(Access::NodeWrite(&node.name)),
        TxnOp::Service { service, .. } => Some(Access::ServiceWrite(&service.name)),
        TxnOp::Check { check, .. } if check.service_id.is_empty() => {
            Some(Access::NodeWrite(&check.node))
        }
        // A service check needs write on its service, named by the catalog (or by the
        // transaction registering it), never by the request's own say-so.
        TxnOp::Check { check, .. } => {
            let registered = tables
                .service(&check.node, &check.service_id)
                .map(|service| service.name.as_str());
            let in_this_txn = || {
                earlier.iter().rev().find_map(|op| match op {
                    TxnOp::Service {
                        verb: CatalogVerb::Set | CatalogVerb::Cas { .. },
                        node,
                        service,
                    } if *node == check.node && service.id == check.service_id => {
                        Some(service.name.as_str())
                    }
                    _ => None,
                })
            };
            let name = registered.or_else(in_this_txn).unwrap_or(&check.service_id);
            Some(Access::ServiceWrite(name))
        }
    }
}

/// Whether the token may see a result (Consul's `FilterTxnResults`).
fn readable(visible: &Visible, result: &TxnResult) -> bool {
    visible.may(match result {
        TxnResult::Kv { entry, .. } => Access::KeyRead(&entry.key),
        TxnResult::Node(node) => Access::NodeRead(&node.name),
        TxnResult::Service(service) => Access::ServiceRead(&service.name),
        TxnResult::Check(check) if check.service_name.is_empty() => Access::NodeRead(&check.node),
        TxnResult::Check(check) => Access::ServiceRead(&check.service_name),
    })
}

/// KV-only transactions keep their original log entry, so older servers in a rolling upgrade
/// still apply them; any catalog operation needs the newer one.
fn command(ops: Vec<TxnOp>) -> Command {
    if !ops.iter().all(|op| matches!(op, TxnOp::Kv(_))) {
        return Command::Transaction(ops);
    }
    Command::Txn(
        ops.into_iter()
            .filter_map(|op| match op {
                TxnOp::Kv(op) => Some(op),
                _ => None,
            })
            .collect(),
    )
}
