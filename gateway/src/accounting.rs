//! One accounting record per finished request — answered, failed or cancelled — for budgets,
//! metrics and the audit log (INTERFACE.md §6 fields). A [`PendingRecord`] is filled in as the
//! request goes and written when it is dropped, so no exit path (error, client disconnect, a
//! stream cut mid-way) loses its record.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use providers::wire::{ChatChunk, Usage};

use crate::audit::AuditLog;
use crate::metrics::Metrics;
use crate::stats::Rollups;
use serde::Serialize;

/// A finished request.
#[derive(Debug, Clone, PartialEq, Serialize, Default)]
pub struct UsageRecord {
    /// Unix time in milliseconds when the request finished.
    pub ts: u64,
    /// `x-request-id`.
    pub request_id: String,
    /// Configured tenant name.
    pub tenant: String,
    /// Matched rule (`explicit` for named models no rule matched; empty before routing).
    pub rule: String,
    /// `provider/model` or `local/<name>` that answered; for a failure, the last one tried
    /// (empty when none was).
    pub target: String,
    /// `local` or `remote` (empty when no target answered).
    pub tier: &'static str,
    /// HTTP status sent to the client; 499 when the client went away before an answer started
    /// (nginx's "client closed request": nothing was sent).
    pub status: u16,
    /// Prompt tokens billed.
    pub prompt_tokens: u64,
    /// Completion tokens billed.
    pub completion_tokens: u64,
    /// What the request cost, USD.
    pub cost_usd: f64,
    /// The provider reported no usage: tokens were estimated locally (about 4 characters each).
    pub cost_estimated: bool,
    /// From arrival to the end of the answer.
    pub latency_ms: u64,
    /// The same in microseconds, for the duration histogram (a cache hit or a refusal takes
    /// well under a millisecond); not in the audit line.
    #[serde(skip)]
    pub latency_us: u64,
    /// From arrival to the first streamed chunk (streams only).
    pub ttft_ms: Option<u64>,
    /// `hit` or `miss`.
    pub cache: &'static str,
    /// PII was replaced by placeholders before the request left.
    pub redacted: bool,
    /// PII kinds found (never values).
    pub pii_kinds: Vec<String>,
}

/// Where records go: the log (target `switchyard::accounting`), the Prometheus metrics, the audit
/// log and the recent-requests window. (Budgets and token limits settle through each request's
/// own `PendingRecord::on_finish`.)
#[derive(Default)]
pub struct Ledger {
    metrics: Option<Arc<Metrics>>,
    audit: Option<AuditLog>,
    /// `[metrics].baseline_model`: savings are measured against it.
    baseline: Option<String>,
    requests: AtomicU64,
    /// Set when the drain deadline cuts the requests still running: theirs is a 503, not a
    /// client that went away.
    cutting: AtomicBool,
    /// The last [`RECENT`] records, newest last (for the dashboard).
    recent: Mutex<VecDeque<UsageRecord>>,
    /// Per-minute rollups of the last day (for `/admin/stats`).
    pub rollups: Rollups,
}

impl std::fmt::Debug for Ledger {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ledger").field("requests", &self.requests()).finish_non_exhaustive()
    }
}

/// How many records [`Ledger::recent`] keeps.
const RECENT: usize = 256;

impl Ledger {
    /// A ledger feeding `metrics` and `audit`, with savings measured against `baseline`.
    pub fn new(metrics: Arc<Metrics>, audit: Option<AuditLog>, baseline: Option<String>) -> Self {
        Self { metrics: Some(metrics), audit, baseline, ..Self::default() }
    }

    /// The target savings are measured against.
    pub fn baseline(&self) -> Option<&str> {
        self.baseline.as_deref()
    }

    /// Counts an upstream failure on `target` that happened mid-stream.
    pub fn upstream_failed(&self, target: &str, kind: &str) {
        if let Some(metrics) = &self.metrics {
            let provider = target.split_once('/').map_or(target, |(p, _)| p);
            metrics.upstream_errors.with_label_values(&[provider, kind]).inc();
        }
    }

    /// The requests still running are about to be cut by the stop's deadline: those that never
    /// answered are recorded as 503 rather than 499 (client closed request).
    pub fn cut_remaining(&self) {
        self.cutting.store(true, Relaxed);
    }

