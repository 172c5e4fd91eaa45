//! The incremental (delta) xDS protocol state of one stream, without I/O.
//!
//! Per type it keeps what Envoy asked for (wildcard or named subscriptions), what Envoy holds
//! (name → version it ACKed, seeded from `initial_resource_versions` on reconnect), the
//! responses in flight (nonce → what they carried) and what Envoy rejected. A send pass diffs
//! the current resources against that record in Consul's order: clusters and their endpoints
//! together, then (once those are ACKed) listeners, then routes, then, once listeners and
//! routes are ACKed at their current versions (so nothing refers to them any more), cluster
//! and endpoint removals. A name Envoy asked for that does not exist is answered as removed
//! at once, with the upserts: a cluster warms until its endpoints or such an answer come. A rejected resource is not sent again until its content changes, so
//! a NACK cannot become a resend storm.
//!
//! Envoy replaces a cluster it is sent again, and the replacement waits for endpoints sent
//! after it (envoyproxy/envoy#13009); a listener likewise for its routes. So sending a parent
//! marks its children with the parent's send sequence, and an ACK of a child sent before that
//! does not count as Envoy holding it: the child is sent again. Without this, endpoints in
//! flight when their cluster changed were taken as held, and the new cluster was left to
//! Envoy's 15 s initial fetch timeout, then served with no hosts, indefinitely.
//!
//! `report` describes the stream for operators and tests: what Envoy holds, what is in
//! flight, what it has not subscribed to, and whether the stream has converged.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::resources::{
    Resources, CLUSTER, ENDPOINT, EXTENSION_CONFIG, LISTENER, ROUTE, SECRET, TYPES,
};

/// What an Envoy rejected, for logs, metrics and the proxy's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub type_url: String,
    pub names: Vec<String>,
    pub code: i32,
    pub message: String,
}

/// One response Envoy has not answered yet.
struct Sent {
    /// The stream-wide send sequence number (the nonce is its hex form).
    sequence: u64,
    at: Instant,
    /// name → version sent (None: removal).
    resources: BTreeMap<String, Option<String>>,
}

#[derive(Default)]
struct TypeState {
    registered: bool,
    wildcard: bool,
    subscriptions: BTreeSet<String>,
    /// name → version Envoy holds; "" means Envoy must be sent the resource again.
    acked: HashMap<String, String>,
    /// nonce → what the response carried.
    /// The response in flight: at most one per type, since a type sends again only once
    /// its last response is answered.
    pending: Option<Sent>,
    /// name → version Envoy rejected; not resent until the version changes.
    rejected: HashMap<String, String>,
    /// Child name → sequence number of the latest send of a parent naming it. Envoy holds the
    /// child only once it has ACKed a send of the child made after that.
    /// A BTreeMap, not a HashMap: entries live only while a parent's resend is in flight, and
    /// a HashMap would keep its grown table on thousands of idle streams.
    parent_sent: BTreeMap<String, u64>,
    /// The last ACKed nonce and when it came.
    last_ack: Option<(u64, Instant)>,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.subscriptions.contains(name)
    }

    /// Every resource of `current` in scope is held (or was rejected at this version), no
    /// name Envoy holds is gone, and nothing is in flight.
    fn settled(&self, current: &BTreeMap<String, super::resources::Versioned>) -> bool {
        self.pending.is_none()
            && current.iter().all(|(name, versioned)| {
                !self.in_scope(name)
                    || self.acked.get(name) == Some(&versioned.version)
                    || self.rejected.get(name) == Some(&versioned.version)
            })
            && self
                .acked
                .keys()
                .all(|name| current.contains_key(name) || !self.in_scope(name))
    }
}

/// A stream's protocol state.
#[derive(Default)]
pub struct DeltaStream {
    types: HashMap<&'static str, TypeState>,
    next_nonce: u64,
}

