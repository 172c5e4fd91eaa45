//! `concord tls ca create` and `concord tls cert create`: the agent CA and the server, client
//! and CLI certificates it signs, under Consul's file names (`consul-agent-ca.pem`,
//! `dc1-server-consul-0.pem`, ...) in the working directory.

use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use clap::{ArgMatches, Command};

use super::goflags::{boolean, get_bool, get_str, repeated, value};
use super::CommandResult;
use crate::tls::generate::{self, CaOptions, CertOptions, Role};

pub fn command() -> Command {
    Command::new("tls")
        .about("Creates the agent CA and certificates for agent TLS")
        .subcommand_required(true)
        .subcommand(
            Command::new("ca")
                .about("Manages the agent CA")
                .subcommand_required(true)
                .subcommand(
                    Command::new("create")
                        .about("Creates a new agent CA")
                        .arg(value("days", "Days the CA is valid for (default 1825)"))
                        .arg(value("domain", "Domain of the agents (default consul)"))
                        .arg(boolean(
                            "name-constraint",
                            "Limit the CA to the domain, localhost and -additional-name-constraint",
                        ))
                        .arg(repeated(
                            "additional-name-constraint",
                            "Another domain the CA may sign for",
                        ))
                        .arg(value("cluster-id", "Cluster id, for a SPIFFE URI SAN"))
                        .arg(value("common-name", "Common name of the CA")),
                ),
        )
        .subcommand(
            Command::new("cert")
                .about("Manages agent certificates")
                .subcommand_required(true)
                .subcommand(
                    Command::new("create")
                        .about("Creates a certificate signed by the agent CA")
                        .arg(boolean("server", "A server certificate"))
                        .arg(boolean("client", "A client agent certificate"))
                        .arg(boolean("cli", "A certificate for the CLI"))
                        .arg(value("dc", "Datacenter (default dc1)"))
                        .arg(value("domain", "Domain (default consul)"))
                        .arg(value(
                            "node",
                            "Node name, added as <node>.server.<dc>.<domain>",
                        ))
                        .arg(value(
                            "days",
                            "Days the certificate is valid for (default 365)",
                        ))
                        .arg(value(
                            "ca",
                            "The CA certificate (default <domain>-agent-ca.pem)",
                        ))
                        .arg(value(
                            "key",
                            "The CA key (default <domain>-agent-ca-key.pem)",
                        ))
                        .arg(repeated("additional-dnsname", "Another DNS name SAN"))
                        .arg(repeated("additional-ipaddress", "Another IP address SAN")),
                ),
        )
}

pub fn run(matches: &ArgMatches) -> CommandResult {
    match matches.subcommand() {
        Some(("ca", sub)) => match sub.subcommand() {
            Some(("create", create)) => ca_create(create),
            _ => Err("Usage: concord tls ca create [options]".into()),
        },
        Some(("cert", sub)) => match sub.subcommand() {
            Some(("create", create)) => cert_create(create),
            _ => Err("Usage: concord tls cert create [options]".into()),
        },
        _ => Err("Usage: concord tls <ca|cert> create [options]".into()),
    }
}

fn days(matches: &ArgMatches, default: u32) -> Result<u32, String> {
    match get_str(matches, "days") {
        None => Ok(default),
        Some(text) => text
            .parse::<u32>()
            .ok()
            .filter(|days| (1..=36_500).contains(days))
            .ok_or_else(|| format!("-days: {text:?} is not a number of days between 1 and 36500")),
    }
}

fn many(matches: &ArgMatches, name: &str) -> Vec<String> {
    matches
        .get_many::<String>(name)
        .map(|values| values.cloned().collect())
        .unwrap_or_default()
}

/// Writes a new file (never over an existing one) with `mode`.
fn save(path: &str, contents: &str, mode: u32) -> Result<(), String> {
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|error| format!("Error writing {path}: {error}"))?;
    file.write_all(contents.as_bytes())
        .map_err(|error| format!("Error writing {path}: {error}"))?;
    println!("==> Saved {path}");
    Ok(())
}

fn ca_create(matches: &ArgMatches) -> CommandResult {
    let domain = get_str(matches, "domain").unwrap_or("consul").to_string();
    let cert_path = format!("{domain}-agent-ca.pem");
    let key_path = format!("{domain}-agent-ca-key.pem");
    for path in [&cert_path, &key_path] {
        if Path::new(path).exists() {
            return Err(format!("{path} already exists."));
        }
    }
    let pair = generate::ca(&CaOptions {
        days: days(matches, 1825)?,
        domain,
        name_constraint: get_bool(matches, "name-constraint"),
        additional_name_constraints: many(matches, "additional-name-constraint"),
        cluster_id: get_str(matches, "cluster-id").map(str::to_string),
        common_name: get_str(matches, "common-name").map(str::to_string),
    })
    .map_err(|error| error.to_string())?;
    save(&cert_path, &pair.cert_pem, 0o644)?;
    save(&key_path, &pair.key_pem, 0o600)
}

fn cert_create(matches: &ArgMatches) -> CommandResult {
    let roles = [
        (get_bool(matches, "server"), Role::Server),
        (get_bool(matches, "client"), Role::Client),
        (get_bool(matches, "cli"), Role::Cli),
    ];
    let chosen: Vec<Role> = roles
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, role)| *role)
        .collect();
    let [role] = chosen[..] else {
        return Err("Please provide either -server, -client, or -cli".into());
    };
    let node = get_str(matches, "node").map(str::to_string);
    if node.is_some() && role != Role::Server {
        return Err("-node requires -server".into());
    }
    let domain = get_str(matches, "domain").unwrap_or("consul").to_string();
    let datacenter = get_str(matches, "dc").unwrap_or("dc1").to_string();
    let ca_path = get_str(matches, "ca")
        .unwrap_or("#DOMAIN#-agent-ca.pem")
        .replace("#DOMAIN#", &domain);
    let key_path = get_str(matches, "key")
        .unwrap_or("#DOMAIN#-agent-ca-key.pem")
        .replace("#DOMAIN#", &domain);
    let read = |path: &str, what: &str| {
        std::fs::read_to_string(path)
            .map_err(|error| format!("Error reading {what} {path}: {error}"))
    };
    let ca_pem = read(&ca_path, "CA")?;
    let ca_key = read(&key_path, "CA key")?;
    let ip_addresses = many(matches, "additional-ipaddress")
        .iter()
        .map(|text| {
            text.parse::<IpAddr>()
                .map_err(|_| format!("-additional-ipaddress: {text:?} is not an IP address"))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let options = CertOptions {
        role,
        datacenter: datacenter.clone(),
        domain: domain.clone(),
        node,
        days: days(matches, 365)?,
        dns_names: many(matches, "additional-dnsname"),
        ip_addresses,
    };
    // The first free index, as Consul numbers them.
    let prefix = format!("{datacenter}-{}-{domain}", role.name());
    let index = (0..)
        .find(|index| !Path::new(&format!("{prefix}-{index}.pem")).exists())
        .unwrap_or(0);
    let pair = generate::cert(&ca_pem, &ca_key, &options).map_err(|error| error.to_string())?;
    if role == Role::Server {
        println!(
            "==> WARNING: Server certificates grant authority to become a server and to read all \
             state in the cluster, including root keys and all ACL tokens. Do not distribute \
             them to hosts that are not servers; store them as securely as CA keys."
        );
    }
    println!("==> Using {ca_path} and {key_path}");
    save(&format!("{prefix}-{index}.pem"), &pair.cert_pem, 0o644)?;
    save(&format!("{prefix}-{index}-key.pem"), &pair.key_pem, 0o600)
}