    /// Writes the queued audit lines and closes the file (at shutdown).
    pub fn close(&self) {
        if let Some(audit) = &self.audit {
            audit.close();
        }
    }

    /// Takes one finished request; `savings_usd` is what it would have cost on the baseline
    /// model minus what it cost.
    pub fn record(&self, r: UsageRecord, savings_usd: f64) {
        if let Some(metrics) = &self.metrics {
            metrics.observe(&r, savings_usd);
        }
        if let Some(audit) = &self.audit {
            audit.write(&r);
        }
        self.rollups.add(&r, savings_usd);
        self.requests.fetch_add(1, Relaxed);
        tracing::info!(
            target: "switchyard::accounting",
            request_id = %r.request_id, tenant = r.tenant.as_str(), rule = r.rule.as_str(), target = r.target.as_str(), tier = r.tier,
            status = r.status, prompt_tokens = r.prompt_tokens, completion_tokens = r.completion_tokens,
            cost_usd = r.cost_usd, cost_estimated = r.cost_estimated, latency_ms = r.latency_ms,
            ttft_ms = r.ttft_ms, cache = r.cache, redacted = r.redacted, pii_kinds = ?r.pii_kinds,
            "request accounted"
        );
        if let Ok(mut recent) = self.recent.lock() {
            if recent.len() == RECENT {
                recent.pop_front();
            }
            recent.push_back(r);
        }
    }

    /// Requests recorded so far.
    pub fn requests(&self) -> u64 {
        self.requests.load(Relaxed)
    }

    /// The most recent records, oldest first.
    pub fn recent(&self) -> Vec<UsageRecord> {
        self.recent.lock().map(|r| r.iter().cloned().collect()).unwrap_or_default()
    }
}

/// Prices usage on a target; `None` when the target has no price (cost 0).
pub type Pricer = Arc<dyn Fn(&str, &Usage) -> f64 + Send + Sync>;

/// Told of one request's finished record.
pub type OnFinish = Box<dyn FnOnce(&UsageRecord) + Send>;

/// A record being filled in; written to the ledger when dropped.
pub struct PendingRecord {
    ledger: Arc<Ledger>,
    pricer: Pricer,
    started: Instant,
    record: UsageRecord,
    usage: Option<Usage>,
    /// A failure after the answer started (its kind), counted with the upstream errors.
    failed_mid_stream: Option<&'static str>,
    /// The target working on the request while no answer has started (for a client that leaves).
    /// The target being asked, and whether it was sent a redacted copy.
    attempting: Option<(String, bool)>,
    /// The request's complexity, once the router scored it (for an error's headers).
    complexity: Option<f64>,
    /// Estimates for when no usage is reported.
    prompt_chars: usize,
    completion_chars: usize,
    /// No savings are counted against the baseline model (see `without_baseline`).
    no_baseline: bool,
    /// Cut by the stop's deadline before it answered: billed like a client that left (the target
    /// had the prompt).
    cut: bool,
    /// A streamed answer: `Some(false)` while it streams, `Some(true)` once it ended (a stream
    /// dropped before then was left by its client, whatever usage it had reported so far).
    stream_done: Option<bool>,
    /// Told of the finished record (the budget settles here).
    on_finish: Option<OnFinish>,
}

impl PendingRecord {
    /// Starts the record of a request.
    pub fn new(ledger: Arc<Ledger>, pricer: Pricer, request_id: &str, tenant: &str, started: Instant) -> Self {
        Self {
            ledger,
            pricer,
            started,
            record: UsageRecord {
                ts: 0,
                request_id: request_id.to_owned(),
                tenant: tenant.to_owned(),
                rule: String::new(),
                target: String::new(),
                tier: "",
                status: 0,
                prompt_tokens: 0,
                completion_tokens: 0,
                cost_usd: 0.0,
                cost_estimated: false,
                latency_ms: 0,
                latency_us: 0,
                ttft_ms: None,
                cache: "miss",
                redacted: false,
                pii_kinds: Vec::new(),
            },
            usage: None,
            failed_mid_stream: None,
            attempting: None,
            complexity: None,
            prompt_chars: 0,
            completion_chars: 0,
            no_baseline: false,
            cut: false,
            stream_done: None,
            on_finish: None,
        }
    }

