//! The legacy intentions API (`/v1/connect/intentions*`) over `service-intentions` config
//! entries, and `/v1/agent/connect/authorize`.
//!
//! A legacy write is a read-modify-write of the destination's entry, committed with
//! compare-and-set on its ModifyIndex and retried when another write got there first, so
//! concurrent intention writes to one destination never lose each other.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::config::write_entry;
use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply};
use super::AppState;
use crate::acl::Access;
use crate::api::config_entry::normalize;
use crate::connect::ca::parse_spiffe_service_id;
use crate::connect::intention::{self, DefaultPolicy, Intention};
use crate::state::connect::kind_topic;
use crate::state::{Match, Tables};
use crate::types::config_entry::SERVICE_INTENTIONS;
use crate::types::duration::{format_rfc3339, unix_now};
use crate::types::{Command, CommandResult};

/// How often a legacy write retries after losing a compare-and-set race.
const MAX_CAS_ATTEMPTS: usize = 16;

pub fn default_policy(state: &AppState) -> DefaultPolicy {
    DefaultPolicy::new(
        state.config.default_intention_policy.as_deref(),
        state.authorizer.default_policy(),
    )
}

fn required<'a>(call: &'a Call, name: &str) -> Result<&'a str, ApiError> {
    call.get(name)
        .filter(|value| !value.is_empty())
        .ok_or_else(|| ApiError::Internal(format!("required query parameter '{name}' not set")))
}

/// Changes the source `source` of `destination`'s intentions entry. `change` sees the current
/// source object, if any, and returns the new one, or `None` to remove it.
async fn modify_source(
    state: &AppState,
    destination: &str,
    source: &str,
    change: impl Fn(Option<&Map<String, Value>>) -> Result<Option<Map<String, Value>>, ApiError>,
) -> Result<(), ApiError> {
    for _ in 0..MAX_CAS_ATTEMPTS {
        let tables = state.cluster.snapshot();
        let current = tables.config_entry(SERVICE_INTENTIONS, destination);
        let cas = current.map_or(0, |entry| entry.indexes.modify);
        let mut json: Map<String, Value> = match current {
            Some(entry) => match serde_json::from_str(&entry.json) {
                Ok(Value::Object(map)) => map,
                _ => Map::new(),
            },
            None => Map::new(),
        };
        json.insert("Kind".into(), Value::String(SERVICE_INTENTIONS.into()));
        json.insert("Name".into(), Value::String(destination.into()));
        let mut sources: Vec<Value> = match json.remove("Sources") {
            Some(Value::Array(sources)) => sources,
            _ => Vec::new(),
        };
        let position = sources.iter().position(|candidate| {
            candidate.get("Name").and_then(Value::as_str) == Some(source)
                && candidate
                    .get("Peer")
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .is_empty()
        });
        let existing = position.and_then(|i| sources[i].as_object());
        match (change(existing)?, position) {
            (Some(new), Some(i)) => sources[i] = Value::Object(new),
            (Some(new), None) => sources.push(Value::Object(new)),
            (None, Some(i)) => {
                sources.remove(i);
            }
            (None, None) => return Ok(()),
        }
        let applied = if sources.is_empty() {
            let command = Command::ConfigEntryDelete {
                kind: SERVICE_INTENTIONS.into(),
                name: destination.into(),
                cas: Some(cas),
            };
            matches!(
                state.cluster.write(command).await?.1,
                CommandResult::Cas(true)
            )
        } else {
            json.insert("Sources".into(), Value::Array(sources));
            write_entry(state, json, Some(cas)).await?
        };
        if applied {
            return Ok(());
        }
    }
    Err(ApiError::Internal(format!(
        "intentions for {destination:?} changed {MAX_CAS_ATTEMPTS} times while writing; try again"
    )))
}

/// Builds a source object from a legacy-API body (`Action` or `Permissions`, `Description`).
fn source_from_body(source: &str, body: &Map<String, Value>) -> Map<String, Value> {
    let mut out = Map::new();
    out.insert("Name".into(), Value::String(source.into()));
    for key in ["Action", "Permissions", "Description"] {
        if let Some(value) = body.get(key).filter(|value| !value.is_null()) {
            out.insert(key.into(), value.clone());
        }
    }
    out.insert("Type".into(), Value::String("consul".into()));
    out
}

