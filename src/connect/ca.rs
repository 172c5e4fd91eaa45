//! Pure crypto of the built-in ("consul") Connect CA: root generation,
//! cross-signing for rotation, agent-side key/CSR creation and server-side
//! leaf signing. Nothing here reads the clock or touches disk: callers pass
//! `now` in, so the state machine that drives the CA stays deterministic.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::{Ia5String, PrintableString};
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, PublicKeyData,
    SanType, SerialNumber, SignatureAlgorithm,
};
use x509_parser::asn1_rs::{Oid, Tag};
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::extensions::{GeneralName, ParsedExtension};
use x509_parser::prelude::FromDer;
use x509_parser::x509::{SubjectPublicKeyInfo, X509Name};

/// Consul back-dates every certificate it issues by a minute so that peers
/// whose clocks run slightly behind accept it immediately.
const BACKDATE_SECS: u64 = 60;

pub const DEFAULT_ROOT_TTL: Duration = Duration::from_secs(87_600 * 3600);
pub const DEFAULT_LEAF_TTL: Duration = Duration::from_secs(72 * 3600);

const OID_EC_PUBLIC_KEY: &[u64] = &[1, 2, 840, 10045, 2, 1];
const OID_CURVE_P256: &[u64] = &[1, 2, 840, 10045, 3, 1, 7];
const OID_CURVE_P384: &[u64] = &[1, 3, 132, 0, 34];
const OID_RSA_ENCRYPTION: &[u64] = &[1, 2, 840, 113549, 1, 1, 1];
const OID_ED25519: &[u64] = &[1, 3, 101, 112];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CaError(String);

impl CaError {
    fn new(msg: impl Into<String>) -> Self {
        CaError(msg.into())
    }

    pub fn message(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for CaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for CaError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyType {
    Ec256,
    Ec384,
}

impl KeyType {
    /// Maps Consul's `PrivateKeyType`/`PrivateKeyBits` CA config pair.
    /// RSA is refused because ring cannot generate RSA keys.
    pub fn parse(key_type: &str, bits: u32) -> Result<KeyType, CaError> {
        match key_type {
            // 0 means the bits field was left unset; Consul defaults it to 256.
            "ec" => match bits {
                0 | 256 => Ok(KeyType::Ec256),
                384 => Ok(KeyType::Ec384),
                other => Err(CaError::new(format!(
                    "PrivateKeyBits {other} is not supported for PrivateKeyType ec; \
                     EC key length must be one of (256, 384) bits"
                ))),
            },
            "rsa" => Err(CaError::new("PrivateKeyType rsa is not supported; use ec")),
            other => Err(CaError::new(format!(
                "PrivateKeyType {other:?} is invalid; use ec"
            ))),
        }
    }

    pub fn key_type(self) -> &'static str {
        "ec"
    }

    pub fn bits(self) -> u32 {
        match self {
            KeyType::Ec256 => 256,
            KeyType::Ec384 => 384,
        }
    }

    fn algorithm(self) -> &'static SignatureAlgorithm {
        match self {
            KeyType::Ec256 => &rcgen::PKCS_ECDSA_P256_SHA256,
            KeyType::Ec384 => &rcgen::PKCS_ECDSA_P384_SHA384,
        }
    }
}

#[derive(Clone, PartialEq, Eq)]
pub struct RootCert {
    /// Colon-hex SubjectKeyIdentifier; Consul calls this the signing key ID.
    pub id: String,
    pub cert_pem: String,
    pub key_pem: String,
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    pub key_type: &'static str,
    pub key_bits: u32,
}

// Hand-written so that logging a root never leaks its private key.
impl fmt::Debug for RootCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RootCert")
            .field("id", &self.id)
            .field("serial", &self.serial)
            .field("not_before", &self.not_before)
            .field("not_after", &self.not_after)
            .field("key_type", &self.key_type)
            .field("key_bits", &self.key_bits)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceId {
    pub trust_domain: String,
    pub namespace: String,
    pub datacenter: String,
    pub service: String,
}

#[derive(Clone, PartialEq, Eq)]
pub struct LeafRequest {
    pub key_pem: String,
    pub csr_pem: String,
}

impl fmt::Debug for LeafRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LeafRequest")
            .field("csr_pem", &self.csr_pem)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedLeaf {
    pub cert_pem: String,
    pub serial: String,
    pub service_uri: String,
    pub service: String,
    pub namespace: String,
    pub datacenter: String,
    pub valid_after: SystemTime,
    pub valid_before: SystemTime,
}

/// Fields of an existing certificate that the CA state machine records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    pub serial: String,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
    /// Colon-hex; empty when the extension is absent.
    pub subject_key_id: String,
    /// Colon-hex; empty when the extension is absent.
    pub authority_key_id: String,
    pub uris: Vec<String>,
    pub is_ca: bool,
}

/// Lowercase, colon-separated hex, the format Consul uses for key IDs and
/// serial numbers in its API.
pub fn colon_hex(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len() * 3);
    for (i, b) in bytes.iter().enumerate() {
        if i > 0 {
            out.push(':');
        }
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
    out
}

const HEX: &[u8; 16] = b"0123456789abcdef";

pub fn spiffe_service_id(trust_domain: &str, dc: &str, service: &str) -> String {
    format!("spiffe://{trust_domain}/ns/default/dc/{dc}/svc/{service}")
}

/// Accepts only the OSS service form `spiffe://<td>/ns/<ns>/dc/<dc>/svc/<svc>`;
/// agent, mesh-gateway and partitioned IDs are not service identities.
pub fn parse_spiffe_service_id(uri: &str) -> Option<ServiceId> {
    // A URI SAN is an IA5String, and a space or control character in one
    // could only be an attempt to confuse a later comparison.
    if !uri.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let rest = uri.strip_prefix("spiffe://")?;
    let (host, path) = rest.split_once('/')?;
    if !valid_segment(host) || host.contains(['@', ':']) {
        return None;
    }
    let segments: Vec<&str> = path.split('/').collect();
    match segments.as_slice() {
        ["ns", ns, "dc", dc, "svc", svc]
            if valid_segment(ns) && valid_segment(dc) && valid_segment(svc) =>
        {
            Some(ServiceId {
                trust_domain: host.to_string(),
                namespace: (*ns).to_string(),
                datacenter: (*dc).to_string(),
                service: (*svc).to_string(),
            })
        }
        _ => None,
    }
}

/// Who a client agent's certificate is for: its URI (`spiffe_agent_id`), node id and
/// datacenter.
pub struct AgentIdentity<'a> {
    pub uri: &'a str,
    pub node_id: &'a str,
    pub datacenter: &'a str,
    /// Names and addresses the agent asked for (`auto_encrypt.dns_san`, `ip_san`), for when
    /// it serves with the certificate (`tls.grpc.use_auto_cert`).
    pub dns_names: &'a [String],
    pub ip_addresses: &'a [std::net::IpAddr],
}

