//! The Redis store: every replica pointed at one Redis shares limits, spend and reservations.
//! Each admission and each settlement is one Lua script (`EVALSHA`, one round trip); the
//! connection reconnects by itself when Redis comes back.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;

use super::{budget_retry_after_ms, Admission, Outcome, Refusal, Settlement, Store, StoreError};
use crate::budgets::{Periods, Spend};
use crate::limits::MINUTE_MS;

/// What a replica does while Redis cannot be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnOutage {
    /// Remote-bound requests get 503; requests served only by the local engine keep flowing.
    #[default]
    FailClosed,
    /// Limits and budgets fall back to this replica's own store (logged and counted).
    FailOpen,
}

/// `[redis]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://[:password@]host:port[/db]` (`rediss://` is not built in).
    #[serde(default)]
    pub url: Option<String>,
    /// The environment variable holding the URL instead, when it carries a password (secrets
    /// are read from the environment, never written in the file).
    #[serde(default)]
    pub url_env: Option<String>,
    /// `fail_closed` (default) or `fail_open`.
    #[serde(default)]
    pub on_outage: OnOutage,
    /// A Redis step that takes longer counts as an outage.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// A reservation never settled (its replica died) is released after this long.
    #[serde(default = "default_lease_ttl_s")]
    pub lease_ttl_s: u64,
}

const fn default_timeout_ms() -> u64 {
    250
}
const fn default_lease_ttl_s() -> u64 {
    600
}

impl RedisConfig {
    /// What is wrong with it (the URL itself is never echoed: it may hold a password).
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        match (&self.url, &self.url_env) {
            (Some(url), None) if redis::Client::open(url.as_str()).is_err() => problems.push("redis.url is not a redis:// URL".to_owned()),
            (Some(_), None) | (None, Some(_)) => {}
            _ => problems.push("redis needs url or url_env (one of them)".to_owned()),
        }
        if self.timeout_ms == 0 {
            problems.push("redis.timeout_ms must be positive".to_owned());
        }
        if self.lease_ttl_s == 0 {
            problems.push("redis.lease_ttl_s must be positive".to_owned());
        }
        problems
    }
}

/// How often a replica without a connection tries to make one.
const CONNECT_EVERY: Duration = Duration::from_millis(500);

/// Limits and budgets in Redis.
pub struct RedisStore {
    client: redis::Client,
    timeout: Duration,
    manager: Mutex<Option<ConnectionManager>>,
    last_connect: tokio::sync::Mutex<Option<Instant>>,
    admit: redis::Script,
    settle: redis::Script,
    renew: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the URL: it may carry a password.
        f.debug_struct("RedisStore").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

const PRELUDE: &str = include_str!("purge.lua");

/// Keys of one tenant; the `{tenant}` hash tag keeps them on one Redis Cluster slot.
struct Keys(String);

impl Keys {
    fn new(tenant: &str) -> Self {
        Self(format!("switchyard:{{{tenant}}}:"))
    }
    fn key(&self, suffix: &str) -> String {
        format!("{}{suffix}", self.0)
    }
    fn spend_day(&self, p: Periods) -> String {
        self.key(&format!("spend:day:{}", p.day))
    }
    fn spend_month(&self, p: Periods) -> String {
        self.key(&format!("spend:month:{}", p.month))
    }
    /// The keys both scripts take after their rate keys, in their `KEYS` order: spend today,
    /// spend this month, leases, lease amounts, reserved.
    fn add_money(&self, invocation: &mut redis::ScriptInvocation<'_>, p: Periods) {
        invocation
            .key(self.spend_day(p))
            .key(self.spend_month(p))
            .key(self.key("leases"))
            .key(self.key("lease_amounts"))
            .key(self.key("reserved"));
    }
}

/// Spend keys outlive their period by this much (for late readers).
const SPEND_KEPT_MS: u64 = 2 * 86_400_000;

impl RedisStore {
    /// A store for `config` (connects on first use and reconnects by itself).
    pub fn new(config: &RedisConfig) -> Result<Self, StoreError> {
        let (url, key) = match (&config.url, &config.url_env) {
            (Some(url), _) => (url.clone(), "redis.url".to_owned()),
            (None, Some(var)) => (
                std::env::var(var).map_err(|_| StoreError::unreachable(format!("redis.url_env: environment variable {var} is not set")))?,
                format!("redis.url_env ({var})"),
            ),
            (None, None) => return Err(StoreError::unreachable("redis needs url or url_env")),
        };
        let client = redis::Client::open(url.as_str()).map_err(|_| StoreError::unreachable(format!("{key} is not a redis:// URL")))?;
        Ok(Self {
            client,
            timeout: Duration::from_millis(config.timeout_ms),
            manager: Mutex::new(None),
            last_connect: tokio::sync::Mutex::new(None),
            admit: redis::Script::new(&format!("{PRELUDE}\n{}", include_str!("admit.lua"))),
            settle: redis::Script::new(&format!("{PRELUDE}\n{}", include_str!("settle.lua"))),
            renew: redis::Script::new(&format!("{PRELUDE}\n{}", include_str!("renew.lua"))),
        })
    }

