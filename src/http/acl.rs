//! `/v1/acl/*` and `/v1/agent/token/*`: bootstrap, tokens, policies, roles and templated
//! policies, with Consul's status codes and texts (most refusals are 500s with the plain
//! message, as Consul's RPC errors are).
//!
//! A write is checked against the tables it read (links resolved, rules parsed, names and IDs
//! free), then proposed; the state store re-checks what a concurrent write could change.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::response::Response;
use serde_json::Value;

use super::error::ApiError;
use super::params::Call;
use super::reply::{self, Reply};
use super::AppState;
use crate::acl::Access;
use crate::api::acl as wire;
use crate::state::acl::ACL_TOPIC;
use crate::state::{Match, Tables};
use crate::types::acl::{
    AclOp, Policy, Role, Token, ANONYMOUS_ACCESSOR, GLOBAL_MANAGEMENT_ID, RESERVED_PREFIX,
};
use crate::types::{Command, CommandResult};

/// Longest and shortest lifetime a token may be given (Consul's bounds).
const MAX_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
const MIN_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(60);

fn enabled(state: &AppState) -> Result<(), ApiError> {
    match state.authorizer.enabled() {
        true => Ok(()),
        false => Err(ApiError::Unauthorized("ACL support disabled".into())),
    }
}

use crate::api::acl::now_nanos;

/// The prologue of every `/v1/acl/*` handler that needs ACL rights: ACLs on, and the
/// request's token holding `access`.
fn acl_rights(state: &AppState, call: &Call, access: Access<'_>) -> Result<(), ApiError> {
    enabled(state)?;
    Ok(state
        .authorizer
        .authorize(call.token().as_deref(), access)?)
}

fn acl_topics() -> Vec<(String, Match)> {
    vec![(ACL_TOPIC.to_string(), Match::Exact)]
}

async fn write(state: &AppState, op: AclOp) -> Result<CommandResult, ApiError> {
    let (_, result) = state.cluster.write(Command::Acl(op)).await?;
    match result {
        CommandResult::Error(error) => Err(ApiError::Internal(error.to_string())),
        other => Ok(other),
    }
}

async fn body_json(state: &AppState, call: &Call, body: Body) -> Result<Value, ApiError> {
    super::body::read_json(state, call, body).await
}

fn is_uuid(text: &str) -> bool {
    uuid::Uuid::parse_str(text).is_ok() && text.len() == 36
}

/// `PUT /v1/acl/bootstrap`: the first management token, once (again after a reset through
/// `<data_dir>/acl-bootstrap-reset`, read on the agent that takes the request).
pub async fn bootstrap(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let body = body_json(&state, &call, body).await.unwrap_or(Value::Null);
    let secret = match body.get("BootstrapSecret").and_then(Value::as_str) {
        Some(secret) if !secret.is_empty() => {
            if !is_uuid(secret) {
                return Err(ApiError::Internal(
                    "Failed to parse bootstrap secret: the secret must be a UUID".into(),
                ));
            }
            secret.to_string()
        }
        _ => uuid::Uuid::new_v4().to_string(),
    };
    let tables = state.cluster.snapshot();
    if tables.acl_token_by_secret(&secret).is_some() {
        return Err(ApiError::Internal(
            "Provided token cannot be used because a token with that secret already exists.".into(),
        ));
    }
    let done = tables.acl_bootstrap_index();
    let reset_file = state
        .config
        .data_dir
        .as_ref()
        .map(|dir| dir.join("acl-bootstrap-reset"));
    let mut reset_index = 0;
    if done != 0 {
        let written = reset_file
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok());
        match written {
            None => {
                return Err(ApiError::Forbidden(format!(
                    "Permission denied: ACL bootstrap no longer allowed (reset index: {done})"
                )))
            }
            Some(text) => match text.trim().parse::<u64>() {
                Ok(specified) if specified == done => reset_index = done,
                _ => {
                    return Err(ApiError::Internal(format!(
                        "Invalid bootstrap reset index (specified {}, reset index: {done})",
                        text.trim()
                    )))
                }
            },
        }
    }
    let token = wire::system_token(
        uuid::Uuid::new_v4().to_string(),
        secret,
        "Bootstrap Token (Global Management)",
        vec![GLOBAL_MANAGEMENT_ID.into()],
    );
    let accessor = token.accessor_id.clone();
    let (_, result) = state
        .cluster
        .write(Command::Acl(AclOp::Bootstrap {
            token: Box::new(token),
            reset_index,
        }))
        .await?;
    match result {
        CommandResult::Cas(true) => {}
        CommandResult::Error(error) => {
            return Err(ApiError::Forbidden(format!("Permission denied: {error}")))
        }
        other => return Err(ApiError::Internal(format!("unexpected result {other:?}"))),
    }
    if reset_index != 0 {
        if let Some(path) = &reset_file {
            let _ = std::fs::remove_file(path);
        }
    }
    let tables = state.cluster.snapshot();
    let stored = tables
        .acl_token(&accessor)
        .ok_or_else(|| ApiError::Internal("bootstrap token missing after write".into()))?;
    let mut shown = wire::token(&tables, stored, true);
    shown["ID"] = stored.secret_id.clone().into();
    Ok(reply::json(&shown, call.pretty(&state)))
}

