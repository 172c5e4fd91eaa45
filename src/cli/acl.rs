//! `concord acl bootstrap|token|policy|role|set-agent-token`, over `/v1/acl/*`, printing
//! what Consul's `acl` commands print (`-format=json` for the API's JSON).

use clap::{Arg, ArgMatches, Command};
use serde_json::{json, Value};

use super::goflags::{boolean, get_bool, get_str, repeated, value};
use super::{client, with_http_flags, CommandResult};
use crate::api::client::{encode_path, Client};

fn format_flag(command: Command) -> Command {
    with_http_flags(command.arg(value("format", "Output format: pretty or json")))
}

fn grant_flags(command: Command) -> Command {
    command
        .arg(value("description", "A description"))
        .arg(repeated(
            "policy-id",
            "A policy to link, by ID (repeatable)",
        ))
        .arg(repeated(
            "policy-name",
            "A policy to link, by name (repeatable)",
        ))
        .arg(repeated("role-id", "A role to link, by ID (repeatable)"))
        .arg(repeated(
            "role-name",
            "A role to link, by name (repeatable)",
        ))
        .arg(repeated(
            "service-identity",
            "A service identity, NAME or NAME:DC1,DC2 (repeatable)",
        ))
        .arg(repeated(
            "node-identity",
            "A node identity, NODE:DATACENTER (repeatable)",
        ))
        .arg(repeated(
            "templated-policy",
            "A templated policy by name, e.g. builtin/service (repeatable)",
        ))
        .arg(repeated(
            "var",
            "A templated policy's variable, name:VALUE (one per -templated-policy)",
        ))
}

pub fn command() -> Command {
    Command::new("acl")
        .about("Interacts with Consul's ACLs")
        .subcommand_required(true)
        .subcommand(format_flag(
            Command::new("bootstrap").about("Bootstraps the ACL system and prints the management token"),
        ))
        .subcommand(
            Command::new("token")
                .about("Manages ACL tokens")
                .subcommand_required(true)
                .subcommand(format_flag(grant_flags(
                    Command::new("create")
                        .about("Creates a token")
                        .arg(value("accessor", "The AccessorID to use (a UUID)"))
                        .arg(value("secret", "The SecretID to use (a UUID)"))
                        .arg(boolean("local", "A token local to this datacenter"))
                        .arg(value("expires-ttl", "How long until the token expires (e.g. 1h)")),
                )))
                .subcommand(format_flag(grant_flags(
                    Command::new("update")
                        .about("Updates a token")
                        .arg(value("id", "The token's AccessorID"))
                        .arg(value("accessor-id", "The token's AccessorID"))
                        .arg(boolean("merge-policies", "Keep the token's existing policies"))
                        .arg(boolean("merge-roles", "Keep the token's existing roles"))
                        .arg(boolean(
                            "merge-service-identities",
                            "Keep the token's existing service identities",
                        ))
                        .arg(boolean(
                            "merge-node-identities",
                            "Keep the token's existing node identities",
                        )),
                )))
                .subcommand(format_flag(
                    Command::new("read")
                        .about("Reads a token")
                        .arg(value("id", "The token's AccessorID"))
                        .arg(value("accessor-id", "The token's AccessorID"))
                        .arg(boolean("self", "Read the token the command runs with")),
                ))
                .subcommand(format_flag(Command::new("list").about("Lists tokens")))
                .subcommand(with_http_flags(
                    Command::new("delete")
                        .about("Deletes a token")
                        .arg(value("id", "The token's AccessorID"))
                        .arg(value("accessor-id", "The token's AccessorID")),
                ))
                .subcommand(format_flag(
                    Command::new("clone")
                        .about("Clones a token")
                        .arg(value("id", "The token's AccessorID"))
                        .arg(value("accessor-id", "The token's AccessorID"))
                        .arg(value("description", "The new token's description")),
                )),
        )
        .subcommand(
            Command::new("policy")
                .about("Manages ACL policies")
                .subcommand_required(true)
                .subcommand(format_flag(policy_flags(Command::new("create").about("Creates a policy"))))
                .subcommand(format_flag(policy_flags(
                    Command::new("update")
                        .about("Updates a policy")
                        .arg(value("id", "The policy's ID")),
                )))
                .subcommand(format_flag(
                    Command::new("read")
                        .about("Reads a policy")
                        .arg(value("id", "The policy's ID"))
                        .arg(value("name", "The policy's name")),
                ))
                .subcommand(format_flag(Command::new("list").about("Lists policies")))
                .subcommand(with_http_flags(
                    Command::new("delete")
                        .about("Deletes a policy")
                        .arg(value("id", "The policy's ID"))
                        .arg(value("name", "The policy's name")),
                )),
        )
        .subcommand(
            Command::new("role")
                .about("Manages ACL roles")
                .subcommand_required(true)
                .subcommand(format_flag(grant_flags(
                    Command::new("create")
                        .about("Creates a role")
                        .arg(value("name", "The role's name")),
                )))
                .subcommand(format_flag(
                    Command::new("read")
                        .about("Reads a role")
                        .arg(value("id", "The role's ID"))
                        .arg(value("name", "The role's name")),
                ))
                .subcommand(format_flag(Command::new("list").about("Lists roles")))
                .subcommand(with_http_flags(
                    Command::new("delete")
                        .about("Deletes a role")
                        .arg(value("id", "The role's ID"))
                        .arg(value("name", "The role's name")),
                )),
        )
        .subcommand(with_http_flags(
            Command::new("set-agent-token")
                .about("Sets one of the agent's tokens: default, agent, agent_recovery, replication, config_file_service_registration, dns")
                .arg(Arg::new("kind"))
                .arg(Arg::new("agent-token")),
        ))
}

