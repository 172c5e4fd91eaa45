//! Generated resources as deterministic, human-readable text, for golden files.
//!
//! Each resource is printed in its pretty `Debug` form, reshaped as a tree of lines: every
//! `Any` payload is decoded and printed in place under its protobuf type name (an `Any` of a
//! type this module has no decoder for panics, so no payload can hide from a golden file); map
//! entries are sorted, because prost maps are `HashMap`s and print in a different order in
//! every process; proto3 default values are left out, since on the wire they are the same as
//! unset; a value with a single short field shares its parent's line; and certificate and key
//! PEMs are replaced by placeholders naming their role in the snapshot (`<leaf certificate>`,
//! `<root certificate 0>`), so the text says which one sits where without the PEM's bulk.
//! Versions are left out: they are hashes of the encoding this text already shows.

use std::sync::LazyLock;

use envoy_types::pb::envoy::config::cluster::v3::Cluster;
use envoy_types::pb::envoy::config::core::v3::TypedExtensionConfig;
use envoy_types::pb::envoy::config::endpoint::v3::ClusterLoadAssignment;
use envoy_types::pb::envoy::config::listener::v3::Listener;
use envoy_types::pb::envoy::config::route::v3::RouteConfiguration;
use envoy_types::pb::envoy::extensions::filters::http::rbac::v3::Rbac as HttpRbac;
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::HttpConnectionManager;
use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::Rbac as NetworkRbac;
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::TcpProxy;
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    DownstreamTlsContext, Secret, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::HttpProtocolOptions;
use envoy_types::pb::google::protobuf::Any;
use prost::{Message, Name};

use super::resources::{Resources, CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET};

/// Values joined onto their parent's line only while the result stays this short.
const ONE_LINE_LIMIT: usize = 100;

/// Enum fields at proto3's zero, as `Debug` prints them (`lb_policy: RoundRobin`): the same as
/// unset on the wire, so left out like other defaults. Built from the enum types, so an entry
/// cannot name a value that is not the zero. RBAC's `action` is deliberately not listed: its
/// zero is ALLOW, which a reader of an RBAC golden file must see.
static ZERO_ENUMS: LazyLock<Vec<String>> = LazyLock::new(|| {
    use envoy_types::pb::envoy::config::cluster::v3::cluster;
    use envoy_types::pb::envoy::config::core::v3::{
        socket_address, RoutingPriority, TrafficDirection,
    };
    use envoy_types::pb::envoy::config::listener::v3::{filter_chain_match, listener};
    use envoy_types::pb::envoy::config::route::v3::route_action;
    use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::http_connection_manager as hcm;
    use envoy_types::pb::envoy::extensions::filters::network::rbac::v3::rbac as network_rbac;
    use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{
        ProxyProtocolTlvMergePolicy, UpstreamConnectMode,
    };
    use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
        certificate_validation_context, downstream_tls_context, tls_parameters,
    };

    fn zero<E: TryFrom<i32> + std::fmt::Debug>(field: &str) -> String {
        let Ok(value) = E::try_from(0) else {
            panic!("{field}: the enum has no zero value")
        };
        format!("{field}: {value:?}")
    }
    vec![
        zero::<cluster::LbPolicy>("lb_policy"),
        zero::<cluster::DnsLookupFamily>("dns_lookup_family"),
        zero::<cluster::ClusterProtocolSelection>("protocol_selection"),
        zero::<socket_address::Protocol>("protocol"),
        zero::<listener::DrainType>("drain_type"),
        zero::<filter_chain_match::ConnectionSourceType>("source_type"),
        zero::<TrafficDirection>("traffic_direction"),
        zero::<RoutingPriority>("priority"),
        zero::<route_action::ClusterNotFoundResponseCode>("cluster_not_found_response_code"),
        zero::<route_action::InternalRedirectAction>("internal_redirect_action"),
        zero::<network_rbac::EnforcementType>("enforcement_type"),
        zero::<UpstreamConnectMode>("upstream_connect_mode"),
        zero::<ProxyProtocolTlvMergePolicy>("proxy_protocol_tlv_merge_policy"),
        zero::<hcm::CodecType>("codec_type"),
        zero::<hcm::ServerHeaderTransformation>("server_header_transformation"),
        zero::<hcm::ForwardClientCertDetails>("forward_client_cert_details"),
        zero::<hcm::PathWithEscapedSlashesAction>("path_with_escaped_slashes_action"),
        zero::<tls_parameters::TlsProtocol>("tls_minimum_protocol_version"),
        zero::<tls_parameters::TlsProtocol>("tls_maximum_protocol_version"),
        zero::<certificate_validation_context::TrustChainVerification>("trust_chain_verification"),
        zero::<downstream_tls_context::OcspStaplePolicy>("ocsp_staple_policy"),
    ]
});

