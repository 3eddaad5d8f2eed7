//! The retry budget of a backend group: how many requests may be sent again, as a share
//! of the group's traffic, so retries never multiply the load on a struggling backend.

use std::sync::atomic::{AtomicI64, Ordering};

/// Retries allowed as a share of requests (Finagle/Linkerd style): each request deposits
/// 0.2 of a retry, each retry costs 1, and the balance is capped. Keeps retries from
/// multiplying load on a struggling backend.
#[derive(Debug)]
pub struct RetryBudget {
    /// Thousandths of a retry.
    balance: AtomicI64,
}

const DEPOSIT: i64 = 200;
const COST: i64 = 1000;
const CAP: i64 = 100 * COST;
const INITIAL: i64 = 10 * COST;

impl Default for RetryBudget {
    fn default() -> Self {
        Self { balance: AtomicI64::new(INITIAL) }
    }
}

impl RetryBudget {
    pub fn deposit(&self) {
        let _ = self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| Some((b + DEPOSIT).min(CAP)));
    }

    /// Spends one retry if the budget has it.
    pub fn withdraw(&self) -> bool {
        self.balance.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |b| (b >= COST).then_some(b - COST)).is_ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_allows_a_share_of_requests() {
        let b = RetryBudget::default();
        let mut allowed = 0;
        for _ in 0..100 {
            if b.withdraw() {
                allowed += 1;
            }
        }
        assert_eq!(allowed, 10, "the initial allowance");
        for _ in 0..50 {
            b.deposit();
        }
        assert_eq!((0..100).filter(|_| b.withdraw()).count(), 10, "20% of 50 requests");
    }
}
