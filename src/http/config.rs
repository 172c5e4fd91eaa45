//! `/v1/config` (config entries, blocking, `?cas`) and `/v1/discovery-chain/:service`.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::{Map, Value};

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply};
use super::AppState;
use crate::acl::Access;
use crate::api::config_entry::normalize;
use crate::connect::chain::{self, Context, Overrides};
use crate::connect::{entry, graph};
use crate::state::connect::{entry_topic, kind_topic, CA_TOPIC};
use crate::state::{Match, Tables};
use crate::types::config_entry::{self as ce, precedence};
use crate::types::connect::ConfigEntry;
use crate::types::{Command, CommandResult};

/// The access a config entry of `kind` named `name` needs (Consul's table): mesh-wide kinds
/// need `mesh` (falling back to `operator`) to write and nothing to read; intentions need
/// the destination's `intentions`; the rest the service's own rights.
fn access<'a>(kind: &str, name: &'a str, write: bool) -> Option<Access<'a>> {
    Some(match (kind, write) {
        (ce::PROXY_DEFAULTS | ce::MESH, true) => Access::MeshWrite,
        (ce::PROXY_DEFAULTS | ce::MESH, false) => return None,
        (ce::SERVICE_INTENTIONS, true) => Access::IntentionWrite(name),
        (ce::SERVICE_INTENTIONS, false) => Access::IntentionRead(name),
        (_, true) => Access::ServiceWrite(name),
        (_, false) => Access::ServiceRead(name),
    })
}

/// Whether the token may do what `access` asks (anything, when it asks nothing).
fn allowed(identity: &crate::acl::Identity, access: Option<Access<'_>>) -> Result<(), ApiError> {
    match access {
        Some(access) => Ok(identity.check(access)?),
        None => Ok(()),
    }
}

/// An unknown kind: Consul's read RPCs refuse it with a 500, its delete handler with a 400.
fn known_kind(kind: &str, read: bool) -> Result<(), ApiError> {
    if ce::KINDS.contains(&kind) {
        return Ok(());
    }
    let message = format!("invalid config entry kind: {kind}");
    Err(match read {
        true => ApiError::Internal(message),
        false => ApiError::BadRequest(message),
    })
}

/// An entry as the API returns it: the stored object plus indexes, and for intentions the
/// server-computed fields of each source.
pub fn entry_json(entry: &ConfigEntry) -> Value {
    let mut map: Map<String, Value> = match serde_json::from_str(&entry.json) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    if entry.kind == ce::SERVICE_INTENTIONS {
        if let Some(Value::Array(sources)) = map.get_mut("Sources") {
            for source in sources.iter_mut().filter_map(Value::as_object_mut) {
                let name = source.get("Name").and_then(Value::as_str).unwrap_or("");
                let precedence = precedence(name, &entry.name);
                source.insert("Precedence".into(), Value::from(precedence));
                source
                    .entry("Type")
                    .or_insert_with(|| Value::String("consul".into()));
            }
        }
    }
    map.insert("CreateIndex".into(), Value::from(entry.indexes.create));
    map.insert("ModifyIndex".into(), Value::from(entry.indexes.modify));
    Value::Object(map)
}

/// Validates and writes one entry (already normalised); `Ok(false)` when `cas` failed.
pub async fn write_entry(
    state: &AppState,
    json: Map<String, Value>,
    cas: Option<u64>,
) -> Result<bool, ApiError> {
    let entry = entry::decode(json)?;
    let command = Command::ConfigEntrySet {
        entry: Box::new(entry),
        cas,
    };
    graph::validate_change(&state.cluster.snapshot(), &command)?;
    match state.cluster.write(command).await?.1 {
        CommandResult::Cas(applied) => Ok(applied),
        CommandResult::Error(error) => Err(error.into()),
        other => Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
}

pub async fn put(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let json = match normalize(super::body::read_json(&state, &call, body).await?) {
        Value::Object(map) => map,
        _ => {
            return Err(ApiError::BadRequest(
                "Request decode failed: the body must be a JSON object".into(),
            ))
        }
    };
    let kind = json.get("Kind").and_then(Value::as_str).unwrap_or("");
    let name = json.get("Name").and_then(Value::as_str).unwrap_or("");
    allowed(
        &*state.authorizer.resolve(call.token().as_deref())?,
        access(kind, name, true),
    )?;
    let cas = call.number("cas")?;
    let applied = write_entry(&state, json, cas).await?;
    Ok(reply::json(&Value::Bool(applied), call.pretty(&state)))
}

pub async fn get_one(
    State(state): State<Arc<AppState>>,
    Path((kind, name)): Path<(String, String)>,
    call: Call,
) -> Result<Response, ApiError> {
    known_kind(&kind, true)?;
    let options = call.read_options(&state)?;
    allowed(
        &*state.authorizer.resolve(call.token().as_deref())?,
        access(&kind, &name, false),
    )?;
    let topics = vec![(entry_topic(&kind, &name), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        match tables.config_entry(&kind, &name) {
            Some(entry) => Ok((entry.indexes.modify, Reply::Json(entry_json(entry)))),
            None if options.index > 0 => {
                Ok((tables.config_kind_index(&kind), Reply::Json(Value::Null)))
            }
            None => Err(ApiError::NotFound(format!(
                "Config entry not found for {kind:?} / {name:?}"
            ))),
        }
    })
    .await
}

pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(kind): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    known_kind(&kind, true)?;
    let options = call.read_options(&state)?;
    let visible = super::reply::Visible::of(&state, &call)?;
    let topics = vec![(kind_topic(&kind), Match::Exact)];
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        let entries: Vec<Value> = tables
            .config_entries_of(&kind)
            .filter(|entry| {
                access(&kind, &entry.name, false).is_none_or(|access| visible.may(access))
            })
            .map(|entry| entry_json(entry))
            .collect();
        Ok((
            tables.config_kind_index(&kind),
            Reply::Json(Value::Array(options.filter_list(entries))),
        ))
    })
    .await
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path((kind, name)): Path<(String, String)>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    known_kind(&kind, false)?;
    allowed(
        &*state.authorizer.resolve(call.token().as_deref())?,
        access(&kind, &name, true),
    )?;
    let cas = call.number("cas")?;
    let command = Command::ConfigEntryDelete { kind, name, cas };
    // A deletion must not strand what depends on the entry (a splitter on a resolver's
    // subsets, an L7 entry on a service-defaults' protocol).
    graph::validate_change(&state.cluster.snapshot(), &command)?;
    let applied = match state.cluster.write(command).await?.1 {
        CommandResult::Cas(applied) => applied,
        other => return Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    };
    // Consul answers `{}` to a plain delete and true/false to a CAS delete.
    let body = match cas {
        Some(_) => Value::Bool(applied),
        None => Value::Object(Map::new()),
    };
    Ok(reply::json(&body, call.pretty(&state)))
}