    /// How long one Redis step may take.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// A connection: the live one, or a new one (one attempt at a time, and none for
    /// [`CONNECT_EVERY`] after one failed). A caller waits for another's attempt at most the
    /// store's timeout: behind a Redis that accepts connections but does not answer (a long
    /// command, a paused process), callers queued one attempt after another took seconds each.
    pub async fn connection(&self) -> Result<ConnectionManager, StoreError> {
        if let Some(manager) = self.manager.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            return Ok(manager.clone());
        }
        let Ok(mut last) = tokio::time::timeout(self.timeout, self.last_connect.lock()).await else {
            return Err(StoreError::unreachable("Redis is unreachable (a connection attempt is under way)"));
        };
        if let Some(manager) = self.manager.lock().unwrap_or_else(std::sync::PoisonError::into_inner).as_ref() {
            return Ok(manager.clone());
        }
        // Counted from the end of the last attempt: one that took CONNECT_EVERY or longer would
        // otherwise let every caller queued behind it make its own.
        if last.is_some_and(|t| t.elapsed() < CONNECT_EVERY) {
            return Err(StoreError::unreachable("Redis is unreachable (next connection attempt shortly)"));
        }
        let attempt = self.connect().await;
        *last = Some(Instant::now());
        attempt
    }

    /// One connection attempt, within twice the store's timeout.
    async fn connect(&self) -> Result<ConnectionManager, StoreError> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(self.timeout))
            .set_response_timeout(Some(self.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let manager = tokio::time::timeout(self.timeout * 2, ConnectionManager::new_with_config(self.client.clone(), config))
            .await
            .map_err(|_| StoreError::unreachable("connecting to Redis timed out"))
            .and_then(|connected| connected.map_err(|e| StoreError::unreachable(format!("connecting to Redis: {}", connect_failure(&e)))))
            // Logged here, once per attempt: callers in between only see "unreachable", and a
            // refused password must not read as a network problem.
            .inspect_err(|err| tracing::warn!(error = %err, "could not connect to Redis"))?;
        *self.manager.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = Some(manager.clone());
        tracing::info!("connected to Redis");
        Ok(manager)
    }

    /// Runs a script invocation under the timeout.
    async fn run(&self, invocation: redis::ScriptInvocation<'_>) -> Result<Vec<i64>, StoreError> {
        let mut conn = self.connection().await?;
        let err = match tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn)).await {
            Ok(Ok(values)) => return Ok(values),
            Ok(Err(e)) => StoreError::unanswered(format!("Redis: {}", e.kind_str())),
            Err(_) => StoreError::unanswered(format!("Redis did not answer within {} ms", self.timeout.as_millis())),
        };
        // Start over with a fresh connection next time (at most every CONNECT_EVERY), whatever
        // state the old one's own reconnection is in.
        *self.manager.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        Err(err)
    }
}

trait KindStr {
    fn kind_str(&self) -> String;
}

impl KindStr for redis::RedisError {
    /// The error's kind and detail, never the URL.
    fn kind_str(&self) -> String {
        format!("{:?}{}", self.kind(), self.detail().map(|d| format!(": {d}")).unwrap_or_default())
    }
}

