//! Reading request bodies with an explicit size limit and a deadline, so an oversized or slow
//! body gets a clear 413 or 408 instead of tying up the agent.

use std::time::Duration;

use axum::body::Body;
use http_body_util::{BodyExt, Limited};
use hyper::body::Bytes;

use super::error::ApiError;

/// Consul's pointers for the limits it shares with concord, named in its 413 texts.
pub const KV_MAX_VALUE_SIZE_DOCS: &str =
    "https://developer.hashicorp.com/docs/agent/config/config-files#kv_max_value_size";
pub const TXN_MAX_REQ_LEN_DOCS: &str =
    "https://developer.hashicorp.com/docs/agent/config/config-files#txn_max_req_len";

/// Reads the whole body; `see` is where the 413 points: Consul's documentation of a limit
/// Consul has (its exact text), else the concord config key that sets `limit`.
pub async fn read(
    body: Body,
    declared: Option<u64>,
    limit: usize,
    see: &str,
    timeout: Duration,
) -> Result<Bytes, ApiError> {
    let too_large = |size: Option<u64>| {
        let size = size.map_or_else(String::new, |size| format!("({size} bytes)"));
        ApiError::PayloadTooLarge(format!(
            "Request body{size} too large, max size: {limit} bytes. See {see}."
        ))
    };
    if let Some(size) = declared {
        if size > limit as u64 {
            return Err(too_large(Some(size)));
        }
    }
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(ApiError::RequestTimeout(format!(
            "Request body not received within {}s (limits.http_body_timeout)",
            timeout.as_secs()
        ))),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Err(too_large(None)),
        Ok(Err(error)) => Err(ApiError::BadRequest(format!(
            "Failed to read request body: {error}"
        ))),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

/// Reads a request body under the general limit (`limits.http_max_body_size`), for every
/// endpoint that has no limit of its own.
pub async fn read_general(
    state: &super::AppState,
    call: &super::params::Call,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limits = &state.config.limits;
    read(
        body,
        call.content_length,
        limits.http_max_body_size,
        "limits.http_max_body_size",
        limits.http_body_timeout,
    )
    .await
}

/// Reads a JSON body under the general limit; an empty body is `{}`, as Consul treats it.
/// A body that is not JSON is Consul's usual 400 `Request decode failed: ...`.
pub async fn read_json(
    state: &super::AppState,
    call: &super::params::Call,
    body: Body,
) -> Result<serde_json::Value, ApiError> {
    read_json_or(state, call, body, |reason| {
        ApiError::BadRequest(format!("Request decode failed: {reason}"))
    })
    .await
}

/// `read_json` for the endpoints that word a body that is not JSON their own way (Consul's
/// legacy intentions API: a 500 `Failed to decode request body: ...`); `refuse` makes the
/// error from the parser's reason.
pub async fn read_json_or(
    state: &super::AppState,
    call: &super::params::Call,
    body: Body,
    refuse: impl FnOnce(serde_json::Error) -> ApiError,
) -> Result<serde_json::Value, ApiError> {
    let bytes = read_general(state, call, body).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Value::Object(serde_json::Map::new()));
    }
    serde_json::from_slice(&bytes).map_err(refuse)
}