    /// The request has no counterpart on the chat baseline model (an embedding): it saves
    /// nothing against it.
    pub fn without_baseline(&mut self) {
        self.no_baseline = true;
    }

    /// Runs `f` with the finished record, after its cost is known.
    pub fn on_finish(&mut self, f: OnFinish) {
        self.on_finish = Some(f);
    }

    /// The answer came from the response cache: it costs nothing.
    pub fn cache_hit(&mut self) {
        self.record.cache = "hit";
    }

    /// The routing decision's facts.
    pub fn routed(&mut self, rule: &str, pii_kinds: Vec<String>, prompt_chars: usize) {
        rule.clone_into(&mut self.record.rule);
        self.record.pii_kinds = pii_kinds;
        self.prompt_chars = prompt_chars;
    }

    /// A chat routing decision's facts: its rule, the PII kinds it found, its complexity.
    pub fn decided(&mut self, decision: &router::Decision, prompt_chars: usize) {
        self.routed(&decision.rule, decision.privacy.pii.keys().cloned().collect(), prompt_chars);
        self.complexity = Some(decision.complexity);
    }

    /// The rule the request matched, its complexity and the last target asked, as far as they
    /// are known: an error answer names them too.
    pub fn route_so_far(&self) -> (Option<&str>, Option<f64>, Option<&str>) {
        (Some(self.record.rule.as_str()).filter(|r| !r.is_empty()), self.complexity, self.attempting.as_ref().map(|(t, _)| t.as_str()))
    }

    /// `target` is being asked for the answer (sent a redacted copy if `redacted`): if the client
    /// leaves before one starts, or the target fails, the record names it (status 499, with the
    /// prompt's estimated cost, since the target saw the prompt), and says what it was sent.
    pub fn attempting(&mut self, target: &str, redacted: bool) {
        self.attempting = Some((target.to_owned(), redacted));
    }

    /// The target that answered.
    pub fn served_by(&mut self, target: &str, redacted: bool) {
        target.clone_into(&mut self.record.target);
        self.record.tier = tier_of(target);
        self.record.redacted = redacted;
    }

    /// The HTTP status sent.
    pub fn status(&mut self, status: u16) {
        self.record.status = status;
    }

    /// A whole answer's usage.
    pub fn usage(&mut self, usage: Option<&Usage>) {
        self.usage = usage.cloned();
    }

    /// One streamed chunk: the first that carries output (text, a tool call, a refusal; not the
    /// opening role chunk a stream may send before its prompt is even read) sets the time to
    /// first token; text and usage are noted.
    pub fn chunk(&mut self, chunk: &ChatChunk) {
        let output = |c: &providers::wire::ChunkChoice| c.delta.content.as_ref().is_some_and(|t| !t.is_empty()) || c.delta.extra.values().any(providers::wire::says_something);
        if self.record.ttft_ms.is_none() && chunk.choices.iter().any(output) {
            self.record.ttft_ms = Some(millis(self.started));
        }
        for choice in &chunk.choices {
            self.completion_chars += choice.delta.content.as_ref().map_or(0, |c| c.chars().count()) + written_chars(&choice.delta.extra);
        }
        if let Some(usage) = &chunk.usage {
            self.usage = Some(usage.clone());
        }
    }

    /// A piece of streamed output text in another API's shape (Responses events passed through).
    pub fn text_delta(&mut self, text: &str) {
        if self.record.ttft_ms.is_none() {
            self.record.ttft_ms = Some(millis(self.started));
        }
        self.completion_chars += text.chars().count();
    }

    /// The answer streams from here on.
    pub fn streaming(&mut self) {
        self.stream_done = Some(false);
    }

    /// The stream ended (its last chunk passed, or its failure).
    pub fn stream_ended(&mut self) {
        self.stream_done = Some(true);
    }

    /// The upstream failed after the stream had started.
    pub fn upstream_failed(&mut self, kind: &'static str) {
        self.failed_mid_stream = Some(kind);
    }

    /// A whole answer without usage (a provider that reports none): its text's length, for the
    /// estimate.
    pub fn answer_chars(&mut self, chars: usize) {
        self.completion_chars = chars;
    }

