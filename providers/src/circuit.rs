//! A circuit breaker per provider and model: after `failures` consecutive failures, or when at
//! least half of the last [`WINDOW`] calls failed, the circuit opens and calls fail fast for
//! `open_for`; then one probe is let through (half-open): success closes the circuit, failure
//! opens it again, and a probe abandoned by its caller lets the next call probe. One failing
//! model does not close the provider's others. The state machine takes the time as an argument,
//! so it is tested without sleeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::StreamExt as _;

use crate::provider::{ChunkStream, Provider};
use crate::wire::{ChatRequest, ChatResponse};
use crate::ProviderError;

/// Calls remembered for the error-rate rule.
const WINDOW: usize = 20;
/// The error-rate rule needs at least this many calls in the window.
const MIN_CALLS_FOR_RATE: usize = 10;
/// Breakers kept per provider at most (its configured models are far fewer); calls for models
/// beyond share one.
const MAX_BREAKERS: usize = 256;

/// Breaker settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive failures that open the circuit.
    pub failures: u32,
    /// How long it stays open before a probe.
    pub open_for: Duration,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed,
    Open { until: Instant },
    /// One probe is in flight; others fail fast until it returns.
    HalfOpen,
}

/// The breaker's state machine.
#[derive(Debug)]
pub struct Breaker {
    config: BreakerConfig,
    state: State,
    consecutive: u32,
    /// Outcomes of the last calls, `true` = failed.
    recent: std::collections::VecDeque<bool>,
}

impl Breaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self { config, state: State::Closed, consecutive: 0, recent: std::collections::VecDeque::with_capacity(WINDOW) }
    }

    /// May a call go out at `now`? An open circuit whose time is up lets exactly one probe through.
    pub fn allow(&mut self, now: Instant) -> bool {
        match self.state {
            State::Closed => true,
            State::Open { until } if now >= until => {
                self.state = State::HalfOpen;
                true
            }
            State::Open { .. } | State::HalfOpen => false,
        }
    }

    /// The probe let through at some point before `now` will not report (its caller went away):
    /// the next call may probe instead. Without this the circuit stayed half-open for good.
    pub fn abandon_probe(&mut self, now: Instant) {
        if self.state == State::HalfOpen {
            self.state = State::Open { until: now };
        }
    }

    /// Whole seconds (at least 1) until an open circuit lets a probe through.
    pub fn retry_after_s(&self, now: Instant) -> u64 {
        match self.state {
            #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
            State::Open { until } => until.saturating_duration_since(now).as_secs_f64().ceil().max(1.0) as u64,
            State::Closed | State::HalfOpen => 1,
        }
    }

    /// True while calls fail fast (what the router sees).
    pub fn is_open(&self, now: Instant) -> bool {
        match self.state {
            State::Closed => false,
            State::Open { until } => now < until,
            State::HalfOpen => true,
        }
    }

    /// The outcome of a call that was allowed at some point before `now`.
    pub fn record(&mut self, failed: bool, now: Instant) {
        if self.recent.len() == WINDOW {
            self.recent.pop_front();
        }
        self.recent.push_back(failed);
        if !failed {
            self.consecutive = 0;
            self.state = State::Closed;
            return;
        }
        self.consecutive += 1;
        let failed_calls = self.recent.iter().filter(|f| **f).count();
        let rate_tripped = self.recent.len() >= MIN_CALLS_FOR_RATE && failed_calls * 2 >= self.recent.len();
        if self.state == State::HalfOpen || self.consecutive >= self.config.failures || rate_tripped {
            self.state = State::Open { until: now + self.config.open_for };
            // A fresh window after each opening: old failures must not re-trip the first probe.
            self.recent.clear();
            self.consecutive = 0;
        }
    }
}

