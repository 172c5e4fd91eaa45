//! Golden files of generated Envoy resources, as Consul's xDS tests do them: a world of config
//! entries, intentions and catalog registrations becomes the `web` sidecar's proxycfg snapshot,
//! the snapshot becomes resources (no Envoy process), and their text (`render`) must equal
//! `testdata/<case>.golden`. `UPDATE_GOLDEN=1` rewrites the files; read the diff before
//! committing it. Each file opens with what its case sets up and what to look for.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use super::render::{self, Placeholders};
use super::resources::generate;
use crate::proxycfg::{RuleAction, Shared, Snapshot};
use crate::testing::{proxy, upstream, World};
use crate::types::{HealthStatus, Weights};

fn protocol(world: &mut World, service: &str, protocol: &str) {
    world.entry(json!({"Kind": "service-defaults", "Name": service, "Protocol": protocol}));
}

fn intentions(world: &mut World, destination: &str, sources: Value) {
    world.entry(json!({"Kind": "service-intentions", "Name": destination, "Sources": sources}));
}

/// api's resolver with subsets v1 and v2 chosen by `Meta.version`, plus `extra` fields.
fn api_resolver(world: &mut World, extra: Value) {
    let mut resolver = json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
        "v1": {"Filter": "Service.Meta.version == v1"},
        "v2": {"Filter": "Service.Meta.version == v2"},
    }});
    for (key, value) in extra.as_object().expect("an object") {
        resolver[key] = value.clone();
    }
    world.entry(resolver);
}

/// The world's certificates and keys, each named for its role.
fn placeholders(world: &World) -> Placeholders {
    let mut pairs = vec![
        (
            world.leaf.cert_pem.clone(),
            "<leaf certificate>".to_string(),
        ),
        (
            world.leaf.private_key_pem.clone(),
            "<leaf private key>".to_string(),
        ),
    ];
    let tables = world.tables();
    for (n, root) in tables
        .ca()
        .map(|ca| ca.roots.as_slice())
        .unwrap_or_default()
        .iter()
        .enumerate()
    {
        pairs.push((root.cert_pem.clone(), format!("<root certificate {n}>")));
    }
    Placeholders::new(pairs)
}

fn render_world(world: &World) -> (Snapshot, String) {
    // A fresh memo, so nothing is shared with an earlier rendering.
    let snapshot = world.snapshot(&Mutex::new(Shared::default()));
    let text = render::resources(&generate(&snapshot, None), &placeholders(world));
    (snapshot, text)
}

fn golden_path(case: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("src/xds/testdata")
        .join(format!("{case}.golden"))
}

/// Compares the world's resources with `testdata/<case>.golden` (rewriting it under
/// `UPDATE_GOLDEN=1`). `about` opens the file: what the case sets up and what to check.
fn check(case: &str, about: &str, world: &World) {
    let (_, text) = render_world(world);
    // Generating again builds every protobuf map afresh, with new random hash keys: any
    // `HashMap` order leaking into the text shows up here.
    let (_, again) = render_world(world);
    assert_eq!(text, again, "{case}: rendering is not deterministic");
    let mut golden = String::new();
    for line in about.trim().lines() {
        golden.push_str(&format!("# {}\n", line.trim()).replace("# \n", "#\n"));
    }
    golden.push('\n');
    golden.push_str(&text);
    let path = golden_path(case);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().expect("testdata dir")).expect("create testdata");
        std::fs::write(&path, &golden).expect("write golden");
    }
    let expected = std::fs::read_to_string(&path)
        .unwrap_or_else(|error| panic!("{}: {error}; run with UPDATE_GOLDEN=1", path.display()));
    if expected != golden {
        let line = expected
            .lines()
            .zip(golden.lines())
            .position(|(want, got)| want != got)
            .unwrap_or_else(|| expected.lines().count().min(golden.lines().count()));
        panic!(
            "{case}: generated resources differ from {} from line {}:\n  golden: {:?}\n  now:    {:?}\nrerun with UPDATE_GOLDEN=1 if the change is intended, and read the diff",
            path.display(),
            line + 1,
            expected.lines().nth(line).unwrap_or("<end of file>"),
            golden.lines().nth(line).unwrap_or("<end of file>"),
        );
    }
}

