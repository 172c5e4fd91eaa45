//! The DNS interface's validated configuration: domains, listen addresses, recursors and
//! Consul's `dns_config` block (TTLs, answer limits, truncation, health filtering).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use serde::Serialize;

use super::raw::RawConfig;
use super::{duration, parse_ip, serialize_duration};

/// Consul's hard cap on answers in a UDP response without EDNS.
pub const MAX_UDP_ANSWER_LIMIT: usize = 8;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum RecursorStrategy {
    Sequential,
    Random,
}

/// The SOA record's timers (`dns_config.soa`), in seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SoaConfig {
    pub refresh: u32,
    pub retry: u32,
    pub expire: u32,
    pub min_ttl: u32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct DnsConfig {
    /// Lowercase, fully qualified (`consul.`).
    pub domain: String,
    pub alt_domain: Option<String>,
    /// Where the DNS listeners bind (`addresses.dns`, else `client_addr`).
    pub addresses: Vec<IpAddr>,
    pub recursors: Vec<SocketAddr>,
    pub recursor_strategy: RecursorStrategy,
    #[serde(serialize_with = "serialize_duration")]
    pub recursor_timeout: Duration,
    pub allow_stale: bool,
    #[serde(serialize_with = "serialize_duration")]
    pub max_stale: Duration,
    #[serde(serialize_with = "serialize_duration")]
    pub node_ttl: Duration,
    /// Keys as written: an exact service name, `prefix*`, or `*`.
    #[serde(serialize_with = "serialize_ttls")]
    pub service_ttl: BTreeMap<String, Duration>,
    pub udp_answer_limit: usize,
    /// 0: unlimited.
    pub a_record_limit: usize,
    pub enable_truncate: bool,
    pub only_passing: bool,
    pub enable_additional_node_meta_txt: bool,
    pub soa: SoaConfig,
}

fn serialize_ttls<S: serde::Serializer>(
    ttls: &BTreeMap<String, Duration>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.collect_map(
        ttls.iter()
            .map(|(key, ttl)| (key, crate::types::duration::format_go_duration(*ttl))),
    )
}

impl DnsConfig {
    /// The TTL for a service's records: the exact name, else the longest matching `prefix*`,
    /// else `*`, else zero.
    pub fn service_ttl(&self, service: &str) -> Duration {
        if let Some(ttl) = self.service_ttl.get(service) {
            return *ttl;
        }
        self.service_ttl
            .iter()
            .filter_map(|(key, ttl)| {
                let prefix = key.strip_suffix('*')?;
                service.starts_with(prefix).then_some((prefix.len(), *ttl))
            })
            .max_by_key(|(length, _)| *length)
            .map_or(Duration::ZERO, |(_, ttl)| ttl)
    }
}

/// A domain as the DNS code compares it: lowercase and ending in a dot.
fn fully_qualified(key: &str, text: &str) -> Result<String, String> {
    let trimmed = text.trim().trim_end_matches('.').to_ascii_lowercase();
    if trimmed.is_empty()
        || trimmed.len() > 253
        || trimmed.split('.').any(|label| {
            label.is_empty()
                || label.len() > 63
                || !label
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        })
    {
        return Err(format!("{key}: {text:?} is not a valid domain"));
    }
    Ok(format!("{trimmed}."))
}

fn recursor(text: &str) -> Result<SocketAddr, String> {
    let text = text.trim();
    if let Ok(address) = text.parse::<SocketAddr>() {
        return Ok(address);
    }
    parse_ip(
        "recursors",
        text.trim_start_matches('[').trim_end_matches(']'),
    )
    .map(|ip| SocketAddr::new(ip, 53))
    .map_err(|_| format!("recursors: {text:?} is not an IP address or IP:port"))
}

