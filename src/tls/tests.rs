//! Agent TLS over real sockets and real files: what `concord tls` generates, the file checks
//! (each naming its file), and the server port's handshakes: plaintext refused under
//! `verify_incoming`, a certificate from another CA refused, a server told from a client.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use super::generate::{self, CaOptions, CertOptions, Role};
use super::listen::{self, Kind};
use super::{ProtocolConfig, Tls, TlsConfig};

struct Files {
    dir: tempfile::TempDir,
}

impl Files {
    fn new() -> Files {
        Files {
            dir: tempfile::tempdir().expect("dir"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn write(&self, name: &str, text: &str) -> PathBuf {
        let path = self.path(name);
        std::fs::write(&path, text).expect("write");
        path
    }

    /// A CA under `name`.pem / `name`-key.pem.
    fn ca(&self, name: &str) -> (String, String) {
        let pair = generate::ca(&CaOptions {
            days: 30,
            domain: "consul".into(),
            name_constraint: false,
            additional_name_constraints: Vec::new(),
            cluster_id: None,
            common_name: None,
        })
        .expect("CA");
        self.write(&format!("{name}.pem"), &pair.cert_pem);
        self.write(&format!("{name}-key.pem"), &pair.key_pem);
        (pair.cert_pem, pair.key_pem)
    }

    /// A certificate for `role` signed by `ca`, under `name`.pem / `name`-key.pem.
    fn cert(&self, ca: &(String, String), role: Role, name: &str) -> (PathBuf, PathBuf) {
        let pair = generate::cert(&ca.0, &ca.1, &options(role)).expect("cert");
        (
            self.write(&format!("{name}.pem"), &pair.cert_pem),
            self.write(&format!("{name}-key.pem"), &pair.key_pem),
        )
    }
}

fn options(role: Role) -> CertOptions {
    CertOptions {
        role,
        datacenter: "dc1".into(),
        domain: "consul".into(),
        node: Some("s1".into()),
        days: 30,
        dns_names: vec!["extra.example".into()],
        ip_addresses: vec!["10.0.0.1".parse().expect("ip")],
    }
}

fn protocol(files: &Files, cert: &(PathBuf, PathBuf), verify_incoming: bool) -> ProtocolConfig {
    ProtocolConfig {
        ca_file: Some(files.path("ca.pem")),
        cert_file: Some(cert.0.clone()),
        key_file: Some(cert.1.clone()),
        verify_incoming,
        verify_outgoing: true,
        verify_server_hostname: true,
        ..ProtocolConfig::default()
    }
}

fn load(internal_rpc: ProtocolConfig) -> Result<Arc<Tls>, super::TlsError> {
    let config = TlsConfig {
        internal_rpc,
        ..TlsConfig::default()
    };
    Tls::load(&config, "dc1", "consul.", false, false)
}

#[test]
fn generated_certificates_carry_consuls_names() {
    let (name, sans) = generate::names(&options(Role::Server));
    assert_eq!(name, "server.dc1.consul");
    assert_eq!(
        sans,
        [
            "extra.example",
            "s1.server.dc1.consul",
            "server.dc1.consul",
            "localhost"
        ]
    );
    let (name, sans) = generate::names(&CertOptions {
        node: None,
        dns_names: Vec::new(),
        ..options(Role::Cli)
    });
    assert_eq!(name, "cli.dc1.consul");
    assert_eq!(sans, ["cli.dc1.consul", "localhost"]);

    let files = Files::new();
    let ca = files.ca("ca");
    let server = files.cert(&ca, Role::Server, "server");
    let client = files.cert(&ca, Role::Client, "client");
    let pem = |path: &Path| std::fs::read(path).expect("read");
    let leaf = |path: &Path| {
        rustls::pki_types::CertificateDer::pem_slice_iter(&pem(path))
            .next()
            .expect("a certificate")
            .expect("PEM")
    };
    use rustls::pki_types::pem::PemObject;
    assert!(super::files::names(&leaf(&server.0), "server.dc1.consul"));
    assert!(super::files::names(&leaf(&server.0), "localhost"));
    assert!(super::files::names(&leaf(&server.0), "127.0.0.1"));
    assert!(!super::files::names(&leaf(&client.0), "server.dc1.consul"));
    assert!(super::files::names(&leaf(&client.0), "client.dc1.consul"));
}

#[test]
fn bad_files_are_refused_naming_the_file() {
    let files = Files::new();
    let ca = files.ca("ca");
    let good = files.cert(&ca, Role::Server, "server");
    let other = files.cert(&ca, Role::Server, "other");

    // A key that is not the certificate's.
    let error = load(protocol(&files, &(good.0.clone(), other.1.clone()), true))
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("other-key.pem") && error.contains("does not match"),
        "{error}"
    );

    // A CA file with garbage in it.
    files.write(
        "garbage.pem",
        "-----BEGIN CERTIFICATE-----\nnot base64 at all\n-----END CERTIFICATE-----\n",
    );
    let mut garbage = protocol(&files, &good, true);
    garbage.ca_file = Some(files.path("garbage.pem"));
    let error = load(garbage).expect_err("refused").to_string();
    assert!(
        error.contains("tls.internal_rpc.ca_file") && error.contains("garbage.pem"),
        "{error}"
    );

    // A CA file with no certificate at all.
    files.write("empty.pem", "nothing here\n");
    let mut empty = protocol(&files, &good, true);
    empty.ca_file = Some(files.path("empty.pem"));
    let error = load(empty).expect_err("refused").to_string();
    assert!(
        error.contains("empty.pem") && error.contains("no certificate"),
        "{error}"
    );

    // A missing certificate file.
    let missing = protocol(&files, &(files.path("absent.pem"), good.1.clone()), true);
    let error = load(missing).expect_err("refused").to_string();
    assert!(
        error.contains("tls.internal_rpc.cert_file") && error.contains("absent.pem"),
        "{error}"
    );

    // verify_incoming without a CA to check client certificates with.
    let mut no_ca = protocol(&files, &good, true);
    no_ca.ca_file = None;
    let error = load(no_ca).expect_err("refused").to_string();
    assert!(error.contains("no CA certificate"), "{error}");
}

/// A self-signed certificate valid from `from` to `until` (Unix seconds), written out.
fn dated(files: &Files, name: &str, from: i64, until: i64) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate().expect("key");
    let mut params =
        rcgen::CertificateParams::new(vec!["server.dc1.consul".into()]).expect("params");
    params.not_before = time::OffsetDateTime::from_unix_timestamp(from).expect("time");
    params.not_after = time::OffsetDateTime::from_unix_timestamp(until).expect("time");
    let cert = params.self_signed(&key).expect("cert");
    (
        files.write(&format!("{name}.pem"), &cert.pem()),
        files.write(&format!("{name}-key.pem"), &key.serialize_pem()),
    )
}

#[test]
fn certificates_outside_their_validity_window_are_refused() {
    let files = Files::new();
    files.ca("ca");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64;
    let expired = dated(&files, "expired", now - 7200, now - 3600);
    let error = load(protocol(&files, &expired, false))
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("expired.pem") && error.contains("expired at"),
        "{error}"
    );
    let early = dated(&files, "early", now + 3600, now + 7200);
    let error = load(protocol(&files, &early, false))
        .expect_err("refused")
        .to_string();
    assert!(
        error.contains("early.pem") && error.contains("not valid before"),
        "{error}"
    );
}

