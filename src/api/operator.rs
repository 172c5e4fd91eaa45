//! Autopilot's JSON, as Consul's API spells it: the configuration
//! (`/v1/operator/autopilot/configuration`), the health report (`/health`) and the state
//! (`/state`).

use std::time::Duration;

use serde::Deserialize;
use serde_json::{json, Map, Value};

use super::decode::DecodeError;
use crate::types::duration::{format_go_duration, format_rfc3339, parse_go_duration, unix_secs};
use crate::types::operator::{AutopilotConfig, AutopilotReport, ServerHealth};

pub fn config(config: &AutopilotConfig) -> Value {
    json!({
        "CleanupDeadServers": config.cleanup_dead_servers,
        "LastContactThreshold": format_go_duration(config.last_contact_threshold),
        "MaxTrailingLogs": config.max_trailing_logs,
        "MinQuorum": config.min_quorum,
        "ServerStabilizationTime": format_go_duration(config.server_stabilization_time),
        "RedundancyZoneTag": config.redundancy_zone_tag,
        "DisableUpgradeMigration": config.disable_upgrade_migration,
        "UpgradeVersionTag": config.upgrade_version_tag,
        "CreateIndex": config.indexes.create,
        "ModifyIndex": config.indexes.modify,
    })
}

#[derive(Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
struct ConfigIn {
    cleanup_dead_servers: bool,
    last_contact_threshold: Value,
    max_trailing_logs: u64,
    min_quorum: u32,
    server_stabilization_time: Value,
    redundancy_zone_tag: String,
    disable_upgrade_migration: bool,
    upgrade_version_tag: String,
}

/// A duration as Consul's `ReadableDuration` takes it: a Go duration string, or a number of
/// nanoseconds; absent is zero.
fn readable_duration(field: &str, value: &Value) -> Result<Duration, DecodeError> {
    let invalid = || DecodeError::new(format!("Request decode failed: {field}: invalid duration"));
    match value {
        Value::Null => Ok(Duration::ZERO),
        Value::String(text) => parse_go_duration(text)
            .map_err(|error| DecodeError::new(format!("Request decode failed: {field}: {error}"))),
        Value::Number(number) => number
            .as_u64()
            .map(Duration::from_nanos)
            .ok_or_else(invalid),
        _ => Err(invalid()),
    }
}

/// A PUT body. As in Consul, the body is the whole configuration: a field left out is zero
/// (`concord operator autopilot set-config` reads the current one first and changes only the
/// flags given).
pub fn decode_config(body: Map<String, Value>) -> Result<AutopilotConfig, DecodeError> {
    let raw: ConfigIn = serde_json::from_value(Value::Object(body))
        .map_err(|error| DecodeError::new(format!("Request decode failed: {error}")))?;
    Ok(AutopilotConfig {
        cleanup_dead_servers: raw.cleanup_dead_servers,
        last_contact_threshold: readable_duration(
            "LastContactThreshold",
            &raw.last_contact_threshold,
        )?,
        max_trailing_logs: raw.max_trailing_logs,
        min_quorum: raw.min_quorum,
        server_stabilization_time: readable_duration(
            "ServerStabilizationTime",
            &raw.server_stabilization_time,
        )?,
        redundancy_zone_tag: raw.redundancy_zone_tag,
        disable_upgrade_migration: raw.disable_upgrade_migration,
        upgrade_version_tag: raw.upgrade_version_tag,
        indexes: Default::default(),
    })
}

fn last_contact(server: &ServerHealth) -> Value {
    server
        .last_contact
        .map_or(Value::Null, |contact| format_go_duration(contact).into())
}

/// `GET /v1/operator/autopilot/health`.
pub fn health(report: &AutopilotReport) -> Value {
    let servers: Vec<Value> = report
        .servers
        .iter()
        .map(|server| {
            json!({
                "ID": server.id,
                "Name": server.name,
                "Address": server.address,
                "SerfStatus": server.serf_status,
                "Version": server.version,
                "Leader": server.leader,
                "LastContact": last_contact(server),
                "LastTerm": server.last_term,
                "LastIndex": server.last_index,
                "Healthy": server.healthy,
                "Voter": server.voter,
                "StableSince": format_rfc3339(unix_secs(server.stable_since)),
            })
        })
        .collect();
    json!({
        "Healthy": report.healthy,
        "FailureTolerance": report.failure_tolerance,
        "Servers": servers,
    })
}

/// `GET /v1/operator/autopilot/state`.
pub fn state(report: &AutopilotReport) -> Value {
    let mut servers = Map::new();
    let mut voters = Vec::new();
    let mut leader = String::new();
    for server in &report.servers {
        let status = match (server.leader, server.voter) {
            (true, _) => "leader",
            (false, true) => "voter",
            (false, false) => "non-voter",
        };
        if server.leader {
            leader = server.id.clone();
        }
        if server.voter {
            voters.push(server.id.clone());
        }
        servers.insert(
            server.id.clone(),
            json!({
                "ID": server.id,
                "Name": server.name,
                "Address": server.address,
                "NodeStatus": server.serf_status,
                "Version": server.version,
                "LastContact": last_contact(server),
                "LastTerm": server.last_term,
                "LastIndex": server.last_index,
                "Healthy": server.healthy,
                "StableSince": format_rfc3339(unix_secs(server.stable_since)),
                "ReadReplica": false,
                "Status": status,
                "Meta": {"consul-network-segment": ""},
                "NodeType": "voter",
            }),
        );
    }
    json!({
        "Healthy": report.healthy,
        "FailureTolerance": report.failure_tolerance,
        "OptimisticFailureTolerance": report.optimistic_failure_tolerance,
        "Servers": servers,
        "Leader": leader,
        "Voters": voters,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_configuration_round_trips_and_left_out_fields_are_zero_as_in_consul() {
        let stored = AutopilotConfig {
            min_quorum: 3,
            ..AutopilotConfig::default()
        };
        let body = config(&stored);
        assert_eq!(body["LastContactThreshold"], "200ms");
        assert_eq!(body["ServerStabilizationTime"], "10s");
        let Value::Object(map) = body else {
            panic!("object")
        };
        assert_eq!(decode_config(map).expect("decodes"), stored);

        let Value::Object(partial) =
            json!({"MaxTrailingLogs": 5, "LastContactThreshold": 1_000_000})
        else {
            panic!("object")
        };
        let decoded = decode_config(partial).expect("decodes");
        assert_eq!(decoded.max_trailing_logs, 5);
        assert_eq!(decoded.last_contact_threshold, Duration::from_millis(1));
        assert!(!decoded.cleanup_dead_servers);
        assert_eq!(decoded.server_stabilization_time, Duration::ZERO);

        let Value::Object(bad) = json!({"ServerStabilizationTime": "soon"}) else {
            panic!("object")
        };
        let error = decode_config(bad).expect_err("refused").to_string();
        assert!(error.contains("ServerStabilizationTime"), "{error}");
    }
}
