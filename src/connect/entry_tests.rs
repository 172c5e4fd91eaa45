//! Per-entry validation (`entry::decode`): each rule refuses with a message naming the field,
//! well-formed entries are stored canonically, and a service's protocol falls back from
//! service-defaults to proxy-defaults to tcp.

use serde_json::{json, Value};

use super::*;
use crate::testing::World;

fn decode_json(value: Value) -> Result<ConfigEntry, String> {
    let Value::Object(map) = value else {
        panic!("entries are objects")
    };
    decode(map).map_err(|error| error.to_string())
}

/// Asserts that `value` is refused with a message containing `expected`.
fn refused(value: Value, expected: &str) {
    match decode_json(value.clone()) {
        Ok(_) => panic!("accepted: {value}"),
        Err(error) => assert!(error.contains(expected), "{value}\n  gave: {error}"),
    }
}

fn accepted(value: Value) -> ConfigEntry {
    decode_json(value.clone()).unwrap_or_else(|error| panic!("{value}\n  refused: {error}"))
}

fn splitter(splits: Value) -> Value {
    json!({"Kind": "service-splitter", "Name": "api", "Splits": splits})
}

fn resolver(fields: Value) -> Value {
    let mut entry = json!({"Kind": "service-resolver", "Name": "api"});
    for (key, value) in fields.as_object().expect("an object") {
        entry[key] = value.clone();
    }
    entry
}

fn router_route(route: Value) -> Value {
    json!({"Kind": "service-router", "Name": "api", "Routes": [route]})
}

fn intentions(sources: Value) -> Value {
    json!({"Kind": "service-intentions", "Name": "web", "Sources": sources})
}

#[test]
fn kind_and_name_are_required_and_the_kind_must_be_known() {
    refused(json!({"Name": "api"}), "Kind is required");
    refused(json!({"Kind": "service-defaults"}), "Name is required");
    refused(
        json!({"Kind": "ingress-gateway", "Name": "api"}),
        "invalid config entry kind: \"ingress-gateway\"",
    );
}

#[test]
fn proxy_defaults_and_mesh_have_fixed_names() {
    refused(
        json!({"Kind": "proxy-defaults", "Name": "web"}),
        "only \"global\" is supported",
    );
    refused(
        json!({"Kind": "mesh", "Name": "web"}),
        "only \"mesh\" is supported",
    );
    accepted(json!({"Kind": "proxy-defaults", "Name": "global"}));
}

#[test]
fn meta_is_at_most_64_string_pairs() {
    let too_many: serde_json::Map<String, Value> = (0..65)
        .map(|n| (format!("k{n}"), Value::String("v".into())))
        .collect();
    refused(
        json!({"Kind": "service-defaults", "Name": "api", "Meta": too_many}),
        "Meta exceeds the limit of 64 pairs",
    );
    refused(
        json!({"Kind": "service-defaults", "Name": "api", "Meta": {"k": 1}}),
        "Meta values must be strings",
    );
}

#[test]
fn protocols_are_tcp_http_http2_or_grpc() {
    refused(
        json!({"Kind": "service-defaults", "Name": "api", "Protocol": "udp"}),
        "Protocol \"udp\" is not supported",
    );
    refused(
        json!({"Kind": "proxy-defaults", "Name": "global", "Config": {"protocol": "redis"}}),
        "Config.protocol \"redis\" is not supported",
    );
    for protocol in ["tcp", "http", "http2", "grpc"] {
        accepted(json!({"Kind": "service-defaults", "Name": "api", "Protocol": protocol}));
    }
}

#[test]
fn split_weights_must_sum_to_exactly_100() {
    accepted(splitter(json!([
        {"Weight": 33.33, "ServiceSubset": "v1"},
        {"Weight": 33.33, "ServiceSubset": "v2"},
        {"Weight": 33.34, "ServiceSubset": "v3"},
    ])));
    refused(
        splitter(json!([
            {"Weight": 50, "ServiceSubset": "v1"},
            {"Weight": 49.99, "ServiceSubset": "v2"},
        ])),
        "the sum of all split weights must be 100, not 99.990000",
    );
}

#[test]
fn a_split_weight_is_between_0_and_100() {
    refused(
        splitter(json!([{"Weight": 101}])),
        "Splits[0].Weight must be between 0 and 100",
    );
}

#[test]
fn a_splitter_needs_splits() {
    refused(splitter(json!([])), "Splits: no splits configured");
}

