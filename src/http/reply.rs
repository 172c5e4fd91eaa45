//! Answering reads: the blocking-query loop and the response headers every read carries
//! (`X-Consul-Index`, `X-Consul-KnownLeader`, `X-Consul-LastContact`,
//! `X-Consul-Effective-Consistency`).

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use tokio::time::Instant;

use super::error::ApiError;
use super::params::ReadOptions;
use super::AppState;
use crate::rpc::LeaderContact;
use crate::state::{Match, Tables};

/// What a read produced, before headers.
pub enum Reply {
    Json(Value),
    /// JSON already serialised (typed shapes on hot paths skip building a `Value`).
    JsonBytes(Vec<u8>),
    /// A raw value (`/v1/kv/<key>?raw`).
    Raw(Vec<u8>),
    /// 404 with an empty body, as Consul answers a missing KV key.
    NotFound,
}

/// Serialises JSON the way Consul does: minified, or indented with `?pretty`.
pub fn json_body<T: serde::Serialize + ?Sized>(value: &T, pretty: bool) -> Vec<u8> {
    let mut body = if pretty {
        serde_json::to_vec_pretty(value)
    } else {
        serde_json::to_vec(value)
    }
    .unwrap_or_default();
    if pretty {
        body.push(b'\n');
    }
    body
}

/// A list answer from typed shapes: serialised straight to bytes, or, under `?filter` (which
/// reads JSON values), as the values the filter keeps.
pub fn list<T: serde::Serialize>(options: &ReadOptions, items: &[T]) -> Reply {
    if options.filter.is_none() {
        return Reply::JsonBytes(json_body(items, options.pretty));
    }
    let values = items
        .iter()
        .filter_map(|item| serde_json::to_value(item).ok())
        .collect();
    Reply::Json(Value::Array(options.filter_list(values)))
}

/// A JSON response with no index headers (writes and agent endpoints).
pub fn json(value: &Value, pretty: bool) -> Response {
    (
        [(header::CONTENT_TYPE, "application/json")],
        json_body(value, pretty),
    )
        .into_response()
}

/// A read's answer with the headers every read carries, for reads that do not block.
pub(super) fn with_headers(
    reply: Reply,
    index: u64,
    contact: LeaderContact,
    options: &ReadOptions,
    state: &AppState,
) -> Response {
    let mut response = match reply {
        Reply::Json(value) => json(&value, options.pretty),
        Reply::JsonBytes(body) => {
            ([(header::CONTENT_TYPE, "application/json")], body).into_response()
        }
        Reply::Raw(bytes) => ([(header::CONTENT_TYPE, "text/plain")], bytes).into_response(),
        Reply::NotFound => StatusCode::NOT_FOUND.into_response(),
    };
    let headers = response.headers_mut();
    // Never 0, so that a client passing the index back blocks instead of spinning.
    headers.insert("X-Consul-Index", HeaderValue::from(index.max(1)));
    headers.insert(
        "X-Consul-KnownLeader",
        HeaderValue::from_static(if contact.known_leader {
            "true"
        } else {
            "false"
        }),
    );
    headers.insert(
        "X-Consul-LastContact",
        HeaderValue::from(contact.last_contact_ms),
    );
    headers.insert(
        "X-Consul-Effective-Consistency",
        HeaderValue::from_static(options.consistency.header_value()),
    );
    headers.insert(
        "X-Consul-Default-ACL-Policy",
        HeaderValue::from_static(state.authorizer.default_policy()),
    );
    // Every read is served from this agent's own copy of the state (a server's store, a
    // client's replica), which is what Consul's agent cache is for: a hit, as old as the
    // copy's last word from the leader.
    if options.cached {
        headers.insert("X-Cache", HeaderValue::from_static("HIT"));
        headers.insert("Age", HeaderValue::from(contact.last_contact_ms / 1000));
    }
    response
}