/// The source that replaces `existing` after a legacy update: what the body says, plus the
/// legacy fields the body cannot express (id, creation time, and the meta unless the body
/// carries its own), with the update time set for intentions the legacy API created.
fn replacement(
    source: &str,
    body: &Map<String, Value>,
    existing: Option<&Map<String, Value>>,
    meta_from_body: bool,
) -> Map<String, Value> {
    let mut new = source_from_body(source, body);
    let kept: &[&str] = if meta_from_body {
        &["LegacyID", "LegacyCreateTime"]
    } else {
        &["LegacyID", "LegacyCreateTime", "LegacyMeta"]
    };
    for key in kept {
        if let Some(value) = existing.and_then(|existing| existing.get(*key)) {
            new.insert(key.to_string(), value.clone());
        }
    }
    if meta_from_body {
        if let Some(meta) = body.get("Meta").filter(|meta| meta.is_object()) {
            new.insert("LegacyMeta".into(), meta.clone());
        }
    }
    if new.contains_key("LegacyCreateTime") {
        new.insert(
            "LegacyUpdateTime".into(),
            Value::String(format_rfc3339(unix_now())),
        );
    }
    new
}

fn body_object(value: Value) -> Result<Map<String, Value>, ApiError> {
    match normalize(value) {
        Value::Object(map) => Ok(map),
        _ => Err(ApiError::BadRequest(
            "Request decode failed: the body must be a JSON object".into(),
        )),
    }
}

pub async fn put_exact(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let source = required(&call, "source")?.to_string();
    let destination = required(&call, "destination")?.to_string();
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::IntentionWrite(&destination),
    )?;
    let body = body_object(legacy_body(&state, &call, body).await?)?;
    modify_source(&state, &destination, &source, |existing| {
        Ok(Some(replacement(&source, &body, existing, false)))
    })
    .await?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

pub async fn get_exact(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    let source = required(&call, "source")?.to_string();
    let destination = required(&call, "destination")?.to_string();
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::IntentionRead(&destination))?;
    let topics = vec![(kind_topic(SERVICE_INTENTIONS), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        let index = tables.config_kind_index(SERVICE_INTENTIONS);
        match intention::exact(tables, &source, &destination) {
            Some(found) => Ok((index, Reply::Json(crate::api::intention::intention(&found)))),
            None => Err(ApiError::NotFound(format!(
                "Intention not found: {source} => {destination}"
            ))),
        }
    })
    .await
}

pub async fn delete_exact(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let source = required(&call, "source")?.to_string();
    let destination = required(&call, "destination")?.to_string();
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::IntentionWrite(&destination),
    )?;
    modify_source(&state, &destination, &source, |_| Ok(None)).await?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

fn readable(state: &AppState, token: Option<&str>, found: &Intention) -> bool {
    state
        .authorizer
        .authorize(token, Access::IntentionRead(found.destination()))
        .is_ok()
}

pub async fn list(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let token = call.token();
    let topics = vec![(kind_topic(SERVICE_INTENTIONS), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        let list: Vec<Value> = intention::all(tables)
            .iter()
            .filter(|found| readable(&state, token.as_deref(), found))
            .map(crate::api::intention::intention)
            .collect();
        Ok((
            tables.config_kind_index(SERVICE_INTENTIONS),
            Reply::Json(Value::Array(options.filter_list(list))),
        ))
    })
    .await
}

pub async fn matches(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let by = required(&call, "by")?.to_string();
    if by != "source" && by != "destination" {
        return Err(ApiError::BadRequest(
            "'by' parameter must be one of 'source' or 'destination'".into(),
        ));
    }
    let names: Vec<String> = call.all("name").map(str::to_string).collect();
    if names.is_empty() {
        return Err(ApiError::BadRequest(
            "required query parameter 'name' not set".into(),
        ));
    }
    let options = call.read_options(&state)?;
    let token = call.token();
    let topics = vec![(kind_topic(SERVICE_INTENTIONS), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        let mut out = Map::new();
        for name in &names {
            let found = if by == "source" {
                intention::match_source(tables, name)
            } else {
                intention::match_destination(tables, name)
            };
            let list: Vec<Value> = found
                .iter()
                .filter(|found| readable(&state, token.as_deref(), found))
                .map(crate::api::intention::intention)
                .collect();
            out.insert(name.clone(), Value::Array(list));
        }
        Ok((
            tables.config_kind_index(SERVICE_INTENTIONS),
            Reply::Json(Value::Object(out)),
        ))
    })
    .await
}

pub async fn check(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let source = required(&call, "source")?.to_string();
    let destination = required(&call, "destination")?.to_string();
    if let Some(kind) = call.get("source-type") {
        if !kind.is_empty() && kind != "consul" {
            return Err(ApiError::BadRequest(format!(
                "unsupported source-type {kind:?}; only \"consul\" exists"
            )));
        }
    }
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::IntentionRead(&destination))?;
    let policy = default_policy(&state);
    let topics = vec![(kind_topic(SERVICE_INTENTIONS), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        let decision = intention::decide(tables, &source, &destination, policy);
        Ok((
            tables.config_kind_index(SERVICE_INTENTIONS),
            Reply::Json(json!({ "Allowed": decision.allowed })),
        ))
    })
    .await
}

