//! `chain::compile` on each discovery-chain shape (default tcp and http, resolver subsets,
//! splitter, router, redirect, failover, timeouts and overrides) and on the entries it must
//! refuse (a missing subset, redirect and splitter cycles past the depth limit).

use std::time::Duration;

use serde_json::{json, Value};

use super::*;
use crate::testing::World;

const CONTEXT: Context<'static> = Context {
    datacenter: "dc1",
    trust_domain: "td.consul",
};

const TRUST_DOMAIN_SNI: &str = "default.dc1.internal.td.consul";

fn compile_in(world: &World, service: &str, overrides: &Overrides) -> Result<Chain, String> {
    compile(&world.tables(), service, &CONTEXT, overrides).map_err(|error| error.to_string())
}

fn api_chain(world: &World) -> Chain {
    compile_in(world, "api", &Overrides::default()).expect("the chain compiles")
}

fn http(world: &mut World, service: &str) {
    world.entry(json!({"Kind": "service-defaults", "Name": service, "Protocol": "http"}));
}

/// api's resolver with subsets v1 and v2, plus `extra` fields.
fn resolver_with_subsets(world: &mut World, extra: Value) {
    let mut resolver = json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"},
        "v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": true},
    }});
    for (key, value) in extra.as_object().expect("an object") {
        resolver[key] = value.clone();
    }
    world.entry(resolver);
}

fn resolver_node<'c>(chain: &'c Chain, key: &str) -> &'c ResolverNode {
    chain.nodes[key].resolver.as_ref().expect("a resolver node")
}

#[test]
fn a_service_without_entries_is_a_default_tcp_chain_of_one_resolver() {
    let chain = api_chain(&World::new());
    assert!(chain.default);
    assert_eq!(chain.protocol, "tcp");
    assert_eq!(chain.start_node, "resolver:api.default.default.dc1");
    assert_eq!(chain.nodes.len(), 1);
    let resolver = resolver_node(&chain, &chain.start_node);
    assert!(resolver.default);
    assert_eq!(resolver.connect_timeout, Duration::from_secs(5));
    assert_eq!(resolver.target, "api.default.default.dc1");
    let target = &chain.targets["api.default.default.dc1"];
    assert_eq!(target.sni, format!("api.{TRUST_DOMAIN_SNI}"));
    assert_eq!(target.name, target.sni);
    assert_eq!(chain.customization_hash, "");
}

#[test]
fn an_http_service_without_other_entries_is_still_a_default_chain() {
    let mut world = World::new();
    http(&mut world, "api");
    let chain = api_chain(&world);
    assert!(chain.default);
    assert_eq!(chain.protocol, "http");
    assert_eq!(chain.nodes.len(), 1);
}

#[test]
fn the_protocol_falls_back_to_proxy_defaults() {
    let mut world = World::new();
    world.entry(json!({"Kind": "proxy-defaults", "Name": "global",
        "Config": {"protocol": "http2"}}));
    assert_eq!(api_chain(&world).protocol, "http2");
}

#[test]
fn a_resolver_makes_the_chain_not_default() {
    let mut world = World::new();
    world.entry(json!({"Kind": "service-resolver", "Name": "api", "ConnectTimeout": "15s"}));
    let chain = api_chain(&world);
    assert!(!chain.default);
    let resolver = resolver_node(&chain, &chain.start_node);
    assert!(!resolver.default);
    assert_eq!(resolver.connect_timeout, Duration::from_secs(15));
    assert_eq!(
        chain.targets[&resolver.target].connect_timeout,
        Duration::from_secs(15)
    );
}

#[test]
fn default_subset_picks_the_target_and_its_filter() {
    let mut world = World::new();
    resolver_with_subsets(&mut world, json!({"DefaultSubset": "v2"}));
    let chain = api_chain(&world);
    assert_eq!(chain.start_node, "resolver:v2.api.default.default.dc1");
    assert_eq!(
        chain.targets.len(),
        1,
        "only the reached subset is a target"
    );
    let target = &chain.targets["v2.api.default.default.dc1"];
    assert_eq!(target.service_subset, "v2");
    assert_eq!(target.subset.filter, "Service.Meta.version == v2");
    assert!(target.subset.only_passing);
    assert_eq!(target.sni, format!("v2.api.{TRUST_DOMAIN_SNI}"));
}

#[test]
fn a_zero_connect_timeout_means_the_default_and_a_request_timeout_is_kept() {
    let mut world = World::new();
    world.entry(json!({"Kind": "service-resolver", "Name": "api",
        "ConnectTimeout": "0s", "RequestTimeout": "2500ms"}));
    let chain = api_chain(&world);
    let resolver = resolver_node(&chain, &chain.start_node);
    assert_eq!(resolver.connect_timeout, Duration::from_secs(5));
    assert_eq!(resolver.request_timeout, Some(Duration::from_millis(2500)));
}

