//! A stand-in for proprietary OpenAI-style APIs, speaking their exact wire format. What it does
//! depends on the request's `model`:
//! - `echo`: answers `echo: <last message>` (streamed word by word when asked), with usage.
//! - `shred`: like `echo`, but streamed three characters a chunk (placeholders arrive split).
//! - `cached`: like `echo`, reporting 8 of its 11 prompt tokens as served from the prompt cache.
//! - `bare`: like `echo`, without `usage` (as some self-hosted servers answer), streamed or not.
//! - `metered`: answers exactly `max_tokens` words ("tok tok …") and reports usage the way the
//!   gateway estimates it: prompt tokens = characters of the messages' text / 4, rounded up;
//!   completion tokens = `max_tokens` (so a test knows every request's cost in advance).
//! - `judge`: a scripted pairwise judge: the answer that starts with `echo:` wins (`[[A]]` or
//!   `[[B]]`, wherever it stands), otherwise `[[C]]`. `judge-first`: always `[[A]]` (a judge
//!   with a pure position bias).
//! - `tool`: with tools defined and the last message not a tool result, calls the first tool
//!   with `{"city": "Paris"}` (`finish_reason: tool_calls`; streamed, the arguments in pieces).
//!   `tool-echo`: calls it with the last message's text (`{"text": …}`; a `custom` tool gets the
//!   text as its input), streamed three characters a piece (placeholders arrive split);
//!   `tool-bare` does the same without reporting usage.
//! - `gated`: streams one chunk, then holds the rest until `POST /control/release`.
//! - `strict`: like `echo`, but refuses `stream_options` as a `FastAPI` server forbidding extra
//!   fields does (422 with pydantic's `{"detail": [{"type": "extra_forbidden", …}]}`).
//! - `metered-legacy`: like `metered`, reading only `max_tokens` (as self-hosted servers that
//!   predate `max_completion_tokens` do: they ignore it).
//! - `o-series`: like `echo`, but refuses `max_tokens` as `OpenAI`'s reasoning models do (400
//!   `unsupported_parameter`: they take `max_completion_tokens` only).
//! - `reasoner`: thinks first (400 characters of `reasoning_content`, in four chunks when streamed),
//!   then answers `done`; it reports no usage.
//! - `fail`: 500 with an `OpenAI` error body. `ratelimit`: 429 with `retry-after: 7`.
//! - `reject`: 400 with an `OpenAI` error body. `drop`: one chunk, then (after
//!   `POST /control/release`) the connection breaks.
//!
//! `POST /control/faults` queues faults (`{"faults": [{"status": 500}, {"status": 429, "retry_after": "0"},
//! {"drop": true}, {"slow_ms": 1500}, {"malformed": true}]}`; a `status` fault may carry the
//! error's `message`): each following chat, embeddings or `/v1/responses` request takes
//! the next one instead of its answer (`drop`: headers sent, then the connection breaks before the
//! first event; `error_event: "<message>"`: 200 and a stream whose only event is an error object
//! saying it (on `/v1/responses`, an `error` event); `stall_body`: the `status` (default 503) and the start of an error body, then
//! nothing while the connection stays open; `slow_ms`: the answer starts that late; `malformed`: a stream whose second event is
//! not JSON, and no `[DONE]`; `cut`: a stream of two chunks that then ends cleanly, with no
//! `finish_reason` and no `[DONE]`; `retry_after` and `retry_after_ms` set those headers; `body`
//! replaces the error body: JSON as given, a string as plain text). On
//! `/v1/messages` a fault is an Anthropic error answer (`slow_ms`: the answer starts that late), or with `cut` a stream that ends before
//! `message_stop`, or with `error_event: "<type>"` a stream whose first event is that error
//! (with `after_start: true`, after `message_start` and a `ping`); a `status` fault there may
//! carry the Anthropic error's `type` and `message`.
//!
//! Requests are checked like the real API does (model, non-empty messages with known roles,
//! `stream_options` only with `stream: true`): a violation is a 400 naming the field.
//!
//! Azure's shape is served too: `POST /openai/deployments/{deployment}/chat/completions
//! ?api-version=…` needs the `api-key` header, refuses `Authorization`, and answers as the
//! model named by the deployment.
//!
//! Anthropic's Messages API is served at `POST /v1/messages`, validated the way the real API
//! does (`x-api-key` and `anthropic-version: 2023-06-01`, never `Authorization`; `model`,
//! `max_tokens` and alternating `user`/`assistant` messages required; no foreign top-level
//! fields; every `tool_result` answering a `tool_use` of the previous assistant turn). It echoes
//! the last user text, or with tools defined and the model `tool`, calls the first tool with
//! `{"city": "Paris"}`; streams use Anthropic's events, tool input in `input_json_delta` pieces.
//! Its `gated` streams a 5,000-token prompt's `message_start` and "first", then holds the rest
//! until `POST /control/release`.
//!
//! `POST /v1/responses` answers `echo: <last input>` as a Responses-API response or events
//! (`bare`: with `usage: null`); there a fault `error_event: "<message>"` is a stream whose first
//! and only event is an `error` event saying it (its `code`: the fault's `code`, else
//! `server_error`).
//!
//! `POST /v1/embeddings` answers 8-dimensional vectors derived from each input's bytes.
//!
//! Legacy `POST /v1/completions` answers `echo: <prompt>` as a `text_completion`.
//!
//! `POST /control/chaos {"every": N, "forget": bool}` faults every N-th chat request (500, 1.5 s
//! late, dropped before the first event, cut mid-stream; in turn), for soaks.
//!
//! `GET /control/requests` returns every request received (path, body, `authorization` and
//! `api-key` header values).
//! Prints `listening on ADDR` once bound to a free port.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tokio::sync::Notify;

