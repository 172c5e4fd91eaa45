//! The query path without sockets: random and mutated bytes never panic and every reply
//! decodes; malformed messages get FORMERR or silence; sizing keeps Consul's limits and sets
//! TC only with `enable_truncate`.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use hickory_proto::rr::{Name, RecordType};

use super::*;
use crate::acl::Authorizer;
use crate::config::dns_config::DnsConfig;
use crate::dns::Context;
use crate::rpc::memory::MemoryCluster;
use crate::rpc::{Cluster, LeaderContact};
use crate::types::{Check, Command, HealthStatus, Node, RegisterRequest, Service};

fn default_dns_config() -> DnsConfig {
    crate::config::load(&crate::config::LoadOptions {
        dev: true,
        ..Default::default()
    })
    .expect("dev config")
    .config
    .dns
}

/// The in-memory cluster behind a test context's seam.
fn memory(cx: &Context) -> &MemoryCluster {
    match &cx.cluster {
        Cluster::Memory(memory) => memory,
        _ => unreachable!("test contexts use a memory cluster"),
    }
}

fn context_with(instances: usize, config: DnsConfig) -> Context {
    let cluster = MemoryCluster::new();
    let store = cluster.store.clone();
    let commands: Vec<Command> = (0..instances)
        .map(|index| {
            Command::CatalogRegister(Box::new(RegisterRequest {
                node: Node {
                    name: format!("node-{index}"),
                    address: format!("10.0.{}.{}", index / 256, index % 256),
                    ..Node::default()
                },
                skip_node_update: false,
                service: Some(Service {
                    id: format!("web-{index}"),
                    name: "web".into(),
                    port: 8000 + index as u16,
                    ..Service::default()
                }),
                checks: Vec::new(),
            }))
        })
        .collect();
    store.apply_batch(
        commands
            .iter()
            .enumerate()
            .map(|(index, command)| (index as u64 + 1, Some(command))),
    );
    Context::new(
        config,
        "dc1".into(),
        Cluster::Memory(cluster),
        Authorizer::disabled(),
        "node1",
    )
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> Vec<u8> {
    let mut message = Message::new();
    message
        .set_id(0x1234)
        .set_message_type(MessageType::Query)
        .set_op_code(OpCode::Query)
        .set_recursion_desired(true)
        .add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut opt = Edns::new();
        opt.set_max_payload(size);
        message.set_edns(opt);
    }
    message.to_vec().unwrap()
}

fn reply(outcome: Outcome) -> (Vec<u8>, Message) {
    match outcome {
        Outcome::Reply(bytes) => {
            let message = Message::from_vec(&bytes).expect("reply decodes");
            (bytes, message)
        }
        other => panic!("expected a reply, got {other:?}"),
    }
}

/// xorshift64*: a fixed seed gives the same bytes on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, bound: usize) -> usize {
        (self.next() % bound as u64) as usize
    }
}

#[test]
fn random_and_mutated_bytes_never_panic_and_replies_decode() {
    let cx = context_with(20, default_dns_config());
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let seeds = [
        query("web.service.consul.", RecordType::SRV, Some(4096)),
        query("node-1.node.consul.", RecordType::ANY, None),
        query("1.0.0.10.in-addr.arpa.", RecordType::PTR, None),
        query("consul.", RecordType::SOA, None),
    ];
    for round in 0..40_000 {
        let bytes: Vec<u8> = if round % 2 == 0 {
            let length = rng.below(600);
            (0..length).map(|_| rng.next() as u8).collect()
        } else {
            let mut bytes = seeds[rng.below(seeds.len())].clone();
            for _ in 0..=rng.below(6) {
                let at = rng.below(bytes.len());
                bytes[at] = rng.next() as u8;
            }
            bytes.truncate(bytes.len() - rng.below(4).min(bytes.len()));
            bytes
        };
        for transport in [Transport::Udp, Transport::Tcp] {
            match respond(&cx, &bytes, transport) {
                Outcome::Reply(reply) => {
                    assert!(reply.len() >= 12, "reply shorter than a header");
                    assert_eq!(reply[..2], bytes[..2], "reply id differs");
                    assert!(reply[2] & 0x80 != 0, "reply not marked as a response");
                    if transport == Transport::Udp && bytes.len() >= 12 {
                        assert!(reply.len() <= 65535);
                    }
                }
                Outcome::Drop => {}
                Outcome::Recurse { failed }
                | Outcome::Elsewhere { failed, .. }
                | Outcome::Failover { local: failed, .. } => {
                    assert!(failed.len() >= 12)
                }
            }
        }
    }
}

