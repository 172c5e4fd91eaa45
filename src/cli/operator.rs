//! `concord operator raft list-peers|remove-peer` and `concord operator autopilot
//! get-config|set-config|state`.

use clap::{ArgMatches, Command};
use serde_json::Value;

use super::goflags::{boolean, get_str, value};
use super::{client, print_table, shared_query, with_http_flags, CommandResult};
use crate::api::client::encode_query;

pub fn command() -> Command {
    Command::new("operator")
        .about("Operates the cluster's servers")
        .subcommand_required(true)
        .subcommand(
            Command::new("raft")
                .about("Inspects and changes the Raft configuration")
                .subcommand_required(true)
                .subcommand(with_http_flags(Command::new("list-peers").about(
                    "Lists the servers of the Raft configuration (-stale: as any server sees it)",
                )))
                .subcommand(with_http_flags(
                    Command::new("remove-peer")
                        .about("Removes a server from the Raft configuration")
                        .arg(value("address", "The server's ip:port to remove"))
                        .arg(value("id", "The server's node ID to remove")),
                ))
                .subcommand(with_http_flags(
                    Command::new("transfer-leader")
                        .about("Hands leadership to another server")
                        .arg(value(
                            "id",
                            "The node ID of the server to hand leadership to",
                        )),
                )),
        )
        .subcommand(
            Command::new("autopilot")
                .about("Reads and changes autopilot's configuration, and shows its view")
                .subcommand_required(true)
                .subcommand(with_http_flags(
                    Command::new("get-config").about("Shows autopilot's configuration"),
                ))
                .subcommand(with_http_flags(
                    Command::new("set-config")
                        .about("Changes the settings given, keeping the others")
                        .arg(boolean(
                            "cleanup-dead-servers",
                            "Remove failed servers from the Raft configuration",
                        ))
                        .arg(value(
                            "last-contact-threshold",
                            "A server not heard from for longer is unhealthy",
                        ))
                        .arg(value(
                            "max-trailing-logs",
                            "A server further behind the leader's log is unhealthy",
                        ))
                        .arg(value(
                            "min-quorum",
                            "Dead-server cleanup never leaves fewer voters than this",
                        ))
                        .arg(value(
                            "server-stabilization-time",
                            "How long a new server stays healthy before it becomes a voter",
                        ))
                        .arg(value(
                            "redundancy-zone-tag",
                            "Enterprise only; kept, unused",
                        ))
                        .arg(boolean(
                            "disable-upgrade-migration",
                            "Enterprise only; kept, unused",
                        ))
                        .arg(value(
                            "upgrade-version-tag",
                            "Enterprise only; kept, unused",
                        )),
                ))
                .subcommand(with_http_flags(
                    Command::new("state")
                        .about("Shows autopilot's view of the servers")
                        .arg(value("format", "Output format: pretty (default) or json")),
                )),
        )
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("raft", raft)) => match raft.subcommand() {
            Some(("list-peers", sub)) => list_peers(sub).await,
            Some(("remove-peer", sub)) => remove_peer(sub).await,
            Some(("transfer-leader", sub)) => transfer_leader(sub).await,
            _ => Err("unknown operator raft command".into()),
        },
        Some(("autopilot", autopilot)) => match autopilot.subcommand() {
            Some(("get-config", sub)) => get_config(sub).await,
            Some(("set-config", sub)) => set_config(sub).await,
            Some(("state", sub)) => state(sub).await,
            _ => Err("unknown operator autopilot command".into()),
        },
        _ => Err("unknown operator command".into()),
    }
}

