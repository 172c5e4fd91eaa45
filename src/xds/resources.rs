//! A proxy snapshot → the Envoy resources Consul generates for a sidecar, named as Consul
//! names them: `public_listener:<ip>:<port>` (mTLS requiring a mesh client certificate, RBAC
//! first, then tcp_proxy or an HTTP connection manager to `local_app`), one listener per
//! upstream `<id>:<ip>:<port>`, an EDS cluster per discovery-chain target named by its SNI
//! (with upstream mTLS checking the target's SPIFFE ID), its endpoints, and for HTTP chains a
//! route configuration named after the upstream (splits become weighted clusters, router
//! routes ordered matches). A TCP public listener has a filter chain per source service (see
//! `public_listener`). Certificates are by reference (SDS over
//! the same stream): the leaf and the trusted roots are two secrets, so a renewed leaf or a
//! rotated root changes no listener or cluster and drains no connection.
//!
//! Versions are content hashes of each resource's encoding. Every map field this module fills
//! has at most one entry except RBAC policies, which `rbac` encodes in order, so the encoding
//! and hence the version is the same for the same snapshot in any process.

use std::collections::BTreeMap;

use envoy_types::pb::envoy::config::cluster::v3::{cluster, Cluster};
use envoy_types::pb::envoy::config::core::v3::{
    address, config_source, data_source, socket_address, transport_socket, Address,
    AggregatedConfigSource, ApiVersion, ConfigSource, DataSource, ExtensionConfigSource,
    Http2ProtocolOptions, SocketAddress, TrafficDirection, TransportSocket, TypedExtensionConfig,
};
use envoy_types::pb::envoy::config::endpoint::v3::{
    lb_endpoint, ClusterLoadAssignment, Endpoint, LbEndpoint, LocalityLbEndpoints,
};
use envoy_types::pb::envoy::config::listener::v3::{
    filter, listener_filter, Filter, FilterChain, FilterChainMatch, Listener, ListenerFilter,
};
use envoy_types::pb::envoy::config::route::v3::{
    header_matcher, query_parameter_matcher, route, route_action, route_match, weighted_cluster,
    HeaderMatcher, QueryParameterMatcher, RetryPolicy, Route, RouteAction, RouteConfiguration,
    RouteMatch, VirtualHost, WeightedCluster,
};
use envoy_types::pb::envoy::extensions::filters::http::router::v3::Router;
use envoy_types::pb::envoy::extensions::filters::listener::tls_inspector::v3::TlsInspector;
use envoy_types::pb::envoy::extensions::filters::network::http_connection_manager::v3::{
    http_connection_manager, http_filter, HttpConnectionManager, HttpFilter, Rds,
};
use envoy_types::pb::envoy::extensions::filters::network::tcp_proxy::v3::{tcp_proxy, TcpProxy};
use envoy_types::pb::envoy::extensions::transport_sockets::tls::v3::{
    common_tls_context, secret, subject_alt_name_matcher, CertificateValidationContext,
    CommonTlsContext, DownstreamTlsContext, SdsSecretConfig, Secret, SubjectAltNameMatcher,
    TlsCertificate, TlsParameters, UpstreamTlsContext,
};
use envoy_types::pb::envoy::extensions::upstreams::http::v3::{
    http_protocol_options, HttpProtocolOptions,
};
use envoy_types::pb::envoy::r#type::matcher::v3::RegexMatcher;
use envoy_types::pb::envoy::r#type::v3::Percent;
use envoy_types::pb::google::protobuf::{Any, BoolValue, Duration, UInt32Value};
use envoy_types::util::pack_any;
use prost::{Message, Name};
use serde_json::Value;

use super::matchers::{header_matcher, regex_matcher, string_exact, HeaderRule};
use super::rbac;
use crate::connect::ca::spiffe_service_id;
use crate::connect::chain::{Chain, Node};
use crate::proxycfg::{is_http, Snapshot, UpstreamSnapshot};
use crate::types::config_entry::HttpMatch;

pub const CLUSTER: &str = "type.googleapis.com/envoy.config.cluster.v3.Cluster";
pub const ENDPOINT: &str = "type.googleapis.com/envoy.config.endpoint.v3.ClusterLoadAssignment";
pub const LISTENER: &str = "type.googleapis.com/envoy.config.listener.v3.Listener";
pub const ROUTE: &str = "type.googleapis.com/envoy.config.route.v3.RouteConfiguration";
/// A filter's configuration on its own (ECDS): the public listener's HTTP RBAC filter, so an
/// intention change reaches the next request on a connection Envoy already holds.
pub const EXTENSION_CONFIG: &str = "type.googleapis.com/envoy.config.core.v3.TypedExtensionConfig";
const HTTP_RBAC: &str = "type.googleapis.com/envoy.extensions.filters.http.rbac.v3.RBAC";
/// Certificates by reference (SDS): the proxy's leaf and the roots it trusts.
pub const SECRET: &str = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret";