#[test]
fn malformed_messages_get_formerr_or_silence() {
    let cx = context_with(1, default_dns_config());
    // Too short for a header, or a response: silence.
    assert_eq!(respond(&cx, &[], Transport::Udp), Outcome::Drop);
    assert_eq!(
        respond(&cx, &[1, 2, 3, 4, 5], Transport::Udp),
        Outcome::Drop
    );
    let mut response = query("web.service.consul.", RecordType::A, None);
    response[2] |= 0x80;
    assert_eq!(respond(&cx, &response, Transport::Udp), Outcome::Drop);

    let header = |count: u16| {
        let mut bytes = vec![0xab, 0xcd, 0x01, 0x00];
        bytes.extend_from_slice(&count.to_be_bytes());
        bytes.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
        bytes
    };
    let formerr = |bytes: Vec<u8>| {
        let (raw, message) = reply(respond(&cx, &bytes, Transport::Udp));
        assert_eq!(message.response_code(), ResponseCode::FormErr, "{bytes:?}");
        assert_eq!(raw[..2], [0xab, 0xcd]);
    };
    // A compression pointer to itself.
    let mut looping = header(1);
    looping.extend_from_slice(&[0xc0, 0x0c, 0x00, 0x01, 0x00, 0x01]);
    formerr(looping);
    // A label of 64 bytes.
    let mut long_label = header(1);
    long_label.push(64);
    long_label.extend(std::iter::repeat_n(b'a', 64));
    long_label.extend_from_slice(&[0, 0, 1, 0, 1]);
    formerr(long_label);
    // A name over 255 bytes.
    let mut long_name = header(1);
    for _ in 0..5 {
        long_name.push(63);
        long_name.extend(std::iter::repeat_n(b'a', 63));
    }
    long_name.extend_from_slice(&[0, 0, 1, 0, 1]);
    formerr(long_name);
    // 65,535 questions announced, one present.
    let mut many = header(u16::MAX);
    many.extend_from_slice(&[3, b'w', b'e', b'b', 0, 0, 1, 0, 1]);
    formerr(many);
    // No question at all.
    formerr(header(0));
}

#[test]
fn udp_without_edns_keeps_the_answer_limit_and_sets_tc_only_with_enable_truncate() {
    let mut config = default_dns_config();
    let plain = context_with(1000, config.clone());
    let (raw, message) = reply(respond(
        &plain,
        &query("web.service.consul.", RecordType::SRV, None),
        Transport::Udp,
    ));
    assert!(raw.len() <= 512);
    assert_eq!(message.answers().len(), 3);
    assert!(!message.truncated());
    assert!(message.authoritative());

    config.enable_truncate = true;
    let truncating = context_with(1000, config);
    let (raw, message) = reply(respond(
        &truncating,
        &query("web.service.consul.", RecordType::A, None),
        Transport::Udp,
    ));
    assert!(raw.len() <= 512);
    assert_eq!(message.answers().len(), 3);
    assert!(message.truncated());

    // EDNS raises the byte limit to the client's buffer, not the answer count.
    let (raw, message) = reply(respond(
        &truncating,
        &query("web.service.consul.", RecordType::SRV, Some(1232)),
        Transport::Udp,
    ));
    assert!(raw.len() <= 1232, "{}", raw.len());
    assert!(message.answers().len() > 3);
    assert!(message.truncated());
    // Every SRV answer kept its target's address, and no address is left without its SRV.
    let targets: std::collections::BTreeSet<_> = message
        .answers()
        .iter()
        .filter_map(|record| match record.data() {
            hickory_proto::rr::RData::SRV(srv) => Some(srv.target().clone()),
            _ => None,
        })
        .collect();
    let glue: std::collections::BTreeSet<_> = message
        .additionals()
        .iter()
        .filter(|record| record.record_type() == RecordType::A)
        .map(|record| record.name().clone())
        .collect();
    assert_eq!(targets, glue);

    // TCP carries all 1,000.
    let (raw, message) = reply(respond(
        &truncating,
        &query("web.service.consul.", RecordType::SRV, None),
        Transport::Tcp,
    ));
    assert!(raw.len() <= 65535);
    assert_eq!(message.answers().len(), 1000);
    assert!(!message.truncated());
}

