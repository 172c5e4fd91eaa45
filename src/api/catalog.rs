//! Catalog wire shapes: `Node`, `ServiceNode`, `AgentService`, `HealthCheck`, and the bodies of
//! `/v1/catalog/register` and `/v1/catalog/deregister`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize, Serializer};
use serde_json::{json, Map, Value};

use super::decode::DecodeError;
use crate::types::{
    Check, DeregisterRequest, HealthStatus, Locality, Node, RaftIndexes, RegisterRequest, Service,
    ServiceAddress, Weights,
};

/// Go encodes a nil map as `null`; Consul's empty maps usually are nil.
fn string_map(map: &BTreeMap<String, String>) -> Value {
    if map.is_empty() {
        Value::Null
    } else {
        json!(map)
    }
}

fn service_addresses(map: &BTreeMap<String, ServiceAddress>) -> Value {
    if map.is_empty() {
        return Value::Null;
    }
    Value::Object(
        map.iter()
            .map(|(name, address)| {
                (
                    name.clone(),
                    json!({"Address": address.address, "Port": address.port}),
                )
            })
            .collect::<Map<_, _>>(),
    )
}

/// A string map as Go encodes Consul's usually-nil maps: `null` when empty.
struct NilMap<'a>(&'a BTreeMap<String, String>);

impl Serialize for NilMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            serializer.serialize_none()
        } else {
            self.0.serialize(serializer)
        }
    }
}

/// A service's `TaggedAddresses`: `null` when empty, else name -> `{"Address", "Port"}`.
struct AddressMap<'a>(&'a BTreeMap<String, ServiceAddress>);

impl Serialize for AddressMap<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        if self.0.is_empty() {
            return serializer.serialize_none();
        }
        serializer.collect_map(self.0.iter().map(|(name, address)| {
            (
                name,
                AddressJson {
                    address: &address.address,
                    port: address.port,
                },
            )
        }))
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct AddressJson<'a> {
    address: &'a str,
    port: u16,
}

/// `{"Region", "Zone"}`, each left out when empty (`json:",omitempty"`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct LocalityJson<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    region: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    zone: &'a str,
}

