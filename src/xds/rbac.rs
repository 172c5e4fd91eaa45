//! Intentions → Envoy RBAC, as Consul builds it.
//!
//! The filter's action is the opposite of the default: default-allow gives a DENY filter
//! listing what to deny, default-deny an ALLOW filter listing what to allow. Precedence is
//! flattened away: each intention's principal gets `AND NOT` the sources of every
//! higher-precedence intention its wildcard covers, and intentions whose action equals the
//! default are dropped. L4 intentions share one policy; each L7 intention gets its own, whose
//! permissions are flattened the same way (each kept permission `AND NOT` the earlier ones of
//! the other action).
//!
//! The RBAC message holds its policies in a protobuf map, which prost encodes in `HashMap`
//! order. `encode_filter` writes the entries in name order instead, so the same intentions
//! always encode to the same bytes and resource versions do not churn.

use envoy_types::pb::envoy::config::rbac::v3::{
    permission, principal, rbac, Permission, Policy, Principal, Rbac,
};
use envoy_types::pb::envoy::config::route::v3::{header_matcher, HeaderMatcher};
use envoy_types::pb::envoy::r#type::matcher::v3::{path_matcher, PathMatcher};
use envoy_types::pb::google::protobuf::Any;
use prost::Message;

use super::matchers::{header_matcher, regex_matcher, string_exact, string_prefix, HeaderRule};
use crate::proxycfg::{IntentionRule, Intentions, Permission as Rule, RuleAction};

pub const NETWORK_RBAC_TYPE: &str =
    "type.googleapis.com/envoy.extensions.filters.network.rbac.v3.RBAC";
pub const HTTP_RBAC_TYPE: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";

/// The SPIFFE ID regex of a source service (`*` for any), datacenter wildcarded.
fn principal(trust_domain: &str, source: &str) -> Principal {
    let service = if source == "*" {
        "[^/]+".to_string()
    } else {
        regex::escape(source)
    };
    Principal {
        identifier: Some(principal::Identifier::Authenticated(
            principal::Authenticated {
                principal_name: Some(regex_matcher(&format!(
                    "^spiffe://{trust_domain}/ns/default/dc/[^/]+/svc/{service}$"
                ))),
            },
        )),
    }
}

fn and_ids(mut ids: Vec<Principal>) -> Principal {
    if ids.len() == 1 {
        return ids.remove(0);
    }
    Principal {
        identifier: Some(principal::Identifier::AndIds(principal::Set { ids })),
    }
}

fn not_id(id: Principal) -> Principal {
    Principal {
        identifier: Some(principal::Identifier::NotId(Box::new(id))),
    }
}

fn and_rules(mut rules: Vec<Permission>) -> Permission {
    if rules.len() == 1 {
        return rules.remove(0);
    }
    Permission {
        rule: Some(permission::Rule::AndRules(permission::Set { rules })),
    }
}

fn any_permission() -> Permission {
    Permission {
        rule: Some(permission::Rule::Any(true)),
    }
}

fn header_permission(matcher: HeaderMatcher) -> Permission {
    Permission {
        rule: Some(permission::Rule::Header(matcher)),
    }
}

/// One L7 permission as an Envoy permission: its path, header and method matches ANDed.
fn l7_permission(rule: &Rule) -> Permission {
    let mut parts = Vec::new();
    let path = if !rule.path_exact.is_empty() {
        Some(string_exact(&rule.path_exact))
    } else if !rule.path_prefix.is_empty() {
        Some(string_prefix(&rule.path_prefix))
    } else if !rule.path_regex.is_empty() {
        Some(regex_matcher(&rule.path_regex))
    } else {
        None
    };
    if let Some(path) = path {
        parts.push(Permission {
            rule: Some(permission::Rule::UrlPath(PathMatcher {
                rule: Some(path_matcher::Rule::Path(path)),
            })),
        });
    }
    for header in &rule.headers {
        parts.push(header_permission(header_matcher(HeaderRule {
            name: &header.name,
            present: header.present,
            exact: &header.exact,
            prefix: &header.prefix,
            suffix: &header.suffix,
            contains: &header.contains,
            regex: &header.regex,
            invert: header.invert,
            ignore_case: header.ignore_case,
        })));
    }
    if !rule.methods.is_empty() {
        parts.push(header_permission(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                regex_matcher(&rule.methods.join("|")),
            )),
            ..Default::default()
        }));
    }
    if parts.is_empty() {
        return any_permission();
    }
    and_rules(parts)
}