/// The resource types, in the order a pass sends upserts.
pub const TYPES: [&str; 6] = [SECRET, CLUSTER, ENDPOINT, LISTENER, ROUTE, EXTENSION_CONFIG];

/// The two secrets every TLS context refers to.
const LEAF_SECRET: &str = "concord:leaf";
const ROOTS_SECRET: &str = "concord:roots";

const LOCAL_APP: &str = "local_app";
const HTTP_PROTOCOL_OPTIONS: &str = "envoy.extensions.upstreams.http.v3.HttpProtocolOptions";

/// One generated resource.
#[derive(Clone, Debug, PartialEq)]
pub struct Versioned {
    pub version: String,
    pub resource: Any,
    /// Resources of the child type to resend whenever this one is sent: a cluster's
    /// endpoints, a listener's route configuration.
    pub children: Vec<String>,
}

/// Every resource of one snapshot, by type URL then name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Resources {
    pub by_type: BTreeMap<&'static str, BTreeMap<String, Versioned>>,
}

impl Resources {
    pub fn of(&self, type_url: &str) -> Option<&BTreeMap<String, Versioned>> {
        self.by_type.get(type_url)
    }

    fn add<T: Message + Name>(&mut self, type_url: &'static str, name: String, message: T) {
        self.add_with_children(type_url, name, message, Vec::new());
    }

    fn add_with_children<T: Message + Name>(
        &mut self,
        type_url: &'static str,
        name: String,
        message: T,
        children: Vec<String>,
    ) {
        let resource = pack_any(message);
        let version = version_of(&resource.value);
        self.by_type.entry(type_url).or_default().insert(
            name,
            Versioned {
                version,
                resource,
                children,
            },
        );
    }
}

/// The `address:port` of every endpoint of an encoded load assignment (for reports).
pub fn endpoint_hosts(resource: &Any) -> Vec<String> {
    let Ok(assignment) = ClusterLoadAssignment::decode(resource.value.as_slice()) else {
        return Vec::new();
    };
    let mut hosts: Vec<String> = assignment
        .endpoints
        .iter()
        .flat_map(|locality| &locality.lb_endpoints)
        .filter_map(|endpoint| match endpoint.host_identifier.as_ref()? {
            lb_endpoint::HostIdentifier::Endpoint(endpoint) => {
                match endpoint.address.as_ref()?.address.as_ref()? {
                    address::Address::SocketAddress(socket) => {
                        let port = match socket.port_specifier.as_ref()? {
                            socket_address::PortSpecifier::PortValue(port) => *port,
                            _ => return None,
                        };
                        Some(format!("{}:{port}", socket.address))
                    }
                    _ => None,
                }
            }
            _ => None,
        })
        .collect();
    hosts.sort();
    hosts
}

/// A short content hash (FNV-1a, 64-bit): stable across processes and builds.
fn version_of(bytes: &[u8]) -> String {
    let hash = bytes.iter().fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    });
    format!("{hash:016x}")
}

fn inline(text: &str) -> Option<DataSource> {
    Some(DataSource {
        specifier: Some(data_source::Specifier::InlineString(text.into())),
        ..Default::default()
    })
}

fn ads() -> Option<ConfigSource> {
    Some(ConfigSource {
        resource_api_version: ApiVersion::V3 as i32,
        config_source_specifier: Some(config_source::ConfigSourceSpecifier::Ads(
            AggregatedConfigSource {},
        )),
        ..Default::default()
    })
}

fn socket(address: &str, port: u16) -> Option<Address> {
    Some(Address {
        address: Some(address::Address::SocketAddress(SocketAddress {
            address: address.into(),
            port_specifier: Some(socket_address::PortSpecifier::PortValue(u32::from(port))),
            ..Default::default()
        })),
    })
}

fn duration_ms(ms: u64) -> Option<Duration> {
    Some(Duration {
        seconds: (ms / 1000) as i64,
        nanos: ((ms % 1000) * 1_000_000) as i32,
    })
}

fn duration(value: std::time::Duration) -> Option<Duration> {
    Some(Duration {
        seconds: value.as_secs() as i64,
        nanos: value.subsec_nanos() as i32,
    })
}

fn is_http2(protocol: &str) -> bool {
    matches!(protocol, "http2" | "grpc")
}

