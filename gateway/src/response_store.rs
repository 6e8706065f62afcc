//! Stored Responses-API responses (`store: true`, the default): what `GET /v1/responses/{id}` and
//! `previous_response_id` read. Kept per tenant — a key names the tenant, so one tenant can never
//! read, continue or delete another's — in this process (`moka`, bounded) and, with `[redis]`, in Redis
//! for every replica. Both expire after `[responses].ttl_s`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Deserialize;
use tracing::warn;

use crate::responses::StoredResponse;
use crate::store::RedisStore;

/// `[responses]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ResponsesConfig {
    /// How long a stored response can be read or continued.
    #[serde(default = "default_ttl_s")]
    pub ttl_s: u64,
    /// Stored responses kept in this process (Redis, when configured, holds them all).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Memory for them in this process, in MiB (each weighs its serialised size): whichever of
    /// the two limits is reached first evicts the least recently used.
    #[serde(default = "default_max_mib")]
    pub max_mib: u64,
}

fn default_max_mib() -> u64 {
    256
}

fn default_ttl_s() -> u64 {
    86_400
}

fn default_max_entries() -> u64 {
    10_000
}

impl Default for ResponsesConfig {
    fn default() -> Self {
        Self { ttl_s: default_ttl_s(), max_entries: default_max_entries(), max_mib: default_max_mib() }
    }
}

impl ResponsesConfig {
    /// What is wrong with the section.
    pub fn problems(&self) -> Vec<String> {
        let mut problems = Vec::new();
        if self.ttl_s == 0 {
            problems.push("responses.ttl_s must be at least 1".to_owned());
        }
        if self.max_mib == 0 || self.max_entries == 0 {
            problems.push("responses.max_entries and responses.max_mib must be at least 1".to_owned());
        }
        problems
    }
}

/// A response kept in this process.
#[derive(Clone)]
struct Kept {
    stored: Arc<StoredResponse>,
    /// Its serialised size.
    size: u32,
    /// False while Redis does not hold it (Redis failed when it was stored): this copy is then
    /// the only one, and is written to Redis when next read.
    in_redis: Arc<AtomicBool>,
    /// When it expires.
    until: Instant,
}

/// The stored responses.
pub struct ResponseStore {
    local: moka::sync::Cache<(String, String), Kept>,
    /// `(tenant, item id)` → the id of the stored response that holds the item (an output item,
    /// or one of its listed input items): what an `item_reference` names.
    items: moka::sync::Cache<(String, String), Arc<str>>,
    shared: Option<Arc<RedisStore>>,
    ttl: Duration,
}

impl std::fmt::Debug for ResponseStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseStore")
            .field("entries", &self.local.entry_count())
            .field("shared", &self.shared.is_some())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// `switchyard:response:<tenant, hex>:<id>`: the tenant hex-encoded, so that no tenant name and
/// id can spell another tenant's key.
fn redis_key(tenant: &str, id: &str) -> String {
    tenant_key("switchyard:response:", tenant, id)
}

/// `switchyard:response-item:<tenant, hex>:<item id>`: the response holding that item.
fn redis_item_key(tenant: &str, item: &str) -> String {
    tenant_key("switchyard:response-item:", tenant, item)
}

/// `<prefix><tenant, hex>:<id>`.
fn tenant_key(prefix: &str, tenant: &str, id: &str) -> String {
    use std::fmt::Write as _;
    let mut key = String::from(prefix);
    for b in tenant.bytes() {
        let _ = write!(key, "{b:02x}");
    }
    key.push(':');
    key.push_str(id);
    key
}

/// The items `stored` holds, with their ids: its output items and its listed input items.
fn item_ids_and_items(stored: &StoredResponse) -> impl Iterator<Item = (&str, &serde_json::Value)> {
    let output = stored.response.get("output").and_then(serde_json::Value::as_array).into_iter().flatten();
    output.chain(&stored.input_items).filter_map(|item| Some((item.get("id")?.as_str()?, item)))
}

fn item_ids(stored: &StoredResponse) -> impl Iterator<Item = &str> {
    item_ids_and_items(stored).map(|(id, _)| id)
}