#[test]
fn rbac_with_l7_permissions() {
    let mut world = World::web(Vec::new());
    world.default_allow = false;
    protocol(&mut world, "web", "http");
    intentions(
        &mut world,
        "web",
        json!([
            {"Name": "admin", "Action": "allow"},
            {"Name": "api", "Permissions": [
                {"Action": "deny", "HTTP": {"Header": [{"Name": "x-client", "Contains": "curl"}]}},
                {"Action": "deny", "HTTP": {"PathExact": "/v1/admin"}},
                {"Action": "allow", "HTTP": {"PathPrefix": "/v1/", "Methods": ["GET", "HEAD"]}},
                {"Action": "allow", "HTTP": {"PathRegex": "/reports/[0-9]+", "Header": [
                    {"Name": "x-team", "Exact": "billing"},
                    {"Name": "x-env", "Prefix": "prod"},
                    {"Name": "x-region", "Suffix": "-eu"},
                    {"Name": "x-trace", "Regex": "[a-f0-9]{16}"},
                    {"Name": "x-debug", "Present": true, "Invert": true},
                    {"Name": "x-user-agent", "Contains": "Bot", "IgnoreCase": true},
                ]}},
            ]},
            {"Name": "*", "Action": "deny"},
        ]),
    );
    check(
        "rbac_l7_permissions",
        "web speaks http; default deny. Intentions on web: admin allow (L4), api with four
        permissions (deny a header containing curl, deny exact /v1/admin, allow prefix /v1/ for
        GET|HEAD, allow regex /reports/[0-9]+ with exact, prefix, suffix, regex, inverted
        present and case-insensitive contains header matches), * deny.
        Look for: the public listener's HTTP connection manager runs the HTTP RBAC filter before
        the router; action ALLOW (the opposite of the default); consul-intentions-layer4 lists
        admin; consul-intentions-layer7-0 is api's, with its two allow permissions each ANDed
        with NOT both earlier denies (the Contains deny as a Contains matcher, never an empty
        regex that would let curl through); * deny equals the default and is left out.",
        &world,
    );
}

#[test]
fn rbac_with_a_deny_intention() {
    let mut world = World::web(Vec::new());
    intentions(
        &mut world,
        "web",
        json!([
            {"Name": "api", "Action": "deny"},
            {"Name": "billing", "Action": "allow"},
        ]),
    );
    // api's and billing's sidecars have web as an upstream: each gets its own chain.
    for (source, port) in [("api", 21001), ("billing", 21002)] {
        world.register(
            "node-2",
            "10.0.0.2",
            proxy(
                &format!("{source}-sidecar-proxy"),
                source,
                port,
                "",
                vec![upstream("web", 9000)],
            ),
            HealthStatus::Passing,
        );
    }
    check(
        "rbac_deny_intention",
        "web speaks tcp; default allow. Intentions on web: api deny, billing allow; api's and
        billing's sidecars have web as an upstream.
        Look for: the network RBAC filter (stat prefix connect_authz) before tcp_proxy to
        local_app; on the unmatched chain, action DENY (the opposite of the default) with one
        policy whose only principal is api's SPIFFE ID; billing's allow equals the default and
        is left out. A tls_inspector, then one chain per source matched on its ALPN
        (concord-source:api, concord-source:billing), each an ALLOW filter: api's with no
        policy (nobody), billing's admitting billing's SPIFFE ID alone.",
        &world,
    );
}

#[test]
fn rbac_with_wildcards_under_default_allow() {
    let mut world = World::web(Vec::new());
    intentions(
        &mut world,
        "web",
        json!([
            {"Name": "*", "Action": "deny"},
            {"Name": "frontend", "Action": "allow"},
            {"Name": "legacy", "Action": "deny"},
        ]),
    );
    intentions(
        &mut world,
        "*",
        json!([
            {"Name": "metrics", "Action": "deny"},
            {"Name": "*", "Action": "allow"},
        ]),
    );
    check(
        "rbac_wildcards_default_allow",
        "web speaks tcp; default allow. On web: * deny (precedence 8), frontend allow and legacy
        deny (9). On *: metrics deny (6), * allow (5).
        Look for: action DENY; principals in precedence order: legacy, then * AND NOT legacy
        AND NOT frontend (the exact sources above it carved out), then metrics; frontend's
        allow equals the default and is left out; the *-on-* allow is shadowed by the * on web
        (one rule per source) and is left out.",
        &world,
    );
}

