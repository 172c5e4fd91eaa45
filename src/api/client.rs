//! The HTTP client the CLI uses to talk to an agent, honouring `-http-addr`,
//! `CONSUL_HTTP_ADDR` and `CONSUL_HTTP_TOKEN` like Consul's own CLI, and for HTTPS
//! `CONSUL_HTTP_SSL`, `CONSUL_CACERT`, `CONSUL_CAPATH`, `CONSUL_CLIENT_CERT`,
//! `CONSUL_CLIENT_KEY`, `CONSUL_TLS_SERVER_NAME` and `CONSUL_HTTP_SSL_VERIFY` (each after its
//! flag).

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{HeaderMap, Method, Request, StatusCode};
use hyper_util::rt::TokioExecutor;

use crate::tls::connect::HttpConnector;

/// Why a request to the agent failed: the address, the connection, or a non-2xx answer,
/// with the text the CLI prints. The CLI only reports it, so it is one kind.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

#[derive(Clone)]
pub struct Client {
    /// `http://host:port`, without a trailing slash.
    base: String,
    token: Option<String>,
    inner: hyper_util::client::legacy::Client<HttpConnector, Full<Bytes>>,
    connector: HttpConnector,
}

/// The HTTPS flags every HTTP command takes; each falls back to its environment variable.
#[derive(Clone, Debug, Default)]
pub struct TlsFlags {
    pub ca_file: Option<String>,
    pub ca_path: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub tls_server_name: Option<String>,
}

fn flag_or_env(flag: &Option<String>, env: &str) -> Option<String> {
    flag.clone()
        .or_else(|| std::env::var(env).ok())
        .filter(|value| !value.is_empty())
}

fn env_true(name: &str) -> Option<bool> {
    std::env::var(name).ok().map(|value| {
        matches!(
            value.trim().to_ascii_lowercase().as_str(),
            "1" | "true" | "t"
        )
    })
}

pub struct Response {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Response {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).trim_end().to_string()
    }

    /// The body as JSON, or an error carrying the agent's own message for non-2xx answers.
    pub fn json(&self) -> Result<serde_json::Value, ClientError> {
        if !self.status.is_success() {
            return Err(ClientError(format!(
                "Unexpected response code: {} ({})",
                self.status.as_u16(),
                self.text()
            )));
        }
        serde_json::from_slice(&self.body)
            .map_err(|error| ClientError(format!("invalid JSON from agent: {error}")))
    }

    pub fn index(&self) -> u64 {
        self.headers
            .get("X-Consul-Index")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse().ok())
            .unwrap_or(0)
    }
}

/// Normalises `127.0.0.1:8500`, `http://host:port` or `host:port/` to `http://host:port`.
pub fn normalize_address(address: &str) -> Result<String, ClientError> {
    let address = address.trim().trim_end_matches('/');
    if address.starts_with("https://") {
        address
            .parse::<hyper::Uri>()
            .map_err(|error| ClientError(format!("invalid HTTP address {address:?}: {error}")))?;
        return Ok(address.to_string());
    }
    if address.starts_with("unix://") {
        return Err(ClientError(format!(
            "{address}: unix sockets are not supported yet"
        )));
    }
    let with_scheme = if address.starts_with("http://") {
        address.to_string()
    } else {
        format!("http://{address}")
    };
    with_scheme
        .parse::<hyper::Uri>()
        .map_err(|error| ClientError(format!("invalid HTTP address {address:?}: {error}")))?;
    Ok(with_scheme)
}

/// The ACL token a command uses, as Consul's CLI picks it: `-token`, `-token-file`,
/// `CONSUL_HTTP_TOKEN`, then the file `CONSUL_HTTP_TOKEN_FILE` names.
pub fn token_from(flag: Option<&str>, file_flag: Option<&str>) -> Option<String> {
    let read = |path: &str| {
        std::fs::read_to_string(path)
            .ok()
            .map(|text| text.trim().to_string())
    };
    flag.map(str::to_string)
        .or_else(|| file_flag.and_then(read))
        .or_else(|| std::env::var("CONSUL_HTTP_TOKEN").ok())
        .or_else(|| {
            std::env::var("CONSUL_HTTP_TOKEN_FILE")
                .ok()
                .and_then(|path| read(&path))
        })
        .filter(|token| !token.is_empty())
}

impl Client {
    /// Builds a client from the `-http-addr` flag, else `CONSUL_HTTP_ADDR`, else the default.
    pub fn from_flags(http_addr: Option<&str>, token: Option<&str>) -> Result<Client, ClientError> {
        Client::with_tls(http_addr, token, &TlsFlags::default())
    }

