//! `compute`: what a proxy's snapshot holds for a given state (its public listener, each
//! upstream's chain and endpoints filtered by health and subset with their weights, the
//! destination's intentions in precedence order) and why none can be made yet (`NotReady`).

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::json;

use super::*;
use crate::testing::{pem, proxy, upstream, World, WEB_PROXY};
use crate::types::{Check, Command, HealthStatus, Node, RaftIndexes, RegisterRequest, Weights};

fn compute_web(world: &World) -> Result<Snapshot, NotReady> {
    world.compute(&Mutex::new(Shared::default()), WEB_PROXY)
}

fn snapshot(world: &World) -> Snapshot {
    compute_web(world).expect("a snapshot")
}

/// A node-level check on `node` (it applies to every instance there).
fn node_check(world: &mut World, node: &str, status: HealthStatus) {
    world.apply(Command::CatalogRegister(Box::new(RegisterRequest {
        node: Node {
            id: String::new(),
            name: node.into(),
            address: format!("10.0.0.{}", node.trim_start_matches('n')),
            datacenter: "dc1".into(),
            tagged_addresses: BTreeMap::new(),
            meta: BTreeMap::new(),
            indexes: RaftIndexes::default(),
            locality: None,
        },
        skip_node_update: false,
        service: None,
        checks: vec![Check {
            node: node.into(),
            check_id: "serfHealth".into(),
            name: "Serf Health Status".into(),
            status,
            notes: String::new(),
            output: String::new(),
            service_id: String::new(),
            service_name: String::new(),
            service_tags: Vec::new(),
            check_type: String::new(),
            interval: String::new(),
            timeout: String::new(),
            indexes: RaftIndexes::default(),
        }],
    })));
}

/// The endpoints of the upstream's only target, as (address, weight).
fn endpoints_of(snapshot: &Snapshot) -> Vec<(String, u32)> {
    let upstream = &snapshot.upstreams[0];
    assert_eq!(upstream.endpoints.len(), 1, "one target");
    upstream
        .endpoints
        .values()
        .next()
        .unwrap()
        .iter()
        .map(|endpoint| (endpoint.address.clone(), endpoint.weight))
        .collect()
}

fn addresses(pairs: &[(String, u32)]) -> Vec<&str> {
    pairs.iter().map(|(address, _)| address.as_str()).collect()
}

#[test]
fn an_unregistered_proxy_is_unknown() {
    let world = World::web(Vec::new());
    let result = world.compute(&Mutex::new(Shared::default()), "db-sidecar-proxy");
    assert_eq!(result.unwrap_err(), NotReady::UnknownProxy);
}

#[test]
fn a_service_that_is_not_a_proxy_is_unknown() {
    let mut world = World::web(Vec::new());
    let plain = Service {
        id: "web".into(),
        name: "web".into(),
        port: 8080,
        ..Service::default()
    };
    world.register("n1", "10.0.0.1", plain, HealthStatus::Passing);
    let result = world.compute(&Mutex::new(Shared::default()), "web");
    assert_eq!(result.unwrap_err(), NotReady::UnknownProxy);
}

#[test]
fn a_proxy_on_another_node_is_unknown() {
    let mut world = World::new();
    world.ca(&[&pem("CERTIFICATE", "ROOT A")]);
    world.register(
        "n2",
        "10.0.0.2",
        proxy(WEB_PROXY, "web", 21000, "", Vec::new()),
        HealthStatus::Passing,
    );
    assert_eq!(compute_web(&world).unwrap_err(), NotReady::UnknownProxy);
}

#[test]
fn without_a_ca_the_proxy_waits_for_its_certificate() {
    let mut world = World::new();
    world.register(
        "n1",
        "10.0.0.1",
        proxy(WEB_PROXY, "web", 21000, "", Vec::new()),
        HealthStatus::Passing,
    );
    assert_eq!(
        compute_web(&world).unwrap_err(),
        NotReady::WaitingForCertificate
    );
}

#[test]
fn without_a_leaf_the_proxy_waits_for_its_certificate() {
    let world = World::web(Vec::new());
    let context = Context {
        node: crate::testing::AGENT_NODE,
        datacenter: "dc1",
        default_policy: DefaultPolicy::Configured { allow: true },
    };
    let result = compute(
        &world.tables(),
        &context,
        &Mutex::new(Shared::default()),
        WEB_PROXY,
        None,
    );
    assert_eq!(result.unwrap_err(), NotReady::WaitingForCertificate);
}

