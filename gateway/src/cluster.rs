//! Cluster-wide figures for `/admin/stats` when several replicas share a Redis: every replica
//! publishes its per-minute rollups (the current and the previous minute, every few seconds) and
//! a heartbeat; any replica's `/admin/stats` merges everyone's minutes with its own.

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

/// One replica's membership in the cluster view.
pub struct Cluster {
    store: Arc<RedisStore>,
    /// This replica's id (random at start).
    pub replica: String,
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
        Self { store, replica: uuid::Uuid::new_v4().simple().to_string()[..12].to_owned() }
    }

    /// Publishes this replica's last two minutes and its heartbeat (one pipelined round trip).
    pub async fn publish(&self, rollups: &Rollups, now_ms: u64) -> Result<(), redis::RedisError> {
        let now_minute = now_ms / 60_000;
        let mut pipe = redis::pipe();
        for minute in [now_minute.saturating_sub(1), now_minute] {
            if let Some(json) = rollups.minute_json(minute) {
                pipe.hset(minute_key(minute), &self.replica, json).ignore().expire(minute_key(minute), KEEP_S).ignore();
            }
        }
        pipe.zadd(REPLICAS_KEY, &self.replica, now_ms).ignore();
        pipe.zrembyscore(REPLICAS_KEY, 0, now_ms.saturating_sub(GONE_AFTER_MS)).ignore();
        let mut conn = self.store.connection().await.map_err(|e| redis::RedisError::from(std::io::Error::other(e.0)))?;
        tokio::time::timeout(self.store.timeout(), pipe.query_async::<()>(&mut conn))
            .await
            .map_err(|_| redis::RedisError::from(std::io::Error::other("Redis did not answer in time")))?
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
        let mut conn = self.store.connection().await.map_err(|e| redis::RedisError::from(std::io::Error::other(e.0)))?;
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
