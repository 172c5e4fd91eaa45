//! Outage recovery from `<data-dir>/raft/peers.json`, as Consul documents it: when a cluster
//! has lost its quorum for good, the operator stops the surviving servers, writes the same
//! `peers.json` (the servers that remain, by node id and server address) into each one's
//! `raft` directory and starts them again. Each server then takes that list as its Raft
//! configuration and deletes the file.
//!
//! The new configuration is written the way Consul's Raft library does it: everything in the
//! local log is applied to the state store (entries the lost servers may never have committed
//! included, which is why Consul calls recovery lossy in both directions), a snapshot of that
//! state is saved carrying the new configuration, and the log up to it is dropped. No log entry
//! is invented, so the survivors still compare their real logs in the next election and the one
//! holding the most is the one that can win; the others receive its snapshot.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use openraft::storage::{RaftLogReader, RaftLogStorage, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{BasicNode, Membership, StoredMembership};
use serde::Deserialize;

use super::{node_id_from_uuid, NodeId, RaftStorage};

/// One entry of `peers.json` (Raft protocol 3 and later).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Peer {
    id: String,
    address: String,
    #[serde(default)]
    non_voter: bool,
}

pub fn peers_file(data_dir: &Path) -> PathBuf {
    data_dir.join("raft").join("peers.json")
}

/// The configuration `peers.json` asks for, checked: every id a node UUID and every address a
/// server address, no id twice, at least one voter, and this server among the voters (a server
/// recovered into a configuration without itself could never take part in it).
fn parse(text: &str, file: &Path, own_id: NodeId) -> anyhow::Result<Membership<NodeId, BasicNode>> {
    let what_to_do = "fix it (a JSON array of {\"id\": \"<node-id>\", \"address\": \"<ip>:8300\", \
                      \"non_voter\": false}, one per remaining server) or remove it";
    let peers: Vec<Peer> = match serde_json::from_str::<serde_json::Value>(text) {
        Ok(serde_json::Value::Array(items)) if items.iter().any(|item| item.is_string()) => bail!(
            "{}: a list of addresses is the Raft protocol 2 format, which concord does not \
             use; {what_to_do}",
            file.display()
        ),
        Ok(value) => serde_json::from_value(value),
        Err(error) => Err(error),
    }
    .with_context(|| format!("{} does not parse; {what_to_do}", file.display()))?;
    if peers.is_empty() {
        bail!("{} lists no servers; {what_to_do}", file.display());
    }
    let mut voters = BTreeSet::new();
    let mut nodes = BTreeMap::new();
    for peer in &peers {
        uuid::Uuid::parse_str(&peer.id).map_err(|_| {
            anyhow::anyhow!(
                "{}: id {:?} is not a node id (the UUID in the server's <data-dir>/node-id); \
                 {what_to_do}",
                file.display(),
                peer.id
            )
        })?;
        let address: SocketAddr = peer.address.parse().map_err(|_| {
            anyhow::anyhow!(
                "{}: address {:?} of {} is not an ip:port server address; {what_to_do}",
                file.display(),
                peer.address,
                peer.id
            )
        })?;
        let id = node_id_from_uuid(&peer.id);
        if nodes.insert(id, BasicNode::new(address)).is_some() {
            bail!(
                "{}: id {} is listed twice; {what_to_do}",
                file.display(),
                peer.id
            );
        }
        if !peer.non_voter {
            voters.insert(id);
        }
    }
    if voters.is_empty() {
        bail!("{} lists no voter; {what_to_do}", file.display());
    }
    if !voters.contains(&own_id) {
        bail!(
            "{} does not list this server as a voter; list every remaining server, this one \
             included, or remove the file",
            file.display()
        );
    }
    Ok(Membership::new(vec![voters], nodes))
}

