//! The incremental (delta) xDS protocol state of one stream, without I/O.
//!
//! Per type it keeps what Envoy asked for (wildcard or named subscriptions), what Envoy holds
//! (name → version it ACKed, seeded from `initial_resource_versions` on reconnect), the
//! responses in flight (nonce → what they carried) and what Envoy rejected. A send pass diffs
//! the current resources against that record in Consul's order: clusters and their endpoints
//! together, then (once those are ACKed) listeners, then routes, then cluster and endpoint
//! removals. A rejected resource is not sent again until its content changes, so a NACK
//! cannot become a resend storm.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{
    DeltaDiscoveryRequest, DeltaDiscoveryResponse, Resource,
};

use super::resources::{Resources, CLUSTER, ENDPOINT, LISTENER, ROUTE, TYPES};

/// What an Envoy rejected, for logs, metrics and the proxy's status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection {
    pub type_url: String,
    pub names: Vec<String>,
    pub code: i32,
    pub message: String,
}

#[derive(Default)]
struct TypeState {
    registered: bool,
    wildcard: bool,
    subscriptions: BTreeSet<String>,
    /// name → version Envoy holds; "" means Envoy must be sent the resource again.
    acked: HashMap<String, String>,
    /// nonce → name → version sent (None: removal).
    pending: HashMap<String, BTreeMap<String, Option<String>>>,
    /// name → version Envoy rejected; not resent until the version changes.
    rejected: HashMap<String, String>,
}

impl TypeState {
    fn in_scope(&self, name: &str) -> bool {
        self.wildcard || self.subscriptions.contains(name)
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
            // A reconnect: Envoy says what it holds, so only differences are sent.
            for (name, version) in &request.initial_resource_versions {
                state.acked.insert(name.clone(), version.clone());
                if !state.wildcard {
                    state.subscriptions.insert(name.clone());
                }
            }
        }
        let mut outcome = Received::Send;
        if !request.response_nonce.is_empty() {
            let sent = state.pending.remove(&request.response_nonce);
            match (&request.error_detail, sent) {
                (None, Some(sent)) => {
                    for (name, version) in sent {
                        match version {
                            Some(version) => {
                                state.rejected.remove(&name);
                                state.acked.insert(name, version);
                            }
                            None => {
                                state.acked.remove(&name);
                            }
                        }
                    }
                }
                (Some(status), sent) => {
                    let sent = sent.unwrap_or_default();
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
            }
        }
        Ok(outcome)
    }

    fn blocked(&self, type_url: &str) -> bool {
        let pending = |t: &str| self.types.get(t).is_some_and(|s| !s.pending.is_empty());
        pending(type_url)
            || (matches!(type_url, LISTENER | ROUTE) && (pending(CLUSTER) || pending(ENDPOINT)))
    }

    /// One send pass: the responses to send now, in order.
    pub fn responses(&mut self, resources: &Resources) -> Vec<DeltaDiscoveryResponse> {
        let mut out = Vec::new();
        let steps: [(&'static str, bool, bool); 6] = [
            (CLUSTER, true, false),
            (ENDPOINT, true, false),
            (LISTENER, true, true),
            (ROUTE, true, true),
            (CLUSTER, false, true),
            (ENDPOINT, false, true),
        ];
        for (type_url, upsert, remove) in steps {
            if self.blocked(type_url) {
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
        let mut removed = Vec::new();
        if remove {
            let mut gone: Vec<&String> = state
                .acked
                .keys()
                .filter(|name| !current.contains_key(*name) && state.in_scope(name))
                .collect();
            gone.sort();
            for name in gone {
                removed.push(name.clone());
                sent.insert(name.clone(), None);
            }
        }
        if sent.is_empty() {
            return None;
        }
        self.next_nonce += 1;
        let nonce = format!("{:08x}", self.next_nonce);
        state.pending.insert(nonce.clone(), sent);
        // A resent parent makes Envoy want its children again (envoyproxy/envoy#13009).
        if let Some(child) = child_type(type_url) {
            if let Some(child_state) = self.types.get_mut(child) {
                for name in children {
                    if let Some(version) = child_state.acked.get_mut(&name) {
                        version.clear();
                    }
                }
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
}
