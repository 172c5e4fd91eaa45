//! `concord snapshot save|restore|inspect`: Consul's snapshot archives (`crate::snapshot`).

use clap::{ArgMatches, Command};

use super::{client, print_table, shared_query, with_http_flags, CommandResult};
use crate::state::Store;

/// The largest archive `inspect` and `save`'s check read back (as the agent's default limit).
const READ_LIMIT: u64 = 1 << 30;

fn file_arg() -> clap::Arg {
    clap::Arg::new("file")
        .required(true)
        .help("The snapshot file")
}

pub fn command() -> Command {
    Command::new("snapshot")
        .about("Saves, restores and inspects snapshots of the servers' state")
        .subcommand_required(true)
        .subcommand(with_http_flags(
            Command::new("save")
                .about("Saves a snapshot of the state to a file")
                .arg(file_arg()),
        ))
        .subcommand(with_http_flags(
            Command::new("restore")
                .about("Restores a snapshot file into the cluster, replacing its state")
                .arg(file_arg()),
        ))
        .subcommand(
            Command::new("inspect")
                .about("Describes a snapshot file")
                .arg(file_arg()),
        )
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("save", sub)) => save(sub).await,
        Some(("restore", sub)) => restore(sub).await,
        Some(("inspect", sub)) => inspect(sub),
        _ => Err("unknown snapshot command".into()),
    }
}

fn file(matches: &ArgMatches) -> String {
    matches
        .get_one::<String>("file")
        .cloned()
        .unwrap_or_default()
}

async fn save(matches: &ArgMatches) -> CommandResult {
    let path = file(matches);
    let query = shared_query(matches);
    let url = format!("/v1/snapshot?{}", query.trim_start_matches('&'));
    let response = client(matches)?.get(&url).await?;
    if !response.status.is_success() {
        return Err(format!("Error saving snapshot: {}", response.text()));
    }
    // Verify before keeping it, then write next to the target and rename, so a failed save
    // never leaves a partial file under the name.
    let (meta, _) = crate::snapshot::read(&response.body, READ_LIMIT)
        .map_err(|error| format!("Error verifying snapshot: {error}"))?;
    let partial = format!("{path}.part");
    std::fs::write(&partial, &response.body)
        .and_then(|()| std::fs::rename(&partial, &path))
        .map_err(|error| format!("Error writing snapshot file {path}: {error}"))?;
    println!("Saved and verified snapshot to index {}", meta.index);
    Ok(())
}

async fn restore(matches: &ArgMatches) -> CommandResult {
    let path = file(matches);
    let archive = std::fs::read(&path)
        .map_err(|error| format!("Error opening snapshot file {path}: {error}"))?;
    let response = client(matches)?
        .request(hyper::Method::PUT, "/v1/snapshot", Some(archive))
        .await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error restoring snapshot: Unexpected response code: {} ({})",
            response.status.as_u16(),
            response.text()
        ));
    }
    println!("Restored snapshot");
    Ok(())
}

fn inspect(matches: &ArgMatches) -> CommandResult {
    let path = file(matches);
    let archive = std::fs::read(&path)
        .map_err(|error| format!("Error opening snapshot file {path}: {error}"))?;
    let (meta, state) = crate::snapshot::read(&archive, READ_LIMIT)
        .map_err(|error| format!("Error inspecting snapshot: {error}"))?;
    let counts =
        Store::inspect(&state).map_err(|error| format!("Error inspecting snapshot: {error}"))?;
    let rows: Vec<Vec<String>> = [
        ("ID", meta.id.clone()),
        ("Size", meta.size.to_string()),
        ("Index", meta.index.to_string()),
        ("Term", meta.term.to_string()),
        ("Version", meta.version.to_string()),
    ]
    .into_iter()
    .map(|(name, value)| vec![format!(" {name}"), value])
    .collect();
    print_table(&rows);
    println!();
    let mut table = vec![
        vec![" Type".to_string(), "Count".to_string()],
        vec![" ----".to_string(), "----".to_string()],
    ];
    for (kind, count) in counts {
        table.push(vec![format!(" {kind}"), count.to_string()]);
    }
    print_table(&table);
    Ok(())
}