/// The text of every resource in `resources`, by type then name.
pub fn resources(resources: &Resources, placeholders: &Placeholders) -> String {
    let mut out = String::new();
    for (type_url, heading) in [
        (SECRET, "secrets"),
        (CLUSTER, "clusters"),
        (ENDPOINT, "endpoints"),
        (LISTENER, "listeners"),
        (ROUTE, "routes"),
        (EXTENSION_CONFIG, "extension configs"),
    ] {
        out.push_str(&format!("== {heading} ==\n"));
        let named = resources.of(type_url).filter(|named| !named.is_empty());
        let Some(named) = named else {
            out.push_str("(none)\n\n");
            continue;
        };
        for (name, versioned) in named {
            out.push_str(&format!("-- {name}\n"));
            if !versioned.children.is_empty() {
                out.push_str(&format!("children: {:?}\n", versioned.children));
            }
            let tree = any_tree("", &versioned.resource, "}", placeholders);
            write(&tree, 0, &mut out);
            out.push('\n');
        }
    }
    out
}

/// One line of pretty `Debug` output, or a bracketed value and the lines inside it.
#[derive(Clone, Debug, PartialEq)]
enum Line {
    Leaf(String),
    Block {
        open: String,
        children: Vec<Line>,
        close: String,
    },
}

impl Line {
    fn text(&self) -> String {
        let mut out = String::new();
        write(self, 0, &mut out);
        out
    }
}

/// Known PEM texts, each with the placeholder that replaces it. They come from the test's
/// world, not from the snapshot being rendered, so a certificate or key that ends up in the
/// wrong place shows as the wrong placeholder.
pub struct Placeholders(Vec<(String, String)>);

impl Placeholders {
    pub fn new(pairs: impl IntoIterator<Item = (String, String)>) -> Placeholders {
        // Compared as they appear in `Debug` output: escaped, without the quotes.
        Placeholders(
            pairs
                .into_iter()
                .filter(|(pem, _)| !pem.is_empty())
                .map(|(pem, placeholder)| {
                    let escaped = format!("{pem:?}");
                    (escaped[1..escaped.len() - 1].to_string(), placeholder)
                })
                .collect(),
        )
    }

    fn apply(&self, line: &str) -> String {
        let mut line = line.to_string();
        for (escaped, placeholder) in &self.0 {
            line = line.replace(escaped.as_str(), placeholder);
        }
        // A PEM that is none of the snapshot's must not print in full, but must still show.
        static UNKNOWN: LazyLock<regex::Regex> = LazyLock::new(|| {
            regex::Regex::new(r"-----BEGIN ([A-Z ]+)-----.*?-----END [A-Z ]+-----(\\n)?")
                .expect("valid regex")
        });
        UNKNOWN.replace_all(&line, "<unknown $1>").into_owned()
    }
}

/// Decodes `any` and returns its tree, opened by `prefix` and the payload's protobuf name and
/// closed by `close`.
fn any_tree(prefix: &str, any: &Any, close: &str, placeholders: &Placeholders) -> Line {
    let (full_name, debug) = decode(any);
    let mut lines = parse(&debug);
    assert_eq!(lines.len(), 1, "one message prints as one value");
    let Line::Block { open, children, .. } = lines.remove(0) else {
        // A message without fields prints as its bare name.
        return Line::Leaf(format!("{prefix}{full_name} {{{close}"));
    };
    debug_assert!(
        open.ends_with(" {"),
        "a message prints as `Name {{`: {open}"
    );
    reshape(
        Line::Block {
            open: format!("{prefix}{full_name} {{"),
            children,
            close: close.to_string(),
        },
        placeholders,
    )
}