#[test]
fn rbac_with_wildcards_under_default_deny() {
    let mut world = World::web(Vec::new());
    world.default_allow = false;
    intentions(
        &mut world,
        "web",
        json!([
            {"Name": "*", "Action": "allow"},
            {"Name": "untrusted", "Action": "deny"},
        ]),
    );
    intentions(
        &mut world,
        "*",
        json!([{"Name": "auditor", "Action": "allow"}]),
    );
    check(
        "rbac_wildcards_default_deny",
        "web speaks tcp; default deny. On web: * allow (8), untrusted deny (9). On *: auditor
        allow (6).
        Look for: action ALLOW; principals * AND NOT untrusted, then auditor; untrusted's deny
        equals the default and is left out.",
        &world,
    );
}

/// `web` with one upstream to `api` on 127.0.0.1:9191.
fn api_upstream_world() -> World {
    World::web(vec![upstream("api", 9191)])
}

#[test]
fn chain_default_tcp() {
    let mut world = api_upstream_world();
    let weights = |passing, warning| Weights { passing, warning };
    world.instance_weighted("n2", "api", "", HealthStatus::Passing, weights(5, 1));
    world.instance_weighted("n3", "api", "", HealthStatus::Warning, weights(5, 2));
    world.instance("n4", "api", "", HealthStatus::Critical);
    check(
        "chain_default_tcp",
        "api has no config entries (tcp, default chain). Instances: n2 passing (weights 5/1),
        n3 warning (weights 5/2), n4 critical.
        Look for: listener api:127.0.0.1:9191 with tcp_proxy to the cluster
        api.default.dc1.internal.<trust domain>; the cluster is EDS with a 5s connect timeout
        and upstream TLS checking api's SPIFFE ID; endpoints 10.0.0.2 weight 5 and 10.0.0.3
        weight 2 (Weights.Warning); n4 absent.",
        &world,
    );
}

#[test]
fn chain_default_http() {
    let mut world = api_upstream_world();
    protocol(&mut world, "api", "http");
    world.instance("n2", "api", "", HealthStatus::Passing);
    check(
        "chain_default_http",
        "api speaks http and has no other entries: a default chain.
        Look for: the upstream listener's HTTP connection manager carries an inline route
        configuration (no RDS, no route resource) sending / to api's cluster.",
        &world,
    );
}

#[test]
fn chain_resolver_with_subsets_and_default_subset() {
    let mut world = api_upstream_world();
    protocol(&mut world, "api", "http");
    api_resolver(
        &mut world,
        json!({"DefaultSubset": "v2", "RequestTimeout": "10s"}),
    );
    world.instance("n2", "api", "v1", HealthStatus::Passing);
    world.instance("n3", "api", "v2", HealthStatus::Passing);
    check(
        "chain_resolver_subsets",
        "api speaks http; its resolver has subsets v1 and v2 (by Meta.version), DefaultSubset
        v2 and RequestTimeout 10s. One v1 instance (n2), one v2 instance (n3).
        Look for: only the v2 target is reached: cluster v2.api.default.dc1.internal.<trust
        domain> with only n3's endpoint; the listener uses RDS named api; route api sends / to
        the v2 cluster with a 10s timeout and validate_clusters set.",
        &world,
    );
}

