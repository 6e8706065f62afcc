//! The response cache: exact match on (tenant, caller's privacy tags, the request without its
//! streaming options), for deterministic requests only (temperature 0 or a seed; no tools, one
//! choice). Entries live in this process (`moka`) and, with `shared = true`, in Redis for every
//! replica. A streamed answer is stored whole and replays as a stream; a hit costs nothing.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use providers::wire::{says_something, ChatChunk, ChatRequest, ChatResponse, Choice, ChunkChoice, Delta, ResponseMessage, Usage};
use serde::{Deserialize, Serialize};
use serde_json::Map;
use sha2::{Digest, Sha256};

use crate::store::RedisStore;

/// `[cache]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CacheConfig {
    /// How long an answer is served from the cache.
    #[serde(default = "default_ttl_s")]
    pub ttl_s: u64,
    /// Answers kept in this process at most (least recently used go first).
    #[serde(default = "default_max_entries")]
    pub max_entries: u64,
    /// Memory those answers may take, in MiB (their JSON size; each counts as at least
    /// `max_mib / max_entries`, so that `max_entries` bounds their number too).
    #[serde(default = "default_max_mib")]
    pub max_mib: u64,
    /// Also keep answers in Redis (`[redis]`), shared by every replica.
    #[serde(default)]
    pub shared: bool,
}

const fn default_ttl_s() -> u64 {
    300
}
const fn default_max_entries() -> u64 {
    10_000
}
const fn default_max_mib() -> u64 {
    256
}

impl CacheConfig {
    /// What is wrong with it.
    pub fn problems(&self, has_redis: bool) -> Vec<String> {
        let mut problems = Vec::new();
        if self.ttl_s == 0 {
            problems.push("cache.ttl_s must be positive".to_owned());
        }
        if self.max_entries == 0 {
            problems.push("cache.max_entries must be positive (leave [cache] out to turn the cache off)".to_owned());
        }
        if self.max_mib == 0 || self.max_mib > u64::from(u32::MAX) / 1024 {
            problems.push(format!("cache.max_mib must be between 1 and {} (leave [cache] out to turn the cache off)", u64::from(u32::MAX) / 1024));
        }
        if self.shared && !has_redis {
            problems.push("cache.shared = true needs a [redis] section".to_owned());
        }
        problems
    }
}

/// A cached answer and where it came from.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Cached {
    /// The whole answer, as first sent.
    pub response: ChatResponse,
    /// The target that produced it.
    pub target: String,
    /// A local answer a cascade kept (its confidence passed): only such a local answer is
    /// replayed under a cascade rule, whose route is remote.
    #[serde(default)]
    pub cascade_kept: bool,
}

/// A cache key: SHA-256 of what identifies the answer.
pub type CacheKey = [u8; 32];

/// An answer kept in this process and until when it may be reused: `ttl_s` after it was first
/// kept, also for a copy read from Redis (whose remaining lifetime it takes).
#[derive(Clone)]
struct Entry {
    cached: Arc<Cached>,
    until: Instant,
    /// Its weight against `max_mib`, in KiB.
    kib: u32,
}

/// The response cache.
pub struct ResponseCache {
    local: moka::sync::Cache<CacheKey, Entry>,
    shared: Option<Arc<RedisStore>>,
    ttl: Duration,
    /// The least an entry weighs, in KiB (`max_mib / max_entries`).
    least_kib: u64,
    /// `max_mib`, in KiB: an answer weighing more is not kept.
    capacity_kib: u64,
}

impl std::fmt::Debug for ResponseCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResponseCache").field("entries", &self.local.entry_count()).finish_non_exhaustive()
    }
}

/// The key of `req` from `tenant` with the caller's privacy `tags`, or `None` when the answer
/// may not be reused (sampled, tool calls, several choices).
pub fn cache_key(tenant: &str, tags: &[String], req: &ChatRequest) -> Option<CacheKey> {
    let deterministic = req.temperature == Some(0.0) || req.seed.is_some();
    let single = req.n.is_none_or(|n| n == 1);
    if !deterministic || !single || req.tools.is_some() || req.tool_choice.is_some() {
        return None;
    }
    let mut normalized = req.clone();
    normalized.stream = None;
    normalized.stream_options = None;
    let body = serde_json::to_vec(&normalized).ok()?;
    let mut hasher = Sha256::new();
    hasher.update(if req.raw_prompt { b"switchyard-cache-v1-completion\0".as_slice() } else { b"switchyard-cache-v1\0".as_slice() });
    hasher.update(tenant.as_bytes());
    hasher.update(b"\0");
    hasher.update(tags.join(",").as_bytes());
    hasher.update(b"\0");
    hasher.update(&body);
    Some(hasher.finalize().into())
}

