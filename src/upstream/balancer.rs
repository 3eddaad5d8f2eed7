//! Load-balancing strategies: smooth weighted round robin, least connections, weighted random.
//!
//! Everything that can be computed from weights alone (the round-robin schedule, the random
//! distribution) is computed when the route table is built; a pick is then an atomic
//! increment or one random number, plus a skip over ineligible (unhealthy) members.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Which strategy a backend group uses. (Serialized only for `/debug/routes`; the APIs
/// that read a strategy have enums of their own.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    #[default]
    RoundRobin,
    LeastConnections,
    Random,
}

/// Longest round-robin schedule kept per group; larger weight sums are scaled down to it.
const MAX_SCHEDULE: u64 = 8192;

/// A strategy with its precomputed state for one group's members.
#[derive(Debug)]
pub enum Balancer {
    /// Member indices in the order they take requests (`u32`: members of a group number far
    /// fewer, and a schedule is kept for every group).
    RoundRobin {
        schedule: Box<[u32]>,
        next: AtomicUsize,
    },
    LeastConnections {
        next: AtomicUsize,
    },
    Random {
        cumulative: Box<[u64]>,
    },
}

impl Balancer {
    /// Prepares `strategy` for members with these weights (0 = never picked).
    pub fn new(strategy: Strategy, weights: &[u32]) -> Self {
        match strategy {
            Strategy::RoundRobin => {
                // A group never has 2^32 members (a schedule entry that did not fit is left out).
                let schedule = smooth_weighted_schedule(weights).into_iter().filter_map(|i| u32::try_from(i).ok());
                Self::RoundRobin { schedule: schedule.collect(), next: AtomicUsize::new(0) }
            }
            Strategy::LeastConnections => Self::LeastConnections { next: AtomicUsize::new(0) },
            Strategy::Random => Self::Random {
                cumulative: weights
                    .iter()
                    .scan(0u64, |acc, w| {
                        *acc += u64::from(*w);
                        Some(*acc)
                    })
                    .collect(),
            },
        }
    }

    /// Picks a member index. `eligible(i)` says whether member `i` may take the request
    /// (healthy, not excluded by a retry); `load(i)` is its in-flight request count.
    pub fn pick(
        &self,
        weights: &[u32],
        eligible: impl Fn(usize) -> bool,
        load: impl Fn(usize) -> usize,
    ) -> Option<usize> {
        let usable = |i: usize| weights[i] > 0 && eligible(i);
        match self {
            Self::RoundRobin { schedule, next } => {
                if schedule.is_empty() {
                    return None;
                }
                let start = next.fetch_add(1, Ordering::Relaxed);
                // Skipping an unusable member moves on along the schedule, so the remaining
                // members keep their relative weights.
                (0..schedule.len()).map(|k| schedule[(start + k) % schedule.len()] as usize).find(|&i| usable(i))
            }
            Self::LeastConnections { next } => {
                let n = weights.len();
                if n == 0 {
                    return None;
                }
                // Scanning from a rotating offset breaks ties fairly without randomness.
                let start = next.fetch_add(1, Ordering::Relaxed);
                let mut best: Option<(usize, usize)> = None;
                for k in 0..n {
                    let i = (start + k) % n;
                    if !usable(i) {
                        continue;
                    }
                    let l = load(i);
                    // Compare l/w against the best's l/w without division.
                    let better = match best {
                        None => true,
                        Some((b, bl)) => (l as u128) * u128::from(weights[b]) < (bl as u128) * u128::from(weights[i]),
                    };
                    if better {
                        best = Some((i, l));
                    }
                }
                best.map(|(i, _)| i)
            }
            Self::Random { cumulative } => {
                let total = cumulative.last().copied().unwrap_or(0);
                if total == 0 {
                    return None;
                }
                let r = rand::random_range(0..total);
                let i = cumulative.partition_point(|&c| c <= r);
                if usable(i) {
                    return Some(i);
                }
                // Degraded path: draw again among the usable members only.
                let usable_total: u64 = (0..weights.len()).filter(|&i| usable(i)).map(|i| u64::from(weights[i])).sum();
                if usable_total == 0 {
                    return None;
                }
                let mut r = rand::random_range(0..usable_total);
                (0..weights.len()).filter(|&i| usable(i)).find(|&i| {
                    let w = u64::from(weights[i]);
                    if r < w {
                        true
                    } else {
                        r -= w;
                        false
                    }
                })
            }
        }
    }
}

