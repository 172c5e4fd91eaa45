//! Network coordinates in the catalog (Consul's `coordinates` table): the latest coordinate
//! each agent sent for its node. A coordinate for a node the catalog does not have, or one
//! that is not finite, is ignored (as Consul's batch update does); deregistering a node
//! removes its coordinate.
//!
//! These two fields are kept out of `Tables`' serde encoding, so snapshots written before
//! they existed still decode; `Store::encode` writes them as a section after the tables.

use super::Tables;
use crate::types::coordinate::{Coordinate, NodeCoordinate};

pub const COORDINATES_TOPIC: &str = "coordinates";

impl Tables {
    pub fn coordinate(&self, node: &str) -> Option<&Coordinate> {
        self.coordinates.get(node)
    }

    /// Every node's coordinate, by node name.
    pub fn coordinates(&self) -> impl Iterator<Item = (&String, &Coordinate)> {
        self.coordinates.iter()
    }

    /// The index of the last change to any coordinate.
    pub fn coordinates_index(&self) -> u64 {
        self.coordinates_index
    }
}

pub(super) fn update(
    tables: &mut Tables,
    index: u64,
    updates: &[NodeCoordinate],
    touched: &mut Vec<String>,
) {
    let mut changed = false;
    for update in updates {
        if !tables.nodes.contains_key(&update.node) || !update.coord.is_valid() {
            continue;
        }
        tables
            .coordinates
            .insert(update.node.clone(), update.coord.clone());
        changed = true;
    }
    if changed {
        tables.coordinates_index = index;
        touched.push(COORDINATES_TOPIC.into());
    }
}

/// Drops a deregistered node's coordinate.
pub(super) fn forget(tables: &mut Tables, index: u64, node: &str, touched: &mut Vec<String>) {
    if tables.coordinates.remove(node).is_some() {
        tables.coordinates_index = index;
        touched.push(COORDINATES_TOPIC.into());
    }
}
