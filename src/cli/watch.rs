//! `concord watch -type <type> [options] [handler]`: runs `handler` (through `sh -c`) with the
//! watched data as JSON on stdin and `CONSUL_INDEX` in its environment, first for the current
//! data and then after every change, using blocking queries. Without a handler it prints the
//! current data once, as Consul's does. An event watch hands the handler only the events
//! that arrived since its last run.

use clap::{Arg, ArgMatches, Command};

use super::goflags::{boolean, get_bool, get_str, value};
use super::{client, shared_query, with_http_flags, CommandResult};
use crate::api::watch::{run_script, Plan};

pub fn command() -> Command {
    with_http_flags(
        Command::new("watch")
            .about("Runs a handler whenever watched data changes")
            .arg(value(
                "type",
                "key, keyprefix, services, nodes, service, checks or event",
            ))
            .arg(value("name", "Event name for -type=event"))
            .arg(value("key", "Key for -type=key"))
            .arg(value("prefix", "Prefix for -type=keyprefix"))
            .arg(value("service", "Service for -type=service or checks"))
            .arg(value("tag", "Tag filter for -type=service"))
            .arg(boolean(
                "passingonly",
                "Only passing instances for -type=service",
            ))
            .arg(value("state", "Check state for -type=checks (default any)"))
            .arg(Arg::new("handler").num_args(0..)),
    )
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let kind = get_str(matches, "type").ok_or("Error! -type is required")?;
    let plan = Plan::new(kind, |name| match name {
        "passingonly" => get_bool(matches, name).then(|| "true".to_string()),
        _ => get_str(matches, name).map(str::to_string),
    })
    .map_err(|error| format!("Error! {error}"))?;
    let query = shared_query(matches);
    let failed = |error: crate::api::watch::WatchError| match error {
        crate::api::watch::WatchError::Agent(_) => error.to_string(),
        _ => format!("Error! {error}"),
    };
    let handler: Vec<String> = matches
        .get_many::<String>("handler")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    let mut index: u64 = 0;
    loop {
        let (new_index, data) = plan.next(&client, index, &query).await.map_err(failed)?;
        if handler.is_empty() {
            let text = serde_json::to_string_pretty(&data).map_err(|e| e.to_string())?;
            println!("{text}");
            return Ok(());
        }
        let command = ["sh".to_string(), "-c".to_string(), handler.join(" ")];
        run_script(&command, new_index, &data)
            .await
            .map_err(failed)?;
        index = plan.following(index, new_index);
    }
}
