//! A pool of equivalent endpoints (several vLLM or llama-server replicas behind one provider):
//! power-of-two-choices on outstanding requests weighted by EWMA latency; an endpoint that fails
//! repeatedly is ejected for a while, then probed back with live traffic. Time is an argument so
//! the rules are tested without sleeping.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::Rng as _;

/// Consecutive failures that eject an endpoint.
const EJECT_AFTER: u32 = 3;
/// First ejection; doubled on each ejection in a row, up to [`MAX_EJECTION`].
const BASE_EJECTION: Duration = Duration::from_secs(5);
const MAX_EJECTION: Duration = Duration::from_mins(5);
/// Weight of the newest latency sample in the moving average.
const EWMA_ALPHA: f64 = 0.3;
/// Latency assumed for an endpoint not yet measured: low, so new endpoints get traffic.
const INITIAL_LATENCY_MS: f64 = 1.0;
/// An endpoint that just failed is passed over this long while another is healthy: a request's
/// retry goes elsewhere (an unmeasured dead endpoint would otherwise take every attempt of it).
const COOL_DOWN: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Endpoint {
    base: String,
    outstanding: u32,
    ewma_ms: f64,
    consecutive_failures: u32,
    ejections_in_a_row: u32,
    ejected_until: Option<Instant>,
    last_failure: Option<Instant>,
}

/// The endpoints of one provider.
#[derive(Debug)]
pub struct Pool {
    endpoints: Mutex<Vec<Endpoint>>,
}

/// One request's hold on an endpoint; report how it went with [`Pool::finish`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Lease {
    index: usize,
    /// The endpoint's base URL.
    pub base: String,
    started: Instant,
}

impl Pool {
    /// A pool over `bases` (at least one).
    pub fn new(bases: &[String]) -> Self {
        let endpoints = bases
            .iter()
            .map(|b| Endpoint {
                base: b.trim_end_matches('/').to_owned(),
                outstanding: 0,
                ewma_ms: INITIAL_LATENCY_MS,
                consecutive_failures: 0,
                ejections_in_a_row: 0,
                ejected_until: None,
                last_failure: None,
            })
            .collect();
        Self {
            endpoints: Mutex::new(endpoints),
        }
    }

    /// Picks an endpoint for a request starting at `now`: the better of two random healthy
    /// endpoints (fewest outstanding requests, weighted by latency); when every endpoint is
    /// ejected, the one whose ejection ends first (a probe).
    pub fn acquire(&self, now: Instant) -> Lease {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // An endpoint back from ejection gets one probe request before load balancing resumes:
        // its old latency figure would otherwise keep it idle behind a fast neighbour.
        let probe = (0..endpoints.len()).find(|&i| {
            let e = &endpoints[i];
            e.ejections_in_a_row > 0
                && e.outstanding == 0
                && e.ejected_until.is_some_and(|t| now >= t)
        });
        let mut healthy: Vec<usize> = (0..endpoints.len())
            .filter(|&i| endpoints[i].ejected_until.is_none_or(|t| now >= t))
            .collect();
        let cooling = |i: &usize| {
            endpoints[*i]
                .last_failure
                .is_some_and(|t| now.saturating_duration_since(t) < COOL_DOWN)
        };
        if healthy.iter().any(|i| !cooling(i)) {
            healthy.retain(|i| !cooling(i));
        }
        let index = match (probe, healthy.len()) {
            (Some(i), _) => i,
            (None, n) => match n {
                0 => (0..endpoints.len())
                    .min_by_key(|&i| endpoints[i].ejected_until)
                    .unwrap_or(0),
                1 => healthy[0],
                n => {
                    let mut rng = rand::rng();
                    let a = healthy[rng.random_range(0..n)];
                    let mut b = healthy[rng.random_range(0..n - 1)];
                    if b == a {
                        b = healthy[n - 1];
                    }
                    let load =
                        |i: usize| f64::from(endpoints[i].outstanding + 1) * endpoints[i].ewma_ms;
                    if load(b) < load(a) {
                        b
                    } else {
                        a
                    }
                }
            },
        };
        let e = &mut endpoints[index];
        e.outstanding += 1;
        Lease {
            index,
            base: e.base.clone(),
            started: now,
        }
    }

