//! When and how long to wait before trying an upstream again: retryable failures only (connect
//! errors, 429, 500, 502, 503, 529), exponential backoff with full jitter, and the upstream's
//! `Retry-After` honoured when it is within the configured limit.

use std::time::Duration;

use rand::Rng as _;

/// Statuses worth another attempt: rate limited, server errors that are usually transient, and
/// Anthropic's 529 "overloaded".
pub fn retryable_status(status: u16) -> bool {
    matches!(status, 429 | 500 | 502 | 503 | 529)
}

/// A provider's retry settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Retries after the first attempt.
    pub max_retries: u32,
    /// The first backoff's upper bound; doubled each attempt.
    pub base: Duration,
    /// The longest wait: backoff is capped here, and a longer `Retry-After` is not waited for
    /// (the error goes back at once so the fallback chain can act).
    pub max_wait: Duration,
}

impl RetryPolicy {
    /// How long to wait before retry number `retry` (0-based), or `None` when the upstream asked
    /// for a longer wait than `max_wait`.
    pub fn delay(&self, retry: u32, retry_after: Option<Duration>) -> Option<Duration> {
        if let Some(after) = retry_after {
            return (after <= self.max_wait).then_some(after);
        }
        let ceiling = self.base.saturating_mul(1 << retry.min(16)).min(self.max_wait);
        // Full jitter: uniform in [0, ceiling], so retries from many clients spread out.
        let millis = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Some(Duration::from_millis(rand::rng().random_range(0..=millis)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: RetryPolicy = RetryPolicy { max_retries: 3, base: Duration::from_millis(100), max_wait: Duration::from_secs(2) };

    #[test]
    fn backoff_grows_and_stays_under_its_ceiling() {
        for retry in 0..8 {
            let ceiling = Duration::from_millis(100 << retry).min(Duration::from_secs(2));
            for _ in 0..50 {
                assert!(POLICY.delay(retry, None).unwrap() <= ceiling);
            }
        }
    }

    #[test]
    fn retry_after_wins_within_the_limit_only() {
        assert_eq!(POLICY.delay(0, Some(Duration::from_secs(1))), Some(Duration::from_secs(1)));
        assert_eq!(POLICY.delay(0, Some(Duration::from_secs(30))), None);
    }

    #[test]
    fn only_transient_statuses_are_retryable() {
        for s in [429, 500, 502, 503, 529] {
            assert!(retryable_status(s));
        }
        for s in [400, 401, 403, 404, 422, 501, 504] {
            assert!(!retryable_status(s));
        }
    }
}
