//! `GET /v1/internal/replicate/<kind>`: what a secondary datacenter's leader copies from this
//! (primary) datacenter, as one list with this datacenter's index for it, read with a blocking
//! query. Tokens travel with their secrets, so reading them takes `acl:write` (what reading
//! one token's secret takes); policies and roles take `acl:read`, config entries
//! `operator:read`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::response::Response;

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply};
use super::AppState;
use crate::acl::Access;
use crate::api::replicate::{Batch, Replicated};
use crate::state::acl::ACL_TOPIC;
use crate::state::Match;

pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(kind): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let kind = Replicated::parse(&kind)
        .ok_or_else(|| ApiError::NotFound(format!("Nothing replicates as {kind:?}")))?;
    let access = match kind {
        Replicated::ConfigEntries => Access::OperatorRead,
        Replicated::Policies | Replicated::Roles => Access::AclRead,
        Replicated::Tokens => Access::AclWrite,
    };
    if kind != Replicated::ConfigEntries && !state.authorizer.enabled() {
        return Err(ApiError::Unauthorized("ACL support disabled".into()));
    }
    state
        .authorizer
        .authorize(call.token().as_deref(), access)?;
    let options = call.read_options(&state)?;
    let topics = match kind {
        // Every kind's topic starts `config/`.
        Replicated::ConfigEntries => vec![("config/".to_string(), Match::Prefix)],
        _ => vec![(ACL_TOPIC.to_string(), Match::Exact)],
    };
    reply::blocking(&state, &options, topics, |tables| {
        let index = match kind {
            Replicated::ConfigEntries => tables.config_entries_index(),
            _ => tables.acl_index(),
        };
        let bytes = match kind {
            Replicated::ConfigEntries => body(index, tables.config_entries()),
            Replicated::Policies => body(index, tables.acl_policies()),
            Replicated::Roles => body(index, tables.acl_roles()),
            Replicated::Tokens => body(index, tables.acl_tokens().filter(|token| !token.local)),
        };
        Ok((index, Reply::JsonBytes(bytes)))
    })
    .await
}

fn body<'t, T: serde::Serialize + 't>(
    index: u64,
    items: impl Iterator<Item = &'t Arc<T>>,
) -> Vec<u8> {
    let items: Vec<&T> = items.map(|item| &**item).collect();
    reply::json_body(&Batch { index, items }, false)
}
