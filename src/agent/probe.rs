//! One health-check probe: make a single HTTP request, TCP connect, UDP exchange or script run
//! and turn what happened into a [`HealthStatus`] plus Consul-style output text.
//!
//! This module holds no state and does no scheduling or retrying: the check runner calls
//! [`run`] once per interval. Status rules and output wording follow Consul's check
//! implementations (`agent/checks/check.go`) so that operators see the same text they would
//! see from Consul. Every probe is bounded by the caller's timeout and never panics, whatever
//! the definition or the remote end does.

use std::error::Error as StdError;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::process::Stdio;
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderName, HeaderValue, ACCEPT, HOST, USER_AGENT};
use hyper::{Method, Request, Response, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::process::Command;
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::types::duration::format_go_duration;
use crate::types::HealthStatus;

/// The User-Agent Consul sends on HTTP checks; some services special-case it.
const USER_AGENT_VALUE: &str = "Consul Health Check";
/// The Accept header Consul sends on HTTP checks.
const ACCEPT_VALUE: &str = "text/plain, text/*, */*";

/// What one probe does is a `CheckKind`: HTTP(S) (2xx passing, 429 warning, anything else or
/// no answer critical), TCP (connect succeeds: passing), UDP (a reply or silence until the
/// timeout: passing; an error such as ICMP port unreachable: critical) or a script run without
/// a shell (exit 0 passing, 1 warning, anything else, failure to start or timeout critical).
/// The other kinds (TTL, alias, maintenance) are not probed.
pub use crate::types::agent::CheckKind as Probe;

/// The outcome of one probe: a status and Consul-style output text, capped at `max_output`
/// bytes (cut at a char boundary).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProbeResult {
    pub status: HealthStatus,
    pub output: String,
}

impl ProbeResult {
    fn passing(output: String) -> ProbeResult {
        ProbeResult {
            status: HealthStatus::Passing,
            output,
        }
    }

    fn critical(output: String) -> ProbeResult {
        ProbeResult {
            status: HealthStatus::Critical,
            output,
        }
    }
}

/// Runs `probe` once. Takes at most about `timeout` (a UDP probe against a silent peer takes
/// exactly that long, as in Consul); the output is at most `max_output` bytes.
pub async fn run(probe: &Probe, timeout: Duration, max_output: usize) -> ProbeResult {
    let mut result = match probe {
        Probe::Http {
            url,
            method,
            headers,
            body,
            tls_skip_verify,
        } => {
            http_probe(
                url,
                method,
                headers,
                body,
                *tls_skip_verify,
                timeout,
                max_output,
            )
            .await
        }
        Probe::Tcp { address } => tcp_probe(address, timeout).await,
        Probe::Udp { address } => udp_probe(address, timeout).await,
        Probe::Script { args } => script_probe(args, timeout, max_output).await,
        Probe::Ttl { .. } | Probe::Alias { .. } | Probe::Maintenance => {
            ProbeResult::critical(format!("{} checks are not probed", probe.type_name()))
        }
    };
    // One place enforces the cap, so no probe kind can forget it.
    truncate_at_char_boundary(&mut result.output, max_output);
    result
}

// ---------------------------------------------------------------------------------------------
// HTTP

async fn http_probe(
    url: &str,
    method: &str,
    headers: &[(String, String)],
    body: &str,
    tls_skip_verify: bool,
    timeout: Duration,
    max_output: usize,
) -> ProbeResult {
    let start = Instant::now();
    let method = if method.is_empty() { "GET" } else { method };
    // Go reports client errors as `Get "<url>": <error>`, with the method in this casing.
    let op = go_url_error_op(method);
    let fail = |error: String| ProbeResult::critical(format!("{op} \"{url}\": {error}"));

    let uri: Uri = match url.parse() {
        Ok(uri) => uri,
        Err(error) => return ProbeResult::critical(format!("parse \"{url}\": {error}")),
    };
    // HTTPS checks trust the system's CA bundle, or nothing at all with `tls_skip_verify`.
    let tls = match uri.scheme_str() {
        Some(scheme) if scheme.eq_ignore_ascii_case("http") => None,
        Some(scheme) if scheme.eq_ignore_ascii_case("https") => {
            match crate::tls::client_config_from_files(&crate::tls::ClientFiles {
                skip_verify: tls_skip_verify,
                ..crate::tls::ClientFiles::default()
            }) {
                Ok(config) => Some(config),
                Err(error) => return fail(error.to_string()),
            }
        }
        other => {
            return fail(format!(
                "unsupported protocol scheme \"{}\"",
                other.unwrap_or("")
            ))
        }
    };
    let Some(host) = uri.host().filter(|host| !host.is_empty()) else {
        return fail("http: no Host in request URL".to_owned());
    };
    // `Uri::host` keeps the brackets of an IPv6 literal; name resolution wants them off.
    let host = host
        .strip_prefix('[')
        .and_then(|inner| inner.strip_suffix(']'))
        .unwrap_or(host)
        .to_owned();
    let port = uri
        .port_u16()
        .unwrap_or(if tls.is_some() { 443 } else { 80 });

    let request = match build_request(&uri, method, headers, body) {
        Ok(request) => request,
        Err(error) => return fail(error),
    };

    // The connection is driven by a task in this set; dropping the set (on any return, or if
    // this future is cancelled) aborts it, so nothing outlives the probe.
    let mut connection = JoinSet::new();
    let response = match tokio::time::timeout(
        timeout,
        send_request(&host, port, tls, request, &mut connection),
    )
    .await
    {
        Ok(Ok(response)) => response,
        Ok(Err(error)) => return fail(error),
        Err(_) => {
            return fail(format!(
                "context deadline exceeded (Client.Timeout of {} exceeded while awaiting headers)",
                format_go_duration(timeout)
            ))
        }
    };

    let code = response.status();
    // Go prints the status line as the server sent it ("200 OK"); hyper keeps a non-canonical
    // reason phrase in an extension and otherwise leaves us the canonical one.
    let reason = match response.extensions().get::<hyper::ext::ReasonPhrase>() {
        Some(reason) => String::from_utf8_lossy(reason.as_bytes()).into_owned(),
        None => code.canonical_reason().unwrap_or("").to_owned(),
    };
    let status_line = format!("{} {}", code.as_u16(), reason);
    let status_line = status_line.trim_end();

    let remaining = timeout.saturating_sub(start.elapsed());
    let body_text =
        match tokio::time::timeout(remaining, read_body_capped(response, max_output)).await {
            Ok(text) => text,
            Err(_) => {
                return fail(format!(
                    "context deadline exceeded (Client.Timeout of {} exceeded while reading body)",
                    format_go_duration(timeout)
                ))
            }
        };

    let status = if code.is_success() {
        HealthStatus::Passing
    } else if code.as_u16() == 429 {
        // Consul treats "Too Many Requests" as a warning: the service is up but shedding load.
        HealthStatus::Warning
    } else {
        HealthStatus::Critical
    };
    ProbeResult {
        status,
        output: format!("HTTP {method} {url}: {status_line} Output: {body_text}"),
    }
}

