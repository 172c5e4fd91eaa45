//! `concord kv get|put|delete|export|import`, with Consul's flags, output and exit codes.

use std::io::Read;

use clap::{Arg, ArgMatches, Command};
use serde_json::Value;

use super::goflags::{boolean, get_bool, get_str, value};
use super::{client, shared_query, with_http_flags, CommandResult};
use crate::api::client::{encode_path, encode_query};
use crate::api::kv::{decode_base64, ExportEntry};

pub fn command() -> Command {
    Command::new("kv")
        .about("Interacts with the key-value store")
        .subcommand_required(true)
        .subcommand(with_http_flags(
            Command::new("get")
                .about("Reads a key, or keys under a prefix")
                .arg(boolean("recurse", "Read every key under the prefix"))
                .arg(boolean("keys", "List keys (not values) under the prefix"))
                .arg(value(
                    "separator",
                    "With -keys, list only up to this separator",
                ))
                .arg(boolean("detailed", "Show all fields of each entry"))
                .arg(boolean("base64", "Print values base64-encoded"))
                .arg(Arg::new("key")),
        ))
        .subcommand(with_http_flags(
            Command::new("put")
                .about("Writes a key: data inline, @file, or - for stdin")
                .arg(boolean("cas", "Check-and-set against -modify-index"))
                .arg(value(
                    "modify-index",
                    "The ModifyIndex the key must have for -cas",
                ))
                .arg(value(
                    "flags",
                    "Unsigned integer flags to store with the key",
                ))
                .arg(boolean("base64", "The data is base64-encoded"))
                .arg(value("acquire", "Acquire the lock with this session"))
                .arg(value("release", "Release the lock held by this session"))
                .arg(value("session", "Session for -acquire / -release"))
                .arg(Arg::new("key"))
                .arg(Arg::new("data")),
        ))
        .subcommand(with_http_flags(
            Command::new("delete")
                .about("Deletes a key, or every key under a prefix")
                .arg(boolean("recurse", "Delete every key under the prefix"))
                .arg(boolean("cas", "Check-and-set against -modify-index"))
                .arg(value(
                    "modify-index",
                    "The ModifyIndex the key must have for -cas",
                ))
                .arg(Arg::new("key")),
        ))
        .subcommand(with_http_flags(
            Command::new("export")
                .about("Exports keys under a prefix as JSON")
                .arg(Arg::new("prefix")),
        ))
        .subcommand(with_http_flags(
            Command::new("import")
                .about("Imports JSON from kv export: inline, @file, or - for stdin")
                .arg(value("prefix", "Import only keys under this prefix"))
                .arg(Arg::new("data")),
        ))
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("get", sub)) => get(sub).await,
        Some(("put", sub)) => put(sub).await,
        Some(("delete", sub)) => delete(sub).await,
        Some(("export", sub)) => export(sub).await,
        Some(("import", sub)) => import(sub).await,
        _ => Err("unknown kv command".into()),
    }
}