fn http2_upstream_options() -> std::collections::HashMap<String, Any> {
    let options = HttpProtocolOptions {
        upstream_protocol_options: Some(
            http_protocol_options::UpstreamProtocolOptions::ExplicitHttpConfig(
                http_protocol_options::ExplicitHttpConfig {
                    protocol_config: Some(
                        http_protocol_options::explicit_http_config::ProtocolConfig::Http2ProtocolOptions(
                            Http2ProtocolOptions::default(),
                        ),
                    ),
                },
            ),
        ),
        ..Default::default()
    };
    [(HTTP_PROTOCOL_OPTIONS.to_string(), pack_any(options))].into()
}

/// The proxy's own certificate and the roots it trusts, both by reference to the secrets
/// `secrets` makes; `san` is the peer's SPIFFE ID to require (upstreams).
fn common_tls(san: Option<String>, alpn: Vec<String>) -> CommonTlsContext {
    let match_typed_subject_alt_names = san
        .map(|uri| {
            vec![SubjectAltNameMatcher {
                san_type: subject_alt_name_matcher::SanType::Uri as i32,
                matcher: Some(string_exact(&uri)),
                ..Default::default()
            }]
        })
        .unwrap_or_default();
    CommonTlsContext {
        tls_params: Some(TlsParameters::default()),
        tls_certificate_sds_secret_configs: vec![sds(LEAF_SECRET)],
        validation_context_type: Some(
            common_tls_context::ValidationContextType::CombinedValidationContext(
                common_tls_context::CombinedCertificateValidationContext {
                    // Required by Envoy even when it checks nothing beyond the roots.
                    default_validation_context: Some(CertificateValidationContext {
                        match_typed_subject_alt_names,
                        ..Default::default()
                    }),
                    validation_context_sds_secret_config: Some(sds(ROOTS_SECRET)),
                    ..Default::default()
                },
            ),
        ),
        alpn_protocols: alpn,
        ..Default::default()
    }
}

fn sds(name: &str) -> SdsSecretConfig {
    SdsSecretConfig {
        name: name.into(),
        sds_config: ads(),
    }
}

/// The leaf certificate and the trusted roots, as the secrets every TLS context names.
fn secrets(snapshot: &Snapshot, resources: &mut Resources) {
    let leaf = TlsCertificate {
        certificate_chain: inline(&snapshot.leaf.cert_pem),
        private_key: inline(&snapshot.leaf.private_key_pem),
        ..Default::default()
    };
    let roots = CertificateValidationContext {
        trusted_ca: inline(&snapshot.roots_pem.join("\n")),
        ..Default::default()
    };
    for (name, secret) in [
        (LEAF_SECRET, secret::Type::TlsCertificate(leaf)),
        (ROOTS_SECRET, secret::Type::ValidationContext(roots)),
    ] {
        resources.add(
            SECRET,
            name.into(),
            Secret {
                name: name.into(),
                r#type: Some(secret),
            },
        );
    }
}

/// The ALPN protocol a source's sidecar offers on TCP connections into the mesh, naming the
/// source service: the destination's public listener picks the source's own filter chain by
/// it. Only a grouping: every chain's RBAC still checks the client certificate, so a client
/// naming another service gains nothing (see `public_listener`).
fn source_alpn(service: &str) -> String {
    format!("concord-source:{service}")
}

fn transport_socket<T: Message + Name>(context: T) -> Option<TransportSocket> {
    Some(TransportSocket {
        name: "tls".into(),
        config_type: Some(transport_socket::ConfigType::TypedConfig(pack_any(context))),
    })
}

fn network_filter(name: &str, config: Any) -> Filter {
    Filter {
        name: name.into(),
        config_type: Some(filter::ConfigType::TypedConfig(config)),
    }
}

fn http_filter(name: &str, config: Any) -> HttpFilter {
    HttpFilter {
        name: name.into(),
        config_type: Some(http_filter::ConfigType::TypedConfig(config)),
        ..Default::default()
    }
}

fn tcp_proxy(stat_prefix: &str, cluster: &str) -> Filter {
    network_filter(
        "envoy.filters.network.tcp_proxy",
        pack_any(TcpProxy {
            stat_prefix: stat_prefix.into(),
            cluster_specifier: Some(tcp_proxy::ClusterSpecifier::Cluster(cluster.into())),
            ..Default::default()
        }),
    )
}

fn http_connection_manager(
    stat_prefix: &str,
    protocol: &str,
    routes: http_connection_manager::RouteSpecifier,
    mut filters: Vec<HttpFilter>,
) -> Filter {
    filters.push(http_filter(
        "envoy.filters.http.router",
        pack_any(Router::default()),
    ));
    network_filter(
        "envoy.filters.network.http_connection_manager",
        pack_any(HttpConnectionManager {
            stat_prefix: stat_prefix.into(),
            codec_type: http_connection_manager::CodecType::Auto as i32,
            route_specifier: Some(routes),
            http_filters: filters,
            http2_protocol_options: is_http2(protocol).then(Http2ProtocolOptions::default),
            ..Default::default()
        }),
    )
}