#[test]
fn an_upstream_chain_that_does_not_compile_is_not_ready() {
    let mut world = World::web(vec![upstream("api", 9191)]);
    world.entry(json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}));
    // Written without the cross-entry check: a splitter on a subset no resolver defines.
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 100, "ServiceSubset": "v1"},
        ]}),
    );
    match compute_web(&world).unwrap_err() {
        NotReady::Chain(error) => assert_eq!(
            error.to_string(),
            "service \"api\" does not have a subset named \"v1\""
        ),
        other => panic!("expected a chain error, got {other:?}"),
    }
}

#[test]
fn the_public_listener_defaults_to_the_proxy_port_and_local_app_on_loopback() {
    let world = World::web(Vec::new());
    let public = snapshot(&world).public;
    assert_eq!(
        public,
        PublicListener {
            address: "0.0.0.0".into(),
            port: 21000,
            protocol: "tcp".into(),
            local_address: "127.0.0.1".into(),
            local_port: 8080,
            local_connect_timeout_ms: 5000,
        }
    );
}

#[test]
fn proxy_config_sets_the_public_listener_and_the_protocol_comes_from_service_defaults() {
    let mut world = World::web(Vec::new());
    world.entry(json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}));
    assert_eq!(snapshot(&world).public.protocol, "http");
    let mut sidecar = proxy(WEB_PROXY, "web", 21000, "", Vec::new());
    if let Some(proxy) = sidecar.proxy.as_mut() {
        proxy.config_json = json!({"bind_address": "10.0.0.1", "bind_port": "21500",
            "local_connect_timeout_ms": 250, "protocol": "grpc"})
        .to_string();
    }
    world.register("n1", "10.0.0.1", sidecar, HealthStatus::Passing);
    let public = snapshot(&world).public;
    assert_eq!(public.address, "10.0.0.1");
    assert_eq!(public.port, 21500);
    assert_eq!(public.local_connect_timeout_ms, 250);
    assert_eq!(public.protocol, "grpc", "the proxy's own config wins");
}

#[test]
fn prepared_query_upstreams_get_nothing_yet() {
    let mut query = upstream("lookup", 9292);
    query.destination_type = "prepared_query".into();
    let world = World::web(vec![upstream("api", 9191), query]);
    let ids: Vec<String> = snapshot(&world)
        .upstreams
        .iter()
        .map(|upstream| upstream.id.clone())
        .collect();
    assert_eq!(ids, ["api"]);
}

#[test]
fn an_upstream_binds_on_loopback_unless_told_otherwise() {
    let mut elsewhere = upstream("db", 9292);
    elsewhere.local_bind_address = "127.0.0.2".into();
    let world = World::web(vec![upstream("api", 9191), elsewhere]);
    let binds: Vec<(String, u16)> = snapshot(&world)
        .upstreams
        .iter()
        .map(|upstream| (upstream.bind_address.clone(), upstream.bind_port))
        .collect();
    assert_eq!(
        binds,
        [
            ("127.0.0.1".to_string(), 9191),
            ("127.0.0.2".to_string(), 9292)
        ]
    );
}

#[test]
fn an_upstream_connect_timeout_override_reaches_the_chain() {
    let mut api = upstream("api", 9191);
    api.config_json = json!({"connect_timeout_ms": 2500}).to_string();
    let world = World::web(vec![api]);
    let snapshot = snapshot(&world);
    let target = snapshot.upstreams[0].chain.targets.values().next().unwrap();
    assert_eq!(
        target.connect_timeout,
        std::time::Duration::from_millis(2500)
    );
}

#[test]
fn critical_instances_are_left_out_and_warning_ones_get_their_warning_weight() {
    let mut world = World::web(vec![upstream("api", 9191)]);
    let weights = Weights {
        passing: 10,
        warning: 3,
    };
    world.instance_weighted("n2", "api", "", HealthStatus::Passing, weights);
    world.instance_weighted("n3", "api", "", HealthStatus::Warning, weights);
    world.instance_weighted("n4", "api", "", HealthStatus::Critical, weights);
    assert_eq!(
        endpoints_of(&snapshot(&world)),
        [("10.0.0.2".to_string(), 10), ("10.0.0.3".to_string(), 3)]
    );
}

