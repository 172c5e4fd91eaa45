//! `concord operator raft list-peers|remove-peer`.

use clap::{ArgMatches, Command};

use super::goflags::{get_str, value};
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
                )),
        )
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("raft", raft)) => match raft.subcommand() {
            Some(("list-peers", sub)) => list_peers(sub).await,
            Some(("remove-peer", sub)) => remove_peer(sub).await,
            _ => Err("unknown operator raft command".into()),
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
