//! Session wire shapes: the `/v1/session/create` body and the session JSON Consul returns
//! (`LockDelay` in integer nanoseconds, `TTL` as a Go duration string).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Value};

use super::decode::{canonicalize, DecodeError};
use crate::types::duration::{format_go_duration, parse_go_duration};
use crate::types::session::{Session, SessionBehavior};
use crate::types::RaftIndexes;

const DEFAULT_LOCK_DELAY: Duration = Duration::from_secs(15);
const TTL_MIN: Duration = Duration::from_secs(10);
const TTL_MAX: Duration = Duration::from_secs(24 * 3600);
/// Consul reads a numeric LockDelay below this as seconds, otherwise as nanoseconds.
const LOCK_DELAY_SECONDS_BELOW: u64 = 1000;

pub fn session(session: &Session) -> Value {
    let mut value = json!({
        "ID": session.id,
        "Name": session.name,
        "Node": session.node,
        "LockDelay": session.lock_delay.as_nanos() as u64,
        "Behavior": session.behavior.as_str(),
        "TTL": session.ttl.map(format_go_duration).unwrap_or_default(),
        "NodeChecks": session.node_checks,
        "ServiceChecks": if session.service_checks.is_empty() {
            Value::Null
        } else {
            Value::from(
                session
                    .service_checks
                    .iter()
                    .map(|id| json!({"ID": id, "Namespace": ""}))
                    .collect::<Vec<_>>(),
            )
        },
        "CreateIndex": session.indexes.create,
        "ModifyIndex": session.indexes.modify,
    });
    if session
        .node_checks
        .iter()
        .any(|check| check != "serfHealth")
    {
        value["Checks"] = json!(session.node_checks);
    }
    value
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ServiceCheckIn {
    #[serde(rename = "ID")]
    id: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct SessionIn {
    lock_delay: Value,
    node: String,
    name: String,
    checks: Vec<String>,
    node_checks: Option<Vec<String>>,
    service_checks: Vec<ServiceCheckIn>,
    behavior: String,
    #[serde(rename = "TTL")]
    ttl: String,
}

fn lock_delay(value: &Value) -> Result<Duration, DecodeError> {
    match value {
        Value::Null => Ok(DEFAULT_LOCK_DELAY),
        Value::String(text) => parse_go_duration(text).map_err(|error| {
            DecodeError::new(format!("Request decode failed: LockDelay: {error}"))
        }),
        Value::Number(number) => {
            let number = number.as_u64().ok_or_else(|| {
                DecodeError::new("Request decode failed: LockDelay must be a non-negative integer")
            })?;
            Ok(if number < LOCK_DELAY_SECONDS_BELOW {
                Duration::from_secs(number)
            } else {
                Duration::from_nanos(number)
            })
        }
        _ => Err(DecodeError::new(
            "Request decode failed: LockDelay must be a duration",
        )),
    }
}

/// Why a create body was refused: it does not decode (Consul's 400), or it decodes to a session
/// Consul's Session RPC refuses (a bad TTL or behavior: its 500).
#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    Decode(#[from] DecodeError),
    #[error("{0}")]
    Invalid(String),
}

/// Parses a create body; `id` and `agent_node` are filled in by the caller.
pub fn create_request(body: Value, id: String, agent_node: &str) -> Result<Session, CreateError> {
    let input: SessionIn = serde_json::from_value(canonicalize(body))
        .map_err(|error| DecodeError::new(format!("Request decode failed: {error}")))?;
    let behavior = match input.behavior.as_str() {
        "" | "release" => SessionBehavior::Release,
        "delete" => SessionBehavior::Delete,
        other => {
            return Err(CreateError::Invalid(format!(
                "Invalid Behavior setting '{other}'"
            )))
        }
    };
    let ttl = match input.ttl.as_str() {
        "" => None,
        text => {
            let ttl = parse_go_duration(text).map_err(|error| {
                CreateError::Invalid(format!("Session TTL '{text}' invalid: {error}"))
            })?;
            if ttl.is_zero() {
                None
            } else if !(TTL_MIN..=TTL_MAX).contains(&ttl) {
                return Err(CreateError::Invalid(format!(
                    "Invalid Session TTL '{}', must be between [{}={}]",
                    ttl.as_nanos(),
                    format_go_duration(TTL_MIN),
                    format_go_duration(TTL_MAX)
                )));
            } else {
                Some(ttl)
            }
        }
    };
    let mut node_checks = input.node_checks.unwrap_or_default();
    node_checks.extend(input.checks);
    if node_checks.is_empty() && input.service_checks.is_empty() {
        node_checks.push("serfHealth".into());
    }
    node_checks.dedup();
    Ok(Session {
        id,
        name: input.name,
        node: if input.node.is_empty() {
            agent_node.to_string()
        } else {
            input.node
        },
        lock_delay: lock_delay(&input.lock_delay)?,
        behavior,
        ttl,
        node_checks,
        service_checks: input
            .service_checks
            .into_iter()
            .map(|check| check.id)
            .collect(),
        indexes: RaftIndexes::default(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_consul_quirks() {
        let session = create_request(json!({}), "id".into(), "n1").unwrap();
        assert_eq!(session.node, "n1");
        assert_eq!(session.node_checks, ["serfHealth"]);
        assert_eq!(session.lock_delay, DEFAULT_LOCK_DELAY);
        assert_eq!(session.behavior, SessionBehavior::Release);
        let numeric = create_request(json!({"LockDelay": 5}), "id".into(), "n1").unwrap();
        assert_eq!(
            numeric.lock_delay,
            Duration::from_secs(5),
            "small numbers are seconds"
        );
        let nanos =
            create_request(json!({"lock_delay": 2_000_000_000u64}), "id".into(), "n").unwrap();
        assert_eq!(nanos.lock_delay, Duration::from_secs(2));
        let rendered = session_json_roundtrip(&session);
        assert_eq!(rendered["LockDelay"], 15_000_000_000u64);
        assert!(rendered.get("Checks").is_none());
    }

    fn session_json_roundtrip(session: &Session) -> Value {
        super::session(session)
    }

    #[test]
    fn invalid_requests_are_explained() {
        for (body, message) in [
            (json!({"TTL": "5s"}), "Invalid Session TTL"),
            (json!({"TTL": "soon"}), "TTL"),
            (json!({"Behavior": "explode"}), "Invalid Behavior"),
            (json!({"LockDelay": "later"}), "LockDelay"),
        ] {
            let error = create_request(body.clone(), "id".into(), "n")
                .unwrap_err()
                .to_string();
            assert!(error.contains(message), "{body}: {error}");
        }
    }
}
