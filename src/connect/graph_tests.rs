//! `graph::validate_change`: the rules across entries, for writes and deletions, checked
//! against the tables as they would be after the change.

use serde_json::{json, Value};

use super::*;
use crate::connect::entry;
use crate::testing::World;

fn set(value: Value) -> Command {
    let Value::Object(map) = value else {
        panic!("entries are objects")
    };
    Command::ConfigEntrySet {
        entry: Box::new(entry::decode(map).expect("valid on its own")),
        cas: None,
    }
}

fn delete(kind: &str, name: &str) -> Command {
    Command::ConfigEntryDelete {
        kind: kind.into(),
        name: name.into(),
        cas: None,
    }
}

fn check(world: &World, change: Command) -> Result<(), String> {
    validate_change(&world.tables(), &change).map_err(|error| error.to_string())
}

fn defaults(service: &str, protocol: &str) -> Value {
    json!({"Kind": "service-defaults", "Name": service, "Protocol": protocol})
}

fn api_resolver() -> Value {
    json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"},
        "v2": {"Filter": "Service.Meta.version == v2"},
    }})
}

/// `web` (http) splits between `api`'s subsets v1 and v2, which `api`'s resolver defines.
fn web_splits_on_api_subsets() -> World {
    let mut world = World::new();
    world.entry(defaults("web", "http"));
    world.entry(api_resolver());
    world.entry(
        json!({"Kind": "service-splitter", "Name": "web", "Splits": [
            {"Weight": 50, "Service": "api", "ServiceSubset": "v1"},
            {"Weight": 50, "Service": "api", "ServiceSubset": "v2"},
        ]}),
    );
    world
}

const NO_ADVANCED_ROUTING: &str =
    "uses a protocol \"tcp\" that does not permit advanced routing or splitting behavior";

#[test]
fn a_router_needs_an_http_family_protocol() {
    let mut world = World::new();
    let router = json!({"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/v2/"}}},
    ]});
    let error = check(&world, set(router.clone())).unwrap_err();
    assert!(
        error.starts_with("service-router: discovery chain \"api\""),
        "{error}"
    );
    assert!(error.contains(NO_ADVANCED_ROUTING), "{error}");
    world.entry(defaults("api", "http"));
    check(&world, set(router)).unwrap();
}

#[test]
fn a_protocol_from_proxy_defaults_is_enough_for_a_splitter() {
    let mut world = World::new();
    world.entry(json!({"Kind": "proxy-defaults", "Name": "global",
        "Config": {"protocol": "http"}}));
    world.entry(api_resolver());
    let splitter = json!({"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": 100, "ServiceSubset": "v1"},
    ]});
    check(&world, set(splitter)).unwrap();
}

#[test]
fn lowering_the_protocol_under_a_splitter_is_refused() {
    let world = web_splits_on_api_subsets();
    let error = check(&world, set(defaults("web", "tcp"))).unwrap_err();
    assert!(
        error.starts_with("existing service-splitter \"web\""),
        "{error}"
    );
}

#[test]
fn deleting_the_protocol_under_a_splitter_is_refused() {
    let world = web_splits_on_api_subsets();
    let error = check(&world, delete(ce::SERVICE_DEFAULTS, "web")).unwrap_err();
    assert!(error.contains(NO_ADVANCED_ROUTING), "{error}");
}

#[test]
fn deleting_proxy_defaults_that_gave_a_router_its_protocol_is_refused() {
    let mut world = World::new();
    world.entry(json!({"Kind": "proxy-defaults", "Name": "global",
        "Config": {"protocol": "http"}}));
    world.entry(json!({"Kind": "service-router", "Name": "api", "Routes": [
        {"Match": {"HTTP": {"PathPrefix": "/v2/"}}},
    ]}));
    let error = check(&world, delete(ce::PROXY_DEFAULTS, "global")).unwrap_err();
    assert!(
        error.starts_with("existing service-router \"api\""),
        "{error}"
    );
}