/// Builds the request as Go's client would send it for Consul: origin-form target, Host from
/// the URL unless the caller set one, and Consul's User-Agent and Accept unless overridden.
fn build_request(
    uri: &Uri,
    method: &str,
    headers: &[(String, String)],
    body: &str,
) -> Result<Request<Full<Bytes>>, String> {
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("net/http: invalid method {method:?}"))?;

    // We talk to the server directly, not through a proxy, so the request line carries only
    // path and query.
    let path = if uri.path().is_empty() {
        "/"
    } else {
        uri.path()
    };
    let target = match uri.query() {
        Some(query) => format!("{path}?{query}"),
        None => path.to_owned(),
    };

    let mut request = Request::builder()
        .method(method)
        .uri(target)
        .body(Full::new(Bytes::from(body.to_owned())))
        .map_err(|error| error.to_string())?;

    let map = request.headers_mut();
    for (name, value) in headers {
        let name = HeaderName::from_bytes(name.as_bytes())
            .map_err(|_| format!("net/http: invalid header field name {name:?}"))?;
        let value = HeaderValue::from_str(value)
            .map_err(|_| format!("net/http: invalid header field value for {name:?}"))?;
        map.append(name, value);
    }
    if !map.contains_key(HOST) {
        // The authority without any `user:pass@` part, exactly as written in the URL.
        let authority = uri.authority().map(|a| a.as_str()).unwrap_or("");
        let host = authority
            .rsplit_once('@')
            .map_or(authority, |(_, host)| host);
        let host =
            HeaderValue::from_str(host).map_err(|_| format!("invalid host {host:?} in URL"))?;
        map.insert(HOST, host);
    }
    if !map.contains_key(USER_AGENT) {
        map.insert(USER_AGENT, HeaderValue::from_static(USER_AGENT_VALUE));
    }
    if !map.contains_key(ACCEPT) {
        map.insert(ACCEPT, HeaderValue::from_static(ACCEPT_VALUE));
    }
    Ok(request)
}

/// Connects, performs the HTTP/1 handshake and waits for the response headers.
async fn send_request(
    host: &str,
    port: u16,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    request: Request<Full<Bytes>>,
    connection: &mut JoinSet<()>,
) -> Result<Response<Incoming>, String> {
    use crate::tls::connect::Stream;
    let addresses = resolve("tcp", host, port).await?;
    let tcp = connect_tcp(&addresses).await?;
    let stream = match tls {
        None => Stream::Plain(tcp),
        Some(config) => {
            let name = rustls::pki_types::ServerName::try_from(host.to_owned())
                .map_err(|error| format!("tls: {error}"))?;
            let stream = tokio_rustls::TlsConnector::from(config)
                .connect(name, tcp)
                .await
                .map_err(|error| format!("tls: {error}"))?;
            Stream::Tls(Box::new(stream.into()))
        }
    };
    let (mut sender, conn) = hyper::client::conn::http1::Builder::new()
        // Go sends canonical header names ("User-Agent"); some servers are picky about it.
        .title_case_headers(true)
        .handshake(TokioIo::new(stream))
        .await
        .map_err(|error| error_chain(&error))?;
    connection.spawn(async move {
        // Errors here also surface through `send_request` or the body, where we report them.
        let _ = conn.await;
    });
    sender
        .send_request(request)
        .await
        .map_err(|error| error_chain(&error))
}