fn policy_flags(command: Command) -> Command {
    command
        .arg(value("name", "The policy's name"))
        .arg(value("description", "A description"))
        .arg(value(
            "rules",
            "The rules, or @FILE to read them from a file",
        ))
        .arg(repeated(
            "valid-datacenter",
            "A datacenter the policy is valid in (repeatable)",
        ))
}

pub async fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("bootstrap", sub)) => bootstrap(sub).await,
        Some(("token", sub)) => match sub.subcommand() {
            Some(("create", sub)) => token_create(sub).await,
            Some(("update", sub)) => token_update(sub).await,
            Some(("read", sub)) => token_read(sub).await,
            Some(("list", sub)) => token_list(sub).await,
            Some(("delete", sub)) => token_delete(sub).await,
            Some(("clone", sub)) => token_clone(sub).await,
            _ => Err("unknown acl token command".into()),
        },
        Some(("policy", sub)) => match sub.subcommand() {
            Some(("create", sub)) => policy_write(sub, None).await,
            Some(("update", sub)) => {
                let id = get_str(sub, "id").ok_or("Must specify the -id parameter")?;
                policy_write(sub, Some(id)).await
            }
            Some(("read", sub)) => policy_read(sub).await,
            Some(("list", sub)) => policy_list(sub).await,
            Some(("delete", sub)) => policy_delete(sub).await,
            _ => Err("unknown acl policy command".into()),
        },
        Some(("role", sub)) => match sub.subcommand() {
            Some(("create", sub)) => role_create(sub).await,
            Some(("read", sub)) => role_read(sub).await,
            Some(("list", sub)) => role_list(sub).await,
            Some(("delete", sub)) => role_delete(sub).await,
            _ => Err("unknown acl role command".into()),
        },
        Some(("set-agent-token", sub)) => set_agent_token(sub).await,
        _ => Err("unknown acl command".into()),
    }
}

fn json_output(matches: &ArgMatches) -> bool {
    get_str(matches, "format") == Some("json")
}

fn print_json(value: &Value) {
    println!(
        "{}",
        serde_json::to_string_pretty(value).unwrap_or_default()
    );
}

fn text(value: &Value, key: &str) -> String {
    value[key].as_str().unwrap_or_default().to_string()
}

