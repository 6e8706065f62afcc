//! Shadow evaluation (`[shadow]`, opt-in): for a sampled share of answers the local engine
//! served, the gateway asks a remote model the same question off the client's path, has a judge
//! model compare the two answers twice (positions swapped, to cancel the judge's order bias) and
//! records the complexity score, both answers, the verdicts and the scores. The record store
//! holds prompt text, so it is off by default and separate from the audit log.
//!
//! Never sampled: requests with any privacy tag (PII found, the caller's or the tenant's tags),
//! tenants with `shadow = false`, cached answers, tool calls and `n > 1`. Shadow calls have their
//! own daily budget and concurrency cap; a comparison that would break either is dropped and
//! counted. They never touch the tenant's budget, and the client's answer never waits for them.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

use providers::wire::{ChatMessage, ChatRequest, Usage};
use providers::Provider;
use serde::{Deserialize, Serialize};
use serde_json::json;
use tracing::{debug, warn};

use crate::accounting::{unix_ms, Pricer};
use crate::budgets::{nanos_to_usd, usd_to_nanos};

/// `[shadow]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ShadowConfig {
    /// Share of eligible local answers compared (0.02 = 2 %).
    pub sample: f64,
    /// The judge, `provider/model`.
    pub judge: String,
    /// Who answers the same question, `provider/model`; defaults to the judge.
    #[serde(default)]
    pub remote: Option<String>,
    /// JSON Lines file the comparisons are appended to (holds prompt and answer text).
    #[serde(default = "default_store")]
    pub store: PathBuf,
    /// Most the shadow calls (remote answer and both judgements) may cost per UTC day, USD, on
    /// this replica.
    pub daily_usd: f64,
    /// Most comparisons running at once; more are dropped.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Completion-token cap of the remote answer when the client set none.
    #[serde(default = "default_max_tokens")]
    pub max_tokens: u32,
}

fn default_store() -> PathBuf {
    PathBuf::from("data/shadow.jsonl")
}

const fn default_max_in_flight() -> usize {
    4
}

const fn default_max_tokens() -> u32 {
    1024
}

impl ShadowConfig {
    /// Static checks; `is_remote` says which targets are configured remote models.
    pub fn problems(&self, is_remote: &dyn Fn(&str) -> bool) -> Vec<String> {
        let mut problems = Vec::new();
        if !(0.0..=1.0).contains(&self.sample) {
            problems.push(format!("shadow.sample = {} must be a share between 0 and 1", self.sample));
        }
        if !(self.daily_usd.is_finite() && self.daily_usd >= 0.0) {
            problems.push("shadow.daily_usd must be a non-negative number".to_owned());
        }
        if self.max_in_flight == 0 {
            problems.push("shadow.max_in_flight must be at least 1".to_owned());
        }
        for (key, target) in [("judge", Some(&self.judge)), ("remote", self.remote.as_ref())] {
            if let Some(t) = target.filter(|t| !is_remote(t)) {
                problems.push(format!("shadow.{key} = {t:?} is not a configured remote provider/model"));
            }
        }
        problems
    }

    /// The target answering the same question.
    pub fn remote_target(&self) -> &str {
        self.remote.as_deref().unwrap_or(&self.judge)
    }
}

/// Complexity buckets of the win-rate metric and the dashboard.
pub const BUCKETS: [&str; 5] = ["0.0-0.2", "0.2-0.4", "0.4-0.6", "0.6-0.8", "0.8-1.0"];

/// The bucket of a complexity score.
pub fn bucket(complexity: f64) -> &'static str {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((complexity.clamp(0.0, 1.0) * 5.0).floor() as usize).min(4);
    BUCKETS[i]
}

/// A judge's answer to one ordering.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Vote {
    /// The local answer is better.
    Local,
    /// The remote answer is better.
    Remote,
    /// As good as each other.
    Tie,
}

