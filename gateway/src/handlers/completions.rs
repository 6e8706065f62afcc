//! `POST /v1/completions`: legacy text completions. Carried through the chat pipeline as a
//! chat request with one user message and `raw_prompt` set (routing, privacy, limits, cache and
//! accounting as for chat); the local engine continues the prompt without its chat template,
//! `OpenAI`-compatible providers get their own `/completions`. Answers are `text_completion`s.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use providers::wire::{ChatChunk, ChatMessage, ChatRequest, ChatResponse, MessageContent, Stop, StreamOptions, Usage};
use router::TenantProfile;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use crate::chat_request::{parse_body, validate_chat_request};
use crate::error::ApiError;
use crate::handlers::chat::{serve_chat, sse_events_with, Exchange, ServedBody};
use crate::handlers::read_body;
use crate::middleware::request_ctx::RequestCtx;
use crate::state::AppState;

/// `POST /v1/completions` body.
#[derive(Debug, Deserialize)]
struct CompletionRequest {
    model: String,
    prompt: Value,
    #[serde(default)]
    max_tokens: Option<u32>,
    #[serde(default)]
    temperature: Option<f64>,
    #[serde(default)]
    top_p: Option<f64>,
    #[serde(default)]
    n: Option<u32>,
    #[serde(default)]
    stream: Option<bool>,
    #[serde(default)]
    stream_options: Option<StreamOptions>,
    #[serde(default)]
    stop: Option<Stop>,
    #[serde(default)]
    seed: Option<i64>,
    #[serde(default)]
    echo: Option<bool>,
    #[serde(default)]
    suffix: Option<String>,
    #[serde(default)]
    logprobs: Option<Value>,
    #[serde(default)]
    best_of: Option<u32>,
    #[serde(flatten)]
    extra: Map<String, Value>,
}

/// The API's default `max_tokens` for legacy completions.
const DEFAULT_MAX_TOKENS: u32 = 16;

/// Chat fields sent here by mistake would be dropped without a word: they are refused by name.
fn refuse_chat_fields(req: &CompletionRequest) -> Result<(), ApiError> {
    for chat_only in ["messages", "max_completion_tokens", "tools", "tool_choice", "response_format"] {
        if req.extra.get(chat_only).is_some_and(|v| !v.is_null()) {
            return Err(ApiError::invalid(format!("'{chat_only}' is a chat completions field; send it to /v1/chat/completions."), chat_only));
        }
    }
    Ok(())
}

/// The chat request that carries a legacy completion.
fn to_chat(req: CompletionRequest) -> Result<ChatRequest, ApiError> {
    let unsupported = |param: &str| ApiError::invalid(format!("'{param}' is not supported by this gateway's completions endpoint."), param);
    if req.echo == Some(true) {
        return Err(unsupported("echo"));
    }
    if req.suffix.is_some() {
        return Err(unsupported("suffix"));
    }
    if req.logprobs.as_ref().is_some_and(|l| !l.is_null()) {
        return Err(unsupported("logprobs"));
    }
    // A chat field: without this, the chat check would ask for `logprobs: true`, which this
    // endpoint refuses.
    if req.extra.get("top_logprobs").is_some_and(|v| !v.is_null()) {
        return Err(unsupported("top_logprobs"));
    }
    if req.best_of.is_some_and(|b| b > 1) {
        return Err(unsupported("best_of"));
    }
    let prompt = match req.prompt {
        Value::String(s) => s,
        Value::Array(items) if items.is_empty() => return Err(ApiError::invalid("'prompt' must not be empty.", "prompt")),
        Value::Array(items) if items.len() == 1 && items[0].is_string() => items[0].as_str().unwrap_or_default().to_owned(),
        Value::Array(items) if items.iter().all(Value::is_string) => {
            return Err(ApiError::invalid("Send one prompt per request (a list of several prompts is not supported).", "prompt"))
        }
        _ => return Err(ApiError::invalid("'prompt' must be a string (token-id prompts are not supported).", "prompt")),
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("'prompt' must not be empty.", "prompt"));
    }
    let chat = ChatRequest {
        model: req.model,
        messages: vec![ChatMessage { role: "user".into(), content: Some(MessageContent::Text(prompt)), extra: Map::new() }],
        stream: req.stream,
        stream_options: req.stream_options,
        max_tokens: Some(req.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
        max_completion_tokens: None,
        temperature: req.temperature,
        top_p: req.top_p,
        seed: req.seed,
        stop: req.stop,
        n: req.n,
        tools: None,
        tool_choice: None,
        response_format: None,
        raw_prompt: true,
        output_cap: None,
        tenant: None,
        extra: req.extra,
    };
    validate_chat_request(&chat)?;
    Ok(chat)
}

