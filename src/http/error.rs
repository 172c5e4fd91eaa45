//! The one place errors become HTTP responses, with Consul's status codes and plain-text
//! bodies. Each error is logged here, once.
//!
//! Every typed error a handler meets has its `From` impl below, and that impl is where its
//! status code is chosen; handlers propagate with `?`. Handlers build an `ApiError` directly
//! only for what they compose themselves (a malformed query parameter, a missing resource).

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::agent::AgentError;
use crate::api::DecodeError;
use crate::connect::ca_config::CaConfigError;
use crate::connect::EntryError;
use crate::filter::FilterError;
use crate::rpc::{CaError, RpcError, SignError};
use crate::types::ApplyError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    PayloadTooLarge(String),
    RequestTimeout(String),
    TooManyRequests(String),
    /// 403 with Consul's text (`Permission denied...`, `ACL not found`).
    Forbidden(String),
    /// 401: `ACL support disabled`.
    Unauthorized(String),
    /// A transaction that rolled back: 409 with a JSON body of errors.
    Conflict(Value),
    Internal(String),
}

/// Consul answers a server-side failure to reach or be the leader with a 500 and its message
/// ("No cluster leader"); until writes are forwarded between servers, a follower asked for a
/// leader's work says who the leader is.
impl From<crate::api::kv::ValueUnreadable> for ApiError {
    fn from(error: crate::api::kv::ValueUnreadable) -> ApiError {
        ApiError::Internal(error.0)
    }
}

impl From<RpcError> for ApiError {
    fn from(error: RpcError) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

impl From<CaError> for ApiError {
    fn from(error: CaError) -> ApiError {
        match error {
            // Consul's RPC refuses a configuration it cannot use with a 500.
            CaError::Invalid(message) => ApiError::Internal(message),
            CaError::Unavailable(message) => ApiError::Internal(message),
            CaError::Rpc(error) => error.into(),
        }
    }
}

impl From<SignError> for ApiError {
    fn from(error: SignError) -> ApiError {
        match error {
            SignError::Invalid(message) => ApiError::BadRequest(message),
            SignError::RateLimited => ApiError::TooManyRequests(error.to_string()),
            SignError::Unavailable(message) => ApiError::Internal(message),
            SignError::Rpc(error) => error.into(),
        }
    }
}

/// A request body or field that breaks Consul's wire rules is the client's error (400); a
/// well-formed one this agent's policy refuses is Consul's 500.
impl From<DecodeError> for ApiError {
    fn from(error: DecodeError) -> ApiError {
        match error.is_refused_by_agent() {
            true => ApiError::Internal(error.to_string()),
            false => ApiError::BadRequest(error.to_string()),
        }
    }
}

/// An invalid `?filter=` expression: a 500 with the evaluator's message, as Consul answers
/// (clients tell it apart by that status).
impl From<FilterError> for ApiError {
    fn from(error: FilterError) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

/// A chain that does not compile: Consul answers the discovery-chain endpoint with a 500.
impl From<crate::connect::chain::ChainError> for ApiError {
    fn from(error: crate::connect::chain::ChainError) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

/// A body that is no config entry: 400 `Request decoding failed: ...`; an entry that breaks a
/// rule, alone or across entries: Consul's 500 (its RPC's validation error), same text.
impl From<EntryError> for ApiError {
    fn from(error: EntryError) -> ApiError {
        match error.is_decoding() {
            true => ApiError::BadRequest(format!("Request decoding failed: {error}")),
            false => ApiError::Internal(error.to_string()),
        }
    }
}

/// An invalid CA configuration: Consul's 500 (its RPC's validation error).
impl From<CaConfigError> for ApiError {
    fn from(error: CaConfigError) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

/// A refused registration is the client's (400); a check for a service or a TTL update for a
/// check the agent does not have is Consul's 404; a TTL update of a check that is not a TTL
/// check, a failed reload or maintenance check is the agent's 500. A
/// definition that cannot be stored for restarts answers 400 like the rest of a registration,
/// as it always has here (Consul answers 500).
impl From<AgentError> for ApiError {
    fn from(error: AgentError) -> ApiError {
        match error {
            AgentError::Definition(error) => error.into(),
            AgentError::SidecarPortsDisabled
            | AgentError::SidecarPortsExhausted { .. }
            | AgentError::Persist(_) => ApiError::BadRequest(error.to_string()),
            AgentError::UnknownService(_) | AgentError::UnknownCheck(_) => {
                ApiError::NotFound(error.to_string())
            }
            AgentError::NotTtlCheck(_)
            | AgentError::Restored { .. }
            | AgentError::Config(_)
            | AgentError::Tls(_)
            | AgentError::Internal(_) => ApiError::Internal(error.to_string()),
        }
    }
}

/// A session body that does not decode is the client's 400; one Consul's Session RPC refuses
/// (a TTL out of bounds, an unknown behavior) is its 500.
impl From<crate::api::session::CreateError> for ApiError {
    fn from(error: crate::api::session::CreateError) -> ApiError {
        match error {
            crate::api::session::CreateError::Decode(error) => error.into(),
            crate::api::session::CreateError::Invalid(message) => ApiError::Internal(message),
        }
    }
}

/// A write the state store refused (an unknown session, a check of an unknown service): 500
/// with Consul's message, as Consul answers its FSM's refusals.
impl From<ApplyError> for ApiError {
    fn from(error: ApplyError) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

/// Consul answers 403 for any error naming a denial or an unknown token, and 500 for the
/// rest (a root authorizer's name used as a token).
impl From<crate::acl::AclError> for ApiError {
    fn from(error: crate::acl::AclError) -> ApiError {
        match error {
            crate::acl::AclError::RootToken => ApiError::Internal(error.to_string()),
            _ => ApiError::Forbidden(error.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, message),
            ApiError::PayloadTooLarge(message) => (StatusCode::PAYLOAD_TOO_LARGE, message),
            ApiError::RequestTimeout(message) => (StatusCode::REQUEST_TIMEOUT, message),
            ApiError::TooManyRequests(message) => (StatusCode::TOO_MANY_REQUESTS, message),
            ApiError::Forbidden(message) => (StatusCode::FORBIDDEN, message),
            ApiError::Unauthorized(message) => (StatusCode::UNAUTHORIZED, message),
            ApiError::Conflict(body) => {
                tracing::debug!(%body, "transaction rolled back");
                return (
                    StatusCode::CONFLICT,
                    [(header::CONTENT_TYPE, "application/json")],
                    body.to_string(),
                )
                    .into_response();
            }
            ApiError::Internal(message) => (StatusCode::INTERNAL_SERVER_ERROR, message),
        };
        if status.is_server_error() {
            tracing::warn!(status = status.as_u16(), error = %message, "request failed");
        } else {
            tracing::debug!(status = status.as_u16(), error = %message, "request rejected");
        }
        (
            status,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            message,
        )
            .into_response()
    }
}