/// The pairwise judge prompt (MT-Bench style): `[[A]]`, `[[B]]` or `[[C]]` for a tie.
pub fn judge_prompt(question: &str, answer_a: &str, answer_b: &str) -> String {
    format!(
        "Please act as an impartial judge and evaluate the quality of the responses provided by two AI assistants to the user question displayed below. Choose the assistant that follows the user's instructions and answers the user's question better, considering helpfulness, relevance, accuracy, depth and level of detail. Do not let the responses' order, their length or the assistants' names influence you. After a short explanation, output your final verdict by strictly following this format: \"[[A]]\" if assistant A is better, \"[[B]]\" if assistant B is better, and \"[[C]]\" for a tie.\n\n[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{answer_a}\n[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{answer_b}\n[The End of Assistant B's Answer]"
    )
}

/// The verdict in a judge's answer: the last `[[A]]`, `[[B]]` or `[[C]]` it wrote.
pub fn parse_verdict(text: &str) -> Option<char> {
    let (a, b, c) = (text.rfind("[[A]]"), text.rfind("[[B]]"), text.rfind("[[C]]"));
    [(a, 'A'), (b, 'B'), (c, 'C')].into_iter().filter_map(|(at, v)| at.map(|at| (at, v))).max_by_key(|(at, _)| *at).map(|(_, v)| v)
}

/// Combines the two orderings (local as A, then local as B) into the local answer's score
/// (1 better, 0.5 tie, 0 worse; averaged) and a verdict: a side wins only if both orderings
/// agree, or one says tie and the other prefers it; contradicting orderings are a tie.
pub fn combine(local_first: Vote, local_second: Vote) -> (Vote, f64) {
    let points = |v: Vote| match v {
        Vote::Local => 1.0,
        Vote::Tie => 0.5,
        Vote::Remote => 0.0,
    };
    let score = f64::midpoint(points(local_first), points(local_second));
    let verdict = if score > 0.5 {
        Vote::Local
    } else if score < 0.5 {
        Vote::Remote
    } else {
        Vote::Tie
    };
    (verdict, score)
}

fn one_turn() -> usize {
    1
}

/// One comparison, as stored (a line of the store; `switchyard train-router --labels` and
/// `switchyard calibrate --from-shadow` read these lines).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShadowRecord {
    /// Unix ms.
    pub ts: u64,
    /// The client request's id.
    pub request_id: String,
    /// The tenant.
    pub tenant: String,
    /// The conversation's text, as the router classified it.
    pub prompt: String,
    /// The conversation's messages (the router counts them; 1 in stores written before they
    /// were recorded).
    #[serde(default = "one_turn")]
    pub turns: usize,
    /// The router's complexity score when the request was served (`calibrate --from-shadow`
    /// scores `prompt` again with the scorer configured now).
    pub complexity: f64,
    /// Its bucket.
    pub complexity_bucket: String,
    /// `local/<name>`.
    pub local_target: String,
    /// The remote model asked the same question.
    pub remote_target: String,
    /// The judge.
    pub judge: String,
    /// The answer the client got.
    pub local_answer: String,
    /// The remote model's answer.
    pub remote_answer: String,
    /// The judge's votes: local answer shown first, then shown second.
    pub votes: [Vote; 2],
    /// The combined verdict.
    pub verdict: Vote,
    /// The local (weak) answer's score, 0..=1.
    pub weak_score: f64,
    /// The remote (strong) answer's score, `1 - weak_score`.
    pub strong_score: f64,
    /// What the three shadow calls cost, USD.
    pub cost_usd: f64,
}

/// A local answer offered for comparison.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// The client request's id (its random part decides the sampling).
    pub request_id: String,
    /// The tenant.
    pub tenant: String,
    /// The conversation as the client sent it.
    pub messages: Vec<ChatMessage>,
    /// The client's completion cap, if any.
    pub max_tokens: Option<u32>,
    /// The conversation's text.
    pub prompt: String,
    /// The router's complexity score.
    pub complexity: f64,
    /// The serving target.
    pub local_target: String,
    /// The local answer.
    pub local_answer: String,
}

