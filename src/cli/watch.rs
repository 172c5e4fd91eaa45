//! `concord watch -type <type> [options] [handler]`: runs `handler` (through `sh -c`) with the
//! watched data as JSON on stdin and `CONSUL_INDEX` in its environment, first for the current
//! data and then after every change, using blocking queries. Without a handler it prints the
//! current data once, as Consul's does. An event watch hands the handler only the events
//! that arrived since its last run.

use std::process::Stdio;

use clap::{Arg, ArgMatches, Command};
use serde_json::Value;
use tokio::io::AsyncWriteExt;

use super::goflags::{boolean, get_bool, get_str, value};
use super::{client, shared_query, with_http_flags, CommandResult};
use crate::api::client::{encode_path, encode_query};

pub fn command() -> Command {
    with_http_flags(
        Command::new("watch")
            .about("Runs a handler whenever watched data changes")
            .arg(value(
                "type",
                "key, keyprefix, services, nodes, service, checks or event",
            ))
            .arg(value("name", "Event name for -type=event"))
            .arg(value("key", "Key for -type=key"))
            .arg(value("prefix", "Prefix for -type=keyprefix"))
            .arg(value("service", "Service for -type=service or checks"))
            .arg(value("tag", "Tag filter for -type=service"))
            .arg(boolean(
                "passingonly",
                "Only passing instances for -type=service",
            ))
            .arg(value("state", "Check state for -type=checks (default any)"))
            .arg(Arg::new("handler").num_args(0..)),
    )
}

/// The read a watch type makes, and how to shape its body for the handler.
fn watch_path(matches: &ArgMatches) -> Result<(String, bool), String> {
    let required = |name: &str| {
        get_str(matches, name)
            .map(str::to_string)
            .ok_or_else(|| format!("Error! -{name} is required for this watch type"))
    };
    let kind = get_str(matches, "type").ok_or("Error! -type is required")?;
    Ok(match kind {
        "key" => (format!("/v1/kv/{}?", encode_path(&required("key")?)), true),
        "keyprefix" => (
            format!("/v1/kv/{}?recurse", encode_path(&required("prefix")?)),
            false,
        ),
        "services" => ("/v1/catalog/services?".into(), false),
        "nodes" => ("/v1/catalog/nodes?".into(), false),
        "service" => {
            let mut path = format!("/v1/health/service/{}?", encode_path(&required("service")?));
            if let Some(tag) = get_str(matches, "tag") {
                path.push_str(&format!("&tag={}", encode_query(tag)));
            }
            if get_bool(matches, "passingonly") {
                path.push_str("&passing");
            }
            (path, false)
        }
        "checks" => match get_str(matches, "service") {
            Some(service) => (
                format!("/v1/health/checks/{}?", encode_path(service)),
                false,
            ),
            None => (
                format!(
                    "/v1/health/state/{}?",
                    encode_path(get_str(matches, "state").unwrap_or("any"))
                ),
                false,
            ),
        },
        "event" => match get_str(matches, "name") {
            Some(name) => (format!("/v1/event/list?name={}", encode_query(name)), false),
            None => ("/v1/event/list?".into(), false),
        },
        other => return Err(format!("Error! Unsupported watch type {other:?}")),
    })
}

/// Shapes a response body for the handler: a key watch gets one KVPair or null; a missing
/// prefix gets an empty list.
fn data(status: u16, body: &[u8], single: bool) -> Result<Value, String> {
    if status == 404 {
        return Ok(if single {
            Value::Null
        } else {
            Value::Array(Vec::new())
        });
    }
    let value: Value = serde_json::from_slice(body)
        .map_err(|error| format!("Error! Invalid JSON from the agent: {error}"))?;
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
            .is_some_and(|id| crate::agent::events::index_of(id) == index)
    });
    match seen {
        Some(position) => Value::Array(events[position + 1..].to_vec()),
        None => Value::Array(events),
    }
}

async fn run_handler(handler: &str, index: u64, data: &Value) -> Result<(), String> {
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(handler)
        .env("CONSUL_INDEX", index.to_string())
        .stdin(Stdio::piped())
        .spawn()
        .map_err(|error| format!("Error! Failed to run handler: {error}"))?;
    if let Some(mut stdin) = child.stdin.take() {
        let mut input = serde_json::to_vec_pretty(data).unwrap_or_default();
        input.push(b'\n');
        // A handler that does not read its input is fine.
        let _ = stdin.write_all(&input).await;
    }
    let status = child.wait().await.map_err(|error| error.to_string())?;
    if !status.success() {
        eprintln!("Warning: handler exited with {status}");
    }
    Ok(())
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let (path, single) = watch_path(matches)?;
    let path = format!("{path}{}", shared_query(matches));
    let handler: Vec<String> = matches
        .get_many::<String>("handler")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let events = get_str(matches, "type") == Some("event");
    let mut index: u64 = 0;
    loop {
        let response = client
            .get(&format!("{path}&index={index}&wait=5m"))
            .await
            .map_err(|error| format!("Error querying Consul agent: {error}"))?;
        if !(response.status.is_success() || response.status == 404) {
            return Err(format!("Error! Watch failed: {}", response.text()));
        }
        let new_index = response.index();
        if new_index == index {
            continue;
        }
        let mut data = data(response.status.as_u16(), &response.body, single)?;
        if events {
            data = events_since(data, index);
        }
        if handler.is_empty() {
            let text = serde_json::to_string_pretty(&data).map_err(|e| e.to_string())?;
            println!("{text}");
            return Ok(());
        }
        run_handler(&handler.join(" "), new_index, &data).await?;
        // An index that went backwards (a snapshot restore) starts the watch over; an event
        // list's index is a hash of the newest event's ID, never ordered.
        index = if new_index < index && !events {
            0
        } else {
            new_index
        };
    }
}
