//! Certificate files: read, checked (PEM, validity window, a key that matches its
//! certificate, a CA bundle of certificates) and turned into rustls configurations. Every
//! error names the stanza key and the file.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::WebPkiClientVerifier;
use rustls::sign::CertifiedKey;
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme, SupportedProtocolVersion,
};

use super::{ProtocolConfig, TlsError, TlsVersion};

/// Whether a listener asks for client certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ClientAuth {
    None,
    /// Asked for and checked when sent (the server port: a peer server shows who it is).
    Optional,
    /// `verify_incoming`: refused without one from the configured CA.
    Required,
}

impl ClientAuth {
    pub(super) fn from_verify(verify_incoming: bool) -> ClientAuth {
        match verify_incoming {
            true => ClientAuth::Required,
            false => ClientAuth::None,
        }
    }
}

/// The ring provider with the TLS 1.2 suites narrowed to `names` (all when empty).
fn provider(stanza: &str, names: &[String]) -> Result<Arc<CryptoProvider>, TlsError> {
    let mut provider = rustls::crypto::ring::default_provider();
    if !names.is_empty() {
        for name in names {
            let known = provider
                .cipher_suites
                .iter()
                .any(|suite| suite.tls13().is_none() && format!("{:?}", suite.suite()) == *name);
            if !known {
                return Err(TlsError::new(format!(
                    "{stanza}.tls_cipher_suites: {name:?} is not a supported cipher suite"
                )));
            }
        }
        provider.cipher_suites.retain(|suite| {
            suite.tls13().is_some() || names.contains(&format!("{:?}", suite.suite()))
        });
    }
    Ok(Arc::new(provider))
}

static TLS13_ONLY: [&SupportedProtocolVersion; 1] = [&rustls::version::TLS13];
static TLS12_UP: [&SupportedProtocolVersion; 2] =
    [&rustls::version::TLS13, &rustls::version::TLS12];

fn versions(min: TlsVersion) -> &'static [&'static SupportedProtocolVersion] {
    match min {
        TlsVersion::V1_3 => &TLS13_ONLY,
        _ => &TLS12_UP,
    }
}

fn read(key: &str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|error| TlsError::new(format!("{key} {}: {error}", path.display())))
}

/// Fails on a certificate outside its validity window, naming the file.
fn check_validity(key: &str, path: &Path, der: &CertificateDer<'_>) -> Result<(), TlsError> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).map_err(|error| {
        TlsError::new(format!(
            "{key} {}: bad certificate: {error}",
            path.display()
        ))
    })?;
    let validity = cert.validity();
    let now = x509_parser::time::ASN1Time::now();
    if now < validity.not_before {
        return Err(TlsError::new(format!(
            "{key} {}: certificate {} is not valid before {}",
            path.display(),
            cert.subject(),
            validity.not_before
        )));
    }
    if now > validity.not_after {
        return Err(TlsError::new(format!(
            "{key} {}: certificate {} expired at {}",
            path.display(),
            cert.subject(),
            validity.not_after
        )));
    }
    Ok(())
}

/// Every certificate in a PEM file; none at all is an error.
fn certificates(key: &str, path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::new(format!("{key} {}: bad PEM: {error}", path.display())))?;
    if certs.is_empty() {
        return Err(TlsError::new(format!(
            "{key} {}: no certificate found in the file",
            path.display()
        )));
    }
    Ok(certs)
}

/// The system's CA bundle, where Debian keeps it.
const SYSTEM_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// The trust store of `ca_file` and every file in `ca_path`; `None` when neither is set.
/// A CA outside its validity window is an error, except in the system's bundle, which
/// carries expired roots that simply trust nothing.
fn roots(stanza: &str, config: &ProtocolConfig) -> Result<Option<Arc<RootCertStore>>, TlsError> {
    roots_with(stanza, config, &[])
}

