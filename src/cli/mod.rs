//! `concord <command>`: the agent itself, and client commands that speak only the HTTP API,
//! with Consul's command names, Go-style flags, output and exit codes.

mod acl;
mod agent;
mod catalog;
mod config;
mod connect;
mod debug;
mod envoy;
mod goflags;
mod intention;
mod kv;
mod lock;
mod operator;
mod services;
mod snapshot;
mod template;
mod tls;
mod watch;

use std::ffi::OsString;
use std::process::ExitCode;

use clap::{ArgMatches, Command};

use crate::api::client::{encode_query, Client};
use crate::api::{human_version, CONCORD_VERSION};
use goflags::{get_bool, get_str, value};

/// What a client command returns: `Ok(())`, or the message to print before exiting 1.
pub type CommandResult = Result<(), String>;

// The CLI is an edge: what it does with any error is print its text and exit. These let `?`
// carry the library's typed errors into a `CommandResult` as that text.
impl From<crate::api::client::ClientError> for String {
    fn from(error: crate::api::client::ClientError) -> String {
        error.to_string()
    }
}

impl From<crate::api::DecodeError> for String {
    fn from(error: crate::api::DecodeError) -> String {
        error.to_string()
    }
}

impl From<crate::config::ConfigError> for String {
    fn from(error: crate::config::ConfigError) -> String {
        error.to_string()
    }
}

/// The flags every HTTP client command accepts.
fn with_http_flags(command: Command) -> Command {
    command
        .arg(value(
            "http-addr",
            "Address of the agent's HTTP API (env CONSUL_HTTP_ADDR; default 127.0.0.1:8500)",
        ))
        .arg(value("token", "ACL token (env CONSUL_HTTP_TOKEN)"))
        .arg(value(
            "token-file",
            "File holding the ACL token (env CONSUL_HTTP_TOKEN_FILE)",
        ))
        .arg(value(
            "datacenter",
            "Datacenter to query (default: the agent's)",
        ))
        .arg(goflags::boolean(
            "stale",
            "Allow any server to answer reads",
        ))
        .arg(value(
            "ca-file",
            "CA certificate to check the agent's HTTPS certificate with (env CONSUL_CACERT)",
        ))
        .arg(value(
            "ca-path",
            "Directory of CA certificates (env CONSUL_CAPATH)",
        ))
        .arg(value(
            "client-cert",
            "Client certificate for an agent that verifies incoming HTTPS (env CONSUL_CLIENT_CERT)",
        ))
        .arg(value(
            "client-key",
            "The client certificate's key (env CONSUL_CLIENT_KEY)",
        ))
        .arg(value(
            "tls-server-name",
            "Name to check the agent's certificate for (env CONSUL_TLS_SERVER_NAME)",
        ))
}

fn client(matches: &ArgMatches) -> Result<Client, String> {
    client_or(matches, None, None)
}

/// `client`, with an address and token to use when no flag gives them (before the
/// environment): `concord template`'s `consul { address token }` block.
fn client_or(
    matches: &ArgMatches,
    address: Option<&str>,
    token: Option<&str>,
) -> Result<Client, String> {
    let token = crate::api::client::token_from(
        get_str(matches, "token").or(token),
        get_str(matches, "token-file"),
    );
    let flag = |name: &str| get_str(matches, name).map(str::to_string);
    let tls = crate::api::client::TlsFlags {
        ca_file: flag("ca-file"),
        ca_path: flag("ca-path"),
        client_cert: flag("client-cert"),
        client_key: flag("client-key"),
        tls_server_name: flag("tls-server-name"),
    };
    Ok(Client::with_tls(
        get_str(matches, "http-addr").or(address),
        token.as_deref(),
        &tls,
    )?)
}

/// Query parameters implied by the shared flags, starting with `&`.
fn shared_query(matches: &ArgMatches) -> String {
    let mut query = String::new();
    if let Some(dc) = get_str(matches, "datacenter") {
        query.push_str(&format!("&dc={}", encode_query(dc)));
    }
    if get_bool(matches, "stale") {
        query.push_str("&stale");
    }
    query
}

