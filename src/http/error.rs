//! The one place errors become HTTP responses, with Consul's status codes and plain-text
//! bodies. Each error is logged here, once.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;

use crate::rpc::RpcError;

#[derive(Debug)]
pub enum ApiError {
    BadRequest(String),
    NotFound(String),
    PayloadTooLarge(String),
    RequestTimeout(String),
    PermissionDenied,
    /// A transaction that rolled back: 409 with a JSON body of errors.
    Conflict(Value),
    Internal(String),
}

impl From<RpcError> for ApiError {
    fn from(error: RpcError) -> ApiError {
        ApiError::Internal(error.to_string())
    }
}

impl From<crate::acl::PermissionDenied> for ApiError {
    fn from(_: crate::acl::PermissionDenied) -> ApiError {
        ApiError::PermissionDenied
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            ApiError::BadRequest(message) => (StatusCode::BAD_REQUEST, message),
            ApiError::NotFound(message) => (StatusCode::NOT_FOUND, message),
            ApiError::PayloadTooLarge(message) => (StatusCode::PAYLOAD_TOO_LARGE, message),
            ApiError::RequestTimeout(message) => (StatusCode::REQUEST_TIMEOUT, message),
            ApiError::PermissionDenied => (StatusCode::FORBIDDEN, "Permission denied".into()),
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