/// A client agent's identity, `spiffe://<td>/agent/client/dc/<dc>/id/<node-id>`: what the
/// certificates auto_encrypt hands client agents carry. Never a service identity.
pub fn spiffe_agent_id(trust_domain: &str, dc: &str, node_id: &str) -> String {
    format!("spiffe://{trust_domain}/agent/client/dc/{dc}/id/{node_id}")
}

fn valid_segment(s: &str) -> bool {
    !s.is_empty() && !s.contains(['?', '#', '%'])
}

pub fn generate_root(
    trust_domain: &str,
    number: u64,
    key: KeyType,
    ttl: Duration,
    now: SystemTime,
) -> Result<RootCert, CaError> {
    if trust_domain.is_empty() {
        return Err(CaError::new("trust domain must not be empty"));
    }
    let serial = serial_bytes(number)?;
    let key_pair = KeyPair::generate_for(key.algorithm())
        .map_err(|e| CaError::new(format!("generating CA private key: {e}")))?;
    let key_id = key_id(&key_pair.subject_public_key_info());

    let now_s = unix_secs(now)?;
    let not_before = now_s
        .checked_sub(BACKDATE_SECS)
        .ok_or_else(|| CaError::new("now is too close to the Unix epoch"))?;
    let not_after = add_secs(now_s, ttl)?;

    let mut dn = DistinguishedName::new();
    // Consul's form: unique per cluster (the trust domain's prefix) and per root (the
    // serial), because path building matches issuers by name and two CAs with one name
    // would make a foreign certificate fail as a bad signature instead of an unknown issuer.
    let cluster = trust_domain.split('.').next().unwrap_or(trust_domain);
    let cluster = &cluster[..cluster.len().min(8)];
    dn.push(
        DnType::CommonName,
        format!("pri-{:08x}.consul.ca.{cluster}.consul", number as u32),
    );

    let mut params = CertificateParams::default();
    params.distinguished_name = dn;
    params.subject_alt_names = vec![uri_san(&format!("spiffe://{trust_domain}"))?];
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = root_key_usages();
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_id.clone());
    params.use_authority_key_identifier_extension = true;

    let cert = params
        .self_signed(&key_pair)
        .map_err(|e| CaError::new(format!("self-signing CA certificate: {e}")))?;

    Ok(RootCert {
        id: colon_hex(&key_id),
        cert_pem: cert.pem(),
        key_pem: key_pair.serialize_pem(),
        serial: colon_hex(&serial),
        not_before: from_secs(not_before)?,
        not_after: from_secs(not_after)?,
        key_type: key.key_type(),
        key_bits: key.bits(),
    })
}

/// Certifies `new_root`'s key with `old_root`'s key so that leafs issued
/// after a rotation still chain to the old root for peers that have not yet
/// learned the new one. The result mirrors the new root (subject, key, SKID,
/// SANs, CA=true) and keeps its expiry; it reuses the new root's serial,
/// which is unique under the old issuer because Consul draws root and
/// cross-sign serials from one counter.
pub fn cross_sign(
    new_root: &RootCert,
    old_root: &RootCert,
    now: SystemTime,
) -> Result<String, CaError> {
    let issuer = load_issuer(old_root)?;

    let der = pem_block(&new_root.cert_pem, "CERTIFICATE")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CaError::new(format!("parsing new root certificate: {e}")))?;
    let subject_key = SpkiKey::from_spki(&cert.tbs_certificate.subject_pki)?;

    let skid = match find_skid(&cert)? {
        Some(id) => id.to_vec(),
        None => key_id(cert.tbs_certificate.subject_pki.raw),
    };
    let uris = cert_uris(&cert)?;

    let now_s = unix_secs(now)?;
    let not_after = u64::try_from(cert.validity().not_after.timestamp())
        .map_err(|_| CaError::new("new root expires before the Unix epoch"))?;
    // Never claim validity before the cross-signature existed (minus the
    // usual skew allowance), nor before the new root itself.
    let not_before = u64::try_from(cert.validity().not_before.timestamp())
        .unwrap_or(0)
        .max(now_s.saturating_sub(BACKDATE_SECS));
    if not_after <= not_before {
        return Err(CaError::new(
            "new root has already expired; refusing to cross-sign it",
        ));
    }

    let mut params = CertificateParams::default();
    params.distinguished_name = dn_from_x509(&cert.tbs_certificate.subject)?;
    params.subject_alt_names = uris
        .iter()
        .map(|u| uri_san(u))
        .collect::<Result<Vec<_>, _>>()?;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = root_key_usages();
    params.serial_number = Some(SerialNumber::from_slice(&minimal_bytes(cert.raw_serial())));
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(skid);
    params.use_authority_key_identifier_extension = true;

    let cross = params
        .signed_by(&subject_key, &issuer)
        .map_err(|e| CaError::new(format!("cross-signing new root: {e}")))?;
    Ok(cross.pem())
}

/// Agent side: a fresh P-256 key and a CSR asking for `spiffe_uri`.
pub fn leaf_key_and_csr(spiffe_uri: &str, service: &str) -> Result<LeafRequest, CaError> {
    if !spiffe_uri.starts_with("spiffe://") {
        return Err(CaError::new(format!(
            "CSR URI {spiffe_uri:?} is not a spiffe:// URI"
        )));
    }
    key_and_csr("leaf", service, spiffe_uri)
}

/// A secondary datacenter's side: a fresh P-256 key and a CSR for a signing intermediate
/// of `trust_domain` (the primary's), which the primary's active root signs.
pub fn intermediate_request(trust_domain: &str) -> Result<LeafRequest, CaError> {
    let cluster = trust_domain.split('.').next().unwrap_or(trust_domain);
    let common_name = format!("sec.consul.ca.{}.consul", &cluster[..cluster.len().min(8)]);
    key_and_csr(
        "intermediate",
        &common_name,
        &format!("spiffe://{trust_domain}"),
    )
}

/// A fresh P-256 key and a CSR for it naming `uri`, with `common_name` unless empty; `what`
/// names the certificate in errors.
fn key_and_csr(what: &str, common_name: &str, uri: &str) -> Result<LeafRequest, CaError> {
    let key_pair = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| CaError::new(format!("generating {what} private key: {e}")))?;
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    if !common_name.is_empty() {
        dn.push(DnType::CommonName, common_name);
    }
    params.distinguished_name = dn;
    params.subject_alt_names = vec![uri_san(uri)?];
    let csr = params
        .serialize_request(&key_pair)
        .map_err(|e| CaError::new(format!("creating {what} CSR: {e}")))?;
    let csr_pem = csr
        .pem()
        .map_err(|e| CaError::new(format!("encoding {what} CSR: {e}")))?;
    Ok(LeafRequest {
        key_pem: key_pair.serialize_pem(),
        csr_pem,
    })
}

