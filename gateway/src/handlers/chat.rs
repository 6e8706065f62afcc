//! `POST /v1/chat/completions`.

use std::borrow::Cow;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::stream::{self, StreamExt};
use local_engine::Confidence;
use providers::wire::{ChatChunk, ChatRequest, ChatResponse, Usage};
use providers::{ChunkStream, Provider, ProviderError};
use router::{Decision, Redaction, TenantProfile};
use tracing::{warn, Instrument};

use crate::accounting::{estimate_tokens, PendingRecord};
use crate::admission::{Admitted, Ticket};
use crate::budgets::usd_to_nanos;
use crate::cache::{cache_key, replay_chunks, CacheKey, Cached, ResponseCache, StreamCollector};
use crate::chat_request::parse_chat_request;
use crate::dispatch::{caller_tags, count_upstream_error, error_kind, plan, provider_for, worth_falling_back};
use crate::error::ApiError;
use crate::handlers::read_body;
use crate::in_flight::InFlightGuard;
use crate::middleware::request_ctx::RequestCtx;
use crate::privacy::{self, StreamRestorer};
use crate::shadow::{Candidate, Shadow};
use crate::spill::Spillover;
use crate::state::AppState;

/// Answers a chat completion, streamed or not, from the target the router picks. Every request
/// leaves one accounting record, whatever way it ends.
pub async fn chat_completions(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    Extension(tenant): Extension<Arc<TenantProfile>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut exchange = Exchange::new(&state, &ctx, &tenant);
    let result = async {
        let bytes = read_body(body, state.config.server.max_body_bytes, state.body_timeout()).await?;
        let req = parse_chat_request(&bytes)?;
        serve_chat(&state, &ctx, &tenant, &headers, req, &mut exchange).await.map(render_chat)
    }
    .await;
    exchange.finish(&state, &tenant, result).await
}

/// What the chat pipeline produced, before it is written in one API's shape (chat completions,
/// Responses, legacy completions).
pub struct Served {
    /// `x-switchyard-*` headers (route, cost, cache, cascade).
    pub headers: HeaderMap,
    /// The answer.
    pub body: ServedBody,
}

/// A whole answer or a stream of chunks.
pub enum ServedBody {
    /// Not streamed.
    Complete(Box<ChatResponse>),
    /// Streamed; the usage-only chunk comes last when the upstream sent one.
    Stream {
        /// The chunks; an `Err` ends the stream.
        chunks: ChunkStream,
        /// The client asked for the usage chunk.
        include_usage: bool,
    },
}

/// Writes a chat-completions answer: JSON, or SSE chunks ending with `[DONE]`.
pub fn render_chat(served: Served) -> Response {
    let Served { headers, body } = served;
    let mut http = match body {
        ServedBody::Complete(response) => Json(*response).into_response(),
        ServedBody::Stream { chunks, include_usage } => crate::handlers::event_stream(sse_events(chunks, include_usage)),
    };
    // The body's one or two headers join the route headers, not the other way round.
    let mut headers = headers;
    std::mem::swap(http.headers_mut(), &mut headers);
    http.headers_mut().extend(headers);
    http
}

/// One request's accounting record and rate-limit standing: the record is written whatever way
/// the request ends, the rate headers go on every answer (errors too).
pub struct Exchange {
    record: Option<PendingRecord>,
    rate: RateHeaders,
}

impl Exchange {
    /// Opens the record for a request of `tenant`.
    pub fn new(state: &AppState, ctx: &RequestCtx, tenant: &TenantProfile) -> Self {
        let record = PendingRecord::new(Arc::clone(&state.ledger), Arc::clone(&state.pricer), &ctx.request_id, &tenant.name, ctx.started);
        Self { record: Some(record), rate: RateHeaders::default() }
    }

    /// The record of this request, until a stream takes it.
    pub fn record(&mut self) -> Option<&mut PendingRecord> {
        self.record.as_mut()
    }

    /// Takes the record, for a stream that writes it when it ends.
    pub fn take_record(&mut self) -> Option<PendingRecord> {
        self.record.take()
    }

    /// Admission outside the chat pipeline: an in-flight slot, the rate limits and the worst-case
    /// reservation, all released when the record is written. `Ok(false)`: the budget cannot hold
    /// it and the tenant's `on_exceed` sends it to the local engine instead (nothing was taken);
    /// only when `local_retry`, else that is `budget_exceeded`.
    #[allow(clippy::too_many_arguments)]
    pub async fn admit(
        &mut self,
        state: &AppState,
        ctx: &RequestCtx,
        tenant: &TenantProfile,
        prompt_tokens: u64,
        reserve_nusd: u64,
        remote_bound: bool,
        local_retry: bool,
    ) -> Result<bool, ApiError> {
        let slot = in_flight_slot(state, tenant)?;
        let ticket = match self.limit(state, ctx, tenant, prompt_tokens, reserve_nusd, remote_bound).await? {
            Admitted::Yes(ticket) => ticket,
            Admitted::OverBudgetTryLocal { .. } if local_retry => return Ok(false),
            Admitted::OverBudgetTryLocal { wait } => return Err(ApiError::BudgetExceeded { wait }),
        };
        self.settle_when_finished(state, ticket, slot);
        Ok(true)
    }

