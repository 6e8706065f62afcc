//! The in-process store: one replica's limits and budgets, behind one mutex (each step is a few
//! map operations; the lock is never held across an await).

use std::collections::HashMap;
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
}

impl TenantState {
    fn spend(&self, periods: Periods) -> Spend {
        Spend {
            daily_nusd: if self.daily.0 == periods.day { self.daily.1 } else { 0 },
            monthly_nusd: if self.monthly.0 == periods.month { self.monthly.1 } else { 0 },
            reserved_nusd: self.leases.values().map(|(amount, _)| amount).sum(),
        }
    }

    fn add_spend(&mut self, periods: Periods, nusd: u64) {
        if self.daily.0 != periods.day {
            self.daily = (periods.day, 0);
        }
        if self.monthly.0 != periods.month {
            self.monthly = (periods.month, 0);
        }
        self.daily.1 += nusd;
        self.monthly.1 += nusd;
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

    /// Admits synchronously (the trait's `admit` is this).
    pub fn admit_now(&self, a: &Admission<'_>) -> Outcome {
        let periods = Periods::at(a.now_ms);
        self.with_tenant(a.tenant, |state| {
            state.leases.retain(|_, (_, expiry)| *expiry > a.now_ms);
            state.closed.retain(|_, until| *until > a.now_ms);
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
            state.closed.retain(|_, until| *until > s.now_ms);
            if let Some(lease) = s.lease {
                if state.closed.contains_key(lease) {
                    return state.spend(periods);
                }
                state.closed.insert(lease.to_owned(), s.now_ms + s.closed_for_ms);
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
