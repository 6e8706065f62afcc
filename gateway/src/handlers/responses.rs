//! `POST /v1/responses`, `GET /v1/responses/{id}`, `DELETE /v1/responses/{id}`: the Responses
//! API, answered through the chat pipeline (same routing, limits, accounting) and translated by
//! `responses.rs`.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::sse::Event;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use futures::stream::{self, Stream, StreamExt};
use providers::wire::{ChatMessage, Usage};
use providers::{ChunkStream, ProviderError};
use router::{Decision, TenantProfile};
use serde_json::{json, Value};

use crate::chat_request::validate_chat_request;
use crate::error::ApiError;
use crate::accounting::{estimate_tokens, PendingRecord};
use crate::dispatch::{caller_tags, count_upstream_error, plan, provider_for, worth_falling_back, TAGS_HEADER};
use crate::handlers::chat::{budget_output_limit, candidates, most_on_a_remote_target, serve_admitted, serve_chat, set_route_headers, Exchange, ServedBody};
use crate::handlers::read_body;
use crate::middleware::request_ctx::RequestCtx;
use crate::privacy;
use crate::responses::{self, Envelope, EventWriter, StoredResponse};
use crate::state::AppState;

/// Creates a response, streamed as semantic events or answered whole; stored unless
/// `store: false`.
pub async fn create(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    Extension(tenant): Extension<Arc<TenantProfile>>,
    mut headers: HeaderMap,
    body: Body,
) -> Response {
    let mut exchange = Exchange::new(&state, &ctx, &tenant);
    let result = async {
        let bytes = read_body(body, state.config.server.max_body_bytes, state.body_timeout()).await?;
        let mut req = responses::parse_request(&bytes)?;
        let referenced_tags = resolve_item_references(&state, &tenant.name, &mut req).await?;
        let (history, earlier_tags) = match &req.previous_response_id {
            Some(id) => {
                let stored = state.responses.get(&tenant.name, id).await.ok_or_else(|| ApiError::ResponseNotFound { id: id.clone() })?;
                (stored.conversation.clone(), stored.tags.clone())
            }
            None => (Vec::new(), Vec::new()),
        };
        // A conversation keeps the privacy tags any of its turns was sent with.
        let mut tags = caller_tags(&headers);
        tags.extend(earlier_tags);
        tags.extend(referenced_tags.iter().flatten().cloned());
        tags.sort();
        tags.dedup();
        // `from_bytes`: a tag beyond ASCII must not fail the whole value (and drop every tag).
        if let Some(value) = (!tags.is_empty()).then(|| axum::http::HeaderValue::from_bytes(tags.join(",").as_bytes())).and_then(Result::ok) {
            headers.insert(TAGS_HEADER, value);
        }
        let input = responses::input_messages(&req)?;
        responses::check_call_outputs(&history, &input)?;
        // Hosted tools (web search, file search…) only a provider that speaks the API can serve:
        // routed on the request without them, refused unless it is passed through.
        let hosted = responses::has_hosted_tools(&req) && state.any_speaks_responses();
        let mut chat = if hosted { responses::to_chat(&responses::function_tools_only(&req), &history, &input)? } else { responses::to_chat(&req, &history, &input)? };
        validate_chat_request(&chat)?;
        let mut turn = Keep { state: Arc::clone(&state), tenant: tenant.name.clone(), tags: tags.clone(), history, input };
        // The targets left when a passed-through request's own ones failed before answering.
        let mut fallback = None;
        // Providers that speak the Responses API get the request as it is (tools, reasoning and
        // models only that API serves), unless it must be redacted on the way.
        if state.any_speaks_responses() {
            let mut decision = plan(&state, &chat, &headers, &tenant, false)?;
            // Hosted tools only a provider that speaks the API can carry: while the route's circuit
            // is open, the request still goes to it (and gets its 503 with `Retry-After`) rather
            // than to a stand-in that would refuse the tools as the client's fault.
            if hosted && !state.speaks_responses(&decision.target) {
                if let Some(route) = decision.stands_in_for.take().filter(|t| state.speaks_responses(t)) {
                    let stand_in = std::mem::replace(&mut decision.target, route);
                    decision.fallbacks.insert(0, stand_in);
                }
            }
            let mut body: Value = serde_json::from_slice(&bytes).map_err(|e| ApiError::InvalidRequest { message: e.to_string(), param: None })?;
            if referenced_tags.is_some() {
                body["input"] = req.input.clone().unwrap_or(Value::Null);
            }
            // The body goes out whole: PII anywhere in it (metadata, tool descriptions…) that the
            // chat view did not see keeps the request on the chat path, which drops those fields.
            if passthrough_eligible(&state, &decision) && !privacy::any_pii(&body) {
                match passthrough(&state, &ctx, &tenant, &mut exchange, &req, body, turn, &decision).await? {
                    Passed::Answered(response) => return Ok(response),
                    Passed::OverBudget(back) => turn = back,
                    Passed::FallBack(back, rest) => {
                        turn = back;
                        fallback = Some(rest);
                    }
                }
            }
        }
        if hosted {
            return Err(responses::to_chat(&req, &turn.history, &turn.input).err().unwrap_or_else(|| ApiError::invalid("hosted tools need a provider that speaks the Responses API", "tools")));
        }
        let created_at = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let mut envelope = Envelope::new(&req, format!("resp_{}", uuid::Uuid::new_v4().simple()), created_at);
        let keep = req.wants_store().then_some(turn);
        let served = match &fallback {
            Some(rest) => {
                // Admitted by the passthrough, whose reservation counted on the budget's limit.
                chat.output_cap = budget_output_limit(&state, &tenant.name, chat.max_output_tokens());
                chat.tenant = Some(state.live.load().engine_tenant(&tenant.name));
                serve_admitted(&state, &ctx, chat, rest, &mut exchange).await?
            }
            None => serve_chat(&state, &ctx, &tenant, &headers, chat, &mut exchange).await?,
        };
        let mut http = match served.body {
            ServedBody::Complete(answer) => {
                let response = responses::from_chat(&mut envelope, &answer);
                if let Some(keep) = keep {
                    keep.store(&envelope.id, &response).await;
                }
                Json(response).into_response()
            }
            ServedBody::Stream { chunks, .. } => crate::handlers::event_stream(events(EventWriter::new(envelope.clone()), envelope.id, chunks, keep)),
        };
        http.headers_mut().extend(served.headers);
        Ok(http)
    }
    .await;
    // Checks made on the chat translation name the Responses fields the client sent.
    exchange.finish(&state, &tenant, result.map_err(|e| e.with_params_renamed(responses::responses_param))).await
}

