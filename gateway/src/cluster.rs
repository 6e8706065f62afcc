//! Cluster-wide figures for `/admin/stats` when several replicas share a Redis: every replica
//! publishes its per-minute rollups (the current and the previous minute, every few seconds) and
//! a heartbeat; any replica's `/admin/stats` merges everyone's minutes with its own. After a
//! failed publish, or when Redis has lost this replica's minutes (restarted empty), the whole day
//! is published again.

use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Arc;

use crate::stats::Rollups;
use crate::store::RedisStore;

/// Minutes of figures kept in Redis (a day, like the rollups) plus an hour of slack.
const KEEP_S: i64 = 25 * 3600;
/// A replica not heard from for this long is no longer listed.
const GONE_AFTER_MS: u64 = 30_000;
const REPLICAS_KEY: &str = "switchyard:replicas";

fn minute_key(minute: u64) -> String {
    format!("switchyard:rollup:{minute}")
}

/// Present while Redis holds what `replica` published (it lives as long as the minutes do).
fn published_key(replica: &str) -> String {
    format!("switchyard:rollup-published:{replica}")
}

/// One replica's membership in the cluster view.
pub struct Cluster {
    store: Arc<RedisStore>,
    /// This replica's id (random at start).
    pub replica: String,
    /// The last publish failed: the next one sends every minute of the day.
    republish: AtomicBool,
}

/// A replica heard from recently.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Replica {
    /// Its id.
    pub id: String,
    /// When it last published, Unix ms.
    pub seen_ms: u64,
}

impl Cluster {
    /// The view through `store`, for a replica called `replica`.
    pub fn new(store: Arc<RedisStore>) -> Self {
        Self { store, replica: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned(), republish: AtomicBool::new(true) }
    }

    /// Publishes this replica's last two minutes — or, when Redis lost them or the last publish
    /// failed, every minute of the day — and its heartbeat.
    pub async fn publish(&self, rollups: &Rollups, now_ms: u64) -> Result<(), redis::RedisError> {
        let result = self.publish_once(rollups, now_ms).await;
        if result.is_err() {
            self.republish.store(true, Relaxed);
        }
        result
    }

    async fn publish_once(&self, rollups: &Rollups, now_ms: u64) -> Result<(), redis::RedisError> {
        let timed_out = || redis::RedisError::from(std::io::Error::other("Redis did not answer in time"));
        let mut conn = self.store.connection().await.map_err(|e| redis::RedisError::from(std::io::Error::other(e.reason)))?;
        let marker = published_key(&self.replica);
        let mut exists = redis::cmd("EXISTS");
        exists.arg(&marker);
        let held = tokio::time::timeout(self.store.timeout(), exists.query_async::<bool>(&mut conn)).await.map_err(|_| timed_out())??;
        let whole_day = !held || self.republish.swap(false, Relaxed);
        let now_minute = now_ms / 60_000;
        let first = now_minute.saturating_sub(if whole_day { 24 * 60 - 1 } else { 1 });
        let mut pipe = redis::pipe();
        for minute in first..=now_minute {
            if let Some(json) = rollups.minute_json(minute) {
                pipe.hset(minute_key(minute), &self.replica, json).ignore().expire(minute_key(minute), KEEP_S).ignore();
            }
        }
        pipe.set_ex(&marker, 1, u64::try_from(KEEP_S).unwrap_or(u64::MAX)).ignore();
        pipe.zadd(REPLICAS_KEY, &self.replica, now_ms).ignore();
        pipe.zrembyscore(REPLICAS_KEY, 0, now_ms.saturating_sub(GONE_AFTER_MS)).ignore();
        tokio::time::timeout(self.store.timeout() * 4, pipe.query_async::<()>(&mut conn)).await.map_err(|_| timed_out())?
    }

    /// Every replica's figures of the last day merged with this one's own (which are always
    /// current), and the replicas heard from lately.
    pub async fn merged(&self, own: &Rollups, now_ms: u64) -> Result<(Rollups, Vec<Replica>), redis::RedisError> {
        let now_minute = now_ms / 60_000;
        let first = now_minute.saturating_sub(24 * 60 - 1);
        let mut pipe = redis::pipe();
        for minute in first..=now_minute {
            pipe.hgetall(minute_key(minute));
        }
        pipe.zrangebyscore_withscores(REPLICAS_KEY, now_ms.saturating_sub(GONE_AFTER_MS), "+inf");
        let mut conn = self.store.connection().await.map_err(|e| redis::RedisError::from(std::io::Error::other(e.reason)))?;
        let mut replies: Vec<redis::Value> = tokio::time::timeout(self.store.timeout() * 4, pipe.query_async(&mut conn))
            .await
            .map_err(|_| redis::RedisError::from(std::io::Error::other("Redis did not answer in time")))??;
        let replicas: Vec<(String, u64)> = redis::from_redis_value(replies.pop().unwrap_or(redis::Value::Nil))?;
        let merged = Rollups::default();
        merged.absorb(own);
        for (minute, reply) in (first..=now_minute).zip(replies) {
            let fields: std::collections::HashMap<String, String> = redis::from_redis_value(reply)?;
            for (replica, json) in fields {
                if replica != self.replica {
                    merged.absorb_json(minute, &json);
                }
            }
        }
        let replicas = replicas.into_iter().map(|(id, seen_ms)| Replica { id, seen_ms }).collect();
        Ok((merged, replicas))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::accounting::UsageRecord;
    use crate::store::tests::{redis_store, PrivateRedis};

    /// Requests in the last hour as `reader` sees the cluster at `now_ms`.
    async fn cluster_requests(reader: &Cluster, now_ms: u64) -> u64 {
        let (merged, _) = reader.merged(&Rollups::default(), now_ms).await.expect("Redis answers");
        merged.window(now_ms / 60_000, 60)["total"]["requests"].as_u64().unwrap_or(0)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn minutes_redis_lost_are_published_again() {
        let redis = PrivateRedis::start();
        let store = Arc::new(redis_store(&redis));
        let (publisher, reader) = (Cluster::new(Arc::clone(&store)), Cluster::new(Arc::clone(&store)));
        let now_ms = 1_794_744_000_000;
        let rollups = Rollups::default();
        // Half an hour old: outside the two minutes every publish sends.
        rollups.add(&UsageRecord { ts: now_ms - 30 * 60_000, tenant: "t".into(), target: "local/m".into(), status: 200, ..UsageRecord::default() }, 0.0);
        rollups.add(&UsageRecord { ts: now_ms, tenant: "t".into(), target: "local/m".into(), status: 200, ..UsageRecord::default() }, 0.0);
        publisher.publish(&rollups, now_ms).await.expect("published");
        assert_eq!(cluster_requests(&reader, now_ms).await, 2, "the first publish sends the whole day");
        // Redis restarts empty.
        let mut conn = store.connection().await.expect("connected");
        redis::cmd("FLUSHALL").query_async::<()>(&mut conn).await.expect("flushed");
        assert_eq!(cluster_requests(&reader, now_ms).await, 0);
        publisher.publish(&rollups, now_ms + 5_000).await.expect("published");
        assert_eq!(cluster_requests(&reader, now_ms + 5_000).await, 2, "the lost minutes are sent again");
    }
}
