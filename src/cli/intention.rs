//! `concord intention create|check|get|list|match|delete`, over the legacy intentions API,
//! with Consul's output and exit codes (`check`: 0 allowed, 1 denied, 2 error).

use clap::{Arg, ArgMatches, Command};
use serde_json::{json, Value};

use super::config::unexpected;
use super::goflags::{boolean, get_bool, get_str, repeated};
use super::{client, print_table, shared_query, with_http_flags, CommandResult};
use crate::api::client::{encode_query, Client};

pub fn command() -> Command {
    Command::new("intention")
        .about("Interacts with Connect service intentions")
        .subcommand_required(true)
        .subcommand(with_http_flags(
            Command::new("create")
                .about("Creates an intention from SRC to DST")
                .arg(boolean("allow", "Allow the connection (default)"))
                .arg(boolean("deny", "Deny the connection"))
                .arg(boolean(
                    "replace",
                    "Replace an existing intention for the pair",
                ))
                .arg(repeated("meta", "Metadata as key=value (repeatable)"))
                .arg(boolean(
                    "file",
                    "The arguments are files (or - for stdin) each holding an intention as JSON",
                ))
                .arg(Arg::new("source"))
                .arg(Arg::new("destination"))
                .arg(Arg::new("more").num_args(0..).hide(true)),
        ))
        .subcommand(with_http_flags(
            Command::new("check")
                .about("Checks whether SRC may connect to DST (exit 0 allowed, 1 denied)")
                .arg(Arg::new("source"))
                .arg(Arg::new("destination")),
        ))
        .subcommand(with_http_flags(
            Command::new("get")
                .about("Shows the intention from SRC to DST (or with an ID)")
                .arg(Arg::new("source"))
                .arg(Arg::new("destination")),
        ))
        .subcommand(with_http_flags(
            Command::new("list").about("Lists every intention"),
        ))
        .subcommand(with_http_flags(
            Command::new("match")
                .about("Lists the intentions that match a destination (or -source)")
                .arg(boolean("source", "Match by source instead of destination"))
                .arg(boolean("destination", "Match by destination (default)"))
                .arg(Arg::new("name")),
        ))
        .subcommand(with_http_flags(
            Command::new("delete")
                .about("Deletes the intention from SRC to DST (or with an ID)")
                .arg(Arg::new("source"))
                .arg(Arg::new("destination")),
        ))
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("create", sub)) => create(sub).await,
        Some(("check", sub)) => check(sub).await,
        Some(("get", sub)) => get(sub).await,
        Some(("list", sub)) => list(sub).await,
        Some(("match", sub)) => matching(sub).await,
        Some(("delete", sub)) => delete(sub).await,
        _ => Err("unknown intention command".into()),
    }
}

fn pair(matches: &ArgMatches) -> Option<(&str, &str)> {
    Some((
        get_str(matches, "source")?,
        get_str(matches, "destination")?,
    ))
}

/// `web => db (allow)`, as Consul prints an intention.
fn describe(intention: &Value) -> String {
    let text = |key: &str| intention[key].as_str().unwrap_or_default().to_string();
    let detail = match intention["Permissions"].as_array() {
        Some(permissions) if permissions.len() == 1 => "1 permission".to_string(),
        Some(permissions) if !permissions.is_empty() => {
            format!("{} permissions", permissions.len())
        }
        _ => text("Action"),
    };
    format!(
        "{} => {} ({detail})",
        text("SourceName"),
        text("DestinationName")
    )
}

