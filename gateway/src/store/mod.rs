//! Where rate limits and budgets live: in this process ([`MemoryStore`]) or in Redis
//! ([`RedisStore`], shared by every replica). Both do the same two things, each as one atomic
//! step — one Lua script, one round trip, in Redis:
//!
//! - **admit**: check the tenant's requests and tokens per minute (GCRA) and whether its budget
//!   can hold this request's worst-case cost; if everything fits, take the rate units and reserve
//!   the money under a lease that expires on its own (a crashed replica's reservations do not
//!   stay). Nothing is written when anything does not fit.
//! - **settle**: release the lease and add the actual cost to the day's and month's spend (and
//!   the completion tokens to the token rate). It closes the lease: run again (a timed-out
//!   attempt that Redis carried out late, then its retry), it counts once; an admission under a
//!   closed lease takes nothing (a replica that gave up on an admission closes its lease).
//! - **renew**: push back the expiry of leases whose requests are still running on a live
//!   replica, so that only a dead replica's reservations lapse.
//!
//! The behaviour suite in `tests.rs` runs against both.

use async_trait::async_trait;

use crate::budgets::{BudgetLimits, Periods, Spend};

pub mod memory;
pub mod redis;
#[cfg(test)]
pub(crate) mod tests;

pub use memory::MemoryStore;
pub use redis::{RedisConfig, RedisStore};

/// One per-minute allowance to check: `cost` units of `limit` per `period_ms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateCheck {
    /// Units per period.
    pub limit: u64,
    /// Units this request takes.
    pub cost: u64,
}

/// Everything one request asks of the store before it is dispatched.
#[derive(Debug, Clone)]
pub struct Admission<'a> {
    /// Configured tenant name.
    pub tenant: &'a str,
    /// Unix ms.
    pub now_ms: u64,
    /// Requests per minute.
    pub rpm: Option<RateCheck>,
    /// Tokens per minute (prompt tokens, estimated).
    pub tpm: Option<RateCheck>,
    /// The tenant's budget, if it has one.
    pub budget: Option<BudgetLimits>,
    /// Worst-case cost to reserve (0: nothing to reserve; the spend is still read back).
    pub reserve_nusd: u64,
    /// Names the reservation.
    pub lease: &'a str,
    /// The reservation lapses this long after admission if never settled.
    pub lease_ttl_ms: u64,
}

/// Why a request was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Requests per minute used up.
    Requests,
    /// Tokens per minute used up.
    Tokens,
    /// The budget cannot hold the reservation.
    Budget,
    /// The admission's lease was closed before it ran: nothing taken.
    Closed,
}

/// The answer to an [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Outcome {
    /// `None`: admitted (and, if asked, reserved).
    pub refused: Option<Refusal>,
    /// When refused: milliseconds until it would fit (the end of the budget period for budgets).
    pub retry_after_ms: u64,
    /// Requests left this minute (when the tenant has `rpm`).
    pub rpm_remaining: Option<u64>,
    /// Tokens left this minute (when the tenant has `tpm`).
    pub tpm_remaining: Option<u64>,
    /// The tenant's money after this step.
    pub spend: Spend,
}

/// What a finished request reports back.
#[derive(Debug, Clone)]
pub struct Settlement<'a> {
    /// Configured tenant name.
    pub tenant: &'a str,
    /// Unix ms.
    pub now_ms: u64,
    /// The reservation to release, if one was made.
    pub lease: Option<&'a str>,
    /// Actual cost, added to the day's and month's spend.
    pub cost_nusd: u64,
    /// Completion tokens to take from the token rate, which lets them overdraw it.
    pub tpm: Option<RateCheck>,
    /// How long the closed lease is remembered (a repeat of this settlement, or a late
    /// admission under its lease, within that time changes nothing).
    pub closed_for_ms: u64,
}

/// The store could not be reached (Redis down or too slow).
#[derive(Debug, thiserror::Error)]
#[error("the limits store is unavailable: {reason}")]
pub struct StoreError {
    /// What went wrong (never the Redis URL).
    pub reason: String,
    /// The step was sent and may still be carried out (it timed out, or its answer was lost).
    pub may_have_run: bool,
}

impl StoreError {
    /// The step never reached the store.
    pub fn unreachable(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), may_have_run: false }
    }

    /// The step was sent; whether the store carried it out is unknown.
    pub fn unanswered(reason: impl Into<String>) -> Self {
        Self { reason: reason.into(), may_have_run: true }
    }
}

/// Rate limits and budgets, in one process or shared.
#[async_trait]
pub trait Store: Send + Sync + std::fmt::Debug {
    /// Checks and, when everything fits, takes and reserves (see the module docs).
    async fn admit(&self, admission: &Admission<'_>) -> Result<Outcome, StoreError>;
    /// Releases a reservation and records the actual cost.
    async fn settle(&self, settlement: &Settlement<'_>) -> Result<Spend, StoreError>;
    /// Moves the expiry of `tenant`'s `leases` that have neither settled nor lapsed to
    /// `now_ms + lease_ttl_ms`; returns how many it moved.
    async fn renew(&self, tenant: &str, leases: &[&str], now_ms: u64, lease_ttl_ms: u64) -> Result<usize, StoreError>;
}

/// Milliseconds until a refused reservation could fit: the end of every period whose settled
/// spend leaves no room for it, or a second when only requests in flight hold the money.
pub fn budget_retry_after_ms(limits: BudgetLimits, spend: Spend, reserve_nusd: u64, now_ms: u64) -> u64 {
    let periods = Periods::at(now_ms);
    let over = |spent: u64, limit: Option<u64>| limit.is_some_and(|l| spent + reserve_nusd > l);
    let mut wait = IN_FLIGHT_RETRY_MS;
    if over(spend.daily_nusd, limits.daily_nusd) {
        wait = periods.day_end_ms - now_ms;
    }
    if over(spend.monthly_nusd, limits.monthly_nusd) {
        wait = wait.max(periods.month_end_ms - now_ms);
    }
    wait
}

/// Retry-After when reservations of requests in flight are what is in the way.
const IN_FLIGHT_RETRY_MS: u64 = 1000;

/// True when the budget cannot hold `reserve_nusd` more.
pub fn over_budget(limits: BudgetLimits, spend: Spend, reserve_nusd: u64) -> bool {
    let over = |spent: u64, limit: Option<u64>| limit.is_some_and(|l| spent + spend.reserved_nusd + reserve_nusd > l);
    reserve_nusd > 0 && (over(spend.daily_nusd, limits.daily_nusd) || over(spend.monthly_nusd, limits.monthly_nusd))
}
