//! Mesh TLS with rustls, for clients of the mesh that are not Envoy (native integrations and
//! the test suite): a server that requires client certificates from the mesh CA, and a client
//! that checks the server's chain against the CA roots and its identity by exact SPIFFE URI.
//!
//! Mesh leafs carry only a URI SAN, so rustls' default verifier (which checks a hostname)
//! would refuse every one of them; identity here is the URI, as in Envoy's SAN matcher.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, ServerConfig,
    SignatureScheme,
};

/// Why a PEM bundle, key or TLS configuration could not be used, or an exchange failed, in
/// rustls' or the PEM parser's words. Callers only report it, so it is one kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl TlsError {
    fn new(message: impl Into<String>) -> TlsError {
        TlsError(message.into())
    }
}

/// For callers whose own errors are text (the black-box tests' helpers), so `?` still works.
impl From<TlsError> for String {
    fn from(error: TlsError) -> String {
        error.0
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in a PEM bundle (a leaf followed by its intermediates, or roots).
pub fn certificates(pem: &str) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| TlsError::new(format!("bad certificate PEM: {error}")))
}

/// A trust store of the given root PEMs.
pub fn roots(pems: &[&str]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for pem in pems {
        for cert in certificates(pem)? {
            store
                .add(cert)
                .map_err(|error| TlsError::new(format!("bad root certificate: {error}")))?;
        }
    }
    Ok(Arc::new(store))
}

/// A service's certificate chain and private key.
pub struct Identity {
    pub chain: Vec<CertificateDer<'static>>,
    key: PrivateKeyDer<'static>,
}

impl Identity {
    /// From an agent's leaf response: `CertPEM` (leaf plus intermediates) and `PrivateKeyPEM`.
    pub fn from_pem(cert_pem: &str, key_pem: &str) -> Result<Identity, TlsError> {
        let chain = certificates(cert_pem)?;
        if chain.is_empty() {
            return Err(TlsError::new("no certificate in CertPEM"));
        }
        let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
            .map_err(|error| TlsError::new(format!("bad private key PEM: {error}")))?;
        Ok(Identity { chain, key })
    }
}

/// The URI SANs of a DER certificate.
pub fn uri_sans(der: &[u8]) -> Vec<String> {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(der) else {
        return Vec::new();
    };
    let Ok(Some(san)) = cert.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|name| match name {
            x509_parser::extensions::GeneralName::URI(uri) => Some((*uri).to_string()),
            _ => None,
        })
        .collect()
}

/// Verifies a server the way a Connect proxy does: chain to the CA roots, then identity by
/// exact SPIFFE URI instead of by hostname.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected_uri: String,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            self.provider.signature_verification_algorithms.all,
        )?;
        if uri_sans(end_entity) != [self.expected_uri.clone()] {
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            ));
        }
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
            &self.provider.signature_verification_algorithms,
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
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A server that presents `identity` and requires a client certificate chaining to `roots`.
pub fn server_config(
    roots: Arc<RootCertStore>,
    identity: &Identity,
) -> Result<Arc<ServerConfig>, TlsError> {
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider())
        .build()
        .map_err(|error| TlsError::new(error.to_string()))?;
    let config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| TlsError::new(error.to_string()))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|error| TlsError::new(error.to_string()))?;
    Ok(Arc::new(config))
}

/// A client that presents `identity` and accepts only a server whose chain reaches `roots`
/// and whose URI SAN is exactly `expected_uri`.
pub fn client_config(
    roots: Arc<RootCertStore>,
    expected_uri: &str,
    identity: &Identity,
) -> Result<Arc<ClientConfig>, TlsError> {
    let verifier = SpiffeServerVerifier {
        roots,
        expected_uri: expected_uri.to_string(),
        provider: provider(),
    };
    let config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|error| TlsError::new(error.to_string()))?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_auth_cert(identity.chain.clone(), identity.key.clone_key())
        .map_err(|error| TlsError::new(error.to_string()))?;
    Ok(Arc::new(config))
}

/// What one mutual-TLS exchange over loopback showed: the client's URI SANs as the server saw
/// them, or the error each side hit.
pub struct Exchange {
    pub server: Result<Vec<String>, TlsError>,
    pub client: Result<(), TlsError>,
}

/// Runs one mutual-TLS exchange over a real loopback socket: the client sends a line, the
/// server answers it, both check what they got. Socket timeouts bound every blocking call,
/// so a broken handshake fails instead of hanging. A self-check of two identities, used by
/// the test suite.
pub fn loopback_exchange(server: Arc<ServerConfig>, client: Arc<ClientConfig>) -> Exchange {
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    const PING: &[u8] = b"ping from the client";
    const PONG: &[u8] = b"pong from the server";
    let timeout = Some(Duration::from_secs(10));
    let listener = match TcpListener::bind("127.0.0.1:0") {
        Ok(listener) => listener,
        Err(error) => {
            return Exchange {
                server: Err(TlsError(error.to_string())),
                client: Err(TlsError(error.to_string())),
            }
        }
    };
    let address = listener.local_addr().map_err(|e| e.to_string());
    let server_side = std::thread::spawn(move || -> Result<Vec<String>, String> {
        let (socket, _) = listener.accept().map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(timeout)
            .map_err(|e| e.to_string())?;
        socket
            .set_write_timeout(timeout)
            .map_err(|e| e.to_string())?;
        let connection = rustls::ServerConnection::new(server).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(connection, socket);
        let mut received = vec![0u8; PING.len()];
        tls.read_exact(&mut received).map_err(|e| e.to_string())?;
        if received != PING {
            return Err("server received the wrong bytes".into());
        }
        let peer = tls
            .conn
            .peer_certificates()
            .and_then(|chain| chain.first())
            .map(|cert| uri_sans(cert))
            .unwrap_or_default();
        tls.write_all(PONG).map_err(|e| e.to_string())?;
        tls.conn.send_close_notify();
        tls.flush().map_err(|e| e.to_string())?;
        Ok(peer)
    });
    let client_side = (|| -> Result<(), String> {
        let socket = TcpStream::connect(address?).map_err(|e| e.to_string())?;
        socket
            .set_read_timeout(timeout)
            .map_err(|e| e.to_string())?;
        socket
            .set_write_timeout(timeout)
            .map_err(|e| e.to_string())?;
        // Identity is checked by URI; the name only has to be syntactically valid.
        let name = ServerName::try_from("mesh.invalid").map_err(|e| e.to_string())?;
        let connection = rustls::ClientConnection::new(client, name).map_err(|e| e.to_string())?;
        let mut tls = rustls::StreamOwned::new(connection, socket);
        tls.write_all(PING).map_err(|e| e.to_string())?;
        tls.flush().map_err(|e| e.to_string())?;
        let mut reply = vec![0u8; PONG.len()];
        tls.read_exact(&mut reply).map_err(|e| e.to_string())?;
        if reply != PONG {
            return Err("client received the wrong bytes".into());
        }
        Ok(())
    })();
    Exchange {
        server: server_side
            .join()
            .unwrap_or_else(|_| Err("server thread panicked".into()))
            .map_err(TlsError),
        client: client_side.map_err(TlsError),
    }
}
