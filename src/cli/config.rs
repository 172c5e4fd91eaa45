//! `concord config write|read|list|delete`: config entries from HCL or JSON files, with
//! Consul's flags, output and exit codes.

use std::io::Read;
use std::path::Path;

use clap::{Arg, ArgMatches, Command};
use serde_json::Value;

use super::goflags::{boolean, get_bool, get_str, value};
use super::{client, shared_query, with_http_flags, CommandResult};
use crate::api::client::{encode_path, encode_query, Response};
use crate::api::config_entry::normalize;
use crate::config::sources::{parse_text, Format};

pub fn command() -> Command {
    Command::new("config")
        .about("Interacts with config entries")
        .subcommand_required(true)
        .subcommand(with_http_flags(
            Command::new("write")
                .about("Writes a config entry from an HCL or JSON file (- for stdin)")
                .arg(boolean("cas", "Check-and-set against -modify-index"))
                .arg(value(
                    "modify-index",
                    "The ModifyIndex the entry must have for -cas",
                ))
                .arg(Arg::new("file")),
        ))
        .subcommand(with_http_flags(
            Command::new("read")
                .about("Reads one config entry")
                .arg(value("kind", "The entry's kind"))
                .arg(value("name", "The entry's name")),
        ))
        .subcommand(with_http_flags(
            Command::new("list")
                .about("Lists the names of the config entries of one kind")
                .arg(value("kind", "The kind to list"))
                .arg(value("filter", "Filter expression")),
        ))
        .subcommand(with_http_flags(
            Command::new("delete")
                .about("Deletes a config entry")
                .arg(value("kind", "The entry's kind"))
                .arg(value("name", "The entry's name"))
                .arg(value("filename", "Take kind and name from this entry file"))
                .arg(boolean("cas", "Check-and-set against -modify-index"))
                .arg(value(
                    "modify-index",
                    "The ModifyIndex the entry must have for -cas",
                )),
        ))
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("write", sub)) => write(sub).await,
        Some(("read", sub)) => read(sub).await,
        Some(("list", sub)) => list(sub).await,
        Some(("delete", sub)) => delete(sub).await,
        _ => Err("unknown config command".into()),
    }
}

/// Consul's text for a non-2xx answer.
pub fn unexpected(response: &Response) -> String {
    format!(
        "Unexpected response code: {} ({})",
        response.status.as_u16(),
        response.text().trim()
    )
}

/// Reads an entry file (HCL or JSON, by extension, else whichever parses) into canonical JSON.
pub fn read_entry_file(argument: &str) -> Result<serde_json::Map<String, Value>, String> {
    let (text, format) = if argument == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|error| format!("Failed to read stdin: {error}"))?;
        (text, None)
    } else {
        let text = std::fs::read_to_string(argument)
            .map_err(|error| format!("Failed to read file {argument}: {error}"))?;
        let format = match Path::new(argument).extension().and_then(|ext| ext.to_str()) {
            Some("json") => Some(Format::Json),
            Some("hcl") => Some(Format::Hcl),
            _ => None,
        };
        (text, format)
    };
    let parsed = match format {
        Some(format) => parse_text(argument, &text, format),
        None => parse_text(argument, &text, Format::Json)
            .or_else(|_| parse_text(argument, &text, Format::Hcl)),
    }
    .map_err(|error| format!("Failed to decode config entry input: {error}"))?;
    match normalize(parsed.value) {
        Value::Object(map) if map.get("Kind").and_then(Value::as_str).is_some() => Ok(map),
        _ => Err(
            "Failed to decode config entry input: Payload does not contain a kind/Kind key at the top level"
                .into(),
        ),
    }
}

fn modify_index(matches: &ArgMatches) -> Result<Option<u64>, String> {
    match (get_bool(matches, "cas"), get_str(matches, "modify-index")) {
        (false, None) => Ok(None),
        (false, Some(_)) => Err("Cannot specify -modify-index without -cas".into()),
        (true, None) => Err("Must specify a -modify-index greater than 0 with -cas".into()),
        (true, Some(text)) => text
            .parse()
            .map(Some)
            .map_err(|_| format!("Invalid -modify-index {text:?}")),
    }
}