fn command_tree() -> Command {
    Command::new("concord")
        .about("A service-mesh control plane that speaks Consul's protocols")
        .disable_version_flag(true)
        .subcommand_required(true)
        .arg_required_else_help(true)
        // Go's flag package keeps the last of a repeated flag (`-node a -node b` is b), and
        // scripts rely on appending overrides; repeatable flags (`-retry-join`) still collect.
        .args_override_self(true)
        .subcommand(agent::command())
        .subcommand(debug::info_command())
        .subcommand(debug::debug_command())
        .subcommand(
            Command::new("version")
                .about("Prints the version")
                .arg(value("format", "Output format: pretty or json")),
        )
        .subcommand(with_http_flags(
            Command::new("members")
                .about("Lists the members of the cluster")
                .arg(goflags::boolean("detailed", "Show all member tags"))
                .arg(goflags::boolean("wan", "List the WAN pool's members"))
                .arg(value(
                    "status",
                    "Only members whose status matches this regular expression",
                )),
        ))
        .subcommand(with_http_flags(
            Command::new("join")
                .about("Tells the agent to join a cluster through other agents")
                .arg(goflags::boolean("wan", "Join the WAN pool (servers only)"))
                .arg(
                    clap::Arg::new("address")
                        .num_args(0..)
                        .help("Agents to join"),
                ),
        ))
        .subcommand(with_http_flags(
            Command::new("leave").about("Gracefully leaves the cluster and shuts the agent down"),
        ))
        .subcommand(with_http_flags(
            Command::new("event")
                .about("Fires a user event to the agents of the datacenter")
                .arg(value("name", "The event's name"))
                .arg(value(
                    "node",
                    "Regular expression matching the nodes to run on",
                ))
                .arg(value(
                    "service",
                    "Regular expression matching services on those nodes",
                ))
                .arg(value(
                    "tag",
                    "Regular expression matching tags of those services",
                ))
                .arg(clap::Arg::new("payload").help("The event's payload")),
        ))
        .subcommand(with_http_flags(
            Command::new("rtt")
                .about("Estimates the round trip between two nodes from their coordinates")
                .arg(goflags::boolean(
                    "wan",
                    "Use WAN coordinates (servers only)",
                ))
                .arg(
                    clap::Arg::new("nodes")
                        .num_args(0..=2)
                        .help("One or two nodes"),
                ),
        ))
        .subcommand(
            Command::new("keygen")
                .about("Generates a new gossip encryption key (32 bytes, base64)"),
        )
        .subcommand(with_http_flags(
            Command::new("keyring")
                .about("Manages the gossip encryption keys of every member")
                .arg(goflags::boolean("list", "List the installed keys"))
                .arg(value("install", "Install a new key on every member"))
                .arg(value("use", "Make an installed key the primary"))
                .arg(value("remove", "Remove a key from every member")),
        ))
        .subcommand(with_http_flags(
            Command::new("force-leave")
                .about("Forces a failed member of the cluster to leave")
                .arg(goflags::boolean(
                    "prune",
                    "Remove the member from the list entirely",
                ))
                .arg(goflags::boolean(
                    "wan",
                    "Remove the member from the WAN pool",
                ))
                .arg(clap::Arg::new("node").help("The node to remove")),
        ))
        .subcommand(with_http_flags(
            Command::new("reload").about("Makes the agent re-read its configuration files"),
        ))
        .subcommand(with_http_flags(
            Command::new("monitor")
                .about("Streams the agent's logs")
                .arg(value("log-level", "Lowest level to show (default info)")),
        ))
        .subcommand(kv::command())
        .subcommand(tls::command())
        .subcommand(template::command())
        .subcommand(catalog::command())
        .subcommand(config::command())
        .subcommand(connect::command())
        .subcommand(intention::command())
        .subcommand(acl::command())
        .subcommand(operator::command())
        .subcommand(snapshot::command())
        .subcommand(lock::command())
        .subcommand(services::services_command())
        .subcommand(services::maint_command())
        .subcommand(watch::command())
}

