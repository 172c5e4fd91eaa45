//! Vivaldi network coordinates, with Serf's refinements and defaults: each round-trip sample
//! to another member (its median over the last 3, to drop outliers) pulls this member's
//! coordinate toward or away from the other's, weighted by the two estimates' errors; a
//! height models the member's own access link; an adjustment term (the mean residual over the
//! last 20 samples, halved) corrects what the space cannot express; and a weak gravity toward
//! the origin keeps the whole system from drifting.

use std::collections::HashMap;
use std::time::Duration;

use crate::types::coordinate::{Coordinate, DIMENSIONS, ERROR_MAX, HEIGHT_MIN};

/// Serf's `coordinate.DefaultConfig`.
const VIVALDI_CE: f64 = 0.25;
const VIVALDI_CC: f64 = 0.25;
const ADJUSTMENT_WINDOW: usize = 20;
const LATENCY_FILTER: usize = 3;
const GRAVITY_RHO: f64 = 150.0;
const ZERO: f64 = 1.0e-6;
/// Samples above this are not round trips of a LAN (or of any network worth measuring).
const MAX_RTT: Duration = Duration::from_secs(10);

pub struct Vivaldi {
    coordinate: Coordinate,
    adjustment_samples: [f64; ADJUSTMENT_WINDOW],
    adjustment_index: usize,
    /// The latest samples per member, for the median filter.
    latencies: HashMap<String, Vec<f64>>,
}

impl Default for Vivaldi {
    fn default() -> Vivaldi {
        Vivaldi {
            coordinate: Coordinate::default(),
            adjustment_samples: [0.0; ADJUSTMENT_WINDOW],
            adjustment_index: 0,
            latencies: HashMap::new(),
        }
    }
}

fn unit_vector_at(from: &[f64], to: &[f64]) -> (Vec<f64>, f64) {
    let difference: Vec<f64> = from.iter().zip(to).map(|(a, b)| a - b).collect();
    let magnitude = difference.iter().map(|v| v * v).sum::<f64>().sqrt();
    if magnitude > ZERO {
        return (
            difference.iter().map(|v| v / magnitude).collect(),
            magnitude,
        );
    }
    // Two members at one point: push apart in a random direction.
    let random: Vec<f64> = (0..from.len())
        .map(|_| rand::random::<f64>() - 0.5)
        .collect();
    let length = random.iter().map(|v| v * v).sum::<f64>().sqrt();
    if length > ZERO {
        return (random.iter().map(|v| v / length).collect(), 0.0);
    }
    let mut axis = vec![0.0; from.len()];
    axis[0] = 1.0;
    (axis, 0.0)
}

/// `coordinate` moved by `force` (seconds) away from `other` (toward it when negative).
fn apply_force(coordinate: &Coordinate, force: f64, other: &Coordinate) -> Coordinate {
    let (unit, magnitude) = unit_vector_at(&coordinate.vec, &other.vec);
    let mut moved = coordinate.clone();
    for (value, direction) in moved.vec.iter_mut().zip(&unit) {
        *value += direction * force;
    }
    if magnitude > ZERO {
        moved.height = (moved.height + other.height) * force / magnitude + moved.height;
        moved.height = moved.height.max(HEIGHT_MIN);
    }
    moved
}

impl Vivaldi {
    pub fn coordinate(&self) -> &Coordinate {
        &self.coordinate
    }

    /// Takes one round trip to `node`, whose coordinate is `other`. Samples that cannot be
    /// right (not positive, too long, from an invalid coordinate) are ignored.
    pub fn update(&mut self, node: &str, other: &Coordinate, rtt: Duration) {
        if !other.is_valid() || other.vec.len() != DIMENSIONS || rtt.is_zero() || rtt > MAX_RTT {
            return;
        }
        let rtt = self.filtered(node, rtt.as_secs_f64());
        self.update_vivaldi(other, rtt);
        self.update_adjustment(other, rtt);
        self.update_gravity();
        if !self.coordinate.is_valid() {
            // Numbers gone bad (they should not): start over rather than spread them.
            tracing::warn!("network coordinate became invalid; resetting it");
            *self = Vivaldi::default();
        }
    }