/// Reads the body until it has `max_output` bytes or ends, whichever comes first, so a huge
/// or endless body costs no more than the output we keep. A read error ends the body early;
/// like Consul we then report what arrived and judge by the status code alone.
async fn read_body_capped(response: Response<Incoming>, max_output: usize) -> String {
    let mut body = response.into_body();
    let mut kept: Vec<u8> = Vec::new();
    while kept.len() < max_output {
        match body.frame().await {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    let room = max_output - kept.len();
                    kept.extend_from_slice(data.get(..room).unwrap_or(data));
                }
            }
            Some(Err(_)) | None => break,
        }
    }
    bytes_to_text(&kept, max_output)
}

/// Go's `urlErrorOp`: "GET" becomes "Get", "POST" becomes "Post".
fn go_url_error_op(method: &str) -> String {
    let mut chars = method.chars();
    match chars.next() {
        Some(first) => format!("{first}{}", chars.as_str().to_lowercase()),
        None => "Get".to_owned(),
    }
}

/// An error and its causes, "outer: inner: innermost", since hyper's top-level messages
/// ("connection error") say little on their own.
fn error_chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        // Some wrappers repeat their cause's message; don't print it twice.
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

// ---------------------------------------------------------------------------------------------
// TCP

async fn tcp_probe(address: &str, timeout: Duration) -> ProbeResult {
    let dial = async {
        let (host, port) = split_host_port("tcp", address)?;
        let addresses = resolve("tcp", host, port).await?;
        connect_tcp(&addresses).await
    };
    match tokio::time::timeout(timeout, dial).await {
        Ok(Ok(_stream)) => ProbeResult::passing(format!("TCP connect {address}: Success")),
        Ok(Err(error)) => ProbeResult::critical(error),
        Err(_) => ProbeResult::critical(format!("dial tcp {address}: i/o timeout")),
    }
}

/// Tries each address in turn, as Go's dialer does, and reports the first failure (Go's
/// choice too: the first address is usually the one the user meant).
async fn connect_tcp(addresses: &[SocketAddr]) -> Result<TcpStream, String> {
    let mut first_error = None;
    for address in addresses {
        match TcpStream::connect(address).await {
            Ok(stream) => return Ok(stream),
            Err(error) => {
                first_error.get_or_insert_with(|| {
                    format!("dial tcp {address}: connect: {}", os_error_text(&error))
                });
            }
        }
    }
    Err(first_error.unwrap_or_else(|| "dial tcp: no address to connect to".to_owned()))
}

// ---------------------------------------------------------------------------------------------
// UDP

async fn udp_probe(address: &str, timeout: Duration) -> ProbeResult {
    let start = Instant::now();
    let socket = match tokio::time::timeout(timeout, udp_dial_and_send(address)).await {
        Ok(Ok(socket)) => socket,
        Ok(Err(error)) => return ProbeResult::critical(error),
        Err(_) => return ProbeResult::critical(format!("dial udp {address}: i/o timeout")),
    };
    let success = || ProbeResult::passing(format!("UDP connect {address}: Success"));

    // Any reply is fine, so a small buffer does; a longer datagram is simply truncated.
    let mut buffer = [0u8; 512];
    let remaining = timeout.saturating_sub(start.elapsed());
    match tokio::time::timeout(remaining, socket.recv(&mut buffer)).await {
        Ok(Ok(_)) => success(),
        // Silence is the normal answer: most UDP services ignore a stray byte. Only an error
        // (the kernel turning an ICMP "port unreachable" into ECONNREFUSED on this connected
        // socket) says nobody is listening.
        Err(_) => success(),
        Ok(Err(error)) => ProbeResult::critical(format!(
            "read udp {}->{}: read: {}",
            socket_addr_text(socket.local_addr()),
            socket_addr_text(socket.peer_addr()),
            os_error_text(&error)
        )),
    }
}

/// Go's `net.Dial("udp", ...)` followed by writing one zero byte, as Consul does. The socket
/// is connected so that ICMP errors for that peer are delivered to it.
async fn udp_dial_and_send(address: &str) -> Result<UdpSocket, String> {
    let (host, port) = split_host_port("udp", address)?;
    let peer = resolve("udp", host, port)
        .await?
        .into_iter()
        .next()
        .ok_or_else(|| format!("dial udp: lookup {host}: no such host"))?;
    let local: SocketAddr = match peer {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local)
        .await
        .map_err(|error| format!("dial udp {peer}: bind: {}", os_error_text(&error)))?;
    socket
        .connect(peer)
        .await
        .map_err(|error| format!("dial udp {peer}: connect: {}", os_error_text(&error)))?;
    socket.send(&[0]).await.map_err(|error| {
        format!(
            "write udp {}->{peer}: write: {}",
            socket_addr_text(socket.local_addr()),
            os_error_text(&error)
        )
    })?;
    Ok(socket)
}

fn socket_addr_text(address: std::io::Result<SocketAddr>) -> String {
    match address {
        Ok(address) => address.to_string(),
        Err(_) => "?".to_owned(),
    }
}

// ---------------------------------------------------------------------------------------------
// Script