/// What one request means for the stream.
#[derive(Debug, PartialEq, Eq)]
pub enum Received {
    /// Subscriptions or an ACK: run a send pass.
    Send,
    /// A NACK: wait for new resources instead of sending.
    Rejected(Rejection),
}

/// A request the server cannot act on.
#[derive(Debug, PartialEq, Eq)]
pub enum BadRequest {
    EmptyTypeUrl,
    UnknownType(String),
}

fn known_type(type_url: &str) -> Option<&'static str> {
    TYPES.iter().copied().find(|known| *known == type_url)
}

/// The type whose resources are a parent's children.
fn child_type(type_url: &str) -> Option<&'static str> {
    match type_url {
        CLUSTER => Some(ENDPOINT),
        LISTENER => Some(ROUTE),
        _ => None,
    }
}

/// The type whose resources name this type's as children.
fn parent_type(type_url: &str) -> Option<&'static str> {
    match type_url {
        ENDPOINT => Some(CLUSTER),
        ROUTE => Some(LISTENER),
        _ => None,
    }
}

impl DeltaStream {
    pub fn on_request(&mut self, request: &DeltaDiscoveryRequest) -> Result<Received, BadRequest> {
        if request.type_url.is_empty() {
            return Err(BadRequest::EmptyTypeUrl);
        }
        let type_url = known_type(&request.type_url)
            .ok_or_else(|| BadRequest::UnknownType(request.type_url.clone()))?;
        let state = self.types.entry(type_url).or_default();
        if !state.registered {
            state.registered = true;
            state.wildcard = request.resource_names_subscribe.is_empty()
                || request.resource_names_subscribe.iter().any(|n| n == "*");
            // A reconnect: Envoy says what it holds, so only differences are sent. What it
            // held before a parent sent on this stream replaced it does not count.
            for (name, version) in &request.initial_resource_versions {
                let version = if state.parent_sent.contains_key(name) {
                    String::new()
                } else {
                    version.clone()
                };
                state.acked.insert(name.clone(), version);
                if !state.wildcard {
                    state.subscriptions.insert(name.clone());
                }
            }
        }
        let mut outcome = Received::Send;
        if !request.response_nonce.is_empty() {
            // Nonces are the send sequence in hex; anything else was never sent here.
            let answered = u64::from_str_radix(&request.response_nonce, 16).ok();
            let sent = state
                .pending
                .take_if(|sent| Some(sent.sequence) == answered);
            match (&request.error_detail, sent) {
                (None, Some(sent)) => {
                    state.last_ack = Some((sent.sequence, Instant::now()));
                    for (name, version) in sent.resources {
                        // Envoy drops what it is sent for a name it no longer subscribes to.
                        if !state.in_scope(&name) {
                            continue;
                        }
                        match version {
                            Some(version) => {
                                state.rejected.remove(&name);
                                let replaced_since = state
                                    .parent_sent
                                    .get(&name)
                                    .is_some_and(|parent| *parent > sent.sequence);
                                if replaced_since {
                                    // Its parent was sent after it: Envoy needs it again.
                                    state.acked.insert(name, String::new());
                                } else {
                                    state.parent_sent.remove(&name);
                                    if state.parent_sent.is_empty() {
                                        // An emptied BTreeMap keeps its root node; idle
                                        // streams should carry nothing.
                                        state.parent_sent = BTreeMap::new();
                                    }
                                    state.acked.insert(name, version);
                                }
                            }
                            None => {
                                state.acked.remove(&name);
                            }
                        }
                    }
                }
                (Some(status), sent) => {
                    let sent = sent.map(|sent| sent.resources).unwrap_or_default();
                    for (name, version) in &sent {
                        if let Some(version) = version {
                            state.rejected.insert(name.clone(), version.clone());
                        }
                    }
                    outcome = Received::Rejected(Rejection {
                        type_url: type_url.to_string(),
                        names: sent.into_keys().collect(),
                        code: status.code,
                        message: status.message.clone(),
                    });
                }
                // An ACK of a nonce this stream never sent or already settled: nothing to do.
                (None, None) => {}
            }
        }
        for name in &request.resource_names_subscribe {
            if name == "*" {
                state.wildcard = true;
                continue;
            }
            state.subscriptions.insert(name.clone());
            // The protocol requires a subscribed name to be sent even if the server thinks
            // Envoy has it; a version Envoy itself just reported (reconnect) is what it has.
            if !request.initial_resource_versions.contains_key(name) {
                state.acked.insert(name.clone(), String::new());
                state.rejected.remove(name);
            }
        }
        for name in &request.resource_names_unsubscribe {
            if name == "*" {
                state.wildcard = false;
                continue;
            }
            state.subscriptions.remove(name);
            if !state.wildcard {
                state.acked.remove(name);
                state.parent_sent.remove(name);
            }
        }
        Ok(outcome)
    }