impl<'a> LocalityJson<'a> {
    fn of(locality: &'a Locality) -> LocalityJson<'a> {
        LocalityJson {
            region: &locality.region,
            zone: &locality.zone,
        }
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct WeightsJson {
    passing: u32,
    warning: u32,
}

/// An empty JSON object (`{}`), for Consul's always-present empty structs.
#[derive(Serialize)]
struct Empty {}

/// A node as Consul's `Node` (borrowed: hot paths serialise it without building a `Value`).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct NodeJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    node: &'a str,
    address: &'a str,
    datacenter: &'a str,
    tagged_addresses: NilMap<'a>,
    meta: NilMap<'a>,
    create_index: u64,
    modify_index: u64,
    /// Consul omits an unset locality (`Locality *Locality json:",omitempty"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    locality: Option<LocalityJson<'a>>,
}

impl<'a> NodeJson<'a> {
    pub fn of(node: &'a Node) -> NodeJson<'a> {
        NodeJson {
            id: &node.id,
            node: &node.name,
            address: &node.address,
            datacenter: &node.datacenter,
            tagged_addresses: NilMap(&node.tagged_addresses),
            meta: NilMap(&node.meta),
            create_index: node.indexes.create,
            modify_index: node.indexes.modify,
            locality: node.locality.as_ref().map(LocalityJson::of),
        }
    }
}

pub fn node(node: &Node) -> Value {
    to_value(NodeJson::of(node))
}

/// Serialising our own borrowed shapes to a `Value` cannot fail (string keys, finite
/// numbers); `Null` stands in for the impossible.
fn to_value(shape: impl Serialize) -> Value {
    serde_json::to_value(shape).unwrap_or(Value::Null)
}

/// A service as Consul's `AgentService`, as `/v1/catalog/node/*`, `/v1/agent/services` and the
/// health endpoints show it.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AgentServiceJson<'a> {
    #[serde(rename = "ID")]
    id: &'a str,
    service: &'a str,
    tags: &'a [String],
    meta: NilMap<'a>,
    port: u16,
    address: &'a str,
    tagged_addresses: AddressMap<'a>,
    weights: WeightsJson,
    enable_tag_override: bool,
    datacenter: &'a str,
    create_index: u64,
    modify_index: u64,
    #[serde(skip_serializing_if = "str::is_empty")]
    kind: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    proxy: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connect: Option<NativeJson>,
    #[serde(skip_serializing_if = "Option::is_none")]
    locality: Option<LocalityJson<'a>>,
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct NativeJson {
    native: bool,
}

impl<'a> AgentServiceJson<'a> {
    pub fn of(service: &'a Service, datacenter: &'a str) -> AgentServiceJson<'a> {
        AgentServiceJson {
            id: &service.id,
            service: &service.name,
            tags: &service.tags,
            meta: NilMap(&service.meta),
            port: service.port,
            address: &service.address,
            tagged_addresses: AddressMap(&service.tagged_addresses),
            weights: WeightsJson {
                passing: service.weights.passing,
                warning: service.weights.warning,
            },
            enable_tag_override: service.enable_tag_override,
            datacenter,
            create_index: service.indexes.create,
            modify_index: service.indexes.modify,
            kind: &service.kind,
            proxy: service.proxy.is_some().then(|| proxy_json(service)),
            connect: service
                .connect_native
                .then_some(NativeJson { native: true }),
            locality: service.locality.as_ref().map(LocalityJson::of),
        }
    }
}

/// The shape of a service in `/v1/catalog/node/*` and `/v1/agent/services`.
pub fn agent_service(service: &Service, datacenter: &str) -> Value {
    to_value(AgentServiceJson::of(service, datacenter))
}

fn opaque(text: &str) -> Option<Value> {
    (!text.is_empty())
        .then(|| serde_json::from_str(text).ok())
        .flatten()
}

/// `Proxy` / `ServiceProxy` in Consul's order and emptiness rules: `Mode` always, `Config`
/// and `Upstreams` only when set, `MeshGateway` and `Expose` as `{}`.
pub fn proxy_json(service: &Service) -> Value {
    let Some(proxy) = &service.proxy else {
        return json!({"MeshGateway": {}, "Expose": {}});
    };
    let mut value = serde_json::Map::new();
    value.insert(
        "DestinationServiceName".into(),
        json!(proxy.destination_service_name),
    );
    if !proxy.destination_service_id.is_empty() {
        value.insert(
            "DestinationServiceID".into(),
            json!(proxy.destination_service_id),
        );
    }
    if !proxy.local_service_address.is_empty() {
        value.insert(
            "LocalServiceAddress".into(),
            json!(proxy.local_service_address),
        );
    }
    if proxy.local_service_port != 0 {
        value.insert("LocalServicePort".into(), json!(proxy.local_service_port));
    }
    value.insert("Mode".into(), json!(proxy.mode));
    if let Some(config) = opaque(&proxy.config_json) {
        value.insert("Config".into(), config);
    }
    if !proxy.upstreams.is_empty() {
        let upstreams: Vec<Value> = proxy
            .upstreams
            .iter()
            .map(|upstream| {
                let mut item = json!({
                    "DestinationType": upstream.destination_type,
                    "DestinationName": upstream.destination_name,
                    "LocalBindPort": upstream.local_bind_port,
                    "MeshGateway": {},
                });
                if !upstream.datacenter.is_empty() {
                    item["Datacenter"] = json!(upstream.datacenter);
                }
                if !upstream.local_bind_address.is_empty() {
                    item["LocalBindAddress"] = json!(upstream.local_bind_address);
                }
                if let Some(config) = opaque(&upstream.config_json) {
                    item["Config"] = config;
                }
                item
            })
            .collect();
        value.insert("Upstreams".into(), Value::Array(upstreams));
    }
    value.insert("MeshGateway".into(), json!({}));
    value.insert("Expose".into(), json!({}));
    Value::Object(value)
}

/// The shape of one instance in `/v1/catalog/service/:name`.
pub fn service_node(node: &Node, service: &Service) -> Value {
    let mut value = json!({
        "ID": node.id,
        "Node": node.name,
        "Address": node.address,
        "Datacenter": node.datacenter,
        "TaggedAddresses": string_map(&node.tagged_addresses),
        "NodeMeta": string_map(&node.meta),
        "ServiceKind": service.kind,
        "ServiceID": service.id,
        "ServiceName": service.name,
        "ServiceTags": service.tags,
        "ServiceAddress": service.address,
        "ServiceTaggedAddresses": service_addresses(&service.tagged_addresses),
        "ServiceWeights": {"Passing": service.weights.passing, "Warning": service.weights.warning},
        "ServiceMeta": service.meta,
        "ServicePort": service.port,
        "ServiceSocketPath": "",
        "ServiceEnableTagOverride": service.enable_tag_override,
        "ServiceProxy": proxy_json(service),
        "ServiceConnect": if service.connect_native { json!({"Native": true}) } else { json!({}) },
        "CreateIndex": service.indexes.create,
        "ModifyIndex": service.indexes.modify,
    });
    // Consul's ServiceNode always carries this one, `null` when unset.
    value["ServiceLocality"] = service
        .locality
        .as_ref()
        .map_or(Value::Null, |locality| to_value(LocalityJson::of(locality)));
    value
}

/// A check as Consul's `HealthCheck`.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthCheckJson<'a> {
    node: &'a str,
    #[serde(rename = "CheckID")]
    check_id: &'a str,
    name: &'a str,
    status: &'a str,
    notes: &'a str,
    output: &'a str,
    #[serde(rename = "ServiceID")]
    service_id: &'a str,
    service_name: &'a str,
    service_tags: &'a [String],
    r#type: &'a str,
    interval: &'a str,
    timeout: &'a str,
    exposed_port: u16,
    definition: Empty,
    create_index: u64,
    modify_index: u64,
}

impl<'a> HealthCheckJson<'a> {
    pub fn of(check: &'a Check) -> HealthCheckJson<'a> {
        HealthCheckJson {
            node: &check.node,
            check_id: &check.check_id,
            name: &check.name,
            status: check.status.as_str(),
            notes: &check.notes,
            output: &check.output,
            service_id: &check.service_id,
            service_name: &check.service_name,
            service_tags: &check.service_tags,
            r#type: &check.check_type,
            interval: &check.interval,
            timeout: &check.timeout,
            exposed_port: 0,
            definition: Empty {},
            create_index: check.indexes.create,
            modify_index: check.indexes.modify,
        }
    }
}

pub fn health_check(check: &Check) -> Value {
    to_value(HealthCheckJson::of(check))
}

/// One instance with its node and checks, as Consul's `CheckServiceNode` (the health
/// endpoints and prepared queries).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct CheckServiceNodeJson<'a> {
    pub node: NodeJson<'a>,
    pub service: AgentServiceJson<'a>,
    pub checks: Vec<HealthCheckJson<'a>>,
}

impl<'a> CheckServiceNodeJson<'a> {
    pub fn of(
        node: &'a Node,
        service: &'a Service,
        datacenter: &'a str,
        checks: impl Iterator<Item = &'a Check>,
    ) -> CheckServiceNodeJson<'a> {
        CheckServiceNodeJson {
            node: NodeJson::of(node),
            service: AgentServiceJson::of(service, datacenter),
            checks: checks.map(HealthCheckJson::of).collect(),
        }
    }

