//! Encodes a response message to wire format, for the record types the zone produces.
//!
//! hickory-proto's encoder finds compression targets by scanning every name suffix it has
//! written so far, for every name it writes. For a 1,000-instance SRV answer (about 2,000
//! names) that was half of the agent's CPU, and a 6 ms answer. Here every suffix written goes
//! into a hash table (keyed by a hash of its lowercased wire form, each hit checked against
//! the bytes it points to), so each name costs one lookup per label. A message holding a record type this module does not know returns `None`, and the
//! caller falls back to hickory's encoder.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use hickory_proto::op::{Edns, Message, Query};
use hickory_proto::rr::{Name, RData, Record, RecordType};

/// Compression pointers hold 14-bit offsets.
const MAX_POINTER: usize = 0x3FFF;

/// The suffix table's keys are already hashes (FNV-1a of the lowercased suffix, its labels
/// taken from the last to the first), only mixed here.
#[derive(Default)]
struct IdentityHasher(u64);

impl Hasher for IdentityHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.0 = (self.0 << 8) | u64::from(*byte);
        }
    }
    /// FNV-1a's low bits depend only on the inputs' low bits, and the table picks buckets by
    /// the low bits: names that differ in a digit would pile into a few buckets. A finalizer
    /// (MurmurHash3's fmix64) spreads every input bit over the word first.
    fn write_u64(&mut self, value: u64) {
        let mut hash = value;
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
        hash ^= hash >> 33;
        hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        hash ^= hash >> 33;
        self.0 = hash;
    }
}

struct Encoder {
    bytes: Vec<u8>,
    /// Hash of a lowercased name suffix -> where it was written. A hit is checked against
    /// the bytes written there, so a hash collision only costs a missed compression.
    suffixes: HashMap<u64, u16, BuildHasherDefault<IdentityHasher>>,
    /// Scratch for one name: its lowercased wire form, where each label starts in it, and
    /// the hash of the suffix from each label on.
    folded: Vec<u8>,
    starts: Vec<usize>,
    hashes: Vec<u64>,
}

/// The wire form of `message`, or `None` when it holds a record type not handled here.
pub fn encode(message: &Message) -> Option<Vec<u8>> {
    encode_with(message, &[], &[], &[])
}

/// The wire form of `message` with `answers`, `authority` and `additional` after its own
/// records in each section: a response can be encoded from records it only borrows.
pub fn encode_with(
    message: &Message,
    answers: &[&Record],
    authority: &[&Record],
    additional: &[&Record],
) -> Option<Vec<u8>> {
    let answers: Vec<&Record> = message
        .answers()
        .iter()
        .chain(answers.iter().copied())
        .collect();
    let authority: Vec<&Record> = message
        .name_servers()
        .iter()
        .chain(authority.iter().copied())
        .collect();
    let additional: Vec<&Record> = message
        .additionals()
        .iter()
        .chain(additional.iter().copied())
        .collect();
    let records = answers.len() + authority.len() + additional.len();
    let mut encoder = Encoder {
        bytes: Vec::with_capacity(512.max(records * 32)),
        suffixes: HashMap::with_capacity_and_hasher(records * 2 + 8, Default::default()),
        folded: Vec::with_capacity(64),
        starts: Vec::with_capacity(8),
        hashes: Vec::with_capacity(8),
    };
    encoder.header(
        message,
        [
            message.queries().len(),
            answers.len(),
            authority.len(),
            additional.len() + usize::from(message.extensions().is_some()),
        ],
    );
    for query in message.queries() {
        encoder.query(query);
    }
    for record in answers.iter().chain(&authority).chain(&additional) {
        encoder.record(record)?;
    }
    if let Some(edns) = message.extensions() {
        encoder.opt(edns);
    }
    Some(encoder.bytes)
}