/// True for failures that say the provider is unwell (not the request's fault, not a rate limit).
pub fn counts_against_provider(err: &ProviderError) -> bool {
    match err {
        ProviderError::Upstream { .. } | ProviderError::Timeout { .. } => true,
        ProviderError::InvalidRequest { .. }
        | ProviderError::ContextLengthExceeded { .. }
        | ProviderError::Overloaded { .. }
        | ProviderError::RateLimited { .. }
        | ProviderError::Rejected { .. }
        | ProviderError::CircuitOpen { .. }
        | ProviderError::Unavailable { .. } => false,
    }
}

/// A provider behind breakers, one per model: calls fail fast while their model's circuit is open.
pub struct Guarded {
    name: String,
    inner: Arc<dyn Provider>,
    config: BreakerConfig,
    /// Shared with the streams it let through, which report a failure after their start.
    breakers: Arc<Mutex<HashMap<String, Breaker>>>,
}

/// A call let through: settled with its outcome, or, dropped unsettled (its caller went away),
/// the probe it was is given up.
struct Call<'a> {
    guarded: &'a Guarded,
    model: String,
    probe: bool,
}

impl Call<'_> {
    fn settle<T>(mut self, result: &Result<T, ProviderError>) {
        // A call that says nothing of the provider is not recorded; a probe so ended is given up
        // (on drop), and the next call probes.
        let Some(failed) = verdict(result) else { return };
        self.guarded.with_breaker(&self.model, |b| b.record(failed, Instant::now()));
        self.probe = false;
    }
}

/// What a call's outcome says of the provider's health: failed, answered, or nothing — a request
/// refused here before anything was sent (a field the API cannot carry, `n` > 1 to Anthropic)
/// must not close an open circuit as if the provider had answered.
fn verdict<T>(result: &Result<T, ProviderError>) -> Option<bool> {
    match result {
        Err(ProviderError::InvalidRequest { .. }) => None,
        Err(err) => Some(counts_against_provider(err)),
        Ok(_) => Some(false),
    }
}

impl Drop for Call<'_> {
    fn drop(&mut self) {
        if self.probe {
            self.guarded.with_breaker(&self.model, |b| b.abandon_probe(Instant::now()));
        }
    }
}

impl Guarded {
    /// Wraps `inner` (called `name` in errors).
    pub fn new(name: &str, inner: Arc<dyn Provider>, config: BreakerConfig) -> Self {
        Self { name: name.to_owned(), inner, config, breakers: Arc::new(Mutex::new(HashMap::new())) }
    }

    /// True while the circuit of any of its models is open (or a half-open probe is out).
    pub fn is_open(&self) -> bool {
        let now = Instant::now();
        self.breakers.lock().is_ok_and(|b| b.values().any(|b| b.is_open(now)))
    }

    /// The models whose circuit is open now.
    pub fn open_models(&self) -> Vec<String> {
        let now = Instant::now();
        self.breakers.lock().map(|b| b.iter().filter(|(_, b)| b.is_open(now)).map(|(m, _)| m.clone()).collect()).unwrap_or_default()
    }

    fn with_breaker<T>(&self, model: &str, f: impl FnOnce(&mut Breaker) -> T) -> Option<T> {
        with_breaker_in(&self.breakers, self.config, model, f)
    }

    fn admit(&self, model: &str) -> Result<Call<'_>, ProviderError> {
        let now = Instant::now();
        let admitted = self.with_breaker(model, |b| {
            // Let through while not closed: the half-open probe.
            let probe = b.state != State::Closed;
            if b.allow(now) {
                Ok(probe)
            } else {
                Err(b.retry_after_s(now))
            }
        });
        // A poisoned lock refuses, with the shortest wait.
        match admitted.unwrap_or(Err(1)) {
            Ok(probe) => Ok(Call { guarded: self, model: model.to_owned(), probe }),
            Err(retry_after_s) => Err(ProviderError::CircuitOpen { provider: format!("{}/{model}", self.name), retry_after_s }),
        }
    }
}