/// Consul's pretty form of a token.
fn print_token(token: &Value) {
    println!("AccessorID:       {}", text(token, "AccessorID"));
    println!("SecretID:         {}", text(token, "SecretID"));
    println!("Description:      {}", text(token, "Description"));
    println!(
        "Local:            {}",
        token["Local"].as_bool().unwrap_or(false)
    );
    println!("Create Time:      {}", text(token, "CreateTime"));
    if let Some(expires) = token["ExpirationTime"].as_str() {
        println!("Expiration Time:  {expires}");
    }
    let links = |key: &str, title: &str| {
        if let Some(items) = token[key].as_array().filter(|items| !items.is_empty()) {
            println!("{title}:");
            for item in items {
                println!("   {} - {}", text(item, "ID"), text(item, "Name"));
            }
        }
    };
    links("Policies", "Policies");
    links("Roles", "Roles");
    if let Some(items) = token["ServiceIdentities"].as_array() {
        println!("Service Identities:");
        for item in items {
            let datacenters = match item["Datacenters"].as_array() {
                Some(list) if !list.is_empty() => list
                    .iter()
                    .filter_map(Value::as_str)
                    .collect::<Vec<_>>()
                    .join(", "),
                _ => "all".into(),
            };
            println!(
                "   {} (Datacenters: {datacenters})",
                text(item, "ServiceName")
            );
        }
    }
    if let Some(items) = token["NodeIdentities"].as_array() {
        println!("Node Identities:");
        for item in items {
            println!(
                "   {} (Datacenter: {})",
                text(item, "NodeName"),
                text(item, "Datacenter")
            );
        }
    }
    if let Some(items) = token["TemplatedPolicies"].as_array() {
        println!("Templated Policies:");
        for item in items {
            println!("   {}", text(item, "TemplateName"));
            if let Some(name) = item["TemplateVariables"]["Name"].as_str() {
                println!("      Name: {name}");
            }
        }
    }
}

fn show_token(matches: &ArgMatches, token: &Value) {
    match json_output(matches) {
        true => print_json(token),
        false => print_token(token),
    }
}

async fn bootstrap(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let response = client.put("/v1/acl/bootstrap", Vec::new()).await?;
    if !response.status.is_success() {
        return Err(format!(
            "Failed ACL bootstrapping: Unexpected response code: {} ({})",
            response.status.as_u16(),
            response.text()
        ));
    }
    show_token(matches, &response.json()?);
    Ok(())
}

/// The links and identities of `-policy-id`, `-service-identity`, ... as a request body.
fn grants(matches: &ArgMatches) -> Result<serde_json::Map<String, Value>, String> {
    let all = |name: &str| -> Vec<String> {
        matches
            .get_many::<String>(name)
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    };
    let mut body = serde_json::Map::new();
    let mut policies: Vec<Value> = all("policy-id")
        .into_iter()
        .map(|id| json!({"ID": id}))
        .collect();
    policies.extend(
        all("policy-name")
            .into_iter()
            .map(|name| json!({"Name": name})),
    );
    if !policies.is_empty() {
        body.insert("Policies".into(), policies.into());
    }
    let mut roles: Vec<Value> = all("role-id")
        .into_iter()
        .map(|id| json!({"ID": id}))
        .collect();
    roles.extend(
        all("role-name")
            .into_iter()
            .map(|name| json!({"Name": name})),
    );
    if !roles.is_empty() {
        body.insert("Roles".into(), roles.into());
    }
    let services: Vec<Value> = all("service-identity")
        .into_iter()
        .map(|spec| match spec.split_once(':') {
            Some((name, datacenters)) => json!({
                "ServiceName": name,
                "Datacenters": datacenters.split(',').filter(|dc| !dc.is_empty()).collect::<Vec<_>>(),
            }),
            None => json!({"ServiceName": spec}),
        })
        .collect();
    if !services.is_empty() {
        body.insert("ServiceIdentities".into(), services.into());
    }
    let mut nodes = Vec::new();
    for spec in all("node-identity") {
        let (name, datacenter) = spec.split_once(':').ok_or_else(|| {
            format!("Malformed -node-identity argument: {spec:?}; it must be NODE:DATACENTER")
        })?;
        nodes.push(json!({"NodeName": name, "Datacenter": datacenter}));
    }
    if !nodes.is_empty() {
        body.insert("NodeIdentities".into(), nodes.into());
    }
    let variables = all("var");
    let mut templated = Vec::new();
    for (position, name) in all("templated-policy").into_iter().enumerate() {
        let mut entry = json!({"TemplateName": name});
        if let Some(variable) = variables.get(position) {
            let value = variable.strip_prefix("name:").ok_or_else(|| {
                format!("Malformed -var argument: {variable:?}; it must be name:VALUE")
            })?;
            entry["TemplateVariables"] = json!({"Name": value});
        }
        templated.push(entry);
    }
    if !templated.is_empty() {
        body.insert("TemplatedPolicies".into(), templated.into());
    }
    if let Some(description) = get_str(matches, "description") {
        body.insert("Description".into(), description.into());
    }
    Ok(body)
}

