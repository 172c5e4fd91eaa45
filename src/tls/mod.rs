//! Agent TLS, Consul's `tls` stanza: the settings of each protocol (server RPC, HTTPS, gRPC)
//! as `config` resolves them; `files` loads and checks the certificate files behind them and
//! builds rustls configurations, which `Tls` holds and swaps on reload; `listen` runs the
//! listeners' handshakes, `connect` the outgoing ones (server RPC, the CLI's HTTPS), and
//! `generate` makes the files `concord tls ca|cert create` write.
//!
//! Reloading swaps the configurations new handshakes use; connections already made keep the
//! one they started with, so a rotation drops nothing.

pub mod connect;
mod files;
pub mod generate;
pub mod listen;
pub mod stream;
#[cfg(test)]
mod tests;

use std::path::PathBuf;
use std::sync::{Arc, PoisonError, RwLock};

use rustls::{ClientConfig, ServerConfig};
use serde::Serialize;

pub use files::{client_config_from_files, ClientFiles};

/// Why TLS could not be set up or a certificate file could not be used, naming the file and
/// the reason. The agent refuses to start on it, or keeps its running files on reload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TlsError(String);

impl TlsError {
    fn new(message: impl Into<String>) -> TlsError {
        TlsError(message.into())
    }
}

/// The lowest TLS version a listener or connection accepts. rustls speaks 1.2 and 1.3 only,
/// so Consul's `TLSv1_0` and `TLSv1_1` are accepted and mean 1.2 (see ARCHITECTURE.md).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub enum TlsVersion {
    #[serde(rename = "TLSv1_0")]
    V1_0,
    #[serde(rename = "TLSv1_1")]
    V1_1,
    #[default]
    #[serde(rename = "TLSv1_2")]
    V1_2,
    #[serde(rename = "TLSv1_3")]
    V1_3,
}

impl TlsVersion {
    /// Consul's names, and the deprecated top-level key's `tls10`..`tls13`.
    pub fn parse(text: &str) -> Option<TlsVersion> {
        match text {
            "TLSv1_0" | "tls10" => Some(TlsVersion::V1_0),
            "TLSv1_1" | "tls11" => Some(TlsVersion::V1_1),
            "TLSv1_2" | "tls12" => Some(TlsVersion::V1_2),
            "TLSv1_3" | "tls13" => Some(TlsVersion::V1_3),
            _ => None,
        }
    }
}

/// One protocol's settings, each unset field inherited from `tls.defaults`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ProtocolConfig {
    #[serde(rename = "CAFile")]
    pub ca_file: Option<PathBuf>,
    #[serde(rename = "CAPath")]
    pub ca_path: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    pub verify_incoming: bool,
    pub verify_outgoing: bool,
    pub verify_server_hostname: bool,
    #[serde(rename = "TLSMinVersion")]
    pub tls_min_version: TlsVersion,
    /// TLS 1.2 suites by IANA name (TLS 1.3's are not configurable); empty: rustls' own.
    pub cipher_suites: Vec<String>,
    /// gRPC only: present the certificate auto_encrypt obtained.
    pub use_auto_cert: bool,
}

impl ProtocolConfig {
    /// Whether a certificate and key are configured.
    pub fn has_certificate(&self) -> bool {
        self.cert_file.is_some() && self.key_file.is_some()
    }
}

/// Consul's `auto_encrypt` stanza.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct AutoEncrypt {
    /// A client agent asks the servers for its certificate.
    #[serde(rename = "TLS")]
    pub tls: bool,
    /// A server signs client agents' certificates with the Connect CA.
    #[serde(rename = "AllowTLS")]
    pub allow_tls: bool,
    #[serde(rename = "DNSSAN")]
    pub dns_san: Vec<String>,
    #[serde(rename = "IPSAN")]
    pub ip_san: Vec<String>,
}

/// The `tls` stanza, resolved per protocol.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct TlsConfig {
    #[serde(rename = "InternalRPC")]
    pub internal_rpc: ProtocolConfig,
    #[serde(rename = "HTTPS")]
    pub https: ProtocolConfig,
    #[serde(rename = "GRPC")]
    pub grpc: ProtocolConfig,
    pub auto_encrypt: AutoEncrypt,
}

/// The certificate a client agent got from the servers (auto_encrypt), with the CAs they
/// said to trust.
#[derive(Clone, Debug)]
pub struct AutoCert {
    pub cert_pem: String,
    pub key_pem: String,
    pub ca_pems: Vec<String>,
}