/// Replaces each `item_reference` in the input by the item it names — an output item (or a
/// listed input item) of a response this tenant stored, as clients that keep `store` on send
/// earlier turns —, and returns the privacy tags of the responses they came from (`None` when
/// the input references nothing). A reference to no such item is a 404 naming it. A referenced
/// `reasoning` item is left out: a chat translation skips it anyway, and a provider passed it
/// (with `store: false`, without its encrypted content) could not look it up.
async fn resolve_item_references(state: &AppState, tenant: &str, req: &mut responses::ResponsesRequest) -> Result<Option<Vec<String>>, ApiError> {
    let is_a = |kind: &str, item: &Value| item.get("type").and_then(Value::as_str) == Some(kind);
    let Some(Value::Array(items)) = req.input.as_mut() else { return Ok(None) };
    if !items.iter().any(|item| is_a("item_reference", item)) {
        return Ok(None);
    }
    let mut tags = Vec::new();
    let mut resolved = Vec::with_capacity(items.len());
    for (i, item) in std::mem::take(items).into_iter().enumerate() {
        if !is_a("item_reference", &item) {
            resolved.push(item);
            continue;
        }
        let param = format!("input[{i}]");
        let Some(id) = item.get("id").and_then(Value::as_str).map(str::to_owned) else {
            return Err(ApiError::invalid(format!("Missing required parameter: '{param}.id'."), format!("{param}.id")));
        };
        let (found, its_tags) = state.responses.item(tenant, &id).await.ok_or(ApiError::ItemNotFound { id, param })?;
        tags.extend(its_tags);
        if !is_a("reasoning", &found) {
            resolved.push(found);
        }
    }
    *items = resolved;
    Ok(Some(tags))
}

/// True when the decision lets a Responses request be passed through to its target as it is: a
/// provider that speaks the API, no cascade, and nothing to redact.
fn passthrough_eligible(state: &AppState, decision: &Decision) -> bool {
    decision.violation.is_none()
        && decision.cascade.is_none()
        && (!decision.redact || decision.privacy.pii.is_empty())
        && state.speaks_responses(&decision.target)
}

