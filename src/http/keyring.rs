//! `/v1/operator/keyring`: the gossip keyring on every member of the LAN pool. GET lists the
//! keys and how many members hold each; POST installs a key, PUT makes it the primary, DELETE
//! removes it (body `{"Key": "<base64>"}`), each run on every member by the pool
//! (`gossip::keyops`) and answered once they all answered or the query timed out.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::Method;
use axum::response::Response;
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::{reply, AppState};
use crate::acl::Access;
use crate::gossip::keyops::{KeyOp, KeySummary};

fn summary_json(summary: &KeySummary, datacenter: &str, wan: bool) -> Value {
    json!({
        "WAN": wan,
        "Datacenter": datacenter,
        "Segment": "",
        "Partition": "",
        "Keys": summary.keys,
        "PrimaryKeys": summary.primary_keys,
        "Messages": summary.messages,
        "NumNodes": summary.num_nodes,
        "NumResp": summary.num_resp,
        "NumErr": summary.num_err,
    })
}

pub async fn keyring(
    State(state): State<Arc<AppState>>,
    method: Method,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    let access = match method {
        Method::GET => Access::KeyringRead,
        _ => Access::KeyringWrite,
    };
    state
        .authorizer
        .authorize(call.token().as_deref(), access)?;
    if !state.lan.encrypted() {
        return Err(ApiError::Internal(
            "Gossip encryption is not enabled on this agent (-encrypt)".into(),
        ));
    }
    let op = match method {
        Method::GET => KeyOp::List,
        _ => {
            let value = super::body::read_json(&state, &call, body).await?;
            let key = value["Key"].as_str().unwrap_or_default().to_string();
            if key.is_empty() {
                return Err(ApiError::BadRequest("Missing Key".into()));
            }
            crate::gossip::keyring::validate(&key)
                .map_err(|error| ApiError::BadRequest(error.to_string()))?;
            match method {
                Method::POST => KeyOp::Install(key),
                Method::PUT => KeyOp::Use(key),
                _ => KeyOp::Remove(key),
            }
        }
    };
    let listing = op == KeyOp::List;
    // As Consul: a server's WAN pool first, then the LAN pool, each its own keyring.
    let mut pools = Vec::new();
    if let Some(wan) = &state.wan {
        pools.push((wan, true));
    }
    pools.push((&state.lan, false));
    let mut answers = Vec::new();
    let mut failures = Vec::new();
    for (pool, wan) in pools {
        let summary = pool
            .keyring(op.clone())
            .await
            .map_err(|error| ApiError::Internal(error.to_string()))?;
        if summary.num_err > 0 {
            let mut text = format!(
                "{} error: {}/{} nodes reported failure",
                if wan { "WAN" } else { "LAN" },
                summary.num_err,
                summary.num_nodes
            );
            for (node, message) in &summary.messages {
                text.push_str(&format!("\n  {node}: {message}"));
            }
            failures.push(text);
        }
        answers.push(summary_json(&summary, &state.config.datacenter, wan));
    }
    if !failures.is_empty() {
        return Err(ApiError::Internal(failures.join("\n")));
    }
    match listing {
        true => Ok(reply::json(&Value::Array(answers), call.pretty(&state))),
        false => Ok(reply::json(&Value::Null, false)),
    }
}