/// Why a sampled comparison did not run (`switchyard_shadow_dropped_total{reason}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dropped {
    /// The daily shadow budget could not hold it.
    Budget,
    /// `max_in_flight` comparisons were running.
    Concurrency,
    /// The remote model or the judge failed, or the verdict could not be read.
    Failed,
}

impl Dropped {
    /// The metric label.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Budget => "budget",
            Self::Concurrency => "concurrency",
            Self::Failed => "failed",
        }
    }
}

/// Comparisons and the local answer's wins and ties per bucket.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct BucketTally {
    /// Comparisons recorded.
    pub comparisons: u64,
    /// The local answer won.
    pub local: u64,
    /// Tie.
    pub tie: u64,
    /// The remote answer won.
    pub remote: u64,
}

impl BucketTally {
    /// Share of comparisons where the local answer was as good (won or tied).
    #[allow(clippy::cast_precision_loss)]
    pub fn win_rate(&self) -> Option<f64> {
        (self.comparisons > 0).then(|| (self.local + self.tie) as f64 / self.comparisons as f64)
    }
}

/// Counters shown in `/admin/stats` and the dashboard.
#[derive(Debug, Clone, Default, Serialize)]
pub struct ShadowStats {
    /// By complexity bucket.
    pub buckets: BTreeMap<&'static str, BucketTally>,
    /// Dropped comparisons by reason.
    pub dropped: BTreeMap<&'static str, u64>,
    /// Spent today (UTC), USD.
    pub spent_today_usd: f64,
    /// The daily limit, USD.
    pub daily_usd: f64,
    /// Comparisons running now.
    pub in_flight: usize,
}

/// Where results go: metrics are set by the owner through this callback.
pub type OnResult = Arc<dyn Fn(&ShadowRecord) + Send + Sync>;
/// Called with each dropped comparison's reason.
pub type OnDrop = Arc<dyn Fn(Dropped) + Send + Sync>;

/// Spend today, in nano-USD, with the UTC day it belongs to.
#[derive(Debug, Default)]
struct Ledger {
    day: u64,
    spent_nusd: u64,
    reserved_nusd: u64,
}

/// The shadow evaluator.
pub struct Shadow {
    config: ShadowConfig,
    remote: (Arc<dyn Provider>, String),
    judge: (Arc<dyn Provider>, String),
    pricer: Pricer,
    ledger: Mutex<Ledger>,
    in_flight: Arc<AtomicUsize>,
    store: Mutex<Option<std::fs::File>>,
    stats: Mutex<ShadowStats>,
    on_result: OnResult,
    on_drop: OnDrop,
}

impl std::fmt::Debug for Shadow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shadow").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Today's UTC day number.
fn utc_day() -> u64 {
    unix_ms() / 86_400_000
}

impl Shadow {
    /// An evaluator asking `remote` and `judge` (each a provider and the model name to send it).
    pub fn new(
        config: ShadowConfig,
        remote: (Arc<dyn Provider>, String),
        judge: (Arc<dyn Provider>, String),
        pricer: Pricer,
        on_result: OnResult,
        on_drop: OnDrop,
    ) -> Self {
        let stats = ShadowStats { daily_usd: config.daily_usd, ..ShadowStats::default() };
        Self {
            config,
            remote,
            judge,
            pricer,
            ledger: Mutex::new(Ledger::default()),
            in_flight: Arc::new(AtomicUsize::new(0)),
            store: Mutex::new(None),
            stats: Mutex::new(stats),
            on_result,
            on_drop,
        }
    }

    /// The configuration.
    pub fn config(&self) -> &ShadowConfig {
        &self.config
    }

    /// True when the request `request_id` (`req-<uuid v4>`) falls in the sample. The draw is
    /// the id's first 48 random bits, so it needs no random generator of its own.
    pub fn sampled(&self, request_id: &str) -> bool {
        sampled(request_id, self.config.sample)
    }

