//! Consul's `tls` stanza resolved per protocol: each of `internal_rpc`, `https` and `grpc`
//! takes every unset field from `defaults`; the flat keys from before Consul 1.12 fill what
//! the stanza leaves unset; keys in a sub-stanza that does not allow them are Consul's errors.

use std::path::PathBuf;

use crate::tls::{AutoEncrypt, ProtocolConfig, TlsConfig, TlsVersion};

use super::raw::{RawConfig, RawTlsProtocol};

fn fill<T: Clone>(slot: &mut Option<T>, value: &Option<T>) {
    if slot.is_none() {
        slot.clone_from(value);
    }
}

/// The stanza with the deprecated flat keys mapped in, as Consul's builder maps them.
fn with_deprecated(
    raw: &RawConfig,
) -> (
    RawTlsProtocol,
    RawTlsProtocol,
    RawTlsProtocol,
    RawTlsProtocol,
) {
    let tls = raw.tls.clone().unwrap_or_default();
    let mut defaults = tls.defaults.unwrap_or_default();
    let mut internal_rpc = tls.internal_rpc.unwrap_or_default();
    let mut https = tls.https.unwrap_or_default();
    let mut grpc = tls.grpc.unwrap_or_default();
    fill(&mut defaults.ca_file, &raw.ca_file);
    fill(&mut defaults.ca_path, &raw.ca_path);
    fill(&mut defaults.cert_file, &raw.cert_file);
    fill(&mut defaults.key_file, &raw.key_file);
    fill(&mut defaults.tls_min_version, &raw.tls_min_version);
    fill(&mut defaults.tls_cipher_suites, &raw.tls_cipher_suites);
    fill(&mut defaults.verify_outgoing, &raw.verify_outgoing);
    if raw.verify_incoming.is_some() {
        fill(&mut defaults.verify_incoming, &raw.verify_incoming);
        // Before 1.12 the gRPC port never checked client certificates; the flat key keeps
        // that meaning.
        fill(&mut grpc.verify_incoming, &Some(false));
    }
    fill(&mut internal_rpc.verify_incoming, &raw.verify_incoming_rpc);
    fill(&mut https.verify_incoming, &raw.verify_incoming_https);
    fill(
        &mut internal_rpc.verify_server_hostname,
        &raw.verify_server_hostname,
    );
    (defaults, internal_rpc, https, grpc)
}

fn resolve(
    stanza: &str,
    own: &RawTlsProtocol,
    defaults: &RawTlsProtocol,
) -> Result<ProtocolConfig, String> {
    let pick = |own: &Option<String>, default: &Option<String>| {
        own.clone()
            .or_else(|| default.clone())
            .filter(|text| !text.is_empty())
    };
    let flag = |own: Option<bool>, default: Option<bool>| own.or(default).unwrap_or(false);
    let tls_min_version = match pick(&own.tls_min_version, &defaults.tls_min_version) {
        None => TlsVersion::default(),
        Some(text) => TlsVersion::parse(&text).ok_or_else(|| {
            format!(
                "{stanza}.tls_min_version: invalid value {text:?}, must be one of TLSv1_0, TLSv1_1, TLSv1_2, TLSv1_3"
            )
        })?,
    };
    let cipher_suites: Vec<String> = pick(&own.tls_cipher_suites, &defaults.tls_cipher_suites)
        .map(|text| {
            text.split(',')
                .map(|name| name.trim().to_string())
                .filter(|name| !name.is_empty())
                .collect()
        })
        .unwrap_or_default();
    if tls_min_version == TlsVersion::V1_3 && !cipher_suites.is_empty() {
        return Err(format!(
            "{stanza}.tls_cipher_suites: cipher suites are not configurable with tls_min_version TLSv1_3"
        ));
    }
    Ok(ProtocolConfig {
        ca_file: pick(&own.ca_file, &defaults.ca_file).map(PathBuf::from),
        ca_path: pick(&own.ca_path, &defaults.ca_path).map(PathBuf::from),
        cert_file: pick(&own.cert_file, &defaults.cert_file).map(PathBuf::from),
        key_file: pick(&own.key_file, &defaults.key_file).map(PathBuf::from),
        verify_incoming: flag(own.verify_incoming, defaults.verify_incoming),
        verify_outgoing: flag(own.verify_outgoing, defaults.verify_outgoing),
        verify_server_hostname: flag(own.verify_server_hostname, defaults.verify_server_hostname),
        tls_min_version,
        cipher_suites,
        use_auto_cert: own.use_auto_cert.unwrap_or(false),
    })
}

/// The resolved `tls` and `auto_encrypt` stanzas.
pub(super) fn build(raw: &RawConfig, server: bool) -> Result<TlsConfig, String> {
    let (defaults, internal_rpc, https, grpc) = with_deprecated(raw);
    if grpc.verify_outgoing.is_some() {
        return Err("verify_outgoing is not valid in the tls.grpc stanza".into());
    }
    if grpc.verify_server_hostname.is_some() || https.verify_server_hostname.is_some() {
        return Err(
            "verify_server_hostname is only valid in the tls.defaults and tls.internal_rpc stanzas"
                .into(),
        );
    }
    if [&defaults, &internal_rpc, &https]
        .iter()
        .any(|stanza| stanza.use_auto_cert.is_some())
    {
        return Err("use_auto_cert is only valid in the tls.grpc stanza".into());
    }
    let mut internal_rpc = resolve("tls.internal_rpc", &internal_rpc, &defaults)?;
    // A hostname check without TLS would check nothing (CVE-2018-19653).
    if internal_rpc.verify_server_hostname {
        internal_rpc.verify_outgoing = true;
    }
    let mut grpc = resolve("tls.grpc", &grpc, &defaults)?;
    grpc.verify_outgoing = false;
    grpc.verify_server_hostname = false;
    let mut https = resolve("tls.https", &https, &defaults)?;
    https.verify_server_hostname = false;
    let raw_auto = raw.auto_encrypt.clone().unwrap_or_default();
    let auto_encrypt = AutoEncrypt {
        tls: raw_auto.tls.unwrap_or(false),
        allow_tls: raw_auto.allow_tls.unwrap_or(false),
        dns_san: raw_auto.dns_san.unwrap_or_default(),
        ip_san: raw_auto.ip_san.unwrap_or_default(),
    };
    if auto_encrypt.tls && server {
        return Err("auto_encrypt.tls can only be used on client agents".into());
    }
    Ok(TlsConfig {
        internal_rpc,
        https,
        grpc,
        auto_encrypt,
    })
}