/// The expiration a create asks for, as (RFC 3339, Unix nanoseconds); ("", 0) for none.
fn expiration(body: &wire::GrantsIn, now: i64) -> Result<(String, i64), ApiError> {
    let ttl = match &body.expiration_ttl {
        Value::Null => None,
        Value::String(text) if text.is_empty() => None,
        Value::String(text) => Some(crate::types::duration::parse_go_duration(text).map_err(
            |error| ApiError::BadRequest(format!("Request decode failed: ExpirationTTL: {error}")),
        )?),
        Value::Number(number) => number
            .as_u64()
            .filter(|n| *n > 0)
            .map(std::time::Duration::from_nanos),
        _ => {
            return Err(ApiError::BadRequest(
                "Request decode failed: ExpirationTTL: invalid duration".into(),
            ))
        }
    };
    let time = body
        .expiration_time
        .as_deref()
        .filter(|text| !text.is_empty());
    let at = match (ttl, time) {
        (Some(_), Some(_)) => {
            return Err(ApiError::Internal(
                "Token Expiration TTL and Expiration Time cannot both be set".into(),
            ))
        }
        (None, None) => return Ok((String::new(), 0)),
        (Some(ttl), None) => {
            if ttl < MIN_TOKEN_TTL || ttl > MAX_TOKEN_TTL {
                return Err(ApiError::Internal(format!(
                    "Token Expiration TTL '{}' should be between 1m0s and 24h0m0s",
                    crate::types::duration::format_go_duration(ttl)
                )));
            }
            now.saturating_add(i64::try_from(ttl.as_nanos()).unwrap_or(i64::MAX))
        }
        (None, Some(text)) => {
            let at = wire::parse_rfc3339(text).ok_or_else(|| {
                ApiError::BadRequest(format!(
                    "Request decode failed: ExpirationTime: invalid time {text:?}"
                ))
            })?;
            if at <= now {
                return Err(ApiError::Internal(
                    "ExpirationTime cannot be in the past".into(),
                ));
            }
            if at - now > MAX_TOKEN_TTL.as_nanos() as i64 {
                return Err(ApiError::Internal(format!(
                    "ExpirationTime cannot be more than 24h0m0s in the future (was {text})"
                )));
            }
            at
        }
    };
    Ok((wire::format_rfc3339_nanos(at), at))
}

fn invalid(error: wire::InvalidGrant) -> ApiError {
    ApiError::Internal(error.0)
}

fn decode(body: Value) -> Result<wire::GrantsIn, ApiError> {
    wire::decode_grants(body).map_err(|error| ApiError::BadRequest(error.to_string()))
}

/// Checks a client-chosen ID: a UUID, not reserved.
fn chosen_id(field: &str, id: &str) -> Result<(), ApiError> {
    if !is_uuid(id) {
        return Err(ApiError::Internal(format!(
            "Invalid Token: {field} must be a UUID"
        )));
    }
    if id.starts_with(RESERVED_PREFIX) {
        return Err(ApiError::Internal(format!(
            "Invalid Token: UUIDs with the prefix {RESERVED_PREFIX:?} are reserved"
        )));
    }
    Ok(())
}