#[derive(Default)]
struct Fake {
    requests: Mutex<Vec<Value>>,
    faults: Mutex<std::collections::VecDeque<Value>>,
    release: Notify,
    /// Chaos: every `chaos_every`-th chat request (0: never) gets a fault, the kinds in turn.
    chaos_every: AtomicU64,
    served: AtomicU64,
    /// Stop keeping requests for `/control/requests` (long soaks).
    forget: AtomicBool,
}

fn chunk(model: &str, delta: &Value, finish: Option<&str>) -> Value {
    json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
           "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": null}]})
}

fn sse(value: &Value) -> Bytes {
    Bytes::from(format!("data: {value}\n\n"))
}

fn error(status: StatusCode, message: &str, kind: &str, code: &str) -> Response {
    (status, Json(json!({"error": {"message": message, "type": kind, "param": null, "code": code}}))).into_response()
}

fn header(headers: &HeaderMap, name: &str) -> Option<String> {
    headers.get(name).and_then(|v| v.to_str().ok()).map(str::to_owned)
}

async fn azure_chat(
    State(fake): State<Arc<Fake>>,
    Path(deployment): Path<String>,
    Query(query): Query<std::collections::HashMap<String, String>>,
    headers: HeaderMap,
    Json(mut body): Json<Value>,
) -> Response {
    if headers.contains_key("authorization") || !headers.contains_key("api-key") {
        return error(StatusCode::UNAUTHORIZED, "Access denied due to missing or invalid api-key header.", "invalid_request_error", "401");
    }
    if !query.contains_key("api-version") {
        return error(StatusCode::NOT_FOUND, "Resource not found (api-version missing)", "invalid_request_error", "404");
    }
    body["model"] = Value::String(deployment.clone());
    answer(&fake, &format!("/openai/deployments/{deployment}/chat/completions"), &headers, &body).await
}

async fn chat(State(fake): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    answer(&fake, "/v1/chat/completions", &headers, &body).await
}

/// The response for a scripted fault, or `None` to answer normally (after `slow_ms`, if set).
async fn scripted(fault: Option<Value>, body: &Value) -> Option<Response> {
    if let Some(ms) = fault.as_ref().and_then(|f| f["slow_ms"].as_u64()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    } else if fault.as_ref().is_some_and(|f| f["malformed"].as_bool() == Some(true)) {
        let model = body["model"].as_str().unwrap_or_default().to_owned();
        let events = [
            Ok::<_, std::io::Error>(sse(&chunk(&model, &json!({"role": "assistant", "content": "fine"}), None))),
            Ok(Bytes::from_static(b"data: {this is not json\n\n")),
        ];
        return Some(Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(futures::stream::iter(events)))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    } else if fault.as_ref().is_some_and(|f| f["cut"].as_bool() == Some(true)) {
        let model = body["model"].as_str().unwrap_or_default().to_owned();
        let events = [
            Ok::<_, std::io::Error>(sse(&chunk(&model, &json!({"role": "assistant", "content": ""}), None))),
            Ok(sse(&chunk(&model, &json!({"content": "half an"}), None))),
        ];
        return Some(Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(futures::stream::iter(events)))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    } else if let Some(message) = fault.as_ref().and_then(|f| f["error_event"].as_str()) {
        // 200 and an event stream whose only event is an error object, as vLLM sends a failure
        // it meets after opening the stream.
        let data = json!({"error": {"message": message, "type": "server_error", "param": null, "code": null}});
        let events = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(format!("data: {data}\n\n")))]);
        return Some(Response::builder()
            .header("content-type", "text/event-stream")
            .body(Body::from_stream(events))
            .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
    } else if let Some(fault) = fault {
        if fault["stall_body"].as_bool() == Some(true) {
            // The status and the start of an error body, then nothing, the connection kept open.
            let status = fault["status"].as_u64().and_then(|s| u16::try_from(s).ok()).and_then(|s| StatusCode::from_u16(s).ok());
            let start = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from_static(b"{\"error\": {\"message\": \"overloaded"))]);
            return Some(Response::builder()
                .status(status.unwrap_or(StatusCode::SERVICE_UNAVAILABLE))
                .header("content-type", "application/json")
                .body(Body::from_stream(futures::StreamExt::chain(start, futures::stream::pending())))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
        }
        if fault["drop"].as_bool() == Some(true) {
            let broken = futures::stream::iter([Err::<Bytes, _>(std::io::Error::other("dropped by the fake before the first event"))]);
            return Some(Response::builder()
                .header("content-type", "text/event-stream")
                .body(Body::from_stream(broken))
                .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response()));
        }
        let status = fault["status"].as_u64().and_then(|s| u16::try_from(s).ok()).and_then(|s| StatusCode::from_u16(s).ok());
        let status = status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut r = match &fault["body"] {
            // Another server's error shape, as it sends it: JSON, or plain text.
            Value::String(text) => (status, text.clone()).into_response(),
            Value::Null => error(status, fault["message"].as_str().unwrap_or("scripted fault"), "server_error", "fault"),
            body => (status, Json(body.clone())).into_response(),
        };
        for name in ["retry_after", "retry_after_ms"] {
            if let Some(value) = fault[name].as_str() {
                r.headers_mut().insert(axum::http::HeaderName::from_bytes(name.replace('_', "-").as_bytes()).expect("name"), value.parse().expect("header"));
            }
        }
        return Some(r);
    }
    None
}

/// Message roles the chat-completions API knows.
const ROLES: &[&str] = &["system", "developer", "user", "assistant", "tool", "function"];

