//! `concord connect ca get-config|set-config` and `concord connect envoy`.

use clap::{ArgMatches, Command};

use super::config::{pretty4, unexpected};
use super::goflags::{get_str, value};
use super::{client, shared_query, with_http_flags, CommandResult};

pub fn command() -> Command {
    Command::new("connect")
        .about("Interacts with Connect (service mesh)")
        .subcommand_required(true)
        .subcommand(
            Command::new("ca")
                .about("Interacts with the Connect CA")
                .subcommand_required(true)
                .subcommand(with_http_flags(
                    Command::new("get-config").about("Shows the CA configuration"),
                ))
                .subcommand(with_http_flags(
                    Command::new("set-config")
                        .about("Replaces the CA configuration (may rotate the root)")
                        .arg(value("config-file", "JSON file with the new configuration")),
                )),
        )
        .subcommand(super::envoy::command())
        .subcommand(
            Command::new("pipe-bootstrap")
                .hide(true)
                .arg(clap::Arg::new("fifo").required(true)),
        )
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("ca", ca)) => match ca.subcommand() {
            Some(("get-config", sub)) => get_config(sub).await,
            Some(("set-config", sub)) => set_config(sub).await,
            _ => Err("unknown connect ca command".into()),
        },
        Some(("envoy", sub)) => super::envoy::run(sub).await,
        Some(("pipe-bootstrap", sub)) => super::envoy::pipe_bootstrap(sub),
        _ => Err("unknown connect command".into()),
    }
}

async fn get_config(matches: &ArgMatches) -> CommandResult {
    let response = client(matches)?
        .get(&format!(
            "/v1/connect/ca/configuration?{}",
            shared_query(matches)
        ))
        .await?;
    if response.status != 200 {
        return Err(format!(
            "Error request CA configuration: {}",
            unexpected(&response)
        ));
    }
    println!("{}", pretty4(&response.json()?));
    Ok(())
}

async fn set_config(matches: &ArgMatches) -> CommandResult {
    let file = get_str(matches, "config-file").ok_or("-config-file must be set")?;
    let text =
        std::fs::read(file).map_err(|error| format!("Error reading config file: {error}"))?;
    serde_json::from_slice::<serde_json::Value>(&text)
        .map_err(|error| format!("Error parsing config file: {error}"))?;
    let response = client(matches)?
        .put(
            &format!("/v1/connect/ca/configuration?{}", shared_query(matches)),
            text,
        )
        .await?;
    if response.status != 200 {
        return Err(format!(
            "Error setting CA configuration: {}",
            unexpected(&response)
        ));
    }
    println!("Configuration updated!");
    Ok(())
}