/// Finds the intention created through the legacy API with this id.
fn by_id(tables: &Tables, id: &str) -> Option<Intention> {
    intention::all(tables)
        .into_iter()
        .find(|found| found.with_source(|source| source.legacy_id == id))
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let body = body_object(legacy_body(&state, &call, body).await?)?;
    let text = |key: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let (source, destination) = (text("SourceName"), text("DestinationName"));
    if source.is_empty() || destination.is_empty() {
        return Err(ApiError::BadRequest(
            "SourceName and DestinationName are required".into(),
        ));
    }
    if !body.get("Permissions").is_none_or(Value::is_null) {
        return Err(ApiError::BadRequest(
            "Permissions cannot be set through the legacy intentions API; use PUT /v1/connect/intentions/exact or a service-intentions config entry".into(),
        ));
    }
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::IntentionWrite(&destination),
    )?;
    let id = uuid::Uuid::new_v4().to_string();
    let now = format_rfc3339(unix_now());
    modify_source(&state, &destination, &source, |existing| {
        if existing.is_some() {
            return Err(ApiError::BadRequest(format!(
                "duplicate intention found: {source} => {destination}"
            )));
        }
        let mut new = source_from_body(&source, &body);
        new.insert("LegacyID".into(), Value::String(id.clone()));
        if let Some(meta) = body.get("Meta").filter(|meta| meta.is_object()) {
            new.insert("LegacyMeta".into(), meta.clone());
        }
        new.insert("LegacyCreateTime".into(), Value::String(now.clone()));
        new.insert("LegacyUpdateTime".into(), Value::String(now.clone()));
        Ok(Some(new))
    })
    .await?;
    Ok(reply::json(&json!({ "ID": id }), call.pretty(&state)))
}

pub async fn get_by_id(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let token = call.token();
    let topics = vec![(kind_topic(SERVICE_INTENTIONS), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        match by_id(tables, &id) {
            Some(found) if readable(&state, token.as_deref(), &found) => Ok((
                tables.config_kind_index(SERVICE_INTENTIONS),
                Reply::Json(crate::api::intention::intention(&found)),
            )),
            Some(_) => Err(ApiError::Forbidden("Permission denied".into())),
            None => Err(ApiError::NotFound(format!("Intention not found: {id}"))),
        }
    })
    .await
}

pub async fn update_by_id(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let body = body_object(legacy_body(&state, &call, body).await?)?;
    let found = by_id(&state.cluster.snapshot(), &id)
        .ok_or_else(|| ApiError::NotFound(format!("Intention not found: {id}")))?;
    let (source, destination) = (found.source(), found.destination().to_string());
    let same_pair = |key: &str, current: &str| {
        body.get(key)
            .and_then(Value::as_str)
            .is_none_or(|value| value.is_empty() || value == current)
    };
    if !same_pair("SourceName", &source) || !same_pair("DestinationName", &destination) {
        return Err(ApiError::BadRequest(
            "changing an intention's source or destination is not supported; delete it and create a new one".into(),
        ));
    }
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::IntentionWrite(&destination),
    )?;
    modify_source(&state, &destination, &source, |existing| {
        Ok(Some(replacement(&source, &body, existing, true)))
    })
    .await?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

pub async fn delete_by_id(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let found = by_id(&state.cluster.snapshot(), &id)
        .ok_or_else(|| ApiError::NotFound(format!("Intention not found: {id}")))?;
    let destination = found.destination().to_string();
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::IntentionWrite(&destination),
    )?;
    modify_source(&state, &destination, &found.source(), |_| Ok(None)).await?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

pub async fn authorize(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    let body = body_object(super::body::read_json(&state, &call, body).await?)?;
    let target = body
        .get("Target")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if target.is_empty() {
        return Err(ApiError::BadRequest(
            "Target service must be specified".into(),
        ));
    }
    let uri = body
        .get("ClientCertURI")
        .and_then(Value::as_str)
        .unwrap_or("");
    if uri.is_empty() {
        return Err(ApiError::BadRequest(
            "ClientCertURI must be specified".into(),
        ));
    }
    let client = parse_spiffe_service_id(uri).ok_or_else(|| {
        ApiError::BadRequest(format!(
            "ClientCertURI must be a valid service SPIFFE ID (spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>): {uri:?}"
        ))
    })?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::ServiceWrite(&target))?;
    let tables = state.cluster.snapshot();
    let decision = intention::decide(&tables, &client.service, &target, default_policy(&state));
    Ok(reply::json(
        &json!({ "Authorized": decision.allowed, "Reason": decision.reason }),
        call.pretty(&state),
    ))
}

/// The legacy intention API decodes its body itself and answers a body it cannot decode with a
/// 500 `Failed to decode request body: ...` (Consul's), where other endpoints answer 400.
async fn legacy_body(
    state: &AppState,
    call: &Call,
    body: axum::body::Body,
) -> Result<Value, ApiError> {
    super::body::read_json_or(state, call, body, |reason| {
        ApiError::Internal(format!("Failed to decode request body: {reason}"))
    })
    .await
}
