//! `/v1/snapshot`: GET saves the state store as a snapshot archive (`crate::snapshot`), read
//! in the consistency the request asks for; PUT restores one: the archive's checksums and its
//! state are checked first, then the state goes through Raft in pieces
//! (`Command::RestoreChunk`, each a write of its own) and one `Command::RestoreCommit`, so every
//! server replaces its tables at the same index and every blocking query wakes.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::params::Call;
use super::AppState;
use crate::acl::Access;
use crate::state::Store;
use crate::types::{Command, CommandResult};

/// The most state bytes one restore piece carries: one log entry of about the write batcher's
/// size, well inside a server RPC message (4 MiB) and a replication call (about 2 MiB).
const RESTORE_PIECE_BYTES: usize = 1024 * 1024;

pub async fn save(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::AclWrite)?;
    let options = call.read_options(&state)?;
    state.cluster.read_barrier(options.consistency).await?;
    let tables = state.cluster.snapshot();
    let term = state.cluster.leadership().borrow().term;
    let index = tables.last_index();
    let taken = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis());
    // Encoding and compressing a large state is CPU work; keep it off the async workers.
    let archive = tokio::task::spawn_blocking(move || {
        Store::encode(&tables).map(|state| crate::snapshot::write(&state, index, term, taken))
    })
    .await
    .map_err(|error| ApiError::Internal(format!("failed to build the snapshot: {error}")))?
    .map_err(|error| ApiError::Internal(format!("failed to build the snapshot: {error}")))?;
    Ok((
        [
            (CONTENT_TYPE, "application/x-gzip".to_string()),
            (
                axum::http::HeaderName::from_static("x-consul-index"),
                index.to_string(),
            ),
        ],
        archive,
    )
        .into_response())
}

pub async fn restore(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::AclWrite)?;
    let limits = &state.config.limits;
    let archive = super::body::read(
        body,
        call.content_length,
        limits.snapshot_max_size,
        "limits.snapshot_max_size",
        limits.http_body_timeout,
    )
    .await?;
    let limit = limits.snapshot_max_size as u64;
    let checked = tokio::task::spawn_blocking(move || {
        let (_, tables) = crate::snapshot::read(&archive, limit).map_err(|e| e.to_string())?;
        Store::inspect(&tables)
            .map_err(|error| format!("failed to read snapshot state: {}", error.0))?;
        Ok::<_, String>(tables)
    })
    .await
    .map_err(|error| ApiError::Internal(error.to_string()))?;
    let tables = checked.map_err(ApiError::Internal)?;
    let id = uuid::Uuid::new_v4().to_string();
    for (n, piece) in tables.chunks(RESTORE_PIECE_BYTES).enumerate() {
        let piece = Command::RestoreChunk {
            id: id.clone(),
            offset: (n * RESTORE_PIECE_BYTES) as u64,
            bytes: piece.to_vec(),
        };
        if let (_, CommandResult::Error(error)) = state.cluster.write(piece).await? {
            return Err(error.into());
        }
    }
    let commit = Command::RestoreCommit {
        id,
        len: tables.len() as u64,
    };
    match state.cluster.write(commit).await? {
        (_, CommandResult::Error(error)) => Err(error.into()),
        _ => Ok(().into_response()),
    }
}