/// The protobuf name and pretty `Debug` text of the payload of `any`.
fn decode(any: &Any) -> (String, String) {
    let name = any.type_url.rsplit('/').next().unwrap_or_default();
    macro_rules! decode_as {
        ($($message:ty),* $(,)?) => {
            $(
                if name == <$message>::full_name() {
                    let message = <$message>::decode(any.value.as_slice())
                        .unwrap_or_else(|error| panic!("{name} does not decode: {error}"));
                    return (name.to_string(), format!("{message:#?}"));
                }
            )*
        };
    }
    decode_as!(
        Cluster,
        ClusterLoadAssignment,
        Listener,
        RouteConfiguration,
        TypedExtensionConfig,
        HttpConnectionManager,
        Router,
        TcpProxy,
        NetworkRbac,
        HttpRbac,
        DownstreamTlsContext,
        UpstreamTlsContext,
        HttpProtocolOptions,
        Secret,
        TlsInspector,
    );
    panic!(
        "no decoder for {}: add it to xds/render.rs so its payload shows in golden files",
        any.type_url
    )
}

/// Pretty `Debug` text as a tree: a line ending in `{`, `(` or `[` opens a value that a line
/// starting with the matching closer ends; strings are escaped, so neither occurs inside one.
fn parse(text: &str) -> Vec<Line> {
    let mut stack: Vec<(String, Vec<Line>)> = vec![(String::new(), Vec::new())];
    for line in text.lines().map(str::trim) {
        if line.starts_with(['}', ')', ']']) {
            let (open, children) = stack.pop().expect("a closer has an opener");
            let parent = &mut stack.last_mut().expect("the root is never closed").1;
            parent.push(Line::Block {
                open,
                children,
                close: line.to_string(),
            });
        } else if line.ends_with(['{', '(', '[']) {
            stack.push((line.to_string(), Vec::new()));
        } else {
            let parent = &mut stack.last_mut().expect("the root is never closed").1;
            parent.push(Line::Leaf(line.to_string()));
        }
    }
    assert_eq!(stack.len(), 1, "unbalanced Debug output:\n{text}");
    stack.remove(0).1
}

/// Decodes nested `Any`s, sorts map entries, drops default values, joins short values onto
/// one line, and replaces PEMs; children first.
fn reshape(line: Line, placeholders: &Placeholders) -> Line {
    let Line::Block {
        open,
        children,
        close,
    } = line
    else {
        let Line::Leaf(text) = line else {
            unreachable!()
        };
        return Line::Leaf(placeholders.apply(&text));
    };
    if let Some(prefix) = open.strip_suffix("Any {") {
        return any_tree(prefix, &any_of(&children), &close, placeholders);
    }
    let mut children: Vec<Line> = children
        .into_iter()
        .map(|child| reshape(child, placeholders))
        .filter(|child| !is_default(child))
        .collect();
    // A map prints as `field: {` (or `{` inside a list) with `"key": value` entries.
    if open == "{" || open.ends_with(": {") {
        children.sort_by_cached_key(Line::text);
    }
    let (open, children, close) = merge_single_child(placeholders.apply(&open), children, close);
    join_short(open, children, close)
}

/// A value whose only content is another multi-line value opens and closes on the same lines
/// as it (`rule: Some(AndRules(Set {` ... `})),`), while the opening line stays short: each
/// wrapper otherwise costs two lines and a level of indent.
fn merge_single_child(
    open: String,
    children: Vec<Line>,
    close: String,
) -> (String, Vec<Line>, String) {
    let [Line::Block {
        open: inner_open,
        children: inner_children,
        close: inner_close,
    }] = children.as_slice()
    else {
        return (open, children, close);
    };
    let space = if open.ends_with('{') { " " } else { "" };
    let merged_open = format!("{open}{space}{inner_open}");
    if merged_open.len() > ONE_LINE_LIMIT {
        return (open, children, close);
    }
    let merged_close = format!("{}{space}{close}", inner_close.trim_end_matches(','));
    (merged_open, inner_children.clone(), merged_close)
}

