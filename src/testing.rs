//! Test support shared by unit tests: a registration command for the storage-format tests, and
//! for the connect, proxycfg and xds tests a `World` that applies Raft
//! commands (config entries, catalog registrations, the CA's state) to a real `state::Store` in
//! log order, as the FSM does, and computes a sidecar's proxycfg snapshot from the result, as
//! the agent's watcher does. Everything is synchronous and fixed (ids, addresses, ports,
//! certificates), so what a test derives from a world is the same on every run.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use serde_json::Value;

use crate::agent::leaf::IssuedCert;
use crate::connect::entry;
use crate::connect::intention::DefaultPolicy;
use crate::proxycfg::{self, NotReady, Shared, Snapshot};
use crate::state::{Store, Tables};
use crate::types::connect::{CaConfig, CaRoot, CaState, ServiceProxy, Upstream};
use crate::types::{
    Check, Command, CommandResult, HealthStatus, Node, RaftIndexes, RegisterRequest, Service,
    Weights,
};

/// The CA's cluster id; the trust domain is `<cluster id>.consul`.
pub const CLUSTER_ID: &str = "11111111-2222-3333-4444-555555555555";

/// The node the agent (and the sidecar under test) runs on.
pub const AGENT_NODE: &str = "n1";

/// The sidecar most tests compute a snapshot for.
pub const WEB_PROXY: &str = "web-sidecar-proxy";

pub struct World {
    pub store: Store,
    index: u64,
    /// The leaf certificate the agent holds for the proxy's service.
    pub leaf: IssuedCert,
    /// The intention default (`default_intention_policy` / the ACL default).
    pub default_allow: bool,
}

impl Default for World {
    fn default() -> Self {
        World::new()
    }
}

impl World {
    /// An empty store, a leaf certificate ready, intentions defaulting to allow.
    pub fn new() -> World {
        World {
            store: Store::new(),
            index: 0,
            leaf: leaf("1"),
            default_allow: true,
        }
    }

    /// A world with the CA set up and `web`'s sidecar (`web-sidecar-proxy`, port 21000, local
    /// app on 8080) registered on the agent's node with `upstreams`.
    pub fn web(upstreams: Vec<Upstream>) -> World {
        let mut world = World::new();
        world.ca(&[&pem("CERTIFICATE", "ROOT A")]);
        world.register(
            AGENT_NODE,
            "10.0.0.1",
            proxy(WEB_PROXY, "web", 21000, "", upstreams),
            HealthStatus::Passing,
        );
        world
    }

    /// Applies `command` at the next log index.
    pub fn apply(&mut self, command: Command) -> CommandResult {
        self.index += 1;
        self.store
            .apply_batch([(self.index, Some(&command))])
            .remove(0)
    }

    /// Writes a config entry given as canonical JSON; panics if it is invalid on its own. The
    /// rules across entries (`connect::graph`) are not checked, as in the FSM, so a test can
    /// build a state that a write through the API would refuse.
    pub fn entry(&mut self, value: Value) {
        let Value::Object(map) = value else {
            panic!("entries are objects")
        };
        let entry = entry::decode(map).expect("valid entry");
        self.apply(Command::ConfigEntrySet {
            entry: Box::new(entry),
            cas: None,
        });
    }

    /// Registers `service` on `node` with one service check in `status`.
    pub fn register(&mut self, node: &str, address: &str, service: Service, status: HealthStatus) {
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
                locality: None,
            },
            skip_node_update: false,
            service: Some(service),
            checks: vec![check],
        })));
    }

    /// Registers a sidecar of `service` (port 21000, `Meta.version` = `version`) on `node`,
    /// which is addressed 10.0.0.<n> when named `n<n>`.
    pub fn instance(&mut self, node: &str, service: &str, version: &str, status: HealthStatus) {
        self.instance_weighted(node, service, version, status, Weights::default());
    }

    /// As `instance`, with `Weights`.
    pub fn instance_weighted(
        &mut self,
        node: &str,
        service: &str,
        version: &str,
        status: HealthStatus,
        weights: Weights,
    ) {
        let address = format!("10.0.0.{}", node.trim_start_matches('n'));
        let id = format!("{service}-{node}-sidecar-proxy");
        let sidecar = Service {
            weights,
            ..proxy(&id, service, 21000, version, Vec::new())
        };
        self.register(node, &address, sidecar, status);
    }

    /// Sets the CA's roots (PEM texts, the last one active).
    pub fn ca(&mut self, roots: &[&str]) {
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
                cluster_id: CLUSTER_ID.into(),
                config: CaConfig::default(),
                roots,
                indexes: RaftIndexes::default(),
            }),
            expected_index,
        });
    }

    pub fn tables(&self) -> Arc<Tables> {
        self.store.snapshot()
    }

    /// Computes the snapshot of `proxy_id` on the agent's node, as the watcher does.
    pub fn compute(&self, shared: &Mutex<Shared>, proxy_id: &str) -> Result<Snapshot, NotReady> {
        let context = proxycfg::Context {
            node: AGENT_NODE,
            datacenter: "dc1",
            default_policy: DefaultPolicy::Configured {
                allow: self.default_allow,
            },
        };
        proxycfg::compute(&self.tables(), &context, shared, proxy_id, Some(&self.leaf))
    }

    /// The snapshot of `web-sidecar-proxy`; panics if it cannot be made.
    pub fn snapshot(&self, shared: &Mutex<Shared>) -> Snapshot {
        self.compute(shared, WEB_PROXY).expect("snapshot")
    }
}

/// A connect proxy for `destination`, with `Meta.version` set to `version`.
pub fn proxy(
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

/// An upstream to `service` bound on loopback at `port`.
pub fn upstream(service: &str, port: u16) -> Upstream {
    Upstream {
        destination_type: "service".into(),
        destination_name: service.into(),
        local_bind_port: port,
        ..Upstream::default()
    }
}

/// A PEM-shaped stand-in for a certificate or key: tests need stable text, not real crypto.
pub fn pem(label: &str, body: &str) -> String {
    format!("-----BEGIN {label}-----\n{body}\n-----END {label}-----\n")
}

/// The leaf certificate the agent holds for `web`, distinguished by `serial`.
pub fn leaf(serial: &str) -> IssuedCert {
    IssuedCert {
        serial: serial.into(),
        cert_pem: pem("CERTIFICATE", &format!("LEAF {serial}")),
        private_key_pem: pem("EC PRIVATE KEY", &format!("KEY {serial}")),
        service: "web".into(),
        service_uri: String::new(),
        valid_after: SystemTime::UNIX_EPOCH,
        valid_before: SystemTime::UNIX_EPOCH,
        root_id: "root-0".into(),
        index: 1,
    }
}

/// Registers node `n1` with service `web-1`, both at `locality`: a command touching every
/// field the storage shapes differ in.
pub fn registration(locality: Option<crate::types::Locality>) -> Command {
    Command::CatalogRegister(Box::new(RegisterRequest {
        node: Node {
            name: "n1".into(),
            address: "10.0.0.1".into(),
            locality: locality.clone(),
            ..Node::default()
        },
        skip_node_update: false,
        service: Some(Service {
            id: "web-1".into(),
            name: "web".into(),
            port: 80,
            locality,
            ..Service::default()
        }),
        checks: Vec::new(),
    }))
}
