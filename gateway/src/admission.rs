//! Admission: a tenant's rate limits and budget, checked and taken in one store step before a
//! request is dispatched, and settled when its accounting record is written. Owns the choice of
//! store (in-process, or Redis with its `on_outage` behaviour), the retry of settlements Redis
//! could not take, and the last spend seen per tenant (the router's `budget_used` signal and the
//! `switchyard_budget_remaining_usd` gauge).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::accounting::{unix_ms, UsageRecord};
use crate::budgets::{usd_to_nanos, BudgetConfig, OnExceed, Periods, Spend};
use crate::error::{ApiError, BudgetWait};
use crate::limits::RateLimitConfig;
use crate::metrics::Metrics;
use crate::store::redis::OnOutage;
use crate::store::{Admission, MemoryStore, Outcome, RateCheck, Refusal, RedisConfig, RedisStore, Settlement, Store};
use crate::tenants::TenantConfig;

/// A tenant's limits.
#[derive(Debug, Clone, Copy, Default)]
struct TenantLimits {
    rate: Option<RateLimitConfig>,
    budget: Option<BudgetConfig>,
}

/// Which store holds a request's rate units and reservation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Held {
    /// Nothing was taken (no limits, or Redis down under `fail_closed` for a local request).
    Nowhere,
    /// The configured store.
    Primary,
    /// This replica's own store, standing in for Redis (`fail_open`).
    Fallback,
}

/// What an admitted request holds until it settles.
#[derive(Debug, Clone)]
pub struct Ticket {
    tenant: String,
    /// The tenant's limits when the request was admitted: a reload that takes a budget away
    /// meanwhile must not drop the request's cost from the spend.
    limits: TenantLimits,
    lease: Option<String>,
    held: Held,
    /// Keeps the lease renewed while any copy of the ticket lives (see [`Limiter::renew_leases`]).
    _alive: Option<Arc<()>>,
}

/// A reservation of a request still running here, renewed until it settles.
#[derive(Debug)]
struct LiveLease {
    tenant: String,
    held: Held,
    /// Gone when every copy of the request's ticket is: a request that ended without settling
    /// stops being renewed, and its reservation lapses as a dead replica's would.
    alive: Weak<()>,
}

/// `(limit, remaining)` of requests and of tokens per minute, for `x-ratelimit-*`.
pub type Standing = (Option<(u32, u64)>, Option<(u32, u64)>);

/// The answer to [`Limiter::admit`].
#[derive(Debug)]
pub enum Admitted {
    /// Go ahead; settle with the ticket.
    Yes(Ticket),
    /// The budget cannot hold the reservation and the tenant's `on_exceed` is `local`: route
    /// again to the local engine (nothing was taken). If it cannot go there either, the client
    /// is told to retry after this many seconds.
    OverBudgetTryLocal {
        /// Until the budget period ends (or in-flight requests settle), if ever.
        wait: BudgetWait,
    },
}

/// Closes the lease of an admission whose answer never came back because its request was
/// dropped (the client left) during the store's round trip: what it reserved, if the store did
/// carry it out, is given back at once rather than held until the lease lapses.
struct LeaseGuard<'a> {
    limiter: &'a Limiter,
    tenant: &'a str,
    lease: &'a str,
    now_ms: u64,
    armed: bool,
}

impl Drop for LeaseGuard<'_> {
    fn drop(&mut self) {
        if self.armed {
            self.limiter.close_lease(self.tenant, self.lease, self.now_ms);
        }
    }
}

/// The check of one per-minute limit, if the tenant has it, taking `cost` of it.
fn rate_check(limit: Option<u32>, cost: u64) -> Option<RateCheck> {
    limit.map(|l| RateCheck { limit: u64::from(l), cost })
}

/// Each tenant's limits, by name.
fn limits_of(tenants: &[TenantConfig]) -> HashMap<String, TenantLimits> {
    tenants.iter().map(|t| (t.name.clone(), TenantLimits { rate: t.rate_limit, budget: t.budget })).collect()
}

/// `(limit, remaining)` for each rate limit the tenant has, as the store answered.
fn standing_of(rate: RateLimitConfig, outcome: &Outcome) -> Standing {
    (rate.rpm.zip(outcome.rpm_remaining), rate.tpm.zip(outcome.tpm_remaining))
}

