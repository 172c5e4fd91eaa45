//! `concord catalog datacenters|nodes|services`.

use clap::{ArgMatches, Command};
use serde_json::Value;

use super::goflags::{boolean, get_bool, get_str, value};
use super::{client, print_table, shared_query, with_http_flags, CommandResult};
use crate::api::client::{encode_path, encode_query};

pub fn command() -> Command {
    Command::new("catalog")
        .about("Interacts with the catalog")
        .subcommand_required(true)
        .subcommand(with_http_flags(
            Command::new("datacenters").about("Lists all known datacenters"),
        ))
        .subcommand(with_http_flags(
            Command::new("nodes")
                .about("Lists all nodes in the catalog")
                .arg(boolean(
                    "detailed",
                    "Show full node ids, tagged addresses and meta",
                ))
                .arg(value("service", "Only nodes running this service"))
                .arg(value("filter", "Filter expression"))
                .arg(value(
                    "near",
                    "Sort by distance to this node (accepted, not yet used)",
                )),
        ))
        .subcommand(with_http_flags(
            Command::new("services")
                .about("Lists all services in the catalog")
                .arg(boolean("tags", "Show each service's tags"))
                .arg(value("node", "Only services on this node")),
        ))
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("datacenters", sub)) => datacenters(sub).await,
        Some(("nodes", sub)) => nodes(sub).await,
        Some(("services", sub)) => services(sub).await,
        _ => Err("unknown catalog command".into()),
    }
}

fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

async fn datacenters(matches: &ArgMatches) -> CommandResult {
    let response = client(matches)?.get("/v1/catalog/datacenters").await?;
    for datacenter in response.json()?.as_array().into_iter().flatten() {
        println!("{}", text(datacenter));
    }
    Ok(())
}

async fn nodes(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let mut query = shared_query(matches);
    if let Some(filter) = get_str(matches, "filter") {
        query.push_str(&format!("&filter={}", encode_query(filter)));
    }
    let nodes: Vec<Value> = match get_str(matches, "service") {
        Some(service) => {
            let path = format!("/v1/catalog/service/{}?{query}", encode_path(service));
            let instances = client.get(&path).await?.json()?;
            let mut seen = std::collections::BTreeMap::new();
            for instance in instances.as_array().into_iter().flatten() {
                seen.entry(text(&instance["Node"])).or_insert_with(|| {
                    serde_json::json!({
                        "Node": instance["Node"], "ID": instance["ID"],
                        "Address": instance["Address"], "Datacenter": instance["Datacenter"],
                        "TaggedAddresses": instance["TaggedAddresses"], "Meta": instance["NodeMeta"],
                    })
                });
            }
            seen.into_values().collect()
        }
        None => client
            .get(&format!("/v1/catalog/nodes?{query}"))
            .await?
            .json()?
            .as_array()
            .cloned()
            .unwrap_or_default(),
    };
    if nodes.is_empty() {
        return Ok(());
    }
    let detailed = get_bool(matches, "detailed");
    let mut rows = vec![if detailed {
        vec!["Node", "ID", "Address", "DC", "TaggedAddresses", "Meta"]
    } else {
        vec!["Node", "ID", "Address", "DC"]
    }
    .into_iter()
    .map(String::from)
    .collect::<Vec<_>>()];
    let pairs = |value: &Value| {
        value
            .as_object()
            .map(|map| {
                map.iter()
                    .map(|(key, value)| format!("{key}={}", text(value)))
                    .collect::<Vec<_>>()
                    .join(", ")
            })
            .unwrap_or_default()
    };
    for node in &nodes {
        let id = text(&node["ID"]);
        let mut row = vec![
            text(&node["Node"]),
            if detailed {
                id
            } else {
                id.chars().take(8).collect()
            },
            text(&node["Address"]),
            text(&node["Datacenter"]),
        ];
        if detailed {
            row.push(pairs(&node["TaggedAddresses"]));
            row.push(pairs(&node["Meta"]));
        }
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

async fn services(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let query = shared_query(matches);
    let services: Vec<(String, Vec<String>)> = match get_str(matches, "node") {
        Some(node) => {
            let path = format!("/v1/catalog/node/{}?{query}", encode_path(node));
            let body = client.get(&path).await?.json()?;
            if body.is_null() {
                return Err(format!(
                    "Error listing services for node: No node {node:?} found"
                ));
            }
            let mut found: std::collections::BTreeMap<String, Vec<String>> = Default::default();
            for service in body["Services"]
                .as_object()
                .into_iter()
                .flatten()
                .map(|(_, s)| s)
            {
                let tags = found.entry(text(&service["Service"])).or_default();
                for tag in service["Tags"].as_array().into_iter().flatten() {
                    tags.push(text(tag));
                }
            }
            found.into_iter().collect()
        }
        None => {
            let body = client
                .get(&format!("/v1/catalog/services?{query}"))
                .await?
                .json()?;
            body.as_object()
                .into_iter()
                .flatten()
                .map(|(name, tags)| {
                    let tags = tags.as_array().into_iter().flatten().map(text).collect();
                    (name.clone(), tags)
                })
                .collect()
        }
    };
    if get_bool(matches, "tags") {
        let rows: Vec<Vec<String>> = services
            .into_iter()
            .map(|(name, mut tags)| {
                tags.sort();
                tags.dedup();
                vec![name, tags.join(",")]
            })
            .collect();
        print_table(&rows);
    } else {
        for (name, _) in services {
            println!("{name}");
        }
    }
    Ok(())
}
