//! `PUT /v1/txn`: an atomic list of KV operations. Read-only transactions are answered from a
//! local snapshot; anything that writes goes through Raft as one command.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::response::Response;

use super::error::ApiError;
use super::params::Call;
use super::reply;
use super::AppState;
use crate::acl::Access;
use crate::api::decode;
use crate::api::kv::{txn_errors, txn_results, TxnOpIn};
use crate::state::kv::read_txn;
use crate::types::{Command, CommandResult, KvOp, TxnOutcome};

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
        "limits.txn_max_req_len",
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
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    let mut ops = Vec::with_capacity(ops_in.len());
    for (position, op) in ops_in.into_iter().enumerate() {
        let Some(kv) = op.kv else {
            let what = if op.node.is_some() || op.service.is_some() || op.check.is_some() {
                "only KV operations are supported in transactions so far"
            } else {
                "operation has no KV, Node, Service or Check member"
            };
            return Err(ApiError::BadRequest(format!(
                "operation {position}: {what}"
            )));
        };
        let op = kv
            .into_op()
            .map_err(|error| error.within(format!("operation {position}")))?;
        let access = match &op {
            KvOp::DeleteTree { prefix } => Access::KeyWritePrefix(prefix),
            op if op.is_read() => Access::KeyRead(op.key()),
            op => Access::KeyWrite(op.key()),
        };
        identity.check(access)?;
        ops.push(op);
    }
    let pretty = call.pretty(&state);
    let (index, outcome) = if ops.iter().all(KvOp::is_read) {
        let options = call.read_options(&state)?;
        state.cluster.read_barrier(options.consistency).await?;
        let tables = state.cluster.snapshot();
        (tables.last_index(), read_txn(&tables, &ops))
    } else {
        match state.cluster.write(Command::Txn(ops)).await? {
            (index, CommandResult::Txn(outcome)) => (index, outcome),
            (_, other) => {
                return Err(ApiError::Internal(format!(
                    "unexpected transaction result {other:?}"
                )))
            }
        }
    };
    match outcome {
        TxnOutcome::Committed(results) => {
            let mut response = reply::json(&txn_results(&results), pretty);
            response
                .headers_mut()
                .insert("X-Consul-Index", HeaderValue::from(index.max(1)));
            Ok(response)
        }
        TxnOutcome::RolledBack(errors) => Err(ApiError::Conflict(txn_errors(&errors))),
    }
}