fn single_route(name: &str, cluster: &str, timeout: Option<Duration>) -> RouteConfiguration {
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: name.into(),
            domains: vec!["*".into()],
            routes: vec![Route {
                r#match: Some(prefix_match("/")),
                action: Some(route::Action::Route(RouteAction {
                    cluster_specifier: Some(route_action::ClusterSpecifier::Cluster(
                        cluster.into(),
                    )),
                    timeout,
                    ..Default::default()
                })),
                ..Default::default()
            }],
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn prefix_match(prefix: &str) -> RouteMatch {
    RouteMatch {
        path_specifier: Some(route_match::PathSpecifier::Prefix(prefix.into())),
        ..Default::default()
    }
}

/// Generates every resource of `snapshot`.
///
/// `previous` is the snapshot a stream last generated from, with what it generated. A
/// resource whose inputs are equal in both snapshots is taken over as it is rather than built,
/// encoded and hashed again: a change (one config entry, one instance's health) touches few
/// of a proxy's resources, so rebuilding the rest would be most of the cost of an update.
pub fn generate(snapshot: &Snapshot, previous: Option<(&Snapshot, &Resources)>) -> Resources {
    let mut resources = Resources::default();
    let previous = previous.map(|(snapshot_before, resources_before)| Previous {
        snapshot: snapshot_before,
        resources: resources_before,
        same_place: snapshot_before.trust_domain == snapshot.trust_domain
            && snapshot_before.datacenter == snapshot.datacenter,
    });
    let secrets_unchanged = previous.as_ref().is_some_and(|previous| {
        previous.snapshot.leaf == snapshot.leaf
            && previous.snapshot.roots_pem == snapshot.roots_pem
            && previous.take(&mut resources, SECRET, LEAF_SECRET)
            && previous.take(&mut resources, SECRET, ROOTS_SECRET)
    });
    if !secrets_unchanged {
        secrets(snapshot, &mut resources);
    }
    let public_unchanged = previous.as_ref().is_some_and(|previous| {
        previous.same_place
            && previous.snapshot.public == snapshot.public
            && previous.snapshot.intentions == snapshot.intentions
            && previous.snapshot.mesh_sources == snapshot.mesh_sources
    });
    if !(public_unchanged
        && previous.as_ref().is_some_and(|previous| {
            previous.take(&mut resources, CLUSTER, LOCAL_APP)
                && previous.take(&mut resources, LISTENER, &public_listener_name(snapshot))
                && (!is_http(&snapshot.public.protocol)
                    || previous.take(
                        &mut resources,
                        EXTENSION_CONFIG,
                        &public_rbac_name(snapshot),
                    ))
        }))
    {
        public_listener(snapshot, &mut resources);
    }
    for upstream in &snapshot.upstreams {
        let before = previous.as_ref().and_then(|previous| {
            let upstream_before = previous
                .snapshot
                .upstreams
                .iter()
                .find(|before| before.id == upstream.id)?;
            Some((previous, upstream_before))
        });
        upstream_resources(snapshot, upstream, before, &mut resources);
    }
    // Never leave a type empty for a sidecar: Envoy waits for the first CDS and LDS.
    for type_url in [CLUSTER, LISTENER] {
        resources.by_type.entry(type_url).or_default();
    }
    resources
}

/// What a stream generated before, for `generate` to take unchanged resources from.
struct Previous<'a> {
    snapshot: &'a Snapshot,
    resources: &'a Resources,
    /// The trust domain and datacenter are unchanged: every resource that embeds them (SPIFFE
    /// IDs, stat prefixes) may be reused.
    same_place: bool,
}

impl Previous<'_> {
    /// Copies the earlier resource `name` of `type_url` into `resources`, if there was one.
    fn take(&self, resources: &mut Resources, type_url: &'static str, name: &str) -> bool {
        let Some(versioned) = self.resources.of(type_url).and_then(|of| of.get(name)) else {
            return false;
        };
        resources
            .by_type
            .entry(type_url)
            .or_default()
            .insert(name.to_string(), versioned.clone());
        true
    }
}

fn public_listener_name(snapshot: &Snapshot) -> String {
    format!(
        "public_listener:{}:{}",
        snapshot.public.address, snapshot.public.port
    )
}

/// The public listener's HTTP RBAC filter, by which ECDS names its configuration.
fn public_rbac_name(snapshot: &Snapshot) -> String {
    format!("{}:rbac", public_listener_name(snapshot))
}

