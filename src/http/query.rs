//! `/v1/query`: prepared queries. Create, list, read, update and delete through Raft with
//! Consul's checks and texts (its `PreparedQuery.Apply` answers every refusal with a 500),
//! and `execute`/`explain` by ID or name, answered from the local state.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use rand::seq::SliceRandom;
use serde::Serialize;
use serde_json::{json, Value};

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply, Visible};
use super::AppState;
use crate::acl::{Access, Identity};
use crate::api::catalog::CheckServiceNodeJson;
use crate::api::decode;
use crate::api::query::{self as wire, QueryIn};
use crate::state::query::{self as queries, QUERIES_TOPIC};
use crate::state::{Match, Tables};
use crate::types::query::{PreparedQuery, QueryOp};
use crate::types::{Command, CommandResult};

const NOT_FOUND: &str = "Query not found";

/// The name a query's ACL rules match (`query_prefix`), if it has one: anonymous queries are
/// guarded by their session instead.
fn acl_name(query: &PreparedQuery) -> Option<&str> {
    (!query.name.is_empty() || query.is_template()).then_some(query.name.as_str())
}

async fn write(state: &AppState, op: QueryOp) -> Result<(), ApiError> {
    match state.cluster.write(Command::PreparedQuery(op)).await? {
        (_, CommandResult::Error(error)) => Err(ApiError::Internal(error.to_string())),
        _ => Ok(()),
    }
}

/// Parses and checks a body into the query with ID `id`, as Consul's `parseQuery` and the
/// template compile in its state store do.
fn parse(value: Value, id: String) -> Result<PreparedQuery, ApiError> {
    let input: QueryIn = serde_json::from_value(decode::canonicalize(value))
        .map_err(|error| ApiError::BadRequest(format!("Request decode failed: {error}")))?;
    let query = input
        .into_query(id)
        .map_err(|error| ApiError::Internal(format!("Invalid prepared query: {error}")))?;
    if query.is_template() {
        queries::compile(&query)
            .map_err(|error| ApiError::Internal(format!("failed compiling template: {error}")))?;
    }
    Ok(query)
}

pub async fn create(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let value = super::body::read_json(&state, &call, body).await?;
    let id = uuid::Uuid::new_v4().to_string();
    let query = parse(value, id.clone())?;
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    if let Some(name) = acl_name(&query) {
        identity.check(Access::QueryWrite(name))?;
    }
    write(&state, QueryOp::Set(Box::new(query))).await?;
    Ok(reply::json(&json!({"ID": id}), call.pretty(&state)))
}

pub async fn update(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let value = super::body::read_json(&state, &call, body).await?;
    let query = parse(value, id.clone())?;
    existing_writable(&state, &call, &id, Some(&query))?;
    write(&state, QueryOp::Set(Box::new(query))).await?;
    // Consul's handler returns nothing: a 200 with an empty body.
    Ok(StatusCode::OK.into_response())
}

pub async fn delete(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    existing_writable(&state, &call, &id, None)?;
    write(&state, QueryOp::Delete { id }).await?;
    Ok(StatusCode::OK.into_response())
}

/// Consul's order for a change to an existing query: write on the new definition's name,
/// the query must exist, then write on its current name.
fn existing_writable(
    state: &AppState,
    call: &Call,
    id: &str,
    new: Option<&PreparedQuery>,
) -> Result<(), ApiError> {
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    if let Some(name) = new.and_then(acl_name) {
        identity.check(Access::QueryWrite(name))?;
    }
    let tables = state.cluster.snapshot();
    let current = tables.prepared_query(id).ok_or_else(|| {
        ApiError::Internal(format!("Cannot modify non-existent prepared query: '{id}'"))
    })?;
    if let Some(name) = acl_name(current) {
        identity.check(Access::QueryWrite(name))?;
    }
    Ok(())
}

/// Whether the caller may see a query, and its token: read on its name for the one, write for
/// the other, as Consul's ACL filter decides. An anonymous query has no name to match, so
/// only a management token sees it (Consul assumes one set it up).
fn visibility(identity: &Identity, query: &PreparedQuery) -> (bool, bool) {
    match acl_name(query) {
        Some(name) => (
            identity.allows(Access::QueryRead(name)),
            identity.allows(Access::QueryWrite(name)),
        ),
        None => {
            let manage = identity.allows(Access::AclWrite);
            (manage, manage)
        }
    }
}

pub async fn list(State(state): State<Arc<AppState>>, call: Call) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let visible = Visible::of(&state, &call)?;
    let topics = vec![(QUERIES_TOPIC.to_string(), Match::Exact)];
    reply::blocking_filtered(&state, &options, topics, &visible, |tables| {
        let listed: Vec<Value> = tables
            .prepared_queries()
            .filter_map(|query| {
                let (read, token) = visibility(visible.identity(), query);
                if !read {
                    visible.left_out();
                }
                read.then(|| wire::query_json(query, token))
            })
            .collect();
        Ok((tables.queries_index(), Reply::Json(Value::Array(listed))))
    })
    .await
}