/// The token JSON after a write: read back so the indexes are the stored ones.
fn token_reply(state: &AppState, call: &Call, accessor: &str) -> Result<Response, ApiError> {
    let tables = state.cluster.snapshot();
    let stored = tables
        .acl_token(accessor)
        .ok_or_else(|| ApiError::Internal("token missing after write".into()))?;
    Ok(reply::json(
        &wire::token(&tables, stored, true),
        call.pretty(state),
    ))
}

/// `PUT /v1/acl/token`.
pub async fn create_token(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclWrite)?;
    let body = decode(body_json(&state, &call, body).await?)?;
    if !body.auth_method.is_empty() {
        return Err(ApiError::Internal(
            "AuthMethod field is disallowed outside of login".into(),
        ));
    }
    let tables = state.cluster.snapshot();
    let accessor = match body.accessor_id.as_str() {
        "" => uuid::Uuid::new_v4().to_string(),
        id => {
            chosen_id("AccessorID", id)?;
            if tables.acl_token(id).is_some() {
                return Err(ApiError::Internal(
                    "Invalid Token: AccessorID is already in use".into(),
                ));
            }
            id.to_string()
        }
    };
    let secret = match body.secret_id.as_str() {
        "" => uuid::Uuid::new_v4().to_string(),
        id => {
            chosen_id("SecretID", id)?;
            if tables.acl_token_by_secret(id).is_some() {
                return Err(ApiError::Internal(
                    "Invalid Token: SecretID is already in use".into(),
                ));
            }
            id.to_string()
        }
    };
    let (grants, roles) = body.resolve(&tables).map_err(invalid)?;
    if body.local
        && grants
            .service_identities
            .iter()
            .any(|identity| !identity.datacenters.is_empty())
    {
        return Err(ApiError::Internal(
            "Service identity datacenters cannot be set on local tokens".into(),
        ));
    }
    let now = now_nanos();
    let (expiration_time, expires_at_nanos) = expiration(&body, now)?;
    let mut token = Token {
        accessor_id: accessor.clone(),
        secret_id: secret,
        description: body.description.clone(),
        grants,
        roles,
        local: body.local,
        expiration_time,
        expires_at_nanos,
        create_time: wire::format_rfc3339_nanos(now),
        ..Token::default()
    };
    wire::hash_token(&mut token);
    match write(
        &state,
        AclOp::TokenSet {
            token: Box::new(token),
            cas: Some(0),
        },
    )
    .await?
    {
        CommandResult::Cas(true) => token_reply(&state, &call, &accessor),
        _ => Err(ApiError::Internal(
            "Invalid Token: AccessorID is already in use".into(),
        )),
    }
}

/// `PUT /v1/acl/token/:AccessorID`: a full replacement of what the token grants.
pub async fn update_token(
    State(state): State<Arc<AppState>>,
    Path(accessor): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclWrite)?;
    let body = decode(body_json(&state, &call, body).await?)?;
    if !body.accessor_id.is_empty() && body.accessor_id != accessor {
        return Err(ApiError::BadRequest(
            "Token Accessor ID in URL and payload do not match".into(),
        ));
    }
    let tables = state.cluster.snapshot();
    let current = tables
        .acl_token(&accessor)
        .ok_or_else(|| ApiError::Internal(format!("Cannot find token {accessor:?}")))?
        .clone();
    if !body.secret_id.is_empty() && body.secret_id != current.secret_id {
        return Err(ApiError::Internal(
            "Changing a token's SecretID is not permitted".into(),
        ));
    }
    if body.local != current.local {
        return Err(ApiError::Internal(format!(
            "Cannot toggle local mode of {accessor}"
        )));
    }
    let (grants, roles) = body.resolve(&tables).map_err(invalid)?;
    let mut token = Token {
        description: body.description.clone(),
        grants,
        roles,
        ..(*current).clone()
    };
    wire::hash_token(&mut token);
    let cas = Some(current.indexes.modify);
    match write(
        &state,
        AclOp::TokenSet {
            token: Box::new(token),
            cas,
        },
    )
    .await?
    {
        CommandResult::Cas(true) => token_reply(&state, &call, &accessor),
        _ => Err(ApiError::Internal(
            "the token changed while it was being updated; try again".into(),
        )),
    }
}