    /// Whether Envoy holds any resource of `type_url` (some version of it).
    pub fn holds(&self, type_url: &str) -> bool {
        self.types
            .get(type_url)
            .is_some_and(|state| state.acked.values().any(|version| !version.is_empty()))
    }

    fn pending(&self, type_url: &str) -> bool {
        self.types
            .get(type_url)
            .is_some_and(|s| s.pending.is_some())
    }

    /// Whether a type's listeners or routes are all ACKed at their current versions.
    fn settled(&self, type_url: &str, resources: &Resources) -> bool {
        let empty = BTreeMap::new();
        self.types.get(type_url).is_none_or(|state| {
            !state.registered || state.settled(resources.of(type_url).unwrap_or(&empty))
        })
    }

    /// Whether a step must wait for responses in flight (or, for cluster and endpoint
    /// removals, for listeners and routes to stop referring to what is removed).
    fn blocked(&self, type_url: &str, upsert: bool, resources: &Resources) -> bool {
        if self.pending(type_url) {
            return true;
        }
        match (type_url, upsert) {
            (LISTENER | ROUTE | EXTENSION_CONFIG, _) => {
                self.pending(CLUSTER) || self.pending(ENDPOINT)
            }
            (CLUSTER | ENDPOINT, false) => {
                !self.settled(LISTENER, resources)
                    || !self.settled(ROUTE, resources)
                    || (type_url == ENDPOINT && self.pending(CLUSTER))
            }
            _ => false,
        }
    }

    /// One send pass: the responses to send now, in order.
    pub fn responses(&mut self, resources: &Resources) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        // Secrets first: clusters and listeners warm until the secrets they name arrive.
        let steps: [(&'static str, bool, bool); 8] = [
            (SECRET, true, true),
            (CLUSTER, true, false),
            (ENDPOINT, true, false),
            (LISTENER, true, true),
            (ROUTE, true, true),
            (EXTENSION_CONFIG, true, true),
            (CLUSTER, false, true),
            (ENDPOINT, false, true),
        ];
        for (type_url, upsert, remove) in steps {
            if self.blocked(type_url, upsert, resources) {
                continue;
            }
            if let Some(response) = self.diff(type_url, resources, upsert, remove) {
                out.push(response);
            }
        }
        out
    }