async fn list_peers(matches: &ArgMatches) -> CommandResult {
    let path = format!(
        "/v1/operator/raft/configuration?{}",
        shared_query(matches).trim_start_matches('&')
    );
    let response = client(matches)?.get(&path).await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error getting peers: Failed to retrieve raft configuration: {}",
            response.text().trim_end()
        ));
    }
    let configuration = response.json()?;
    let servers = configuration["Servers"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let leader_index = servers
        .iter()
        .find(|server| server["Leader"] == true)
        .and_then(|server| server["LastIndex"].as_u64())
        .unwrap_or(0);
    let mut rows = vec![[
        "Node",
        "ID",
        "Address",
        "State",
        "Voter",
        "RaftProtocol",
        "Commit Index",
        "Trails Leader By",
    ]
    .map(String::from)
    .to_vec()];
    for server in &servers {
        let text = |key: &str| server[key].as_str().unwrap_or_default().to_string();
        let leader = server["Leader"] == true;
        let last_index = server["LastIndex"].as_u64().unwrap_or(0);
        let trails = match leader {
            true => "-".to_string(),
            false => match leader_index.saturating_sub(last_index) {
                1 => "1 commit".to_string(),
                behind => format!("{behind} commits"),
            },
        };
        rows.push(vec![
            text("Node"),
            text("ID"),
            text("Address"),
            if leader { "leader" } else { "follower" }.to_string(),
            (server["Voter"] == true).to_string(),
            text("ProtocolVersion"),
            last_index.to_string(),
            trails,
        ]);
    }
    print_table(&rows);
    Ok(())
}

async fn remove_peer(matches: &ArgMatches) -> CommandResult {
    let (key, target) = match (get_str(matches, "id"), get_str(matches, "address")) {
        (Some(_), Some(_)) => {
            return Err("Error removing peer: Only one of -address or -id may be given".into())
        }
        (Some(id), None) => ("id", id),
        (None, Some(address)) => ("address", address),
        (None, None) => {
            return Err("Error removing peer: Missing peer address or id (-address or -id)".into())
        }
    };
    let path = format!("/v1/operator/raft/peer?{key}={}", encode_query(target));
    let response = client(matches)?
        .request(hyper::Method::DELETE, &path, None)
        .await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error removing peer: {}",
            response.text().trim_end()
        ));
    }
    println!("Removed peer with {key} \"{target}\"");
    Ok(())
}

async fn transfer_leader(matches: &ArgMatches) -> CommandResult {
    let mut path = String::from("/v1/operator/raft/transfer-leader");
    if let Some(id) = get_str(matches, "id").filter(|id| !id.is_empty()) {
        path += &format!("?id={}", encode_query(id));
    }
    let response = client(matches)?
        .request(hyper::Method::POST, &path, None)
        .await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error transferring leadership: Failed to transfer leadership {}",
            response.text().trim_end()
        ));
    }
    println!("Success");
    Ok(())
}

const AUTOPILOT_PATH: &str = "/v1/operator/autopilot/configuration";

async fn read_config(matches: &ArgMatches) -> Result<Value, String> {
    let path = format!(
        "{AUTOPILOT_PATH}?{}",
        shared_query(matches).trim_start_matches('&')
    );
    let response = client(matches)?.get(&path).await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error querying Autopilot configuration: {}",
            response.text().trim_end()
        ));
    }
    Ok(response.json()?)
}

/// The configuration's fields in Consul's order, as `get-config` prints them.
const CONFIG_FIELDS: [&str; 8] = [
    "CleanupDeadServers",
    "LastContactThreshold",
    "MaxTrailingLogs",
    "MinQuorum",
    "ServerStabilizationTime",
    "RedundancyZoneTag",
    "DisableUpgradeMigration",
    "UpgradeVersionTag",
];