/// The rustls configurations built from the files, swapped whole on reload.
#[derive(Default)]
struct Material {
    https: Option<Arc<ServerConfig>>,
    grpc: Option<Arc<ServerConfig>>,
    rpc_server: Option<Arc<ServerConfig>>,
    rpc_client: Option<Arc<ClientConfig>>,
    /// The server port's CA certificates (PEM), read with the rest, for auto_encrypt.
    rpc_ca_pems: Vec<String>,
}

/// What the server port accepts.
#[derive(Clone)]
pub struct RpcIncoming {
    /// TLS, when a certificate is configured.
    pub tls: Option<Arc<ServerConfig>>,
    /// Plaintext too, unless `verify_incoming` requires TLS with a client certificate.
    pub plaintext: bool,
}

/// The agent's TLS: its settings and the configurations its listeners and connections use.
pub struct Tls {
    config: RwLock<TlsConfig>,
    /// `server.<dc>.<domain>`: the name a server's certificate must carry.
    server_name: String,
    material: RwLock<Arc<Material>>,
    /// Whether HTTPS and gRPC-TLS listeners are configured, so their certificates are loaded.
    https_port: bool,
    grpc_tls_port: bool,
    /// A server with `auto_encrypt.allow_tls`: the Connect CA's roots, whose client agent
    /// certificates the server port accepts beside the configured CA's.
    connect_roots: RwLock<Vec<String>>,
    /// A client agent with `auto_encrypt.tls`: what the servers handed it.
    auto_cert: RwLock<Option<AutoCert>>,
}

/// Names what it is for, never its keys.
impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tls")
            .field("server_name", &self.server_name)
            .finish_non_exhaustive()
    }
}

impl Tls {
    /// Loads every configured file; an unreadable or invalid one is an error naming it.
    pub fn load(
        config: &TlsConfig,
        datacenter: &str,
        domain: &str,
        https_port: bool,
        grpc_tls_port: bool,
    ) -> Result<Arc<Tls>, TlsError> {
        let server_name = format!("server.{datacenter}.{}", domain.trim_end_matches('.'));
        let tls = Tls {
            config: RwLock::new(config.clone()),
            material: RwLock::default(),
            server_name,
            https_port,
            grpc_tls_port,
            connect_roots: RwLock::default(),
            auto_cert: RwLock::default(),
        };
        tls.reload(config)?;
        Ok(Arc::new(tls))
    }

    /// Agent TLS off: plaintext everywhere (unit tests and agents built without config).
    pub fn plaintext() -> Arc<Tls> {
        Arc::new(Tls {
            config: RwLock::default(),
            server_name: String::new(),
            material: RwLock::default(),
            https_port: false,
            grpc_tls_port: false,
            connect_roots: RwLock::default(),
            auto_cert: RwLock::default(),
        })
    }

    /// Reads the files again (SIGHUP, `concord reload`); on any error the running ones stay.
    pub fn reload(&self, config: &TlsConfig) -> Result<(), TlsError> {
        let connect_roots = match config.auto_encrypt.allow_tls {
            true => self
                .connect_roots
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
            false => Vec::new(),
        };
        let auto_cert = self
            .auto_cert
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let material = Material {
            https: match self.https_port {
                true => Some(files::server_config(
                    "tls.https",
                    &config.https,
                    &[b"http/1.1".to_vec()],
                    files::ClientAuth::from_verify(config.https.verify_incoming),
                    &[],
                    None,
                )?),
                false => None,
            },
            grpc: match (
                self.grpc_tls_port,
                config.grpc.use_auto_cert,
                auto_cert.as_ref(),
            ) {
                // Until auto_encrypt has the certificate, the port closes connections.
                (false, _, _) | (true, true, None) => None,
                (true, use_auto_cert, auto) => {
                    let auto = auto.filter(|_| use_auto_cert);
                    Some(files::server_config(
                        "tls.grpc",
                        &config.grpc,
                        &[b"h2".to_vec()],
                        files::ClientAuth::from_verify(config.grpc.verify_incoming),
                        auto.map_or(&[][..], |auto| &auto.ca_pems),
                        auto,
                    )?)
                }
            },
            rpc_server: match config.internal_rpc.has_certificate() {
                // Without verify_incoming a client certificate is still asked for, so that
                // a peer server can show who it is (Raft traffic needs a server's). With
                // auto_encrypt.allow_tls a client agent without one yet may connect to ask
                // for it: the service then refuses every other request without one.
                true => Some(files::server_config(
                    "tls.internal_rpc",
                    &config.internal_rpc,
                    &[b"h2".to_vec()],
                    match (
                        config.internal_rpc.verify_incoming,
                        config.auto_encrypt.allow_tls,
                    ) {
                        (true, false) => files::ClientAuth::Required,
                        _ => files::ClientAuth::Optional,
                    },
                    &connect_roots,
                    None,
                )?),
                false => None,
            },
            // A client agent under auto_encrypt uses what it was handed, and until then
            // asks for it without checking servers it has no CA for.
            rpc_client: match config.internal_rpc.verify_outgoing || config.auto_encrypt.tls {
                true => Some(files::rpc_client_config(
                    &config.internal_rpc,
                    auto_cert.as_ref().filter(|_| config.auto_encrypt.tls),
                    config.auto_encrypt.tls && auto_cert.is_none(),
                )?),
                false => None,
            },
            rpc_ca_pems: match config.auto_encrypt.allow_tls {
                true => files::ca_pems("tls.internal_rpc", &config.internal_rpc)?,
                false => Vec::new(),
            },
        };
        *self
            .material
            .write()
            .unwrap_or_else(PoisonError::into_inner) = Arc::new(material);
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config.clone();
        Ok(())
    }

