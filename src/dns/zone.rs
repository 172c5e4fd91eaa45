//! Answers for the `.consul` zone, computed from one `Tables` snapshot: node, service,
//! connect and addr lookups, the apex's SOA and NS, and reverse (PTR) lookups. Consul's rules:
//! instances with a critical check are never answered (`only_passing` drops warnings too),
//! SRV targets name the node (or `<hex>.addr` when the
//! service has its own address) with the addresses in the additional section.
//!
//! Nothing here does I/O; `respond` sizes and encodes what this module decides.

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};
use rand::seq::SliceRandom;

use super::name::{address_hex, hex_address, Lookup};
use crate::config::dns_config::DnsConfig;
use crate::state::{query, Tables};
use crate::types::duration::parse_go_duration;
use crate::types::query::PreparedQuery;
use crate::types::{HealthStatus, Node, Service};

/// One answer record and the additional records that exist only for it (an SRV target's
/// addresses), so trimming answers trims their extras with them.
#[derive(Clone, Debug)]
pub struct Entry {
    pub record: Record,
    pub extra: Vec<Record>,
}

/// What a lookup produced, before sizing.
#[derive(Debug)]
pub struct Answer {
    pub code: ResponseCode,
    pub answers: Vec<Entry>,
    pub authority: Vec<Record>,
    pub additional: Vec<Record>,
}

impl Answer {
    fn records(answers: Vec<Entry>) -> Answer {
        Answer {
            code: ResponseCode::NoError,
            answers,
            authority: Vec::new(),
            additional: Vec::new(),
        }
    }
}

/// The zone as one snapshot sees it.
pub struct Zone<'a> {
    pub config: &'a DnsConfig,
    pub datacenter: &'a str,
    pub tables: &'a Tables,
    pub health: &'a crate::state::health::HealthIndex,
    /// The definition another datacenter sent with a prepared query's lookup (its failover):
    /// answered in place of the query the name resolves to here.
    pub sent: Option<&'a PreparedQuery>,
}

fn seconds(duration: std::time::Duration) -> u32 {
    u32::try_from(duration.as_secs()).unwrap_or(u32::MAX)
}

/// `<label>.<label>...<domain>` as a name; `None` when a catalog name is not a valid DNS
/// label (such instances are left out, as Consul does).
fn name_in(labels: &[&str], domain: &str) -> Option<Name> {
    let mut text = String::with_capacity(64);
    for label in labels {
        text.push_str(label);
        text.push('.');
    }
    text.push_str(domain);
    Name::from_ascii(&text).ok()
}

/// Node meta as TXT strings (RFC 1464 `key=value`; keys prefixed `rfc1035-` give the value
/// alone).
fn meta_txt(name: &Name, ttl: u32, node: &Node) -> Vec<Record> {
    node.meta
        .iter()
        .map(|(key, value)| {
            let text = match key.strip_prefix("rfc1035-") {
                Some(_) => value.clone(),
                None => format!("{key}={value}"),
            };
            Record::from_rdata(name.clone(), ttl, RData::TXT(TXT::new(vec![text])))
        })
        .collect()
}

/// The records for one address: A or AAAA as the query type allows, or a CNAME when the
/// address is a hostname.
fn address_records(name: &Name, ttl: u32, address: &str, qtype: RecordType) -> Option<Record> {
    match address.parse::<IpAddr>() {
        Ok(IpAddr::V4(v4)) => matches!(qtype, RecordType::A | RecordType::ANY | RecordType::SRV)
            .then(|| Record::from_rdata(name.clone(), ttl, RData::A(A(v4)))),
        Ok(IpAddr::V6(v6)) => matches!(qtype, RecordType::AAAA | RecordType::ANY | RecordType::SRV)
            .then(|| Record::from_rdata(name.clone(), ttl, RData::AAAA(AAAA(v6)))),
        Err(_) => {
            let target = Name::from_ascii(address).ok()?;
            let target = if target.is_fqdn() {
                target
            } else {
                Name::from_ascii(format!("{address}.")).ok()?
            };
            matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY)
                .then(|| Record::from_rdata(name.clone(), ttl, RData::CNAME(CNAME(target))))
        }
    }
}