#[test]
fn an_override_connect_timeout_beats_the_resolver_and_sets_a_customization_hash() {
    let mut world = World::new();
    world.entry(json!({"Kind": "service-resolver", "Name": "api", "ConnectTimeout": "15s"}));
    let overrides = Overrides {
        connect_timeout: Some(Duration::from_millis(2500)),
        ..Overrides::default()
    };
    let chain = compile_in(&world, "api", &overrides).unwrap();
    let resolver = resolver_node(&chain, &chain.start_node);
    assert_eq!(resolver.connect_timeout, Duration::from_millis(2500));
    assert_ne!(chain.customization_hash, "");
    let again = compile_in(&world, "api", &overrides).unwrap();
    assert_eq!(again.customization_hash, chain.customization_hash);
}

#[test]
fn an_override_protocol_turns_the_splitter_on() {
    let mut world = World::new();
    resolver_with_subsets(&mut world, json!({}));
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 100, "ServiceSubset": "v1"},
        ]}),
    );
    assert!(api_chain(&world).start_node.starts_with("resolver:"));
    let overrides = Overrides {
        protocol: "http".into(),
        ..Overrides::default()
    };
    let chain = compile_in(&world, "api", &overrides).unwrap();
    assert_eq!(chain.protocol, "http");
    assert_eq!(chain.start_node, "splitter:api.default.default");
}

#[test]
fn a_splitter_splits_to_subsets_and_other_services_by_weight() {
    let mut world = World::new();
    http(&mut world, "api");
    resolver_with_subsets(&mut world, json!({}));
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 33.33, "ServiceSubset": "v1"},
            {"Weight": 33.33, "ServiceSubset": "v2"},
            {"Weight": 33.34, "Service": "api-next"},
        ]}),
    );
    let chain = api_chain(&world);
    assert_eq!(chain.start_node, "splitter:api.default.default");
    let splits = chain.nodes[&chain.start_node].splits.as_ref().unwrap();
    let shape: Vec<(f32, &str)> = splits
        .iter()
        .map(|split| (split.weight, split.next_node.as_str()))
        .collect();
    assert_eq!(
        shape,
        [
            (33.33, "resolver:v1.api.default.default.dc1"),
            (33.33, "resolver:v2.api.default.default.dc1"),
            (33.34, "resolver:api-next.default.default.dc1"),
        ]
    );
    assert_eq!(splits[2].definition["Service"], "api-next");
    assert_eq!(chain.targets.len(), 3);
}

#[test]
fn a_split_to_its_own_service_without_a_subset_goes_to_the_resolver() {
    let mut world = World::new();
    http(&mut world, "api");
    resolver_with_subsets(&mut world, json!({}));
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 90},
            {"Weight": 10, "ServiceSubset": "v2"},
        ]}),
    );
    let chain = api_chain(&world);
    let splits = chain.nodes[&chain.start_node].splits.as_ref().unwrap();
    assert_eq!(splits[0].next_node, "resolver:api.default.default.dc1");
}

#[test]
fn a_splitter_is_ignored_for_a_tcp_service() {
    let mut world = World::new();
    resolver_with_subsets(&mut world, json!({}));
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 100, "ServiceSubset": "v1"},
        ]}),
    );
    let chain = api_chain(&world);
    assert_eq!(chain.start_node, "resolver:api.default.default.dc1");
    assert!(!chain.nodes.keys().any(|key| key.starts_with("splitter:")));
}

#[test]
fn a_splitter_naming_a_missing_subset_does_not_compile() {
    let mut world = World::new();
    http(&mut world, "api");
    resolver_with_subsets(&mut world, json!({}));
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 50, "ServiceSubset": "v1"},
            {"Weight": 50, "ServiceSubset": "v3"},
        ]}),
    );
    let error = compile_in(&world, "api", &Overrides::default()).unwrap_err();
    assert_eq!(error, "service \"api\" does not have a subset named \"v3\"");
}

#[test]
fn a_subset_of_a_service_without_a_resolver_does_not_compile() {
    let mut world = World::new();
    http(&mut world, "api");
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 100, "Service": "db", "ServiceSubset": "v1"},
        ]}),
    );
    let error = compile_in(&world, "api", &Overrides::default()).unwrap_err();
    assert_eq!(error, "service \"db\" does not have a subset named \"v1\"");
}