    /// Starts a comparison for `candidate` off the caller's path, or counts why it cannot run.
    /// The caller has already checked eligibility (local, untagged, tenant opted in) and sampling.
    pub fn offer(self: &Arc<Self>, candidate: Candidate) {
        let running = self.in_flight.fetch_add(1, Relaxed);
        if running >= self.config.max_in_flight {
            self.in_flight.fetch_sub(1, Relaxed);
            return self.dropped(Dropped::Concurrency);
        }
        let reserve = self.worst_case_nusd(&candidate);
        if !self.reserve(reserve) {
            self.in_flight.fetch_sub(1, Relaxed);
            return self.dropped(Dropped::Budget);
        }
        let this = Arc::clone(self);
        tokio::spawn(async move {
            let outcome = this.compare(candidate).await;
            let cost = match &outcome {
                Ok(record) => usd_to_nanos(record.cost_usd),
                Err((_, cost)) => *cost,
            };
            this.settle(reserve, cost);
            this.in_flight.fetch_sub(1, Relaxed);
            match outcome {
                Ok(record) => this.recorded(&record),
                Err((why, _)) => {
                    warn!(error = %why, "shadow comparison failed");
                    this.dropped(Dropped::Failed);
                }
            }
        });
    }

    fn dropped(&self, why: Dropped) {
        debug!(reason = why.as_str(), "shadow comparison dropped");
        if let Ok(mut stats) = self.stats.lock() {
            *stats.dropped.entry(why.as_str()).or_default() += 1;
        }
        (self.on_drop)(why);
    }

    /// The most the three calls can cost: the remote answer (prompt + cap) and two judgements
    /// (prompt + both answers + a verdict), at list prices, prompt tokens estimated.
    fn worst_case_nusd(&self, c: &Candidate) -> u64 {
        let prompt = crate::accounting::estimate_tokens(c.prompt.chars().count());
        let cap = u64::from(c.max_tokens.unwrap_or(self.config.max_tokens));
        let remote = (self.pricer)(self.remote_target(), &Usage::new(prompt, cap));
        let local = crate::accounting::estimate_tokens(c.local_answer.chars().count());
        let judge_prompt = prompt + local + cap + 200;
        let judge = (self.pricer)(&self.config.judge, &Usage::new(judge_prompt, JUDGE_MAX_TOKENS.into()));
        usd_to_nanos(remote + 2.0 * judge)
    }

    fn remote_target(&self) -> &str {
        self.config.remote_target()
    }

    fn reserve(&self, nusd: u64) -> bool {
        let Ok(mut ledger) = self.ledger.lock() else { return false };
        let today = utc_day();
        if ledger.day != today {
            ledger.day = today;
            ledger.spent_nusd = 0;
        }
        if ledger.spent_nusd + ledger.reserved_nusd + nusd > usd_to_nanos(self.config.daily_usd) {
            return false;
        }
        ledger.reserved_nusd += nusd;
        true
    }

    fn settle(&self, reserved: u64, spent: u64) {
        if let Ok(mut ledger) = self.ledger.lock() {
            ledger.reserved_nusd = ledger.reserved_nusd.saturating_sub(reserved);
            ledger.spent_nusd += spent;
        }
    }

