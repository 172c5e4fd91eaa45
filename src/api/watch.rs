//! Watch plans, as Consul's `api/watch`: a watch type and its parameters become one blocking
//! read of the HTTP API, repeated with the last index; each answer that changed is handed to
//! a handler (a script with the data as JSON on stdin and `CONSUL_INDEX` in its environment,
//! or an HTTP endpoint). `concord watch` and the agent's `watches` config both run these.

use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::client::{encode_path, encode_query, Client};

#[derive(Debug, thiserror::Error)]
pub enum WatchError {
    #[error("-{0} is required for this watch type")]
    Missing(&'static str),
    #[error("Unsupported watch type {0:?}")]
    Unsupported(String),
    #[error("Error querying Consul agent: {0}")]
    Agent(String),
    #[error("Watch failed: {0}")]
    Refused(String),
    #[error("Invalid JSON from the agent: {0}")]
    Json(String),
    #[error("Failed to run handler: {0}")]
    Handler(String),
}

/// The read a watch type makes, and how its answer is shaped for the handler.
#[derive(Clone, Debug)]
pub struct Plan {
    path: String,
    /// A key watch hands over one KVPair (or null), not a list.
    single: bool,
    /// An event watch hands over only the events since the last run.
    events: bool,
}

impl Plan {
    /// The plan for watch type `kind`, its parameters looked up with `param` (`key`, `prefix`,
    /// `service`, `tag`, `passingonly`, `state`, `name`).
    pub fn new(kind: &str, param: impl Fn(&str) -> Option<String>) -> Result<Plan, WatchError> {
        let required = |name: &'static str| param(name).ok_or(WatchError::Missing(name));
        let (path, single) = match kind {
            "key" => (format!("/v1/kv/{}?", encode_path(&required("key")?)), true),
            "keyprefix" => (
                format!("/v1/kv/{}?recurse", encode_path(&required("prefix")?)),
                false,
            ),
            "services" => ("/v1/catalog/services?".into(), false),
            "nodes" => ("/v1/catalog/nodes?".into(), false),
            "service" => {
                let mut path =
                    format!("/v1/health/service/{}?", encode_path(&required("service")?));
                if let Some(tag) = param("tag") {
                    path.push_str(&format!("&tag={}", encode_query(&tag)));
                }
                if param("passingonly").is_some_and(|value| value == "true") {
                    path.push_str("&passing");
                }
                (path, false)
            }
            "checks" => match param("service") {
                Some(service) => (
                    format!("/v1/health/checks/{}?", encode_path(&service)),
                    false,
                ),
                None => (
                    format!(
                        "/v1/health/state/{}?",
                        encode_path(&param("state").unwrap_or_else(|| "any".into()))
                    ),
                    false,
                ),
            },
            "event" => match param("name") {
                Some(name) => (
                    format!("/v1/event/list?name={}", encode_query(&name)),
                    false,
                ),
                None => ("/v1/event/list?".into(), false),
            },
            other => return Err(WatchError::Unsupported(other.to_string())),
        };
        Ok(Plan {
            path,
            single,
            events: kind == "event",
        })
    }

    /// Blocks until the watched data's index differs from `index` (`query` adds shared
    /// parameters such as `&dc=`); the new index and the data for the handler.
    pub async fn next(
        &self,
        client: &Client,
        index: u64,
        query: &str,
    ) -> Result<(u64, Value), WatchError> {
        loop {
            let response = client
                .get(&format!("{}{query}&index={index}&wait=5m", self.path))
                .await
                .map_err(|error| WatchError::Agent(error.to_string()))?;
            let status = response.status.as_u16();
            if !(response.status.is_success() || status == 404) {
                return Err(WatchError::Refused(response.text()));
            }
            let new_index = response.index();
            if new_index == index {
                continue;
            }
            let mut data = shape(status, &response.body, self.single)?;
            if self.events {
                data = events_since(data, index);
            }
            return Ok((new_index, data));
        }
    }