impl Zone<'_> {
    /// Answers one lookup. `qname` is the name as asked (answers carry it), `domain` the
    /// domain it was asked in.
    pub fn answer(&self, lookup: &Lookup, qname: &Name, qtype: RecordType, domain: &str) -> Answer {
        let answer = match lookup {
            Lookup::Apex => self.apex(qtype, domain),
            Lookup::Node { name } => self.node(name, qname, qtype),
            Lookup::Service { name, tag } => {
                let instances = self.healthy(self.tables.service_nodes(name), tag.as_deref());
                let ttl = seconds(self.config.service_ttl(name));
                self.instances(instances, ttl, qname, qtype, domain)
            }
            Lookup::Connect { name } => {
                let instances = self.healthy(self.tables.connect_nodes(name), None);
                let ttl = seconds(self.config.service_ttl(name));
                self.instances(instances, ttl, qname, qtype, domain)
            }
            Lookup::Query { name } => match self.sent {
                Some(query) => self.query(query, qname, qtype, domain),
                None => match query::resolve(self.tables, name) {
                    Ok(Some(query)) => self.query(&query, qname, qtype, domain),
                    Ok(None) | Err(_) => self.not_found(),
                },
            },
            Lookup::Addr { hex } => match hex_address(hex) {
                Some(address) => {
                    let ttl = seconds(self.config.node_ttl);
                    let rdata = match address {
                        IpAddr::V4(v4) => RData::A(A(v4)),
                        IpAddr::V6(v6) => RData::AAAA(AAAA(v6)),
                    };
                    Answer::records(vec![Entry {
                        record: Record::from_rdata(qname.clone(), ttl, rdata),
                        extra: Vec::new(),
                    }])
                }
                None => self.not_found(),
            },
            // Answered by the datacenter named (`respond` sends it there), never from here.
            Lookup::Invalid | Lookup::Elsewhere { .. } => self.not_found(),
        };
        self.with_soa(answer, domain)
    }

    fn query(
        &self,
        query: &PreparedQuery,
        qname: &Name,
        qtype: RecordType,
        domain: &str,
    ) -> Answer {
        let instances = query::instances(self.tables, query, false);
        // The query's own TTL, else the agent's for its service.
        let ttl = parse_go_duration(&query.dns_ttl)
            .unwrap_or_else(|_| self.config.service_ttl(&query.service.service));
        self.instances(instances, seconds(ttl), qname, qtype, domain)
    }

    fn not_found(&self) -> Answer {
        Answer {
            code: ResponseCode::NXDomain,
            ..Answer::records(Vec::new())
        }
    }

    /// NXDOMAIN and empty NOERROR answers carry the zone's SOA in the authority section.
    fn with_soa(&self, mut answer: Answer, domain: &str) -> Answer {
        if answer.answers.is_empty() && answer.authority.is_empty() {
            if let Some(soa) = self.soa(domain) {
                answer.authority.push(soa);
            }
        }
        answer
    }

    pub fn soa(&self, domain: &str) -> Option<Record> {
        let apex = Name::from_ascii(domain).ok()?;
        let serial = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_secs() as u32);
        let soa = &self.config.soa;
        let rdata = SOA::new(
            name_in(&["ns"], domain)?,
            name_in(&["hostmaster"], domain)?,
            serial,
            i32::try_from(soa.refresh).unwrap_or(i32::MAX),
            i32::try_from(soa.retry).unwrap_or(i32::MAX),
            i32::try_from(soa.expire).unwrap_or(i32::MAX),
            soa.min_ttl,
        );
        Some(Record::from_rdata(apex, soa.min_ttl, RData::SOA(rdata)))
    }

    /// The apex: SOA, and NS naming up to three servers (nodes running `consul`), each with its
    /// address as glue.
    fn apex(&self, qtype: RecordType, domain: &str) -> Answer {
        let Ok(apex) = Name::from_ascii(domain) else {
            return self.not_found();
        };
        let ttl = seconds(self.config.node_ttl);
        let mut servers: Vec<(&Node, &Service)> = self.tables.service_nodes("consul").collect();
        servers.shuffle(&mut rand::thread_rng());
        let mut ns = Vec::new();
        let mut glue = Vec::new();
        for (node, _) in servers.into_iter().take(3) {
            let Some(target) = name_in(&[&node.name, "node", self.datacenter], domain) else {
                continue;
            };
            ns.push(Record::from_rdata(
                apex.clone(),
                ttl,
                RData::NS(NS(target.clone())),
            ));
            glue.extend(address_records(
                &target,
                ttl,
                &node.address,
                RecordType::ANY,
            ));
        }
        let soa = self.soa(domain);
        let entries = |records: Vec<Record>| {
            records
                .into_iter()
                .map(|record| Entry {
                    record,
                    extra: Vec::new(),
                })
                .collect::<Vec<_>>()
        };
        match qtype {
            RecordType::SOA => Answer {
                code: ResponseCode::NoError,
                answers: entries(soa.into_iter().collect()),
                authority: ns,
                additional: glue,
            },
            RecordType::NS => Answer {
                additional: glue,
                ..Answer::records(entries(ns))
            },
            RecordType::ANY => Answer {
                additional: glue,
                ..Answer::records(entries(soa.into_iter().chain(ns).collect()))
            },
            _ => Answer::records(Vec::new()),
        }
    }

    fn node(&self, name: &str, qname: &Name, qtype: RecordType) -> Answer {
        let Some(node) = self.tables.node(name) else {
            return self.not_found();
        };
        let ttl = seconds(self.config.node_ttl);
        let mut answer = Answer::records(Vec::new());
        if !matches!(
            qtype,
            RecordType::A | RecordType::AAAA | RecordType::ANY | RecordType::TXT
        ) {
            return answer;
        }
        if let Some(record) = address_records(qname, ttl, &node.address, qtype) {
            answer.answers.push(Entry {
                record,
                extra: Vec::new(),
            });
        }
        let meta = meta_txt(qname, ttl, node);
        match qtype {
            RecordType::TXT | RecordType::ANY => {
                answer.answers.extend(meta.into_iter().map(|record| Entry {
                    record,
                    extra: Vec::new(),
                }))
            }
            _ if self.config.enable_additional_node_meta_txt => answer.additional.extend(meta),
            _ => {}
        }
        answer
    }

    /// The instances healthy enough to answer, carrying `tag` when one is asked for, with the
    /// health they count as (for SRV weights), in catalog order (`respond` shuffles each
    /// response and applies `a_record_limit`, since answers are cached per catalog version).
    fn healthy<'t>(
        &self,
        rows: impl Iterator<Item = (&'t Node, &'t Service)>,
        tag: Option<&str>,
    ) -> Vec<(&'t Node, &'t Service, HealthStatus)> {
        let instances: Vec<_> = rows
            .filter(|(_, service)| {
                tag.is_none_or(|tag| service.tags.iter().any(|t| t.eq_ignore_ascii_case(tag)))
            })
            .filter_map(|(node, service)| {
                let health = self.health.instance_health(&node.name, &service.id);
                crate::state::health::answers(health, self.config.only_passing)
                    .then_some((node, service, health))
            })
            .collect();
        instances
    }

    fn instances(
        &self,
        instances: Vec<(&Node, &Service, HealthStatus)>,
        ttl: u32,
        qname: &Name,
        qtype: RecordType,
        domain: &str,
    ) -> Answer {
        if instances.is_empty() {
            return self.not_found();
        }
        if qtype == RecordType::SRV {
            return Answer::records(self.srv_records(&instances, qname, ttl, domain));
        }
        let mut answers = Vec::new();
        let mut seen = HashSet::new();
        if matches!(qtype, RecordType::A | RecordType::AAAA | RecordType::ANY) {
            for (node, service, _) in &instances {
                let address = if service.address.is_empty() {
                    &node.address
                } else {
                    &service.address
                };
                if !seen.insert(address.as_str()) {
                    continue;
                }
                if let Some(record) = address_records(qname, ttl, address, qtype) {
                    answers.push(Entry {
                        record,
                        extra: Vec::new(),
                    });
                }
            }
        }
        if matches!(qtype, RecordType::TXT | RecordType::ANY) {
            let mut nodes_seen = HashSet::new();
            for (node, _, _) in &instances {
                if nodes_seen.insert(node.name.as_str()) {
                    answers.extend(meta_txt(qname, ttl, node).into_iter().map(|record| Entry {
                        record,
                        extra: Vec::new(),
                    }));
                }
            }
        }
        Answer::records(answers)
    }

    fn srv_records(
        &self,
        instances: &[(&Node, &Service, HealthStatus)],
        qname: &Name,
        ttl: u32,
        domain: &str,
    ) -> Vec<Entry> {
        let mut entries = Vec::with_capacity(instances.len());
        let mut seen = HashSet::new();
        for (node, service, health) in instances {
            let address = if service.address.is_empty() {
                node.address.as_str()
            } else {
                service.address.as_str()
            };
            if !seen.insert((node.name.as_str(), address, service.port)) {
                continue;
            }
            let weight = match health {
                HealthStatus::Warning => service.weights.warning,
                _ => service.weights.passing,
            };
            let weight = u16::try_from(weight).unwrap_or(u16::MAX);
            let mut extra = Vec::new();
            let target = if address == node.address {
                let Some(target) = name_in(&[&node.name, "node", self.datacenter], domain) else {
                    continue;
                };
                extra.extend(address_records(&target, ttl, address, RecordType::SRV));
                if self.config.enable_additional_node_meta_txt {
                    extra.extend(meta_txt(&target, ttl, node));
                }
                target
            } else if let Ok(ip) = address.parse::<IpAddr>() {
                let hex = address_hex(ip);
                let Some(target) = name_in(&[&hex, "addr", self.datacenter], domain) else {
                    continue;
                };
                extra.extend(address_records(&target, ttl, address, RecordType::SRV));
                target
            } else {
                // A hostname: the target is the name itself.
                let Ok(target) = Name::from_ascii(format!("{}.", address.trim_end_matches('.')))
                else {
                    continue;
                };
                target
            };
            entries.push(Entry {
                record: Record::from_rdata(
                    qname.clone(),
                    ttl,
                    RData::SRV(SRV::new(1, weight, service.port, target)),
                ),
                extra,
            });
        }
        entries
    }

    /// A reverse lookup: the node with that address, else a service instance with it as its
    /// own address. Answers always name the primary domain. `None` when nothing has it.
    pub fn reverse(&self, address: IpAddr, qname: &Name, qtype: RecordType) -> Option<Answer> {
        let domain = self.config.domain.as_str();
        let same = |text: &str| text.parse::<IpAddr>().is_ok_and(|parsed| parsed == address);
        let target = if let Some(node) = self.tables.nodes().find(|node| same(&node.address)) {
            name_in(&[&node.name, "node", self.datacenter], domain)?
        } else {
            let (_, service) = self
                .tables
                .all_services()
                .find(|(_, service)| same(&service.address))?;
            name_in(&[&service.name, "service"], domain)?
        };
        let answers = if matches!(qtype, RecordType::PTR | RecordType::ANY) {
            vec![Entry {
                record: Record::from_rdata(qname.clone(), 0, RData::PTR(PTR(target))),
                extra: Vec::new(),
            }]
        } else {
            Vec::new()
        };
        Some(self.with_soa(Answer::records(answers), domain))
    }
}