/// Runs `f` on `model`'s breaker in `breakers` (made with `config` if it is new; past
/// `MAX_BREAKERS` models, one shared breaker stands for the rest).
fn with_breaker_in<T>(breakers: &Mutex<HashMap<String, Breaker>>, config: BreakerConfig, model: &str, f: impl FnOnce(&mut Breaker) -> T) -> Option<T> {
    let mut breakers = breakers.lock().ok()?;
    let key = if breakers.contains_key(model) || breakers.len() < MAX_BREAKERS { model } else { "" };
    if !breakers.contains_key(key) {
        breakers.insert(key.to_owned(), Breaker::new(config));
    }
    breakers.get_mut(key).map(f)
}

/// The model a passed-through body names.
fn model_of(body: &serde_json::Value) -> &str {
    body.get("model").and_then(serde_json::Value::as_str).unwrap_or_default()
}

impl std::fmt::Debug for Guarded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Guarded").field("name", &self.name).field("open", &self.open_models()).finish_non_exhaustive()
    }
}

#[async_trait]
impl Provider for Guarded {
    async fn complete(&self, req: ChatRequest) -> Result<ChatResponse, ProviderError> {
        let call = self.admit(&req.model)?;
        let result = self.inner.complete(req).await;
        call.settle(&result);
        result
    }

    async fn stream(&self, req: ChatRequest) -> Result<ChunkStream, ProviderError> {
        let call = self.admit(&req.model)?;
        // Judged on its first chunk, not on its status: a server that answers 200 and then only
        // an error (`data: {"error": …}`) is failing, and the caller peeks for it anyway.
        let model = req.model.clone();
        let ended = || ProviderError::Upstream { provider: self.name.clone(), status: Some(200), message: "the stream ended before its first chunk".into() };
        let result = match self.inner.stream(req).await {
            Ok(chunks) => crate::provider::peek_first(chunks, ended).await.map(|chunks| {
                // A failure after the start (a stall past `timeout_ms`, a broken connection, an
                // error event) counts against the model too, once the stream has counted as
                // answered: a server that always breaks off mid-answer opens its circuit.
                let (breakers, config) = (Arc::clone(&self.breakers), self.config);
                chunks
                    .inspect(move |chunk| {
                        if chunk.as_ref().is_err_and(counts_against_provider) {
                            with_breaker_in(&breakers, config, &model, |b| b.record(true, Instant::now()));
                        }
                    })
                    .boxed()
            }),
            Err(err) => Err(err),
        };
        call.settle(&result);
        result
    }

    async fn embeddings(&self, body: serde_json::Value) -> Result<serde_json::Value, ProviderError> {
        let call = self.admit(model_of(&body))?;
        let result = self.inner.embeddings(body).await;
        call.settle(&result);
        result
    }

    async fn responses(&self, body: serde_json::Value) -> Result<serde_json::Value, ProviderError> {
        let call = self.admit(model_of(&body))?;
        let result = self.inner.responses(body).await;
        call.settle(&result);
        result
    }