#[test]
fn chain_splitter() {
    let mut world = api_upstream_world();
    protocol(&mut world, "api", "http2");
    protocol(&mut world, "api-next", "http2");
    api_resolver(&mut world, json!({}));
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 33.33, "ServiceSubset": "v1"},
            {"Weight": 33.33, "ServiceSubset": "v2"},
            {"Weight": 33.34, "Service": "api-next"},
        ]}),
    );
    world.instance("n2", "api", "v1", HealthStatus::Passing);
    world.instance("n3", "api", "v2", HealthStatus::Passing);
    world.instance("n5", "api-next", "", HealthStatus::Passing);
    check(
        "chain_splitter",
        "api speaks http2; its splitter sends 33.33% to subset v1, 33.33% to v2 and 33.34% to
        the service api-next.
        Look for: three clusters with HTTP/2 upstream protocol options, each with its own
        endpoint; route api with weighted clusters 3333, 3333 and 3334 (1/10000 units, summing
        to 10000); the upstream listener's connection manager has HTTP/2 options.",
        &world,
    );
}

#[test]
fn chain_router() {
    let mut world = api_upstream_world();
    protocol(&mut world, "api", "http");
    api_resolver(&mut world, json!({}));
    world.entry(json!({"Kind": "service-router", "Name": "api", "Routes": [
        {
            "Match": {"HTTP": {"PathPrefix": "/v2/", "Header": [{"Name": "x-canary", "Exact": "true"}]}},
            "Destination": {
                "ServiceSubset": "v2",
                "PrefixRewrite": "/",
                "RequestTimeout": "3s",
                "NumRetries": 3,
                "RetryOnConnectFailure": true,
                "RetryOnStatusCodes": [503, 504],
                "RetryOn": ["gateway-error", "reset"],
            },
        },
        {
            "Match": {"HTTP": {"PathExact": "/healthz", "Methods": ["GET"]}},
            "Destination": {"ServiceSubset": "v1", "IdleTimeout": "30s"},
        },
        {
            "Match": {"HTTP": {
                "PathRegex": "/users/[0-9]+",
                "Header": [
                    {"Name": "x-debug", "Present": true},
                    {"Name": "x-env", "Regex": "stag.*", "Invert": true},
                    {"Name": "x-team", "Exact": "Payments", "IgnoreCase": true},
                    {"Name": "x-agent", "Contains": "mobile"},
                ],
                "QueryParam": [
                    {"Name": "version", "Exact": "2"},
                    {"Name": "trace", "Present": true},
                    {"Name": "page", "Regex": "[0-9]+"},
                ],
            }},
            "Destination": {"Service": "api"},
        },
    ]}));
    world.instance("n2", "api", "v1", HealthStatus::Passing);
    world.instance("n3", "api", "v2", HealthStatus::Passing);
    check(
        "chain_router",
        "api speaks http; its router has three routes: prefix /v2/ with header x-canary exact
        true to subset v2 (prefix rewrite /, request timeout 3s, 3 retries on connect failure
        and 503/504); exact /healthz for GET to subset v1 (idle timeout 30s); regex
        /users/[0-9]+ with header present, inverted header regex and exact, present and regex
        query parameters to api itself.
        Look for: route api holds four routes in that order, the last Consul's catch-all
        prefix / to api; retry_on connect-failure,retriable-status-codes with num_retries 3;
        clusters for v1, v2 and api without a subset.",
        &world,
    );
}

#[test]
fn chain_redirect() {
    let mut world = api_upstream_world();
    world.entry(json!({"Kind": "service-resolver", "Name": "api",
        "Redirect": {"Service": "api-v2"}}));
    world.instance("n2", "api", "", HealthStatus::Passing);
    world.instance("n6", "api-v2", "", HealthStatus::Passing);
    check(
        "chain_redirect",
        "api (tcp) redirects to the service api-v2.
        Look for: the listener keeps api's name and stat prefix, and its tcp_proxy goes to
        api-v2's cluster; the only cluster is api-v2.default.dc1.internal.<trust domain>, its
        upstream TLS checks api-v2's SPIFFE ID, and its endpoint is n6's, not n2's.",
        &world,
    );
}

