//! Per-tenant rate limits: requests and tokens per minute, by GCRA (the generic cell rate
//! algorithm: one "theoretical arrival time" per key, no per-request memory). The algorithm is
//! written once over [`LimitStore`]; the in-process store is here, a Redis store (one Lua script
//! per check, for several replicas) implements the same trait. Time is an argument, so tests use
//! a fixed clock.

use std::collections::HashMap;
use std::sync::Mutex;

use serde::Deserialize;

/// `rate_limit = { rpm, tpm }` of a tenant; either may be left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Requests per minute.
    pub rpm: Option<u32>,
    /// Tokens per minute (prompt tokens estimated at admission, completion tokens added after).
    pub tpm: Option<u32>,
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The request may go.
    pub allowed: bool,
    /// Units left in the current window after this check.
    pub remaining: u64,
    /// When refused: milliseconds until `cost` units fit.
    pub retry_after_ms: u64,
}

/// Where GCRA state lives.
pub trait LimitStore: Send + Sync + std::fmt::Debug {
    /// Takes `cost` units from `key`'s allowance of `limit` per `period_ms` at `now_ms`, unless
    /// they do not fit (`force` takes them anyway: usage that already happened).
    fn take(&self, key: &str, limit: u64, period_ms: u64, cost: u64, now_ms: u64, force: bool) -> Verdict;
}

/// GCRA on one key's theoretical arrival time `tat` (ms); returns the verdict and the new `tat`.
/// The whole `limit` may be used at once (burst = limit); it refills evenly over `period_ms`.
pub fn gcra(tat: Option<u64>, limit: u64, period_ms: u64, cost: u64, now_ms: u64, force: bool) -> (Verdict, u64) {
    let limit = limit.max(1);
    let interval = (period_ms / limit).max(1);
    let tat = tat.unwrap_or(now_ms).max(now_ms);
    let new_tat = tat.saturating_add(cost.saturating_mul(interval));
    let allow_at = new_tat.saturating_sub(period_ms);
    let remaining_after = |t: u64| period_ms.saturating_sub(t.saturating_sub(now_ms)) / interval;
    if now_ms < allow_at && !force {
        let verdict = Verdict { allowed: false, remaining: remaining_after(tat), retry_after_ms: allow_at - now_ms };
        return (verdict, tat);
    }
    (Verdict { allowed: true, remaining: remaining_after(new_tat), retry_after_ms: 0 }, new_tat)
}

/// The in-process store: one replica's limits.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tats: Mutex<HashMap<String, u64>>,
}

impl LimitStore for MemoryStore {
    fn take(&self, key: &str, limit: u64, period_ms: u64, cost: u64, now_ms: u64, force: bool) -> Verdict {
        let mut tats = self.tats.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let (verdict, tat) = gcra(tats.get(key).copied(), limit, period_ms, cost, now_ms, force);
        tats.insert(key.to_owned(), tat);
        verdict
    }
}

/// One minute, the period of both limits.
pub const MINUTE_MS: u64 = 60_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_up_to_the_limit_then_refuses_with_retry_after() {
        let store = MemoryStore::default();
        let t = 1_000_000;
        for i in 0..3 {
            let v = store.take("acme:rpm", 3, MINUTE_MS, 1, t, false);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 2 - i);
        }
        let refused = store.take("acme:rpm", 3, MINUTE_MS, 1, t, false);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after_ms, 20_000, "one request's share of the minute");
        assert!(store.take("acme:rpm", 3, MINUTE_MS, 1, t + 20_000, false).allowed, "refilled");
    }

    #[test]
    fn keys_are_independent_and_forced_usage_counts() {
        let store = MemoryStore::default();
        let t = 5_000;
        assert!(store.take("a:tpm", 100, MINUTE_MS, 100, t, false).allowed);
        assert!(!store.take("a:tpm", 100, MINUTE_MS, 1, t, false).allowed);
        assert!(store.take("b:tpm", 100, MINUTE_MS, 1, t, false).allowed);
        let forced = store.take("b:tpm", 100, MINUTE_MS, 500, t, true);
        assert!(forced.allowed && forced.remaining == 0);
        assert!(!store.take("b:tpm", 100, MINUTE_MS, 1, t + 1_000, false).allowed, "the overdraft must be paid back");
    }

    #[test]
    fn a_cost_larger_than_the_limit_is_refused() {
        let (v, _) = gcra(None, 10, MINUTE_MS, 11, 0, false);
        assert!(!v.allowed);
    }
}