    async fn responses_stream(&self, body: serde_json::Value) -> Result<crate::provider::ResponseEvents, ProviderError> {
        let call = self.admit(model_of(&body))?;
        let result = self.inner.responses_stream(body).await;
        call.settle(&result);
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: BreakerConfig = BreakerConfig { failures: 3, open_for: Duration::from_secs(30) };

    #[test]
    fn opens_after_consecutive_failures_and_fails_fast() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CONFIG);
        for _ in 0..2 {
            assert!(b.allow(t0));
            b.record(true, t0);
        }
        assert!(!b.is_open(t0));
        b.record(true, t0);
        assert!(b.is_open(t0));
        assert!(!b.allow(t0 + Duration::from_secs(29)));
        // Clients are told when the probe is due: whole seconds, at least one.
        assert_eq!(b.retry_after_s(t0), 30);
        assert_eq!(b.retry_after_s(t0 + Duration::from_millis(28_500)), 2);
        assert_eq!(b.retry_after_s(t0 + Duration::from_secs(29)), 1);
    }

    #[test]
    fn half_open_probe_closes_on_success_and_reopens_on_failure() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CONFIG);
        for _ in 0..3 {
            b.record(true, t0);
        }
        let later = t0 + Duration::from_secs(30);
        assert!(b.allow(later), "one probe");
        assert!(!b.allow(later), "only one probe");
        b.record(true, later);
        assert!(b.is_open(later + Duration::from_secs(1)), "a failed probe reopens");
        let again = later + Duration::from_secs(30);
        assert!(b.allow(again));
        b.record(false, again);
        assert!(!b.is_open(again) && b.allow(again), "a good probe closes");
    }

    #[test]
    fn an_abandoned_probe_lets_the_next_call_probe() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CONFIG);
        for _ in 0..3 {
            b.record(true, t0);
        }
        let later = t0 + Duration::from_secs(30);
        assert!(b.allow(later), "the probe");
        b.abandon_probe(later);
        assert!(b.allow(later), "its caller left: the next call probes (it stayed half-open for good)");
        b.record(false, later);
        assert!(!b.is_open(later));
        b.abandon_probe(later);
        assert!(!b.is_open(later), "only a probe is given up");
    }

    #[test]
    fn error_rate_opens_without_consecutive_failures() {
        let t0 = Instant::now();
        let mut b = Breaker::new(BreakerConfig { failures: 100, open_for: Duration::from_secs(1) });
        for i in 0..10 {
            b.record(i % 2 == 1, t0);
        }
        assert!(b.is_open(t0));
    }

    struct Scripted(Mutex<Vec<Result<serde_json::Value, ProviderError>>>);

    #[async_trait]
    impl Provider for Scripted {
        async fn complete(&self, _: ChatRequest) -> Result<ChatResponse, ProviderError> {
            Err(ProviderError::Unavailable { message: "not scripted".into() })
        }
        async fn stream(&self, _: ChatRequest) -> Result<ChunkStream, ProviderError> {
            Err(ProviderError::Unavailable { message: "not scripted".into() })
        }
        async fn embeddings(&self, _: serde_json::Value) -> Result<serde_json::Value, ProviderError> {
            self.0.lock().unwrap().remove(0)
        }
    }

    #[tokio::test]
    async fn a_request_refused_before_it_was_sent_does_not_close_an_open_circuit() {
        let down = || Err(ProviderError::Upstream { provider: "p".into(), status: Some(503), message: "down".into() });
        let refused = Err(ProviderError::InvalidRequest { message: "n > 1".into(), param: Some("n".into()) });
        let script = Scripted(Mutex::new(vec![down(), down(), down(), refused, Ok(serde_json::json!({}))]));
        // Open for no time: the call after it opens is the half-open probe.
        let guarded = Guarded::new("p", Arc::new(script), BreakerConfig { failures: 3, open_for: Duration::ZERO });
        let body = serde_json::json!({"model": "m"});
        for _ in 0..3 {
            assert!(guarded.embeddings(body.clone()).await.is_err());
        }
        let state = || guarded.with_breaker("m", |b| b.state).unwrap();
        assert!(matches!(state(), State::Open { .. }));
        // The probe is refused before it reaches the provider: the circuit stays open (it was
        // closed, as if the provider had answered), and the next call probes.
        assert!(matches!(guarded.embeddings(body.clone()).await, Err(ProviderError::InvalidRequest { .. })));
        assert!(matches!(state(), State::Open { .. }), "{:?}", state());
        assert!(guarded.embeddings(body).await.is_ok());
        assert_eq!(state(), State::Closed, "an answered probe closes it");
        assert_eq!(verdict::<()>(&Err(ProviderError::Upstream { provider: "p".into(), status: None, message: String::new() })), Some(true));
    }

    #[test]
    fn successes_reset_the_count() {
        let t0 = Instant::now();
        let mut b = Breaker::new(CONFIG);
        for _ in 0..5 {
            b.record(true, t0);
            b.record(false, t0);
        }
        assert!(!b.is_open(t0));
    }
}