#[test]
fn chain_connect_timeout_overrides() {
    let mut db = upstream("db", 9292);
    db.config_json = json!({"connect_timeout_ms": 2500}).to_string();
    let mut world = World::web(vec![upstream("api", 9191), db]);
    for service in ["api", "db"] {
        world.entry(json!({"Kind": "service-resolver", "Name": service,
            "ConnectTimeout": "15s"}));
    }
    world.instance("n2", "api", "", HealthStatus::Passing);
    world.instance("n7", "db", "", HealthStatus::Passing);
    check(
        "chain_connect_timeout",
        "api and db (tcp) each have a resolver with ConnectTimeout 15s; web's upstream to db
        also sets connect_timeout_ms 2500 in its config.
        Look for: api's cluster connects with a 15s timeout, db's with 2.5s (the upstream's
        override beats the resolver).",
        &world,
    );
}

/// Every kind of change to a snapshot shows in the text: a golden file that cannot fail is
/// worth nothing. Certificates are placeholders, so a certificate change shows only as a
/// different placeholder in a place.
#[test]
fn every_snapshot_change_changes_the_text() {
    let mut world = api_upstream_world();
    // Under default deny the L7 allow below is kept (under default allow it would equal the
    // default and print nothing).
    world.default_allow = false;
    protocol(&mut world, "web", "http");
    protocol(&mut world, "api", "http");
    api_resolver(&mut world, json!({}));
    world.entry(
        json!({"Kind": "service-splitter", "Name": "api", "Splits": [
            {"Weight": 80, "ServiceSubset": "v1"},
            {"Weight": 20, "ServiceSubset": "v2"},
        ]}),
    );
    intentions(
        &mut world,
        "web",
        json!([{"Name": "api", "Permissions": [
            {"Action": "allow", "HTTP": {"PathPrefix": "/v1/"}},
        ]}]),
    );
    world.instance("n2", "api", "v1", HealthStatus::Passing);
    world.instance("n3", "api", "v2", HealthStatus::Passing);
    let (base, text) = render_world(&world);
    let placeholders = placeholders(&world);
    let text_of = |snapshot: &Snapshot| render::resources(&generate(snapshot, None), &placeholders);
    assert_eq!(text_of(&base), text);

    type Change = (&'static str, fn(&mut Snapshot));
    let changes: [Change; 14] = [
        ("default policy", |s| {
            s.intentions.default_allow = !s.intentions.default_allow
        }),
        ("intention source", |s| {
            s.intentions.rules[0].source = "billing".into()
        }),
        ("L7 permission path", |s| {
            if let RuleAction::Permissions(permissions) = &mut s.intentions.rules[0].action {
                permissions[0].path_prefix = "/v2/".into();
            }
        }),
        ("L7 permission becomes L4", |s| {
            s.intentions.rules[0].action = RuleAction::Deny
        }),
        ("public port", |s| s.public.port += 1),
        ("local app port", |s| s.public.local_port += 1),
        ("local connect timeout", |s| {
            s.public.local_connect_timeout_ms += 1
        }),
        ("public protocol", |s| s.public.protocol = "http2".into()),
        ("upstream bind port", |s| s.upstreams[0].bind_port += 1),
        ("endpoint weight", |s| {
            let endpoints = s.upstreams[0].endpoints.values_mut().next().unwrap();
            Arc::make_mut(endpoints)[0].weight += 1;
        }),
        ("split weight", |s| {
            let chain = Arc::make_mut(&mut s.upstreams[0].chain);
            let splitter = chain
                .nodes
                .values_mut()
                .find(|n| n.splits.is_some())
                .unwrap();
            let splits = splitter.splits.as_mut().unwrap();
            splits[0].weight = 70.0;
            splits[1].weight = 30.0;
        }),
        ("target connect timeout", |s| {
            let chain = Arc::make_mut(&mut s.upstreams[0].chain);
            let target = chain.targets.values_mut().next().unwrap();
            target.connect_timeout += std::time::Duration::from_millis(1);
        }),
        ("leaf key and certificate swapped", |s| {
            let leaf = &mut s.leaf;
            std::mem::swap(&mut leaf.cert_pem, &mut leaf.private_key_pem);
        }),
        ("trust domain", |s| s.trust_domain = "other.consul".into()),
    ];
    for (what, change) in changes {
        let mut changed = base.clone();
        change(&mut changed);
        assert_ne!(
            changed, base,
            "{what}: the change did not change the snapshot"
        );
        assert_ne!(text_of(&changed), text, "{what}: the text did not change");
    }
}