/// The primary's side: `root` certifies a secondary's intermediate key from `csr_pem`, which
/// must name exactly `spiffe://<trust_domain>`. The intermediate may sign leaves only (path
/// length 0) and expires with the root at the latest.
pub fn sign_intermediate(
    csr_pem: &str,
    root: &RootCert,
    trust_domain: &str,
    serial: u64,
    ttl: Duration,
    now: SystemTime,
) -> Result<String, CaError> {
    let issuer = load_issuer(root)?;
    let der = pem_block(csr_pem, "CERTIFICATE REQUEST")?;
    let csr = verified_csr(&der)?;
    let uri = single_spiffe_uri(&csr)?;
    let wanted = format!("spiffe://{trust_domain}");
    if !uri.eq_ignore_ascii_case(&wanted) {
        return Err(CaError::new(format!(
            "an intermediate CSR must name {wanted:?}, not {uri:?}"
        )));
    }
    let spki = &csr.certification_request_info.subject_pki;
    let subject_key = SpkiKey::from_spki(spki)?;
    let now_s = unix_secs(now)?;
    let not_before = now_s
        .checked_sub(BACKDATE_SECS)
        .ok_or_else(|| CaError::new("now is too close to the Unix epoch"))?;
    let root_expiry = unix_secs(root.not_after)?;
    let not_after = add_secs(now_s, ttl)?.min(root_expiry);
    if not_after <= not_before {
        return Err(CaError::new(
            "the root has expired; refusing to sign an intermediate",
        ));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn_from_x509(&csr.certification_request_info.subject)?;
    params.subject_alt_names = vec![uri_san(uri)?];
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = root_key_usages();
    params.serial_number = Some(SerialNumber::from_slice(&serial_bytes(serial)?));
    params.not_before = to_offset(not_before)?;
    params.not_after = to_offset(not_after)?;
    params.key_identifier_method = KeyIdMethod::PreSpecified(key_id(spki.raw));
    params.use_authority_key_identifier_extension = true;
    let cert = params
        .signed_by(&subject_key, &issuer)
        .map_err(|e| CaError::new(format!("signing the intermediate: {e}")))?;
    Ok(cert.pem())
}

/// Holds the parsed CA key and issuer name so that each signature costs only
/// the CSR check and one ECDSA signing operation.
#[derive(Debug)]
pub struct Signer {
    issuer: Issuer<'static, KeyPair>,
}

impl Signer {
    pub fn new(root: &RootCert) -> Result<Signer, CaError> {
        Ok(Signer {
            issuer: load_issuer(root)?,
        })
    }

    pub fn sign(
        &self,
        csr_pem: &str,
        trust_domain: &str,
        serial: u64,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedLeaf, CaError> {
        let serial = leaf_serial(serial, ttl)?;
        let der = pem_block(csr_pem, "CERTIFICATE REQUEST")?;
        let csr = verified_csr(&der)?;

        let uri = single_spiffe_uri(&csr)?;
        let id = parse_spiffe_service_id(uri).ok_or_else(|| {
            CaError::new(format!(
                "CSR URI SAN {uri:?} is not a SPIFFE service ID \
                 (spiffe://<trust-domain>/ns/<ns>/dc/<dc>/svc/<service>)"
            ))
        })?;
        if !id.trust_domain.eq_ignore_ascii_case(trust_domain) {
            return Err(CaError::new(format!(
                "CSR SPIFFE ID trust domain {:?} does not match the CA trust domain {:?}",
                id.trust_domain, trust_domain
            )));
        }

        let (cert_pem, not_before, not_after) =
            self.issue(&csr, &id.service, vec![uri_san(uri)?], &serial, ttl, now)?;
        Ok(SignedLeaf {
            cert_pem,
            serial: colon_hex(&serial),
            service_uri: uri.to_string(),
            service: id.service,
            namespace: id.namespace,
            datacenter: id.datacenter,
            valid_after: from_secs(not_before)?,
            valid_before: from_secs(not_after)?,
        })
    }

    /// A client agent's certificate (auto_encrypt) for the CSR's key, with the identity the
    /// server decides (`agent_uri`, see `spiffe_agent_id`): the CSR's own names are not
    /// trusted, only its key and signature.
    pub fn sign_agent(
        &self,
        csr_pem: &str,
        agent: &AgentIdentity<'_>,
        serial: u64,
        ttl: Duration,
        now: SystemTime,
    ) -> Result<SignedLeaf, CaError> {
        let serial = leaf_serial(serial, ttl)?;
        let der = pem_block(csr_pem, "CERTIFICATE REQUEST")?;
        let csr = verified_csr(&der)?;
        let mut sans = vec![uri_san(agent.uri)?];
        for name in agent.dns_names {
            sans.push(
                Ia5String::try_from(name.as_str())
                    .map(SanType::DnsName)
                    .map_err(|e| CaError::new(format!("DNS SAN {name:?} is not valid: {e}")))?,
            );
        }
        sans.extend(agent.ip_addresses.iter().copied().map(SanType::IpAddress));
        let (cert_pem, not_before, not_after) =
            self.issue(&csr, agent.node_id, sans, &serial, ttl, now)?;
        Ok(SignedLeaf {
            cert_pem,
            serial: colon_hex(&serial),
            service_uri: agent.uri.to_string(),
            service: String::new(),
            namespace: String::new(),
            datacenter: agent.datacenter.to_string(),
            valid_after: from_secs(not_before)?,
            valid_before: from_secs(not_after)?,
        })
    }

    /// Certifies the CSR's key for `sans` (a SPIFFE URI first) under `common_name`; the PEM
    /// and the validity window in Unix seconds.
    fn issue(
        &self,
        csr: &X509CertificationRequest<'_>,
        common_name: &str,
        sans: Vec<SanType>,
        serial: &[u8],
        ttl: Duration,
        now: SystemTime,
    ) -> Result<(String, u64, u64), CaError> {
        let spki = &csr.certification_request_info.subject_pki;
        let subject_key = SpkiKey::from_spki(spki)?;

        let now_s = unix_secs(now)?;
        let not_before = now_s
            .checked_sub(BACKDATE_SECS)
            .ok_or_else(|| CaError::new("now is too close to the Unix epoch"))?;
        let not_after = add_secs(not_before, ttl)?;

        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, common_name);

        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        // ExplicitNoCa both writes CA:FALSE and makes rcgen emit the SKID.
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
            KeyUsagePurpose::KeyAgreement,
            KeyUsagePurpose::DataEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.serial_number = Some(SerialNumber::from_slice(serial));
        params.not_before = to_offset(not_before)?;
        params.not_after = to_offset(not_after)?;
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id(spki.raw));
        params.use_authority_key_identifier_extension = true;

        let cert = params
            .signed_by(&subject_key, &self.issuer)
            .map_err(|e| CaError::new(format!("signing leaf certificate: {e}")))?;
        Ok((cert.pem(), not_before, not_after))
    }
}

