//! Per-tenant rate limits: requests and tokens per minute, by GCRA (the generic cell rate
//! algorithm: one "theoretical arrival time" per key, no per-request memory). The in-process
//! store runs [`gcra`]; the Redis store runs the same arithmetic in its Lua script
//! (`store/purge.lua`). Time is an argument, so tests use a fixed clock.

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

/// GCRA on one key's theoretical arrival time `tat` (µs); returns the verdict and the new `tat`.
/// The whole `limit` may be used at once (burst = limit); it refills evenly over `period_ms`.
/// `cost` units advance `tat` by `cost × period / limit` µs, rounded down once per check (not a
/// per-unit interval rounded down, which made 40M tokens a minute 1 µs a token: a 60M limit);
/// what rounding leaves is under a microsecond a check.
pub fn gcra(tat: Option<u64>, limit: u64, period_ms: u64, cost: u64, now_ms: u64, force: bool) -> (Verdict, u64) {
    let now = now_ms.saturating_mul(1000);
    let period = period_ms.saturating_mul(1000);
    let limit = limit.max(1);
    let span = |units: u64| u64::try_from(u128::from(units) * u128::from(period) / u128::from(limit)).unwrap_or(u64::MAX);
    let tat = tat.unwrap_or(now).max(now);
    let new_tat = tat.saturating_add(span(cost));
    let allow_at = new_tat.saturating_sub(period);
    let remaining_after = |t: u64| {
        let left = u128::from(period.saturating_sub(t.saturating_sub(now)));
        u64::try_from(left * u128::from(limit) / u128::from(period.max(1))).unwrap_or(u64::MAX)
    };
    if now < allow_at && !force {
        let verdict = Verdict { allowed: false, remaining: remaining_after(tat), retry_after_ms: (allow_at - now).div_ceil(1000) };
        return (verdict, tat);
    }
    (Verdict { allowed: true, remaining: remaining_after(new_tat), retry_after_ms: 0 }, new_tat)
}

/// One minute, the period of both limits.
pub const MINUTE_MS: u64 = 60_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_a_burst_up_to_the_limit_then_refuses_with_retry_after() {
        let t = 1_000_000;
        let mut tat = None;
        for i in 0..3 {
            let (v, next) = gcra(tat, 3, MINUTE_MS, 1, t, false);
            assert!(v.allowed, "request {i}");
            assert_eq!(v.remaining, 2 - i);
            tat = Some(next);
        }
        let (refused, unchanged) = gcra(tat, 3, MINUTE_MS, 1, t, false);
        assert!(!refused.allowed);
        assert_eq!(Some(unchanged), tat, "a refusal takes nothing");
        assert_eq!(refused.retry_after_ms, 20_000, "one request's share of the minute");
        assert!(gcra(tat, 3, MINUTE_MS, 1, t + 20_000, false).0.allowed, "refilled");
    }

    #[test]
    fn forced_usage_overdraws_and_must_be_paid_back() {
        let t = 5_000;
        let (forced, tat) = gcra(None, 100, MINUTE_MS, 500, t, true);
        assert!(forced.allowed && forced.remaining == 0);
        assert!(!gcra(Some(tat), 100, MINUTE_MS, 1, t + 1_000, false).0.allowed);
    }

    #[test]
    fn large_token_limits_keep_their_precision() {
        // 200k tokens a minute is 300 µs a token: all of them fit in a burst, one more does not.
        let (v, tat) = gcra(None, 200_000, MINUTE_MS, 200_000, 0, false);
        assert!(v.allowed && v.remaining == 0);
        let (refused, _) = gcra(Some(tat), 200_000, MINUTE_MS, 1, 0, false);
        assert_eq!((refused.allowed, refused.retry_after_ms), (false, 1), "300 µs, rounded up to a millisecond");
    }

    #[test]
    fn limits_that_do_not_divide_the_minute_are_kept_exactly() {
        // 40M a minute is 1.5 µs a token and 7M is 8.57 µs: neither may grow by rounding.
        for (limit, first) in [(40_000_000, 1_000), (7_000_000, 1_000), (7, 1)] {
            let (opening, tat) = gcra(None, limit, MINUTE_MS, first, 0, false);
            assert_eq!(opening.remaining, limit - first, "{limit}");
            let (rest, tat) = gcra(Some(tat), limit, MINUTE_MS, limit - first, 0, false);
            assert!(rest.allowed && rest.remaining == 0, "{limit}: {rest:?}");
            assert!(!gcra(Some(tat), limit, MINUTE_MS, 1, 0, false).0.allowed, "{limit}: one more than the limit");
        }
    }

    #[test]
    fn a_cost_larger_than_the_limit_is_refused() {
        let (v, _) = gcra(None, 10, MINUTE_MS, 11, 0, false);
        assert!(!v.allowed);
    }
}
