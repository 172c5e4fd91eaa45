//! Service and check definitions as Consul writes them: in config files (`service {}`,
//! `services []`, `check {}`, `checks []`, snake_case) and in `PUT /v1/agent/service/register`
//! and `/v1/agent/check/register` bodies (PascalCase). Both go through `decode::canonicalize`,
//! then here, into `types::agent` definitions. Errors name the offending field, as the 400s and
//! config-load errors must.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;
use serde_json::Value;

use super::catalog::{ServiceAddressIn, WeightsIn};
use super::decode::{canonicalize, DecodeError};
use super::proxy::{proxy, ProxyIn};
use crate::types::agent::{CheckDefinition, CheckKind, ServiceDefinition};
use crate::types::connect::ServiceProxy;
use crate::types::duration::{format_go_duration, parse_go_duration};
use crate::types::{HealthStatus, Locality, RaftIndexes, Service, ServiceAddress, Weights};

/// Consul's floor for check intervals.
const MIN_INTERVAL: Duration = Duration::from_secs(1);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
const DEFAULT_SCRIPT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_OUTPUT_MAX: usize = 4096;
/// Consul's floor for `deregister_critical_service_after`.
const MIN_DEREGISTER_AFTER: Duration = Duration::from_secs(60);

/// What the agent allows while parsing definitions.
#[derive(Clone, Copy, Debug, Default)]
pub struct DefinitionPolicy {
    pub enable_script_checks: bool,
    /// The definition came over the HTTP API (else from a config file): Consul refuses a
    /// script check there with its own words and a 500.
    pub remote: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ServiceIn {
    #[serde(rename = "ID")]
    id: String,
    name: String,
    kind: String,
    tags: Vec<String>,
    address: String,
    port: u16,
    meta: BTreeMap<String, String>,
    tagged_addresses: BTreeMap<String, ServiceAddressIn>,
    weights: Option<WeightsIn>,
    enable_tag_override: bool,
    check: Option<CheckIn>,
    checks: Vec<CheckIn>,
    proxy: Option<ProxyIn>,
    connect: Option<ConnectIn>,
    locality: Option<Locality>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConnectIn {
    native: bool,
    sidecar_service: Option<Value>,
}

/// Expands `connect { sidecar_service {} }` as Consul does: a `connect-proxy` service named
/// after its parent, inheriting address, tags and meta when it sets none, proxying to the
/// parent on 127.0.0.1, with a listening check and an alias of the parent unless it defines
/// its own checks. The port stays 0 for the agent to assign.
fn sidecar(
    value: Value,
    parent: &Service,
    policy: DefinitionPolicy,
) -> Result<ServiceDefinition, DecodeError> {
    let mut value = canonicalize(value);
    let object = value
        .as_object_mut()
        .ok_or_else(|| DecodeError::new("Connect.SidecarService must be an object"))?;
    if object.contains_key("Connect") {
        return Err(DecodeError::new(
            "Connect.SidecarService cannot itself have a Connect block",
        ));
    }
    let name = format!("{}-sidecar-proxy", parent.name);
    object
        .entry("Name")
        .or_insert_with(|| Value::String(name.clone()));
    let mut definition =
        service(value, policy).map_err(|error| error.within("Connect.SidecarService"))?;
    let id = format!("{}-sidecar-proxy", parent.id);
    let proxy_service = &mut definition.service;
    proxy_service.id = id.clone();
    if proxy_service.kind.is_empty() {
        proxy_service.kind = "connect-proxy".into();
    }
    if proxy_service.address.is_empty() {
        proxy_service.address = parent.address.clone();
    }
    if proxy_service.tags.is_empty() {
        proxy_service.tags = parent.tags.clone();
    }
    if proxy_service.meta.is_empty() {
        proxy_service.meta = parent.meta.clone();
    }
    if proxy_service.locality.is_none() {
        proxy_service.locality = parent.locality.clone();
    }
    let proxy = proxy_service
        .proxy
        .get_or_insert_with(ServiceProxy::default);
    if proxy.destination_service_name.is_empty() {
        proxy.destination_service_name = parent.name.clone();
    }
    if proxy.destination_service_id.is_empty() {
        proxy.destination_service_id = parent.id.clone();
    }
    if proxy.local_service_address.is_empty() {
        proxy.local_service_address = "127.0.0.1".into();
    }
    if proxy.local_service_port == 0 {
        proxy.local_service_port = parent.port;
    }
    for check in &mut definition.checks {
        check.service_id = id.clone();
    }
    if definition.checks.is_empty() {
        let checks = vec![
            CheckIn {
                check_id: format!("service:{id}:1"),
                name: "Connect Sidecar Listening".into(),
                // The port is filled in when the agent assigns it.
                tcp: format!(
                    "{}:{}",
                    sidecar_check_address(proxy_service),
                    proxy_service.port
                ),
                interval: "10s".into(),
                ..CheckIn::default()
            },
            CheckIn {
                check_id: format!("service:{id}:2"),
                name: format!("Connect Sidecar Aliasing {}", parent.id),
                alias_service: parent.id.clone(),
                ..CheckIn::default()
            },
        ];
        for mut check in checks {
            check.service_id = id.clone();
            definition.checks.push(check_definition(check, policy)?);
        }
    }
    Ok(definition)
}

/// The address the sidecar's listening check dials.
pub fn sidecar_check_address(service: &Service) -> String {
    if !service.address.is_empty() {
        return service.address.clone();
    }
    service
        .proxy
        .as_ref()
        .map(|proxy| proxy.local_service_address.clone())
        .filter(|address| !address.is_empty())
        .unwrap_or_else(|| "127.0.0.1".into())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct CheckIn {
    #[serde(rename = "ID")]
    id: String,
    #[serde(rename = "CheckID")]
    check_id: String,
    name: String,
    notes: String,
    status: String,
    #[serde(rename = "ServiceID")]
    service_id: String,
    #[serde(deserialize_with = "duration_text")]
    interval: String,
    #[serde(deserialize_with = "duration_text")]
    timeout: String,
    #[serde(rename = "TTL")]
    #[serde(deserialize_with = "duration_text")]
    ttl: String,
    #[serde(rename = "HTTP")]
    http: String,
    method: String,
    header: BTreeMap<String, Vec<String>>,
    body: String,
    #[serde(rename = "TLSSkipVerify")]
    tls_skip_verify: bool,
    #[serde(rename = "TCP")]
    tcp: String,
    #[serde(rename = "UDP")]
    udp: String,
    args: Vec<String>,
    script_args: Vec<String>,
    #[serde(rename = "GRPC")]
    grpc: String,
    #[serde(rename = "H2PING")]
    h2ping: String,
    alias_service: String,
    alias_node: String,
    #[serde(deserialize_with = "duration_text")]
    deregister_critical_service_after: String,
    success_before_passing: u32,
    failures_before_warning: Option<u32>,
    failures_before_critical: u32,
    output_max_size: usize,
}

/// A duration field as Consul reads it: a Go duration string, or a number of nanoseconds
/// (which is what Go clients that marshal a `time.Duration` send).
fn duration_text<'de, D: serde::Deserializer<'de>>(deserializer: D) -> Result<String, D::Error> {
    use serde::de::Error;
    match Value::deserialize(deserializer)? {
        Value::Null => Ok(String::new()),
        Value::String(text) => Ok(text),
        Value::Number(number) => number
            .as_u64()
            .map(|nanos| format_go_duration(Duration::from_nanos(nanos)))
            .ok_or_else(|| D::Error::custom(format!("invalid duration {number}"))),
        other => Err(D::Error::custom(format!(
            "invalid type: {other}, expected a duration"
        ))),
    }
}

fn duration(field: &str, text: &str) -> Result<Option<Duration>, DecodeError> {
    if text.is_empty() {
        return Ok(None);
    }
    parse_go_duration(text)
        .map(Some)
        .map_err(|error| DecodeError::new(format!("Invalid {field} {text:?}: {error}")))
}

/// Parses one service definition (a JSON object in any of Consul's spellings).
pub fn service(value: Value, policy: DefinitionPolicy) -> Result<ServiceDefinition, DecodeError> {
    let input: ServiceIn = serde_json::from_value(canonicalize(value))
        .map_err(|error| DecodeError::new(format!("Request decode failed: {error}")))?;
    if input.name.is_empty() {
        return Err(DecodeError::new("Missing service name"));
    }
    let id = if input.id.is_empty() {
        input.name.clone()
    } else {
        input.id
    };
    let weights = match input.weights {
        Some(weights) if weights.passing == 0 => {
            return Err(DecodeError::new(
                "Invalid Weights: Passing must be greater than 0",
            ))
        }
        Some(weights) => Weights {
            passing: weights.passing,
            warning: weights.warning,
        },
        None => Weights::default(),
    };
    if let Some(Err(error)) = input.locality.as_ref().map(Locality::check) {
        // Consul's NodeService.Validate, whose errors are a multierror list.
        return Err(DecodeError::new(format!(
            "Validation failed: 1 error occurred:\n\t* {error}\n\n"
        )));
    }
    let service = Service {
        id: id.clone(),
        name: input.name.clone(),
        kind: input.kind,
        tags: input.tags,
        address: input.address,
        port: input.port,
        meta: input.meta,
        tagged_addresses: input
            .tagged_addresses
            .into_iter()
            .map(|(name, address)| {
                let address = ServiceAddress {
                    address: address.address,
                    port: address.port,
                };
                (name, address)
            })
            .collect(),
        weights,
        enable_tag_override: input.enable_tag_override,
        proxy: input.proxy.map(proxy).transpose()?,
        connect_native: input.connect.as_ref().is_some_and(|connect| connect.native),
        indexes: RaftIndexes::default(),
        locality: input.locality,
    };
    if service.kind == "connect-proxy"
        && service
            .proxy
            .as_ref()
            .is_none_or(|proxy| proxy.destination_service_name.is_empty())
    {
        return Err(DecodeError::new(
            "Proxy.DestinationServiceName must be set for a connect-proxy service",
        ));
    }
    let inputs: Vec<CheckIn> = input.check.into_iter().chain(input.checks).collect();
    let count = inputs.len();
    let mut checks = Vec::with_capacity(count);
    for (position, mut check) in inputs.into_iter().enumerate() {
        check.service_id = id.clone();
        if check.id.is_empty() && check.check_id.is_empty() {
            // Consul's default ids for checks defined inside a service.
            check.check_id = if count == 1 {
                format!("service:{id}")
            } else {
                format!("service:{id}:{}", position + 1)
            };
        }
        if check.name.is_empty() {
            check.name = format!("Service '{}' check", input.name);
        }
        checks.push(check_definition(check, policy)?);
    }
    let sidecar = match input.connect.and_then(|connect| connect.sidecar_service) {
        Some(value) if !value.is_null() => Some(Box::new(sidecar(value, &service, policy)?)),
        _ => None,
    };
    Ok(ServiceDefinition {
        service,
        checks,
        sidecar,
    })
}

/// Parses one check definition.
pub fn check(value: Value, policy: DefinitionPolicy) -> Result<CheckDefinition, DecodeError> {
    let input: CheckIn = serde_json::from_value(canonicalize(value))
        .map_err(|error| DecodeError::new(format!("Request decode failed: {error}")))?;
    check_definition(input, policy)
}

fn check_definition(
    input: CheckIn,
    policy: DefinitionPolicy,
) -> Result<CheckDefinition, DecodeError> {
    let id = [&input.check_id, &input.id, &input.name]
        .into_iter()
        .find(|text| !text.is_empty())
        .cloned()
        .ok_or_else(|| DecodeError::new("Missing check name"))?;
    let name = if input.name.is_empty() {
        id.clone()
    } else {
        input.name.clone()
    };
    for (field, value) in [("GRPC", &input.grpc), ("H2PING", &input.h2ping)] {
        if !value.is_empty() {
            return Err(DecodeError::new(format!(
                "Invalid check {id:?}: {field} checks are not supported by this release yet"
            )));
        }
    }
    let args = if input.args.is_empty() {
        input.script_args.clone()
    } else {
        input.args.clone()
    };
    let interval = duration("Interval", &input.interval)?;
    let timeout = duration("Timeout", &input.timeout)?;
    let ttl = duration("TTL", &input.ttl)?;
    let mut kinds = Vec::new();
    if !input.http.is_empty() {
        let method = if input.method.is_empty() {
            "GET".to_string()
        } else {
            input.method.to_ascii_uppercase()
        };
        let headers = input
            .header
            .iter()
            .flat_map(|(name, values)| {
                values
                    .iter()
                    .map(move |value| (name.clone(), value.clone()))
            })
            .collect();
        kinds.push(CheckKind::Http {
            url: input.http.clone(),
            method,
            headers,
            body: input.body.clone(),
            tls_skip_verify: input.tls_skip_verify,
        });
    }
    if !input.tcp.is_empty() {
        kinds.push(CheckKind::Tcp {
            address: input.tcp.clone(),
        });
    }
    if !input.udp.is_empty() {
        kinds.push(CheckKind::Udp {
            address: input.udp.clone(),
        });
    }
    if !args.is_empty() {
        if !policy.enable_script_checks {
            return Err(match policy.remote {
                true => DecodeError::refused_by_agent(
                    "Scripts are disabled on this agent from remote calls; to enable, configure \
                     'enable_script_checks' to true",
                ),
                false => DecodeError::new(format!(
                    "Invalid check {id:?}: Scripts are disabled on this agent; to enable, \
                     configure 'enable_script_checks' or 'enable_local_script_checks' to true"
                )),
            });
        }
        kinds.push(CheckKind::Script { args });
    }
    if let Some(ttl) = ttl {
        kinds.push(CheckKind::Ttl { ttl });
    }
    if !input.alias_service.is_empty() || !input.alias_node.is_empty() {
        kinds.push(CheckKind::Alias {
            node: input.alias_node.clone(),
            service: input.alias_service.clone(),
        });
    }
    let kind = match kinds.len() {
        1 => kinds.remove(0),
        0 => {
            return Err(DecodeError::new(format!(
                "Invalid check {id:?}: must define one of HTTP, TCP, UDP, Args, TTL or Alias"
            )))
        }
        _ => {
            return Err(DecodeError::new(format!(
                "Invalid check {id:?}: define only one of HTTP, TCP, UDP, Args, TTL or Alias"
            )))
        }
    };
    let interval = match (&kind, interval) {
        (CheckKind::Ttl { .. } | CheckKind::Alias { .. } | CheckKind::Maintenance, _) => {
            Duration::ZERO
        }
        (_, Some(interval)) if !interval.is_zero() => interval.max(MIN_INTERVAL),
        _ => {
            return Err(DecodeError::new(format!(
                "Invalid check {id:?}: Interval must be > 0 for HTTP, TCP, UDP and script checks"
            )))
        }
    };
    let default_timeout = match kind {
        CheckKind::Script { .. } => DEFAULT_SCRIPT_TIMEOUT,
        _ => DEFAULT_TIMEOUT,
    };
    let initial_status = match input.status.as_str() {
        "" => HealthStatus::Critical,
        text => HealthStatus::parse(text)
            .filter(|status| *status != HealthStatus::Maintenance)
            .ok_or_else(|| {
                DecodeError::new(format!(
                    "Invalid check {id:?}: Status {text:?} is not valid"
                ))
            })?,
    };
    Ok(CheckDefinition {
        id,
        name,
        notes: input.notes,
        service_id: input.service_id,
        initial_status,
        kind,
        interval,
        timeout: timeout.unwrap_or(default_timeout),
        deregister_critical_after: duration(
            "DeregisterCriticalServiceAfter",
            &input.deregister_critical_service_after,
        )?
        .map(|after| after.max(MIN_DEREGISTER_AFTER)),
        success_before_passing: input.success_before_passing,
        failures_before_critical: input.failures_before_critical,
        failures_before_warning: input
            .failures_before_warning
            .unwrap_or(input.failures_before_critical),
        output_max_size: if input.output_max_size == 0 {
            DEFAULT_OUTPUT_MAX
        } else {
            input.output_max_size
        },
    })
}

/// A `service`/`services` or `check`/`checks` config value: one object or a list of them.
pub fn one_or_many(value: Value) -> Vec<Value> {
    match value {
        Value::Array(items) => items,
        other => vec![other],
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const SCRIPTS_ON: DefinitionPolicy = DefinitionPolicy {
        enable_script_checks: true,
        remote: true,
    };

    #[test]
    fn durations_are_go_strings_or_nanoseconds() {
        let check = |value| super::check(value, DefinitionPolicy::default()).unwrap();
        let from_text =
            check(json!({"name": "c", "ttl": "30s", "deregister_critical_service_after": "90s"}));
        let from_nanos = check(
            json!({"name": "c", "ttl": 30_000_000_000u64, "deregister_critical_service_after": 90_000_000_000u64}),
        );
        assert_eq!(from_text.kind, from_nanos.kind);
        assert_eq!(
            from_text.deregister_critical_after,
            from_nanos.deregister_critical_after
        );
        let error = super::check(
            json!({"name": "c", "ttl": true}),
            DefinitionPolicy::default(),
        )
        .unwrap_err();
        assert!(error.to_string().contains("expected a duration"), "{error}");
    }

    #[test]
    fn config_style_service_with_checks() {
        let definition = service(
            json!({
                "name": "web", "tags": ["rails"], "port": 80,
                "checks": [
                    {"http": "http://127.0.0.1:80/health", "interval": "10s"},
                    {"ttl": "30s"}
                ]
            }),
            DefinitionPolicy::default(),
        )
        .expect("valid");
        assert_eq!(definition.service.id, "web");
        assert_eq!(definition.service.tags, ["rails"]);
        let ids: Vec<&str> = definition.checks.iter().map(|c| c.id.as_str()).collect();
        assert_eq!(ids, ["service:web:1", "service:web:2"]);
        assert_eq!(definition.checks[0].service_id, "web");
        assert_eq!(definition.checks[0].interval, Duration::from_secs(10));
        assert_eq!(
            definition.checks[1].kind,
            CheckKind::Ttl {
                ttl: Duration::from_secs(30)
            }
        );
        assert_eq!(definition.checks[1].initial_status, HealthStatus::Critical);
    }

    #[test]
    fn api_style_check_with_pascal_case() {
        let check = check(
            json!({"Name": "mem", "Args": ["/bin/true"], "Interval": "500ms", "Status": "passing"}),
            SCRIPTS_ON,
        )
        .expect("valid");
        assert_eq!(check.id, "mem");
        assert_eq!(
            check.interval, MIN_INTERVAL,
            "intervals below 1s are raised to 1s"
        );
        assert_eq!(check.initial_status, HealthStatus::Passing);
        assert_eq!(check.timeout, DEFAULT_SCRIPT_TIMEOUT);
    }

    #[test]
    fn invalid_definitions_name_the_field() {
        let cases = [
            (json!({"name": "c", "http": "http://x"}), "Interval"),
            (
                json!({"name": "c", "tcp": "x:1", "interval": "often"}),
                "Interval",
            ),
            (json!({"name": "c"}), "must define one of"),
            (json!({"name": "c", "tcp": "x:1", "ttl": "5s"}), "only one"),
            (
                json!({"name": "c", "args": ["true"], "interval": "5s"}),
                "enable_script_checks",
            ),
            (
                json!({"name": "c", "grpc": "x:1", "interval": "5s"}),
                "GRPC",
            ),
            (
                json!({"name": "c", "ttl": "5s", "status": "fine"}),
                "Status",
            ),
            (json!({"ttl": "5s"}), "Missing check name"),
        ];
        for (input, expected) in cases {
            let error = check(input.clone(), DefinitionPolicy::default())
                .err()
                .unwrap_or_else(|| panic!("{input} parsed"))
                .to_string();
            assert!(error.contains(expected), "{input}: {error}");
        }
        let error = service(json!({"port": 80}), DefinitionPolicy::default())
            .unwrap_err()
            .to_string();
        assert!(error.contains("service name"), "{error}");
    }
}
