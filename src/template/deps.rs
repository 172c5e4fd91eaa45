//! What a template reads from the agent: each distinct dependency is one HTTP query (a
//! blocking query when watched), decoded into the shapes consul-template gives templates
//! (`HealthService`, `KeyPair`, `CatalogSnippet`, `Node`, ...).

use base64::Engine;
use serde_json::{json, Map, Value};

use crate::api::client::encode_path;

/// consul-template's health filter: healthy only (the default), any, or given states.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Health {
    Passing,
    Any,
    States(Vec<String>),
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Dependency {
    /// `service` and `connect`: `<tag>.<name>@<dc>~<near>|<filter>`.
    Service {
        name: String,
        tag: Option<String>,
        dc: Option<String>,
        near: Option<String>,
        health: Health,
        connect: bool,
    },
    Services {
        dc: Option<String>,
    },
    /// A node (`None`: the agent's own) and its services.
    Node {
        name: Option<String>,
        dc: Option<String>,
    },
    Nodes {
        dc: Option<String>,
        near: Option<String>,
    },
    /// `key`, `keyOrDefault`, `keyExists`.
    Key {
        path: String,
        dc: Option<String>,
    },
    /// `ls`, `tree` and their `safe` forms: everything under a prefix.
    Prefix {
        prefix: String,
        dc: Option<String>,
    },
    CaRoots,
    CaLeaf(String),
    Datacenters,
    /// The agent's node name, for `node` without a name.
    AgentSelf,
}

/// Splits `text@dc~near` into its parts.
fn at_dc(text: &str) -> (String, Option<String>, Option<String>) {
    let (rest, near) = match text.split_once('~') {
        Some((rest, near)) => (rest, Some(near.to_string())),
        None => (text, None),
    };
    match rest.split_once('@') {
        Some((name, dc)) => (name.to_string(), Some(dc.to_string()), near),
        None => (rest.to_string(), None, near),
    }
}

impl Dependency {
    /// `service "<tag>.<name>@<dc>~<near>|<filter>"` (and `connect`).
    pub(super) fn service(spec: &str, connect: bool) -> Result<Dependency, String> {
        let (spec, filter) = match spec.split_once('|') {
            Some((spec, filter)) => (spec, Some(filter)),
            None => (spec, None),
        };
        let (name, dc, near) = at_dc(spec);
        let (tag, name) = match name.rsplit_once('.') {
            Some((tag, name)) => (Some(tag.to_string()), name.to_string()),
            None => (None, name),
        };
        if name.is_empty() {
            return Err(format!("invalid service spec {spec:?}: no service name"));
        }
        let health = match filter {
            None => Health::Passing,
            Some("any") => Health::Any,
            Some(list) => {
                let states: Vec<String> = list.split(',').map(|s| s.trim().to_string()).collect();
                for state in &states {
                    if !matches!(
                        state.as_str(),
                        "passing" | "warning" | "critical" | "maintenance"
                    ) {
                        return Err(format!("invalid health status {state:?} in {spec:?}"));
                    }
                }
                Health::States(states)
            }
        };
        Ok(Dependency::Service {
            name,
            tag,
            dc,
            near,
            health,
            connect,
        })
    }

    pub fn key(spec: &str) -> Dependency {
        let (path, dc, _) = at_dc(spec);
        Dependency::Key { path, dc }
    }

    pub fn prefix(spec: &str) -> Dependency {
        let (prefix, dc, _) = at_dc(spec);
        Dependency::Prefix {
            prefix: prefix.trim_start_matches('/').to_string(),
            dc,
        }
    }

    pub fn node(spec: Option<&str>) -> Dependency {
        match spec {
            None => Dependency::Node {
                name: None,
                dc: None,
            },
            Some(spec) => {
                let (name, dc, _) = at_dc(spec);
                Dependency::Node {
                    name: (!name.is_empty()).then_some(name),
                    dc,
                }
            }
        }
    }

    pub fn nodes(spec: Option<&str>) -> Dependency {
        let (_, dc, near) = at_dc(spec.unwrap_or(""));
        Dependency::Nodes { dc, near }
    }

    pub fn services(spec: Option<&str>) -> Dependency {
        let (_, dc, _) = at_dc(spec.unwrap_or(""));
        Dependency::Services { dc }
    }

