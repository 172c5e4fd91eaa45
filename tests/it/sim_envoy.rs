//! A simulated Envoy: a delta-ADS client that takes resources the way Envoy 1.40 does, for
//! convergence tests that need more streams and more interleavings than real Envoys allow.
//!
//! What it copies from Envoy (each seen with a real one, see `xds-envoy.md` §3.4):
//! - it asks for clusters (wildcard) first, and for listeners once its first clusters are in;
//! - a cluster it is sent (new or changed) warms until a load assignment sent after it
//!   arrives, and the cluster response is ACKed only once every cluster in it has warmed;
//! - it subscribes to a new EDS cluster's endpoints after taking the cluster, and unsubscribes
//!   when the cluster goes; a changed cluster does not subscribe again (the name is already
//!   watched), which is why the server must resend its endpoints (envoyproxy/envoy#13009);
//! - listeners that use RDS subscribe to their route configuration, and the listener response
//!   is ACKed once those routes are in; a route no listener uses any more is unsubscribed;
//! - a removal of endpoints or routes is taken as "gone", and ends the warming of what waited
//!   for them;
//! - responses are taken after a random delay, so ACKs lag and the server queues;
//! - on reconnect it reports what it holds in `initial_resource_versions`.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::Node;
use envoy_types::pb::envoy::config::listener::v3::{filter, Listener};
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, HttpConnectionManager,
};
use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_client::AggregatedDiscoveryServiceClient;
use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse,
};
use prost::Message;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::mpsc;
use tonic::transport::Channel;

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";

/// What the simulated Envoy holds: name → version per type, and what it still waits for.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Held {
    pub clusters: BTreeMap<String, String>,
    pub endpoints: BTreeMap<String, String>,
    pub listeners: BTreeMap<String, String>,
    pub routes: BTreeMap<String, String>,
    /// Clusters sent (new or changed) that have not had endpoints since.
    pub warming: BTreeSet<String>,
    /// Route configurations listeners use that have not arrived.
    pub awaiting_routes: BTreeSet<String>,
    /// Responses taken but not yet ACKed (waiting for warming).
    pub unacked: usize,
    /// Whether it has a stream open.
    pub connected: bool,
    /// Every NACK-worthy thing it saw (a response it could not decode).
    pub errors: Vec<String>,
    /// The last exchanges, for failure messages.
    pub recent: std::collections::VecDeque<String>,
}

impl Held {
    /// The resources it holds, comparable with another client's.
    pub fn resources(&self) -> [&BTreeMap<String, String>; 4] {
        [
            &self.clusters,
            &self.endpoints,
            &self.listeners,
            &self.routes,
        ]
    }

    pub fn idle(&self) -> bool {
        self.connected
            && self.warming.is_empty()
            && self.awaiting_routes.is_empty()
            && self.unacked == 0
    }
}

