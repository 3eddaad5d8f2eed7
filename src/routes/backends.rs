//! The backends of one route: one BackendGroup, or several split by weight (Gateway API
//! `backendRefs`, canaries). The choice per request is a counter step and a binary
//! search over weights summed when the table was built; nothing is allocated.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::upstream::BackendGroup;

/// A route's weighted backends. A reference that could not be resolved (a missing
/// Service, a refused group) keeps its weight and its share of requests gets 500, as
/// Gateway API asks; a route whose weights are all 0 answers 500 to every request.
#[derive(Debug)]
pub struct WeightedBackends {
    /// `(end, group)`: a draw `x` in `0..total` takes the first entry with `x < end`.
    /// Entries of weight 0 are left out.
    choices: Box<[(u64, Option<Arc<BackendGroup>>)]>,
    total: u64,
    draws: AtomicU64,
}

impl WeightedBackends {
    /// Every request to `group`.
    pub fn single(group: Arc<BackendGroup>) -> Self {
        Self::new(vec![(Some(group), 1)])
    }

    /// `refs` as `(group, weight)`; `None` is a reference that did not resolve.
    pub fn new(refs: Vec<(Option<Arc<BackendGroup>>, u32)>) -> Self {
        let mut total = 0u64;
        let choices = refs
            .into_iter()
            .filter(|(_, w)| *w > 0)
            .map(|(g, w)| {
                total += u64::from(w);
                (total, g)
            })
            .collect();
        Self { choices, total, draws: AtomicU64::new(0) }
    }

    /// The group for the next request; `None` when the draw fell on an unresolved
    /// reference or no weight is above 0 (the pipeline answers 500).
    pub fn pick(&self) -> Option<&Arc<BackendGroup>> {
        match &*self.choices {
            [] => None,
            [(_, only)] => only.as_ref(),
            choices => {
                // A Weyl sequence through splitmix64: spread like random draws, exact in
                // the long run, one relaxed atomic add per request.
                let n = self.draws.fetch_add(1, Ordering::Relaxed);
                let x = splitmix64(n) % self.total;
                let i = choices.partition_point(|(end, _)| *end <= x);
                choices.get(i).and_then(|(_, g)| g.as_ref())
            }
        }
    }

    /// The resolved groups with their weights (for `/debug/routes`).
    pub fn weights(&self) -> impl Iterator<Item = (Option<&Arc<BackendGroup>>, u64)> {
        let mut start = 0;
        self.choices.iter().map(move |(end, g)| {
            let w = end - start;
            start = *end;
            (g.as_ref(), w)
        })
    }

    /// The first resolved group, if any.
    pub fn first(&self) -> Option<&Arc<BackendGroup>> {
        self.choices.iter().find_map(|(_, g)| g.as_ref())
    }
}

fn splitmix64(n: u64) -> u64 {
    let mut z = n.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::upstream::{Strategy, Timeouts};

    fn group(id: &str) -> Arc<BackendGroup> {
        Arc::new(BackendGroup::new(id.into(), Strategy::RoundRobin, Timeouts::default(), vec![]))
    }

    fn shares(b: &WeightedBackends, n: usize) -> std::collections::BTreeMap<String, usize> {
        let mut out = std::collections::BTreeMap::new();
        for _ in 0..n {
            let id = b.pick().map_or("500".to_string(), |g| g.id.clone());
            *out.entry(id).or_default() += 1;
        }
        out
    }

    #[test]
    fn draws_follow_the_weights_and_weight_zero_is_never_chosen() {
        let b = WeightedBackends::new(vec![(Some(group("a")), 80), (Some(group("b")), 20), (Some(group("z")), 0)]);
        let s = shares(&b, 10_000);
        assert!(!s.contains_key("z"), "{s:?}");
        let a = s["a"] as f64 / 10_000.0;
        assert!((0.77..0.83).contains(&a), "{s:?}");
    }

    #[test]
    fn unresolved_references_keep_their_share_as_500s() {
        let b = WeightedBackends::new(vec![(Some(group("a")), 1), (None, 1)]);
        let s = shares(&b, 1000);
        assert!((400..600).contains(&s["500"]), "{s:?}");
        assert!(WeightedBackends::new(vec![(Some(group("a")), 0)]).pick().is_none(), "all weights 0");
        assert!(WeightedBackends::new(vec![]).pick().is_none());
        assert!(WeightedBackends::new(vec![(None, 5)]).pick().is_none());
    }

    #[test]
    fn a_single_group_takes_everything() {
        let b = WeightedBackends::single(group("a"));
        assert!((0..10).all(|_| b.pick().is_some_and(|g| g.id == "a")));
        assert_eq!(b.weights().map(|(_, w)| w).collect::<Vec<_>>(), vec![1]);
    }
}