/// What became of a passed-through request.
enum Passed {
    /// The answer, as a provider wrote it.
    Answered(Response),
    /// Over budget with `on_exceed = "local"`: nothing was taken, and the chat path re-routes it.
    OverBudget(Keep),
    /// The targets that speak the API failed before answering; the rest of the decision's
    /// targets serve it through the chat path (the request is already admitted).
    FallBack(Keep, Box<Decision>),
}

/// Output-token bound reserved for a passed-through request without `max_output_tokens`.
const PASSTHROUGH_DEFAULT_MAX_OUTPUT: u64 = 4096;

/// Sends the client's Responses request to the decision's target's own Responses endpoint, and
/// on a failure another target could fix, to each fallback that speaks the API in turn: the
/// stored conversation goes along as input items (the provider stores nothing, `store: false`),
/// the answer and events come back as the provider wrote them, and the turn is stored here.
#[allow(clippy::too_many_arguments)]
async fn passthrough(
    state: &Arc<AppState>,
    ctx: &RequestCtx,
    tenant: &TenantProfile,
    exchange: &mut Exchange,
    req: &responses::ResponsesRequest,
    mut body: Value,
    turn: Keep,
    decision: &Decision,
) -> Result<Passed, ApiError> {
    let prompt_chars: usize = turn.history.iter().chain(&turn.input).filter_map(|m| m.content.as_ref()?.text()).map(|t| t.chars().count()).sum::<usize>()
        + req.instructions.as_ref().map_or(0, |i| i.chars().count());
    let prompt_tokens = estimate_tokens(prompt_chars);
    if let Some(record) = exchange.record() {
        record.decided(decision, prompt_chars);
    }
    // A budgeted tenant's request without a limit is sent with the budget's `default_max_tokens`,
    // which its reservation counts on (as on the chat path).
    let budget_cap = budget_output_limit(state, &tenant.name, req.max_output_tokens);
    let max_output = req.max_output_tokens.or(budget_cap).map_or(PASSTHROUGH_DEFAULT_MAX_OUTPUT, u64::from);
    // The worst case over every target that may serve, as on the chat path.
    let reserve = most_on_a_remote_target(state, decision, &Usage::new(prompt_tokens, max_output));
    // Hosted tools cannot be served by the local engine: over budget, such a request is refused
    // (429 budget_exceeded) rather than sent back to the chat path, which would refuse its tools.
    let local_retry = !responses::has_hosted_tools(req);
    if !exchange.admit(state, ctx, tenant, prompt_tokens, reserve, true, local_retry).await? {
        return Ok(Passed::OverBudget(turn));
    }
    if let Value::Object(fields) = &mut body {
        fields.remove("previous_response_id");
        fields.insert("store".into(), Value::Bool(false));
        if let Some(cap) = budget_cap {
            fields.insert("max_output_tokens".into(), cap.into());
        }
        if !turn.history.is_empty() {
            let mut items = responses::input_items(&turn.history);
            match fields.remove("input") {
                Some(Value::String(text)) => items.push(json!({"role": "user", "content": text})),
                Some(Value::Array(more)) => items.extend(more),
                _ => {}
            }
            fields.insert("input".into(), Value::Array(items));
        }
    }
    let echo = (req.previous_response_id.clone(), req.wants_store());
    let mut last_error = None;
    for (tried, target) in candidates(decision).enumerate() {
        if !state.speaks_responses(target) {
            // Hosted tools only the API carries: the chat path cannot serve them.
            if responses::has_hosted_tools(req) {
                break;
            }
            let mut rest = Box::new(decision.clone());
            target.clone_into(&mut rest.target);
            rest.fallbacks = decision.fallbacks[tried..].to_vec();
            return Ok(Passed::FallBack(turn, rest));
        }
        let (provider, model) = provider_for(state, target)?;
        if let Value::Object(fields) = &mut body {
            fields.insert("model".into(), Value::String(model));
        }
        if let Some(record) = exchange.record() {
            record.attempting(target, false);
        }
        // The last target gets the body itself; the others a copy.
        let sent = if tried == decision.fallbacks.len() { std::mem::take(&mut body) } else { body.clone() };
        let answer = if req.is_stream() { provider.responses_stream(sent).await.map(Answer::Events) } else { provider.responses(sent).await.map(Answer::Whole) };
        match answer {
            Ok(answer) => return Ok(Passed::Answered(passed_answer(exchange, decision, target, answer, turn, &echo).await)),
            Err(err) => {
                count_upstream_error(state, target, &err);
                if !worth_falling_back(&err) {
                    return Err(err.into());
                }
                tracing::warn!(target, error = %crate::privacy::masked(&err), "target failed before answering; trying the next fallback");
                last_error = Some(err);
            }
        }
    }
    Err(last_error.unwrap_or_else(|| ProviderError::Unavailable { message: "no target to serve the request".into() }).into())
}