/// Applies `<data-dir>/raft/peers.json` if there is one (see the module docs) and deletes it.
/// Returns whether it did. A file that is wrong is refused before anything is changed.
pub async fn recover_from_peers_file(
    data_dir: &Path,
    storage: &mut RaftStorage,
    own_id: NodeId,
) -> anyhow::Result<bool> {
    let file = peers_file(data_dir);
    let text = match std::fs::read_to_string(&file) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", file.display())),
    };
    let membership = parse(&text, &file, own_id)?;
    let log = &mut storage.log_store;
    let machine = &mut storage.state_machine;
    let Some(last_log_id) = log.get_log_state().await?.last_log_id else {
        bail!(
            "{}: this server has no Raft state to recover; remove the file and let it join \
             the cluster instead",
            file.display()
        );
    };
    let (applied, _) = machine.applied_state().await?;
    let first = applied.map_or(0, |log_id| log_id.index + 1);
    let entries = log.try_get_log_entries(first..=last_log_id.index).await?;
    machine.apply(entries).await?;
    machine.replace_membership(StoredMembership::new(Some(last_log_id), membership.clone()));
    machine
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await?;
    log.save_committed(Some(last_log_id)).await?;
    log.purge(last_log_id).await?;
    // Not resuming as leader from a vote cast before the outage: the recovered servers elect
    // one among themselves under the new configuration.
    if let Some(mut vote) = log.read_vote().await? {
        vote.committed = false;
        log.save_vote(&vote).await?;
    }
    std::fs::remove_file(&file)
        .with_context(|| format!("recovered, but cannot delete {}", file.display()))?;
    tracing::warn!(
        file = %file.display(),
        index = last_log_id.index,
        configuration = %membership,
        "recovered the Raft configuration from peers.json"
    );
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "adf4238a-882b-9ddc-4a9d-5b6758e4159e";
    const B: &str = "8b4cd6b8-0d1b-4c26-9d86-2a3e5f4fcd11";

    fn parse_text(text: &str) -> Result<Membership<NodeId, BasicNode>, String> {
        parse(text, Path::new("peers.json"), node_id_from_uuid(A)).map_err(|e| format!("{e:#}"))
    }

    #[test]
    fn reads_voters_and_non_voters() {
        let membership = parse_text(&format!(
            r#"[{{"id": "{A}", "address": "10.0.0.1:8300", "non_voter": false}},
                {{"id": "{B}", "address": "10.0.0.2:8300", "non_voter": true}}]"#
        ))
        .expect("parses");
        let voters: Vec<NodeId> = membership.voter_ids().collect();
        assert_eq!(voters, vec![node_id_from_uuid(A)]);
        let learners: Vec<NodeId> = membership.learner_ids().collect();
        assert_eq!(learners, vec![node_id_from_uuid(B)]);
        assert_eq!(
            membership
                .get_node(&node_id_from_uuid(B))
                .map(|node| node.addr.clone()),
            Some("10.0.0.2:8300".to_string())
        );
    }

    #[test]
    fn refuses_what_is_wrong_and_says_what() {
        let cases = [
            ("not json", "does not parse"),
            (r#"["10.0.0.1:8300"]"#, "Raft protocol 2 format"),
            ("[]", "lists no servers"),
            (
                r#"[{"id": "x", "address": "10.0.0.1:8300"}]"#,
                "is not a node id",
            ),
            (
                &format!(r#"[{{"id": "{A}", "address": "somewhere"}}]"#),
                "not an ip:port",
            ),
            (
                &format!(r#"[{{"id": "{A}", "address": "10.0.0.1:8300", "voter": true}}]"#),
                "does not parse",
            ),
            (
                &format!(
                    r#"[{{"id": "{A}", "address": "10.0.0.1:8300"}},
                        {{"id": "{A}", "address": "10.0.0.2:8300"}}]"#
                ),
                "listed twice",
            ),
            (
                &format!(r#"[{{"id": "{A}", "address": "10.0.0.1:8300", "non_voter": true}}]"#),
                "lists no voter",
            ),
            (
                &format!(r#"[{{"id": "{B}", "address": "10.0.0.2:8300"}}]"#),
                "does not list this server",
            ),
        ];
        for (text, expected) in cases {
            let error = parse_text(text).expect_err(text);
            assert!(error.contains(expected), "{text}: {error}");
            assert!(error.contains("peers.json"), "{text}: {error}");
        }
    }
}