async fn create(matches: &ArgMatches) -> CommandResult {
    if get_bool(matches, "file") {
        return create_from_files(matches).await;
    }
    let (allow, deny) = (get_bool(matches, "allow"), get_bool(matches, "deny"));
    if allow && deny {
        return Err("Only one of -allow or -deny may be specified.".into());
    }
    let (source, destination) =
        pair(matches).ok_or("Error: Must specify two arguments: source and destination")?;
    let action = if deny { "deny" } else { "allow" };
    let mut meta = serde_json::Map::new();
    for item in matches.get_many::<String>("meta").into_iter().flatten() {
        let (key, value) = item
            .split_once('=')
            .ok_or_else(|| format!("Error: -meta must be key=value: {item:?}"))?;
        meta.insert(key.into(), Value::String(value.into()));
    }
    let client = client(matches)?;
    let query = format!(
        "source={}&destination={}{}",
        encode_query(source),
        encode_query(destination),
        shared_query(matches)
    );
    let existing = client
        .get(&format!("/v1/connect/intentions/exact?{query}"))
        .await?;
    if existing.status == 200 {
        if !get_bool(matches, "replace") {
            return Err(format!(
                "Error creating intention: an intention {} already exists; use -replace",
                describe(&existing.json()?)
            ));
        }
        let body = json!({"SourceType": "consul", "Action": action});
        let response = client
            .put(
                &format!("/v1/connect/intentions/exact?{query}"),
                body.to_string().into_bytes(),
            )
            .await?;
        if response.status != 200 {
            return Err(format!(
                "Error replacing intention: {}",
                unexpected(&response)
            ));
        }
    } else {
        let body = json!({
            "SourceName": source,
            "DestinationName": destination,
            "SourceType": "consul",
            "Action": action,
            "Meta": meta,
        });
        post(&client, matches, &body).await?;
    }
    println!("Created: {source} => {destination} ({action})");
    Ok(())
}

/// Creates `intention` (the API's JSON shape) through the legacy create endpoint.
async fn post(client: &Client, matches: &ArgMatches, intention: &Value) -> CommandResult {
    let response = client
        .request(
            hyper::Method::POST,
            &format!("/v1/connect/intentions?{}", shared_query(matches)),
            Some(intention.to_string().into_bytes()),
        )
        .await?;
    if response.status != 200 {
        return Err(format!(
            "Error creating intention: {}",
            unexpected(&response)
        ));
    }
    Ok(())
}

/// `intention create -file a.json b.json`: each file (or `-`, stdin) holds one intention in
/// the API's JSON shape; each is created as given, in order.
async fn create_from_files(matches: &ArgMatches) -> CommandResult {
    let paths: Vec<&String> = ["source", "destination"]
        .iter()
        .filter_map(|name| matches.get_one::<String>(name))
        .chain(matches.get_many::<String>("more").into_iter().flatten())
        .collect();
    if paths.is_empty() {
        return Err("Error: Must specify at least one file with -file".into());
    }
    let client = client(matches)?;
    for path in paths {
        let text = if path == "-" {
            let mut text = String::new();
            std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)
                .map_err(|error| format!("Error reading stdin: {error}"))?;
            text
        } else {
            std::fs::read_to_string(path)
                .map_err(|error| format!("Error reading file {path:?}: {error}"))?
        };
        let intention: Value = serde_json::from_str(&text)
            .map_err(|error| format!("Error decoding intention in {path:?}: {error}"))?;
        post(&client, matches, &intention).await?;
        let name = |key: &str| intention[key].as_str().unwrap_or_default().to_string();
        println!(
            "Created: {} => {} ({})",
            name("SourceName"),
            name("DestinationName"),
            name("Action")
        );
    }
    Ok(())
}

async fn check(matches: &ArgMatches) -> CommandResult {
    let fail = |message: String| -> ! {
        eprintln!("{message}");
        std::process::exit(2)
    };
    let Some((source, destination)) = pair(matches) else {
        fail("Error: command requires exactly two arguments: src and dst".into())
    };
    let client = client(matches).unwrap_or_else(|error| fail(error));
    let path = format!(
        "/v1/connect/intentions/check?source={}&destination={}{}",
        encode_query(source),
        encode_query(destination),
        shared_query(matches)
    );
    let response = client
        .get(&path)
        .await
        .unwrap_or_else(|error| fail(format!("Error checking the connection: {error}")));
    if response.status != 200 {
        fail(format!(
            "Error checking the connection: {}",
            unexpected(&response)
        ));
    }
    let allowed = response
        .json()
        .unwrap_or_else(|error| fail(error.to_string()))["Allowed"]
        .as_bool()
        .unwrap_or(false);
    if allowed {
        println!("Allowed");
        Ok(())
    } else {
        println!("Denied");
        std::process::exit(1)
    }
}