/// A passed-through provider's answer, streamed or whole.
enum Answer {
    Events(providers::ResponseEvents),
    Whole(Value),
}

/// The client's answer from `target`, accounted, and the turn stored when the client asked for
/// that.
async fn passed_answer(
    exchange: &mut Exchange,
    decision: &Decision,
    target: &str,
    answer: Answer,
    turn: Keep,
    echo: &(Option<String>, bool),
) -> Response {
    let mut headers = HeaderMap::new();
    set_route_headers(&mut headers, decision, target);
    let keep = echo.1.then_some(turn);
    let mut response = match answer {
        Answer::Events(events) => {
            let mut record = exchange.take_record();
            if let Some(r) = record.as_mut() {
                r.served_by(target, false);
                r.status(200);
            }
            let mut http = crate::handlers::event_stream(passthrough_events(events, record, keep, echo.clone()));
            http.headers_mut().extend(headers);
            return http;
        }
        Answer::Whole(response) => response,
    };
    patch_echo(&mut response, echo);
    let mut cost = 0.0;
    if let Some(record) = exchange.record() {
        record.served_by(target, false);
        let usage = usage_of_response(&response);
        record.usage(usage.as_ref());
        record.status(200);
        if usage.is_none() {
            // A provider that reports no usage is billed on estimates, and the answer shows them.
            record.answer_chars(written_chars(&response));
            if let (Some(billed), Some(fields)) = (record.billed_usage(), response.as_object_mut()) {
                fields.insert("usage".into(), responses::response_usage(&billed));
            }
        }
        cost = record.cost_usd();
    }
    if let (Some(keep), Some(id)) = (keep, response.get("id").and_then(Value::as_str).map(str::to_owned)) {
        keep.store(&id, &response).await;
    }
    let mut http = Json(response).into_response();
    http.headers_mut().extend(headers);
    if let Ok(value) = axum::http::HeaderValue::from_str(&cost.to_string()) {
        http.headers_mut().insert("x-switchyard-cost-usd", value);
    }
    http
}

/// The client's own `previous_response_id` and `store`, written back over what the provider saw.
fn patch_echo(response: &mut Value, (previous, store): &(Option<String>, bool)) {
    if let Value::Object(fields) = response {
        fields.insert("previous_response_id".into(), previous.clone().map_or(Value::Null, Value::String));
        fields.insert("store".into(), Value::Bool(*store));
    }
}

/// The characters the model wrote in a `response` object: output text, refusals, reasoning
/// (its summary and content texts), function calls' names and arguments (for an estimate when
/// the provider reports no usage).
fn written_chars(response: &Value) -> usize {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map_or(0, |t| t.chars().count());
    let items = response.get("output").and_then(Value::as_array).into_iter().flatten();
    items
        .map(|item| {
            let call = if item.get("type").and_then(Value::as_str) == Some("function_call") { text(item.get("name")) + text(item.get("arguments")) } else { 0 };
            let parts = ["content", "summary"].into_iter().filter_map(|field| item.get(field).and_then(Value::as_array)).flatten();
            call + parts.map(|p| text(p.get("text")) + text(p.get("refusal"))).sum::<usize>()
        })
        .sum()
}

/// Chat usage from a `response` object's `usage` (the inverse of `responses::response_usage`).
fn usage_of_response(response: &Value) -> Option<Usage> {
    let usage = response.get("usage")?;
    let mut out = Usage::new(usage.get("input_tokens")?.as_u64()?, usage.get("output_tokens")?.as_u64()?);
    if let Some(cached) = usage.pointer("/input_tokens_details/cached_tokens").and_then(Value::as_u64) {
        out.extra.insert("prompt_tokens_details".into(), json!({"cached_tokens": cached}));
    }
    Some(out)
}

