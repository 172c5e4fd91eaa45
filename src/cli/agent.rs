//! `concord agent`: Consul's agent flags, turned into a config source that is merged last.

use clap::{ArgMatches, Command};
use serde_json::{json, Map, Value};

use super::goflags::{boolean, get_bool, get_str, repeated, value};
use crate::config::sources::{flag_value, merge};
use crate::config::{ConfigPath, LoadOptions};

/// Flags that map one-to-one onto a config key, and how their value is typed.
const VALUE_FLAGS: &[(&str, &str, Kind)] = &[
    ("bootstrap-expect", "bootstrap_expect", Kind::Number),
    ("data-dir", "data_dir", Kind::Text),
    ("node", "node_name", Kind::Text),
    ("node-id", "node_id", Kind::Text),
    ("datacenter", "datacenter", Kind::Text),
    ("bind", "bind_addr", Kind::Text),
    ("advertise", "advertise_addr", Kind::Text),
    ("client", "client_addr", Kind::Text),
    ("http-port", "ports.http", Kind::Number),
    ("dns-port", "ports.dns", Kind::Number),
    ("grpc-port", "ports.grpc", Kind::Number),
    ("https-port", "ports.https", Kind::Number),
    ("grpc-tls-port", "ports.grpc_tls", Kind::Number),
    ("serf-lan-port", "ports.serf_lan", Kind::Number),
    ("serf-wan-port", "ports.serf_wan", Kind::Number),
    ("server-port", "ports.server", Kind::Number),
    ("domain", "domain", Kind::Text),
    ("alt-domain", "alt_domain", Kind::Text),
    ("log-level", "log_level", Kind::Text),
    ("default-query-time", "default_query_time", Kind::Text),
    ("max-query-time", "max_query_time", Kind::Text),
    ("retry-interval", "retry_interval", Kind::Text),
    ("retry-max", "retry_max", Kind::Number),
    ("retry-interval-wan", "retry_interval_wan", Kind::Text),
    ("retry-max-wan", "retry_max_wan", Kind::Number),
    ("encrypt", "encrypt", Kind::Text),
    ("ui-dir", "ui_config.dir", Kind::Text),
    ("ui-content-path", "ui_config.content_path", Kind::Text),
];

const BOOL_FLAGS: &[(&str, &str)] = &[
    ("server", "server"),
    ("bootstrap", "bootstrap"),
    ("log-json", "log_json"),
    ("ui", "ui_config.enabled"),
];

#[derive(Clone, Copy)]
enum Kind {
    Text,
    Number,
}

pub fn command() -> Command {
    let mut command = Command::new("agent")
        .about("Runs a concord agent")
        .arg(boolean(
            "dev",
            "Development mode: one in-memory server on loopback",
        ))
        .arg(repeated(
            "config-file",
            "A JSON or HCL config file (repeatable)",
        ))
        .arg(repeated(
            "config-dir",
            "A directory of .json/.hcl config files (repeatable)",
        ))
        .arg(value(
            "config-format",
            "Force the config format: json or hcl",
        ))
        .arg(repeated("hcl", "An HCL config fragment (repeatable)"))
        .arg(repeated(
            "node-meta",
            "Node metadata as key:value (repeatable)",
        ))
        .arg(repeated(
            "recursor",
            "An upstream DNS server for names outside the domain (repeatable)",
        ))
        .arg(repeated(
            "join",
            "An agent to join at start; the agent does not start if none answers (repeatable)",
        ))
        .arg(repeated(
            "retry-join",
            "An agent to join, retried until one answers (repeatable)",
        ))
        .arg(repeated(
            "join-wan",
            "A server of another datacenter to join at start (servers; repeatable)",
        ))
        .arg(repeated(
            "retry-join-wan",
            "A server of another datacenter to join, retried until one answers (repeatable)",
        ));
    for (flag, key, _) in VALUE_FLAGS {
        command = command.arg(value(flag, key));
    }
    for (flag, key) in BOOL_FLAGS {
        command = command.arg(boolean(flag, key));
    }
    command
}

/// Builds the load options from the agent's flags.
pub fn load_options(matches: &ArgMatches) -> Result<LoadOptions, String> {
    let mut flags = json!({});
    for (flag, key, kind) in VALUE_FLAGS {
        if let Some(text) = get_str(matches, flag) {
            let value = match kind {
                Kind::Text => Value::String(text.to_string()),
                Kind::Number => text.parse::<i64>().map(Value::from).map_err(|_| {
                    format!("invalid value {text:?} for flag -{flag}: not a number")
                })?,
            };
            merge(&mut flags, flag_value(key, value));
        }
    }
    for (flag, key) in BOOL_FLAGS {
        if let Some(set) = matches.get_one::<bool>(flag) {
            merge(&mut flags, flag_value(key, Value::Bool(*set)));
        }
    }
    let mut node_meta = Map::new();
    for pair in matches
        .get_many::<String>("node-meta")
        .into_iter()
        .flatten()
    {
        let (key, value) = pair
            .split_once(':')
            .ok_or_else(|| format!("invalid -node-meta {pair:?}: expected key:value"))?;
        node_meta.insert(key.to_string(), Value::String(value.to_string()));
    }
    if !node_meta.is_empty() {
        merge(&mut flags, json!({"node_meta": node_meta}));
    }
    let recursors: Vec<&String> = matches
        .get_many::<String>("recursor")
        .into_iter()
        .flatten()
        .collect();
    if !recursors.is_empty() {
        merge(&mut flags, json!({"recursors": recursors}));
    }
    for (flag, key) in [
        ("join", "start_join"),
        ("retry-join", "retry_join"),
        ("join-wan", "start_join_wan"),
        ("retry-join-wan", "retry_join_wan"),
    ] {
        let addresses: Vec<&String> = matches
            .get_many::<String>(flag)
            .into_iter()
            .flatten()
            .collect();
        if !addresses.is_empty() {
            merge(&mut flags, json!({ key: addresses }));
        }
    }

    // -config-file and -config-dir load in the order given, interleaved.
    let mut paths: Vec<(usize, ConfigPath)> = Vec::new();
    for (name, dir) in [("config-file", false), ("config-dir", true)] {
        let values = matches.get_many::<String>(name).into_iter().flatten();
        let indices = matches.indices_of(name).into_iter().flatten();
        for (index, path) in indices.zip(values) {
            let path = std::path::PathBuf::from(path);
            paths.push((
                index,
                if dir {
                    ConfigPath::Dir(path)
                } else {
                    ConfigPath::File(path)
                },
            ));
        }
    }
    paths.sort_by_key(|(index, _)| *index);

    Ok(LoadOptions {
        dev: get_bool(matches, "dev"),
        paths: paths.into_iter().map(|(_, path)| path).collect(),
        hcl_fragments: matches
            .get_many::<String>("hcl")
            .into_iter()
            .flatten()
            .cloned()
            .collect(),
        format: get_str(matches, "config-format").map(str::to_string),
        flags,
    })
}

pub async fn run(matches: &ArgMatches) -> Result<(), String> {
    let options = load_options(matches)?;
    let loaded = crate::config::load(&options).map_err(|error| format!("==> {error}"))?;
    crate::logs::init(&loaded.config.log_level, loaded.config.log_json);
    for warning in &loaded.warnings {
        tracing::warn!("{warning}");
    }
    crate::server::run(loaded.config, options)
        .await
        .map_err(|error| format!("==> {error:#}"))
}