/// The path of one intention: by (source, destination), or with a single argument by ID.
fn intention_path(matches: &ArgMatches) -> Result<String, String> {
    Ok(match pair(matches) {
        Some((source, destination)) => format!(
            "/v1/connect/intentions/exact?source={}&destination={}{}",
            encode_query(source),
            encode_query(destination),
            shared_query(matches)
        ),
        None => {
            let id = get_str(matches, "source")
                .ok_or("Error: Must specify source and destination, or an intention ID")?;
            format!(
                "/v1/connect/intentions/{}?{}",
                encode_query(id),
                shared_query(matches)
            )
        }
    })
}

/// Reads one intention.
async fn fetch(client: &Client, matches: &ArgMatches) -> Result<Value, String> {
    let response = client.get(&intention_path(matches)?).await?;
    if response.status != 200 {
        return Err(format!(
            "Error reading the intention: {}",
            unexpected(&response)
        ));
    }
    Ok(response.json()?)
}

async fn get(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let intention = fetch(&client, matches).await?;
    let field = |key: &str| match &intention[key] {
        Value::Null => String::new(),
        Value::String(text) => text.clone(),
        other => other.to_string(),
    };
    let mut rows = vec![
        vec!["Source:".to_string(), field("SourceName")],
        vec!["Destination:".to_string(), field("DestinationName")],
        vec!["Action:".to_string(), field("Action")],
        vec!["Precedence:".to_string(), field("Precedence")],
    ];
    if !field("ID").is_empty() {
        rows.insert(0, vec!["ID:".to_string(), field("ID")]);
    }
    if !field("Description").is_empty() {
        rows.push(vec!["Description:".to_string(), field("Description")]);
    }
    if !intention["Permissions"].is_null() {
        rows.push(vec!["Permissions:".to_string(), field("Permissions")]);
    }
    print_table(&rows);
    Ok(())
}

async fn list(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let response = client
        .get(&format!("/v1/connect/intentions?{}", shared_query(matches)))
        .await?;
    if response.status != 200 {
        return Err(format!(
            "Error listing intentions: {}",
            unexpected(&response)
        ));
    }
    let mut rows = vec![vec![
        "ID".to_string(),
        "Source".to_string(),
        "Action".to_string(),
        "Destination".to_string(),
        "Precedence".to_string(),
    ]];
    for intention in response.json()?.as_array().cloned().unwrap_or_default() {
        let text = |key: &str| match &intention[key] {
            Value::Null => String::new(),
            Value::String(text) => text.clone(),
            other => other.to_string(),
        };
        let action = if intention["Permissions"].is_array() {
            "L7".to_string()
        } else {
            text("Action")
        };
        rows.push(vec![
            text("ID"),
            text("SourceName"),
            action,
            text("DestinationName"),
            text("Precedence"),
        ]);
    }
    print_table(&rows);
    Ok(())
}

async fn matching(matches: &ArgMatches) -> CommandResult {
    let name = get_str(matches, "name").ok_or("Error: Must specify a service name to match")?;
    let by = if get_bool(matches, "source") {
        "source"
    } else {
        "destination"
    };
    let client = client(matches)?;
    let response = client
        .get(&format!(
            "/v1/connect/intentions/match?by={by}&name={}{}",
            encode_query(name),
            shared_query(matches)
        ))
        .await?;
    if response.status != 200 {
        return Err(format!(
            "Error matching intentions: {}",
            unexpected(&response)
        ));
    }
    for intention in response.json()?[name]
        .as_array()
        .cloned()
        .unwrap_or_default()
    {
        println!("{}", describe(&intention));
    }
    Ok(())
}

async fn delete(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let path = intention_path(matches)?;
    let response = client.delete(&path).await?;
    if response.status != 200 {
        return Err(format!(
            "Error deleting intention: {}",
            unexpected(&response)
        ));
    }
    println!("Intention deleted.");
    Ok(())
}
