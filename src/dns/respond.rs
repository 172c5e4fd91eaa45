//! One query in, one response out, without I/O: decode (FORMERR for what does not parse,
//! silence for what is not a query), route the name (the domain, the alt domain, reverse
//! names, or the recursors), then size the response as Consul does: UDP without EDNS keeps
//! `udp_answer_limit` answers and 512 bytes, EDNS raises the byte limit to the client's
//! buffer, TCP allows 64 KiB; trimmed responses set TC only when `enable_truncate` is on.

use hickory_proto::op::{Edns, Message, MessageType, OpCode, Query, ResponseCode};
use std::sync::Arc;

use hickory_proto::rr::{Record, RecordType};
use rand::seq::SliceRandom;

use super::name::{parse, reverse_address, strip_domain, Lookup};
use super::zone::{Answer, Entry, Zone};
use super::Context;
use crate::state::query as queries;
use crate::types::query::PreparedQuery;

/// The classic DNS message limit over UDP without EDNS (RFC 1035 4.2.1).
pub const UDP_DEFAULT_SIZE: usize = 512;
/// The largest message a TCP length prefix can carry.
pub const TCP_MAX_SIZE: usize = 65535;
/// The smallest answer record: a compressed name pointer, the fixed fields and an IPv4
/// address. Bounds how many answers can possibly fit before any encoding.
const MIN_RECORD_BYTES: usize = 16;
/// Consul's caps on TCP answers (more cannot fit in 64 KiB anyway).
const TCP_MAX_ANSWERS: usize = 4096;
const TCP_MAX_SRV_ANSWERS: usize = 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

/// What to do with one datagram or TCP message.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Reply(Vec<u8>),
    /// Not ours: ask the recursors; `failed` is the SERVFAIL to send if every one fails.
    Recurse {
        failed: Vec<u8>,
    },
    /// Not a query (too short for a header, or a response): say nothing, so the server can
    /// never be used to reflect traffic.
    Drop,
    /// A name in another datacenter: send the query to a server there and relay its answer.
    /// `unknown` is the NXDOMAIN to send when no server of it is known (Consul's answer to
    /// `ErrNoDCPath`), `failed` the SERVFAIL when none answers.
    Elsewhere {
        datacenter: String,
        unknown: Vec<u8>,
        failed: Vec<u8>,
    },
    /// A prepared query with no instance here that fails over: ask the datacenters it names
    /// (`rpc::federation`), and send `local`, this datacenter's answer, when none has one.
    Failover {
        query: Box<PreparedQuery>,
        local: Vec<u8>,
    },
}

/// A FORMERR for bytes that carry a header but do not decode: the id and opcode are echoed,
/// there is no question section.
fn format_error(bytes: &[u8]) -> Outcome {
    if bytes.len() < 12 || bytes[2] & 0x80 != 0 {
        return Outcome::Drop;
    }
    let mut reply = vec![0u8; 12];
    reply[0] = bytes[0];
    reply[1] = bytes[1];
    // QR, the request's opcode and RD.
    reply[2] = 0x80 | (bytes[2] & 0x79);
    reply[3] = ResponseCode::FormErr.low();
    Outcome::Reply(reply)
}

fn response_to(request: &Message, code: ResponseCode, recursion_available: bool) -> Message {
    let mut response = Message::new();
    response
        .set_id(request.id())
        .set_message_type(MessageType::Response)
        .set_op_code(request.op_code())
        .set_recursion_desired(request.recursion_desired())
        .set_recursion_available(recursion_available)
        .set_response_code(code);
    if let Some(query) = request.queries().first() {
        response.add_query(query.clone());
    }
    if let Some(edns) = request.extensions() {
        response.set_edns(reply_edns(edns));
    }
    response
}

/// The OPT record of a response: the client's buffer size echoed, as Consul does.
fn reply_edns(request: &Edns) -> Edns {
    let mut edns = Edns::new();
    edns.set_max_payload(request.max_payload().max(UDP_DEFAULT_SIZE as u16));
    edns.set_version(0);
    edns
}

fn encode(message: &Message) -> Vec<u8> {
    // Our encoder handles every record type the zone produces; hickory's is the fallback.
    // Encoding records we built ourselves only fails on names or data too large for the
    // format, which the zone never produces; an empty reply would be dropped by the client.
    super::wire::encode(message)
        .or_else(|| message.to_vec().ok())
        .unwrap_or_default()
}

fn zone_of<'a>(
    cx: &'a Context,
    tables: &'a crate::state::Tables,
    health: &'a crate::state::health::HealthIndex,
) -> Zone<'a> {
    Zone {
        config: &cx.config,
        datacenter: &cx.datacenter,
        tables,
        health,
        sent: None,
    }
}

