//! Prometheus metrics (INTERFACE.md §5), fed by the accounting records and, at scrape time, by
//! the engine's counters and the providers' circuit state. Labels only ever carry configured
//! names (rules, targets, providers, tenants) or fixed words, so cardinality stays bounded.

use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use crate::accounting::UsageRecord;

/// Request durations: 1 ms (cache hits, refusals) to 2 minutes (LLM answers, local and remote).
const DURATION_BUCKETS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0];
/// Time to first token: 5 ms to 30 s.
const TTFT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Every metric the gateway exports, in its own registry.
pub struct Metrics {
    registry: Registry,
    requests: IntCounterVec,
    duration: HistogramVec,
    ttft: HistogramVec,
    tokens: IntCounterVec,
    cost: CounterVec,
    savings: CounterVec,
    /// Upstream failures by provider and kind (`timeout`, `upstream`, `rate_limited`, …).
    pub upstream_errors: IntCounterVec,
    /// 1 while a provider's circuit is open.
    pub circuit_open: IntGaugeVec,
    /// Requests waiting for an engine slot.
    pub queue_depth: IntGauge,
    /// Sequences the engine is running.
    pub active_sequences: IntGauge,
    /// KV cells held by running sequences.
    pub kv_cells_used: IntGauge,
    /// Each tenant's requests waiting for an engine slot.
    pub tenant_queue_depth: IntGaugeVec,
    /// Each tenant's sequences the engine is running.
    pub tenant_active_sequences: IntGaugeVec,
    /// Budget left per tenant and period.
    pub budget_remaining: prometheus::GaugeVec,
    /// Steps the limits store (Redis) could not take, by what was done instead.
    pub store_unavailable: IntCounterVec,
    /// Answers served from the response cache.
    pub cache_hits: IntCounter,
    /// Audit lines dropped because the writer fell behind.
    pub audit_dropped: IntCounter,
    /// Requests sent to their rule's `spill` target because the local engine was overloaded.
    pub spills: IntCounterVec,
    /// Shadow comparisons by complexity bucket and verdict.
    pub shadow_comparisons: IntCounterVec,
    /// Share of shadow comparisons where the local answer was as good, by complexity bucket.
    pub shadow_win_rate: prometheus::GaugeVec,
    /// Sampled shadow comparisons that did not run, by reason.
    pub shadow_dropped: IntCounterVec,
    /// What shadow calls cost, USD.
    pub shadow_cost: prometheus::Counter,
    /// Requests refused for a missing or wrong key, by surface (`api`: virtual keys; `admin`).
    pub auth_failures: IntCounterVec,
    /// Configuration reloads by result (`applied`, `refused`).
    pub config_reloads: IntCounterVec,
    /// 1 unless the last reload was refused (the running configuration is not the file's).
    pub config_last_reload_successful: IntGauge,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

/// `collector`, registered in `registry`.
fn registered<C: prometheus::core::Collector + Clone + 'static>(registry: &Registry, collector: C) -> Result<C, prometheus::Error> {
    registry.register(Box::new(collector.clone()))?;
    Ok(collector)
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new();
        let counter = |name: &str, help: &str, labels: &[&str]| registered(&registry, IntCounterVec::new(Opts::new(name, help), labels)?);
        let histogram =
            |name: &str, help: &str, buckets: &[f64]| registered(&registry, HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets.to_vec()), &["target"])?);
        let float_counter = |name: &str, help: &str, labels: &[&str]| registered(&registry, CounterVec::new(Opts::new(name, help), labels)?);
        let gauge = |name: &str, help: &str| registered(&registry, IntGauge::new(name, help)?);
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| registered(&registry, IntGaugeVec::new(Opts::new(name, help), labels)?);
        let metrics = Self {
            requests: counter("switchyard_requests_total", "Requests finished (chat, completions, Responses, embeddings), by rule, target, tier and HTTP status.", &["rule", "target", "tier", "status"])?,
            duration: histogram("switchyard_request_duration_seconds", "From arrival to the end of the answer.", DURATION_BUCKETS)?,
            ttft: histogram("switchyard_time_to_first_token_seconds", "From arrival to the first streamed chunk that carries output (text or a tool call).", TTFT_BUCKETS)?,
            tokens: counter("switchyard_tokens_total", "Tokens billed, by target and kind (prompt, completion).", &["target", "kind"])?,
            cost: float_counter("switchyard_cost_usd_total", "What requests cost, USD.", &["target", "tenant"])?,
            savings: float_counter("switchyard_savings_usd_total", "What requests would have cost on [metrics].baseline_model minus what they cost, USD (never below 0 per request).", &["tenant"])?,
            upstream_errors: counter("switchyard_upstream_errors_total", "Requests a provider failed (once per request and target, after its retries), by provider and kind.", &["provider", "kind"])?,
            circuit_open: gauge_vec("switchyard_circuit_open", "1 while the provider's circuit is open.", &["provider"])?,
            queue_depth: gauge("switchyard_engine_queue_depth", "Requests waiting for a local engine slot.")?,
            active_sequences: gauge("switchyard_engine_active_sequences", "Sequences the local engine is prefilling or decoding.")?,
            kv_cells_used: gauge("switchyard_engine_kv_cells_used", "KV cells held by running sequences.")?,
            tenant_queue_depth: gauge_vec("switchyard_engine_tenant_queue_depth", "A tenant's requests waiting for a local engine slot.", &["tenant"])?,
            tenant_active_sequences: gauge_vec("switchyard_engine_tenant_active_sequences", "A tenant's sequences the local engine is prefilling or decoding.", &["tenant"])?,
            budget_remaining: registered(&registry, prometheus::GaugeVec::new(Opts::new("switchyard_budget_remaining_usd", "Budget left, USD, by tenant and period."), &["tenant", "period"])?)?,
            auth_failures: counter(
                "switchyard_auth_failures_total",
                "Requests refused with 401 for a missing or unknown key, by surface (api: virtual keys on /v1; admin: the admin key).",
                &["surface"],
            )?,
            store_unavailable: counter(
                "switchyard_store_unavailable_total",
                "Limit and budget steps Redis could not take, by what happened instead (fail_open: this replica's own store; fail_closed: refused; settle_retry: settlement queued until Redis returns).",
                &["action"],
            )?,
            cache_hits: registered(&registry, IntCounter::new("switchyard_cache_hits_total", "Answers served from the response cache.")?)?,
            audit_dropped: registered(&registry, IntCounter::new("switchyard_audit_dropped_total", "Audit lines dropped because the writer fell behind.")?)?,
            spills: counter(
                "switchyard_spill_total",
                "Requests sent to their rule's spill target because the local engine would miss a latency target, by rule and reason (ttft, decode_rate, queue).",
                &["rule", "reason"],
            )?,
            shadow_comparisons: counter(
                "switchyard_shadow_comparisons_total",
                "Shadow comparisons of a local answer with a remote one, by complexity bucket and verdict (local, tie, remote).",
                &["complexity_bucket", "verdict"],
            )?,
            shadow_win_rate: {
                let g = prometheus::GaugeVec::new(
                    Opts::new("switchyard_shadow_win_rate", "Share of shadow comparisons where the local answer was as good as the remote one (won or tied), by complexity bucket."),
                    &["complexity_bucket"],
                )?;
                registry.register(Box::new(g.clone()))?;
                g
            },
            shadow_dropped: counter(
                "switchyard_shadow_dropped_total",
                "Sampled shadow comparisons that did not run, by reason (budget, concurrency, failed).",
                &["reason"],
            )?,
            shadow_cost: registered(&registry, prometheus::Counter::new("switchyard_shadow_cost_usd_total", "What shadow calls (remote answers and judgements) cost, USD.")?)?,
            config_reloads: counter("switchyard_config_reloads_total", "Configuration reloads (SIGHUP or POST /admin/reload) by result (applied, refused).", &["result"])?,
            config_last_reload_successful: gauge(
                "switchyard_config_last_reload_successful",
                "1 unless the last configuration reload was refused (then the gateway runs a configuration the file no longer holds).",
            )?,
            registry,
        };
        metrics.config_last_reload_successful.set(1);
        Ok(metrics)
    }

    /// Counts one finished request. `savings_usd` is the baseline's price minus the cost.
    pub fn observe(&self, r: &UsageRecord, savings_usd: f64) {
        let target = if r.target.is_empty() { "none" } else { r.target.as_str() };
        let rule = if r.rule.is_empty() { "none" } else { r.rule.as_str() };
        let tier = if r.tier.is_empty() { "none" } else { r.tier };
        self.requests.with_label_values(&[rule, target, tier, &r.status.to_string()]).inc();
        #[allow(clippy::cast_precision_loss)]
        self.duration.with_label_values(&[target]).observe(r.latency_us as f64 / 1e6);
        if let Some(ttft) = r.ttft_ms {
            #[allow(clippy::cast_precision_loss)]
            self.ttft.with_label_values(&[target]).observe(ttft as f64 / 1000.0);
        }
        self.tokens.with_label_values(&[target, "prompt"]).inc_by(r.prompt_tokens);
        self.tokens.with_label_values(&[target, "completion"]).inc_by(r.completion_tokens);
        self.cost.with_label_values(&[target, &r.tenant]).inc_by(r.cost_usd.max(0.0));
        self.savings.with_label_values(&[&r.tenant]).inc_by(savings_usd.max(0.0));
        if r.cache == "hit" {
            self.cache_hits.inc();
        }
    }

    /// Counts a shadow comparison and updates its bucket's win rate.
    pub fn shadow_recorded(&self, record: &crate::shadow::ShadowRecord) {
        let b = record.complexity_bucket.as_str();
        let verdict = match record.verdict {
            crate::shadow::Vote::Local => "local",
            crate::shadow::Vote::Tie => "tie",
            crate::shadow::Vote::Remote => "remote",
        };
        self.shadow_comparisons.with_label_values(&[b, verdict]).inc();
        let count = |v: &str| self.shadow_comparisons.with_label_values(&[b, v]).get();
        let (good, all) = (count("local") + count("tie"), count("local") + count("tie") + count("remote"));
        #[allow(clippy::cast_precision_loss)]
        self.shadow_win_rate.with_label_values(&[b]).set(good as f64 / all.max(1) as f64);
        self.shadow_cost.inc_by(record.cost_usd.max(0.0));
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding our own registry's families into a Vec cannot fail.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