/// A running simulated Envoy; the task stops when this is dropped.
pub struct SimEnvoy {
    pub proxy: String,
    held: Arc<Mutex<Held>>,
    reconnect: mpsc::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for SimEnvoy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl SimEnvoy {
    pub fn start(channel: Channel, proxy: &str, seed: u64) -> SimEnvoy {
        let held = Arc::new(Mutex::new(Held::default()));
        let (reconnect, reconnects) = mpsc::channel(4);
        let client = Client {
            proxy: proxy.to_string(),
            channel,
            rng: StdRng::seed_from_u64(seed),
            held: held.clone(),
            eds_subscribed: BTreeSet::new(),
            rds_subscribed: BTreeSet::new(),
            cds_ack: None,
            lds_ack: None,
            eds_dynamic: BTreeSet::new(),
            listener_routes: BTreeMap::new(),
            listeners_requested: false,
        };
        SimEnvoy {
            proxy: proxy.to_string(),
            held,
            reconnect,
            task: tokio::spawn(client.run(reconnects)),
        }
    }

    pub fn held(&self) -> Held {
        self.held.lock().unwrap().clone()
    }

    /// Drops the stream and opens a new one, reporting what it holds.
    pub async fn reconnect(&self) {
        let _ = self.reconnect.send(()).await;
    }
}

struct Client {
    proxy: String,
    channel: Channel,
    rng: StdRng,
    held: Arc<Mutex<Held>>,
    eds_subscribed: BTreeSet<String>,
    rds_subscribed: BTreeSet<String>,
    /// The CDS nonce to ACK once its clusters have warmed.
    cds_ack: Option<String>,
    /// The LDS nonce to ACK once its listeners' routes are in.
    lds_ack: Option<String>,
    /// Clusters that take their endpoints over EDS.
    eds_dynamic: BTreeSet<String>,
    /// Listener → the RDS route configuration it uses.
    listener_routes: BTreeMap<String, String>,
    /// Whether it has asked for listeners on the current stream.
    listeners_requested: bool,
}

fn request(type_url: &str) -> DeltaDiscoveryRequest {
    DeltaDiscoveryRequest {
        type_url: type_url.into(),
        ..Default::default()
    }
}

impl Client {
    fn node(&self) -> Option<Node> {
        Some(Node {
            id: self.proxy.clone(),
            ..Default::default()
        })
    }