#[test]
fn a_critical_node_check_leaves_out_every_instance_on_the_node() {
    let mut world = World::web(vec![upstream("api", 9191)]);
    world.instance("n2", "api", "", HealthStatus::Passing);
    world.instance("n3", "api", "", HealthStatus::Passing);
    node_check(&mut world, "n3", HealthStatus::Critical);
    assert_eq!(addresses(&endpoints_of(&snapshot(&world))), ["10.0.0.2"]);
}

#[test]
fn a_weight_of_zero_leaves_an_instance_out_and_weights_are_capped_at_128() {
    let mut world = World::web(vec![upstream("api", 9191)]);
    let weights = |passing, warning| Weights { passing, warning };
    world.instance_weighted("n2", "api", "", HealthStatus::Passing, weights(1000, 1));
    world.instance_weighted("n3", "api", "", HealthStatus::Warning, weights(1, 0));
    assert_eq!(
        endpoints_of(&snapshot(&world)),
        [("10.0.0.2".to_string(), 128)]
    );
}

#[test]
fn a_subset_filter_selects_instances_and_only_passing_drops_warnings() {
    let mut world = World::web(vec![upstream("api", 9191)]);
    world.entry(
        json!({"Kind": "service-resolver", "Name": "api", "DefaultSubset": "v2",
        "Subsets": {"v2": {"Filter": "Service.Meta.version == v2", "OnlyPassing": true}}}),
    );
    world.instance("n2", "api", "v1", HealthStatus::Passing);
    world.instance("n3", "api", "v2", HealthStatus::Passing);
    world.instance("n4", "api", "v2", HealthStatus::Warning);
    let snapshot = snapshot(&world);
    assert_eq!(
        snapshot.upstreams[0].endpoints.keys().collect::<Vec<_>>(),
        ["v2.api.default.default.dc1"]
    );
    assert_eq!(addresses(&endpoints_of(&snapshot)), ["10.0.0.3"]);
}

#[test]
fn a_service_address_is_used_over_its_nodes() {
    let mut world = World::web(vec![upstream("api", 9191)]);
    let sidecar = Service {
        address: "192.168.0.9".into(),
        ..proxy("api-sidecar-proxy", "api", 21000, "", Vec::new())
    };
    world.register("n2", "10.0.0.2", sidecar, HealthStatus::Passing);
    assert_eq!(addresses(&endpoints_of(&snapshot(&world))), ["192.168.0.9"]);
}

#[test]
fn connect_native_instances_are_endpoints_too() {
    let mut world = World::web(vec![upstream("api", 9191)]);
    let native = Service {
        id: "api".into(),
        name: "api".into(),
        port: 8443,
        connect_native: true,
        ..Service::default()
    };
    world.register("n2", "10.0.0.2", native, HealthStatus::Passing);
    let snapshot = snapshot(&world);
    let endpoint = &snapshot.upstreams[0].endpoints.values().next().unwrap()[0];
    assert_eq!(
        (endpoint.address.as_str(), endpoint.port),
        ("10.0.0.2", 8443)
    );
}

#[test]
fn every_target_of_a_splitter_has_its_own_endpoints() {
    let mut world = World::web(vec![upstream("api", 9191)]);
    world.entry(json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}));
    world.entry(
        json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        }}),
    );
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 90, "ServiceSubset": "v1"},
            {"Weight": 10, "ServiceSubset": "v2"},
        ]}),
    );
    world.instance("n2", "api", "v1", HealthStatus::Passing);
    world.instance("n3", "api", "v2", HealthStatus::Passing);
    let snapshot = snapshot(&world);
    let by_target: Vec<(&str, Vec<&str>)> = snapshot.upstreams[0]
        .endpoints
        .iter()
        .map(|(id, endpoints)| {
            let addresses = endpoints.iter().map(|e| e.address.as_str()).collect();
            (id.as_str(), addresses)
        })
        .collect();
    assert_eq!(
        by_target,
        [
            ("v1.api.default.default.dc1", vec!["10.0.0.2"]),
            ("v2.api.default.default.dc1", vec!["10.0.0.3"]),
        ]
    );
}