pub async fn read(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let options = call.read_options(&state)?;
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    let topics = vec![(QUERIES_TOPIC.to_string(), Match::Exact)];
    reply::blocking(&state, &options, topics, |tables| {
        let query = tables
            .prepared_query(&id)
            .ok_or_else(|| ApiError::NotFound(NOT_FOUND.into()))?;
        let (read, token) = visibility(&identity, query);
        if !read {
            identity.check(Access::QueryRead(&query.name))?;
        }
        Ok((
            tables.queries_index(),
            Reply::Json(json!([wire::query_json(query, token)])),
        ))
    })
    .await
}

/// Finds the query `id_or_name` runs (rendered, for a template) or Consul's 404.
fn resolve(tables: &Tables, id_or_name: &str) -> Result<PreparedQuery, ApiError> {
    match queries::resolve(tables, id_or_name) {
        Ok(Some(query)) => Ok(query),
        Ok(None) => Err(ApiError::NotFound(NOT_FOUND.into())),
        Err(error) => Err(ApiError::Internal(error.to_string())),
    }
}

pub async fn execute(
    State(state): State<Arc<AppState>>,
    Path(id_or_name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    let started = std::time::Instant::now();
    call.check_datacenter(&state)?;
    let options = call.read_options(&state)?;
    let limit = match call.get("limit") {
        None | Some("") => None,
        Some(text) => Some(
            text.parse::<usize>()
                .map_err(|error| ApiError::Internal(format!("Bad limit: {error}")))?,
        ),
    };
    let connect = match call.get("connect") {
        None | Some("") => false,
        Some(text) => super::params::go_bool(text).ok_or_else(|| {
            ApiError::Internal(format!(
                "Error parsing 'connect' value: strconv.ParseBool: parsing {text:?}: invalid syntax"
            ))
        })?,
    };
    let contact = state.cluster.read_barrier(options.consistency).await?;
    let tables = state.cluster.snapshot();
    let query = resolve(&tables, &id_or_name)?;
    let visible = Visible::new(
        state
            .authorizer
            .resolve(query_token(&query, &call).as_deref())?,
    );
    // Consul's order: `?near=` first, else the query's own `Near`; `_agent` is this agent.
    let near = call
        .get("near")
        .filter(|near| !near.is_empty())
        .map(str::to_string)
        .or_else(|| (!query.service.near.is_empty()).then(|| query.service.near.clone()));
    let here = answer_here(&state, &tables, &query, connect, &visible, near.as_deref());
    let mut nodes = Nodes::Here(here);
    let mut datacenter = state.config.datacenter.as_str();
    let mut failovers = 0;
    let targets = match nodes.is_empty() {
        true => failover_targets(&state, &query).await,
        false => Vec::new(),
    };
    for target in &targets {
        failovers += 1;
        if let Some(found) = answer_there(&state, &call, &query, connect, target).await {
            if !found.is_empty() {
                (nodes, datacenter) = (Nodes::There(found), target);
                break;
            }
        }
    }
    if let Some(limit) = limit.filter(|limit| *limit > 0) {
        nodes.truncate(limit);
    }
    let body = Executed {
        service: &query.service.service,
        namespace: "",
        nodes,
        dns: DnsJson {
            ttl: &query.dns_ttl,
        },
        datacenter,
        failovers,
    };
    let response = reply::with_headers(
        Reply::JsonBytes(reply::json_body(&body, options.pretty)),
        tables.last_index(),
        contact,
        &options,
        &state,
    );
    metrics::histogram!(crate::telemetry::PREPARED_QUERY_EXECUTE)
        .record(started.elapsed().as_secs_f64() * 1000.0);
    Ok(visible.mark(response))
}

/// The token a query runs with: its own, when it has one, else the caller's.
fn query_token(query: &PreparedQuery, call: &Call) -> Option<String> {
    if query.token.is_empty() {
        call.token()
    } else {
        Some(query.token.clone())
    }
}

/// An execution's answer (Consul's `PreparedQueryExecuteResponse`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct Executed<'a> {
    service: &'a str,
    namespace: &'a str,
    nodes: Nodes<'a>,
    #[serde(rename = "DNS")]
    dns: DnsJson<'a>,
    datacenter: &'a str,
    failovers: u32,
}

#[derive(Serialize)]
struct DnsJson<'a> {
    #[serde(rename = "TTL")]
    ttl: &'a str,
}

/// The instances an execution found: here, borrowed from the snapshot, or as another
/// datacenter answered them.
#[derive(Serialize)]
#[serde(untagged)]
enum Nodes<'a> {
    Here(Vec<CheckServiceNodeJson<'a>>),
    There(Vec<Value>),
}

impl Nodes<'_> {
    fn is_empty(&self) -> bool {
        match self {
            Nodes::Here(nodes) => nodes.is_empty(),
            Nodes::There(nodes) => nodes.is_empty(),
        }
    }

    fn truncate(&mut self, limit: usize) {
        match self {
            Nodes::Here(nodes) => nodes.truncate(limit),
            Nodes::There(nodes) => nodes.truncate(limit),
        }
    }
}