/// The trust domain, once the CA has bootstrapped.
pub fn trust_domain(tables: &Tables) -> Result<String, ApiError> {
    tables
        .ca()
        .map(|ca| ca.trust_domain())
        .ok_or_else(|| ApiError::Internal("Connect CA is not initialized yet".into()))
}

/// The kinds a discovery chain reads.
const CHAIN_KINDS: &[&str] = &[
    ce::SERVICE_DEFAULTS,
    ce::PROXY_DEFAULTS,
    ce::SERVICE_ROUTER,
    ce::SERVICE_SPLITTER,
    ce::SERVICE_RESOLVER,
];

async fn chain_reply(
    state: &AppState,
    service: String,
    call: Call,
    overrides: Overrides,
) -> Result<Response, ApiError> {
    if service.is_empty() {
        return Err(ApiError::BadRequest("Missing chain name".into()));
    }
    let options = call.read_options(state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::ServiceRead(&service))?;
    let datacenter = call
        .get("compile-dc")
        .filter(|dc| !dc.is_empty())
        .unwrap_or(&state.config.datacenter)
        .to_string();
    let mut topics: Vec<(String, Match)> = CHAIN_KINDS
        .iter()
        .map(|kind| (kind_topic(kind), Match::Exact))
        .collect();
    topics.push((CA_TOPIC.to_string(), Match::Exact));
    reply::blocking(state, &options, topics, |tables| {
        let trust_domain = trust_domain(tables)?;
        let context = Context {
            datacenter: &datacenter,
            trust_domain: &trust_domain,
        };
        let compiled = chain::compile(tables, &service, &context, &overrides)?;
        let index = CHAIN_KINDS
            .iter()
            .map(|kind| tables.config_kind_index(kind))
            .chain(tables.ca().map(|ca| ca.indexes.modify))
            .max()
            .unwrap_or(0);
        let body = serde_json::json!({ "Chain": crate::api::chain::chain(&compiled) });
        Ok((index, Reply::Json(body)))
    })
    .await
}

pub async fn discovery_chain(
    State(state): State<Arc<AppState>>,
    Path(service): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    chain_reply(&state, service, call, Overrides::default()).await
}

pub async fn discovery_chain_post(
    State(state): State<Arc<AppState>>,
    Path(service): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    let body = super::body::read_json(&state, &call, body).await?;
    let body = normalize(body);
    let mut overrides = Overrides::default();
    if let Some(protocol) = body.get("OverrideProtocol").and_then(Value::as_str) {
        overrides.protocol = protocol.to_ascii_lowercase();
    }
    if let Some(timeout) = body.get("OverrideConnectTimeout") {
        let timeout = entry::duration_value("OverrideConnectTimeout", timeout)?;
        overrides.connect_timeout = Some(timeout).filter(|t| !t.is_zero());
    }
    if let Some(mode) = body
        .get("OverrideMeshGateway")
        .and_then(|gateway| gateway.get("Mode"))
        .and_then(Value::as_str)
    {
        if !matches!(mode, "" | "none" | "local" | "remote") {
            return Err(ApiError::BadRequest(
                "Invalid OverrideMeshGateway.Mode parameter".into(),
            ));
        }
        overrides.mesh_gateway_mode = mode.to_string();
    }
    chain_reply(&state, service, call, overrides).await
}