    fn filtered(&mut self, node: &str, rtt: f64) -> f64 {
        let samples = self.latencies.entry(node.to_string()).or_default();
        samples.push(rtt);
        if samples.len() > LATENCY_FILTER {
            samples.remove(0);
        }
        let mut sorted = samples.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[sorted.len() / 2]
    }

    fn update_vivaldi(&mut self, other: &Coordinate, rtt: f64) {
        let rtt = rtt.max(ZERO);
        let distance = self.coordinate.distance_to(other).as_secs_f64();
        let wrongness = (distance - rtt).abs() / rtt;
        let total_error = (self.coordinate.error + other.error).max(ZERO);
        let weight = self.coordinate.error / total_error;
        let error =
            VIVALDI_CE * weight * wrongness + self.coordinate.error * (1.0 - VIVALDI_CE * weight);
        self.coordinate.error = error.min(ERROR_MAX);
        let force = VIVALDI_CC * weight * (rtt - distance);
        self.coordinate = apply_force(&self.coordinate, force, other);
    }

    fn update_adjustment(&mut self, other: &Coordinate, rtt: f64) {
        let distance = self.coordinate.raw_distance_to(other);
        self.adjustment_samples[self.adjustment_index] = rtt - distance;
        self.adjustment_index = (self.adjustment_index + 1) % ADJUSTMENT_WINDOW;
        let sum: f64 = self.adjustment_samples.iter().sum();
        self.coordinate.adjustment = sum / (2.0 * ADJUSTMENT_WINDOW as f64);
    }

    fn update_gravity(&mut self) {
        let origin = Coordinate::default();
        let distance = origin.distance_to(&self.coordinate).as_secs_f64();
        let force = -(distance / GRAVITY_RHO).powi(2);
        self.coordinate = apply_force(&self.coordinate, force, &origin);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Members on a line 10 ms apart, plus 1 ms of access delay each: after rounds of
    /// samples every estimate is within a few percent of the truth (Serf's own tests check
    /// the same shape).
    #[test]
    fn members_on_a_line_converge_to_their_true_distances() {
        let count = 5;
        let truth = |a: usize, b: usize| {
            0.010 * (a as f64 - b as f64).abs() + if a == b { 0.0 } else { 0.002 }
        };
        let mut members: Vec<Vivaldi> = (0..count).map(|_| Vivaldi::default()).collect();
        // As Serf's simulations: every cycle, each member samples one random other.
        for _ in 0..1000 {
            for a in 0..count {
                let b = (a + 1 + rand::random::<usize>() % (count - 1)) % count;
                let other = members[b].coordinate().clone();
                let rtt = Duration::from_secs_f64(truth(a, b));
                members[a].update(&format!("n{b}"), &other, rtt);
            }
        }
        for a in 0..count {
            for b in 0..count {
                if a == b {
                    continue;
                }
                let estimate = members[a]
                    .coordinate()
                    .distance_to(members[b].coordinate())
                    .as_secs_f64();
                let error = (estimate - truth(a, b)).abs() / truth(a, b);
                assert!(error < 0.15, "n{a}→n{b}: {estimate} vs {}", truth(a, b));
            }
        }
        assert!(members[0].coordinate().error < 0.5);
    }

    #[test]
    fn impossible_samples_are_ignored() {
        let mut vivaldi = Vivaldi::default();
        let before = vivaldi.coordinate().clone();
        let mut bad = Coordinate::default();
        bad.vec[0] = f64::INFINITY;
        vivaldi.update("x", &bad, Duration::from_millis(1));
        vivaldi.update("x", &Coordinate::default(), Duration::ZERO);
        vivaldi.update("x", &Coordinate::default(), Duration::from_secs(11));
        assert_eq!(vivaldi.coordinate(), &before);
    }
}