/// Answers one raw DNS message.
pub fn respond(cx: &Context, bytes: &[u8], transport: Transport) -> Outcome {
    respond_to(cx, bytes, transport, None)
}

/// Answers a prepared query's lookup that another datacenter sent with the query's
/// definition (its failover), running that definition against this datacenter's catalog.
pub fn respond_sent(
    cx: &Context,
    bytes: &[u8],
    transport: Transport,
    query: &PreparedQuery,
) -> Outcome {
    respond_to(cx, bytes, transport, Some(query))
}

fn respond_to(
    cx: &Context,
    bytes: &[u8],
    transport: Transport,
    sent: Option<&PreparedQuery>,
) -> Outcome {
    if bytes.len() < 12 {
        return Outcome::Drop;
    }
    let request = match Message::from_vec(bytes) {
        Ok(request) => request,
        Err(_) => return format_error(bytes),
    };
    if request.message_type() != MessageType::Query {
        return Outcome::Drop;
    }
    let recursion = !cx.config.recursors.is_empty();
    let reply = |code| Outcome::Reply(encode(&response_to(&request, code, recursion)));
    if request.op_code() != OpCode::Query {
        return reply(ResponseCode::NotImp);
    }
    let [query] = request.queries() else {
        return reply(ResponseCode::FormErr);
    };
    let qtype = query.query_type();
    if matches!(qtype, RecordType::AXFR | RecordType::IXFR) {
        return reply(ResponseCode::NotImp);
    }
    let qname = query.name().to_ascii();
    let domains = std::iter::once(cx.config.domain.as_str()).chain(cx.config.alt_domain.as_deref());
    let mut routed = None;
    for domain in domains {
        if let Some(relative) = strip_domain(&qname, domain) {
            routed = Some((relative, domain));
            break;
        }
    }
    let recurse = || {
        if recursion {
            Outcome::Recurse {
                failed: encode(&response_to(&request, ResponseCode::ServFail, true)),
            }
        } else {
            reply(ResponseCode::Refused)
        }
    };
    let started = std::time::Instant::now();
    let tables = cx.cluster.snapshot();
    let answer = if let Some((relative, domain)) = routed {
        if !cx.readable() {
            return reply(ResponseCode::ServFail);
        }
        let parsed = || parse(relative, qtype == RecordType::SRV, &cx.datacenter);
        let (lookup, answer) = match sent {
            // A sent definition is answered afresh, never from or into the cache.
            Some(sent) => {
                let lookup = Arc::new(parsed());
                let health = cx.health(&tables);
                let zone = Zone {
                    sent: Some(sent),
                    ..zone_of(cx, &tables, &health)
                };
                let answer = zone.answer(&lookup, query.name(), qtype, domain);
                (lookup, Arc::new(answer))
            }
            None => {
                let key = (qname.clone(), u16::from(qtype), domain.to_string());
                cx.answer(&tables, key, parsed, |lookup, health| {
                    zone_of(cx, &tables, health).answer(lookup, query.name(), qtype, domain)
                })
            }
        };
        cx.domain_query.record(crate::telemetry::ms_since(started));
        if let Lookup::Elsewhere { datacenter } = &*lookup {
            // The zone's answer to such a name is NXDOMAIN with the SOA.
            return Outcome::Elsewhere {
                datacenter: datacenter.clone(),
                unknown: sized(cx, &request, query, &answer, transport),
                failed: encode(&response_to(&request, ResponseCode::ServFail, recursion)),
            };
        }
        if cx.permits(&lookup) {
            if let Some(definition) = failing_over(&tables, &lookup, &answer, sent) {
                return Outcome::Failover {
                    query: Box::new(definition),
                    local: sized(cx, &request, query, &answer, transport),
                };
            }
            answer
        } else {
            // What a name that does not exist gets, never a cached answer for the name.
            let health = cx.health(&tables);
            Arc::new(zone_of(cx, &tables, &health).answer(
                &Lookup::Invalid,
                query.name(),
                qtype,
                domain,
            ))
        }
    } else if let Some(address) = reverse_address(&qname) {
        if !cx.readable() {
            return reply(ResponseCode::ServFail);
        }
        let health = cx.health(&tables);
        let zone = zone_of(cx, &tables, &health);
        let reversed = zone.reverse(address, query.name(), qtype);
        cx.ptr_query.record(crate::telemetry::ms_since(started));
        match reversed {
            Some(answer) => Arc::new(answer),
            None if recursion => return recurse(),
            None => Arc::new(Answer {
                code: ResponseCode::NXDomain,
                answers: Vec::new(),
                authority: zone.soa(&cx.config.domain).into_iter().collect(),
                additional: Vec::new(),
            }),
        }
    } else {
        return recurse();
    };
    Outcome::Reply(sized(cx, &request, query, &answer, transport))
}

