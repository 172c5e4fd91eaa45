//! The legacy intentions API's JSON (`/v1/connect/intentions*`): one intention as Consul
//! showed it before config entries, built from the `service-intentions` source it is.

use serde_json::{json, Value};

use crate::connect::intention::Intention;
use crate::types::connect::ConfigEntry;

fn rfc3339_or_empty(text: &str) -> Value {
    if text.is_empty() {
        Value::Null
    } else {
        Value::String(text.to_string())
    }
}

/// The legacy API's JSON for one intention.
pub fn intention(intention: &Intention) -> Value {
    let entry = &intention.entry;
    intention.with_source(|source| {
        let mut out = json!({
            "Description": source.description,
            "SourceNS": "default",
            "SourceName": source.name,
            "DestinationNS": "default",
            "DestinationName": entry.name,
            "SourcePartition": "default",
            "DestinationPartition": "default",
            "SourceType": "consul",
            "Action": source.action,
            "Precedence": intention.precedence,
            "CreateIndex": entry.indexes.create,
            "ModifyIndex": entry.indexes.modify,
        });
        let map = out.as_object_mut().expect("built as an object");
        if !source.legacy_id.is_empty() {
            map.insert("ID".into(), Value::String(source.legacy_id.clone()));
        }
        if !source.peer.is_empty() {
            map.insert("SourcePeer".into(), Value::String(source.peer.clone()));
        }
        if source.is_l7() {
            map.remove("Action");
            map.insert(
                "Permissions".into(),
                stored_permissions(entry, intention.position),
            );
        }
        if !source.legacy_meta.is_empty() {
            map.insert("Meta".into(), json!(source.legacy_meta));
        }
        let created = rfc3339_or_empty(&source.legacy_create_time);
        if !created.is_null() {
            map.insert("CreatedAt".into(), created);
        }
        let updated = rfc3339_or_empty(&source.legacy_update_time);
        if !updated.is_null() {
            map.insert("UpdatedAt".into(), updated);
        }
        out
    })
}

/// The Permissions of one source exactly as the user wrote them (typed views drop fields
/// concord does not interpret).
fn stored_permissions(entry: &ConfigEntry, position: usize) -> Value {
    serde_json::from_str::<Value>(&entry.json)
        .ok()
        .and_then(|json| {
            json.get("Sources")?
                .get(position)?
                .get("Permissions")
                .cloned()
        })
        .unwrap_or(Value::Null)
}