async fn get_config(matches: &ArgMatches) -> CommandResult {
    let config = read_config(matches).await?;
    for field in CONFIG_FIELDS {
        let shown = match &config[field] {
            Value::String(text) if field.ends_with("Tag") => format!("{text:?}"),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        println!("{field} = {shown}");
    }
    Ok(())
}

/// Reads the configuration, changes the fields whose flags were given, and writes it back
/// only if nobody changed it in between (`?cas`), as Consul's command does.
async fn set_config(matches: &ArgMatches) -> CommandResult {
    let mut config = read_config(matches).await?;
    let modify_index = config["ModifyIndex"].as_u64().unwrap_or(0);
    for (flag, field) in [
        ("cleanup-dead-servers", "CleanupDeadServers"),
        ("disable-upgrade-migration", "DisableUpgradeMigration"),
    ] {
        if let Some(value) = matches.get_one::<bool>(flag) {
            config[field] = Value::Bool(*value);
        }
    }
    for (flag, field) in [
        ("max-trailing-logs", "MaxTrailingLogs"),
        ("min-quorum", "MinQuorum"),
    ] {
        if let Some(text) = get_str(matches, flag) {
            let number: u64 = text
                .parse()
                .map_err(|_| format!("Error parsing -{flag}: {text:?} is not a number"))?;
            config[field] = number.into();
        }
    }
    for (flag, field) in [
        ("last-contact-threshold", "LastContactThreshold"),
        ("server-stabilization-time", "ServerStabilizationTime"),
    ] {
        if let Some(text) = get_str(matches, flag) {
            crate::types::duration::parse_go_duration(text)
                .map_err(|error| format!("Error parsing -{flag}: {error}"))?;
            config[field] = text.into();
        }
    }
    for (flag, field) in [
        ("redundancy-zone-tag", "RedundancyZoneTag"),
        ("upgrade-version-tag", "UpgradeVersionTag"),
    ] {
        if let Some(text) = get_str(matches, flag) {
            config[field] = text.into();
        }
    }
    let path = format!(
        "{AUTOPILOT_PATH}?cas={modify_index}{}",
        shared_query(matches)
    );
    let body = serde_json::to_vec(&config).unwrap_or_default();
    let response = client(matches)?.put(&path, body).await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error setting Autopilot configuration: {}",
            response.text().trim_end()
        ));
    }
    match response.text().trim() {
        "true" => {
            println!("Configuration updated!");
            Ok(())
        }
        _ => Err("Configuration could not be atomically updated, please try again".into()),
    }
}

async fn state(matches: &ArgMatches) -> CommandResult {
    let path = format!(
        "/v1/operator/autopilot/state?{}",
        shared_query(matches).trim_start_matches('&')
    );
    let response = client(matches)?.get(&path).await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error querying Autopilot state: {}",
            response.text().trim_end()
        ));
    }
    let state = response.json()?;
    match get_str(matches, "format").unwrap_or("pretty") {
        "json" => {
            println!(
                "{}",
                serde_json::to_string_pretty(&state).unwrap_or_default()
            );
            Ok(())
        }
        "pretty" => {
            print!("{}", pretty_state(&state));
            Ok(())
        }
        other => Err(format!("Unknown format: {other}")),
    }
}

/// Consul's text layout of the autopilot state.
fn pretty_state(state: &Value) -> String {
    let text = |value: &Value| match value {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let mut out = String::new();
    out += &format!(
        "Healthy:                      {}\n",
        text(&state["Healthy"])
    );
    out += &format!(
        "Failure Tolerance:            {}\n",
        text(&state["FailureTolerance"])
    );
    out += &format!(
        "Optimistic Failure Tolerance: {}\n",
        text(&state["OptimisticFailureTolerance"])
    );
    out += &format!("Leader:                       {}\n", text(&state["Leader"]));
    out += "Voters:\n";
    for voter in state["Voters"].as_array().into_iter().flatten() {
        out += &format!("   {}\n", text(voter));
    }
    out += "\nServers:\n";
    for (id, server) in state["Servers"].as_object().into_iter().flatten() {
        out += &format!("   {id}\n");
        for (label, field) in [
            ("Name", "Name"),
            ("Address", "Address"),
            ("Version", "Version"),
            ("Status", "Status"),
            ("Node Type", "NodeType"),
            ("Node Status", "NodeStatus"),
            ("Healthy", "Healthy"),
            ("Last Contact", "LastContact"),
            ("Last Term", "LastTerm"),
            ("Last Index", "LastIndex"),
            ("Stable Since", "StableSince"),
        ] {
            out += &format!(
                "      {:<14} {}\n",
                format!("{label}:"),
                text(&server[field])
            );
        }
        out += "\n";
    }
    out
}