pub(super) fn build(raw: &RawConfig, client_addrs: &[IpAddr]) -> Result<DnsConfig, String> {
    let domain = fully_qualified("domain", raw.domain.as_deref().unwrap_or("consul."))?;
    let alt_domain = match raw.alt_domain.as_deref() {
        None | Some("") => None,
        Some(text) => Some(fully_qualified("alt_domain", text)?),
    };
    if alt_domain.as_deref() == Some(domain.as_str()) {
        return Err(format!("alt_domain: {domain:?} must differ from domain"));
    }
    let addresses = match raw.addresses.as_ref().and_then(|a| a.dns.as_deref()) {
        Some(text) => text
            .split_whitespace()
            .map(|text| parse_ip("addresses.dns", text))
            .collect::<Result<Vec<_>, _>>()?,
        None => client_addrs.to_vec(),
    };
    if addresses.is_empty() {
        return Err("addresses.dns: at least one address is required".into());
    }
    let recursors = raw
        .recursors
        .iter()
        .flatten()
        .map(|text| recursor(text))
        .collect::<Result<Vec<_>, _>>()?;
    let dns = raw.dns_config.clone().unwrap_or_default();
    let recursor_strategy = match dns.recursor_strategy.as_deref() {
        None | Some("") | Some("sequential") => RecursorStrategy::Sequential,
        Some("random") => RecursorStrategy::Random,
        Some(other) => {
            return Err(format!(
                "dns_config.recursor_strategy: {other:?} must be \"sequential\" or \"random\""
            ))
        }
    };
    let recursor_timeout = duration(
        "dns_config.recursor_timeout",
        dns.recursor_timeout.as_deref(),
        Duration::from_secs(2),
    )?;
    if recursor_timeout.is_zero() {
        return Err("dns_config.recursor_timeout: must be greater than zero".into());
    }
    let mut service_ttl = BTreeMap::new();
    for (key, text) in dns.service_ttl.unwrap_or_default() {
        let ttl = duration(
            &format!("dns_config.service_ttl[{key:?}]"),
            Some(&text),
            Duration::ZERO,
        )?;
        service_ttl.insert(key, ttl);
    }
    let udp_answer_limit = dns.udp_answer_limit.unwrap_or(3) as usize;
    if udp_answer_limit == 0 {
        return Err("dns_config.udp_answer_limit: must be greater than zero".into());
    }
    let soa = dns.soa.unwrap_or_default();
    Ok(DnsConfig {
        domain,
        alt_domain,
        addresses,
        recursors,
        recursor_strategy,
        recursor_timeout,
        allow_stale: dns.allow_stale.unwrap_or(true),
        max_stale: duration(
            "dns_config.max_stale",
            dns.max_stale.as_deref(),
            Duration::from_secs(87600 * 3600),
        )?,
        node_ttl: duration(
            "dns_config.node_ttl",
            dns.node_ttl.as_deref(),
            Duration::ZERO,
        )?,
        service_ttl,
        udp_answer_limit: udp_answer_limit.min(MAX_UDP_ANSWER_LIMIT),
        a_record_limit: dns.a_record_limit.unwrap_or(0) as usize,
        enable_truncate: dns.enable_truncate.unwrap_or(false),
        only_passing: dns.only_passing.unwrap_or(false),
        enable_additional_node_meta_txt: dns.enable_additional_node_meta_txt.unwrap_or(true),
        soa: SoaConfig {
            refresh: soa.refresh.unwrap_or(3600),
            retry: soa.retry.unwrap_or(600),
            expire: soa.expire.unwrap_or(86400),
            min_ttl: soa.min_ttl.unwrap_or(0),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_ttls(pairs: &[(&str, u64)]) -> DnsConfig {
        let raw = RawConfig::default();
        let mut config = build(&raw, &[IpAddr::from([127, 0, 0, 1])]).expect("defaults");
        config.service_ttl = pairs
            .iter()
            .map(|(key, secs)| (key.to_string(), Duration::from_secs(*secs)))
            .collect();
        config
    }

    #[test]
    fn service_ttl_prefers_exact_then_longest_prefix_then_star() {
        let config = with_ttls(&[("*", 5), ("web*", 10), ("web-api*", 20), ("web", 30)]);
        assert_eq!(config.service_ttl("web"), Duration::from_secs(30));
        assert_eq!(config.service_ttl("web-api-v2"), Duration::from_secs(20));
        assert_eq!(config.service_ttl("webby"), Duration::from_secs(10));
        assert_eq!(config.service_ttl("db"), Duration::from_secs(5));
        assert_eq!(with_ttls(&[]).service_ttl("db"), Duration::ZERO);
    }

    #[test]
    fn recursors_default_to_port_53() {
        assert_eq!(recursor("10.0.0.1"), Ok("10.0.0.1:53".parse().unwrap()));
        assert_eq!(
            recursor("10.0.0.1:5353"),
            Ok("10.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(recursor("::1"), Ok("[::1]:53".parse().unwrap()));
        assert!(recursor("resolver.example").is_err());
    }

    #[test]
    fn domains_are_lowercase_and_fully_qualified() {
        assert_eq!(fully_qualified("domain", "Consul"), Ok("consul.".into()));
        assert_eq!(
            fully_qualified("domain", "mesh.internal."),
            Ok("mesh.internal.".into())
        );
        assert!(fully_qualified("domain", "bad..name").is_err());
        assert!(fully_qualified("domain", "").is_err());
    }
}