/// Rate limits and budgets of every tenant, in the configured store.
pub struct Limiter {
    /// Each tenant's limits; a configuration reload replaces them ([`Limiter::set_tenants`]).
    tenants: std::sync::RwLock<HashMap<String, TenantLimits>>,
    primary: Arc<dyn Store>,
    /// `fail_open`: where admissions go while Redis is unreachable.
    fallback: Option<MemoryStore>,
    lease_ttl_ms: u64,
    metrics: Arc<Metrics>,
    /// The last spend each budgeted tenant was seen at, with the periods it was seen in.
    seen: Mutex<HashMap<String, (Periods, Spend)>>,
    /// Settlements waiting for Redis to return.
    retrying: Arc<AtomicUsize>,
    /// Reservations of requests running here, by lease.
    live: Mutex<HashMap<String, LiveLease>>,
    /// Settlements started and not yet finished, and the signal that one finished.
    settling: Arc<AtomicUsize>,
    settled: Arc<tokio::sync::Notify>,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter").field("primary", &self.primary).field("fail_open", &self.fallback.is_some()).finish_non_exhaustive()
    }
}

/// Settlements kept for retry at most (beyond, they are dropped, logged and counted).
const MAX_RETRYING: usize = 100_000;
/// How long a settlement keeps being retried while Redis is away.
const RETRY_FOR: Duration = Duration::from_hours(1);

impl Limiter {
    /// Limits for `tenants`, in Redis when `redis` is set, else in this process.
    pub fn new(tenants: &[TenantConfig], redis: Option<(Arc<RedisStore>, &RedisConfig)>, metrics: Arc<Metrics>) -> Self {
        let tenants = std::sync::RwLock::new(limits_of(tenants));
        let (primary, fallback, lease_ttl_ms): (Arc<dyn Store>, _, _) = match redis {
            Some((store, config)) => (
                store as Arc<dyn Store>,
                (config.on_outage == OnOutage::FailOpen).then(MemoryStore::default),
                config.lease_ttl_s * 1000,
            ),
            None => (Arc::new(MemoryStore::default()), None, 600_000),
        };
        Self {
            tenants,
            primary,
            fallback,
            lease_ttl_ms,
            metrics,
            seen: Mutex::new(HashMap::new()),
            retrying: Arc::new(AtomicUsize::new(0)),
            live: Mutex::new(HashMap::new()),
            settling: Arc::new(AtomicUsize::new(0)),
            settled: Arc::new(tokio::sync::Notify::new()),
        }
    }