    /// The cost as it stands (for `x-switchyard-cost-usd`): the same figure the record gets.
    pub fn cost_usd(&self) -> f64 {
        self.billed().0.map_or(0.0, |u| (self.pricer)(&self.record.target, &u))
    }

    /// The usage as it stands (for a stream's usage chunk): the same figures the record gets.
    pub fn billed_usage(&self) -> Option<Usage> {
        self.billed().0
    }

    /// The usage the request is billed for, and whether any of it is estimated.
    fn billed(&self) -> (Option<Usage>, bool) {
        let r = &self.record;
        match (&self.usage, !r.target.is_empty()) {
            // A stream that broke off, or that its client left, may have reported only its
            // prompt (Anthropic's does at its start): what it streamed counts.
            (Some(u), _) if self.failed_mid_stream.is_some() || self.stream_done == Some(false) => {
                let streamed = estimate_tokens(self.completion_chars);
                let mut billed = u.clone();
                billed.completion_tokens = u.completion_tokens.max(streamed);
                billed.total_tokens = billed.prompt_tokens + billed.completion_tokens;
                (Some(billed), streamed > u.completion_tokens)
            }
            (Some(u), _) => (Some(u.clone()), false),
            // Something was generated (or billed) but the provider said nothing, or the client
            // left (or the provider's time ran out) while a target worked on its prompt: estimate.
            (None, true) if self.completion_chars > 0 || matches!(r.status, 200 | CLIENT_CLOSED_REQUEST | UPSTREAM_TIMED_OUT) || self.cut => {
                (Some(Usage::new(estimate_tokens(self.prompt_chars), estimate_tokens(self.completion_chars))), true)
            }
            (None, _) => (None, false),
        }
    }
}

/// The characters a model wrote outside a message's (or delta's) `content`: a refusal, its
/// reasoning (`reasoning_content`, or `reasoning` as vLLM, llama-server and `OpenRouter` send it),
/// and its tool calls' names and inputs (function arguments, custom tool input) — output too,
/// when usage has to be estimated.
pub fn written_chars(extra: &serde_json::Map<String, serde_json::Value>) -> usize {
    let text = |v: Option<&serde_json::Value>| v.and_then(serde_json::Value::as_str).map_or(0, |t| t.chars().count());
    let calls = extra.get("tool_calls").and_then(serde_json::Value::as_array).into_iter().flatten();
    let called: usize = calls
        .map(|call| {
            ["function", "custom"].iter().filter_map(|kind| call.get(*kind)).map(|f| text(f.get("name")) + text(f.get("arguments")) + text(f.get("input"))).sum::<usize>()
        })
        .sum();
    called + text(extra.get("refusal")) + text(extra.get("reasoning_content")) + text(extra.get("reasoning"))
}

/// The characters a model wrote in a whole answer's message: its text, refusal and tool calls.
pub fn message_chars(message: &providers::wire::ResponseMessage) -> usize {
    let text = |t: Option<&str>| t.map_or(0, |t| t.chars().count());
    text(message.content.as_deref()) + text(message.refusal.as_deref()) + written_chars(&message.extra)
}

/// `local` for `local/<name>` targets, else `remote`.
pub fn tier_of(target: &str) -> &'static str {
    if target.starts_with("local/") {
        "local"
    } else {
        "remote"
    }
}

/// The status recorded for a request whose client went away before any answer was sent.
pub const CLIENT_CLOSED_REQUEST: u16 = 499;

/// The status of a request whose provider did not answer within its `timeout_ms`: like a client
/// leaving, the provider had the prompt (and most likely billed it).
const UPSTREAM_TIMED_OUT: u16 = 504;

/// Unix time now, in milliseconds.
pub fn unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

fn millis(since: Instant) -> u64 {
    u64::try_from(since.elapsed().as_millis()).unwrap_or(u64::MAX)
}

/// About four characters a token, rounded up: the estimate when a provider reports no usage.
pub fn estimate_tokens(chars: usize) -> u64 {
    u64::try_from(chars.div_ceil(4)).unwrap_or(u64::MAX)
}

