//! ACL tokens, policies and roles in Consul's JSON: what `/v1/acl/*` shows (links carry both
//! ID and Name, looked up in the tables at reply time) and what it accepts (links by ID or by
//! Name, resolved to IDs before the write is proposed).

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::decode::DecodeError;
use crate::state::Tables;
use crate::types::acl::{
    Grants, NodeIdentity, Policy, Role, ServiceIdentity, TemplatedPolicy, Token,
};

/// What a token list or read shows in place of a secret the caller may not see.
pub const HIDDEN: &str = "<hidden>";

fn policy_links(tables: &Tables, ids: &[String]) -> Vec<Value> {
    ids.iter()
        .filter_map(|id| tables.acl_policy(id))
        .map(|policy| json!({"ID": policy.id, "Name": policy.name}))
        .collect()
}

fn role_links(tables: &Tables, ids: &[String]) -> Vec<Value> {
    ids.iter()
        .filter_map(|id| tables.acl_role(id))
        .map(|role| json!({"ID": role.id, "Name": role.name}))
        .collect()
}

/// The identity and template fields of a token or role, each left out when empty.
fn grants_into(fields: &mut Map<String, Value>, tables: &Tables, grants: &Grants) {
    let policies = policy_links(tables, &grants.policies);
    if !policies.is_empty() {
        fields.insert("Policies".into(), policies.into());
    }
    if !grants.service_identities.is_empty() {
        let identities: Vec<Value> = grants
            .service_identities
            .iter()
            .map(|identity| {
                let mut out = json!({"ServiceName": identity.service_name});
                if !identity.datacenters.is_empty() {
                    out["Datacenters"] = json!(identity.datacenters);
                }
                out
            })
            .collect();
        fields.insert("ServiceIdentities".into(), identities.into());
    }
    if !grants.node_identities.is_empty() {
        let identities: Vec<Value> = grants
            .node_identities
            .iter()
            .map(|identity| json!({"NodeName": identity.node_name, "Datacenter": identity.datacenter}))
            .collect();
        fields.insert("NodeIdentities".into(), identities.into());
    }
    if !grants.templated_policies.is_empty() {
        let templated: Vec<Value> = grants
            .templated_policies
            .iter()
            .map(|templated| {
                let mut out = json!({
                    "TemplateName": templated.template_name,
                    "TemplateID": template_id(&templated.template_name),
                });
                if !templated.name.is_empty() {
                    out["TemplateVariables"] = json!({"Name": templated.name});
                }
                if !templated.datacenters.is_empty() {
                    out["Datacenters"] = json!(templated.datacenters);
                }
                out
            })
            .collect();
        fields.insert("TemplatedPolicies".into(), templated.into());
    }
}

/// Consul's templated policies concord has, with their fixed IDs and descriptions.
pub const TEMPLATES: [(&str, &str, bool, &str); 3] = [
    (
        "builtin/service",
        "00000000-0000-0000-0000-000000000003",
        true,
        "Gives the token or role permissions to register a service and discover services in the Consul catalog. It also gives the specified service's sidecar proxy the permission to discover and route traffic to other services.",
    ),
    (
        "builtin/node",
        "00000000-0000-0000-0000-000000000004",
        true,
        "Gives the token or role permissions for a register an agent/node into the catalog. A node is typically a consul agent but can also be a physical server, cloud instance or a container.",
    ),
    (
        "builtin/dns",
        "00000000-0000-0000-0000-000000000005",
        false,
        "Gives the token or role permissions for the Consul DNS to query services in the network.",
    ),
];

/// A templated policy's rules as Consul's preview shows them.
pub fn template_rules_text(template: &str, name: &str) -> String {
    let block = |kind: &str, label: &str, policy: &str| {
        format!("{kind} \"{label}\" {{\n\tpolicy = \"{policy}\"\n}}\n")
    };
    match template {
        "builtin/service" => [
            block("service", name, "write"),
            block("service", &format!("{name}-sidecar-proxy"), "write"),
            block("service_prefix", "", "read"),
            block("node_prefix", "", "read"),
        ]
        .concat(),
        "builtin/node" => [
            block("node", name, "write"),
            block("service_prefix", "", "read"),
        ]
        .concat(),
        "builtin/dns" => [
            block("node_prefix", "", "read"),
            block("service_prefix", "", "read"),
            block("query_prefix", "", "read"),
        ]
        .concat(),
        _ => String::new(),
    }
}