pub fn cert_info(cert_pem: &str) -> Result<CertInfo, CaError> {
    let der = pem_block(cert_pem, "CERTIFICATE")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CaError::new(format!("parsing certificate: {e}")))?;
    let akid = cert
        .iter_extensions()
        .find_map(|ext| match ext.parsed_extension() {
            ParsedExtension::AuthorityKeyIdentifier(aki) => {
                aki.key_identifier.as_ref().map(|k| k.0)
            }
            _ => None,
        })
        .unwrap_or_default();
    let is_ca = cert
        .basic_constraints()
        .map_err(|e| CaError::new(format!("parsing basic constraints: {e}")))?
        .is_some_and(|bc| bc.value.ca);
    Ok(CertInfo {
        serial: colon_hex(&minimal_bytes(cert.raw_serial())),
        not_before: from_timestamp(cert.validity().not_before.timestamp())?,
        not_after: from_timestamp(cert.validity().not_after.timestamp())?,
        subject_key_id: colon_hex(find_skid(&cert)?.unwrap_or_default()),
        authority_key_id: colon_hex(akid),
        uris: cert_uris(&cert)?,
        is_ca,
    })
}

fn root_key_usages() -> Vec<KeyUsagePurpose> {
    vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ]
}

/// Consul's key ID: SHA-256 over the DER SubjectPublicKeyInfo, untruncated
/// (rcgen's built-in method truncates to 20 bytes, which would change the
/// IDs Consul users see).
fn key_id(spki_der: &[u8]) -> Vec<u8> {
    ring::digest::digest(&ring::digest::SHA256, spki_der)
        .as_ref()
        .to_vec()
}

/// A CSR that decodes whole and is signed by the key it presents.
fn verified_csr(der: &[u8]) -> Result<X509CertificationRequest<'_>, CaError> {
    let csr = match X509CertificationRequest::from_der(der) {
        Ok(([], csr)) => csr,
        Ok(_) => {
            return Err(CaError::new(
                "CSR is malformed: trailing data after the request",
            ))
        }
        Err(e) => return Err(CaError::new(format!("CSR is malformed: {e}"))),
    };
    csr.verify_signature()
        .map_err(|e| CaError::new(format!("CSR signature is invalid: {e}")))?;
    Ok(csr)
}

fn load_issuer(root: &RootCert) -> Result<Issuer<'static, KeyPair>, CaError> {
    issuer_from_pem(&root.cert_pem, &root.key_pem)
}

/// A signer from a CA certificate and its key (PEM), refusing a key that is not the
/// certificate's. `concord tls cert create` signs with the agent CA's files through it.
pub fn issuer_from_pem(cert_pem: &str, key_pem: &str) -> Result<Issuer<'static, KeyPair>, CaError> {
    let key_pair = KeyPair::from_pem(key_pem)
        .map_err(|e| CaError::new(format!("parsing CA private key: {e}")))?;
    let der = pem_block(cert_pem, "CERTIFICATE")?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|e| CaError::new(format!("parsing CA certificate: {e}")))?;
    // A mismatched pair would sign leafs that silently fail verification
    // everywhere, so catch it when the signer is built.
    if key_pair.subject_public_key_info() != cert.tbs_certificate.subject_pki.raw {
        return Err(CaError::new(
            "CA private key does not match the CA certificate's public key",
        ));
    }
    let mut params = CertificateParams::default();
    params.distinguished_name = dn_from_x509(&cert.tbs_certificate.subject)?;
    params.key_usages = root_key_usages();
    // Leaf AKIDs must equal the root's SKID byte for byte, whatever method
    // produced it.
    let skid = match find_skid(&cert)? {
        Some(id) => id.to_vec(),
        None => key_id(cert.tbs_certificate.subject_pki.raw),
    };
    params.key_identifier_method = KeyIdMethod::PreSpecified(skid);
    Ok(Issuer::new(params, key_pair))
}

/// Rebuilds a name so that rcgen re-encodes it with the same string types;
/// path building compares issuer and subject names byte for byte.
fn dn_from_x509(name: &X509Name<'_>) -> Result<DistinguishedName, CaError> {
    let mut dn = DistinguishedName::new();
    for rdn in name.iter() {
        let mut attrs = rdn.iter();
        let (Some(attr), None) = (attrs.next(), attrs.next()) else {
            return Err(CaError::new(
                "CA certificate subject has an empty or multi-valued RDN",
            ));
        };
        let arcs: Vec<u64> = attr
            .attr_type()
            .iter()
            .ok_or_else(|| CaError::new("CA certificate subject has an oversized OID"))?
            .collect();
        let value = attr.attr_value();
        let text = std::str::from_utf8(value.data)
            .map_err(|_| CaError::new("CA certificate subject is not valid text"))?;
        let dn_value = match value.header.tag() {
            Tag::Utf8String => DnValue::Utf8String(text.to_string()),
            Tag::PrintableString => DnValue::PrintableString(
                PrintableString::try_from(text)
                    .map_err(|e| CaError::new(format!("CA certificate subject: {e}")))?,
            ),
            Tag::Ia5String => DnValue::Ia5String(
                Ia5String::try_from(text)
                    .map_err(|e| CaError::new(format!("CA certificate subject: {e}")))?,
            ),
            other => {
                return Err(CaError::new(format!(
                    "CA certificate subject uses unsupported string type {other}"
                )))
            }
        };
        dn.push(DnType::from_oid(&arcs), dn_value);
    }
    Ok(dn)
}

/// A subject public key taken from a CSR or certificate, in the form rcgen
/// needs to embed it in a new certificate.
struct SpkiKey {
    raw: Vec<u8>,
    alg: &'static SignatureAlgorithm,
}