fn public_listener(snapshot: &Snapshot, resources: &mut Resources) {
    let public = &snapshot.public;
    let local_app = Cluster {
        name: LOCAL_APP.into(),
        cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
            cluster::DiscoveryType::Static as i32,
        )),
        connect_timeout: duration_ms(public.local_connect_timeout_ms),
        load_assignment: Some(load_assignment(
            LOCAL_APP,
            &[(public.local_address.as_str(), public.local_port, 1)],
        )),
        typed_extension_protocol_options: if is_http2(&public.protocol) {
            http2_upstream_options()
        } else {
            Default::default()
        },
        ..Default::default()
    };
    resources.add(CLUSTER, LOCAL_APP.into(), local_app);

    let http = is_http(&public.protocol);
    let rules = rbac::rules(&snapshot.intentions, &snapshot.trust_domain, http);
    let name = public_listener_name(snapshot);
    let filters = if http {
        let routes = http_connection_manager::RouteSpecifier::RouteConfig(single_route(
            "public_listener",
            LOCAL_APP,
            None,
        ));
        // The RBAC filter by reference (ECDS): HTTP connection managers build each request's
        // filters from the latest configuration, so a changed intention applies to the next
        // request on every open connection, and the listener itself does not change. Until
        // the configuration arrives the listener stays warming (no default: closed).
        let rbac_name = public_rbac_name(snapshot);
        resources.add(
            EXTENSION_CONFIG,
            rbac_name.clone(),
            TypedExtensionConfig {
                name: rbac_name.clone(),
                typed_config: Some(rbac::encode_filter(&rules, None)),
            },
        );
        let rbac = HttpFilter {
            name: rbac_name,
            config_type: Some(http_filter::ConfigType::ConfigDiscovery(
                ExtensionConfigSource {
                    config_source: ads(),
                    type_urls: vec![HTTP_RBAC.into()],
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        vec![http_connection_manager(
            "public_listener",
            &public.protocol,
            routes,
            vec![rbac],
        )]
    } else {
        tcp_filters(&rules)
    };
    let alpn = match public.protocol.as_str() {
        "http" => vec!["http/1.1".to_string()],
        "http2" | "grpc" => vec!["h2".to_string(), "http/1.1".to_string()],
        _ => Vec::new(),
    };
    let tls = DownstreamTlsContext {
        common_tls_context: Some(common_tls(None, alpn)),
        require_client_certificate: Some(BoolValue { value: true }),
        ..Default::default()
    };
    let mut filter_chains = vec![FilterChain {
        filters,
        transport_socket: transport_socket(tls.clone()),
        ..Default::default()
    }];
    // TCP: Envoy's network RBAC keeps the configuration a connection started with, so a deny
    // can only end established connections by draining their filter chain. Each source (a
    // service whose sidecar reaches this one, `Snapshot::mesh_sources`) gets a chain of its
    // own, picked by the ALPN its sidecar offers (`source_alpn`) and holding only that
    // source's outcome, so an intention change drains exactly the connections of the
    // sources whose outcome changed. The chain without a match serves
    // everything else (Connect-native clients, other meshes' proxies) with the full rules and
    // drains on any change. A client offering another service's name lands in a chain whose
    // RBAC admits only that service's certificate.
    let mut listener_filters = Vec::new();
    if !http {
        filter_chains.extend(snapshot.mesh_sources.iter().map(|source| FilterChain {
            name: format!("source:{source}"),
            filter_chain_match: Some(FilterChainMatch {
                application_protocols: vec![source_alpn(source)],
                ..Default::default()
            }),
            filters: tcp_filters(&rbac::source_rules(
                &snapshot.intentions,
                &snapshot.trust_domain,
                source,
            )),
            transport_socket: transport_socket(tls.clone()),
            ..Default::default()
        }));
        listener_filters.push(ListenerFilter {
            name: "envoy.filters.listener.tls_inspector".into(),
            config_type: Some(listener_filter::ConfigType::TypedConfig(pack_any(
                TlsInspector::default(),
            ))),
            ..Default::default()
        });
    }
    let listener = Listener {
        name: name.clone(),
        address: socket(&public.address, public.port),
        filter_chains,
        listener_filters,
        traffic_direction: TrafficDirection::Inbound as i32,
        ..Default::default()
    };
    resources.add(LISTENER, name, listener);
}

/// A TCP public listener chain's filters: RBAC, then the local app.
fn tcp_filters(rules: &envoy_types::pb::envoy::config::rbac::v3::Rbac) -> Vec<Filter> {
    vec![
        network_filter(
            "envoy.filters.network.rbac",
            rbac::encode_filter(rules, Some("connect_authz")),
        ),
        tcp_proxy("public_listener", LOCAL_APP),
    ]
}

fn load_assignment(cluster: &str, endpoints: &[(&str, u16, u32)]) -> ClusterLoadAssignment {
    ClusterLoadAssignment {
        cluster_name: cluster.into(),
        endpoints: vec![LocalityLbEndpoints {
            lb_endpoints: endpoints
                .iter()
                .map(|(address, port, weight)| LbEndpoint {
                    host_identifier: Some(lb_endpoint::HostIdentifier::Endpoint(Endpoint {
                        address: socket(address, *port),
                        ..Default::default()
                    })),
                    // HEALTHY: unhealthy instances are left out altogether.
                    health_status: 1,
                    load_balancing_weight: Some(UInt32Value { value: *weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }],
        ..Default::default()
    }
}

fn upstream_resources(
    snapshot: &Snapshot,
    upstream: &UpstreamSnapshot,
    before: Option<(&Previous<'_>, &UpstreamSnapshot)>,
    resources: &mut Resources,
) {
    let chain = &upstream.chain;
    for (id, target) in &chain.targets {
        let target_before = before.and_then(|(previous, upstream_before)| {
            Some((
                previous,
                upstream_before,
                upstream_before.chain.targets.get(id)?,
            ))
        });
        let endpoints_unchanged =
            target_before.is_some_and(|(previous, upstream_before, before)| {
                before.sni == target.sni
                    && upstream_before.endpoints.get(id) == upstream.endpoints.get(id)
                    && previous.take(resources, ENDPOINT, &target.sni)
            });
        if !endpoints_unchanged {
            let endpoints: Vec<(&str, u16, u32)> = upstream
                .endpoints
                .get(id)
                .map(|list| {
                    list.iter()
                        .map(|e| (e.address.as_str(), e.port, e.weight))
                        .collect()
                })
                .unwrap_or_default();
            // An empty assignment, not none: Envoy would otherwise wait for it while warming.
            resources.add(
                ENDPOINT,
                target.sni.clone(),
                load_assignment(&target.sni, &endpoints),
            );
        }
        let cluster_unchanged = target_before.is_some_and(|(previous, upstream_before, before)| {
            previous.same_place
                && before == target
                && upstream_before.chain.protocol == chain.protocol
                && previous.take(resources, CLUSTER, &target.sni)
        });
        if cluster_unchanged {
            continue;
        }
        let cluster = Cluster {
            name: target.sni.clone(),
            alt_stat_name: target.sni.clone(),
            cluster_discovery_type: Some(cluster::ClusterDiscoveryType::Type(
                cluster::DiscoveryType::Eds as i32,
            )),
            eds_cluster_config: Some(cluster::EdsClusterConfig {
                eds_config: ads(),
                ..Default::default()
            }),
            connect_timeout: duration(target.connect_timeout),
            circuit_breakers: Some(Default::default()),
            outlier_detection: Some(Default::default()),
            // 0%: Envoy never sends to an unhealthy host, even when all are.
            common_lb_config: Some(cluster::CommonLbConfig {
                healthy_panic_threshold: Some(Percent { value: 0.0 }),
                ..Default::default()
            }),
            typed_extension_protocol_options: if is_http2(&chain.protocol) {
                http2_upstream_options()
            } else {
                Default::default()
            },
            transport_socket: transport_socket(UpstreamTlsContext {
                common_tls_context: Some(common_tls(
                    Some(spiffe_service_id(
                        &snapshot.trust_domain,
                        &target.datacenter,
                        &target.service,
                    )),
                    // TCP: name this source to the destination (see `source_alpn`).
                    if is_http(&chain.protocol) {
                        Vec::new()
                    } else {
                        vec![source_alpn(&snapshot.service)]
                    },
                )),
                sni: target.sni.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        resources.add_with_children(
            CLUSTER,
            target.sni.clone(),
            cluster,
            vec![target.sni.clone()],
        );
    }

    let name = format!(
        "{}:{}:{}",
        upstream.id, upstream.bind_address, upstream.bind_port
    );
    // The listener and route depend on the chain and the binding only (and the datacenter);
    // `take` brings the route along for an HTTP chain (a TCP one has none).
    let listener_unchanged = before.is_some_and(|(previous, upstream_before)| {
        previous.same_place
            && upstream_before.bind_address == upstream.bind_address
            && upstream_before.bind_port == upstream.bind_port
            && upstream_before.chain == upstream.chain
            && previous.take(resources, LISTENER, &name)
    });
    if listener_unchanged {
        if let Some((previous, _)) = before {
            previous.take(resources, ROUTE, &upstream.id);
        }
        return;
    }
    let stat_prefix = format!(
        "upstream.{}.default.default.{}",
        upstream.id, snapshot.datacenter
    );
    let start_cluster = start_target(chain).unwrap_or_default();
    let (filter, children) = if !is_http(&chain.protocol) {
        (tcp_proxy(&stat_prefix, &start_cluster), Vec::new())
    } else {
        // By RDS even for a plain chain: a splitter or router written later changes the route
        // configuration, which applies to open connections, never the listener, whose change
        // would drain them.
        let routes = http_connection_manager::RouteSpecifier::Rds(Rds {
            config_source: ads(),
            route_config_name: upstream.id.clone(),
        });
        let route_config = if chain.default {
            single_route(&upstream.id, &start_cluster, chain_request_timeout(chain))
        } else {
            chain_routes(&upstream.id, chain)
        };
        resources.add(ROUTE, upstream.id.clone(), route_config);
        (
            http_connection_manager(&stat_prefix, &chain.protocol, routes, Vec::new()),
            vec![upstream.id.clone()],
        )
    };
    let listener = Listener {
        name: name.clone(),
        address: socket(&upstream.bind_address, upstream.bind_port),
        filter_chains: vec![FilterChain {
            filters: vec![filter],
            ..Default::default()
        }],
        traffic_direction: TrafficDirection::Outbound as i32,
        ..Default::default()
    };
    resources.add_with_children(LISTENER, name, listener, children);
}

/// The cluster the chain's start node resolves to when it is a plain resolver.
fn start_target(chain: &Chain) -> Option<String> {
    let node = chain.nodes.get(&chain.start_node)?;
    let resolver = node.resolver.as_ref()?;
    Some(chain.targets.get(&resolver.target)?.sni.clone())
}

fn chain_request_timeout(chain: &Chain) -> Option<Duration> {
    let node = chain.nodes.get(&chain.start_node)?;
    node.resolver.as_ref()?.request_timeout.and_then(duration)
}

/// Weighted clusters (in units of 0.01%) reached from `node`: a resolver is its target; a
/// splitter spreads `weight` over its splits, nested splitters multiplying out.
fn weighted_targets(chain: &Chain, node: &Node, weight: u32, out: &mut BTreeMap<String, u32>) {
    if let Some(resolver) = &node.resolver {
        if let Some(target) = chain.targets.get(&resolver.target) {
            *out.entry(target.sni.clone()).or_default() += weight;
        }
        return;
    }
    for split in node.splits.iter().flatten() {
        let share = (f64::from(split.weight) * 100.0).round() as u32;
        let part = (u64::from(weight) * u64::from(share) / 10_000) as u32;
        if let Some(next) = chain.nodes.get(&split.next_node) {
            weighted_targets(chain, next, part, out);
        }
    }
}

/// The action that sends a request to chain node `key`.
fn route_action(chain: &Chain, key: &str) -> RouteAction {
    let mut action = RouteAction::default();
    let Some(node) = chain.nodes.get(key) else {
        return action;
    };
    if let Some(resolver) = &node.resolver {
        action.timeout = resolver.request_timeout.and_then(duration);
    }
    let mut weights = BTreeMap::new();
    weighted_targets(chain, node, 10_000, &mut weights);
    weights.retain(|_, weight| *weight > 0);
    action.cluster_specifier = Some(if weights.len() == 1 && node.resolver.is_some() {
        route_action::ClusterSpecifier::Cluster(weights.into_keys().next().unwrap_or_default())
    } else {
        route_action::ClusterSpecifier::WeightedClusters(WeightedCluster {
            clusters: weights
                .into_iter()
                .map(|(name, weight)| weighted_cluster::ClusterWeight {
                    name,
                    weight: Some(UInt32Value { value: weight }),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    });
    action
}

/// The route configuration of an HTTP chain that is not the default.
fn chain_routes(name: &str, chain: &Chain) -> RouteConfiguration {
    let mut routes = Vec::new();
    if let Some(node) = chain.nodes.get(&chain.start_node) {
        match &node.routes {
            Some(router) => {
                for route_node in router {
                    let mut action = route_action(chain, &route_node.next_node);
                    apply_destination(&mut action, &route_node.definition);
                    routes.push(Route {
                        r#match: Some(route_match(&route_node.definition)),
                        action: Some(route::Action::Route(action)),
                        ..Default::default()
                    });
                }
            }
            None => routes.push(Route {
                r#match: Some(prefix_match("/")),
                action: Some(route::Action::Route(route_action(chain, &chain.start_node))),
                ..Default::default()
            }),
        }
    }
    RouteConfiguration {
        name: name.into(),
        virtual_hosts: vec![VirtualHost {
            name: name.into(),
            domains: vec!["*".into()],
            routes,
            ..Default::default()
        }],
        // Envoy refuses a route naming a cluster it does not have, instead of 404ing later.
        validate_clusters: Some(BoolValue { value: true }),
        ..Default::default()
    }
}

/// A router route's `Match.HTTP` as an Envoy match.
fn route_match(definition: &Value) -> RouteMatch {
    let http: HttpMatch = definition
        .pointer("/Match/HTTP")
        .cloned()
        .and_then(|value| serde_json::from_value(value).ok())
        .unwrap_or_default();
    let path = if !http.path_exact.is_empty() {
        route_match::PathSpecifier::Path(http.path_exact.clone())
    } else if !http.path_regex.is_empty() {
        route_match::PathSpecifier::SafeRegex(RegexMatcher {
            regex: http.path_regex.clone(),
            ..Default::default()
        })
    } else if !http.path_prefix.is_empty() {
        route_match::PathSpecifier::Prefix(http.path_prefix.clone())
    } else {
        route_match::PathSpecifier::Prefix("/".into())
    };
    let mut headers: Vec<HeaderMatcher> = http
        .header
        .iter()
        .map(|header| {
            header_matcher(HeaderRule {
                name: &header.name,
                present: header.present,
                exact: &header.exact,
                prefix: &header.prefix,
                suffix: &header.suffix,
                contains: &header.contains,
                regex: &header.regex,
                invert: header.invert,
                ignore_case: header.ignore_case,
            })
        })
        .collect();
    if !http.methods.is_empty() {
        headers.push(HeaderMatcher {
            name: ":method".into(),
            header_match_specifier: Some(header_matcher::HeaderMatchSpecifier::StringMatch(
                regex_matcher(&http.methods.join("|")),
            )),
            ..Default::default()
        });
    }
    let query_parameters = http
        .query_param
        .iter()
        .map(|param| QueryParameterMatcher {
            name: param.name.clone(),
            query_parameter_match_specifier: Some(if param.present {
                query_parameter_matcher::QueryParameterMatchSpecifier::PresentMatch(true)
            } else if !param.exact.is_empty() {
                query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(string_exact(
                    &param.exact,
                ))
            } else {
                query_parameter_matcher::QueryParameterMatchSpecifier::StringMatch(regex_matcher(
                    &param.regex,
                ))
            }),
        })
        .collect();
    RouteMatch {
        path_specifier: Some(path),
        case_sensitive: http.case_insensitive.then_some(BoolValue { value: false }),
        headers,
        query_parameters,
        ..Default::default()
    }
}

/// A router route's `Destination` knobs: prefix rewrite, timeouts, retries.
fn apply_destination(action: &mut RouteAction, definition: &Value) {
    let Some(destination) = definition.get("Destination") else {
        return;
    };
    if let Some(rewrite) = destination.get("PrefixRewrite").and_then(Value::as_str) {
        action.prefix_rewrite = rewrite.into();
    }
    let duration_field = |key: &str| {
        destination
            .get(key)
            .and_then(|value| crate::connect::entry::duration_value(key, value).ok())
            .filter(|d| !d.is_zero())
            .and_then(duration)
    };
    if let Some(timeout) = duration_field("RequestTimeout") {
        action.timeout = Some(timeout);
    }
    if let Some(timeout) = duration_field("IdleTimeout") {
        action.idle_timeout = Some(timeout);
    }
    let retries = destination
        .get("NumRetries")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let on_connect_failure = destination
        .get("RetryOnConnectFailure")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let status_codes: Vec<u32> = destination
        .get("RetryOnStatusCodes")
        .and_then(Value::as_array)
        .map(|codes| {
            codes
                .iter()
                .filter_map(|c| c.as_u64())
                .map(|c| c as u32)
                .collect()
        })
        .unwrap_or_default();
    // `RetryOn` first, then the two flags' conditions, in Consul's order.
    let mut retry_on: Vec<&str> = destination
        .get("RetryOn")
        .and_then(Value::as_array)
        .map(|conditions| conditions.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if retries > 0 || on_connect_failure || !status_codes.is_empty() || !retry_on.is_empty() {
        if on_connect_failure {
            retry_on.push("connect-failure");
        }
        if !status_codes.is_empty() {
            retry_on.push("retriable-status-codes");
        }
        action.retry_policy = Some(RetryPolicy {
            retry_on: retry_on.join(","),
            num_retries: Some(UInt32Value {
                value: retries.max(1) as u32,
            }),
            retriable_status_codes: status_codes,
            ..Default::default()
        });
    }
}