/// The nginx "smooth weighted round robin" order for `weights`, one full cycle.
/// Weights are reduced by their gcd and scaled down when their sum is very large.
pub fn smooth_weighted_schedule(weights: &[u32]) -> Vec<usize> {
    let g = weights.iter().copied().filter(|w| *w > 0).fold(0u64, |g, w| gcd(g, u64::from(w)));
    if g == 0 {
        return Vec::new();
    }
    let mut eff: Vec<u64> = weights.iter().map(|w| u64::from(*w) / g).collect();
    let sum: u64 = eff.iter().sum();
    if sum > MAX_SCHEDULE {
        for w in eff.iter_mut().filter(|w| **w > 0) {
            *w = (*w * MAX_SCHEDULE / sum).max(1);
        }
    }
    let total: i64 = eff.iter().map(|w| *w as i64).sum();
    let mut current = vec![0i64; eff.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&eff) {
            *c += *w as i64;
        }
        let Some((best, _)) =
            current.iter().enumerate().filter(|(i, _)| eff[*i] > 0).max_by_key(|(i, c)| (**c, -(*i as i64)))
        else {
            break;
        };
        current[best] -= total;
        schedule.push(best);
    }
    schedule
}

fn gcd(a: u64, b: u64) -> u64 {
    if b == 0 { a } else { gcd(b, a % b) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(picks: impl Iterator<Item = Option<usize>>, n: usize) -> Vec<usize> {
        let mut c = vec![0; n];
        for p in picks {
            c[p.unwrap()] += 1;
        }
        c
    }

    #[test]
    fn smooth_schedule_interleaves_by_weight() {
        // The classic nginx example: weights 5,1,1 give a a b a c a a (no bursts of b/c).
        assert_eq!(smooth_weighted_schedule(&[5, 1, 1]), vec![0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(smooth_weighted_schedule(&[100, 100]), vec![0, 1]);
        assert_eq!(smooth_weighted_schedule(&[0, 3]), vec![1]);
        assert!(smooth_weighted_schedule(&[0, 0]).is_empty());
    }

    #[test]
    fn huge_weights_are_scaled_not_exploded() {
        let s = smooth_weighted_schedule(&[1_000_000, 999_999, 1]);
        assert!(s.len() as u64 <= MAX_SCHEDULE + 3);
        assert!(s.contains(&2), "a tiny weight still gets a turn");
    }

    #[test]
    fn round_robin_respects_weights_exactly_over_a_cycle() {
        let w = [3, 1];
        let b = Balancer::new(Strategy::RoundRobin, &w);
        let c = counts((0..400).map(|_| b.pick(&w, |_| true, |_| 0)), 2);
        assert_eq!(c, vec![300, 100]);
    }

    #[test]
    fn round_robin_skips_unhealthy_members() {
        let w = [1, 1, 1];
        let b = Balancer::new(Strategy::RoundRobin, &w);
        let c = counts((0..100).map(|_| b.pick(&w, |i| i != 1, |_| 0)), 3);
        assert_eq!(c[1], 0);
        assert_eq!(c[0] + c[2], 100);
        assert!(b.pick(&w, |_| false, |_| 0).is_none());
    }

    #[test]
    fn least_connections_prefers_the_idlest_relative_to_weight() {
        let w = [1, 1, 2];
        let b = Balancer::new(Strategy::LeastConnections, &w);
        let loads = [3, 1, 3];
        // member 2: 3/2 = 1.5, member 1: 1/1 = 1 → member 1.
        for _ in 0..10 {
            assert_eq!(b.pick(&w, |_| true, |i| loads[i]), Some(1));
        }
        let loads = [2, 2, 2];
        // member 2: 2/2 = 1 beats 2/1.
        assert_eq!(b.pick(&w, |_| true, |i| loads[i]), Some(2));
    }

    #[test]
    fn least_connections_breaks_ties_fairly() {
        let w = [1, 1, 1];
        let b = Balancer::new(Strategy::LeastConnections, &w);
        let c = counts((0..300).map(|_| b.pick(&w, |_| true, |_| 0)), 3);
        assert_eq!(c, vec![100, 100, 100]);
    }

    #[test]
    fn random_follows_weights_within_tolerance() {
        let w = [1, 3];
        let b = Balancer::new(Strategy::Random, &w);
        let c = counts((0..20_000).map(|_| b.pick(&w, |_| true, |_| 0)), 2);
        let share = c[1] as f64 / 20_000.0;
        assert!((share - 0.75).abs() < 0.03, "share of weight-3 member: {share}");
    }

    #[test]
    fn random_redraws_among_healthy_members() {
        let w = [1, 1, 1];
        let b = Balancer::new(Strategy::Random, &w);
        let c = counts((0..3000).map(|_| b.pick(&w, |i| i == 2, |_| 0)), 3);
        assert_eq!(c, vec![0, 0, 3000]);
        assert!(b.pick(&w, |_| false, |_| 0).is_none());
    }

    #[test]
    fn zero_weight_is_never_picked() {
        for s in [Strategy::RoundRobin, Strategy::LeastConnections, Strategy::Random] {
            let w = [0, 1];
            let b = Balancer::new(s, &w);
            for _ in 0..50 {
                assert_eq!(b.pick(&w, |_| true, |_| 0), Some(1), "{s:?}");
            }
        }
    }
}