/// `PUT /v1/acl/token/:AccessorID/clone`: a new token granting the same, described anew.
pub async fn clone_token(
    State(state): State<Arc<AppState>>,
    Path(accessor): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclWrite)?;
    let body = body_json(&state, &call, body).await.unwrap_or(Value::Null);
    let tables = state.cluster.snapshot();
    let source = tables
        .acl_token(&accessor)
        .ok_or_else(|| ApiError::Internal(format!("Cannot find token {accessor:?}")))?
        .clone();
    let now = now_nanos();
    let mut token = Token {
        accessor_id: uuid::Uuid::new_v4().to_string(),
        secret_id: uuid::Uuid::new_v4().to_string(),
        description: body
            .get("Description")
            .and_then(Value::as_str)
            .map_or_else(|| source.description.clone(), str::to_string),
        create_time: wire::format_rfc3339_nanos(now),
        ..(*source).clone()
    };
    wire::hash_token(&mut token);
    let new_accessor = token.accessor_id.clone();
    match write(
        &state,
        AclOp::TokenSet {
            token: Box::new(token),
            cas: Some(0),
        },
    )
    .await?
    {
        CommandResult::Cas(true) => token_reply(&state, &call, &new_accessor),
        _ => Err(ApiError::Internal(
            "cloning the token failed; try again".into(),
        )),
    }
}

/// `GET /v1/acl/token/:AccessorID`.
pub async fn read_token(
    State(state): State<Arc<AppState>>,
    Path(accessor): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let options = call.read_options(&state)?;
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    identity.check(Access::AclRead)?;
    let secrets = identity.allows(Access::AclWrite);
    reply::blocking(&state, &options, acl_topics(), |tables| {
        let token = tables
            .acl_token(&accessor)
            .ok_or_else(|| ApiError::Forbidden("token does not exist: ACL not found".into()))?;
        Ok((
            tables.acl_index(),
            Reply::Json(wire::token(tables, token, secrets)),
        ))
    })
    .await
}

/// `GET /v1/acl/token/self`: the request's own token; needs no rule.
pub async fn token_self(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let tables = state.cluster.snapshot();
    let secret = call
        .token()
        .filter(|token| !token.is_empty())
        .or_else(|| state.authorizer.agent_tokens().default);
    let secret = secret
        .as_deref()
        .unwrap_or(crate::types::acl::ANONYMOUS_SECRET);
    let token = tables
        .acl_token_by_secret(secret)
        .filter(|token| !token.expired(now_nanos()))
        .ok_or_else(|| ApiError::Forbidden("token does not exist: ACL not found".into()))?;
    Ok(reply::json(
        &wire::token(&tables, token, true),
        call.pretty(&state),
    ))
}

