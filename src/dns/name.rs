//! What a query name asks for: Consul's lookup forms, read right to left from the domain.
//! Pure string work, no records: `zone` turns a `Lookup` into answers.

/// One lookup inside the domain. Names keep the case they were asked in (catalog names are
/// case-sensitive); keywords (`service`, `node`, ...) match in any case.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Lookup {
    /// The domain itself: SOA and NS.
    Apex,
    /// `<node>.node[.<dc>]`
    Node { name: String },
    /// `[<tag>.]<service>.service[.<dc>]` and RFC 2782 `_<service>._<tag>[.service][.<dc>]`.
    Service { name: String, tag: Option<String> },
    /// `<service>.connect[.<dc>]`: the instances that take mesh traffic for the service.
    Connect { name: String },
    /// `<query>.query[.<dc>]`: a prepared query by ID or name.
    Query { name: String },
    /// `<hex>.addr[.<dc>]`
    Addr { hex: String },
    /// A name in the domain that no form matches: NXDOMAIN.
    Invalid,
    /// A name in another datacenter (`web.service.dc2.consul`): a server there answers it.
    Elsewhere { datacenter: String },
}

const KEYWORDS: [&str; 7] = [
    "service", "connect", "ingress", "virtual", "node", "query", "addr",
];

/// The part of `name` (ASCII, ending in a dot) before `domain` (lowercase, ending in a dot),
/// without the joining dot; `None` when `name` is not in the domain.
pub fn strip_domain<'a>(name: &'a str, domain: &str) -> Option<&'a str> {
    if name.len() < domain.len() {
        return None;
    }
    let split = name.len() - domain.len();
    let (head, tail) = name.split_at(split);
    if !tail.eq_ignore_ascii_case(domain) {
        return None;
    }
    if head.is_empty() {
        return Some("");
    }
    head.strip_suffix('.')
}

/// Reads the labels left of the domain. `srv` says whether the query type is SRV, for which
/// the `.service` label of the RFC 2782 form is optional.
pub fn parse(relative: &str, srv: bool, datacenter: &str) -> Lookup {
    if relative.is_empty() {
        return Lookup::Apex;
    }
    let labels: Vec<&str> = relative.split('.').collect();
    if labels.iter().any(|label| label.is_empty()) {
        return Lookup::Invalid;
    }
    let keyword_at = labels
        .iter()
        .rposition(|label| KEYWORDS.iter().any(|k| label.eq_ignore_ascii_case(k)));
    let (parts, keyword, trailing) = match keyword_at {
        Some(at) => (
            &labels[..at],
            labels[at].to_ascii_lowercase(),
            &labels[at + 1..],
        ),
        None if srv
            && labels.len() >= 2
            && labels[0].starts_with('_')
            && labels[1].starts_with('_') =>
        {
            (&labels[..2], "service".to_string(), &labels[2..])
        }
        None => return Lookup::Invalid,
    };
    // At most one datacenter label (or the newer `<dc>.dc`) between the keyword and the domain.
    let asked_datacenter = match trailing {
        [] => None,
        [dc] => Some(*dc),
        [dc, suffix] if suffix.eq_ignore_ascii_case("dc") => Some(*dc),
        _ => return Lookup::Invalid,
    };
    if let Some(other) = asked_datacenter.filter(|dc| !dc.eq_ignore_ascii_case(datacenter)) {
        return Lookup::Elsewhere {
            datacenter: other.to_ascii_lowercase(),
        };
    }
    if parts.is_empty() {
        return Lookup::Invalid;
    }
    match keyword.as_str() {
        "service" => match parts {
            [name] if !name.starts_with('_') => Lookup::Service {
                name: name.to_string(),
                tag: None,
            },
            [tag, name] if tag.starts_with('_') && name.starts_with('_') => {
                // RFC 2782: `_<service>._<protocol or tag>`; `_tcp` means any tag.
                let (name, tag) = (&tag[1..], &name[1..]);
                if name.is_empty() || tag.is_empty() {
                    return Lookup::Invalid;
                }
                Lookup::Service {
                    name: name.to_string(),
                    tag: (!tag.eq_ignore_ascii_case("tcp")).then(|| tag.to_string()),
                }
            }
            [tag, name] => Lookup::Service {
                name: name.to_string(),
                tag: Some(tag.to_string()),
            },
            _ => Lookup::Invalid,
        },
        "connect" => match parts {
            [name] => Lookup::Connect {
                name: name.to_string(),
            },
            _ => Lookup::Invalid,
        },
        "node" => Lookup::Node {
            name: parts.join("."),
        },
        "query" => Lookup::Query {
            name: parts.join("."),
        },
        "addr" => match parts {
            [hex] => Lookup::Addr {
                hex: hex.to_string(),
            },
            _ => Lookup::Invalid,
        },
        // Ingress gateways and virtual IPs are not modelled yet.
        _ => Lookup::Invalid,
    }
}