    async fn run(mut self, mut reconnects: mpsc::Receiver<()>) {
        loop {
            let (requests, receiver) = mpsc::unbounded_channel();
            let outbound = futures::stream::unfold(receiver, |mut receiver| async move {
                receiver.recv().await.map(|request| (request, receiver))
            });
            // The first request: clusters, with whatever it already holds (a reconnect).
            let held = self.held.lock().unwrap().clone();
            let mut first = request(CLUSTER);
            first.node = self.node();
            first.initial_resource_versions = held.clusters.clone().into_iter().collect();
            requests.send(first).unwrap();
            self.listeners_requested = !held.listeners.is_empty();
            if self.listeners_requested {
                let mut listeners = request(LISTENER);
                listeners.initial_resource_versions = held.listeners.clone().into_iter().collect();
                requests.send(listeners).unwrap();
            }
            for (type_url, subscribed, versions) in [
                (ENDPOINT, &self.eds_subscribed, &held.endpoints),
                (ROUTE, &self.rds_subscribed, &held.routes),
            ] {
                if !subscribed.is_empty() {
                    let mut again = request(type_url);
                    again.resource_names_subscribe = subscribed.iter().cloned().collect();
                    again.initial_resource_versions = versions
                        .iter()
                        .filter(|(name, _)| subscribed.contains(*name))
                        .map(|(n, v)| (n.clone(), v.clone()))
                        .collect();
                    requests.send(again).unwrap();
                }
            }
            // A reconnect forgets what was in flight: Envoy ACKs nothing from the old stream.
            self.cds_ack = None;
            self.lds_ack = None;
            {
                let mut held = self.held.lock().unwrap();
                held.unacked = 0;
                held.warming.clear();
                held.awaiting_routes.clear();
            }
            let mut client = AggregatedDiscoveryServiceClient::new(self.channel.clone());
            let mut responses = match client.delta_aggregated_resources(outbound).await {
                Ok(response) => response.into_inner(),
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            self.held.lock().unwrap().connected = true;
            loop {
                tokio::select! {
                    message = responses.message() => {
                        let Ok(Some(response)) = message else { break };
                        // Take responses after a random delay, so ACKs lag behind.
                        if self.rng.gen_bool(0.5) {
                            let lag = self.rng.gen_range(0..15);
                            tokio::time::sleep(Duration::from_millis(lag)).await;
                        }
                        for request in self.take(response) {
                            let _ = requests.send(request);
                        }
                    }
                    Some(()) = reconnects.recv() => break,
                }
            }
            self.held.lock().unwrap().connected = false;
        }
    }

    /// Envoy asks for listeners once its first clusters are in.
    fn first_clusters_in(&mut self, out: &mut Vec<DeltaDiscoveryRequest>) {
        if !self.listeners_requested {
            self.listeners_requested = true;
            out.push(request(LISTENER));
        }
    }

    /// Takes one response as Envoy would and returns the requests it makes in answer.
    fn take(&mut self, response: DeltaDiscoveryResponse) -> Vec<DeltaDiscoveryRequest> {
        let out = self.take_inner(&response);
        let mut held = self.held.lock().unwrap();
        let short = |t: &str| t.rsplit('.').next().unwrap_or_default().to_string();
        let mut line = format!(
            "<- {} {} +{:?} -{:?} |",
            short(&response.type_url),
            response.nonce,
            response
                .resources
                .iter()
                .map(|r| r.name.split('.').next().unwrap_or_default().to_string())
                .collect::<Vec<_>>(),
            response
                .removed_resources
                .iter()
                .map(|n| n.split('.').next().unwrap_or_default().to_string())
                .collect::<Vec<_>>(),
        );
        for request in &out {
            line.push_str(&format!(
                " -> {} ack={} +{:?} -{:?};",
                short(&request.type_url),
                request.response_nonce,
                request
                    .resource_names_subscribe
                    .iter()
                    .map(|n| n.split('.').next().unwrap_or_default().to_string())
                    .collect::<Vec<_>>(),
                request
                    .resource_names_unsubscribe
                    .iter()
                    .map(|n| n.split('.').next().unwrap_or_default().to_string())
                    .collect::<Vec<_>>(),
            ));
        }
        held.recent.push_back(line);
        if held.recent.len() > 40 {
            held.recent.pop_front();
        }
        out
    }

    fn take_inner(&mut self, response: &DeltaDiscoveryResponse) -> Vec<DeltaDiscoveryRequest> {
        let mut out = Vec::new();
        let shared = self.held.clone();
        let mut held = shared.lock().unwrap();
        let ack = |type_url: &str, nonce: &str| DeltaDiscoveryRequest {
            type_url: type_url.into(),
            response_nonce: nonce.into(),
            ..Default::default()
        };
        match response.type_url.as_str() {
            CLUSTER => {
                let mut subscribe = Vec::new();
                let mut unsubscribe = Vec::new();
                for resource in &response.resources {
                    let Some(any) = &resource.resource else {
                        continue;
                    };
                    let Ok(cluster) = Cluster::decode(any.value.as_slice()) else {
                        held.errors
                            .push(format!("undecodable cluster {}", resource.name));
                        continue;
                    };
                    let eds = matches!(
                        cluster.cluster_discovery_type,
                        Some(cluster::ClusterDiscoveryType::Type(t))
                            if t == cluster::DiscoveryType::Eds as i32
                    );
                    held.clusters
                        .insert(resource.name.clone(), resource.version.clone());
                    if eds {
                        self.eds_dynamic.insert(resource.name.clone());
                        held.warming.insert(resource.name.clone());
                        if self.eds_subscribed.insert(resource.name.clone()) {
                            subscribe.push(resource.name.clone());
                        }
                    } else {
                        self.eds_dynamic.remove(&resource.name);
                    }
                }
                for name in &response.removed_resources {
                    held.clusters.remove(name);
                    held.warming.remove(name);
                    self.eds_dynamic.remove(name);
                    if self.eds_subscribed.remove(name) {
                        held.endpoints.remove(name);
                        unsubscribe.push(name.clone());
                    }
                }
                if !subscribe.is_empty() || !unsubscribe.is_empty() {
                    let mut eds = request(ENDPOINT);
                    eds.resource_names_subscribe = subscribe;
                    eds.resource_names_unsubscribe = unsubscribe;
                    out.push(eds);
                }
                if held.warming.is_empty() {
                    out.push(ack(CLUSTER, &response.nonce));
                    self.first_clusters_in(&mut out);
                } else {
                    held.unacked += 1;
                    self.cds_ack = Some(response.nonce.clone());
                }
            }
            ENDPOINT => {
                for resource in &response.resources {
                    if self.eds_subscribed.contains(&resource.name) {
                        held.endpoints
                            .insert(resource.name.clone(), resource.version.clone());
                        held.warming.remove(&resource.name);
                    }
                }
                // Envoy takes a removal as "no endpoints", which completes warming too.
                for name in &response.removed_resources {
                    held.endpoints.remove(name);
                    held.warming.remove(name);
                }
                out.push(ack(ENDPOINT, &response.nonce));
                if held.warming.is_empty() {
                    if let Some(nonce) = self.cds_ack.take() {
                        held.unacked -= 1;
                        out.push(ack(CLUSTER, &nonce));
                        self.first_clusters_in(&mut out);
                    }
                }
            }
            LISTENER => {
                for resource in &response.resources {
                    let Some(any) = &resource.resource else {
                        continue;
                    };
                    let Ok(listener) = Listener::decode(any.value.as_slice()) else {
                        held.errors
                            .push(format!("undecodable listener {}", resource.name));
                        continue;
                    };
                    held.listeners
                        .insert(resource.name.clone(), resource.version.clone());
                    match rds_name(&listener) {
                        Some(route) => {
                            if !held.routes.contains_key(&route) {
                                held.awaiting_routes.insert(route.clone());
                            }
                            self.listener_routes.insert(resource.name.clone(), route);
                        }
                        None => {
                            self.listener_routes.remove(&resource.name);
                        }
                    }
                }
                for name in &response.removed_resources {
                    held.listeners.remove(name);
                    self.listener_routes.remove(name);
                }
                let used: BTreeSet<String> = self.listener_routes.values().cloned().collect();
                let subscribe: Vec<String> = used
                    .iter()
                    .filter(|route| self.rds_subscribed.insert((*route).clone()))
                    .cloned()
                    .collect();
                let unsubscribe: Vec<String> = self
                    .rds_subscribed
                    .iter()
                    .filter(|route| !used.contains(*route))
                    .cloned()
                    .collect();
                for route in &unsubscribe {
                    self.rds_subscribed.remove(route);
                    held.routes.remove(route);
                    held.awaiting_routes.remove(route);
                }
                if !subscribe.is_empty() || !unsubscribe.is_empty() {
                    let mut rds = request(ROUTE);
                    rds.resource_names_subscribe = subscribe;
                    rds.resource_names_unsubscribe = unsubscribe;
                    out.push(rds);
                }
                if held.awaiting_routes.is_empty() {
                    out.push(ack(LISTENER, &response.nonce));
                } else {
                    held.unacked += 1;
                    self.lds_ack = Some(response.nonce.clone());
                }
            }
            ROUTE => {
                for resource in &response.resources {
                    if self.rds_subscribed.contains(&resource.name) {
                        held.routes
                            .insert(resource.name.clone(), resource.version.clone());
                        held.awaiting_routes.remove(&resource.name);
                    }
                }
                for name in &response.removed_resources {
                    held.routes.remove(name);
                    held.awaiting_routes.remove(name);
                }
                out.push(ack(ROUTE, &response.nonce));
                if held.awaiting_routes.is_empty() {
                    if let Some(nonce) = self.lds_ack.take() {
                        held.unacked -= 1;
                        out.push(ack(LISTENER, &nonce));
                    }
                }
            }
            other => held.errors.push(format!("unexpected type {other}")),
        }
        out
    }
}

/// The RDS route configuration a listener's HTTP connection manager uses, if any.
fn rds_name(listener: &Listener) -> Option<String> {
    listener
        .filter_chains
        .iter()
        .flat_map(|chain| &chain.filters)
        .find_map(|filter| {
            let filter::ConfigType::TypedConfig(any) = filter.config_type.as_ref()? else {
                return None;
            };
            if !any.type_url.ends_with(".HttpConnectionManager") {
                return None;
            }
            let manager = HttpConnectionManager::decode(any.value.as_slice()).ok()?;
            match manager.route_specifier? {
                http_connection_manager::RouteSpecifier::Rds(rds) => Some(rds.route_config_name),
                _ => None,
            }
        })
}