/// The prepared query to run in other datacenters when a lookup of it found no instance
/// here and it names somewhere to fail over to (never for a definition another datacenter
/// sent, which fails over only from where it was asked).
fn failing_over(
    tables: &crate::state::Tables,
    lookup: &Lookup,
    answer: &Answer,
    sent: Option<&PreparedQuery>,
) -> Option<PreparedQuery> {
    let Lookup::Query { name } = lookup else {
        return None;
    };
    if sent.is_some() || !answer.answers.is_empty() {
        return None;
    }
    let query = queries::resolve(tables, name).ok()??;
    (queries::fails_over(&query) && queries::instances(tables, &query, false).is_empty())
        .then_some(query)
}

/// The order one response lists the answers in: shuffled (Consul's per-response random
/// order), keeping at most `a_record_limit` address records when that limit is set.
fn response_order(cx: &Context, answers: &[Entry]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..answers.len()).collect();
    order.shuffle(&mut rand::thread_rng());
    let limit = cx.config.a_record_limit;
    if limit > 0 {
        let mut addresses = 0;
        order.retain(|index| {
            let is_address = matches!(
                answers[*index].record.record_type(),
                RecordType::A | RecordType::AAAA
            );
            addresses += usize::from(is_address);
            !is_address || addresses <= limit
        });
    }
    order
}

/// Encodes the answer within the transport's size, trimming answers (and their additional
/// records) as Consul does.
fn sized(
    cx: &Context,
    request: &Message,
    query: &Query,
    answer: &Answer,
    transport: Transport,
) -> Vec<u8> {
    let mut order = response_order(cx, &answer.answers);
    let mut authority = answer.authority.as_slice();
    let max_size = match transport {
        Transport::Tcp => TCP_MAX_SIZE,
        Transport::Udp => request
            .extensions()
            .as_ref()
            .map_or(UDP_DEFAULT_SIZE, |edns| usize::from(edns.max_payload()))
            .max(UDP_DEFAULT_SIZE),
    };
    let total = order.len();
    let mut cap = match transport {
        Transport::Udp if max_size == UDP_DEFAULT_SIZE => cx.config.udp_answer_limit,
        Transport::Udp => usize::MAX,
        Transport::Tcp if query.query_type() == RecordType::SRV => TCP_MAX_SRV_ANSWERS,
        Transport::Tcp => TCP_MAX_ANSWERS,
    };
    cap = cap.min(max_size / MIN_RECORD_BYTES).max(1);
    order.truncate(cap);
    let recursion = !cx.config.recursors.is_empty();
    let message = {
        let mut message = response_to(request, answer.code, recursion);
        message.set_authoritative(true);
        message
    };
    let build = |order: &[usize], authority: &[Record]| {
        let entries = || order.iter().map(|index| &answer.answers[*index]);
        let answers: Vec<&Record> = entries().map(|entry| &entry.record).collect();
        let authority: Vec<&Record> = authority.iter().collect();
        let additional: Vec<&Record> = answer
            .additional
            .iter()
            .chain(entries().flat_map(|entry| entry.extra.iter()))
            .collect();
        super::wire::encode_with(&message, &answers, &authority, &additional).unwrap_or_else(|| {
            // A record type our encoder does not know: hickory encodes the owned copies.
            let mut message = message.clone();
            message.add_answers(answers.into_iter().cloned());
            message.add_name_servers(authority.into_iter().cloned());
            message.add_additionals(additional.into_iter().cloned());
            message.to_vec().unwrap_or_default()
        })
    };
    let mut bytes = build(&order, authority);
    if bytes.len() > max_size && order.len() > 1 {
        authority = &[];
        // The largest answer count that fits: `low` always fits (or is 1), `high` never does.
        let (mut low, mut high) = (1, order.len());
        while high - low > 1 {
            let middle = low + (high - low) / 2;
            if build(&order[..middle], authority).len() <= max_size {
                low = middle;
            } else {
                high = middle;
            }
        }
        order.truncate(low);
        bytes = build(&order, authority);
    }
    let trimmed = order.len() < total;
    if trimmed && cx.config.enable_truncate {
        // The TC bit is the third byte's second-lowest bit.
        if let Some(flags) = bytes.get_mut(2) {
            *flags |= 0x02;
        }
    }
    bytes
}

#[cfg(test)]
mod tests;