/// What the real chat-completions API would refuse in `body`, if anything.
fn openai_problem(body: &Value) -> Option<(String, String)> {
    if !body["model"].is_string() {
        return Some(("model".into(), "you must provide a model parameter".into()));
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return Some(("messages".into(), "'messages' must be a non-empty array".into()));
    };
    if let Some(i) = messages.iter().position(|m| !m["role"].as_str().is_some_and(|r| ROLES.contains(&r))) {
        return Some((format!("messages[{i}].role"), "invalid role".into()));
    }
    if body.get("stream_options").is_some_and(|o| !o.is_null()) && body["stream"] != true {
        return Some(("stream_options".into(), "stream_options is only allowed when stream is true".into()));
    }
    None
}

/// The answer refusing `body` as the real API would (400; `o-series`: `max_tokens`), or as
/// `strict` refuses `stream_options` (`FastAPI`'s 422), if either does.
fn refusal(body: &Value) -> Option<Response> {
    if let Some((param, message)) = openai_problem(body) {
        return Some((StatusCode::BAD_REQUEST, Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": param, "code": null}}))).into_response());
    }
    if body["model"] == "o-series" && body.get("max_tokens").is_some() {
        let message = "Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.";
        return Some((StatusCode::BAD_REQUEST, Json(json!({"error": {"message": message, "type": "invalid_request_error", "param": "max_tokens", "code": "unsupported_parameter"}}))).into_response());
    }
    if body["model"] == "strict" && body.get("stream_options").is_some() {
        let detail = json!([{"type": "extra_forbidden", "loc": ["body", "stream_options"], "msg": "Extra inputs are not permitted", "input": body["stream_options"]}]);
        return Some((StatusCode::UNPROCESSABLE_ENTITY, Json(json!({"detail": detail}))).into_response());
    }
    None
}

async fn answer(fake: &Arc<Fake>, path: &str, headers: &HeaderMap, body: &Value) -> Response {
    let fake = Arc::clone(fake);
    if !fake.forget.load(Relaxed) {
        fake.requests.lock().expect("lock").push(json!({
            "path": path, "body": body, "authorization": header(headers, "authorization"), "api_key": header(headers, "api-key"),
            "client_request_id": header(headers, "x-client-request-id"),
        }));
    }
    if let Some(refusal) = refusal(body) {
        return refusal;
    }
    let queued = fake.faults.lock().expect("lock").pop_front();
    let fault = match queued.map_or_else(|| chaos_fault(&fake, body), |f| Ok(Some(f))) {
        Ok(fault) => fault,
        Err(cut) => return *cut,
    };
    if let Some(response) = scripted(fault, body).await {
        return response;
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let stream = body["stream"].as_bool().unwrap_or(false);
    let include_usage = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
    let last = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["content"].as_str()).unwrap_or_default();
    let metered = metered_usage(&model, body);
    let answer = match (metered, model.as_str()) {
        (Some((_, completion)), _) => vec!["tok"; usize::try_from(completion).unwrap_or(0)].join(" "),
        (None, "judge") => judge_verdict(last),
        (None, "judge-first") => "Assistant A answered first, so it wins. [[A]]".to_owned(),
        (None, _) => format!("echo: {last}"),
    };
    match model.as_str() {
        "fail" => return error(StatusCode::INTERNAL_SERVER_ERROR, "the fake upstream failed", "server_error", "internal"),
        "ratelimit" => {
            let mut r = error(StatusCode::TOO_MANY_REQUESTS, "slow down", "rate_limit_error", "rate_limit_exceeded");
            r.headers_mut().insert("retry-after", "7".parse().expect("header"));
            return r;
        }
        "reject" => return error(StatusCode::BAD_REQUEST, "the fake upstream rejects this", "invalid_request_error", "bad_thing"),
        _ => {}
    }
    if let Some(tool) = tool_to_call(&model, body) {
        return tool_call(&model, tool, last, stream, include_usage);
    }
    if !stream {
        let words = u64::try_from(answer.split_whitespace().count()).unwrap_or(0);
        let (prompt, completion) = metered.unwrap_or((11, words));
        let mut usage = json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion});
        if model == "cached" {
            usage["prompt_tokens_details"] = json!({"cached_tokens": 8});
        }
        return whole_answer(&model, &answer, &usage);
    }
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(16);
    tokio::spawn(async move {
        // As OpenAI's first chunk is: `refusal` present, null.
        let first = chunk(&model, &json!({"role": "assistant", "content": "", "refusal": null}), None);
        let _ = tx.send(Ok(sse(&first))).await;
        match model.as_str() {
            "gated" => {
                let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": "first"}), None)))).await;
                // Bounded so a broken test cannot hang the fake forever.
                let _ = tokio::time::timeout(Duration::from_secs(30), fake.release.notified()).await;
                let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": " second"}), None)))).await;
            }
            "drop" => {
                let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": "partial"}), None)))).await;
                // Held like `gated`, so the client provably has "partial" before the break.
                let _ = tokio::time::timeout(Duration::from_secs(30), fake.release.notified()).await;
                let _ = tx.send(Err(std::io::Error::other("connection dropped by the fake"))).await;
                return;
            }
            "reasoner" => for delta in std::iter::repeat_n(json!({"reasoning_content": REASONING}), 4).chain([json!({"content": "done"})]) {
                let _ = tx.send(Ok(sse(&chunk(&model, &delta, None)))).await;
            },
            "shred" => {
                let chars: Vec<char> = answer.chars().collect();
                for piece in chars.chunks(3) {
                    let piece: String = piece.iter().collect();
                    let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": piece}), None)))).await;
                }
            }
            _ => {
                for (i, word) in answer.split(' ').enumerate() {
                    let piece = if i == 0 { word.to_owned() } else { format!(" {word}") };
                    let _ = tx.send(Ok(sse(&chunk(&model, &json!({"content": piece}), None)))).await;
                }
            }
        }
        let _ = tx.send(Ok(sse(&chunk(&model, &json!({}), Some("stop"))))).await;
        if include_usage && model != "bare" && model != "reasoner" {
            let (prompt, completion) = metered.unwrap_or((11, 3));
            let usage = json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model,
                               "choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}});
            let _ = tx.send(Ok(sse(&usage))).await;
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// Legacy `POST /v1/completions`: `prompt` must be a string and `messages` absent; answers
/// `echo: <prompt>` as a `text_completion` (streamed word by word, with usage when asked).
async fn completions(State(fake): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    fake.requests.lock().expect("lock").push(json!({"path": "/v1/completions", "body": body, "authorization": header(&headers, "authorization"), "api_key": header(&headers, "api-key")}));
    let Some(prompt) = body["prompt"].as_str() else {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "prompt must be a string", "type": "invalid_request_error", "param": "prompt", "code": null}}))).into_response();
    };
    if body.get("messages").is_some() || body.get("max_completion_tokens").is_some() {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "unknown field for completions", "type": "invalid_request_error", "param": null, "code": null}}))).into_response();
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let answer = format!("echo: {prompt}");
    let usage = json!({"prompt_tokens": 7, "completion_tokens": 3, "total_tokens": 10});
    if !body["stream"].as_bool().unwrap_or(false) {
        return Json(json!({"id": "cmpl-fake", "object": "text_completion", "created": 1_700_000_000, "model": model,
            "choices": [{"text": answer, "index": 0, "logprobs": null, "finish_reason": "stop"}], "usage": usage})).into_response();
    }
    let piece = |text: &str, finish: Option<&str>| sse(&json!({"id": "cmpl-fake", "object": "text_completion", "created": 1_700_000_000, "model": model,
        "choices": [{"text": text, "index": 0, "logprobs": null, "finish_reason": finish}]}));
    let mut events: Vec<Bytes> = answer.split(' ').enumerate().map(|(i, w)| piece(&if i == 0 { w.to_owned() } else { format!(" {w}") }, None)).collect();
    events.push(piece("", Some("stop")));
    if body["stream_options"]["include_usage"].as_bool().unwrap_or(false) {
        events.push(sse(&json!({"id": "cmpl-fake", "object": "text_completion", "created": 1_700_000_000, "model": model, "choices": [], "usage": usage})));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let body = Body::from_stream(futures::stream::iter(events.into_iter().map(Ok::<_, std::io::Error>)));
    Response::builder().header("content-type", "text/event-stream").body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The tool the `tool` model calls: the first one, unless the last message is a tool result.
fn tool_to_call<'b>(model: &str, body: &'b Value) -> Option<&'b Value> {
    let last_role = body["messages"].as_array().and_then(|m| m.last()).and_then(|m| m["role"].as_str()).unwrap_or_default();
    body["tools"].get(0).filter(|_| matches!(model, "tool" | "tool-echo" | "tool-bare") && last_role != "tool")
}