/// `roots` and the CA certificates in `extra` (PEM; the Connect CA's roots a server trusts
/// for auto_encrypt, the CAs a client agent was handed); `None` when there are none.
fn roots_with(
    stanza: &str,
    config: &ProtocolConfig,
    extra: &[String],
) -> Result<Option<Arc<RootCertStore>>, TlsError> {
    let files = ca_files(stanza, config)?;
    if files.is_empty() && extra.is_empty() {
        return Ok(None);
    }
    let mut store = RootCertStore::empty();
    for pem in extra {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()).flatten() {
            // Handed over by a server or read from the state: one that does not parse is
            // skipped rather than stopping the rest.
            let _ = store.add(cert);
        }
    }
    for (key, path) in files {
        let system = path == Path::new(SYSTEM_BUNDLE);
        for cert in certificates(&key, &path)? {
            match check_validity(&key, &path, &cert) {
                Err(_) if system => continue,
                checked => checked?,
            }
            store.add(cert).map_err(|error| {
                TlsError::new(format!(
                    "{key} {}: bad CA certificate: {error}",
                    path.display()
                ))
            })?;
        }
    }
    Ok(Some(Arc::new(store)))
}

/// `ca_file` and every file in `ca_path`, with the key that names them in errors.
fn ca_files(stanza: &str, config: &ProtocolConfig) -> Result<Vec<(String, PathBuf)>, TlsError> {
    let mut files: Vec<(String, PathBuf)> = Vec::new();
    if let Some(file) = &config.ca_file {
        files.push((format!("{stanza}.ca_file"), file.clone()));
    }
    if let Some(dir) = &config.ca_path {
        let key = format!("{stanza}.ca_path");
        let entries = std::fs::read_dir(dir)
            .map_err(|error| TlsError::new(format!("{key} {}: {error}", dir.display())))?;
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|entry| entry.ok().map(|entry| entry.path()))
            .filter(|path| path.is_file())
            .collect();
        paths.sort();
        files.extend(paths.into_iter().map(|path| (key.clone(), path)));
    }
    Ok(files)
}

/// The CA certificates' text (PEM) of `ca_file` and `ca_path`, for handing on.
pub(super) fn ca_pems(stanza: &str, config: &ProtocolConfig) -> Result<Vec<String>, TlsError> {
    ca_files(stanza, config)?
        .into_iter()
        .map(|(key, path)| {
            std::fs::read_to_string(&path)
                .map_err(|error| TlsError::new(format!("{key} {}: {error}", path.display())))
        })
        .collect()
}

/// The certificate chain and key, checked: the leaf within its validity window and the key
/// its own.
fn identity(
    stanza: &str,
    config: &ProtocolConfig,
    provider: &CryptoProvider,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let (Some(cert_file), Some(key_file)) = (&config.cert_file, &config.key_file) else {
        return Err(TlsError::new(format!(
            "{stanza}: cert_file and key_file are both required here"
        )));
    };
    let cert_key = format!("{stanza}.cert_file");
    let chain = certificates(&cert_key, cert_file)?;
    check_validity(&cert_key, cert_file, &chain[0])?;
    let key_key = format!("{stanza}.key_file");
    let key_pem = read(&key_key, key_file)?;
    checked_identity(
        chain,
        &key_pem,
        provider,
        &format!("{key_key} {}", key_file.display()),
        &cert_file.display().to_string(),
    )
}

/// An identity from PEM in memory (auto_encrypt's certificate and key).
pub(super) fn identity_from_pem(
    cert_pem: &str,
    key_pem: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::new(format!("auto_encrypt certificate: {error}")))?;
    if chain.is_empty() {
        return Err(TlsError::new(
            "auto_encrypt certificate: none in the answer",
        ));
    }
    let provider = rustls::crypto::ring::default_provider();
    checked_identity(
        chain,
        key_pem.as_bytes(),
        &provider,
        "auto_encrypt key",
        "the auto_encrypt certificate",
    )
}

