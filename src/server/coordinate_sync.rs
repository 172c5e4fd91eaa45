//! Every agent sends its network coordinate (measured by its LAN pool) to the servers, as
//! Consul's agent does: every `sync_coordinate_interval_min`, stretched so a large pool sends
//! at most 64 updates a second in all, with a random stagger so agents do not send together.
//! A coordinate that has not moved from the origin (nothing measured yet) is not sent.

use std::time::Duration;

use rand::Rng;

use crate::config::RuntimeConfig;
use crate::gossip::Pool;
use crate::rpc::Cluster;
use crate::types::coordinate::{Coordinate, NodeCoordinate};
use crate::types::Command;

/// Consul's `sync_coordinate_rate_target`: updates per second across the pool.
const RATE_TARGET: f64 = 64.0;

pub async fn run(
    cluster: Cluster,
    lan: Pool,
    config: std::sync::Arc<RuntimeConfig>,
    stop: tokio_util::sync::CancellationToken,
) {
    let minimum = config.membership.sync_coordinate_interval;
    loop {
        let members = lan.members().await.len() as f64;
        let interval = minimum.max(Duration::from_secs_f64(members / RATE_TARGET));
        let stagger = rand::thread_rng().gen_range(0.0..=0.25);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(interval.mul_f64(1.0 + stagger)) => {}
        }
        let coord = lan.coordinate().await;
        if coord == Coordinate::default() {
            continue;
        }
        let update = Command::CoordinateBatchUpdate(vec![NodeCoordinate {
            node: config.node_name.clone(),
            coord,
        }]);
        if let Err(error) = cluster.write(update).await {
            tracing::debug!(%error, "sending the network coordinate failed; will retry");
        }
    }
}
