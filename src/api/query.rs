//! Prepared-query wire shapes: the body of `POST /v1/query` and `PUT /v1/query/<id>`, checked
//! with Consul's messages (`parseQuery`), and the query as Consul shows it.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::{json, Value};

use super::decode::DecodeError;
use crate::types::duration::parse_go_duration;
use crate::types::query::{PreparedQuery, QueryTemplate, ServiceQuery, NAME_PREFIX_MATCH};
use crate::types::RaftIndexes;

/// What a query's `Token` reads as to a caller who may not see it.
pub const REDACTED: &str = "<hidden>";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct QueryIn {
    name: String,
    session: String,
    token: String,
    template: TemplateIn,
    service: ServiceIn,
    #[serde(rename = "DNS")]
    dns: DnsIn,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TemplateIn {
    #[serde(rename = "Type")]
    kind: String,
    regexp: String,
    remove_empty_tags: bool,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ServiceIn {
    service: String,
    failover: FailoverIn,
    only_passing: bool,
    #[serde(rename = "IgnoreCheckIDs")]
    ignore_check_ids: Vec<String>,
    near: String,
    tags: Vec<String>,
    node_meta: BTreeMap<String, String>,
    service_meta: BTreeMap<String, String>,
    connect: ConnectIn,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct FailoverIn {
    nearest_n: i64,
    datacenters: Vec<String>,
}

/// `Connect` is a bool in Consul's structs; an object `{"Enabled": true}` is read too.
#[derive(Debug, Default, Deserialize)]
#[serde(untagged)]
enum ConnectIn {
    #[default]
    Off,
    Flag(bool),
    Object {
        #[serde(rename = "Enabled", default)]
        enabled: bool,
    },
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct DnsIn {
    #[serde(rename = "TTL")]
    ttl: String,
}

impl QueryIn {
    /// The query with ID `id`, or Consul's message for why it is not one (`parseQuery`).
    pub fn into_query(self, id: String) -> Result<PreparedQuery, DecodeError> {
        if self.name.is_empty() && self.template.kind.is_empty() && self.session.is_empty() {
            return Err(DecodeError::new("Must be bound to a session"));
        }
        if self.token == REDACTED {
            return Err(DecodeError::new(format!(
                "Bad Token '{REDACTED}', it looks like a query definition with a redacted token was submitted"
            )));
        }
        let service = self.service;
        if service.service.is_empty() {
            return Err(DecodeError::new("Must provide a Service name to query"));
        }
        let nearest_n = u32::try_from(service.failover.nearest_n).map_err(|_| {
            DecodeError::new(format!(
                "Bad NearestN '{}', must be >= 0",
                service.failover.nearest_n
            ))
        })?;
        if !self.dns.ttl.is_empty() {
            parse_go_duration(&self.dns.ttl).map_err(|error| {
                DecodeError::new(format!("Bad DNS TTL '{}': {error}", self.dns.ttl))
            })?;
        }
        if !self.template.kind.is_empty() && self.template.kind != NAME_PREFIX_MATCH {
            return Err(DecodeError::new(format!(
                "Bad Template.Type '{}'",
                self.template.kind
            )));
        }
        Ok(PreparedQuery {
            id,
            name: self.name,
            session: self.session,
            token: self.token,
            template: QueryTemplate {
                kind: self.template.kind,
                regexp: self.template.regexp,
                remove_empty_tags: self.template.remove_empty_tags,
            },
            service: ServiceQuery {
                service: service.service,
                nearest_n,
                datacenters: service.failover.datacenters,
                only_passing: service.only_passing,
                ignore_check_ids: service.ignore_check_ids,
                near: service.near,
                tags: service.tags,
                node_meta: service.node_meta,
                service_meta: service.service_meta,
                connect: match service.connect {
                    ConnectIn::Off => false,
                    ConnectIn::Flag(on) => on,
                    ConnectIn::Object { enabled } => enabled,
                },
            },
            dns_ttl: self.dns.ttl,
            indexes: RaftIndexes::default(),
        })
    }
}

/// Go encodes a nil slice or map as `null`.
fn list(items: &[String]) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        json!(items)
    }
}

fn map(items: &BTreeMap<String, String>) -> Value {
    if items.is_empty() {
        Value::Null
    } else {
        json!(items)
    }
}

/// The query as Consul's `PreparedQuery` JSON; `show_token` says whether the caller may see
/// its token (else it reads `<hidden>`, when there is one).
pub fn query_json(query: &PreparedQuery, show_token: bool) -> Value {
    let token = if show_token || query.token.is_empty() {
        query.token.as_str()
    } else {
        REDACTED
    };
    let service = &query.service;
    json!({
        "ID": query.id,
        "Name": query.name,
        "Session": query.session,
        "Token": token,
        "Template": {
            "Type": query.template.kind,
            "Regexp": query.template.regexp,
            "RemoveEmptyTags": query.template.remove_empty_tags,
        },
        "Service": {
            "Service": service.service,
            "SamenessGroup": "",
            "Failover": {
                "NearestN": service.nearest_n,
                "Datacenters": list(&service.datacenters),
                "Targets": Value::Null,
            },
            "OnlyPassing": service.only_passing,
            "IgnoreCheckIDs": list(&service.ignore_check_ids),
            "Near": service.near,
            "Tags": list(&service.tags),
            "NodeMeta": map(&service.node_meta),
            "ServiceMeta": map(&service.service_meta),
            "Peer": "",
            "Connect": service.connect,
        },
        "DNS": {"TTL": query.dns_ttl},
        "CreateIndex": query.indexes.create,
        "ModifyIndex": query.indexes.modify,
    })
}