fn count(n: usize) -> [u8; 2] {
    u16::try_from(n).unwrap_or(u16::MAX).to_be_bytes()
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a over `bytes`, continuing from `hash`.
fn extend_hash(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, byte| {
        (hash ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Encoder {
    fn header(&mut self, message: &Message, counts: [usize; 4]) {
        let header = message.header();
        let mut flags = 0u16;
        if header.message_type() == hickory_proto::op::MessageType::Response {
            flags |= 0x8000;
        }
        flags |= u16::from(u8::from(header.op_code()) & 0x0F) << 11;
        for (set, bit) in [
            (header.authoritative(), 0x0400),
            (header.truncated(), 0x0200),
            (header.recursion_desired(), 0x0100),
            (header.recursion_available(), 0x0080),
            (header.authentic_data(), 0x0020),
            (header.checking_disabled(), 0x0010),
        ] {
            if set {
                flags |= bit;
            }
        }
        flags |= u16::from(header.response_code().low());
        self.bytes.extend_from_slice(&header.id().to_be_bytes());
        self.bytes.extend_from_slice(&flags.to_be_bytes());
        for n in counts {
            self.bytes.extend_from_slice(&count(n));
        }
    }

    fn query(&mut self, query: &Query) {
        self.name(query.name(), true);
        self.bytes
            .extend_from_slice(&u16::from(query.query_type()).to_be_bytes());
        self.bytes
            .extend_from_slice(&u16::from(query.query_class()).to_be_bytes());
    }

    /// Whether the name written at `offset` (following pointers) is `folded`, the lowercased
    /// wire form of a suffix without its terminating zero.
    fn written_at(&self, mut offset: usize, folded: &[u8]) -> bool {
        let mut at = 0;
        // Every pointer goes backwards, so this ends; the bound is belt and braces.
        for _ in 0..128 {
            let Some(&length) = self.bytes.get(offset) else {
                return false;
            };
            if length & 0xC0 == 0xC0 {
                let Some(&low) = self.bytes.get(offset + 1) else {
                    return false;
                };
                offset = (usize::from(length & 0x3F) << 8) | usize::from(low);
                continue;
            }
            if length == 0 {
                return at == folded.len();
            }
            let length = usize::from(length);
            let Some(label) = self.bytes.get(offset + 1..offset + 1 + length) else {
                return false;
            };
            let Some(expected) = folded.get(at..at + 1 + length) else {
                return false;
            };
            if usize::from(expected[0]) != length
                || !label
                    .iter()
                    .zip(&expected[1..])
                    .all(|(byte, want)| byte.to_ascii_lowercase() == *want)
            {
                return false;
            }
            at += 1 + length;
            offset += 1 + length;
        }
        false
    }

    /// Writes `name`, ending in a pointer to an earlier copy of its longest known suffix when
    /// `compress`; every suffix written becomes a target for later names either way.
    fn name(&mut self, name: &Name, compress: bool) {
        let mut folded = std::mem::take(&mut self.folded);
        let mut starts = std::mem::take(&mut self.starts);
        let mut hashes = std::mem::take(&mut self.hashes);
        folded.clear();
        starts.clear();
        for label in name.iter() {
            starts.push(folded.len());
            folded.push(label.len() as u8);
            folded.extend(label.iter().map(u8::to_ascii_lowercase));
        }
        // Each suffix's hash extends the next shorter one's: one pass over the name's bytes.
        hashes.clear();
        hashes.resize(starts.len(), 0);
        let mut end = folded.len();
        let mut shorter = FNV_OFFSET;
        for (index, start) in starts.iter().enumerate().rev() {
            shorter = extend_hash(shorter, &folded[*start..end]);
            hashes[index] = shorter;
            end = *start;
        }
        let known = if compress {
            starts
                .iter()
                .zip(&hashes)
                .enumerate()
                .find_map(|(index, (start, hash))| {
                    let offset = *self.suffixes.get(hash)?;
                    self.written_at(usize::from(offset), &folded[*start..])
                        .then_some((index, offset))
                })
        } else {
            None
        };
        let written = known.map_or(starts.len(), |(index, _)| index);
        for (label, hash) in name.iter().zip(&hashes).take(written) {
            let offset = self.bytes.len();
            if offset <= MAX_POINTER {
                self.suffixes.entry(*hash).or_insert(offset as u16);
            }
            self.bytes.push(label.len() as u8);
            self.bytes.extend_from_slice(label);
        }
        match known {
            Some((_, pointer)) => self
                .bytes
                .extend_from_slice(&(0xC000 | pointer).to_be_bytes()),
            None => self.bytes.push(0),
        }
        self.folded = folded;
        self.starts = starts;
        self.hashes = hashes;
    }

    fn record(&mut self, record: &Record) -> Option<()> {
        self.name(record.name(), true);
        self.bytes
            .extend_from_slice(&u16::from(record.record_type()).to_be_bytes());
        self.bytes
            .extend_from_slice(&u16::from(record.dns_class()).to_be_bytes());
        self.bytes.extend_from_slice(&record.ttl().to_be_bytes());
        let length_at = self.bytes.len();
        self.bytes.extend_from_slice(&[0, 0]);
        match record.data() {
            RData::A(a) => self.bytes.extend_from_slice(&a.0.octets()),
            RData::AAAA(aaaa) => self.bytes.extend_from_slice(&aaaa.0.octets()),
            RData::CNAME(name) => self.name(&name.0, true),
            RData::NS(name) => self.name(&name.0, true),
            RData::PTR(name) => self.name(&name.0, true),
            RData::SOA(soa) => {
                self.name(soa.mname(), true);
                self.name(soa.rname(), true);
                for value in [
                    soa.serial(),
                    soa.refresh() as u32,
                    soa.retry() as u32,
                    soa.expire() as u32,
                    soa.minimum(),
                ] {
                    self.bytes.extend_from_slice(&value.to_be_bytes());
                }
            }
            RData::SRV(srv) => {
                for value in [srv.priority(), srv.weight(), srv.port()] {
                    self.bytes.extend_from_slice(&value.to_be_bytes());
                }
                // RFC 2782: the target is not compressed (later names may point into it).
                self.name(srv.target(), false);
            }
            RData::TXT(txt) => {
                for text in txt.txt_data() {
                    for chunk in text.chunks(255) {
                        self.bytes.push(chunk.len() as u8);
                        self.bytes.extend_from_slice(chunk);
                    }
                    if text.is_empty() {
                        self.bytes.push(0);
                    }
                }
            }
            _ => return None,
        }
        let length = u16::try_from(self.bytes.len() - length_at - 2).ok()?;
        self.bytes[length_at..length_at + 2].copy_from_slice(&length.to_be_bytes());
        Some(())
    }

    /// The OPT pseudo-record: the root name, the payload size as its class, the extended
    /// code, version and DO flag as its TTL, no options.
    fn opt(&mut self, edns: &Edns) {
        self.bytes.push(0);
        self.bytes
            .extend_from_slice(&u16::from(RecordType::OPT).to_be_bytes());
        self.bytes
            .extend_from_slice(&edns.max_payload().to_be_bytes());
        let mut ttl = (u32::from(edns.rcode_high()) << 24) | (u32::from(edns.version()) << 16);
        if edns.flags().dnssec_ok {
            ttl |= 0x8000;
        }
        self.bytes.extend_from_slice(&ttl.to_be_bytes());
        self.bytes.extend_from_slice(&[0, 0]);
    }
}

#[cfg(test)]
mod tests {
    use std::net::Ipv4Addr;
    use std::str::FromStr;

    use hickory_proto::op::{MessageType, ResponseCode};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};

    use super::*;

    fn name(text: &str) -> Name {
        Name::from_str(text).unwrap()
    }

    /// A response with every record type the zone produces, many names sharing suffixes,
    /// mixed case, and EDNS.
    fn sample() -> Message {
        let mut message = Message::new();
        message
            .set_id(4242)
            .set_message_type(MessageType::Response)
            .set_authoritative(true)
            .set_recursion_desired(true)
            .set_response_code(ResponseCode::NXDomain);
        message.add_query(Query::query(name("Web.Service.consul."), RecordType::SRV));
        for n in 0..50u16 {
            let target = name(&format!("node-{n}.node.dc1.consul."));
            message.add_answer(Record::from_rdata(
                name("web.service.consul."),
                30,
                RData::SRV(SRV::new(1, n, 8000 + n, target.clone())),
            ));
            message.add_additional(Record::from_rdata(
                target,
                30,
                RData::A(A(Ipv4Addr::new(10, 0, (n / 250) as u8, n as u8))),
            ));
        }
        message.add_answer(Record::from_rdata(
            name("x.consul."),
            5,
            RData::AAAA(AAAA("2001:db8::1".parse().unwrap())),
        ));
        message.add_answer(Record::from_rdata(
            name("alias.consul."),
            5,
            RData::CNAME(CNAME(name("db.example.com."))),
        ));
        message.add_answer(Record::from_rdata(
            name("1.0.0.10.in-addr.arpa."),
            0,
            RData::PTR(PTR(name("node-1.node.dc1.consul."))),
        ));
        message.add_answer(Record::from_rdata(
            name("node-1.node.dc1.consul."),
            0,
            RData::TXT(TXT::new(vec![
                "rack=r1".into(),
                String::new(),
                "x".repeat(200),
            ])),
        ));
        message.add_name_server(Record::from_rdata(
            name("consul."),
            0,
            RData::SOA(SOA::new(
                name("ns.consul."),
                name("hostmaster.consul."),
                7,
                3600,
                600,
                86400,
                0,
            )),
        ));
        message.add_name_server(Record::from_rdata(
            name("consul."),
            0,
            RData::NS(NS(name("server.node.dc1.consul."))),
        ));
        let mut edns = Edns::new();
        edns.set_max_payload(1232);
        message.set_edns(edns);
        message
    }

    #[test]
    fn decodes_to_the_same_message_and_is_no_larger_than_hickorys_encoding() {
        let message = sample();
        let ours = encode(&message).expect("every record type is handled");
        let theirs = message.to_vec().unwrap();
        let decoded = Message::from_vec(&ours).expect("our encoding decodes");
        let expected = Message::from_vec(&theirs).unwrap();
        assert_eq!(decoded.header(), expected.header());
        assert_eq!(decoded.queries(), expected.queries());
        assert_eq!(decoded.answers(), expected.answers());
        assert_eq!(decoded.name_servers(), expected.name_servers());
        assert_eq!(decoded.additionals(), expected.additionals());
        assert_eq!(decoded.extensions(), expected.extensions());
        assert_eq!(decoded.answers().len(), 54);
        assert!(
            ours.len() <= theirs.len(),
            "{} > {}",
            ours.len(),
            theirs.len()
        );
    }

    #[test]
    fn a_repeated_name_costs_two_bytes() {
        let mut message = Message::new();
        message.add_query(Query::query(name("web.service.consul."), RecordType::A));
        message.add_answer(Record::from_rdata(
            name("WEB.service.consul."),
            0,
            RData::A(A(Ipv4Addr::LOCALHOST)),
        ));
        let bytes = encode(&message).unwrap();
        // Header, the question (20-byte name + 4), then the answer's owner as one pointer.
        let answer = 12 + 20 + 4;
        assert_eq!(&bytes[answer..answer + 2], &[0xC0, 12]);
        assert_eq!(bytes.len(), answer + 2 + 10 + 4);
    }
}