/// `DELETE /v1/acl/token/:AccessorID`.
pub async fn delete_token(
    State(state): State<Arc<AppState>>,
    Path(accessor): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    identity.check(Access::AclWrite)?;
    if accessor == ANONYMOUS_ACCESSOR {
        return Err(ApiError::Internal(
            "Delete operation not permitted on the anonymous token".into(),
        ));
    }
    if identity.accessor() == Some(accessor.as_str()) {
        return Err(ApiError::Internal(
            "Deletion of the request's authorization token is not permitted".into(),
        ));
    }
    if state.cluster.snapshot().acl_token(&accessor).is_none() {
        return Err(ApiError::NotFound("Cannot find token to delete".into()));
    }
    write(
        &state,
        AclOp::TokenDelete {
            accessor_id: accessor,
        },
    )
    .await?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

/// `GET /v1/acl/tokens[?policy=&role=]`.
pub async fn list_tokens(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let options = call.read_options(&state)?;
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    identity.check(Access::AclRead)?;
    let secrets = identity.allows(Access::AclWrite);
    let policy = call.get("policy").unwrap_or("").to_string();
    let role = call.get("role").unwrap_or("").to_string();
    reply::blocking(&state, &options, acl_topics(), |tables| {
        let tokens: Vec<Value> = tables
            .acl_tokens()
            .filter(|token| policy.is_empty() || token.grants.policies.contains(&policy))
            .filter(|token| role.is_empty() || token.roles.contains(&role))
            .map(|token| wire::token(tables, token, secrets))
            .collect();
        Ok((tables.acl_index(), Reply::Json(tokens.into())))
    })
    .await
}

fn policy_write(tables: &Tables, body: &wire::PolicyIn, id: &str) -> Result<Policy, ApiError> {
    if !wire::valid_policy_name(&body.name)
        || body.name.starts_with("builtin/") && id != crate::types::acl::GLOBAL_READ_ONLY_ID
    {
        return Err(ApiError::Internal(
            "Invalid Policy: invalid Name. Only alphanumeric characters, '-', '_' and '/' are allowed (and not a 'builtin/' prefix)"
                .into(),
        ));
    }
    if let Some(other) = tables.acl_policy_by_name(&body.name) {
        if other.id != id {
            return Err(ApiError::Internal(format!(
                "Invalid Policy: A Policy with Name {:?} already exists",
                body.name
            )));
        }
    }
    crate::acl::rules::parse(&body.rules).map_err(|error| ApiError::Internal(error.to_string()))?;
    let mut policy = Policy {
        id: id.to_string(),
        name: body.name.clone(),
        description: body.description.clone(),
        rules: body.rules.clone(),
        datacenters: body.datacenters.clone(),
        ..Policy::default()
    };
    wire::hash_policy(&mut policy);
    Ok(policy)
}

fn policy_reply(state: &AppState, call: &Call, id: &str) -> Result<Response, ApiError> {
    let tables = state.cluster.snapshot();
    let stored = tables
        .acl_policy(id)
        .ok_or_else(|| ApiError::Internal("policy missing after write".into()))?;
    Ok(reply::json(&wire::policy(stored), call.pretty(state)))
}

/// `PUT /v1/acl/policy`.
pub async fn create_policy(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclWrite)?;
    let body = wire::decode_policy(body_json(&state, &call, body).await?)
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    if !body.id.is_empty() {
        return Err(ApiError::BadRequest(
            "Cannot specify the ID when creating a new policy".into(),
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let policy = policy_write(&state.cluster.snapshot(), &body, &id)?;
    write(
        &state,
        AclOp::PolicySet {
            policy: Box::new(policy),
            cas: Some(0),
        },
    )
    .await?;
    policy_reply(&state, &call, &id)
}

/// `PUT /v1/acl/policy/:id`.
pub async fn update_policy(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclWrite)?;
    let body = wire::decode_policy(body_json(&state, &call, body).await?)
        .map_err(|error| ApiError::BadRequest(error.to_string()))?;
    if !body.id.is_empty() && body.id != id {
        return Err(ApiError::BadRequest(
            "Policy ID in URL and payload do not match".into(),
        ));
    }
    let tables = state.cluster.snapshot();
    let current = tables
        .acl_policy(&id)
        .ok_or_else(|| ApiError::Internal(format!("Cannot find policy {id:?}")))?;
    if id == GLOBAL_MANAGEMENT_ID
        && (body.rules != current.rules || body.datacenters != current.datacenters)
    {
        return Err(ApiError::Internal(
            "Changing the Rules for the builtin global-management policy is not permitted".into(),
        ));
    }
    let mut policy = policy_write(&tables, &body, &id)?;
    policy.indexes = current.indexes;
    let cas = Some(current.indexes.modify);
    match write(
        &state,
        AclOp::PolicySet {
            policy: Box::new(policy),
            cas,
        },
    )
    .await?
    {
        CommandResult::Cas(true) => policy_reply(&state, &call, &id),
        _ => Err(ApiError::Internal(
            "the policy changed while it was being updated; try again".into(),
        )),
    }
}

fn missing(kind: &str) -> ApiError {
    ApiError::NotFound(format!("Requested {kind} does not exist: ACL not found"))
}

/// `GET /v1/acl/policy/:id`.
pub async fn read_policy(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    read_policy_by(state, call, id, false).await
}

/// `GET /v1/acl/policy/name/:name`.
pub async fn read_policy_by_name(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    read_policy_by(state, call, name, true).await
}

async fn read_policy_by(
    state: Arc<AppState>,
    call: Call,
    key: String,
    by_name: bool,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::AclRead)?;
    reply::blocking(&state, &options, acl_topics(), |tables| {
        let policy = match by_name {
            true => tables.acl_policy_by_name(&key),
            false => tables.acl_policy(&key),
        }
        .ok_or_else(|| missing("policy"))?;
        Ok((tables.acl_index(), Reply::Json(wire::policy(policy))))
    })
    .await
}

/// `DELETE /v1/acl/policy/:id`.
pub async fn delete_policy(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclWrite)?;
    if id == GLOBAL_MANAGEMENT_ID {
        return Err(ApiError::Internal(
            "Delete operation not permitted on the builtin global-management policy".into(),
        ));
    }
    if state.cluster.snapshot().acl_policy(&id).is_none() {
        return Err(ApiError::NotFound("Cannot find policy to delete".into()));
    }
    write(&state, AclOp::PolicyDelete { id }).await?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

/// `GET /v1/acl/policies`.
pub async fn list_policies(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::AclRead)?;
    reply::blocking(&state, &options, acl_topics(), |tables| {
        let policies: Vec<Value> = tables
            .acl_policies()
            .map(|policy| wire::policy_stub(policy))
            .collect();
        Ok((tables.acl_index(), Reply::Json(policies.into())))
    })
    .await
}

