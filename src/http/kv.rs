//! `/v1/kv/<key>`: reads (single, `recurse`, `keys` with `separator`, `raw`), writes (`flags`,
//! `cas`) and deletes (`recurse`, `cas`), with Consul's semantics and status codes.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::Value;

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply, Visible};
use super::AppState;
use crate::acl::Access;
use crate::api::kv::KvPair;
use crate::state::kv::topic;
use crate::state::Match;
use crate::types::{Command, CommandResult, KvOp};

/// Consul rejects keys that would be ambiguous or unsafe to store.
fn validate_key(key: &str) -> Result<(), ApiError> {
    if key.starts_with('/') {
        return Err(ApiError::BadRequest(format!(
            "Invalid key name {key:?}: keys must not begin with a '/'"
        )));
    }
    if key.contains('\0') {
        return Err(ApiError::BadRequest(
            "Invalid key name: keys must not contain a NUL byte".into(),
        ));
    }
    Ok(())
}

pub async fn get(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    read(&state, key, call).await
}

pub async fn get_root(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    read(&state, String::new(), call).await
}

async fn read(state: &AppState, key: String, call: Call) -> Result<Response, ApiError> {
    validate_key(&key)?;
    let options = call.read_options(state)?;
    let keys = call.has("keys");
    let recurse = keys || call.has("recurse");
    // One key is refused outright; a listing is filtered to the keys the token may read
    // (after `key:list` on the prefix when `acl.enable_key_list_policy` is on), and a listing
    // filtered to nothing is answered as an empty prefix, as Consul does.
    let visible = Visible::of(state, &call)?;
    if !recurse {
        visible.identity().check(Access::KeyRead(&key))?;
    } else if state.authorizer.config().enable_key_list_policy {
        visible.identity().check(Access::KeyList(&key))?;
    }
    let separator = call.get("separator").unwrap_or("").to_string();
    let raw = call.has("raw");
    let mode = if recurse { Match::Prefix } else { Match::Exact };
    let topics = vec![(topic(&key), mode)];
    reply::blocking_filtered(state, &options, topics, &visible, |tables| {
        let index = tables.kv_index(&key, recurse);
        let readable = |entry: &&crate::types::KvEntry| visible.may(Access::KeyRead(&entry.key));
        let reply = if keys {
            let mut listed: Vec<String> = Vec::new();
            for entry in tables.kv_list(&key).filter(readable) {
                let name = truncate_at_separator(&entry.key, key.len(), &separator);
                if listed.last().map(String::as_str) != Some(name) {
                    listed.push(name.to_string());
                }
            }
            if listed.is_empty() {
                Reply::NotFound
            } else {
                Reply::Json(Value::from(listed))
            }
        } else if recurse {
            let entries: Vec<KvPair> = tables
                .kv_list(&key)
                .filter(readable)
                .map(|entry| KvPair::new(entry, true))
                .collect::<Result<_, _>>()?;
            if entries.is_empty() {
                Reply::NotFound
            } else {
                Reply::JsonBytes(reply::json_body(&entries, options.pretty))
            }
        } else {
            match tables.kv_get(&key) {
                None => Reply::NotFound,
                Some(entry) if raw => Reply::Raw(
                    entry
                        .value
                        .read()
                        .map_err(|error| {
                            ApiError::Internal(format!("cannot read the value of {key:?}: {error}"))
                        })?
                        .into_owned(),
                ),
                Some(entry) => Reply::JsonBytes(reply::json_body(
                    &[KvPair::new(entry, true)?],
                    options.pretty,
                )),
            }
        };
        Ok((index, reply))
    })
    .await
}

/// `?keys&separator=/` lists `a/b/c` under prefix `a/` as `a/b/`.
fn truncate_at_separator<'a>(key: &'a str, prefix_len: usize, separator: &str) -> &'a str {
    if separator.is_empty() {
        return key;
    }
    match key[prefix_len..].find(separator) {
        Some(position) => &key[..prefix_len + position + separator.len()],
        None => key,
    }
}

pub async fn put(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    write(&state, key, call, body).await
}

pub async fn put_root(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    write(&state, String::new(), call, body).await
}

async fn write(
    state: &AppState,
    key: String,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(state)?;
    if key.is_empty() {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    validate_key(&key)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::KeyWrite(&key))?;
    let flags = call.number("flags")?.unwrap_or(0);
    let cas = call.number("cas")?;
    let conditions = [call.has("cas"), call.has("acquire"), call.has("release")];
    if conditions.iter().filter(|set| **set).count() > 1 {
        return Err(ApiError::BadRequest(
            "Conflicting flags: cas=, acquire= and release= are mutually exclusive".into(),
        ));
    }
    let limits = &state.config.limits;
    let value = super::body::read(
        body,
        call.content_length,
        limits.kv_max_value_size,
        super::body::KV_MAX_VALUE_SIZE_DOCS,
        limits.http_body_timeout,
    )
    .await?
    .to_vec();
    let op = if let Some(session) = call.get("acquire") {
        // A key whose holder's session was invalidated cannot be taken until the session's
        // lock-delay has passed; Consul answers false meanwhile.
        if state.cluster.lock_delay_remaining(&key).is_some() {
            return Ok(reply::json(&Value::Bool(false), call.pretty(state)));
        }
        let session = session.to_string();
        KvOp::Lock {
            key,
            value,
            flags,
            session,
        }
    } else if let Some(session) = call.get("release") {
        let session = session.to_string();
        KvOp::Unlock {
            key,
            value,
            flags,
            session,
        }
    } else {
        match cas {
            Some(index) => KvOp::Cas {
                key,
                value,
                flags,
                index,
            },
            None => KvOp::Set { key, value, flags },
        }
    };
    apply_single(state, op, &call).await
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(key): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    remove(&state, key, call).await
}

pub async fn delete_root(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    remove(&state, String::new(), call).await
}

async fn remove(state: &AppState, key: String, call: Call) -> Result<Response, ApiError> {
    call.check_datacenter(state)?;
    validate_key(&key)?;
    let recurse = call.has("recurse");
    let access = match recurse {
        true => Access::KeyWritePrefix(&key),
        false => Access::KeyWrite(&key),
    };
    state
        .authorizer
        .authorize(call.token().as_deref(), access)?;
    if key.is_empty() && !recurse {
        return Err(ApiError::BadRequest("Missing key name".into()));
    }
    let op = match (recurse, call.number("cas")?) {
        (true, _) => KvOp::DeleteTree { prefix: key },
        (false, Some(index)) => KvOp::DeleteCas { key, index },
        (false, None) => KvOp::Delete { key },
    };
    apply_single(state, op, &call).await
}

async fn apply_single(state: &AppState, op: KvOp, call: &Call) -> Result<Response, ApiError> {
    let (_, result) = state.cluster.write(Command::Kv(op)).await?;
    if let CommandResult::Error(error) = result {
        return Err(error.into());
    }
    let applied = matches!(result, CommandResult::Kv(true));
    Ok(reply::json(&Value::Bool(applied), call.pretty(state)))
}
