//! One behaviour suite, run against the in-process store and against a private `redis-server`
//! (started on a free port for these tests and stopped by pid).

use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use super::*;
use crate::budgets::{BudgetLimits, Periods};

/// A `redis-server` of our own, killed on drop.
pub(crate) struct PrivateRedis {
    child: Child,
    port: u16,
}

impl PrivateRedis {
    pub(crate) fn start() -> Self {
        Self::start_on(free_port())
    }

    /// One on `port` (a Redis that comes back where an earlier one was).
    pub(crate) fn start_on(port: u16) -> Self {
        Self { child: spawn_redis(port), port }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }
}

/// A port nothing listens on (the OS's pick).
pub(crate) fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts `redis-server` on `port` and returns once it says it accepts connections.
fn spawn_redis(port: u16) -> Child {
    use std::io::BufRead as _;
    let mut child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("redis-server is installed (make test installs it)");
    let stdout = child.stdout.take().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines();
    let ready = lines.by_ref().map_while(Result::ok).any(|line| line.contains("Ready to accept connections"));
    assert!(ready, "redis-server on port {port} exited before it was ready");
    // Keep draining its log so it never blocks on a full pipe.
    std::thread::spawn(move || lines.for_each(drop));
    child
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `fail_closed` on Redis at `port`, each step allowed `timeout_ms`.
pub(crate) fn redis_config(port: u16, timeout_ms: u64) -> RedisConfig {
    RedisConfig {
        url: Some(format!("redis://127.0.0.1:{port}")),
        url_env: None,
        on_outage: redis::OnOutage::FailClosed,
        timeout_ms,
        lease_ttl_s: 600,
    }
}

pub(crate) fn redis_store(redis: &PrivateRedis) -> RedisStore {
    RedisStore::new(&redis_config(redis.port, 2000)).unwrap()
}

/// A limiter for tenant `acme` (a $1 daily budget) on Redis at `port`, steps timing out after 200 ms.
fn budgeted_limiter(port: u16, metrics: Arc<crate::metrics::Metrics>) -> Arc<crate::admission::Limiter> {
    let config = redis_config(port, 200);
    let store = Arc::new(RedisStore::new(&config).unwrap());
    let tenant: crate::tenants::TenantConfig = toml::from_str("name = \"acme\"\nbudget = { daily_usd = 1.0 }\n").unwrap();
    Arc::new(crate::admission::Limiter::new(&[tenant], Some((store, &config)), metrics))
}

/// 2026-11-15T12:00:00Z (mid-month: the next day is in the same month).
const NOON: u64 = 1_794_744_000_000;

fn admission<'a>(tenant: &'a str, lease: &'a str, now_ms: u64) -> Admission<'a> {
    Admission { tenant, now_ms, rpm: None, tpm: None, budget: None, reserve_nusd: 0, lease, lease_ttl_ms: 60_000 }
}

fn settlement<'a>(tenant: &'a str, lease: Option<&'a str>, cost_nusd: u64, now_ms: u64) -> Settlement<'a> {
    Settlement { tenant, now_ms, lease, cost_nusd, tpm: None, closed_for_ms: 60_000 }
}

const BUDGET: BudgetLimits = BudgetLimits { daily_nusd: Some(1_000), monthly_nusd: Some(5_000) };

async fn rate_limits_refill_and_refuse_with_retry_after(store: &dyn Store) {
    let rpm = Some(RateCheck { limit: 3, cost: 1 });
    for expected_left in [2, 1, 0] {
        let o = store.admit(&Admission { rpm, ..admission("rates", "", NOON) }).await.unwrap();
        assert_eq!((o.refused, o.rpm_remaining), (None, Some(expected_left)));
    }
    let o = store.admit(&Admission { rpm, ..admission("rates", "", NOON) }).await.unwrap();
    assert_eq!((o.refused, o.retry_after_ms, o.rpm_remaining), (Some(Refusal::Requests), 20_000, Some(0)));
    let o = store.admit(&Admission { rpm, ..admission("rates", "", NOON + 20_000) }).await.unwrap();
    assert_eq!(o.refused, None, "one request's share of the minute has refilled");
    // Tokens: a refused token check takes no request either.
    let tpm = Some(RateCheck { limit: 100, cost: 150 });
    let o = store.admit(&Admission { rpm: Some(RateCheck { limit: 10, cost: 1 }), tpm, ..admission("tokens", "", NOON) }).await.unwrap();
    assert_eq!((o.refused, o.rpm_remaining), (Some(Refusal::Tokens), Some(10)));
    // Completion tokens settle past the limit; the next request waits for them.
    let small = Some(RateCheck { limit: 100, cost: 10 });
    assert_eq!(store.admit(&Admission { tpm: small, ..admission("tokens", "", NOON) }).await.unwrap().refused, None);
    store.settle(&Settlement { tpm: Some(RateCheck { limit: 100, cost: 500 }), ..settlement("tokens", None, 0, NOON) }).await.unwrap();
    let o = store.admit(&Admission { tpm: small, ..admission("tokens", "", NOON + 1_000) }).await.unwrap();
    assert_eq!(o.refused, Some(Refusal::Tokens));
    // A limit that does not divide the minute's microseconds is kept exactly (40M was 60M).
    let big = |cost| Some(RateCheck { limit: 40_000_000, cost });
    let o = store.admit(&Admission { tpm: big(1_000), ..admission("big", "", NOON) }).await.unwrap();
    assert_eq!((o.refused, o.tpm_remaining), (None, Some(39_999_000)));
    let o = store.admit(&Admission { tpm: big(39_999_000), ..admission("big", "", NOON) }).await.unwrap();
    assert_eq!((o.refused, o.tpm_remaining), (None, Some(0)));
    assert_eq!(store.admit(&Admission { tpm: big(1), ..admission("big", "", NOON) }).await.unwrap().refused, Some(Refusal::Tokens));
}

async fn reservations_hold_money_until_settled(store: &dyn Store) {
    let reserve = |lease: &'static str, nusd: u64| Admission { budget: Some(BUDGET), reserve_nusd: nusd, ..admission("money", lease, NOON) };
    let a = store.admit(&reserve("a", 600)).await.unwrap();
    assert_eq!((a.refused, a.spend.reserved_nusd), (None, 600));
    let b = store.admit(&reserve("b", 600)).await.unwrap();
    assert_eq!(b.refused, Some(Refusal::Budget), "600 + 600 > 1000");
    assert_eq!(b.retry_after_ms, 1_000, "only a request in flight holds the money: retry soon");
    assert_eq!(b.spend.reserved_nusd, 600, "a refused reservation reserves nothing");
    // Settling releases the rest of the reservation.
    let spend = store.settle(&settlement("money", Some("a"), 250, NOON)).await.unwrap();
    assert_eq!((spend.daily_nusd, spend.monthly_nusd, spend.reserved_nusd), (250, 250, 0));
    assert_eq!(store.admit(&reserve("b", 600)).await.unwrap().refused, None);
    store.settle(&settlement("money", Some("b"), 600, NOON)).await.unwrap();
    // 850 spent today: a 200 reservation no longer fits until midnight.
    let c = store.admit(&reserve("c", 200)).await.unwrap();
    assert_eq!(c.refused, Some(Refusal::Budget));
    assert_eq!(c.retry_after_ms, Periods::at(NOON).day_end_ms - NOON);
    // Free requests (local, unpriced) are never refused.
    assert_eq!(store.admit(&reserve("free", 0)).await.unwrap().refused, None);
    // The next day starts afresh; the month remembers.
    let tomorrow = NOON + 86_400_000;
    let d = store.admit(&Admission { now_ms: tomorrow, ..reserve("d", 200) }).await.unwrap();
    assert_eq!((d.refused, d.spend.daily_nusd, d.spend.monthly_nusd), (None, 0, 850));
}

async fn a_lapsed_lease_gives_its_money_back(store: &dyn Store) {
    let a = Admission { budget: Some(BUDGET), reserve_nusd: 900, lease_ttl_ms: 5_000, ..admission("crash", "lost", NOON) };
    assert_eq!(store.admit(&a).await.unwrap().refused, None);
    let blocked = Admission { budget: Some(BUDGET), reserve_nusd: 900, ..admission("crash", "next", NOON + 4_999) };
    assert_eq!(store.admit(&blocked).await.unwrap().refused, Some(Refusal::Budget));
    // The replica that held "lost" never settles; after its lease the money is free again.
    let later = Admission { now_ms: NOON + 5_000, ..blocked };
    let o = store.admit(&later).await.unwrap();
    assert_eq!((o.refused, o.spend.reserved_nusd), (None, 900));
    // A settlement arriving after its lease lapsed still counts the spend, and frees nothing twice.
    let spend = store.settle(&settlement("crash", Some("lost"), 100, NOON + 6_000)).await.unwrap();
    assert_eq!((spend.daily_nusd, spend.reserved_nusd), (100, 900));
}

async fn a_renewed_lease_keeps_its_money_reserved(store: &dyn Store) {
    let running = Admission { budget: Some(BUDGET), reserve_nusd: 900, lease_ttl_ms: 5_000, ..admission("long", "stream", NOON) };
    assert_eq!(store.admit(&running).await.unwrap().refused, None);
    // Its replica is alive and renews it; a lease never admitted is not created.
    assert_eq!(store.renew("long", &["stream", "never-admitted"], NOON + 4_000, 5_000).await.unwrap(), 1);
    let next = Admission { budget: Some(BUDGET), reserve_nusd: 900, ..admission("long", "next", NOON + 8_000) };
    let o = store.admit(&next).await.unwrap();
    assert_eq!((o.refused, o.spend.reserved_nusd), (Some(Refusal::Budget), 900), "still held past its first expiry");
    // Renewals stop (the replica died): it lapses at the renewed expiry, and is not brought back.
    let o = store.admit(&Admission { now_ms: NOON + 9_000, ..next }).await.unwrap();
    assert_eq!((o.refused, o.spend.reserved_nusd), (None, 900), "only the new reservation is held");
    assert_eq!(store.renew("long", &["stream"], NOON + 9_500, 5_000).await.unwrap(), 0);
    // A settled lease is not renewed either.
    store.settle(&settlement("long", Some("next"), 0, NOON + 9_600)).await.unwrap();
    assert_eq!(store.renew("long", &["next"], NOON + 9_700, 5_000).await.unwrap(), 0);
}

async fn a_settlement_run_twice_counts_once(store: &dyn Store) {
    let a = Admission { budget: Some(BUDGET), reserve_nusd: 600, ..admission("twice", "x", NOON) };
    assert_eq!(store.admit(&a).await.unwrap().refused, None);
    store.settle(&settlement("twice", Some("x"), 250, NOON + 10)).await.unwrap();
    // The same settlement again (a timed-out attempt Redis carried out late, and its retry).
    let spend = store.settle(&settlement("twice", Some("x"), 250, NOON + 20)).await.unwrap();
    assert_eq!((spend.daily_nusd, spend.monthly_nusd, spend.reserved_nusd), (250, 250, 0));
    // Once the closed lease is forgotten, a repeat would count again: it is kept long enough.
    let spend = store.settle(&settlement("twice", Some("x"), 250, NOON + 10 + 59_999)).await.unwrap();
    assert_eq!(spend.daily_nusd, 250);
}

async fn an_admission_run_after_its_lease_closed_takes_nothing(store: &dyn Store) {
    // The replica gave up waiting for the admission and closed its lease; Redis then ran it.
    store.settle(&settlement("late", Some("gave-up"), 0, NOON)).await.unwrap();
    let rpm = Some(RateCheck { limit: 2, cost: 1 });
    let a = Admission { rpm, budget: Some(BUDGET), reserve_nusd: 600, ..admission("late", "gave-up", NOON + 100) };
    let o = store.admit(&a).await.unwrap();
    assert_eq!((o.refused, o.spend.reserved_nusd), (Some(Refusal::Closed), 0));
    // Nothing was taken: both requests of the minute are still there, and all the money.
    let next = Admission { lease: "next", reserve_nusd: 1_000, ..a.clone() };
    let o = store.admit(&next).await.unwrap();
    assert_eq!((o.refused, o.rpm_remaining, o.spend.reserved_nusd), (None, Some(1), 1_000));
}

async fn a_settlement_from_before_midnight_counts_towards_its_own_day(store: &dyn Store) {
    // Two records dropped a moment either side of midnight; the later one's settlement lands
    // first. The earlier one belongs to a day that is over: it must not empty the new one.
    let midnight = Periods::at(NOON).day_end_ms;
    store.settle(&settlement("rollover", None, 300, midnight + 1)).await.unwrap();
    store.settle(&settlement("rollover", None, 200, midnight - 1)).await.unwrap();
    let o = store.admit(&Admission { budget: Some(BUDGET), reserve_nusd: 1, ..admission("rollover", "next", midnight + 2) }).await.unwrap();
    assert_eq!((o.spend.daily_nusd, o.spend.monthly_nusd), (300, 500), "today keeps its own; the month has both");
}

async fn tenants_are_independent(store: &dyn Store) {
    let a = Admission { budget: Some(BUDGET), reserve_nusd: 1_000, ..admission("t1", "x", NOON) };
    assert_eq!(store.admit(&a).await.unwrap().refused, None);
    let b = Admission { tenant: "t2", ..a.clone() };
    assert_eq!(store.admit(&b).await.unwrap().refused, None);
}

/// Many concurrent admissions never reserve more than the budget.
async fn concurrent_reservations_never_overcommit(store: Arc<dyn Store>) {
    let leases: Vec<String> = (0..64).map(|i| format!("race-{i}")).collect();
    let mut tasks = Vec::new();
    for lease in leases {
        let store = Arc::clone(&store);
        tasks.push(tokio::spawn(async move {
            let a = Admission { budget: Some(BUDGET), reserve_nusd: 70, ..admission("race", &lease, NOON) };
            store.admit(&a).await.unwrap().refused.is_none()
        }));
    }
    let mut admitted = 0;
    for t in tasks {
        admitted += u32::from(t.await.unwrap());
    }
    assert_eq!(admitted, 14, "floor(1000 / 70) reservations fit");
}

async fn suite(store: Arc<dyn Store>) {
    rate_limits_refill_and_refuse_with_retry_after(store.as_ref()).await;
    reservations_hold_money_until_settled(store.as_ref()).await;
    a_lapsed_lease_gives_its_money_back(store.as_ref()).await;
    a_renewed_lease_keeps_its_money_reserved(store.as_ref()).await;
    a_settlement_run_twice_counts_once(store.as_ref()).await;
    an_admission_run_after_its_lease_closed_takes_nothing(store.as_ref()).await;
    a_settlement_from_before_midnight_counts_towards_its_own_day(store.as_ref()).await;
    tenants_are_independent(store.as_ref()).await;
    concurrent_reservations_never_overcommit(store).await;
}

#[tokio::test]
async fn memory_store_behaviour() {
    suite(Arc::new(MemoryStore::default())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_behaviour() {
    let redis = PrivateRedis::start();
    suite(Arc::new(redis_store(&redis))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_reports_an_outage_and_recovers() {
    let mut redis = PrivateRedis::start();
    let store = redis_store(&redis);
    let a = Admission { rpm: Some(RateCheck { limit: 100, cost: 1 }), ..admission("outage", "", NOON) };
    assert!(store.admit(&a).await.is_ok());
    let port = redis.port;
    let _ = redis.child.kill();
    let _ = redis.child.wait();
    assert!(store.admit(&a).await.is_err(), "Redis is gone");
    redis.child = spawn_redis(port);
    // Reconnects on its own: within a few attempts (each at most CONNECT_EVERY apart).
    let mut recovered = false;
    for _ in 0..100 {
        if store.admit(&a).await.is_ok() {
            recovered = true;
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(recovered, "the store reconnects when Redis returns");
}

/// Redis stalls (a long command, a paused process) while one request settles and another is
/// being admitted: both time out here and Redis carries them out when it wakes up, beside the
/// settlement's retries and the closing of the refused admission's lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_redis_counts_each_settlement_once_and_keeps_no_reservation() {
    use crate::accounting::{unix_ms, UsageRecord};
    use crate::admission::Admitted;
    use crate::metrics::Metrics;
    let redis = PrivateRedis::start();
    let metrics = Arc::new(Metrics::new().unwrap());
    let limiter = budgeted_limiter(redis.port, Arc::clone(&metrics));
    let admitted = async |lease: &str| match limiter.admit("acme", 10, 1_000_000, true, lease, &mut (None, None)).await {
        Ok(Admitted::Yes(ticket)) => ticket,
        _ => panic!("admitted while Redis answers"),
    };
    // One request settled first: Redis then holds both scripts, and runs late calls of them
    // (a first call would fail there with NOSCRIPT, and the client load it itself).
    let first = admitted("first").await;
    let running = admitted("running").await;
    limiter.settle(&first, &UsageRecord { ts: unix_ms(), tenant: "acme".into(), ..UsageRecord::default() });
    assert_eq!(limiter.finish_settlements(std::time::Duration::from_secs(30)).await, 0);
    let signal = |sig: &str| {
        let status = Command::new("kill").args([sig, &redis.child.id().to_string()]).status().unwrap();
        assert!(status.success());
    };
    signal("-STOP");
    limiter.settle(&running, &UsageRecord { ts: unix_ms(), tenant: "acme".into(), cost_usd: 0.0005, ..UsageRecord::default() });
    let refused = limiter.admit("acme", 10, 1_000_000, true, "refused", &mut (None, None)).await;
    assert!(refused.is_err(), "refused while Redis does not answer (fail_closed)");
    signal("-CONT");
    assert_eq!(limiter.finish_settlements(std::time::Duration::from_secs(30)).await, 0);
    let retried = metrics.store_unavailable.with_label_values(&["settle_retry"]).get();
    assert!(retried >= 1, "the settlement timed out at least once while Redis was paused");
    limiter.refresh().await;
    let (_, _, spend) = limiter.budgets().remove(0);
    assert_eq!((spend.daily_nusd, spend.reserved_nusd), (500_000, 0), "spent once, nothing left reserved");
}

/// A Redis that accepts connections but answers nothing (stalled: a long command, a failover, a
/// network dropping its packets; here a listener that never replies): each caller is refused
/// within a few of the store's timeouts. They used to queue for one connection attempt after
/// another, each as long as two timeouts: a 6 s stall held requests 5.7 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_behind_a_stalled_redis_are_refused_within_a_few_timeouts() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Holds every connection open and reads nothing.
    std::thread::spawn(move || listener.incoming().map_while(Result::ok).collect::<Vec<_>>());
    // A 300 ms timeout, as 250 ms (the default) and longer make a connection attempt (two
    // timeouts) last past the 500 ms between attempts.
    let config = redis_config(port, 300);
    let store = Arc::new(RedisStore::new(&config).unwrap());
    let tenant: crate::tenants::TenantConfig = toml::from_str("name = \"acme\"\nbudget = { daily_usd = 1.0 }\n").unwrap();
    let limiter = Arc::new(crate::admission::Limiter::new(&[tenant], Some((store, &config)), Arc::new(crate::metrics::Metrics::new().unwrap())));
    let callers = (0..20).map(|i| {
        let limiter = Arc::clone(&limiter);
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            let outcome = limiter.admit("acme", 10, 1_000, true, &format!("caller-{i}"), &mut (None, None)).await;
            (outcome.is_err(), started.elapsed())
        })
    });
    for outcome in futures::future::join_all(callers).await {
        let (refused, waited) = outcome.unwrap();
        // One attempt (600 ms) or a wait for another's (300 ms), then the refusal; ten timeouts
        // leave room for a loaded machine, not for a queue of attempts (20 × 600 ms).
        assert!(refused && waited < std::time::Duration::from_secs(3), "refused {refused} after {waited:?}");
    }
}

/// An admission that never reached Redis (nothing listens) cannot run later: its lease is not
/// closed, so a long outage does not fill the settlement queue with closings.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admission_that_never_reached_redis_leaves_nothing_to_close() {
    let port = free_port();
    let limiter = budgeted_limiter(port, Arc::new(crate::metrics::Metrics::new().unwrap()));
    assert!(limiter.admit("acme", 10, 1_000_000, true, "never-sent", &mut (None, None)).await.is_err());
    assert_eq!(limiter.finish_settlements(std::time::Duration::ZERO).await, 0, "no lease to close");
}
