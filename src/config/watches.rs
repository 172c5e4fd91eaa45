//! The agent's `watches`: Consul's watch definitions (`type` and its parameters, a script
//! handler in `args` or `handler`, or `handler_type: "http"` with `http_handler_config`),
//! checked when the config loads so a bad one stops the agent naming it.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::serialize_duration;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum WatchHandler {
    /// A command and its arguments, run directly (`args`), or a shell line (`handler`).
    Script(Vec<String>),
    Http {
        path: String,
        method: String,
        headers: Vec<(String, String)>,
        #[serde(serialize_with = "serialize_duration")]
        timeout: Duration,
    },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct WatchConfig {
    pub kind: String,
    /// The type's parameters (`key`, `prefix`, `service`, `tag`, `passingonly`, `state`,
    /// `name`), as text.
    pub params: BTreeMap<String, String>,
    pub handler: WatchHandler,
}

const PARAMS: &[&str] = &[
    "key",
    "prefix",
    "service",
    "tag",
    "passingonly",
    "state",
    "name",
];

fn text(value: &Value) -> Option<String> {
    match value {
        Value::String(text) => Some(text.clone()),
        Value::Bool(flag) => Some(flag.to_string()),
        Value::Number(number) => Some(number.to_string()),
        _ => None,
    }
}

/// One `watches` entry, or what is wrong with it.
pub(super) fn parse(index: usize, value: &Value) -> Result<WatchConfig, String> {
    let at = |problem: String| format!("watches[{index}]: {problem}");
    let kind = value["type"]
        .as_str()
        .ok_or_else(|| at("Watch type must be specified".into()))?
        .to_string();
    let params: BTreeMap<String, String> = PARAMS
        .iter()
        .filter_map(|name| text(&value[*name]).map(|text| (name.to_string(), text)))
        .collect();
    crate::api::watch::Plan::new(&kind, |name| params.get(name).cloned())
        .map_err(|error| at(error.to_string()))?;
    let handler_type = value["handler_type"].as_str().unwrap_or("script");
    let handler = match handler_type {
        "http" => {
            let config = &value["http_handler_config"];
            let path = config["path"]
                .as_str()
                .ok_or_else(|| at("http_handler_config.path is required".into()))?
                .to_string();
            let timeout = match config["timeout"].as_str() {
                Some(text) => crate::types::duration::parse_go_duration(text)
                    .map_err(|error| at(format!("http_handler_config.timeout: {error}")))?,
                None => Duration::from_secs(10),
            };
            let mut headers = Vec::new();
            for (name, values) in config["header"].as_object().into_iter().flatten() {
                for value in values.as_array().into_iter().flatten() {
                    headers.push((name.clone(), value.as_str().unwrap_or_default().to_string()));
                }
            }
            WatchHandler::Http {
                path,
                method: config["method"].as_str().unwrap_or("POST").to_string(),
                headers,
                timeout,
            }
        }
        "script" => {
            let args: Vec<String> = value["args"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|arg| arg.as_str().map(str::to_string))
                .collect();
            match (args.is_empty(), value["handler"].as_str()) {
                (false, _) => WatchHandler::Script(args),
                (true, Some(line)) => {
                    WatchHandler::Script(vec!["sh".into(), "-c".into(), line.into()])
                }
                (true, None) => return Err(at("Must define a watch handler (args)".into())),
            }
        }
        other => return Err(at(format!("Unsupported handler type: {other:?}"))),
    };
    Ok(WatchConfig {
        kind,
        params,
        handler,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn definitions_are_checked_and_handlers_read() {
        let script = parse(
            0,
            &json!({"type": "key", "key": "a/b", "args": ["/bin/true", "x"]}),
        )
        .unwrap();
        assert_eq!(script.params.get("key").map(String::as_str), Some("a/b"));
        assert_eq!(
            script.handler,
            WatchHandler::Script(vec!["/bin/true".into(), "x".into()])
        );
        let shell = parse(1, &json!({"type": "event", "handler": "echo hi"})).unwrap();
        assert_eq!(
            shell.handler,
            WatchHandler::Script(vec!["sh".into(), "-c".into(), "echo hi".into()])
        );
        let http = parse(
            2,
            &json!({"type": "service", "service": "web", "passingonly": true,
                    "handler_type": "http",
                    "http_handler_config": {"path": "http://127.0.0.1:9/hook", "method": "PUT",
                        "header": {"X-A": ["1", "2"]}, "timeout": "5s"}}),
        )
        .unwrap();
        assert_eq!(
            http.params.get("passingonly").map(String::as_str),
            Some("true")
        );
        assert_eq!(
            http.handler,
            WatchHandler::Http {
                path: "http://127.0.0.1:9/hook".into(),
                method: "PUT".into(),
                headers: vec![("X-A".into(), "1".into()), ("X-A".into(), "2".into())],
                timeout: Duration::from_secs(5),
            }
        );
        let error = |value: Value| parse(3, &value).unwrap_err();
        assert!(error(json!({"args": ["x"]})).contains("Watch type must be specified"));
        assert!(error(json!({"type": "key", "args": ["x"]})).contains("-key is required"));
        assert!(error(json!({"type": "nope", "args": ["x"]})).contains("Unsupported watch type"));
        assert!(error(json!({"type": "nodes"})).contains("Must define a watch handler"));
        assert!(error(json!({"type": "nodes", "handler_type": "http"})).contains("path"));
    }
}