/// The provider's events, passed on; the final response (`response.completed` or
/// `.incomplete`) is accounted and stored before it is sent. A broken stream ends with an
/// `error` event.
fn passthrough_events(
    events: providers::ResponseEvents,
    record: Option<PendingRecord>,
    keep: Option<Keep>,
    echo: (Option<String>, bool),
) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Pump {
        events: providers::ResponseEvents,
        record: Option<PendingRecord>,
        keep: Option<Keep>,
        echo: (Option<String>, bool),
        done: bool,
        /// The provider's last `sequence_number`: an error event of ours takes the next.
        sequence: u64,
        /// The request's: the body is polled after the handler returned, outside it.
        span: tracing::Span,
    }
    let span = tracing::Span::current();
    stream::unfold(Pump { events, record, keep, echo, done: false, sequence: 0, span }, |mut p| async move {
        if p.done {
            return None;
        }
        let event = match p.events.next().await {
            None => return None,
            Some(Ok((kind, mut data))) => {
                p.sequence = data.get("sequence_number").and_then(Value::as_u64).unwrap_or(p.sequence);
                if let (Some(r), Some(delta)) = (p.record.as_mut(), data.get("delta").and_then(Value::as_str).filter(|_| kind.rsplit('.').next() == Some("delta"))) {
                    r.text_delta(delta);
                }
                if kind == "error" || kind == "response.failed" {
                    if let Some(r) = p.record.as_mut() {
                        r.upstream_failed("upstream");
                    }
                }
                // Every event that carries the response shows the client's own `store` and
                // `previous_response_id`, not what the provider was sent.
                if let Some(response) = data.get_mut("response") {
                    patch_echo(response, &p.echo);
                }
                if let Some(response) = data.get_mut("response").filter(|_| kind == "response.completed" || kind == "response.incomplete") {
                    if let Some(r) = p.record.as_mut() {
                        r.usage(usage_of_response(response).as_ref());
                    }
                    if let (Some(keep), Some(id)) = (p.keep.take(), response.get("id").and_then(Value::as_str).map(str::to_owned)) {
                        keep.store(&id, response).await;
                    }
                }
                Event::default().event(kind).data(data.to_string())
            }
            Some(Err(err)) => {
                tracing::warn!(parent: &p.span, error = %crate::privacy::masked(&err), "passed-through response stream failed");
                if let Some(r) = p.record.as_mut() {
                    r.upstream_failed("upstream");
                }
                p.done = true;
                let body = ApiError::from(err).body();
                let data = json!({"type": "error", "code": body.error.code, "message": body.error.message, "param": null, "sequence_number": p.sequence + 1});
                Event::default().event("error").data(data.to_string())
            }
        };
        Some((Ok(event), p))
    })
}

/// The `{id}` of a `/v1/responses/{id}` path, or the JSON 400 for one that is not UTF-8 (axum's own
/// rejection would be plain text).
fn response_id(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(id)| id).map_err(|_| ApiError::invalid("The response id in the path is not valid UTF-8.", "response_id"))
}

/// The stored response `id`, if this tenant stored it.
pub async fn get(State(state): State<Arc<AppState>>, Extension(tenant): Extension<Arc<TenantProfile>>, path: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let id = response_id(path)?;
    match state.responses.get(&tenant.name, &id).await {
        Some(stored) => Ok(Json(stored.response.clone()).into_response()),
        None => Err(ApiError::ResponseNotFound { id }),
    }
}

/// `GET /v1/responses/{id}/input_items` query.
#[derive(Debug, serde::Deserialize)]
pub struct ItemsQuery {
    /// `asc` or `desc` (default: newest first, as the API).
    order: Option<String>,
    /// 1–100, default 20.
    limit: Option<usize>,
    /// List the items after this id (in the chosen order).
    after: Option<String>,
}

/// The input items of the stored response `id`.
pub async fn input_items(
    State(state): State<Arc<AppState>>,
    Extension(tenant): Extension<Arc<TenantProfile>>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<ItemsQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let id = response_id(path)?;
    // axum's rejection is plain text; its message ("…: limit: invalid digit found in string",
    // "duplicate field `limit`") goes into the usual JSON error.
    let Query(query) = query.map_err(|rejection| ApiError::InvalidRequest { message: format!("Invalid query string: {}", rejection.body_text()), param: None })?;
    let Some(stored) = state.responses.get(&tenant.name, &id).await else { return Err(ApiError::ResponseNotFound { id }) };
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::invalid("'limit' must be between 1 and 100.", "limit"));
    }
    let mut items: Vec<&Value> = stored.input_items.iter().collect();
    match query.order.as_deref() {
        None | Some("desc") => items.reverse(),
        Some("asc") => {}
        Some(other) => return Err(ApiError::invalid(format!("Invalid value for 'order': {other:?}. Supported values are: asc, desc."), "order")),
    }
    if let Some(after) = &query.after {
        match items.iter().position(|item| item.get("id").and_then(Value::as_str) == Some(after)) {
            Some(at) => items.drain(..=at).for_each(drop),
            None => return Err(ApiError::invalid(format!("No input item with id {after:?} in this response."), "after")),
        }
    }
    let has_more = items.len() > limit;
    items.truncate(limit);
    let id_of = |item: Option<&&Value>| item.and_then(|i| i.get("id")).cloned().unwrap_or(Value::Null);
    Ok(Json(json!({"object": "list", "data": items, "first_id": id_of(items.first()), "last_id": id_of(items.last()), "has_more": has_more})).into_response())
}