async fn script_probe(args: &[String], timeout: Duration, max_output: usize) -> ProbeResult {
    let Some((program, rest)) = args.split_first() else {
        return ProbeResult::critical("script check has no command to run".to_owned());
    };
    let mut command = Command::new(program);
    command
        .args(rest)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Backstop: if this future is dropped mid-run (say the check was deregistered), the
        // child must not outlive it.
        .kill_on_drop(true);
    let mut child = match command.spawn() {
        Ok(child) => child,
        Err(error) => {
            return ProbeResult::critical(format!("Failed to start {program:?}: {error}"));
        }
    };

    // Both pipes are drained concurrently with waiting, or a chatty child would block on a
    // full pipe and never exit. The buffers live out here so that on timeout we can still
    // report what the script printed before it hung, as Consul does.
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let mut out = Vec::new();
    let mut err = Vec::new();
    let waited = tokio::time::timeout(timeout, async {
        let (_, _, status) = tokio::join!(
            read_capped(stdout, &mut out, max_output),
            read_capped(stderr, &mut err, max_output),
            child.wait(),
        );
        status
    })
    .await;
    // Stdout then stderr: Consul interleaves them, but exact ordering across two pipes cannot
    // be recovered anyway.
    out.extend_from_slice(&err);
    let text = bytes_to_text(&out, max_output);

    match waited {
        Ok(Ok(status)) => ProbeResult {
            status: match status.code() {
                Some(0) => HealthStatus::Passing,
                Some(1) => HealthStatus::Warning,
                // Other codes, and death by signal (no code), are failures.
                _ => HealthStatus::Critical,
            },
            output: text,
        },
        Ok(Err(error)) => ProbeResult::critical(format!("Failed waiting for {program:?}: {error}")),
        Err(_) => {
            // Kill now rather than at drop so the process is gone before we report. Only the
            // direct child is killed: anything it started in the background survives.
            let _ = child.start_kill();
            let mut output = format!("Timed out ({}) running check", format_go_duration(timeout));
            if !text.is_empty() {
                output.push_str("\n\n");
                output.push_str(&text);
            }
            ProbeResult::critical(output)
        }
    }
}

/// Reads `reader` to the end, keeping the first `max` bytes and discarding the rest.
async fn read_capped<R: AsyncRead + Unpin>(reader: Option<R>, kept: &mut Vec<u8>, max: usize) {
    let Some(mut reader) = reader else { return };
    let mut buffer = [0u8; 8192];
    loop {
        match reader.read(&mut buffer).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let room = max.saturating_sub(kept.len());
                let chunk = buffer.get(..n.min(room)).unwrap_or(&[]);
                kept.extend_from_slice(chunk);
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers

/// Go's `net.SplitHostPort`, with errors worded like Go's dialer.
fn split_host_port<'a>(network: &str, address: &'a str) -> Result<(&'a str, u16), String> {
    let error = |why: &str| format!("dial {network}: address {address}: {why}");
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(error("missing port in address"));
    };
    let host = match host.strip_prefix('[') {
        Some(inner) => inner
            .strip_suffix(']')
            .ok_or_else(|| error("missing ']' in address"))?,
        None if host.contains(':') => return Err(error("too many colons in address")),
        None => host,
    };
    let port = port.parse::<u16>().map_err(|_| error("invalid port"))?;
    Ok((host, port))
}

async fn resolve(network: &str, host: &str, port: u16) -> Result<Vec<SocketAddr>, String> {
    // Go dials the local system when the host part is empty (":8080").
    let host = if host.is_empty() { "localhost" } else { host };
    let addresses: Vec<SocketAddr> = tokio::net::lookup_host((host, port))
        .await
        .map_err(|error| format!("dial {network}: lookup {host}: {}", os_error_text(&error)))?
        .collect();
    if addresses.is_empty() {
        return Err(format!("dial {network}: lookup {host}: no such host"));
    }
    Ok(addresses)
}

/// An OS error as Go prints it ("connection refused"), falling back to Rust's text.
fn os_error_text(error: &std::io::Error) -> String {
    let text = error.to_string();
    if error.raw_os_error().is_none() {
        return text;
    }
    // Rust prints "Connection refused (os error 111)"; Go prints "connection refused".
    let message = text
        .rsplit_once(" (os error ")
        .map_or(text.as_str(), |(m, _)| m);
    let mut chars = message.chars();
    match chars.next() {
        Some(first) => format!("{}{}", first.to_lowercase(), chars.as_str()),
        None => text,
    }
}

/// Up to `max` bytes as text. If the cut split a UTF-8 character, the partial character is
/// dropped rather than shown as a replacement character; other invalid bytes are replaced.
fn bytes_to_text(bytes: &[u8], max: usize) -> String {
    let cut = bytes.len() > max;
    let mut kept = bytes.get(..max).unwrap_or(bytes);
    if cut {
        kept = trim_partial_utf8_tail(kept);
    }
    let mut text = String::from_utf8_lossy(kept).into_owned();
    // Replacement characters are wider than the bytes they replace.
    truncate_at_char_boundary(&mut text, max);
    text
}