async fn send(client: &Client, path: &str, body: &Value, action: &str) -> Result<Value, String> {
    let response = client.put(path, body.to_string().into_bytes()).await?;
    if !response.status.is_success() {
        return Err(format!(
            "Failed to {action}: Unexpected response code: {} ({})",
            response.status.as_u16(),
            response.text()
        ));
    }
    Ok(response.json()?)
}

async fn token_create(matches: &ArgMatches) -> CommandResult {
    let mut body = grants(matches)?;
    if let Some(accessor) = get_str(matches, "accessor") {
        body.insert("AccessorID".into(), accessor.into());
    }
    if let Some(secret) = get_str(matches, "secret") {
        body.insert("SecretID".into(), secret.into());
    }
    if get_bool(matches, "local") {
        body.insert("Local".into(), true.into());
    }
    if let Some(ttl) = get_str(matches, "expires-ttl") {
        body.insert("ExpirationTTL".into(), ttl.into());
    }
    let client = client(matches)?;
    let token = send(
        &client,
        "/v1/acl/token",
        &Value::Object(body),
        "create new token",
    )
    .await?;
    show_token(matches, &token);
    Ok(())
}

fn accessor(matches: &ArgMatches) -> Result<&str, String> {
    get_str(matches, "accessor-id")
        .or_else(|| get_str(matches, "id"))
        .ok_or_else(|| "Must specify the -accessor-id parameter".to_string())
}

async fn token_update(matches: &ArgMatches) -> CommandResult {
    let id = accessor(matches)?;
    let client = client(matches)?;
    let current = client
        .get(&format!("/v1/acl/token/{}", encode_path(id)))
        .await?
        .json()
        .map_err(|error| format!("Error reading token {id:?}: {error}"))?;
    let mut body = grants(matches)?;
    // Without -merge-*, what the flags give replaces what the token had, as in Consul.
    for (flag, key) in [
        ("merge-policies", "Policies"),
        ("merge-roles", "Roles"),
        ("merge-service-identities", "ServiceIdentities"),
        ("merge-node-identities", "NodeIdentities"),
    ] {
        if get_bool(matches, flag) {
            let mut merged: Vec<Value> = current[key].as_array().cloned().unwrap_or_default();
            if let Some(Value::Array(added)) = body.remove(key) {
                merged.extend(added);
            }
            body.insert(key.into(), merged.into());
        }
    }
    if !body.contains_key("Description") {
        body.insert("Description".into(), current["Description"].clone());
    }
    body.insert("AccessorID".into(), id.into());
    body.insert("Local".into(), current["Local"].clone());
    let token = send(
        &client,
        &format!("/v1/acl/token/{}", encode_path(id)),
        &Value::Object(body),
        "update token",
    )
    .await?;
    show_token(matches, &token);
    Ok(())
}

async fn token_read(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let path = match get_bool(matches, "self") {
        true => "/v1/acl/token/self".to_string(),
        false => format!("/v1/acl/token/{}", encode_path(accessor(matches)?)),
    };
    let token = client
        .get(&path)
        .await?
        .json()
        .map_err(|error| format!("Error reading token: {error}"))?;
    show_token(matches, &token);
    Ok(())
}

async fn token_list(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let tokens = client.get("/v1/acl/tokens").await?.json()?;
    if json_output(matches) {
        print_json(&tokens);
        return Ok(());
    }
    for (position, token) in tokens.as_array().into_iter().flatten().enumerate() {
        if position > 0 {
            println!();
        }
        print_token(token);
    }
    Ok(())
}