#[test]
fn names_outside_the_domain_are_refused_without_recursors() {
    let cx = context_with(1, default_dns_config());
    let (_, message) = reply(respond(
        &cx,
        &query("example.com.", RecordType::A, None),
        Transport::Udp,
    ));
    assert_eq!(message.response_code(), ResponseCode::Refused);
    assert!(!message.recursion_available());

    let mut config = default_dns_config();
    config.recursors = vec!["127.0.0.1:53".parse().unwrap()];
    let cx = context_with(1, config);
    match respond(
        &cx,
        &query("example.com.", RecordType::A, None),
        Transport::Udp,
    ) {
        Outcome::Recurse { failed } => {
            let message = Message::from_vec(&failed).unwrap();
            assert_eq!(message.response_code(), ResponseCode::ServFail);
            assert!(message.recursion_available());
        }
        other => panic!("expected recursion, got {other:?}"),
    }
}

#[test]
fn a_stale_view_without_a_leader_is_refused_when_allow_stale_is_off() {
    let mut config = default_dns_config();
    config.allow_stale = false;
    let cx = context_with(1, config);
    memory(&cx).set_contact(LeaderContact {
        known_leader: false,
        last_contact_ms: 0,
    });
    let (_, message) = reply(respond(
        &cx,
        &query("web.service.consul.", RecordType::A, None),
        Transport::Udp,
    ));
    assert_eq!(message.response_code(), ResponseCode::ServFail);
}

/// Three instances of `api` (passing, warning, critical) on their own nodes.
fn context_with_health(config: DnsConfig) -> Context {
    let cx = context_with(0, config);
    let commands: Vec<Command> = [
        HealthStatus::Passing,
        HealthStatus::Warning,
        HealthStatus::Critical,
    ]
    .into_iter()
    .enumerate()
    .map(|(index, status)| {
        Command::CatalogRegister(Box::new(RegisterRequest {
            node: Node {
                name: format!("h{index}"),
                address: format!("10.9.0.{}", index + 1),
                ..Node::default()
            },
            skip_node_update: false,
            service: Some(Service {
                id: format!("api-{index}"),
                name: "api".into(),
                port: 9000,
                ..Service::default()
            }),
            checks: vec![Check {
                node: format!("h{index}"),
                check_id: format!("c{index}"),
                name: "probe".into(),
                status,
                notes: String::new(),
                output: String::new(),
                service_id: format!("api-{index}"),
                service_name: "api".into(),
                service_tags: Vec::new(),
                check_type: String::new(),
                interval: String::new(),
                timeout: String::new(),
                indexes: Default::default(),
            }],
        }))
    })
    .collect();
    memory(&cx).store.apply_batch(
        commands
            .iter()
            .enumerate()
            .map(|(index, command)| (index as u64 + 1, Some(command))),
    );
    cx
}

fn a_answers(cx: &Context, name: &str) -> Vec<(String, u32)> {
    let (_, message) = reply(respond(
        cx,
        &query(name, RecordType::A, None),
        Transport::Udp,
    ));
    let mut answers: Vec<(String, u32)> = message
        .answers()
        .iter()
        .map(|record| (record.data().to_string(), record.ttl()))
        .collect();
    answers.sort();
    answers
}

#[test]
fn health_filtering_only_passing_ttls_and_a_record_limit() {
    let mut config = default_dns_config();
    config.service_ttl = [
        ("*".to_string(), std::time::Duration::from_secs(5)),
        ("ap*".to_string(), std::time::Duration::from_secs(30)),
    ]
    .into_iter()
    .collect();
    let cx = context_with_health(config.clone());
    assert_eq!(
        a_answers(&cx, "api.service.consul."),
        vec![("10.9.0.1".into(), 30), ("10.9.0.2".into(), 30)]
    );
    config.only_passing = true;
    let cx = context_with_health(config.clone());
    assert_eq!(
        a_answers(&cx, "api.service.consul."),
        vec![("10.9.0.1".into(), 30)]
    );
    config.only_passing = false;
    config.a_record_limit = 1;
    let cx = context_with_health(config);
    assert_eq!(a_answers(&cx, "api.service.consul.").len(), 1);
}