fn role_write(tables: &Tables, body: &wire::GrantsIn, id: &str) -> Result<Role, ApiError> {
    if !wire::valid_role_name(&body.name) {
        return Err(ApiError::Internal(
            "Invalid Role: invalid Name. Only alphanumeric characters, '-' and '_' are allowed"
                .into(),
        ));
    }
    if let Some(other) = tables.acl_role_by_name(&body.name) {
        if other.id != id {
            return Err(ApiError::Internal(format!(
                "Invalid Role: A Role with Name {:?} already exists",
                body.name
            )));
        }
    }
    let (grants, _) = body.resolve(tables).map_err(invalid)?;
    let mut role = Role {
        id: id.to_string(),
        name: body.name.clone(),
        description: body.description.clone(),
        grants,
        ..Role::default()
    };
    wire::hash_role(&mut role);
    Ok(role)
}

fn role_reply(state: &AppState, call: &Call, id: &str) -> Result<Response, ApiError> {
    let tables = state.cluster.snapshot();
    let stored = tables
        .acl_role(id)
        .ok_or_else(|| ApiError::Internal("role missing after write".into()))?;
    Ok(reply::json(
        &wire::role(&tables, stored),
        call.pretty(state),
    ))
}

/// `PUT /v1/acl/role`.
pub async fn create_role(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclWrite)?;
    let body = decode(body_json(&state, &call, body).await?)?;
    if !body.id.is_empty() {
        return Err(ApiError::BadRequest(
            "Cannot specify the ID when creating a new role".into(),
        ));
    }
    let id = uuid::Uuid::new_v4().to_string();
    let role = role_write(&state.cluster.snapshot(), &body, &id)?;
    write(
        &state,
        AclOp::RoleSet {
            role: Box::new(role),
            cas: Some(0),
        },
    )
    .await?;
    role_reply(&state, &call, &id)
}

/// `PUT /v1/acl/role/:id`.
pub async fn update_role(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclWrite)?;
    let body = decode(body_json(&state, &call, body).await?)?;
    if !body.id.is_empty() && body.id != id {
        return Err(ApiError::BadRequest(
            "Role ID in URL and payload do not match".into(),
        ));
    }
    let tables = state.cluster.snapshot();
    let current = tables
        .acl_role(&id)
        .ok_or_else(|| ApiError::Internal(format!("Cannot find role {id:?}")))?;
    let role = role_write(&tables, &body, &id)?;
    let cas = Some(current.indexes.modify);
    match write(
        &state,
        AclOp::RoleSet {
            role: Box::new(role),
            cas,
        },
    )
    .await?
    {
        CommandResult::Cas(true) => role_reply(&state, &call, &id),
        _ => Err(ApiError::Internal(
            "the role changed while it was being updated; try again".into(),
        )),
    }
}

/// `GET /v1/acl/role/:id`.
pub async fn read_role(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    read_role_by(state, call, id, false).await
}

/// `GET /v1/acl/role/name/:name`.
pub async fn read_role_by_name(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    read_role_by(state, call, name, true).await
}