async fn token_delete(matches: &ArgMatches) -> CommandResult {
    let id = accessor(matches)?;
    let client = client(matches)?;
    let response = client
        .delete(&format!("/v1/acl/token/{}", encode_path(id)))
        .await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error deleting token {id:?}: Unexpected response code: {} ({})",
            response.status.as_u16(),
            response.text()
        ));
    }
    println!("Token {id:?} deleted successfully");
    Ok(())
}

async fn token_clone(matches: &ArgMatches) -> CommandResult {
    let id = accessor(matches)?;
    let client = client(matches)?;
    let mut body = serde_json::Map::new();
    if let Some(description) = get_str(matches, "description") {
        body.insert("Description".into(), description.into());
    }
    let token = send(
        &client,
        &format!("/v1/acl/token/{}/clone", encode_path(id)),
        &Value::Object(body),
        "clone token",
    )
    .await?;
    show_token(matches, &token);
    Ok(())
}

fn print_policy(policy: &Value) {
    println!("ID:           {}", text(policy, "ID"));
    println!("Name:         {}", text(policy, "Name"));
    println!("Description:  {}", text(policy, "Description"));
    let datacenters: Vec<&str> = policy["Datacenters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .collect();
    println!("Datacenters:  {}", datacenters.join(", "));
    if let Some(rules) = policy["Rules"].as_str() {
        println!("Rules:\n{rules}");
    }
}

async fn policy_write(matches: &ArgMatches, id: Option<&str>) -> CommandResult {
    let client = client(matches)?;
    let mut body = match id {
        Some(id) => client
            .get(&format!("/v1/acl/policy/{}", encode_path(id)))
            .await?
            .json()
            .map_err(|error| format!("Error reading policy {id:?}: {error}"))?,
        None => json!({}),
    };
    if let Some(name) = get_str(matches, "name") {
        body["Name"] = name.into();
    }
    if body["Name"].as_str().unwrap_or_default().is_empty() {
        return Err("Missing required '-name' flag".into());
    }
    if let Some(description) = get_str(matches, "description") {
        body["Description"] = description.into();
    }
    if let Some(rules) = get_str(matches, "rules") {
        let rules = match rules.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .map_err(|error| format!("Failed to read rules from {path:?}: {error}"))?,
            None => rules.to_string(),
        };
        body["Rules"] = rules.into();
    }
    let datacenters: Vec<String> = matches
        .get_many::<String>("valid-datacenter")
        .into_iter()
        .flatten()
        .cloned()
        .collect();
    if !datacenters.is_empty() {
        body["Datacenters"] = datacenters.into();
    }
    let path = match id {
        Some(id) => format!("/v1/acl/policy/{}", encode_path(id)),
        None => "/v1/acl/policy".to_string(),
    };
    let action = if id.is_some() {
        "update policy"
    } else {
        "create new policy"
    };
    for field in ["CreateIndex", "ModifyIndex", "Hash"] {
        if let Some(fields) = body.as_object_mut() {
            fields.remove(field);
        }
    }
    let policy = send(&client, &path, &body, action).await?;
    match json_output(matches) {
        true => print_json(&policy),
        false => print_policy(&policy),
    }
    Ok(())
}

/// `-id` or `-name` as an API path under `/v1/acl/<kind>`.
fn by_id_or_name(matches: &ArgMatches, kind: &str) -> Result<String, String> {
    match (get_str(matches, "id"), get_str(matches, "name")) {
        (Some(id), _) => Ok(format!("/v1/acl/{kind}/{}", encode_path(id))),
        (None, Some(name)) => Ok(format!("/v1/acl/{kind}/name/{}", encode_path(name))),
        (None, None) => Err("Must specify either the -id or -name parameters".to_string()),
    }
}

async fn policy_read(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let policy = client
        .get(&by_id_or_name(matches, "policy")?)
        .await?
        .json()
        .map_err(|error| format!("Error reading policy: {error}"))?;
    match json_output(matches) {
        true => print_json(&policy),
        false => print_policy(&policy),
    }
    Ok(())
}