#[test]
fn a_split_destination_occurs_once_with_its_own_service_spelled_or_not() {
    refused(
        splitter(json!([
            {"Weight": 50},
            {"Weight": 50, "Service": "api"},
        ])),
        "Splits[1]: split destination occurs more than once: service=\"api\", subset=\"\"",
    );
}

#[test]
fn subset_names_are_lowercase_letters_digits_and_dashes() {
    refused(
        resolver(json!({"Subsets": {"V1": {}}})),
        "subset name \"V1\" is invalid",
    );
    accepted(resolver(json!({"Subsets": {"v1-canary": {}}})));
}

#[test]
fn a_subset_filter_must_parse() {
    refused(
        resolver(json!({"Subsets": {"v1": {"Filter": "Service.Meta.version ==="}}})),
        "Filter for subset \"v1\" is not a valid expression",
    );
}

#[test]
fn the_default_subset_must_exist() {
    refused(
        resolver(json!({"DefaultSubset": "v9", "Subsets": {"v1": {}}})),
        "DefaultSubset \"v9\" is not a valid subset",
    );
}

#[test]
fn a_redirect_stands_alone() {
    refused(
        resolver(json!({"Redirect": {"Service": "db"}, "Subsets": {"v1": {}}})),
        "Redirect and Subsets cannot both be set",
    );
    refused(
        resolver(json!({"Redirect": {"Service": "db"},
            "Failover": {"*": {"Service": "backup"}}})),
        "Redirect and Failover cannot both be set",
    );
}

#[test]
fn a_redirect_must_lead_somewhere_else() {
    refused(
        resolver(json!({"Redirect": {"Service": "api"}})),
        "Redirect is empty",
    );
    accepted(resolver(json!({"Redirect": {"Datacenter": "dc2"}})));
}

#[test]
fn failover_keys_name_subsets_and_rules_take_one_form() {
    refused(
        resolver(json!({"Failover": {"v9": {"Service": "backup"}}})),
        "Failover[\"v9\"]: not a valid subset",
    );
    refused(
        resolver(json!({"Failover": {"*": {"Service": "backup",
            "Targets": [{"Service": "other"}]}}})),
        "Targets cannot be set with Service",
    );
    refused(
        resolver(json!({"Failover": {"*": {}}})),
        "one of Service, ServiceSubset, Namespace, Targets, SamenessGroup, or Datacenters is required",
    );
    refused(
        resolver(json!({"Failover": {"*": {"Targets": [{}]}}})),
        "Failover[\"*\"].Targets[0] is empty",
    );
    refused(
        resolver(json!({"Failover": {"*": {"Datacenters": ["dc2", ""]}}})),
        "found empty datacenter",
    );
}

#[test]
fn resolver_timeouts_are_go_durations_or_nanoseconds() {
    refused(
        resolver(json!({"ConnectTimeout": "5 parsecs"})),
        "ConnectTimeout: invalid duration",
    );
    refused(
        resolver(json!({"RequestTimeout": -1})),
        "RequestTimeout must be >= 0",
    );
    accepted(resolver(
        json!({"ConnectTimeout": "1m30s", "RequestTimeout": 5_000_000_000u64}),
    ));
}

#[test]
fn a_route_matches_at_most_one_path_form() {
    refused(
        router_route(json!({"Match": {"HTTP": {"PathExact": "/a", "PathPrefix": "/b"}}})),
        "Routes[0].Match.HTTP should only contain at most one of PathExact, PathPrefix, or PathRegex",
    );
    refused(
        router_route(json!({"Match": {"HTTP": {"PathPrefix": "api"}}})),
        "Routes[0].Match.HTTP.PathPrefix doesn't start with '/'",
    );
    refused(
        router_route(json!({"Match": {"HTTP": {"PathRegex": "(unclosed"}}})),
        "Routes[0].Match.HTTP.PathRegex: invalid regex",
    );
}

#[test]
fn header_and_query_matches_name_one_condition() {
    refused(
        router_route(json!({"Match": {"HTTP": {"Header": [
            {"Name": "x-a", "Exact": "1", "Prefix": "2"},
        ]}}})),
        "Header[0] should only contain one of Present, Exact, Prefix, Suffix, Contains, or Regex",
    );
    refused(
        router_route(json!({"Match": {"HTTP": {"Header": [{"Exact": "1"}]}}})),
        "Header[0]: missing required Name field",
    );
    refused(
        router_route(json!({"Match": {"HTTP": {"QueryParam": [{"Exact": "1"}]}}})),
        "QueryParam[0]: missing required Name field",
    );
    refused(
        router_route(json!({"Match": {"HTTP": {"QueryParam": [
            {"Name": "q", "Present": true, "Regex": "x"},
        ]}}})),
        "QueryParam[0] should only contain one of Present, Exact, or Regex",
    );
}

