//! The aggregated health of one service instance, as every reader of the catalog counts it:
//! the worst of its own checks and its node's (maintenance counts as critical).

use super::Tables;
use crate::types::HealthStatus;

/// How bad a status is, for taking the worst of several.
pub fn severity(status: HealthStatus) -> u8 {
    match status {
        HealthStatus::Passing => 0,
        HealthStatus::Warning => 1,
        HealthStatus::Critical | HealthStatus::Maintenance => 2,
    }
}

impl Tables {
    /// The worst status among the instance's checks and its node's checks; `Passing` when
    /// there are none.
    pub fn instance_health(&self, node: &str, service_id: &str) -> HealthStatus {
        self.instance_checks(node, service_id)
            .map(|check| check.status)
            .max_by_key(|status| severity(*status))
            .unwrap_or(HealthStatus::Passing)
    }
}