async fn policy_list(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let policies = client.get("/v1/acl/policies").await?.json()?;
    if json_output(matches) {
        print_json(&policies);
        return Ok(());
    }
    for policy in policies.as_array().into_iter().flatten() {
        println!("{}:", text(policy, "Name"));
        println!("   ID:           {}", text(policy, "ID"));
        println!("   Description:  {}", text(policy, "Description"));
        let datacenters: Vec<&str> = policy["Datacenters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(Value::as_str)
            .collect();
        println!("   Datacenters:  {}", datacenters.join(", "));
    }
    Ok(())
}

/// Deletes what `-id`/`-name` names (a name is looked up first, as the API deletes by ID).
async fn delete_named(matches: &ArgMatches, kind: &str) -> CommandResult {
    let client = client(matches)?;
    let found = client
        .get(&by_id_or_name(matches, kind)?)
        .await?
        .json()
        .map_err(|error| format!("Error finding {kind}: {error}"))?;
    let id = text(&found, "ID");
    let response = client
        .delete(&format!("/v1/acl/{kind}/{}", encode_path(&id)))
        .await?;
    if !response.status.is_success() {
        return Err(format!(
            "Error deleting {kind} {id:?}: Unexpected response code: {} ({})",
            response.status.as_u16(),
            response.text()
        ));
    }
    let title = if kind == "policy" { "Policy" } else { "Role" };
    println!("{title} {id:?} deleted successfully");
    Ok(())
}

async fn policy_delete(matches: &ArgMatches) -> CommandResult {
    delete_named(matches, "policy").await
}

fn print_role(role: &Value) {
    println!("ID:           {}", text(role, "ID"));
    println!("Name:         {}", text(role, "Name"));
    println!("Description:  {}", text(role, "Description"));
    if let Some(items) = role["Policies"].as_array() {
        println!("Policies:");
        for item in items {
            println!("   {} - {}", text(item, "ID"), text(item, "Name"));
        }
    }
    if let Some(items) = role["ServiceIdentities"].as_array() {
        println!("Service Identities:");
        for item in items {
            println!("   {}", text(item, "ServiceName"));
        }
    }
}

async fn role_create(matches: &ArgMatches) -> CommandResult {
    let mut body = grants(matches)?;
    let name = get_str(matches, "name").ok_or("Missing required '-name' flag")?;
    body.insert("Name".into(), name.into());
    let client = client(matches)?;
    let role = send(
        &client,
        "/v1/acl/role",
        &Value::Object(body),
        "create new role",
    )
    .await?;
    match json_output(matches) {
        true => print_json(&role),
        false => print_role(&role),
    }
    Ok(())
}

async fn role_read(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let role = client
        .get(&by_id_or_name(matches, "role")?)
        .await?
        .json()
        .map_err(|error| format!("Error reading role: {error}"))?;
    match json_output(matches) {
        true => print_json(&role),
        false => print_role(&role),
    }
    Ok(())
}

async fn role_list(matches: &ArgMatches) -> CommandResult {
    let client = client(matches)?;
    let roles = client.get("/v1/acl/roles").await?.json()?;
    if json_output(matches) {
        print_json(&roles);
        return Ok(());
    }
    for (position, role) in roles.as_array().into_iter().flatten().enumerate() {
        if position > 0 {
            println!();
        }
        print_role(role);
    }
    Ok(())
}

async fn role_delete(matches: &ArgMatches) -> CommandResult {
    delete_named(matches, "role").await
}

async fn set_agent_token(matches: &ArgMatches) -> CommandResult {
    let (Some(kind), Some(token)) = (get_str(matches, "kind"), get_str(matches, "agent-token"))
    else {
        return Err("Missing TYPE and TOKEN arguments".into());
    };
    let client = client(matches)?;
    let body = json!({"Token": token}).to_string().into_bytes();
    let response = client
        .put(&format!("/v1/agent/token/{}", encode_path(kind)), body)
        .await?;
    if !response.status.is_success() {
        return Err(format!(
            "Failed setting token: Unexpected response code: {} ({})",
            response.status.as_u16(),
            response.text()
        ));
    }
    println!("ACL token {kind:?} set successfully");
    Ok(())
}