fn srv_ports(cx: &Context) -> Vec<u16> {
    let (_, message) = reply(respond(
        cx,
        &query("web.service.consul.", RecordType::SRV, Some(4096)),
        Transport::Udp,
    ));
    message
        .answers()
        .iter()
        .filter_map(|record| match record.data() {
            hickory_proto::rr::RData::SRV(srv) => Some(srv.port()),
            _ => None,
        })
        .collect()
}

#[test]
fn cached_answers_are_shuffled_per_response_and_follow_catalog_changes() {
    let cx = context_with(20, default_dns_config());
    let first = srv_ports(&cx);
    assert_eq!(first.len(), 20);
    // The answer is computed once for this catalog version; each response orders it anew.
    let orders: std::collections::HashSet<Vec<u16>> = (0..20).map(|_| srv_ports(&cx)).collect();
    assert!(orders.len() > 1, "twenty responses all in one order");
    for order in &orders {
        let mut sorted = order.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (8000..8020).collect::<Vec<u16>>());
    }

    // A critical check on one instance is a new catalog version: it leaves the answer.
    let critical = Command::CatalogRegister(Box::new(RegisterRequest {
        node: Node {
            name: "node-3".into(),
            address: "10.0.0.3".into(),
            ..Node::default()
        },
        skip_node_update: true,
        service: None,
        checks: vec![Check {
            node: "node-3".into(),
            check_id: "down".into(),
            name: "down".into(),
            status: HealthStatus::Critical,
            notes: String::new(),
            output: String::new(),
            service_id: "web-3".into(),
            service_name: "web".into(),
            service_tags: Vec::new(),
            check_type: String::new(),
            interval: String::new(),
            timeout: String::new(),
            indexes: Default::default(),
        }],
    }));
    memory(&cx).store.apply_batch([(100, Some(&critical))]);
    let after = srv_ports(&cx);
    assert_eq!(after.len(), 19);
    assert!(!after.contains(&8003));
}

#[test]
fn a_prepared_query_without_instances_fails_over_and_a_sent_definition_is_answered_here() {
    use crate::types::query::{PreparedQuery, QueryOp, ServiceQuery};
    let cx = context_with(2, default_dns_config());
    let definition = |id: &str, name: &str, service: &str, nearest_n: u32| PreparedQuery {
        id: id.into(),
        name: name.into(),
        service: ServiceQuery {
            service: service.into(),
            nearest_n,
            ..Default::default()
        },
        ..Default::default()
    };
    for query in [
        definition("q1", "gone-fo", "gone", 1),
        definition("q2", "gone-here", "gone", 0),
        definition("q3", "web-fo", "web", 1),
    ] {
        memory(&cx).apply(&Command::PreparedQuery(QueryOp::Set(Box::new(query))));
    }
    // No instance and somewhere to go: the definition travels, with the local answer kept
    // for when nowhere else has one.
    match respond(
        &cx,
        &query("gone-fo.query.consul.", RecordType::A, None),
        Transport::Udp,
    ) {
        Outcome::Failover { query, local } => {
            assert_eq!(query.name, "gone-fo");
            let local = Message::from_vec(&local).unwrap();
            assert!(local.answers().is_empty());
        }
        other => panic!("expected a failover, got {other:?}"),
    }
    // Nowhere to go, or instances here: answered here.
    let (_, here) = reply(respond(
        &cx,
        &query("gone-here.query.consul.", RecordType::A, None),
        Transport::Udp,
    ));
    assert!(here.answers().is_empty());
    assert_eq!(a_answers(&cx, "web-fo.query.consul.").len(), 2);
    // Another datacenter's definition runs against this catalog whatever the name resolves
    // to here, and never fails over again.
    let sent = definition("elsewhere", "gone-fo", "web", 1);
    let (_, answered) = reply(respond_sent(
        &cx,
        &query("gone-fo.query.consul.", RecordType::A, None),
        Transport::Udp,
        &sent,
    ));
    assert_eq!(answered.answers().len(), 2);
    let nothing = definition("elsewhere", "gone-fo", "gone", 1);
    let (_, empty) = reply(respond_sent(
        &cx,
        &query("gone-fo.query.consul.", RecordType::A, None),
        Transport::Udp,
        &nothing,
    ));
    assert!(empty.answers().is_empty());
}