/// The address a reverse name (`4.3.2.1.in-addr.arpa.`, nibbles `.ip6.arpa.`) stands for.
pub fn reverse_address(name: &str) -> Option<std::net::IpAddr> {
    let lower = name.to_ascii_lowercase();
    if let Some(head) = lower.strip_suffix(".in-addr.arpa.") {
        let mut octets: Vec<u8> = head
            .split('.')
            .map(|label| label.parse::<u8>().ok())
            .collect::<Option<_>>()?;
        if octets.len() != 4 {
            return None;
        }
        octets.reverse();
        return Some(std::net::IpAddr::from([
            octets[0], octets[1], octets[2], octets[3],
        ]));
    }
    let head = lower.strip_suffix(".ip6.arpa.")?;
    let nibbles: Vec<u8> = head
        .split('.')
        .map(|label| {
            (label.len() == 1)
                .then(|| u8::from_str_radix(label, 16).ok())
                .flatten()
        })
        .collect::<Option<_>>()?;
    if nibbles.len() != 32 {
        return None;
    }
    let mut bytes = [0u8; 16];
    for (index, pair) in nibbles.rchunks(2).enumerate() {
        // Reversed order: the last label is the most significant nibble.
        bytes[index] = (pair[1] << 4) | pair[0];
    }
    Some(std::net::IpAddr::from(bytes))
}

/// `<hex>.addr` back to an address: 8 hex digits are IPv4, 32 are IPv6.
pub fn hex_address(hex: &str) -> Option<std::net::IpAddr> {
    let bytes: Vec<u8> = (0..hex.len())
        .step_by(2)
        .map(|at| u8::from_str_radix(hex.get(at..at + 2)?, 16).ok())
        .collect::<Option<_>>()?;
    match bytes.len() {
        4 if hex.len() == 8 => Some(std::net::IpAddr::from([
            bytes[0], bytes[1], bytes[2], bytes[3],
        ])),
        16 if hex.len() == 32 => {
            let octets: [u8; 16] = bytes.try_into().ok()?;
            Some(std::net::IpAddr::from(octets))
        }
        _ => None,
    }
}

/// An address as the `<hex>.addr` label Consul writes for SRV targets.
pub fn address_hex(address: std::net::IpAddr) -> String {
    let bytes = match address {
        std::net::IpAddr::V4(v4) => v4.octets().to_vec(),
        std::net::IpAddr::V6(v6) => v6.octets().to_vec(),
    };
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn service(name: &str, tag: Option<&str>) -> Lookup {
        Lookup::Service {
            name: name.into(),
            tag: tag.map(str::to_string),
        }
    }

    #[test]
    fn every_form_parses() {
        let dc = "dc1";
        assert_eq!(parse("", false, dc), Lookup::Apex);
        assert_eq!(parse("web.service", false, dc), service("web", None));
        assert_eq!(parse("web.service.dc1", false, dc), service("web", None));
        assert_eq!(parse("web.service.dc1.dc", false, dc), service("web", None));
        assert_eq!(
            parse("rails.web.service", false, dc),
            service("web", Some("rails"))
        );
        assert_eq!(
            parse("_web._rails.service", false, dc),
            service("web", Some("rails"))
        );
        assert_eq!(parse("_web._tcp.service", false, dc), service("web", None));
        assert_eq!(parse("_web._tcp", true, dc), service("web", None));
        assert_eq!(parse("_web._tcp.dc1", true, dc), service("web", None));
        assert_eq!(parse("_web._tcp", false, dc), Lookup::Invalid);
        assert_eq!(
            parse("Alpha.NODE", false, dc),
            Lookup::Node {
                name: "Alpha".into()
            }
        );
        assert_eq!(
            parse("web.connect", false, dc),
            Lookup::Connect { name: "web".into() }
        );
        assert_eq!(
            parse("q1.query", false, dc),
            Lookup::Query { name: "q1".into() }
        );
        assert_eq!(
            parse("7f000001.addr.dc1", false, dc),
            Lookup::Addr {
                hex: "7f000001".into()
            }
        );
    }

    #[test]
    fn other_datacenters_extra_labels_and_unknown_forms_are_invalid() {
        let dc = "dc1";
        assert_eq!(
            parse("web.service.dc2", false, dc),
            Lookup::Elsewhere {
                datacenter: "dc2".into()
            }
        );
        assert_eq!(parse("web.service.a.b", false, dc), Lookup::Invalid);
        assert_eq!(parse("a.b.web.service", false, dc), Lookup::Invalid);
        assert_eq!(parse("service", false, dc), Lookup::Invalid);
        assert_eq!(parse("nothing", false, dc), Lookup::Invalid);
        assert_eq!(parse("web.ingress", false, dc), Lookup::Invalid);
    }

    #[test]
    fn domains_strip_case_insensitively_at_a_label_boundary() {
        assert_eq!(
            strip_domain("web.service.CONSUL.", "consul."),
            Some("web.service")
        );
        assert_eq!(strip_domain("consul.", "consul."), Some(""));
        assert_eq!(strip_domain("notconsul.", "consul."), None);
        assert_eq!(strip_domain("example.com.", "consul."), None);
    }

    #[test]
    fn reverse_and_hex_addresses_round_trip() {
        assert_eq!(
            reverse_address("4.3.2.10.in-addr.arpa."),
            Some("10.2.3.4".parse().unwrap())
        );
        let v6: std::net::IpAddr = "2001:db8::1".parse().unwrap();
        let nibbles: Vec<String> = address_hex(v6)
            .chars()
            .rev()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            reverse_address(&format!("{}.ip6.arpa.", nibbles.join("."))),
            Some(v6)
        );
        assert_eq!(reverse_address("1.2.3.in-addr.arpa."), None);
        assert_eq!(hex_address("0a020304"), Some("10.2.3.4".parse().unwrap()));
        assert_eq!(hex_address(&address_hex(v6)), Some(v6));
        assert_eq!(hex_address("xyz"), None);
        assert_eq!(hex_address("0a0203"), None);
    }
}
