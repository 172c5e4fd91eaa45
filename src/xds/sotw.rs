//! State-of-the-world ADS for xDS clients that do not speak delta (Consul's own bootstrap
//! uses delta; this is for other clients). Each response carries every resource of its type
//! the client asked for (all of them for clusters and listeners), under a version that is a
//! hash of the member versions. A type is answered when it is first requested, when the
//! requested names change, and when its version changes; a NACKed version is not resent.

use std::collections::{BTreeSet, HashMap};

use envoy_types::pb::envoy::service::discovery::v3::{DiscoveryRequest, DiscoveryResponse};

use super::delta::{
    BadRequest, Condition, PendingReport, Received, Rejection, ResourceReport, TypeReport,
};
use super::resources::{Resources, Versioned, CLUSTER, LISTENER, TYPES};

#[derive(Default)]
struct TypeState {
    names: BTreeSet<String>,
    /// The version sent last and its nonce; whether the client must be answered again.
    sent_version: String,
    nonce: String,
    rejected_version: String,
    /// The version the client last ACKed.
    acked_version: String,
    must_answer: bool,
}

impl TypeState {
    /// The resources the client gets of this type, and their version.
    fn members<'r>(
        &self,
        type_url: &str,
        resources: &'r Resources,
    ) -> (Vec<(&'r String, &'r Versioned)>, String) {
        let wildcard = matches!(type_url, CLUSTER | LISTENER) || self.names.is_empty();
        let members: Vec<_> = resources
            .of(type_url)
            .into_iter()
            .flatten()
            .filter(|(name, _)| wildcard || self.names.contains(*name))
            .collect();
        let version = members
            .iter()
            .fold(0xcbf2_9ce4_8422_2325_u64, |hash, (name, versioned)| {
                format!("{name}={};", versioned.version)
                    .bytes()
                    .fold(hash, |hash, byte| {
                        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
                    })
            });
        (members, format!("{version:016x}"))
    }
}

#[derive(Default)]
pub struct SotwStream {
    types: HashMap<&'static str, TypeState>,
    next_nonce: u64,
}

impl SotwStream {
    pub fn on_request(&mut self, request: &DiscoveryRequest) -> Result<Received, BadRequest> {
        if request.type_url.is_empty() {
            return Err(BadRequest::EmptyTypeUrl);
        }
        let type_url = TYPES
            .iter()
            .copied()
            .find(|known| *known == request.type_url)
            .ok_or_else(|| BadRequest::UnknownType(request.type_url.clone()))?;
        let first = !self.types.contains_key(type_url);
        let state = self.types.entry(type_url).or_default();
        let names: BTreeSet<String> = request.resource_names.iter().cloned().collect();
        if let Some(status) = &request.error_detail {
            if request.response_nonce == state.nonce {
                state.rejected_version = state.sent_version.clone();
                return Ok(Received::Rejected(Rejection {
                    type_url: type_url.to_string(),
                    names: names.into_iter().collect(),
                    code: status.code,
                    message: status.message.clone(),
                }));
            }
        }
        // A request with the current nonce (an ACK or a change of names) or without one (a
        // new subscription) is answered if something changed; a stale nonce is ignored.
        let stale = !request.response_nonce.is_empty() && request.response_nonce != state.nonce;
        if !stale && !request.response_nonce.is_empty() && request.error_detail.is_none() {
            state.acked_version = state.sent_version.clone();
        }
        if first || (!stale && names != state.names) {
            state.must_answer = true;
        }
        if !stale {
            state.names = names;
        }
        Ok(Received::Send)
    }

    pub fn responses(&mut self, resources: &Resources) -> Vec<DiscoveryResponse> {
        let mut out = Vec::new();
        for type_url in TYPES {
            let Some(state) = self.types.get_mut(type_url) else {
                continue;
            };
            let (members, version) = state.members(type_url, resources);
            if (!state.must_answer && version == state.sent_version)
                || version == state.rejected_version
            {
                continue;
            }
            self.next_nonce += 1;
            state.nonce = format!("{:08x}", self.next_nonce);
            state.sent_version = version.clone();
            state.must_answer = false;
            out.push(DiscoveryResponse {
                version_info: version,
                resources: members.iter().map(|(_, v)| v.resource.clone()).collect(),
                type_url: type_url.to_string(),
                nonce: state.nonce.clone(),
                ..Default::default()
            });
        }
        out
    }

    /// Whether the client has ACKed some version of `type_url`.
    pub fn holds(&self, type_url: &str) -> bool {
        self.types
            .get(type_url)
            .is_some_and(|state| !state.acked_version.is_empty())
    }

    /// What the client holds of each type: everything at the version it last ACKed.
    pub fn report(&self, resources: &Resources) -> Vec<TypeReport> {
        TYPES
            .iter()
            .filter_map(|type_url| {
                let state = self.types.get(type_url)?;
                let (members, version) = state.members(type_url, resources);
                let in_flight = state.sent_version != state.acked_version
                    && state.sent_version != state.rejected_version;
                let condition = if in_flight {
                    Condition::Sending
                } else if version == state.acked_version {
                    Condition::Held
                } else if version == state.rejected_version {
                    Condition::Rejected
                } else {
                    Condition::Outdated
                };
                let held = condition == Condition::Held;
                Some(TypeReport {
                    type_url,
                    wildcard: matches!(*type_url, CLUSTER | LISTENER) || state.names.is_empty(),
                    last_ack: None,
                    resources: members
                        .iter()
                        .map(|(name, versioned)| ResourceReport {
                            name: name.to_string(),
                            version: Some(versioned.version.clone()),
                            acked: held.then(|| versioned.version.clone()),
                            nonce: in_flight.then(|| state.nonce.clone()),
                            condition,
                        })
                        .collect(),
                    pending: if in_flight {
                        vec![PendingReport {
                            nonce: state.nonce.clone(),
                            age: std::time::Duration::ZERO,
                            names: members.iter().map(|(name, _)| name.to_string()).collect(),
                        }]
                    } else {
                        Vec::new()
                    },
                })
            })
            .collect()
    }
}
