//! A service's `Proxy` block as Consul's APIs take it (agent registrations, service
//! definitions and catalog registrations alike): destination, local service, mode, opaque
//! config and upstreams, each upstream checked.

use serde::Deserialize;
use serde_json::Value;

use super::decode::DecodeError;
use crate::types::connect::{ServiceProxy, Upstream};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProxyIn {
    destination_service_name: String,
    #[serde(rename = "DestinationServiceID")]
    destination_service_id: String,
    local_service_address: String,
    local_service_port: u16,
    mode: String,
    config: Option<Value>,
    upstreams: Vec<UpstreamIn>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct UpstreamIn {
    destination_type: String,
    destination_name: String,
    datacenter: String,
    local_bind_address: String,
    local_bind_port: u16,
    config: Option<Value>,
}

/// An opaque JSON value as stored text ("" when absent or null).
pub fn json_text(value: Option<Value>) -> String {
    value
        .filter(|value| !value.is_null())
        .map(|value| value.to_string())
        .unwrap_or_default()
}

pub fn proxy(input: ProxyIn) -> Result<ServiceProxy, DecodeError> {
    let mut upstreams = Vec::with_capacity(input.upstreams.len());
    for (i, upstream) in input.upstreams.into_iter().enumerate() {
        if upstream.destination_name.is_empty() {
            return Err(DecodeError::new(format!(
                "Proxy.Upstreams[{i}]: DestinationName is required"
            )));
        }
        let kind = match upstream.destination_type.as_str() {
            "" | "service" => "service",
            "prepared_query" => "prepared_query",
            other => {
                return Err(DecodeError::new(format!(
                "Proxy.Upstreams[{i}]: DestinationType {other:?} must be service or prepared_query"
            )))
            }
        };
        upstreams.push(Upstream {
            destination_type: kind.into(),
            destination_name: upstream.destination_name,
            datacenter: upstream.datacenter,
            local_bind_address: upstream.local_bind_address,
            local_bind_port: upstream.local_bind_port,
            config_json: json_text(upstream.config),
        });
    }
    Ok(ServiceProxy {
        destination_service_name: input.destination_service_name,
        destination_service_id: input.destination_service_id,
        local_service_address: input.local_service_address,
        local_service_port: input.local_service_port,
        mode: input.mode,
        config_json: json_text(input.config),
        upstreams,
    })
}