impl ResponseStore {
    /// A store per `config`, shared through `redis` when given.
    pub fn new(config: &ResponsesConfig, redis: Option<Arc<RedisStore>>) -> Self {
        let ttl = Duration::from_secs(config.ttl_s);
        // One weight unit per KiB, at least 1, so that the count limit holds too: an entry
        // weighs max(its KiB, capacity / max_entries).
        let capacity_kib = config.max_mib.saturating_mul(1024);
        let per_entry_floor = u32::try_from((capacity_kib / config.max_entries.max(1)).max(1)).unwrap_or(u32::MAX);
        // LRU, not moka's default TinyLFU admission: that refuses a new entry in favour of often
        // read ones, so a response just stored (the one its client is about to continue) could
        // be gone at once while another tenant's hot entries stayed.
        let local = moka::sync::Cache::builder()
            .eviction_policy(moka::policy::EvictionPolicy::lru())
            .max_capacity(capacity_kib)
            .weigher(move |_, kept: &Kept| (kept.size / 1024).max(per_entry_floor))
            .time_to_live(ttl)
            .build();
        let items = moka::sync::Cache::builder().max_capacity(config.max_entries.saturating_mul(16)).time_to_live(ttl).build();
        Self { local, items, shared: redis, ttl }
    }

    /// Keeps `stored` under `id`. With Redis it is written before this returns, so that the next
    /// request, on any replica, finds it; a Redis failure keeps it in this process only (logged)
    /// until Redis takes it at its next read here.
    pub async fn put(&self, id: &str, stored: StoredResponse) {
        let stored = Arc::new(stored);
        let until = Instant::now() + self.ttl;
        let encoded = serde_json::to_vec(stored.as_ref());
        let size = encoded.as_ref().map_or(0, |b| u32::try_from(b.len()).unwrap_or(u32::MAX));
        let mut in_redis = false;
        if let Some(store) = &self.shared {
            match encoded {
                Ok(bytes) => match self.write(store, &stored, id, bytes, self.ttl).await {
                    Ok(()) => in_redis = true,
                    Err(error) => warn!(%error, "responses: could not store the response in Redis; kept in this replica until Redis takes it"),
                },
                Err(error) => warn!(%error, "responses: could not serialise the response"),
            }
        }
        let response_id: Arc<str> = Arc::from(id);
        for item in item_ids(&stored) {
            self.items.insert((stored.tenant.clone(), item.to_owned()), Arc::clone(&response_id));
        }
        let kept = Kept { stored: Arc::clone(&stored), size, in_redis: Arc::new(AtomicBool::new(in_redis)), until };
        self.local.insert((stored.tenant.clone(), id.to_owned()), kept);
    }