/// Parses arguments and runs the chosen command.
pub fn main() -> ExitCode {
    let args: Vec<OsString> = std::env::args_os().collect();
    if args
        .get(1)
        .is_some_and(|arg| arg == "--version" || arg == "-version" || arg == "-v")
    {
        print_version(false);
        return ExitCode::SUCCESS;
    }
    let tree = command_tree();
    let args = goflags::normalize(&tree, args);
    let matches = match tree.try_get_matches_from(args) {
        Ok(matches) => matches,
        Err(error) => {
            let _ = error.print();
            return if error.use_stderr() {
                ExitCode::FAILURE
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    // The agent serves many clients at once and gets a worker per core. Every other command
    // is a client of an agent, waiting on the network: one thread serves it, and with one
    // thread the allocator keeps one arena (a long-running `concord template` measured
    // 34.5 MB resident on two workers, 28.8 MB on one).
    let mut builder = match matches.subcommand_name() {
        Some("agent") => tokio::runtime::Builder::new_multi_thread(),
        _ => tokio::runtime::Builder::new_current_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("Error starting the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match matches.subcommand() {
            Some(("agent", sub)) => agent::run(sub).await,
            Some(("version", sub)) => {
                print_version(get_str(sub, "format") == Some("json"));
                Ok(())
            }
            Some(("members", sub)) => members(sub).await,
            Some(("info", sub)) => debug::info(sub).await,
            Some(("debug", sub)) => debug::debug(sub).await,
            Some(("join", sub)) => join(sub).await,
            Some(("leave", sub)) => leave(sub).await,
            Some(("force-leave", sub)) => force_leave(sub).await,
            Some(("event", sub)) => event(sub).await,
            Some(("keygen", _)) => {
                println!("{}", crate::gossip::keyring::generate());
                Ok(())
            }
            Some(("keyring", sub)) => keyring(sub).await,
            Some(("rtt", sub)) => rtt(sub).await,
            Some(("reload", sub)) => reload(sub).await,
            Some(("monitor", sub)) => monitor(sub).await,
            Some(("kv", sub)) => kv::run(sub).await,
            Some(("tls", sub)) => tls::run(sub),
            Some(("template", sub)) => template::run(sub).await,
            Some(("catalog", sub)) => catalog::run(sub).await,
            Some(("config", sub)) => config::run(sub).await,
            Some(("connect", sub)) => connect::run(sub).await,
            Some(("intention", sub)) => intention::run(sub).await,
            Some(("acl", sub)) => acl::run(sub).await,
            Some(("operator", sub)) => operator::run(sub).await,
            Some(("snapshot", sub)) => snapshot::run(sub).await,
            Some(("lock", sub)) => lock::run(sub).await,
            Some(("services", sub)) => services::run_services(sub).await,
            Some(("maint", sub)) => services::run_maint(sub).await,
            Some(("watch", sub)) => watch::run(sub).await,
            _ => Err("unknown command".to_string()),
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("{message}");
            ExitCode::FAILURE
        }
    }
}

fn print_version(json: bool) {
    if json {
        let body = serde_json::json!({
            "Version": crate::api::CONSUL_COMPAT_VERSION,
            "Revision": format!("concord-{CONCORD_VERSION}"),
            "Prerelease": "",
            "FIPS": "",
            "BuildDate": "1970-01-01T00:00:00Z",
            "RPC": {"Default": 2, "Min": 2, "Max": 3},
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&body).unwrap_or_default()
        );
    } else {
        println!("Consul v{}", human_version());
        println!("concord v{CONCORD_VERSION}");
        println!("Revision concord-{CONCORD_VERSION}");
        println!(
            "Protocol 2 spoken by default, understands 2 to 3 (agent will automatically use \
             protocol >2 when speaking to compatible agents)"
        );
    }
}

/// Prints rows as columns separated by two spaces, like Consul's `columnize`.
pub fn print_table(rows: &[Vec<String>]) {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|column| {
            rows.iter()
                .filter_map(|row| row.get(column))
                .map(|cell| cell.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .enumerate()
            .map(|(column, cell)| format!("{cell:<width$}", width = widths[column]))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
}

async fn join(matches: &ArgMatches) -> CommandResult {
    let addresses: Vec<&String> = matches
        .get_many::<String>("address")
        .into_iter()
        .flatten()
        .collect();
    if addresses.is_empty() {
        return Err("At least one address to join must be specified.".into());
    }
    let client = client(matches)?;
    let wan = if get_bool(matches, "wan") {
        "?wan=1"
    } else {
        ""
    };
    let mut joined = 0;
    for address in &addresses {
        let path = format!("/v1/agent/join/{}{wan}", encode_query(address));
        let response = client.put(&path, Vec::new()).await?;
        if !response.status.is_success() {
            return Err(format!(
                "Error joining address '{address}': Unexpected response code: {} ({})",
                response.status.as_u16(),
                response.text().trim_end()
            ));
        }
        joined += 1;
    }
    println!("Successfully joined cluster by contacting {joined} nodes.");
    Ok(())
}

/// `members` exits 2 when a `-status` filter matched nobody, as Consul's does.
async fn members(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let path = if get_bool(matches, "wan") {
        "/v1/agent/members?wan=1"
    } else {
        "/v1/agent/members"
    };
    let response = client.get(path).await?;
    if !response.status.is_success() {
        return Err(format!("Error retrieving members: {}", response.text()));
    }
    let mut members = response.json()?;
    let status_filter = match get_str(matches, "status") {
        Some(pattern) => Some(
            regex::Regex::new(pattern)
                .map_err(|error| format!("Failed to compile status regexp: {error}"))?,
        ),
        None => None,
    };
    if let (Some(filter), Some(list)) = (&status_filter, members.as_array_mut()) {
        list.retain(|member| filter.is_match(member_status(member)));
        if list.is_empty() {
            std::process::exit(2);
        }
    }
    // Servers first, then by name (Consul's order).
    if let Some(list) = members.as_array_mut() {
        list.sort_by_key(|member| {
            (
                member["Tags"]["role"].as_str() != Some("consul"),
                member["Name"].as_str().unwrap_or_default().to_string(),
            )
        });
    }
    let detailed = get_bool(matches, "detailed");
    let mut rows = vec![if detailed {
        vec!["Node", "Address", "Status", "Tags"]
    } else {
        vec![
            "Node",
            "Address",
            "Status",
            "Type",
            "Build",
            "Protocol",
            "DC",
            "Partition",
            "Segment",
        ]
    }
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    for member in members.as_array().into_iter().flatten() {
        let text = |value: &serde_json::Value| value.as_str().unwrap_or_default().to_string();
        let tags = &member["Tags"];
        let address = format!("{}:{}", text(&member["Addr"]), member["Port"]);
        let status = member_status(member);
        if detailed {
            let tags = tags
                .as_object()
                .map(|tags| {
                    tags.iter()
                        .map(|(key, value)| format!("{key}={}", value.as_str().unwrap_or_default()))
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            rows.push(vec![text(&member["Name"]), address, status.into(), tags]);
        } else {
            let kind = if text(&tags["role"]) == "consul" {
                "server"
            } else {
                "client"
            };
            let build = text(&tags["build"]);
            let build = build.split('+').next().unwrap_or_default().to_string();
            rows.push(vec![
                text(&member["Name"]),
                address,
                status.into(),
                kind.into(),
                build,
                text(&tags["vsn"]),
                text(&tags["dc"]),
                "default".into(),
                if kind == "server" {
                    "<all>"
                } else {
                    "<default>"
                }
                .into(),
            ]);
        }
    }
    print_table(&rows);
    Ok(())
}

fn member_status(member: &serde_json::Value) -> &'static str {
    match member["Status"].as_u64() {
        Some(1) => "alive",
        Some(2) => "leaving",
        Some(3) => "left",
        Some(4) => "failed",
        _ => "none",
    }
}

async fn leave(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let response = client.put("/v1/agent/leave", Vec::new()).await?;
    if !response.status.is_success() {
        return Err(format!("Error leaving: {}", response.text()));
    }
    println!("Graceful leave complete");
    Ok(())
}

async fn event(matches: &ArgMatches) -> CommandResult {
    let Some(name) = get_str(matches, "name").filter(|name| !name.is_empty()) else {
        return Err("Event name must be specified".into());
    };
    let mut path = format!("/v1/event/fire/{}?", encode_query(name));
    for filter in ["node", "service", "tag"] {
        if let Some(pattern) = get_str(matches, filter) {
            path.push_str(&format!("&{filter}={}", encode_query(pattern)));
        }
    }
    let payload = get_str(matches, "payload").unwrap_or_default();
    let response = client(matches)?
        .put(&path, payload.as_bytes().to_vec())
        .await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error firing event: Unexpected response code: {} ({})",
            response.status.as_u16(),
            response.text().trim_end()
        ));
    }
    let fired = response.json()?;
    println!("Event ID: {}", fired["ID"].as_str().unwrap_or_default());
    Ok(())
}

async fn rtt(matches: &ArgMatches) -> CommandResult {
    use crate::types::coordinate::Coordinate;
    if get_bool(matches, "wan") {
        return Err("Error: there is no WAN pool in this release; use LAN coordinates".into());
    }
    let client = client(matches)?;
    let mut nodes: Vec<String> = matches
        .get_many::<String>("nodes")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    match nodes.len() {
        0 => return Err("One or two node names must be specified".into()),
        1 => {
            let own = client.get("/v1/agent/self").await?.json()?;
            nodes.push(
                own["Config"]["NodeName"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
            );
        }
        _ => {}
    }
    let listed = client.get("/v1/coordinate/nodes").await?;
    if !listed.status.is_success() {
        return Err(format!(
            "Error getting coordinates: {}",
            listed.text().trim_end()
        ));
    }
    let listed = listed.json()?;
    let find = |name: &str| -> Result<Coordinate, String> {
        listed
            .as_array()
            .into_iter()
            .flatten()
            .find(|entry| entry["Node"] == name)
            .and_then(|entry| serde_json::from_value(entry["Coord"].clone()).ok())
            .ok_or_else(|| format!("Could not find a coordinate for node {name:?}"))
    };
    let (a, b) = (find(&nodes[0])?, find(&nodes[1])?);
    let rtt = a.distance_to(&b);
    println!(
        "Estimated {} <-> {} rtt: {:.3} ms (using LAN coordinates)",
        nodes[0],
        nodes[1],
        rtt.as_secs_f64() * 1000.0
    );
    Ok(())
}

async fn keyring(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let chosen: Vec<(&str, Option<&str>)> = [
        ("list", get_bool(matches, "list").then_some("")),
        ("install", get_str(matches, "install")),
        ("use", get_str(matches, "use")),
        ("remove", get_str(matches, "remove")),
    ]
    .into_iter()
    .filter(|(_, value)| value.is_some())
    .collect();
    let [(operation, value)] = chosen[..] else {
        return Err("Exactly one of -list, -install, -use, or -remove must be provided".into());
    };
    let body = serde_json::json!({ "Key": value.unwrap_or_default() })
        .to_string()
        .into_bytes();
    let (intro, method) = match operation {
        "list" => ("Gathering installed encryption keys...", "GET"),
        "install" => ("Installing new gossip encryption key...", "POST"),
        "use" => ("Changing primary gossip encryption key...", "PUT"),
        _ => ("Removing gossip encryption key...", "DELETE"),
    };
    println!("==> {intro}");
    let method = match method {
        "GET" => hyper::Method::GET,
        "POST" => hyper::Method::POST,
        "PUT" => hyper::Method::PUT,
        _ => hyper::Method::DELETE,
    };
    let body = (method != hyper::Method::GET).then_some(body);
    let response = client.request(method, "/v1/operator/keyring", body).await?;
    if !response.status.is_success() {
        return Err(format!("error: {}", response.text().trim_end()));
    }
    if operation == "list" {
        let pools = response.json()?;
        for pool in pools.as_array().into_iter().flatten() {
            println!();
            match pool["WAN"].as_bool() {
                Some(true) => println!("WAN:"),
                _ => println!("{} (LAN):", pool["Datacenter"].as_str().unwrap_or_default()),
            }
            let total = pool["NumNodes"].as_u64().unwrap_or(0);
            for (key, count) in pool["Keys"].as_object().into_iter().flatten() {
                println!("  {key} [{}/{total}]", count.as_u64().unwrap_or(0));
            }
        }
    }
    Ok(())
}

async fn force_leave(matches: &ArgMatches) -> CommandResult {
    let Some(node) = get_str(matches, "node") else {
        return Err("A node name must be specified to force leave.".into());
    };
    let mut query = Vec::new();
    if get_bool(matches, "prune") {
        query.push("prune=1");
    }
    if get_bool(matches, "wan") {
        query.push("wan=1");
    }
    let path = format!(
        "/v1/agent/force-leave/{}{}{}",
        encode_query(node),
        if query.is_empty() { "" } else { "?" },
        query.join("&")
    );
    let response = client(matches)?.put(&path, Vec::new()).await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error force leaving: Unexpected response code: {} ({})",
            response.status.as_u16(),
            response.text().trim_end()
        ));
    }
    Ok(())
}

async fn reload(matches: &ArgMatches) -> CommandResult {
    let response = client(matches)?.put("/v1/agent/reload", Vec::new()).await?;
    if !response.status.is_success() {
        return Err(format!("Error reloading: {}", response.text()));
    }
    println!("Configuration reload triggered");
    Ok(())
}

async fn monitor(matches: &ArgMatches) -> CommandResult {
    use std::io::Write;
    let level = get_str(matches, "log-level").unwrap_or("info");
    let path = format!("/v1/agent/monitor?loglevel={}", encode_query(level));
    let client = client(matches)?;
    let mut stdout = std::io::stdout();
    tokio::select! {
        result = client.stream(&path, |chunk| {
            let _ = stdout.write_all(chunk);
            let _ = stdout.flush();
        }) => Ok(result?),
        _ = tokio::signal::ctrl_c() => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    /// clap checks a command tree's consistency (unique argument names, ...) only when it is
    /// used; this checks every subcommand at once.
    #[test]
    fn the_command_tree_is_consistent() {
        super::command_tree().debug_assert();
    }

    /// As Go's flag package: the last of a repeated flag wins; repeatable flags collect.
    #[test]
    fn a_repeated_flag_keeps_its_last_value() {
        let args = [
            "concord",
            "agent",
            "-node",
            "a",
            "-node=b",
            "-retry-join",
            "x",
            "-retry-join",
            "y",
        ];
        let tree = super::command_tree();
        let args = super::goflags::normalize(&tree, args.iter().map(Into::into).collect());
        let matches = tree.try_get_matches_from(args).expect("parses");
        let (_, agent) = matches.subcommand().expect("agent");
        assert_eq!(
            agent.get_one::<String>("node").map(String::as_str),
            Some("b")
        );
        let joins: Vec<&String> = agent
            .get_many::<String>("retry-join")
            .expect("joins")
            .collect();
        assert_eq!(joins, ["x", "y"]);
    }
}