    fn diff(
        &mut self,
        type_url: &'static str,
        resources: &Resources,
        upsert: bool,
        remove: bool,
    ) -> Option<DeltaDiscoveryResponse> {
        let empty = BTreeMap::new();
        let current = resources.of(type_url).unwrap_or(&empty);
        let state = self.types.get_mut(type_url)?;
        if !state.registered {
            return None;
        }
        let mut sent = BTreeMap::new();
        let mut upserts = Vec::new();
        let mut children = Vec::new();
        if upsert {
            for (name, versioned) in current {
                if !state.in_scope(name)
                    || state.acked.get(name) == Some(&versioned.version)
                    || state.rejected.get(name) == Some(&versioned.version)
                {
                    continue;
                }
                upserts.push(Resource {
                    name: name.clone(),
                    version: versioned.version.clone(),
                    resource: Some(versioned.resource.clone()),
                    ..Default::default()
                });
                sent.insert(name.clone(), Some(versioned.version.clone()));
                children.extend(versioned.children.iter().cloned());
            }
        }
        // Names Envoy asked for (or must be sent again) that do not exist are answered as
        // removed with the upserts, at once: Envoy waits for them (a cluster warms until its
        // endpoints come, or a removal). Names Envoy holds that are gone are removals proper,
        // sent in the removal steps, after whatever refers to them has moved on.
        let mut removed = Vec::new();
        let mut gone: Vec<&String> = state
            .acked
            .iter()
            .filter(|(name, version)| {
                !current.contains_key(*name)
                    && state.in_scope(name)
                    && if version.is_empty() { upsert } else { remove }
            })
            .map(|(name, _)| name)
            .collect();
        gone.sort();
        for name in gone {
            removed.push(name.clone());
            sent.insert(name.clone(), None);
        }
        if sent.is_empty() {
            return None;
        }
        self.next_nonce += 1;
        let sequence = self.next_nonce;
        let nonce = format!("{sequence:08x}");
        state.pending = Some(Sent {
            sequence,
            at: Instant::now(),
            resources: sent,
        });
        // A resent parent makes Envoy want its children again (envoyproxy/envoy#13009). The
        // child type may not be registered yet (a reconnecting Envoy asks for clusters
        // first); the mark then keeps the versions it will report from counting.
        if let Some(child) = child_type(type_url) {
            let child_state = self.types.entry(child).or_default();
            for name in children {
                if let Some(version) = child_state.acked.get_mut(&name) {
                    version.clear();
                }
                child_state.parent_sent.insert(name, sequence);
            }
        }
        Some(DeltaDiscoveryResponse {
            type_url: type_url.to_string(),
            resources: upserts,
            removed_resources: removed,
            nonce,
            ..Default::default()
        })
    }

    /// What the stream believes about each type, against the current `resources`.
    pub fn report(&self, resources: &Resources) -> Vec<TypeReport> {
        let empty = BTreeMap::new();
        let now = Instant::now();
        TYPES
            .iter()
            .filter_map(|type_url| {
                let state = self.types.get(type_url).filter(|s| s.registered)?;
                let current = resources.of(type_url).unwrap_or(&empty);
                let pending_nonce = state
                    .pending
                    .as_ref()
                    .map(|sent| format!("{:08x}", sent.sequence));
                let in_flight: HashMap<&str, &str> = state
                    .pending
                    .iter()
                    .zip(pending_nonce.iter())
                    .flat_map(|(sent, nonce)| {
                        sent.resources
                            .keys()
                            .map(move |name| (name.as_str(), nonce.as_str()))
                    })
                    .collect();
                // A child is needed when Envoy holds (or is being sent) a parent naming it.
                let needed: BTreeSet<&str> = parent_type(type_url)
                    .and_then(|parent| {
                        let parent_state = self.types.get(parent)?;
                        Some(
                            resources
                                .of(parent)
                                .into_iter()
                                .flatten()
                                .filter(|(name, _)| parent_state.acked.contains_key(*name))
                                .flat_map(|(_, versioned)| {
                                    versioned.children.iter().map(String::as_str)
                                })
                                .collect(),
                        )
                    })
                    .unwrap_or_default();
                let mut names: BTreeSet<&str> = current.keys().map(String::as_str).collect();
                names.extend(state.acked.keys().map(String::as_str));
                names.extend(in_flight.keys().copied());
                let resources = names
                    .into_iter()
                    .map(|name| {
                        let version = current.get(name).map(|v| v.version.clone());
                        let acked = state.acked.get(name).cloned();
                        let nonce = in_flight.get(name).map(|nonce| nonce.to_string());
                        let condition = match (&version, &acked, &nonce) {
                            (_, _, Some(_)) => Condition::Sending,
                            (Some(version), _, None)
                                if state.rejected.get(name) == Some(version) =>
                            {
                                Condition::Rejected
                            }
                            (Some(_), _, None) if !state.in_scope(name) => {
                                if needed.contains(name) {
                                    Condition::Unsubscribed
                                } else {
                                    Condition::Unused
                                }
                            }
                            (Some(version), Some(acked), None) if acked == version => {
                                Condition::Held
                            }
                            (Some(_), _, None) => Condition::Outdated,
                            (None, _, None) => Condition::Leftover,
                        };
                        ResourceReport {
                            name: name.to_string(),
                            version,
                            acked: acked.filter(|acked| !acked.is_empty()),
                            nonce,
                            condition,
                        }
                    })
                    .collect();
                let pending: Vec<PendingReport> = state
                    .pending
                    .iter()
                    .zip(pending_nonce.iter())
                    .map(|(sent, nonce)| PendingReport {
                        nonce: nonce.clone(),
                        age: now.saturating_duration_since(sent.at),
                        names: sent.resources.keys().cloned().collect(),
                    })
                    .collect();
                Some(TypeReport {
                    type_url,
                    wildcard: state.wildcard,
                    last_ack: state.last_ack.map(|(sequence, at)| {
                        (format!("{sequence:08x}"), now.saturating_duration_since(at))
                    }),
                    resources,
                    pending,
                })
            })
            .collect()
    }
}