impl Drop for PendingRecord {
    fn drop(&mut self) {
        let r = &mut self.record;
        r.latency_us = u64::try_from(self.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        r.latency_ms = r.latency_us / 1000;
        r.ts = unix_ms();
        if r.status == 0 {
            // No status was ever set: the handler was dropped before it answered, which is the
            // client going away (or, while unwinding, a bug).
            r.status = if std::thread::panicking() {
                500
            } else if self.ledger.cutting.load(Relaxed) {
                self.cut = true;
                503
            } else {
                CLIENT_CLOSED_REQUEST
            };
        }
        // A failure names the last target tried, so that a failing provider's errors count
        // against it (dashboard error rates, `switchyard_requests_total{target}`).
        if let (Some((target, redacted)), true) = (self.attempting.take(), r.target.is_empty() && r.status >= 400) {
            r.tier = tier_of(&target);
            r.target = target;
            r.redacted = redacted;
        }
        let (usage, estimated) = self.billed();
        let r = &mut self.record;
        r.cost_estimated |= estimated;
        let mut savings = 0.0;
        if let Some(u) = usage {
            let hit = r.cache == "hit";
            // A cache hit bills nothing: no tokens, no cost; it saves what the baseline would charge.
            if !hit {
                r.prompt_tokens = u.prompt_tokens;
                r.completion_tokens = u.completion_tokens;
                r.cost_usd = (self.pricer)(&r.target, &u);
            }
            // A request the client left, or the stop's deadline cut, saved nothing: no answer was
            // delivered.
            if let Some(baseline) = self.ledger.baseline().filter(|_| r.status != CLIENT_CLOSED_REQUEST && !self.cut && !self.no_baseline) {
                savings = crate::budgets::without_float_noise((self.pricer)(baseline, &u) - r.cost_usd);
            }
        }
        if let Some(kind) = self.failed_mid_stream {
            self.ledger.upstream_failed(&r.target, kind);
        }
        if let Some(f) = self.on_finish.take() {
            f(r);
        }
        self.ledger.record(std::mem::take(r), savings);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pending(ledger: &Arc<Ledger>) -> PendingRecord {
        #[allow(clippy::cast_precision_loss)]
        let pricer: Pricer = Arc::new(|_, u: &Usage| u.total_tokens as f64 * 1e-6);
        PendingRecord::new(Arc::clone(ledger), pricer, "req-1", "acme", Instant::now())
    }

    #[test]
    fn an_error_before_routing_is_still_recorded() {
        let ledger = Arc::new(Ledger::default());
        let mut p = pending(&ledger);
        p.status(400);
        drop(p);
        assert_eq!(ledger.requests(), 1);
        let r = &ledger.recent()[0];
        assert_eq!((r.status, r.tenant.as_str(), r.prompt_tokens, r.cost_usd), (400, "acme", 0, 0.0));
        assert!(!r.cost_estimated);
    }

    #[test]
    fn a_client_leaving_before_the_answer_is_a_499_against_the_target_it_left() {
        let ledger = Arc::new(Ledger::default());
        let mut p = pending(&ledger);
        p.routed("default", vec![], 40);
        p.attempting("fake/echo", false);
        drop(p);
        let r = &ledger.recent()[0];
        assert_eq!((r.status, r.target.as_str(), r.tier), (CLIENT_CLOSED_REQUEST, "fake/echo", "remote"));
        // The target saw the prompt: its cost is estimated, and marked so.
        assert!(r.cost_estimated);
        assert_eq!((r.prompt_tokens, r.completion_tokens), (10, 0));
        // Leaving before any target was asked: a 499 against nothing, costing nothing.
        drop(pending(&ledger));
        let r = &ledger.recent()[1];
        assert_eq!((r.status, r.target.as_str(), r.cost_usd, r.cost_estimated), (CLIENT_CLOSED_REQUEST, "", 0.0, false));
    }

    #[test]
    fn a_client_that_left_or_a_request_the_stop_cut_saved_nothing() {
        let metrics = Arc::new(crate::metrics::Metrics::new().unwrap());
        let ledger = Arc::new(Ledger::new(Arc::clone(&metrics), None, Some("fake/paid".into())));
        // Local answers are free; the baseline charges $1 per million tokens.
        #[allow(clippy::cast_precision_loss)]
        let pricer: Pricer = Arc::new(|target, u: &Usage| if target == "fake/paid" { u.total_tokens as f64 * 1e-6 } else { 0.0 });
        for leaves in [true, false] {
            let mut p = PendingRecord::new(Arc::clone(&ledger), Arc::clone(&pricer), "req-1", "acme", Instant::now());
            p.routed("default", vec![], 400);
            p.attempting("local/small", false);
            if !leaves {
                p.served_by("local/small", false);
                p.status(200);
            }
            drop(p);
        }
        // The stop's deadline cuts one that had not answered: a 503, billed the prompt the
        // target saw, and no saving (nothing was delivered).
        ledger.cut_remaining();
        let mut cut = PendingRecord::new(Arc::clone(&ledger), Arc::clone(&pricer), "req-2", "acme", Instant::now());
        cut.routed("default", vec![], 400);
        cut.attempting("local/small", false);
        drop(cut);
        assert_eq!((ledger.recent()[2].status, ledger.recent()[2].prompt_tokens), (503, 100));
        let day = ledger.rollups.window(unix_ms() / 60_000, 60);
        // Only the answered request saved the baseline's price of its (estimated) 100 prompt tokens.
        assert!((day["total"]["savings_usd"].as_f64().unwrap() - 100e-6).abs() < 1e-12, "{day}");
    }

    #[test]
    fn a_failure_names_the_last_target_tried_at_no_cost() {
        let ledger = Arc::new(Ledger::default());
        let mut p = pending(&ledger);
        p.routed("default", vec![], 40);
        p.attempting("fake/fail", false);
        p.attempting("fake/backup", true);
        p.status(502);
        drop(p);
        let r = &ledger.recent()[0];
        assert_eq!((r.status, r.target.as_str(), r.tier, r.cost_usd, r.cost_estimated), (502, "fake/backup", "remote", 0.0, false));
        assert!(r.redacted, "the failed target was sent a redacted copy, and the record says so");
    }

    #[test]
    fn a_record_dropped_by_a_panic_is_a_500() {
        let ledger = Arc::new(Ledger::default());
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _p = pending(&ledger);
            panic!("a bug in a handler");
        }));
        assert!(panicked.is_err());
        assert_eq!(ledger.recent()[0].status, 500);
    }

    fn chunk(json: serde_json::Value) -> ChatChunk {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn the_time_to_first_token_waits_for_output_not_the_opening_role_chunk() {
        let ledger = Arc::new(Ledger::default());
        let mut p = pending(&ledger);
        p.served_by("local/m", false);
        p.status(200);
        p.chunk(&chunk(serde_json::json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"role": "assistant", "content": "", "refusal": null}, "finish_reason": null}]})));
        assert_eq!(p.record.ttft_ms, None, "no token yet");
        p.chunk(&chunk(serde_json::json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"tool_calls": [{"index": 0, "id": "c", "type": "function", "function": {"name": "f", "arguments": ""}}]}, "finish_reason": null}]})));
        assert!(p.record.ttft_ms.is_some(), "a tool call is output");
    }

    #[test]
    fn a_stream_without_usage_is_estimated_and_marked() {
        let ledger = Arc::new(Ledger::default());
        let mut p = pending(&ledger);
        p.routed("default", vec!["email".into()], 40);
        p.served_by("fake/echo", true);
        p.status(200);
        p.chunk(&chunk(serde_json::json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [{"index": 0, "delta": {"content": "twelve chars"}, "finish_reason": null}]})));
        drop(p);
        let r = &ledger.recent()[0];
        assert!(r.cost_estimated && r.ttft_ms.is_some() && r.redacted);
        assert_eq!((r.prompt_tokens, r.completion_tokens, r.tier), (10, 3, "remote"));
        assert!((r.cost_usd - 13e-6).abs() < 1e-12);
    }

    #[test]
    fn reported_usage_wins_over_the_estimate() {
        let ledger = Arc::new(Ledger::default());
        let mut p = pending(&ledger);
        p.served_by("local/small", false);
        p.status(200);
        p.chunk(&chunk(serde_json::json!({"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
            "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12}})));
        drop(p);
        let r = &ledger.recent()[0];
        assert!(!r.cost_estimated);
        assert_eq!((r.prompt_tokens, r.completion_tokens, r.tier), (7, 5, "local"));
    }
}