    fn material(&self) -> Arc<Material> {
        self.material
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn https(&self) -> Option<Arc<ServerConfig>> {
        self.material().https.clone()
    }

    pub fn grpc(&self) -> Option<Arc<ServerConfig>> {
        self.material().grpc.clone()
    }

    pub fn rpc_incoming(&self) -> RpcIncoming {
        RpcIncoming {
            tls: self.material().rpc_server.clone(),
            plaintext: !self.rpc_requires_client_cert(),
        }
    }

    /// The configuration outgoing server RPC uses, when `verify_outgoing` is set.
    pub fn rpc_outgoing(&self) -> Option<Arc<ClientConfig>> {
        self.material().rpc_client.clone()
    }

    /// Reads the settings without copying them (the server port asks on every request).
    fn read<T>(&self, f: impl FnOnce(&TlsConfig) -> T) -> T {
        f(&self.config.read().unwrap_or_else(PoisonError::into_inner))
    }

    fn current(&self) -> TlsConfig {
        self.read(TlsConfig::clone)
    }

    /// A server with auto_encrypt: the Connect CA's roots changed; its client agents'
    /// certificates chain to them.
    pub fn set_connect_roots(&self, pems: Vec<String>) -> Result<(), TlsError> {
        *self
            .connect_roots
            .write()
            .unwrap_or_else(PoisonError::into_inner) = pems;
        self.reload(&self.current())
    }

    /// A client agent got its certificate (auto_encrypt): new server connections use it.
    pub fn set_auto_cert(&self, cert: AutoCert) -> Result<(), TlsError> {
        let previous = self
            .auto_cert
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .replace(cert);
        let reloaded = self.reload(&self.current());
        if reloaded.is_err() {
            *self
                .auto_cert
                .write()
                .unwrap_or_else(PoisonError::into_inner) = previous;
        }
        reloaded
    }

    /// Whether this server signs client agents' certificates.
    pub fn auto_encrypt_server(&self) -> bool {
        self.read(|config| config.auto_encrypt.allow_tls)
    }

    /// The extra names and addresses a client agent asks to have in its certificate.
    pub fn auto_encrypt_sans(&self) -> (Vec<String>, Vec<String>) {
        self.read(|config| {
            (
                config.auto_encrypt.dns_san.clone(),
                config.auto_encrypt.ip_san.clone(),
            )
        })
    }

    /// Whether the server port requires a client certificate for everything but
    /// auto_encrypt's request (`verify_incoming`).
    pub fn rpc_requires_client_cert(&self) -> bool {
        self.read(|config| config.internal_rpc.verify_incoming)
    }

    /// The configured CA certificates of the server port (PEM), which a server hands client
    /// agents under auto_encrypt so they can check it.
    pub fn rpc_ca_pems(&self) -> Vec<String> {
        self.material().rpc_ca_pems.clone()
    }

    /// `server.<dc>.<domain>`.
    pub fn server_name(&self) -> &str {
        &self.server_name
    }

    /// Whether Raft traffic must come from a peer whose certificate names a server.
    pub fn verify_server_hostname(&self) -> bool {
        self.read(|config| config.internal_rpc.verify_server_hostname)
    }
}