    /// The limiter's one step for this request; the tenant's standing goes into the answer's
    /// rate-limit headers.
    async fn limit(&mut self, state: &AppState, ctx: &RequestCtx, tenant: &TenantProfile, prompt_tokens: u64, reserve_nusd: u64, remote_bound: bool) -> Result<Admitted, ApiError> {
        let mut standing = (None, None);
        let admitted = state.limiter.admit(&tenant.name, prompt_tokens, reserve_nusd, remote_bound, &ctx.request_id, &mut standing).await;
        (self.rate.requests, self.rate.tokens) = standing;
        admitted
    }

    /// When the record is written: settles `ticket` with the actual cost and releases `held`
    /// (the in-flight slot, and whatever else the request holds until it ends).
    fn settle_when_finished(&mut self, state: &AppState, ticket: Ticket, held: impl Send + 'static) {
        if let Some(r) = self.record.as_mut() {
            let limiter = Arc::clone(&state.limiter);
            r.on_finish(Box::new(move |finished| {
                limiter.settle(&ticket, finished);
                drop(held);
            }));
        }
    }

    /// The response for `result`, with the error status recorded and the rate headers added: an
    /// answer refused before admission (unreadable body, unknown model, too large) reads the
    /// standing of `tenant`, taking nothing, as every answer to a limited tenant has them.
    pub async fn finish(mut self, state: &AppState, tenant: &TenantProfile, result: Result<Response, ApiError>) -> Response {
        let mut response = match result {
            Ok(response) => response,
            Err(err) => {
                let mut response = err.into_response();
                // Recorded before the standing is read (a store round trip): a client leaving
                // during it must not turn this answer's record into a 499.
                if let Some(record) = &mut self.record {
                    record.status(response.status().as_u16());
                    // Which rule refused or failed the request, and the target that failed it.
                    let (rule, complexity, target) = record.route_so_far();
                    insert_route(response.headers_mut(), rule, complexity, target);
                }
                if self.rate.is_empty() {
                    (self.rate.requests, self.rate.tokens) = state.limiter.standing(&tenant.name).await;
                }
                response
            }
        };
        self.rate.write(response.headers_mut());
        response
    }
}

/// One of the tenant's in-flight slots, held until the request ends; else 429 (the answer's
/// rate-limit headers are read by [`Exchange::finish`]).
fn in_flight_slot(state: &AppState, tenant: &TenantProfile) -> Result<InFlightGuard, ApiError> {
    state.in_flight.enter(&tenant.name).ok_or_else(|| ApiError::TooManyInFlight { limit: state.in_flight.limit() })
}

/// A tenant's rate-limit standing after admission: `(limit, remaining)` per limit it has.
#[derive(Debug, Default)]
struct RateHeaders {
    requests: Option<(u32, u64)>,
    tokens: Option<(u32, u64)>,
}

impl RateHeaders {
    fn is_empty(&self) -> bool {
        self.requests.is_none() && self.tokens.is_none()
    }

    fn write(&self, headers: &mut HeaderMap) {
        if let Some((limit, remaining)) = self.requests {
            headers.insert(header::RATELIMIT_LIMIT_REQUESTS, HeaderValue::from(limit));
            headers.insert(header::RATELIMIT_REMAINING_REQUESTS, HeaderValue::from(remaining));
        }
        if let Some((limit, remaining)) = self.tokens {
            headers.insert(header::RATELIMIT_LIMIT_TOKENS, HeaderValue::from(limit));
            headers.insert(header::RATELIMIT_REMAINING_TOKENS, HeaderValue::from(remaining));
        }
    }
}

