//! Autopilot's configuration: a compare-and-set write and its watch topic.

use std::sync::Arc;

use super::Tables;
use crate::types::operator::AutopilotConfig;
use crate::types::RaftIndexes;

/// Topic of autopilot's configuration.
pub const AUTOPILOT_TOPIC: &str = "operator/autopilot";

impl Tables {
    pub fn autopilot(&self) -> Option<&Arc<AutopilotConfig>> {
        self.autopilot.as_ref()
    }
}

pub(super) fn set_autopilot(
    tables: &mut Tables,
    index: u64,
    config: &AutopilotConfig,
    cas: Option<u64>,
    touched: &mut Vec<String>,
) -> bool {
    let current = tables.autopilot.as_ref().map(|config| config.indexes);
    let holds = match (cas, current) {
        (None, _) | (Some(0), None) => true,
        (Some(expected), Some(indexes)) => indexes.modify == expected,
        (Some(_), None) => false,
    };
    if !holds {
        return false;
    }
    let mut stored = config.clone();
    stored.indexes = RaftIndexes {
        create: current.map_or(index, |indexes| indexes.create),
        modify: index,
    };
    tables.autopilot = Some(Arc::new(stored));
    touched.push(AUTOPILOT_TOPIC.into());
    true
}
