//! `[server].max_in_flight_per_tenant`: how many chat requests of one tenant run at once. A slot
//! is held by a guard that lives as long as the request — for a stream, until it ends or the
//! client goes away.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Requests in flight per tenant.
#[derive(Debug)]
pub struct InFlight {
    limit: usize,
    counts: Mutex<HashMap<String, usize>>,
}

/// One request's slot; released on drop.
#[derive(Debug)]
pub struct InFlightGuard {
    owner: Arc<InFlight>,
    tenant: String,
}

impl InFlight {
    /// At most `limit` requests per tenant.
    pub fn new(limit: usize) -> Arc<Self> {
        Arc::new(Self { limit, counts: Mutex::new(HashMap::new()) })
    }

    /// The limit.
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// A slot for `tenant`, or `None` when it has `limit` requests in flight.
    pub fn enter(self: &Arc<Self>, tenant: &str) -> Option<InFlightGuard> {
        let mut counts = self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let count = counts.entry(tenant.to_owned()).or_default();
        if *count >= self.limit {
            return None;
        }
        *count += 1;
        Some(InFlightGuard { owner: Arc::clone(self), tenant: tenant.to_owned() })
    }

    /// Requests in flight, all tenants together.
    pub fn total(&self) -> usize {
        self.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner).values().sum()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut counts = self.owner.counts.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_per_tenant_and_come_back_on_drop() {
        let in_flight = InFlight::new(2);
        let a1 = in_flight.enter("a").unwrap();
        let _a2 = in_flight.enter("a").unwrap();
        assert!(in_flight.enter("a").is_none());
        let b = in_flight.enter("b").expect("another tenant has its own slots");
        drop(a1);
        let _a3 = in_flight.enter("a").expect("a slot came back");
        assert_eq!(in_flight.total(), 3);
        drop(b);
        assert_eq!(in_flight.total(), 2);
    }
}