    /// Replaces every tenant's limits (a configuration reload). What running requests reserved
    /// is settled as usual; a tenant that lost its budget stops being shown and gauged, and a
    /// changed budget's gauges are set again from the next spend seen.
    pub fn set_tenants(&self, tenants: &[TenantConfig]) {
        let limits = limits_of(tenants);
        let mut seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.retain(|tenant, _| limits.get(tenant).is_some_and(|l| l.budget.is_some()));
        for (tenant, old) in self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner).iter() {
            // Gone or changed (a period dropped): the next spend seen sets what is left.
            if old.budget.is_some() && limits.get(tenant).is_none_or(|l| l.budget != old.budget) {
                for period in ["daily", "monthly"] {
                    let _ = self.metrics.budget_remaining.remove_label_values(&[tenant, period]);
                }
            }
        }
        *self.tenants.write().unwrap_or_else(std::sync::PoisonError::into_inner) = limits;
    }

    fn limits(&self, tenant: &str) -> TenantLimits {
        self.tenants.read().unwrap_or_else(std::sync::PoisonError::into_inner).get(tenant).copied().unwrap_or_default()
    }

    /// The tenant's budget, if it has one.
    pub fn budget(&self, tenant: &str) -> Option<BudgetConfig> {
        self.limits(tenant).budget
    }

    /// What the tenant's budget would do with a request reserving `reserve_nusd`, judged on the
    /// spend as last seen (nothing is reserved): `None` when it fits or there is no budget, else
    /// the budget's `on_exceed`. For `/v1/route`, which explains without admitting.
    pub fn would_exceed(&self, tenant: &str, reserve_nusd: u64) -> Option<crate::budgets::OnExceed> {
        let budget = self.budget(tenant)?;
        let now = Periods::at(unix_ms());
        let spend = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(tenant).map(|(at, spend)| current(*at, *spend, now));
        crate::store::over_budget(budget.limits(), spend.unwrap_or_default(), reserve_nusd).then_some(budget.on_exceed)
    }

    /// Share of the tenant's tightest budget spent or reserved, as last seen (0 without a budget).
    pub fn used_share(&self, tenant: &str) -> f64 {
        let Some(budget) = self.budget(tenant) else { return 0.0 };
        let now = Periods::at(unix_ms());
        let seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        seen.get(tenant).map_or(0.0, |(at, spend)| current(*at, *spend, now).used_share(budget.limits()))
    }

    /// The spend of every budgeted tenant as last seen: `(tenant, budget, spend)`.
    pub fn budgets(&self) -> Vec<(String, BudgetConfig, Spend)> {
        let now = Periods::at(unix_ms());
        let seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut out: Vec<_> = self
            .tenants
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(|(name, t)| {
                let spend = seen.get(name).map(|(at, spend)| current(*at, *spend, now)).unwrap_or_default();
                Some((name.clone(), t.budget?, spend))
            })
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn saw(&self, tenant: &str, now_ms: u64, spend: Spend) {
        let Some(budget) = self.budget(tenant) else { return };
        self.seen
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(tenant.to_owned(), (Periods::at(now_ms), spend));
        for (period, left) in spend.remaining_usd(budget.limits()) {
            if let Some(left) = left {
                self.metrics.budget_remaining.with_label_values(&[tenant, period]).set(left);
            }
        }
    }

    /// Checks and takes the tenant's rate units (one request, `prompt_tokens` tokens) and
    /// reserves `reserve_nusd` from its budget, in one store step. `remote_bound`: the request
    /// may reach a remote provider (under `fail_closed`, only such requests are refused while
    /// Redis is unreachable). Refusals are `rate_limit_exceeded`, `budget_exceeded` (when the
    /// tenant's `on_exceed` is `reject`) or 503; `x-ratelimit-*` standings come back in either case.
    pub async fn admit(
        &self,
        tenant: &str,
        prompt_tokens: u64,
        reserve_nusd: u64,
        remote_bound: bool,
        lease: &str,
        standing: &mut Standing,
    ) -> Result<Admitted, ApiError> {
        let limits = self.limits(tenant);
        let ticket = |held, lease: Option<String>| {
            let alive = lease.as_ref().map(|lease| {
                let alive = Arc::new(());
                let live = LiveLease { tenant: tenant.to_owned(), held, alive: Arc::downgrade(&alive) };
                self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner).insert(lease.clone(), live);
                alive
            });
            Ticket { tenant: tenant.to_owned(), limits, lease, held, _alive: alive }
        };
        if limits.rate.is_none() && limits.budget.is_none() {
            return Ok(Admitted::Yes(ticket(Held::Nowhere, None)));
        }
        let rate = limits.rate.unwrap_or(RateLimitConfig { rpm: None, tpm: None });
        let now_ms = unix_ms();
        let admission = Admission {
            tenant,
            now_ms,
            rpm: rate_check(rate.rpm, 1),
            tpm: rate_check(rate.tpm, prompt_tokens),
            budget: limits.budget.map(|b| b.limits()),
            reserve_nusd: if limits.budget.is_some() { reserve_nusd } else { 0 },
            lease,
            lease_ttl_ms: self.lease_ttl_ms,
        };
        // A client that leaves while Redis runs the admission drops this future at the await: the
        // reservation may be made there all the same, with no ticket here to settle or renew it.
        let mut unanswered = LeaseGuard { limiter: self, tenant, lease, now_ms, armed: admission.reserve_nusd > 0 };
        let answer = self.primary.admit(&admission).await;
        unanswered.armed = false;
        let (outcome, held) = match answer {
            Ok(outcome) => (outcome, Held::Primary),
            Err(err) => {
                if err.may_have_run && admission.reserve_nusd > 0 {
                    // Redis may still carry the admission out (it timed out here, not there):
                    // close its lease, so that it reserves nothing or gives back what it did.
                    self.close_lease(tenant, lease, now_ms);
                }
                match &self.fallback {
                    Some(fallback) => {
                        self.metrics.store_unavailable.with_label_values(&["fail_open"]).inc();
                        tracing::warn!(error = %err, "limits store unavailable; using this replica's own limits (on_outage = fail_open)");
                        // Its own limits start from the tenant's spend as last seen in the shared
                        // store, not from nothing: else every replica would admit a whole budget
                        // again for the rest of the day.
                        let seen = self.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner).get(tenant).map(|(at, spend)| current(*at, *spend, Periods::at(now_ms)));
                        if let Some(spend) = seen {
                            fallback.spend_at_least(tenant, now_ms, spend);
                        }
                        (fallback.admit_now(&admission), Held::Fallback)
                    }
                    None if !remote_bound => {
                        // fail_closed keeps local-only traffic flowing (it spends nothing remote).
                        tracing::warn!(error = %err, "limits store unavailable; local request served without limits");
                        return Ok(Admitted::Yes(ticket(Held::Nowhere, None)));
                    }
                    None => {
                        self.metrics.store_unavailable.with_label_values(&["fail_closed"]).inc();
                        tracing::warn!(error = %err, "limits store unavailable; remote-bound request refused (on_outage = fail_closed)");
                        return Err(ApiError::StoreUnavailable);
                    }
                }
            }
        };
        self.saw(tenant, now_ms, outcome.spend);
        *standing = standing_of(rate, &outcome);
        let retry_after_s = outcome.retry_after_ms.div_ceil(1000).max(1);
        match outcome.refused {
            None => {
                let lease = (admission.reserve_nusd > 0).then(|| lease.to_owned());
                Ok(Admitted::Yes(ticket(held, lease)))
            }
            Some(Refusal::Requests) => Err(ApiError::TenantRateLimited { what: "requests", retry_after_s }),
            // More than the whole allowance: no wait makes it fit.
            Some(Refusal::Tokens) if rate.tpm.is_some_and(|limit| prompt_tokens > u64::from(limit)) => {
                Err(ApiError::RequestOverTokenLimit { limit: rate.tpm.unwrap_or_default(), requested: prompt_tokens })
            }
            Some(Refusal::Tokens) => Err(ApiError::TenantRateLimited { what: "tokens", retry_after_s }),
            Some(Refusal::Budget) => {
                let wait = admission.budget.map_or(BudgetWait::Seconds(retry_after_s), |b| BudgetWait::of(b, admission.reserve_nusd, retry_after_s));
                match limits.budget.map(|b| b.on_exceed) {
                    Some(OnExceed::Local) => Ok(Admitted::OverBudgetTryLocal { wait }),
                    _ => Err(ApiError::BudgetExceeded { wait }),
                }
            }
            // Only an admission carried out after its lease was closed, whose answer nobody reads.
            Some(Refusal::Closed) => Err(ApiError::StoreUnavailable),
        }
    }

    /// The tenant's rate-limit standing, taking nothing: for an answer refused before its
    /// admission (policy, in-flight limit) that still carries the rate-limit headers. Nothing
    /// when the tenant has no rate limit or the store cannot be read.
    pub async fn standing(&self, tenant: &str) -> Standing {
        let Some(rate) = self.limits(tenant).rate else { return (None, None) };
        let admission = Admission {
            tenant,
            now_ms: unix_ms(),
            rpm: rate_check(rate.rpm, 0),
            tpm: rate_check(rate.tpm, 0),
            budget: None,
            reserve_nusd: 0,
            lease: "",
            lease_ttl_ms: self.lease_ttl_ms,
        };
        match self.primary.admit(&admission).await {
            Ok(outcome) => standing_of(rate, &outcome),
            Err(_) => (None, None),
        }
    }

    /// Closes `lease` in the primary store in the background (retried like a settlement that
    /// costs nothing): an admission under it that Redis carries out later takes nothing.
    fn close_lease(&self, tenant: &str, lease: &str, now_ms: u64) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let owned = OwnedSettlement { tenant: tenant.to_owned(), now_ms, lease: Some(lease.to_owned()), cost_nusd: 0, tpm: None, closed_for_ms: self.lease_ttl_ms };
        let (primary, metrics, retrying) = (Arc::clone(&self.primary), Arc::clone(&self.metrics), Arc::clone(&self.retrying));
        self.in_background(&runtime, async move {
            settle_in(primary.as_ref(), &metrics, &retrying, &owned).await;
        });
    }

    /// Settles a finished request (in the background): releases its reservation, adds its cost
    /// and takes its completion tokens. A settlement Redis cannot take is retried until it can.
    pub fn settle(self: &Arc<Self>, ticket: &Ticket, record: &UsageRecord) {
        if let Some(lease) = &ticket.lease {
            self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner).remove(lease);
        }
        // Counted under the limits the request was admitted with, or those a reload gave since.
        let limits = self.limits(&ticket.tenant);
        let budgeted = limits.budget.is_some() || ticket.limits.budget.is_some();
        let cost_nusd = if budgeted { usd_to_nanos(record.cost_usd) } else { 0 };
        let tpm = limits.rate.or(ticket.limits.rate).and_then(|r| r.tpm).filter(|_| record.completion_tokens > 0);
        if ticket.lease.is_none() && cost_nusd == 0 && tpm.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        let owned = OwnedSettlement {
            tenant: ticket.tenant.clone(),
            now_ms: record.ts,
            // Without a lease (nothing was reserved) the settlement gets an id of its own all the
            // same, which the store remembers: one that timed out here but ran there, and its
            // retry, count once. Not the request id itself: a lease closed under that id (an
            // admission whose answer was lost) would swallow it.
            lease: ticket.lease.clone().or_else(|| Some(&record.request_id).filter(|id| !id.is_empty()).map(|id| format!("{id}/settlement"))),
            cost_nusd,
            tpm: tpm.map(|limit| RateCheck { limit: u64::from(limit), cost: record.completion_tokens }),
            closed_for_ms: self.lease_ttl_ms,
        };
        let limiter = Arc::clone(self);
        let in_fallback = ticket.held == Held::Fallback;
        self.in_background(&runtime, async move { limiter.settle_owned(owned, in_fallback).await });
    }

    /// Runs a settlement's `work` on `runtime`, counted until it ends (see
    /// [`Limiter::finish_settlements`]).
    fn in_background(&self, runtime: &tokio::runtime::Handle, work: impl std::future::Future<Output = ()> + Send + 'static) {
        let (settling, settled) = (Arc::clone(&self.settling), Arc::clone(&self.settled));
        settling.fetch_add(1, Relaxed);
        runtime.spawn(async move {
            work.await;
            settling.fetch_sub(1, Relaxed);
            settled.notify_waiters();
        });
    }

    /// Waits until every settlement started so far has reached the store, at most `deadline`
    /// (a stopping replica must not take its requests' spend with it); returns how many have
    /// not (they wait for an unreachable Redis).
    pub async fn finish_settlements(&self, deadline: Duration) -> usize {
        let wait = async {
            loop {
                let settled = self.settled.notified();
                if self.settling.load(Relaxed) == 0 {
                    return;
                }
                settled.await;
            }
        };
        let _ = tokio::time::timeout(deadline, wait).await;
        self.settling.load(Relaxed)
    }

    /// How often [`Limiter::renew_leases`] must run: well within a lease's lifetime.
    pub fn lease_renewal_interval(&self) -> Duration {
        (Duration::from_millis(self.lease_ttl_ms) / 3).clamp(Duration::from_millis(100), Duration::from_mins(1))
    }

    /// Pushes back the expiry of every reservation whose request is still running here, so
    /// that a request outliving `lease_ttl_s` keeps its money reserved; only a dead replica's
    /// reservations lapse. Forgets requests that ended without settling.
    pub async fn renew_leases(&self) {
        let mut by_store: HashMap<(Held, String), Vec<String>> = HashMap::new();
        {
            let mut live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            live.retain(|_, l| l.alive.strong_count() > 0);
            for (lease, l) in live.iter() {
                by_store.entry((l.held, l.tenant.clone())).or_default().push(lease.clone());
            }
        }
        let now_ms = unix_ms();
        for ((held, tenant), leases) in by_store {
            let leases: Vec<&str> = leases.iter().map(String::as_str).collect();
            let renewed = match (held, &self.fallback) {
                (Held::Fallback, Some(fallback)) => Ok(fallback.renew_now(&tenant, &leases, now_ms, self.lease_ttl_ms)),
                (Held::Fallback | Held::Nowhere, _) => continue,
                (Held::Primary, _) => self.primary.renew(&tenant, &leases, now_ms, self.lease_ttl_ms).await,
            };
            if let Err(err) = renewed {
                tracing::warn!(error = %err, tenant = %tenant, leases = leases.len(), "could not renew the reservations of running requests");
            }
        }
    }

    /// Reservations of requests running here (renewed until they settle).
    pub fn live_leases(&self) -> usize {
        let mut live = self.live.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        live.retain(|_, l| l.alive.strong_count() > 0);
        live.len()
    }

    async fn settle_owned(&self, s: OwnedSettlement, in_fallback: bool) {
        if in_fallback {
            if let Some(fallback) = &self.fallback {
                let spend = fallback.settle_now(&s.borrow());
                self.saw(&s.tenant, s.now_ms, spend);
            }
            return;
        }
        if let Some(spend) = settle_in(self.primary.as_ref(), &self.metrics, &self.retrying, &s).await {
            self.saw(&s.tenant, s.now_ms, spend);
        }
    }

    /// Reads every budgeted tenant's spend from the store (for the gauges, the dashboard and the
    /// routing signal when this replica has not seen the tenant's traffic lately).
    pub async fn refresh(&self) {
        let now_ms = unix_ms();
        // A copy: the store is awaited, and a reload may replace the limits meanwhile.
        let budgets: Vec<(String, BudgetConfig)> = self
            .tenants
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .filter_map(|(tenant, limits)| Some((tenant.clone(), limits.budget?)))
            .collect();
        for (tenant, budget) in &budgets {
            let read = Admission {
                tenant,
                now_ms,
                rpm: None,
                tpm: None,
                budget: Some(budget.limits()),
                reserve_nusd: 0,
                lease: "",
                lease_ttl_ms: self.lease_ttl_ms,
            };
            if let Ok(outcome) = self.primary.admit(&read).await {
                self.saw(tenant, now_ms, outcome.spend);
            }
        }
    }

    /// Settlements waiting for Redis.
    pub fn settlements_waiting(&self) -> usize {
        self.retrying.load(Relaxed)
    }
}

