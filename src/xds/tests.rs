//! Incremental generation: resources generated from the previous snapshot and its resources
//! must equal resources generated from nothing, through every kind of change a proxy sees.

use std::sync::Mutex;

use serde_json::json;

use super::resources::{self, Resources, CLUSTER, ENDPOINT, LISTENER, ROUTE, SECRET};
use crate::proxycfg::Shared;
use crate::testing::{leaf, proxy, upstream, World};
use crate::types::HealthStatus;

fn splitter(v1: u32) -> serde_json::Value {
    json!({"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": v1, "ServiceSubset": "v1"},
        {"Weight": 100 - v1, "ServiceSubset": "v2"},
    ]})
}

fn versions(resources: &Resources) -> Vec<(&'static str, String, String)> {
    resources
        .by_type
        .iter()
        .flat_map(|(type_url, named)| {
            named
                .iter()
                .map(|(name, versioned)| (*type_url, name.clone(), versioned.version.clone()))
        })
        .collect()
}

#[test]
fn incremental_generation_equals_generation_from_nothing_through_every_change() {
    let mut world = World::new();
    world.ca(&["ROOT A"]);
    world.entry(json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}));
    world.entry(
        json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        }}),
    );
    world.entry(splitter(80));
    world.register(
        "n1",
        "10.0.0.1",
        proxy(
            "web-sidecar-proxy",
            "web",
            21000,
            "",
            vec![upstream("api", 9191)],
        ),
        HealthStatus::Passing,
    );
    world.register(
        "n2",
        "10.0.0.2",
        proxy("api-v1-sidecar-proxy", "api", 21000, "v1", Vec::new()),
        HealthStatus::Passing,
    );
    world.register(
        "n3",
        "10.0.0.3",
        proxy("api-v2-sidecar-proxy", "api", 21000, "v2", Vec::new()),
        HealthStatus::Passing,
    );

    type Change = (
        &'static str,
        Box<dyn Fn(&mut World)>,
        &'static [&'static str],
    );
    let changes: Vec<Change> = vec![
        (
            "splitter 50/50",
            Box::new(|w| w.entry(splitter(50))),
            &[ROUTE],
        ),
        (
            "a v2 instance goes critical",
            Box::new(|w| {
                w.register(
                    "n3",
                    "10.0.0.3",
                    proxy("api-v2-sidecar-proxy", "api", 21000, "v2", Vec::new()),
                    HealthStatus::Critical,
                )
            }),
            &[ENDPOINT],
        ),
        (
            "an intention denies api",
            Box::new(|w| {
                w.entry(json!({"Kind": "service-intentions", "Name": "web",
                    "Sources": [{"Name": "api", "Action": "deny"}]}))
            }),
            &[LISTENER],
        ),
        (
            "a new source reaches web",
            // web speaks tcp: billing gets a chain of its own on web's public listener.
            Box::new(|w| {
                w.register(
                    "n4",
                    "10.0.0.4",
                    proxy(
                        "billing-sidecar-proxy",
                        "billing",
                        21000,
                        "",
                        vec![upstream("web", 9292)],
                    ),
                    HealthStatus::Passing,
                )
            }),
            &[LISTENER],
        ),
        (
            "the leaf is reissued",
            // By SDS: no cluster or listener embeds it, so none changes.
            Box::new(|w| w.leaf = leaf("2")),
            &[SECRET],
        ),
        (
            "a new root",
            Box::new(|w| w.ca(&["ROOT A", "ROOT B"])),
            &[SECRET],
        ),
        (
            "the api protocol becomes http2",
            Box::new(|w| {
                w.entry(json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http2"}))
            }),
            // The route configuration does not name the protocol.
            &[CLUSTER, LISTENER],
        ),
        ("nothing changes", Box::new(|_| {}), &[]),
    ];

    let shared = Mutex::new(Shared::default());
    let mut snapshot = world.snapshot(&shared);
    let mut generated = resources::generate(&snapshot, None);
    for (what, change, changed_types) in changes {
        change(&mut world);
        let next = world.snapshot(&shared);
        let incremental = resources::generate(&next, Some((&snapshot, &generated)));
        let fresh = resources::generate(&next, None);
        assert_eq!(versions(&incremental), versions(&fresh), "after: {what}");
        assert!(incremental == fresh, "after: {what}");
        // The change shows in exactly the types it should touch: reuse did not hide it.
        let before = versions(&generated);
        let mut touched: Vec<&str> = versions(&fresh)
            .into_iter()
            .filter(|entry| !before.contains(entry))
            .map(|(type_url, _, _)| type_url)
            .collect();
        touched.dedup();
        let mut expected = changed_types.to_vec();
        expected.sort_by_key(|type_url| resources::TYPES.iter().position(|t| t == type_url));
        assert_eq!(touched, expected, "after: {what}");
        snapshot = next;
        generated = incremental;
    }
}

/// A TCP destination's per-source chains: each source's outcome is the first intention
/// naming it or `*`, else the default; its RBAC admits that source alone, or nobody.
#[test]
fn each_source_gets_its_own_outcome_and_only_its_own_principal() {
    use super::rbac;
    use crate::proxycfg::{IntentionRule, Intentions, RuleAction};
    let rule = |source: &str, action: RuleAction| IntentionRule {
        source: source.into(),
        precedence: 0,
        action,
    };
    // Highest precedence first, as proxycfg orders them.
    let intentions = Intentions {
        default_allow: true,
        rules: vec![
            rule("legacy", RuleAction::Deny),
            rule("frontend", RuleAction::Allow),
            rule("*", RuleAction::Deny),
        ],
    };
    assert!(rbac::allows(&intentions, "frontend"));
    assert!(!rbac::allows(&intentions, "legacy"));
    assert!(!rbac::allows(&intentions, "other"), "the wildcard decides");
    let open = Intentions {
        default_allow: true,
        rules: vec![rule("legacy", RuleAction::Deny)],
    };
    assert!(rbac::allows(&open, "other"), "no intention: the default");
    assert!(!rbac::allows(
        &Intentions {
            default_allow: true,
            rules: vec![rule("x", RuleAction::Permissions(Vec::new()))],
        },
        "x"
    ));

    let td = "11111111-2222-3333-4444-555555555555.consul";
    let frontend_rules = rbac::source_rules(&intentions, td, "frontend");
    assert_eq!(frontend_rules.action, 0, "ALLOW");
    assert_eq!(frontend_rules.policies.len(), 1);
    let frontend = format!("{frontend_rules:?}");
    assert!(frontend.contains("svc/frontend$"), "{frontend}");
    assert!(!frontend.contains("legacy"), "{frontend}");
    let legacy = rbac::source_rules(&intentions, td, "legacy");
    assert!(
        legacy.policies.is_empty(),
        "an ALLOW filter with no policy admits nobody"
    );
    assert_eq!(legacy.action, 0, "ALLOW");
    // Another source's change leaves a source's rules as they were.
    let mut changed = intentions.clone();
    changed.rules[0].action = RuleAction::Allow;
    assert_eq!(
        rbac::source_rules(&changed, td, "frontend"),
        rbac::source_rules(&intentions, td, "frontend")
    );
    assert_ne!(
        rbac::source_rules(&changed, td, "legacy"),
        rbac::source_rules(&intentions, td, "legacy")
    );
}
