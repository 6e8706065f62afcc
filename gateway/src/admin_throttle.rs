//! Failed admin-key attempts per client address: after [`MAX_FAILURES`] wrong keys within
//! [`WINDOW`], that address's key attempts get 429 until the window ends (a correct key too, so
//! guessing cannot go on). Dashboard sessions already handed out keep working.

use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

/// Wrong admin keys one address may send per [`WINDOW`].
pub const MAX_FAILURES: u32 = 10;
/// How long an address's failures count, from its first.
pub const WINDOW: Duration = Duration::from_mins(5);
/// Addresses remembered at most (the oldest go first), so a spray of addresses cannot grow memory.
const MAX_ADDRESSES: u64 = 100_000;

/// The address requests without a known peer count under (not reached through the server).
pub const UNKNOWN_PEER: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[derive(Debug, Clone, Copy)]
struct Window {
    started: Instant,
    failures: u32,
}

/// Counts wrong admin keys per client address.
pub struct AdminThrottle {
    windows: moka::sync::Cache<IpAddr, Window>,
}

impl Default for AdminThrottle {
    fn default() -> Self {
        Self { windows: moka::sync::Cache::builder().max_capacity(MAX_ADDRESSES).time_to_live(WINDOW).build() }
    }
}

impl AdminThrottle {
    /// Whole seconds until `peer` may try a key again, when it has used up its failures.
    pub fn locked(&self, peer: IpAddr, now: Instant) -> Option<u64> {
        let window = self.windows.get(&peer)?;
        let left = WINDOW.checked_sub(now.saturating_duration_since(window.started))?;
        (window.failures >= MAX_FAILURES && !left.is_zero()).then(|| left.as_secs() + u64::from(left.subsec_nanos() > 0))
    }

    /// Records a wrong key from `peer`; true when this failure used up its attempts.
    pub fn failed(&self, peer: IpAddr, now: Instant) -> bool {
        let entry = self.windows.entry(peer).and_upsert_with(|old| match old.map(moka::Entry::into_value) {
            Some(w) if now.saturating_duration_since(w.started) < WINDOW => Window { failures: w.failures.saturating_add(1), ..w },
            _ => Window { started: now, failures: 1 },
        });
        entry.into_value().failures == MAX_FAILURES
    }
}

#[cfg(test)]
mod tests {
    use super::{AdminThrottle, MAX_FAILURES, WINDOW};
    use std::net::IpAddr;
    use std::time::{Duration, Instant};

    #[test]
    fn an_address_is_locked_after_its_failures_until_the_window_ends() {
        let throttle = AdminThrottle::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let start = Instant::now();
        for i in 0..MAX_FAILURES - 1 {
            assert!(!throttle.failed(a, start + Duration::from_secs(u64::from(i))));
            assert_eq!(throttle.locked(a, start + Duration::from_secs(u64::from(i))), None);
        }
        assert!(throttle.failed(a, start + Duration::from_secs(20)));
        // Locked until five minutes after the first failure; the other address is not.
        assert_eq!(throttle.locked(a, start + Duration::from_secs(20)), Some(WINDOW.as_secs() - 20));
        assert_eq!(throttle.locked(b, start + Duration::from_secs(20)), None);
        assert_eq!(throttle.locked(a, start + Duration::from_millis(299_999)), Some(1));
        assert_eq!(throttle.locked(a, start + WINDOW), None);
        // After the window a failure starts a new one.
        assert!(!throttle.failed(a, start + WINDOW));
        assert_eq!(throttle.locked(a, start + WINDOW + Duration::from_secs(1)), None);
    }
}