/// A spend seen in `at`, as it stands in `now` (a new day or month starts from zero).
fn current(at: Periods, spend: Spend, now: Periods) -> Spend {
    Spend {
        daily_nusd: if at.day == now.day { spend.daily_nusd } else { 0 },
        monthly_nusd: if at.month == now.month { spend.monthly_nusd } else { 0 },
        reserved_nusd: spend.reserved_nusd,
    }
}

/// Settles `s` in `store`, retrying while it is unreachable (counted in `retrying`, at most
/// `MAX_RETRYING` at once, for `RETRY_FOR`); the spend after it, unless it was dropped.
async fn settle_in(store: &dyn Store, metrics: &Metrics, retrying: &AtomicUsize, s: &OwnedSettlement) -> Option<Spend> {
    let mut wait = Duration::from_millis(100);
    let started = std::time::Instant::now();
    let mut queued = false;
    let settled = loop {
        match store.settle(&s.borrow()).await {
            Ok(spend) => break Some(spend),
            Err(err) if !queued => {
                if retrying.fetch_add(1, Relaxed) >= MAX_RETRYING {
                    retrying.fetch_sub(1, Relaxed);
                    metrics.store_unavailable.with_label_values(&["settle_dropped"]).inc();
                    tracing::error!(error = %err, tenant = %s.tenant, "settlement dropped: too many waiting for the limits store");
                    return None;
                }
                queued = true;
                metrics.store_unavailable.with_label_values(&["settle_retry"]).inc();
                tracing::warn!(error = %err, tenant = %s.tenant, "settlement failed; retrying until the limits store returns");
            }
            Err(err) if started.elapsed() > RETRY_FOR => {
                metrics.store_unavailable.with_label_values(&["settle_dropped"]).inc();
                tracing::error!(error = %err, tenant = %s.tenant, "settlement dropped after an hour of retries");
                break None;
            }
            Err(_) => {}
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(5));
    };
    if queued {
        retrying.fetch_sub(1, Relaxed);
    }
    settled
}