/// Drops an incomplete UTF-8 sequence at the end of `bytes`, if there is one.
fn trim_partial_utf8_tail(bytes: &[u8]) -> &[u8] {
    // A sequence is at most 4 bytes, so its lead byte is within the last 3 if it is cut off.
    for back in 1..=bytes.len().min(3) {
        let start = bytes.len() - back;
        let Some(&byte) = bytes.get(start) else { break };
        if byte & 0xC0 == 0x80 {
            continue; // continuation byte: keep looking for the lead byte
        }
        let needed = match byte {
            0xF0.. => 4,
            0xE0.. => 3,
            0xC0.. => 2,
            _ => 1,
        };
        return if needed > back {
            bytes.get(..start).unwrap_or(bytes)
        } else {
            bytes
        };
    }
    bytes
}

fn truncate_at_char_boundary(text: &mut String, max: usize) {
    if text.len() <= max {
        return;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1; // index 0 is always a boundary, so this stops
    }
    text.truncate(end);
}

// The `elapsed() < N * SECOND` assertions in these tests are hang guards, not speed
// measurements: N is 15-30 times the probe's timeout, and they show that a probe gives up at
// its timeout instead of waiting for a server that is slower still.
#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;

    const SECOND: Duration = Duration::from_secs(1);

    /// A tiny HTTP/1.1 server on 127.0.0.1 that answers by path. Returns its base URL.
    async fn http_server() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream));
            }
        });
        format!("http://{address}")
    }

    async fn serve(mut stream: TcpStream) {
        let Some(request) = read_request(&mut stream).await else {
            return;
        };
        let text = String::from_utf8_lossy(&request).into_owned();
        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
        let simple = |status: &str, body: &str| {
            format!(
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            )
        };
        let response = match path.as_str() {
            "/ok" => simple("200 OK", "all good"),
            "/busy" => simple("429 Too Many Requests", "slow down"),
            "/down" => simple("503 Service Unavailable", "db unreachable"),
            "/reason" => simple("200 Everything Fine", "custom reason"),
            "/echo" => simple("200 OK", &text),
            "/utf8" => simple("200 OK", &"é".repeat(100)),
            "/slow" => {
                // Simulated slowness: far longer than any probe timeout used below.
                tokio::time::sleep(Duration::from_secs(30)).await;
                simple("200 OK", "too late")
            }
            "/slowbody" => {
                let head = "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\npartial";
                let _ = stream.write_all(head.as_bytes()).await;
                tokio::time::sleep(Duration::from_secs(30)).await;
                return;
            }
            "/endless" => {
                // No length, no end: only a client that stops reading finishes this probe.
                let head = "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
                if stream.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                let chunk = vec![b'x'; 64 * 1024];
                while stream.write_all(&chunk).await.is_ok() {}
                return;
            }
            _ => simple("404 Not Found", "no such path"),
        };
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.shutdown().await;
    }

    /// Reads one request: headers, then a body of Content-Length bytes.
    async fn read_request(stream: &mut TcpStream) -> Option<Vec<u8>> {
        let mut request = Vec::new();
        let mut buffer = [0u8; 4096];
        loop {
            let n = stream.read(&mut buffer).await.ok()?;
            if n == 0 {
                return None;
            }
            request.extend_from_slice(&buffer[..n]);
            let text = String::from_utf8_lossy(&request).into_owned();
            if let Some(end) = text.find("\r\n\r\n") {
                let length = text[..end]
                    .lines()
                    .filter_map(|line| line.split_once(':'))
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-length"))
                    .and_then(|(_, value)| value.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if request.len() >= end + 4 + length {
                    return Some(request);
                }
            }
        }
    }

    fn http(url: String) -> Probe {
        Probe::Http {
            url,
            method: String::new(),
            headers: Vec::new(),
            body: String::new(),
            tls_skip_verify: false,
        }
    }

    fn script(args: &[&str]) -> Probe {
        Probe::Script {
            args: args.iter().map(|arg| arg.to_string()).collect(),
        }
    }

    /// A port on 127.0.0.1 that nothing listens on: bind, note the port, let go.
    async fn closed_tcp_port() -> u16 {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap().port()
    }

    async fn closed_udp_port() -> u16 {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        socket.local_addr().unwrap().port()
    }

    #[tokio::test]
    async fn http_200_is_passing_with_consul_output() {
        let base = http_server().await;
        let url = format!("{base}/ok");
        let result = run(&http(url.clone()), 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Passing);
        assert_eq!(
            result.output,
            format!("HTTP GET {url}: 200 OK Output: all good")
        );
    }

    #[tokio::test]
    async fn http_429_is_warning() {
        let base = http_server().await;
        let url = format!("{base}/busy");
        let result = run(&http(url.clone()), 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Warning);
        assert_eq!(
            result.output,
            format!("HTTP GET {url}: 429 Too Many Requests Output: slow down")
        );
    }

    #[tokio::test]
    async fn http_503_and_404_are_critical() {
        let base = http_server().await;
        let result = run(&http(format!("{base}/down")), 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Critical);
        assert!(result
            .output
            .contains(": 503 Service Unavailable Output: db unreachable"));
        let result = run(&http(format!("{base}/missing")), 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Critical);
        assert!(result.output.contains(": 404 Not Found Output: "));
    }

    #[tokio::test]
    async fn http_reports_the_servers_reason_phrase() {
        let base = http_server().await;
        let result = run(&http(format!("{base}/reason")), 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Passing);
        assert!(result
            .output
            .contains(": 200 Everything Fine Output: custom reason"));
    }

    #[tokio::test]
    async fn http_sends_consul_headers_by_default() {
        let base = http_server().await;
        let result = run(&http(format!("{base}/echo")), 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Passing);
        let output = &result.output;
        assert!(
            output.contains("Output: GET /echo HTTP/1.1\r\n"),
            "{output}"
        );
        assert!(output.contains("\r\nUser-Agent: Consul Health Check\r\n"));
        assert!(output.contains("\r\nAccept: text/plain, text/*, */*\r\n"));
        let host = base.trim_start_matches("http://");
        assert!(output.contains(&format!("\r\nHost: {host}\r\n")));
    }

    #[tokio::test]
    async fn http_sends_method_body_and_caller_headers() {
        let base = http_server().await;
        let url = format!("{base}/echo");
        let probe = Probe::Http {
            url: url.clone(),
            method: "POST".to_owned(),
            headers: vec![
                ("X-Check".to_owned(), "one".to_owned()),
                ("X-Check".to_owned(), "two".to_owned()),
                ("user-agent".to_owned(), "custom-agent".to_owned()),
                ("Accept".to_owned(), "application/json".to_owned()),
                ("Host".to_owned(), "service.internal".to_owned()),
            ],
            body: "{\"ping\":true}".to_owned(),
            tls_skip_verify: false,
        };
        let result = run(&probe, 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Passing);
        let output = &result.output;
        assert!(output.starts_with(&format!("HTTP POST {url}: 200 OK Output: POST /echo ")));
        assert!(output.contains("\r\nX-Check: one\r\n"), "{output}");
        assert!(output.contains("\r\nX-Check: two\r\n"));
        assert!(output.contains("\r\nUser-Agent: custom-agent\r\n"));
        assert!(!output.contains("Consul Health Check"));
        assert!(output.contains("\r\nAccept: application/json\r\n"));
        assert!(!output.contains("text/plain"));
        assert!(output.contains("\r\nHost: service.internal\r\n"));
        assert!(output.ends_with("\r\n\r\n{\"ping\":true}"));
    }

    #[tokio::test]
    async fn http_connection_refused_is_critical_and_names_url() {
        let port = closed_tcp_port().await;
        let url = format!("http://127.0.0.1:{port}/health");
        let result = run(&http(url.clone()), 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Critical);
        assert_eq!(
            result.output,
            format!("Get \"{url}\": dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
    }

    #[tokio::test]
    async fn http_slow_response_times_out_quickly() {
        let base = http_server().await;
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(300);
        let result = run(&http(format!("{base}/slow")), timeout, 4096).await;
        assert!(started.elapsed() < 5 * SECOND);
        assert_eq!(result.status, HealthStatus::Critical);
        assert!(result.output.starts_with("Get \"http://"));
        assert!(
            result
                .output
                .contains("Client.Timeout of 300ms exceeded while awaiting headers"),
            "{}",
            result.output
        );
    }

    #[tokio::test]
    async fn http_slow_body_times_out_quickly() {
        let base = http_server().await;
        let started = std::time::Instant::now();
        let timeout = Duration::from_millis(300);
        let result = run(&http(format!("{base}/slowbody")), timeout, 4096).await;
        assert!(started.elapsed() < 5 * SECOND);
        assert_eq!(result.status, HealthStatus::Critical);
        assert!(result.output.contains("exceeded while reading body"));
    }

    #[tokio::test]
    async fn http_endless_body_is_read_only_up_to_the_cap() {
        let base = http_server().await;
        let url = format!("{base}/endless");
        // Would time out (critical) if the probe tried to read the whole body.
        let result = run(&http(url.clone()), 10 * SECOND, 1000).await;
        assert_eq!(result.status, HealthStatus::Passing);
        assert_eq!(result.output.len(), 1000);
        let prefix = format!("HTTP GET {url}: 200 OK Output: ");
        assert!(result.output.starts_with(&prefix));
        assert!(result.output[prefix.len()..].bytes().all(|b| b == b'x'));
    }

    #[tokio::test]
    async fn http_output_cap_never_splits_a_character() {
        let base = http_server().await;
        for max in 40..80 {
            let result = run(&http(format!("{base}/utf8")), 5 * SECOND, max).await;
            assert_eq!(result.status, HealthStatus::Passing);
            assert!(result.output.len() <= max);
            assert!(!result.output.contains('\u{FFFD}'), "{}", result.output);
        }
    }

    #[tokio::test]
    async fn https_checks_speak_tls_and_verify_unless_told_not_to() {
        // A TLS server with a certificate no system CA signed.
        let files = tempfile::tempdir().expect("dir");
        let ca = crate::tls::generate::ca(&crate::tls::generate::CaOptions {
            days: 1,
            domain: "consul".into(),
            name_constraint: false,
            additional_name_constraints: Vec::new(),
            cluster_id: None,
            common_name: None,
        })
        .expect("CA");
        let cert = crate::tls::generate::cert(
            &ca.cert_pem,
            &ca.key_pem,
            &crate::tls::generate::CertOptions {
                role: crate::tls::generate::Role::Server,
                datacenter: "dc1".into(),
                domain: "consul".into(),
                node: None,
                days: 1,
                dns_names: Vec::new(),
                ip_addresses: Vec::new(),
            },
        )
        .expect("cert");
        std::fs::write(files.path().join("c.pem"), &cert.cert_pem).expect("write");
        std::fs::write(files.path().join("k.pem"), &cert.key_pem).expect("write");
        let config = crate::tls::TlsConfig {
            https: crate::tls::ProtocolConfig {
                cert_file: Some(files.path().join("c.pem")),
                key_file: Some(files.path().join("k.pem")),
                ..Default::default()
            },
            ..Default::default()
        };
        let tls = crate::tls::Tls::load(&config, "dc1", "consul", true, false).expect("tls");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let (incoming, accepting) = crate::tls::listen::accept(
            listener,
            crate::tls::listen::Kind::Https,
            tls,
            shutdown.clone(),
        );
        tokio::spawn(accepting);
        let app = axum::Router::new().route("/health", axum::routing::get(|| async { "fine" }));
        tokio::spawn(async move { axum::serve(incoming, app).await });
        let probe = |skip: bool| Probe::Http {
            url: format!("https://localhost:{port}/health"),
            method: String::new(),
            headers: Vec::new(),
            body: String::new(),
            tls_skip_verify: skip,
        };
        let result = run(&probe(true), 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Passing, "{}", result.output);
        assert!(
            result.output.ends_with("200 OK Output: fine"),
            "{}",
            result.output
        );
        // Verified against the system's CAs, which never signed this certificate.
        let result = run(&probe(false), 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Critical);
        assert!(
            result.output.contains("tls: invalid peer certificate"),
            "{}",
            result.output
        );
        shutdown.cancel();
    }

    #[tokio::test]
    async fn http_bad_definitions_are_critical_not_panics() {
        let cases = [
            ("not a url", "", ("", "")),
            ("ftp://127.0.0.1/x", "", ("", "")),
            ("/relative/only", "", ("", "")),
            ("http://127.0.0.1:1/x", "BAD METHOD", ("", "")),
            ("http://127.0.0.1:1/x", "", ("bad name", "v")),
            ("http://127.0.0.1:1/x", "", ("X-Ok", "bad\nvalue")),
        ];
        for (url, method, (name, value)) in cases {
            let headers = if name.is_empty() {
                Vec::new()
            } else {
                vec![(name.to_owned(), value.to_owned())]
            };
            let probe = Probe::Http {
                url: url.to_owned(),
                method: method.to_owned(),
                headers,
                body: String::new(),
                tls_skip_verify: false,
            };
            let result = run(&probe, 5 * SECOND, 4096).await;
            assert_eq!(
                result.status,
                HealthStatus::Critical,
                "{url} {method} {name}"
            );
            assert!(!result.output.is_empty());
        }
    }

    #[tokio::test]
    async fn tcp_listening_port_is_passing() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let result = run(
            &Probe::Tcp {
                address: address.clone(),
            },
            5 * SECOND,
            4096,
        )
        .await;
        assert_eq!(result.status, HealthStatus::Passing);
        assert_eq!(result.output, format!("TCP connect {address}: Success"));
    }

    #[tokio::test]
    async fn tcp_closed_port_is_critical() {
        let port = closed_tcp_port().await;
        let address = format!("127.0.0.1:{port}");
        let result = run(&Probe::Tcp { address }, 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Critical);
        assert_eq!(
            result.output,
            format!("dial tcp 127.0.0.1:{port}: connect: connection refused")
        );
    }

    #[tokio::test]
    async fn tcp_bad_addresses_are_critical() {
        for address in ["127.0.0.1", "127.0.0.1:notaport", "::1:80", "[::1:80", ""] {
            let probe = Probe::Tcp {
                address: address.to_owned(),
            };
            let result = run(&probe, 5 * SECOND, 4096).await;
            assert_eq!(result.status, HealthStatus::Critical, "{address}");
            assert!(result.output.starts_with("dial tcp: address "), "{address}");
        }
    }

    #[tokio::test]
    async fn udp_silent_peer_is_passing_after_the_timeout() {
        // Bound and kept open but never answers.
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap().to_string();
        let timeout = Duration::from_millis(300);
        let started = std::time::Instant::now();
        let probe = Probe::Udp {
            address: address.clone(),
        };
        let result = run(&probe, timeout, 4096).await;
        assert!(started.elapsed() >= timeout);
        assert!(started.elapsed() < 5 * SECOND);
        assert_eq!(result.status, HealthStatus::Passing);
        assert_eq!(result.output, format!("UDP connect {address}: Success"));
        // The datagram really was sent: the single zero byte Consul sends.
        let mut buffer = [0u8; 16];
        let (n, _) = socket.recv_from(&mut buffer).await.unwrap();
        assert_eq!(&buffer[..n], &[0]);
    }

    #[tokio::test]
    async fn udp_replying_peer_is_passing_without_waiting() {
        let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let address = socket.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let mut buffer = [0u8; 16];
            if let Ok((_, from)) = socket.recv_from(&mut buffer).await {
                let _ = socket.send_to(b"pong", from).await;
            }
        });
        let started = std::time::Instant::now();
        let result = run(&Probe::Udp { address }, 30 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Passing);
        assert!(started.elapsed() < 10 * SECOND);
    }

    #[tokio::test]
    async fn udp_closed_port_is_critical() {
        let port = closed_udp_port().await;
        let address = format!("127.0.0.1:{port}");
        let started = std::time::Instant::now();
        let result = run(&Probe::Udp { address }, 30 * SECOND, 4096).await;
        assert!(started.elapsed() < 10 * SECOND);
        assert_eq!(result.status, HealthStatus::Critical);
        assert!(
            result.output.starts_with("read udp 127.0.0.1:"),
            "{}",
            result.output
        );
        assert!(result
            .output
            .ends_with(&format!("->127.0.0.1:{port}: read: connection refused")));
    }

    #[tokio::test]
    async fn script_exit_codes_map_to_statuses() {
        let cases = [
            ("exit 0", HealthStatus::Passing),
            ("exit 1", HealthStatus::Warning),
            ("exit 2", HealthStatus::Critical),
            ("kill -9 $$", HealthStatus::Critical),
        ];
        for (code, expected) in cases {
            let result = run(&script(&["sh", "-c", code]), 10 * SECOND, 4096).await;
            assert_eq!(result.status, expected, "{code}");
        }
    }

    #[tokio::test]
    async fn script_output_is_stdout_then_stderr() {
        let probe = script(&["sh", "-c", "echo to-err >&2; echo to-out; exit 1"]);
        let result = run(&probe, 10 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Warning);
        assert_eq!(result.output, "to-out\nto-err\n");
    }

    #[tokio::test]
    async fn script_output_is_capped() {
        // ~1 MB on each pipe: proves both are drained (or the child would block) and capped.
        let body = "i=0; while [ $i -lt 20000 ]; do \
                    echo 'some fairly long line of output, repeated many times'; \
                    echo 'and some on stderr too' >&2; i=$((i+1)); done";
        let result = run(&script(&["sh", "-c", body]), 60 * SECOND, 1000).await;
        assert_eq!(result.status, HealthStatus::Passing);
        assert_eq!(result.output.len(), 1000);
        assert!(result.output.starts_with("some fairly long line"));
    }

    #[tokio::test]
    async fn script_timeout_kills_and_is_critical() {
        let started = std::time::Instant::now();
        // `exec` so the shell *is* the sleeping process and the kill ends it.
        let probe = script(&["sh", "-c", "echo started; exec sleep 30"]);
        let result = run(&probe, SECOND, 4096).await;
        assert!(started.elapsed() < 10 * SECOND);
        assert_eq!(result.status, HealthStatus::Critical);
        assert_eq!(result.output, "Timed out (1s) running check\n\nstarted\n");
    }

    #[tokio::test]
    async fn script_missing_program_is_critical() {
        let probe = script(&["/nonexistent/concord-probe-test", "--flag"]);
        let result = run(&probe, 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Critical);
        assert!(result
            .output
            .starts_with("Failed to start \"/nonexistent/concord-probe-test\": "));
        assert!(result.output.contains("No such file or directory"));
    }

    #[tokio::test]
    async fn script_with_no_args_is_critical() {
        let result = run(&Probe::Script { args: Vec::new() }, 5 * SECOND, 4096).await;
        assert_eq!(result.status, HealthStatus::Critical);
    }

    #[tokio::test]
    async fn zero_max_output_gives_empty_output() {
        let result = run(&script(&["sh", "-c", "echo hi; exit 2"]), 5 * SECOND, 0).await;
        assert_eq!(result.status, HealthStatus::Critical);
        assert_eq!(result.output, "");
    }

    #[test]
    fn run_future_is_send() {
        fn assert_send<T: Send>(_: &T) {}
        let probe = Probe::Tcp {
            address: "127.0.0.1:1".to_owned(),
        };
        assert_send(&run(&probe, SECOND, 1));
    }

    #[test]
    fn text_helpers_respect_char_boundaries() {
        let mut text = "aé".to_owned(); // 'é' is 2 bytes
        truncate_at_char_boundary(&mut text, 2);
        assert_eq!(text, "a");
        assert_eq!(bytes_to_text("aé".as_bytes(), 2), "a");
        assert_eq!(bytes_to_text("a€".as_bytes(), 3), "a");
        assert_eq!(bytes_to_text("a😀".as_bytes(), 4), "a");
        assert_eq!(bytes_to_text("a😀".as_bytes(), 5), "a😀");
        assert_eq!(bytes_to_text(b"\xff\xfe", 10), "\u{FFFD}\u{FFFD}");
        assert_eq!(bytes_to_text(b"\xff\xfe", 4), "\u{FFFD}");
        assert_eq!(bytes_to_text(b"abc", 0), "");
    }

    #[test]
    fn split_host_port_follows_go() {
        assert_eq!(split_host_port("tcp", "a:1"), Ok(("a", 1)));
        assert_eq!(split_host_port("tcp", "[::1]:80"), Ok(("::1", 80)));
        assert_eq!(split_host_port("tcp", ":80"), Ok(("", 80)));
        assert!(split_host_port("tcp", "a").is_err());
        assert!(split_host_port("tcp", "a:70000").is_err());
        assert!(split_host_port("tcp", "::1:80").is_err());
    }

    #[test]
    fn url_error_op_follows_go() {
        assert_eq!(go_url_error_op("GET"), "Get");
        assert_eq!(go_url_error_op("POST"), "Post");
        assert_eq!(go_url_error_op(""), "Get");
    }
}