#[test]
fn a_router_keeps_its_routes_in_order_and_appends_a_catch_all() {
    let mut world = World::new();
    http(&mut world, "api");
    resolver_with_subsets(&mut world, json!({}));
    world.entry(json!({"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/v2/"}}, "Destination": {"ServiceSubset": "v2"}},
        {"Match": {"HTTP": {"PathExact": "/admin"}}, "Destination": {"Service": "admin"}},
        {"Match": {"HTTP": {"PathRegex": "/v1/.*"}}},
    ]}));
    let chain = api_chain(&world);
    assert_eq!(chain.start_node, "router:api.default.default");
    let routes = chain.nodes[&chain.start_node].routes.as_ref().unwrap();
    let next: Vec<&str> = routes.iter().map(|r| r.next_node.as_str()).collect();
    assert_eq!(
        next,
        [
            "resolver:v2.api.default.default.dc1",
            "resolver:admin.default.default.dc1",
            "resolver:api.default.default.dc1",
            "resolver:api.default.default.dc1",
        ]
    );
    assert_eq!(routes[0].definition["Match"]["HTTP"]["PathPrefix"], "/v2/");
    assert_eq!(
        routes[3].definition,
        json!({"Match": {"HTTP": {"PathPrefix": "/"}}, "Destination": {"Service": "api"}})
    );
}

#[test]
fn a_router_route_to_a_service_with_a_splitter_goes_through_the_splitter() {
    let mut world = World::new();
    http(&mut world, "api");
    resolver_with_subsets(&mut world, json!({}));
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 50, "ServiceSubset": "v1"},
            {"Weight": 50, "ServiceSubset": "v2"},
        ]}),
    );
    world.entry(json!({"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/v1/"}}, "Destination": {"ServiceSubset": "v1"}},
    ]}));
    let chain = api_chain(&world);
    let routes = chain.nodes[&chain.start_node].routes.as_ref().unwrap();
    assert_eq!(routes[0].next_node, "resolver:v1.api.default.default.dc1");
    assert_eq!(routes[1].next_node, "splitter:api.default.default");
}

#[test]
fn a_redirect_targets_the_other_service() {
    let mut world = World::new();
    world.entry(json!({"Kind": "service-resolver", "Name": "api",
        "Redirect": {"Service": "api-v2"}}));
    let chain = api_chain(&world);
    assert_eq!(chain.service_name, "api");
    assert_eq!(chain.start_node, "resolver:api-v2.default.default.dc1");
    let target = &chain.targets["api-v2.default.default.dc1"];
    assert_eq!(target.service, "api-v2");
    assert_eq!(target.sni, format!("api-v2.{TRUST_DOMAIN_SNI}"));
    assert!(!chain.targets.contains_key("api.default.default.dc1"));
}

#[test]
fn a_redirect_to_a_subset_and_datacenter_names_both_in_the_target() {
    let mut world = World::new();
    world.entry(
        json!({"Kind": "service-resolver", "Name": "db", "Subsets": {
            "primary": {"Filter": "Service.Meta.role == primary"},
        }}),
    );
    world.entry(json!({"Kind": "service-resolver", "Name": "api",
        "Redirect": {"Service": "db", "ServiceSubset": "primary", "Datacenter": "dc2"}}));
    let chain = api_chain(&world);
    let target = &chain.targets["primary.db.default.default.dc2"];
    assert_eq!(target.datacenter, "dc2");
    assert_eq!(target.subset.filter, "Service.Meta.role == primary");
    assert_eq!(target.sni, "primary.db.default.dc2.internal.td.consul");
}

#[test]
fn a_redirect_loop_stops_at_the_depth_limit() {
    let mut world = World::new();
    world.entry(json!({"Kind": "service-resolver", "Name": "api",
        "Redirect": {"Service": "db"}}));
    world.entry(json!({"Kind": "service-resolver", "Name": "db",
        "Redirect": {"Service": "api"}}));
    let error = compile_in(&world, "api", &Overrides::default()).unwrap_err();
    assert!(
        error.contains("nests splitters or redirects more than 16 deep"),
        "{error}"
    );
}

#[test]
fn a_splitter_cycle_across_services_stops_at_the_depth_limit() {
    let mut world = World::new();
    for (service, other) in [("api", "db"), ("db", "api")] {
        http(&mut world, service);
        world.entry(
            json!({"Kind": "service-splitter", "Name": service, "Splits": [
                {"Weight": 50},
                {"Weight": 50, "Service": other},
            ]}),
        );
    }
    // Each splitter node is remembered only once built, so the cycle recurses until the
    // depth limit.
    let error = compile_in(&world, "api", &Overrides::default()).unwrap_err();
    assert!(
        error.contains("nests splitters or redirects more than 16 deep"),
        "{error}"
    );
}

#[test]
fn failover_lists_its_targets_after_the_primary() {
    let mut world = World::new();
    world.entry(json!({"Kind": "service-resolver", "Name": "api",
        "Failover": {"*": {"Datacenters": ["dc2", "dc3"]}}}));
    let chain = api_chain(&world);
    let resolver = resolver_node(&chain, &chain.start_node);
    assert_eq!(
        resolver.failover.as_ref().unwrap().targets,
        ["api.default.default.dc2", "api.default.default.dc3"]
    );
    assert_eq!(chain.targets.len(), 3);
}