fn template_id(name: &str) -> &'static str {
    TEMPLATES
        .iter()
        .find(|(template, ..)| *template == name)
        .map_or("", |(_, id, ..)| id)
}

/// A token as `GET /v1/acl/token/:id` shows it; `secret` is false to hide the SecretID.
pub fn token(tables: &Tables, token: &Token, secret: bool) -> Value {
    let mut fields = Map::new();
    fields.insert("AccessorID".into(), token.accessor_id.clone().into());
    let shown = if secret {
        token.secret_id.as_str()
    } else {
        HIDDEN
    };
    fields.insert("SecretID".into(), shown.into());
    fields.insert("Description".into(), token.description.clone().into());
    grants_into(&mut fields, tables, &token.grants);
    let roles = role_links(tables, &token.roles);
    if !roles.is_empty() {
        // Consul lists roles right after policies; key order is not part of the contract.
        fields.insert("Roles".into(), roles.into());
    }
    fields.insert("Local".into(), token.local.into());
    if !token.expiration_time.is_empty() {
        fields.insert(
            "ExpirationTime".into(),
            token.expiration_time.clone().into(),
        );
    }
    fields.insert("CreateTime".into(), token.create_time.clone().into());
    fields.insert("Hash".into(), token.hash.clone().into());
    fields.insert("CreateIndex".into(), token.indexes.create.into());
    fields.insert("ModifyIndex".into(), token.indexes.modify.into());
    Value::Object(fields)
}

/// A policy as `GET /v1/acl/policy/:id` shows it.
pub fn policy(policy: &Policy) -> Value {
    let mut out = json!({
        "ID": policy.id,
        "Name": policy.name,
        "Description": policy.description,
        "Rules": policy.rules,
        "Hash": policy.hash,
        "CreateIndex": policy.indexes.create,
        "ModifyIndex": policy.indexes.modify,
    });
    if !policy.datacenters.is_empty() {
        out["Datacenters"] = json!(policy.datacenters);
    }
    out
}

/// A policy in `GET /v1/acl/policies`: no Rules, Datacenters always.
pub fn policy_stub(policy: &Policy) -> Value {
    json!({
        "ID": policy.id,
        "Name": policy.name,
        "Description": policy.description,
        "Datacenters": policy.datacenters,
        "Hash": policy.hash,
        "CreateIndex": policy.indexes.create,
        "ModifyIndex": policy.indexes.modify,
    })
}