/// The key parsed and checked against the chain's leaf; errors name `key_what`/`cert_what`.
fn checked_identity(
    chain: Vec<CertificateDer<'static>>,
    key_pem: &[u8],
    provider: &CryptoProvider,
    key_what: &str,
    cert_what: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|error| TlsError::new(format!("{key_what}: no private key: {error}")))?;
    let signing = provider
        .key_provider
        .load_private_key(key.clone_key())
        .map_err(|error| TlsError::new(format!("{key_what}: {error}")))?;
    if let Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch)) =
        CertifiedKey::new(chain.clone(), signing).keys_match()
    {
        return Err(TlsError::new(format!(
            "{key_what}: the key does not match the certificate in {cert_what}"
        )));
    }
    Ok((chain, key))
}

/// A listener's configuration: its certificate, the client certificates it asks for, the
/// versions and suites it allows, and the protocols it offers.
pub(super) fn server_config(
    stanza: &str,
    config: &ProtocolConfig,
    alpn: &[Vec<u8>],
    auth: ClientAuth,
    extra_roots: &[String],
    auto: Option<&super::AutoCert>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider(stanza, &config.cipher_suites)?;
    let (chain, key) = match auto {
        // `tls.grpc.use_auto_cert`: the certificate auto_encrypt got.
        Some(auto) => identity_from_pem(&auto.cert_pem, &auto.key_pem)?,
        None => identity(stanza, config, &provider)?,
    };
    let roots = roots_with(stanza, config, extra_roots)?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(versions(config.tls_min_version))
        .map_err(|error| TlsError::new(format!("{stanza}: {error}")))?;
    let builder = match (auth, roots) {
        (ClientAuth::None, _) | (ClientAuth::Optional, None) => builder.with_no_client_auth(),
        (ClientAuth::Required, None) => {
            return Err(TlsError::new(format!(
                "{stanza}: verify_incoming is set, and no CA certificate (ca_file or ca_path) is provided"
            )))
        }
        (auth, Some(roots)) => {
            let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider);
            let verifier = match auth {
                ClientAuth::Optional => verifier.allow_unauthenticated(),
                _ => verifier,
            };
            builder.with_client_cert_verifier(
                verifier
                    .build()
                    .map_err(|error| TlsError::new(format!("{stanza}: {error}")))?,
            )
        }
    };
    let mut server = builder
        .with_single_cert(chain, key)
        .map_err(|error| TlsError::new(format!("{stanza}: {error}")))?;
    server.alpn_protocols = alpn.to_vec();
    Ok(Arc::new(server))
}

/// Outgoing server RPC: the server's chain checked against the CA and, with
/// `verify_server_hostname`, its name against `server.<dc>.<domain>`; this agent's own
/// certificate presented when it has one.
/// With `auto` (a client agent under auto_encrypt) the CAs and certificate it was handed
/// join the configured ones; before it has them, with no CA configured either, the servers
/// go unchecked for the one request that asks for them, as Consul's auto_encrypt does.
pub(super) fn rpc_client_config(
    config: &ProtocolConfig,
    auto: Option<&super::AutoCert>,
    bootstrapping: bool,
) -> Result<Arc<ClientConfig>, TlsError> {
    let stanza = "tls.internal_rpc";
    let provider = provider(stanza, &config.cipher_suites)?;
    let handed: &[String] = auto.map_or(&[], |auto| &auto.ca_pems);
    let identity = match (config.has_certificate(), auto) {
        (true, _) => Some(identity(stanza, config, &provider)?),
        (false, Some(auto)) => Some(identity_from_pem(&auto.cert_pem, &auto.key_pem)?),
        (false, None) => None,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match roots_with(stanza, config, handed)? {
        Some(roots) => {
            let verifier = WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| TlsError::new(format!("{stanza}: {error}")))?;
            match config.verify_server_hostname {
                true => verifier,
                false => Arc::new(AnyName(verifier)),
            }
        }
        None if bootstrapping => Arc::new(Unverified(provider.clone())),
        None => {
            return Err(TlsError::new(format!(
                "{stanza}: verify_outgoing is set, and no CA certificate (ca_file or ca_path) is provided"
            )))
        }
    };
    client_config(
        stanza,
        provider,
        config.tls_min_version,
        verifier,
        identity,
        b"h2",
    )
}