#[test]
fn l7_intentions_need_an_http_family_protocol() {
    let mut world = World::new();
    let l7 = json!({"Kind": "service-intentions", "Name": "web", "Sources": [
        {"Name": "api", "Permissions": [{"Action": "allow", "HTTP": {"PathPrefix": "/"}}]},
    ]});
    let error = check(&world, set(l7.clone())).unwrap_err();
    assert!(
        error.starts_with("service-intentions with Permissions: discovery chain \"web\""),
        "{error}"
    );
    let l4 = json!({"Kind": "service-intentions", "Name": "web", "Sources": [
        {"Name": "api", "Action": "allow"},
    ]});
    check(&world, set(l4)).unwrap();
    world.entry(defaults("web", "http"));
    check(&world, set(l7)).unwrap();
}

#[test]
fn a_splitter_naming_a_missing_subset_is_refused() {
    let mut world = World::new();
    world.entry(defaults("api", "http"));
    world.entry(api_resolver());
    let error = check(
        &world,
        set(
            json!({"Kind": "service-splitter", "Name": "api", "Splits": [
                {"Weight": 50, "ServiceSubset": "v1"},
                {"Weight": 50, "ServiceSubset": "v3"},
            ]}),
        ),
    )
    .unwrap_err();
    assert_eq!(error, "service \"api\" does not have a subset named \"v3\"");
}

#[test]
fn deleting_a_resolver_whose_subsets_another_services_splitter_uses_is_refused() {
    let world = web_splits_on_api_subsets();
    let error = check(&world, delete(ce::SERVICE_RESOLVER, "api")).unwrap_err();
    assert_eq!(error, "service \"api\" does not have a subset named \"v1\"");
}

#[test]
fn rewriting_a_resolver_without_a_subset_in_use_is_refused() {
    let world = web_splits_on_api_subsets();
    let only_v1 = json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"},
    }});
    let error = check(&world, set(only_v1)).unwrap_err();
    assert_eq!(error, "service \"api\" does not have a subset named \"v2\"");
}

#[test]
fn deleting_a_resolver_nobody_relies_on_is_allowed() {
    let mut world = World::new();
    world.entry(api_resolver());
    check(&world, delete(ce::SERVICE_RESOLVER, "api")).unwrap();
}

#[test]
fn deleting_the_splitter_that_used_the_subsets_is_allowed() {
    let world = web_splits_on_api_subsets();
    check(&world, delete(ce::SERVICE_SPLITTER, "web")).unwrap();
}

#[test]
fn a_redirect_that_closes_a_loop_is_refused() {
    let mut world = World::new();
    world.entry(json!({"Kind": "service-resolver", "Name": "api",
        "Redirect": {"Service": "db"}}));
    let error = check(
        &world,
        set(json!({"Kind": "service-resolver", "Name": "db",
            "Redirect": {"Service": "api"}})),
    )
    .unwrap_err();
    assert!(error.contains("more than 16 deep"), "{error}");
}

#[test]
fn a_chain_broken_before_the_change_does_not_block_unrelated_changes() {
    // Written without the cross-entry check, as data from before these rules could be.
    let world = {
        let mut world = World::new();
        world.entry(defaults("web", "http"));
        world.entry(
            json!({"Kind": "service-splitter", "Name": "web", "Splits": [
                {"Weight": 100, "Service": "api", "ServiceSubset": "v9"},
            ]}),
        );
        world
    };
    check(&world, set(defaults("db", "http"))).unwrap();
    // The broken chain's own entry may still not be rewritten broken.
    let still_broken = json!({"Kind": "service-splitter", "Name": "web", "Splits": [
        {"Weight": 100, "Service": "api", "ServiceSubset": "v8"},
    ]});
    assert!(check(&world, set(still_broken)).is_err());
}

#[test]
fn entries_no_chain_reads_are_not_compiled() {
    let world = World::new();
    check(&world, set(json!({"Kind": "mesh", "Name": "mesh"}))).unwrap();
}