impl SpkiKey {
    fn from_spki(spki: &SubjectPublicKeyInfo<'_>) -> Result<SpkiKey, CaError> {
        let alg_oid = &spki.algorithm.algorithm;
        let param_oid = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        let alg: &'static SignatureAlgorithm = if oid_is(alg_oid, OID_EC_PUBLIC_KEY) {
            match param_oid {
                Some(c) if oid_is(&c, OID_CURVE_P256) => &rcgen::PKCS_ECDSA_P256_SHA256,
                Some(c) if oid_is(&c, OID_CURVE_P384) => &rcgen::PKCS_ECDSA_P384_SHA384,
                _ => {
                    return Err(CaError::new(
                        "public key uses an unsupported EC curve; use P-256 or P-384",
                    ))
                }
            }
        } else if oid_is(alg_oid, OID_RSA_ENCRYPTION) {
            &rcgen::PKCS_RSA_SHA256
        } else if oid_is(alg_oid, OID_ED25519) {
            &rcgen::PKCS_ED25519
        } else {
            return Err(CaError::new(format!(
                "public key algorithm {alg_oid} is not supported"
            )));
        };
        let key = SpkiKey {
            raw: spki.subject_public_key.data.to_vec(),
            alg,
        };
        // rcgen rebuilds the SubjectPublicKeyInfo from (algorithm, bits); if
        // that differs from what was presented (odd parameters, explicit
        // curves) the certificate would certify a different key.
        if key.subject_public_key_info() != spki.raw {
            return Err(CaError::new(
                "public key has a non-canonical SubjectPublicKeyInfo encoding",
            ));
        }
        Ok(key)
    }
}

impl PublicKeyData for SpkiKey {
    fn der_bytes(&self) -> &[u8] {
        &self.raw
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

fn oid_is(oid: &Oid<'_>, arcs: &[u64]) -> bool {
    oid.iter().is_some_and(|it| it.eq(arcs.iter().copied()))
}

fn single_spiffe_uri<'a>(csr: &'a X509CertificationRequest<'_>) -> Result<&'a str, CaError> {
    let mut uris = Vec::new();
    for ext in csr.requested_extensions().into_iter().flatten() {
        match ext {
            ParsedExtension::SubjectAlternativeName(san) => {
                for name in &san.general_names {
                    match name {
                        GeneralName::URI(u) => uris.push(*u),
                        other => {
                            return Err(CaError::new(format!(
                                "CSR must carry only a URI SAN (the SPIFFE service ID); \
                                 found {other}"
                            )))
                        }
                    }
                }
            }
            ParsedExtension::ParseError { error } => {
                return Err(CaError::new(format!(
                    "CSR has a malformed requested extension: {error}"
                )))
            }
            _ => {}
        }
    }
    match uris.as_slice() {
        [one] => Ok(one),
        [] => Err(CaError::new(
            "CSR must contain exactly one URI SAN (the SPIFFE service ID); found none",
        )),
        many => Err(CaError::new(format!(
            "CSR must contain exactly one URI SAN (the SPIFFE service ID); found {}",
            many.len()
        ))),
    }
}

fn find_skid<'a>(
    cert: &'a x509_parser::certificate::X509Certificate<'_>,
) -> Result<Option<&'a [u8]>, CaError> {
    for ext in cert.iter_extensions() {
        match ext.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(id) => return Ok(Some(id.0)),
            ParsedExtension::ParseError { error } => {
                return Err(CaError::new(format!(
                    "certificate has a malformed extension: {error}"
                )))
            }
            _ => {}
        }
    }
    Ok(None)
}