async fn write(matches: &ArgMatches) -> CommandResult {
    let file = get_str(matches, "file").ok_or(
        "Must provide exactly one positional argument to specify the config entry to write",
    )?;
    let entry = read_entry_file(file)?;
    let kind = entry["Kind"].as_str().unwrap_or_default().to_string();
    let name = entry
        .get("Name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string();
    let mut path = "/v1/config?".to_string();
    if let Some(index) = modify_index(matches)? {
        path.push_str(&format!("cas={index}"));
    }
    path.push_str(&shared_query(matches));
    let body = serde_json::to_vec(&Value::Object(entry)).map_err(|error| error.to_string())?;
    let response = client(matches)?.put(&path, body).await?;
    if response.status != 200 {
        return Err(format!(
            "Error writing config entry {kind}/{name}: {}",
            unexpected(&response)
        ));
    }
    if response.json()? == Value::Bool(true) {
        println!("Config entry written: {kind}/{name}");
        Ok(())
    } else {
        Err(format!("Config entry not updated: {kind}/{name}"))
    }
}

async fn read(matches: &ArgMatches) -> CommandResult {
    let kind = get_str(matches, "kind").ok_or("Must specify the -kind parameter")?;
    let name = get_str(matches, "name").ok_or("Must specify the -name parameter")?;
    let path = format!(
        "/v1/config/{}/{}?{}",
        encode_path(kind),
        encode_path(name),
        shared_query(matches)
    );
    let response = client(matches)?.get(&path).await?;
    if response.status != 200 {
        return Err(format!(
            "Error reading config entry {kind}/{name}: {}",
            unexpected(&response)
        ));
    }
    println!("{}", pretty4(&response.json()?));
    Ok(())
}

/// JSON indented by four spaces, as the Consul CLI prints entries.
pub fn pretty4(value: &Value) -> String {
    let mut out = Vec::new();
    let formatter = serde_json::ser::PrettyFormatter::with_indent(b"    ");
    let mut serializer = serde_json::Serializer::with_formatter(&mut out, formatter);
    serde::Serialize::serialize(value, &mut serializer).ok();
    String::from_utf8(out).unwrap_or_default()
}

async fn list(matches: &ArgMatches) -> CommandResult {
    let kind = get_str(matches, "kind").ok_or("Must specify the -kind parameter")?;
    let mut path = format!("/v1/config/{}?", encode_path(kind));
    if let Some(filter) = get_str(matches, "filter") {
        path.push_str(&format!("filter={}", encode_query(filter)));
    }
    path.push_str(&shared_query(matches));
    let response = client(matches)?.get(&path).await?;
    if response.status != 200 {
        return Err(format!(
            "Error listing config entries for kind {kind:?}: {}",
            unexpected(&response)
        ));
    }
    for entry in response.json()?.as_array().cloned().unwrap_or_default() {
        println!("{}", entry["Name"].as_str().unwrap_or_default());
    }
    Ok(())
}

async fn delete(matches: &ArgMatches) -> CommandResult {
    let (kind, name) = match get_str(matches, "filename") {
        Some(_) if get_str(matches, "kind").is_some() || get_str(matches, "name").is_some() => {
            return Err("filename can't be used with kind or name".into())
        }
        Some(file) => {
            let entry = read_entry_file(file)?;
            let field = |key: &str| {
                entry
                    .get(key)
                    .and_then(Value::as_str)
                    .unwrap_or("")
                    .to_string()
            };
            (field("Kind"), field("Name"))
        }
        None => (
            get_str(matches, "kind")
                .ok_or("Must specify the -kind or -filename parameter")?
                .to_string(),
            get_str(matches, "name")
                .ok_or("Must specify the -name parameter")?
                .to_string(),
        ),
    };
    let cas = modify_index(matches)?;
    let mut path = format!("/v1/config/{}/{}?", encode_path(&kind), encode_path(&name));
    if let Some(index) = cas {
        path.push_str(&format!("cas={index}"));
    }
    path.push_str(&shared_query(matches));
    let response = client(matches)?.delete(&path).await?;
    if response.status != 200 {
        return Err(format!(
            "Error deleting config entry {kind}/{name}: {}",
            unexpected(&response)
        ));
    }
    if cas.is_some() && response.json()? != Value::Bool(true) {
        return Err(format!("Config entry not deleted: {kind}/{name}"));
    }
    println!("Config entry deleted: {kind}/{name}");
    Ok(())
}