fn redis_key(key: &CacheKey) -> String {
    use std::fmt::Write as _;
    let mut out = String::from("switchyard:cache:");
    for b in key {
        let _ = write!(out, "{b:02x}");
    }
    out
}

impl ResponseCache {
    /// A cache per `config`; `shared` is the Redis store when `config.shared`.
    pub fn new(config: &CacheConfig, shared: Option<Arc<RedisStore>>) -> Self {
        let ttl = Duration::from_secs(config.ttl_s);
        let capacity_kib = config.max_mib.saturating_mul(1024);
        Self {
            local: moka::sync::Cache::builder().max_capacity(capacity_kib).weigher(|_, entry: &Entry| entry.kib).time_to_live(ttl).build(),
            shared: shared.filter(|_| config.shared),
            ttl,
            least_kib: capacity_kib.div_ceil(config.max_entries.max(1)).max(1),
            capacity_kib,
        }
    }

    /// Keeps `entry` in this process, unless it alone weighs more than the whole cache (then
    /// false); the bounds hold at once, not at the cache's next housekeeping.
    fn keep(&self, key: CacheKey, entry: Entry) -> bool {
        if u64::from(entry.kib) > self.capacity_kib {
            return false;
        }
        self.local.insert(key, entry);
        self.local.run_pending_tasks();
        true
    }

    /// `cached` as kept until `until`, weighed by its length as JSON, `len`.
    fn entry(&self, cached: Arc<Cached>, until: Instant, len: usize) -> Entry {
        let kib = u64::try_from(len.div_ceil(1024)).unwrap_or(u64::MAX).max(self.least_kib);
        Entry { cached, until, kib: u32::try_from(kib).unwrap_or(u32::MAX) }
    }

    /// The cached answer for `key`: this process first, then Redis (a Redis failure is a miss).
    pub async fn get(&self, key: &CacheKey) -> Option<Arc<Cached>> {
        if let Some(hit) = self.local.get(key) {
            if hit.until > Instant::now() {
                return Some(hit.cached);
            }
            self.local.invalidate(key);
        }
        let store = self.shared.as_ref()?;
        let mut conn = store.connection().await.ok()?;
        let mut read = redis::pipe();
        read.cmd("GET").arg(redis_key(key)).cmd("PTTL").arg(redis_key(key));
        // Taken before Redis reads the key's lifetime, so the copy never outlives the original.
        let sent = Instant::now();
        let read = read.query_async::<(Option<Vec<u8>>, i64)>(&mut conn);
        let (bytes, left_ms) = tokio::time::timeout(store.timeout(), read).await.ok()?.ok()?;
        let left = Duration::from_millis(u64::try_from(left_ms).ok().filter(|&ms| ms > 0)?).min(self.ttl);
        let bytes = bytes?;
        let cached: Arc<Cached> = Arc::new(serde_json::from_slice(&bytes).ok()?);
        self.keep(*key, self.entry(Arc::clone(&cached), sent + left, bytes.len()));
        Some(cached)
    }

    /// Keeps a whole answer (only complete ones without tool calls, log-probabilities or other
    /// extras that say something, such as annotations: a streamed replay could not carry them),
    /// here and, when shared, in Redis; an answer weighing more than the whole cache is kept in
    /// neither. Answers the Redis write, spawned.
    pub fn put(&self, key: CacheKey, response: ChatResponse, target: &str) -> Option<tokio::task::JoinHandle<()>> {
        self.put_as(key, response, target, false)
    }

    /// [`put`](Self::put) for a local answer a cascade kept.
    pub fn put_cascade_kept(&self, key: CacheKey, response: ChatResponse, target: &str) -> Option<tokio::task::JoinHandle<()>> {
        self.put_as(key, response, target, true)
    }

