//! The Envoy bootstrap `concord connect envoy` generates: Consul's template (node id = proxy
//! id, node cluster = destination service, a static `local_agent` cluster speaking HTTP/2 to
//! the agent's gRPC port, delta ADS carrying the token), written with the fields Envoy 1.40
//! has not deprecated (`typed_extension_protocol_options` instead of
//! `http2_protocol_options`, no `admin.access_log_path`). To the agent's gRPC-TLS port the
//! cluster carries Consul's `tls` transport socket trusting the agent CA, inlined.

use std::net::SocketAddr;

use serde_json::{json, Value};

/// The Envoy release the tests run against. Others with the v3 API are accepted with a
/// warning: refusing them is a known complaint about Consul.
pub const TESTED_ENVOY: &str = "1.40.0";

pub struct BootstrapConfig {
    pub proxy_id: String,
    /// The destination service (`node.cluster`).
    pub service: String,
    pub datacenter: String,
    pub admin: SocketAddr,
    pub agent_grpc: SocketAddr,
    /// The agent CA (PEM) when `agent_grpc` is the TLS port.
    pub agent_ca_pem: Option<String>,
    pub token: Option<String>,
}

pub fn bootstrap(config: &BootstrapConfig) -> Value {
    let metadata = match &config.token {
        Some(token) if !token.is_empty() => json!([{"key": "x-consul-token", "value": token}]),
        _ => json!([]),
    };
    let mut local_agent = json!({
        "name": "local_agent",
        "type": "STATIC",
        "connect_timeout": "1s",
        "ignore_health_on_host_removal": false,
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions",
                "explicit_http_config": {"http2_protocol_options": {}},
            },
        },
        "load_assignment": {
            "cluster_name": "local_agent",
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": socket(config.agent_grpc)}}]}],
        },
    });
    if let Some(ca) = &config.agent_ca_pem {
        local_agent["transport_socket"] = json!({
            "name": "tls",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext",
                "common_tls_context": {
                    "validation_context": {"trusted_ca": {"inline_string": ca}},
                },
            },
        });
    }
    let ads = json!({"ads": {}, "initial_fetch_timeout": "0s", "resource_api_version": "V3"});
    json!({
        "admin": {
            "address": socket(config.admin),
        },
        "node": {
            "id": config.proxy_id,
            "cluster": config.service,
            "metadata": {"namespace": "default", "partition": "default"},
        },
        "layered_runtime": {
            "layers": [{
                "name": "base",
                "static_layer": {"re2.max_program_size.error_level": 1048576},
            }],
        },
        "static_resources": {
            "clusters": [local_agent],
        },
        "stats_config": {
            "stats_tags": [
                {"tag_name": "local_cluster", "fixed_value": config.service},
                {"tag_name": "consul.source.service", "fixed_value": config.service},
                {"tag_name": "consul.source.namespace", "fixed_value": "default"},
                {"tag_name": "consul.source.partition", "fixed_value": "default"},
                {"tag_name": "consul.source.datacenter", "fixed_value": config.datacenter},
            ],
            "use_all_default_tags": true,
        },
        "dynamic_resources": {
            "lds_config": ads,
            "cds_config": ads,
            "ads_config": {
                "api_type": "DELTA_GRPC",
                "transport_api_version": "V3",
                "grpc_services": {
                    "initial_metadata": metadata,
                    "envoy_grpc": {"cluster_name": "local_agent"},
                },
            },
        },
    })
}

fn socket(address: SocketAddr) -> Value {
    json!({"socket_address": {"address": address.ip().to_string(), "port_value": address.port()}})
}