    /// `SET` with a lifetime, within the store's timeout: the response, and for each of its
    /// items, the response's id under the item's.
    async fn write(&self, store: &RedisStore, stored: &StoredResponse, id: &str, bytes: Vec<u8>, ttl: Duration) -> Result<(), String> {
        let ttl_ms = u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1);
        let mut pipe = redis::pipe();
        pipe.cmd("SET").arg(redis_key(&stored.tenant, id)).arg(bytes).arg("PX").arg(ttl_ms).ignore();
        for item in item_ids(stored) {
            pipe.cmd("SET").arg(redis_item_key(&stored.tenant, item)).arg(id).arg("PX").arg(ttl_ms).ignore();
        }
        let write = async {
            let mut conn = store.connection().await.map_err(|e| e.to_string())?;
            pipe.query_async::<()>(&mut conn).await.map_err(|e| e.to_string())
        };
        tokio::time::timeout(store.timeout(), write).await.map_err(|_| "timed out".to_owned())?
    }

    /// The item `item_id` of a response `tenant` stored (an output item, or one of its listed
    /// input items), with that response's privacy tags: what an `item_reference` stands for.
    pub async fn item(&self, tenant: &str, item_id: &str) -> Option<(serde_json::Value, Vec<String>)> {
        let response_id = if let Some(id) = self.items.get(&(tenant.to_owned(), item_id.to_owned())) {
            id.to_string()
        } else {
            let store = self.shared.as_ref()?;
            let read = async {
                let mut conn = store.connection().await.ok()?;
                let mut get = redis::cmd("GET");
                get.arg(redis_item_key(tenant, item_id));
                get.query_async::<Option<String>>(&mut conn).await.ok()?
            };
            tokio::time::timeout(store.timeout(), read).await.ok()??
        };
        let stored = self.get(tenant, &response_id).await?;
        let item = item_ids_and_items(&stored).find(|(id, _)| *id == item_id)?.1.clone();
        Some((item, stored.tags.clone()))
    }

    /// The response `id` of `tenant`: this process's copy, while Redis (when configured) still
    /// holds it — another replica may have deleted it — else Redis's. With Redis unreachable,
    /// this process's copy; one Redis never took is written there now.
    pub async fn get(&self, tenant: &str, id: &str) -> Option<Arc<StoredResponse>> {
        let key = (tenant.to_owned(), id.to_owned());
        let cached = self.local.get(&key);
        let Some(store) = self.shared.as_ref() else { return cached.map(|kept| kept.stored) };
        if let Some(kept) = cached {
            if !kept.in_redis.load(Ordering::Acquire) {
                let left = kept.until.saturating_duration_since(Instant::now());
                if let Ok(bytes) = serde_json::to_vec(kept.stored.as_ref()) {
                    if !left.is_zero() && self.write(store, &kept.stored, id, bytes, left).await.is_ok() {
                        kept.in_redis.store(true, Ordering::Release);
                    }
                }
                return Some(kept.stored);
            }
            let hit = kept.stored;
            let exists = async {
                let mut conn = store.connection().await.ok()?;
                let mut exists = redis::cmd("EXISTS");
                exists.arg(redis_key(tenant, id));
                exists.query_async::<u64>(&mut conn).await.ok()
            };
            return match tokio::time::timeout(store.timeout(), exists).await {
                Ok(Some(0)) => {
                    self.local.remove(&key);
                    None
                }
                _ => Some(hit),
            };
        }
        let read = async {
            let mut conn = store.connection().await.ok()?;
            let mut get = redis::cmd("GET");
            get.arg(redis_key(tenant, id));
            get.query_async::<Option<Vec<u8>>>(&mut conn).await.ok()?
        };
        let bytes = tokio::time::timeout(store.timeout(), read).await.ok()??;
        let size = u32::try_from(bytes.len()).unwrap_or(u32::MAX);
        let stored: Arc<StoredResponse> = Arc::new(serde_json::from_slice(&bytes).ok()?);
        // A key names its tenant; the check is belt and braces against a hand-written entry.
        if stored.tenant != tenant {
            return None;
        }
        // Its lifetime left in Redis is not read back: this copy lasts at most `ttl_s` from now,
        // and each read checks Redis still holds it.
        let kept = Kept { stored: Arc::clone(&stored), size, in_redis: Arc::new(AtomicBool::new(true)), until: Instant::now() + self.ttl };
        self.local.insert(key, kept);
        Some(stored)
    }

    /// Forgets the response `id` of `tenant`; true if it was there.
    pub async fn delete(&self, tenant: &str, id: &str) -> Result<bool, Unreachable> {
        let key = (tenant.to_owned(), id.to_owned());
        // Redis first: if it cannot be reached, nothing changes here either, and the caller hears
        // so (a copy left there would come back, on this replica and every other).
        let mut found = false;
        if let Some(store) = &self.shared {
            let del = async {
                let mut conn = store.connection().await.ok()?;
                let mut del = redis::cmd("DEL");
                del.arg(redis_key(tenant, id));
                del.query_async::<u64>(&mut conn).await.ok()
            };
            match tokio::time::timeout(store.timeout(), del).await {
                Ok(Some(n)) => found = n > 0,
                _ => return Err(Unreachable),
            }
        }
        Ok(self.local.remove(&key).is_some() || found)
    }
}