    fn put_as(&self, key: CacheKey, response: ChatResponse, target: &str, cascade_kept: bool) -> Option<tokio::task::JoinHandle<()>> {
        let reusable = response.choices.iter().all(|c| {
            !c.message.extra.values().any(says_something) && c.message.refusal.is_none() && c.logprobs.as_ref().is_none_or(serde_json::Value::is_null) && c.finish_reason.as_deref().is_some_and(|f| f == "stop" || f == "length")
        });
        if !reusable || response.choices.is_empty() {
            return None;
        }
        let cached = Arc::new(Cached { response, target: target.to_owned(), cascade_kept });
        // Written out once when shared: its length weighs it, and Redis gets it.
        let bytes = self.shared.as_ref().and_then(|_| serde_json::to_vec(cached.as_ref()).ok());
        let len = bytes.as_ref().map_or_else(|| json_len(cached.as_ref()), Vec::len);
        if !self.keep(key, self.entry(cached, Instant::now() + self.ttl, len)) {
            return None;
        }
        let (store, bytes, runtime) = (self.shared.clone()?, bytes?, tokio::runtime::Handle::try_current().ok()?);
        let ttl = self.ttl.as_secs();
        Some(runtime.spawn(async move {
            let Ok(mut conn) = store.connection().await else { return };
            let mut set = redis::cmd("SET");
            set.arg(redis_key(&key)).arg(bytes).arg("EX").arg(ttl);
            let set = set.query_async::<()>(&mut conn);
            let _ = tokio::time::timeout(store.timeout(), set).await;
        }))
    }
}