    /// Reports the outcome of `lease` at `now`: latency feeds the average; failures count
    /// towards ejection, a success clears them.
    pub fn finish(&self, lease: &Lease, ok: bool, now: Instant) {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        // A lone endpoint has nothing to be ejected in favour of (the provider's circuit breaker
        // guards it): only its latency and outstanding count are kept.
        let alone = endpoints.len() == 1;
        let Some(e) = endpoints.get_mut(lease.index) else {
            return;
        };
        e.outstanding = e.outstanding.saturating_sub(1);
        if ok {
            let sample = now.saturating_duration_since(lease.started).as_secs_f64() * 1000.0;
            e.ewma_ms = EWMA_ALPHA * sample + (1.0 - EWMA_ALPHA) * e.ewma_ms;
            e.consecutive_failures = 0;
            e.ejections_in_a_row = 0;
            e.ejected_until = None;
            e.last_failure = None;
            return;
        }
        if alone {
            return;
        }
        e.consecutive_failures += 1;
        e.last_failure = Some(now);
        // A failed probe of an ejected endpoint ejects it again at once, for longer.
        let probing = e.ejections_in_a_row > 0;
        if e.consecutive_failures >= EJECT_AFTER || probing {
            let factor = 1_u32 << e.ejections_in_a_row.min(6);
            e.ejected_until = Some(now + BASE_EJECTION.saturating_mul(factor).min(MAX_EJECTION));
            e.ejections_in_a_row += 1;
            e.consecutive_failures = 0;
            tracing::warn!(endpoint = %e.base, "endpoint ejected after repeated failures");
        }
    }

    /// [`Pool::acquire`], held: the lease gives its endpoint back if it is dropped unreported
    /// (the request's caller went away mid-attempt), so that abandoned requests do not count as
    /// outstanding for good and skew the balancing.
    pub fn hold(&self, now: Instant) -> HeldLease<'_> {
        HeldLease {
            pool: self,
            lease: self.acquire(now),
            reported: false,
        }
    }

    /// Gives `lease`'s endpoint back without a health report.
    fn release(&self, lease: &Lease) {
        let mut endpoints = self
            .endpoints
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(e) = endpoints.get_mut(lease.index) {
            e.outstanding = e.outstanding.saturating_sub(1);
        }
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.lock().map_or(0, |e| e.len())
    }

    /// True when the pool has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A [`Lease`] that is reported with [`HeldLease::finish`] or, dropped, given back.
#[derive(Debug)]
pub struct HeldLease<'a> {
    pool: &'a Pool,
    lease: Lease,
    reported: bool,
}

impl HeldLease<'_> {
    /// The lease (its endpoint's base URL).
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Reports the outcome, as [`Pool::finish`].
    pub fn finish(mut self, ok: bool, now: Instant) {
        self.pool.finish(&self.lease, ok, now);
        self.reported = true;
    }
}

