//! `concord connect envoy`: finds the proxy on the local agent, writes Envoy's bootstrap, and
//! replaces itself with Envoy (`-bootstrap` prints the bootstrap instead).
//!
//! Any Envoy with the v3 API is accepted: a version other than the tested one is a warning,
//! not a refusal (Consul's version gate is a known complaint). The bootstrap goes to a file
//! readable only by the user, in a private temporary directory, rather than on Envoy's
//! command line where `ps` would show the token.

use std::net::{SocketAddr, ToSocketAddrs};

use clap::{Arg, ArgAction, ArgMatches, Command};
use serde_json::Value;

use super::goflags::{boolean, get_bool, get_str, value};
use super::{client, with_http_flags, CommandResult};
use crate::xds::bootstrap::{bootstrap, BootstrapConfig, TESTED_ENVOY};

pub fn command() -> Command {
    with_http_flags(
        Command::new("envoy")
            .about("Runs Envoy as a Connect sidecar, configured by this agent's xDS server")
            .arg(value(
                "sidecar-for",
                "The ID of the service whose sidecar proxy to run (env CONNECT_SIDECAR_FOR)",
            ))
            .arg(value(
                "proxy-id",
                "The proxy's service ID on the local agent (env CONNECT_PROXY_ID)",
            ))
            .arg(boolean("bootstrap", "Print the bootstrap JSON and exit"))
            .arg(value(
                "admin-bind",
                "Envoy's admin listener (default localhost:19000)",
            ))
            .arg(value(
                "grpc-addr",
                "The agent's gRPC (xDS) address; https:// for its TLS port (env CONSUL_GRPC_ADDR; default from the agent)",
            ))
            .arg(value(
                "grpc-ca-file",
                "CA certificate Envoy checks the agent's gRPC-TLS certificate with (env CONSUL_GRPC_CACERT; default -ca-file)",
            ))
            .arg(value(
                "envoy-binary",
                "The Envoy binary to run (default: envoy on PATH)",
            ))
            .arg(
                Arg::new("envoy-args")
                    .num_args(0..)
                    .last(true)
                    .action(ArgAction::Append)
                    .help("Extra arguments for Envoy, after --"),
            ),
    )
}

fn env_or(matches: &ArgMatches, flag: &str, env: &str) -> Option<String> {
    get_str(matches, flag)
        .map(str::to_string)
        .or_else(|| std::env::var(env).ok())
        .filter(|value| !value.is_empty())
}

/// `host:port`, `http://host:port` or `https://...` to a socket address; Envoy's static
/// cluster needs an IP, so a name is resolved here.
fn resolve(address: &str, what: &str) -> Result<SocketAddr, String> {
    let bare = address
        .strip_prefix("http://")
        .or_else(|| address.strip_prefix("https://"))
        .unwrap_or(address);
    if address.starts_with("unix://") {
        return Err(format!(
            "{what} {address:?}: unix sockets to the agent's gRPC port are not supported yet"
        ));
    }
    bare.to_socket_addrs()
        .map_err(|error| format!("{what} {address:?}: {error}"))?
        .next()
        .ok_or_else(|| format!("{what} {address:?} does not resolve"))
}

/// The proxy's id and destination service, from `-proxy-id` or `-sidecar-for`.
async fn find_proxy(matches: &ArgMatches) -> Result<(String, String), String> {
    let response = client(matches)?.get("/v1/agent/services").await?;
    if response.status != 200 {
        return Err(format!(
            "Failed to list the agent's services: {}",
            response.text()
        ));
    }
    let services = response.json()?;
    let proxies = services
        .as_object()
        .into_iter()
        .flat_map(|map| map.values())
        .filter(|service| service["Kind"] == "connect-proxy");
    if let Some(id) = env_or(matches, "proxy-id", "CONNECT_PROXY_ID") {
        let proxy = proxies
            .clone()
            .find(|service| service["ID"] == id.as_str())
            .ok_or_else(|| {
                format!("No connect-proxy with ID {id:?} is registered on this agent")
            })?;
        return Ok((id, destination(proxy)));
    }
    let target = env_or(matches, "sidecar-for", "CONNECT_SIDECAR_FOR")
        .ok_or("No proxy ID specified. One of -proxy-id or -sidecar-for is required")?;
    let found: Vec<&Value> = proxies
        .filter(|service| service["Proxy"]["DestinationServiceID"] == target.as_str())
        .collect();
    match found.as_slice() {
        [proxy] => Ok((
            proxy["ID"].as_str().unwrap_or_default().to_string(),
            destination(proxy),
        )),
        [] => Err(format!(
            "No sidecar proxy registered for {target}. Register one with connect {{ sidecar_service {{}} }}"
        )),
        _ => Err(format!(
            "More than one sidecar proxy registered for {target}. Start the proxy with -proxy-id instead"
        )),
    }
}