fn client_config(
    stanza: &str,
    provider: Arc<CryptoProvider>,
    min: TlsVersion,
    verifier: Arc<dyn ServerCertVerifier>,
    identity: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    alpn: &[u8],
) -> Result<Arc<ClientConfig>, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(versions(min))
        .map_err(|error| TlsError::new(format!("{stanza}: {error}")))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
    let mut client = match identity {
        Some((chain, key)) => builder
            .with_client_auth_cert(chain, key)
            .map_err(|error| TlsError::new(format!("{stanza}: {error}")))?,
        None => builder.with_no_client_auth(),
    };
    client.alpn_protocols = vec![alpn.to_vec()];
    Ok(Arc::new(client))
}

/// What the CLI's HTTPS client trusts and presents (`-ca-file`, `CONSUL_CACERT`, ...).
#[derive(Clone, Debug, Default)]
pub struct ClientFiles {
    pub ca_file: Option<PathBuf>,
    pub ca_path: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    /// `CONSUL_HTTP_SSL_VERIFY=false`: the agent's certificate is not checked at all.
    pub skip_verify: bool,
}

/// The CLI's HTTPS client configuration. Without a CA file it trusts the system's bundle.
pub fn client_config_from_files(files: &ClientFiles) -> Result<Arc<ClientConfig>, TlsError> {
    let stanza = "client";
    let config = ProtocolConfig {
        ca_file: files.ca_file.clone().or_else(|| {
            let system = PathBuf::from(SYSTEM_BUNDLE);
            (files.ca_path.is_none() && system.exists()).then_some(system)
        }),
        ca_path: files.ca_path.clone(),
        cert_file: files.cert_file.clone(),
        key_file: files.key_file.clone(),
        ..ProtocolConfig::default()
    };
    let provider = provider(stanza, &[])?;
    let identity = match config.has_certificate() {
        true => Some(identity(stanza, &config, &provider)?),
        false => None,
    };
    let roots = match files.skip_verify {
        true => None,
        false => roots(stanza, &config)?,
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (files.skip_verify, roots) {
        (true, _) => Arc::new(Unverified(provider.clone())),
        (false, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|error| TlsError::new(format!("{stanza}: {error}")))?
        }
        (false, None) => {
            return Err(TlsError::new(
                "no CA certificate to check the agent's with: set -ca-file or CONSUL_CACERT",
            ))
        }
    };
    client_config(
        stanza,
        provider,
        TlsVersion::V1_2,
        verifier,
        identity,
        b"http/1.1",
    )
}

/// Whether a peer's certificate is valid for `name` (a DNS SAN, as a hostname check sees it).
pub fn names(cert: &CertificateDer<'_>, name: &str) -> bool {
    let Ok(server_name) = ServerName::try_from(name.to_string()) else {
        return false;
    };
    rustls::server::ParsedCertificate::try_from(cert)
        .and_then(|parsed| rustls::client::verify_server_name(&parsed, &server_name))
        .is_ok()
}

/// Checks the chain and ignores the name: `verify_outgoing` without
/// `verify_server_hostname`, where any certificate from the CA will do.
#[derive(Debug)]
struct AnyName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for AnyName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// Accepts any certificate (signatures still checked): only for
/// `CONSUL_HTTP_SSL_VERIFY=false`, which asks for exactly that.
#[derive(Debug)]
struct Unverified(Arc<CryptoProvider>);

impl ServerCertVerifier for Unverified {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