/// The chat pipeline for a parsed, validated request: route, cache, admission, then the target
/// and its fallbacks.
pub async fn serve_chat(
    state: &AppState,
    ctx: &RequestCtx,
    tenant: &TenantProfile,
    headers: &HeaderMap,
    mut req: ChatRequest,
    exchange: &mut Exchange,
) -> Result<Served, ApiError> {
    let prompt_chars = privacy::text_chars(&req);
    let prompt_tokens = estimate_tokens(prompt_chars);
    req.tenant = Some(state.live.load().engine_tenant(&tenant.name));
    let mut decision = plan(state, &req, headers, tenant, false)?;
    // Recorded now, so that a refusal below (policy, in-flight, limits, budget) counts under its rule.
    if let Some(r) = exchange.record.as_mut() {
        r.decided(&decision, prompt_chars);
    }
    // Counted from the decision on, so that a burst's later requests see the earlier ones.
    let live = state.live.load_full();
    let track = |d: &Decision| state.spillover(&live).filter(|_| is_local(state, &d.target)).map(Spillover::track_local);
    let mut local_ticket = track(&decision);
    if let Some(reason) = &decision.violation {
        let refusal = ApiError::PolicyViolation { reason: format!("rule {:?}: {reason}", decision.rule) };
        return Err(refusal);
    }
    let cache_key = state.cache.as_ref().and_then(|_| cache_key(&tenant.name, &caller_tags(headers), &req));
    // A hit serves only from a target this decision may use: once the policy routes the request
    // elsewhere (a budget rule, say), another target's answer is not replayed under its rule.
    let cached = match (&state.cache, &cache_key) {
        (Some(cache), Some(key)) => cache.get(key).await.filter(|hit| {
            // A cascade's kept local answer is the route's own (a stream skips the cascade); a
            // local answer some other rule cached never passed the cascade's confidence check.
            let kept_by_cascade = decision.cascade.is_some() && hit.cascade_kept && is_local(state, &hit.target);
            kept_by_cascade || candidates(&decision).any(|t| t == hit.target)
        }),
        _ => None,
    };
    // A hit spends nothing; otherwise the worst case over every target that may serve is held.
    let reserve = if cached.is_some() { 0 } else { worst_case_nusd(state, &req, &decision, prompt_tokens, &tenant.name) };
    let remote_bound = cached.is_none() && candidates(&decision).any(|t| !is_local(state, t));
    let slot = in_flight_slot(state, tenant)?;
    let admitted = exchange.limit(state, ctx, tenant, prompt_tokens, reserve, remote_bound).await;
    // A spilled request the budget cannot cover stays local rather than being refused.
    let admitted = match admitted {
        Err(ApiError::BudgetExceeded { wait }) if decision.spilled.is_some() => Ok(Admitted::OverBudgetTryLocal { wait }),
        other => other,
    };
    // Set when the budget sent the request to the local engine instead of its route.
    let mut over_budget = None;
    let ticket = match admitted? {
        Admitted::Yes(ticket) => ticket,
        Admitted::OverBudgetTryLocal { wait } => {
            over_budget = Some(wait);
            decision = plan(state, &req, headers, tenant, true)?;
            if let Some(r) = exchange.record.as_mut() {
                r.decided(&decision, prompt_chars);
            }
            local_ticket = track(&decision);
            if candidates(&decision).any(|t| !is_local(state, t)) {
                return Err(ApiError::BudgetExceeded { wait });
            }
            match exchange.limit(state, ctx, tenant, prompt_tokens, 0, false).await? {
                Admitted::Yes(ticket) => ticket,
                Admitted::OverBudgetTryLocal { wait } => return Err(ApiError::BudgetExceeded { wait }),
            }
        }
    };
    // Without a limit of its own, a budgeted request is sent with the one its reservation counted
    // on, so that the reservation is its worst case (the budget a cap, not an estimate).
    if reserve > 0 {
        req.output_cap = budget_output_limit(state, &tenant.name, req.max_output_tokens());
    }
    if let Some(reason) = decision.spilled {
        state.metrics.spills.with_label_values(&[&decision.rule, reason.as_str()]).inc();
    }
    ctx.span.record("rule", decision.rule.as_str());
    ctx.span.record("tier", decision.tier.as_str());
    // The in-flight slot is held until the request ends (a stream: until it is done or dropped).
    exchange.settle_when_finished(state, ticket, (slot, local_ticket));
    let record = &mut exchange.record;
    if let Some(hit) = cached {
        return Ok(cached_answer(&req, &decision, &hit, record));
    }
    // Only the route's own answer is kept: a spill, an open circuit's stand-in or the budget's
    // local answer serves for a moment, and would otherwise be replayed for `ttl_s` after the
    // route is back.
    let keep = state.cache.clone().zip(cache_key).filter(|_| decision.spilled.is_none() && decision.stands_in_for.is_none() && over_budget.is_none());
    let shadow = shadow_candidate(state, &req, &decision, tenant, ctx);
    let answer = if req.is_stream() {
        stream_answer(state, req, &decision, ctx, record, keep, shadow).await
    } else {
        complete_answer(state, req, &decision, ctx, record, keep, shadow).await
    };
    match (answer, over_budget) {
        // The local engine was only the budget's stand-in and cannot hold this request: the
        // client's problem is the budget, not the local context.
        (Err(ApiError::Provider(ProviderError::ContextLengthExceeded { .. })), Some(wait)) => Err(ApiError::BudgetExceeded { wait }),
        (answer, _) => answer,
    }
}

/// The answer from `decision`'s targets to a request admitted elsewhere: a Responses request
/// whose targets that speak the API failed before answering, served by the rest (neither cached
/// nor shadowed: these are fallbacks).
pub async fn serve_admitted(state: &AppState, ctx: &RequestCtx, req: ChatRequest, decision: &Decision, exchange: &mut Exchange) -> Result<Served, ApiError> {
    let record = &mut exchange.record;
    if req.is_stream() {
        stream_answer(state, req, decision, ctx, record, None, None).await
    } else {
        complete_answer(state, req, decision, ctx, record, None, None).await
    }
}