    /// `from_flags` with the HTTPS flags: an `https://` address, or `CONSUL_HTTP_SSL=true`
    /// with a bare one, speaks TLS, checking the agent's certificate against `-ca-file`
    /// (else the system's bundle) and presenting `-client-cert` when given.
    pub fn with_tls(
        http_addr: Option<&str>,
        token: Option<&str>,
        flags: &TlsFlags,
    ) -> Result<Client, ClientError> {
        let address = http_addr
            .map(str::to_string)
            .or_else(|| std::env::var("CONSUL_HTTP_ADDR").ok())
            .unwrap_or_else(|| "127.0.0.1:8500".to_string());
        let token = token_from(token, None);
        let mut base = normalize_address(&address)?;
        if env_true("CONSUL_HTTP_SSL") == Some(true) {
            if let Some(rest) = base.strip_prefix("http://") {
                base = format!("https://{rest}");
            }
        }
        let tls = match base.starts_with("https://") {
            false => None,
            true => {
                let files = crate::tls::ClientFiles {
                    ca_file: flag_or_env(&flags.ca_file, "CONSUL_CACERT").map(Into::into),
                    ca_path: flag_or_env(&flags.ca_path, "CONSUL_CAPATH").map(Into::into),
                    cert_file: flag_or_env(&flags.client_cert, "CONSUL_CLIENT_CERT")
                        .map(Into::into),
                    key_file: flag_or_env(&flags.client_key, "CONSUL_CLIENT_KEY").map(Into::into),
                    skip_verify: env_true("CONSUL_HTTP_SSL_VERIFY") == Some(false),
                };
                Some(
                    crate::tls::client_config_from_files(&files)
                        .map_err(|error| ClientError(error.to_string()))?,
                )
            }
        };
        let connector = HttpConnector {
            tls,
            server_name: flag_or_env(&flags.tls_server_name, "CONSUL_TLS_SERVER_NAME"),
        };
        Ok(Client {
            base,
            token,
            // Idle connections beyond a few are closed: `concord template` runs a blocking
            // query per dependency, and after a burst of them the pool would otherwise keep
            // one idle connection (and its buffers) for each.
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(16)
                .build(connector.clone()),
            connector,
        })
    }

    /// The same agent over one HTTP/2 connection of its own (prior knowledge, plain HTTP
    /// only): many concurrent requests, such as blocking queries, then share it. `None` for
    /// HTTPS (its listener offers HTTP/1.1). The agent must speak h2c; a Consul agent does
    /// not, so callers check with a request first.
    pub fn http2(&self) -> Option<Client> {
        if !self.base.starts_with("http://") {
            return None;
        }
        Some(Client {
            base: self.base.clone(),
            token: self.token.clone(),
            inner: hyper_util::client::legacy::Client::builder(TokioExecutor::new())
                .http2_only(true)
                .build(self.connector.clone()),
            connector: self.connector.clone(),
        })
    }

    pub fn base(&self) -> &str {
        &self.base
    }

    pub async fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Response, ClientError> {
        self.request_with_headers(method, path_and_query, &[], body.unwrap_or_default())
            .await
    }

    /// A request with extra headers (a watch's HTTP handler sends its configured ones).
    pub async fn request_with_headers(
        &self,
        method: Method,
        path_and_query: &str,
        headers: &[(String, String)],
        body: Vec<u8>,
    ) -> Result<Response, ClientError> {
        let uri = format!("{}{}", self.base, path_and_query);
        let mut builder = Request::builder().method(method).uri(&uri);
        if let Some(token) = &self.token {
            builder = builder.header("X-Consul-Token", token);
        }
        for (name, value) in headers {
            builder = builder.header(name.as_str(), value.as_str());
        }
        let request = builder
            .body(Full::new(Bytes::from(body)))
            .map_err(|error| ClientError(format!("invalid request to {uri}: {error}")))?;
        let response = self.inner.request(request).await.map_err(|error| {
            ClientError(format!(
                "Error querying agent at {}: {error} (is the agent running?)",
                self.base
            ))
        })?;
        let (parts, body) = response.into_parts();
        let body = body
            .collect()
            .await
            .map_err(|error| {
                ClientError(format!(
                    "Error reading response from {}: {error}",
                    self.base
                ))
            })?
            .to_bytes();
        Ok(Response {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// GETs `path_and_query` and hands each chunk of the body to `on_chunk` as it arrives,
    /// for endpoints that stream (`/v1/agent/monitor`). Returns when the body ends.
    pub async fn stream(
        &self,
        path_and_query: &str,
        mut on_chunk: impl FnMut(&[u8]),
    ) -> Result<(), ClientError> {
        let uri = format!("{}{}", self.base, path_and_query);
        let mut builder = Request::builder().method(Method::GET).uri(&uri);
        if let Some(token) = &self.token {
            builder = builder.header("X-Consul-Token", token);
        }
        let request = builder
            .body(Full::new(Bytes::new()))
            .map_err(|error| ClientError(format!("invalid request to {uri}: {error}")))?;
        let response = self.inner.request(request).await.map_err(|error| {
            ClientError(format!(
                "Error querying agent at {}: {error} (is the agent running?)",
                self.base
            ))
        })?;
        let status = response.status();
        let mut body = response.into_body();
        if !status.is_success() {
            let text = body
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            return Err(ClientError(format!(
                "Error: {} ({})",
                status.as_u16(),
                String::from_utf8_lossy(&text).trim_end()
            )));
        }
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|error| {
                ClientError(format!("Error reading from {}: {error}", self.base))
            })?;
            if let Some(data) = frame.data_ref() {
                on_chunk(data);
            }
        }
        Ok(())
    }

    pub async fn get(&self, path_and_query: &str) -> Result<Response, ClientError> {
        self.request(Method::GET, path_and_query, None).await
    }

    pub async fn put(&self, path_and_query: &str, body: Vec<u8>) -> Result<Response, ClientError> {
        self.request(Method::PUT, path_and_query, Some(body)).await
    }

    pub async fn delete(&self, path_and_query: &str) -> Result<Response, ClientError> {
        self.request(Method::DELETE, path_and_query, None).await
    }
}

/// Percent-encodes a KV key or other path segment, keeping `/` as Consul's CLI does.
pub fn encode_path(path: &str) -> String {
    const KEEP: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'/')
        .remove(b'-')
        .remove(b'_')
        .remove(b'.')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(path, KEEP).to_string()
}

/// Percent-encodes a query parameter value.
pub fn encode_query(value: &str) -> String {
    percent_encoding::utf8_percent_encode(value, percent_encoding::NON_ALPHANUMERIC).to_string()
}