fn destination(proxy: &Value) -> String {
    proxy["Proxy"]["DestinationServiceName"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// Where Envoy reaches the agent's xDS server.
struct AgentGrpc {
    address: SocketAddr,
    datacenter: String,
    /// The TLS port (`https://`, or the agent has only that one).
    tls: bool,
}

/// The agent's gRPC address (the flag, the environment, or the agent's own `xDS.Ports`) and
/// its datacenter.
async fn grpc_address(matches: &ArgMatches) -> Result<AgentGrpc, String> {
    let client = client(matches)?;
    // A token that may register its service need not read the agent (`agent:read`): then the
    // datacenter comes from the flag and the gRPC port from the flag or Consul's default.
    let response = client.get("/v1/agent/self").await?;
    let self_info = match response.status.as_u16() {
        403 => Value::Null,
        _ => response.json()?,
    };
    let datacenter = self_info["Config"]["Datacenter"]
        .as_str()
        .or_else(|| get_str(matches, "datacenter"))
        .unwrap_or("dc1")
        .to_string();
    if let Some(address) = env_or(matches, "grpc-addr", "CONSUL_GRPC_ADDR") {
        return Ok(AgentGrpc {
            address: resolve(&address, "-grpc-addr")?,
            datacenter,
            tls: address.starts_with("https://"),
        });
    }
    let ports = &self_info["xDS"]["Ports"];
    let plaintext = ports["Plaintext"].as_i64().filter(|port| *port > 0);
    let tls_port = ports["TLS"].as_i64().filter(|port| *port > 0);
    let (port, tls) = match (plaintext, tls_port) {
        (None, Some(port)) => (port, true),
        (Some(port), _) => (port, false),
        (None, None) => (self_info["xDS"]["Port"].as_i64().unwrap_or(8502), false),
    };
    let host = client
        .base()
        .trim_start_matches("http://")
        .trim_start_matches("https://")
        .rsplit_once(':')
        .map(|(host, _)| host.to_string())
        .unwrap_or_else(|| "127.0.0.1".into());
    Ok(AgentGrpc {
        address: resolve(&format!("{host}:{port}"), "agent gRPC address")?,
        datacenter,
        tls,
    })
}

/// The CA Envoy checks the agent's gRPC-TLS certificate with, inlined into the bootstrap.
fn grpc_ca(matches: &ArgMatches) -> Result<String, String> {
    let path = env_or(matches, "grpc-ca-file", "CONSUL_GRPC_CACERT")
        .or_else(|| env_or(matches, "ca-file", "CONSUL_CACERT"))
        .ok_or("the agent's gRPC port is TLS: set -grpc-ca-file (or CONSUL_GRPC_CACERT)")?;
    std::fs::read_to_string(&path)
        .map_err(|error| format!("cannot read the CA file {path}: {error}"))
}

/// Warns when Envoy is not the tested release; fails only when it cannot run at all.
fn check_envoy(binary: &str) -> Result<(), String> {
    let output = std::process::Command::new(binary)
        .arg("--version")
        .output()
        .map_err(|error| format!("cannot run {binary:?}: {error} (set -envoy-binary)"))?;
    // `<path> version: <sha>/<version>/Clean/RELEASE/BoringSSL`
    let text = String::from_utf8_lossy(&output.stdout);
    let version = text
        .split_once("version:")
        .and_then(|(_, rest)| rest.split('/').nth(1))
        .unwrap_or("unknown")
        .trim()
        .to_string();
    if version != TESTED_ENVOY {
        eprintln!(
            "warning: Envoy {version} is not the tested release ({TESTED_ENVOY}); running it anyway"
        );
    }
    Ok(())
}

/// Hands the bootstrap to Envoy through a FIFO in a private directory, as Consul does: a
/// child process writes it once Envoy opens the FIFO, then removes both, so the token is
/// neither left on disk nor shown on Envoy's command line.
fn bootstrap_fifo(proxy_id: &str, text: &str) -> Result<std::path::PathBuf, String> {
    use std::io::Write;
    let dir = tempfile::Builder::new()
        .prefix("concord-envoy-")
        .tempdir()
        .map_err(|error| format!("cannot create a directory for the bootstrap: {error}"))?
        .keep();
    let path = dir.join(format!("{proxy_id}-bootstrap.json"));
    let made = std::process::Command::new("mkfifo")
        .args(["-m", "600"])
        .arg(&path)
        .status()
        .map_err(|error| format!("cannot run mkfifo: {error}"))?;
    if !made.success() {
        return Err(format!("mkfifo {} failed", path.display()));
    }
    let exe = std::env::current_exe().map_err(|error| error.to_string())?;
    let mut child = std::process::Command::new(exe)
        .args(["connect", "pipe-bootstrap"])
        .arg(&path)
        .stdin(std::process::Stdio::piped())
        .spawn()
        .map_err(|error| format!("cannot start the bootstrap writer: {error}"))?;
    child
        .stdin
        .take()
        .ok_or("no stdin for the bootstrap writer")?
        .write_all(text.as_bytes())
        .map_err(|error| format!("cannot hand over the bootstrap: {error}"))?;
    Ok(path)
}

/// The hidden `connect pipe-bootstrap <fifo>`: copies stdin into the FIFO once Envoy opens
/// it, then removes the FIFO and its directory.
pub fn pipe_bootstrap(matches: &ArgMatches) -> CommandResult {
    use std::io::{Read, Write};
    let path = std::path::PathBuf::from(get_str(matches, "fifo").ok_or("fifo path required")?);
    let mut text = Vec::new();
    std::io::stdin()
        .read_to_end(&mut text)
        .map_err(|error| error.to_string())?;
    let written = std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|mut fifo| fifo.write_all(&text));
    let _ = std::fs::remove_file(&path);
    if let Some(dir) = path.parent() {
        let _ = std::fs::remove_dir(dir);
    }
    written.map_err(|error| format!("cannot write the bootstrap: {error}"))
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    let (proxy_id, service) = find_proxy(matches).await?;
    let agent = grpc_address(matches).await?;
    let agent_ca_pem = match agent.tls {
        true => Some(grpc_ca(matches)?),
        false => None,
    };
    let admin = resolve(
        get_str(matches, "admin-bind").unwrap_or("localhost:19000"),
        "-admin-bind",
    )?;
    let token =
        crate::api::client::token_from(get_str(matches, "token"), get_str(matches, "token-file"));
    let config = bootstrap(&BootstrapConfig {
        proxy_id: proxy_id.clone(),
        service,
        datacenter: agent.datacenter,
        admin,
        agent_grpc: agent.address,
        agent_ca_pem,
        token,
    });
    let text = serde_json::to_string_pretty(&config).map_err(|error| error.to_string())?;
    if get_bool(matches, "bootstrap") {
        println!("{text}");
        return Ok(());
    }
    let binary = get_str(matches, "envoy-binary")
        .unwrap_or("envoy")
        .to_string();
    check_envoy(&binary)?;
    let path = bootstrap_fifo(&proxy_id, &text)?;
    let extra: Vec<String> = matches
        .get_many::<String>("envoy-args")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut args = vec!["--config-path".to_string(), path.display().to_string()];
    let hot_restart_flags = [
        "--restart-epoch",
        "--hot-restart-version",
        "--drain-time-s",
        "--parent-shutdown-time-s",
    ];
    if !extra
        .iter()
        .any(|arg| hot_restart_flags.contains(&arg.as_str()))
    {
        args.push("--disable-hot-restart".into());
        // A filter chain that changes is drained, and its connections closed, after the drain
        // time (600 s by default): for a TCP destination that is how a new deny intention ends
        // the connections it forbids (xds::resources::public_listener), within the second
        // rather than ten minutes. concord changes a listener only when what it does changes
        // (certificates come by SDS, HTTP RBAC by ECDS, HTTP routes by RDS).
        args.extend(["--drain-time-s".into(), "0".into()]);
    }
    args.extend(extra);
    use std::os::unix::process::CommandExt;
    // Only returns on failure; on success this process becomes Envoy.
    let error = std::process::Command::new(&binary).args(&args).exec();
    Err(format!("cannot exec {binary:?}: {error}"))
}