#[test]
fn intentions_come_in_precedence_order_deny_first_one_per_source() {
    let mut world = World::web(Vec::new());
    world.entry(
        json!({"Kind": "service-intentions", "Name": "web", "Sources": [
            {"Name": "*", "Action": "allow"},
            {"Name": "billing", "Action": "allow"},
            {"Name": "api", "Action": "deny"},
        ]}),
    );
    world.entry(
        json!({"Kind": "service-intentions", "Name": "*", "Sources": [
            {"Name": "*", "Action": "deny"},
            {"Name": "api", "Action": "allow"},
            {"Name": "metrics", "Action": "allow"},
        ]}),
    );
    let rules: Vec<(String, u32, RuleAction)> = snapshot(&world)
        .intentions
        .rules
        .into_iter()
        .map(|rule| (rule.source, rule.precedence, rule.action))
        .collect();
    assert_eq!(
        rules,
        [
            // At equal precedence a deny sorts first, then names.
            ("api".to_string(), 9, RuleAction::Deny),
            ("billing".to_string(), 9, RuleAction::Allow),
            ("*".to_string(), 8, RuleAction::Allow),
            // api's and *'s intentions on * are shadowed by their intentions on web.
            ("metrics".to_string(), 6, RuleAction::Allow),
        ]
    );
}

#[test]
fn the_intention_default_comes_from_the_agent() {
    let mut world = World::web(Vec::new());
    assert!(snapshot(&world).intentions.default_allow);
    world.default_allow = false;
    assert!(!snapshot(&world).intentions.default_allow);
}

#[test]
fn l7_permissions_keep_their_order_and_matches() {
    let mut world = World::web(Vec::new());
    world.entry(json!({"Kind": "service-defaults", "Name": "web", "Protocol": "http"}));
    world.entry(
        json!({"Kind": "service-intentions", "Name": "web", "Sources": [
            {"Name": "api", "Permissions": [
                {"Action": "deny", "HTTP": {"PathExact": "/admin"}},
                {"Action": "allow", "HTTP": {"PathPrefix": "/", "Methods": ["GET"],
                    "Header": [{"Name": "x-team", "Suffix": "-eu", "Invert": true}]}},
            ]},
        ]}),
    );
    let rules = snapshot(&world).intentions.rules;
    let RuleAction::Permissions(permissions) = &rules[0].action else {
        panic!("expected permissions, got {:?}", rules[0].action);
    };
    assert!(!permissions[0].allow);
    assert_eq!(permissions[0].path_exact, "/admin");
    assert!(permissions[1].allow);
    assert_eq!(permissions[1].path_prefix, "/");
    assert_eq!(permissions[1].methods, ["GET"]);
    let header = &permissions[1].headers[0];
    assert_eq!(
        (header.name.as_str(), header.suffix.as_str(), header.invert),
        ("x-team", "-eu", true)
    );
}

#[test]
fn the_active_root_is_trusted_first_then_the_rest_by_age() {
    let mut world = World::web(Vec::new());
    world.ca(&["ROOT A", "ROOT B", "ROOT C"]);
    assert_eq!(*snapshot(&world).roots_pem, ["ROOT C", "ROOT A", "ROOT B"]);
}

#[test]
fn the_shared_memo_gives_the_same_snapshot_as_computing_alone() {
    let mut world = World::web(vec![upstream("api", 9191)]);
    world.instance("n2", "api", "", HealthStatus::Passing);
    let shared = Mutex::new(Shared::default());
    let first = world.compute(&shared, WEB_PROXY).unwrap();
    let memoized = world.compute(&shared, WEB_PROXY).unwrap();
    assert_eq!(memoized, first);
    assert!(Arc::ptr_eq(
        &memoized.upstreams[0].chain,
        &first.upstreams[0].chain
    ));
    world.instance("n3", "api", "", HealthStatus::Passing);
    let after_change = world.compute(&shared, WEB_PROXY).unwrap();
    assert_eq!(after_change, compute_web(&world).unwrap());
    assert_eq!(endpoints_of(&after_change).len(), 2);
}