async fn read_role_by(
    state: Arc<AppState>,
    call: Call,
    key: String,
    by_name: bool,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::AclRead)?;
    reply::blocking(&state, &options, acl_topics(), |tables| {
        let role = match by_name {
            true => tables.acl_role_by_name(&key),
            false => tables.acl_role(&key),
        }
        .ok_or_else(|| missing("role"))?;
        Ok((tables.acl_index(), Reply::Json(wire::role(tables, role))))
    })
    .await
}

/// `DELETE /v1/acl/role/:id`.
pub async fn delete_role(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclWrite)?;
    if state.cluster.snapshot().acl_role(&id).is_none() {
        return Err(ApiError::NotFound("Cannot find role to delete".into()));
    }
    write(&state, AclOp::RoleDelete { id }).await?;
    Ok(reply::json(&Value::Bool(true), call.pretty(&state)))
}

/// `GET /v1/acl/roles[?policy=]`.
pub async fn list_roles(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    let options = call.read_options(&state)?;
    state
        .authorizer
        .authorize(call.token().as_deref(), Access::AclRead)?;
    let policy = call.get("policy").unwrap_or("").to_string();
    reply::blocking(&state, &options, acl_topics(), |tables| {
        let roles: Vec<Value> = tables
            .acl_roles()
            .filter(|role| policy.is_empty() || role.grants.policies.contains(&policy))
            .map(|role| wire::role(tables, role))
            .collect();
        Ok((tables.acl_index(), Reply::Json(roles.into())))
    })
    .await
}

/// `GET /v1/acl/templated-policies`.
pub async fn templated_policies(
    State(state): State<Arc<AppState>>,
    call: Call,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclRead)?;
    let mut out = serde_json::Map::new();
    for (name, _, needs_name, description) in wire::TEMPLATES {
        out.insert(
            name.to_string(),
            template_json(name, needs_name, description),
        );
    }
    Ok(reply::json(&Value::Object(out), call.pretty(&state)))
}

fn template(name: &str) -> Result<(&'static str, bool, &'static str), ApiError> {
    wire::TEMPLATES
        .iter()
        .find(|(template, ..)| *template == name)
        .map(|(template, _, needs_name, description)| (*template, *needs_name, *description))
        .ok_or_else(|| ApiError::NotFound(format!("Invalid templated policy Name: {name}")))
}

fn template_json(name: &str, needs_name: bool, description: &str) -> Value {
    let schema = match needs_name {
        true => "{\n  \"type\": \"object\",\n  \"properties\": {\n    \"name\": { \"type\": \"string\", \"$ref\": \"#/definitions/min-length-one\" }\n  },\n  \"required\": [\"name\"]\n}",
        false => "",
    };
    serde_json::json!({"TemplateName": name, "Schema": schema, "Description": description})
}

/// `GET /v1/acl/templated-policy/name/:name`.
pub async fn templated_policy(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclRead)?;
    let (name, needs_name, description) = template(&name)?;
    Ok(reply::json(
        &template_json(name, needs_name, description),
        call.pretty(&state),
    ))
}

/// `POST /v1/acl/templated-policy/preview/:name` with `{"Name": "..."}`: the policy the
/// template makes for that name.
pub async fn preview_templated_policy(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    acl_rights(&state, &call, Access::AclRead)?;
    let (template, needs_name, _) = template(&name)?;
    let body = body_json(&state, &call, body).await.unwrap_or(Value::Null);
    let variable = body.get("Name").and_then(Value::as_str).unwrap_or("");
    if needs_name && variable.is_empty() {
        return Err(ApiError::BadRequest(format!(
            "Failed to validate templated policy variables for {template}: name is required"
        )));
    }
    let rules = wire::template_rules_text(template, variable);
    let mut policy = Policy {
        name: format!(
            "synthetic-policy-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..16]
        ),
        description: format!("synthetic policy generated from templated policy: {template}"),
        rules,
        ..Policy::default()
    };
    wire::hash_policy(&mut policy);
    Ok(reply::json(&wire::policy(&policy), call.pretty(&state)))
}

/// Most authorizations one `/v1/internal/acl/authorize` call may ask.
const MAX_AUTHORIZATIONS: usize = 64;