/// Whether `source`'s connections are allowed at L4: the first intention naming it or `*`
/// decides (an L7 one denies, as in `rules` for TCP), else the default.
pub fn allows(intentions: &Intentions, source: &str) -> bool {
    match intentions
        .rules
        .iter()
        .find(|rule| rule.source == source || rule.source == "*")
    {
        Some(rule) => rule.action == RuleAction::Allow,
        None => intentions.default_allow,
    }
}

/// The L4 RBAC for connections from `source` alone: its SPIFFE ID when `allows` says so,
/// nobody otherwise. It changes only when `source`'s own outcome does.
pub fn source_rules(intentions: &Intentions, trust_domain: &str, source: &str) -> Rbac {
    let rules = match allows(intentions, source) {
        true => vec![IntentionRule {
            source: source.to_string(),
            precedence: 0,
            action: RuleAction::Allow,
        }],
        false => Vec::new(),
    };
    let only = Intentions {
        default_allow: false,
        rules,
    };
    self::rules(&only, trust_domain, false)
}

/// The RBAC rules for the destination's intentions. `http` says whether L7 permissions can be
/// evaluated; on a TCP listener an L7 intention denies, as in Consul.
pub fn rules(intentions: &Intentions, trust_domain: &str, http: bool) -> Rbac {
    let default_allow = intentions.default_allow;
    let mut l4_principals = Vec::new();
    let mut policies = Vec::new();
    for (i, rule) in intentions.rules.iter().enumerate() {
        // Higher-precedence sources this one's wildcard covers are carved out of it.
        let mut ids = vec![principal(trust_domain, &rule.source)];
        if rule.source == "*" {
            for higher in &intentions.rules[..i] {
                if higher.source != "*" {
                    ids.push(not_id(principal(trust_domain, &higher.source)));
                }
            }
        }
        let principal = and_ids(ids);
        let allow = match &rule.action {
            RuleAction::Allow => true,
            RuleAction::Deny => false,
            RuleAction::Permissions(permissions) if http => {
                let flattened = flatten(permissions, default_allow);
                if !flattened.is_empty() {
                    policies.push((
                        format!("consul-intentions-layer7-{}", policies.len()),
                        Policy {
                            permissions: flattened,
                            principals: vec![principal],
                            ..Default::default()
                        },
                    ));
                }
                continue;
            }
            RuleAction::Permissions(_) => false,
        };
        if allow != default_allow {
            l4_principals.push(principal);
        }
    }
    if !l4_principals.is_empty() {
        policies.insert(
            0,
            (
                "consul-intentions-layer4".into(),
                Policy {
                    permissions: vec![any_permission()],
                    principals: l4_principals,
                    ..Default::default()
                },
            ),
        );
    }
    Rbac {
        action: if default_allow {
            rbac::Action::Deny as i32
        } else {
            rbac::Action::Allow as i32
        },
        policies: policies.into_iter().collect(),
        ..Default::default()
    }
}

/// The permissions of one L7 intention that differ from the default, each carved out of the
/// earlier permissions of the other action (the first matching permission decides).
fn flatten(permissions: &[Rule], default_allow: bool) -> Vec<Permission> {
    let mut kept = Vec::new();
    for (i, permission) in permissions.iter().enumerate() {
        if permission.allow == default_allow {
            continue;
        }
        let mut parts = vec![l7_permission(permission)];
        for earlier in &permissions[..i] {
            if earlier.allow != permission.allow {
                parts.push(Permission {
                    rule: Some(permission::Rule::NotRule(Box::new(l7_permission(earlier)))),
                });
            }
        }
        kept.push(and_rules(parts));
    }
    kept
}

/// Encodes `rules` with its policies in name order (see the module doc).
fn encode_rules(rules: &Rbac) -> Vec<u8> {
    let mut bytes = Rbac {
        policies: Default::default(),
        ..rules.clone()
    }
    .encode_to_vec();
    let mut names: Vec<&String> = rules.policies.keys().collect();
    names.sort();
    for name in names {
        // A message with one map entry encodes deterministically, and concatenated encodings
        // of a message merge, map entries included.
        let single = Rbac {
            policies: [(name.clone(), rules.policies[name].clone())].into(),
            ..Default::default()
        };
        single.encode(&mut bytes).expect("a Vec grows as needed");
    }
    bytes
}