/// A [`Settlement`] that owns its strings (it travels to a background task).
struct OwnedSettlement {
    tenant: String,
    now_ms: u64,
    lease: Option<String>,
    cost_nusd: u64,
    tpm: Option<RateCheck>,
    closed_for_ms: u64,
}

impl OwnedSettlement {
    fn borrow(&self) -> Settlement<'_> {
        Settlement {
            tenant: &self.tenant,
            now_ms: self.now_ms,
            lease: self.lease.as_deref(),
            cost_nusd: self.cost_nusd,
            tpm: self.tpm,
            closed_for_ms: self.closed_for_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::StoreError;

    fn limiter() -> Limiter {
        let tenant: TenantConfig = toml::from_str("name = \"acme\"\nbudget = { daily_usd = 1.0 }\n").unwrap();
        Limiter::new(&[tenant], None, Arc::new(Metrics::new().unwrap()))
    }

    async fn admitted(limiter: &Limiter, lease: &str) -> Ticket {
        match limiter.admit("acme", 10, 1_000_000, true, lease, &mut (None, None)).await.unwrap() {
            Admitted::Yes(ticket) => ticket,
            Admitted::OverBudgetTryLocal { .. } => panic!("over budget"),
        }
    }

    /// What the store holds reserved, read as at `at_ms`.
    async fn reserved_at(limiter: &Limiter, at_ms: u64) -> u64 {
        reserved_in(limiter.primary.as_ref(), limiter, at_ms).await
    }

    async fn reserved_in(store: &dyn Store, limiter: &Limiter, at_ms: u64) -> u64 {
        let read = Admission {
            tenant: "acme",
            now_ms: at_ms,
            rpm: None,
            tpm: None,
            budget: limiter.budget("acme").map(|b| b.limits()),
            reserve_nusd: 0,
            lease: "",
            lease_ttl_ms: 0,
        };
        store.admit(&read).await.unwrap().spend.reserved_nusd
    }

    #[tokio::test]
    async fn running_requests_keep_their_reservations_and_a_stop_awaits_their_settlements() {
        let mut limiter = limiter();
        // Two requests admitted under 50 ms leases; one ends without settling.
        limiter.lease_ttl_ms = 50;
        let running = admitted(&limiter, "running").await;
        drop(admitted(&limiter, "ended").await);
        assert_eq!(limiter.live_leases(), 1, "a request gone without settling is not renewed");
        // The renewal gives the running one ten minutes more; the other lapses on time.
        limiter.lease_ttl_ms = 600_000;
        limiter.renew_leases().await;
        assert_eq!(reserved_at(&limiter, unix_ms() + 10_000).await, 1_000_000);
        // Settled: no longer renewed, and a stopping replica waits until the store has it.
        let limiter = Arc::new(limiter);
        limiter.settle(&running, &UsageRecord { ts: unix_ms(), tenant: "acme".into(), cost_usd: 0.0005, ..UsageRecord::default() });
        assert_eq!(limiter.live_leases(), 0);
        assert_eq!(limiter.finish_settlements(Duration::from_secs(10)).await, 0);
        let (_, _, spend) = limiter.budgets().remove(0);
        assert_eq!((spend.daily_nusd, spend.reserved_nusd), (500_000, 0));
    }

    #[tokio::test]
    async fn a_reload_replaces_the_limits_and_what_ran_before_still_settles() {
        let limiter = Arc::new(limiter());
        let old_budget = limiter.budget("acme").map(|b| b.limits());
        let running = admitted(&limiter, "running").await;
        assert!(limiter.metrics.render().contains("switchyard_budget_remaining_usd{"));
        // The reload takes the budget away and sets one request a minute.
        let reloaded: TenantConfig = toml::from_str("name = \"acme\"\nrate_limit = { rpm = 1 }\n").unwrap();
        limiter.set_tenants(&[reloaded]);
        assert!(limiter.budget("acme").is_none() && limiter.budgets().is_empty());
        assert!(!limiter.metrics.render().contains("switchyard_budget_remaining_usd{"), "a budget that is gone is not gauged");
        let mut standing = (None, None);
        assert!(limiter.admit("acme", 10, 0, true, "first", &mut standing).await.is_ok());
        assert!(limiter.admit("acme", 10, 0, true, "second", &mut standing).await.is_err(), "the new rate limit applies");
        // The request admitted under the old budget gives its reservation back when it ends, and
        // its cost still counts (a budget put back later finds it).
        limiter.settle(&running, &UsageRecord { ts: unix_ms(), tenant: "acme".into(), cost_usd: 0.0005, ..UsageRecord::default() });
        assert_eq!(limiter.finish_settlements(Duration::from_secs(10)).await, 0);
        let read = Admission { tenant: "acme", now_ms: unix_ms(), rpm: None, tpm: None, budget: old_budget, reserve_nusd: 0, lease: "", lease_ttl_ms: 0 };
        let spend = limiter.primary.admit(&read).await.unwrap().spend;
        assert_eq!((spend.reserved_nusd, spend.daily_nusd), (0, 500_000));
    }

    /// The in-process store with one step faulted, as a test sets it.
    #[derive(Debug, Default)]
    struct Faulty {
        inner: MemoryStore,
        /// Admissions are carried out and their answers never come (a client leaving during
        /// the round trip looks the same from here); `admitted` is told of each.
        admit_answers_lost: bool,
        admitted: tokio::sync::Notify,
        /// The first settlement is carried out and its answer lost (a Redis reply that missed
        /// `timeout_ms`), so the limiter runs it again; `settled` counts the runs.
        first_settle_answer_lost: bool,
        settled: std::sync::atomic::AtomicUsize,
        /// Admissions fail as to an unreachable store (Redis gone).
        down: std::sync::atomic::AtomicBool,
    }

    #[async_trait::async_trait]
    impl Store for Faulty {
        async fn admit(&self, admission: &Admission<'_>) -> Result<Outcome, StoreError> {
            if self.down.load(Relaxed) {
                return Err(StoreError::unreachable("down"));
            }
            let outcome = self.inner.admit(admission).await?;
            if self.admit_answers_lost {
                self.admitted.notify_one();
                return std::future::pending().await;
            }
            Ok(outcome)
        }
        async fn settle(&self, settlement: &Settlement<'_>) -> Result<Spend, StoreError> {
            let spend = self.inner.settle(settlement).await?;
            if self.settled.fetch_add(1, Relaxed) == 0 && self.first_settle_answer_lost {
                return Err(StoreError::unanswered("the reply missed its timeout"));
            }
            Ok(spend)
        }
        async fn renew(&self, tenant: &str, leases: &[&str], now_ms: u64, lease_ttl_ms: u64) -> Result<usize, StoreError> {
            self.inner.renew(tenant, leases, now_ms, lease_ttl_ms).await
        }
    }

    /// The test limiter over `store`.
    fn limiter_over(store: &Arc<Faulty>) -> Limiter {
        Limiter { primary: Arc::clone(store) as Arc<dyn Store>, ..limiter() }
    }

    #[tokio::test]
    async fn a_request_dropped_during_its_admission_gives_its_reservation_back() {
        let store = Arc::new(Faulty { admit_answers_lost: true, ..Faulty::default() });
        let limiter = Arc::new(limiter_over(&store));
        let admitting = {
            let limiter = Arc::clone(&limiter);
            tokio::spawn(async move { limiter.admit("acme", 10, 1_000_000, true, "gone", &mut (None, None)).await.map(|_| ()) })
        };
        store.admitted.notified().await;
        assert_eq!(reserved_in(&store.inner, &limiter, unix_ms()).await, 1_000_000, "the store made the reservation");
        admitting.abort();
        assert!(admitting.await.unwrap_err().is_cancelled());
        assert_eq!(limiter.finish_settlements(Duration::from_secs(10)).await, 0);
        assert_eq!(reserved_in(&store.inner, &limiter, unix_ms()).await, 0, "the lease was closed, not left to lapse");
    }

    #[tokio::test]
    async fn a_settlement_without_a_lease_that_ran_twice_counts_once() {
        let store = Arc::new(Faulty { first_settle_answer_lost: true, ..Faulty::default() });
        let limiter = Arc::new(limiter_over(&store));
        // Nothing reserved (a local answer priced by `cost_per_mtok`): no lease.
        let ticket = match limiter.admit("acme", 10, 0, false, "req-local", &mut (None, None)).await.unwrap() {
            Admitted::Yes(ticket) => ticket,
            Admitted::OverBudgetTryLocal { .. } => panic!("over budget"),
        };
        assert!(ticket.lease.is_none());
        let record = UsageRecord { ts: unix_ms(), request_id: "req-local".into(), tenant: "acme".into(), cost_usd: 0.0005, ..UsageRecord::default() };
        limiter.settle(&ticket, &record);
        assert_eq!(limiter.finish_settlements(Duration::from_secs(10)).await, 0);
        assert_eq!(store.settled.load(Relaxed), 2, "the lost answer was retried");
        let (_, _, spend) = limiter.budgets().remove(0);
        assert_eq!(spend.daily_nusd, 500_000, "the retry did not add the cost again");
    }

    #[tokio::test]
    async fn fail_open_starts_from_the_spend_last_seen_in_the_shared_store() {
        let store = Arc::new(Faulty::default());
        let limiter = Arc::new(Limiter { fallback: Some(MemoryStore::default()), ..limiter_over(&store) });
        // 0.90 of the day's 1.00 USD spent while the shared store answered.
        let spent = admitted(&limiter, "spent").await;
        limiter.settle(&spent, &UsageRecord { ts: unix_ms(), tenant: "acme".into(), cost_usd: 0.9, ..UsageRecord::default() });
        assert_eq!(limiter.finish_settlements(Duration::from_secs(10)).await, 0);
        store.down.store(true, Relaxed);
        // A 0.20 reservation does not fit what is left (it did: the fallback started at zero).
        let refused = limiter.admit("acme", 10, 200_000_000, true, "too-much", &mut (None, None)).await;
        assert!(matches!(refused, Err(ApiError::BudgetExceeded { .. })), "{refused:?}");
        assert!(matches!(limiter.admit("acme", 10, 50_000_000, true, "fits", &mut (None, None)).await, Ok(Admitted::Yes(_))));
    }

    #[test]
    fn leases_are_renewed_well_within_their_lifetime() {
        let mut limiter = limiter();
        assert_eq!(limiter.lease_renewal_interval(), Duration::from_mins(1), "600 s leases");
        limiter.lease_ttl_ms = 3_000;
        assert_eq!(limiter.lease_renewal_interval(), Duration::from_secs(1));
    }
}