/// Where one resource stands between the server and Envoy.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Condition {
    /// Envoy ACKed the current version.
    Held,
    /// In a response Envoy has not answered yet.
    Sending,
    /// Envoy rejected the current version; it is not resent until it changes.
    Rejected,
    /// A resource a held cluster or listener needs, which Envoy has not subscribed to.
    Unsubscribed,
    /// Not subscribed, and nothing Envoy holds needs it (a child of a parent in transit).
    Unused,
    /// Envoy holds another version (or must be sent it again) and nothing is in flight: the
    /// next send pass sends it.
    Outdated,
    /// Envoy holds a name that no longer exists and no removal is in flight.
    Leftover,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Held => "held",
            Condition::Sending => "sending",
            Condition::Rejected => "rejected",
            Condition::Unsubscribed => "unsubscribed",
            Condition::Unused => "unused",
            Condition::Outdated => "outdated",
            Condition::Leftover => "leftover",
        }
    }

    /// Whether a quiet stream may rest in this condition.
    pub fn settled(self) -> bool {
        matches!(self, Condition::Held | Condition::Unused)
    }
}

/// One resource of a `TypeReport`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceReport {
    pub name: String,
    /// The current version; None when the resource no longer exists.
    pub version: Option<String>,
    /// The version Envoy holds, as far as the stream knows.
    pub acked: Option<String>,
    /// The response carrying it, while one is in flight.
    pub nonce: Option<String>,
    pub condition: Condition,
}

/// A response Envoy has not answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingReport {
    pub nonce: String,
    pub age: Duration,
    pub names: Vec<String>,
}

/// One type's state on a stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TypeReport {
    pub type_url: &'static str,
    pub wildcard: bool,
    /// The last ACKed nonce, and how long ago it came.
    pub last_ack: Option<(String, Duration)>,
    pub resources: Vec<ResourceReport>,
    pub pending: Vec<PendingReport>,
}

impl TypeReport {
    /// A version for everything Envoy holds of this type: a hash of the held names and
    /// versions, so two reports (or a report and Envoy's own dump) compare in one value.
    pub fn acked_version(&self) -> String {
        let hash = self
            .resources
            .iter()
            .filter_map(|r| Some((r.name.as_str(), r.acked.as_deref()?)))
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, (name, version)| {
                format!("{name}={version};")
                    .bytes()
                    .fold(hash, |hash, byte| {
                        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                    })
            });
        format!("{hash:016x}")
    }
}