/// Answers a legacy completion, streamed or not.
pub async fn completions(
    State(state): State<Arc<AppState>>,
    Extension(ctx): Extension<RequestCtx>,
    Extension(tenant): Extension<Arc<TenantProfile>>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut exchange = Exchange::new(&state, &ctx, &tenant);
    let result = async {
        let bytes = read_body(body, state.config.server.max_body_bytes, state.body_timeout()).await?;
        let req: CompletionRequest = parse_body(&bytes)?;
        refuse_chat_fields(&req)?;
        // Checks made on the chat request name the field the client sent.
        let renamed = |e: ApiError| e.with_params_renamed(|param: &str| (param == "messages" || param.starts_with("messages[")).then(|| "prompt".to_owned()));
        let chat = to_chat(req).map_err(renamed)?;
        let served = serve_chat(&state, &ctx, &tenant, &headers, chat, &mut exchange).await.map_err(renamed)?;
        let mut http = match served.body {
            ServedBody::Complete(answer) => Json(text_completion(&answer)).into_response(),
            ServedBody::Stream { chunks, include_usage } => crate::handlers::event_stream(sse_events_with(chunks, include_usage, false, completion_chunk)),
        };
        http.headers_mut().extend(served.headers);
        Ok(http)
    }
    .await;
    exchange.finish(&state, &tenant, result).await
}

/// A `text_completion`'s `usage`: the three counts.
fn token_counts(usage: &Usage) -> Value {
    json!({"prompt_tokens": usage.prompt_tokens, "completion_tokens": usage.completion_tokens, "total_tokens": usage.total_tokens})
}

/// `cmpl-…` for a chat id.
fn completion_id(chat_id: &str) -> String {
    // A provider's own completion id (already `cmpl-…`) is kept as it is.
    match chat_id.strip_prefix("chatcmpl-") {
        Some(rest) => format!("cmpl-{rest}"),
        None if chat_id.starts_with("cmpl-") => chat_id.to_owned(),
        None => format!("cmpl-{chat_id}"),
    }
}

/// A whole chat answer as a `text_completion`.
fn text_completion(answer: &ChatResponse) -> Value {
    let choices: Vec<Value> = answer
        .choices
        .iter()
        .map(|c| json!({"text": c.message.content.clone().unwrap_or_default(), "index": c.index, "logprobs": null, "finish_reason": c.finish_reason.clone().unwrap_or_else(|| "stop".into())}))
        .collect();
    let mut out = json!({"id": completion_id(&answer.id), "object": "text_completion", "created": answer.created, "model": answer.model, "choices": choices});
    if let Some(usage) = &answer.usage {
        out["usage"] = token_counts(usage);
    }
    if let Some(fingerprint) = &answer.system_fingerprint {
        out["system_fingerprint"] = json!(fingerprint);
    }
    out
}

/// One stream chunk as a `text_completion` chunk; `None` for chunks with nothing to say (the
/// role-only first chunk).
fn completion_chunk(chunk: &ChatChunk) -> Option<String> {
    let choices: Vec<Value> = chunk
        .choices
        .iter()
        .filter(|c| c.delta.content.as_deref().is_some_and(|t| !t.is_empty()) || c.finish_reason.is_some())
        .map(|c| json!({"text": c.delta.content.clone().unwrap_or_default(), "index": c.index, "logprobs": null, "finish_reason": c.finish_reason}))
        .collect();
    if choices.is_empty() && chunk.usage.is_none() {
        return None;
    }
    let mut out = json!({"id": completion_id(&chunk.id), "object": "text_completion", "created": chunk.created, "model": chunk.model, "choices": choices});
    if let Some(usage) = &chunk.usage {
        out["usage"] = token_counts(usage);
    }
    Some(out.to_string())
}