    /// The index to block on next: an index that went backwards (a snapshot restore)
    /// starts over, except an event list's, which is a hash and never ordered.
    pub fn following(&self, previous: u64, new: u64) -> u64 {
        if new < previous && !self.events {
            0
        } else {
            new
        }
    }
}

/// Shapes a response body for the handler: a key watch gets one KVPair or null; a missing
/// prefix gets an empty list.
fn shape(status: u16, body: &[u8], single: bool) -> Result<Value, WatchError> {
    if status == 404 {
        return Ok(if single {
            Value::Null
        } else {
            Value::Array(Vec::new())
        });
    }
    let value: Value =
        serde_json::from_slice(body).map_err(|error| WatchError::Json(error.to_string()))?;
    Ok(if single {
        value.get(0).cloned().unwrap_or(Value::Null)
    } else {
        value
    })
}

/// The events after the one whose index is `index` (all of them when it is not listed), as
/// Consul's event watch prunes them.
fn events_since(list: Value, index: u64) -> Value {
    let Value::Array(events) = list else {
        return list;
    };
    let seen = events.iter().position(|event| {
        event["ID"]
            .as_str()
            .is_some_and(|id| event_index(id) == index)
    });
    match seen {
        Some(position) => Value::Array(events[position + 1..].to_vec()),
        None => Value::Array(events),
    }
}

/// Consul's event-list index of an event ID: the XOR of the UUID's two halves.
pub fn event_index(id: &str) -> u64 {
    match uuid::Uuid::parse_str(id) {
        Ok(uuid) => {
            let (high, low) = uuid.as_u64_pair();
            high ^ low
        }
        Err(_) => 0,
    }
}

/// Runs `command` (a program and its arguments) with `data` on stdin and `CONSUL_INDEX`
/// set; a handler that fails is reported, not fatal.
pub async fn run_script(command: &[String], index: u64, data: &Value) -> Result<(), WatchError> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| WatchError::Handler("no handler command".into()))?;
    let handler = command.join(" ");
    let mut child = tokio::process::Command::new(program)
        .args(args)
        .env("CONSUL_INDEX", index.to_string())
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|error| WatchError::Handler(error.to_string()))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut input = serde_json::to_vec_pretty(data).unwrap_or_default();
        input.push(b'\n');
        // A handler that does not read its input is fine.
        let _ = stdin.write_all(&input).await;
    }
    let status = child
        .wait()
        .await
        .map_err(|error| WatchError::Handler(error.to_string()))?;
    if !status.success() {
        tracing::warn!(%handler, %status, "watch handler failed");
    }
    Ok(())
}

/// POSTs (or `method`s) `data` to an HTTP handler with `X-Consul-Index`, within `timeout`.
pub async fn call_http(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    timeout: Duration,
    index: u64,
    data: &Value,
) -> Result<(), WatchError> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|error| WatchError::Handler(format!("{url}: {error}")))?;
    let base = format!(
        "{}://{}",
        uri.scheme_str().unwrap_or("http"),
        uri.authority().map(|a| a.as_str()).unwrap_or_default()
    );
    let path = uri.path_and_query().map_or("/", |p| p.as_str()).to_string();
    let client = Client::from_flags(Some(&base), None)
        .map_err(|error| WatchError::Handler(error.to_string()))?;
    let method = hyper::Method::from_bytes(method.as_bytes())
        .map_err(|error| WatchError::Handler(error.to_string()))?;
    let mut all = headers.to_vec();
    all.push(("X-Consul-Index".into(), index.to_string()));
    all.push(("Content-Type".into(), "application/json".into()));
    let body = serde_json::to_vec(data).unwrap_or_default();
    let sent = tokio::time::timeout(
        timeout,
        client.request_with_headers(method, &path, &all, body),
    )
    .await
    .map_err(|_| WatchError::Handler(format!("{url}: timed out")))?
    .map_err(|error| WatchError::Handler(error.to_string()))?;
    if !sent.status.is_success() {
        tracing::warn!(%url, status = sent.status.as_u16(), "watch HTTP handler answered with an error");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_become_reads_and_parameters_are_checked() {
        let none = |_: &str| None;
        assert!(matches!(
            Plan::new("key", none),
            Err(WatchError::Missing("key"))
        ));
        assert!(matches!(
            Plan::new("weird", none),
            Err(WatchError::Unsupported(_))
        ));
        let plan = Plan::new("service", |name| match name {
            "service" => Some("web".into()),
            "passingonly" => Some("true".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(plan.path, "/v1/health/service/web?&passing");
        let events = Plan::new("event", |name| (name == "name").then(|| "deploy".into())).unwrap();
        assert_eq!(events.following(10, 3), 3, "event indexes are hashes");
        let keys = Plan::new("key", |_| Some("a/b".into())).unwrap();
        assert_eq!(
            keys.following(10, 3),
            0,
            "an index that went back starts over"
        );
    }
}