    /// The node's name, which `?near=` sorts by.
    pub fn node_name(&self) -> &'a str {
        self.node.node
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct RegisterIn {
    #[serde(rename = "ID")]
    pub id: String,
    pub node: String,
    pub address: String,
    pub datacenter: String,
    pub tagged_addresses: BTreeMap<String, String>,
    pub node_meta: BTreeMap<String, String>,
    pub service: Option<ServiceIn>,
    pub check: Option<CheckIn>,
    pub checks: Vec<CheckIn>,
    pub skip_node_update: bool,
    pub locality: Option<Locality>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceIn {
    #[serde(rename = "ID")]
    pub id: String,
    pub service: String,
    pub kind: String,
    pub tags: Vec<String>,
    pub address: String,
    pub port: u16,
    pub meta: BTreeMap<String, String>,
    pub tagged_addresses: BTreeMap<String, ServiceAddressIn>,
    pub weights: Option<WeightsIn>,
    pub enable_tag_override: bool,
    /// A transaction's CAS index (`/v1/txn`); a registration ignores it.
    pub modify_index: u64,
    pub locality: Option<Locality>,
    /// A `connect-proxy` service's proxy settings, as the agent API takes them.
    proxy: Option<super::proxy::ProxyIn>,
    connect: Option<ConnectIn>,
}

/// A catalog service's `Connect` block: whether it speaks mTLS itself.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ConnectIn {
    pub native: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceAddressIn {
    pub address: String,
    pub port: u16,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct WeightsIn {
    pub passing: u32,
    pub warning: u32,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct CheckIn {
    pub node: String,
    #[serde(rename = "CheckID")]
    pub check_id: String,
    pub name: String,
    pub status: String,
    pub notes: String,
    pub output: String,
    #[serde(rename = "ServiceID")]
    pub service_id: String,
    #[serde(rename = "Type")]
    pub check_type: String,
    pub interval: String,
    pub timeout: String,
    /// A transaction's CAS index (`/v1/txn`); a registration ignores it.
    pub modify_index: u64,
}

/// The node and datacenter a registration is checked against.
pub struct RegisterContext<'a> {
    pub datacenter: &'a str,
}

impl RegisterIn {
    /// Validates and converts; errors are Consul's 400 messages.
    pub fn into_request(self, context: &RegisterContext) -> Result<RegisterRequest, DecodeError> {
        if self.node.is_empty() {
            return Err(DecodeError::new("Must provide node"));
        }
        if self.address.is_empty() && !self.skip_node_update {
            return Err(DecodeError::new(
                "Must provide address if SkipNodeUpdate is not set",
            ));
        }
        if !self.datacenter.is_empty() && self.datacenter != context.datacenter {
            return Err(DecodeError::new("No path to datacenter"));
        }
        let service = self.service.map(ServiceIn::into_service).transpose()?;
        let mut checks = Vec::new();
        for check in self.check.into_iter().chain(self.checks) {
            checks.push(check.into_check(&self.node)?);
        }
        Ok(RegisterRequest {
            node: Node {
                id: self.id,
                name: self.node,
                address: self.address,
                datacenter: context.datacenter.to_string(),
                tagged_addresses: self.tagged_addresses,
                meta: self.node_meta,
                indexes: RaftIndexes::default(),
                locality: self.locality,
            },
            skip_node_update: self.skip_node_update,
            service,
            checks,
        })
    }
}

impl ServiceIn {
    pub(super) fn into_service(self) -> Result<Service, DecodeError> {
        if self.service.is_empty() {
            return Err(DecodeError::new(
                "Must provide service name (Service.Service) with Service",
            ));
        }
        if let Some(Err(error)) = self.locality.as_ref().map(Locality::check) {
            // Consul's NodeService.Validate, whose errors are a multierror list.
            return Err(DecodeError::new(format!(
                "1 error occurred:\n\t* {error}\n\n"
            )));
        }
        // Only a proxy keeps proxy settings, as Consul's catalog does.
        let proxy = match (self.kind.as_str(), self.proxy) {
            ("connect-proxy", Some(proxy)) => {
                Some(super::proxy::proxy(proxy).map_err(|error| error.within("Service"))?)
            }
            _ => None,
        };
        let weights = match self.weights {
            Some(weights) if weights.passing == 0 => {
                return Err(DecodeError::new("Passing must be greater than 0"))
            }
            Some(weights) => Weights {
                passing: weights.passing,
                warning: weights.warning,
            },
            None => Weights::default(),
        };
        Ok(Service {
            id: if self.id.is_empty() {
                self.service.clone()
            } else {
                self.id
            },
            name: self.service,
            kind: self.kind,
            tags: self.tags,
            address: self.address,
            port: self.port,
            meta: self.meta,
            tagged_addresses: self
                .tagged_addresses
                .into_iter()
                .map(|(name, address)| {
                    (
                        name,
                        ServiceAddress {
                            address: address.address,
                            port: address.port,
                        },
                    )
                })
                .collect(),
            weights,
            enable_tag_override: self.enable_tag_override,
            proxy,
            connect_native: self.connect.is_some_and(|connect| connect.native),
            indexes: RaftIndexes::default(),
            locality: self.locality,
        })
    }
}

impl CheckIn {
    pub(super) fn into_check(self, node: &str) -> Result<Check, DecodeError> {
        if !self.node.is_empty() && self.node != node {
            return Err(DecodeError::new(format!(
                "Check node {:?} does not match registration node {node:?}",
                self.node
            )));
        }
        if self.name.is_empty() && self.check_id.is_empty() {
            return Err(DecodeError::new("Must provide a check Name or CheckID"));
        }
        let status = if self.status.is_empty() {
            HealthStatus::Critical
        } else {
            HealthStatus::parse(&self.status)
                .filter(|status| *status != HealthStatus::Maintenance)
                .ok_or_else(|| {
                    DecodeError::new(format!("Invalid check status {:?}", self.status))
                })?
        };
        Ok(Check {
            node: node.to_string(),
            check_id: if self.check_id.is_empty() {
                self.name.clone()
            } else {
                self.check_id
            },
            name: if self.name.is_empty() {
                "".to_string()
            } else {
                self.name
            },
            status,
            notes: self.notes,
            output: self.output,
            service_id: self.service_id,
            service_name: String::new(),
            service_tags: Vec::new(),
            check_type: self.check_type,
            interval: self.interval,
            timeout: self.timeout,
            indexes: RaftIndexes::default(),
        })
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct DeregisterIn {
    pub node: String,
    pub datacenter: String,
    #[serde(rename = "ServiceID")]
    pub service_id: Option<String>,
    #[serde(rename = "CheckID")]
    pub check_id: Option<String>,
}

impl DeregisterIn {
    pub fn into_request(self, context: &RegisterContext) -> Result<DeregisterRequest, DecodeError> {
        if self.node.is_empty() {
            return Err(DecodeError::new("Must provide node"));
        }
        if !self.datacenter.is_empty() && self.datacenter != context.datacenter {
            return Err(DecodeError::new("No path to datacenter"));
        }
        Ok(DeregisterRequest {
            node: self.node,
            service_id: self.service_id.filter(|id| !id.is_empty()),
            check_id: self.check_id.filter(|id| !id.is_empty()),
        })
    }
}