fn entry_value(entry: &Value, base64: bool) -> Result<String, String> {
    let encoded = entry["Value"].as_str().unwrap_or_default();
    if base64 {
        return Ok(encoded.to_string());
    }
    let bytes = decode_base64(encoded)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn print_detailed(entry: &Value, base64: bool) -> Result<(), String> {
    let field = |name: &str| match &entry[name] {
        Value::String(text) => text.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let rows: Vec<Vec<String>> = [
        ("CreateIndex", field("CreateIndex")),
        ("Flags", field("Flags")),
        ("Key", field("Key")),
        ("LockIndex", field("LockIndex")),
        ("ModifyIndex", field("ModifyIndex")),
        ("Session", {
            let session = field("Session");
            if session.is_empty() {
                "-".to_string()
            } else {
                session
            }
        }),
        ("Value", entry_value(entry, base64)?),
    ]
    .into_iter()
    .map(|(name, value)| vec![name.to_string(), value])
    .collect();
    super::print_table(&rows);
    Ok(())
}

async fn get(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let key = get_str(matches, "key").unwrap_or("");
    let keys = get_bool(matches, "keys");
    let recurse = get_bool(matches, "recurse");
    let base64 = get_bool(matches, "base64");
    let detailed = get_bool(matches, "detailed");
    if key.is_empty() && !keys && !recurse {
        return Err("Error! Missing KEY argument".into());
    }
    let mut path = format!("/v1/kv/{}?", encode_path(key));
    if keys {
        let separator = get_str(matches, "separator").unwrap_or("/");
        path.push_str(&format!("keys&separator={}", encode_query(separator)));
    } else if recurse {
        path.push_str("recurse");
    }
    path.push_str(&shared_query(matches));
    let response = client.get(&path).await?;
    if response.status == 404 {
        return if keys || recurse {
            Ok(())
        } else {
            Err(format!("Error! No key exists at: {key}"))
        };
    }
    let body = response
        .json()
        .map_err(|error| format!("Error querying Consul agent: {error}"))?;
    let items = body.as_array().cloned().unwrap_or_default();
    if keys {
        for item in items {
            println!("{}", item.as_str().unwrap_or_default());
        }
        return Ok(());
    }
    for (position, entry) in items.iter().enumerate() {
        if detailed {
            if position > 0 {
                println!();
            }
            print_detailed(entry, base64)?;
        } else if recurse {
            println!(
                "{}:{}",
                entry["Key"].as_str().unwrap_or_default(),
                entry_value(entry, base64)?
            );
        } else {
            println!("{}", entry_value(entry, base64)?);
        }
    }
    Ok(())
}

/// Reads the data argument: inline, `@file`, or `-` for stdin.
fn read_data(argument: Option<&str>) -> Result<Vec<u8>, String> {
    match argument {
        None => Ok(Vec::new()),
        Some("-") => {
            let mut data = Vec::new();
            std::io::stdin()
                .read_to_end(&mut data)
                .map_err(|error| format!("Error! Failed to read stdin: {error}"))?;
            Ok(data)
        }
        Some(text) => match text.strip_prefix('@') {
            Some(path) => std::fs::read(path)
                .map_err(|error| format!("Error! Failed to read file {path}: {error}")),
            None => Ok(text.as_bytes().to_vec()),
        },
    }
}

fn modify_index(matches: &ArgMatches) -> Result<Option<u64>, String> {
    if !get_bool(matches, "cas") {
        return Ok(None);
    }
    let text = get_str(matches, "modify-index").ok_or("Must specify -modify-index with -cas!")?;
    text.parse()
        .map(Some)
        .map_err(|_| format!("Error! Invalid -modify-index {text:?}"))
}

async fn put(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let key = get_str(matches, "key").ok_or("Error! Missing KEY argument")?;
    let mut data = read_data(get_str(matches, "data"))?;
    if get_bool(matches, "base64") {
        let text = String::from_utf8_lossy(&data).trim().to_string();
        data = decode_base64(&text)
            .map_err(|error| format!("Error! Cannot base 64 decode data: {error}"))?;
    }
    let mut path = format!("/v1/kv/{}?", encode_path(key));
    if let Some(flags) = get_str(matches, "flags") {
        let flags: u64 = flags
            .parse()
            .map_err(|_| format!("Error! Invalid -flags {flags:?}"))?;
        path.push_str(&format!("flags={flags}"));
    }
    let cas = modify_index(matches)?;
    if let Some(index) = cas {
        path.push_str(&format!("&cas={index}"));
    }
    let session = get_str(matches, "session");
    if let Some(acquire) =
        get_str(matches, "acquire").or(session.filter(|_| get_bool(matches, "acquire")))
    {
        path.push_str(&format!("&acquire={}", encode_query(acquire)));
    }
    if let Some(release) = get_str(matches, "release") {
        path.push_str(&format!("&release={}", encode_query(release)));
    }
    path.push_str(&shared_query(matches));
    let response = client.put(&path, data).await?;
    let written = response
        .json()
        .map_err(|error| format!("Error! Failed writing data: {error}"))?;
    if written != Value::Bool(true) {
        return Err(match cas {
            Some(_) => format!("Error! Did not write to {key}: CAS failed"),
            None => format!("Error! Failed writing data to {key}"),
        });
    }
    println!("Success! Data written to: {key}");
    Ok(())
}

async fn delete(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let key = get_str(matches, "key").unwrap_or("");
    let recurse = get_bool(matches, "recurse");
    if key.is_empty() && !recurse {
        return Err("Error! Missing KEY argument".into());
    }
    let cas = modify_index(matches)?;
    if recurse && cas.is_some() {
        return Err("Cannot specify both -cas and -recurse!".into());
    }
    let mut path = format!("/v1/kv/{}?", encode_path(key));
    if recurse {
        path.push_str("recurse");
    }
    if let Some(index) = cas {
        path.push_str(&format!("cas={index}"));
    }
    path.push_str(&shared_query(matches));
    let response = client.delete(&path).await?;
    let deleted = response
        .json()
        .map_err(|error| format!("Error! Failed deleting {key}: {error}"))?;
    if deleted != Value::Bool(true) {
        return Err(format!("Error! Did not delete key {key}: CAS failed"));
    }
    if recurse {
        println!("Success! Deleted keys with prefix: {key}");
    } else {
        println!("Success! Deleted key: {key}");
    }
    Ok(())
}

async fn export(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let prefix = get_str(matches, "prefix").unwrap_or("");
    let path = format!(
        "/v1/kv/{}?recurse{}",
        encode_path(prefix),
        shared_query(matches)
    );
    let response = client.get(&path).await?;
    let entries = if response.status == 404 {
        Vec::new()
    } else {
        response
            .json()
            .map_err(|error| format!("Error querying Consul agent: {error}"))?
            .as_array()
            .cloned()
            .unwrap_or_default()
    };
    let exported: Vec<ExportEntry> = entries
        .iter()
        .map(|entry| ExportEntry {
            key: entry["Key"].as_str().unwrap_or_default().to_string(),
            flags: entry["Flags"].as_u64().unwrap_or(0),
            value: entry["Value"].as_str().unwrap_or_default().to_string(),
        })
        .collect();
    let text = serde_json::to_string_pretty(&exported).map_err(|error| error.to_string())?;
    println!("{text}");
    Ok(())
}

async fn import(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let data = read_data(Some(get_str(matches, "data").unwrap_or("-")))?;
    let entries: Vec<ExportEntry> = serde_json::from_slice(&data)
        .map_err(|error| format!("Error! Cannot unmarshal data: {error}"))?;
    let prefix = get_str(matches, "prefix").unwrap_or("");
    for entry in entries.iter().filter(|entry| entry.key.starts_with(prefix)) {
        let value = decode_base64(&entry.value).map_err(|error| {
            format!(
                "Error! Cannot base 64 decode value of {}: {error}",
                entry.key
            )
        })?;
        let path = format!(
            "/v1/kv/{}?flags={}{}",
            encode_path(&entry.key),
            entry.flags,
            shared_query(matches)
        );
        let response = client.put(&path, value).await?;
        if response.json()? != Value::Bool(true) {
            return Err(format!("Error! Failed to write {}", entry.key));
        }
        println!("Imported: {}", entry.key);
    }
    Ok(())
}