    /// Asks the remote model, then the judge in both orders. On failure: why, and what was
    /// spent before it failed.
    async fn compare(&self, c: Candidate) -> Result<ShadowRecord, (String, u64)> {
        let mut cost = 0.0;
        let (provider, model) = &self.remote;
        let ask: ChatRequest = serde_json::from_value(json!({
            "model": model, "messages": c.messages, "temperature": 0,
            "max_tokens": c.max_tokens.unwrap_or(self.config.max_tokens),
        }))
        .map_err(|e| (e.to_string(), 0))?;
        let answer = provider.complete(ask).await.map_err(|e| (format!("remote answer: {e}"), 0))?;
        if let Some(usage) = &answer.usage {
            cost += (self.pricer)(self.remote_target(), usage);
        }
        let remote_answer = answer.choices.first().and_then(|ch| ch.message.content.clone()).unwrap_or_default();
        let question = c.prompt.as_str();
        let mut votes = [Vote::Tie; 2];
        for (i, (a, b)) in [(&c.local_answer, &remote_answer), (&remote_answer, &c.local_answer)].into_iter().enumerate() {
            let (judge, judge_model) = &self.judge;
            let ask: ChatRequest = serde_json::from_value(json!({
                "model": judge_model, "temperature": 0, "max_tokens": JUDGE_MAX_TOKENS,
                "messages": [{"role": "user", "content": judge_prompt(question, a, b)}],
            }))
            .map_err(|e| (e.to_string(), usd_to_nanos(cost)))?;
            let verdict = judge.complete(ask).await.map_err(|e| (format!("judge: {e}"), usd_to_nanos(cost)))?;
            if let Some(usage) = &verdict.usage {
                cost += (self.pricer)(&self.config.judge, usage);
            }
            let text = verdict.choices.first().and_then(|ch| ch.message.content.clone()).unwrap_or_default();
            let local_is_a = i == 0;
            votes[i] = match parse_verdict(&text) {
                Some('A') if local_is_a => Vote::Local,
                Some('B') if !local_is_a => Vote::Local,
                Some('A' | 'B') => Vote::Remote,
                Some(_) => Vote::Tie,
                None => return Err(("the judge gave no [[A]]/[[B]]/[[C]] verdict".into(), usd_to_nanos(cost))),
            };
        }
        let (verdict, weak_score) = combine(votes[0], votes[1]);
        Ok(ShadowRecord {
            ts: unix_ms(),
            request_id: c.request_id,
            tenant: c.tenant,
            prompt: c.prompt,
            turns: c.messages.len(),
            complexity: c.complexity,
            complexity_bucket: bucket(c.complexity).to_owned(),
            local_target: c.local_target,
            remote_target: self.remote_target().to_owned(),
            judge: self.config.judge.clone(),
            local_answer: c.local_answer,
            remote_answer,
            votes,
            verdict,
            weak_score,
            strong_score: 1.0 - weak_score,
            cost_usd: cost,
        })
    }

    fn recorded(&self, record: &ShadowRecord) {
        if let Err(e) = self.append(record) {
            warn!(error = %e, store = %self.config.store.display(), "could not write a shadow record");
        }
        if let Ok(mut stats) = self.stats.lock() {
            let b = stats.buckets.entry(bucket(record.complexity)).or_default();
            b.comparisons += 1;
            match record.verdict {
                Vote::Local => b.local += 1,
                Vote::Tie => b.tie += 1,
                Vote::Remote => b.remote += 1,
            }
        }
        (self.on_result)(record);
    }

    fn append(&self, record: &ShadowRecord) -> std::io::Result<()> {
        let mut line = serde_json::to_vec(record).map_err(std::io::Error::other)?;
        line.push(b'\n');
        let mut store = self.store.lock().map_err(|_| std::io::Error::other("store lock poisoned"))?;
        if store.is_none() {
            if let Some(dir) = self.config.store.parent().filter(|d| !d.as_os_str().is_empty()) {
                std::fs::create_dir_all(dir)?;
            }
            *store = Some(std::fs::OpenOptions::new().create(true).append(true).open(&self.config.store)?);
        }
        // One write per line: lines from several comparisons never interleave.
        store.as_mut().map_or(Ok(()), |f| f.write_all(&line))
    }

    /// Counters for `/admin/stats`.
    pub fn stats(&self) -> ShadowStats {
        let mut stats = self.stats.lock().map(|s| s.clone()).unwrap_or_default();
        if let Ok(ledger) = self.ledger.lock() {
            stats.spent_today_usd = if ledger.day == utc_day() { nanos_to_usd(ledger.spent_nusd) } else { 0.0 };
        }
        stats.in_flight = self.in_flight.load(Relaxed);
        stats
    }
}