/// `POST /v1/internal/acl/authorize` (what the UI asks to decide what to show): each
/// `{Resource, Segment, Access}` answered with `Allow` for the request's token.
pub async fn authorize_many(
    State(state): State<Arc<AppState>>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    let identity = state.authorizer.resolve(call.token().as_deref())?;
    let body = body_json(&state, &call, body).await?;
    let Value::Array(requests) = body else {
        return Err(ApiError::BadRequest(
            "Request decode failed: the body must be a JSON array".into(),
        ));
    };
    if requests.len() > MAX_AUTHORIZATIONS {
        return Err(ApiError::BadRequest(format!(
            "Refusing to process more than {MAX_AUTHORIZATIONS} authorizations at once"
        )));
    }
    let mut answers = Vec::with_capacity(requests.len());
    for mut request in requests {
        let text = |key: &str| {
            request
                .get(key)
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_string()
        };
        let (resource, segment, level) = (text("Resource"), text("Segment"), text("Access"));
        let access = requested_access(&resource, &segment, &level)?;
        request["Allow"] = Value::Bool(identity.allows(access));
        answers.push(request);
    }
    Ok(reply::json(&Value::Array(answers), call.pretty(&state)))
}

/// One authorization the UI asks, as the authorizer check it names.
fn requested_access<'a>(
    resource: &str,
    segment: &'a str,
    level: &str,
) -> Result<Access<'a>, ApiError> {
    let invalid_level = || {
        ApiError::BadRequest(format!(
            "Invalid access level for {resource} resource: {level}"
        ))
    };
    let read_write = |read: Access<'a>, write: Access<'a>| match level {
        "read" => Ok(read),
        "write" => Ok(write),
        _ => Err(invalid_level()),
    };
    match resource {
        "acl" => read_write(Access::AclRead, Access::AclWrite),
        "agent" => read_write(Access::AgentRead(segment), Access::AgentWrite(segment)),
        "event" => read_write(Access::EventRead(segment), Access::EventWrite(segment)),
        "intention" => read_write(
            Access::IntentionRead(segment),
            Access::IntentionWrite(segment),
        ),
        "key" => match level {
            "list" => Ok(Access::KeyList(segment)),
            "write-prefix" => Ok(Access::KeyWritePrefix(segment)),
            _ => read_write(Access::KeyRead(segment), Access::KeyWrite(segment)),
        },
        "keyring" => read_write(Access::KeyringRead, Access::KeyringWrite),
        "mesh" => read_write(Access::MeshRead, Access::MeshWrite),
        "node" => read_write(Access::NodeRead(segment), Access::NodeWrite(segment)),
        "operator" => read_write(Access::OperatorRead, Access::OperatorWrite),
        "peering" => read_write(Access::PeeringRead, Access::PeeringWrite),
        "query" => read_write(Access::QueryRead(segment), Access::QueryWrite(segment)),
        "service" => read_write(Access::ServiceRead(segment), Access::ServiceWrite(segment)),
        "session" => read_write(Access::SessionRead(segment), Access::SessionWrite(segment)),
        _ => Err(ApiError::BadRequest(format!(
            "Invalid ACL resource requested: {resource:?}"
        ))),
    }
}

/// `PUT /v1/agent/token/:kind` with `{"Token": "..."}`: replaces one of the agent's tokens.
pub async fn set_agent_token(
    State(state): State<Arc<AppState>>,
    Path(kind): Path<String>,
    call: Call,
    body: Body,
) -> Result<Response, ApiError> {
    enabled(&state)?;
    state.authorizer.authorize(
        call.token().as_deref(),
        Access::AgentWrite(&state.config.node_name),
    )?;
    let body = body_json(&state, &call, body).await?;
    let token = body
        .get("Token")
        .and_then(Value::as_str)
        .map(str::to_string);
    match state.authorizer.set_agent_token(&kind, token) {
        None => Err(ApiError::NotFound(format!("Token {kind:?} is unknown"))),
        Some(Err(error)) => Err(ApiError::Internal(format!(
            "Failed to persist the agent's tokens: {error}"
        ))),
        Some(Ok(())) => {
            tracing::info!(kind = %kind, "agent ACL token updated");
            Ok(reply::json(&Value::Null, false))
        }
    }
}