/// `POST /v1/embeddings`: an 8-dimensional vector per input string, derived from its bytes (the
/// same text always gets the same vector), as floats or base64 as asked.
async fn embeddings(State(fake): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    fake.requests.lock().expect("lock").push(json!({"path": "/v1/embeddings", "body": body, "authorization": header(&headers, "authorization"), "api_key": header(&headers, "api-key")}));
    let queued = fake.faults.lock().expect("lock").pop_front();
    if let Some(response) = scripted(queued, &body).await {
        return response;
    }
    let inputs: Vec<String> = match &body["input"] {
        Value::String(s) => vec![s.clone()],
        Value::Array(items) => items.iter().map(|v| v.as_str().map_or_else(|| v.to_string(), str::to_owned)).collect(),
        _ => return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "input is required", "type": "invalid_request_error", "param": "input", "code": null}}))).into_response(),
    };
    let base64 = body["encoding_format"].as_str() == Some("base64");
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(index, text)| {
            let mut v = [0f32; 8];
            for (i, b) in text.bytes().enumerate() {
                v[i % 8] += f32::from(b) / 255.0;
            }
            let embedding = if base64 {
                use base64::Engine as _;
                json!(base64::engine::general_purpose::STANDARD.encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()))
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    let tokens: usize = inputs.iter().map(|t| t.len().div_ceil(4)).sum();
    let mut answer = json!({"object": "list", "data": data, "model": body["model"], "usage": {"prompt_tokens": tokens, "total_tokens": tokens}});
    // `bare` reports no usage, as some OpenAI-compatible servers do.
    if body["model"] == "bare" {
        answer.as_object_mut().map(|a| a.remove("usage"));
    }
    Json(answer).into_response()
}

/// A non-streamed chat answer; `bare` leaves `usage` out, as some self-hosted servers do.
/// What `reasoner` thinks, 100 characters a chunk (as vLLM sends `reasoning_content`).
const REASONING: &str = "Let me think about this step by step, weighing each option before I answer the question that I got!!";

fn whole_answer(model: &str, text: &str, usage: &Value) -> Response {
    let mut answer = json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": null, "annotations": []}, "finish_reason": "stop", "logprobs": null}],
        "usage": usage, "system_fingerprint": "fp_fake"});
    if model == "bare" || model == "reasoner" {
        answer.as_object_mut().map(|a| a.remove("usage"));
    }
    if model == "reasoner" {
        answer["choices"][0]["message"]["reasoning_content"] = json!(REASONING.repeat(4));
        answer["choices"][0]["message"]["content"] = json!("done");
    }
    Json(answer).into_response()
}