/// Forgets the stored response `id`.
pub async fn delete(State(state): State<Arc<AppState>>, Extension(tenant): Extension<Arc<TenantProfile>>, path: Result<Path<String>, PathRejection>) -> Result<Response, ApiError> {
    let id = response_id(path)?;
    match state.responses.delete(&tenant.name, &id).await {
        Ok(true) => Ok(Json(json!({"id": id, "object": "response", "deleted": true})).into_response()),
        Ok(false) => Err(ApiError::ResponseNotFound { id }),
        Err(crate::response_store::Unreachable) => Err(ApiError::ResponseStoreUnavailable),
    }
}

/// Where a finished response is stored, with the turn it continues.
struct Keep {
    state: Arc<AppState>,
    tenant: String,
    /// The caller's privacy tags of this turn and every earlier one.
    tags: Vec<String>,
    history: Vec<ChatMessage>,
    input: Vec<ChatMessage>,
}

impl Keep {
    async fn store(self, id: &str, response: &Value) {
        let conversation = responses::conversation_after(&self.history, &self.input, response);
        let input_items = responses::listed_items(id, &self.input);
        let stored = StoredResponse { tenant: self.tenant, tags: self.tags, conversation, response: response.clone(), input_items };
        self.state.responses.put(id, stored).await;
    }
}

/// The chat chunks as Responses events. The response is stored before `response.completed` is
/// sent, so a client that continues it at once (on any replica sharing Redis) finds it. A stream
/// that fails after it started ends with an `error` event and is not stored.
fn events(writer: EventWriter, id: String, chunks: ChunkStream, keep: Option<Keep>) -> impl Stream<Item = Result<Event, Infallible>> {
    struct Pump {
        writer: EventWriter,
        id: String,
        chunks: ChunkStream,
        keep: Option<Keep>,
        started: bool,
        done: bool,
        /// The request's: the body is polled after the handler returned, outside it.
        span: tracing::Span,
    }
    let pump = Pump { writer, id, chunks, keep, started: false, done: false, span: tracing::Span::current() };
    stream::unfold(pump, |mut p| async move {
        if p.done {
            return None;
        }
        if !p.started {
            p.started = true;
            // The first chunk (already there: the chat pipeline waited for it) names the model
            // that answers, which `response.created` shows, as the whole answer would.
            let first = p.chunks.next().await;
            if let Some(Ok(chunk)) = &first {
                p.writer.answered_by(&chunk.model);
            }
            let rest = std::mem::replace(&mut p.chunks, stream::empty().boxed());
            p.chunks = stream::iter(first).chain(rest).boxed();
            return Some((p.writer.start(), p));
        }
        loop {
            match p.chunks.next().await {
                Some(Ok(chunk)) => {
                    let events = p.writer.chunk(&chunk);
                    if !events.is_empty() {
                        return Some((events, p));
                    }
                }
                Some(Err(err)) => {
                    tracing::warn!(parent: &p.span, error = %crate::privacy::masked(&err), "response stream failed after it started");
                    let body = ApiError::from(err).body();
                    let event = p.writer.error(body.error.code.as_deref().unwrap_or("upstream_error"), &body.error.message);
                    p.done = true;
                    return Some((vec![event], p));
                }
                None => {
                    let (events, response) = p.writer.finish();
                    if let Some(keep) = p.keep.take() {
                        keep.store(&p.id, &response).await;
                    }
                    p.done = true;
                    return Some((events, p));
                }
            }
        }
    })
    .flat_map(stream::iter)
    .map(|(kind, body)| Ok(Event::default().event(kind).data(body.to_string())))
}
