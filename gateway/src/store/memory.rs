//! The in-process store: one replica's limits and budgets, behind one mutex (each step is a few
//! map operations; the lock is never held across an await).

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{budget_retry_after_ms, over_budget, Admission, Outcome, Refusal, Settlement, Store, StoreError};
use crate::budgets::{Periods, Spend};
use crate::limits::{gcra, MINUTE_MS};

/// Limits and budgets of every tenant, in this process.
#[derive(Debug, Default)]
pub struct MemoryStore {
    tenants: Mutex<HashMap<String, TenantState>>,
}

#[derive(Debug, Default)]
struct TenantState {
    rpm_tat: Option<u64>,
    tpm_tat: Option<u64>,
    /// (day, spend that day).
    daily: (u64, u64),
    /// (month, spend that month).
    monthly: (u64, u64),
    /// lease → (amount, expiry ms).
    leases: HashMap<String, (u64, u64)>,
    /// Closed leases and until when they are remembered (see `Settlement::closed_for_ms`).
    closed: HashMap<String, u64>,
    /// The same, soonest to be forgotten first: forgetting costs what is forgotten, not a scan of
    /// every lease closed in the last `closed_for_ms` (hundreds of thousands at a high rate).
    forget: BinaryHeap<Reverse<(u64, String)>>,
}

impl TenantState {
    fn spend(&self, periods: Periods) -> Spend {
        Spend {
            daily_nusd: if self.daily.0 == periods.day { self.daily.1 } else { 0 },
            monthly_nusd: if self.monthly.0 == periods.month { self.monthly.1 } else { 0 },
            reserved_nusd: self.leases.values().map(|(amount, _)| amount).sum(),
        }
    }

    /// Adds spend to its periods. A settlement of a period already past here (a record dropped
    /// just before midnight, settled after another from the new day) counts towards that period
    /// alone, as Redis's key per period does: it does not empty the current one.
    fn add_spend(&mut self, periods: Periods, nusd: u64) {
        for (slot, period) in [(&mut self.daily, periods.day), (&mut self.monthly, periods.month)] {
            if period > slot.0 {
                *slot = (period, 0);
            }
            if period == slot.0 {
                slot.1 += nusd;
            }
        }
    }

    fn close(&mut self, lease: &str, until: u64) {
        self.closed.insert(lease.to_owned(), until);
        self.forget.push(Reverse((until, lease.to_owned())));
    }

    fn forget_closed(&mut self, now_ms: u64) {
        while let Some(Reverse((until, _))) = self.forget.peek() {
            if *until > now_ms {
                break;
            }
            if let Some(Reverse((until, lease))) = self.forget.pop() {
                if self.closed.get(&lease) == Some(&until) {
                    self.closed.remove(&lease);
                }
            }
        }
    }
}

impl MemoryStore {
    fn with_tenant<T>(&self, tenant: &str, f: impl FnOnce(&mut TenantState) -> T) -> T {
        let mut tenants = self.tenants.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(state) = tenants.get_mut(tenant) {
            return f(state);
        }
        f(tenants.entry(tenant.to_owned()).or_default())
    }

    /// Raises `tenant`'s spend in the periods of `now_ms` to at least `spend`'s settled figures
    /// (what the shared store last said, for a replica falling back to its own limits).
    pub fn spend_at_least(&self, tenant: &str, now_ms: u64, spend: Spend) {
        let periods = Periods::at(now_ms);
        self.with_tenant(tenant, |state| {
            for (slot, period, seen) in [(&mut state.daily, periods.day, spend.daily_nusd), (&mut state.monthly, periods.month, spend.monthly_nusd)] {
                if period > slot.0 {
                    *slot = (period, 0);
                }
                if period == slot.0 {
                    slot.1 = slot.1.max(seen);
                }
            }
        });
    }