impl Drop for HeldLease<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.pool.release(&self.lease);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(n: usize) -> Pool {
        Pool::new(
            &(0..n)
                .map(|i| format!("http://e{i}/v1"))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn spreads_concurrent_requests_over_endpoints() {
        let p = pool(3);
        let t = Instant::now();
        let leases: Vec<Lease> = (0..30).map(|_| p.acquire(t)).collect();
        for i in 0..3 {
            let n = leases.iter().filter(|l| l.index == i).count();
            assert!((7..=13).contains(&n), "endpoint {i} got {n} of 30");
        }
    }

    #[test]
    fn a_retry_goes_to_another_endpoint_than_the_one_that_just_failed() {
        let p = pool(2);
        let t0 = Instant::now();
        // Endpoint 1 is measured (300 ms); endpoint 0 never answered, so it looks fastest.
        let measured = Lease { index: 1, base: String::new(), started: t0 };
        p.endpoints.lock().unwrap()[1].outstanding += 1;
        p.finish(&measured, true, t0 + Duration::from_millis(300));
        for round in 0..20 {
            let now = t0 + Duration::from_secs(10 * round);
            let first = p.acquire(now);
            if first.index == 0 {
                p.finish(&first, false, now);
                let retry = p.acquire(now + Duration::from_millis(5));
                assert_eq!(retry.index, 1, "the retry went back to the endpoint that just failed");
                p.finish(&retry, true, now + Duration::from_millis(300));
            } else {
                p.finish(&first, true, now + Duration::from_millis(300));
            }
        }
    }

    #[test]
    fn an_abandoned_attempt_gives_its_endpoint_back() {
        let p = pool(2);
        let t = Instant::now();
        for _ in 0..100 {
            drop(p.hold(t));
        }
        p.hold(t).finish(true, t);
        let outstanding: Vec<u32> = p.endpoints.lock().unwrap().iter().map(|e| e.outstanding).collect();
        assert_eq!(outstanding, [0, 0], "each dropped attempt counted as outstanding for good");
    }

    #[test]
    fn slower_endpoint_gets_less_traffic() {
        let p = pool(2);
        let t0 = Instant::now();
        for _ in 0..20 {
            let lease = p.acquire(t0);
            let latency = if lease.index == 0 {
                Duration::from_millis(200)
            } else {
                Duration::from_millis(5)
            };
            p.finish(&lease, true, t0 + latency);
        }
        let fast = (0..100)
            .filter(|_| {
                let lease = p.acquire(t0);
                p.finish(
                    &lease,
                    true,
                    t0 + Duration::from_millis(if lease.index == 0 { 200 } else { 5 }),
                );
                lease.index == 1
            })
            .count();
        assert!(fast >= 90, "fast endpoint got {fast} of 100");
    }

    #[test]
    fn failing_endpoint_is_ejected_then_probed_back() {
        let p = pool(2);
        let t0 = Instant::now();
        // Endpoint 0 fails until it is ejected.
        for _ in 0..EJECT_AFTER {
            let lease = Lease {
                index: 0,
                base: String::new(),
                started: t0,
            };
            p.finish(&lease, false, t0);
        }
        for _ in 0..50 {
            let lease = p.acquire(t0 + Duration::from_secs(1));
            assert_eq!(lease.index, 1, "ejected endpoint gets no traffic");
            p.finish(&lease, true, t0 + Duration::from_secs(1));
        }
        let after = t0 + BASE_EJECTION + Duration::from_secs(1);
        let probed = (0..50).any(|_| {
            let lease = p.acquire(after);
            p.finish(&lease, true, after);
            lease.index == 0
        });
        assert!(probed, "after its ejection the endpoint is tried again");
    }

    #[test]
    fn a_lone_endpoint_is_never_ejected() {
        let p = pool(1);
        let t0 = Instant::now();
        for _ in 0..EJECT_AFTER * 3 {
            let lease = p.acquire(t0);
            p.finish(&lease, false, t0);
        }
        let endpoints = p.endpoints.lock().unwrap();
        assert!(endpoints[0].ejected_until.is_none() && endpoints[0].ejections_in_a_row == 0 && endpoints[0].outstanding == 0);
    }

    #[test]
    fn all_ejected_still_picks_the_one_back_soonest() {
        let p = pool(2);
        let t0 = Instant::now();
        for i in 0..2 {
            for _ in 0..EJECT_AFTER {
                let lease = Lease {
                    index: i,
                    base: String::new(),
                    started: t0,
                };
                p.finish(
                    &lease,
                    false,
                    t0 + Duration::from_millis(u64::try_from(i).unwrap()),
                );
            }
        }
        assert_eq!(p.acquire(t0 + Duration::from_millis(10)).index, 0);
    }
}