/// The network (`stat_prefix` set) or HTTP RBAC filter config, deterministically encoded.
pub fn encode_filter(rules: &Rbac, stat_prefix: Option<&str>) -> Any {
    use envoy_types::pb::envoy::extensions::filters::{http, network};
    // Everything but `rules` through prost; then `rules` (field 1 of both filter messages)
    // appended as a length-delimited field: a later field in the bytes merges like any other.
    let (type_url, mut value) = match stat_prefix {
        Some(prefix) => (
            NETWORK_RBAC_TYPE,
            network::rbac::v3::Rbac {
                stat_prefix: prefix.into(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        None => (
            HTTP_RBAC_TYPE,
            http::rbac::v3::Rbac::default().encode_to_vec(),
        ),
    };
    let inner = encode_rules(rules);
    prost::encoding::encode_key(1, prost::encoding::WireType::LengthDelimited, &mut value);
    prost::encoding::encode_varint(inner.len() as u64, &mut value);
    value.extend_from_slice(&inner);
    Any {
        type_url: type_url.into(),
        value,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxycfg::IntentionRule;

    fn rule(source: &str, action: RuleAction) -> IntentionRule {
        IntentionRule {
            source: source.into(),
            precedence: if source == "*" { 8 } else { 9 },
            action,
        }
    }

    fn l7(allow: bool, prefix: &str) -> Rule {
        Rule {
            allow,
            path_exact: String::new(),
            path_prefix: prefix.into(),
            path_regex: String::new(),
            methods: vec!["GET".into()],
            headers: Vec::new(),
        }
    }

    #[test]
    fn default_deny_allows_listed_sources_and_carves_out_higher_denies() {
        let intentions = Intentions {
            default_allow: false,
            rules: vec![rule("web", RuleAction::Deny), rule("*", RuleAction::Allow)],
        };
        let rbac = rules(&intentions, "td.consul", true);
        assert_eq!(rbac.action, rbac::Action::Allow as i32);
        let policy = &rbac.policies["consul-intentions-layer4"];
        assert_eq!(
            policy.principals.len(),
            1,
            "web's deny is the default and dropped"
        );
        let Some(principal::Identifier::AndIds(set)) = &policy.principals[0].identifier else {
            panic!("expected * AND NOT web, got {:?}", policy.principals[0]);
        };
        assert_eq!(set.ids.len(), 2);
        assert!(matches!(
            set.ids[1].identifier,
            Some(principal::Identifier::NotId(_))
        ));
    }

    #[test]
    fn default_allow_with_nothing_to_deny_has_no_policies() {
        let intentions = Intentions {
            default_allow: true,
            rules: vec![rule("web", RuleAction::Allow)],
        };
        let rbac = rules(&intentions, "td.consul", false);
        assert_eq!(rbac.action, rbac::Action::Deny as i32);
        assert!(rbac.policies.is_empty());
    }

    #[test]
    fn l7_on_tcp_denies_and_on_http_keeps_its_permissions() {
        let intentions = Intentions {
            default_allow: true,
            rules: vec![rule(
                "web",
                RuleAction::Permissions(vec![l7(true, "/ok"), l7(false, "/")]),
            )],
        };
        let tcp = rules(&intentions, "td.consul", false);
        assert!(tcp.policies.contains_key("consul-intentions-layer4"));
        let http = rules(&intentions, "td.consul", true);
        let policy = &http.policies["consul-intentions-layer7-0"];
        // Only the deny permission is kept, carved out of the earlier allow.
        assert_eq!(policy.permissions.len(), 1);
        let Some(permission::Rule::AndRules(set)) = &policy.permissions[0].rule else {
            panic!("expected an AND, got {:?}", policy.permissions[0]);
        };
        assert!(matches!(
            set.rules.last().unwrap().rule,
            Some(permission::Rule::NotRule(_))
        ));
    }

    #[test]
    fn encoding_is_the_same_for_the_same_rules_and_decodes_back() {
        let mut sources = vec![rule("*", RuleAction::Allow)];
        for i in 0..12 {
            sources.insert(
                0,
                rule(
                    &format!("svc{i}"),
                    RuleAction::Permissions(vec![l7(true, &format!("/p{i}"))]),
                ),
            );
        }
        let intentions = Intentions {
            default_allow: false,
            rules: sources,
        };
        let first = encode_filter(&rules(&intentions, "td.consul", true), None);
        for _ in 0..20 {
            // Each build makes fresh HashMaps with fresh random hash keys.
            let again = encode_filter(&rules(&intentions, "td.consul", true), None);
            assert_eq!(first.value, again.value);
        }
        let decoded = envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac::decode(
            first.value.as_slice(),
        )
        .unwrap();
        assert_eq!(
            decoded.rules.unwrap(),
            rules(&intentions, "td.consul", true)
        );
        let network = encode_filter(
            &rules(&intentions, "td.consul", false),
            Some("connect_authz"),
        );
        let decoded = envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac::decode(
            network.value.as_slice(),
        )
        .unwrap();
        assert_eq!(decoded.stat_prefix, "connect_authz");
        assert_eq!(
            decoded.rules.unwrap(),
            rules(&intentions, "td.consul", false)
        );
    }
}