    /// Admits synchronously (the trait's `admit` is this).
    pub fn admit_now(&self, a: &Admission<'_>) -> Outcome {
        let periods = Periods::at(a.now_ms);
        self.with_tenant(a.tenant, |state| {
            state.leases.retain(|_, (_, expiry)| *expiry > a.now_ms);
            state.forget_closed(a.now_ms);
            if a.reserve_nusd > 0 && state.closed.contains_key(a.lease) {
                let spend = state.spend(periods);
                return Outcome { refused: Some(Refusal::Closed), retry_after_ms: 0, rpm_remaining: None, tpm_remaining: None, spend };
            }
            let rpm = a.rpm.map(|c| gcra(state.rpm_tat, c.limit, MINUTE_MS, c.cost, a.now_ms, false));
            let tpm = a.tpm.map(|c| gcra(state.tpm_tat, c.limit, MINUTE_MS, c.cost, a.now_ms, false));
            let spend = state.spend(periods);
            let mut outcome = Outcome {
                refused: None,
                retry_after_ms: 0,
                rpm_remaining: rpm.map(|(v, _)| v.remaining),
                tpm_remaining: tpm.map(|(v, _)| v.remaining),
                spend,
            };
            let refusal = match (rpm, tpm) {
                (Some((v, _)), _) if !v.allowed => Some((Refusal::Requests, v.retry_after_ms)),
                (_, Some((v, _))) if !v.allowed => Some((Refusal::Tokens, v.retry_after_ms)),
                _ => a.budget.filter(|limits| over_budget(*limits, spend, a.reserve_nusd)).map(|limits| {
                    (Refusal::Budget, budget_retry_after_ms(limits, spend, a.reserve_nusd, a.now_ms))
                }),
            };
            if let Some((refused, retry_after_ms)) = refusal {
                // Nothing was taken: report what is left as it stands.
                let give_back = |left: Option<u64>, check: Option<super::RateCheck>, taken: bool| {
                    left.map(|l| if taken { l + check.map_or(0, |c| c.cost) } else { l })
                };
                outcome.rpm_remaining = give_back(outcome.rpm_remaining, a.rpm, rpm.is_some_and(|(v, _)| v.allowed));
                outcome.tpm_remaining = give_back(outcome.tpm_remaining, a.tpm, tpm.is_some_and(|(v, _)| v.allowed));
                outcome.refused = Some(refused);
                outcome.retry_after_ms = retry_after_ms;
                return outcome;
            }
            if let Some((_, tat)) = rpm {
                state.rpm_tat = Some(tat);
            }
            if let Some((_, tat)) = tpm {
                state.tpm_tat = Some(tat);
            }
            if a.reserve_nusd > 0 {
                state.leases.insert(a.lease.to_owned(), (a.reserve_nusd, a.now_ms + a.lease_ttl_ms));
                outcome.spend.reserved_nusd += a.reserve_nusd;
            }
            outcome
        })
    }

    /// Renews synchronously (the trait's `renew` is this).
    pub fn renew_now(&self, tenant: &str, leases: &[&str], now_ms: u64, lease_ttl_ms: u64) -> usize {
        self.with_tenant(tenant, |state| {
            state.leases.retain(|_, (_, expiry)| *expiry > now_ms);
            let mut renewed = 0;
            for lease in leases {
                if let Some((_, expiry)) = state.leases.get_mut(*lease) {
                    *expiry = now_ms + lease_ttl_ms;
                    renewed += 1;
                }
            }
            renewed
        })
    }

    /// Settles synchronously (the trait's `settle` is this).
    pub fn settle_now(&self, s: &Settlement<'_>) -> Spend {
        let periods = Periods::at(s.now_ms);
        self.with_tenant(s.tenant, |state| {
            state.forget_closed(s.now_ms);
            if let Some(lease) = s.lease {
                if state.closed.contains_key(lease) {
                    return state.spend(periods);
                }
                state.close(lease, s.now_ms + s.closed_for_ms);
                state.leases.remove(lease);
            }
            state.add_spend(periods, s.cost_nusd);
            if let Some(c) = s.tpm {
                state.tpm_tat = Some(gcra(state.tpm_tat, c.limit, MINUTE_MS, c.cost, s.now_ms, true).1);
            }
            state.spend(periods)
        })
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn admit(&self, admission: &Admission<'_>) -> Result<Outcome, StoreError> {
        Ok(self.admit_now(admission))
    }

    async fn settle(&self, settlement: &Settlement<'_>) -> Result<Spend, StoreError> {
        Ok(self.settle_now(settlement))
    }

    async fn renew(&self, tenant: &str, leases: &[&str], now_ms: u64, lease_ttl_ms: u64) -> Result<usize, StoreError> {
        Ok(self.renew_now(tenant, leases, now_ms, lease_ttl_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn closed_leases_are_forgotten_when_their_time_is_up_and_not_before() {
        let store = MemoryStore::default();
        let settle = |lease: &str, now_ms: u64, closed_for_ms: u64| {
            store.settle_now(&Settlement { tenant: "t", now_ms, lease: Some(lease), cost_nusd: 1, tpm: None, closed_for_ms });
        };
        settle("short", 0, 100);
        settle("long", 0, 1_000);
        settle("middle", 10, 500);
        let remembered = || {
            let tenants = store.tenants.lock().unwrap();
            let mut leases: Vec<String> = tenants["t"].closed.keys().cloned().collect();
            leases.sort();
            (leases, tenants["t"].forget.len())
        };
        settle("x", 99, 10_000);
        assert_eq!(remembered(), (vec!["long".into(), "middle".into(), "short".into(), "x".into()], 4));
        settle("y", 510, 10_000);
        assert_eq!(remembered(), (vec!["long".into(), "x".into(), "y".into()], 3));
        // A repeat of a remembered settlement counts once; of a forgotten one, again.
        settle("long", 999, 1_000);
        settle("short", 999, 100);
        let tenants = store.tenants.lock().unwrap();
        assert_eq!(tenants["t"].daily.1, 6);
    }
}