/// The shared store could not be reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unreachable;

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(tenant: &str, text_bytes: usize) -> StoredResponse {
        StoredResponse { tenant: tenant.into(), tags: Vec::new(), conversation: Vec::new(), response: serde_json::json!({"output_text": "x".repeat(text_bytes)}), input_items: Vec::new() }
    }

    #[tokio::test]
    async fn memory_bounds_what_is_kept_and_tenants_never_share_entries() {
        let store = ResponseStore::new(&ResponsesConfig { ttl_s: 60, max_entries: 1000, max_mib: 1 }, None);
        for i in 0..10 {
            store.put(&format!("resp_{i}"), stored("a", 300 * 1024)).await;
        }
        store.local.run_pending_tasks();
        // 1 MiB holds at most three 300 KiB responses.
        assert!(store.local.entry_count() <= 3, "{}", store.local.entry_count());
        store.put("resp_x", stored("a", 10)).await;
        assert!(store.get("a", "resp_x").await.is_some());
        assert!(store.get("b", "resp_x").await.is_none());
        assert_eq!(store.delete("b", "resp_x").await, Ok(false));
        assert_eq!(store.delete("a", "resp_x").await, Ok(true));
    }

    #[tokio::test]
    async fn a_response_just_stored_is_kept_over_older_ones_read_often() {
        let store = ResponseStore::new(&ResponsesConfig { ttl_s: 60, max_entries: 1000, max_mib: 1 }, None);
        // Tenant b fills most of the memory and keeps reading its responses.
        for i in 0..3 {
            store.put(&format!("resp_b{i}"), stored("b", 300 * 1024)).await;
        }
        for _ in 0..5 {
            for i in 0..3 {
                assert!(store.get("b", &format!("resp_b{i}")).await.is_some());
            }
        }
        // Tenant a's conversations, each continued right after it is stored.
        for i in 0..20 {
            let id = format!("resp_a{i}");
            store.put(&id, stored("a", 40 * 1024)).await;
            store.local.run_pending_tasks();
            assert!(store.get("a", &id).await.is_some(), "response {i} was dropped as it was stored");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_response_stored_while_redis_was_down_outlives_its_return() {
        use crate::store::tests::{free_port, redis_config, PrivateRedis};
        let port = free_port();
        let redis = Arc::new(RedisStore::new(&redis_config(port, 300)).unwrap());
        let store = ResponseStore::new(&ResponsesConfig::default(), Some(Arc::clone(&redis)));
        // Nothing listens on the port: Redis cannot take it.
        store.put("resp_1", stored("a", 10)).await;
        assert!(store.get("a", "resp_1").await.is_some(), "kept in this replica");
        // A delete Redis cannot take fails, and changes nothing.
        assert_eq!(store.delete("a", "resp_1").await, Err(Unreachable));
        assert!(store.get("a", "resp_1").await.is_some(), "a failed delete leaves the response");
        let back = PrivateRedis::start_on(port);
        assert_eq!(back.port(), port);
        // Back, and empty: the copy is not taken for one another replica deleted, and Redis
        // takes it at a read (reconnecting may take a few reads).
        let mut in_redis = false;
        for _ in 0..400 {
            assert!(store.get("a", "resp_1").await.is_some(), "still there once Redis is back");
            let mut check = redis::cmd("EXISTS");
            check.arg(redis_key("a", "resp_1"));
            if let Ok(mut conn) = redis.connection().await {
                in_redis = check.query_async::<u64>(&mut conn).await.is_ok_and(|n| n == 1);
            }
            if in_redis {
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(in_redis, "Redis holds it after a read");
        // From then on another replica's delete is seen here.
        let other = ResponseStore::new(&ResponsesConfig::default(), Some(Arc::clone(&redis)));
        assert!(other.get("a", "resp_1").await.is_some(), "another replica reads it from Redis");
        assert_eq!(other.delete("a", "resp_1").await, Ok(true));
        assert!(store.get("a", "resp_1").await.is_none(), "deleted on the other replica");
    }

    #[test]
    fn redis_keys_cannot_be_spelled_by_another_tenant() {
        assert_ne!(redis_key("a", "b:resp_1"), redis_key("a:b", "resp_1"));
    }
}