/// A request sampled for shadow evaluation, if it may be: `[shadow]` is on, the request carries
/// no privacy tag, its tenant did not opt out, it asks for one plain answer (no tools) and the
/// local engine is among its targets. The answer is filled in once the local engine gave it.
fn shadow_candidate(state: &AppState, req: &ChatRequest, decision: &Decision, tenant: &TenantProfile, ctx: &RequestCtx) -> Option<Shadowing> {
    let shadow = state.shadow.as_ref()?;
    // The comparison sends the prompt to the shadow's remote and judge: never outside the
    // tenant's residency.
    let live = state.live.load();
    let topology = live.router.topology();
    let inside = |target: &str| router::region_allowed(&tenant.residency, topology.get(target).and_then(|t| t.region.as_deref()));
    let eligible = decision.privacy.tags.is_empty()
        && inside(shadow.config().remote_target())
        && inside(&shadow.config().judge)
        && !live.shadow_excluded.contains(&tenant.name)
        && req.n.unwrap_or(1) <= 1
        && req.tools.is_none()
        && !req.raw_prompt
        && candidates(decision).any(|t| is_local(state, t))
        && shadow.sampled(&ctx.request_id);
    eligible.then(|| {
        let candidate = Candidate {
            request_id: ctx.request_id.clone(),
            tenant: tenant.name.clone(),
            messages: req.messages.clone(),
            max_tokens: req.max_output_tokens(),
            prompt: privacy::inspect(req).text,
            complexity: decision.complexity,
            local_target: String::new(),
            local_answer: String::new(),
        };
        (Arc::clone(shadow), candidate)
    })
}

/// The evaluator and the request it may compare.
type Shadowing = (Arc<Shadow>, Candidate);

/// Offers the local answer for comparison; callers pass only answers the local engine gave
/// (an answer from a remote fallback is not compared).
fn offer_shadow(shadowing: Option<Shadowing>, target: &str, answer: Option<&ChatResponse>) {
    let Some((shadow, mut candidate)) = shadowing else { return };
    let Some(text) = answer.and_then(|a| a.choices.first()).and_then(|c| c.message.content.clone()) else { return };
    if text.is_empty() {
        return;
    }
    target.clone_into(&mut candidate.local_target);
    candidate.local_answer = text;
    shadow.offer(candidate);
}

/// True for the embedded engine's target.
pub(crate) fn is_local(state: &AppState, target: &str) -> bool {
    state.catalog.local_target().as_deref() == Some(target)
}

/// The most the request can cost on any remote target that may serve it: its prompt (estimated)
/// and `max_tokens` (or the budget's `default_max_tokens`) for each choice, at list prices.
/// Local answers are never reserved (their cost, if priced, is added when they settle).
pub(crate) fn worst_case_nusd(state: &AppState, req: &ChatRequest, decision: &Decision, prompt_tokens: u64, tenant: &str) -> u64 {
    let Some(budget) = state.limiter.budget(tenant) else { return 0 };
    let per_choice = u64::from(req.max_output_tokens().unwrap_or(budget.default_max_tokens));
    most_on_a_remote_target(state, decision, &Usage::new(prompt_tokens, per_choice * u64::from(req.n.unwrap_or(1).max(1))))
}

/// The output limit to send with a request of `tenant` that asked for `asked`: the budget's
/// `default_max_tokens` when the tenant has a budget and the request sets no limit (its
/// reservation counted on it), else none (the request goes as it came).
pub(crate) fn budget_output_limit(state: &AppState, tenant: &str, asked: Option<u32>) -> Option<u32> {
    asked.is_none().then(|| state.limiter.budget(tenant).map(|b| b.default_max_tokens)).flatten()
}

/// What `usage` costs on the dearest remote target among the decision's (local answers are never
/// reserved).
pub(crate) fn most_on_a_remote_target(state: &AppState, decision: &Decision, usage: &Usage) -> u64 {
    candidates(decision).filter(|t| !is_local(state, t)).map(|t| usd_to_nanos((state.pricer)(t, usage))).max().unwrap_or(0)
}

/// An answer from the response cache, streamed if the client asked for a stream.
fn cached_answer(req: &ChatRequest, decision: &Decision, hit: &Cached, record: &mut Option<PendingRecord>) -> Served {
    if let Some(r) = record.as_mut() {
        r.served_by(&hit.target, false);
        r.cache_hit();
        r.usage(hit.response.usage.as_ref());
        r.status(200);
    }
    // Every answer has its own id and time, as the API gives them; the content is the cache's.
    let mut response = hit.response.clone();
    response.id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    response.created = crate::accounting::unix_ms() / 1000;
    let body = if req.is_stream() {
        let mut stream_record = record.take();
        let chunks = stream::iter(replay_chunks(&response))
            .map(move |chunk| {
                if let Some(r) = stream_record.as_mut() {
                    r.chunk(&chunk);
                }
                Ok(chunk)
            })
            .boxed();
        ServedBody::Stream { chunks, include_usage: req.wants_stream_usage() }
    } else {
        ServedBody::Complete(Box::new(response))
    };
    let mut headers = HeaderMap::with_capacity(16);
    set_route_headers(&mut headers, decision, &hit.target);
    insert(&mut headers, header::CACHE, "hit");
    if !req.is_stream() {
        insert(&mut headers, header::COST_USD, "0");
    }
    Served { headers, body }
}