/// A server-port listener with `tls`, and the address it listens on.
async fn server_port(
    tls: Arc<Tls>,
    shutdown: &CancellationToken,
) -> (listen::Incoming, std::net::SocketAddr) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    let (incoming, accepting) = listen::accept(listener, Kind::ServerRpc, tls, shutdown.clone());
    tokio::spawn(accepting);
    (incoming, address)
}

/// Connects as the agent whose TLS is `tls` (its outgoing configuration), or in plaintext.
async fn dial(
    address: std::net::SocketAddr,
    tls: Option<&Tls>,
) -> std::io::Result<super::connect::Stream> {
    let config = tls.and_then(|tls| {
        tls.rpc_outgoing().map(|config| {
            (
                config,
                ServerName::try_from(tls.server_name().to_string()).expect("name"),
            )
        })
    });
    super::connect::connect(address, None, config).await
}

#[tokio::test]
async fn the_server_port_refuses_plaintext_and_strangers_and_tells_servers_from_clients() {
    let files = Files::new();
    let ca = files.ca("ca");
    let other_ca = files.ca("other-ca");
    let server = load(protocol(
        &files,
        &files.cert(&ca, Role::Server, "server"),
        true,
    ))
    .expect("server TLS");
    let client = load(protocol(
        &files,
        &files.cert(&ca, Role::Client, "client"),
        true,
    ))
    .expect("client TLS");
    let stranger_cert = files.cert(&other_ca, Role::Server, "stranger");
    let stranger = load(protocol(&files, &stranger_cert, true)).expect("stranger TLS");
    let shutdown = CancellationToken::new();
    let (mut incoming, address) = server_port(server.clone(), &shutdown).await;

    // Plaintext under verify_incoming: closed without an answer.
    let mut plain = tokio::net::TcpStream::connect(address)
        .await
        .expect("connect");
    plain
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .expect("write");
    let mut buffer = [0u8; 16];
    let read = tokio::time::timeout(Duration::from_secs(10), plain.read(&mut buffer))
        .await
        .expect("closed promptly");
    assert!(matches!(read, Ok(0) | Err(_)), "plaintext got {read:?}");

    // A certificate from another CA: the handshake fails (the server refuses it).
    let mut refused = dial(address, Some(&stranger)).await;
    if let Ok(stream) = refused.as_mut() {
        // TLS 1.3 reports a refused client certificate on the first read.
        let mut byte = [0u8; 1];
        let read = tokio::time::timeout(Duration::from_secs(10), stream.read(&mut byte))
            .await
            .expect("answered promptly");
        assert!(matches!(read, Ok(0) | Err(_)), "stranger read {read:?}");
    }

    // A client agent's certificate: accepted, and seen as not a server.
    let mut as_client = dial(address, Some(&client))
        .await
        .expect("client handshake");
    as_client.write_all(b"x").await.expect("write");
    let (stream, _) = axum::serve::Listener::accept(&mut incoming).await;
    let peer = stream.peer().expect("peer");
    assert!(peer.certificate.is_some());
    assert!(!peer.certified_as("server.dc1.consul"));

    // A server's certificate: a server.
    let mut as_server = dial(address, Some(&server))
        .await
        .expect("server handshake");
    as_server.write_all(b"x").await.expect("write");
    let (stream, _) = axum::serve::Listener::accept(&mut incoming).await;
    assert!(stream
        .peer()
        .expect("peer")
        .certified_as("server.dc1.consul"));
    shutdown.cancel();
}

#[tokio::test]
async fn a_client_checks_the_servers_name_only_with_verify_server_hostname() {
    let files = Files::new();
    let ca = files.ca("ca");
    // A server port presenting a client certificate (a misconfigured or rogue server).
    let rogue = load(protocol(
        &files,
        &files.cert(&ca, Role::Client, "rogue"),
        false,
    ))
    .expect("rogue");
    let shutdown = CancellationToken::new();
    let (_incoming, address) = server_port(rogue, &shutdown).await;
    let checking = load(protocol(&files, &files.cert(&ca, Role::Server, "s"), false)).expect("tls");
    let error = dial(address, Some(&checking)).await.expect_err("refused");
    assert!(
        error
            .to_string()
            .contains("certificate not valid for name \"server.dc1.consul\""),
        "{error}"
    );
    let mut lenient_config = protocol(&files, &files.cert(&ca, Role::Server, "s2"), false);
    lenient_config.verify_server_hostname = false;
    let lenient = load(lenient_config).expect("tls");
    dial(address, Some(&lenient))
        .await
        .expect("any name from the CA will do");
    shutdown.cancel();
}