/// The query's instances in this datacenter as `CheckServiceNode`s: shuffled, sorted by
/// distance from `near` when given (that node first), without what the token may not see.
fn answer_here<'t>(
    state: &'t AppState,
    tables: &'t Tables,
    query: &PreparedQuery,
    connect: bool,
    visible: &Visible,
    near: Option<&str>,
) -> Vec<CheckServiceNodeJson<'t>> {
    let mut rows: Vec<_> = queries::instances(tables, query, connect)
        .into_iter()
        .filter(|(node, service, _)| visible.instance(&node.name, &service.name))
        .collect();
    rows.shuffle(&mut rand::thread_rng());
    if let Some(near) = near {
        let node = if near == "_agent" {
            state.config.node_name.as_str()
        } else {
            near
        };
        if let Some(origin) = tables.coordinate(node) {
            super::coordinate::sort_near(&mut rows, origin, tables, |row| &row.0.name);
        }
        if let Some(position) = rows
            .iter()
            .take(10)
            .position(|row| row.0.name.eq_ignore_ascii_case(node))
        {
            rows.swap(0, position);
        }
    }
    let datacenter = &state.config.datacenter;
    rows.into_iter()
        .map(|(node, service, _)| {
            let checks = tables
                .instance_checks(&node.name, &service.id)
                .filter(|check| visible.check(check));
            CheckServiceNodeJson::of(node, service, datacenter, checks)
        })
        .collect()
}

/// The datacenters a query with no instances here fails over to (`state::query`), from the
/// datacenters this agent knows.
async fn failover_targets(state: &AppState, query: &PreparedQuery) -> Vec<String> {
    if !queries::fails_over(query) {
        return Vec::new();
    }
    let known = super::catalog::known_datacenters(state).await;
    queries::failover_targets(query, &state.config.datacenter, &known)
}

/// Runs the query in `datacenter` (its definition travels, as Consul's `ExecuteRemote`
/// sends it): that datacenter's instances, or `None` when it could not be asked.
async fn answer_there(
    state: &AppState,
    call: &Call,
    query: &PreparedQuery,
    connect: bool,
    datacenter: &str,
) -> Option<Vec<Value>> {
    let mut headers = vec![("content-type".to_string(), "application/json".to_string())];
    if let Some(token) = call.token() {
        headers.push(("x-consul-token".to_string(), token));
    }
    let forward = crate::rpc::wire::HttpForward {
        datacenter: datacenter.to_string(),
        method: "POST".into(),
        path_and_query: format!("/v1/internal/query/execute?dc={datacenter}&connect={connect}"),
        headers,
        body: wire::query_json(query, true).to_string().into_bytes(),
        timeout_ms: 10_000,
    };
    match state.cluster.forward_http(forward).await {
        Ok(answer) if answer.status == 200 => {
            let body: Value = serde_json::from_slice(&answer.body).ok()?;
            body["Nodes"].as_array().cloned()
        }
        Ok(answer) => {
            tracing::warn!(
                datacenter,
                status = answer.status,
                "prepared query failover refused"
            );
            None
        }
        Err(error) => {
            tracing::warn!(datacenter, %error, "prepared query failover failed");
            None
        }
    }
}

/// `POST /v1/internal/query/execute`: runs a query definition another datacenter sends when
/// its own instances are gone (its failover), answering `{"Nodes": [...]}`.
pub async fn execute_sent(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let value = super::body::read_json(&state, &call, body).await?;
    let id = value["ID"].as_str().unwrap_or_default().to_string();
    let query = parse(value, id)?;
    let connect = call
        .get("connect")
        .and_then(super::params::go_bool)
        .unwrap_or(false);
    let tables = state.cluster.snapshot();
    let visible = Visible::new(
        state
            .authorizer
            .resolve(query_token(&query, &call).as_deref())?,
    );
    let nodes = answer_here(&state, &tables, &query, connect, &visible, None);
    #[derive(Serialize)]
    struct Sent<'a> {
        #[serde(rename = "Nodes")]
        nodes: Vec<CheckServiceNodeJson<'a>>,
    }
    let body = reply::json_body(&Sent { nodes }, false);
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}

pub async fn explain(
    State(state): State<Arc<AppState>>,
    Path(id_or_name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    call.check_datacenter(&state)?;
    let options = call.read_options(&state)?;
    let contact = state.cluster.read_barrier(options.consistency).await?;
    let tables = state.cluster.snapshot();
    let query = resolve(&tables, &id_or_name)?;
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    let (read, token) = visibility(&identity, &query);
    if !read {
        identity.check(Access::QueryRead(&query.name))?;
    }
    let body = json!({"Query": wire::query_json(&query, token)});
    Ok(reply::with_headers(
        Reply::Json(body),
        tables.last_index(),
        contact,
        &options,
        &state,
    ))
}
