//! The certificates `concord tls ca create` and `concord tls cert create` write, with Consul's
//! lifetimes, SANs and key usages: an EC P-256 agent CA, and server, client and CLI
//! certificates it signs.

use std::net::IpAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose,
    GeneralSubtree, IsCa, KeyPair, KeyUsagePurpose, NameConstraints, SanType, SerialNumber,
};

use super::TlsError;

/// A certificate and its key, PEM.
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// `concord tls ca create`'s options.
pub struct CaOptions {
    pub days: u32,
    pub domain: String,
    pub name_constraint: bool,
    pub additional_name_constraints: Vec<String>,
    pub cluster_id: Option<String>,
    pub common_name: Option<String>,
}

/// What a certificate from `concord tls cert create` is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Server,
    Client,
    Cli,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Role::Server => "server",
            Role::Client => "client",
            Role::Cli => "cli",
        }
    }
}

/// `concord tls cert create`'s options.
pub struct CertOptions {
    pub role: Role,
    pub datacenter: String,
    pub domain: String,
    pub node: Option<String>,
    pub days: u32,
    pub dns_names: Vec<String>,
    pub ip_addresses: Vec<IpAddr>,
}

fn error(what: &str, error: impl std::fmt::Display) -> TlsError {
    TlsError::new(format!("{what}: {error}"))
}

/// A positive 128-bit random serial, and its decimal form (the CA's common name uses it).
fn serial() -> (SerialNumber, u128) {
    let mut bytes: [u8; 16] = rand::random();
    bytes[0] &= 0x7f;
    (SerialNumber::from_slice(&bytes), u128::from_be_bytes(bytes))
}

fn validity(params: &mut CertificateParams, days: u32) -> Result<(), TlsError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| error("clock", e))?;
    // A minute back, so a peer whose clock is slightly behind already accepts it.
    let start = now.saturating_sub(Duration::from_secs(60));
    let end = now + Duration::from_secs(u64::from(days) * 86_400);
    let at = |at: Duration| {
        i64::try_from(at.as_secs())
            .ok()
            .and_then(|secs| time::OffsetDateTime::from_unix_timestamp(secs).ok())
            .ok_or_else(|| error("validity", "out of range"))
    };
    params.not_before = at(start)?;
    params.not_after = at(end)?;
    Ok(())
}

fn dns(name: &str) -> Result<SanType, TlsError> {
    Ia5String::try_from(name.to_string())
        .map(SanType::DnsName)
        .map_err(|e| error(&format!("DNS name {name:?}"), e))
}

/// A new agent CA.
pub fn ca(options: &CaOptions) -> Result<Pair, TlsError> {
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| error("key", e))?;
    let (serial, number) = serial();
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(
        DnType::CommonName,
        options
            .common_name
            .clone()
            .unwrap_or_else(|| format!("Concord Agent CA {number}")),
    );
    name.push(DnType::OrganizationName, "concord");
    params.distinguished_name = name;
    params.serial_number = Some(serial);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.use_authority_key_identifier_extension = true;
    if options.name_constraint {
        let mut permitted = vec![
            GeneralSubtree::DnsName(options.domain.trim_end_matches('.').to_string()),
            GeneralSubtree::DnsName("localhost".to_string()),
        ];
        permitted.extend(
            options
                .additional_name_constraints
                .iter()
                .map(|name| GeneralSubtree::DnsName(name.clone())),
        );
        params.name_constraints = Some(NameConstraints {
            permitted_subtrees: permitted,
            excluded_subtrees: Vec::new(),
        });
    }
    if let Some(id) = &options.cluster_id {
        let uri = format!("spiffe://{id}.{}", options.domain.trim_end_matches('.'));
        params.subject_alt_names = vec![SanType::URI(
            Ia5String::try_from(uri.clone()).map_err(|e| error(&uri, e))?,
        )];
    }
    validity(&mut params, options.days)?;
    let cert = params
        .self_signed(&key)
        .map_err(|e| error("CA certificate", e))?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// The common name and DNS SANs of a certificate for `options.role`, as Consul makes them.
pub fn names(options: &CertOptions) -> (String, Vec<String>) {
    let domain = options.domain.trim_end_matches('.');
    let name = format!("{}.{}.{domain}", options.role.name(), options.datacenter);
    let mut sans = options.dns_names.clone();
    if let (Role::Server, Some(node)) = (options.role, &options.node) {
        sans.push(format!("{node}.{name}"));
    }
    sans.push(name.clone());
    sans.push("localhost".to_string());
    (name, sans)
}

/// A certificate signed by the CA in `ca_cert_pem`/`ca_key_pem`.
pub fn cert(ca_cert_pem: &str, ca_key_pem: &str, options: &CertOptions) -> Result<Pair, TlsError> {
    let issuer =
        crate::connect::ca::issuer_from_pem(ca_cert_pem, ca_key_pem).map_err(|e| error("CA", e))?;
    let key = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(|e| error("key", e))?;
    let (common_name, dns_names) = names(options);
    let mut params = CertificateParams::default();
    let mut name = DistinguishedName::new();
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.serial_number = Some(serial().0);
    params.use_authority_key_identifier_extension = true;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = match options.role {
        Role::Server | Role::Client => vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
        Role::Cli => Vec::new(),
    };
    let mut sans = dns_names
        .iter()
        .map(|name| dns(name))
        .collect::<Result<Vec<_>, _>>()?;
    if options.role != Role::Cli {
        sans.extend(options.ip_addresses.iter().copied().map(SanType::IpAddress));
        sans.push(SanType::IpAddress(IpAddr::from([127, 0, 0, 1])));
    }
    params.subject_alt_names = sans;
    validity(&mut params, options.days)?;
    let cert = params
        .signed_by(&key, &issuer)
        .map_err(|e| error("certificate", e))?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}
