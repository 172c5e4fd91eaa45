//! Incremental generation: resources generated from the previous snapshot and its resources
//! must equal resources generated from nothing, through every kind of change a proxy sees.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::json;

use super::resources::{self, Resources, CLUSTER, ENDPOINT, LISTENER, ROUTE};
use crate::agent::leaf::IssuedCert;
use crate::connect::entry;
use crate::connect::intention::DefaultPolicy;
use crate::proxycfg::{self, Shared, Snapshot};
use crate::state::{Store, Tables};
use crate::types::connect::{CaConfig, CaRoot, CaState, ServiceProxy, Upstream};
use crate::types::{
    Check, Command, HealthStatus, Node, RaftIndexes, RegisterRequest, Service, Weights,
};

struct World {
    store: Store,
    index: u64,
    leaf: IssuedCert,
}

impl World {
    fn apply(&mut self, command: Command) {
        self.index += 1;
        self.store.apply_batch([(self.index, Some(&command))]);
    }

    fn entry(&mut self, value: serde_json::Value) {
        let serde_json::Value::Object(map) = value else {
            panic!("entries are objects")
        };
        let entry = entry::decode(map).expect("valid entry");
        self.apply(Command::ConfigEntrySet {
            entry: Box::new(entry),
            cas: None,
        });
    }

    fn register(&mut self, node: &str, address: &str, service: Service, status: HealthStatus) {
        let check = Check {
            node: node.into(),
            check_id: format!("{}-check", service.id),
            name: "check".into(),
            status,
            notes: String::new(),
            output: String::new(),
            service_id: service.id.clone(),
            service_name: String::new(),
            service_tags: Vec::new(),
            check_type: "ttl".into(),
            interval: String::new(),
            timeout: String::new(),
            indexes: RaftIndexes::default(),
        };
        self.apply(Command::CatalogRegister(Box::new(RegisterRequest {
            node: Node {
                id: String::new(),
                name: node.into(),
                address: address.into(),
                datacenter: "dc1".into(),
                tagged_addresses: BTreeMap::new(),
                meta: BTreeMap::new(),
                indexes: RaftIndexes::default(),
            },
            skip_node_update: false,
            service: Some(service),
            checks: vec![check],
        })));
    }

    fn ca(&mut self, roots: &[&str]) {
        let roots = roots
            .iter()
            .enumerate()
            .map(|(n, pem)| CaRoot {
                id: format!("root-{n}"),
                name: format!("root {n}"),
                serial: n.to_string(),
                cert_pem: pem.to_string(),
                key_pem: String::new(),
                intermediate_certs: Vec::new(),
                not_before_unix: n as i64,
                not_after_unix: i64::MAX,
                active: n + 1 == roots.len(),
                key_type: "ec".into(),
                key_bits: 256,
                rotated_out_unix: 0,
                indexes: RaftIndexes::default(),
            })
            .collect();
        let expected_index = self.store.snapshot().ca().map_or(0, |ca| ca.indexes.modify);
        self.apply(Command::CaSet {
            state: Box::new(CaState {
                cluster_id: "11111111-2222-3333-4444-555555555555".into(),
                config: CaConfig::default(),
                roots,
                indexes: RaftIndexes::default(),
            }),
            expected_index,
        });
    }

    fn snapshot(&self, shared: &Mutex<Shared>) -> Snapshot {
        let tables: Arc<Tables> = self.store.snapshot();
        let context = proxycfg::Context {
            node: "n1",
            datacenter: "dc1",
            default_policy: DefaultPolicy::Configured { allow: true },
        };
        proxycfg::compute(
            &tables,
            &context,
            shared,
            "web-sidecar-proxy",
            Some(&self.leaf),
        )
        .expect("snapshot")
    }
}

fn proxy(
    id: &str,
    destination: &str,
    port: u16,
    version: &str,
    upstreams: Vec<Upstream>,
) -> Service {
    Service {
        id: id.into(),
        name: format!("{destination}-sidecar-proxy"),
        kind: "connect-proxy".into(),
        port,
        meta: [("version".to_string(), version.to_string())].into(),
        weights: Weights::default(),
        proxy: Some(ServiceProxy {
            destination_service_name: destination.into(),
            local_service_port: 8080,
            upstreams,
            ..ServiceProxy::default()
        }),
        ..Service::default()
    }
}

fn splitter(v1: u32) -> serde_json::Value {
    json!({"Kind": "service-splitter", "Name": "api", "Splits": [
        {"Weight": v1, "ServiceSubset": "v1"},
        {"Weight": 100 - v1, "ServiceSubset": "v2"},
    ]})
}

fn leaf(serial: &str) -> IssuedCert {
    IssuedCert {
        serial: serial.into(),
        cert_pem: format!("LEAF {serial}"),
        private_key_pem: format!("KEY {serial}"),
        service: "web".into(),
        service_uri: String::new(),
        valid_after: SystemTime::UNIX_EPOCH,
        valid_before: SystemTime::UNIX_EPOCH,
        root_id: "root-0".into(),
        index: 1,
    }
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
    let mut world = World {
        store: Store::new(),
        index: 0,
        leaf: leaf("1"),
    };
    world.ca(&["ROOT A"]);
    world.entry(json!({"Kind": "service-defaults", "Name": "api", "Protocol": "http"}));
    world.entry(
        json!({"Kind": "service-resolver", "Name": "api", "Subsets": {
            "v1": {"Filter": "Service.Meta.version == v1"},
            "v2": {"Filter": "Service.Meta.version == v2"},
        }}),
    );
    world.entry(splitter(80));
    let upstream = Upstream {
        destination_type: "service".into(),
        destination_name: "api".into(),
        local_bind_port: 9191,
        ..Upstream::default()
    };
    world.register(
        "n1",
        "10.0.0.1",
        proxy("web-sidecar-proxy", "web", 21000, "", vec![upstream]),
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
            "the leaf is reissued",
            Box::new(|w| w.leaf = leaf("2")),
            &[CLUSTER, LISTENER],
        ),
        (
            "a new root",
            Box::new(|w| w.ca(&["ROOT A", "ROOT B"])),
            &[CLUSTER, LISTENER],
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