/// The length of `value` written as JSON, without keeping the text.
fn json_len(value: &impl Serialize) -> usize {
    struct Counter(usize);
    impl std::io::Write for Counter {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0 += bytes.len();
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut counter = Counter(0);
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

/// Rebuilds a whole answer from its streamed chunks; `None` when something in them cannot be
/// replayed faithfully (tool calls, logprobs, refusals, extra fields) or the stream did not finish.
#[derive(Debug, Default)]
pub struct StreamCollector {
    first: Option<ChatChunk>,
    choices: BTreeMap<u32, (String, Option<String>)>,
    usage: Option<Usage>,
    faithful: bool,
}

impl StreamCollector {
    /// An empty collector.
    pub fn new() -> Self {
        Self { faithful: true, ..Self::default() }
    }

    /// Takes one chunk.
    pub fn push(&mut self, chunk: &ChatChunk) {
        if self.first.is_none() {
            self.first = Some(ChatChunk { choices: Vec::new(), usage: None, ..chunk.clone() });
        }
        for choice in &chunk.choices {
            if choice.delta.extra.values().any(says_something) || choice.logprobs.is_some() || choice.extra.values().any(says_something) {
                self.faithful = false;
            }
            let entry = self.choices.entry(choice.index).or_default();
            if let Some(text) = &choice.delta.content {
                entry.0.push_str(text);
            }
            if choice.finish_reason.is_some() {
                entry.1.clone_from(&choice.finish_reason);
            }
        }
        if chunk.usage.is_some() {
            self.usage.clone_from(&chunk.usage);
        }
    }

    /// The whole answer, if the stream can be replayed from it.
    pub fn finish(self) -> Option<ChatResponse> {
        let first = self.first?;
        if !self.faithful || self.choices.is_empty() || self.choices.values().any(|(_, finish)| finish.is_none()) {
            return None;
        }
        Some(ChatResponse {
            id: first.id,
            object: "chat.completion".to_owned(),
            created: first.created,
            model: first.model,
            choices: self
                .choices
                .into_iter()
                .map(|(index, (content, finish_reason))| Choice {
                    index,
                    message: ResponseMessage::assistant(content),
                    finish_reason,
                    logprobs: None,
                    extra: Map::new(),
                })
                .collect(),
            usage: self.usage,
            system_fingerprint: first.system_fingerprint,
            extra: Map::new(),
        })
    }
}

/// A cached answer as stream chunks: per choice, its text then its finish; then the usage.
pub fn replay_chunks(response: &ChatResponse) -> Vec<ChatChunk> {
    let chunk = |choices: Vec<ChunkChoice>, usage: Option<Usage>| ChatChunk {
        id: response.id.clone(),
        object: "chat.completion.chunk".to_owned(),
        created: response.created,
        model: response.model.clone(),
        choices,
        usage,
        system_fingerprint: response.system_fingerprint.clone(),
        extra: Map::new(),
    };
    let choice = |index, delta, finish_reason| ChunkChoice { index, delta, finish_reason, logprobs: None, extra: Map::new() };
    let mut chunks = Vec::new();
    for c in &response.choices {
        let text = Delta { role: Some("assistant".to_owned()), content: c.message.content.clone(), extra: Map::new() };
        chunks.push(chunk(vec![choice(c.index, text, None)], None));
        chunks.push(chunk(vec![choice(c.index, Delta::default(), c.finish_reason.clone())], None));
    }
    if let Some(usage) = &response.usage {
        chunks.push(chunk(Vec::new(), Some(usage.clone())));
    }
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(json: serde_json::Value) -> ChatRequest {
        serde_json::from_value(json).unwrap()
    }

    fn answer(text: &str) -> ChatResponse {
        serde_json::from_value(serde_json::json!({"id": "c", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}]}))
        .unwrap()
    }

    #[test]
    fn the_cache_holds_at_most_max_mib_of_answers_and_max_entries_of_them() {
        let config: CacheConfig = toml::from_str("max_mib = 1\nmax_entries = 100").unwrap();
        let cache = ResponseCache::new(&config, None);
        // Five answers of 400 KB: only two fit in 1 MiB.
        for i in 0..5u8 {
            cache.put([i; 32], answer(&"x".repeat(400 * 1024)), "fake/echo");
            assert!(cache.local.weighted_size() <= 1024, "at once, not at the next housekeeping");
        }
        assert!(cache.local.weighted_size() <= 1024 && cache.local.entry_count() <= 2, "{} KiB in {} entries", cache.local.weighted_size(), cache.local.entry_count());
        // Small answers are bounded by count: each weighs at least 1 MiB / 100.
        for i in 0..200u8 {
            cache.put([i; 32], answer("short"), "fake/echo");
        }
        cache.local.run_pending_tasks();
        assert!(cache.local.entry_count() <= 100, "{}", cache.local.entry_count());
        assert!(cache.local.entry_count() >= 50, "small answers still fill it: {}", cache.local.entry_count());
        // An answer larger than the whole cache is not kept.
        cache.put([255; 32], answer(&"x".repeat(1536 * 1024)), "fake/echo");
        assert!(cache.local.get(&[255; 32]).is_none());
    }

    #[test]
    fn only_deterministic_single_answer_requests_without_tools_have_keys() {
        let base = serde_json::json!({"model": "auto", "messages": [{"role": "user", "content": "hi"}]});
        let with = |k: &str, v: serde_json::Value| {
            let mut b = base.clone();
            b[k] = v;
            request(b)
        };
        assert!(cache_key("t", &[], &request(base.clone())).is_none(), "sampled by default");
        assert!(cache_key("t", &[], &with("temperature", 0.0.into())).is_some());
        assert!(cache_key("t", &[], &with("seed", 7.into())).is_some());
        assert!(cache_key("t", &[], &with("temperature", 0.7.into())).is_none());
        let mut tools = with("temperature", 0.0.into());
        tools.tools = Some(serde_json::json!([{"type": "function", "function": {"name": "f"}}]));
        assert!(cache_key("t", &[], &tools).is_none());
        let mut n = with("seed", 1.into());
        n.n = Some(2);
        assert!(cache_key("t", &[], &n).is_none());
    }

    #[test]
    fn keys_separate_tenants_and_tags_but_not_streaming() {
        let req = request(serde_json::json!({"model": "auto", "temperature": 0, "messages": [{"role": "user", "content": "hi"}]}));
        let mut streamed = req.clone();
        streamed.stream = Some(true);
        let key = cache_key("acme", &[], &req).unwrap();
        assert_eq!(cache_key("acme", &[], &streamed), Some(key));
        assert_ne!(cache_key("globex", &[], &req), Some(key));
        assert_ne!(cache_key("acme", &["pii".into()], &req), Some(key));
    }

    #[test]
    fn a_stream_collects_into_the_answer_it_replays_as() {
        let chunk = |v: serde_json::Value| -> ChatChunk { serde_json::from_value(v).unwrap() };
        let head = serde_json::json!({"id": "c1", "object": "chat.completion.chunk", "created": 5, "model": "m"});
        let with = |extra: serde_json::Value| {
            let mut v = head.clone();
            v.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            chunk(v)
        };
        let mut collector = StreamCollector::new();
        collector.push(&with(serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": "Hel"}, "finish_reason": null}]})));
        collector.push(&with(serde_json::json!({"choices": [{"index": 0, "delta": {"content": "lo"}, "finish_reason": null}]})));
        collector.push(&with(serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})));
        collector.push(&with(serde_json::json!({"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}})));
        let response = collector.finish().expect("a finished plain stream is reusable");
        assert_eq!(response.choices[0].message.content.as_deref(), Some("Hello"));
        let replay = replay_chunks(&response);
        let mut again = StreamCollector::new();
        for c in &replay {
            again.push(c);
        }
        assert_eq!(again.finish(), Some(response));
    }

    #[tokio::test]
    async fn answers_with_logprobs_are_not_kept() {
        let cache = ResponseCache::new(&serde_json::from_value(serde_json::json!({})).unwrap(), None);
        let answer = |logprobs: serde_json::Value| -> ChatResponse {
            serde_json::from_value(serde_json::json!({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
                "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop", "logprobs": logprobs}]}))
            .unwrap()
        };
        cache.put([1; 32], answer(serde_json::Value::Null), "local/m");
        cache.put([2; 32], answer(serde_json::json!({"content": [{"token": "hi", "logprob": -0.1, "bytes": [104, 105], "top_logprobs": []}], "refusal": null})), "local/m");
        assert!(cache.get(&[1; 32]).await.is_some());
        // A streamed replay could not carry them.
        assert!(cache.get(&[2; 32]).await.is_none());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shared_answer_is_reused_no_longer_than_ttl_after_it_was_first_kept() {
        use crate::store::tests::{redis_store, PrivateRedis};
        let redis = PrivateRedis::start();
        let store = Arc::new(redis_store(&redis));
        let config: CacheConfig = serde_json::from_value(serde_json::json!({"ttl_s": 1, "shared": true})).unwrap();
        let (a, b) = (ResponseCache::new(&config, Some(Arc::clone(&store))), ResponseCache::new(&config, Some(Arc::clone(&store))));
        let answer: ChatResponse = serde_json::from_value(serde_json::json!({"id": "c", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}))
        .unwrap();
        let key = [7; 32];
        a.put(key, answer, "local/m");
        // Replica B finds it once A's copy has reached Redis, and keeps a copy of its own.
        let mut found = false;
        for _ in 0..200 {
            if b.get(&key).await.is_some() {
                found = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(found, "replica B reads the answer replica A kept");
        // Once Redis has let it expire (ttl_s after A kept it), B's own copy is no longer used.
        let mut conn = store.connection().await.unwrap();
        let mut gone = false;
        for _ in 0..400 {
            let exists: bool = redis::cmd("EXISTS").arg(redis_key(&key)).query_async(&mut conn).await.unwrap();
            if !exists {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(gone, "Redis expires the answer after ttl_s");
        assert!(b.get(&key).await.is_none(), "a copy read from Redis lives no longer than the original");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_answer_larger_than_the_cache_is_not_written_to_redis_either() {
        use crate::store::tests::{redis_store, PrivateRedis};
        let redis = PrivateRedis::start();
        let store = Arc::new(redis_store(&redis));
        let config: CacheConfig = toml::from_str("max_mib = 1\nshared = true").unwrap();
        let cache = ResponseCache::new(&config, Some(Arc::clone(&store)));
        let mut conn = store.connection().await.unwrap();
        let (big, small) = ([1; 32], [2; 32]);
        if let Some(write) = cache.put(big, answer(&"x".repeat(1536 * 1024)), "fake/echo") {
            write.await.unwrap();
        }
        let exists: bool = redis::cmd("EXISTS").arg(redis_key(&big)).query_async(&mut conn).await.unwrap();
        assert!(!exists, "a 1.5 MiB answer went to Redis past max_mib = 1");
        // A small one still goes: the check above could fail.
        cache.put(small, answer("short"), "fake/echo").expect("a shared cache writes to Redis").await.unwrap();
        let exists: bool = redis::cmd("EXISTS").arg(redis_key(&small)).query_async(&mut conn).await.unwrap();
        assert!(exists);
    }

    #[test]
    fn unfinished_or_tool_call_streams_are_not_kept() {
        let chunk = |v: serde_json::Value| -> ChatChunk { serde_json::from_value(v).unwrap() };
        let mut cut = StreamCollector::new();
        cut.push(&chunk(serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "half"}, "finish_reason": null}]})));
        assert!(cut.finish().is_none());
        let mut tools = StreamCollector::new();
        tools.push(&chunk(serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "t"}]}, "finish_reason": "tool_calls"}]})));
        assert!(tools.finish().is_none());
    }
}