fn non_negative(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn limit_arg(limit: Option<u64>) -> i64 {
    limit.map_or(-1, |l| i64::try_from(l).unwrap_or(i64::MAX))
}

#[async_trait]
impl Store for RedisStore {
    async fn admit(&self, a: &Admission<'_>) -> Result<Outcome, StoreError> {
        let periods = Periods::at(a.now_ms);
        let keys = Keys::new(a.tenant);
        let budget = a.budget.unwrap_or_default();
        let mut invocation = self.admit.prepare_invoke();
        invocation.key(keys.key("rpm")).key(keys.key("tpm"));
        keys.add_money(&mut invocation, periods);
        invocation.key(keys.key("closed"));
        invocation
            .arg(a.now_ms)
            .arg(MINUTE_MS)
            .arg(a.rpm.map_or(0, |c| c.limit))
            .arg(a.rpm.map_or(0, |c| c.cost))
            .arg(a.tpm.map_or(0, |c| c.limit))
            .arg(a.tpm.map_or(0, |c| c.cost))
            .arg(if a.budget.is_some() { limit_arg(budget.daily_nusd) } else { -1 })
            .arg(if a.budget.is_some() { limit_arg(budget.monthly_nusd) } else { -1 })
            .arg(a.reserve_nusd)
            .arg(a.lease)
            .arg(a.now_ms + a.lease_ttl_ms)
            .arg(a.lease_ttl_ms * 2);
        let v = self.run(invocation).await?;
        let [refused, retry, rpm_left, tpm_left, day, month, reserved] = v[..] else {
            return Err(StoreError::unanswered(format!("unexpected reply from the admission script: {v:?}")));
        };
        let spend = Spend { daily_nusd: non_negative(day), monthly_nusd: non_negative(month), reserved_nusd: non_negative(reserved) };
        let refused = match refused {
            1 => Some(Refusal::Requests),
            2 => Some(Refusal::Tokens),
            3 => Some(Refusal::Budget),
            4 => Some(Refusal::Closed),
            _ => None,
        };
        let retry_after_ms = match refused {
            Some(Refusal::Budget) => budget_retry_after_ms(budget, spend, a.reserve_nusd, a.now_ms),
            _ => non_negative(retry),
        };
        Ok(Outcome {
            refused,
            retry_after_ms,
            rpm_remaining: a.rpm.map(|_| non_negative(rpm_left)),
            tpm_remaining: a.tpm.map(|_| non_negative(tpm_left)),
            spend,
        })
    }

    async fn settle(&self, s: &Settlement<'_>) -> Result<Spend, StoreError> {
        let periods = Periods::at(s.now_ms);
        let keys = Keys::new(s.tenant);
        let mut invocation = self.settle.prepare_invoke();
        invocation.key(keys.key("tpm"));
        keys.add_money(&mut invocation, periods);
        invocation.key(keys.key("closed"));
        invocation
            .arg(s.now_ms)
            .arg(MINUTE_MS)
            .arg(s.lease.unwrap_or(""))
            .arg(s.cost_nusd)
            // Relative lifetimes: Redis's clock need not agree with this replica's.
            .arg(periods.day_end_ms + SPEND_KEPT_MS - s.now_ms)
            .arg(periods.month_end_ms + SPEND_KEPT_MS - s.now_ms)
            .arg(s.tpm.map_or(0, |c| c.limit))
            .arg(s.tpm.map_or(0, |c| c.cost))
            .arg(s.now_ms + s.closed_for_ms)
            .arg(s.closed_for_ms * 2);
        let v = self.run(invocation).await?;
        let [day, month, reserved] = v[..] else {
            return Err(StoreError::unanswered(format!("unexpected reply from the settlement script: {v:?}")));
        };
        Ok(Spend { daily_nusd: non_negative(day), monthly_nusd: non_negative(month), reserved_nusd: non_negative(reserved) })
    }

    async fn renew(&self, tenant: &str, leases: &[&str], now_ms: u64, lease_ttl_ms: u64) -> Result<usize, StoreError> {
        let keys = Keys::new(tenant);
        let mut invocation = self.renew.prepare_invoke();
        invocation.key(keys.key("leases")).key(keys.key("lease_amounts")).key(keys.key("reserved"));
        invocation.arg(now_ms).arg(now_ms + lease_ttl_ms).arg(lease_ttl_ms * 2);
        for lease in leases {
            invocation.arg(*lease);
        }
        let v = self.run(invocation).await?;
        let [renewed] = v[..] else {
            return Err(StoreError::unanswered(format!("unexpected reply from the renewal script: {v:?}")));
        };
        Ok(usize::try_from(renewed).unwrap_or(0))
    }
}

/// What went wrong connecting, in words an operator can act on (a refused connection, a timeout,
/// a refused password…), never the URL (it may hold the password).
fn connect_failure(err: &redis::RedisError) -> String {
    if err.is_connection_refusal() {
        "connection refused".to_owned()
    } else if err.is_timeout() {
        "timed out".to_owned()
    } else if err.is_connection_dropped() {
        "connection dropped".to_owned()
    } else {
        err.kind_str()
    }
}