/// Whether every type of a stream's report has settled.
pub fn converged(report: &[TypeReport]) -> bool {
    report
        .iter()
        .all(|t| t.pending.is_empty() && t.resources.iter().all(|r| r.condition.settled()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use envoy_types::pb::google::rpc::Status;

    fn request(type_url: &str, subscribe: &[&str], nonce: &str) -> DeltaDiscoveryRequest {
        DeltaDiscoveryRequest {
            type_url: type_url.into(),
            resource_names_subscribe: subscribe.iter().map(|s| s.to_string()).collect(),
            response_nonce: nonce.into(),
            ..Default::default()
        }
    }

    fn resources(version: &str) -> Resources {
        let mut resources = Resources::default();
        for (type_url, name, children) in [
            (CLUSTER, "api", vec!["api".to_string()]),
            (ENDPOINT, "api", vec![]),
            (LISTENER, "api:127.0.0.1:9191", vec!["api".to_string()]),
            (ROUTE, "api", vec![]),
        ] {
            resources.by_type.entry(type_url).or_default().insert(
                name.into(),
                super::super::resources::Versioned {
                    version: version.into(),
                    resource: Default::default(),
                    children,
                },
            );
        }
        resources
    }

    fn names(response: &DeltaDiscoveryResponse) -> Vec<&str> {
        response.resources.iter().map(|r| r.name.as_str()).collect()
    }

    #[test]
    fn follows_envoys_initial_sequence_and_waits_for_cluster_acks_before_listeners() {
        let mut stream = DeltaStream::default();
        let v1 = resources("1");
        stream.on_request(&request(CLUSTER, &[], "")).unwrap();
        let out = stream.responses(&v1);
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].type_url, CLUSTER);
        let cds_nonce = out[0].nonce.clone();
        // Envoy subscribes EDS before it ACKs CDS; LDS is not sent while CDS is in flight.
        stream.on_request(&request(ENDPOINT, &["api"], "")).unwrap();
        stream.on_request(&request(LISTENER, &[], "")).unwrap();
        let out = stream.responses(&v1);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [ENDPOINT]
        );
        let eds_nonce = out[0].nonce.clone();
        stream
            .on_request(&request(CLUSTER, &[], &cds_nonce))
            .unwrap();
        assert!(stream.responses(&v1).is_empty(), "EDS still in flight");
        stream
            .on_request(&request(ENDPOINT, &[], &eds_nonce))
            .unwrap();
        let out = stream.responses(&v1);
        assert_eq!(out[0].type_url, LISTENER);
        assert_eq!(names(&out[0]), ["api:127.0.0.1:9191"]);
        // Nothing changes: nothing more is sent once everything is ACKed.
        stream
            .on_request(&request(LISTENER, &[], &out[0].nonce))
            .unwrap();
        stream.on_request(&request(ROUTE, &["api"], "")).unwrap();
        let out = stream.responses(&v1);
        assert_eq!(out[0].type_url, ROUTE);
        stream
            .on_request(&request(ROUTE, &[], &out[0].nonce))
            .unwrap();
        assert!(stream.responses(&v1).is_empty());
    }

    #[test]
    fn a_nack_is_not_resent_until_the_content_changes() {
        let mut stream = DeltaStream::default();
        stream.on_request(&request(CLUSTER, &[], "")).unwrap();
        let nonce = stream.responses(&resources("1"))[0].nonce.clone();
        let mut nack = request(CLUSTER, &[], &nonce);
        nack.error_detail = Some(Status {
            code: 13,
            message: "bad cluster".into(),
            details: vec![],
        });
        let outcome = stream.on_request(&nack).unwrap();
        assert!(
            matches!(outcome, Received::Rejected(ref r) if r.message == "bad cluster" && r.names == ["api"])
        );
        assert!(stream.responses(&resources("1")).is_empty());
        assert_eq!(names(&stream.responses(&resources("2"))[0]), ["api"]);
    }

    #[test]
    fn reconnect_versions_suppress_resends_and_removed_names_are_announced() {
        let mut stream = DeltaStream::default();
        let mut first = request(CLUSTER, &[], "");
        first.initial_resource_versions = [
            ("api".to_string(), "1".to_string()),
            ("old".to_string(), "1".to_string()),
        ]
        .into();
        stream.on_request(&first).unwrap();
        let out = stream.responses(&resources("1"));
        assert_eq!(out.len(), 1);
        assert!(
            out[0].resources.is_empty(),
            "api is held at the same version"
        );
        assert_eq!(out[0].removed_resources, ["old"]);
    }

    #[test]
    fn a_reconnect_subscribing_names_it_holds_is_sent_nothing() {
        let mut stream = DeltaStream::default();
        let mut first = request(ENDPOINT, &["api"], "");
        first.initial_resource_versions = [("api".to_string(), "1".to_string())].into();
        stream.on_request(&first).unwrap();
        assert!(stream.responses(&resources("1")).is_empty());
        assert_eq!(names(&stream.responses(&resources("2"))[0]), ["api"]);
    }

    #[test]
    fn a_subscribed_name_that_does_not_exist_is_answered_as_removed() {
        let mut stream = DeltaStream::default();
        stream
            .on_request(&request(ENDPOINT, &["missing"], ""))
            .unwrap();
        let out = stream.responses(&resources("1"));
        assert_eq!(out[0].removed_resources, ["missing"]);
        assert!(out[0].resources.is_empty());
    }

    #[test]
    fn bad_type_urls_are_refused() {
        let mut stream = DeltaStream::default();
        assert_eq!(
            stream.on_request(&request("", &[], "")),
            Err(BadRequest::EmptyTypeUrl)
        );
        assert!(matches!(
            stream.on_request(&request("type.googleapis.com/nope", &[], "")),
            Err(BadRequest::UnknownType(_))
        ));
    }

    #[test]
    fn an_ack_of_endpoints_sent_before_their_cluster_was_resent_does_not_count() {
        // Envoy replaces a cluster it is sent again and needs its endpoints again; an ACK of
        // endpoints sent before that cluster must not count as holding them.
        let mut stream = DeltaStream::default();
        stream.on_request(&request(CLUSTER, &[], "")).unwrap();
        let cds = stream.responses(&resources("1"))[0].nonce.clone();
        stream.on_request(&request(ENDPOINT, &["api"], "")).unwrap();
        let eds = stream.responses(&resources("1"))[0].nonce.clone();
        stream.on_request(&request(CLUSTER, &[], &cds)).unwrap();
        stream.on_request(&request(ENDPOINT, &[], &eds)).unwrap();
        // New endpoints go out; before Envoy ACKs them, the cluster changes too.
        let mut endpoints_changed = resources("1");
        endpoints_changed
            .by_type
            .get_mut(ENDPOINT)
            .unwrap()
            .get_mut("api")
            .unwrap()
            .version = "2".into();
        let out = stream.responses(&endpoints_changed);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [ENDPOINT]
        );
        let eds = out[0].nonce.clone();
        let both_changed = resources("2");
        let out = stream.responses(&both_changed);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [CLUSTER]
        );
        // The endpoints' ACK arrives: they were sent before the cluster, so they go again.
        stream.on_request(&request(ENDPOINT, &[], &eds)).unwrap();
        let out = stream.responses(&both_changed);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [ENDPOINT]
        );
        assert_eq!(names(&out[0]), ["api"]);
    }

    #[test]
    fn a_reconnect_resends_the_endpoints_of_a_cluster_changed_before_it_asked_for_them() {
        // Envoy reconnects holding cluster and endpoints at version 1. It asks for clusters
        // first: the changed cluster goes out before Envoy reports its endpoints, which must
        // then be sent again although Envoy reports holding their current version.
        let mut stream = DeltaStream::default();
        let mut clusters = request(CLUSTER, &[], "");
        clusters.initial_resource_versions = [("api".to_string(), "1".to_string())].into();
        stream.on_request(&clusters).unwrap();
        let mut changed = resources("1");
        changed
            .by_type
            .get_mut(CLUSTER)
            .unwrap()
            .get_mut("api")
            .unwrap()
            .version = "2".into();
        let out = stream.responses(&changed);
        assert_eq!(names(&out[0]), ["api"]);
        let mut endpoints = request(ENDPOINT, &["api"], "");
        endpoints.initial_resource_versions = [("api".to_string(), "1".to_string())].into();
        stream.on_request(&endpoints).unwrap();
        let out = stream.responses(&changed);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [ENDPOINT]
        );
        assert_eq!(names(&out[0]), ["api"]);
    }

    #[test]
    fn removals_wait_until_listeners_stop_using_what_is_removed() {
        let mut stream = DeltaStream::default();
        let mut v1 = resources("1");
        v1.by_type.remove(ROUTE);
        for type_url in [CLUSTER, LISTENER] {
            stream.on_request(&request(type_url, &[], "")).unwrap();
        }
        stream.on_request(&request(ENDPOINT, &["api"], "")).unwrap();
        let settle = |stream: &mut DeltaStream, resources: &Resources| {
            for _ in 0..4 {
                for response in stream.responses(resources) {
                    stream
                        .on_request(&request(&response.type_url, &[], &response.nonce))
                        .unwrap();
                }
            }
        };
        settle(&mut stream, &v1);
        // The upstream moves to a new cluster: the old one and its endpoints go only after
        // the listener pointing at the new one is ACKed.
        let mut moved = Resources::default();
        for (type_url, name) in [
            (CLUSTER, "new"),
            (ENDPOINT, "new"),
            (LISTENER, "api:127.0.0.1:9191"),
        ] {
            moved.by_type.entry(type_url).or_default().insert(
                name.into(),
                super::super::resources::Versioned {
                    version: "2".into(),
                    resource: Default::default(),
                    children: if type_url == CLUSTER {
                        vec!["new".into()]
                    } else {
                        vec![]
                    },
                },
            );
        }
        let out = stream.responses(&moved);
        assert_eq!(out.len(), 1);
        assert_eq!(
            (out[0].type_url.as_str(), names(&out[0])),
            (CLUSTER, vec!["new"])
        );
        assert!(
            out[0].removed_resources.is_empty(),
            "nothing removed with the upsert"
        );
        stream.on_request(&request(ENDPOINT, &["new"], "")).unwrap();
        stream
            .on_request(&request(CLUSTER, &[], &out[0].nonce))
            .unwrap();
        let out = stream.responses(&moved);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [ENDPOINT],
            "endpoints first; the listener waits for them, removals for the listener"
        );
        stream
            .on_request(&request(ENDPOINT, &[], &out[0].nonce))
            .unwrap();
        let out = stream.responses(&moved);
        assert_eq!(
            out.iter().map(|r| r.type_url.as_str()).collect::<Vec<_>>(),
            [LISTENER]
        );
        stream
            .on_request(&request(LISTENER, &[], &out[0].nonce))
            .unwrap();
        let out = stream.responses(&moved);
        assert_eq!(
            out.iter()
                .map(|r| (r.type_url.as_str(), r.removed_resources.clone()))
                .collect::<Vec<_>>(),
            [(CLUSTER, vec!["api".to_string()])],
            "the cluster removal; endpoints wait for it"
        );
        stream
            .on_request(&request(CLUSTER, &[], &out[0].nonce))
            .unwrap();
        let out = stream.responses(&moved);
        assert_eq!(
            out.iter()
                .map(|r| (r.type_url.as_str(), r.removed_resources.clone()))
                .collect::<Vec<_>>(),
            [(ENDPOINT, vec!["api".to_string()])]
        );
    }
}