fn cert_uris(cert: &x509_parser::certificate::X509Certificate<'_>) -> Result<Vec<String>, CaError> {
    let san = cert
        .subject_alternative_name()
        .map_err(|e| CaError::new(format!("parsing certificate SANs: {e}")))?;
    Ok(san
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    GeneralName::URI(u) => Some((*u).to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default())
}

/// A leaf's serial bytes, once its lifetime is known to be positive.
fn leaf_serial(serial: u64, ttl: Duration) -> Result<Vec<u8>, CaError> {
    if ttl.is_zero() {
        return Err(CaError::new("leaf certificate TTL must be positive"));
    }
    serial_bytes(serial)
}

fn uri_san(uri: &str) -> Result<SanType, CaError> {
    Ia5String::try_from(uri)
        .map(SanType::URI)
        .map_err(|e| CaError::new(format!("URI {uri:?} is not a valid SAN: {e}")))
}

fn pem_block(pem: &str, label: &str) -> Result<Vec<u8>, CaError> {
    let (_, block) = x509_parser::pem::parse_x509_pem(pem.as_bytes())
        .map_err(|e| CaError::new(format!("{label} PEM is malformed: {e}")))?;
    if block.label != label {
        return Err(CaError::new(format!(
            "expected a {label} PEM block, found {:?}",
            block.label
        )));
    }
    Ok(block.contents)
}

/// Serial numbers must be positive (RFC 5280); Consul encodes them as the
/// minimal big-endian bytes of the counter.
fn serial_bytes(n: u64) -> Result<Vec<u8>, CaError> {
    if n == 0 {
        return Err(CaError::new("serial number must be positive"));
    }
    Ok(minimal_bytes(&n.to_be_bytes()))
}

fn minimal_bytes(bytes: &[u8]) -> Vec<u8> {
    let start = bytes.iter().position(|&b| b != 0).unwrap_or(bytes.len());
    bytes[start..].to_vec()
}

fn unix_secs(t: SystemTime) -> Result<u64, CaError> {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .map_err(|_| CaError::new("time is before the Unix epoch"))
}

fn add_secs(base: u64, ttl: Duration) -> Result<u64, CaError> {
    base.checked_add(ttl.as_secs())
        .ok_or_else(|| CaError::new("TTL is too large"))
}

fn from_secs(secs: u64) -> Result<SystemTime, CaError> {
    UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .ok_or_else(|| CaError::new("time is out of range"))
}

fn from_timestamp(ts: i64) -> Result<SystemTime, CaError> {
    let secs = u64::try_from(ts).map_err(|_| CaError::new("time is before the Unix epoch"))?;
    from_secs(secs)
}

fn to_offset(secs: u64) -> Result<time::OffsetDateTime, CaError> {
    i64::try_from(secs)
        .ok()
        .and_then(|s| time::OffsetDateTime::from_unix_timestamp(s).ok())
        .ok_or_else(|| CaError::new("certificate validity is out of range"))
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::sync::Arc;

    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    use rustls::{ClientConfig, RootCertStore, ServerConfig};

    use crate::connect::tls;

    const TD: &str = "11111111-2222-3333-4444-555555555555.consul";

    fn uri(service: &str) -> String {
        spiffe_service_id(TD, "dc1", service)
    }

    fn fixed_now() -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_700_000_000)
    }

    fn cert_der(pem: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap()
    }

    fn trust(roots: &[&RootCert]) -> Arc<RootCertStore> {
        let pems: Vec<&str> = roots.iter().map(|root| root.cert_pem.as_str()).collect();
        tls::roots(&pems).unwrap()
    }

    #[derive(Clone)]
    struct Identity {
        chain_pem: String,
        key_pem: String,
    }

    impl Identity {
        fn with_intermediate(&self, pem: &str) -> Identity {
            Identity {
                chain_pem: format!("{}{pem}", self.chain_pem),
                key_pem: self.key_pem.clone(),
            }
        }

        fn tls(&self) -> tls::Identity {
            tls::Identity::from_pem(&self.chain_pem, &self.key_pem).unwrap()
        }
    }

    fn issue(signer: &Signer, service: &str, serial: u64, now: SystemTime) -> Identity {
        let req = leaf_key_and_csr(&uri(service), service).unwrap();
        let leaf = signer
            .sign(&req.csr_pem, TD, serial, DEFAULT_LEAF_TTL, now)
            .unwrap();
        Identity {
            chain_pem: leaf.cert_pem,
            key_pem: req.key_pem,
        }
    }

    fn server_config(roots: Arc<RootCertStore>, id: &Identity) -> Arc<ServerConfig> {
        tls::server_config(roots, &id.tls()).unwrap()
    }

    fn client_config(
        roots: Arc<RootCertStore>,
        expected: &str,
        id: &Identity,
    ) -> Arc<ClientConfig> {
        tls::client_config(roots, expected, &id.tls()).unwrap()
    }

    /// What the server saw: the client's URI SANs.
    struct ServerSaw {
        peer_uris: Vec<String>,
    }

    fn exchange(
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    ) -> (Result<ServerSaw, tls::TlsError>, Result<(), tls::TlsError>) {
        let result = tls::loopback_exchange(server, client);
        (
            result.server.map(|peer_uris| ServerSaw { peer_uris }),
            result.client,
        )
    }

    fn assert_exchanged(
        server: Result<ServerSaw, tls::TlsError>,
        client: Result<(), tls::TlsError>,
    ) -> ServerSaw {
        client.unwrap_or_else(|e| panic!("client failed: {e}"));
        server.unwrap_or_else(|e| panic!("server failed: {e}"))
    }

    #[test]
    fn a_secondarys_intermediate_signs_leaves_the_primarys_root_trusts() {
        let now = SystemTime::now();
        let root = generate_root(TD, 1, KeyType::Ec256, DEFAULT_ROOT_TTL, now).unwrap();
        let request = intermediate_request(TD).unwrap();
        let intermediate =
            sign_intermediate(&request.csr_pem, &root, TD, 2, DEFAULT_ROOT_TTL, now).unwrap();
        let info = cert_info(&intermediate).unwrap();
        assert!(info.is_ca);
        assert_eq!(info.uris, vec![format!("spiffe://{TD}")]);
        assert!(info.not_after <= root.not_after);
        // The secondary signs with its intermediate and sends it along.
        let secondary = Signer::new(&RootCert {
            cert_pem: intermediate.clone(),
            key_pem: request.key_pem.clone(),
            ..root.clone()
        })
        .unwrap();
        let web = issue(&secondary, "web", 10, now).with_intermediate(&intermediate);
        let api = issue(&Signer::new(&root).unwrap(), "api", 11, now);
        let (server, client) = exchange(
            server_config(trust(&[&root]), &api),
            client_config(trust(&[&root]), &uri("api"), &web),
        );
        assert_eq!(assert_exchanged(server, client).peer_uris, vec![uri("web")]);
        // Without the intermediate the chain does not reach the root.
        let bare = issue(&secondary, "web", 12, now);
        let (server, client) = exchange(
            server_config(trust(&[&root]), &api),
            client_config(trust(&[&root]), &uri("api"), &bare),
        );
        assert!(server.is_err() || client.is_err());
        // An intermediate CSR for another trust domain is refused.
        let foreign = intermediate_request("other.consul").unwrap();
        let refused = sign_intermediate(&foreign.csr_pem, &root, TD, 3, DEFAULT_ROOT_TTL, now);
        assert!(refused.unwrap_err().message().contains("must name"));
    }

    #[test]
    fn mutual_tls_between_two_services() {
        let now = SystemTime::now();
        let root = generate_root(TD, 1, KeyType::Ec256, DEFAULT_ROOT_TTL, now).unwrap();
        let signer = Signer::new(&root).unwrap();
        let web = issue(&signer, "web", 10, now);
        let api = issue(&signer, "api", 11, now);

        let (server, client) = exchange(
            server_config(trust(&[&root]), &api),
            client_config(trust(&[&root]), &uri("api"), &web),
        );
        let saw = assert_exchanged(server, client);
        assert_eq!(saw.peer_uris, vec![uri("web")]);
    }

    #[test]
    fn foreign_client_and_wrong_server_identity_are_refused() {
        let now = SystemTime::now();
        let root = generate_root(TD, 1, KeyType::Ec256, DEFAULT_ROOT_TTL, now).unwrap();
        let other = generate_root(TD, 2, KeyType::Ec256, DEFAULT_ROOT_TTL, now).unwrap();
        let signer = Signer::new(&root).unwrap();
        let api = issue(&signer, "api", 10, now);
        let web = issue(&signer, "web", 11, now);
        let intruder = issue(&Signer::new(&other).unwrap(), "web", 12, now);

        let (server, client) = exchange(
            server_config(trust(&[&root]), &api),
            client_config(trust(&[&root]), &uri("api"), &intruder),
        );
        let server_err = server.err().expect("server accepted a foreign client cert");
        assert!(
            server_err.to_string().contains("UnknownIssuer"),
            "{server_err}"
        );
        assert!(client.is_err());

        let (server, client) = exchange(
            server_config(trust(&[&root]), &api),
            client_config(trust(&[&root]), &uri("db"), &web),
        );
        let client_err = client.expect_err("client accepted the wrong service");
        assert!(
            client_err
                .to_string()
                .contains("ApplicationVerificationFailure"),
            "{client_err}"
        );
        assert!(server.is_err());
    }

    #[test]
    fn rotation_with_cross_signed_intermediate() {
        let now = SystemTime::now();
        let old = generate_root(TD, 1, KeyType::Ec256, DEFAULT_ROOT_TTL, now).unwrap();
        let new = generate_root(TD, 2, KeyType::Ec384, DEFAULT_ROOT_TTL, now).unwrap();
        let cross = cross_sign(&new, &old, now).unwrap();

        let info = cert_info(&cross).unwrap();
        assert_eq!(info.subject_key_id, new.id);
        assert_eq!(info.authority_key_id, old.id);
        assert!(info.is_ca);
        assert_eq!(info.uris, vec![format!("spiffe://{TD}")]);
        assert_eq!(info.not_after, new.not_after);

        let l_old = issue(&Signer::new(&old).unwrap(), "web", 10, now);
        let l_new = issue(&Signer::new(&new).unwrap(), "api", 11, now);
        let l_new_chain = l_new.with_intermediate(&cross);

        // Both roots trusted: each leaf verifies on its own.
        let (server, client) = exchange(
            server_config(trust(&[&old, &new]), &l_new),
            client_config(trust(&[&old, &new]), &uri("api"), &l_old),
        );
        assert_exchanged(server, client);

        // Only the old root trusted, new leaf presented with the cross cert,
        // in both directions.
        let (server, client) = exchange(
            server_config(trust(&[&old]), &l_new_chain),
            client_config(trust(&[&old]), &uri("api"), &l_old),
        );
        assert_exchanged(server, client);
        let (server, client) = exchange(
            server_config(trust(&[&old]), &l_old),
            client_config(trust(&[&old]), &uri("web"), &l_new_chain),
        );
        let saw = assert_exchanged(server, client);
        assert_eq!(saw.peer_uris, vec![uri("api")]);

        // Only the new root trusted: the cross cert in the chain is harmless.
        let (server, client) = exchange(
            server_config(trust(&[&new]), &l_new_chain),
            client_config(trust(&[&new]), &uri("api"), &l_new_chain),
        );
        assert_exchanged(server, client);

        // Control: without the cross cert the old-root-only peer must fail,
        // proving the intermediate is what carries the trust.
        let (server, client) = exchange(
            server_config(trust(&[&old]), &l_new),
            client_config(trust(&[&old]), &uri("api"), &l_old),
        );
        let client_err = client.expect_err("new leaf verified without cross cert");
        assert!(
            client_err.to_string().contains("UnknownIssuer"),
            "{client_err}"
        );
        assert!(server.is_err());
    }

    #[test]
    fn root_fields() {
        let now = fixed_now();
        let ttl = Duration::from_secs(3600 * 24 * 365);
        for key in [KeyType::Ec256, KeyType::Ec384] {
            let root = generate_root(TD, 7, key, ttl, now).unwrap();
            assert_eq!(root.serial, "07");
            assert_eq!(root.key_type, "ec");
            assert_eq!(root.key_bits, key.bits());
            assert_eq!(root.not_before, now - Duration::from_secs(60));
            assert_eq!(root.not_after, now + ttl);

            let info = cert_info(&root.cert_pem).unwrap();
            assert_eq!(info.serial, "07");
            assert_eq!(info.subject_key_id, root.id);
            assert_eq!(info.authority_key_id, root.id);
            // Consul's key IDs are untruncated SHA-256: 32 bytes.
            assert_eq!(root.id.len(), 32 * 3 - 1);
            assert!(info.is_ca);
            assert_eq!(info.uris, vec![format!("spiffe://{TD}")]);
            assert_eq!(info.not_before, root.not_before);
            assert_eq!(info.not_after, root.not_after);

            let der = cert_der(&root.cert_pem);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert_eq!(
                cert.subject().to_string(),
                "CN=pri-00000007.consul.ca.11111111.consul"
            );
            assert_eq!(cert.issuer(), cert.subject());
            let bc = cert.basic_constraints().unwrap().unwrap().value;
            assert!(bc.ca && bc.path_len_constraint.is_none());
            let ku = cert.key_usage().unwrap().unwrap().value;
            assert!(ku.key_cert_sign() && ku.crl_sign() && ku.digital_signature());
            assert!(!ku.key_encipherment());
            cert.verify_signature(None).unwrap();
        }
    }

    #[test]
    fn leaf_fields() {
        let now = fixed_now();
        let root = generate_root(TD, 1, KeyType::Ec256, DEFAULT_ROOT_TTL, now).unwrap();
        let root_der = cert_der(&root.cert_pem);
        let (_, root_cert) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        let signer = Signer::new(&root).unwrap();
        let ttl = Duration::from_secs(3 * 3600);

        let mut previous = None;
        for (serial, hex) in [
            (1u64, "01"),
            (0x80, "80"),
            (0x01_2345_6789, "01:23:45:67:89"),
        ] {
            let req = leaf_key_and_csr(&uri("web"), "web").unwrap();
            let leaf = signer.sign(&req.csr_pem, TD, serial, ttl, now).unwrap();
            assert_eq!(leaf.serial, hex);
            assert_eq!(leaf.service_uri, uri("web"));
            assert_eq!(leaf.service, "web");
            assert_eq!(leaf.namespace, "default");
            assert_eq!(leaf.datacenter, "dc1");
            assert_eq!(leaf.valid_after, now - Duration::from_secs(60));
            assert_eq!(leaf.valid_before, leaf.valid_after + ttl);

            let der = cert_der(&leaf.cert_pem);
            let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
            assert_eq!(cert.serial, serial.into());
            if let Some(prev) = previous.replace(cert.serial.clone()) {
                assert!(cert.serial > prev);
            }
            let validity = cert.validity();
            assert_eq!(validity.not_before.timestamp(), 1_700_000_000 - 60);
            assert_eq!(
                validity.not_after.timestamp(),
                1_700_000_000 - 60 + 3 * 3600
            );
            assert_eq!(cert.subject().to_string(), "CN=web");
            assert_eq!(cert.issuer(), root_cert.subject());
            cert.verify_signature(Some(root_cert.public_key())).unwrap();

            let san = cert.subject_alternative_name().unwrap().unwrap().value;
            assert_eq!(san.general_names.len(), 1);
            assert!(matches!(san.general_names[0], GeneralName::URI(u) if u == uri("web")));

            let bc = cert.basic_constraints().unwrap().unwrap().value;
            assert!(!bc.ca);
            let ku = cert.key_usage().unwrap().unwrap().value;
            assert!(ku.digital_signature() && ku.key_encipherment());
            assert!(ku.key_agreement() && ku.data_encipherment());
            assert!(!ku.key_cert_sign());
            let eku = cert.extended_key_usage().unwrap().unwrap().value;
            assert!(eku.server_auth && eku.client_auth);

            let info = cert_info(&leaf.cert_pem).unwrap();
            assert!(!info.is_ca);
            assert_eq!(info.authority_key_id, root.id);
            let spki = cert.tbs_certificate.subject_pki.raw;
            assert_eq!(info.subject_key_id, colon_hex(&key_id(spki)));
        }
    }

    #[test]
    fn p384_root_signs_verifiable_leafs() {
        let now = fixed_now();
        let root = generate_root(TD, 1, KeyType::Ec384, DEFAULT_ROOT_TTL, now).unwrap();
        let req = leaf_key_and_csr(&uri("web"), "web").unwrap();
        let leaf = Signer::new(&root)
            .unwrap()
            .sign(&req.csr_pem, TD, 5, DEFAULT_LEAF_TTL, now)
            .unwrap();
        let root_der = cert_der(&root.cert_pem);
        let (_, root_cert) = x509_parser::parse_x509_certificate(&root_der).unwrap();
        let der = cert_der(&leaf.cert_pem);
        let (_, cert) = x509_parser::parse_x509_certificate(&der).unwrap();
        cert.verify_signature(Some(root_cert.public_key())).unwrap();
    }

    fn pem_encode(label: &str, der: &[u8]) -> String {
        const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut body = String::new();
        for chunk in der.chunks(3) {
            let n = chunk
                .iter()
                .enumerate()
                .fold(0u32, |acc, (i, b)| acc | u32::from(*b) << (16 - 8 * i));
            for i in 0..4 {
                if i <= chunk.len() {
                    body.push(char::from(B64[(n >> (18 - 6 * i) & 63) as usize]));
                } else {
                    body.push('=');
                }
            }
        }
        let lines: Vec<&str> = body
            .as_bytes()
            .chunks(64)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect();
        format!(
            "-----BEGIN {label}-----\n{}\n-----END {label}-----\n",
            lines.join("\n")
        )
    }

    fn csr_with_sans(sans: Vec<SanType>) -> String {
        let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = CertificateParams::default();
        params.subject_alt_names = sans;
        params.serialize_request(&key).unwrap().pem().unwrap()
    }

    fn sign_err(signer: &Signer, csr_pem: &str) -> String {
        signer
            .sign(csr_pem, TD, 1, DEFAULT_LEAF_TTL, fixed_now())
            .expect_err("CSR should have been rejected")
            .to_string()
    }

    #[test]
    fn rejections_name_the_rule() {
        let root = generate_root(TD, 1, KeyType::Ec256, DEFAULT_ROOT_TTL, fixed_now()).unwrap();
        let signer = Signer::new(&root).unwrap();

        let foreign =
            leaf_key_and_csr("spiffe://other.consul/ns/default/dc/dc1/svc/web", "web").unwrap();
        let e = sign_err(&signer, &foreign.csr_pem);
        assert!(e.contains("trust domain"), "{e}");

        let agent =
            leaf_key_and_csr(&format!("spiffe://{TD}/agent/client/dc/dc1/id/x"), "x").unwrap();
        let e = sign_err(&signer, &agent.csr_pem);
        assert!(e.contains("is not a SPIFFE service ID"), "{e}");

        let e = sign_err(&signer, &csr_with_sans(vec![]));
        assert!(
            e.contains("exactly one URI SAN") && e.contains("found none"),
            "{e}"
        );

        let two = csr_with_sans(vec![
            uri_san(&uri("web")).unwrap(),
            uri_san(&uri("api")).unwrap(),
        ]);
        let e = sign_err(&signer, &two);
        assert!(
            e.contains("exactly one URI SAN") && e.contains("found 2"),
            "{e}"
        );

        let dns = SanType::DnsName(Ia5String::try_from("web.example").unwrap());
        let with_dns = csr_with_sans(vec![uri_san(&uri("web")).unwrap(), dns]);
        let e = sign_err(&signer, &with_dns);
        assert!(e.contains("only a URI SAN"), "{e}");

        // Flip the last byte of the ECDSA signature: still well-formed DER,
        // so only the signature check can catch it.
        let good = leaf_key_and_csr(&uri("web"), "web").unwrap();
        let mut der = pem_block(&good.csr_pem, "CERTIFICATE REQUEST").unwrap();
        let last = der.len() - 1;
        der[last] ^= 0x01;
        let e = sign_err(&signer, &pem_encode("CERTIFICATE REQUEST", &der));
        assert!(e.contains("CSR signature is invalid"), "{e}");
        // The round trip itself must not be what broke it.
        der[last] ^= 0x01;
        signer
            .sign(
                &pem_encode("CERTIFICATE REQUEST", &der),
                TD,
                1,
                DEFAULT_LEAF_TTL,
                fixed_now(),
            )
            .unwrap();

        let mut truncated = pem_block(&good.csr_pem, "CERTIFICATE REQUEST").unwrap();
        truncated.truncate(truncated.len() / 2);
        let e = sign_err(&signer, &pem_encode("CERTIFICATE REQUEST", &truncated));
        assert!(e.contains("CSR is malformed"), "{e}");

        let e = sign_err(&signer, "not a pem at all");
        assert!(e.contains("PEM is malformed"), "{e}");
        let e = sign_err(&signer, &root.cert_pem);
        assert!(e.contains("expected a CERTIFICATE REQUEST"), "{e}");

        let e = signer
            .sign(&good.csr_pem, TD, 0, DEFAULT_LEAF_TTL, fixed_now())
            .unwrap_err()
            .to_string();
        assert!(e.contains("serial number must be positive"), "{e}");

        assert_eq!(
            KeyType::parse("rsa", 2048).unwrap_err().to_string(),
            "PrivateKeyType rsa is not supported; use ec"
        );
        let e = KeyType::parse("ec", 521).unwrap_err().to_string();
        assert!(e.contains("PrivateKeyBits 521"), "{e}");
        assert_eq!(KeyType::parse("ec", 384).unwrap(), KeyType::Ec384);
        assert_eq!(KeyType::parse("ec", 256).unwrap(), KeyType::Ec256);
    }

    #[test]
    fn signer_rejects_mismatched_key() {
        let a = generate_root(TD, 1, KeyType::Ec256, DEFAULT_ROOT_TTL, fixed_now()).unwrap();
        let b = generate_root(TD, 2, KeyType::Ec256, DEFAULT_ROOT_TTL, fixed_now()).unwrap();
        let mixed = RootCert {
            key_pem: b.key_pem.clone(),
            ..a.clone()
        };
        let e = Signer::new(&mixed).unwrap_err().to_string();
        assert!(e.contains("does not match"), "{e}");
        assert!(cross_sign(&a, &mixed, fixed_now()).is_err());
        assert!(!format!("{a:?}").contains("PRIVATE KEY"));
    }

    #[test]
    fn spiffe_ids() {
        let id = parse_spiffe_service_id(&uri("web")).unwrap();
        assert_eq!(
            id,
            ServiceId {
                trust_domain: TD.to_string(),
                namespace: "default".to_string(),
                datacenter: "dc1".to_string(),
                service: "web".to_string(),
            }
        );
        for bad in [
            "spiffe://td/ns/default/dc/dc1/svc/",
            "spiffe://td/ns/default/dc/dc1/svc/web/extra",
            "spiffe://td/ap/part/ns/default/dc/dc1/svc/web",
            "spiffe://td/agent/client/dc/dc1/id/x",
            "spiffe:///ns/default/dc/dc1/svc/web",
            "spiffe://td",
            "https://td/ns/default/dc/dc1/svc/web",
            "spiffe://td/ns/default/dc/dc1/svc/web?x=1",
            "spiffe://td/ns/default/dc/dc1/svc/we b",
            "spiffe://user@td/ns/default/dc/dc1/svc/web",
        ] {
            assert_eq!(parse_spiffe_service_id(bad), None, "{bad}");
        }
        assert_eq!(colon_hex(&[0xd2, 0x9a, 0x05]), "d2:9a:05");
        assert_eq!(colon_hex(&[]), "");
    }

    #[test]
    fn signer_is_shareable_across_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<Signer>();
    }
}