/// The `Any` whose `Debug` children are `type_url: "..."` and `value: [<bytes>]`.
fn any_of(children: &[Line]) -> Any {
    let mut any = Any::default();
    for child in children {
        match child {
            Line::Leaf(text) if text.starts_with("type_url: ") => {
                any.type_url = text["type_url: ".len()..]
                    .trim_end_matches(',')
                    .trim_matches('"')
                    .to_string();
            }
            Line::Leaf(text) if text.starts_with("value: []") => {}
            Line::Block { open, children, .. } if open == "value: [" => {
                any.value = children
                    .iter()
                    .map(|byte| match byte {
                        Line::Leaf(text) => text.trim_end_matches(',').parse::<u8>().ok(),
                        Line::Block { .. } => None,
                    })
                    .collect::<Option<Vec<u8>>>()
                    .expect("an Any's value prints as a list of bytes");
            }
            other => panic!("unexpected line in an Any: {other:?}"),
        }
    }
    any
}

/// A field holding proto3's default (`None`, empty, zero, false, a zero enum): the same as
/// unset on the wire, and noise in a golden file.
fn is_default(line: &Line) -> bool {
    let Line::Leaf(text) = line else {
        return false;
    };
    if ZERO_ENUMS
        .iter()
        .any(|zero| zero == text.trim_end_matches(','))
    {
        return true;
    }
    let Some((field, value)) = text.split_once(": ") else {
        return false;
    };
    let is_field = field
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '#');
    is_field
        && matches!(
            value.trim_end_matches(','),
            "None" | "[]" | "{}" | "\"\"" | "0" | "0.0" | "false"
        )
}

/// `open` and `close` around `children`, on one line when they are all single lines and the
/// result is short.
fn join_short(open: String, children: Vec<Line>, close: String) -> Line {
    let leaves: Option<Vec<&str>> = children
        .iter()
        .map(|child| match child {
            Line::Leaf(text) => Some(text.trim_end_matches(',')),
            Line::Block { .. } => None,
        })
        .collect();
    let joined = leaves.map(|leaves| {
        let inside = leaves.join(", ");
        if leaves.is_empty() {
            format!("{open}{close}")
        } else if open.ends_with('{') {
            format!("{open} {inside} {close}")
        } else {
            format!("{open}{inside}{close}")
        }
    });
    match joined {
        Some(text) if text.len() <= ONE_LINE_LIMIT => Line::Leaf(text),
        _ => Line::Block {
            open,
            children,
            close,
        },
    }
}

fn write(line: &Line, depth: usize, out: &mut String) {
    let indent = "  ".repeat(depth);
    match line {
        Line::Leaf(text) => out.push_str(&format!("{indent}{text}\n")),
        Line::Block {
            open,
            children,
            close,
        } => {
            out.push_str(&format!("{indent}{open}\n"));
            for child in children {
                write(child, depth + 1, out);
            }
            out.push_str(&format!("{indent}{close}\n"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_entries_print_sorted_and_defaults_are_left_out() {
        let text = "Outer {\n    name: \"x\",\n    empty: \"\",\n    count: 0,\n    flag: false,\n    policies: {\n        \"b\": 2,\n        \"a\": 1,\n    },\n    list: [\n        \"b\",\n        \"a\",\n    ],\n}";
        let tree = reshape(parse(text).remove(0), &Placeholders(Vec::new()));
        assert_eq!(
            tree.text(),
            "Outer { name: \"x\", policies: { \"a\": 1, \"b\": 2 }, list: [\"b\", \"a\"] }\n",
            "maps are sorted, lists keep their order"
        );
    }

    #[test]
    fn short_values_share_a_line() {
        let text = "A {\n    kind: Some(\n        Type(\n            Eds,\n        ),\n    ),\n    percent: Some(\n        Percent {\n            value: 0.0,\n        },\n    ),\n}";
        let tree = reshape(parse(text).remove(0), &Placeholders(Vec::new()));
        assert_eq!(
            tree.text(),
            "A { kind: Some(Type(Eds)), percent: Some(Percent {}) }\n"
        );
    }

    #[test]
    fn pems_become_placeholders_and_unknown_ones_still_show() {
        let placeholders = Placeholders::new([(
            "-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n".to_string(),
            "<leaf certificate>".to_string(),
        )]);
        let line = "inline_string: \"-----BEGIN CERTIFICATE-----\\nA\\n-----END CERTIFICATE-----\\n-----BEGIN CERTIFICATE-----\\nB\\n-----END CERTIFICATE-----\\n\",";
        assert_eq!(
            placeholders.apply(line),
            "inline_string: \"<leaf certificate><unknown CERTIFICATE>\","
        );
    }
}