pub fn role(tables: &Tables, role: &Role) -> Value {
    let mut fields = Map::new();
    fields.insert("ID".into(), role.id.clone().into());
    fields.insert("Name".into(), role.name.clone().into());
    fields.insert("Description".into(), role.description.clone().into());
    grants_into(&mut fields, tables, &role.grants);
    fields.insert("Hash".into(), role.hash.clone().into());
    fields.insert("CreateIndex".into(), role.indexes.create.into());
    fields.insert("ModifyIndex".into(), role.indexes.modify.into());
    Value::Object(fields)
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct LinkIn {
    #[serde(rename = "ID")]
    id: String,
    name: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ServiceIdentityIn {
    service_name: String,
    datacenters: Vec<String>,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct NodeIdentityIn {
    node_name: String,
    datacenter: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TemplateVariablesIn {
    name: String,
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct TemplatedPolicyIn {
    template_name: String,
    template_variables: Option<TemplateVariablesIn>,
    datacenters: Vec<String>,
}

/// The body of a token or role write; fields concord does not keep (AuthMethod, Hash,
/// indexes) are read and ignored as Consul ignores them on input.
#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct GrantsIn {
    #[serde(rename = "AccessorID")]
    pub accessor_id: String,
    #[serde(rename = "SecretID")]
    pub secret_id: String,
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub description: String,
    policies: Vec<LinkIn>,
    roles: Vec<LinkIn>,
    service_identities: Vec<ServiceIdentityIn>,
    node_identities: Vec<NodeIdentityIn>,
    templated_policies: Vec<TemplatedPolicyIn>,
    pub local: bool,
    pub expiration_time: Option<String>,
    #[serde(rename = "ExpirationTTL")]
    pub expiration_ttl: Value,
    pub auth_method: String,
}

pub fn decode_grants(body: Value) -> Result<GrantsIn, DecodeError> {
    serde_json::from_value(body)
        .map_err(|error| DecodeError::new(format!("Request decode failed: {error}")))
}

/// Why a write's links or identities are refused, in Consul's words (500s, as its RPC errors).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidGrant(pub String);

/// Identity names Consul accepts: lowercase alphanumerics, `-` and `_`, not at either end.
fn valid_identity_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    let inner = |byte: &u8| byte.is_ascii_lowercase() || byte.is_ascii_digit();
    !bytes.is_empty()
        && bytes.len() <= 256
        && bytes.first().is_some_and(inner)
        && bytes.last().is_some_and(inner)
        && bytes
            .iter()
            .all(|byte| inner(byte) || *byte == b'-' || *byte == b'_')
}

impl GrantsIn {
    /// Policy and role links resolved to IDs, identities checked.
    pub fn resolve(&self, tables: &Tables) -> Result<(Grants, Vec<String>), InvalidGrant> {
        let mut policies = Vec::new();
        for link in &self.policies {
            let found = if !link.id.is_empty() {
                tables.acl_policy(&link.id).ok_or_else(|| {
                    InvalidGrant(format!("No such ACL policy with ID {:?}", link.id))
                })?
            } else {
                tables.acl_policy_by_name(&link.name).ok_or_else(|| {
                    InvalidGrant(format!("No such ACL policy with name {:?}", link.name))
                })?
            };
            if !policies.contains(&found.id) {
                policies.push(found.id.clone());
            }
        }
        let mut roles = Vec::new();
        for link in &self.roles {
            let found = if !link.id.is_empty() {
                tables.acl_role(&link.id).ok_or_else(|| {
                    InvalidGrant(format!("No such ACL role with ID {:?}", link.id))
                })?
            } else {
                tables.acl_role_by_name(&link.name).ok_or_else(|| {
                    InvalidGrant(format!("No such ACL role with name {:?}", link.name))
                })?
            };
            if !roles.contains(&found.id) {
                roles.push(found.id.clone());
            }
        }
        let mut service_identities = Vec::new();
        for identity in &self.service_identities {
            if !valid_identity_name(&identity.service_name) {
                return Err(InvalidGrant(format!(
                    "Service identity {:?} has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed",
                    identity.service_name
                )));
            }
            service_identities.push(ServiceIdentity {
                service_name: identity.service_name.clone(),
                datacenters: identity.datacenters.clone(),
            });
        }
        let mut node_identities = Vec::new();
        for identity in &self.node_identities {
            if !valid_identity_name(&identity.node_name) {
                return Err(InvalidGrant(format!(
                    "Node identity {:?} has an invalid name. Only lowercase alphanumeric characters, '-' and '_' are allowed",
                    identity.node_name
                )));
            }
            if identity.datacenter.is_empty() {
                return Err(InvalidGrant(format!(
                    "Node identity {:?} must have a datacenter",
                    identity.node_name
                )));
            }
            node_identities.push(NodeIdentity {
                node_name: identity.node_name.clone(),
                datacenter: identity.datacenter.clone(),
            });
        }
        let mut templated_policies = Vec::new();
        for templated in &self.templated_policies {
            let Some((_, _, needs_name, _)) = TEMPLATES
                .iter()
                .find(|(name, ..)| *name == templated.template_name)
            else {
                return Err(InvalidGrant(format!(
                    "templated policy {:?} does not exist",
                    templated.template_name
                )));
            };
            let name = templated
                .template_variables
                .as_ref()
                .map(|variables| variables.name.clone())
                .unwrap_or_default();
            if *needs_name && !valid_identity_name(&name) {
                return Err(InvalidGrant(format!(
                    "templated policy {:?} needs a valid name in TemplateVariables",
                    templated.template_name
                )));
            }
            templated_policies.push(TemplatedPolicy {
                template_name: templated.template_name.clone(),
                name,
                datacenters: templated.datacenters.clone(),
            });
        }
        Ok((
            Grants {
                policies,
                service_identities,
                node_identities,
                templated_policies,
            },
            roles,
        ))
    }
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct PolicyIn {
    #[serde(rename = "ID")]
    pub id: String,
    pub name: String,
    pub description: String,
    pub rules: String,
    pub datacenters: Vec<String>,
}

pub fn decode_policy(body: Value) -> Result<PolicyIn, DecodeError> {
    serde_json::from_value(body)
        .map_err(|error| DecodeError::new(format!("Request decode failed: {error}")))
}

/// Consul's policy-name rule: 1–128 of `[A-Za-z0-9-_]`, one optional `/` inside.
pub fn valid_policy_name(name: &str) -> bool {
    let ok = |part: &str| {
        part.bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
    };
    let (first, rest) = name.split_once('/').unwrap_or((name, ""));
    (1..=128).contains(&name.len()) && !first.is_empty() && ok(first) && ok(rest)
}

pub fn valid_role_name(name: &str) -> bool {
    (1..=256).contains(&name.len())
        && name
            .bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_')
}

/// Base64 of a SHA-256 over what a change-detecting client compares (Consul uses blake2b;
/// the value is opaque to clients).
pub fn hash(parts: &[&str]) -> String {
    use base64::Engine;
    let mut context = ring::digest::Context::new(&ring::digest::SHA256);
    for part in parts {
        context.update(part.as_bytes());
        context.update(&[0]);
    }
    base64::engine::general_purpose::STANDARD.encode(context.finish().as_ref())
}

fn grants_hash_parts(grants: &Grants) -> Vec<String> {
    let mut parts = grants.policies.clone();
    parts.extend(grants.service_identities.iter().map(|identity| {
        format!(
            "service:{}:{}",
            identity.service_name,
            identity.datacenters.join(",")
        )
    }));
    parts.extend(
        grants
            .node_identities
            .iter()
            .map(|identity| format!("node:{}:{}", identity.node_name, identity.datacenter)),
    );
    parts.extend(grants.templated_policies.iter().map(|templated| {
        format!(
            "template:{}:{}:{}",
            templated.template_name,
            templated.name,
            templated.datacenters.join(",")
        )
    }));
    parts
}

/// Sets a token's Hash from what it grants (not its name, secret or indexes, as Consul).
pub fn hash_token(token: &mut Token) {
    let mut parts = vec![token.description.clone(), token.local.to_string()];
    parts.extend(grants_hash_parts(&token.grants));
    parts.extend(token.roles.iter().map(|id| format!("role:{id}")));
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    token.hash = hash(&parts);
}

pub fn hash_policy(policy: &mut Policy) {
    let datacenters = policy.datacenters.join(",");
    policy.hash = hash(&[
        &policy.name,
        &policy.description,
        &policy.rules,
        &datacenters,
    ]);
}

pub fn hash_role(role: &mut Role) {
    let mut parts = vec![role.name.clone(), role.description.clone()];
    parts.extend(grants_hash_parts(&role.grants));
    let parts: Vec<&str> = parts.iter().map(String::as_str).collect();
    role.hash = hash(&parts);
}

/// Now, in Unix nanoseconds (the unit token expirations are kept in).
pub fn now_nanos() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| {
            i64::try_from(elapsed.as_nanos()).unwrap_or(i64::MAX)
        })
}

/// A token made by the system rather than from a request body (bootstrap, the built-ins),
/// stamped now.
pub fn system_token(
    accessor_id: String,
    secret_id: String,
    description: &str,
    policies: Vec<String>,
) -> Token {
    let mut token = Token {
        accessor_id,
        secret_id,
        description: description.into(),
        grants: Grants {
            policies,
            ..Grants::default()
        },
        create_time: format_rfc3339_nanos(now_nanos()),
        ..Token::default()
    };
    hash_token(&mut token);
    token
}

/// Parses RFC 3339 (`2026-12-04T10:00:00Z`, fractions and offsets allowed) to Unix nanoseconds.
pub fn parse_rfc3339(text: &str) -> Option<i64> {
    let (date, time) = text.split_once(['T', 't', ' '])?;
    let mut date_parts = date.splitn(3, '-');
    let year: i64 = date_parts.next()?.parse().ok()?;
    let month: i64 = date_parts.next()?.parse().ok()?;
    let day: i64 = date_parts.next()?.parse().ok()?;
    let (clock, offset_secs) = if let Some(clock) = time.strip_suffix(['Z', 'z']) {
        (clock, 0)
    } else {
        let split = time.rfind(['+', '-'])?;
        let (clock, offset) = time.split_at(split);
        let sign = if offset.starts_with('-') { -1 } else { 1 };
        let (hours, minutes) = offset[1..].split_once(':')?;
        let seconds = hours.parse::<i64>().ok()? * 3600 + minutes.parse::<i64>().ok()? * 60;
        (clock, sign * seconds)
    };
    let (whole, fraction) = clock.split_once('.').unwrap_or((clock, ""));
    let mut clock_parts = whole.splitn(3, ':');
    let hour: i64 = clock_parts.next()?.parse().ok()?;
    let minute: i64 = clock_parts.next()?.parse().ok()?;
    let second: i64 = clock_parts.next()?.parse().ok()?;
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    let nanos: i64 = if fraction.is_empty() {
        0
    } else {
        let digits: String = fraction.chars().take(9).collect();
        format!("{digits:0<9}").parse().ok()?
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let shifted_year = if month <= 2 { year - 1 } else { year };
    let era = shifted_year.div_euclid(400);
    let year_of_era = shifted_year.rem_euclid(400);
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second - offset_secs;
    seconds.checked_mul(1_000_000_000)?.checked_add(nanos)
}

/// Unix nanoseconds as RFC 3339 with nanoseconds, as Consul prints CreateTime.
pub fn format_rfc3339_nanos(nanos: i64) -> String {
    let seconds = nanos.div_euclid(1_000_000_000);
    let fraction = nanos.rem_euclid(1_000_000_000);
    let whole = crate::types::duration::format_rfc3339(seconds);
    match fraction {
        0 => whole,
        _ => format!("{}.{fraction:09}Z", whole.trim_end_matches('Z')),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_round_trips_with_nanoseconds_and_offsets() {
        let nanos = parse_rfc3339("2026-12-04T16:30:40.123456789Z").unwrap();
        assert_eq!(
            format_rfc3339_nanos(nanos),
            "2026-12-04T16:30:40.123456789Z"
        );
        assert_eq!(
            parse_rfc3339("2026-12-04T17:30:40+01:00"),
            parse_rfc3339("2026-12-04T16:30:40Z")
        );
        assert_eq!(parse_rfc3339("1970-01-01T00:00:01Z"), Some(1_000_000_000));
        assert_eq!(parse_rfc3339("not a time"), None);
        assert_eq!(parse_rfc3339("2026-13-01T00:00:00Z"), None);
    }

    #[test]
    fn template_texts_parse_to_the_templates_own_rules() {
        for (template, name) in [
            ("builtin/service", "web"),
            ("builtin/node", "n1"),
            ("builtin/dns", ""),
        ] {
            let parsed = crate::acl::rules::parse(&template_rules_text(template, name)).unwrap();
            assert_eq!(
                Some(parsed),
                crate::acl::templated_rules(template, name),
                "{template}"
            );
        }
    }

    #[test]
    fn names_follow_consuls_rules() {
        assert!(valid_policy_name("ops-read"));
        assert!(valid_policy_name("team/ops_1"));
        assert!(!valid_policy_name("/ops"));
        assert!(!valid_policy_name("a/b/c"));
        assert!(!valid_policy_name(""));
        assert!(!valid_policy_name("bad name"));
        assert!(valid_role_name("Role_1-a"));
        assert!(!valid_role_name("a/b"));
        assert!(valid_identity_name("web-1"));
        assert!(!valid_identity_name("Web"));
        assert!(!valid_identity_name("-web"));
    }
}