/// `POST /v1/responses`: answers `echo: <text of the last input item>` as a `response` object
/// (streamed: `response.created`, one `response.output_text.delta` per word, `response.completed`).
/// Refuses `previous_response_id` (the gateway keeps conversations) and `store: true`.
async fn responses(State(fake): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    fake.requests.lock().expect("lock").push(json!({"path": "/v1/responses", "body": body, "authorization": header(&headers, "authorization"), "api_key": header(&headers, "api-key")}));
    let queued = fake.faults.lock().expect("lock").pop_front();
    if let Some(message) = queued.as_ref().and_then(|f| f["error_event"].as_str()) {
        // OpenAI's shape for a failure it reports inside a stream it already opened with 200.
        let code = queued.as_ref().and_then(|f| f["code"].as_str()).unwrap_or("server_error");
        let data = json!({"type": "error", "code": code, "message": message, "param": null, "sequence_number": 0});
        let events = futures::stream::iter([Ok::<_, std::io::Error>(Bytes::from(format!("event: error\ndata: {data}\n\n")))]);
        return Response::builder().header("content-type", "text/event-stream").body(Body::from_stream(events)).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    if let Some(response) = scripted(queued, &body).await {
        return response;
    }
    if body.get("previous_response_id").is_some() || body["store"] != json!(false) {
        return (StatusCode::BAD_REQUEST, Json(json!({"error": {"message": "expected store: false and no previous_response_id", "type": "invalid_request_error", "param": null, "code": null}}))).into_response();
    }
    let last = match &body["input"] {
        Value::String(s) => s.clone(),
        Value::Array(items) => items.last().map(|i| match &i["content"] {
            Value::String(s) => s.clone(),
            Value::Array(parts) => parts.iter().filter_map(|p| p["text"].as_str()).collect(),
            _ => i["output"].as_str().unwrap_or_default().to_owned(),
        }).unwrap_or_default(),
        _ => String::new(),
    };
    let text = format!("echo: {last}");
    let model = body["model"].clone();
    let response = |status: &str, text: &str| json!({"id": "resp_fake", "object": "response", "created_at": 1_700_000_000, "status": status, "error": null,
        "incomplete_details": null, "instructions": body["instructions"], "model": model, "parallel_tool_calls": true, "metadata": {}, "tool_choice": "auto",
        "tools": [], "temperature": 1.0, "top_p": 1.0, "store": false,
        "output": if status == "completed" { json!([{"id": "msg_fake", "type": "message", "status": "completed", "role": "assistant", "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}]) } else { json!([]) },
        "usage": {"input_tokens": 9, "input_tokens_details": {"cached_tokens": 0, "cache_write_tokens": 0}, "output_tokens": 4, "output_tokens_details": {"reasoning_tokens": 0}, "total_tokens": 13}});
    if !body["stream"].as_bool().unwrap_or(false) {
        let mut whole = response("completed", &text);
        // `bare` reports no usage, as some servers do.
        if model == "bare" {
            whole["usage"] = Value::Null;
        }
        return Json(whole).into_response();
    }
    let event = |kind: &str, mut data: Value, seq: usize| {
        data["type"] = json!(kind);
        data["sequence_number"] = json!(seq);
        Bytes::from(format!("event: {kind}\ndata: {data}\n\n"))
    };
    let mut events = vec![event("response.created", json!({"response": response("in_progress", "")}), 0)];
    for (i, word) in text.split(' ').enumerate() {
        let delta = if i == 0 { word.to_owned() } else { format!(" {word}") };
        events.push(event("response.output_text.delta", json!({"item_id": "msg_fake", "output_index": 0, "content_index": 0, "delta": delta, "logprobs": []}), i + 1));
    }
    let n = events.len();
    events.push(event("response.completed", json!({"response": response("completed", &text)}), n));
    let body = Body::from_stream(futures::stream::iter(events.into_iter().map(Ok::<_, std::io::Error>)));
    Response::builder().header("content-type", "text/event-stream").body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The `tool` model's answer when tools are defined: a call of the first tool with
/// `{"city": "Paris"}` (streamed: the arguments in two pieces); `tool-echo`'s calls it with the
/// last message's text (`{"text": …}`, or as a custom tool's input), streamed three characters
/// a piece.
fn tool_call(model: &str, tool: &Value, last: &str, stream: bool, include_usage: bool) -> Response {
    let usage = json!({"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16});
    let custom = tool["type"] == "custom";
    let kind = if custom { "custom" } else { "function" };
    let name = tool[kind]["name"].clone();
    let echo = model != "tool";
    let input = match (echo, custom) {
        (true, false) => json!({"text": last}).to_string(),
        (true, true) => last.to_owned(),
        (false, _) => "{\"city\": \"Paris\"}".to_owned(),
    };
    // `tool-bare` reports no usage, as some self-hosted servers do.
    let usage = if model == "tool-bare" { Value::Null } else { usage };
    let field = if custom { "input" } else { "arguments" };
    if !stream {
        let call = json!({"id": "call_fake1", "type": kind, kind: {"name": name, field: input}});
        let mut answer = json!({"id": "chatcmpl-fake", "object": "chat.completion", "created": 1_700_000_000, "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": null, "refusal": null, "tool_calls": [call]}, "finish_reason": "tool_calls", "logprobs": null}],
            "usage": usage});
        if usage.is_null() {
            answer.as_object_mut().map(|a| a.remove("usage"));
        }
        return Json(answer).into_response();
    }
    let pieces: Vec<String> = if echo {
        input.chars().collect::<Vec<_>>().chunks(3).map(|c| c.iter().collect()).collect()
    } else {
        vec!["{\"city\"".to_owned(), ": \"Paris\"}".to_owned()]
    };
    let mut events = vec![
        sse(&chunk(model, &json!({"role": "assistant", "content": null}), None)),
        sse(&chunk(model, &json!({"tool_calls": [{"index": 0, "id": "call_fake1", "type": kind, kind: {"name": name, field: ""}}]}), None)),
    ];
    for piece in pieces {
        events.push(sse(&chunk(model, &json!({"tool_calls": [{"index": 0, kind: {field: piece}}]}), None)));
    }
    events.push(sse(&chunk(model, &json!({}), Some("tool_calls"))));
    if include_usage && !usage.is_null() {
        events.push(sse(&json!({"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": 1_700_000_000, "model": model, "choices": [], "usage": usage})));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    let body = Body::from_stream(futures::stream::iter(events.into_iter().map(Ok::<_, std::io::Error>)));
    Response::builder().header("content-type", "text/event-stream").body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The scripted `judge`: in a pairwise judge prompt, the answer starting with `echo:` (this
/// fake's own answers) wins whichever position it is in; neither or both is a tie.
fn judge_verdict(prompt: &str) -> String {
    let answer = |who: &str| {
        let start = format!("[The Start of Assistant {who}'s Answer]\n");
        let end = format!("\n[The End of Assistant {who}'s Answer]");
        prompt.split_once(&start).and_then(|(_, rest)| rest.split_once(&end)).map(|(a, _)| a.starts_with("echo:"))
    };
    match (answer("A"), answer("B")) {
        (Some(true), Some(false)) => "Assistant A echoes the question, which is what I like. [[A]]".to_owned(),
        (Some(false), Some(true)) => "Assistant B echoes the question, which is what I like. [[B]]".to_owned(),
        (Some(_), Some(_)) => "Equally good. [[C]]".to_owned(),
        _ => "I see no pair of answers to judge.".to_owned(),
    }
}

/// `(prompt, completion)` tokens of a `metered` request (see the module docs).
fn metered_usage(model: &str, body: &Value) -> Option<(u64, u64)> {
    let read = match model {
        "metered" => body["max_completion_tokens"].as_u64().or_else(|| body["max_tokens"].as_u64()),
        "metered-legacy" => body["max_tokens"].as_u64(),
        _ => return None,
    };
    let chars: usize = body["messages"].as_array()?.iter().filter_map(|m| m["content"].as_str()).map(|t| t.chars().count()).sum();
    let max_tokens = read.unwrap_or(16);
    Some((u64::try_from(chars.div_ceil(4)).unwrap_or(0), max_tokens))
}

fn anthropic_error(status: StatusCode, kind: &str, message: &str) -> Response {
    (status, Json(json!({"type": "error", "error": {"type": kind, "message": message}}))).into_response()
}

/// Top-level fields the Messages API accepts.
const ANTHROPIC_FIELDS: &[&str] = &["model", "messages", "max_tokens", "system", "stop_sequences", "temperature", "top_p", "top_k", "tools", "tool_choice", "metadata", "stream"];

/// What the real Messages API would refuse in `body`, if anything.
fn anthropic_problem(headers: &HeaderMap, body: &Value) -> Option<(StatusCode, String)> {
    if headers.contains_key("authorization") {
        return Some((StatusCode::UNAUTHORIZED, "Authorization header is not accepted; use x-api-key".into()));
    }
    if !headers.contains_key("x-api-key") {
        return Some((StatusCode::UNAUTHORIZED, "x-api-key header is required".into()));
    }
    if header(headers, "anthropic-version").as_deref() != Some("2023-06-01") {
        return Some((StatusCode::BAD_REQUEST, "anthropic-version header must be 2023-06-01".into()));
    }
    let object = body.as_object()?;
    if let Some(foreign) = object.keys().find(|k| !ANTHROPIC_FIELDS.contains(&k.as_str())) {
        return Some((StatusCode::BAD_REQUEST, format!("{foreign}: Extra inputs are not permitted")));
    }
    if !body["model"].is_string() || !body["max_tokens"].is_u64() {
        return Some((StatusCode::BAD_REQUEST, "model and max_tokens are required".into()));
    }
    let messages = body["messages"].as_array().filter(|m| !m.is_empty())?;
    let mut expected = "user";
    let mut open_tool_uses: Vec<String> = Vec::new();
    for (i, m) in messages.iter().enumerate() {
        if m["role"] != expected {
            return Some((StatusCode::BAD_REQUEST, format!("messages.{i}: roles must alternate between \"user\" and \"assistant\", starting with user")));
        }
        let blocks = m["content"].as_array().cloned().unwrap_or_else(|| vec![json!({"type": "text", "text": m["content"]})]);
        for b in &blocks {
            match b["type"].as_str() {
                Some("tool_use") if expected == "assistant" => open_tool_uses.push(b["id"].as_str().unwrap_or_default().to_owned()),
                Some("tool_result") if expected == "user" => {
                    if !open_tool_uses.contains(&b["tool_use_id"].as_str().unwrap_or_default().to_owned()) {
                        return Some((StatusCode::BAD_REQUEST, format!("messages.{i}: tool_result without a matching tool_use")));
                    }
                }
                Some("text") if b["text"].as_str().is_none_or(|t| t.trim().is_empty()) => {
                    return Some((StatusCode::BAD_REQUEST, format!("messages.{i}: text content blocks must contain non-whitespace text")));
                }
                Some("text" | "image") => {}
                other => return Some((StatusCode::BAD_REQUEST, format!("messages.{i}: unexpected block {other:?}"))),
            }
            if matches!(b["type"].as_str(), Some("tool_use" | "tool_result")) && !body["tools"].is_array() {
                return Some((StatusCode::BAD_REQUEST, "Requests which include `tool_use` or `tool_result` blocks must define tools.".into()));
            }
        }
        let last_text = blocks.last().and_then(|b| b["text"].as_str());
        if i + 1 == messages.len() && expected == "assistant" && last_text.is_some_and(|t| t != t.trim_end()) {
            return Some((StatusCode::BAD_REQUEST, "messages: final assistant content cannot end with trailing whitespace".into()));
        }
        if expected == "user" {
            open_tool_uses.clear();
        }
        expected = if expected == "user" { "assistant" } else { "user" };
    }
    if let Some(tools) = body["tools"].as_array() {
        if tools.iter().any(|t| !t["name"].is_string() || !t["input_schema"].is_object()) {
            return Some((StatusCode::BAD_REQUEST, "tools need name and input_schema".into()));
        }
    }
    // As current Claude models answer (Opus 4.1 and later, Sonnet 4.5 and later).
    if object.contains_key("temperature") && object.contains_key("top_p") {
        return Some((StatusCode::BAD_REQUEST, "`temperature` and `top_p` cannot both be specified for this model. Please use only one.".into()));
    }
    for image in messages.iter().filter_map(|m| m["content"].as_array()).flatten().filter(|b| b["type"] == "image") {
        if let Some(media_type) = image["source"]["media_type"].as_str().filter(|t| !["image/jpeg", "image/png", "image/gif", "image/webp"].contains(t)) {
            return Some((StatusCode::BAD_REQUEST, format!("image source media_type {media_type:?} is not one of image/jpeg, image/png, image/gif, image/webp")));
        }
    }
    None
}

fn anthropic_sse(event: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {event}\ndata: {data}\n\n"))
}

async fn messages(State(fake): State<Arc<Fake>>, headers: HeaderMap, Json(body): Json<Value>) -> Response {
    fake.requests.lock().expect("lock").push(json!({
        "path": "/v1/messages", "body": body, "authorization": header(&headers, "authorization"),
        "api_key": header(&headers, "x-api-key"), "client_request_id": header(&headers, "x-client-request-id"),
    }));
    let fault = fake.faults.lock().expect("lock").pop_front();
    if let Some(kind) = fault.as_ref().and_then(|f| f["error_event"].as_str()) {
        let mut events = Vec::new();
        if fault.as_ref().is_some_and(|f| f["after_start"].as_bool() == Some(true)) {
            events.push(anthropic_sse("message_start", &json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": body["model"], "content": [], "stop_reason": null, "usage": {"input_tokens": 20, "output_tokens": 1}}})));
            events.push(anthropic_sse("ping", &json!({"type": "ping"})));
        }
        events.push(anthropic_sse("error", &json!({"type": "error", "error": {"type": kind, "message": "scripted error event"}})));
        return Response::builder().header("content-type", "text/event-stream").body(Body::from(events.concat())).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response());
    }
    let cut = fault.as_ref().is_some_and(|f| f["cut"].as_bool() == Some(true));
    let slow = fault.as_ref().and_then(|f| f["slow_ms"].as_u64());
    if let Some(ms) = slow {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if let Some(fault) = fault.filter(|_| !cut && slow.is_none()) {
        let status = fault["status"].as_u64().and_then(|s| u16::try_from(s).ok()).and_then(|s| StatusCode::from_u16(s).ok());
        let status = status.unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let kind = fault["type"].as_str().unwrap_or(if status.as_u16() == 529 { "overloaded_error" } else { "api_error" });
        return anthropic_error(status, kind, fault["message"].as_str().unwrap_or("scripted fault"));
    }
    if let Some((status, message)) = anthropic_problem(&headers, &body) {
        let kind = if status == StatusCode::UNAUTHORIZED { "authentication_error" } else { "invalid_request_error" };
        return anthropic_error(status, kind, &message);
    }
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let last_user = body["messages"].as_array().and_then(|m| m.iter().rev().find(|m| m["role"] == "user")).cloned().unwrap_or(Value::Null);
    let last_text = match &last_user["content"] {
        Value::String(s) => s.clone(),
        Value::Array(blocks) => blocks.iter().filter_map(|b| b["text"].as_str().or_else(|| b["content"].as_str())).collect::<Vec<_>>().join(""),
        _ => String::new(),
    };
    let tool = (model == "tool").then(|| body["tools"][0]["name"].as_str().map(str::to_owned)).flatten();
    // A tool whose schema has no properties is called with no input.
    let input = if body["tools"][0]["input_schema"]["properties"].as_object().is_some_and(|p| !p.is_empty()) { json!({"city": "Paris"}) } else { json!({}) };
    let answered_tool = last_user["content"].as_array().is_some_and(|b| b.iter().any(|b| b["type"] == "tool_result"));
    let usage = json!({"input_tokens": 20, "output_tokens": 6, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0});
    let stream = body["stream"].as_bool().unwrap_or(false);
    let (content, stop) = match (&tool, answered_tool) {
        (Some(name), false) => (json!([{"type": "text", "text": "Checking."}, {"type": "tool_use", "id": "toolu_01", "name": name, "input": input}]), "tool_use"),
        _ => (json!([{"type": "text", "text": format!("echo: {last_text}")}]), "end_turn"),
    };
    if !stream {
        return Json(json!({"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": content,
                           "stop_reason": stop, "stop_sequence": null, "usage": usage})).into_response();
    }
    if model == "gated" {
        return gated_message(fake);
    }
    let mut events = vec![
        anthropic_sse("message_start", &json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [], "stop_reason": null, "usage": {"input_tokens": 20, "output_tokens": 1, "cache_read_input_tokens": 5, "cache_creation_input_tokens": 0}}})),
        anthropic_sse("ping", &json!({"type": "ping"})),
    ];
    for (i, block) in content.as_array().cloned().unwrap_or_default().iter().enumerate() {
        if block["type"] == "text" {
            events.push(anthropic_sse("content_block_start", &json!({"type": "content_block_start", "index": i, "content_block": {"type": "text", "text": ""}})));
            for word in block["text"].as_str().unwrap_or_default().split_inclusive(' ') {
                events.push(anthropic_sse("content_block_delta", &json!({"type": "content_block_delta", "index": i, "delta": {"type": "text_delta", "text": word}})));
            }
        } else {
            events.push(anthropic_sse("content_block_start", &json!({"type": "content_block_start", "index": i, "content_block": {"type": "tool_use", "id": block["id"], "name": block["name"], "input": {}}})));
            // No input: one empty piece, as Anthropic sends it.
            let input = if block["input"] == json!({}) { String::new() } else { block["input"].to_string() };
            let (a, b) = input.split_at(input.len() / 2);
            for piece in if input.is_empty() { vec![""] } else { vec![a, b] } {
                events.push(anthropic_sse("content_block_delta", &json!({"type": "content_block_delta", "index": i, "delta": {"type": "input_json_delta", "partial_json": piece}})));
            }
        }
        events.push(anthropic_sse("content_block_stop", &json!({"type": "content_block_stop", "index": i})));
    }
    if !cut {
        events.push(anthropic_sse("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": stop, "stop_sequence": null}, "usage": {"output_tokens": 6}})));
        events.push(anthropic_sse("message_stop", &json!({"type": "message_stop"})));
    }
    let body = Body::from_stream(futures::stream::iter(events.into_iter().map(Ok::<_, std::io::Error>)));
    Response::builder().header("content-type", "text/event-stream").body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// The Anthropic `gated` stream: `message_start` (a prompt of 5,000 tokens, as only the provider
/// can know it) and the text "first", then the rest once `POST /control/release` comes.
fn gated_message(fake: Arc<Fake>) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(8);
    tokio::spawn(async move {
        let start = json!({"type": "message_start", "message": {"id": "msg_fake", "type": "message", "role": "assistant", "model": "gated", "content": [], "stop_reason": null, "usage": {"input_tokens": 5000, "output_tokens": 1}}});
        let delta = |text: &str| anthropic_sse("content_block_delta", &json!({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text}}));
        for event in [anthropic_sse("message_start", &start), anthropic_sse("content_block_start", &json!({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}})), delta("first")] {
            let _ = tx.send(Ok(event)).await;
        }
        // Bounded so a broken test cannot hang the fake forever.
        let _ = tokio::time::timeout(Duration::from_secs(30), fake.release.notified()).await;
        for event in [
            delta(" second"),
            anthropic_sse("content_block_stop", &json!({"type": "content_block_stop", "index": 0})),
            anthropic_sse("message_delta", &json!({"type": "message_delta", "delta": {"stop_reason": "end_turn", "stop_sequence": null}, "usage": {"output_tokens": 2}})),
            anthropic_sse("message_stop", &json!({"type": "message_stop"})),
        ] {
            let _ = tx.send(Ok(event)).await;
        }
    });
    let body = Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx));
    Response::builder().header("content-type", "text/event-stream").body(body).unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

async fn faults(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> StatusCode {
    let mut queue = fake.faults.lock().expect("lock");
    queue.extend(body["faults"].as_array().cloned().unwrap_or_default());
    StatusCode::NO_CONTENT
}

/// The chaos fault for this request, if it is one of every `chaos_every`: a scripted fault, or
/// (as `Err`) a stream cut after its first chunk.
fn chaos_fault(fake: &Fake, body: &Value) -> Result<Option<Value>, Box<Response>> {
    let n = fake.served.fetch_add(1, Relaxed);
    let every = fake.chaos_every.load(Relaxed);
    if every == 0 || n % every != every - 1 {
        return Ok(None);
    }
    Ok(Some(match (n / every) % 4 {
        0 => json!({"status": 500}),
        1 => json!({"slow_ms": 1500}),
        2 => json!({"drop": true}),
        _ if body["stream"].as_bool() == Some(true) => return Err(Box::new(cut_stream(body))),
        _ => json!({"status": 503}),
    }))
}

/// A stream that breaks after its first chunk (a chaos fault). The break waits until the chunk
/// has gone out: an error right behind it would abort the connection with the chunk unsent.
fn cut_stream(body: &Value) -> Response {
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    tokio::spawn(async move {
        let _ = tx.send(Ok(sse(&chunk(&model, &json!({"role": "assistant", "content": "cut"}), None)))).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
        let _ = tx.send(Err(std::io::Error::other("chaos: connection dropped mid-stream"))).await;
    });
    Response::builder()
        .header("content-type", "text/event-stream")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(rx)))
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

/// `POST /control/chaos {"every": 20, "forget": true}`: every 20th chat request gets a fault
/// (500, 1.5 s late, dropped before the first event, cut mid-stream — in turn); `forget` stops
/// recording requests.
async fn chaos(State(fake): State<Arc<Fake>>, Json(body): Json<Value>) -> StatusCode {
    fake.chaos_every.store(body["every"].as_u64().unwrap_or(0), Relaxed);
    fake.forget.store(body["forget"].as_bool().unwrap_or(false), Relaxed);
    StatusCode::NO_CONTENT
}

async fn release(State(fake): State<Arc<Fake>>) -> StatusCode {
    fake.release.notify_waiters();
    StatusCode::NO_CONTENT
}

async fn requests(State(fake): State<Arc<Fake>>) -> Json<Value> {
    Json(Value::Array(fake.requests.lock().expect("lock").clone()))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    let app = Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/openai/deployments/{deployment}/chat/completions", post(azure_chat))
        .route("/v1/messages", post(messages))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/control/faults", post(faults))
        .route("/control/chaos", post(chaos))
        .route("/control/release", post(release))
        .route("/control/requests", get(requests))
        .with_state(Arc::new(Fake::default()));
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:0".into());
    let listener = tokio::net::TcpListener::bind(addr).await?;
    println!("listening on {}", listener.local_addr()?);
    // Like a real API front end: events go out as written.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    axum::serve(listener, app).await
}