    /// The HTTP path and query this dependency reads, without the blocking parameters;
    /// `None` for a node dependency that needs the agent's name first.
    pub fn path(&self, agent_node: Option<&str>) -> Option<String> {
        let dc = |dc: &Option<String>| {
            dc.as_ref()
                .map(|dc| format!("dc={}", encode_path(dc)))
                .into_iter()
        };
        let join = |path: String, params: Vec<String>| match params.is_empty() {
            true => path,
            false => format!("{path}?{}", params.join("&")),
        };
        Some(match self {
            Dependency::Service {
                name,
                tag,
                dc: datacenter,
                near,
                health,
                connect,
            } => {
                let kind = if *connect { "connect" } else { "service" };
                let mut params: Vec<String> = dc(datacenter).collect();
                if *health == Health::Passing {
                    params.push("passing".into());
                }
                if let Some(tag) = tag {
                    params.push(format!("tag={}", encode_path(tag)));
                }
                if let Some(near) = near {
                    params.push(format!("near={}", encode_path(near)));
                }
                join(format!("/v1/health/{kind}/{}", encode_path(name)), params)
            }
            Dependency::Services { dc: datacenter } => {
                join("/v1/catalog/services".into(), dc(datacenter).collect())
            }
            Dependency::Node {
                name,
                dc: datacenter,
            } => {
                let name = name.as_deref().or(agent_node)?;
                join(
                    format!("/v1/catalog/node/{}", encode_path(name)),
                    dc(datacenter).collect(),
                )
            }
            Dependency::Nodes {
                dc: datacenter,
                near,
            } => {
                let mut params: Vec<String> = dc(datacenter).collect();
                if let Some(near) = near {
                    params.push(format!("near={}", encode_path(near)));
                }
                join("/v1/catalog/nodes".into(), params)
            }
            Dependency::Key {
                path,
                dc: datacenter,
            } => join(
                format!("/v1/kv/{}", encode_path(path)),
                dc(datacenter).collect(),
            ),
            Dependency::Prefix {
                prefix,
                dc: datacenter,
            } => {
                let mut params = vec!["recurse".to_string()];
                params.extend(dc(datacenter));
                join(format!("/v1/kv/{}", encode_path(prefix)), params)
            }
            Dependency::CaRoots => "/v1/agent/connect/ca/roots".into(),
            Dependency::CaLeaf(name) => {
                format!("/v1/agent/connect/ca/leaf/{}", encode_path(name))
            }
            Dependency::Datacenters => "/v1/catalog/datacenters".into(),
            Dependency::AgentSelf => "/v1/agent/self".into(),
        })
    }

    /// Whether the agent answers this one with blocking queries (`?index=`).
    pub fn blocks(&self) -> bool {
        !matches!(self, Dependency::AgentSelf | Dependency::Datacenters)
    }

    /// The answer as template data. A 404 of a key or prefix is "no data" (`Null`).
    pub(super) fn decode(&self, status: u16, body: &[u8]) -> Result<Value, String> {
        if status == 404 && matches!(self, Dependency::Key { .. } | Dependency::Prefix { .. }) {
            return Ok(Value::Null);
        }
        if !(200..300).contains(&status) {
            return Err(format!(
                "{status} {}",
                String::from_utf8_lossy(body).trim_end()
            ));
        }
        let value: Value = serde_json::from_slice(body).map_err(|error| error.to_string())?;
        Ok(match self {
            Dependency::Service { health, .. } => health_services(&value, health),
            Dependency::Services { .. } => {
                let mut list: Vec<Value> = value
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(name, tags)| json!({"Name": name, "Tags": sorted_tags(tags)}))
                    .collect();
                list.sort_by(|a, b| a["Name"].as_str().cmp(&b["Name"].as_str()));
                Value::Array(list)
            }
            Dependency::Node { .. } => {
                let node = node(&value["Node"]);
                let mut services: Vec<Value> = value["Services"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .map(|(_, service)| {
                        json!({
                            "ID": service["ID"], "Service": service["Service"],
                            "Tags": sorted_tags(&service["Tags"]), "Meta": service["Meta"],
                            "Port": service["Port"], "Address": service["Address"],
                        })
                    })
                    .collect();
                services.sort_by(|a, b| a["Service"].as_str().cmp(&b["Service"].as_str()));
                json!({"Node": node, "Services": services})
            }
            Dependency::Nodes { .. } => {
                Value::Array(value.as_array().into_iter().flatten().map(node).collect())
            }
            Dependency::Key { .. } => {
                let entry = &value[0];
                Value::String(decoded(&entry["Value"]))
            }
            Dependency::Prefix { prefix, .. } => {
                let base = match prefix.is_empty() || prefix.ends_with('/') {
                    true => prefix.clone(),
                    false => format!("{prefix}/"),
                };
                Value::Array(
                    value
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|entry| {
                            let path = entry["Key"].as_str().unwrap_or_default().to_string();
                            let key = path.strip_prefix(&base).unwrap_or(&path).to_string();
                            json!({
                                "Path": path,
                                "Key": key,
                                "Value": decoded(&entry["Value"]),
                                "Exists": true,
                                "CreateIndex": entry["CreateIndex"],
                                "ModifyIndex": entry["ModifyIndex"],
                                "LockIndex": entry["LockIndex"],
                                "Flags": entry["Flags"],
                                "Session": entry["Session"].as_str().unwrap_or_default(),
                            })
                        })
                        .collect(),
                )
            }
            Dependency::CaRoots => value["Roots"].clone(),
            Dependency::CaLeaf(_) | Dependency::Datacenters | Dependency::AgentSelf => value,
        })
    }
}