#[test]
fn methods_are_http_methods() {
    refused(
        router_route(json!({"Match": {"HTTP": {"Methods": ["FETCH"]}}})),
        "Methods contains an invalid method \"FETCH\"",
    );
}

#[test]
fn a_prefix_rewrite_needs_an_exact_or_prefix_path_match() {
    refused(
        router_route(json!({"Match": {"HTTP": {"PathRegex": "/a.*"}},
            "Destination": {"PrefixRewrite": "/"}})),
        "Routes[0].Destination.PrefixRewrite needs the route to match on PathExact or PathPrefix",
    );
    accepted(router_route(
        json!({"Match": {"HTTP": {"PathPrefix": "/a/"}},
        "Destination": {"PrefixRewrite": "/"}}),
    ));
}

#[test]
fn retry_conditions_are_envoys() {
    refused(
        router_route(json!({"Destination": {"RetryOn": ["sometimes"]}})),
        "Routes[0].Destination.RetryOn \"sometimes\" is invalid",
    );
}

#[test]
fn an_intention_has_an_action_or_permissions_not_both() {
    refused(
        intentions(json!([{"Name": "api", "Action": "allow",
            "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]}])),
        "Sources[0].Action must be omitted if Permissions are specified",
    );
    refused(
        intentions(json!([{"Name": "api"}])),
        "Sources[0].Action must be set to 'allow' or 'deny'",
    );
    refused(
        intentions(json!([{"Name": "api", "Action": "permit"}])),
        "Sources[0].Action must be set to 'allow' or 'deny'",
    );
}

#[test]
fn an_intention_source_is_named_once() {
    refused(
        intentions(json!([{"Action": "allow"}])),
        "Sources[0].Name is required",
    );
    refused(
        intentions(json!([
            {"Name": "api", "Action": "allow"},
            {"Name": "api", "Action": "deny"},
        ])),
        "Sources[1]: source \"api\" is defined more than once",
    );
}

#[test]
fn a_permission_has_an_action_and_a_non_empty_http_match() {
    refused(
        intentions(json!([{"Name": "api", "Permissions": [{"HTTP": {"PathPrefix": "/"}}]}])),
        "Sources[0].Permissions[0].Action must be set to 'allow' or 'deny'",
    );
    refused(
        intentions(json!([{"Name": "api", "Permissions": [{"Action": "allow"}]}])),
        "Sources[0].Permissions[0].HTTP is required",
    );
    refused(
        intentions(json!([{"Name": "api", "Permissions": [{"Action": "allow", "HTTP": {}}]}])),
        "Sources[0].Permissions[0].HTTP should not be empty",
    );
    refused(
        intentions(json!([{"Name": "api", "Permissions": [{"Action": "allow",
            "HTTP": {"PathExact": "/a", "PathRegex": "/b"}}]}])),
        "Sources[0].Permissions[0].HTTP should only contain at most one of",
    );
}

#[test]
fn stored_entries_drop_indexes_and_intention_precedence() {
    let entry = accepted(json!({"Kind": "service-intentions", "Name": "web",
        "CreateIndex": 3, "ModifyIndex": 4,
        "Sources": [{"Name": "api", "Action": "allow", "Precedence": 9}]}));
    let stored: Value = serde_json::from_str(&entry.json).unwrap();
    assert_eq!(stored.get("CreateIndex"), None);
    assert_eq!(stored.get("ModifyIndex"), None);
    assert_eq!(stored["Sources"][0].get("Precedence"), None);
    assert_eq!(stored["Sources"][0]["Name"], "api");
}

#[test]
fn a_service_protocol_comes_from_service_defaults_then_proxy_defaults_then_tcp() {
    let mut world = World::new();
    assert_eq!(service_protocol(&world.tables(), "api"), "tcp");
    world.entry(json!({"Kind": "proxy-defaults", "Name": "global",
        "Config": {"protocol": "http"}}));
    assert_eq!(service_protocol(&world.tables(), "api"), "http");
    world.entry(json!({"Kind": "service-defaults", "Name": "api", "Protocol": "grpc"}));
    assert_eq!(service_protocol(&world.tables(), "api"), "grpc");
    // A service-defaults without a protocol does not hide proxy-defaults'.
    world.entry(json!({"Kind": "service-defaults", "Name": "db"}));
    assert_eq!(service_protocol(&world.tables(), "db"), "http");
}
