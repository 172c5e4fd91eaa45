//! A network coordinate, as Consul's `serf/coordinate` shapes it: a point in an
//! 8-dimensional Vivaldi space plus a height (the node's own access-link delay), an
//! adjustment (a correction learned from recent samples) and the estimate's error. The
//! distance between two coordinates estimates the round trip between their nodes.
//!
//! Plain data here (it is replicated in the Raft log and shown by the HTTP API); the
//! algorithm that moves a coordinate lives in `gossip::coordinate`.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Consul's `coordinate.DefaultConfig`: 8 dimensions, the starting error, the minimum height.
pub const DIMENSIONS: usize = 8;
pub const ERROR_MAX: f64 = 1.5;
pub const HEIGHT_MIN: f64 = 10.0e-6;

#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Coordinate {
    pub vec: Vec<f64>,
    pub error: f64,
    pub adjustment: f64,
    pub height: f64,
}

/// Compared bit for bit, so it is an equivalence (NaN equals itself) and `Command` stays `Eq`.
impl PartialEq for Coordinate {
    fn eq(&self, other: &Self) -> bool {
        let bits = |c: &Coordinate| {
            let mut all: Vec<u64> = c.vec.iter().map(|v| v.to_bits()).collect();
            all.extend([c.error, c.adjustment, c.height].map(f64::to_bits));
            all
        };
        bits(self) == bits(other)
    }
}

impl Eq for Coordinate {}

impl Default for Coordinate {
    /// The origin, where every node starts.
    fn default() -> Coordinate {
        Coordinate {
            vec: vec![0.0; DIMENSIONS],
            error: ERROR_MAX,
            adjustment: 0.0,
            height: HEIGHT_MIN,
        }
    }
}

impl Coordinate {
    /// Whether every component is a finite number of the right dimension (a coordinate from
    /// the wire is checked before it is used).
    pub fn is_valid(&self) -> bool {
        self.vec.len() == DIMENSIONS
            && self
                .vec
                .iter()
                .chain([&self.error, &self.adjustment, &self.height])
                .all(|value| value.is_finite())
    }

    /// The distance without the adjustment term, in seconds.
    pub fn raw_distance_to(&self, other: &Coordinate) -> f64 {
        let squares: f64 = self
            .vec
            .iter()
            .zip(&other.vec)
            .map(|(a, b)| (a - b) * (a - b))
            .sum();
        squares.sqrt() + self.height + other.height
    }

    /// The estimated round trip to `other` (Consul's `DistanceTo`): the raw distance plus
    /// both adjustments, unless that would not be positive.
    pub fn distance_to(&self, other: &Coordinate) -> Duration {
        let raw = self.raw_distance_to(other);
        let adjusted = raw + self.adjustment + other.adjustment;
        let seconds = if adjusted > 0.0 { adjusted } else { raw };
        Duration::from_secs_f64(seconds.max(0.0))
    }
}

/// A node's coordinate as the catalog keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeCoordinate {
    pub node: String,
    pub coord: Coordinate,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distance_adds_heights_and_adjustments() {
        let mut a = Coordinate::default();
        let mut b = Coordinate::default();
        a.vec[0] = 0.003;
        b.vec[1] = 0.004;
        a.height = 0.001;
        b.height = 0.001;
        assert!((a.raw_distance_to(&b) - 0.007).abs() < 1e-12);
        a.adjustment = 0.0005;
        b.adjustment = 0.0005;
        assert_eq!(a.distance_to(&b), Duration::from_secs_f64(0.008));
        // A negative adjusted distance falls back to the raw one.
        a.adjustment = -1.0;
        assert_eq!(
            a.distance_to(&b),
            Duration::from_secs_f64(a.raw_distance_to(&b))
        );
        let mut bad = Coordinate::default();
        bad.vec[3] = f64::NAN;
        assert!(!bad.is_valid());
        assert_eq!(bad, bad.clone(), "bitwise equality is reflexive");
    }
}