/// The sampling draw of [`Shadow::sampled`].
pub fn sampled(request_id: &str, share: f64) -> bool {
    let uuid = request_id.rsplit('-').next().unwrap_or_default();
    let Some(Ok(bits)) = uuid.get(..12).map(|hex| u64::from_str_radix(hex, 16)) else { return false };
    #[allow(clippy::cast_precision_loss)]
    let draw = bits as f64 / (1u64 << 48) as f64;
    draw < share
}

/// The judge's completion cap: a short explanation and the verdict.
const JUDGE_MAX_TOKENS: u32 = 512;

#[cfg(test)]
#[allow(clippy::float_cmp, clippy::cast_precision_loss)]
mod tests {
    use super::*;

    #[test]
    fn verdicts_are_read_from_the_last_marker() {
        assert_eq!(parse_verdict("A is better. [[A]]"), Some('A'));
        assert_eq!(parse_verdict("Not [[A]] but finally [[B]]"), Some('B'));
        assert_eq!(parse_verdict("[[C]]"), Some('C'));
        assert_eq!(parse_verdict("no verdict"), None);
    }

    #[test]
    fn swapped_orders_cancel_a_position_bias() {
        // A judge that always picks the first answer: once local, once remote.
        assert_eq!(combine(Vote::Local, Vote::Remote), (Vote::Tie, 0.5));
        assert_eq!(combine(Vote::Remote, Vote::Remote), (Vote::Remote, 0.0));
        assert_eq!(combine(Vote::Local, Vote::Local), (Vote::Local, 1.0));
        assert_eq!(combine(Vote::Tie, Vote::Local), (Vote::Local, 0.75));
        assert_eq!(combine(Vote::Tie, Vote::Remote), (Vote::Remote, 0.25));
    }

    #[test]
    fn the_prompt_names_both_answers_in_order() {
        let p = judge_prompt("Q?", "first answer", "second answer");
        let a = p.find("first answer").unwrap();
        let b = p.find("second answer").unwrap();
        assert!(p.find("Assistant A's Answer]").unwrap() < a && a < p.find("Assistant B's Answer]").unwrap() && a < b);
        assert!(p.contains("[[C]]"));
    }

    #[test]
    fn sampling_takes_about_the_configured_share() {
        let ids: Vec<String> = (0..20_000).map(|_| format!("req-{}", uuid::Uuid::new_v4().simple())).collect();
        for share in [0.0, 0.02, 0.5, 1.0] {
            #[allow(clippy::cast_precision_loss)]
            let taken = ids.iter().filter(|id| sampled(id, share)).count() as f64 / ids.len() as f64;
            assert!((taken - share).abs() < 0.01, "{share}: {taken}");
        }
        assert!(!sampled("req-", 1.0), "an id without random bits is never sampled");
    }

    #[test]
    fn buckets_cover_the_range() {
        assert_eq!(bucket(0.0), "0.0-0.2");
        assert_eq!(bucket(0.19), "0.0-0.2");
        assert_eq!(bucket(0.5), "0.4-0.6");
        assert_eq!(bucket(1.0), "0.8-1.0");
        assert_eq!(bucket(7.0), "0.8-1.0");
    }

    #[test]
    fn config_checks() {
        let c: ShadowConfig = toml::from_str("sample = 1.5\njudge = \"x/y\"\ndaily_usd = -1\nmax_in_flight = 0\n").unwrap();
        let problems = c.problems(&|_| false).join("\n");
        for key in ["shadow.sample", "shadow.daily_usd", "shadow.max_in_flight", "shadow.judge"] {
            assert!(problems.contains(key), "{problems}");
        }
        assert!(toml::from_str::<ShadowConfig>("sample = 0.1\njudge = \"x/y\"\ndaily_usd = 1\nstorez = 1\n").is_err());
    }
}