/// Targets to try, in order: the decision's, then its fallbacks.
pub(crate) fn candidates(decision: &Decision) -> impl Iterator<Item = &str> {
    std::iter::once(decision.target.as_str()).chain(decision.fallbacks.iter().map(String::as_str))
}

/// True when the request must be redacted before it goes to `target`: the rule redacts, PII
/// was found, and the target is not the local engine (redaction is for what leaves the host).
fn needs_redaction(state: &AppState, decision: &Decision, target: &str) -> bool {
    decision.redact && !decision.privacy.pii.is_empty() && !is_local(state, target)
}

/// Tries the decision's target, then its fallbacks, until one answers. Only failures that another
/// target could fix move on (see `worth_falling_back`); the last such failure is returned. Each
/// attempt to a remote target under a redacting rule gets a redacted copy of the request; the
/// redaction comes back with the answer so that it can be restored. `record` is told of each
/// target as it is tried, so that a client who leaves before an answer is recorded against it.
async fn first_success<'d, T, F, Fut>(
    state: &AppState,
    req: &ChatRequest,
    decision: &'d Decision,
    mut record: Option<&mut PendingRecord>,
    call: F,
) -> Result<(&'d str, T, Option<Redaction>), ApiError>
where
    F: Fn(Arc<dyn Provider>, ChatRequest, &'d str) -> Fut,
    Fut: Future<Output = Result<T, ProviderError>>,
{
    let mut last_error = None;
    let mut targets = candidates(decision).peekable();
    while let Some(target) = targets.next() {
        if let Some(r) = record.as_deref_mut() {
            r.attempting(target, needs_redaction(state, decision, target));
        }
        let attempt = async {
            let (provider, model) = provider_for(state, target)?;
            let mut upstream = req.clone();
            upstream.model = model;
            let redaction = needs_redaction(state, decision, target)
                .then(|| privacy::without_holding_others(privacy::scanned_bytes(&upstream), || privacy::redact(&mut upstream)));
            call(provider, upstream, target).await.map(|value| (value, redaction))
        };
        match attempt.instrument(tracing::info_span!("provider.call", target)).await {
            Ok((value, redaction)) => return Ok((target, value, redaction)),
            Err(err) if worth_falling_back(&err) => {
                count_upstream_error(state, target, &err);
                let error = privacy::masked(&err);
                if targets.peek().is_some() {
                    warn!(target, %error, "target failed before answering; trying the next fallback");
                } else {
                    warn!(target, %error, "target failed before answering; no fallback left");
                }
                last_error = Some(err);
            }
            Err(err) => {
                count_upstream_error(state, target, &err);
                return Err(err.into());
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ProviderError::Unavailable { message: "no target to serve the request".into() }).into())
}

/// Where a cacheable answer is kept once complete.
type Keep = Option<(Arc<ResponseCache>, CacheKey)>;

async fn complete_answer(
    state: &AppState,
    req: ChatRequest,
    decision: &Decision,
    ctx: &RequestCtx,
    record: &mut Option<PendingRecord>,
    keep: Keep,
    shadow: Option<Shadowing>,
) -> Result<Served, ApiError> {
    let json_answer = privacy::answers_in_json(&req);
    // Cascade: the local answer is kept when the model was sure enough of it.
    let local_try = if decision.cascade.is_some() {
        if let (Some(r), Some(local)) = (record.as_mut(), state.catalog.local_target()) {
            r.attempting(&local, false);
        }
        cascade_local(state, &req).await
    } else {
        None
    };
    let keep_at = decision.cascade.unwrap_or(f64::INFINITY);
    let (target, mut response, redaction, cascade) = match local_try {
        Some((target, response, confidence)) if f64::from(confidence.mean_logprob) >= keep_at => {
            (Cow::Owned(target), response, None, Some(("kept", Some(confidence))))
        }
        tried => {
            // Where the chain falls back to the local engine, the answer it already gave serves
            // (generating it again would double the engine's work just as the remote targets fail).
            let confidence = tried.as_ref().map(|t| t.2);
            let in_hand = std::sync::Mutex::new(tried.map(|t| t.1));
            let in_hand = &in_hand;
            let (target, response, redaction) = first_success(state, &req, decision, record.as_mut(), |provider, upstream, target| async move {
                let answered = if is_local(state, target) { in_hand.lock().ok().and_then(|mut a| a.take()) } else { None };
                match answered {
                    Some(response) => Ok(response),
                    None => provider.complete(upstream).await,
                }
            })
            .await?;
            (Cow::Borrowed(target), response, redaction, confidence.map(|c| ("escalated", Some(c))).or(decision.cascade.map(|_| ("escalated", None))))
        }
    };
    let target: &str = &target;
    ctx.span.record("target", target);
    let mut cost = 0.0;
    if let Some(r) = record.as_mut() {
        r.served_by(target, redaction.is_some());
        r.usage(response.usage.as_ref());
        r.status(200);
        if response.usage.is_none() {
            // A provider that reports no usage is billed on estimates, its answer's text and tool
            // calls included; the answer shows what it is billed for, as a stream's usage chunk does.
            r.answer_chars(response.choices.iter().map(|c| crate::accounting::message_chars(&c.message)).sum());
            response.usage = r.billed_usage();
        }
        cost = r.cost_usd();
    }
    if let Some(redaction) = &redaction {
        privacy::restore_response(&mut response, redaction, json_answer);
    }
    // A fallback's answer is not kept (the route may be back by the next request); the cascade's
    // kept local answer is the route's own.
    let kept = matches!(cascade, Some(("kept", _)));
    if let Some((cache, key)) = keep.filter(|_| target == decision.target || kept) {
        let _ = if kept { cache.put_cascade_kept(key, response.clone(), target) } else { cache.put(key, response.clone(), target) };
    }
    if is_local(state, target) {
        offer_shadow(shadow, target, Some(&response));
    }
    let mut headers = HeaderMap::with_capacity(16);
    set_route_headers(&mut headers, decision, target);
    insert(&mut headers, header::COST_USD, &cost.to_string());
    if let Some((outcome, confidence)) = cascade {
        insert(&mut headers, header::CASCADE, outcome);
        if let Some(confidence) = confidence {
            insert(&mut headers, header::LOCAL_CONFIDENCE, &format!("{:.4}", confidence.mean_logprob));
            insert(&mut headers, header::LOCAL_MIN_LOGPROB, &format!("{:.4}", confidence.min_logprob));
        }
    }
    Ok(Served { headers, body: ServedBody::Complete(Box::new(response)) })
}

/// The local engine's answer to `req` with its token log-probabilities, for a cascade; `None`
/// (go straight to the route) when the engine fails or gives no confidence.
async fn cascade_local(state: &AppState, req: &ChatRequest) -> Option<(String, ChatResponse, Confidence)> {
    let local = state.local.as_ref()?;
    let target = state.catalog.local_target()?;
    let mut upstream = req.clone();
    upstream.model.clone_from(&local.engine().config().name);
    match local.complete_with_confidence(upstream).instrument(tracing::info_span!("cascade.local")).await {
        Ok((response, Some(confidence))) => Some((target, response, confidence)),
        Ok((_, None)) => None,
        Err(err) => {
            warn!(error = %err, "cascade: the local engine failed; going to the route");
            None
        }
    }
}

async fn stream_answer(
    state: &AppState,
    req: ChatRequest,
    decision: &Decision,
    ctx: &RequestCtx,
    record: &mut Option<PendingRecord>,
    keep: Keep,
    shadow: Option<Shadowing>,
) -> Result<Served, ApiError> {
    let include_usage = req.wants_stream_usage();
    let json_answer = privacy::answers_in_json(&req);
    let (target, chunks, redaction) = first_success(state, &req, decision, record.as_mut(), |provider, upstream, target| async move {
        // Peek: a failure before the first chunk still gets a real status (and a fallback).
        let ended = || ProviderError::Upstream { provider: target.to_owned(), status: None, message: "the stream ended before its first chunk".into() };
        providers::peek_first(provider.stream(upstream).await?, ended).await
    })
    .await?;
    ctx.span.record("target", target);
    // The record travels with the stream: it is written when the stream ends, fails, or is
    // dropped because the client went away.
    let mut stream_record = record.take();
    if let Some(r) = stream_record.as_mut() {
        r.served_by(target, redaction.is_some());
        r.status(200);
    }
    let chunks = match stream_record {
        Some(record) => noted_with_billed_usage(chunks, record),
        None => chunks,
    };
    let chunks = match redaction {
        Some(redaction) => {
            let mut restorer = StreamRestorer::new(redaction, json_answer);
            chunks
                .map(move |chunk| {
                    chunk.map(|mut chunk| {
                        restorer.restore(&mut chunk);
                        chunk
                    })
                })
                .boxed()
        }
        None => chunks,
    };
    let chunks = match keep.filter(|_| target == decision.target) {
        Some((cache, key)) => {
            let target = target.to_owned();
            when_complete(chunks, move |response| {
                let _ = cache.put(key, response, &target);
            })
        }
        None => chunks,
    };
    let chunks = match shadow.filter(|_| is_local(state, target)) {
        Some(shadowing) => {
            let target = target.to_owned();
            when_complete(chunks, move |response| offer_shadow(Some(shadowing), &target, Some(&response)))
        }
        None => chunks,
    };
    let mut headers = HeaderMap::with_capacity(16);
    set_route_headers(&mut headers, decision, target);
    Ok(Served { headers, body: ServedBody::Stream { chunks, include_usage } })
}

/// The record notes each chunk as it passes, and the usage a stream shows is the usage its
/// request is billed for: one usage-only chunk after the answer, or before a failure that cuts it,
/// whatever the provider reported of it (an estimate, marked so in the record, where the provider
/// reported none or was cut short). The record is written as the stream ends.
fn noted_with_billed_usage(chunks: ChunkStream, mut record: PendingRecord) -> ChunkStream {
    record.streaming();
    // (chunks, the record, the shape of the usage chunk: the provider's own, else the answer's).
    stream::unfold(Some((chunks, record, None::<ChatChunk>)), |state| async move {
        let (mut chunks, mut record, mut shape) = state?;
        loop {
            match chunks.next().await {
                Some(Ok(mut chunk)) => {
                    record.chunk(&chunk);
                    if chunk.is_usage_only() {
                        shape = Some(chunk);
                        continue;
                    }
                    if shape.is_none() {
                        shape = Some(ChatChunk { choices: Vec::new(), usage: None, extra: serde_json::Map::new(), ..chunk.clone() });
                    }
                    chunk.usage = None;
                    return Some((vec![Ok(chunk)], Some((chunks, record, shape))));
                }
                Some(Err(err)) => {
                    record.upstream_failed(error_kind(&err));
                    record.stream_ended();
                    let usage = billed_usage_chunk(&record, shape).map(Ok);
                    return Some((usage.into_iter().chain([Err(err)]).collect(), None));
                }
                None => {
                    record.stream_ended();
                    return billed_usage_chunk(&record, shape).map(|usage| (vec![Ok(usage)], None));
                }
            }
        }
    })
    .flat_map(stream::iter)
    .boxed()
}

/// `shape` carrying the usage `record` bills, if it bills any.
fn billed_usage_chunk(record: &PendingRecord, shape: Option<ChatChunk>) -> Option<ChatChunk> {
    let mut chunk = shape?;
    chunk.usage = Some(record.billed_usage()?);
    Some(chunk)
}

/// Passes the chunks on and, if the stream ends without a failure, calls `done` with the whole
/// answer (a stream cut short, failed, or dropped by the client never is).
fn when_complete(chunks: ChunkStream, done: impl FnOnce(ChatResponse) + Send + 'static) -> ChunkStream {
    let collector = Arc::new(std::sync::Mutex::new(Some(StreamCollector::new())));
    let seen = Arc::clone(&collector);
    let observed = chunks.map(move |chunk| {
        let mut collector = seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        match &chunk {
            Ok(c) => {
                if let Some(col) = collector.as_mut() {
                    col.push(c);
                }
            }
            Err(_) => *collector = None,
        }
        chunk
    });
    let finish = stream::once(async move {
        let collected = collector.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(response) = collected.and_then(StreamCollector::finish) {
            done(response);
        }
    })
    .filter_map(|()| async { None });
    observed.chain(finish).boxed()
}

/// Chunks as SSE events, then `[DONE]`. The usage-only chunk is passed on only if the client
/// asked for it (every other chunk then has `"usage": null`, as the API documents); a failure
/// mid-stream becomes an `error` object followed by `[DONE]`.
fn sse_events(chunks: ChunkStream, include_usage: bool) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    sse_events_with(chunks, include_usage, true, |chunk| serde_json::to_string(chunk).ok())
}

/// Like the chat SSE stream, with each chunk written by `write` (`None` skips the chunk): the
/// same usage rule, error event and `[DONE]` for other APIs' chunk shapes (`null_usage`: the
/// other chunks say `"usage": null` when usage was asked for).
pub fn sse_events_with(
    chunks: ChunkStream,
    include_usage: bool,
    null_usage: bool,
    write: fn(&providers::wire::ChatChunk) -> Option<String>,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    // The body is polled after the handler returned, outside the request's span: its log lines
    // name the request through this one.
    let span = tracing::Span::current();
    // (chunks, usage a provider sent on a content chunk, held for one usage chunk at the end).
    stream::unfold(Some((chunks, None::<providers::wire::ChatChunk>)), move |state| {
        let span = span.clone();
        async move {
            let (mut chunks, mut usage) = state?;
            loop {
                match chunks.next().await {
                    Some(Ok(chunk)) if chunk.is_usage_only() && !include_usage => {}
                    Some(Ok(mut chunk)) => {
                        // Usage goes out only to clients that asked, and then in its own last chunk,
                        // as the API sends it, whichever chunk the provider put it on.
                        if chunk.usage.is_some() && !chunk.choices.is_empty() {
                            let mut last = chunk.clone();
                            last.choices.clear();
                            chunk.usage = None;
                            usage = include_usage.then_some(last);
                        } else if chunk.is_usage_only() {
                            usage = None;
                        }
                        let Some(mut data) = write(&chunk) else { continue };
                        // The API's other chunks carry `"usage": null` when usage was asked for.
                        if null_usage && include_usage && chunk.usage.is_none() && data.ends_with('}') {
                            data.pop();
                            data.push_str(r#","usage":null}"#);
                        }
                        return Some((Ok(Event::default().data(data)), Some((chunks, usage))));
                    }
                    Some(Err(err)) => {
                        warn!(parent: &span, error = %privacy::masked(&err), "stream failed after its first chunk");
                        let body = ApiError::from(err).body();
                        let data = serde_json::to_string(&body).unwrap_or_default();
                        // Emit the error now; the empty stream left behind ends with `[DONE]`.
                        return Some((Ok(Event::default().data(data)), Some((stream::empty().boxed(), None))));
                    }
                    None => match usage.take().and_then(|last| write(&last)) {
                        Some(data) => return Some((Ok(Event::default().data(data)), Some((stream::empty().boxed(), None)))),
                        None => return Some((Ok(Event::default().data("[DONE]")), None)),
                    },
                }
            }
        }
    })
}

fn insert(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    if let Ok(value) = HeaderValue::from_str(value) {
        headers.insert(name, value);
    }
}

/// The names of the headers this module writes, validated at compile time rather than on every
/// answer.
pub(crate) mod header {
    use axum::http::HeaderName;
    pub const RATELIMIT_LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
    pub const RATELIMIT_LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
    pub const RATELIMIT_REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
    pub const RATELIMIT_REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");
    pub const CACHE: HeaderName = HeaderName::from_static("x-switchyard-cache");
    pub const CASCADE: HeaderName = HeaderName::from_static("x-switchyard-cascade");
    pub const COMPLEXITY: HeaderName = HeaderName::from_static("x-switchyard-complexity");
    pub const COST_USD: HeaderName = HeaderName::from_static("x-switchyard-cost-usd");
    pub const LOCAL_CONFIDENCE: HeaderName = HeaderName::from_static("x-switchyard-local-confidence");
    pub const LOCAL_MIN_LOGPROB: HeaderName = HeaderName::from_static("x-switchyard-local-min-logprob");
    pub const REROUTED: HeaderName = HeaderName::from_static("x-switchyard-rerouted");
    pub const RULE: HeaderName = HeaderName::from_static("x-switchyard-rule");
    pub const SPILLED: HeaderName = HeaderName::from_static("x-switchyard-spilled");
    pub const TARGET: HeaderName = HeaderName::from_static("x-switchyard-target");
    pub const TIER: HeaderName = HeaderName::from_static("x-switchyard-tier");
}

/// The `x-switchyard-*` route headers of an answer from `target` under `decision`.
pub fn set_route_headers(headers: &mut HeaderMap, decision: &Decision, target: &str) {
    insert_route(headers, Some(&decision.rule), Some(decision.complexity), Some(target));
    if decision.rerouted {
        insert(headers, header::REROUTED, "1");
    }
    // Spilled and served off the local engine (its fallback to local is not a spill).
    if decision.spilled.is_some() && crate::accounting::tier_of(target) == "remote" {
        insert(headers, header::SPILLED, "1");
    }
}

/// The route headers as far as the route is known (an error may come before a rule or a target):
/// the rule and `cache: miss`, the complexity, the target and its tier.
fn insert_route(headers: &mut HeaderMap, rule: Option<&str>, complexity: Option<f64>, target: Option<&str>) {
    if let Some(rule) = rule {
        insert(headers, header::RULE, rule);
        insert(headers, header::CACHE, "miss");
    }
    if let Some(complexity) = complexity {
        insert(headers, header::COMPLEXITY, &format!("{complexity:.4}"));
    }
    if let Some(target) = target {
        insert(headers, header::TARGET, target);
        // A fallback may serve from another tier than the decision's; provider names never are "local".
        insert(headers, header::TIER, crate::accounting::tier_of(target));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::response::sse::Sse;

    /// The `data:` payloads a client receives for `chunks`.
    async fn sent(chunks: Vec<serde_json::Value>, include_usage: bool) -> Vec<String> {
        let chunks: ChunkStream = stream::iter(chunks.into_iter().map(|c| Ok(serde_json::from_value(c).unwrap()))).boxed();
        let body = Sse::new(sse_events(chunks, include_usage)).into_response().into_body();
        let bytes = axum::body::to_bytes(body, usize::MAX).await.unwrap();
        String::from_utf8(bytes.to_vec()).unwrap().lines().filter_map(|l| l.strip_prefix("data: ").map(str::to_owned)).collect()
    }

    #[tokio::test]
    async fn usage_a_provider_puts_on_a_content_chunk_goes_out_alone_and_only_when_asked() {
        let content = |text: &str, finish: serde_json::Value| {
            serde_json::json!({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": "m",
                "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": finish}]})
        };
        let mut last = content("!", serde_json::json!("stop"));
        last["usage"] = serde_json::json!({"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5});
        let chunks = vec![content("hi", serde_json::Value::Null), last];
        let quiet = sent(chunks.clone(), false).await;
        assert_eq!(quiet.len(), 3, "{quiet:?}");
        assert!(quiet.iter().all(|d| !d.contains("usage")), "{quiet:?}");
        let asked = sent(chunks, true).await;
        assert_eq!(asked.len(), 4, "{asked:?}");
        let usage: serde_json::Value = serde_json::from_str(&asked[2]).unwrap();
        assert_eq!((usage["choices"].as_array().map(Vec::len), usage["usage"]["total_tokens"].as_u64()), (Some(0), Some(5)));
        // Moved off the content chunk, which says `"usage": null` as the API's do.
        let content: serde_json::Value = serde_json::from_str(&asked[1]).unwrap();
        assert!(content["usage"].is_null() && content.get("usage").is_some() && asked[3] == "[DONE]", "{asked:?}");
    }
}