/// Answers a read, blocking first when the client passed `?index=`: the read runs against a
/// snapshot; while its index is not past the client's, the handler waits for a change to one
/// of `topics` (registered before reading, so no change is missed) or for the wait to run out,
/// then reads again.
pub async fn blocking<F>(
    state: &AppState,
    options: &ReadOptions,
    topics: Vec<(String, Match)>,
    read: F,
) -> Result<Response, ApiError>
where
    F: Fn(&Tables) -> Result<(u64, Reply), ApiError>,
{
    let cluster = &state.cluster;
    let contact = cluster.read_barrier(options.consistency).await?;
    let deadline = Instant::now() + options.wait;
    loop {
        let guard = (options.index > 0).then(|| cluster.watch(&topics));
        let (index, reply) = read(&cluster.snapshot())?;
        let answer_now =
            index > options.index || Instant::now() >= deadline || state.shutdown.is_cancelled();
        let guard = match guard {
            Some(guard) if !answer_now => guard,
            _ => return Ok(with_headers(reply, index, contact, options, state)),
        };
        // Ten thousand waiting queries should not each hold a rendered answer; the next pass
        // reads again anyway.
        drop(reply);
        tokio::select! {
            _ = guard.changed() => {}
            _ = tokio::time::sleep_until(deadline) => {}
            _ = state.shutdown.cancelled() => {}
        }
    }
}

/// What a request's token may see of a list, and whether anything was left out of the answer
/// (Consul filters list reads instead of refusing them, and says so in
/// `X-Consul-Results-Filtered-By-ACLs` to every token but the anonymous one).
pub struct Visible {
    identity: std::sync::Arc<crate::acl::Identity>,
    dropped: std::sync::atomic::AtomicBool,
}

impl Visible {
    pub fn of(state: &AppState, call: &super::params::Call) -> Result<Visible, ApiError> {
        Ok(Visible::new(
            state.authorizer.resolve(call.token().as_deref())?,
        ))
    }

    pub fn new(identity: std::sync::Arc<crate::acl::Identity>) -> Visible {
        Visible {
            identity,
            dropped: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn identity(&self) -> &crate::acl::Identity {
        &self.identity
    }

    /// Whether the token may see it; a refusal is remembered for the header.
    pub fn may(&self, access: crate::acl::Access<'_>) -> bool {
        let allowed = self.identity.allows(access);
        if !allowed {
            self.left_out();
        }
        allowed
    }

    /// Remembers that something was left out, for a reader that decided so itself.
    pub fn left_out(&self) {
        self.dropped
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn node(&self, node: &str) -> bool {
        self.may(crate::acl::Access::NodeRead(node))
    }

    pub fn service(&self, service: &str) -> bool {
        self.may(crate::acl::Access::ServiceRead(service))
    }

    /// A service instance: its node and its service.
    pub fn instance(&self, node: &str, service: &str) -> bool {
        self.node(node) && self.service(service)
    }

    /// A health check: its node, and its service unless it is a node check.
    pub fn check(&self, check: &crate::types::Check) -> bool {
        self.node(&check.node)
            && (check.service_name.is_empty() || self.service(&check.service_name))
    }

    pub fn dropped(&self) -> bool {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds the header when something was left out and the token is told.
    pub fn mark(&self, mut response: Response) -> Response {
        if self.dropped() && self.identity.reports_filtering() {
            response.headers_mut().insert(
                "X-Consul-Results-Filtered-By-ACLs",
                HeaderValue::from_static("true"),
            );
        }
        response
    }
}

/// `blocking` for a list read filtered by what `visible` may see: each pass starts with
/// nothing dropped, and the answer says whether its own pass dropped anything.
pub async fn blocking_filtered<F>(
    state: &AppState,
    options: &ReadOptions,
    topics: Vec<(String, Match)>,
    visible: &Visible,
    read: F,
) -> Result<Response, ApiError>
where
    F: Fn(&Tables) -> Result<(u64, Reply), ApiError>,
{
    let response = blocking(state, options, topics, |tables| {
        visible
            .dropped
            .store(false, std::sync::atomic::Ordering::Relaxed);
        read(tables)
    })
    .await?;
    Ok(visible.mark(response))
}