fn decoded(value: &Value) -> String {
    value
        .as_str()
        .and_then(|text| base64::engine::general_purpose::STANDARD.decode(text).ok())
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// Tags deduplicated and sorted, as consul-template's `ServiceTags`.
fn sorted_tags(tags: &Value) -> Value {
    let mut tags: Vec<String> = tags
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|tag| tag.as_str().map(str::to_string))
        .collect();
    tags.sort();
    tags.dedup();
    json!(tags)
}

fn node(node: &Value) -> Value {
    json!({
        "ID": node["ID"], "Node": node["Node"], "Address": node["Address"],
        "Datacenter": node["Datacenter"], "TaggedAddresses": node["TaggedAddresses"],
        "Meta": node["Meta"],
    })
}

/// The worst of a node's and service's checks: maintenance, critical, warning, passing.
fn aggregate(checks: &[Value]) -> &'static str {
    let mut status = "passing";
    for check in checks {
        let id = check["CheckID"].as_str().unwrap_or_default();
        if id == "_node_maintenance" || id.starts_with("_service_maintenance:") {
            return "maintenance";
        }
        match check["Status"].as_str() {
            Some("critical") => status = "critical",
            Some("warning") if status == "passing" => status = "warning",
            _ => {}
        }
    }
    status
}

/// `/v1/health/service` entries as consul-template's `HealthService`, by node then id.
fn health_services(value: &Value, health: &Health) -> Value {
    let mut list: Vec<Value> = value
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|entry| {
            let checks: Vec<Value> = entry["Checks"].as_array().cloned().unwrap_or_default();
            let status = aggregate(&checks);
            if let Health::States(states) = health {
                if !states.iter().any(|state| state == status) {
                    return None;
                }
            }
            let node = &entry["Node"];
            let service = &entry["Service"];
            let address = match service["Address"].as_str() {
                Some(address) if !address.is_empty() => address.to_string(),
                _ => node["Address"].as_str().unwrap_or_default().to_string(),
            };
            // Sized exactly: a map grown by doubling keeps ~40% spare for as long as the
            // renderer holds the data.
            let mut out = Map::with_capacity(19);
            out.insert("Node".into(), node["Node"].clone());
            out.insert("NodeID".into(), node["ID"].clone());
            out.insert("NodeAddress".into(), node["Address"].clone());
            out.insert("NodeDatacenter".into(), node["Datacenter"].clone());
            out.insert(
                "NodeTaggedAddresses".into(),
                node["TaggedAddresses"].clone(),
            );
            out.insert("NodeMeta".into(), node["Meta"].clone());
            out.insert("ServiceMeta".into(), service["Meta"].clone());
            out.insert("Address".into(), Value::String(address));
            out.insert(
                "ServiceTaggedAddresses".into(),
                service["TaggedAddresses"].clone(),
            );
            out.insert("ID".into(), service["ID"].clone());
            out.insert("Name".into(), service["Service"].clone());
            out.insert("Kind".into(), service["Kind"].clone());
            out.insert("Tags".into(), sorted_tags(&service["Tags"]));
            out.insert("Checks".into(), Value::Array(checks));
            out.insert("Status".into(), Value::String(status.into()));
            out.insert("Port".into(), service["Port"].clone());
            out.insert("Weights".into(), service["Weights"].clone());
            out.insert("Namespace".into(), Value::String(String::new()));
            out.insert("Partition".into(), Value::String(String::new()));
            Some(Value::Object(out))
        })
        .collect();
    list.sort_by(|a, b| {
        (a["Node"].as_str(), a["ID"].as_str()).cmp(&(b["Node"].as_str(), b["ID"].as_str()))
    });
    Value::Array(list)
}
