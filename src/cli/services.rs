//! `concord services register|deregister` and `concord maint`: client commands for the local
//! agent's services and maintenance mode.

use clap::{Arg, ArgMatches, Command};
use serde_json::{json, Map, Value};

use super::goflags::{boolean, get_bool, get_str, repeated, value};
use super::{client, with_http_flags, CommandResult};
use crate::api::client::{encode_path, encode_query};
use crate::config::sources;

pub fn services_command() -> Command {
    Command::new("services")
        .about("Registers or deregisters services with the local agent")
        .subcommand_required(true)
        .subcommand(with_http_flags(
            Command::new("register")
                .about("Registers services from files (JSON or HCL) or from flags")
                .arg(value("name", "Service name"))
                .arg(value("id", "Service id (default: the name)"))
                .arg(value("address", "Service address"))
                .arg(value("port", "Service port"))
                .arg(value("kind", "Service kind"))
                .arg(repeated("tag", "A tag (repeatable)"))
                .arg(repeated("meta", "Metadata as key=value (repeatable)"))
                .arg(Arg::new("files").num_args(0..)),
        ))
        .subcommand(with_http_flags(
            Command::new("deregister")
                .about("Deregisters services by -id or by the files that defined them")
                .arg(value("id", "Service id"))
                .arg(Arg::new("files").num_args(0..)),
        ))
}

pub fn maint_command() -> Command {
    with_http_flags(
        Command::new("maint")
            .about("Puts the node or a service into maintenance mode, or lists it")
            .arg(boolean("enable", "Enable maintenance mode"))
            .arg(boolean("disable", "Disable maintenance mode"))
            .arg(value("reason", "Why (shown in the check's notes)"))
            .arg(value("service", "A service id instead of the whole node")),
    )
}

/// Service definitions from files: the `service` and `services` keys of each.
fn definitions_from_files(matches: &ArgMatches) -> Result<Vec<Value>, String> {
    let mut definitions = Vec::new();
    for file in matches.get_many::<String>("files").into_iter().flatten() {
        let source = sources::read_file(std::path::Path::new(file), None)?;
        let object = source.value.as_object().cloned().unwrap_or_default();
        let mut found = false;
        for key in ["service", "services"] {
            if let Some(value) = object.get(key) {
                found = true;
                definitions.extend(crate::api::definition::one_or_many(value.clone()));
            }
        }
        if !found {
            return Err(format!("Error! {file} defines no service"));
        }
    }
    Ok(definitions)
}

fn definition_from_flags(matches: &ArgMatches) -> Result<Option<Value>, String> {
    let Some(name) = get_str(matches, "name") else {
        return Ok(None);
    };
    let mut service = json!({"Name": name});
    for (flag, field) in [("id", "ID"), ("address", "Address"), ("kind", "Kind")] {
        if let Some(text) = get_str(matches, flag) {
            service[field] = json!(text);
        }
    }
    if let Some(port) = get_str(matches, "port") {
        let port: u16 = port
            .parse()
            .map_err(|_| format!("Error! Invalid -port {port:?}"))?;
        service["Port"] = json!(port);
    }
    let tags: Vec<&String> = matches
        .get_many::<String>("tag")
        .into_iter()
        .flatten()
        .collect();
    if !tags.is_empty() {
        service["Tags"] = json!(tags);
    }
    let mut meta = Map::new();
    for pair in matches.get_many::<String>("meta").into_iter().flatten() {
        let (key, value) = pair
            .split_once('=')
            .ok_or_else(|| format!("Error! Invalid -meta {pair:?}: expected key=value"))?;
        meta.insert(key.to_string(), json!(value));
    }
    if !meta.is_empty() {
        service["Meta"] = Value::Object(meta);
    }
    Ok(Some(service))
}

pub async fn run_services(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("register", sub)) => register(sub).await,
        Some(("deregister", sub)) => deregister(sub).await,
        _ => Err("unknown services command".into()),
    }
}

async fn register(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let mut definitions = definitions_from_files(matches)?;
    definitions.extend(definition_from_flags(matches)?);
    if definitions.is_empty() {
        return Err("Error! Give service definition files or -name".into());
    }
    for definition in definitions {
        let name = definition
            .get("name")
            .or_else(|| definition.get("Name"))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        let response = client
            .put(
                "/v1/agent/service/register",
                definition.to_string().into_bytes(),
            )
            .await?;
        if !response.status.is_success() {
            return Err(format!(
                "Error registering service {name:?}: {}",
                response.text()
            ));
        }
        println!("Registered service: {name}");
    }
    Ok(())
}

async fn deregister(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let mut ids: Vec<String> = get_str(matches, "id")
        .map(str::to_string)
        .into_iter()
        .collect();
    for definition in definitions_from_files(matches)? {
        let field = |names: [&str; 2]| {
            names
                .iter()
                .find_map(|name| definition.get(*name).and_then(Value::as_str))
                .map(str::to_string)
        };
        if let Some(id) = field(["id", "ID"]).or_else(|| field(["name", "Name"])) {
            ids.push(id);
        }
    }
    if ids.is_empty() {
        return Err("Error! Give -id or the service definition files".into());
    }
    for id in ids {
        let path = format!("/v1/agent/service/deregister/{}", encode_path(&id));
        let response = client.put(&path, Vec::new()).await?;
        if !response.status.is_success() {
            return Err(format!(
                "Error deregistering service {id:?}: {}",
                response.text()
            ));
        }
        println!("Deregistered service: {id}");
    }
    Ok(())
}

pub async fn run_maint(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let enable = get_bool(matches, "enable");
    let disable = get_bool(matches, "disable");
    if enable && disable {
        return Err("Error! Only one of -enable or -disable may be given".into());
    }
    let service = get_str(matches, "service");
    if !enable && !disable {
        let checks = client.get("/v1/agent/checks").await?.json()?;
        for check in checks.as_object().into_iter().flat_map(|c| c.values()) {
            let id = check["CheckID"].as_str().unwrap_or_default();
            let notes = check["Notes"].as_str().unwrap_or_default();
            if id == crate::agent::NODE_MAINTENANCE {
                println!(
                    "Node:\n  Name:   {}\n  Reason: {notes}",
                    check["Node"].as_str().unwrap_or_default()
                );
            } else if crate::agent::is_maintenance(id) {
                println!(
                    "Service:\n  ID:     {}\n  Reason: {notes}",
                    check["ServiceID"].as_str().unwrap_or_default()
                );
            }
        }
        return Ok(());
    }
    let reason = get_str(matches, "reason").unwrap_or("");
    let query = format!("enable={enable}&reason={}", encode_query(reason));
    let path = match service {
        Some(id) => format!("/v1/agent/service/maintenance/{}?{query}", encode_path(id)),
        None => format!("/v1/agent/maintenance?{query}"),
    };
    let response = client.put(&path, Vec::new()).await?;
    if !response.status.is_success() {
        return Err(format!("Error! {}", response.text()));
    }
    let state = if enable { "entered" } else { "left" };
    match service {
        Some(id) => println!("Service {state} maintenance mode: {id}"),
        None => println!("Node {state} maintenance mode"),
    }
    Ok(())
}
